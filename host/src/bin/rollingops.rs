//! The `rollingops` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rollingops::commands::bench::BenchCommand;
use rollingops::commands::bridge::BridgeCommand;
use rollingops::commands::control::ControlCommand;
use rollingops::commands::simulate::SimulateCommand;
use rollingops::commands::status::StatusCommand;
use rollingops::commands::worker::WorkerCommand;

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
    /// Show who holds the lock and every unit's queue (inside a unit's hook context).
    Status(StatusCommand),
    /// Pause, resume, force-release or cancel (inside a unit's hook context).
    Control(ControlCommand),
    /// Run the worker loop (etcd mode), usually detached.
    Worker(WorkerCommand),
    /// Serve the component as line-delimited JSON on stdin/stdout (host/BRIDGE.md).
    Bridge(BridgeCommand),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Simulate(command) => command.execute(),
        Command::Bench(command) => command.execute(),
        Command::Status(command) => command.execute(),
        Command::Control(command) => command.execute(),
        Command::Worker(command) => command.execute(),
        Command::Bridge(command) => command.execute(),
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
