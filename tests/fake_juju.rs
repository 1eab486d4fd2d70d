//! A fake Juju model of real processes, for end-to-end tests.
//!
//! The hook tools are the Python scripts in `tests/fake-juju/`, put first on `PATH`, over
//! a shared state directory (see `fakejuju.py`). This driver plays the unit agents: one
//! thread per unit runs that unit's hooks one at a time, each as `run-hook` (the agent's
//! runner: hook lock, hook context, `<charm_dir>/dispatch`, commit on exit 0, journal),
//! with the `JUJU_*` environment a real unit has. After a hook commits a change, every
//! other unit gets `relation-changed` (coalesced per remote unit while not started, as
//! Juju does); a failed hook is retried after a short back-off before anything else runs
//! on that unit; leadership moves with `leader-elected`; a removed unit's hook is killed
//! and the others get `relation-departed`. `juju-exec` runs (the library's dispatches)
//! take the same hook lock and are not retried.
//!
//! Each unit's charm is the example Rust charm (`host/examples/restart-charm.rs`).
//!
//! A model is one application (`Options::app`) with its peer relation, and optionally other
//! relations (`Options::relations`, e.g. `etcd`) whose remote side the test plays: it sets
//! the remote application's bag and secrets and queues the relation's hooks. Two
//! applications are two models; they share what the test gives both (an etcd, the clock).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollingops_tests::{python, temp_dir};
use serde_json::{Value, json};

/// Executables the end-to-end tests run as separate processes.
#[derive(Debug)]
pub struct Binaries {
    /// The `rollingops` CLI.
    pub rollingops: PathBuf,
    /// The example Rust charm (`host/examples/restart-charm.rs`), used as `dispatch`.
    pub restart_charm: PathBuf,
}

/// The CLI and the example charm, built with this test binary (`tests/Cargo.toml`).
pub fn binaries() -> &'static Binaries {
    static BINARIES: std::sync::OnceLock<Binaries> = std::sync::OnceLock::new();
    BINARIES.get_or_init(|| Binaries {
        rollingops: PathBuf::from(env!("CARGO_BIN_EXE_e2e-rollingops")),
        restart_charm: PathBuf::from(env!("CARGO_BIN_EXE_e2e-restart-charm")),
    })
}

/// The peer endpoint of the example charm.
pub const ENDPOINT: &str = "restart";
/// The peer relation's id.
pub const RELATION_ID: u64 = 3;

/// Microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// How to run the model.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of units (`app/0` … ; `app/0` leads first).
    pub units: usize,
    /// Seconds each restart takes (config `restart-delay`).
    pub restart_delay: f64,
    /// `update-status` interval; `None` never fires it (so a missed wake-up shows).
    pub update_status: Option<Duration>,
    /// Back-off before Juju retries a failed hook.
    pub retry_backoff: Duration,
    /// The application's name (units `<app>/0` …).
    pub app: String,
    /// Relations besides the peer one, as `model.json` entries: `{"endpoint", "id",
    /// "remote_app", "remote_units"}` (the remote side is played by the test).
    pub relations: Vec<Value>,
    /// Environment for every unit's hooks, besides `RESTART_CHARM_BASE_DIR`.
    pub unit_env: Vec<(String, String)>,
}

impl Options {
    /// `units` units, 0.2 s restarts, no update-status.
    pub fn new(units: usize) -> Self {
        Options {
            units,
            restart_delay: 0.2,
            update_status: None,
            retry_backoff: Duration::from_millis(300),
            app: "app".into(),
            relations: vec![],
            unit_env: vec![],
        }
    }
}

/// A hook waiting to run.
#[derive(Clone, Debug)]
struct Queued {
    path: String,
    env: Vec<(String, String)>,
    params: Option<Value>,
    cause: Option<String>,
    not_before: Instant,
    attempts: u32,
}

impl Queued {
    fn new(path: &str) -> Self {
        Queued {
            path: path.to_string(),
            env: vec![],
            params: None,
            cause: None,
            not_before: Instant::now(),
            attempts: 0,
        }
    }

    fn remote_unit(&self) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == "JUJU_REMOTE_UNIT")
            .map(|(_, v)| v.as_str())
    }
}

/// One finished hook, from the runner's journal.
#[derive(Clone, Debug)]
pub struct Journal {
    /// Hook context id.
    pub ctx: String,
    /// Unit.
    pub unit: String,
    /// `hooks/<name>`, `actions/<name>`, or a `juju-exec` command.
    pub path: String,
    /// `agent` or `juju-exec`.
    pub source: String,
    /// The hook whose commit (or dispatch) caused this one.
    pub cause: Option<String>,
    /// Start and end, Unix microseconds.
    pub start: i64,
    /// See `start`.
    pub end: i64,
    /// Exit code (negative: killed by that signal).
    pub exit: i64,
    /// Writes committed.
    pub committed: bool,
    /// The commit changed a bag.
    pub changed: bool,
    /// The new `granted_unit` when the commit changed it (empty: released).
    pub grant: Option<String>,
}

impl Journal {
    fn parse(line: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(line).ok()?;
        Some(Journal {
            ctx: v["ctx"].as_str()?.to_string(),
            unit: v["unit"].as_str()?.to_string(),
            path: v["path"].as_str().unwrap_or_default().to_string(),
            source: v["source"].as_str().unwrap_or_default().to_string(),
            cause: v["cause"].as_str().map(str::to_string),
            start: v["start"].as_i64()?,
            end: v["end"].as_i64()?,
            exit: v["exit"].as_i64().unwrap_or(-1),
            committed: v["committed"].as_bool().unwrap_or(false),
            changed: v["changed"].as_bool().unwrap_or(false),
            grant: v["grant"].as_str().map(str::to_string),
        })
    }
}

#[derive(Default)]
struct Agents {
    queues: BTreeMap<String, VecDeque<Queued>>,
    busy: BTreeSet<String>,
    alive: BTreeSet<String>,
    stopping: bool,
    journal: Vec<Journal>,
    /// Agent hooks that kept failing and were given up on.
    abandoned: Vec<String>,
}

struct Shared {
    dir: PathBuf,
    bin: PathBuf,
    path_env: String,
    options: Options,
    agents: Mutex<Agents>,
    wake: Condvar,
}

impl Shared {
    fn agents(&self) -> MutexGuard<'_, Agents> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a hook; relation-changed coalesces per remote unit, other agent hooks per
    /// name, while not started.
    fn enqueue(&self, unit: &str, hook: Queued) {
        let mut agents = self.agents();
        if !agents.alive.contains(unit) {
            return;
        }
        let queue = agents.queues.entry(unit.to_string()).or_default();
        let coalesces = hook.path.ends_with("-relation-changed")
            || hook.path == "hooks/update-status"
            || hook.path == "hooks/leader-elected";
        if coalesces
            && let Some(existing) = queue
                .iter_mut()
                .find(|q| q.path == hook.path && q.remote_unit() == hook.remote_unit())
        {
            if hook.cause.is_some() {
                existing.cause = hook.cause;
            }
            return;
        }
        queue.push_back(hook);
        self.wake.notify_all();
    }

    fn relation_env(&self, remote: &str) -> Vec<(String, String)> {
        vec![
            ("JUJU_RELATION".into(), ENDPOINT.into()),
            (
                "JUJU_RELATION_ID".into(),
                format!("{ENDPOINT}:{RELATION_ID}"),
            ),
            ("JUJU_REMOTE_UNIT".into(), remote.into()),
            ("JUJU_REMOTE_APP".into(), self.options.app.clone()),
        ]
    }

    /// The unit agent: run queued hooks one at a time.
    fn agent(self: Arc<Self>, unit: String) {
        loop {
            let hook = {
                let mut agents = self.agents();
                loop {
                    if agents.stopping || !agents.alive.contains(&unit) {
                        return;
                    }
                    let now = Instant::now();
                    let head = agents.queues.get(&unit).and_then(|q| q.front()).cloned();
                    match head {
                        Some(hook) if hook.not_before <= now => {
                            agents.queues.get_mut(&unit).unwrap().pop_front();
                            agents.busy.insert(unit.clone());
                            break hook;
                        }
                        Some(hook) => {
                            agents = self
                                .wake
                                .wait_timeout(agents, hook.not_before - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        None => {
                            agents = self.wake.wait(agents).unwrap_or_else(|p| p.into_inner());
                        }
                    }
                }
            };
            let ok = self.run_hook(&unit, &hook);
            let mut agents = self.agents();
            agents.busy.remove(&unit);
            if !ok && hook.path.starts_with("hooks/") && agents.alive.contains(&unit) {
                // Juju retries a failed hook before anything else runs on the unit.
                if hook.attempts < 20 {
                    let retry = Queued {
                        attempts: hook.attempts + 1,
                        not_before: Instant::now() + self.options.retry_backoff,
                        ..hook
                    };
                    agents
                        .queues
                        .entry(unit.clone())
                        .or_default()
                        .push_front(retry);
                } else {
                    agents.abandoned.push(format!("{unit} {}", hook.path));
                }
            }
            self.wake.notify_all();
        }
    }

    fn run_hook(&self, unit: &str, hook: &Queued) -> bool {
        let mut command = Command::new(self.bin.join("run-hook"));
        command
            .args(["--unit", unit, "--path", &hook.path])
            .env("PATH", &self.path_env)
            .env("FAKE_JUJU_DIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(cause) = &hook.cause {
            command.args(["--cause", cause]);
        }
        if let Some(params) = &hook.params {
            // Through a file: action parameters can exceed a command line's limits.
            let file = self.dir.join("params").join(format!(
                "{}-{}.json",
                unit.replace('/', "-"),
                now_micros()
            ));
            std::fs::write(&file, params.to_string()).unwrap();
            command.arg("--params-file").arg(file);
        }
        for (key, value) in &hook.env {
            command.args(["--env", &format!("{key}={value}")]);
        }
        if let Ok(log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs/driver.log"))
        {
            command.stderr(log);
        }
        match command.status() {
            Ok(status) => status.success(),
            Err(e) => {
                let _ = std::fs::write(
                    self.dir.join("logs/driver-error.log"),
                    format!("cannot run {} on {unit}: {e}\n", hook.path),
                );
                false
            }
        }
    }

    /// Follow the runners' journal; fan out relation-changed after changing commits.
    fn follow_journal(self: Arc<Self>) {
        let path = self.dir.join("journal.jsonl");
        let mut offset = 0u64;
        let mut partial = String::new();
        loop {
            if self.agents().stopping {
                return;
            }
            let mut fresh = String::new();
            if let Ok(mut file) = std::fs::File::open(&path) {
                let _ = file.seek(SeekFrom::Start(offset));
                if let Ok(n) = file.read_to_string(&mut fresh) {
                    offset += n as u64;
                }
            }
            partial.push_str(&fresh);
            while let Some(end) = partial.find('\n') {
                let line: String = partial.drain(..=end).collect();
                let Some(entry) = Journal::parse(&line) else {
                    continue;
                };
                if entry.committed && entry.changed {
                    let others: Vec<String> = self
                        .agents()
                        .alive
                        .iter()
                        .filter(|u| **u != entry.unit)
                        .cloned()
                        .collect();
                    for other in others {
                        let mut hook = Queued::new(&format!("hooks/{ENDPOINT}-relation-changed"));
                        hook.env = self.relation_env(&entry.unit);
                        hook.cause = Some(entry.ctx.clone());
                        self.enqueue(&other, hook);
                    }
                }
                self.agents().journal.push(entry);
                self.wake.notify_all();
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    fn update_status(self: Arc<Self>, every: Duration) {
        let mut next = Instant::now() + every;
        loop {
            {
                let agents = self.agents();
                let (agents, _) = self
                    .wake
                    .wait_timeout(agents, next.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(|p| p.into_inner());
                if agents.stopping {
                    return;
                }
            }
            if Instant::now() >= next {
                let units: Vec<String> = self.agents().alive.iter().cloned().collect();
                for unit in units {
                    self.enqueue(&unit, Queued::new("hooks/update-status"));
                }
                next = Instant::now() + every;
            }
        }
    }
}

/// One start or stop line of the fake service.
#[derive(Clone, Debug)]
pub struct ServiceLine {
    /// Unix microseconds.
    pub at: i64,
    /// `start` or `stop`.
    pub kind: String,
    /// Unit.
    pub unit: String,
    /// Hook context that ran the callback.
    pub ctx: String,
}

/// One callback run, from the service log.
#[derive(Clone, Debug)]
pub struct Restart {
    /// Unit.
    pub unit: String,
    /// Hook context.
    pub ctx: String,
    /// Start (Unix microseconds).
    pub start: i64,
    /// Stop, if the callback finished.
    pub stop: Option<i64>,
}

/// A running fake model.
pub struct Model {
    /// The state directory (`FAKE_JUJU_DIR`).
    pub dir: PathBuf,
    /// The fake tools, first on `PATH`.
    pub bin: PathBuf,
    /// Unit names at the start.
    pub units: Vec<String>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Kill and removal times of hooks cut short: (unit, Unix microseconds).
    pub cut: Vec<(String, i64)>,
}

fn write_json(path: &Path, value: &Value) {
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&temp, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

fn read_json(path: &Path) -> Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// Install the fake tools into `bin`, with the Python ones' shebang pointing at the real
/// interpreter (`-S`: no site import). A Python tool call costs ~20 ms; the shell fast
/// paths (reads of committed state, logs) a few ms.
pub fn install_tools(bin: &Path) {
    std::fs::create_dir_all(bin).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("fake-juju");
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue; // e.g. a __pycache__ left by running the tools by hand
        }
        let name = entry.file_name();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let text = match text.strip_prefix("#!/usr/bin/env python3\n") {
            Some(rest) => format!("#!{} -S\n{rest}", python().display()),
            None => text,
        };
        let target = bin.join(&name);
        std::fs::write(&target, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = if name.to_string_lossy().ends_with(".py") {
            0o644
        } else {
            0o755
        };
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // The shell tools fall back to the Python ones through this link.
    let link = bin.join(".python");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(python(), link).unwrap();
}

/// Re-render `fast/` (the shell tools' view of the committed state) after the driver
/// changed `model.json` or `bags.json`; the caller holds `state.lock`.
fn render(dir: &Path, bin: &Path) {
    let status = Command::new(bin.join(".python"))
        .arg("-S")
        .arg(bin.join("fakejuju.py"))
        .arg("render")
        .env("FAKE_JUJU_DIR", dir)
        .status()
        .unwrap();
    assert!(status.success(), "rendering the fake model's fast/ files");
}

impl Model {
    /// Create the model and start its agents (no hook runs yet).
    pub fn start(name: &str, options: Options) -> Model {
        let dir = temp_dir(&format!("e2e-{name}"));
        let bin = dir.join("bin");
        install_tools(&bin);
        for sub in ["logs", "ctx", "locks", "running", "pending", "params"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let app = options.app.clone();
        let units: Vec<String> = (0..options.units).map(|i| format!("{app}/{i}")).collect();
        let charm = &binaries().restart_charm;
        let mut charm_dirs = serde_json::Map::new();
        let mut unit_env = serde_json::Map::new();
        let mut unit_bags = serde_json::Map::new();
        for unit in &units {
            let slug = unit.replace('/', "-");
            let charm_dir = dir.join("units").join(&slug).join("charm");
            std::fs::create_dir_all(&charm_dir).unwrap();
            std::os::unix::fs::symlink(charm, charm_dir.join("dispatch")).unwrap();
            charm_dirs.insert(unit.clone(), json!(charm_dir));
            let base = dir.join("units").join(&slug).join("rollingops");
            let mut env = json!({"RESTART_CHARM_BASE_DIR": base});
            for (key, value) in &options.unit_env {
                env[key] = json!(value);
            }
            unit_env.insert(unit.clone(), env);
            unit_bags.insert(unit.clone(), json!({}));
        }
        write_json(
            &dir.join("model.json"),
            &json!({
                "model_uuid": "c0ffee00-0000-4000-8000-00000000e2e0",
                "app": app,
                "endpoint": ENDPOINT,
                "relation_id": RELATION_ID,
                "leader": units[0],
                "units": units,
                "config": {
                    "service-log": dir.join("service.log"),
                    "restart-delay": options.restart_delay,
                },
                "charm_dirs": charm_dirs,
                "unit_env": unit_env,
                "relations": options.relations,
            }),
        );
        for relation in &options.relations {
            write_json(
                &dir.join(format!("rel-{}.json", relation["id"])),
                &json!({"app": {}, "units": {}, "remote_app": {}, "remote_units": {}}),
            );
        }
        write_json(
            &dir.join("bags.json"),
            &json!({"app": {}, "units": unit_bags}),
        );
        render(&dir, &bin);
        let path_env = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            bin: bin.clone(),
            path_env,
            options: options.clone(),
            agents: Mutex::new(Agents {
                alive: units.iter().cloned().collect(),
                ..Agents::default()
            }),
            wake: Condvar::new(),
        });
        let mut threads = Vec::new();
        for unit in &units {
            let shared = shared.clone();
            let unit = unit.clone();
            threads.push(std::thread::spawn(move || shared.agent(unit)));
        }
        let follower = shared.clone();
        threads.push(std::thread::spawn(move || follower.follow_journal()));
        if let Some(every) = options.update_status {
            let ticker = shared.clone();
            threads.push(std::thread::spawn(move || ticker.update_status(every)));
        }
        Model {
            dir,
            bin,
            units,
            shared,
            threads,
            cut: vec![],
        }
    }

    /// Start a model and run the deployment hooks (`install` everywhere, which also
    /// compiles each unit's component cache, and `leader-elected` on the leader).
    pub fn deploy(name: &str, options: Options) -> Model {
        let model = Model::start(name, options);
        for unit in &model.units {
            model.queue(unit, "hooks/install");
        }
        model.queue(&model.units[0], "hooks/leader-elected");
        assert!(
            model.wait_idle(Duration::from_secs(60)),
            "deployment did not settle"
        );
        model
    }

    /// The environment for running tools or the CLI as `unit` outside the agent.
    pub fn path_env(&self) -> &str {
        &self.shared.path_env
    }

    /// Queue a hook by dispatch path (`hooks/update-status`).
    pub fn queue(&self, unit: &str, path: &str) {
        self.shared.enqueue(unit, Queued::new(path));
    }

    /// Queue a hook with extra environment (a relation hook's `JUJU_RELATION` …).
    pub fn queue_with_env(&self, unit: &str, path: &str, env: &[(&str, &str)]) {
        let mut hook = Queued::new(path);
        hook.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.shared.enqueue(unit, hook);
    }

    /// Queue an agent hook of relation `relation` (an entry of [`Options::relations`])
    /// on `unit`, e.g. `etcd-relation-changed`.
    pub fn queue_relation_hook(&self, unit: &str, relation: &Value, kind: &str) {
        let endpoint = relation["endpoint"].as_str().unwrap_or_default();
        let id = format!("{endpoint}:{}", relation["id"]);
        let remote_app = relation["remote_app"].as_str().unwrap_or_default();
        let remote_unit = relation["remote_units"][0].as_str().unwrap_or_default();
        self.queue_with_env(
            unit,
            &format!("hooks/{endpoint}-relation-{kind}"),
            &[
                ("JUJU_RELATION", endpoint),
                ("JUJU_RELATION_ID", &id),
                ("JUJU_REMOTE_APP", remote_app),
                ("JUJU_REMOTE_UNIT", remote_unit),
            ],
        );
    }

    /// The committed bags of a non-peer relation (`app`, `units`, `remote_app`,
    /// `remote_units`).
    pub fn relation_bags(&self, id: u64) -> Value {
        read_json(&self.dir.join(format!("rel-{id}.json")))
    }

    /// Set the remote application's bag of a non-peer relation, as its leader would.
    pub fn set_remote_app_bag(&self, id: u64, bag: Value) {
        let _lock = self.state_lock();
        let path = self.dir.join(format!("rel-{id}.json"));
        let mut bags = read_json(&path);
        bags["remote_app"] = bag;
        write_json(&path, &bags);
    }

    /// The model's secrets (`id` → `{label, content, grants}`).
    pub fn secrets(&self) -> Value {
        read_json(&self.dir.join("secrets.json"))
    }

    /// Add a secret owned by a remote application (`secret-get <id>` finds it).
    pub fn add_secret(&self, id: &str, content: Value) {
        let _lock = self.state_lock();
        let path = self.dir.join("secrets.json");
        let mut secrets = read_json(&path);
        if !secrets.is_object() {
            secrets = json!({});
        }
        secrets[id] = json!({"label": null, "content": content});
        write_json(&path, &secrets);
    }

    /// The unit's charm directory (`dispatch` is the example charm).
    pub fn charm_dir(&self, unit: &str) -> PathBuf {
        self.dir
            .join("units")
            .join(unit.replace('/', "-"))
            .join("charm")
    }

    /// Queue an action with parameters (`actions/restart`).
    pub fn action(&self, unit: &str, name: &str, params: Value) {
        let mut hook = Queued::new(&format!("actions/{name}"));
        hook.params = Some(params);
        self.shared.enqueue(unit, hook);
    }

    /// Make fault injections (`faults.json`, consumed by the tools).
    pub fn inject(&self, faults: Value) {
        let _lock = self.state_lock();
        write_json(&self.dir.join("faults.json"), &faults);
    }

    fn state_lock(&self) -> std::fs::File {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("state.lock"))
            .unwrap();
        file.lock().unwrap();
        file
    }

    /// Move leadership to `unit` (`leader-elected` runs there).
    pub fn set_leader(&self, unit: &str) {
        {
            let _lock = self.state_lock();
            let path = self.dir.join("model.json");
            let mut model = read_json(&path);
            model["leader"] = json!(unit);
            write_json(&path, &model);
            render(&self.dir, &self.bin);
        }
        self.queue(unit, "hooks/leader-elected");
    }

    /// The current leader.
    pub fn leader(&self) -> String {
        read_json(&self.dir.join("model.json"))["leader"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Kill the unit's running hook (its whole process group), as a crash would; returns
    /// whether one was running.
    pub fn kill_hook(&mut self, unit: &str) -> bool {
        let running = self.dir.join("running").join(unit.replace('/', "-"));
        let Some(pid) = std::fs::read_to_string(&running)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return false;
        };
        // SAFETY: plain syscall; the hook runs in its own session, so -pid is its group.
        let killed = unsafe { libc::kill(-pid, libc::SIGKILL) } == 0;
        if killed {
            self.cut.push((unit.to_string(), now_micros()));
        }
        killed
    }

    /// Remove `unit` (machine lost): its hook dies, its bag goes, the others get
    /// `relation-departed`; leadership moves if it led.
    pub fn remove_unit(&mut self, unit: &str) {
        let new_leader = {
            let _lock = self.state_lock();
            let path = self.dir.join("model.json");
            let mut model = read_json(&path);
            let units: Vec<Value> = model["units"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|u| u.as_str() != Some(unit))
                .cloned()
                .collect();
            let mut new_leader = None;
            if model["leader"].as_str() == Some(unit) {
                new_leader = units[0].as_str().map(str::to_string);
                model["leader"] = units[0].clone();
            }
            model["units"] = Value::Array(units);
            write_json(&path, &model);
            let bags_path = self.dir.join("bags.json");
            let mut bags = read_json(&bags_path);
            if let Some(units) = bags["units"].as_object_mut() {
                units.remove(unit);
            }
            write_json(&bags_path, &bags);
            render(&self.dir, &self.bin);
            new_leader
        };
        {
            let mut agents = self.shared.agents();
            agents.alive.remove(unit);
            agents.queues.remove(unit);
        }
        self.shared.wake.notify_all();
        self.kill_hook(unit);
        let others: Vec<String> = self.shared.agents().alive.iter().cloned().collect();
        for other in &others {
            let mut hook = Queued::new(&format!("hooks/{ENDPOINT}-relation-departed"));
            hook.env = self.shared.relation_env(unit);
            hook.env
                .push(("JUJU_DEPARTING_UNIT".into(), unit.to_string()));
            self.shared.enqueue(other, hook);
        }
        if let Some(leader) = new_leader {
            self.queue(&leader, "hooks/leader-elected");
        }
    }

    /// Whether nothing runs or waits: agent queues empty, no hook or `juju-exec` in
    /// flight, and the journal quiet for a moment.
    pub fn is_idle(&self) -> bool {
        let pending = std::fs::read_dir(self.dir.join("pending"))
            .map(|d| d.count())
            .unwrap_or(0);
        let agents = self.shared.agents();
        pending == 0 && agents.busy.is_empty() && agents.queues.values().all(|q| q.is_empty())
    }

    /// Wait until idle (and still idle 150 ms later); false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_idle() {
                let seen = self.journal().len();
                std::thread::sleep(Duration::from_millis(150));
                if self.is_idle() && self.journal().len() == seen {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Wait for `condition`; false on timeout.
    pub fn wait_until(&self, timeout: Duration, mut condition: impl FnMut(&Model) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if condition(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Every finished hook so far.
    pub fn journal(&self) -> Vec<Journal> {
        self.shared.agents().journal.clone()
    }

    /// Agent hooks given up on after repeated failures.
    pub fn abandoned(&self) -> Vec<String> {
        self.shared.agents().abandoned.clone()
    }

    /// The committed app bag.
    pub fn app_bag(&self) -> Value {
        read_json(&self.dir.join("bags.json"))["app"].clone()
    }

    /// The committed unit bags.
    pub fn unit_bags(&self) -> BTreeMap<String, Value> {
        read_json(&self.dir.join("bags.json"))["units"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// The fake service's lines.
    pub fn service(&self) -> Vec<ServiceLine> {
        let text = std::fs::read_to_string(self.dir.join("service.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some(ServiceLine {
                    at: parts.next()?.parse().ok()?,
                    kind: parts.next()?.to_string(),
                    unit: parts.next()?.to_string(),
                    ctx: parts.next().unwrap_or("-").to_string(),
                })
            })
            .collect()
    }

    /// Callback runs, in start order.
    pub fn restarts(&self) -> Vec<Restart> {
        let lines = self.service();
        let mut runs: Vec<Restart> = lines
            .iter()
            .filter(|l| l.kind == "start")
            .map(|l| Restart {
                unit: l.unit.clone(),
                ctx: l.ctx.clone(),
                start: l.at,
                stop: lines
                    .iter()
                    .find(|s| {
                        s.kind == "stop" && s.ctx == l.ctx && s.unit == l.unit && s.at >= l.at
                    })
                    .map(|s| s.at),
            })
            .collect();
        runs.sort_by_key(|r| r.start);
        runs
    }

    /// Completed restarts per unit.
    pub fn completed(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for run in self.restarts() {
            if run.stop.is_some() {
                *counts.entry(run.unit).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Mutual exclusion from the service's timestamps: no two callbacks overlap. A run
    /// without a stop line ends when its hook was killed or its unit removed.
    pub fn overlaps(&self) -> Vec<String> {
        let runs = self.restarts();
        let end = |run: &Restart| {
            run.stop.unwrap_or_else(|| {
                self.cut
                    .iter()
                    .filter(|(u, at)| *u == run.unit && *at >= run.start)
                    .map(|(_, at)| *at)
                    .min()
                    .unwrap_or(i64::MAX)
            })
        };
        let mut problems = Vec::new();
        for pair in runs.windows(2) {
            if end(&pair[0]) > pair[1].start {
                problems.push(format!(
                    "{} ({}..{}) overlaps {} (from {})",
                    pair[0].unit,
                    pair[0].start,
                    end(&pair[0]),
                    pair[1].unit,
                    pair[1].start
                ));
            }
        }
        problems
    }

    /// Lines of a unit's `juju-log` output.
    pub fn juju_log(&self, unit: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .join("logs")
                .join(format!("{}.log", unit.replace('/', "-"))),
        )
        .unwrap_or_default()
    }

    /// A unit's hook output (stdout and stderr of every hook).
    pub fn hook_log(&self, unit: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .join("logs")
                .join(format!("{}.hooks.log", unit.replace('/', "-"))),
        )
        .unwrap_or_default()
    }

    /// Everything worth reading when a scenario fails.
    pub fn dump(&self) -> String {
        let mut out = format!("model in {}\n", self.dir.display());
        for entry in self.journal() {
            out.push_str(&format!(
                "  {:>8.3}s {:<6} {:<40} {:<9} exit {:>3} {}{} ctx {} cause {:?}\n",
                (entry.start % 100_000_000) as f64 / 1e6,
                entry.unit,
                entry.path,
                entry.source,
                entry.exit,
                if entry.committed {
                    "committed"
                } else {
                    "discarded"
                },
                if entry.changed { "+changed" } else { "" },
                entry.ctx,
                entry.cause
            ));
        }
        for line in self.service() {
            out.push_str(&format!(
                "  service {} {} {} {}\n",
                line.at, line.kind, line.unit, line.ctx
            ));
        }
        out.push_str(&format!("  app bag {}\n", self.app_bag()));
        for (unit, bag) in self.unit_bags() {
            out.push_str(&format!("  {unit} bag {bag}\n"));
        }
        out
    }

    /// Run `program args` as `unit` inside a hook context, through `juju-exec`; returns
    /// (exit code, stdout, stderr).
    pub fn exec(&self, unit: &str, command: &str) -> (i32, String, String) {
        self.exec_with(unit, command, &[])
    }

    /// [`Model::exec`] with extra environment variables.
    pub fn exec_with(
        &self,
        unit: &str,
        command: &str,
        env: &[(&str, &str)],
    ) -> (i32, String, String) {
        let output = Command::new(self.bin.join("juju-exec"))
            .args(["-u", unit, command])
            .envs(env.iter().copied())
            .env("PATH", self.path_env())
            .env("FAKE_JUJU_DIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// A unit's runtime directory (component cache, dispatch log).
    pub fn base_dir(&self, unit: &str) -> PathBuf {
        self.dir
            .join("units")
            .join(unit.replace('/', "-"))
            .join("rollingops")
    }

    /// Stop the agents (after letting in-flight work finish briefly).
    pub fn stop(&mut self) {
        let _ = self.wait_idle(Duration::from_secs(5));
        self.shared.agents().stopping = true;
        self.shared.wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("fake model kept for inspection: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Numbers from one rolling restart.
#[derive(Clone, Debug, Default)]
pub struct Measures {
    /// Units.
    pub units: usize,
    /// Seconds from the first request to the last restart's end.
    pub wall: f64,
    /// Hooks run in that time (all units, all kinds).
    pub hooks: usize,
    /// Hand-offs measured (between consecutive completed restarts of different units).
    pub handoffs: usize,
    /// Mean hooks on the critical path of a hand-off: 1 when the hook that wrote the
    /// grant is the previous or the next callback's own hook, else 2 (result hook →
    /// leader's grant hook → next callback's hook).
    pub critical_hooks_per_handoff: f64,
    /// Mean seconds from one restart's end to the next one's start.
    pub seconds_per_handoff: f64,
    /// Mean wall time of one hook process (charm start to exit, tool calls included).
    pub mean_hook_ms: f64,
}

/// Measure a finished rolling restart that started at `t0` (Unix microseconds).
pub fn measure(model: &Model, t0: i64) -> Measures {
    let runs: Vec<Restart> = model
        .restarts()
        .into_iter()
        .filter(|r| r.stop.is_some())
        .collect();
    let journal = model.journal();
    let end = runs.iter().filter_map(|r| r.stop).max().unwrap_or(t0);
    let in_window: Vec<&Journal> = journal
        .iter()
        .filter(|j| j.start >= t0 && j.start <= end)
        .collect();
    let mut hops = Vec::new();
    let mut gaps = Vec::new();
    for pair in runs.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        if prev.unit == next.unit {
            continue;
        }
        gaps.push((next.start - prev.stop.unwrap()) as f64 / 1e6);
        // The hook that granted the lock to the next unit: the last committed grant to it
        // before its callback started.
        let grant = journal
            .iter()
            .filter(|j| j.grant.as_deref() == Some(next.unit.as_str()) && j.start <= next.start)
            .max_by_key(|j| j.end);
        if let Some(grant) = grant {
            hops.push(if grant.ctx == prev.ctx || grant.ctx == next.ctx {
                1.0
            } else {
                2.0
            });
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let durations: Vec<f64> = in_window
        .iter()
        .map(|j| (j.end - j.start) as f64 / 1e3)
        .collect();
    Measures {
        units: model.units.len(),
        wall: (end - t0) as f64 / 1e6,
        hooks: in_window.len(),
        handoffs: gaps.len(),
        critical_hooks_per_handoff: mean(&hops),
        seconds_per_handoff: mean(&gaps),
        mean_hook_ms: mean(&durations),
    }
}
