//! Acceptance tests of the core against spec/peer.md §7.2, §7.3 (peer parts), §7.5 and the
//! §2.5 worked example, run through the real driver on an in-memory Juju model
//! (`support`). Rows describing reference behaviour that the design fixes (§8) assert the
//! fixed behaviour; each such test would fail against the reference.

mod support;

use rollingops_guest::wire::Backend;
use rollingops_guest::{Error, Event, LogLevel, State, Status, Timestamp};
use serde_json::{Value, json};
use support::*;

use rollingops_guest::driver;
use rollingops_guest::manager::SyncBackendError;

const PID_KEY: &str = "peer-rollingops-worker-pid";
const ECHO_KEY: &str = "rollingops-executed-grant";
const GRANT_KEY: &str = "rollingops-grant";

/// The reference's unit-test charm (§7): app `charm`, callbacks `_restart` (returns None),
/// `_failed_restart` (RETRY_RELEASE), `_deferred_restart` (RETRY_HOLD), sync backend
/// `stop-replset-member`; `charm/0` leads.
fn charm(units: usize) -> Model {
    let mut m = Model::new("charm", units);
    m.on("_restart", &[ret(None)])
        .on("_failed_restart", &[ret(Some("retry-release"))])
        .on("_deferred_restart", &[ret(Some("retry-hold"))]);
    m.sync_backends.insert("stop-replset-member".into(), Ok(()));
    m
}

fn changed() -> Event {
    Event::PeerRelationChanged
}

/// The operations stored in a unit's bag, parsed.
fn ops_of(m: &Model, unit: &str) -> Vec<Value> {
    let text = m.get(unit, "operations").unwrap_or("[]");
    serde_json::from_str::<Value>(text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn at_of(text: Option<&str>) -> Timestamp {
    Timestamp::parse(text.expect("timestamp present")).expect("timestamp parses")
}

fn state(status: Status) -> State {
    State {
        status,
        processing_backend: Backend::Peer,
    }
}

/// A holder bag with `ops` and a grant to it written by our leader (charm/0).
fn granted_holder(m: &mut Model, unit: &str, ops: &[String]) {
    m.seed(unit, &[("operations", &queue(ops)), ("state", "request")]);
    m.hook("charm/0", Event::LeaderElected).unwrap();
    assert_eq!(m.holder(), Some(unit));
}

/// Seed `unit` with one `_restart` op requested at `requested` (seconds after T0) and
/// the given intent and `executed_at` (seconds after T0).
fn seed_unit(m: &mut Model, unit: &str, intent: &str, requested: i64, executed: Option<i64>) {
    let ops = queue(&[op("_restart", &ts(requested * 1_000_000), None, 0, "{}")]);
    m.seed(unit, &[("operations", &ops), ("state", intent)]);
    if let Some(e) = executed {
        m.seed(unit, &[("executed_at", &ts(e * 1_000_000))]);
    }
}

// =====================================================================================
// §7.2 Peer behaviour in a charm

#[test]
fn row_27_request_on_non_leader_stores_the_operation() {
    let mut m = charm(1);
    m.leader = String::new();
    m.request("charm/0", "_restart", r#"{"delay":10}"#, None)
        .unwrap();
    assert_eq!(m.get("charm/0", "state"), Some("request"));
    // Byte-exact wire form (§2.3).
    assert_eq!(
        m.get("charm/0", "operations").unwrap(),
        r#"[{"callback_id":"_restart","requested_at":"1777636800.0","max_retry":null,"attempt":0,"result":null,"kwargs":{"delay":10}}]"#
    );
    assert!(m.calls.is_empty() && m.dispatched.is_empty());
}

#[test]
fn row_28_negative_max_retry_is_rejected() {
    for bad in [-5, -1, i64::MIN] {
        let mut m = charm(2);
        let err = m
            .request("charm/1", "_restart", "{}", Some(bad))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidLockRequest(_)), "{err}");
        assert!(
            err.message()
                .starts_with("Failed to create the lock request"),
            "{err}"
        );
        assert!(m.last().unit_writes.is_empty() && only_features(&m.bags["charm/1"]));
    }
}

#[test]
fn row_29_unknown_callback_id_is_rejected() {
    for id in ["", "   ", "unknown"] {
        let mut m = charm(2);
        let err = m.request("charm/1", id, "{}", None).unwrap_err();
        assert_eq!(
            err,
            Error::InvalidLockRequest(format!("Unknown callback_id: {id}"))
        );
        assert!(m.last().unit_writes.is_empty());
        // Checked before the relation (§1.4 step 1).
        m.relation = false;
        let err = m.request("charm/1", id, "{}", None).unwrap_err();
        assert!(matches!(err, Error::InvalidLockRequest(_)), "{err}");
    }
}

#[test]
fn row_30_kwargs_that_are_not_a_json_object_are_rejected() {
    // A Python string, a list, and a non-serialisable value (not JSON at all here).
    for bad in [r#""nope""#, "[]", "{x: <object>}"] {
        let mut m = charm(2);
        let err = m.request("charm/1", "_restart", bad, None).unwrap_err();
        assert!(matches!(err, Error::InvalidLockRequest(_)), "{bad}: {err}");
        assert!(
            err.message()
                .starts_with("Failed to create the lock request"),
            "{err}"
        );
        assert!(m.last().unit_writes.is_empty());
    }
}

#[test]
fn row_31_request_appends_behind_a_queued_operation() {
    let mut m = charm(2);
    let first = op("_failed_restart", "1777636700.0", None, 0, "{}");
    m.seed(
        "charm/1",
        &[
            ("operations", &queue(std::slice::from_ref(&first))),
            ("state", "request"),
        ],
    );
    m.at(1);
    m.request("charm/1", "_restart", "{}", None).unwrap();
    let second = op("_restart", "1777636800.000001", None, 0, "{}");
    assert_eq!(
        m.get("charm/1", "operations"),
        Some(queue(&[first, second]).as_str())
    );
    assert_eq!(m.get("charm/1", "state"), Some("request"));
}

#[test]
fn row_32_request_behind_a_retrying_head_keeps_intent_and_executed_at() {
    let mut m = charm(2);
    let executed = ts(-50_000_000);
    let head = op("_failed_restart", "1777636700.0", None, 1, "{}");
    m.seed(
        "charm/1",
        &[
            ("operations", &queue(&[head])),
            ("state", "retry-release"),
            ("executed_at", &executed),
        ],
    );
    m.request("charm/1", "_restart", "{}", None).unwrap();
    assert_eq!(m.get("charm/1", "state"), Some("retry-release"));
    assert_eq!(m.get("charm/1", "executed_at"), Some(executed.as_str()));
    assert_eq!(ops_of(&m, "charm/1").len(), 2);
}

#[test]
fn row_33_non_holder_does_not_run() {
    let mut m = charm(2);
    m.elect("charm/1");
    let ops = queue(&[op("_restart", "1777636700.0", None, 0, "{}")]);
    m.seed("charm/0", &[("operations", &ops), ("state", "request")]);
    m.seed_app(&[("granted_unit", "charm/1"), ("granted_at", &ts(0))]);
    m.hook("charm/0", changed()).unwrap();
    assert!(m.calls.is_empty());
    assert!(m.last().unit_writes.is_empty());
    assert_eq!(m.get("charm/0", "operations"), Some(ops.as_str()));
    assert_eq!(m.get("charm/0", "executed_at"), None);
}

#[test]
fn row_34_holder_runs_on_relation_changed() {
    let mut m = charm(2);
    granted_holder(
        &mut m,
        "charm/1",
        &[op("_restart", "1777636700.0", None, 0, "{}")],
    );
    m.at(1_000_000);
    m.hook("charm/1", changed()).unwrap();
    assert_eq!(m.calls_on("charm/1"), ["_restart"]);
    assert_eq!(m.calls[0].kwargs, json!({}));
    assert_eq!(m.get("charm/1", "operations"), Some("[]"));
    assert_eq!(m.get("charm/1", "state"), Some("idle"));
    assert_eq!(
        m.get("charm/1", "executed_at"),
        Some(ts(1_000_000).as_str())
    );
}

#[test]
fn row_35_release_with_more_work_goes_back_to_request() {
    let mut m = charm(2);
    let rest = op("_failed_restart", "1777636700.5", None, 0, "{}");
    granted_holder(
        &mut m,
        "charm/1",
        &[op("_restart", "1777636700.0", None, 0, "{}"), rest.clone()],
    );
    m.hook("charm/1", changed()).unwrap();
    assert_eq!(m.calls_on("charm/1"), ["_restart"]);
    assert_eq!(
        m.get("charm/1", "operations"),
        Some(queue(&[rest]).as_str())
    );
    assert_eq!(m.get("charm/1", "state"), Some("request"));
}

#[test]
fn row_36_retry_results_keep_the_head_and_count_the_attempt() {
    for (id, intent) in [
        ("_failed_restart", "retry-release"),
        ("_deferred_restart", "retry-hold"),
    ] {
        let mut m = charm(2);
        granted_holder(
            &mut m,
            "charm/1",
            &[op(id, "1777636700.0", Some(3), 0, r#"{"b":1,"a":2}"#)],
        );
        m.hook("charm/1", changed()).unwrap();
        assert_eq!(m.calls_on("charm/1"), [id]);
        // Only `attempt` changes; `result` stays null in the peer copy.
        let expected = op(id, "1777636700.0", Some(3), 1, r#"{"a":2,"b":1}"#);
        assert_eq!(
            m.get("charm/1", "operations"),
            Some(queue(&[expected]).as_str())
        );
        assert_eq!(m.get("charm/1", "state"), Some(intent));
    }
}

#[test]
fn row_37_exhausted_retries_drop_the_operation() {
    for id in ["_failed_restart", "_deferred_restart"] {
        let mut m = charm(2);
        granted_holder(
            &mut m,
            "charm/1",
            &[op(id, "1777636700.0", Some(3), 3, "{}")],
        );
        m.at(2_000_000);
        m.hook("charm/1", changed()).unwrap();
        assert_eq!(m.calls_on("charm/1"), [id]);
        assert_eq!(m.get("charm/1", "operations"), Some("[]"));
        assert_eq!(m.get("charm/1", "state"), Some("idle"));
        assert_eq!(
            m.get("charm/1", "executed_at"),
            Some(ts(2_000_000).as_str())
        );
        assert!(m.logged("max_retry"));
    }
}

#[test]
fn row_38_leader_elected_grants_a_requesting_unit() {
    let mut m = charm(2);
    m.seed(
        "charm/1",
        &[
            (
                "operations",
                &queue(&[op("_restart", "1777636700.0", None, 0, "{}")]),
            ),
            ("state", "request"),
        ],
    );
    m.at(250_000);
    m.hook("charm/0", Event::LeaderElected).unwrap();
    assert_eq!(m.holder(), Some("charm/1"));
    assert_eq!(m.app("granted_at"), Some("1777636800.25"));
    assert_eq!(
        m.app(GRANT_KEY),
        Some(r#"{"seq":1,"unit":"charm/1","at":"1777636800.25"}"#)
    );
}

#[test]
fn row_39_unfinished_grant_is_kept() {
    let mut m = charm(4);
    granted_holder(
        &mut m,
        "charm/1",
        &[op("_restart", "1777636700.0", None, 0, "{}")],
    );
    let app_before = m.app_bag.clone();
    for unit in ["charm/2", "charm/3"] {
        m.at(1_000_000);
        m.request(unit, "_restart", "{}", None).unwrap();
    }
    m.at(5_000_000);
    m.hook("charm/0", changed()).unwrap();
    assert!(m.last().app_writes.is_empty());
    assert_eq!(m.app_bag, app_before);
}

#[test]
fn row_40_retry_hold_goes_first() {
    let mut m = charm(4);
    seed_unit(&mut m, "charm/1", "retry-release", -30, Some(-20));
    seed_unit(&mut m, "charm/2", "request", -40, None);
    seed_unit(&mut m, "charm/3", "retry-hold", -10, Some(-5));
    m.hook("charm/0", Event::LeaderElected).unwrap();
    assert_eq!(m.holder(), Some("charm/3"));
}

#[test]
fn row_41_oldest_head_request_goes_first() {
    let mut m = charm(3);
    seed_unit(&mut m, "charm/1", "request", -10, None);
    seed_unit(&mut m, "charm/2", "request", -20, None);
    m.hook("charm/0", Event::LeaderElected).unwrap();
    assert_eq!(m.holder(), Some("charm/2"));
}

#[test]
fn row_42_least_recently_executed_retry_release_goes_first() {
    let mut m = charm(3);
    seed_unit(&mut m, "charm/1", "retry-release", -50, Some(-10));
    seed_unit(&mut m, "charm/2", "retry-release", -40, Some(-20));
    m.hook("charm/0", Event::LeaderElected).unwrap();
    assert_eq!(m.holder(), Some("charm/2"));
}

#[test]
fn row_43_request_beats_retry_release() {
    let mut m = charm(3);
    seed_unit(&mut m, "charm/1", "retry-release", -50, Some(-40));
    seed_unit(&mut m, "charm/2", "request", -10, None);
    m.hook("charm/0", Event::LeaderElected).unwrap();
    assert_eq!(m.holder(), Some("charm/2"));
}

#[test]
fn row_44_all_idle_grants_nobody() {
    let mut m = charm(3);
    m.seed(
        "charm/1",
        &[
            ("operations", "[]"),
            ("state", "idle"),
            ("executed_at", &ts(-5)),
        ],
    );
    m.hook("charm/0", Event::LeaderElected).unwrap();
    m.hook("charm/0", Event::UpdateStatus).unwrap();
    assert_eq!(m.holder(), None);
    assert_eq!(m.app("granted_at"), None);
    assert!(
        m.app_bag.keys().all(|k| k == "rollingops-features"),
        "{:?}",
        m.app_bag
    );
}

#[test]
fn row_45_empty_bag_values_read_as_idle_peer() {
    let mut m = charm(2);
    m.seed(
        "charm/1",
        &[
            ("operations", ""),
            ("state", ""),
            ("processing_backend", "peer"),
        ],
    );
    assert_eq!(m.state("charm/1").unwrap(), state(Status::Idle));
}

// =====================================================================================
// §7.3 Shared behaviour (peer parts)

#[test]
fn row_46_request_without_etcd_relation_is_stored_on_peer() {
    let mut m = charm(2);
    m.etcd_configured = true;
    m.request("charm/1", "_restart", r#"{"delay":1}"#, None)
        .unwrap();
    assert_eq!(ops_of(&m, "charm/1")[0]["callback_id"], "_restart");
    assert_eq!(m.get("charm/1", "state"), Some("request"));
    assert_eq!(m.get("charm/1", "processing_backend"), Some("peer"));
    assert_eq!(m.get("charm/1", "etcd_cleanup_needed"), Some("true"));
}

#[test]
fn row_47_no_relation_is_not_ready() {
    let mut m = charm(2);
    m.etcd_configured = true;
    m.relation = false;
    assert_eq!(m.state("charm/1").unwrap(), state(Status::NotReady));
}

#[test]
fn row_48_state_follows_queue_and_grant() {
    let mut m = charm(3);
    m.etcd_configured = true;
    assert_eq!(m.state("charm/1").unwrap(), state(Status::Idle));
    m.request("charm/1", "_restart", "{}", None).unwrap();
    assert_eq!(m.state("charm/1").unwrap(), state(Status::Waiting));
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.state("charm/1").unwrap(), state(Status::Granted));
    // Grant names another unit and this unit's op is in retry-release.
    let mut m = charm(3);
    m.seed(
        "charm/2",
        &[(
            "operations",
            &queue(&[op("_failed_restart", "1", None, 1, "{}")]),
        )],
    );
    m.seed(
        "charm/2",
        &[("state", "retry-release"), ("executed_at", &ts(-1))],
    );
    m.seed_app(&[("granted_unit", "charm/1"), ("granted_at", &ts(0))]);
    assert_eq!(m.state("charm/2").unwrap(), state(Status::Waiting));
}

#[test]
fn row_49_is_waiting_local_and_remote() {
    let mut m = charm(2);
    m.elect("charm/1");
    let two = queue(&[
        op("restart", "1", None, 0, "{}"),
        op("restart", "2", None, 0, r#"{"a":1}"#),
    ]);
    for unit in ["charm/0", "charm/1"] {
        m.seed(unit, &[("operations", &two), ("state", "request")]);
    }
    // charm/0 is not the leader: the remote bag is read on demand.
    for (asker, of) in [
        ("charm/0", None),
        ("charm/0", Some("charm/0")),
        ("charm/0", Some("charm/1")),
        ("charm/1", Some("charm/0")),
    ] {
        assert!(m.is_waiting(asker, of, None).unwrap(), "{asker} {of:?}");
        assert!(m.is_waiting(asker, of, Some("restart")).unwrap());
        assert!(!m.is_waiting(asker, of, Some("other-callback")).unwrap());
    }
    for unit in ["charm/0", "charm/1"] {
        m.seed(unit, &[("operations", "[]"), ("state", "idle")]);
    }
    for (asker, of) in [("charm/0", None), ("charm/0", Some("charm/1"))] {
        assert!(!m.is_waiting(asker, of, None).unwrap());
        assert!(!m.is_waiting(asker, of, Some("restart")).unwrap());
    }
}

#[test]
fn row_50_custom_sync_lock_after_etcd_failure() {
    let mut m = charm(2);
    m.etcd_configured = true;
    m.hook("charm/1", Event::EtcdFailed).unwrap();
    // The host's context manager: acquire, run the block (it raises), always release.
    let id = "stop-replset-member";
    let result = m.run("charm/1", "sync-restart", |mgr, fx| {
        let held = driver::acquire_sync_lock(mgr, fx, id, Some(30))?;
        assert_eq!(
            held,
            driver::SyncHeld::Backend,
            "etcd failed: the charm's backend"
        );
        let block: Result<(), Error> = Err(Error::Host("block failed".into()));
        driver::release_sync_lock(mgr, fx, id, Some(held))?;
        block
    });
    assert_eq!(result, Err(Error::Host("block failed".into())));
    assert_eq!(
        m.sync_calls,
        [
            ("charm/1".to_string(), "acquire", id.to_string(), Some(30)),
            ("charm/1".to_string(), "release", id.to_string(), None)
        ]
    );
}

// =====================================================================================
// §7.5 Additional behaviours

#[test]
fn row_62_three_unit_rolling_restart_writes_exactly_the_reference_keys() {
    // §2.5 worked example; app/0 leads, `restart` takes 2 s.
    let mut m = Model::new("app", 3);
    m.on_timed("restart", 2_000_000, &[ret(None)]);
    let op_at = |t: &str| op("restart", t, None, 0, r#"{"delay":2}"#);
    let bag = |pairs: &[(&str, &str)]| -> rollingops_guest::wire::Bag {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let enqueued = |t: &str| {
        bag(&[
            ("operations", &queue(&[op_at(t)])),
            ("state", "request"),
            ("processing_backend", "peer"),
            ("etcd_cleanup_needed", "true"),
        ])
    };

    // 1. action `restart` on app/1.
    m.at(100_000);
    m.request("app/1", "restart", r#"{"delay":2}"#, None)
        .unwrap();
    assert_eq!(m.last().unit_changed, enqueued("1777636800.1"));
    assert!(m.last().app_changed.is_empty());
    // 2. leader relation-changed: lock free, grant app/1.
    m.at(350_000);
    m.hook("app/0", changed()).unwrap();
    assert_eq!(
        m.last().app_changed,
        bag(&[
            ("granted_unit", "app/1"),
            ("granted_at", "1777636800.35"),
            (
                GRANT_KEY,
                r#"{"seq":1,"unit":"app/1","at":"1777636800.35"}"#
            ),
        ])
    );
    assert!(m.last().unit_changed.is_empty());
    // 3. action on app/2; 4. action on the leader while the lock is held.
    m.at(500_000);
    m.request("app/2", "restart", r#"{"delay":2}"#, None)
        .unwrap();
    assert_eq!(m.last().unit_changed, enqueued("1777636800.5"));
    m.at(700_000);
    m.request("app/0", "restart", r#"{"delay":2}"#, None)
        .unwrap();
    assert_eq!(m.last().unit_changed, enqueued("1777636800.7"));
    assert!(m.last().app_changed.is_empty());
    // 5. app/1 relation-changed: runs, releases.
    m.at(1_000_000);
    m.hook("app/1", changed()).unwrap();
    assert_eq!(m.calls_on("app/1"), ["restart"]);
    assert_eq!(m.calls[0].kwargs_json, r#"{"delay":2}"#);
    assert_eq!(
        m.last().unit_changed,
        bag(&[
            ("operations", "[]"),
            ("state", "idle"),
            ("executed_at", "1777636803.0"),
            (ECHO_KEY, "1@1777636800.35"),
        ])
    );
    // 6. leader: release app/1; oldest request is app/2 (…800.5 < …800.7).
    m.at(3_400_000);
    m.hook("app/0", changed()).unwrap();
    assert_eq!(
        m.last().app_changed,
        bag(&[
            ("granted_unit", "app/2"),
            ("granted_at", "1777636803.4"),
            (GRANT_KEY, r#"{"seq":2,"unit":"app/2","at":"1777636803.4"}"#),
        ])
    );
    // 7. app/2 runs.
    m.at(3_800_000);
    m.hook("app/2", changed()).unwrap();
    assert_eq!(m.get("app/2", "executed_at"), Some("1777636805.8"));
    // 8. leader: release app/2 and grant itself. It does not run under a grant it has not
    //    committed (a successor leader could not see it); it asks for a hook at once
    //    (§8 W1/W5/W6: no worker, no PID key, no 10 s sleep).
    m.at(6_200_000);
    m.hook("app/0", changed()).unwrap();
    assert!(m.calls_on("app/0").is_empty());
    assert_eq!(
        m.last().app_changed,
        bag(&[
            ("granted_unit", "app/0"),
            ("granted_at", "1777636806.2"),
            (GRANT_KEY, r#"{"seq":3,"unit":"app/0","at":"1777636806.2"}"#),
        ])
    );
    assert_eq!(
        m.dispatched,
        [("app/0".to_string(), "rollingops_lock_granted".to_string())]
    );
    // 9. the dispatched rollingops_lock_granted hook: run, record, release.
    m.dispatched.clear();
    m.at(6_500_000);
    m.hook("app/0", Event::LockGranted).unwrap();
    assert_eq!(m.calls_on("app/0"), ["restart"]);
    assert_eq!(
        m.calls.last().unwrap().granted_unit.as_deref(),
        Some("app/0")
    );
    assert_eq!(
        m.last().app_changed,
        bag(&[
            ("granted_unit", ""),
            ("granted_at", ""),
            (GRANT_KEY, r#"{"seq":3}"#)
        ])
    );
    assert_eq!(
        m.last().unit_changed,
        bag(&[
            ("operations", "[]"),
            ("state", "idle"),
            ("executed_at", "1777636808.5"),
            (ECHO_KEY, "3@1777636806.2"),
        ])
    );
    assert!(m.dispatched.is_empty());

    // Final bags: no grant, and (fixed, §8 W1) no worker PID key.
    let features = rollingops_guest::features::advertised();
    assert_eq!(
        m.app_bag,
        bag(&[(GRANT_KEY, r#"{"seq":3}"#), (FEATURES_KEY, &features)])
    );
    assert_eq!(m.app(PID_KEY), None);
    for (unit, executed, echo) in [
        ("app/0", "1777636808.5", "3@1777636806.2"),
        ("app/1", "1777636803.0", "1@1777636800.35"),
        ("app/2", "1777636805.8", "2@1777636803.4"),
    ] {
        assert_eq!(
            m.bags[unit],
            bag(&[
                ("operations", "[]"),
                ("state", "idle"),
                ("executed_at", executed),
                ("processing_backend", "peer"),
                ("etcd_cleanup_needed", "true"),
                (ECHO_KEY, echo),
                (FEATURES_KEY, &features),
            ]),
            "{unit}"
        );
    }
    assert_eq!(m.calls.len(), 3);
    assert!(m.hooks.iter().all(|h| h.ok));
}

#[test]
fn rolling_restart_settles_with_juju_event_delivery() {
    // The same restart on five units, every hook Juju would fire run in order: each unit
    // runs exactly once, under its own grant, oldest request first; the only dispatch is
    // the leader's own turn (it never runs under a grant it has not committed).
    let mut m = Model::new("app", 5);
    m.on_timed("restart", 2_000_000, &[ret(None)]);
    for (i, unit) in ["app/3", "app/1", "app/0", "app/4", "app/2"]
        .into_iter()
        .enumerate()
    {
        m.at(i as i64 * 100_000);
        m.request(unit, "restart", r#"{"delay":2}"#, None).unwrap();
    }
    let hooks = m.settle();
    let order: Vec<&str> = m.calls.iter().map(|c| c.unit.as_str()).collect();
    assert_eq!(order, ["app/3", "app/1", "app/0", "app/4", "app/2"]);
    assert!(
        m.calls
            .iter()
            .all(|c| c.granted_unit.as_deref() == Some(c.unit.as_str()))
    );
    assert_eq!(
        m.dispatched,
        [("app/0".to_string(), "rollingops_lock_granted".to_string())]
    );
    assert_eq!(m.holder(), None);
    assert!(m.units.iter().all(|u| m.get(u, "state") == Some("idle")));
    assert!(hooks < 60, "{hooks} hooks");
}

#[test]
fn worked_example_retry_variant() {
    // §2.5 retry variant: app/1 `hold` (max_retry 1, always retry-hold), app/2 `restart`.
    let mut m = Model::new("app", 3);
    m.on("hold", &[ret(Some("retry-hold"))])
        .on("restart", &[ret(None)]);
    m.at(100_000);
    m.request("app/1", "hold", "{}", Some(1)).unwrap();
    m.at(200_000);
    m.request("app/2", "restart", "{}", None).unwrap();
    m.at(300_000);
    m.hook("app/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("app/1"));

    m.at(400_000);
    m.hook("app/1", changed()).unwrap();
    let held = op("hold", "1777636800.1", Some(1), 1, "{}");
    assert_eq!(m.get("app/1", "operations"), Some(queue(&[held]).as_str()));
    assert_eq!(m.get("app/1", "state"), Some("retry-hold"));

    // Release and re-grant in one hook: only granted_at (and our generation) change.
    m.at(500_000);
    m.hook("app/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("app/1"));
    let keys: Vec<&str> = m.last().app_changed.keys().map(String::as_str).collect();
    assert_eq!(keys, ["granted_at", GRANT_KEY]);
    assert_eq!(m.app("granted_at"), Some("1777636800.5"));

    m.at(600_000);
    m.hook("app/2", changed()).unwrap();
    assert!(m.calls_on("app/2").is_empty(), "app/2 must not slip in");
    m.hook("app/1", changed()).unwrap();
    assert_eq!(m.get("app/1", "operations"), Some("[]"));
    assert_eq!(m.get("app/1", "state"), Some("idle"));
    m.at(700_000);
    m.hook("app/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("app/2"));
    m.hook("app/2", changed()).unwrap();
    let order: Vec<(&str, &str)> = m
        .calls
        .iter()
        .map(|c| (c.unit.as_str(), c.id.as_str()))
        .collect();
    assert_eq!(
        order,
        [("app/1", "hold"), ("app/1", "hold"), ("app/2", "restart")]
    );
}

#[test]
fn row_63_non_leader_retry_hold_runs_twice_before_the_requester() {
    let mut m = charm(3);
    m.at(100_000);
    m.request("charm/1", "_deferred_restart", r#"{"delay":1}"#, Some(1))
        .unwrap();
    m.at(200_000);
    m.request("charm/2", "_restart", "{}", None).unwrap();
    m.hook("charm/0", changed()).unwrap();
    m.hook("charm/1", changed()).unwrap();
    let first = ops_of(&m, "charm/1");
    assert_eq!(
        (first[0]["attempt"].clone(), first[0]["result"].clone()),
        (json!(1), Value::Null)
    );
    m.pending.clear();
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("charm/1"));
    m.settle();
    let order: Vec<(&str, &str)> = m
        .calls
        .iter()
        .map(|c| (c.unit.as_str(), c.id.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("charm/1", "_deferred_restart"),
            ("charm/1", "_deferred_restart"),
            ("charm/2", "_restart")
        ]
    );
    assert_eq!(m.get("charm/1", "operations"), Some("[]"));
}

#[test]
fn row_64_leader_retry_hold_regrants_itself_without_a_worker() {
    // Fixed (§8 W1, W6): no worker process, no PID key written or signalled, no sleep;
    // the leader re-grants itself in the same hook and dispatches one fresh hook.
    let mut m = charm(2);
    m.seed_app(&[(PID_KEY, "12345")]); // left by a Python leader: tolerated, never touched
    m.request("charm/0", "_deferred_restart", "{}", Some(1))
        .unwrap();
    assert_eq!(m.holder(), Some("charm/0"));
    assert_eq!(
        m.dispatched,
        [("charm/0".to_string(), LOCK_GRANTED.to_string())]
    );
    assert!(m.calls.is_empty(), "a request hook never runs the callback");

    m.at(1_000_000);
    m.hook("charm/0", Event::LockGranted).unwrap();
    assert_eq!(m.calls_on("charm/0"), ["_deferred_restart"]);
    assert_eq!(m.get("charm/0", "state"), Some("retry-hold"));
    // Released and re-granted to itself in this very hook, a new generation.
    assert_eq!(m.holder(), Some("charm/0"));
    assert_eq!(m.app("granted_at"), Some(ts(1_000_000).as_str()));
    assert!(m.app(GRANT_KEY).unwrap().starts_with(r#"{"seq":2,"#));
    assert_eq!(m.dispatched.len(), 2);

    m.at(2_000_000);
    m.hook("charm/0", Event::LockGranted).unwrap();
    assert_eq!(
        m.calls_on("charm/0"),
        ["_deferred_restart", "_deferred_restart"]
    );
    assert_eq!(m.get("charm/0", "state"), Some("idle"));
    assert_eq!(m.holder(), None);
    assert_eq!(m.dispatched.len(), 2);
    assert_eq!(m.app(PID_KEY), Some("12345"));
    assert!(m.hooks.iter().all(|h| !h.app_writes.contains_key(PID_KEY)));
}

#[test]
fn row_65_identical_request_while_granted_is_dropped_and_runs_once() {
    let mut m = charm(2);
    m.request("charm/1", "_restart", "{}", None).unwrap();
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("charm/1"));
    let before = m.get("charm/1", "operations").unwrap().to_string();
    m.at(1_000);
    m.request("charm/1", "_restart", "{}", None).unwrap();
    assert_eq!(m.get("charm/1", "operations"), Some(before.as_str()));
    assert!(m.logged("already queued"));
    m.settle();
    assert_eq!(m.calls_on("charm/1"), ["_restart"]);
    assert_eq!(m.get("charm/1", "operations"), Some("[]"));
}

#[test]
fn row_66_holder_departs_next_is_granted_in_the_same_hook() {
    let mut m = charm(3);
    m.request("charm/1", "_restart", "{}", None).unwrap();
    m.hook("charm/0", changed()).unwrap();
    m.at(100);
    m.request("charm/2", "_restart", "{}", None).unwrap();
    assert_eq!(m.holder(), Some("charm/1"));
    m.at(1_000);
    m.depart("charm/1").unwrap();
    assert_eq!(m.last().what, r#"PeerRelationDeparted("charm/1")"#);
    assert_eq!(
        m.last().app_changed.get("granted_unit").map(String::as_str),
        Some("charm/2")
    );
    assert_eq!(m.app("granted_at"), Some(ts(1_000).as_str()));
}

#[test]
fn row_67_stale_grant_is_replaced_in_the_same_hook() {
    // Fixed (§8 W5b): the reference clears the grant but grants nobody until the next
    // scheduler run; here the next requester is granted in the same leader-elected hook.
    let mut m = charm(3);
    seed_unit(&mut m, "charm/1", "request", -10, None);
    m.seed_app(&[
        ("granted_unit", "charm/7"),
        ("granted_at", &ts(-20_000_000)),
    ]);
    m.hook("charm/0", Event::LeaderElected).unwrap();
    assert_eq!(m.holder(), Some("charm/1"));
    assert_eq!(m.app("granted_at"), Some(ts(0).as_str()));
}

#[test]
fn row_68_unit_granted_then_elected_runs_on_leader_elected() {
    // Fixed (§8 W5a): the reference runs it only at the next update-status.
    let mut m = charm(3);
    m.request("charm/1", "_restart", "{}", None).unwrap();
    m.at(100);
    m.request("charm/2", "_restart", "{}", None).unwrap();
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("charm/1"));
    m.elect("charm/1");
    let mut other = m.clone();

    m.at(1_000_000);
    m.hook("charm/1", Event::LeaderElected).unwrap();
    assert_eq!(m.calls_on("charm/1"), ["_restart"]);
    // ...and, as the leader, it hands the lock on in the same hook.
    assert_eq!(m.holder(), Some("charm/2"));

    // Likewise on relation-changed, if that hook comes first.
    other.hook("charm/1", changed()).unwrap();
    assert_eq!(other.calls_on("charm/1"), ["_restart"]);
    assert_eq!(other.holder(), Some("charm/2"));
}

#[test]
fn row_69_holder_moved_to_etcd_is_released() {
    // Fixed (§8 W4): the reference skips etcd-managed units when releasing, so the peer
    // grant is never released and peer requesters starve.
    let mut m = charm(3);
    m.seed_app(&[
        ("granted_unit", "charm/1"),
        ("granted_at", &ts(-10_000_000)),
    ]);
    let ops = queue(&[op("_restart", &ts(-1_000_000), None, 0, "{}")]);
    m.seed(
        "charm/1",
        &[
            ("operations", &ops),
            ("state", "request"),
            ("executed_at", &ts(-5_000_000)),
            ("processing_backend", "etcd"),
        ],
    );
    seed_unit(&mut m, "charm/2", "request", -3, None);
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("charm/2"));
    assert!(m.logged("moved to etcd"));
}

#[test]
fn row_70_non_holder_with_later_executed_at_does_not_revoke_the_grant() {
    // Fixed (§8 W3): the reference compares every unit's executed_at with granted_at and
    // revokes a live grant when some other unit's clock is ahead.
    let mut m = charm(4);
    m.request("charm/1", "_restart", "{}", None).unwrap();
    m.hook("charm/0", changed()).unwrap();
    m.seed(
        "charm/2",
        &[
            ("operations", "[]"),
            ("state", "idle"),
            ("executed_at", &ts(3_600_000_000)),
        ],
    );
    m.request("charm/3", "_restart", "{}", None).unwrap();
    let app_before = m.app_bag.clone();
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.app_bag, app_before);
    assert_eq!(m.holder(), Some("charm/1"));
}

#[test]
fn w3_holder_with_a_fast_clock_is_neither_released_early_nor_rerun() {
    // The holder's executed_at from an earlier turn is far ahead of the leader's clock:
    // the reference releases it before it runs (and a slow clock would re-run it).
    let mut m = charm(3);
    m.skew.insert("charm/1".into(), 3_600_000_000);
    m.request("charm/1", "_restart", "{}", None).unwrap();
    m.settle();
    assert_eq!(m.calls_on("charm/1"), ["_restart"]);
    m.at(10_000_000);
    m.request("charm/1", "_restart", r#"{"again":true}"#, None)
        .unwrap();
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("charm/1"));
    assert!(at_of(m.get("charm/1", "executed_at")) > at_of(m.app("granted_at")));
    let app_before = m.app_bag.clone();
    m.request("charm/2", "_restart", "{}", None).unwrap();
    m.hook("charm/0", changed()).unwrap();
    m.hook("charm/0", Event::UpdateStatus).unwrap();
    assert_eq!(m.app_bag, app_before, "not released before it ran");
    m.settle();
    let order: Vec<&str> = m.calls.iter().map(|c| c.unit.as_str()).collect();
    assert_eq!(order, ["charm/1", "charm/1", "charm/2"]);
}

#[test]
fn row_71_v0_leftover_intents_do_not_break_scheduling() {
    // Fixed (§8 W11): the reference fails every leader hook with
    // "'release' is not a valid LockIntent"; v0 `release` is idle, `acquire` a request.
    let mut m = charm(4);
    m.seed("charm/1", &[("state", "release")]);
    seed_unit(&mut m, "charm/2", "acquire", -20, None);
    seed_unit(&mut m, "charm/3", "request", -10, None);
    m.hook("charm/0", Event::LeaderElected).unwrap();
    assert_eq!(m.holder(), Some("charm/2"));
    m.hook("charm/2", changed()).unwrap();
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("charm/3"));
}

#[test]
fn row_72_request_with_empty_queue_does_not_block_retry_release() {
    // Fixed (§8 W12): the reference grants nobody; intent is derived from the queue.
    let mut m = charm(3);
    m.seed("charm/1", &[("operations", "[]"), ("state", "request")]);
    seed_unit(&mut m, "charm/2", "retry-release", -30, Some(-20));
    m.hook("charm/0", Event::LeaderElected).unwrap();
    assert_eq!(m.holder(), Some("charm/2"));
}

#[test]
fn row_73_no_relation_errors_and_foreign_names() {
    let mut m = charm(2);
    m.relation = false;
    let err = m.request("charm/1", "_restart", "{}", None).unwrap_err();
    assert_eq!(
        err,
        Error::NoRelation("No restart peer relation yet.".into())
    );
    assert_eq!(err.class(), "RollingOpsNoRelationError");
    assert_eq!(m.state("charm/1").unwrap(), state(Status::NotReady));
    assert!(!m.is_waiting("charm/1", None, None).unwrap());
    m.relation = true;
    let err = m.is_waiting("charm/1", Some("app/9"), None).unwrap_err();
    assert_eq!(
        err,
        Error::InvalidArgument("unit_name provided does not belong to the peer relation.".into())
    );
    let err = m
        .run("charm/1", "sync", |mgr, fx| {
            driver::acquire_sync_lock(mgr, fx, "zzz", None)
        })
        .unwrap_err();
    assert_eq!(
        err,
        Error::SyncLock("Unknown sync lock backend: zzz.".into())
    );
    assert!(m.sync_calls.is_empty());
}

// =====================================================================================
// Fixes beyond the rows

#[test]
fn w10_identical_request_behind_a_started_head_is_kept() {
    // The reference de-duplicates against the in-flight head and loses the newer request
    // once the head exhausts its retries.
    let mut m = charm(2);
    let head = op("_failed_restart", "1777636700.0", Some(1), 1, "{}");
    m.seed(
        "charm/1",
        &[
            ("operations", &queue(&[head])),
            ("state", "retry-release"),
            ("executed_at", &ts(-1)),
        ],
    );
    m.request("charm/1", "_failed_restart", "{}", Some(0))
        .unwrap();
    assert_eq!(ops_of(&m, "charm/1").len(), 2);
    m.hook("charm/0", changed()).unwrap();
    m.settle();
    // Head: second (last) attempt, dropped; the newer request then runs once (max_retry 0).
    assert_eq!(
        m.calls_on("charm/1"),
        ["_failed_restart", "_failed_restart"]
    );
    assert_eq!(m.get("charm/1", "operations"), Some("[]"));
}

#[test]
fn leader_runs_at_most_one_callback_per_hook() {
    let mut m = charm(2);
    m.request("charm/0", "_restart", r#"{"n":1}"#, None)
        .unwrap();
    m.request("charm/0", "_restart", r#"{"n":2}"#, None)
        .unwrap();
    m.dispatched.clear();
    m.hook("charm/0", Event::UpdateStatus).unwrap();
    assert_eq!(m.calls.len(), 1);
    assert_eq!(m.holder(), Some("charm/0"));
    assert_eq!(
        m.dispatched,
        [("charm/0".to_string(), LOCK_GRANTED.to_string())]
    );
    m.hook("charm/0", Event::LockGranted).unwrap();
    let kwargs: Vec<&Value> = m.calls.iter().map(|c| &c.kwargs).collect();
    assert_eq!(kwargs, [&json!({"n":1}), &json!({"n":2})]);
    assert_eq!(m.holder(), None);
}

#[test]
fn failed_hook_commits_nothing_and_the_turn_runs_again() {
    // Juju discards a failed hook's writes; the callback's effects are not transactional
    // (§3.7, at-least-once), so the op is still queued and runs again on the next hook.
    let mut m = charm(2);
    granted_holder(
        &mut m,
        "charm/1",
        &[op("_restart", "1777636700.0", None, 0, "{}")],
    );
    let before = m.bags["charm/1"].clone();
    m.failing_writes.insert("charm/1".into());
    assert!(matches!(m.hook("charm/1", changed()), Err(Error::Host(_))));
    assert!(!m.last().ok);
    assert_eq!(
        m.calls_on("charm/1"),
        ["_restart"],
        "the callback ran before the write failed"
    );
    assert_eq!(m.bags["charm/1"], before);
    m.failing_writes.clear();
    m.hook("charm/1", changed()).unwrap();
    assert_eq!(m.calls_on("charm/1"), ["_restart", "_restart"]);
    assert_eq!(m.get("charm/1", "operations"), Some("[]"));
}

#[test]
fn callback_outcomes_map_like_the_reference() {
    // None and unexpected values release; a raise is retry-release (§1.5).
    for (reply, intent, left) in [
        (ret(None), "idle", 0),
        (ret(Some("bogus")), "idle", 0),
        (ret(Some("release")), "idle", 0),
        (ret(Some("retry-release")), "retry-release", 1),
        (raise("TypeError: unexpected keyword"), "retry-release", 1),
    ] {
        let mut m = charm(2);
        m.on("cb", std::slice::from_ref(&reply));
        granted_holder(&mut m, "charm/1", &[op("cb", "1", None, 0, "{}")]);
        m.hook("charm/1", changed()).unwrap();
        assert_eq!(m.get("charm/1", "state"), Some(intent), "{reply:?}");
        assert_eq!(ops_of(&m, "charm/1").len(), left, "{reply:?}");
    }
}

// =====================================================================================
// Bad input

#[test]
fn bad_input_unknown_callback_at_execution_is_dropped() {
    // Registered when requested, gone when run: by the library's registry (the id is
    // not in the config any more) and by the host (the charm object lost it).
    let mut m = charm(2);
    let rest = op("_restart", "1777636700.5", None, 0, "{}");
    granted_holder(
        &mut m,
        "charm/1",
        &[op("_gone", "1777636700.0", None, 0, "{}"), rest.clone()],
    );
    m.hook("charm/1", changed()).unwrap();
    assert!(m.calls.is_empty());
    assert_eq!(
        m.get("charm/1", "operations"),
        Some(queue(std::slice::from_ref(&rest)).as_str())
    );
    assert!(
        m.logs
            .iter()
            .any(|(_, level, msg)| *level == LogLevel::Error && msg.contains("_gone"))
    );

    let mut m = charm(2);
    m.on("_vanishing", &[rollingops_guest::CallbackOutcome::Missing]);
    granted_holder(&mut m, "charm/1", &[op("_vanishing", "1", None, 0, "{}")]);
    m.hook("charm/1", changed()).unwrap();
    assert!(m.calls.is_empty());
    assert_eq!(m.get("charm/1", "operations"), Some("[]"));
    assert_eq!(m.get("charm/1", "state"), Some("idle"));
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.holder(), None);
}

#[test]
fn bad_input_kwargs_not_json_or_not_an_object() {
    for bad in [
        "not json", r#"{"a":"#, "", r#""{}""#, "[1,2]", "5", "1.5", "null", "true",
    ] {
        let mut m = charm(2);
        let err = m.request("charm/1", "_restart", bad, None).unwrap_err();
        assert!(
            matches!(err, Error::InvalidLockRequest(_)),
            "{bad:?}: {err}"
        );
        assert!(
            err.message()
                .starts_with("Failed to create the lock request"),
            "{err}"
        );
        assert!(only_features(&m.bags["charm/1"]));
    }
    // Nested values of any JSON type are fine, and reach the callback unchanged.
    let mut m = charm(2);
    m.on("cb", &[ret(None)]);
    let kwargs = r#"{"z":[1,"é",{"y":null,"x":1.5}],"a":true}"#;
    m.request("charm/1", "cb", kwargs, None).unwrap();
    m.settle();
    assert_eq!(
        m.calls[0].kwargs_json,
        r#"{"a":true,"z":[1,"é",{"y":null,"x":1.5}]}"#
    );
}

#[test]
fn bad_input_corrupted_own_queue_request_fails_and_bag_is_untouched() {
    for corrupted in [
        "{oops",
        r#"{"not":"a list"}"#,
        r#"[{"callback_id":"x"}]"#,
        "null",
    ] {
        let mut m = charm(2);
        m.seed(
            "charm/1",
            &[
                ("operations", corrupted),
                ("state", "request"),
                ("executed_at", "1777636700.0"),
            ],
        );
        let before = m.bags["charm/1"].clone();
        let err = m.request("charm/1", "_restart", "{}", None).unwrap_err();
        assert!(matches!(err, Error::InvalidLockRequest(_)), "{err}");
        assert!(
            err.message()
                .starts_with("Failed to create the lock request"),
            "{err}"
        );
        assert!(
            m.last().unit_writes.is_empty(),
            "nothing written, not even discarded writes"
        );
        assert_eq!(m.bags["charm/1"], before);
        assert!(matches!(m.state("charm/1"), Err(Error::Decoding(_))));
    }
}

#[test]
fn bad_input_corrupted_own_queue_as_holder_hands_the_lock_on_untouched() {
    let mut m = charm(3);
    granted_holder(&mut m, "charm/1", &[op("_restart", "1", None, 0, "{}")]);
    m.seed("charm/1", &[("operations", "{oops")]);
    seed_unit(&mut m, "charm/2", "request", -1, None);
    m.hook("charm/1", changed()).unwrap();
    assert!(m.calls.is_empty());
    assert_eq!(m.get("charm/1", "operations"), Some("{oops"));
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("charm/2"));
}

#[test]
fn bad_input_corrupted_bag_on_another_unit_does_not_stop_the_leader() {
    let mut m = charm(4);
    m.seed("charm/1", &[("operations", "{oops"), ("state", "request")]);
    seed_unit(&mut m, "charm/2", "bogus-intent", -30, None);
    seed_unit(&mut m, "charm/3", "request", -10, None);
    m.hook("charm/0", Event::LeaderElected).unwrap();
    assert_eq!(m.holder(), Some("charm/3"));
    assert!(m.logs.iter().any(|(unit, level, msg)| unit == "charm/0"
        && *level == LogLevel::Error
        && msg.contains("charm/1")
        && msg.contains("charm/2")));
    m.hook("charm/3", changed()).unwrap();
    m.hook("charm/0", Event::UpdateStatus).unwrap();
    assert_eq!(m.holder(), None);
    assert_eq!(m.calls_on("charm/3"), ["_restart"]);
}

#[test]
fn bad_input_sync_backends() {
    let mut m = charm(2);
    m.sync_backends
        .insert("slow".into(), Err(SyncBackendError::TimedOut));
    m.sync_backends.insert(
        "broken".into(),
        Err(SyncBackendError::Failed("RuntimeError: boom".into())),
    );
    let mut acquire = |id: &str| {
        m.run("charm/1", "sync", |mgr, fx| {
            driver::acquire_sync_lock(mgr, fx, id, Some(5))
        })
    };
    assert_eq!(
        acquire("unknown"),
        Err(Error::SyncLock(
            "Unknown sync lock backend: unknown.".into()
        ))
    );
    let err = acquire("slow").unwrap_err();
    assert!(
        matches!(&err, Error::Timeout(msg) if msg.contains("slow")),
        "{err}"
    );
    let err = acquire("broken").unwrap_err();
    assert!(
        matches!(&err, Error::SyncLock(msg) if msg.starts_with("Failed to acquire sync lock backend broken")),
        "{err}"
    );
    assert_eq!(
        acquire("stop-replset-member"),
        Ok(driver::SyncHeld::Backend)
    );
    let ids: Vec<&str> = m
        .sync_calls
        .iter()
        .map(|(_, _, id, _)| id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["slow", "broken", "stop-replset-member"],
        "an unknown id never reaches the host"
    );
    let err = m
        .run("charm/1", "sync", |mgr, fx| {
            driver::release_sync_lock(mgr, fx, "unknown", None)
        })
        .unwrap_err();
    assert_eq!(
        err,
        Error::SyncLock("Unknown sync lock backend: unknown.".into())
    );
}

// =====================================================================================
// Mixed versions: reference (Python 1.x) units on the same relation (§8.1)

/// Grant `unit` the way the reference leader does: granted_unit/granted_at only.
fn reference_grant(m: &mut Model, unit: &str, micros: i64) {
    m.seed_app(&[("granted_unit", unit), ("granted_at", &ts(micros))]);
}

/// The reference leader's release rule for the holder (§3.3 step 1).
fn reference_leader_releases(m: &Model) -> bool {
    let holder = m.holder().expect("a grant");
    let idle = matches!(m.get(holder, "state"), None | Some("") | Some("idle"));
    let executed = m.get(holder, "executed_at").and_then(Timestamp::parse);
    let granted = m.app("granted_at").and_then(Timestamp::parse);
    idle || matches!((executed, granted), (Some(e), Some(g)) if e > g)
}

#[test]
fn mixed_reference_leader_grant_runs_a_new_unit_exactly_once() {
    let mut m = Model::new("app", 3);
    m.on("restart", &[ret(None)]);
    m.request("app/1", "restart", r#"{"n":1}"#, None).unwrap();
    m.request("app/1", "restart", r#"{"n":2}"#, None).unwrap();
    m.at(1_000_000);
    reference_grant(&mut m, "app/1", 1_000_000);
    m.at(2_000_000);
    for event in [
        changed(),
        changed(),
        Event::UpdateStatus,
        Event::LockGranted,
    ] {
        m.hook("app/1", event).unwrap();
    }
    assert_eq!(m.calls_on("app/1"), ["restart"]);
    assert_eq!(m.get("app/1", "state"), Some("request"));
    assert!(
        reference_leader_releases(&m),
        "executed_at must be after granted_at"
    );
    assert_eq!(m.get("app/1", ECHO_KEY), Some("@1777636801.0"));
    assert_eq!(
        m.app(GRANT_KEY),
        None,
        "a non-leader never writes the app bag"
    );

    // The reference leader releases and, app/1 being the only requester, grants it again.
    m.seed_app(&[("granted_unit", ""), ("granted_at", "")]);
    m.hook("app/1", changed()).unwrap();
    m.at(3_000_000);
    reference_grant(&mut m, "app/1", 3_000_000);
    m.at(4_000_000);
    m.hook("app/1", changed()).unwrap();
    m.hook("app/1", changed()).unwrap();
    assert_eq!(m.calls.len(), 2);
    assert_eq!(m.calls[1].kwargs, json!({"n":2}));
    assert!(reference_leader_releases(&m));
}

#[test]
fn mixed_reference_leader_releases_a_new_unit_whose_clock_is_behind() {
    // The reference's own holders re-run on every hook until their clock passes
    // granted_at; ours run once (echo), so executed_at must satisfy the old rule anyway.
    let mut m = Model::new("app", 2);
    m.on("restart", &[ret(None)]);
    m.skew.insert("app/1".into(), -30_000_000);
    m.request("app/1", "restart", r#"{"n":1}"#, None).unwrap();
    m.request("app/1", "restart", r#"{"n":2}"#, None).unwrap();
    reference_grant(&mut m, "app/1", 0);
    m.hook("app/1", changed()).unwrap();
    m.hook("app/1", changed()).unwrap();
    assert_eq!(m.calls_on("app/1"), ["restart"]);
    assert_eq!(m.get("app/1", "state"), Some("request"));
    assert!(
        reference_leader_releases(&m),
        "the old leader would wait forever"
    );
}

#[test]
fn mixed_new_leader_releases_old_holders_by_the_reference_rule() {
    // Old (Python) holders write no echo key: released when idle or when executed_at is
    // after granted_at.
    for (intent, ops) in [
        ("idle", "[]".to_string()),
        (
            "request",
            queue(&[op("_restart", &ts(1_000_000), None, 0, "{}")]),
        ),
    ] {
        let mut m = charm(3);
        seed_unit(&mut m, "charm/1", "request", -10, Some(-100));
        seed_unit(&mut m, "charm/2", "request", -5, None);
        m.hook("charm/0", changed()).unwrap();
        assert_eq!(m.holder(), Some("charm/1"));
        m.seed(
            "charm/1",
            &[
                ("operations", &ops),
                ("state", intent),
                ("executed_at", &ts(2_000_000)),
            ],
        );
        m.at(3_000_000);
        m.hook("charm/0", changed()).unwrap();
        assert_eq!(m.holder(), Some("charm/2"), "{intent}");
        assert!(m.logged("reference rule"));
    }
}

#[test]
fn mixed_new_leader_never_revokes_an_old_holder_that_has_not_run() {
    let mut m = charm(3);
    seed_unit(&mut m, "charm/1", "request", -10, Some(-100));
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("charm/1"));
    let app_before = m.app_bag.clone();
    // Other units' hooks wake the leader again and again before charm/1 runs.
    m.at(5_000_000);
    m.request("charm/2", "_restart", "{}", None).unwrap();
    for event in [
        changed(),
        Event::UpdateStatus,
        Event::LeaderElected,
        Event::LockGranted,
    ] {
        m.hook("charm/0", event).unwrap();
    }
    assert_eq!(m.app_bag, app_before);
}

#[test]
fn mixed_old_holder_idle_with_queued_work_is_not_revoked_before_it_runs() {
    // W12 leftovers on an old unit: `state=idle` but ops queued. Our scheduler treats it
    // as a request and grants it; the old holder then runs its head op (its "should run"
    // ignores the intent), so the leader must not take the idle intent as "finished".
    let mut m = charm(3);
    seed_unit(&mut m, "charm/1", "idle", -10, Some(-100));
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("charm/1"));
    let app_before = m.app_bag.clone();
    seed_unit(&mut m, "charm/2", "request", -20, None);
    m.at(5_000_000);
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.app_bag, app_before);
}

#[test]
fn mixed_upgraded_unit_never_runs_under_a_grant_the_leader_counts_as_done() {
    // A unit upgraded from the reference has no echo yet; its executed_at (its own, fast
    // clock) is after the new grant. The leader (reference rule for holders without an
    // echo) may release that grant in its next hook, so the holder, seeing the same
    // snapshot, must not start its callback: both sides must agree.
    let mut m = charm(3);
    seed_unit(&mut m, "charm/1", "request", -10, Some(60));
    m.hook("charm/0", changed()).unwrap();
    assert_eq!(m.holder(), Some("charm/1"));
    seed_unit(&mut m, "charm/2", "request", -20, None); // older: next in line

    let mut holder_view = m.clone();
    m.at(1_000_000);
    m.hook("charm/0", changed()).unwrap();
    let leader_released = m.holder() != Some("charm/1");
    holder_view.hook("charm/1", changed()).unwrap();
    let holder_ran = !holder_view.calls.is_empty();
    assert!(
        !(leader_released && holder_ran),
        "charm/1 would run while charm/2 holds the lock"
    );

    // It still gets its turn once the leader's clock passes its executed_at.
    m.at(61_000_000);
    m.settle();
    m.hook("charm/0", Event::UpdateStatus).unwrap();
    m.settle();
    assert_eq!(m.calls_on("charm/1"), ["_restart"]);
    assert_eq!(m.calls_on("charm/2"), ["_restart"]);
    assert_eq!(m.holder(), None);
}

const FEATURES_KEY: &str = rollingops_guest::features::FEATURES;

/// A bag holding nothing but the advertised features.
fn only_features(bag: &rollingops_guest::wire::Bag) -> bool {
    bag.keys().all(|k| k == FEATURES_KEY)
}

#[test]
fn leadership_lost_mid_hook_keeps_the_units_own_turn_and_the_new_leader_moves_on() {
    // The leader runs its own turn; leadership moves while the callback runs, so its
    // release-and-grant (app bag) is refused. The hook must not fail: that would discard
    // the turn it already ran (its echo), and a dispatched hook is not retried.
    let mut m = charm(3);
    m.request("charm/0", "_restart", "{}", None).unwrap();
    assert_eq!(m.holder(), Some("charm/0"), "the leader granted itself");
    m.request("charm/2", "_restart", "{}", None).unwrap();
    m.leader_after_callback = Some("charm/1".into());
    m.hook("charm/0", Event::LockGranted).unwrap();
    assert_eq!(m.calls_on("charm/0"), ["_restart"]);
    assert!(m.logged("Leadership moved during this hook"));
    assert_eq!(
        m.get("charm/0", "operations"),
        Some("[]"),
        "its turn is recorded"
    );
    // The new leader sees the echo, releases charm/0 and grants charm/2.
    m.hook("charm/1", Event::LeaderElected).unwrap();
    assert_eq!(m.holder(), Some("charm/2"));
    m.settle();
    assert_eq!(m.calls_on("charm/2"), ["_restart"]);
    assert_eq!(m.calls_on("charm/0"), ["_restart"], "nothing ran twice");
}
