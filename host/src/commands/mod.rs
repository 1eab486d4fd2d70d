//! One module per `rollingops` subcommand.

pub mod bench;
pub mod bridge;
pub mod simulate;
pub mod status;
pub mod worker;
