//! The wasmtime side: one [`Runtime`] per process (engine, linker, compiled component),
//! one [`Session`] per hook (a store, an instance and the component's `manager`).

use std::path::Path;

use wasmtime::component::{HasSelf, Linker, ResourceAny, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::Rollingops;
use crate::bindings::juju::rollingops::types::{
    self as wit, BagOwner, CallbackOutcome, Config, Control, Event, ExecOutput, LogLevel, Policy,
    RequestOptions, RollRequest, State,
};
use crate::bindings::juju::rollingops::{charm, clock, crypto, files, juju, process};
use crate::cache::{self, CacheOutcome};
use crate::host::Host;
use crate::sandbox::{Sandbox, StartedEtcdctl};

/// Errors of the host library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The library refused or failed, as the reference would raise.
    #[error("{}: {}", class(.0), message(.0))]
    Library(wit::Error),
    /// The component could not be compiled, loaded or instantiated.
    #[error("loading the rollingops component: {0}")]
    Load(wasmtime::Error),
    /// The component trapped (a bug); the session cannot be used any more.
    #[error("the rollingops component trapped: {0}")]
    Trap(wasmtime::Error),
}

impl Error {
    /// The library error, if this is one.
    pub fn library(&self) -> Option<&wit::Error> {
        match self {
            Error::Library(e) => Some(e),
            _ => None,
        }
    }
}

/// The reference exception class for a WIT error.
pub fn class(error: &wit::Error) -> &'static str {
    match error {
        wit::Error::NoRelation(_) => "RollingOpsNoRelationError",
        wit::Error::FileSystem(_) => "RollingOpsFileSystemError",
        wit::Error::InvalidLockRequest(_) => "RollingOpsInvalidLockRequestError",
        wit::Error::Decoding(_) => "RollingOpsDecodingError",
        wit::Error::InvalidSecretContent(_) => "RollingOpsInvalidSecretContentError",
        wit::Error::LibMissing(_) => "RollingOpsLibMissingError",
        wit::Error::Etcdctl(_) => "RollingOpsEtcdctlError",
        wit::Error::EtcdNotConfigured(_) => "RollingOpsEtcdNotConfiguredError",
        wit::Error::SyncLock(_) => "RollingOpsSyncLockError",
        wit::Error::Timeout(_) => "TimeoutError",
        wit::Error::InvalidArgument(_) => "ValueError",
        wit::Error::Host(_) => "RollingOpsError",
    }
}

/// The WIT case name of an error (`no-relation`, `sync-lock`, …).
pub fn case_name(error: &wit::Error) -> &'static str {
    match error {
        wit::Error::NoRelation(_) => "no-relation",
        wit::Error::FileSystem(_) => "file-system",
        wit::Error::InvalidLockRequest(_) => "invalid-lock-request",
        wit::Error::Decoding(_) => "decoding",
        wit::Error::InvalidSecretContent(_) => "invalid-secret-content",
        wit::Error::LibMissing(_) => "lib-missing",
        wit::Error::Etcdctl(_) => "etcdctl",
        wit::Error::EtcdNotConfigured(_) => "etcd-not-configured",
        wit::Error::SyncLock(_) => "sync-lock",
        wit::Error::Timeout(_) => "timeout",
        wit::Error::InvalidArgument(_) => "invalid-argument",
        wit::Error::Host(_) => "host",
    }
}

/// The message of a WIT error.
pub fn message(error: &wit::Error) -> &str {
    match error {
        wit::Error::NoRelation(m)
        | wit::Error::FileSystem(m)
        | wit::Error::InvalidLockRequest(m)
        | wit::Error::Decoding(m)
        | wit::Error::InvalidSecretContent(m)
        | wit::Error::LibMissing(m)
        | wit::Error::Etcdctl(m)
        | wit::Error::EtcdNotConfigured(m)
        | wit::Error::SyncLock(m)
        | wit::Error::Timeout(m)
        | wit::Error::InvalidArgument(m)
        | wit::Error::Host(m) => m,
    }
}

/// Per-process state: the engine and the compiled component, ready to instantiate.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreData>,
    pre: crate::bindings::RollingopsPre<StoreData>,
    /// Whether the component came from the cache.
    pub cache_outcome: CacheOutcome,
}

impl Runtime {
    /// Compile (or load from `cache_dir`) the component this crate embeds.
    pub fn new(cache_dir: Option<&Path>) -> Result<Self, Error> {
        Self::from_wasm(crate::COMPONENT, cache_dir)
    }

    /// Compile (or load from `cache_dir`) a given component.
    pub fn from_wasm(wasm: &[u8], cache_dir: Option<&Path>) -> Result<Self, Error> {
        let engine = Engine::new(&wasmtime::Config::new()).map_err(Error::Load)?;
        let (component, cache_outcome) =
            cache::load(&engine, wasm, cache_dir).map_err(Error::Load)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(Error::Load)?;
        Rollingops::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |data| data)
            .map_err(Error::Load)?;
        let pre = crate::bindings::RollingopsPre::new(
            linker.instantiate_pre(&component).map_err(Error::Load)?,
        )
        .map_err(Error::Load)?;
        Ok(Runtime {
            engine,
            linker,
            pre,
            cache_outcome,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker (all imports defined).
    pub fn linker(&self) -> &Linker<StoreData> {
        &self.linker
    }
}

/// What a store carries: WASI (empty: no files, env, args or network), the sandbox and
/// the embedder's [`Host`].
pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    sandbox: Sandbox,
    host: Box<dyn Host>,
    /// etcdctl processes the component started (`start-etcdctl`), by handle; dropping the
    /// store kills them.
    started: std::collections::HashMap<u32, StartedEtcdctl>,
    next_handle: u32,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// One hook's manager inside a fresh instance.
pub struct Session {
    store: Store<StoreData>,
    bindings: Rollingops,
    manager: ResourceAny,
}

impl Session {
    /// Instantiate the component and create the manager (`RollingOpsManager(...)`).
    pub fn new(
        runtime: &Runtime,
        host: Box<dyn Host>,
        sandbox: Sandbox,
        config: &Config,
    ) -> Result<Self, Error> {
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let data = StoreData {
            wasi,
            table: ResourceTable::new(),
            sandbox,
            host,
            started: Default::default(),
            next_handle: 0,
        };
        let mut store = Store::new(&runtime.engine, data);
        let bindings = runtime.pre.instantiate(&mut store).map_err(Error::Load)?;
        let manager = bindings
            .juju_rollingops_api()
            .manager()
            .call_create(&mut store, config)
            .map_err(Error::Trap)?
            .map_err(Error::Library)?;
        Ok(Session {
            store,
            bindings,
            manager,
        })
    }

    /// `request_async_lock`.
    pub fn request_async_lock(
        &mut self,
        callback_id: &str,
        kwargs_json: &str,
        max_retry: Option<i64>,
    ) -> Result<(), Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_request_async_lock(
            &mut self.store,
            self.manager,
            callback_id,
            kwargs_json,
            max_retry,
        ))
    }

    /// `request-lock`: queue with options.
    pub fn request_lock(
        &mut self,
        callback_id: &str,
        kwargs_json: &str,
        options: &RequestOptions,
    ) -> Result<(), Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_request_lock(
            &mut self.store,
            self.manager,
            callback_id,
            kwargs_json,
            options,
        ))
    }

    /// `set-policy` (leader only).
    pub fn set_policy(&mut self, policy: &Policy) -> Result<(), Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_set_policy(&mut self.store, self.manager, *policy))
    }

    /// `set-rank`.
    pub fn set_rank(&mut self, rank: i64) -> Result<(), Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_set_rank(&mut self.store, self.manager, rank))
    }

    /// `control`: pause, resume, cancel, force-release.
    pub fn control(&mut self, action: &Control) -> Result<u32, Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_control(&mut self.store, self.manager, action))
    }

    /// `start-roll` (leader only); returns the roll generation.
    pub fn start_roll(&mut self, request: &RollRequest) -> Result<u64, Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_start_roll(&mut self.store, self.manager, request))
    }

    /// Hand a hook to the manager.
    pub fn handle_event(&mut self, event: &Event) -> Result<(), Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_handle_event(&mut self.store, self.manager, event))
    }

    /// `state`.
    pub fn state(&mut self) -> Result<State, Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_state(&mut self.store, self.manager))
    }

    /// `is_waiting` / `is_waiting_callback`.
    pub fn is_waiting(
        &mut self,
        unit: Option<&str>,
        callback_id: Option<&str>,
    ) -> Result<bool, Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_is_waiting(&mut self.store, self.manager, unit, callback_id))
    }

    /// Acquire the synchronous lock.
    pub fn acquire_sync_lock(
        &mut self,
        backend_id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_acquire_sync_lock(
            &mut self.store,
            self.manager,
            backend_id,
            timeout_seconds,
        ))
    }

    /// Release the synchronous lock.
    pub fn release_sync_lock(&mut self, backend_id: &str) -> Result<(), Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_release_sync_lock(&mut self.store, self.manager, backend_id))
    }

    /// The etcd worker loop.
    pub fn run_worker(&mut self) -> Result<(), Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_run_worker(&mut self.store, self.manager))
    }

    /// JSON view of the lock and the queues.
    pub fn describe(&mut self) -> Result<String, Error> {
        let api = self.bindings.juju_rollingops_api().manager();
        flatten(api.call_describe(&mut self.store, self.manager))
    }

    /// The embedder's host, for inspection.
    pub fn host(&mut self) -> &mut dyn Host {
        self.store.data_mut().host.as_mut()
    }

    /// End the hook and take the host back.
    pub fn into_host(self) -> Box<dyn Host> {
        self.store.into_data().host
    }
}

fn flatten<T>(result: wasmtime::Result<Result<T, wit::Error>>) -> Result<T, Error> {
    result.map_err(Error::Trap)?.map_err(Error::Library)
}

impl wit::Host for StoreData {}

impl juju::Host for StoreData {
    fn unit_name(&mut self) -> String {
        self.host.unit_name()
    }
    fn model_uuid(&mut self) -> String {
        self.host.model_uuid()
    }
    fn is_leader(&mut self) -> Result<bool, wit::Error> {
        self.host.is_leader()
    }
    fn relation_ids(&mut self, endpoint: String) -> Result<Vec<u32>, wit::Error> {
        self.host.relation_ids(&endpoint)
    }
    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, wit::Error> {
        self.host.relation_units(relation_id)
    }
    fn relation_get(
        &mut self,
        relation_id: u32,
        owner: BagOwner,
    ) -> Result<Vec<(String, String)>, wit::Error> {
        self.host.relation_get(relation_id, &owner)
    }
    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: Vec<(String, String)>,
    ) -> Result<(), wit::Error> {
        self.host.relation_set(relation_id, app, &pairs)
    }
    fn secret_get(&mut self, label_or_id: String) -> Result<juju::SecretContent, wit::Error> {
        let found = self.host.secret_get(&label_or_id)?;
        Ok(juju::SecretContent {
            exists: found.is_some(),
            content: found.unwrap_or_default(),
        })
    }
    fn secret_add(
        &mut self,
        label: String,
        content: Vec<(String, String)>,
    ) -> Result<String, wit::Error> {
        self.host.secret_add(&label, &content)
    }
    fn secret_grant(&mut self, id: String, relation_id: u32) -> Result<(), wit::Error> {
        self.host.secret_grant(&id, relation_id)
    }
    fn relation_get_remote_app(
        &mut self,
        relation_id: u32,
    ) -> Result<Vec<(String, String)>, wit::Error> {
        self.host.relation_get_remote_app(relation_id)
    }
    fn log(&mut self, level: LogLevel, message: String) {
        self.host.log(level, &message)
    }
    fn dispatch(&mut self, event_name: String) -> Result<(), wit::Error> {
        self.host.dispatch(&event_name)
    }
    fn dispatch_after(&mut self, event_name: String, delay_ms: u32) -> Result<(), wit::Error> {
        self.host.dispatch_after(&event_name, delay_ms)
    }
}

impl clock::Host for StoreData {
    fn now_micros(&mut self) -> i64 {
        self.host.now_micros()
    }
    fn sleep_ms(&mut self, ms: u64) {
        self.host.sleep_ms(ms)
    }
}

impl process::Host for StoreData {
    fn run_etcdctl(
        &mut self,
        args: Vec<String>,
        env: Vec<(String, String)>,
        stdin: Option<String>,
        timeout_ms: u32,
    ) -> Result<ExecOutput, wit::Error> {
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
        self.sandbox
            .run_etcdctl(&args, &env, stdin.as_deref(), timeout)
    }
    fn watch_etcdctl(
        &mut self,
        args: Vec<String>,
        env: Vec<(String, String)>,
        timeout_ms: u32,
    ) -> Result<ExecOutput, wit::Error> {
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
        self.sandbox.watch_etcdctl(&args, &env, timeout)
    }
    fn start_etcdctl(
        &mut self,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<u32, wit::Error> {
        let started = self.sandbox.start_etcdctl(&args, &env)?;
        self.next_handle = self.next_handle.wrapping_add(1);
        self.started.insert(self.next_handle, started);
        Ok(self.next_handle)
    }
    fn finish_etcdctl(
        &mut self,
        handle: u32,
        stdin: Option<String>,
        timeout_ms: u32,
    ) -> Result<ExecOutput, wit::Error> {
        let started = self.started.remove(&handle).ok_or_else(|| {
            wit::Error::Etcdctl(format!("no started etcdctl has handle {handle}"))
        })?;
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
        started.finish(stdin.as_deref(), timeout)
    }
    fn read_etcdctl_line(
        &mut self,
        handle: u32,
        timeout_ms: u32,
    ) -> Result<Option<String>, wit::Error> {
        let started = self.started.get_mut(&handle).ok_or_else(|| {
            wit::Error::Etcdctl(format!("no started etcdctl has handle {handle}"))
        })?;
        started.next_line(std::time::Duration::from_millis(u64::from(timeout_ms)))
    }
    fn stop_etcdctl(&mut self, handle: u32) {
        self.started.remove(&handle);
    }
    fn start_worker(&mut self) -> Result<(), wit::Error> {
        self.host.start_worker()
    }
}

impl files::Host for StoreData {
    fn read(&mut self, path: String) -> Result<files::FileContent, wit::Error> {
        let found = self.sandbox.read(&path)?;
        Ok(files::FileContent {
            exists: found.is_some(),
            data: found.unwrap_or_default(),
        })
    }
    fn write(&mut self, path: String, data: Vec<u8>, mode: u32) -> Result<(), wit::Error> {
        self.sandbox.write(&path, &data, mode)
    }
    fn remove(&mut self, path: String) -> Result<(), wit::Error> {
        self.sandbox.remove(&path)
    }
}

impl crypto::Host for StoreData {
    fn generate_client_identity(
        &mut self,
        common_name: String,
    ) -> Result<crypto::ClientIdentity, wit::Error> {
        self.host.generate_client_identity(&common_name)
    }
}

impl charm::Host for StoreData {
    fn run_callback(&mut self, id: String, kwargs_json: String) -> CallbackOutcome {
        self.host.run_callback(&id, &kwargs_json)
    }
    fn sync_backend_acquire(
        &mut self,
        id: String,
        timeout_seconds: Option<u32>,
    ) -> Result<(), charm::SyncBackendError> {
        self.host.sync_backend_acquire(&id, timeout_seconds)
    }
    fn sync_backend_release(&mut self, id: String) -> Result<(), charm::SyncBackendError> {
        self.host.sync_backend_release(&id)
    }
}
