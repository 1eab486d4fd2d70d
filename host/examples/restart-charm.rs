//! A small Rust charm using rollingops: this binary is the charm's `dispatch`.
//!
//! It "restarts" a fake service one unit at a time. The `restart` action (dispatch path
//! `actions/restart`, parameter `delay` in seconds; all parameters become the operation's
//! kwargs) queues a restart; every other hook is handed to the library, which runs the
//! callback when this unit holds the lock. The
//! callback appends `<unix-micros> start <unit> <hook-context>` to the service log, sleeps
//! `delay` seconds (or the `restart-delay` config option), then appends the matching
//! `stop` line: two units' start..stop intervals must never overlap.
//!
//! Configuration (`config-get`): `service-log` (path; default `<base-dir>/service.log`)
//! and `restart-delay` (seconds; default 1). The library's runtime directory is
//! `RESTART_CHARM_BASE_DIR` (default `/var/lib/rollingops`). With `RESTART_CHARM_TIMING=1`
//! the charm prints what loading the component cost to stderr.
//!
//! etcd mode: `RESTART_CHARM_ETCD_CLUSTER=<cluster_id>` names the lock scope and uses the
//! etcd relation `etcd` (interface `etcd_client`); the charm then needs `etcdctl` in
//! `<charm-dir>/usr/bin/`, and its worker is `rollingops worker`, started detached from
//! `RESTART_CHARM_WORKER` (a `rollingops` binary; default `<charm-dir>/usr/bin/rollingops`).
//!
//! ```sh
//! cargo build -p rollingops --example restart-charm
//! ln -s "$PWD/target/debug/examples/restart-charm" <charm-dir>/dispatch
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollingops::charm::{
    CallbackResult, DEFAULT_BASE_DIR, HookEnv, LockOptions, OperationResult, RollOptions,
    RollingOpsManager,
};
use rollingops::juju;
use serde_json::{Map, Value};

fn main() -> ExitCode {
    let started = Instant::now();
    match run(started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The hook fails (Juju discards its relation writes and retries it); say why
            // in the unit's log as well as on stderr.
            let message = format!("restart-charm: {error}");
            eprintln!("{message}");
            let _ = juju::juju_log("ERROR", &message);
            ExitCode::from(1)
        }
    }
}

fn run(started: Instant) -> Result<(), Box<dyn std::error::Error>> {
    let base_dir = std::env::var("RESTART_CHARM_BASE_DIR").unwrap_or(DEFAULT_BASE_DIR.into());
    let unit = std::env::var("JUJU_UNIT_NAME").unwrap_or_default();
    let callback_base = PathBuf::from(&base_dir);
    let (check_unit, check_base) = (unit.clone(), callback_base.clone());
    let done_base = callback_base.clone();
    let builder = RollingOpsManager::builder("restart")
        .base_dir(&base_dir)
        .callback("restart", move |kwargs| {
            restart(&unit, &callback_base, kwargs)
        })
        .health_check("healthy", move |kwargs| {
            healthy(&check_unit, &check_base, kwargs)
        })
        .callback("roll-done", move |kwargs| {
            let log = service_log(&done_base)?;
            let generation = kwargs.get("generation").cloned().unwrap_or_default();
            append(&log, &format!("{} roll-complete {generation}", micros()))?;
            Ok(OperationResult::Release)
        });
    let builder = match std::env::var("RESTART_CHARM_ETCD_CLUSTER") {
        Ok(cluster) if !cluster.is_empty() => builder.etcd("etcd", cluster),
        _ => builder,
    };
    let builder = match std::env::var("RESTART_CHARM_WORKER") {
        Ok(program) if !program.is_empty() => builder.worker_program(program),
        _ => builder,
    };
    let mut manager = builder.build()?;
    let built = started.elapsed();
    let hook = HookEnv::from_env();
    match hook.action() {
        Some("restart") => {
            // The action's parameters (`delay`, …) become the operation's kwargs.
            let kwargs = match juju::action_get()? {
                Value::Object(params) => params,
                _ => Map::new(),
            };
            // `ready_after` (seconds) gates the hand-off on the `healthy` check.
            if kwargs.contains_key("ready_after") {
                let options = LockOptions {
                    health_check: Some("healthy".into()),
                    health_timeout: Some(Duration::from_secs(60)),
                    ..Default::default()
                };
                manager.request_lock("restart", Value::Object(kwargs), &options)?;
            } else {
                manager.request_async_lock("restart", Value::Object(kwargs), None)?;
            }
            println!(
                "restart queued: {}",
                serde_json::to_string(&manager.state()?.status_name())?
            );
        }
        Some("roll") => {
            let kwargs = match juju::action_get()? {
                Value::Object(params) => params,
                _ => Map::new(),
            };
            let options = RollOptions {
                health_check: Some("healthy".into()),
                health_timeout: Some(Duration::from_secs(60)),
                on_complete: Some("roll-done".into()),
            };
            let generation = manager.start_roll("restart", Value::Object(kwargs), &options)?;
            println!("roll {generation} started");
        }
        Some(other) => return Err(format!("unknown action {other:?}").into()),
        None => {
            manager.handle_hook()?;
        }
    }
    if std::env::var("RESTART_CHARM_TIMING").is_ok_and(|v| v == "1") {
        let startup = manager.startup();
        eprintln!(
            "restart-charm timing: cache={:?} load_us={} instantiate_us={} main_to_manager_us={} main_to_exit_us={}",
            startup.cache,
            startup.load.as_micros(),
            startup.instantiate.as_micros(),
            built.as_micros(),
            started.elapsed().as_micros()
        );
    }
    Ok(())
}

/// The status's wire name, for the action's output.
trait StatusName {
    fn status_name(&self) -> &'static str;
}

impl StatusName for rollingops::State {
    fn status_name(&self) -> &'static str {
        match self.status {
            rollingops::Status::NotReady => "not-ready",
            rollingops::Status::Waiting => "waiting",
            rollingops::Status::Granted => "granted",
            rollingops::Status::Idle => "idle",
        }
    }
}

fn micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write per line: appends of a short line are atomic across processes.
    file.write_all(format!("{line}\n").as_bytes())
}

fn service_log(base_dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    let config = juju::config_get(None)?;
    Ok(config
        .get("service-log")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .unwrap_or_else(|| base_dir.join("service.log")))
}

/// The fake service is healthy `ready_after` seconds (kwarg) after its last restart
/// stopped; each check is logged so tests can see when the lock moved on.
fn healthy(unit: &str, base_dir: &Path, kwargs: &Map<String, Value>) -> bool {
    let Ok(log) = service_log(base_dir) else {
        return false;
    };
    let ready_after = kwargs
        .get("ready_after")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stopped = text.lines().rev().find_map(|line| {
        let mut parts = line.split_whitespace();
        let at: u128 = parts.next()?.parse().ok()?;
        (parts.next()? == "stop" && parts.next()? == unit).then_some(at)
    });
    let ready = stopped.is_some_and(|at| micros().saturating_sub(at) as f64 / 1e6 >= ready_after);
    let verdict = if ready { "healthy" } else { "unhealthy" };
    let _ = append(&log, &format!("{} {verdict} {unit}", micros()));
    ready
}

/// The fake service's restart.
fn restart(unit: &str, base_dir: &Path, kwargs: &Map<String, Value>) -> CallbackResult {
    let config = juju::config_get(None)?;
    let log = service_log(base_dir)?;
    let delay = kwargs
        .get("delay")
        .and_then(Value::as_f64)
        .or_else(|| config.get("restart-delay").and_then(Value::as_f64))
        .unwrap_or(1.0);
    let context = std::env::var("JUJU_CONTEXT_ID").unwrap_or_else(|_| "-".into());
    append(&log, &format!("{} start {unit} {context}", micros()))?;
    std::thread::sleep(Duration::from_secs_f64(delay.max(0.0)));
    append(&log, &format!("{} stop {unit} {context}", micros()))?;
    Ok(OperationResult::Release)
}
