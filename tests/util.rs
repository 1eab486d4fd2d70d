//! Shared helpers for the integration tests: one compiled component per test binary.

use std::path::{Path, PathBuf};
use std::process::Command;
pub mod etcd_cluster;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use rollingops::Runtime;

/// The component, compiled once for the whole test binary.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(None).expect("the embedded component compiles"))
}

/// The Python interpreter for the fake hook tools: the real executable (not a pyenv shim,
/// which costs 100+ ms per call).
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"))
    })
}

/// A fresh directory under the system temp dir, unique per call.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rollingops-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a test directory");
    dir
}

/// How many random seeds the property test explores (`ROLLINGOPS_SEEDS`, default 1000).
pub fn seed_count() -> u64 {
    std::env::var("ROLLINGOPS_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rollingops::{BagOwner, CallbackOutcome, Host, LogLevel, SyncBackendError, WitError};

/// Databags of one peer relation (id 1), shared between hooks.
#[derive(Clone, Debug, Default)]
pub struct Bags {
    /// App bag.
    pub app: BTreeMap<String, String>,
    /// Unit bags.
    pub units: BTreeMap<String, BTreeMap<String, String>>,
}

/// A single unit's host over shared in-memory bags (writes apply immediately).
#[derive(Clone)]
pub struct MemoryHost {
    /// This unit.
    pub unit: String,
    /// Leadership.
    pub leader: bool,
    /// The relation, if it exists.
    pub bags: Option<Arc<Mutex<Bags>>>,
    /// Callback calls: (id, kwargs).
    pub calls: Arc<Mutex<Vec<(String, String)>>>,
    /// Log lines.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// What the sync backend does on acquire.
    pub sync_acquire: Result<(), SyncBackendError>,
}

impl MemoryHost {
    /// A unit on a relation with these bags.
    pub fn new(unit: &str, leader: bool, bags: &Arc<Mutex<Bags>>) -> Self {
        MemoryHost {
            unit: unit.into(),
            leader,
            bags: Some(bags.clone()),
            calls: Arc::default(),
            logs: Arc::default(),
            sync_acquire: Ok(()),
        }
    }
}

impl Host for MemoryHost {
    fn unit_name(&mut self) -> String {
        self.unit.clone()
    }
    fn model_uuid(&mut self) -> String {
        "model-uuid".into()
    }
    fn is_leader(&mut self) -> Result<bool, WitError> {
        Ok(self.leader)
    }
    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, WitError> {
        Ok(if endpoint == "restart" && self.bags.is_some() {
            vec![1]
        } else {
            vec![]
        })
    }
    fn relation_units(&mut self, _: u32) -> Result<Vec<String>, WitError> {
        let bags = self.bags.as_ref().unwrap().lock().unwrap();
        Ok(bags
            .units
            .keys()
            .filter(|u| **u != self.unit)
            .cloned()
            .collect())
    }
    fn relation_get(
        &mut self,
        _: u32,
        owner: &BagOwner,
    ) -> Result<Vec<(String, String)>, WitError> {
        let bags = self.bags.as_ref().unwrap().lock().unwrap();
        let bag = match owner {
            BagOwner::App => Some(&bags.app),
            BagOwner::Unit(u) => bags.units.get(u),
        };
        Ok(bag
            .map(|b| b.clone().into_iter().collect())
            .unwrap_or_default())
    }
    fn relation_set(
        &mut self,
        _: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), WitError> {
        let mut bags = self.bags.as_ref().unwrap().lock().unwrap();
        let unit = self.unit.clone();
        let bag = if app {
            &mut bags.app
        } else {
            bags.units.entry(unit).or_default()
        };
        rollingops::sim::host::apply_writes(bag, pairs);
        Ok(())
    }
    fn log(&mut self, level: LogLevel, message: &str) {
        self.logs
            .lock()
            .unwrap()
            .push(format!("{level:?}: {message}"));
    }
    fn dispatch(&mut self, _: &str) -> Result<(), WitError> {
        Ok(())
    }
    fn now_micros(&mut self) -> i64 {
        1_777_636_800_000_000
    }
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        self.calls
            .lock()
            .unwrap()
            .push((id.into(), kwargs_json.into()));
        CallbackOutcome::Returned(None)
    }
    fn sync_backend_acquire(&mut self, _: &str, _: Option<u32>) -> Result<(), SyncBackendError> {
        self.sync_acquire.clone()
    }
    fn sync_backend_release(&mut self, _: &str) -> Result<(), SyncBackendError> {
        Ok(())
    }
}

/// The test charm's configuration.
pub fn config() -> rollingops::Config {
    rollingops::Config {
        peer_relation_name: "restart".into(),
        etcd_relation_name: None,
        cluster_id: None,
        base_dir: "/var/lib/rollingops".into(),
        callback_ids: vec!["restart".into()],
        sync_lock_ids: vec!["stop-replset-member".into()],
    }
}

/// A hook session for `host`.
pub fn session(host: &MemoryHost) -> rollingops::Session {
    let scratch = std::env::temp_dir().join("rollingops-tests-sandbox");
    let sandbox = rollingops::sandbox::Sandbox::new(scratch.join("charm"), scratch.join("base"));
    rollingops::Session::new(runtime(), Box::new(host.clone()), sandbox, &config())
        .expect("session")
}
