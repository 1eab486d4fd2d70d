//! The Rust charm API: `rollingops` in a Rust charm's `dispatch`.
//!
//! Build a [`RollingOpsManager`] in every hook, as Python charms build theirs in
//! `__init__`, with the charm's callbacks as closures; then either request the lock (from
//! an action, a config change…) or hand the current hook to [`RollingOpsManager::handle_hook`],
//! which recognises the hooks the library reacts to and ignores the rest.
//!
//! ```no_run
//! use rollingops::charm::{RollingOpsManager, OperationResult};
//!
//! fn main() -> Result<(), rollingops::charm::Error> {
//!     let mut manager = RollingOpsManager::builder("restart")
//!         .callback("restart", |kwargs| {
//!             // restart the workload here; kwargs is what request_async_lock queued
//!             let _ = kwargs.get("delay");
//!             Ok(OperationResult::Release)
//!         })
//!         .build()?;
//!     match std::env::var("JUJU_DISPATCH_PATH").as_deref() {
//!         Ok("actions/restart") => {
//!             manager.request_async_lock("restart", serde_json::json!({"delay": 2}), None)?
//!         }
//!         _ => {
//!             manager.handle_hook()?;
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! The component under it is loaded from the precompiled `.cwasm` cache under
//! `base_dir` (compiled once per machine), so a hook pays milliseconds for it.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::bindings::juju::rollingops::charm::SyncBackendError;
use crate::bindings::juju::rollingops::types::{
    CallbackOutcome, Config, Error as WitError, LogLevel,
};
use crate::bindings::juju::rollingops::types::{Control, RequestOptions, RollRequest};
pub use crate::bindings::juju::rollingops::types::{
    Event, OperationResult, Policy, ProcessingBackend, State, Status,
};
use crate::cache::CacheOutcome;
use crate::juju::{CharmCode, JujuEnv, JujuHost};
use crate::runtime::{self, Runtime, Session};
use crate::sandbox::Sandbox;
use crate::worker_process::WorkerLaunch;

/// The reference's default runtime directory.
pub const DEFAULT_BASE_DIR: &str = "/var/lib/rollingops";

/// What a callback may fail with; it counts as `retry-release` (the reference treats any
/// exception so).
pub type CallbackError = Box<dyn std::error::Error + Send + Sync>;

/// What a callback returns.
pub type CallbackResult = Result<OperationResult, CallbackError>;

type Callback = Arc<dyn Fn(&Map<String, Value>) -> CallbackResult + Send + Sync>;

/// A health check: whether the workload is ready, given the operation's kwargs.
type Check = Arc<dyn Fn(&Map<String, Value>) -> bool + Send + Sync>;

/// Errors of the charm API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not inside a Juju hook (a `JUJU_*` variable is missing or malformed).
    #[error("not in a Juju hook: {0}")]
    Environment(String),
    /// The library refused or failed, as the reference would raise; [`Error::class`] names
    /// the reference's exception class.
    #[error("{}: {}", runtime::class(.0), runtime::message(.0))]
    Library(WitError),
    /// The component could not be loaded, or trapped (a bug).
    #[error(transparent)]
    Component(runtime::Error),
}

impl Error {
    /// The reference's exception class (`RollingOpsNoRelationError`, …), for library errors.
    pub fn class(&self) -> Option<&'static str> {
        match self {
            Error::Library(e) => Some(runtime::class(e)),
            _ => None,
        }
    }
}

impl From<runtime::Error> for Error {
    fn from(error: runtime::Error) -> Self {
        match error {
            runtime::Error::Library(e) => Error::Library(e),
            other => Error::Component(other),
        }
    }
}

/// How a charm's sync-lock backend failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncLockFailure {
    /// The timeout passed (`TimeoutError`).
    TimedOut,
    /// Anything else.
    Failed(String),
}

/// A charm-supplied synchronous lock (`SyncLockBackend`), used by
/// [`RollingOpsManager::acquire_sync_lock`] when etcd is not available.
pub trait SyncLockBackend: Send {
    /// Block until acquired; `None` waits forever.
    fn acquire(&mut self, timeout: Option<Duration>) -> Result<(), SyncLockFailure>;
    /// Release; only the owner may.
    fn release(&mut self) -> Result<(), SyncLockFailure>;
}

/// The charm's callbacks and sync-lock backends, as the component calls them.
struct Registry {
    callbacks: BTreeMap<String, Callback>,
    checks: BTreeMap<String, Check>,
    sync_locks: BTreeMap<String, Box<dyn SyncLockBackend>>,
}

fn sync_error(failure: SyncLockFailure) -> SyncBackendError {
    match failure {
        SyncLockFailure::TimedOut => SyncBackendError::TimedOut,
        SyncLockFailure::Failed(why) => SyncBackendError::Failed(why),
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into())
}

impl CharmCode for Registry {
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        let kwargs = match serde_json::from_str::<Value>(kwargs_json) {
            Ok(Value::Object(map)) => map,
            Ok(_) | Err(_) => {
                return CallbackOutcome::Raised(format!(
                    "the kwargs of {id:?} are not a JSON object: {kwargs_json}"
                ));
            }
        };
        if let Some(check) = self.checks.get(id).cloned() {
            return match catch_unwind(AssertUnwindSafe(|| check(&kwargs))) {
                Ok(ready) => CallbackOutcome::Returned(Some(ready.to_string())),
                Err(payload) => CallbackOutcome::Raised(format!(
                    "health check panicked: {}",
                    panic_text(&*payload)
                )),
            };
        }
        let Some(callback) = self.callbacks.get(id).cloned() else {
            return CallbackOutcome::Missing;
        };
        // A panicking callback must not unwind through the component; it counts as a
        // raised exception (retry-release), like any Python exception.
        match catch_unwind(AssertUnwindSafe(|| callback(&kwargs))) {
            Ok(Ok(result)) => CallbackOutcome::Returned(Some(wire_result(result).into())),
            Ok(Err(error)) => CallbackOutcome::Raised(error.to_string()),
            Err(payload) => {
                CallbackOutcome::Raised(format!("callback panicked: {}", panic_text(&*payload)))
            }
        }
    }

    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError> {
        let backend = self
            .sync_locks
            .get_mut(id)
            .ok_or(SyncBackendError::Missing)?;
        let timeout = timeout_seconds.map(|s| Duration::from_secs(u64::from(s)));
        match catch_unwind(AssertUnwindSafe(|| backend.acquire(timeout))) {
            Ok(result) => result.map_err(sync_error),
            Err(payload) => Err(SyncBackendError::Failed(format!(
                "acquire panicked: {}",
                panic_text(&*payload)
            ))),
        }
    }

    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError> {
        let backend = self
            .sync_locks
            .get_mut(id)
            .ok_or(SyncBackendError::Missing)?;
        match catch_unwind(AssertUnwindSafe(|| backend.release())) {
            Ok(result) => result.map_err(sync_error),
            Err(payload) => Err(SyncBackendError::Failed(format!(
                "release panicked: {}",
                panic_text(&*payload)
            ))),
        }
    }
}

/// The wire value of an operation result (`release`, `retry-release`, `retry-hold`).
pub fn wire_result(result: OperationResult) -> &'static str {
    match result {
        OperationResult::Release => "release",
        OperationResult::RetryRelease => "retry-release",
        OperationResult::RetryHold => "retry-hold",
    }
}

/// The current hook, as Juju describes it in the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookEnv {
    /// `JUJU_DISPATCH_PATH`: `hooks/<name>` or `actions/<name>`.
    pub dispatch_path: Option<String>,
    /// `JUJU_HOOK_NAME` (older agents without dispatch).
    pub hook_name: Option<String>,
    /// `JUJU_REMOTE_UNIT`.
    pub remote_unit: Option<String>,
    /// `JUJU_DEPARTING_UNIT`.
    pub departing_unit: Option<String>,
    /// `JUJU_SECRET_LABEL`, else `JUJU_SECRET_ID`.
    pub secret: Option<String>,
}

impl HookEnv {
    /// Read it from the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    /// Read it through `var` (a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |key: &str| var(key).filter(|v| !v.is_empty());
        HookEnv {
            dispatch_path: get("JUJU_DISPATCH_PATH"),
            hook_name: get("JUJU_HOOK_NAME"),
            remote_unit: get("JUJU_REMOTE_UNIT"),
            departing_unit: get("JUJU_DEPARTING_UNIT"),
            secret: get("JUJU_SECRET_LABEL").or_else(|| get("JUJU_SECRET_ID")),
        }
    }

    /// The hook's name (`restart-relation-changed`), or `None` in an action.
    pub fn hook(&self) -> Option<&str> {
        match &self.dispatch_path {
            Some(path) => path.strip_prefix("hooks/"),
            None => self.hook_name.as_deref(),
        }
    }

    /// The action's name, in an action.
    pub fn action(&self) -> Option<&str> {
        self.dispatch_path.as_deref()?.strip_prefix("actions/")
    }

    /// The library event this hook is, for a manager on `peer` (and `etcd`), if any.
    pub fn event(&self, peer: &str, etcd: Option<&str>) -> Option<Event> {
        let hook = self.hook()?;
        let relation_hook =
            |endpoint: &str, kind: &str| hook == format!("{endpoint}-relation-{kind}");
        Some(match hook {
            "leader-elected" => Event::LeaderElected,
            "update-status" => Event::UpdateStatus,
            "rollingops_lock_granted" => Event::LockGranted,
            "rollingops_etcd_failed" => Event::EtcdFailed,
            _ if relation_hook(peer, "changed") => Event::PeerRelationChanged,
            _ if relation_hook(peer, "departed") => Event::PeerRelationDeparted(
                self.departing_unit
                    .clone()
                    .or_else(|| self.remote_unit.clone())
                    .unwrap_or_default(),
            ),
            "secret-changed" if etcd.is_some() => {
                Event::SecretChanged(self.secret.clone().unwrap_or_default())
            }
            _ => match etcd {
                Some(etcd) if relation_hook(etcd, "created") => Event::EtcdRelationCreated,
                Some(etcd) if relation_hook(etcd, "changed") => Event::EtcdRelationChanged,
                Some(etcd) if relation_hook(etcd, "broken") => Event::EtcdRelationBroken,
                _ => return None,
            },
        })
    }
}

/// What building the manager cost: where the component came from and how long loading
/// and instantiating it took.
#[derive(Clone, Copy, Debug)]
pub struct Startup {
    /// Whether the precompiled component came from the cache.
    pub cache: CacheOutcome,
    /// Compiling or loading the component.
    pub load: Duration,
    /// Instantiating it and creating the manager.
    pub instantiate: Duration,
}

/// Configures a [`RollingOpsManager`] (`RollingOpsManager(...)`'s arguments).
pub struct Builder {
    peer_relation_name: String,
    etcd_relation_name: Option<String>,
    cluster_id: Option<String>,
    base_dir: PathBuf,
    callbacks: BTreeMap<String, Callback>,
    checks: BTreeMap<String, Check>,
    sync_locks: BTreeMap<String, Box<dyn SyncLockBackend>>,
    worker_program: Option<PathBuf>,
}

impl Builder {
    /// Register a health check under `id`, for [`LockOptions::health_check`] and
    /// [`RollOptions::health_check`]: it receives the operation's kwargs and says whether the
    /// workload is ready; the lock moves on only once it returns `true`. A panic counts as
    /// not ready.
    pub fn health_check(
        mut self,
        id: impl Into<String>,
        check: impl Fn(&Map<String, Value>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.checks.insert(id.into(), Arc::new(check));
        self
    }

    /// Register a callback (`callback_targets[id]`). It receives the operation's kwargs
    /// and returns what the lock does next; an `Err` or a panic counts as retry-release.
    pub fn callback(
        mut self,
        id: impl Into<String>,
        callback: impl Fn(&Map<String, Value>) -> CallbackResult + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.insert(id.into(), Arc::new(callback));
        self
    }

    /// Register a synchronous-lock backend (`sync_lock_targets[id]`).
    pub fn sync_lock(
        mut self,
        id: impl Into<String>,
        backend: impl SyncLockBackend + 'static,
    ) -> Self {
        self.sync_locks.insert(id.into(), Box::new(backend));
        self
    }

    /// The runtime directory (default `/var/lib/rollingops`): the component cache and the
    /// dispatch log live there.
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = dir.into();
        self
    }

    /// The `rollingops` binary that runs this unit's etcd worker (`rollingops worker`,
    /// started detached when the unit has etcd work). Default:
    /// `<charm_dir>/usr/bin/rollingops`, next to the `etcdctl` the charm ships; without it
    /// the unit stays on the peer relation.
    pub fn worker_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker_program = Some(path.into());
        self
    }

    /// The etcd relation and lock scope (etcd mode).
    pub fn etcd(mut self, relation_name: impl Into<String>, cluster_id: impl Into<String>) -> Self {
        self.etcd_relation_name = Some(relation_name.into());
        self.cluster_id = Some(cluster_id.into());
        self
    }

    /// The component's configuration.
    pub fn config(&self) -> Config {
        Config {
            peer_relation_name: self.peer_relation_name.clone(),
            etcd_relation_name: self.etcd_relation_name.clone(),
            cluster_id: self.cluster_id.clone(),
            base_dir: self.base_dir.to_string_lossy().into_owned(),
            callback_ids: self
                .callbacks
                .keys()
                .chain(self.checks.keys())
                .cloned()
                .collect(),
            sync_lock_ids: self.sync_locks.keys().cloned().collect(),
        }
    }

    /// Build the manager for the current hook: identity from the environment, the
    /// component from the cache under `base_dir`.
    pub fn build(self) -> Result<RollingOpsManager, Error> {
        let env = JujuEnv::from_env().map_err(Error::Environment)?;
        let started = Instant::now();
        let runtime = Runtime::new(Some(&self.base_dir))?;
        let load = started.elapsed();
        let cache = runtime.cache_outcome;
        let mut manager = self.build_with(&runtime, env, HookEnv::from_env())?;
        manager.startup.load = load;
        manager.startup.cache = cache;
        Ok(manager)
    }

    /// Build with a given runtime, identity and hook (tests, long-lived processes).
    pub fn build_with(
        self,
        runtime: &Runtime,
        env: JujuEnv,
        hook: HookEnv,
    ) -> Result<RollingOpsManager, Error> {
        let config = self.config();
        let sandbox = Sandbox::new(env.charm_dir.clone(), self.base_dir.clone());
        let registry = Registry {
            callbacks: self.callbacks,
            checks: self.checks,
            sync_locks: self.sync_locks,
        };
        let launch = WorkerLaunch {
            program: (self.worker_program.clone())
                .unwrap_or_else(|| env.charm_dir.join("usr/bin/rollingops")),
            peer_relation: self.peer_relation_name.clone(),
            etcd_relation: self.etcd_relation_name.clone(),
            cluster_id: self.cluster_id.clone(),
        };
        let host =
            JujuHost::new(env, self.base_dir.clone(), Box::new(registry)).with_worker(launch);
        let started = Instant::now();
        let session = Session::new(runtime, Box::new(host), sandbox, &config)?;
        Ok(RollingOpsManager {
            session,
            hook,
            peer_relation_name: self.peer_relation_name,
            etcd_relation_name: self.etcd_relation_name,
            startup: Startup {
                cache: runtime.cache_outcome,
                load: Duration::ZERO,
                instantiate: started.elapsed(),
            },
        })
    }
}

/// Options of [`RollingOpsManager::request_lock`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockOptions {
    /// `None` retries forever, `Some(0)` runs once.
    pub max_retry: Option<u64>,
    /// A health check registered with [`Builder::health_check`].
    pub health_check: Option<String>,
    /// How long to wait for the check (default 300 s), rounded up to whole seconds.
    pub health_timeout: Option<Duration>,
    /// Keyword argument that receives the grant generation.
    pub generation_kwarg: Option<String>,
}

/// Options of [`RollingOpsManager::start_roll`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollOptions {
    /// A health check registered with [`Builder::health_check`].
    pub health_check: Option<String>,
    /// How long to wait for the check on each unit (default 300 s).
    pub health_timeout: Option<Duration>,
    /// A callback the leader runs once every unit has finished (kwargs `{"generation": N}`).
    pub on_complete: Option<String>,
}

fn whole_seconds(duration: Duration) -> u32 {
    let whole = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    u32::try_from(whole).unwrap_or(u32::MAX)
}

/// One hook's rolling-operations manager.
pub struct RollingOpsManager {
    session: Session,
    hook: HookEnv,
    peer_relation_name: String,
    etcd_relation_name: Option<String>,
    startup: Startup,
}

impl RollingOpsManager {
    /// Start configuring a manager on the peer endpoint `peer_relation_name`.
    pub fn builder(peer_relation_name: impl Into<String>) -> Builder {
        Builder {
            peer_relation_name: peer_relation_name.into(),
            etcd_relation_name: None,
            cluster_id: None,
            base_dir: PathBuf::from(DEFAULT_BASE_DIR),
            callbacks: BTreeMap::new(),
            checks: BTreeMap::new(),
            sync_locks: BTreeMap::new(),
            worker_program: None,
        }
    }

    /// Queue `callback_id` with `kwargs` (a JSON object) for this unit and schedule
    /// (`request_async_lock`). `max_retry`: `None` retries forever, `Some(0)` runs once.
    pub fn request_async_lock(
        &mut self,
        callback_id: &str,
        kwargs: Value,
        max_retry: Option<u64>,
    ) -> Result<(), Error> {
        let max_retry = max_retry.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        Ok(self
            .session
            .request_async_lock(callback_id, &kwargs.to_string(), max_retry)?)
    }

    /// Queue `callback_id` with options: a health check that must pass before the lock
    /// moves on, and a keyword argument receiving the grant generation (for fencing).
    pub fn request_lock(
        &mut self,
        callback_id: &str,
        kwargs: Value,
        options: &LockOptions,
    ) -> Result<(), Error> {
        let options = RequestOptions {
            max_retry: options
                .max_retry
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            health_check: options.health_check.clone(),
            health_timeout_seconds: options.health_timeout.map(whole_seconds),
            generation_kwarg: options.generation_kwarg.clone(),
        };
        Ok(self
            .session
            .request_lock(callback_id, &kwargs.to_string(), &options)?)
    }

    /// Leader only: the scheduling policy (each part in force once every unit supports it).
    pub fn set_policy(&mut self, policy: &Policy) -> Result<(), Error> {
        Ok(self.session.set_policy(policy)?)
    }

    /// This unit's rank: with rank ordering, lower ranks go first ("primary last": give
    /// the primary a high rank).
    pub fn set_rank(&mut self, rank: i64) -> Result<(), Error> {
        Ok(self.session.set_rank(rank)?)
    }

    /// Leader only: stop granting the lock (holders finish). Returns whether it changed.
    pub fn pause(&mut self, reason: &str) -> Result<bool, Error> {
        Ok(self.session.control(&Control::Pause(reason.into()))? > 0)
    }

    /// Leader only: grant again. Returns whether it was paused.
    pub fn resume(&mut self) -> Result<bool, Error> {
        Ok(self.session.control(&Control::Resume)? > 0)
    }

    /// Drop this unit's queued operations that have not started (only `callback_id`'s,
    /// when given); returns how many.
    pub fn cancel(&mut self, callback_id: Option<&str>) -> Result<u32, Error> {
        Ok(self
            .session
            .control(&Control::Cancel(callback_id.map(str::to_string)))?)
    }

    /// Leader only: end `unit`'s grant (every grant when `None`); returns how many. The
    /// holder's generation becomes stale.
    pub fn force_release(&mut self, unit: Option<&str>) -> Result<u32, Error> {
        Ok(self
            .session
            .control(&Control::ForceRelease(unit.map(str::to_string)))?)
    }

    /// Leader only: roll the whole application — every unit runs `callback_id` once, one
    /// at a time (or per the policy). Returns the roll's generation.
    pub fn start_roll(
        &mut self,
        callback_id: &str,
        kwargs: Value,
        options: &RollOptions,
    ) -> Result<u64, Error> {
        let request = RollRequest {
            callback_id: callback_id.to_string(),
            kwargs_json: kwargs.to_string(),
            health_check: options.health_check.clone(),
            health_timeout_seconds: options.health_timeout.map(whole_seconds),
            on_complete: options.on_complete.clone(),
        };
        Ok(self.session.start_roll(&request)?)
    }

    /// The library event the current hook is, if it is one.
    pub fn current_event(&self) -> Option<Event> {
        self.hook
            .event(&self.peer_relation_name, self.etcd_relation_name.as_deref())
    }

    /// Handle the current hook if the library reacts to it (peer relation-changed and
    /// -departed, leader-elected, update-status, `rollingops_lock_granted`,
    /// `rollingops_etcd_failed`, etcd events in etcd mode). Returns the event handled.
    pub fn handle_hook(&mut self) -> Result<Option<Event>, Error> {
        let Some(event) = self.current_event() else {
            return Ok(None);
        };
        self.handle_event(&event)?;
        Ok(Some(event))
    }

    /// Handle an event.
    pub fn handle_event(&mut self, event: &Event) -> Result<(), Error> {
        Ok(self.session.handle_event(event)?)
    }

    /// This unit's `RollingOpsState`.
    pub fn state(&mut self) -> Result<State, Error> {
        Ok(self.session.state()?)
    }

    /// Whether `unit` (default: this unit) has queued operations.
    pub fn is_waiting(&mut self, unit: Option<&str>) -> Result<bool, Error> {
        Ok(self.session.is_waiting(unit, None)?)
    }

    /// Whether `unit` (default: this unit) has a queued operation of `callback_id`.
    pub fn is_waiting_callback(
        &mut self,
        callback_id: &str,
        unit: Option<&str>,
    ) -> Result<bool, Error> {
        Ok(self.session.is_waiting(unit, Some(callback_id))?)
    }

    /// Take the synchronous lock through backend `backend_id`; it is released when the
    /// guard drops (or explicitly with [`SyncLock::release`], which reports errors).
    /// `timeout`: `None` waits forever; it is rounded up to whole seconds.
    pub fn acquire_sync_lock(
        &mut self,
        backend_id: &str,
        timeout: Option<Duration>,
    ) -> Result<SyncLock<'_>, Error> {
        let seconds = timeout.map(whole_seconds);
        self.session.acquire_sync_lock(backend_id, seconds)?;
        Ok(SyncLock {
            manager: self,
            backend_id: backend_id.to_string(),
            held: true,
        })
    }

    /// The lock and every unit's queue, as the component describes them (JSON).
    pub fn describe(&mut self) -> Result<Value, Error> {
        let text = self.session.describe()?;
        serde_json::from_str(&text).map_err(|e| {
            Error::Library(WitError::Decoding(format!(
                "describe() returned invalid JSON: {e}"
            )))
        })
    }

    /// The long-lived worker loop (etcd mode); in peer mode it fails with
    /// `RollingOpsEtcdNotConfiguredError`.
    pub fn run_worker(&mut self) -> Result<(), Error> {
        Ok(self.session.run_worker()?)
    }

    /// What building this manager cost.
    pub fn startup(&self) -> Startup {
        self.startup
    }

    /// Write a line to the Juju log, as the library does.
    pub fn log(&mut self, level: LogLevel, message: &str) {
        self.session.host().log(level, message);
    }

    /// The underlying session (advanced use).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }
}

/// The synchronous lock, held until dropped.
pub struct SyncLock<'m> {
    manager: &'m mut RollingOpsManager,
    backend_id: String,
    held: bool,
}

impl SyncLock<'_> {
    /// The backend holding the lock.
    pub fn backend_id(&self) -> &str {
        &self.backend_id
    }

    /// Release now, reporting a failure (`RollingOpsSyncLockError`).
    pub fn release(mut self) -> Result<(), Error> {
        self.held = false;
        Ok(self.manager.session.release_sync_lock(&self.backend_id)?)
    }
}

impl Drop for SyncLock<'_> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        if let Err(e) = self.manager.session.release_sync_lock(&self.backend_id) {
            let message = format!("Releasing the sync lock {} failed: {e}", self.backend_id);
            self.manager.log(LogLevel::Error, &message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(vars: &[(&str, &str)]) -> HookEnv {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HookEnv::from_vars(|k| vars.get(k).cloned())
    }

    #[test]
    fn hooks_route_to_library_events() {
        type Case<'a> = (Vec<(&'a str, &'a str)>, Option<Event>);
        let cases: Vec<Case> = vec![
            (
                vec![("JUJU_DISPATCH_PATH", "hooks/restart-relation-changed")],
                Some(Event::PeerRelationChanged),
            ),
            (
                vec![
                    ("JUJU_DISPATCH_PATH", "hooks/restart-relation-departed"),
                    ("JUJU_REMOTE_UNIT", "app/1"),
                    ("JUJU_DEPARTING_UNIT", "app/2"),
                ],
                Some(Event::PeerRelationDeparted("app/2".into())),
            ),
            (
                vec![
                    ("JUJU_DISPATCH_PATH", "hooks/restart-relation-departed"),
                    ("JUJU_REMOTE_UNIT", "app/1"),
                ],
                Some(Event::PeerRelationDeparted("app/1".into())),
            ),
            (
                vec![("JUJU_DISPATCH_PATH", "hooks/leader-elected")],
                Some(Event::LeaderElected),
            ),
            (
                vec![("JUJU_HOOK_NAME", "update-status")],
                Some(Event::UpdateStatus),
            ),
            (
                vec![("JUJU_DISPATCH_PATH", "hooks/rollingops_lock_granted")],
                Some(Event::LockGranted),
            ),
            (
                vec![("JUJU_DISPATCH_PATH", "hooks/rollingops_etcd_failed")],
                Some(Event::EtcdFailed),
            ),
            (
                vec![("JUJU_DISPATCH_PATH", "hooks/other-relation-changed")],
                None,
            ),
            (
                vec![("JUJU_DISPATCH_PATH", "hooks/etcd-relation-created")],
                None,
            ),
            (vec![("JUJU_DISPATCH_PATH", "hooks/secret-changed")], None),
            (vec![("JUJU_DISPATCH_PATH", "actions/restart")], None),
            (vec![], None),
        ];
        for (vars, expected) in cases {
            assert_eq!(
                format!("{:?}", hook(&vars).event("restart", None)),
                format!("{expected:?}"),
                "{vars:?}"
            );
        }
        let etcd = |path: &str| {
            let event = hook(&[("JUJU_DISPATCH_PATH", path), ("JUJU_SECRET_LABEL", "certs")])
                .event("restart", Some("etcd"));
            format!("{event:?}")
        };
        assert_eq!(
            etcd("hooks/etcd-relation-created"),
            format!("{:?}", Some(Event::EtcdRelationCreated))
        );
        assert_eq!(
            etcd("hooks/etcd-relation-changed"),
            format!("{:?}", Some(Event::EtcdRelationChanged))
        );
        assert_eq!(
            etcd("hooks/etcd-relation-broken"),
            format!("{:?}", Some(Event::EtcdRelationBroken))
        );
        assert_eq!(
            etcd("hooks/secret-changed"),
            format!("{:?}", Some(Event::SecretChanged("certs".into())))
        );
        assert_eq!(
            hook(&[("JUJU_DISPATCH_PATH", "actions/restart")]).action(),
            Some("restart")
        );
    }

    #[test]
    fn callbacks_report_results_errors_and_panics() {
        let mut registry = Registry {
            callbacks: BTreeMap::new(),
            checks: BTreeMap::new(),
            sync_locks: BTreeMap::new(),
        };
        registry.callbacks.insert(
            "hold".into(),
            Arc::new(|kwargs: &Map<String, Value>| {
                assert_eq!(kwargs["n"], 1);
                Ok(OperationResult::RetryHold)
            }),
        );
        registry.callbacks.insert(
            "fail".into(),
            Arc::new(|_: &Map<String, Value>| Err("disk full".into())),
        );
        registry.callbacks.insert(
            "panic".into(),
            Arc::new(|_: &Map<String, Value>| panic!("boom")),
        );
        let mut run = |id: &str, kwargs: &str| format!("{:?}", registry.run_callback(id, kwargs));
        assert_eq!(
            run("hold", r#"{"n":1}"#),
            r#"CallbackOutcome::Returned(Some("retry-hold"))"#
        );
        assert_eq!(run("fail", "{}"), r#"CallbackOutcome::Raised("disk full")"#);
        assert_eq!(run("nope", "{}"), "CallbackOutcome::Missing");
        assert!(matches!(
            registry.run_callback("panic", "{}"),
            CallbackOutcome::Raised(m) if m.contains("boom")
        ));
        assert!(matches!(
            registry.sync_backend_acquire("nope", None),
            Err(SyncBackendError::Missing)
        ));
    }
}
