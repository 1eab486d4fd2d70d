//! End to end with Go units: the example Go charm (`host/go/examples/restart-charm`, the
//! Go module over the C ABI) as the `dispatch` of some or all units of the fake Juju
//! (`fake_juju`), next to the example Rust charm. Both charms share the action, the config
//! and the service log, so the fake service's timestamps prove mutual exclusion across
//! languages, and every requested restart must complete exactly once.
//!
//! Skipped (with a note) when `go` is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_juju::{Model, Options, measure, now_micros};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Build the C ABI library and the Go example charm once; `None` without a Go toolchain.
fn go_charm() -> Option<&'static Path> {
    static CHARM: OnceLock<Option<PathBuf>> = OnceLock::new();
    CHARM
        .get_or_init(|| {
            if Command::new("go").arg("version").output().is_err() {
                eprintln!("go is not installed: skipping the Go end-to-end tests");
                return None;
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build
                .current_dir(root)
                .args(["build", "-p", "rollingops-capi"]);
            if !cfg!(debug_assertions) {
                build.arg("--release");
            }
            for (key, _) in std::env::vars() {
                if key.starts_with("CARGO_PKG_")
                    || key.starts_with("CARGO_MANIFEST_")
                    || key == "CARGO_CRATE_NAME"
                    || key == "CARGO_PRIMARY_PACKAGE"
                {
                    build.env_remove(key);
                }
            }
            assert!(
                build.status().unwrap().success(),
                "cargo build -p rollingops-capi"
            );
            let out = root.join("target").join("go").join("restart-charm");
            let mut go = Command::new("go");
            go.current_dir(root.join("host/go"))
                .args(["build", "-ldflags=-s -w", "-o"])
                .arg(&out);
            if !cfg!(debug_assertions) {
                go.arg("-tags=rollingops_release");
            }
            go.arg("./examples/restart-charm").env("CGO_ENABLED", "1");
            assert!(
                go.status().unwrap().success(),
                "go build of the example charm"
            );
            Some(out)
        })
        .as_deref()
}

/// Deploy `languages.len()` units, unit i running the charm in `languages[i]` ("go" or
/// "rust"); the first unit leads.
fn deploy(name: &str, languages: &[&str], go: &Path) -> Model {
    let model = Model::start(name, Options::new(languages.len()));
    for (unit, language) in model.units.iter().zip(languages) {
        if *language == "go" {
            let dispatch = model
                .dir
                .join("units")
                .join(unit.replace('/', "-"))
                .join("charm")
                .join("dispatch");
            std::fs::remove_file(&dispatch).unwrap();
            std::os::unix::fs::symlink(go, &dispatch).unwrap();
        }
    }
    for unit in &model.units {
        model.queue(unit, "hooks/install");
    }
    model.queue(&model.units[0], "hooks/leader-elected");
    assert!(
        model.wait_idle(Duration::from_secs(60)),
        "deployment did not settle\n{}",
        model.dump()
    );
    model
}

/// Request a restart on every unit, wait until each has completed one and the model is
/// quiet, and check the run: no overlap, once each, no failed hook, all idle. Prints what
/// it cost (`-- --nocapture`).
fn restart_everywhere(label: &str, model: &Model) {
    let t0 = now_micros();
    for unit in &model.units {
        model.action(unit, "restart", json!({"delay": 0.1}));
    }
    let idle = |m: &Model| {
        m.app_bag().get("granted_unit").is_none()
            && m.unit_bags().values().all(|bag| {
                bag.get("operations")
                    .and_then(Value::as_str)
                    .is_none_or(|o| o == "[]")
            })
    };
    let done = model.wait_until(TIMEOUT, |m| {
        let completed = m.completed();
        m.units
            .iter()
            .all(|u| completed.get(u).copied().unwrap_or(0) >= 1)
            && idle(m)
    });
    assert!(done, "the rolling restart did not finish\n{}", model.dump());
    assert!(model.wait_idle(Duration::from_secs(20)), "{}", model.dump());
    let overlaps = model.overlaps();
    assert!(overlaps.is_empty(), "{overlaps:#?}\n{}", model.dump());
    for (unit, count) in model.completed() {
        assert_eq!(count, 1, "{unit} restarted {count} times\n{}", model.dump());
    }
    assert_eq!(
        model.restarts().len(),
        model.units.len(),
        "{}",
        model.dump()
    );
    let failed: Vec<_> = model
        .journal()
        .into_iter()
        .filter(|j| j.exit != 0)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", model.dump());
    assert!(idle(model), "{}", model.dump());
    for (unit, bag) in model.unit_bags() {
        assert_eq!(bag["state"], "idle", "{unit}\n{}", model.dump());
    }
    assert!(model.abandoned().is_empty(), "{:?}", model.abandoned());
    let m = measure(model, t0);
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

#[test]
fn go_units_rolling_restart_one_at_a_time_each_once() {
    let Some(go) = go_charm() else { return };
    let model = deploy("go-rolling3", &["go", "go", "go"], go);
    restart_everywhere("rolling restart (Go units)", &model);
}

#[test]
fn go_and_rust_units_share_one_peer_relation() {
    // A Go leader over Rust and Go units: the same component decides on every unit, and
    // the hand-offs cross languages in both directions.
    let Some(go) = go_charm() else { return };
    let model = deploy("go-rust-mixed", &["go", "rust", "go", "rust"], go);
    restart_everywhere("rolling restart (Go + Rust units)", &model);
}
