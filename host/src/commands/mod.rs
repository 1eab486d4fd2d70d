//! One module per `rollingops` subcommand.

pub mod bench;
pub mod simulate;
