//! The rollingops logic, sans IO.
//!
//! No I/O, no clock, no randomness: every input is a [`manager::HookContext`], an
//! [`manager::Event`] or a reply, and every effect is a [`manager::Command`]. The same
//! code runs natively in tests and as `rollingops.wasm` behind the WIT contract
//! (`wit/rollingops.wit`); [`driver`] connects the two through the [`driver::Effects`]
//! trait, and `component.rs` (wasm32 only) implements that trait with the WIT imports.
//!
//! Where things are:
//! * [`scheduler`] — who gets the lock next and when a grant ends (pure functions);
//! * [`queue`], [`op`] — per-unit queues, de-duplication, retry accounting;
//! * [`wire`], [`timestamp`] — databag encodings, byte-compatible with the reference;
//! * [`manager`] — one hook's decisions; [`driver`] — runs them against effects;
//! * [`etcd`] — etcd mode's identities, keys, transaction bodies and output parsing.
#![warn(missing_docs, unreachable_pub)]

pub mod driver;
pub mod error;
pub mod etcd;
pub mod features;
pub mod manager;
pub mod op;
pub mod queue;
pub mod scheduler;
pub mod timestamp;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod component;

pub use error::Error;
pub use manager::{
    CallbackOutcome, Command, Config, Event, HookContext, LogLevel, Manager, State, Status,
};
pub use op::{Operation, OperationResult};
pub use timestamp::Timestamp;
