//! End to end in etcd mode, with real processes and a real etcd: two applications (`a`, 3
//! units, and `b`, 2 units) share one `cluster_id` on one etcd (TLS, client certificates,
//! started by `etcd_cluster`). Every unit's `dispatch` is the example Rust charm in etcd mode
//! (`RESTART_CHARM_ETCD_CLUSTER`), its worker the real detached `rollingops worker`, its
//! hook tools the fake Juju's (`fake_juju`, one fake model per application: the two
//! applications share nothing but etcd and the clock, as two applications of one model do).
//!
//! The etcd relation is the library's own flow (spec/etcd.md §3): each application's leader
//! shares the client identity in the peer secret and writes the `etcd_client` request with
//! its mTLS secret; the test plays the etcd provider: it checks the request, answers with the
//! endpoints, a user secret and a TLS secret holding the server CA, and fires
//! `etcd-relation-changed`; every unit then writes `etcd/etcdctl.json` and
//! `etcd/server-ca.pem` itself. The one shortcut: the test etcd trusts only its own CA, so
//! each leader starts with an operator-provided client identity under `<base_dir>/tls/` (a
//! certificate from the test CA), which the library reuses instead of generating one (§3.2);
//! a real provider would trust the generated certificate instead.
//!
//! Checked: no two callbacks overlap across both applications (the fake service's own
//! timestamps), every unit restarts exactly once, the peer lock is never granted, every
//! worker exits and the etcd lock key ends free. With etcd killed mid-queue, every unit falls
//! back to its peer relation and still restarts exactly once, one at a time per application.
//! (`E2E_DUMP=1 … -- e2e_etcd --nocapture` prints both models and the workers' logs.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::e2e::serial;
use crate::fake_juju::{Model, Options, Restart, binaries};
use rollingops_tests::etcd_cluster::Etcd;

const CLUSTER: &str = "e2e-shared";
const ETCD_RELATION_ID: u64 = 7;
const TIMEOUT: Duration = Duration::from_secs(180);

fn etcd_relation() -> Value {
    json!({
        "endpoint": "etcd",
        "id": ETCD_RELATION_ID,
        "remote_app": "etcd",
        "remote_units": ["etcd/0"],
    })
}

fn system_etcdctl() -> PathBuf {
    let out = std::process::Command::new("which")
        .arg("etcdctl")
        .output()
        .expect("which");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Ask every unit's worker to release and exit when the test ends, whatever happened (the
/// workers are detached processes; a passing test leaves none behind anyway).
struct StopWorkers(Vec<PathBuf>);

impl Drop for StopWorkers {
    fn drop(&mut self) {
        for base in &self.0 {
            let _ = std::fs::create_dir_all(base.join("etcd"));
            let _ = std::fs::write(base.join(rollingops_guest::etcd::worker::STOP_FILE), "");
        }
    }
}

/// Start application `app` with `units` units in etcd mode, deployed: install everywhere,
/// leader-elected and etcd-relation-created; the leader has written its etcd request.
fn deploy(
    name: &str,
    app: &str,
    units: usize,
    etcd: &Etcd,
    update_status: Option<Duration>,
) -> Model {
    let mut options = Options::new(units);
    options.update_status = update_status;
    options.app = app.into();
    options.relations = vec![etcd_relation()];
    options.unit_env = vec![
        ("RESTART_CHARM_ETCD_CLUSTER".into(), CLUSTER.into()),
        (
            "RESTART_CHARM_WORKER".into(),
            binaries().rollingops.display().to_string(),
        ),
    ];
    let model = Model::start(name, options);
    let etcdctl = system_etcdctl();
    for unit in &model.units {
        let bin = model.charm_dir(unit).join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(&etcdctl, bin.join("etcdctl")).unwrap();
    }
    let tls = model.base_dir(&model.units[0]).join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    for (from, to) in [
        ("client.pem", "client.pem"),
        ("client.key", "client.key"),
        ("ca.pem", "client-ca.pem"),
    ] {
        std::fs::copy(etcd.dir.join(from), tls.join(to)).unwrap();
    }
    for unit in &model.units {
        model.queue(unit, "hooks/install");
        model.queue_relation_hook(unit, &etcd_relation(), "created");
    }
    model.queue(&model.units[0], "hooks/leader-elected");
    assert!(
        model.wait_idle(Duration::from_secs(120)),
        "deployment did not settle\n{}",
        model.dump()
    );
    model
}

/// Play the etcd provider for `model`: check the leader's request and its mTLS secret, answer
/// it, and fire `etcd-relation-changed` on every unit; wait until every unit has its etcdctl
/// configuration.
fn provide(model: &Model, etcd: &Etcd) {
    let bags = model.relation_bags(ETCD_RELATION_ID);
    let app_bag = &bags["app"];
    assert_eq!(app_bag["version"], "v1", "{bags}\n{}", model.dump());
    let requests: Vec<Value> =
        serde_json::from_str(app_bag["requests"].as_str().expect("a request")).unwrap();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    let resource = format!("/rollingops/default/{CLUSTER}/");
    assert_eq!(request["resource"], json!(resource));
    let mtls_id = request["secret-mtls"].as_str().expect("secret-mtls");
    let secrets = model.secrets();
    let client_cert = std::fs::read_to_string(etcd.dir.join("client.pem")).unwrap();
    assert_eq!(
        secrets[mtls_id]["content"]["mtls-cert"].as_str(),
        Some(client_cert.as_str()),
        "the request carries the client certificate\n{secrets}"
    );
    assert!(
        secrets[mtls_id]["grants"].as_array().is_some_and(|g| g
            .iter()
            .any(|r| r == &json!(format!("etcd:{ETCD_RELATION_ID}")))),
        "the mTLS secret is granted to the etcd relation\n{secrets}"
    );
    let app = &model.units[0].split('/').next().unwrap().to_string();
    let user_id = format!("secret:etcd-user-{app}");
    let tls_id = format!("secret:etcd-tls-{app}");
    model.add_secret(&user_id, json!({"username": "rollingops-test-client"}));
    model.add_secret(
        &tls_id,
        json!({"tls-ca": std::fs::read_to_string(etcd.dir.join("ca.pem")).unwrap()}),
    );
    let request_id = request["request-id"].as_str().unwrap();
    let response = json!({
        "resource": resource,
        "request-id": request_id,
        "salt": request["salt"],
        "endpoints": etcd.endpoints.join(","),
        "secret-user": user_id,
        "secret-tls": tls_id,
        "version": "3.4",
    });
    model.set_remote_app_bag(
        ETCD_RELATION_ID,
        json!({
            "version": "v1",
            "requests": json!([response]).to_string(),
            "data": json!({request_id: request}).to_string(),
        }),
    );
    for unit in &model.units {
        model.queue_relation_hook(unit, &etcd_relation(), "changed");
    }
    let configured = model.wait_until(TIMEOUT, |m| {
        m.units.iter().all(|u| {
            let base = m.base_dir(u);
            base.join("etcd/etcdctl.json").is_file()
                && base.join("etcd/server-ca.pem").is_file()
                && base.join("tls/client.pem").is_file()
        })
    });
    assert!(configured, "units did not configure etcd\n{}", model.dump());
    assert!(model.wait_idle(Duration::from_secs(60)), "{}", model.dump());
    for unit in &model.units {
        let text = std::fs::read_to_string(model.base_dir(unit).join("etcd/etcdctl.json")).unwrap();
        let config: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            config["endpoints"],
            json!(etcd.endpoints.join(",")),
            "{unit}"
        );
    }
}

fn request_everywhere(models: &[&Model], delay: f64) {
    for model in models {
        for unit in &model.units {
            model.action(unit, "restart", json!({"delay": delay}));
        }
    }
}

fn peer_idle(model: &Model) -> bool {
    model.app_bag().get("granted_unit").is_none()
        && model.unit_bags().values().all(|bag| {
            bag.get("operations")
                .and_then(Value::as_str)
                .is_none_or(|o| o == "[]")
        })
}

fn workers_running(model: &Model) -> Vec<String> {
    model
        .units
        .iter()
        .filter(|u| rollingops::worker_process::worker_running(&model.base_dir(u)).unwrap_or(false))
        .cloned()
        .collect()
}

fn done(model: &Model) -> bool {
    done_times(model, 1)
}

/// Every unit has restarted at least `times` times, and nothing is left queued or running.
fn done_times(model: &Model, times: usize) -> bool {
    let completed = model.completed();
    model
        .units
        .iter()
        .all(|u| completed.get(u).copied().unwrap_or(0) >= times)
        && peer_idle(model)
        && workers_running(model).is_empty()
}

/// Two applications (3 + 2 units) on one etcd and one cluster id, their relation data
/// provided; their workers are stopped when the returned guard goes.
fn two_applications(
    name: &str,
    etcd: &Etcd,
    update_status: Option<Duration>,
) -> (Model, Model, StopWorkers) {
    let a = deploy(&format!("{name}-a"), "a", 3, etcd, update_status);
    let b = deploy(&format!("{name}-b"), "b", 2, etcd, update_status);
    let stop = StopWorkers(
        a.units
            .iter()
            .map(|u| a.base_dir(u))
            .chain(b.units.iter().map(|u| b.base_dir(u)))
            .collect(),
    );
    provide(&a, etcd);
    provide(&b, etcd);
    (a, b, stop)
}

/// Overlapping callbacks among `runs` (sorted by start here).
fn overlaps(mut runs: Vec<Restart>) -> Vec<String> {
    runs.sort_by_key(|r| r.start);
    runs.windows(2)
        .filter(|pair| pair[0].stop.unwrap_or(i64::MAX) > pair[1].start)
        .map(|pair| {
            format!(
                "{} ({}..{:?}) overlaps {} (from {})",
                pair[0].unit, pair[0].start, pair[0].stop, pair[1].unit, pair[1].start
            )
        })
        .collect()
}

fn dump(models: &[&Model]) -> String {
    let mut text = String::new();
    for model in models {
        text.push_str(&model.dump());
        for unit in &model.units {
            let log = std::fs::read_to_string(
                model
                    .base_dir(unit)
                    .join(rollingops::worker_process::WORKER_LOG),
            )
            .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            text.push_str(&format!(
                "  worker log {unit} (last lines, newest first):\n"
            ));
            for line in tail {
                text.push_str(&format!("    {line}\n"));
            }
        }
    }
    text
}

fn lock_holders(etcd: &Etcd) -> String {
    let out = etcd.etcdctl(
        &[
            "get",
            "--prefix",
            &format!("/rollingops/default/{CLUSTER}/granted-unit/"),
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
}

fn exactly_once(models: &[&Model]) {
    for model in models {
        let counts: BTreeMap<String, usize> = model.completed();
        assert_eq!(counts.len(), model.units.len(), "{}", dump(models));
        for (unit, count) in counts {
            assert_eq!(count, 1, "{unit} restarted {count} times\n{}", dump(models));
        }
        assert_eq!(
            model.restarts().len(),
            model.units.len(),
            "no callback started twice\n{}",
            dump(models)
        );
    }
}

#[test]
fn two_applications_share_one_etcd_lock_one_restart_at_a_time() {
    let _serial = serial();
    let etcd = Etcd::start(31_790, 1);
    let (a, b, _stop) = two_applications("etcd", &etcd, None);
    let models = [&a, &b];
    request_everywhere(&models, 0.3);
    let finished = a.wait_until(TIMEOUT, |_| done(&a) && done(&b));
    assert!(finished, "the restarts did not finish\n{}", dump(&models));
    assert!(a.wait_idle(Duration::from_secs(30)), "{}", dump(&models));
    assert!(b.wait_idle(Duration::from_secs(30)), "{}", dump(&models));

    // No two callbacks overlap, across both applications.
    let runs: Vec<Restart> = a.restarts().into_iter().chain(b.restarts()).collect();
    let problems = overlaps(runs.clone());
    assert!(problems.is_empty(), "{problems:#?}\n{}", dump(&models));
    exactly_once(&models);
    // Every callback ran in a `rollingops_lock_granted` hook started through `juju-exec`, and
    // the peer relation's lock was never granted (below): the etcd workers asked for them.
    for model in models {
        let journal = model.journal();
        for run in model.restarts() {
            let hook = journal.iter().find(|j| j.ctx == run.ctx);
            assert!(
                hook.is_some_and(
                    |j| j.path == "hooks/rollingops_lock_granted" && j.source == "juju-exec"
                ),
                "{} ran its callback in {hook:?}\n{}",
                run.unit,
                dump(&models)
            );
        }
        let failed: Vec<_> = journal.iter().filter(|j| j.exit != 0).collect();
        assert!(failed.is_empty(), "{failed:#?}\n{}", dump(&models));
        assert!(model.abandoned().is_empty(), "{:?}", model.abandoned());
        // Each lock-granted hook took its worker's claim at its word: no etcd read between
        // the dispatch and the callback.
        for unit in &model.units {
            let log = model.juju_log(unit);
            assert!(
                log.contains("on the worker's claim") && !log.contains("read from etcd"),
                "{unit}: {log}"
            );
        }
        for (unit, bag) in model.unit_bags() {
            assert!(
                bag.get("state").is_none_or(|s| s == "idle"),
                "{unit}\n{}",
                dump(&models)
            );
            assert_eq!(
                bag["processing_backend"],
                "etcd",
                "{unit}\n{}",
                dump(&models)
            );
        }
        // The peer relation's lock was never granted: etcd alone decided the turns.
        let peer_grants: Vec<_> = journal
            .iter()
            .filter(|j| j.grant.as_deref().is_some_and(|g| !g.is_empty()))
            .collect();
        assert!(
            peer_grants.is_empty(),
            "{peer_grants:#?}\n{}",
            dump(&models)
        );
    }
    // Which application had each turn, for the reader.
    let order: Vec<char> = {
        let mut runs = runs;
        runs.sort_by_key(|r| r.start);
        runs.iter()
            .map(|r| r.unit.chars().next().unwrap())
            .collect()
    };
    println!("etcd turn order across applications: {order:?}");
    if std::env::var_os("E2E_DUMP").is_some() {
        println!("{}", dump(&models));
    }
    // The lock is free at the end.
    assert_eq!(
        lock_holders(&etcd).trim(),
        "",
        "the etcd lock is still held"
    );
}

#[test]
fn etcd_lost_mid_queue_every_unit_falls_back_to_its_peer_relation_and_returns_when_it_is_back() {
    let _serial = serial();
    let mut etcd = Etcd::start(32_790, 1);
    // update-status every 20 s: a unit whose worker waits for the lock notices a dead etcd
    // only after its retry budget (13 etcdctl calls of up to 15 s each: `etcdctl txn` has no
    // command timeout), about 3.5 minutes; update-status checks etcd and falls back sooner.
    let every = Some(Duration::from_secs(20));
    let (a, b, _stop) = two_applications("etcd-lost", &etcd, every);
    let models = [&a, &b];
    request_everywhere(&models, 0.5);
    // Stop etcd once the first restart is done and others are still queued.
    let first = a.wait_until(TIMEOUT, |_| a.completed().len() + b.completed().len() >= 1);
    assert!(first, "no restart through etcd\n{}", dump(&models));
    etcd.kill(0);
    let killed_at = crate::fake_juju::now_micros();
    let finished = a.wait_until(TIMEOUT, |_| done(&a) && done(&b));
    assert!(
        finished,
        "the restarts did not finish without etcd\n{}",
        dump(&models)
    );
    assert!(a.wait_idle(Duration::from_secs(30)), "{}", dump(&models));
    assert!(b.wait_idle(Duration::from_secs(30)), "{}", dump(&models));

    // Within each application, callbacks never overlap (across applications only etcd
    // could promise that, and it is gone).
    for model in models {
        let problems = overlaps(model.restarts());
        assert!(problems.is_empty(), "{problems:#?}\n{}", dump(&models));
        assert!(model.abandoned().is_empty(), "{:?}", model.abandoned());
        for (unit, bag) in model.unit_bags() {
            assert!(
                bag.get("state").is_none_or(|s| s == "idle"),
                "{unit}\n{}",
                dump(&models)
            );
        }
    }
    exactly_once(&models);
    // Units finished through the peer relation after etcd went away.
    let after: Vec<Restart> = a
        .restarts()
        .into_iter()
        .chain(b.restarts())
        .filter(|r| r.start > killed_at)
        .collect();
    assert!(!after.is_empty(), "{}", dump(&models));
    // Each of them was granted the peer relation's lock by a hook that committed after etcd
    // went away — except, at most once, the unit etcd had handed its lock to just before it
    // died: its lock-granted hook takes the worker's claim at its word and runs under that
    // lock without reading etcd (then falls back when the finalize fails).
    let mut under_the_last_etcd_grant = Vec::new();
    for model in models {
        let journal = model.journal();
        for run in model.restarts().iter().filter(|r| r.start > killed_at) {
            let granted = journal.iter().any(|j| {
                j.grant.as_deref() == Some(run.unit.as_str())
                    && j.end > killed_at
                    && j.end <= run.start
            });
            let on_claim = journal.iter().any(|j| {
                j.ctx == run.ctx
                    && j.path == "hooks/rollingops_lock_granted"
                    && j.source == "juju-exec"
            }) && model.juju_log(&run.unit).contains("on the worker's claim");
            if !granted && on_claim {
                under_the_last_etcd_grant.push(run.unit.clone());
                continue;
            }
            assert!(
                granted,
                "{} ran its callback after etcd stopped without a peer grant\n{}",
                run.unit,
                dump(&models)
            );
        }
    }
    assert!(
        under_the_last_etcd_grant.len() <= 1,
        "{under_the_last_etcd_grant:?} all ran under etcd's last grant\n{}",
        dump(&models)
    );

    // etcd comes back: the next requests go to etcd again (the stale queues the fallback
    // left there are cleaned first), and etcd alone decides the turns across both
    // applications again.
    etcd.restart(0);
    let back_at = crate::fake_juju::now_micros();
    request_everywhere(&models, 0.5);
    let finished = a.wait_until(TIMEOUT, |_| done_times(&a, 2) && done_times(&b, 2));
    assert!(
        finished,
        "the restarts after etcd came back did not finish\n{}",
        dump(&models)
    );
    let again: Vec<Restart> = a
        .restarts()
        .into_iter()
        .chain(b.restarts())
        .filter(|r| r.start > back_at)
        .collect();
    assert_eq!(again.len(), 5, "each unit once more\n{}", dump(&models));
    let problems = overlaps(again);
    assert!(problems.is_empty(), "{problems:#?}\n{}", dump(&models));
    for model in models {
        let peer_grants: Vec<_> = model
            .journal()
            .into_iter()
            .filter(|j| j.end > back_at && j.grant.as_deref().is_some_and(|g| !g.is_empty()))
            .collect();
        assert!(
            peer_grants.is_empty(),
            "{peer_grants:#?}\n{}",
            dump(&models)
        );
        for (unit, bag) in model.unit_bags() {
            assert_eq!(
                bag["processing_backend"],
                "etcd",
                "{unit} did not return to etcd\n{}",
                dump(&models)
            );
        }
    }
    assert_eq!(
        lock_holders(&etcd).trim(),
        "",
        "the etcd lock is still held"
    );
    if std::env::var_os("E2E_DUMP").is_some() {
        println!("{}", dump(&models));
    }
}
