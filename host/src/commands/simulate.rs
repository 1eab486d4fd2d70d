//! `rollingops simulate`: a rolling restart of a simulated application running the real
//! component, with its timeline and a summary.

use clap::Parser;

use crate::runtime::Runtime;
use crate::sim::{self, Chaos, Scenario, check, report};

const AFTER_HELP: &str = "Examples:
  rollingops simulate                      5 units, one 2 s restart each
  rollingops simulate --units 10 --delay 5
  rollingops simulate --chaos --seed 7     leader change, a departure and killed hooks
  rollingops simulate --random --seed 42   a random property-test scenario, verbose
  rollingops simulate --roll --healthy-after 5
                                           the leader starts an application-wide roll; each
                                           unit holds the lock until its health check passes";

/// Simulate a rolling restart.
#[derive(Debug, Parser)]
#[command(after_help = AFTER_HELP)]
pub struct SimulateCommand {
    /// Number of units.
    #[arg(long, default_value_t = 5)]
    pub units: usize,
    /// Seconds each restart takes.
    #[arg(long, default_value_t = 2.0)]
    pub delay: f64,
    /// Seed for hook timing and faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Inject a leader change, a unit departure and killed hooks.
    #[arg(long)]
    pub chaos: bool,
    /// Run the property test's random scenario for this seed instead.
    #[arg(long)]
    pub random: bool,
    /// Show every hook and the library's warnings.
    #[arg(long)]
    pub verbose: bool,
    /// Instead of one request per unit, the leader starts an application-wide roll.
    #[arg(long)]
    pub roll: bool,
    /// With --roll: a health check passes this many seconds after each unit's restart, and
    /// the lock moves on only then.
    #[arg(long, requires = "roll")]
    pub healthy_after: Option<f64>,
}

impl SimulateCommand {
    /// Run it; returns false when an invariant was violated.
    pub fn execute(self) -> anyhow::Result<bool> {
        let runtime = Runtime::new(None)?;
        let scenario = if self.random {
            Scenario::random(self.seed)
        } else {
            let mut scenario = Scenario::rolling_restart(self.units.max(1), self.delay, self.seed);
            if self.roll {
                scenario.requests.clear();
                scenario.operator = vec![sim::OperatorStep {
                    at: 0.5,
                    unit: None,
                    action: sim::OperatorAction::StartRoll {
                        delay: self.delay,
                        health: self.healthy_after.map(|s| (s, 600)),
                    },
                }];
            }
            if self.chaos {
                scenario.chaos = Chaos {
                    leader_changes: 1,
                    departures: usize::from(self.units > 2),
                    crash_probability: 0.2,
                    relation_set_failure_probability: 0.05,
                    window: self.delay * self.units as f64,
                };
            }
            scenario
        };
        let what = if self.roll {
            "an application-wide roll".to_string()
        } else {
            format!("{} operation(s)", scenario.requests.len())
        };
        println!(
            "Rolling restart: {} units of `{}`, {what}, seed {} — the real rollingops component in each hook.\n",
            scenario.units, scenario.app, scenario.seed
        );
        let outcome = sim::simulate(&runtime, scenario);
        print!(
            "{}",
            report::timeline(&outcome, self.verbose || self.random)
        );
        println!();
        let summary = report::summarize(&outcome);
        print!("{}", report::table(&summary));
        let problems = check::check(&outcome);
        println!();
        if problems.is_empty() {
            println!(
                "Invariants held: at most one unit in a callback at any instant; every operation completed."
            );
            Ok(true)
        } else {
            for problem in &problems {
                println!("VIOLATION: {problem}");
            }
            Ok(false)
        }
    }
}
