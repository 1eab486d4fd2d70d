//! A C ABI over the rollingops host library, for languages that link native code (Go via
//! cgo). The contract, with every JSON shape, is the hand-written header
//! `include/rollingops.h`; this file implements it and nothing more.
//!
//! * A [`RuntimeHandle`] wraps [`rollingops::Runtime`] (engine + compiled component).
//! * A [`SessionHandle`] wraps one hook's [`rollingops::Session`]; its [`Host`] is a
//!   [`HostVtable`] of C function pointers, which answer through a [`Reply`].
//! * Results are `i32` codes ([`code`]): 0, the WIT `error` cases 1-12 in declaration order,
//!   or a failure of the library itself. Messages and JSON leave as `CString`s freed by
//!   [`rollingops_string_free`].
//! * No panic crosses the boundary: every exported function runs under `catch_unwind`, and a
//!   session that panicked or trapped refuses further calls.
//!
//! The host decides nothing here either: this layer only converts values.

use std::cell::UnsafeCell;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use rollingops::cache::CacheOutcome;
use rollingops::juju::{CharmCode, JujuEnv, JujuHost};
use rollingops::runtime::message;
use rollingops::sandbox::Sandbox;
use rollingops::{
    BagOwner, CallbackOutcome, Config, Control, Event, Host, LogLevel, Policy, ProcessingBackend,
    RequestOptions, RollRequest, Runtime, Session, Status, SyncBackendError, WitError,
};
use serde_json::{Map, Value};

/// Result codes, as `enum rollingops_code` in the header.
pub mod code {
    /// Success.
    pub const OK: i32 = 0;
    /// `no-relation`.
    pub const NO_RELATION: i32 = 1;
    /// `file-system`.
    pub const FILE_SYSTEM: i32 = 2;
    /// `invalid-lock-request`.
    pub const INVALID_LOCK_REQUEST: i32 = 3;
    /// `decoding`.
    pub const DECODING: i32 = 4;
    /// `invalid-secret-content`.
    pub const INVALID_SECRET_CONTENT: i32 = 5;
    /// `lib-missing`.
    pub const LIB_MISSING: i32 = 6;
    /// `etcdctl`.
    pub const ETCDCTL: i32 = 7;
    /// `etcd-not-configured`.
    pub const ETCD_NOT_CONFIGURED: i32 = 8;
    /// `sync-lock`.
    pub const SYNC_LOCK: i32 = 9;
    /// `timeout`.
    pub const TIMEOUT: i32 = 10;
    /// `invalid-argument`.
    pub const INVALID_ARGUMENT: i32 = 11;
    /// `host`.
    pub const HOST: i32 = 12;
    /// Host replies only: the callback raised, or the sync backend failed.
    pub const RAISED: i32 = 20;
    /// Host replies only: nothing registered under that id.
    pub const MISSING: i32 = 21;
    /// The component could not be compiled, loaded or instantiated.
    pub const LOAD: i32 = 30;
    /// The component trapped.
    pub const TRAP: i32 = 31;
    /// Misuse of the C API.
    pub const BAD_CALL: i32 = 32;
    /// An internal panic was caught.
    pub const PANIC: i32 = 33;
}

/// `ROLLINGOPS_ABI_VERSION`.
pub const ABI_VERSION: i32 = 2;

/// A failure on its way out: a code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    fn bad_call(message: impl Into<String>) -> Self {
        Failure::new(code::BAD_CALL, message)
    }
}

impl From<rollingops::Error> for Failure {
    fn from(error: rollingops::Error) -> Self {
        match error {
            rollingops::Error::Library(e) => Failure::new(wit_code(&e), message(&e)),
            rollingops::Error::Load(e) => Failure::new(code::LOAD, format!("{e:#}")),
            rollingops::Error::Trap(e) => Failure::new(code::TRAP, format!("{e:#}")),
        }
    }
}

/// The code of a WIT error case: its position in the `error` variant.
fn wit_code(error: &WitError) -> i32 {
    match error {
        WitError::NoRelation(_) => code::NO_RELATION,
        WitError::FileSystem(_) => code::FILE_SYSTEM,
        WitError::InvalidLockRequest(_) => code::INVALID_LOCK_REQUEST,
        WitError::Decoding(_) => code::DECODING,
        WitError::InvalidSecretContent(_) => code::INVALID_SECRET_CONTENT,
        WitError::LibMissing(_) => code::LIB_MISSING,
        WitError::Etcdctl(_) => code::ETCDCTL,
        WitError::EtcdNotConfigured(_) => code::ETCD_NOT_CONFIGURED,
        WitError::SyncLock(_) => code::SYNC_LOCK,
        WitError::Timeout(_) => code::TIMEOUT,
        WitError::InvalidArgument(_) => code::INVALID_ARGUMENT,
        WitError::Host(_) => code::HOST,
    }
}

/// The WIT error case of a code; anything outside 1-12 is a `host` error.
fn wit_error(code: i32, message: String) -> WitError {
    match code {
        code::NO_RELATION => WitError::NoRelation(message),
        code::FILE_SYSTEM => WitError::FileSystem(message),
        code::INVALID_LOCK_REQUEST => WitError::InvalidLockRequest(message),
        code::DECODING => WitError::Decoding(message),
        code::INVALID_SECRET_CONTENT => WitError::InvalidSecretContent(message),
        code::LIB_MISSING => WitError::LibMissing(message),
        code::ETCDCTL => WitError::Etcdctl(message),
        code::ETCD_NOT_CONFIGURED => WitError::EtcdNotConfigured(message),
        code::SYNC_LOCK => WitError::SyncLock(message),
        code::TIMEOUT => WitError::Timeout(message),
        code::INVALID_ARGUMENT => WitError::InvalidArgument(message),
        _ => WitError::Host(message),
    }
}

// =====================================================================================
// Strings in and out

/// A `CString` for the caller, NUL bytes replaced (messages only).
fn c_string_lossy(text: &str) -> *mut c_char {
    let text = if text.contains('\0') {
        text.replace('\0', "\u{fffd}")
    } else {
        text.to_owned()
    };
    CString::new(text).map_or(std::ptr::null_mut(), CString::into_raw)
}

/// Store `message` in `*out` when `out` is not NULL.
///
/// # Safety
/// `out` is NULL or valid for a write.
unsafe fn set_message(out: *mut *mut c_char, message: &str) {
    if !out.is_null() {
        // SAFETY: the caller guarantees `out` is writable.
        unsafe { *out = c_string_lossy(message) };
    }
}

/// Clear `*out` when `out` is not NULL.
///
/// # Safety
/// `out` is NULL or valid for a write.
unsafe fn clear(out: *mut *mut c_char) {
    if !out.is_null() {
        // SAFETY: the caller guarantees `out` is writable.
        unsafe { *out = std::ptr::null_mut() };
    }
}

/// A required UTF-8 argument.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string valid for the call.
unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::bad_call(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated, per the caller.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Failure::bad_call(format!("{what} is not valid UTF-8")))
}

/// An optional UTF-8 argument (NULL is none).
///
/// # Safety
/// As [`str_arg`].
unsafe fn opt_str_arg<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: as the caller's.
        unsafe { str_arg(ptr, what) }.map(Some)
    }
}

/// The text of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Run `f` with no unwinding out; write its failure to `error_message`.
///
/// # Safety
/// `error_message` is NULL or writable.
unsafe fn guard(error_message: *mut *mut c_char, f: impl FnOnce() -> Result<(), Failure>) -> i32 {
    // SAFETY: as the caller's.
    unsafe { clear(error_message) };
    let failure = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return code::OK,
        Ok(Err(failure)) => failure,
        Err(panic) => Failure::new(code::PANIC, panic_text(panic.as_ref())),
    };
    // SAFETY: as the caller's.
    unsafe { set_message(error_message, &failure.message) };
    failure.code
}

// =====================================================================================
// Host replies

/// Where a host function writes its answer (`rollingops_reply`).
pub struct Reply {
    answer: Option<Result<String, Failure>>,
}

impl Reply {
    fn new() -> Self {
        Reply { answer: None }
    }

    fn answer(&mut self, answer: Result<String, Failure>) {
        if self.answer.is_none() {
            self.answer = Some(answer);
        }
    }

    fn into_answer(self) -> Result<String, Failure> {
        self.answer
            .unwrap_or_else(|| Err(Failure::new(code::HOST, "the host did not reply")))
    }
}

/// The bytes of a reply as UTF-8.
///
/// # Safety
/// `data` is NULL with `len` 0, or valid for `len` bytes.
unsafe fn reply_text(data: *const c_char, len: usize) -> Result<String, Failure> {
    if data.is_null() {
        return if len == 0 {
            Ok(String::new())
        } else {
            Err(Failure::bad_call("host reply data is NULL"))
        };
    }
    // SAFETY: valid for `len` bytes, per the caller.
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
    String::from_utf8(bytes.to_vec()).map_err(|_| Failure::bad_call("host reply is not UTF-8"))
}

/// Answer a host call with data.
///
/// # Safety
/// `reply` is NULL or the reply handed to the running host function; `data` is NULL with
/// `len` 0, or valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_reply_ok(reply: *mut Reply, data: *const c_char, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per this function's contract.
        if let Some(reply) = unsafe { reply.as_mut() } {
            reply.answer(unsafe { reply_text(data, len) });
        }
    }));
}

/// Answer a host call with a failure.
///
/// # Safety
/// As [`rollingops_reply_ok`], with `message` in place of `data`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_reply_error(
    reply: *mut Reply,
    code: i32,
    message: *const c_char,
    len: usize,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per this function's contract.
        if let Some(reply) = unsafe { reply.as_mut() } {
            let text = unsafe { reply_text(message, len) };
            reply.answer(match text {
                Ok(text) => Err(Failure::new(code, text)),
                Err(failure) => Err(failure),
            });
        }
    }));
}

// =====================================================================================
// The host vtable

/// `rollingops_host`: the embedder's effects as C function pointers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HostVtable {
    /// Passed first to every function.
    pub user_data: *mut c_void,
    /// This unit's name.
    pub unit_name: Option<unsafe extern "C" fn(*mut c_void, *mut Reply)>,
    /// The model UUID (optional).
    pub model_uuid: Option<unsafe extern "C" fn(*mut c_void, *mut Reply)>,
    /// Leadership.
    pub is_leader: Option<unsafe extern "C" fn(*mut c_void, *mut Reply)>,
    /// Relation ids on an endpoint.
    pub relation_ids: Option<unsafe extern "C" fn(*mut c_void, *const c_char, *mut Reply)>,
    /// Remote units on a relation.
    pub relation_units: Option<unsafe extern "C" fn(*mut c_void, u32, *mut Reply)>,
    /// A databag (unit NULL: the app bag).
    pub relation_get: Option<unsafe extern "C" fn(*mut c_void, u32, *const c_char, *mut Reply)>,
    /// Write keys.
    pub relation_set:
        Option<unsafe extern "C" fn(*mut c_void, u32, bool, *const c_char, *mut Reply)>,
    /// Read a secret (optional).
    pub secret_get: Option<unsafe extern "C" fn(*mut c_void, *const c_char, *mut Reply)>,
    /// Create a secret (optional).
    pub secret_add:
        Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, *mut Reply)>,
    /// A log line.
    pub log: Option<unsafe extern "C" fn(*mut c_void, i32, *const c_char)>,
    /// Run a hook later.
    pub dispatch: Option<unsafe extern "C" fn(*mut c_void, *const c_char, *mut Reply)>,
    /// The clock.
    pub now_micros: Option<unsafe extern "C" fn(*mut c_void) -> i64>,
    /// Sleep (optional).
    pub sleep_ms: Option<unsafe extern "C" fn(*mut c_void, u64)>,
    /// Run a charm callback.
    pub run_callback:
        Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, *mut Reply)>,
    /// Acquire a sync-lock backend (optional).
    pub sync_backend_acquire:
        Option<unsafe extern "C" fn(*mut c_void, *const c_char, i64, *mut Reply)>,
    /// Release a sync-lock backend (optional).
    pub sync_backend_release: Option<unsafe extern "C" fn(*mut c_void, *const c_char, *mut Reply)>,
    /// Start the etcd worker (optional).
    pub start_worker: Option<unsafe extern "C" fn(*mut c_void, *mut Reply)>,
    /// Grant a secret to a relation (optional).
    pub secret_grant: Option<unsafe extern "C" fn(*mut c_void, *const c_char, u32, *mut Reply)>,
    /// The remote application's bag (optional).
    pub relation_get_remote_app: Option<unsafe extern "C" fn(*mut c_void, u32, *mut Reply)>,
    /// Run a hook no sooner than a delay from now (optional; ABI version 2).
    pub dispatch_after: Option<unsafe extern "C" fn(*mut c_void, *const c_char, u32, *mut Reply)>,
}

impl HostVtable {
    /// The required functions that are missing (only `run_callback` when the hook tools
    /// carry the Juju effects).
    fn missing(&self, hook_tools: bool) -> Vec<&'static str> {
        if hook_tools {
            return match self.run_callback {
                Some(_) => vec![],
                None => vec!["run_callback"],
            };
        }
        let required = [
            ("unit_name", self.unit_name.is_some()),
            ("is_leader", self.is_leader.is_some()),
            ("relation_ids", self.relation_ids.is_some()),
            ("relation_units", self.relation_units.is_some()),
            ("relation_get", self.relation_get.is_some()),
            ("relation_set", self.relation_set.is_some()),
            ("log", self.log.is_some()),
            ("dispatch", self.dispatch.is_some()),
            ("now_micros", self.now_micros.is_some()),
            ("run_callback", self.run_callback.is_some()),
        ];
        required
            .into_iter()
            .filter(|(_, present)| !present)
            .map(|(name, _)| name)
            .collect()
    }
}

/// A [`Host`] over a [`HostVtable`].
struct CHost {
    vtable: HostVtable,
}

// SAFETY: the session, and so this host, is only used on the thread that is inside a
// session call; the header makes the embedder responsible for `user_data` being usable
// there (functions are called synchronously on the calling thread).
unsafe impl Send for CHost {}

/// A `CString` argument for a host function.
fn c_arg(text: &str, what: &str) -> Result<CString, WitError> {
    CString::new(text).map_err(|_| WitError::Host(format!("{what} contains a NUL byte")))
}

/// A host reply as a WIT result.
fn wit_result(answer: Result<String, Failure>) -> Result<String, WitError> {
    answer.map_err(|f| wit_error(f.code, f.message))
}

/// JSON from the host, or a `host` error naming the function.
fn parse_reply<T>(
    text: &str,
    what: &str,
    convert: impl FnOnce(Value) -> Option<T>,
) -> Result<T, WitError> {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(convert)
        .ok_or_else(|| WitError::Host(format!("the host's {what} replied with {text:?}")))
}

fn string_pairs(value: Value) -> Option<Vec<(String, String)>> {
    match value {
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn pairs_json(pairs: &[(String, String)]) -> String {
    Value::Array(
        pairs
            .iter()
            .map(|(k, v)| Value::Array(vec![Value::String(k.clone()), Value::String(v.clone())]))
            .collect(),
    )
    .to_string()
}

fn object_json(pairs: &[(String, String)]) -> String {
    let map: Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(map).to_string()
}

impl CHost {
    /// Call a host function that answers through a [`Reply`].
    fn ask(&self, call: impl FnOnce(*mut c_void, *mut Reply)) -> Result<String, Failure> {
        let mut reply = Reply::new();
        call(self.vtable.user_data, &mut reply);
        reply.into_answer()
    }

    /// A required function, or a panic (which fails the session call).
    fn required<F>(f: Option<F>, name: &str) -> F {
        f.unwrap_or_else(|| panic!("the host function {name} is missing"))
    }
}

impl Host for CHost {
    fn unit_name(&mut self) -> String {
        let f = Self::required(self.vtable.unit_name, "unit_name");
        // SAFETY: a function of the embedder's vtable, called as the header documents.
        match self.ask(|ud, reply| unsafe { f(ud, reply) }) {
            Ok(name) => name,
            Err(failure) => panic!("the host's unit_name failed: {}", failure.message),
        }
    }

    fn model_uuid(&mut self) -> String {
        let Some(f) = self.vtable.model_uuid else {
            return String::new();
        };
        // SAFETY: as above.
        self.ask(|ud, reply| unsafe { f(ud, reply) })
            .unwrap_or_default()
    }

    fn is_leader(&mut self) -> Result<bool, WitError> {
        let f = Self::required(self.vtable.is_leader, "is_leader");
        // SAFETY: as above.
        let text = wit_result(self.ask(|ud, reply| unsafe { f(ud, reply) }))?;
        parse_reply(&text, "is_leader", |v| v.as_bool())
    }

    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, WitError> {
        let f = Self::required(self.vtable.relation_ids, "relation_ids");
        let endpoint = c_arg(endpoint, "endpoint")?;
        // SAFETY: as above; `endpoint` outlives the call.
        let text = wit_result(self.ask(|ud, reply| unsafe { f(ud, endpoint.as_ptr(), reply) }))?;
        parse_reply(&text, "relation_ids", |v| {
            v.as_array()?
                .iter()
                .map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
                .collect()
        })
    }

    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, WitError> {
        let f = Self::required(self.vtable.relation_units, "relation_units");
        // SAFETY: as above.
        let text = wit_result(self.ask(|ud, reply| unsafe { f(ud, relation_id, reply) }))?;
        parse_reply(&text, "relation_units", |v| {
            v.as_array()?
                .iter()
                .map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
    }

    fn relation_get(
        &mut self,
        relation_id: u32,
        owner: &BagOwner,
    ) -> Result<Vec<(String, String)>, WitError> {
        let f = Self::required(self.vtable.relation_get, "relation_get");
        let unit = match owner {
            BagOwner::App => None,
            BagOwner::Unit(unit) => Some(c_arg(unit, "unit name")?),
        };
        let unit_ptr = unit.as_ref().map_or(std::ptr::null(), |u| u.as_ptr());
        // SAFETY: as above; `unit` outlives the call.
        let text =
            wit_result(self.ask(|ud, reply| unsafe { f(ud, relation_id, unit_ptr, reply) }))?;
        parse_reply(&text, "relation_get", string_pairs)
    }

    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), WitError> {
        let f = Self::required(self.vtable.relation_set, "relation_set");
        let json = c_arg(&pairs_json(pairs), "pairs")?;
        // SAFETY: as above; `json` outlives the call.
        wit_result(self.ask(|ud, reply| unsafe { f(ud, relation_id, app, json.as_ptr(), reply) }))
            .map(drop)
    }

    fn secret_get(&mut self, label_or_id: &str) -> Result<Option<Vec<(String, String)>>, WitError> {
        let Some(f) = self.vtable.secret_get else {
            return Err(WitError::Host(
                "secrets are not available in this host".into(),
            ));
        };
        let label = c_arg(label_or_id, "secret label")?;
        // SAFETY: as above.
        let text = wit_result(self.ask(|ud, reply| unsafe { f(ud, label.as_ptr(), reply) }))?;
        parse_reply(&text, "secret_get", |v| match v {
            Value::Null => Some(None),
            other => string_pairs(other).map(Some),
        })
    }

    fn secret_add(
        &mut self,
        label: &str,
        content: &[(String, String)],
    ) -> Result<String, WitError> {
        let Some(f) = self.vtable.secret_add else {
            return Err(WitError::Host(
                "secrets are not available in this host".into(),
            ));
        };
        let label = c_arg(label, "secret label")?;
        let content = c_arg(&object_json(content), "secret content")?;
        // SAFETY: as above.
        wit_result(self.ask(|ud, reply| unsafe { f(ud, label.as_ptr(), content.as_ptr(), reply) }))
    }

    fn secret_grant(&mut self, id: &str, relation_id: u32) -> Result<(), WitError> {
        let Some(f) = self.vtable.secret_grant else {
            return Err(WitError::Host(
                "secrets are not available in this host".into(),
            ));
        };
        let id = c_arg(id, "secret id")?;
        // SAFETY: as above.
        wit_result(self.ask(|ud, reply| unsafe { f(ud, id.as_ptr(), relation_id, reply) }))
            .map(drop)
    }

    fn relation_get_remote_app(
        &mut self,
        relation_id: u32,
    ) -> Result<Vec<(String, String)>, WitError> {
        let Some(f) = self.vtable.relation_get_remote_app else {
            return Err(WitError::Host(
                "this host cannot read a remote application's bag".into(),
            ));
        };
        // SAFETY: as above.
        let text = wit_result(self.ask(|ud, reply| unsafe { f(ud, relation_id, reply) }))?;
        parse_reply(&text, "relation_get_remote_app", string_pairs)
    }

    fn start_worker(&mut self) -> Result<(), WitError> {
        let Some(f) = self.vtable.start_worker else {
            return Err(WitError::EtcdNotConfigured(
                "this host cannot start the etcd worker".into(),
            ));
        };
        // SAFETY: as above.
        wit_result(self.ask(|ud, reply| unsafe { f(ud, reply) })).map(drop)
    }

    fn log(&mut self, level: LogLevel, text: &str) {
        let f = Self::required(self.vtable.log, "log");
        let level = match level {
            LogLevel::Debug => 0,
            LogLevel::Info => 1,
            LogLevel::Warning => 2,
            LogLevel::Error => 3,
        };
        let text = CString::new(text.replace('\0', "\u{fffd}")).unwrap_or_default();
        // SAFETY: as above.
        unsafe { f(self.vtable.user_data, level, text.as_ptr()) }
    }

    fn dispatch(&mut self, event: &str) -> Result<(), WitError> {
        let f = Self::required(self.vtable.dispatch, "dispatch");
        let event = c_arg(event, "event name")?;
        // SAFETY: as above.
        wit_result(self.ask(|ud, reply| unsafe { f(ud, event.as_ptr(), reply) })).map(drop)
    }

    fn dispatch_after(&mut self, event: &str, delay_ms: u32) -> Result<(), WitError> {
        let Some(f) = self.vtable.dispatch_after else {
            return Err(WitError::Host(
                "this host cannot dispatch a hook after a delay".into(),
            ));
        };
        let event = c_arg(event, "event name")?;
        // SAFETY: as above.
        wit_result(self.ask(|ud, reply| unsafe { f(ud, event.as_ptr(), delay_ms, reply) }))
            .map(drop)
    }

    fn now_micros(&mut self) -> i64 {
        let f = Self::required(self.vtable.now_micros, "now_micros");
        // SAFETY: as above.
        unsafe { f(self.vtable.user_data) }
    }

    fn sleep_ms(&mut self, ms: u64) {
        match self.vtable.sleep_ms {
            // SAFETY: as above.
            Some(f) => unsafe { f(self.vtable.user_data, ms) },
            None => std::thread::sleep(std::time::Duration::from_millis(ms)),
        }
    }

    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        let f = Self::required(self.vtable.run_callback, "run_callback");
        let (id, kwargs) = match (c_arg(id, "callback id"), c_arg(kwargs_json, "kwargs")) {
            (Ok(id), Ok(kwargs)) => (id, kwargs),
            (Err(e), _) | (_, Err(e)) => return CallbackOutcome::Raised(message(&e).to_owned()),
        };
        // SAFETY: as above.
        match self.ask(|ud, reply| unsafe { f(ud, id.as_ptr(), kwargs.as_ptr(), reply) }) {
            Ok(text) => match serde_json::from_str::<Value>(&text) {
                Ok(Value::String(s)) => CallbackOutcome::Returned(Some(s)),
                // A health check's boolean: the component passes it on "true".
                Ok(Value::Bool(b)) => CallbackOutcome::Returned(Some(b.to_string())),
                Ok(Value::Null) => CallbackOutcome::Returned(None),
                Ok(_) => CallbackOutcome::Returned(None),
                Err(_) => CallbackOutcome::Raised(format!(
                    "the host's run_callback replied with {text:?}, not JSON"
                )),
            },
            Err(f) if f.code == code::MISSING => CallbackOutcome::Missing,
            Err(f) => CallbackOutcome::Raised(f.message),
        }
    }

    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError> {
        let Some(f) = self.vtable.sync_backend_acquire else {
            return Err(SyncBackendError::Missing);
        };
        let id = CString::new(id).map_err(|_| SyncBackendError::Missing)?;
        let timeout = timeout_seconds.map_or(-1, i64::from);
        // SAFETY: as above.
        sync_result(self.ask(|ud, reply| unsafe { f(ud, id.as_ptr(), timeout, reply) }))
    }

    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError> {
        let Some(f) = self.vtable.sync_backend_release else {
            return Err(SyncBackendError::Missing);
        };
        let id = CString::new(id).map_err(|_| SyncBackendError::Missing)?;
        // SAFETY: as above.
        sync_result(self.ask(|ud, reply| unsafe { f(ud, id.as_ptr(), reply) }))
    }
}

/// With `hook_tools`, the vtable supplies only the charm's code.
impl CharmCode for CHost {
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        Host::run_callback(self, id, kwargs_json)
    }
    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError> {
        Host::sync_backend_acquire(self, id, timeout_seconds)
    }
    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError> {
        Host::sync_backend_release(self, id)
    }
}

fn sync_result(answer: Result<String, Failure>) -> Result<(), SyncBackendError> {
    match answer {
        Ok(_) => Ok(()),
        Err(f) if f.code == code::TIMEOUT => Err(SyncBackendError::TimedOut),
        Err(f) if f.code == code::MISSING => Err(SyncBackendError::Missing),
        Err(f) => Err(SyncBackendError::Failed(f.message)),
    }
}

// =====================================================================================
// JSON in and out

/// A session's configuration: the WIT `config`, the sandbox's charm directory, and whether
/// the hook tools carry the Juju effects.
struct SessionConfig {
    config: Config,
    charm_dir: Option<String>,
    hook_tools: bool,
}

fn parse_config(json: &str) -> Result<SessionConfig, Failure> {
    let bad = |m: String| Failure::bad_call(format!("config: {m}"));
    let Value::Object(map) =
        serde_json::from_str::<Value>(json).map_err(|e| bad(format!("not JSON: {e}")))?
    else {
        return Err(bad("not a JSON object".into()));
    };
    let string = |key: &str| -> Result<Option<String>, Failure> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("{key} must be a string"))),
        }
    };
    let strings = |key: &str| -> Result<Vec<String>, Failure> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(format!("{key} must be a list of strings"))),
            Some(_) => Err(bad(format!("{key} must be a list of strings"))),
        }
    };
    const KEYS: [&str; 8] = [
        "hook_tools",
        "peer_relation_name",
        "etcd_relation_name",
        "cluster_id",
        "base_dir",
        "charm_dir",
        "callback_ids",
        "sync_lock_ids",
    ];
    if let Some(unknown) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(bad(format!("unknown key {unknown:?}")));
    }
    let config = Config {
        peer_relation_name: string("peer_relation_name")?
            .ok_or_else(|| bad("peer_relation_name is required".into()))?,
        etcd_relation_name: string("etcd_relation_name")?,
        cluster_id: string("cluster_id")?,
        base_dir: string("base_dir")?.unwrap_or_else(|| "/var/lib/rollingops".into()),
        callback_ids: strings("callback_ids")?,
        sync_lock_ids: strings("sync_lock_ids")?,
    };
    let hook_tools = match map.get("hook_tools") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("hook_tools must be a boolean".into())),
    };
    Ok(SessionConfig {
        config,
        charm_dir: string("charm_dir")?,
        hook_tools,
    })
}

/// A WIT `event` from its JSON form.
fn parse_event(json: &str) -> Result<Event, Failure> {
    let bad = || Failure::bad_call(format!("not an event: {json}"));
    match serde_json::from_str::<Value>(json).map_err(|_| bad())? {
        Value::String(name) => Ok(match name.as_str() {
            "peer-relation-changed" => Event::PeerRelationChanged,
            "leader-elected" => Event::LeaderElected,
            "update-status" => Event::UpdateStatus,
            "lock-granted" => Event::LockGranted,
            "etcd-failed" => Event::EtcdFailed,
            "etcd-relation-created" => Event::EtcdRelationCreated,
            "etcd-relation-changed" => Event::EtcdRelationChanged,
            "etcd-relation-broken" => Event::EtcdRelationBroken,
            _ => return Err(bad()),
        }),
        Value::Object(map) if map.len() == 1 => {
            let (case, payload) = map.into_iter().next().ok_or_else(bad)?;
            let Value::String(payload) = payload else {
                return Err(bad());
            };
            match case.as_str() {
                "peer-relation-departed" => Ok(Event::PeerRelationDeparted(payload)),
                "secret-changed" => Ok(Event::SecretChanged(payload)),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// A JSON object argument, read key by key: unknown keys and wrong types are bad calls.
struct Fields<'a> {
    what: &'a str,
    map: Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// `json` (NULL: `{}`) as an object whose keys are all in `known`.
    fn parse(json: Option<&str>, what: &'a str, known: &[&str]) -> Result<Self, Failure> {
        let map = match json {
            None => Map::new(),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err(Failure::bad_call(format!("{what}: not a JSON object"))),
                Err(e) => return Err(Failure::bad_call(format!("{what}: not JSON: {e}"))),
            },
        };
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(Failure::bad_call(format!(
                "{what}: unknown key {unknown:?}"
            )));
        }
        Ok(Fields { what, map })
    }

    fn bad(&self, key: &str, expected: &str) -> Failure {
        Failure::bad_call(format!("{}: {key} must be {expected}", self.what))
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, Failure> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(key, "a string or null")),
        }
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>, Failure> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.bad(key, "a whole number from 0 to 4294967295, or null")),
        }
    }

    fn opt_i64(&self, key: &str) -> Result<Option<i64>, Failure> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "an integer or null")),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, Failure> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.bad(key, "a boolean")),
        }
    }
}

/// `request-options` from its JSON form (NULL: every default).
fn parse_request_options(json: Option<&str>) -> Result<RequestOptions, Failure> {
    let f = Fields::parse(
        json,
        "options_json",
        &[
            "max_retry",
            "health_check",
            "health_timeout_seconds",
            "generation_kwarg",
        ],
    )?;
    Ok(RequestOptions {
        max_retry: f.opt_i64("max_retry")?,
        health_check: f.opt_string("health_check")?,
        health_timeout_seconds: f.opt_u32("health_timeout_seconds")?,
        generation_kwarg: f.opt_string("generation_kwarg")?,
    })
}

/// `policy` from its JSON form; absent keys take the WIT defaults.
fn parse_policy(json: &str) -> Result<Policy, Failure> {
    let f = Fields::parse(
        Some(json),
        "policy_json",
        &[
            "max_concurrent",
            "grant_timeout_seconds",
            "rank_ordering",
            "halt_on_health_failure",
        ],
    )?;
    Ok(Policy {
        max_concurrent: f.opt_u32("max_concurrent")?.unwrap_or(1),
        grant_timeout_seconds: f.opt_u32("grant_timeout_seconds")?,
        rank_ordering: f.bool_or("rank_ordering", false)?,
        halt_on_health_failure: f.bool_or("halt_on_health_failure", true)?,
    })
}

/// A WIT `control` from its JSON form: `"resume"`, `{"pause": "why"}`, `"cancel"` or
/// `{"cancel": "id"|null}`, `"force-release"` or `{"force-release": "app/1"|null}`.
fn parse_control(json: &str) -> Result<Control, Failure> {
    let bad = || Failure::bad_call(format!("not a control: {json}"));
    match serde_json::from_str::<Value>(json).map_err(|_| bad())? {
        Value::String(name) => match name.as_str() {
            "resume" => Ok(Control::Resume),
            "cancel" => Ok(Control::Cancel(None)),
            "force-release" => Ok(Control::ForceRelease(None)),
            _ => Err(bad()),
        },
        Value::Object(map) if map.len() == 1 => {
            let (case, payload) = map.into_iter().next().ok_or_else(bad)?;
            let payload = match payload {
                Value::String(s) => Some(s),
                Value::Null => None,
                _ => return Err(bad()),
            };
            match case.as_str() {
                "pause" => payload.map(Control::Pause).ok_or_else(bad),
                "resume" if payload.is_none() => Ok(Control::Resume),
                "cancel" => Ok(Control::Cancel(payload)),
                "force-release" => Ok(Control::ForceRelease(payload)),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// A `roll-request` from the callback, its kwargs and the JSON options (NULL: defaults).
fn parse_roll(
    callback_id: &str,
    kwargs_json: &str,
    options: Option<&str>,
) -> Result<RollRequest, Failure> {
    let f = Fields::parse(
        options,
        "options_json",
        &["health_check", "health_timeout_seconds", "on_complete"],
    )?;
    Ok(RollRequest {
        callback_id: callback_id.to_owned(),
        kwargs_json: kwargs_json.to_owned(),
        health_check: f.opt_string("health_check")?,
        health_timeout_seconds: f.opt_u32("health_timeout_seconds")?,
        on_complete: f.opt_string("on_complete")?,
    })
}

fn encode_state(state: &rollingops::State) -> String {
    let status = match state.status {
        Status::NotReady => "not-ready",
        Status::Waiting => "waiting",
        Status::Granted => "granted",
        Status::Idle => "idle",
    };
    let backend = match state.processing_backend {
        ProcessingBackend::Peer => "peer",
        ProcessingBackend::Etcd => "etcd",
    };
    serde_json::json!({"status": status, "processing_backend": backend}).to_string()
}

// =====================================================================================
// Library information

/// `ROLLINGOPS_ABI_VERSION` of this library.
#[unsafe(no_mangle)]
pub extern "C" fn rollingops_abi_version() -> i32 {
    ABI_VERSION
}

/// The library's version (static).
#[unsafe(no_mangle)]
pub extern "C" fn rollingops_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The reference's exception classes, by code 1-12 (as `rollingops::runtime::class`; a
/// test keeps the two tables equal).
const CLASSES: [&CStr; 12] = [
    c"RollingOpsNoRelationError",
    c"RollingOpsFileSystemError",
    c"RollingOpsInvalidLockRequestError",
    c"RollingOpsDecodingError",
    c"RollingOpsInvalidSecretContentError",
    c"RollingOpsLibMissingError",
    c"RollingOpsEtcdctlError",
    c"RollingOpsEtcdNotConfiguredError",
    c"RollingOpsSyncLockError",
    c"TimeoutError",
    c"ValueError",
    c"RollingOpsError",
];

/// The class name of a code (static).
#[unsafe(no_mangle)]
pub extern "C" fn rollingops_code_class(code: i32) -> *const c_char {
    let name: &'static CStr = match code {
        code::OK => c"Ok",
        code::NO_RELATION..=code::HOST => CLASSES[(code - 1) as usize],
        code::RAISED => c"Raised",
        code::MISSING => c"Missing",
        code::LOAD => c"Load",
        code::TRAP => c"Trap",
        code::BAD_CALL => c"BadCall",
        code::PANIC => c"Panic",
        _ => c"Unknown",
    };
    name.as_ptr()
}

/// Free a string this library returned.
///
/// # Safety
/// `s` is NULL or a string returned by this library, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: it came from `CString::into_raw` in this library.
        drop(unsafe { CString::from_raw(s) });
    }
}

// =====================================================================================
// Runtime

/// `rollingops_runtime`.
pub struct RuntimeHandle {
    runtime: Runtime,
}

/// Compile or load the embedded component.
///
/// # Safety
/// `cache_dir` is NULL or a NUL-terminated string; `runtime` is writable;
/// `error_message` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_runtime_new(
    cache_dir: *const c_char,
    runtime: *mut *mut RuntimeHandle,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        guard(error_message, || {
            if runtime.is_null() {
                return Err(Failure::bad_call("runtime is NULL"));
            }
            *runtime = std::ptr::null_mut();
            let dir = opt_str_arg(cache_dir, "cache_dir")?;
            let loaded = Runtime::new(dir.map(std::path::Path::new))?;
            *runtime = Box::into_raw(Box::new(RuntimeHandle { runtime: loaded }));
            Ok(())
        })
    }
}

/// How the runtime obtained the component (static).
///
/// # Safety
/// `runtime` is NULL or a live runtime.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_runtime_cache_outcome(
    runtime: *const RuntimeHandle,
) -> *const c_char {
    // SAFETY: per this function's contract.
    let Some(handle) = (unsafe { runtime.as_ref() }) else {
        return c"".as_ptr();
    };
    match handle.runtime.cache_outcome {
        CacheOutcome::Hit => c"hit",
        CacheOutcome::Compiled => c"compiled",
        CacheOutcome::Rebuilt => c"rebuilt",
        CacheOutcome::Uncached => c"uncached",
    }
    .as_ptr()
}

/// Free a runtime.
///
/// # Safety
/// `runtime` is NULL or a runtime from [`rollingops_runtime_new`], not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_runtime_free(runtime: *mut RuntimeHandle) {
    if !runtime.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: it came from `Box::into_raw` above.
            drop(unsafe { Box::from_raw(runtime) });
        }));
    }
}

// =====================================================================================
// Sessions

/// `rollingops_session`: one hook's manager, guarded against re-entrant and concurrent use.
pub struct SessionHandle {
    busy: AtomicBool,
    inner: UnsafeCell<SessionState>,
}

struct SessionState {
    session: Session,
    /// Why the session refuses calls (after a trap or a panic).
    broken: Option<Failure>,
}

/// Build a hook's manager.
///
/// # Safety
/// `runtime` is NULL or live; `config_json` is NULL or NUL-terminated; `host` is NULL or a
/// valid vtable whose functions and `user_data` stay valid for the session's life;
/// `session` is writable; `error_message` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_session_new(
    runtime: *const RuntimeHandle,
    config_json: *const c_char,
    host: *const HostVtable,
    session: *mut *mut SessionHandle,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        guard(error_message, || {
            if session.is_null() {
                return Err(Failure::bad_call("session is NULL"));
            }
            *session = std::ptr::null_mut();
            let runtime = runtime
                .as_ref()
                .ok_or_else(|| Failure::bad_call("runtime is NULL"))?;
            let vtable = *host
                .as_ref()
                .ok_or_else(|| Failure::bad_call("host is NULL"))?;
            let SessionConfig {
                config,
                charm_dir,
                hook_tools,
            } = parse_config(str_arg(config_json, "config_json")?)?;
            let missing = vtable.missing(hook_tools);
            if !missing.is_empty() {
                return Err(Failure::bad_call(format!(
                    "host functions missing: {}",
                    missing.join(", ")
                )));
            }
            let (host, charm_dir): (Box<dyn Host>, String) = if hook_tools {
                let env = JujuEnv::from_env().map_err(|e| Failure::new(code::HOST, e))?;
                let charm_dir =
                    charm_dir.unwrap_or_else(|| env.charm_dir.to_string_lossy().into_owned());
                let host = JujuHost::new(env, &config.base_dir, Box::new(CHost { vtable }));
                (Box::new(host), charm_dir)
            } else {
                (
                    Box::new(CHost { vtable }),
                    charm_dir.unwrap_or_else(|| ".".into()),
                )
            };
            let sandbox = Sandbox::new(charm_dir, config.base_dir.clone());
            let created = Session::new(&runtime.runtime, host, sandbox, &config)?;
            *session = Box::into_raw(Box::new(SessionHandle {
                busy: AtomicBool::new(false),
                inner: UnsafeCell::new(SessionState {
                    session: created,
                    broken: None,
                }),
            }));
            Ok(())
        })
    }
}

/// Free a session.
///
/// # Safety
/// `session` is NULL or a session from [`rollingops_session_new`], not freed before and not
/// inside a call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_session_free(session: *mut SessionHandle) {
    if session.is_null() {
        return;
    }
    // SAFETY: per this function's contract.
    let handle = unsafe { &*session };
    if handle.busy.load(Ordering::Acquire) {
        // Freed from inside its own call: leak rather than free memory in use.
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: it came from `Box::into_raw` above and is not in use.
        drop(unsafe { Box::from_raw(session) });
    }));
}

/// Run `f` on a session: one caller at a time, no unwinding out, and a session that trapped
/// or panicked stays refused.
///
/// # Safety
/// `session` is NULL or live; `error_message` is NULL or writable.
unsafe fn with_session(
    session: *mut SessionHandle,
    error_message: *mut *mut c_char,
    f: impl FnOnce(&mut Session) -> Result<(), Failure>,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        guard(error_message, || {
            let handle = session
                .as_ref()
                .ok_or_else(|| Failure::bad_call("session is NULL"))?;
            if handle
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                return Err(Failure::bad_call(
                    "the session is already inside a call (re-entrant or concurrent use)",
                ));
            }
            // SAFETY: `busy` gives this call exclusive access until it is cleared below.
            let state = &mut *handle.inner.get();
            let result = match &state.broken {
                Some(broken) => Err(Failure::new(
                    broken.code,
                    format!(
                        "the session is unusable after an earlier failure: {}",
                        broken.message
                    ),
                )),
                None => match catch_unwind(AssertUnwindSafe(|| f(&mut state.session))) {
                    Ok(result) => result,
                    Err(panic) => Err(Failure::new(code::PANIC, panic_text(panic.as_ref()))),
                },
            };
            if let Err(failure) = &result
                && state.broken.is_none()
                && matches!(failure.code, code::TRAP | code::PANIC)
            {
                state.broken = Some(failure.clone());
            }
            handle.busy.store(false, Ordering::Release);
            result
        })
    }
}

/// Write a returned string to `*out`.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn put_string(out: *mut *mut c_char, text: &str, what: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::bad_call(format!("{what} is NULL")));
    }
    // SAFETY: per the caller.
    unsafe { *out = c_string_lossy(text) };
    Ok(())
}

/// `request_async_lock`.
///
/// # Safety
/// `session` is NULL or live; strings are NULL or NUL-terminated; `max_retry` is NULL or
/// readable; `error_message` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_request_async_lock(
    session: *mut SessionHandle,
    callback_id: *const c_char,
    kwargs_json: *const c_char,
    max_retry: *const i64,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        with_session(session, error_message, |s| {
            let id = str_arg(callback_id, "callback_id")?;
            let kwargs = opt_str_arg(kwargs_json, "kwargs_json")?.unwrap_or("{}");
            let max_retry = max_retry.as_ref().copied();
            Ok(s.request_async_lock(id, kwargs, max_retry)?)
        })
    }
}

/// `request-lock`: queue with options.
///
/// # Safety
/// `session` is NULL or live; strings are NULL or NUL-terminated; `error_message` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_request_lock(
    session: *mut SessionHandle,
    callback_id: *const c_char,
    kwargs_json: *const c_char,
    options_json: *const c_char,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        with_session(session, error_message, |s| {
            let id = str_arg(callback_id, "callback_id")?;
            let kwargs = opt_str_arg(kwargs_json, "kwargs_json")?.unwrap_or("{}");
            let options = parse_request_options(opt_str_arg(options_json, "options_json")?)?;
            Ok(s.request_lock(id, kwargs, &options)?)
        })
    }
}

/// `set-policy` (leader only).
///
/// # Safety
/// `session` is NULL or live; `policy_json` is NULL or NUL-terminated; `error_message` is
/// NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_set_policy(
    session: *mut SessionHandle,
    policy_json: *const c_char,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        with_session(session, error_message, |s| {
            let policy = parse_policy(str_arg(policy_json, "policy_json")?)?;
            Ok(s.set_policy(&policy)?)
        })
    }
}

/// `set-rank`.
///
/// # Safety
/// `session` is NULL or live; `error_message` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_set_rank(
    session: *mut SessionHandle,
    rank: i64,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe { with_session(session, error_message, |s| Ok(s.set_rank(rank)?)) }
}

/// `control`: pause, resume, cancel, force-release.
///
/// # Safety
/// `session` is NULL or live; `control_json` is NULL or NUL-terminated; `changed` is NULL or
/// writable; `error_message` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_control(
    session: *mut SessionHandle,
    control_json: *const c_char,
    changed: *mut u32,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        with_session(session, error_message, |s| {
            let action = parse_control(str_arg(control_json, "control_json")?)?;
            let count = s.control(&action)?;
            if let Some(out) = changed.as_mut() {
                *out = count;
            }
            Ok(())
        })
    }
}

/// `start-roll` (leader only).
///
/// # Safety
/// `session` is NULL or live; strings are NULL or NUL-terminated; `generation` is NULL or
/// writable; `error_message` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_start_roll(
    session: *mut SessionHandle,
    callback_id: *const c_char,
    kwargs_json: *const c_char,
    options_json: *const c_char,
    generation: *mut u64,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        with_session(session, error_message, |s| {
            let id = str_arg(callback_id, "callback_id")?;
            let kwargs = opt_str_arg(kwargs_json, "kwargs_json")?.unwrap_or("{}");
            let roll = parse_roll(id, kwargs, opt_str_arg(options_json, "options_json")?)?;
            let started = s.start_roll(&roll)?;
            if let Some(out) = generation.as_mut() {
                *out = started;
            }
            Ok(())
        })
    }
}

/// Hand a hook to the manager.
///
/// # Safety
/// `session` is NULL or live; `event_json` is NULL or NUL-terminated; `error_message` is
/// NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_handle_event(
    session: *mut SessionHandle,
    event_json: *const c_char,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        with_session(session, error_message, |s| {
            let event = parse_event(str_arg(event_json, "event_json")?)?;
            Ok(s.handle_event(&event)?)
        })
    }
}

/// This unit's state as JSON.
///
/// # Safety
/// `session` is NULL or live; `state_json` is writable; `error_message` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_state(
    session: *mut SessionHandle,
    state_json: *mut *mut c_char,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        with_session(session, error_message, |s| {
            if state_json.is_null() {
                return Err(Failure::bad_call("state_json is NULL"));
            }
            *state_json = std::ptr::null_mut();
            let state = s.state()?;
            put_string(state_json, &encode_state(&state), "state_json")
        })
    }
}

/// `is_waiting` / `is_waiting_callback`.
///
/// # Safety
/// `session` is NULL or live; strings are NULL or NUL-terminated; `waiting` is writable;
/// `error_message` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_is_waiting(
    session: *mut SessionHandle,
    unit_name: *const c_char,
    callback_id: *const c_char,
    waiting: *mut bool,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        with_session(session, error_message, |s| {
            if waiting.is_null() {
                return Err(Failure::bad_call("waiting is NULL"));
            }
            let unit = opt_str_arg(unit_name, "unit_name")?;
            let id = opt_str_arg(callback_id, "callback_id")?;
            *waiting = s.is_waiting(unit, id)?;
            Ok(())
        })
    }
}

/// Acquire the synchronous lock.
///
/// # Safety
/// `session` is NULL or live; `backend_id` is NULL or NUL-terminated; `timeout_seconds` is
/// NULL or readable; `error_message` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_acquire_sync_lock(
    session: *mut SessionHandle,
    backend_id: *const c_char,
    timeout_seconds: *const u32,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        with_session(session, error_message, |s| {
            let id = str_arg(backend_id, "backend_id")?;
            Ok(s.acquire_sync_lock(id, timeout_seconds.as_ref().copied())?)
        })
    }
}

/// Release the synchronous lock.
///
/// # Safety
/// `session` is NULL or live; `backend_id` is NULL or NUL-terminated; `error_message` is NULL
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_release_sync_lock(
    session: *mut SessionHandle,
    backend_id: *const c_char,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        with_session(session, error_message, |s| {
            Ok(s.release_sync_lock(str_arg(backend_id, "backend_id")?)?)
        })
    }
}

/// The etcd worker loop.
///
/// # Safety
/// `session` is NULL or live; `error_message` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_run_worker(
    session: *mut SessionHandle,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe { with_session(session, error_message, |s| Ok(s.run_worker()?)) }
}

/// The JSON view of the lock and the queues.
///
/// # Safety
/// `session` is NULL or live; `describe_json` is writable; `error_message` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rollingops_describe(
    session: *mut SessionHandle,
    describe_json: *mut *mut c_char,
    error_message: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        with_session(session, error_message, |s| {
            if describe_json.is_null() {
                return Err(Failure::bad_call("describe_json is NULL"));
            }
            *describe_json = std::ptr::null_mut();
            let text = s.describe()?;
            put_string(describe_json, &text, "describe_json")
        })
    }
}

#[cfg(test)]
mod tests;
