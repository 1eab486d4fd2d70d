//! The `rollingops` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rollingops::commands::bench::BenchCommand;
use rollingops::commands::simulate::SimulateCommand;

/// rollingops: the rolling-operations lock for Juju charms.
#[derive(Debug, Parser)]
#[command(name = "rollingops", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a rolling restart of a multi-unit application (the demo).
    Simulate(SimulateCommand),
    /// Measure the component and the protocol, with baselines.
    Bench(BenchCommand),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Simulate(command) => command.execute(),
        Command::Bench(command) => command.execute(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            if error.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("rollingops: {error:#}");
            ExitCode::from(2)
        }
    }
}
