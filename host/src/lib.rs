//! Run the rollingops component.
//!
//! * [`runtime`] — the wasmtime engine, the compiled component (cached under `base_dir`
//!   as a `.cwasm` keyed by the component's hash and the engine), and [`runtime::Session`]:
//!   one hook's manager.
//! * [`host`] — the [`host::Host`] trait an embedder implements (identity, relation data,
//!   logs, dispatch, callbacks); the component sees it through the WIT imports.
//! * [`sandbox`] — what the host library enforces itself: `exec` only of
//!   `<charm_dir>/usr/bin/etcdctl`, files only under `base_dir`.
//! * [`juju`] — the Juju hook tools 1:1 and [`juju::JujuHost`], the host of a real unit.
//! * [`charm`] — the Rust charm API: [`charm::RollingOpsManager`] with closures as
//!   callbacks, hook routing and a sync-lock guard.
//! * [`sim`] — N units in a deterministic in-memory Juju model running the real component.
//!
//! The host decides nothing: every decision is the component's.

pub mod bindings;
pub mod cache;
pub mod charm;
pub mod commands;
pub mod host;
pub mod juju;
pub mod runtime;
pub mod sandbox;
pub mod sim;
pub mod testing;
pub mod worker_process;

pub use bindings::juju::rollingops::charm::SyncBackendError;
pub use bindings::juju::rollingops::types::{
    BagOwner, CallbackOutcome, Config, Control, Error as WitError, Event, ExecOutput, LogLevel,
    OperationResult, Policy, ProcessingBackend, RequestOptions, RollRequest, State, Status,
};
pub use charm::RollingOpsManager;
pub use host::Host;
pub use runtime::{Error, Runtime, Session};

/// The component this crate was built with.
pub const COMPONENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rollingops.wasm"));
