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

use crate::fake_juju::{Measures, Model, Options, measure, now_micros};
use rollingops_tests::binaries;

/// The scenarios share two cores with the rest of the suite; running them one at a time
/// keeps their timings meaningful.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
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
        assert_eq!(bag["state"], "idle", "{unit}\n{}", model.dump());
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

/// The unit whose callback is running now (a start line without its stop), if any.
fn running_callback(model: &Model) -> Option<String> {
    model
        .restarts()
        .into_iter()
        .rfind(|r| r.stop.is_none())
        .map(|r| r.unit)
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
    request_everywhere(&model, 1.0);
    // Kill the first two holders part-way through their callbacks (the process group of
    // the hook: the charm, its callback, everything), as a crash or an OOM kill would.
    let mut victims = Vec::new();
    for _ in 0..2 {
        let mut victim = None;
        assert!(
            model.wait_until(TIMEOUT, |m| {
                victim = running_callback(m).filter(|u| !victims.contains(u));
                victim.is_some()
            }),
            "{}",
            model.dump()
        );
        let victim = victim.unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(model.kill_hook(&victim), "{victim} was not running a hook");
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
    let mut options = Options::new(4);
    options.update_status = Some(Duration::from_secs(2));
    let mut model = Model::deploy(name, options);
    request_everywhere(&model, 1.0);
    let leader = model.leader();
    let mut holder = None;
    assert!(
        model.wait_until(TIMEOUT, |m| {
            holder = running_callback(m).filter(|u| (*u == leader) == pick_leader);
            holder.is_some()
        }),
        "{}",
        model.dump()
    );
    let holder = holder.unwrap();
    std::thread::sleep(Duration::from_millis(300));
    model.remove_unit(&holder);
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
    let journal_of = |m: &Model| m.journal();
    // Done when every unit has one run recorded by a committed hook.
    let committed_runs = |m: &Model| -> BTreeMap<String, usize> {
        let committed: BTreeSet<String> = journal_of(m)
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
    println!("probe ok");
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
    let (code, stdout, stderr) = model.exec_with("app/0", &command, &[("E2E_PROBE", "1")]);
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
    model.action("app/1", "restart", json!({"delay": 3.0}));
    assert!(
        model.wait_until(TIMEOUT, |m| running_callback(m).as_deref() == Some("app/1")),
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
        assert_eq!(units[1]["queue"][0]["kwargs"], json!({"delay": 3.0}));
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
    let runs = 15;
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
        "fake juju-exec of `true` (Python runner + hook lock)",
        exec_wall.as_secs_f64() * 1e3
    );
    println!(
        "  {:<64} {:>8.1} ms",
        "juju-exec rollingops status --json on the leader (3 units)",
        status_wall.as_secs_f64() * 1e3
    );
    println!(
        "  {:<64} {:>8.1}",
        "fake hook-tool calls per hook so far",
        tool_calls as f64 / hooks as f64
    );
    assert!(inside.contains("cache=Hit"), "{inside}");
    assert!(charm_wall < Duration::from_millis(500), "{charm_wall:?}");
}
