//! End to end with real processes: the example Rust charm as every unit's `dispatch`, the
//! fake Juju's hook tools on `PATH`, one OS process per hook (see `fake_juju`). Every
//! scenario checks mutual exclusion from the fake service's own timestamps and that no
//! queued operation is lost; the rolling restarts also print what they cost
//! (`cargo test -p rollingops-tests e2e -- --nocapture`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_juju::{Measures, Model, Options, binaries, measure, now_micros};

/// The scenarios share two cores with the rest of the suite; running them one at a time
/// keeps their timings meaningful.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

const TIMEOUT: Duration = Duration::from_secs(90);

/// Request a restart on every unit, as operators running the action.
fn request_everywhere(model: &Model, delay: f64) -> i64 {
    let t0 = now_micros();
    for unit in &model.units {
        model.action(unit, "restart", json!({"delay": delay}));
    }
    t0
}

fn all_idle(model: &Model) -> bool {
    let app = model.app_bag();
    app.get("granted_unit").is_none()
        && model.unit_bags().values().all(|bag| {
            bag.get("operations")
                .and_then(Value::as_str)
                .is_none_or(|o| o == "[]")
        })
}

/// Wait until every unit in `expected` completed its restarts and the model is quiet.
fn finish(model: &Model, expected: &[(&str, usize)]) {
    let done = model.wait_until(TIMEOUT, |m| {
        let completed = m.completed();
        expected
            .iter()
            .all(|(unit, n)| completed.get(*unit).copied().unwrap_or(0) >= *n)
            && all_idle(m)
    });
    assert!(done, "the rolling restart did not finish\n{}", model.dump());
    assert!(
        model.wait_idle(Duration::from_secs(20)),
        "the model did not settle\n{}",
        model.dump()
    );
}

fn assert_exclusive(model: &Model) {
    let overlaps = model.overlaps();
    assert!(overlaps.is_empty(), "{overlaps:#?}\n{}", model.dump());
}

fn assert_final_state(model: &Model) {
    assert!(all_idle(model), "{}", model.dump());
    for (unit, bag) in model.unit_bags() {
        // Units that never requested have no intent at all.
        assert!(
            bag.get("state").is_none_or(|s| s == "idle"),
            "{unit}\n{}",
            model.dump()
        );
    }
    assert!(model.abandoned().is_empty(), "{:?}", model.abandoned());
}

fn print_measures(label: &str, m: &Measures) {
    println!(
        "{label:<34} {:>3} units  wall {:>6.2} s  hooks {:>4}  hand-offs {:>2}  \
         critical hooks/hand-off {:>4.2}  s/hand-off {:>5.3}  mean hook {:>5.0} ms",
        m.units,
        m.wall,
        m.hooks,
        m.handoffs,
        m.critical_hooks_per_handoff,
        m.seconds_per_handoff,
        m.mean_hook_ms
    );
}

fn rolling_restart(units: usize) -> Measures {
    let _serial = serial();
    let model = Model::deploy(&format!("rolling{units}"), Options::new(units));
    let t0 = request_everywhere(&model, 0.1);
    let expected: Vec<(String, usize)> = model.units.iter().map(|u| (u.clone(), 1)).collect();
    let expected: Vec<(&str, usize)> = expected.iter().map(|(u, n)| (u.as_str(), *n)).collect();
    finish(&model, &expected);
    assert_exclusive(&model);
    for (unit, count) in model.completed() {
        assert_eq!(count, 1, "{unit} restarted {count} times\n{}", model.dump());
    }
    assert_eq!(model.completed().len(), units);
    assert_eq!(model.restarts().len(), units, "no callback ran twice");
    let failed: Vec<_> = model
        .journal()
        .into_iter()
        .filter(|j| j.exit != 0)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", model.dump());
    assert_final_state(&model);
    let measures = measure(&model, t0);
    // Without update-status, every hand-off was driven by hooks alone: at most two
    // hooks on the path between one callback and the next.
    assert!(
        measures.critical_hooks_per_handoff <= 2.0,
        "{measures:?}\n{}",
        model.dump()
    );
    print_measures("rolling restart", &measures);
    if std::env::var_os("E2E_DUMP").is_some() {
        println!("{}", model.dump());
    }
    measures
}

#[test]
fn rolling_restart_3_units_one_at_a_time_each_once() {
    rolling_restart(3);
}

#[test]
fn rolling_restart_10_units_one_at_a_time_each_once() {
    rolling_restart(10);
}

fn units_with(model: &Model, n: usize) -> Vec<(String, usize)> {
    model.units.iter().map(|u| (u.clone(), n)).collect()
}

fn as_refs(expected: &[(String, usize)]) -> Vec<(&str, usize)> {
    expected.iter().map(|(u, n)| (u.as_str(), *n)).collect()
}

/// The callback running now (a start line without its stop), if any: (unit, context).
fn running_callback(model: &Model) -> Option<(String, String)> {
    model
        .restarts()
        .into_iter()
        .rfind(|r| r.stop.is_none())
        .map(|r| (r.unit, r.ctx))
}

/// Wait for a callback of a unit accepted by `pick` to be part-way through (100 ms in and
/// still running), then `cut` its hook; returns the unit.
fn mid_callback(
    model: &mut Model,
    pick: impl Fn(&str) -> bool,
    cut: impl Fn(&mut Model, &str),
) -> String {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if let Some((unit, ctx)) = running_callback(model).filter(|(u, _)| pick(u)) {
            std::thread::sleep(Duration::from_millis(100));
            if running_callback(model).is_some_and(|(u, c)| u == unit && c == ctx) {
                cut(model, &unit);
                return unit;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no callback to cut short\n{}", model.dump());
}

#[test]
fn leader_change_in_the_middle_of_a_rolling_restart() {
    let _serial = serial();
    let model = Model::deploy("leader-change", Options::new(4));
    request_everywhere(&model, 0.2);
    assert!(
        model.wait_until(TIMEOUT, |m| m.completed().len() >= 2),
        "{}",
        model.dump()
    );
    let done = model.completed();
    let old_leader = model.leader();
    let new_leader = model
        .units
        .iter()
        .find(|u| !done.contains_key(*u) && **u != old_leader)
        .or_else(|| model.units.iter().find(|u| **u != old_leader))
        .unwrap()
        .clone();
    model.set_leader(&new_leader);
    finish(&model, &as_refs(&units_with(&model, 1)));
    assert_exclusive(&model);
    for (unit, count) in model.completed() {
        assert_eq!(count, 1, "{unit}\n{}", model.dump());
    }
    assert_eq!(
        model.restarts().len(),
        4,
        "no callback ran twice\n{}",
        model.dump()
    );
    assert!(
        model
            .journal()
            .iter()
            .any(|j| j.unit == new_leader && j.path == "hooks/leader-elected" && j.exit == 0),
        "{}",
        model.dump()
    );
    // Only the new leader writes grants after the change.
    let change = model
        .journal()
        .iter()
        .find(|j| j.unit == new_leader && j.path == "hooks/leader-elected")
        .map(|j| j.start)
        .unwrap();
    for entry in model.journal() {
        if entry.start > change && entry.grant.is_some() {
            assert_eq!(entry.unit, new_leader, "{}", model.dump());
        }
    }
    assert_final_state(&model);
}

#[test]
fn lock_holders_killed_mid_callback_still_complete() {
    let _serial = serial();
    let mut options = Options::new(3);
    options.update_status = Some(Duration::from_secs(2));
    let mut model = Model::deploy("kill", options);
    request_everywhere(&model, 0.6);
    // Kill the first two holders part-way through their callbacks (the process group of
    // the hook: the charm, its callback, everything), as a crash or an OOM kill would.
    let mut victims: Vec<String> = Vec::new();
    for _ in 0..2 {
        let victim = mid_callback(
            &mut model,
            |u| !victims.iter().any(|v| v == u),
            |m, u| assert!(m.kill_hook(u), "{u} was not running a hook"),
        );
        victims.push(victim);
    }
    finish(&model, &as_refs(&units_with(&model, 1)));
    assert_exclusive(&model);
    for (unit, count) in model.completed() {
        assert_eq!(count, 1, "{unit}\n{}", model.dump());
    }
    let journal = model.journal();
    for victim in &victims {
        let starts = model
            .restarts()
            .iter()
            .filter(|r| &r.unit == victim)
            .count();
        assert_eq!(
            starts,
            2,
            "{victim}: killed once, then ran to the end\n{}",
            model.dump()
        );
        assert!(
            journal
                .iter()
                .any(|j| &j.unit == victim && j.exit == -9 && !j.committed),
            "{}",
            model.dump()
        );
    }
    assert_final_state(&model);
}

fn removal(name: &str, pick_leader: bool) {
    let _serial = serial();
    let mut options = Options::new(3);
    options.update_status = Some(Duration::from_secs(2));
    let mut model = Model::deploy(name, options);
    request_everywhere(&model, 0.6);
    let leader = model.leader();
    let holder = mid_callback(
        &mut model,
        |u| (u == leader) == pick_leader,
        |m, u| m.remove_unit(u),
    );
    let remaining: Vec<(String, usize)> = model
        .units
        .iter()
        .filter(|u| **u != holder)
        .map(|u| (u.clone(), 1))
        .collect();
    finish(&model, &as_refs(&remaining));
    assert_exclusive(&model);
    let completed = model.completed();
    assert!(!completed.contains_key(&holder), "{}", model.dump());
    for (unit, _) in &remaining {
        assert_eq!(completed.get(unit), Some(&1), "{unit}\n{}", model.dump());
    }
    assert!(!model.unit_bags().contains_key(&holder));
    assert!(
        model.app_bag().get("granted_unit").is_none(),
        "{}",
        model.dump()
    );
    if pick_leader {
        assert_ne!(model.leader(), holder);
    }
    assert_final_state(&model);
}

#[test]
fn unit_removed_while_holding_the_lock() {
    removal("remove-holder", false);
}

#[test]
fn leader_removed_while_holding_the_lock() {
    removal("remove-leader", true);
}

#[test]
fn relation_set_failing_once_loses_nothing_and_says_why() {
    let _serial = serial();
    let model = Model::deploy("relation-set", Options::new(3));
    let message = "connection to the controller lost (injected)";
    model.inject(json!([
        // The leader's first app-bag write in a relation-changed hook fails…
        {"tool": "relation-set", "app": true,
         "dispatch_prefix": "hooks/restart-relation-changed", "message": message},
        // …and so does app/2's first unit-bag write in a hook: the result it records after
        // its callback, so the callback runs again (at least once, spec §1.5).
        {"tool": "relation-set", "unit": "app/2", "app": false, "dispatch_prefix": "hooks/",
         "message": message},
    ]));
    request_everywhere(&model, 0.2);
    // Done when every unit has one run recorded by a committed hook.
    let committed_runs = |m: &Model| -> BTreeMap<String, usize> {
        let committed: BTreeSet<String> = m
            .journal()
            .into_iter()
            .filter(|j| j.committed)
            .map(|j| j.ctx)
            .collect();
        let mut counts = BTreeMap::new();
        for run in m.restarts() {
            if run.stop.is_some() && committed.contains(&run.ctx) {
                *counts.entry(run.unit).or_insert(0) += 1;
            }
        }
        counts
    };
    assert!(
        model.wait_until(TIMEOUT, |m| committed_runs(m).len() == 3 && all_idle(m)),
        "{}",
        model.dump()
    );
    assert!(model.wait_idle(Duration::from_secs(20)));
    assert_exclusive(&model);
    // Nothing lost: every unit's restart was recorded exactly once…
    for (unit, count) in committed_runs(&model) {
        assert_eq!(count, 1, "{unit}\n{}", model.dump());
    }
    // …and a run whose hook failed before recording it (at least once, spec §1.5) is
    // followed directly by the same unit's run: nobody slipped in while its result was lost.
    let journal = model.journal();
    let runs = model.restarts();
    for (index, run) in runs.iter().enumerate() {
        let hook = journal.iter().find(|j| j.ctx == run.ctx).unwrap();
        if !hook.committed {
            assert_eq!(runs[index + 1].unit, run.unit, "{}", model.dump());
        }
    }
    // Exactly the two faulty hooks failed; the agent retried its own with success (a
    // failed juju-exec run is not retried: a later hook picks the turn up).
    let failed: Vec<_> = journal.iter().filter(|j| j.exit != 0).collect();
    assert_eq!(failed.len(), 2, "{failed:#?}\n{}", model.dump());
    for hook in &failed {
        if hook.source == "agent" {
            assert!(
                journal.iter().any(|j| j.unit == hook.unit
                    && j.path == hook.path
                    && j.start > hook.end
                    && j.exit == 0
                    && j.committed),
                "{hook:?} was not retried successfully\n{}",
                model.dump()
            );
        }
        // The hook's output and the unit's log both say which tool failed and why.
        let output = model.hook_log(&hook.unit);
        assert!(
            output.contains("relation-set") && output.contains(message),
            "{output}"
        );
        let log = model.juju_log(&hook.unit);
        assert!(
            log.lines()
                .any(|l| l.contains("ERROR") && l.contains("relation-set") && l.contains(message)),
            "{log}"
        );
    }
    assert_final_state(&model);
}

#[test]
fn large_kwargs_travel_through_relation_set_stdin() {
    let _serial = serial();
    let model = Model::deploy("large", Options::new(2));
    // Far above the 128 KiB limit of one command-line argument.
    let payload = "x".repeat(300_000);
    model.action(
        "app/1",
        "restart",
        json!({"delay": 0.05, "payload": payload}),
    );
    finish(&model, &[("app/1", 1)]);
    let failed: Vec<_> = model
        .journal()
        .into_iter()
        .filter(|j| j.exit != 0)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", model.dump());
    assert_final_state(&model);
}

/// Runs inside a hook context of the fake model when `E2E_PROBE` names the state dir
/// (started by `hook_tools_map_one_to_one_with_typed_errors` through `juju-exec`);
/// otherwise it has nothing to do.
#[test]
fn hook_tool_probe() {
    if std::env::var_os("E2E_PROBE").is_none() {
        return;
    }
    use rollingops::juju::{self, CharmCode, JujuEnv, JujuHost};
    use rollingops::{BagOwner, CallbackOutcome, Host, LogLevel, WitError};
    struct Nothing;
    impl CharmCode for Nothing {
        fn run_callback(&mut self, _: &str, _: &str) -> CallbackOutcome {
            CallbackOutcome::Missing
        }
    }
    let env = JujuEnv::from_env().unwrap();
    assert_eq!(env.unit_name, "app/0");
    let mut host = JujuHost::new(env, std::env::temp_dir(), Box::new(Nothing));
    assert!(host.is_leader().unwrap());
    let ids = host.relation_ids("restart").unwrap();
    assert_eq!(ids, vec![3]);
    assert_eq!(host.relation_ids("nothing").unwrap(), Vec::<u32>::new());
    assert_eq!(host.relation_units(3).unwrap(), vec!["app/1".to_string()]);
    // Writes are visible to the writer within the hook, large values included.
    let big = "y".repeat(200_000);
    host.relation_set(
        3,
        false,
        &[("big".into(), big.clone()), ("k".into(), "v".into())],
    )
    .unwrap();
    host.relation_set(3, true, &[("app-key".into(), "1".into())])
        .unwrap();
    let own = host
        .relation_get(3, &BagOwner::Unit("app/0".into()))
        .unwrap();
    assert!(own.contains(&("big".to_string(), big)));
    let app = host.relation_get(3, &BagOwner::App).unwrap();
    assert!(app.contains(&("app-key".to_string(), "1".to_string())));
    host.relation_set(3, false, &[("k".into(), String::new())])
        .unwrap();
    let own = host
        .relation_get(3, &BagOwner::Unit("app/0".into()))
        .unwrap();
    assert!(!own.iter().any(|(k, _)| k == "k"), "an empty value deletes");
    // A tool failure is a typed error carrying the command, the code and stderr.
    let error = juju::relation_get("restart:3", "app/9", false).unwrap_err();
    assert_eq!(error.code, Some(1));
    assert!(
        error
            .cmd
            .starts_with("relation-get --format=json -r restart:3 - app/9"),
        "{error}"
    );
    assert!(error.stderr.contains("settings not found"), "{error}");
    match host.relation_units(9) {
        Err(WitError::Host(message)) => {
            assert!(
                message.contains("relation-list") && message.contains("relation not found"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Secrets: add, read by label and by id, absent → None.
    let id = host
        .secret_add("certs", &[("key".into(), "PEM\nDATA".into())])
        .unwrap();
    assert!(id.starts_with("secret:"), "{id}");
    let by_label = host.secret_get("certs").unwrap().unwrap();
    assert_eq!(by_label, vec![("key".to_string(), "PEM\nDATA".to_string())]);
    assert_eq!(host.secret_get(&id).unwrap().unwrap(), by_label);
    assert!(host.secret_get("nothing-here").unwrap().is_none());
    host.secret_grant(&id, 3).unwrap();
    assert!(
        matches!(host.secret_grant("secret:nope", 3), Err(WitError::Host(m)) if m.contains("secret-grant"))
    );
    // On a peer relation the remote application is this one.
    assert!(
        host.relation_get_remote_app(3)
            .unwrap()
            .contains(&("app-key".to_string(), "1".to_string()))
    );
    juju::secret_set(&id, &[("key".into(), "NEW".into())]).unwrap();
    assert_eq!(
        host.secret_get("certs").unwrap().unwrap(),
        vec![("key".to_string(), "NEW".to_string())]
    );
    assert_eq!(juju::config_get(Some("restart-delay")).unwrap(), json!(0.2));
    host.log(LogLevel::Warning, "probe: -- a line starting with dashes");
    // dispatch refuses names that are not hook names, before any process starts.
    assert!(matches!(
        host.dispatch("x; rm -rf /"),
        Err(WitError::Host(_))
    ));
    charm_api_probe();
    println!("probe ok");
}

/// The Rust charm API in a real hook context (part of `hook_tool_probe`): the cached
/// component under the unit's base dir, the sync-lock guard, errors with their classes.
fn charm_api_probe() {
    use std::sync::{Arc, Mutex};

    use rollingops::charm::{
        HookEnv, OperationResult, RollingOpsManager, SyncLockBackend, SyncLockFailure,
    };
    use rollingops::juju::JujuEnv;
    use rollingops::{Runtime, Status};

    struct Recorder {
        calls: Arc<Mutex<Vec<String>>>,
        release_fails: bool,
    }
    impl SyncLockBackend for Recorder {
        fn acquire(&mut self, timeout: Option<Duration>) -> Result<(), SyncLockFailure> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("acquire {timeout:?}"));
            if timeout == Some(Duration::from_secs(1)) {
                return Err(SyncLockFailure::TimedOut);
            }
            Ok(())
        }
        fn release(&mut self) -> Result<(), SyncLockFailure> {
            self.calls.lock().unwrap().push("release".into());
            if self.release_fails {
                return Err(SyncLockFailure::Failed("the lock server is gone".into()));
            }
            Ok(())
        }
    }
    let base = std::path::PathBuf::from(std::env::var("E2E_PROBE").unwrap());
    let runtime = Runtime::new(Some(&base)).unwrap();
    assert_eq!(
        runtime.cache_outcome,
        rollingops::cache::CacheOutcome::Hit,
        "the unit's cache serves every host built with this component"
    );
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut manager = RollingOpsManager::builder("restart")
        .base_dir(&base)
        .callback("restart", |_| Ok(OperationResult::Release))
        .sync_lock(
            "lock",
            Recorder {
                calls: calls.clone(),
                release_fails: false,
            },
        )
        .sync_lock(
            "flaky",
            Recorder {
                calls: calls.clone(),
                release_fails: true,
            },
        )
        .build_with(&runtime, JujuEnv::from_env().unwrap(), HookEnv::from_env())
        .unwrap();
    assert!(manager.current_event().is_none(), "juju-exec runs no hook");
    assert!(matches!(manager.state().unwrap().status, Status::Idle));
    assert!(!manager.is_waiting(None).unwrap());
    assert!(
        !manager
            .is_waiting_callback("restart", Some("app/1"))
            .unwrap()
    );
    assert_eq!(manager.describe().unwrap()["unit"], "app/0");
    let error = manager
        .request_async_lock("nope", json!({}), None)
        .unwrap_err();
    assert_eq!(error.class(), Some("RollingOpsInvalidLockRequestError"));
    assert_eq!(
        error.to_string(),
        "RollingOpsInvalidLockRequestError: Unknown callback_id: nope"
    );
    {
        let guard = manager
            .acquire_sync_lock("lock", Some(Duration::from_millis(2500)))
            .unwrap();
        assert_eq!(guard.backend_id(), "lock");
    }
    assert_eq!(*calls.lock().unwrap(), ["acquire Some(3s)", "release"]);
    let error = manager
        .acquire_sync_lock("lock", Some(Duration::from_secs(1)))
        .err()
        .unwrap();
    assert_eq!(error.class(), Some("TimeoutError"));
    let error = manager
        .acquire_sync_lock("flaky", None)
        .unwrap()
        .release()
        .unwrap_err();
    assert_eq!(error.class(), Some("RollingOpsSyncLockError"));
    assert!(
        error.to_string().contains("the lock server is gone"),
        "{error}"
    );
    drop(manager.acquire_sync_lock("flaky", None).unwrap());
    let error = manager.acquire_sync_lock("nope", None).err().unwrap();
    assert_eq!(error.class(), Some("RollingOpsSyncLockError"));
}

#[test]
fn hook_tools_map_one_to_one_with_typed_errors() {
    let _serial = serial();
    let model = Model::deploy("probe", Options::new(2));
    let exe = std::env::current_exe().unwrap();
    let command = format!(
        "{} --exact e2e::hook_tool_probe --nocapture --test-threads=1",
        exe.display()
    );
    let base = model.base_dir("app/0").display().to_string();
    let (code, stdout, stderr) = model.exec_with("app/0", &command, &[("E2E_PROBE", &base)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("probe ok"), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    // The hook's writes committed when it exited 0.
    assert_eq!(model.app_bag()["app-key"], "1");
    assert_eq!(
        model.unit_bags()["app/0"]["big"].as_str().unwrap().len(),
        200_000
    );
    assert!(
        model
            .juju_log("app/0")
            .contains("WARNING app/0 : probe: -- a line starting with dashes")
    );
    // A sync-lock guard whose release fails when dropped says so in the unit's log.
    assert!(
        model
            .juju_log("app/0")
            .contains("ERROR app/0 : Releasing the sync lock flaky failed"),
        "{}",
        model.juju_log("app/0")
    );
}

fn rollingops(model: &Model, unit: &str, args: &str) -> (i32, String, String) {
    let command = format!(
        "{} {args} --base-dir {}",
        binaries().rollingops.display(),
        model.base_dir(unit).display()
    );
    model.exec(unit, &command)
}

#[test]
fn status_shows_the_holder_and_every_queue_from_any_unit() {
    let _serial = serial();
    let model = Model::deploy("status", Options::new(3));
    model.action("app/1", "restart", json!({"delay": 2.0}));
    assert!(
        model.wait_until(TIMEOUT, |m| running_callback(m)
            .is_some_and(|(u, _)| u == "app/1")),
        "{}",
        model.dump()
    );
    model.action("app/2", "restart", json!({"delay": 0.1}));
    model.action(
        "app/2",
        "restart",
        json!({"delay": 0.2, "reason": "config changed"}),
    );
    assert!(model.wait_until(TIMEOUT, |m| {
        m.unit_bags()["app/2"]["operations"]
            .as_str()
            .is_some_and(|ops| ops.matches("callback_id").count() == 2)
    }));
    let (code, table, stderr) = rollingops(&model, "app/0", "status --peer-relation restart");
    assert_eq!(code, 0, "{stderr}");
    println!("rollingops status on app/0:\n{table}");
    assert!(
        table.starts_with("app/0 (leader) · peer relation \"restart\" · "),
        "{table}"
    );
    assert!(table.contains("Lock   held by app/1 for "), "{table}");
    assert!(
        table.contains("Queue  3 operations on 2 of 3 units"),
        "{table}"
    );
    assert!(table.contains("app/1 *  request"), "{table}");
    assert!(
        table.contains(r#"{"reason":"config changed","delay":0.2}"#)
            || table.contains(r#"{"delay":0.2,"reason":"config changed"}"#),
        "{table}"
    );

    for unit in ["app/0", "app/2"] {
        let (code, text, stderr) =
            rollingops(&model, unit, "status --peer-relation restart --json");
        assert_eq!(code, 0, "{stderr}");
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["unit"], unit);
        assert_eq!(doc["leader"], unit == "app/0");
        assert_eq!(doc["lock"]["holder"], "app/1", "{doc:#}");
        assert!(doc["lock"]["held_for_seconds"].as_f64().unwrap() >= 0.0);
        let units = doc["units"].as_array().unwrap();
        assert_eq!(units.len(), 3, "a non-leader reads every bag too: {doc:#}");
        assert_eq!(units[1]["holder"], true);
        assert_eq!(units[1]["queue"][0]["kwargs"], json!({"delay": 2.0}));
        let queue = units[2]["queue"].as_array().unwrap();
        assert_eq!(queue.len(), 2, "{doc:#}");
        assert_eq!(queue[1]["callback_id"], "restart");
        assert_eq!(queue[1]["attempt"], 0);
        assert!(queue[1]["age_seconds"].as_f64().unwrap() >= 0.0);
        assert!(doc["unreadable_units"].as_array().unwrap().is_empty());
    }
    finish(&model, &[("app/1", 1), ("app/2", 2)]);
    let (_, table, _) = rollingops(&model, "app/1", "status --peer-relation restart");
    assert!(table.contains("Lock   free"), "{table}");
    assert!(
        table.contains("Queue  0 operations on 0 of 3 units"),
        "{table}"
    );
}

#[test]
fn cli_errors_are_clear_outside_a_hook_and_in_peer_mode() {
    let _serial = serial();
    let model = Model::deploy("cli-errors", Options::new(1));
    let cli = &binaries().rollingops;
    // No Juju environment at all.
    let output = Command::new(cli)
        .args(["status", "--peer-relation", "restart"])
        .env_remove("JUJU_UNIT_NAME")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("JUJU_UNIT_NAME is not set"), "{stderr}");
    // A unit's environment but no hook context: the hook tool's own error comes through.
    let output = Command::new(cli)
        .args(["status", "--peer-relation", "restart", "--base-dir"])
        .arg(model.base_dir("app/0"))
        .env("JUJU_UNIT_NAME", "app/0")
        .env("PATH", model.path_env())
        .env("FAKE_JUJU_DIR", &model.dir)
        .env_remove("JUJU_CONTEXT_ID")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "`is-leader --format=json` failed (exit 1): ERROR JUJU_CONTEXT_ID is not set"
        ),
        "{stderr}"
    );
    // The worker in peer mode says etcd is not configured, and exits non-zero.
    let (code, _, stderr) = rollingops(&model, "app/0", "worker --peer-relation restart");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("RollingOpsEtcdNotConfiguredError"),
        "{stderr}"
    );
    // Detached, it returns its pid at once and says the same in its log.
    let (code, stdout, stderr) =
        rollingops(&model, "app/0", "worker --peer-relation restart --detach");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.trim().parse::<u32>().is_ok(), "{stdout}");
    let log = model.base_dir("app/0").join("rollingops_worker.log");
    assert!(
        model.wait_until(Duration::from_secs(10), |_| {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("RollingOpsEtcdNotConfiguredError"))
        }),
        "{:?}",
        std::fs::read_to_string(&log)
    );
    // One worker per unit: while one holds the worker lock, another exits at once.
    let base = model.base_dir("app/0");
    assert!(model.wait_until(Duration::from_secs(10), |_| {
        !rollingops::worker_process::worker_running(&base).unwrap()
    }));
    let held = rollingops::worker_process::take_worker_lock(&base)
        .unwrap()
        .expect("no worker runs now");
    let (code, _, stderr) = rollingops(&model, "app/0", "worker --peer-relation restart");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
    drop(held);
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
fn costs_per_hook_process() {
    let _serial = serial();
    let model = Model::deploy("costs", Options::new(3));
    let charm = &binaries().restart_charm;
    let base = model.base_dir("app/1");
    let runs = 9;
    // 1. The charm's process with a cached component and no rollingops work (a hook the
    //    library ignores): process start-up + .cwasm load + instantiate + exit.
    let mut walls = Vec::new();
    let mut inside = String::new();
    for _ in 0..runs {
        let started = Instant::now();
        let output = Command::new(charm)
            .env("JUJU_UNIT_NAME", "app/1")
            .env("JUJU_DISPATCH_PATH", "hooks/config-changed")
            .env("RESTART_CHARM_BASE_DIR", &base)
            .env("RESTART_CHARM_TIMING", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        walls.push(started.elapsed());
        assert!(output.status.success());
        inside = String::from_utf8_lossy(&output.stderr).trim().to_string();
    }
    let charm_wall = median(walls);
    // 2. One fake hook tool call (Python), for scale.
    let mut walls = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let (code, _, _) = model.exec("app/1", "true");
        assert_eq!(code, 0);
        walls.push(started.elapsed());
    }
    let exec_wall = median(walls);
    // 2b. Ten fake tool calls in one juju-exec: what one costs, for the shell fast path
    //     (`is-leader`) and a Python tool (`config-get`).
    let per_call = |tool: &str| {
        let mut walls = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let (code, _, _) = model.exec(
                "app/1",
                &format!("for i in 1 2 3 4 5 6 7 8 9 10; do {tool} --format=json >/dev/null; done"),
            );
            assert_eq!(code, 0);
            walls.push(started.elapsed());
        }
        median(walls).saturating_sub(exec_wall) / 10
    };
    let shell_call = per_call("is-leader");
    let python_call = per_call("config-get");
    // 3. `rollingops status --json` on the leader through juju-exec (CLI start-up, cached
    //    load, the hook tools it calls), minus the juju-exec of an empty command.
    let mut walls = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let (code, _, stderr) =
            rollingops(&model, "app/0", "status --peer-relation restart --json");
        assert_eq!(code, 0, "{stderr}");
        walls.push(started.elapsed());
    }
    let status_wall = median(walls);
    // 4. The CLI alone: start-up, cached component load, instantiate, then the first hook
    //    tool is not found (no tools on PATH), so nothing else is timed.
    let mut walls = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let output = Command::new(&binaries().rollingops)
            .args(["status", "--peer-relation", "restart", "--base-dir"])
            .arg(model.base_dir("app/0"))
            .env("JUJU_UNIT_NAME", "app/0")
            .env("PATH", "/nonexistent")
            .output()
            .unwrap();
        walls.push(started.elapsed());
        assert!(String::from_utf8_lossy(&output.stderr).contains("is-leader not found on PATH"));
    }
    let cli_wall = median(walls);
    let calls = std::fs::read_to_string(model.dir.join("calls.log")).unwrap_or_default();
    let tool_calls = calls.lines().count();
    let hooks = model.journal().len();
    println!(
        "Per-hook costs (median of {runs}; debug build: {})",
        cfg!(debug_assertions)
    );
    println!(
        "  {:<64} {:>8.1} ms",
        "charm process, cached component, no rollingops work",
        charm_wall.as_secs_f64() * 1e3
    );
    println!("    inside: {inside}");
    println!(
        "  {:<64} {:>8.1} ms",
        "rollingops CLI start-up + cached component load + instantiate",
        cli_wall.as_secs_f64() * 1e3
    );
    println!(
        "  {:<64} {:>8.1} ms",
        "fake juju-exec of `true` (Python runner + hook lock)",
        exec_wall.as_secs_f64() * 1e3
    );
    println!(
        "  {:<64} {:>8.1} ms",
        "juju-exec rollingops status --json on the leader (3 units)",
        status_wall.as_secs_f64() * 1e3
    );
    println!(
        "  {:<64} {:>8.1} ms",
        "one fake hook-tool call: shell fast path (is-leader)",
        shell_call.as_secs_f64() * 1e3
    );
    println!(
        "  {:<64} {:>8.1} ms",
        "one fake hook-tool call: Python (config-get)",
        python_call.as_secs_f64() * 1e3
    );
    println!(
        "  {:<64} {:>8.1}",
        "fake hook-tool calls per hook so far",
        tool_calls as f64 / hooks as f64
    );
    assert!(inside.contains("cache=Hit"), "{inside}");
    assert!(charm_wall < Duration::from_millis(500), "{charm_wall:?}");
}

#[test]
fn a_bridge_client_in_a_hook_queues_through_the_hook_tools() {
    use crate::bridge::{BridgeProcess, Reply};
    let _serial = serial();
    let model = Model::deploy("bridge-hook-tools", Options::new(2));
    // A foreign-language charm's hook on app/1: the bridge reads and writes the relation
    // with the hook tools of that hook; the client only supplies callbacks.
    let mut command = Command::new(model.bin.join("juju-exec"));
    command
        .args([
            "-u",
            "app/1",
            &format!("{} bridge --hook-tools", binaries().rollingops.display()),
        ])
        .env("PATH", model.path_env())
        .env("FAKE_JUJU_DIR", &model.dir);
    let mut bridge = BridgeProcess::spawn(command);
    assert_eq!(bridge.hello["hook_tools"], true);
    let mut answer = |import: &str, _: &Value| -> Reply {
        panic!("with --hook-tools only the charm's imports are forwarded, got {import}")
    };
    let config = json!({"config": {
        "peer_relation_name": "restart",
        "base_dir": model.base_dir("app/1"),
        "callback_ids": ["restart"],
    }});
    let manager = bridge.call("create", config, &mut answer).unwrap()["manager"].clone();
    let m = |extra: Value| {
        let mut params = extra;
        params["manager"] = manager.clone();
        params
    };
    let routed = bridge
        .call(
            "handle-hook",
            m(json!({"env": {"JUJU_DISPATCH_PATH": "hooks/install"}})),
            &mut answer,
        )
        .unwrap();
    assert_eq!(routed, json!({"event": null}));
    bridge
        .call(
            "request-async-lock",
            m(json!({"callback_id": "restart", "kwargs": {"delay": 0.05, "via": "bridge"}})),
            &mut answer,
        )
        .unwrap();
    let state = bridge.call("state", m(json!({})), &mut answer).unwrap();
    assert_eq!(state["status"], "waiting");
    bridge.call("drop", m(json!({})), &mut answer).unwrap();
    assert_eq!(bridge.finish(), 0, "juju-exec runs the bridge as a hook");
    // The write committed with the hook; the leader grants app/1, whose next hook (the
    // Rust example charm) runs the operation the bridge queued.
    finish(&model, &[("app/1", 1)]);
    assert_exclusive(&model);
    assert_final_state(&model);
}
