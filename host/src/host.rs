//! The embedder's side of the WIT imports.
//!
//! Implement [`Host`] over real hook tools, an `ops` model, or a simulator; the
//! [`crate::runtime::Session`] adds the sandboxed `process` and `files` imports itself.

use crate::bindings::juju::rollingops::charm::SyncBackendError;
use crate::bindings::juju::rollingops::crypto::ClientIdentity;
use crate::bindings::juju::rollingops::types::{BagOwner, CallbackOutcome, Error, LogLevel};

pub mod identity;

/// Identity, relation data, logs, wake-ups and the charm's callbacks.
pub trait Host: Send {
    /// This unit's name (`app/0`).
    fn unit_name(&mut self) -> String;
    /// The model's UUID.
    fn model_uuid(&mut self) -> String;
    /// Leadership (`is-leader`).
    fn is_leader(&mut self) -> Result<bool, Error>;
    /// Relation ids on an endpoint (`relation-ids`).
    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, Error>;
    /// Remote units on a relation (`relation-list`).
    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, Error>;
    /// A databag (`relation-get`).
    fn relation_get(
        &mut self,
        relation_id: u32,
        owner: &BagOwner,
    ) -> Result<Vec<(String, String)>, Error>;
    /// Write keys; an empty value deletes (`relation-set`).
    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), Error>;
    /// An application secret by label or id (`secret-get`).
    fn secret_get(&mut self, label_or_id: &str) -> Result<Option<Vec<(String, String)>>, Error> {
        let _ = label_or_id;
        Err(Error::Host("secrets are not available in this host".into()))
    }
    /// Create an application secret (`secret-add`).
    fn secret_add(&mut self, label: &str, content: &[(String, String)]) -> Result<String, Error> {
        let _ = (label, content);
        Err(Error::Host("secrets are not available in this host".into()))
    }
    /// Grant an application secret to a relation (`secret-grant <id> -r <relation>`).
    fn secret_grant(&mut self, id: &str, relation_id: u32) -> Result<(), Error> {
        let _ = (id, relation_id);
        Err(Error::Host("secrets are not available in this host".into()))
    }
    /// The remote application's bag on a relation (`relation-get --app - <remote-app>`);
    /// `relation_get` with [`BagOwner::App`] reads this application's own bag.
    fn relation_get_remote_app(
        &mut self,
        relation_id: u32,
    ) -> Result<Vec<(String, String)>, Error> {
        let _ = relation_id;
        Err(Error::Host(
            "this host cannot read a remote application's bag".into(),
        ))
    }
    /// The etcd client identity for `common_name` (spec/etcd.md §3.2). By default made
    /// here with RustCrypto ([`identity::generate`]); override to supply keys otherwise.
    fn generate_client_identity(&mut self, common_name: &str) -> Result<ClientIdentity, Error> {
        let made = identity::generate(common_name).map_err(Error::Host)?;
        Ok(ClientIdentity {
            ca_cert: made.ca_cert,
            client_cert: made.client_cert,
            client_key: made.client_key,
        })
    }
    /// Start this unit's etcd worker in a detached process unless one runs (the component
    /// decides when; the host only carries it out).
    fn start_worker(&mut self) -> Result<(), Error> {
        Err(Error::EtcdNotConfigured(
            "this host cannot start the etcd worker".into(),
        ))
    }
    /// A log line (`juju-log`).
    fn log(&mut self, level: LogLevel, message: &str);
    /// Run a hook on this unit after the current one (`juju-exec`), without waiting.
    fn dispatch(&mut self, event: &str) -> Result<(), Error>;
    /// Run a hook on this unit no sooner than `delay_ms` from now, without waiting.
    fn dispatch_after(&mut self, event: &str, delay_ms: u32) -> Result<(), Error> {
        let _ = (event, delay_ms);
        Err(Error::Host(
            "this host cannot dispatch a hook after a delay".into(),
        ))
    }
    /// Microseconds since the Unix epoch.
    fn now_micros(&mut self) -> i64;
    /// Block (etcd worker and sync lock only).
    fn sleep_ms(&mut self, ms: u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    /// Run a charm callback.
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome;
    /// Acquire a charm sync-lock backend.
    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError> {
        let _ = (id, timeout_seconds);
        Err(SyncBackendError::Missing)
    }
    /// Release a charm sync-lock backend.
    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError> {
        let _ = id;
        Err(SyncBackendError::Missing)
    }
}
