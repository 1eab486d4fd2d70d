//! Issue 8 features at the core's level (native, real databag bytes): the wire rule, the
//! health gate's hook-by-hook behaviour, N holders, controls, generations, bad input.

mod support;

use rollingops_guest::driver;
use rollingops_guest::features::FEATURES;
use rollingops_guest::manager::{Control, PolicyUpdate, RequestOptions, RollRequest};
use rollingops_guest::{Error, Event};
use serde_json::{Value, json};
use support::*;

fn model(units: usize) -> Model {
    let mut m = Model::new("app", units);
    m.on("restart", &[ret(None)])
        .on("healthy", &[ret(Some("true"))])
        .on("done", &[ret(None)]);
    m.notifications.insert("done".into());
    m
}

fn policy(max_concurrent: u32) -> PolicyUpdate {
    PolicyUpdate {
        max_concurrent,
        grant_timeout: None,
        rank_ordering: false,
        halt_on_health_failure: true,
    }
}

fn request(
    m: &mut Model,
    unit: &str,
    options: RequestOptions,
) -> Result<(), rollingops_guest::Error> {
    m.run(unit, "request-lock", |mgr, fx| {
        driver::call(mgr, fx, |mgr| mgr.request_lock("restart", "{}", options))
    })
}

fn set_policy(m: &mut Model, unit: &str, update: PolicyUpdate) -> Result<(), Error> {
    m.run(unit, "set-policy", |mgr, fx| {
        driver::call(mgr, fx, |mgr| mgr.set_policy(update))
    })
}

fn control(m: &mut Model, unit: &str, control: Control) -> Result<u32, Error> {
    m.run(unit, "control", |mgr, fx| {
        driver::call(mgr, fx, |mgr| mgr.control(control))
    })
}

fn holders(m: &Model) -> Vec<String> {
    let mut all: Vec<String> = m
        .app("granted_unit")
        .map(str::to_string)
        .into_iter()
        .collect();
    if let Some(record) = m.app("rollingops-grant") {
        let record: Value = serde_json::from_str(record).unwrap();
        for extra in record["extra"].as_array().into_iter().flatten() {
            all.push(extra["unit"].as_str().unwrap().to_string());
        }
    }
    all
}

/// Make `unit` look like a unit of the reference library: it never advertised features.
fn make_reference(m: &mut Model, unit: &str) {
    m.bags.get_mut(unit).unwrap().remove(FEATURES);
    m.foreign.insert(unit.to_string());
}

#[test]
fn wire_rule_one_reference_unit_keeps_the_reference_behaviour() {
    let mut m = model(3);
    make_reference(&mut m, "app/2");
    m.hook("app/0", Event::LeaderElected).unwrap();
    assert_eq!(m.app(FEATURES), Some("[]"), "nothing is engaged");
    // The policy is stored, but one holder at a time.
    set_policy(&mut m, "app/0", policy(2)).unwrap();
    assert!(m.logged("not in force until every unit supports it"));
    // app/2 runs the reference library: its request is what the reference writes.
    m.request("app/1", "restart", "{}", None).unwrap();
    let ops = queue(&[op("restart", "1777636800.9", None, 0, "{}")]);
    m.seed("app/2", &[("operations", &ops), ("state", "request")]);
    m.hook("app/0", Event::PeerRelationChanged).unwrap();
    assert_eq!(holders(&m), ["app/1"]);
    // Pause and rolls are refused, naming the unit that lacks support.
    let err = control(&mut m, "app/0", Control::Pause("x".into())).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(msg) if msg.contains("app/2")),
        "{err}"
    );
    let roll = RollRequest {
        callback_id: "restart".into(),
        kwargs_json: "{}".into(),
        health_check: None,
        health_timeout: None,
        on_complete: None,
    };
    let err = m
        .run("app/0", "start-roll", |mgr, fx| {
            driver::call(mgr, fx, |mgr| mgr.start_roll(roll))
        })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // A health-gated request hands on at once, as the reference would. (app/2's hooks are
    // the reference's business: dropped here, its turn recorded as the reference does.)
    m.settle();
    m.seed(
        "app/2",
        &[
            ("operations", "[]"),
            ("state", "idle"),
            ("executed_at", &ts(60_000_000)),
        ],
    );
    m.hook("app/0", Event::PeerRelationChanged).unwrap();
    m.settle();
    request(
        &mut m,
        "app/1",
        RequestOptions {
            health_check: Some("healthy".into()),
            ..Default::default()
        },
    )
    .unwrap();
    m.settle();
    assert!(
        m.logged("not every unit on the relation supports health gates"),
        "{:#?}\n{:?}",
        m.logs,
        m.app_bag
    );
    assert!(m.delayed.is_empty());

    // Once app/2 runs this library too, the policy is in force: two holders.
    m.foreign.clear();
    m.bags
        .get_mut("app/2")
        .unwrap()
        .insert(FEATURES.into(), rollingops_guest::features::advertised());
    for unit in ["app/1", "app/2"] {
        m.request(unit, "restart", r#"{"again":true}"#, None)
            .unwrap();
    }
    m.on_timed("restart", 1, &[ret(None)]);
    m.hook("app/0", Event::PeerRelationChanged).unwrap();
    assert_eq!(holders(&m), ["app/1", "app/2"]);
}

#[test]
fn health_gate_holds_the_lock_until_the_check_passes() {
    let mut m = model(2);
    m.on(
        "healthy",
        &[ret(Some("false")), ret(Some("false")), ret(Some("true"))],
    );
    m.hook("app/0", Event::LeaderElected).unwrap();
    request(
        &mut m,
        "app/1",
        RequestOptions {
            health_check: Some("healthy".into()),
            health_timeout: Some(600),
            ..Default::default()
        },
    )
    .unwrap();
    m.settle();
    assert_eq!(m.calls_on("app/1"), ["restart"]);
    // Restarted, not yet healthy: still the holder, nothing echoed, a check in 2 s.
    assert_eq!(holders(&m), ["app/1"]);
    assert_eq!(m.delayed, [("app/1".to_string(), 2_000)]);
    assert!(m.get("app/1", "rollingops-health").is_some());
    // A hook before the check is due does nothing.
    m.hook("app/1", Event::PeerRelationChanged).unwrap();
    assert_eq!(m.calls_on("app/1"), ["restart"]);
    // Checks at 2 s (false), then 4 s later (false), then 8 s later (true).
    let mut delays = vec![2_000];
    while let Some(unit) = m.deliver_delayed() {
        assert_eq!(unit, "app/1");
        m.settle();
        if let Some((_, ms)) = m.delayed.last() {
            delays.push(*ms);
        }
    }
    assert_eq!(delays, [2_000, 4_000, 8_000]);
    assert_eq!(
        m.calls_on("app/1"),
        ["restart", "healthy", "healthy", "healthy"]
    );
    m.settle();
    assert_eq!(
        holders(&m),
        Vec::<String>::new(),
        "released after the check passed"
    );
    assert_eq!(m.get("app/1", "rollingops-health"), None);
    assert_eq!(m.get("app/1", "operations"), Some("[]"));
}

#[test]
fn a_gate_that_times_out_hands_on_and_pauses() {
    let mut m = model(3);
    m.on("healthy", &[ret(Some("false"))]);
    m.hook("app/0", Event::LeaderElected).unwrap();
    request(
        &mut m,
        "app/1",
        RequestOptions {
            health_check: Some("healthy".into()),
            health_timeout: Some(10),
            ..Default::default()
        },
    )
    .unwrap();
    m.request("app/2", "restart", "{}", None).unwrap();
    m.settle();
    while m.deliver_delayed().is_some() {
        m.settle();
    }
    assert!(m.logged("did not pass within 10 s"));
    let paused: Value = serde_json::from_str(m.app("rollingops-paused").unwrap()).unwrap();
    assert!(
        paused["reason"].as_str().unwrap().contains("app/1"),
        "{paused}"
    );
    assert_eq!(holders(&m), Vec::<String>::new());
    assert_eq!(
        m.calls_on("app/2"),
        Vec::<&str>::new(),
        "paused: app/2 waits"
    );
    // Resume: app/2 runs, nothing was lost.
    assert_eq!(control(&mut m, "app/0", Control::Resume).unwrap(), 1);
    m.settle();
    assert_eq!(m.calls_on("app/2"), ["restart"]);
}

#[test]
fn generation_reaches_the_callback_and_grows_with_every_grant() {
    let mut m = model(2);
    m.hook("app/0", Event::LeaderElected).unwrap();
    for round in 0..2 {
        m.run("app/1", "request-lock", |mgr, fx| {
            driver::call(mgr, fx, |mgr| {
                mgr.request_lock(
                    "restart",
                    &json!({ "round": round }).to_string(),
                    RequestOptions {
                        generation_kwarg: Some("generation".into()),
                        ..Default::default()
                    },
                )
            })
        })
        .unwrap();
        m.settle();
    }
    let generations: Vec<u64> = m
        .calls
        .iter()
        .map(|c| c.kwargs["generation"].as_u64().unwrap())
        .collect();
    assert_eq!(generations.len(), 2);
    assert!(generations[1] > generations[0], "{generations:?}");
    assert_eq!(
        m.get("app/1", "rollingops-op-options"),
        None,
        "options cleaned up"
    );
}

#[test]
fn cancel_drops_queued_operations_but_not_a_started_one() {
    let mut m = model(2);
    m.hook("app/0", Event::LeaderElected).unwrap();
    // app/0 holds the lock (a long restart), so app/1's requests stay queued.
    m.seed_app(&[("granted_unit", "app/0"), ("granted_at", &ts(0))]);
    m.request("app/1", "restart", r#"{"n":1}"#, None).unwrap();
    m.request("app/1", "done", "{}", None).unwrap();
    assert_eq!(
        control(&mut m, "app/1", Control::Cancel(Some("done".into()))).unwrap(),
        1
    );
    let ops: Value = serde_json::from_str(m.get("app/1", "operations").unwrap()).unwrap();
    assert_eq!(ops.as_array().unwrap().len(), 1);
    assert_eq!(control(&mut m, "app/1", Control::Cancel(None)).unwrap(), 1);
    assert_eq!(m.get("app/1", "operations"), Some("[]"));
    assert_eq!(m.get("app/1", "state"), Some("idle"));
}

#[test]
fn force_release_ends_a_stuck_grant_and_the_next_unit_goes() {
    let mut m = model(3);
    m.hook("app/0", Event::LeaderElected).unwrap();
    let ops = queue(&[op("restart", "1777636700.0", None, 0, "{}")]);
    m.seed("app/1", &[("operations", &ops), ("state", "request")]);
    m.seed_app(&[
        ("granted_unit", "app/1"),
        ("granted_at", "1777636700.5"),
        (
            "rollingops-grant",
            r#"{"seq":4,"unit":"app/1","at":"1777636700.5"}"#,
        ),
    ]);
    m.request("app/2", "restart", "{}", None).unwrap();
    let err = control(&mut m, "app/1", Control::ForceRelease(None)).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(_)),
        "leader only: {err}"
    );
    let err = control(&mut m, "app/0", Control::ForceRelease(Some("app/2".into()))).unwrap_err();
    assert!(err.to_string().contains("does not hold"), "{err}");
    assert_eq!(
        control(&mut m, "app/0", Control::ForceRelease(Some("app/1".into()))).unwrap(),
        1
    );
    assert!(m.logged("released by an operator"));
    // The stuck holder is not simply granted again: app/2 goes, under generation 5.
    assert_eq!(holders(&m), ["app/2"]);
    let grant: Value = serde_json::from_str(m.app("rollingops-grant").unwrap()).unwrap();
    assert_eq!(grant["seq"], 5);
}

#[test]
fn bad_input_is_refused_clearly_and_bad_records_are_not_fatal() {
    let mut m = model(2);
    m.hook("app/0", Event::LeaderElected).unwrap();
    let before = m.bags["app/1"].clone();
    for (options, needle) in [
        (
            RequestOptions {
                health_check: Some("nope".into()),
                ..Default::default()
            },
            "Unknown health_check callback: nope",
        ),
        (
            RequestOptions {
                health_check: Some("healthy".into()),
                health_timeout: Some(0),
                ..Default::default()
            },
            "health_timeout must be at least 1 second",
        ),
        (
            RequestOptions {
                generation_kwarg: Some(" ".into()),
                ..Default::default()
            },
            "generation_kwarg must not be blank",
        ),
    ] {
        let err = request(&mut m, "app/1", options).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidLockRequest(msg) if msg.contains(needle)),
            "{err}"
        );
    }
    assert_eq!(m.bags["app/1"], before, "nothing written");
    let err = set_policy(&mut m, "app/1", policy(2)).unwrap_err();
    assert!(err.to_string().contains("Only the leader"), "{err}");
    let err = set_policy(&mut m, "app/0", policy(0)).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
    // Corrupted extended records read as absent or default; scheduling goes on.
    m.seed_app(&[
        ("rollingops-policy", "{oops"),
        ("rollingops-roll", r#"{"generation":"x"}"#),
        ("rollingops-paused", "[]"),
    ]);
    m.seed(
        "app/1",
        &[("rollingops-op-options", "7"), ("rollingops-health", "{")],
    );
    m.request("app/1", "restart", "{}", None).unwrap();
    m.settle();
    assert_eq!(m.calls_on("app/1"), ["restart"]);
}

fn start_roll(m: &mut Model, unit: &str) -> Result<u64, Error> {
    let request = RollRequest {
        callback_id: "restart".into(),
        kwargs_json: "{}".into(),
        health_check: None,
        health_timeout: None,
        on_complete: Some("done".into()),
    };
    m.run(unit, "start-roll", |mgr, fx| {
        driver::call(mgr, fx, |mgr| mgr.start_roll(request))
    })
}

#[test]
fn a_roll_waits_for_every_unit_to_join_so_rank_puts_the_primary_last() {
    let mut m = model(4);
    m.hook("app/0", Event::LeaderElected).unwrap();
    set_policy(
        &mut m,
        "app/0",
        PolicyUpdate {
            rank_ordering: true,
            ..policy(1)
        },
    )
    .unwrap();
    m.run("app/0", "set-rank", |mgr, fx| {
        driver::call(mgr, fx, |mgr| mgr.set_rank(10))
    })
    .unwrap();
    m.settle();
    assert_eq!(start_roll(&mut m, "app/0").unwrap(), 1);
    assert!(
        holders(&m).is_empty(),
        "nobody is granted before every unit joined"
    );
    assert_eq!(m.delayed.last(), Some(&("app/0".to_string(), 60_000)));
    m.settle();
    let order: Vec<&str> = m
        .calls
        .iter()
        .filter(|c| c.id == "restart")
        .map(|c| c.unit.as_str())
        .collect();
    assert_eq!(order.len(), 4);
    assert_eq!(order.last(), Some(&"app/0"), "{order:?}");
    assert_eq!(
        m.calls_on("app/0").last(),
        Some(&"done"),
        "the roll completed"
    );
}

#[test]
fn cancelling_a_roll_operation_counts_the_unit_as_done() {
    let mut m = model(3);
    m.hook("app/0", Event::LeaderElected).unwrap();
    // app/2 holds the lock, so the roll's operations stay queued.
    m.seed_app(&[("granted_unit", "app/2"), ("granted_at", &ts(0))]);
    m.seed(
        "app/2",
        &[
            (
                "operations",
                &queue(&[op("restart", "1777636700.0", None, 0, "{}")]),
            ),
            ("state", "request"),
        ],
    );
    start_roll(&mut m, "app/0").unwrap();
    m.hook("app/1", Event::PeerRelationChanged).unwrap();
    assert_eq!(control(&mut m, "app/1", Control::Cancel(None)).unwrap(), 1);
    let state: Value =
        serde_json::from_str(m.get("app/1", "rollingops-roll-state").unwrap()).unwrap();
    assert_eq!(state["done"], 1, "{state}");
    m.settle();
    let described: Value = m
        .run("app/0", "describe", |mgr, fx| driver::describe(mgr, fx))
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap();
    assert!(
        !described["roll"]["completed"].is_null(),
        "the roll completed: {}",
        described["roll"]
    );
    assert!(start_roll(&mut m, "app/0").is_ok(), "a new roll can start");
}

#[test]
fn a_reclaimed_unit_backs_off_doubling_so_a_dead_unit_costs_ever_fewer_hooks() {
    let mut m = model(2);
    m.hook("app/0", Event::LeaderElected).unwrap();
    // app/1 asks and is granted; its agent is down: it never runs.
    m.foreign.insert("app/1".into());
    m.request("app/1", "restart", "{}", None).unwrap();
    m.hook("app/0", Event::PeerRelationChanged).unwrap();
    assert_eq!(holders(&m), ["app/1"]);
    let mut backoffs = Vec::new();
    for _ in 0..3 {
        let released = control(&mut m, "app/0", Control::ForceRelease(None)).unwrap();
        assert_eq!(released, 1);
        assert!(holders(&m).is_empty(), "not granted again at once");
        let (_, delay) = m.delayed.last().cloned().unwrap();
        backoffs.push(delay);
        // A leader hook during the back-off grants nothing…
        m.hook("app/0", Event::UpdateStatus).unwrap();
        assert!(holders(&m).is_empty());
        // …the delayed wake-up at its end grants app/1 again.
        while m.deliver_delayed().is_some() {}
        assert_eq!(holders(&m), ["app/1"]);
    }
    assert_eq!(backoffs, [60_000, 120_000, 240_000]);
    // Once app/1 runs its turn, the back-off is forgotten.
    m.foreign.clear();
    m.hook("app/1", Event::PeerRelationChanged).unwrap();
    m.hook("app/0", Event::PeerRelationChanged).unwrap();
    assert_eq!(m.calls_on("app/1"), ["restart"]);
    assert_eq!(m.app("rollingops-reclaimed"), None);
}
