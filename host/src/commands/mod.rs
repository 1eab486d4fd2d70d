//! One module per `rollingops` subcommand.

pub mod bench;
pub mod bridge;
pub mod control;
pub mod simulate;
pub mod status;
pub mod worker;
