//! Issue 8 end to end: units are OS processes running the example Rust charm over fake
//! hook tools. An application-wide roll gated by a health check (delayed dispatches are
//! detached `sleep && juju-exec` processes, never a sleep in a hook), and the operator's
//! levers through `rollingops control` and `rollingops status` in a unit's hook context.

use std::time::Duration;

use serde_json::json;

use crate::e2e::serial;
use crate::fake_juju::{Model, Options};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Deploy, then let every unit see the peer relation (where it advertises its features).
fn deploy(name: &str, units: usize) -> Model {
    let model = Model::deploy(name, Options::new(units));
    for unit in &model.units {
        model.queue(unit, "hooks/restart-relation-changed");
    }
    assert!(model.wait_idle(Duration::from_secs(60)), "{}", model.dump());
    model
}

#[test]
fn health_gated_roll_of_three_units_each_once_and_only_when_healthy() {
    let _serial = serial();
    let model = deploy("e2e-roll", 3);
    let ready_after = 0.6;
    model.action(
        &model.units[0],
        "roll",
        json!({"delay": 0.2, "ready_after": ready_after}),
    );
    let done = model.wait_until(TIMEOUT, |m| {
        m.service().iter().any(|l| l.kind == "roll-complete")
    });
    assert!(done, "the roll did not complete\n{}", model.dump());
    assert!(model.wait_idle(Duration::from_secs(20)), "{}", model.dump());
    let overlaps = model.overlaps();
    assert!(overlaps.is_empty(), "{overlaps:#?}\n{}", model.dump());
    let completed = model.completed();
    for unit in &model.units {
        assert_eq!(completed.get(unit), Some(&1), "{unit}\n{}", model.dump());
    }
    // Each hand-off waited for the previous unit to report healthy.
    let lines = model.service();
    let runs = model.restarts();
    for pair in runs.windows(2) {
        let healthy = lines
            .iter()
            .find(|l| l.kind == "healthy" && l.unit == pair[0].unit && l.at >= pair[0].start)
            .unwrap_or_else(|| panic!("{} never reported healthy\n{}", pair[0].unit, model.dump()));
        assert!(
            pair[1].start >= healthy.at,
            "{} started before {} was healthy\n{}",
            pair[1].unit,
            pair[0].unit,
            model.dump()
        );
        let gap = (pair[1].start - pair[0].stop.unwrap()) as f64 / 1e6;
        assert!(gap >= ready_after, "hand-off after {gap:.2}s");
    }
    let completions = lines.iter().filter(|l| l.kind == "roll-complete").count();
    assert_eq!(completions, 1, "{}", model.dump());
    let checks = lines
        .iter()
        .filter(|l| l.kind == "healthy" || l.kind == "unhealthy")
        .count();
    let first = runs.first().unwrap().start;
    let last = runs.last().unwrap().stop.unwrap();
    println!(
        "e2e health-gated roll, 3 units: {:.2}s from first start to last stop, {checks} checks",
        (last - first) as f64 / 1e6
    );
}

#[test]
fn operator_pauses_sees_status_and_resumes_through_the_cli() {
    let _serial = serial();
    let model = deploy("e2e-levers", 3);
    let cli = crate::fake_juju::binaries()
        .rollingops
        .display()
        .to_string();
    let base = |unit: &str| model.base_dir(unit).display().to_string();
    let run = |unit: &str, args: &str| {
        let command = format!(
            "{cli} control --peer-relation restart --base-dir {} {args}",
            base(unit)
        );
        model.exec(unit, &command)
    };
    let leader = model.leader();
    // A non-leader cannot pause: a clear error, nothing written.
    let (code, _, stderr) = run(&model.units[1], "pause --reason test");
    assert_ne!(code, 0);
    assert!(stderr.contains("Only the leader"), "{stderr}");
    let (code, stdout, stderr) = run(&leader, "pause --reason 'db maintenance'");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("paused"), "{stdout}");
    // While paused, requests queue but nobody runs.
    for unit in &model.units {
        model.action(unit, "restart", json!({"delay": 0.1}));
    }
    assert!(model.wait_idle(Duration::from_secs(30)), "{}", model.dump());
    assert!(model.restarts().is_empty(), "{}", model.dump());
    let status = format!(
        "{cli} status --peer-relation restart --base-dir {}",
        base(&model.units[2])
    );
    let (code, stdout, stderr) = model.exec(&model.units[2], &status);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Paused since"), "{stdout}");
    assert!(stdout.contains("db maintenance"), "{stdout}");
    // Cancel one unit's queued restart, then resume: the other two run.
    let (code, stdout, stderr) = run(&model.units[2], "cancel");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("cancelled 1"), "{stdout}");
    let (code, stdout, stderr) = run(&leader, "resume");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("resumed"), "{stdout}");
    let done = model.wait_until(TIMEOUT, |m| m.completed().len() == 2);
    assert!(done, "{}", model.dump());
    assert!(model.wait_idle(Duration::from_secs(20)));
    let completed = model.completed();
    assert_eq!(completed.get(&model.units[2]), None, "{completed:?}");
    assert!(model.overlaps().is_empty(), "{}", model.dump());
}
