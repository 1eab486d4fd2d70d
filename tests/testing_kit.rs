//! The Rust testing kit (`rollingops::testing`) used the way a charm's tests would use it:
//! build a state, drive the roll, assert on calls and bags — no patching.

use std::sync::{Arc, Mutex};

use rollingops::testing::Model;
use rollingops::{Control, OperationResult, RequestOptions, RollRequest};
use serde_json::json;

#[test]
fn a_rolling_restart_runs_each_unit_once_in_request_order() {
    let mut model = Model::new("app", 4);
    model.callback("restart", |_| OperationResult::Release);
    for unit in ["app/2", "app/0", "app/3", "app/1"] {
        model
            .queue(unit, "restart", json!({"why": "config"}))
            .unwrap();
    }
    let hooks = model.run_until_idle(500).unwrap();
    let order: Vec<String> = model.calls().into_iter().map(|c| c.unit).collect();
    assert_eq!(order, ["app/2", "app/0", "app/3", "app/1"]);
    assert!(model.holders().is_empty());
    assert!(hooks > 0);
    assert!(model.calls().iter().all(|c| c.kwargs["why"] == "config"));
}

#[test]
fn state_builders_produce_what_the_component_writes() {
    let mut model = Model::new("app", 3);
    model.callback("restart", |_| OperationResult::Release);
    model.hold("app/1", "restart", json!({})).unwrap();
    assert_eq!(model.holders(), ["app/1"]);
    assert!(model.calls().is_empty(), "granted, not run yet");
    model.queue("app/2", "restart", json!({})).unwrap();
    let described = model.describe("app/0").unwrap();
    assert_eq!(described["lock"]["holder"], "app/1");
    assert_eq!(described["units"][2]["queue"].as_array().unwrap().len(), 1);
    model.pause("maintenance").unwrap();
    model.run_until_idle(200).unwrap();
    // app/1 held before the pause: it runs; app/2 waits while paused.
    let ran: Vec<String> = model.calls().into_iter().map(|c| c.unit).collect();
    assert_eq!(ran, ["app/1"]);
    let leader = model.leader().to_string();
    model
        .run(&leader, "resume", |s| s.control(&Control::Resume))
        .unwrap();
    model.run_until_idle(200).unwrap();
    let ran: Vec<String> = model.calls().into_iter().map(|c| c.unit).collect();
    assert_eq!(ran, ["app/1", "app/2"]);
}

#[test]
fn a_health_gated_roll_with_a_fake_clock_and_no_sleep() {
    // The service is healthy 5 virtual seconds after its restart.
    let restarted: Arc<Mutex<Vec<(String, f64)>>> = Arc::default();
    let mut model = Model::new("app", 5);
    let log = restarted.clone();
    model.callback("restart", move |call| {
        log.lock().unwrap().push((call.unit.clone(), call.at));
        OperationResult::Release
    });
    let log = restarted.clone();
    model.health_check("ready", move |call| {
        let log = log.lock().unwrap();
        log.iter()
            .rev()
            .find(|(unit, _)| *unit == call.unit)
            .is_some_and(|(_, at)| call.at - at >= 5.0)
    });
    model.callback("roll-done", |_| OperationResult::Release);
    let leader = model.leader().to_string();
    let request = RollRequest {
        callback_id: "restart".into(),
        kwargs_json: "{}".into(),
        health_check: Some("ready".into()),
        health_timeout_seconds: Some(120),
        on_complete: Some("roll-done".into()),
    };
    let generation = model
        .run(&leader, "start-roll", |s| s.start_roll(&request))
        .unwrap();
    assert_eq!(generation, 1);
    model.run_until_idle(2_000).unwrap();
    let restarts = restarted.lock().unwrap().clone();
    assert_eq!(restarts.len(), 5);
    for pair in restarts.windows(2) {
        assert!(pair[1].1 - pair[0].1 >= 5.0, "{restarts:?}");
    }
    let done: Vec<_> = model
        .calls()
        .into_iter()
        .filter(|c| c.id == "roll-done")
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].kwargs["generation"], 1);
    println!(
        "5-unit health-gated roll: {} hooks, {:.1} virtual seconds",
        model.timeline().len(),
        model.now()
    );
}

#[test]
fn a_leader_change_mid_roll_and_a_generation_for_fencing() {
    let mut model = Model::new("app", 3);
    model.callback("restart", |_| OperationResult::Release);
    for unit in model.units() {
        let options = RequestOptions {
            max_retry: None,
            health_check: None,
            health_timeout_seconds: None,
            generation_kwarg: Some("generation".into()),
        };
        model
            .run(&unit, "request", |s| {
                s.request_lock("restart", "{}", &options)
            })
            .unwrap();
    }
    model.set_leader("app/2");
    model.run_until_idle(500).unwrap();
    let generations: Vec<u64> = model
        .calls()
        .iter()
        .map(|c| c.kwargs["generation"].as_u64().unwrap())
        .collect();
    assert_eq!(generations.len(), 3);
    assert!(
        generations.windows(2).all(|g| g[1] > g[0]),
        "{generations:?}"
    );
}

#[test]
fn an_unsettled_model_is_an_error_not_a_hang() {
    let mut model = Model::new("app", 2);
    // retry-hold forever: the lock never moves on.
    model.callback("restart", |_| OperationResult::RetryHold);
    model.queue("app/1", "restart", json!({})).unwrap();
    let err = model.run_until_idle(50).unwrap_err();
    assert!(err.to_string().contains("did not settle"), "{err}");
}

#[test]
fn a_holder_departing_mid_roll_loses_nothing_and_the_roll_completes() {
    let mut model = Model::new("app", 4);
    model.callback("restart", |_| OperationResult::Release);
    // app/1 never gets healthy: it would hold the lock until its 600 s timeout…
    model.health_check("ready", |call| call.unit != "app/1");
    model.callback("roll-done", |_| OperationResult::Release);
    let request = RollRequest {
        callback_id: "restart".into(),
        kwargs_json: "{}".into(),
        health_check: Some("ready".into()),
        health_timeout_seconds: Some(600),
        on_complete: Some("roll-done".into()),
    };
    model
        .run("app/0", "start-roll", |s| s.start_roll(&request))
        .unwrap();
    // …app/1 restarts, then sits in its health gate holding the lock: its machine goes.
    let gated = model
        .run_until(1_000, |m| {
            m.holders() == ["app/1"] && m.unit_bag("app/1").contains_key("rollingops-health")
        })
        .unwrap();
    assert!(gated, "app/1 never sat in its gate");
    model.depart("app/1");
    model.run_until_idle(2_000).unwrap();
    let restarts: Vec<String> = model
        .calls()
        .into_iter()
        .filter(|c| c.id == "restart")
        .map(|c| c.unit)
        .collect();
    let mut sorted = restarts.clone();
    sorted.sort();
    assert_eq!(sorted, ["app/0", "app/1", "app/2", "app/3"], "{restarts:?}");
    let done = model
        .calls()
        .into_iter()
        .filter(|c| c.id == "roll-done")
        .count();
    assert_eq!(done, 1);
    assert!(model.holders().is_empty());
    // …but its grant was reclaimed at once when it left, not at the timeout.
    assert!(model.now() < 300.0, "finished at {:.0}s", model.now());
}
