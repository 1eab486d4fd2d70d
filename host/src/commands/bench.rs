//! `rollingops bench`: what the component costs and what users feel, side by side with
//! baselines measured in the same run (the native core for decisions; the reference's
//! hook model from spec/peer.md §4.5 for hooks and seconds).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::bindings::juju::rollingops::types::{
    BagOwner, CallbackOutcome, Config, Error, Event, LogLevel,
};
use crate::host::Host;
use crate::runtime::{Runtime, Session};
use crate::sandbox::Sandbox;
use crate::sim::{self, Scenario, report};

const AFTER_HELP: &str = "Examples:
  cargo run --release -p rollingops -- bench
  rollingops bench --quick            fewer repetitions";

/// Measure the component and the protocol.
#[derive(Debug, Parser)]
#[command(after_help = AFTER_HELP)]
pub struct BenchCommand {
    /// Fewer repetitions (for a smoke run).
    #[arg(long)]
    pub quick: bool,
}

type Bags = Arc<
    Mutex<(
        BTreeMap<String, String>,
        BTreeMap<String, BTreeMap<String, String>>,
    )>,
>;

/// A leader over an in-memory relation whose writes are discarded, so every call sees the
/// same state.
#[derive(Clone)]
struct FrozenLeader {
    bags: Bags,
}

impl Host for FrozenLeader {
    fn unit_name(&mut self) -> String {
        "app/0".into()
    }
    fn model_uuid(&mut self) -> String {
        "bench".into()
    }
    fn is_leader(&mut self) -> Result<bool, Error> {
        Ok(true)
    }
    fn relation_ids(&mut self, _: &str) -> Result<Vec<u32>, Error> {
        Ok(vec![1])
    }
    fn relation_units(&mut self, _: u32) -> Result<Vec<String>, Error> {
        Ok(self
            .bags
            .lock()
            .unwrap()
            .1
            .keys()
            .filter(|u| *u != "app/0")
            .cloned()
            .collect())
    }
    fn relation_get(&mut self, _: u32, owner: &BagOwner) -> Result<Vec<(String, String)>, Error> {
        let bags = self.bags.lock().unwrap();
        let bag = match owner {
            BagOwner::App => Some(&bags.0),
            BagOwner::Unit(unit) => bags.1.get(unit),
        };
        Ok(bag
            .map(|b| b.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }
    fn relation_set(&mut self, _: u32, _: bool, _: &[(String, String)]) -> Result<(), Error> {
        Ok(())
    }
    fn log(&mut self, _: LogLevel, _: &str) {}
    fn dispatch(&mut self, _: &str) -> Result<(), Error> {
        Ok(())
    }
    fn now_micros(&mut self) -> i64 {
        sim::EPOCH_MICROS + 3_600_000_000
    }
    fn run_callback(&mut self, _: &str, _: &str) -> CallbackOutcome {
        CallbackOutcome::Returned(None)
    }
}

fn relation_with(units: usize) -> Bags {
    let mut unit_bags = BTreeMap::new();
    for i in 0..units {
        let mut bag = BTreeMap::new();
        let op = format!(
            r#"[{{"callback_id":"restart","requested_at":"{}.5","max_retry":null,"attempt":0,"result":null,"kwargs":{{"delay":2}}}}]"#,
            1_777_636_800 + (i * 7919) % units
        );
        bag.insert("operations".to_string(), op);
        bag.insert("state".to_string(), "request".to_string());
        bag.insert("processing_backend".to_string(), "peer".to_string());
        unit_bags.insert(format!("app/{i}"), bag);
    }
    Arc::new(Mutex::new((BTreeMap::new(), unit_bags)))
}

fn config() -> Config {
    Config {
        peer_relation_name: "restart".into(),
        etcd_relation_name: None,
        cluster_id: None,
        base_dir: "/var/lib/rollingops".into(),
        callback_ids: vec!["restart".into()],
        sync_lock_ids: vec![],
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .collect();
    median(samples)
}

fn fmt(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros >= 1000.0 {
        format!("{:.2} ms", micros / 1000.0)
    } else {
        format!("{micros:.1} µs")
    }
}

/// The native core's leader decision over the same data (the baseline).
fn native_decision(bags: &Bags) {
    use rollingops_guest::driver::{self, BagOwner as NativeOwner, Effects};
    use rollingops_guest::manager::{CallbackOutcome as Outcome, SyncBackendError};
    struct Native<'a>(&'a Bags);
    impl Effects for Native<'_> {
        fn unit_name(&mut self) -> String {
            "app/0".into()
        }
        fn is_leader(&mut self) -> Result<bool, rollingops_guest::Error> {
            Ok(true)
        }
        fn relation_ids(&mut self, _: &str) -> Result<Vec<u32>, rollingops_guest::Error> {
            Ok(vec![1])
        }
        fn relation_units(&mut self, _: u32) -> Result<Vec<String>, rollingops_guest::Error> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .1
                .keys()
                .filter(|u| *u != "app/0")
                .cloned()
                .collect())
        }
        fn relation_get(
            &mut self,
            _: u32,
            owner: NativeOwner<'_>,
        ) -> Result<rollingops_guest::wire::Bag, rollingops_guest::Error> {
            let bags = self.0.lock().unwrap();
            Ok(match owner {
                NativeOwner::App => bags.0.clone(),
                NativeOwner::Unit(unit) => bags.1.get(unit).cloned().unwrap_or_default(),
            })
        }
        fn relation_set(
            &mut self,
            _: u32,
            _: bool,
            _: &[(String, String)],
        ) -> Result<(), rollingops_guest::Error> {
            Ok(())
        }
        fn log(&mut self, _: rollingops_guest::LogLevel, _: &str) {}
        fn dispatch(&mut self, _: &str) -> Result<(), rollingops_guest::Error> {
            Ok(())
        }
        fn now(&mut self) -> rollingops_guest::Timestamp {
            rollingops_guest::Timestamp::from_micros(sim::EPOCH_MICROS + 3_600_000_000)
        }
        fn run_callback(&mut self, _: &str, _: &str) -> Outcome {
            Outcome::Returned(None)
        }
        fn sync_backend_acquire(
            &mut self,
            _: &str,
            _: Option<u32>,
        ) -> Result<(), SyncBackendError> {
            Ok(())
        }
        fn sync_backend_release(&mut self, _: &str) -> Result<(), SyncBackendError> {
            Ok(())
        }
    }
    let config = rollingops_guest::Config {
        peer_relation_name: "restart".into(),
        callback_ids: vec!["restart".into()],
        base_dir: "/var/lib/rollingops".into(),
        ..Default::default()
    };
    let mut fx = Native(bags);
    let mut manager = driver::load(config, &mut fx).expect("native manager");
    driver::handle_event(
        &mut manager,
        &mut fx,
        rollingops_guest::Event::PeerRelationChanged,
    )
    .expect("native decision");
}

impl BenchCommand {
    /// Run and print the tables.
    pub fn execute(self) -> anyhow::Result<bool> {
        let runs = if self.quick { 5 } else { 30 };
        let wasm = crate::COMPONENT;
        println!(
            "rollingops bench — component {} bytes, {} runs per median\n",
            wasm.len(),
            runs
        );

        let dir = std::env::temp_dir().join(format!("rollingops-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cold = time(runs.min(10), || {
            Runtime::from_wasm(wasm, None).expect("compile")
        });
        Runtime::from_wasm(wasm, Some(&dir))?;
        let cached = time(runs, || {
            Runtime::from_wasm(wasm, Some(&dir)).expect("cached load")
        });
        let _ = std::fs::remove_dir_all(&dir);
        println!("Loading the component (per process)");
        println!("  {:<44} {:>12}", "cold compile (no cache)", fmt(cold));
        println!(
            "  {:<44} {:>12}   {:.0}× faster",
            "load precompiled .cwasm from base_dir",
            fmt(cached),
            cold.as_secs_f64() / cached.as_secs_f64()
        );

        let runtime = Runtime::new(None)?;
        let sandbox = Sandbox::new("/nonexistent/charm", "/nonexistent/base");
        let small = relation_with(3);
        let host = FrozenLeader {
            bags: small.clone(),
        };
        let instantiate = time(runs * 10, || {
            Session::new(&runtime, Box::new(host.clone()), sandbox.clone(), &config()).unwrap()
        });
        let mut session =
            Session::new(&runtime, Box::new(host.clone()), sandbox.clone(), &config())?;
        session.state()?;
        let state_call = time(runs * 10, || session.state().unwrap());
        println!("\nPer hook (3 units)");
        println!(
            "  {:<44} {:>12}",
            "instantiate + create manager",
            fmt(instantiate)
        );
        println!(
            "  {:<44} {:>12}",
            "state() call on a loaded manager",
            fmt(state_call)
        );

        println!(
            "\nLeader decision (relation-changed, every unit waiting; includes reading all bags)"
        );
        println!(
            "  {:<10} {:>14} {:>14} {:>8}",
            "units", "component", "native core", "ratio"
        );
        for units in [10, 100, 1000] {
            let bags = relation_with(units);
            let host = FrozenLeader { bags: bags.clone() };
            let component = time(runs, || {
                let mut s =
                    Session::new(&runtime, Box::new(host.clone()), sandbox.clone(), &config())
                        .unwrap();
                s.handle_event(&Event::PeerRelationChanged).unwrap();
            });
            let native = time(runs, || native_decision(&bags));
            println!(
                "  {units:<10} {:>14} {:>14} {:>7.1}×",
                fmt(component),
                fmt(native),
                component.as_secs_f64() / native.as_secs_f64()
            );
        }

        println!(
            "\nRolling restart in the simulator (2 s restarts; hook 0.1–0.3 s; delivery 0.05–0.2 s)"
        );
        println!(
            "  {:<7} {:>10} {:>14} {:>16} {:>16} {:>18}",
            "units",
            "hooks/op",
            "ref hooks/op",
            "hooks/hand-off",
            "s per hand-off",
            "ref s per hand-off"
        );
        for units in [3, 10, 100] {
            let mut scenario = Scenario::rolling_restart(units, 2.0, 11);
            scenario.record_timeline = false;
            let outcome = sim::simulate(&runtime, scenario);
            let summary = report::summarize(&outcome);
            // Reference model (spec/peer.md §4.5): each hand-off wakes ≈2(N−1) hooks; the
            // leader's own turn adds ≥10 s; a non-leader hand-off takes 2 hooks.
            let n = units as f64;
            let reference_hooks_per_op = 2.0 * (n - 1.0) + 1.0;
            let reference_seconds = (2.0 * 0.4 * (n - 1.0) + (10.0 + 2.0 * 0.4)) / n;
            println!(
                "  {units:<7} {:>10.1} {:>14.1} {:>16.2} {:>16.2} {:>18.2}",
                summary.hooks_per_op,
                reference_hooks_per_op,
                summary.hooks_per_handoff,
                summary.seconds_per_handoff,
                reference_seconds
            );
        }
        println!(
            "\n  ref = the reference's hook model (spec/peer.md §4.5) at the same hook and delivery times."
        );
        Ok(true)
    }
}
