//! The WIT glue (wasm32 only): implements [`Effects`] with the component's imports and
//! the exported `manager` resource with the driver.

use std::cell::RefCell;

use crate::driver::{self, BagOwner, Effects};
use crate::error::Error;
use crate::etcd::worker::Output;
use crate::manager::{
    CallbackOutcome, ClientIdentity, Config, Event, LogLevel, Manager, Status, SyncBackendError,
};
use crate::manager::{Control, PolicyUpdate, RequestOptions, RollRequest};
use crate::timestamp::Timestamp;
use crate::wire::{Backend, Bag};

wit_bindgen::generate!({
    path: "../wit",
    world: "rollingops",
});

use exports::juju::rollingops::api::{Guest, GuestManager, Manager as ManagerHandle};
use juju::rollingops::types as wit;
use juju::rollingops::{charm, clock, crypto, files, juju as hook, process};

struct Component;

export!(Component);

impl Guest for Component {
    type Manager = ManagerResource;
}

/// One hook's manager. The snapshot is read on first use, so constructing the manager in
/// every hook (as charms do in `__init__`) costs no hook-tool calls.
struct ManagerResource {
    config: Config,
    loaded: RefCell<Option<Manager>>,
    /// The etcd sync lock this manager holds, between `acquire-sync-lock` and its release.
    sync_held: RefCell<Option<driver::SyncHeld>>,
}

impl ManagerResource {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Manager, &mut Imports) -> Result<T, Error>,
    ) -> Result<T, wit::Error> {
        self.with_event(None, f)
    }

    /// [`Self::with`], loading the snapshot for `event` when this is the manager's first use.
    fn with_event<T>(
        &self,
        event: Option<&Event>,
        f: impl FnOnce(&mut Manager, &mut Imports) -> Result<T, Error>,
    ) -> Result<T, wit::Error> {
        let mut fx = Imports;
        let mut slot = self.loaded.borrow_mut();
        if slot.is_none() {
            let manager = driver::load_for(self.config.clone(), &mut fx, event).map_err(to_wit)?;
            *slot = Some(manager);
        }
        f(slot.as_mut().expect("just loaded"), &mut fx).map_err(to_wit)
    }
}

impl GuestManager for ManagerResource {
    fn create(config: wit::Config) -> Result<ManagerHandle, wit::Error> {
        let config = Config {
            peer_relation_name: config.peer_relation_name,
            etcd_relation_name: config.etcd_relation_name,
            cluster_id: config.cluster_id,
            base_dir: config.base_dir,
            callback_ids: config.callback_ids,
            sync_lock_ids: config.sync_lock_ids,
        };
        config.validate().map_err(to_wit)?;
        Ok(ManagerHandle::new(ManagerResource {
            config,
            loaded: RefCell::new(None),
            sync_held: RefCell::new(None),
        }))
    }

    fn request_async_lock(
        &self,
        callback_id: String,
        kwargs_json: String,
        max_retry: Option<i64>,
    ) -> Result<(), wit::Error> {
        self.with(|m, fx| driver::request_async_lock(m, fx, &callback_id, &kwargs_json, max_retry))
    }

    fn request_lock(
        &self,
        callback_id: String,
        kwargs_json: String,
        options: wit::RequestOptions,
    ) -> Result<(), wit::Error> {
        let options = RequestOptions {
            max_retry: options.max_retry,
            health_check: options.health_check,
            health_timeout: options.health_timeout_seconds,
            generation_kwarg: options.generation_kwarg,
        };
        self.with(|m, fx| {
            driver::call(m, fx, |m| {
                m.request_lock(&callback_id, &kwargs_json, options)
            })
        })
    }

    fn set_policy(&self, policy: wit::Policy) -> Result<(), wit::Error> {
        let update = PolicyUpdate {
            max_concurrent: policy.max_concurrent,
            grant_timeout: policy.grant_timeout_seconds,
            rank_ordering: policy.rank_ordering,
            halt_on_health_failure: policy.halt_on_health_failure,
        };
        self.with(|m, fx| driver::call(m, fx, |m| m.set_policy(update)))
    }

    fn set_rank(&self, rank: i64) -> Result<(), wit::Error> {
        self.with(|m, fx| driver::call(m, fx, |m| m.set_rank(rank)))
    }

    fn control(&self, action: wit::Control) -> Result<u32, wit::Error> {
        let control = match action {
            wit::Control::Pause(reason) => Control::Pause(reason),
            wit::Control::Resume => Control::Resume,
            wit::Control::Cancel(id) => Control::Cancel(id),
            wit::Control::ForceRelease(unit) => Control::ForceRelease(unit),
        };
        self.with(|m, fx| driver::call(m, fx, |m| m.control(control)))
    }

    fn start_roll(&self, request: wit::RollRequest) -> Result<u64, wit::Error> {
        let request = RollRequest {
            callback_id: request.callback_id,
            kwargs_json: request.kwargs_json,
            health_check: request.health_check,
            health_timeout: request.health_timeout_seconds,
            on_complete: request.on_complete,
        };
        self.with(|m, fx| driver::call(m, fx, |m| m.start_roll(request)))
    }

    fn handle_event(&self, event: wit::Event) -> Result<(), wit::Error> {
        let event = match event {
            wit::Event::PeerRelationChanged => Event::PeerRelationChanged,
            wit::Event::PeerRelationDeparted(unit) => Event::PeerRelationDeparted(unit),
            wit::Event::LeaderElected => Event::LeaderElected,
            wit::Event::UpdateStatus => Event::UpdateStatus,
            wit::Event::LockGranted => Event::LockGranted,
            wit::Event::EtcdFailed => Event::EtcdFailed,
            wit::Event::EtcdRelationCreated => Event::EtcdRelationCreated,
            wit::Event::EtcdRelationChanged => Event::EtcdRelationChanged,
            wit::Event::EtcdRelationBroken => Event::EtcdRelationBroken,
            wit::Event::SecretChanged(label) => Event::SecretChanged(label),
        };
        let first_use = event.clone();
        self.with_event(Some(&first_use), |m, fx| driver::handle_event(m, fx, event))
    }

    fn state(&self) -> Result<wit::State, wit::Error> {
        let state = self.with(driver::state)?;
        Ok(wit::State {
            status: match state.status {
                Status::NotReady => wit::Status::NotReady,
                Status::Waiting => wit::Status::Waiting,
                Status::Granted => wit::Status::Granted,
                Status::Idle => wit::Status::Idle,
            },
            processing_backend: match state.processing_backend {
                Backend::Peer => wit::ProcessingBackend::Peer,
                Backend::Etcd => wit::ProcessingBackend::Etcd,
            },
        })
    }

    fn is_waiting(
        &self,
        unit_name: Option<String>,
        callback_id: Option<String>,
    ) -> Result<bool, wit::Error> {
        self.with(|m, fx| driver::is_waiting(m, fx, unit_name.as_deref(), callback_id.as_deref()))
    }

    fn acquire_sync_lock(
        &self,
        backend_id: String,
        timeout_seconds: Option<u32>,
    ) -> Result<(), wit::Error> {
        // Twice through etcd would wait for itself (the same lock key); through the charm's
        // backends, nesting is the backends' business, as in the reference.
        if self.sync_held.borrow().is_some() {
            return Err(wit::Error::SyncLock(
                "this manager already holds the etcd sync lock; release it first".into(),
            ));
        }
        let held =
            self.with(|m, fx| driver::acquire_sync_lock(m, fx, &backend_id, timeout_seconds))?;
        if matches!(held, driver::SyncHeld::Etcd(_)) {
            *self.sync_held.borrow_mut() = Some(held);
        }
        Ok(())
    }

    fn release_sync_lock(&self, backend_id: String) -> Result<(), wit::Error> {
        let held = self.sync_held.borrow_mut().take();
        self.with(|m, fx| driver::release_sync_lock(m, fx, &backend_id, held))
    }

    fn run_worker(&self) -> Result<(), wit::Error> {
        driver::run_worker(&self.config, &mut Imports).map_err(to_wit)
    }

    fn describe(&self) -> Result<String, wit::Error> {
        self.with(driver::describe)
    }
}

struct Imports;

impl Effects for Imports {
    fn unit_name(&mut self) -> String {
        hook::unit_name()
    }

    fn is_leader(&mut self) -> Result<bool, Error> {
        hook::is_leader().map_err(from_wit)
    }

    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, Error> {
        hook::relation_ids(endpoint).map_err(from_wit)
    }

    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, Error> {
        hook::relation_units(relation_id).map_err(from_wit)
    }

    fn relation_get(&mut self, relation_id: u32, owner: BagOwner<'_>) -> Result<Bag, Error> {
        let owner = match owner {
            BagOwner::App => wit::BagOwner::App,
            BagOwner::Unit(unit) => wit::BagOwner::Unit(unit.to_string()),
        };
        Ok(hook::relation_get(relation_id, &owner)
            .map_err(from_wit)?
            .into_iter()
            .collect())
    }

    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), Error> {
        hook::relation_set(relation_id, app, pairs).map_err(from_wit)
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => wit::LogLevel::Debug,
            LogLevel::Info => wit::LogLevel::Info,
            LogLevel::Warning => wit::LogLevel::Warning,
            LogLevel::Error => wit::LogLevel::Error,
        };
        hook::log(level, message);
    }

    fn dispatch(&mut self, event: &str) -> Result<(), Error> {
        hook::dispatch(event).map_err(from_wit)
    }

    fn dispatch_after(&mut self, event: &str, delay_ms: u32) -> Result<(), Error> {
        hook::dispatch_after(event, delay_ms).map_err(from_wit)
    }

    fn now(&mut self) -> Timestamp {
        Timestamp::from_micros(clock::now_micros())
    }

    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        match charm::run_callback(id, kwargs_json) {
            wit::CallbackOutcome::Returned(value) => CallbackOutcome::Returned(value),
            wit::CallbackOutcome::Raised(description) => CallbackOutcome::Raised(description),
            wit::CallbackOutcome::Missing => CallbackOutcome::Missing,
        }
    }

    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError> {
        charm::sync_backend_acquire(id, timeout_seconds).map_err(sync_error)
    }

    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError> {
        charm::sync_backend_release(id).map_err(sync_error)
    }

    fn model_uuid(&mut self) -> String {
        hook::model_uuid()
    }

    fn run_etcdctl(
        &mut self,
        args: &[String],
        env: &[(String, String)],
        stdin: Option<&str>,
        timeout_ms: u32,
    ) -> Result<Output, Error> {
        let out = process::run_etcdctl(args, env, stdin, timeout_ms).map_err(from_wit)?;
        Ok(Output {
            code: out.code,
            stdout: out.stdout,
            stderr: out.stderr,
            timed_out: out.timed_out,
        })
    }

    fn watch_etcdctl(
        &mut self,
        args: &[String],
        env: &[(String, String)],
        timeout_ms: u32,
    ) -> Result<Output, Error> {
        let out = process::watch_etcdctl(args, env, timeout_ms).map_err(from_wit)?;
        Ok(Output {
            code: out.code,
            stdout: out.stdout,
            stderr: out.stderr,
            timed_out: out.timed_out,
        })
    }

    fn start_etcdctl(&mut self, args: &[String], env: &[(String, String)]) -> Result<u32, Error> {
        process::start_etcdctl(args, env).map_err(from_wit)
    }

    fn finish_etcdctl(
        &mut self,
        handle: u32,
        stdin: Option<&str>,
        timeout_ms: u32,
    ) -> Result<Output, Error> {
        let out = process::finish_etcdctl(handle, stdin, timeout_ms).map_err(from_wit)?;
        Ok(Output {
            code: out.code,
            stdout: out.stdout,
            stderr: out.stderr,
            timed_out: out.timed_out,
        })
    }

    fn read_etcdctl_line(&mut self, handle: u32, timeout_ms: u32) -> Result<Option<String>, Error> {
        process::read_etcdctl_line(handle, timeout_ms).map_err(from_wit)
    }

    fn stop_etcdctl(&mut self, handle: u32) {
        process::stop_etcdctl(handle)
    }

    fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        let found = files::read(path).map_err(from_wit)?;
        Ok(found.exists.then_some(found.data))
    }

    fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<(), Error> {
        files::write(path, data, mode).map_err(from_wit)
    }

    fn remove_file(&mut self, path: &str) -> Result<(), Error> {
        files::remove(path).map_err(from_wit)
    }

    fn start_worker(&mut self) -> Result<(), Error> {
        process::start_worker().map_err(from_wit)
    }

    fn sleep_ms(&mut self, ms: u64) {
        clock::sleep_ms(ms)
    }

    fn relation_get_remote_app(&mut self, relation_id: u32) -> Result<Bag, Error> {
        Ok(hook::relation_get_remote_app(relation_id)
            .map_err(from_wit)?
            .into_iter()
            .collect())
    }

    fn secret_get(&mut self, label_or_id: &str) -> Result<Option<Bag>, Error> {
        let found = hook::secret_get(label_or_id).map_err(from_wit)?;
        Ok(found.exists.then(|| found.content.into_iter().collect()))
    }

    fn secret_add(&mut self, label: &str, content: &[(String, String)]) -> Result<String, Error> {
        hook::secret_add(label, content).map_err(from_wit)
    }

    fn secret_grant(&mut self, id: &str, relation_id: u32) -> Result<(), Error> {
        hook::secret_grant(id, relation_id).map_err(from_wit)
    }

    fn generate_client_identity(&mut self, common_name: &str) -> Result<ClientIdentity, Error> {
        let identity = crypto::generate_client_identity(common_name).map_err(from_wit)?;
        Ok(ClientIdentity {
            ca_cert: identity.ca_cert,
            client_cert: identity.client_cert,
            client_key: identity.client_key,
        })
    }
}

fn sync_error(error: charm::SyncBackendError) -> SyncBackendError {
    match error {
        charm::SyncBackendError::TimedOut => SyncBackendError::TimedOut,
        charm::SyncBackendError::Failed(description) => SyncBackendError::Failed(description),
        charm::SyncBackendError::Missing => SyncBackendError::Missing,
    }
}

fn to_wit(error: Error) -> wit::Error {
    let message = error.message().to_string();
    match error {
        Error::NoRelation(_) => wit::Error::NoRelation(message),
        Error::FileSystem(_) => wit::Error::FileSystem(message),
        Error::InvalidLockRequest(_) => wit::Error::InvalidLockRequest(message),
        Error::Decoding(_) => wit::Error::Decoding(message),
        Error::InvalidSecretContent(_) => wit::Error::InvalidSecretContent(message),
        Error::LibMissing(_) => wit::Error::LibMissing(message),
        Error::Etcdctl(_) => wit::Error::Etcdctl(message),
        Error::EtcdNotConfigured(_) => wit::Error::EtcdNotConfigured(message),
        Error::SyncLock(_) => wit::Error::SyncLock(message),
        Error::Timeout(_) => wit::Error::Timeout(message),
        Error::InvalidArgument(_) => wit::Error::InvalidArgument(message),
        Error::Host(_) => wit::Error::Host(message),
    }
}

fn from_wit(error: wit::Error) -> Error {
    match error {
        wit::Error::NoRelation(m) => Error::NoRelation(m),
        wit::Error::FileSystem(m) => Error::FileSystem(m),
        wit::Error::InvalidLockRequest(m) => Error::InvalidLockRequest(m),
        wit::Error::Decoding(m) => Error::Decoding(m),
        wit::Error::InvalidSecretContent(m) => Error::InvalidSecretContent(m),
        wit::Error::LibMissing(m) => Error::LibMissing(m),
        wit::Error::Etcdctl(m) => Error::Etcdctl(m),
        wit::Error::EtcdNotConfigured(m) => Error::EtcdNotConfigured(m),
        wit::Error::SyncLock(m) => Error::SyncLock(m),
        wit::Error::Timeout(m) => Error::Timeout(m),
        wit::Error::InvalidArgument(m) => Error::InvalidArgument(m),
        wit::Error::Host(m) => Error::Host(m),
    }
}
