//! The synchronous lock through the real component on a real etcd (TLS, client
//! certificates): the cluster's lock key taken as `<owner>:sync` under a lease a started
//! `etcdctl lease keep-alive` renews, released with the lease; a second unit waits in a
//! watch and gets it as soon as it is released; a timeout is a `TimeoutError` with no
//! fallback; a unit whose own worker holds the lock is refused at once; etcd unreachable →
//! the charm's backend.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollingops::{
    BagOwner, CallbackOutcome, Host, LogLevel, Session, SyncBackendError, WitError,
    sandbox::Sandbox,
};
use rollingops_guest::etcd::config::{ETCDCTL_JSON, SERVER_CA};
use rollingops_guest::etcd::keys::{Keys, owner};
use rollingops_tests::etcd_cluster::Etcd;

const MODEL: &str = "model";
const CLUSTER: &str = "sync";

/// A unit whose peer and etcd relations exist (nothing in their bags) and whose charm
/// registered one sync-lock backend, `custom`.
#[derive(Clone)]
struct SyncHost {
    unit: String,
    backend_calls: Arc<Mutex<Vec<String>>>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl SyncHost {
    fn new(unit: &str) -> Self {
        SyncHost {
            unit: unit.into(),
            backend_calls: Arc::default(),
            logs: Arc::default(),
        }
    }
    fn backend_calls(&self) -> Vec<String> {
        self.backend_calls.lock().unwrap().clone()
    }
}

impl Host for SyncHost {
    fn unit_name(&mut self) -> String {
        self.unit.clone()
    }
    fn model_uuid(&mut self) -> String {
        MODEL.into()
    }
    fn is_leader(&mut self) -> Result<bool, WitError> {
        Ok(false)
    }
    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, WitError> {
        Ok(match endpoint {
            "restart" => vec![1],
            "etcd" => vec![2],
            _ => vec![],
        })
    }
    fn relation_units(&mut self, _: u32) -> Result<Vec<String>, WitError> {
        Ok(vec![])
    }
    fn relation_get(&mut self, _: u32, _: &BagOwner) -> Result<Vec<(String, String)>, WitError> {
        Ok(vec![])
    }
    fn relation_set(&mut self, _: u32, _: bool, _: &[(String, String)]) -> Result<(), WitError> {
        Ok(())
    }
    fn relation_get_remote_app(&mut self, _: u32) -> Result<Vec<(String, String)>, WitError> {
        Ok(vec![])
    }
    fn secret_get(&mut self, _: &str) -> Result<Option<Vec<(String, String)>>, WitError> {
        Ok(None)
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
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
    }
    fn sleep_ms(&mut self, ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    fn run_callback(&mut self, _: &str, _: &str) -> CallbackOutcome {
        CallbackOutcome::Missing
    }
    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout: Option<u32>,
    ) -> Result<(), SyncBackendError> {
        self.backend_calls
            .lock()
            .unwrap()
            .push(format!("acquire {id} {timeout:?}"));
        Ok(())
    }
    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError> {
        self.backend_calls
            .lock()
            .unwrap()
            .push(format!("release {id}"));
        Ok(())
    }
}

/// A sandbox whose base_dir holds an etcdctl configuration for `endpoints` (the test CA's
/// client certificate) — what the etcd relation flow leaves there.
fn configured(etcd: &Etcd, name: &str, endpoints: Option<&str>) -> Sandbox {
    let shared = etcd.sandbox();
    let base = shared.base_dir().join(name);
    std::fs::create_dir_all(base.join("etcd")).unwrap();
    let env = etcd.env();
    let var = |key: &str| env.iter().find(|(k, _)| k == key).unwrap().1.clone();
    let config = serde_json::json!({
        "endpoints": endpoints.map(str::to_string).unwrap_or_else(|| var("ETCDCTL_ENDPOINTS")),
        "cacert_path": var("ETCDCTL_CACERT"),
        "cert_path": var("ETCDCTL_CERT"),
        "key_path": var("ETCDCTL_KEY"),
    });
    std::fs::write(base.join(ETCDCTL_JSON), config.to_string()).unwrap();
    std::fs::copy(var("ETCDCTL_CACERT"), base.join(SERVER_CA)).unwrap();
    let charm = shared.etcdctl_path();
    Sandbox::new(
        charm.parent().unwrap().parent().unwrap().parent().unwrap(),
        base,
    )
}

fn session(host: &SyncHost, sandbox: Sandbox) -> Session {
    let config = rollingops::Config {
        peer_relation_name: "restart".into(),
        etcd_relation_name: Some("etcd".into()),
        cluster_id: Some(CLUSTER.into()),
        base_dir: sandbox.base_dir().display().to_string(),
        callback_ids: vec![],
        sync_lock_ids: vec!["custom".into()],
    };
    Session::new(
        rollingops_tests::runtime(),
        Box::new(host.clone()),
        sandbox,
        &config,
    )
    .expect("session")
}

fn lock_key() -> String {
    Keys::new(CLUSTER, &owner(MODEL, "app/0")).lock
}

/// The lock key's value and lease (hex), if held.
fn lock_holder(etcd: &Etcd) -> Option<(String, String)> {
    let value = etcd.etcdctl(&["get", &lock_key(), "--print-value-only"], None);
    let value = value.stdout.trim_end().to_string();
    if value.is_empty() {
        return None;
    }
    let out = etcd.etcdctl(&["get", &lock_key(), "-w", "json"], None);
    let reply: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let lease = reply["kvs"][0]["lease"].as_i64().unwrap_or(0);
    Some((value, format!("{lease:x}")))
}

/// Whether a `lease keep-alive <lease>` process runs.
fn keep_alive_runs(lease: &str) -> bool {
    let ps = std::process::Command::new("ps")
        .args(["-ww", "-eo", "args"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .any(|l| l.contains("lease keep-alive") && l.trim_end().ends_with(lease))
}

#[test]
fn the_sync_lock_is_the_cluster_lock_under_a_kept_alive_lease_and_a_waiter_gets_it_at_release() {
    let etcd = Etcd::start(33_790, 1);
    let (a, b) = (SyncHost::new("app/0"), SyncHost::new("other/0"));
    let mut first = session(&a, configured(&etcd, "a", None));
    first.acquire_sync_lock("custom", Some(10)).unwrap();
    let (holder, lease) = lock_holder(&etcd).expect("the lock key is held");
    assert_eq!(holder, format!("{}:sync", owner(MODEL, "app/0")));
    assert!(keep_alive_runs(&lease), "no keep-alive for lease {lease}");
    assert!(
        a.backend_calls().is_empty(),
        "etcd was used, not the backend"
    );
    // Taking it again through the same manager would wait for itself: refused at once.
    let again = first.acquire_sync_lock("custom", Some(10)).unwrap_err();
    assert!(
        again
            .to_string()
            .contains("already holds the etcd sync lock"),
        "{again}"
    );

    // Another application's unit waits in a watch; it gets the lock as soon as it is free.
    let waiter = {
        let (b, sandbox) = (b.clone(), configured(&etcd, "b", None));
        std::thread::spawn(move || {
            let mut second = session(&b, sandbox);
            second.acquire_sync_lock("custom", Some(30)).unwrap();
            let got = Instant::now();
            second.release_sync_lock("custom").unwrap();
            got
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!waiter.is_finished(), "the waiter took a held lock");
    let released = Instant::now();
    first.release_sync_lock("custom").unwrap();
    let got = waiter.join().unwrap();
    let wait = got.duration_since(released);
    assert!(
        wait < Duration::from_secs(3),
        "the waiter took {wait:?} after the release (the reference polls every 15 s)"
    );
    assert_eq!(lock_holder(&etcd), None, "released");
    assert!(
        !keep_alive_runs(&lease),
        "the keep-alive outlived the release"
    );
    let leases = etcd.etcdctl(&["lease", "list"], None).stdout;
    assert!(leases.starts_with("found 0 leases"), "{leases}");
    assert!(b.backend_calls().is_empty());
}

#[test]
fn a_sync_lock_timeout_is_a_timeout_and_never_falls_back() {
    let etcd = Etcd::start(34_790, 1);
    // Someone else (another application's worker) holds the lock, under a lease.
    let lease = etcd.etcdctl(&["lease", "grant", "60"], None).stdout;
    let lease = lease.split_whitespace().nth(1).unwrap().to_string();
    let out = etcd.etcdctl(
        &[
            "put",
            &lock_key(),
            "someone-else",
            &format!("--lease={lease}"),
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let host = SyncHost::new("app/0");
    let mut unit = session(&host, configured(&etcd, "t", None));
    let started = Instant::now();
    let err = unit.acquire_sync_lock("custom", Some(2)).unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        rollingops::runtime::class(err.library().unwrap()),
        "TimeoutError",
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "timed out after {took:?} for a 2 s timeout"
    );
    assert!(
        host.backend_calls().is_empty(),
        "a timeout fell back to the backend"
    );
    assert_eq!(lock_holder(&etcd).unwrap().0, "someone-else");
    // Its own lease went with the failure (only the holder's remains).
    let leases = etcd.etcdctl(&["lease", "list"], None).stdout;
    assert!(leases.starts_with("found 1 leases"), "{leases}");
}

#[test]
fn a_unit_whose_own_worker_holds_the_lock_is_refused_at_once() {
    let etcd = Etcd::start(35_790, 1);
    let out = etcd.etcdctl(&["put", &lock_key(), &owner(MODEL, "app/0")], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let host = SyncHost::new("app/0");
    let mut unit = session(&host, configured(&etcd, "s", None));
    let started = Instant::now();
    let err = unit.acquire_sync_lock("custom", None).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "it waited");
    let message = err.to_string();
    assert!(
        message.contains("RollingOpsSyncLockError") && message.contains("rollingops_lock_granted"),
        "{message}"
    );
    assert!(host.backend_calls().is_empty());
}

#[test]
fn etcd_unreachable_falls_back_to_the_charms_backend() {
    let etcd = Etcd::start(36_790, 1);
    let host = SyncHost::new("app/0");
    let dead = "https://127.0.0.1:9"; // nothing listens on the discard port
    let mut unit = session(&host, configured(&etcd, "f", Some(dead)));
    unit.acquire_sync_lock("custom", Some(30)).unwrap();
    unit.release_sync_lock("custom").unwrap();
    assert_eq!(
        host.backend_calls(),
        ["acquire custom Some(30)", "release custom"]
    );
    let logs = host.logs.lock().unwrap().join("\n");
    assert!(logs.contains("The etcd sync lock is unavailable"), "{logs}");
}
