//! `rollingops bridge`: the component over line-delimited JSON on stdin/stdout, for hosts
//! in languages that cannot embed a WebAssembly component. The protocol is documented in
//! `host/BRIDGE.md`; in short:
//!
//! * the client sends requests `{"id":…,"method":"create","params":{…}}` and gets exactly
//!   one `{"id":…,"result":…}` or `{"id":…,"error":{…}}` back;
//! * while a request runs, the component's imports arrive as
//!   `{"id":N,"import":"relation-get","params":{…}}`, each answered by the client with
//!   `{"id":N,"result":…}` or `{"id":N,"error":{…}}` before the request completes.
//!
//! With `--hook-tools` the bridge carries the Juju imports itself (hook tools, as in
//! [`crate::juju`]; `dispatch-after` as a detached sleep, then `juju-exec`) and forwards
//! only the charm's code: `run-callback` and `sync-backend-*`. The bridge decides nothing;
//! it translates.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use serde_json::{Map, Value, json};

use crate::bindings::juju::rollingops::charm::SyncBackendError;
use crate::bindings::juju::rollingops::types::{
    BagOwner, CallbackOutcome, Config, Control, Error as WitError, Event, LogLevel, Policy,
    ProcessingBackend, RequestOptions, RollRequest, State, Status,
};
use crate::charm::{DEFAULT_BASE_DIR, HookEnv};
use crate::host::Host;
use crate::juju::{CharmCode, JujuEnv, JujuHost};
use crate::runtime::{self, Runtime, Session};
use crate::sandbox::Sandbox;
use crate::worker_process::WorkerLaunch;

/// The protocol version announced in the `hello` line.
pub const PROTOCOL_VERSION: u64 = 2;

const AFTER_HELP: &str = "Examples:
  rollingops bridge                  every import is forwarded to the client
  rollingops bridge --hook-tools     Juju imports use the hook tools; only callbacks and
                                     sync-lock backends are forwarded

The protocol (one JSON object per line, both ways) is documented in host/BRIDGE.md.";

/// Serve the component over stdin/stdout.
#[derive(Debug, Parser)]
#[command(after_help = AFTER_HELP)]
pub struct BridgeCommand {
    /// Carry the Juju imports (identity, leadership, relation data, secrets, logs,
    /// dispatch, dispatch-after) with the hook tools; forward only run-callback and
    /// sync-backend-*.
    #[arg(long)]
    pub hook_tools: bool,
    /// Forward the clock too (`now-micros`, `sleep-ms`), for deterministic clients.
    #[arg(long)]
    pub client_clock: bool,
    /// The charm directory (for the sandbox; default `JUJU_CHARM_DIR` or `.`).
    #[arg(long)]
    pub charm_dir: Option<PathBuf>,
}

impl BridgeCommand {
    /// Serve until stdin closes.
    pub fn execute(self) -> anyhow::Result<bool> {
        let options = Options {
            hook_tools: self.hook_tools,
            client_clock: self.client_clock,
            charm_dir: self.charm_dir.unwrap_or_else(|| {
                std::env::var_os("JUJU_CHARM_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."))
            }),
        };
        let reader = BufReader::new(std::io::stdin());
        let writer = std::io::stdout();
        Bridge::new(options, Box::new(reader), Box::new(writer)).serve()?;
        Ok(true)
    }
}

/// How the bridge carries imports.
#[derive(Clone, Debug)]
pub struct Options {
    /// Juju imports through the hook tools.
    pub hook_tools: bool,
    /// Clock imports forwarded to the client.
    pub client_clock: bool,
    /// Charm directory for the sandbox.
    pub charm_dir: PathBuf,
}

/// The two pipes, shared by the request loop and the imports.
struct Io {
    reader: Box<dyn BufRead + Send>,
    writer: Box<dyn Write + Send>,
    next_import: u64,
    closed: bool,
}

/// Why an import failed.
struct ImportError {
    kind: Option<String>,
    message: String,
}

impl Io {
    fn send(&mut self, message: &Value) {
        let mut line = message.to_string();
        line.push('\n');
        if self.writer.write_all(line.as_bytes()).is_err() || self.writer.flush().is_err() {
            self.closed = true;
        }
    }

    /// The next message; `None` at end of input. Blank lines are skipped.
    fn receive(&mut self) -> Option<Result<Value, String>> {
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    self.closed = true;
                    return None;
                }
                Ok(_) if line.trim().is_empty() => continue,
                Ok(_) => {
                    return Some(
                        serde_json::from_str::<Value>(&line)
                            .map_err(|e| format!("not JSON: {e}"))
                            .and_then(|v| {
                                if v.is_object() {
                                    Ok(v)
                                } else {
                                    Err("not a JSON object".into())
                                }
                            }),
                    );
                }
            }
        }
    }

    /// Send an import to the client and wait for its reply. Requests that arrive
    /// meanwhile are refused (the component is busy); stray replies are reported on
    /// stderr and skipped.
    fn call(&mut self, import: &str, params: Value) -> Result<Value, ImportError> {
        if self.closed {
            return Err(ImportError {
                kind: None,
                message: "the bridge client has gone away".into(),
            });
        }
        self.next_import += 1;
        let id = self.next_import;
        self.send(&json!({"id": id, "import": import, "params": params}));
        loop {
            let message = match self.receive() {
                None => {
                    return Err(ImportError {
                        kind: None,
                        message: format!("the bridge client went away before answering {import}"),
                    });
                }
                Some(Err(why)) => {
                    self.send(&protocol_error(
                        Value::Null,
                        &format!("unreadable line: {why}"),
                    ));
                    continue;
                }
                Some(Ok(message)) => message,
            };
            if message.get("method").is_some() {
                let request_id = message.get("id").cloned().unwrap_or(Value::Null);
                self.send(&protocol_error(
                    request_id,
                    &format!("busy: waiting for the reply to import {id} ({import})"),
                ));
                continue;
            }
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                eprintln!(
                    "rollingops bridge: ignoring a reply that matches no pending import: {message}"
                );
                continue;
            }
            if let Some(error) = message.get("error") {
                return Err(match error {
                    Value::String(text) => ImportError {
                        kind: None,
                        message: text.clone(),
                    },
                    other => ImportError {
                        kind: other
                            .get("kind")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        message: other
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    },
                });
            }
            return Ok(message.get("result").cloned().unwrap_or(Value::Null));
        }
    }
}

type SharedIo = Arc<Mutex<Io>>;

fn call(io: &SharedIo, import: &str, params: Value) -> Result<Value, ImportError> {
    io.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .call(import, params)
}

fn protocol_error(id: Value, message: &str) -> Value {
    json!({"id": id, "error": {"kind": "protocol", "class": null, "message": message}})
}

/// A WIT error from an import error's `kind` (default `host`).
fn wit_error(import: &str, error: ImportError) -> WitError {
    let message = if error.message.is_empty() {
        format!("{import} failed")
    } else {
        error.message
    };
    match error.kind.as_deref() {
        Some("no-relation") => WitError::NoRelation(message),
        Some("file-system") => WitError::FileSystem(message),
        Some("invalid-lock-request") => WitError::InvalidLockRequest(message),
        Some("decoding") => WitError::Decoding(message),
        Some("invalid-secret-content") => WitError::InvalidSecretContent(message),
        Some("lib-missing") => WitError::LibMissing(message),
        Some("etcdctl") => WitError::Etcdctl(message),
        Some("etcd-not-configured") => WitError::EtcdNotConfigured(message),
        Some("sync-lock") => WitError::SyncLock(message),
        Some("timeout") => WitError::Timeout(message),
        Some("invalid-argument") => WitError::InvalidArgument(message),
        _ => WitError::Host(message),
    }
}

fn bad_reply(import: &str, result: &Value) -> WitError {
    WitError::Host(format!(
        "the client's reply to {import} is malformed: {result}"
    ))
}

fn string_pairs(import: &str, value: &Value) -> Result<Vec<(String, String)>, WitError> {
    let object = value.as_object().ok_or_else(|| bad_reply(import, value))?;
    object
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(bad_reply(import, value)),
        })
        .collect()
}

fn pairs_object(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warning => "warning",
        LogLevel::Error => "error",
    }
}

fn system_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

/// The charm's code, at the other end of the pipe.
struct ClientCharm {
    io: SharedIo,
}

impl CharmCode for ClientCharm {
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        let kwargs: Value = serde_json::from_str(kwargs_json).unwrap_or(Value::Null);
        let reply = call(
            &self.io,
            "run-callback",
            json!({"callback_id": id, "kwargs": kwargs}),
        );
        match reply {
            Err(error) => CallbackOutcome::Raised(format!(
                "the bridge client failed to run {id:?}: {}",
                error.message
            )),
            Ok(Value::String(missing)) if missing == "missing" => CallbackOutcome::Missing,
            Ok(result) => {
                if let Some(returned) = result.get("returned") {
                    CallbackOutcome::Returned(returned_value(returned))
                } else if let Some(raised) = result.get("raised") {
                    CallbackOutcome::Raised(match raised {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                } else if result.get("missing").is_some() {
                    CallbackOutcome::Missing
                } else {
                    CallbackOutcome::Raised(format!(
                        "the bridge client's reply to run-callback is malformed: {result}"
                    ))
                }
            }
        }
    }

    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError> {
        sync_reply(call(
            &self.io,
            "sync-backend-acquire",
            json!({"backend_id": id, "timeout_seconds": timeout_seconds}),
        ))
    }

    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError> {
        sync_reply(call(
            &self.io,
            "sync-backend-release",
            json!({"backend_id": id}),
        ))
    }
}

/// A callback's returned value as the component takes it: a string as is, a boolean as
/// `"true"`/`"false"` (what a health check returns), anything else as none.
fn returned_value(returned: &Value) -> Option<String> {
    match returned {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn sync_reply(reply: Result<Value, ImportError>) -> Result<(), SyncBackendError> {
    match reply {
        Ok(_) => Ok(()),
        Err(error) => Err(match error.kind.as_deref() {
            Some("timed-out") => SyncBackendError::TimedOut,
            Some("missing") => SyncBackendError::Missing,
            _ => SyncBackendError::Failed(error.message),
        }),
    }
}

/// Every import forwarded to the client.
struct ClientHost {
    io: SharedIo,
    charm: ClientCharm,
    client_clock: bool,
}

impl ClientHost {
    fn juju(&self, import: &str, params: Value) -> Result<Value, WitError> {
        call(&self.io, import, params).map_err(|e| wit_error(import, e))
    }
}

impl Host for ClientHost {
    fn unit_name(&mut self) -> String {
        match self.juju("unit-name", json!({})) {
            Ok(Value::String(name)) => name,
            _ => String::new(),
        }
    }

    fn model_uuid(&mut self) -> String {
        match self.juju("model-uuid", json!({})) {
            Ok(Value::String(uuid)) => uuid,
            _ => String::new(),
        }
    }

    fn is_leader(&mut self) -> Result<bool, WitError> {
        let result = self.juju("is-leader", json!({}))?;
        result
            .as_bool()
            .ok_or_else(|| bad_reply("is-leader", &result))
    }

    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, WitError> {
        let result = self.juju("relation-ids", json!({"endpoint": endpoint}))?;
        result
            .as_array()
            .and_then(|ids| {
                ids.iter()
                    .map(|id| id.as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect::<Option<Vec<u32>>>()
            })
            .ok_or_else(|| bad_reply("relation-ids", &result))
    }

    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, WitError> {
        let result = self.juju("relation-units", json!({"relation_id": relation_id}))?;
        result
            .as_array()
            .and_then(|units| {
                units
                    .iter()
                    .map(|u| u.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>()
            })
            .ok_or_else(|| bad_reply("relation-units", &result))
    }

    fn relation_get(
        &mut self,
        relation_id: u32,
        owner: &BagOwner,
    ) -> Result<Vec<(String, String)>, WitError> {
        let params = match owner {
            BagOwner::App => json!({"relation_id": relation_id, "app": true}),
            BagOwner::Unit(unit) => json!({"relation_id": relation_id, "unit": unit}),
        };
        let result = self.juju("relation-get", params)?;
        if result.is_null() {
            return Ok(vec![]);
        }
        string_pairs("relation-get", &result)
    }

    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), WitError> {
        self.juju(
            "relation-set",
            json!({"relation_id": relation_id, "app": app, "data": pairs_object(pairs)}),
        )
        .map(|_| ())
    }

    fn secret_get(&mut self, label_or_id: &str) -> Result<Option<Vec<(String, String)>>, WitError> {
        let result = self.juju("secret-get", json!({"label_or_id": label_or_id}))?;
        if result.is_null() {
            return Ok(None);
        }
        string_pairs("secret-get", &result).map(Some)
    }

    fn secret_add(
        &mut self,
        label: &str,
        content: &[(String, String)],
    ) -> Result<String, WitError> {
        let result = self.juju(
            "secret-add",
            json!({"label": label, "content": pairs_object(content)}),
        )?;
        result
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| bad_reply("secret-add", &result))
    }

    fn secret_grant(&mut self, id: &str, relation_id: u32) -> Result<(), WitError> {
        self.juju(
            "secret-grant",
            json!({"id": id, "relation_id": relation_id}),
        )
        .map(|_| ())
    }

    fn relation_get_remote_app(
        &mut self,
        relation_id: u32,
    ) -> Result<Vec<(String, String)>, WitError> {
        let result = self.juju(
            "relation-get-remote-app",
            json!({"relation_id": relation_id}),
        )?;
        if result.is_null() {
            return Ok(vec![]);
        }
        string_pairs("relation-get-remote-app", &result)
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        if let Err(e) = self.juju(
            "log",
            json!({"level": level_name(level), "message": message}),
        ) {
            eprintln!(
                "rollingops {}: {message} (log import failed: {e:?})",
                level_name(level)
            );
        }
    }

    fn dispatch(&mut self, event: &str) -> Result<(), WitError> {
        self.juju("dispatch", json!({"event": event})).map(|_| ())
    }

    fn dispatch_after(&mut self, event: &str, delay_ms: u32) -> Result<(), WitError> {
        self.juju(
            "dispatch-after",
            json!({"event": event, "delay_ms": delay_ms}),
        )
        .map(|_| ())
    }

    fn now_micros(&mut self) -> i64 {
        if !self.client_clock {
            return system_micros();
        }
        match self.juju("now-micros", json!({})) {
            Ok(value) => value.as_i64().unwrap_or_else(system_micros),
            Err(_) => system_micros(),
        }
    }

    fn sleep_ms(&mut self, ms: u64) {
        if self.client_clock {
            let _ = self.juju("sleep-ms", json!({"ms": ms}));
        } else {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }

    fn start_worker(&mut self) -> Result<(), WitError> {
        self.juju("start-worker", json!({})).map(|_| ())
    }

    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        self.charm.run_callback(id, kwargs_json)
    }

    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError> {
        self.charm.sync_backend_acquire(id, timeout_seconds)
    }

    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError> {
        self.charm.sync_backend_release(id)
    }
}

/// A manager and whether it can still be used (a trap ends it).
struct Managed {
    session: Session,
    peer_relation_name: String,
    etcd_relation_name: Option<String>,
    trapped: bool,
}

/// The request loop.
pub struct Bridge {
    io: SharedIo,
    options: Options,
    runtimes: BTreeMap<PathBuf, Runtime>,
    managers: BTreeMap<u64, Managed>,
    next_manager: u64,
}

/// A failed request, as sent back.
struct Failure(Value);

impl Failure {
    fn protocol(message: impl Into<String>) -> Self {
        Failure(json!({"kind": "protocol", "class": null, "message": message.into()}))
    }

    fn into_message(self) -> String {
        self.0["message"].as_str().unwrap_or_default().to_string()
    }
}

impl From<runtime::Error> for Failure {
    fn from(error: runtime::Error) -> Self {
        Failure(match &error {
            runtime::Error::Library(e) => json!({
                "kind": error_kind(e),
                "class": runtime::class(e),
                "message": runtime::message(e),
            }),
            runtime::Error::Load(_) => {
                json!({"kind": "load", "class": null, "message": error.to_string()})
            }
            runtime::Error::Trap(_) => {
                json!({"kind": "trap", "class": null, "message": error.to_string()})
            }
        })
    }
}

/// The WIT case name of a library error.
pub fn error_kind(error: &WitError) -> &'static str {
    crate::runtime::case_name(error)
}

fn params_str<'a>(params: &'a Value, key: &str) -> Result<&'a str, Failure> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::protocol(format!("params.{key} must be a string")))
}

fn params_opt_str(params: &Value, key: &str) -> Result<Option<String>, Failure> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Failure::protocol(format!(
            "params.{key} must be a string or null"
        ))),
    }
}

fn params_strings(params: &Value, key: &str) -> Result<Vec<String>, Failure> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Failure::protocol(format!("params.{key} must be a list of strings"))),
        Some(_) => Err(Failure::protocol(format!(
            "params.{key} must be a list of strings"
        ))),
    }
}

fn params_opt_u32(params: &Value, key: &str) -> Result<Option<u32>, Failure> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                Failure::protocol(format!("params.{key} must be a whole number or null"))
            }),
    }
}

fn params_opt_i64(params: &Value, key: &str) -> Result<Option<i64>, Failure> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| Failure::protocol(format!("params.{key} must be an integer or null"))),
    }
}

fn params_bool(params: &Value, key: &str, default: bool) -> Result<bool, Failure> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Failure::protocol(format!(
            "params.{key} must be a boolean or null"
        ))),
    }
}

/// The kwargs of a request: a JSON object, as text (default `{}`); the component checks
/// that it is an object.
fn params_kwargs(params: &Value) -> String {
    params
        .get("kwargs")
        .cloned()
        .unwrap_or(json!({}))
        .to_string()
}

/// Parse `request-lock`'s options (the params beside `callback_id` and `kwargs`).
pub fn parse_request_options(params: &Value) -> Result<RequestOptions, String> {
    let parse = || -> Result<RequestOptions, Failure> {
        Ok(RequestOptions {
            max_retry: params_opt_i64(params, "max_retry")?,
            health_check: params_opt_str(params, "health_check")?,
            health_timeout_seconds: params_opt_u32(params, "health_timeout_seconds")?,
            generation_kwarg: params_opt_str(params, "generation_kwarg")?,
        })
    };
    parse().map_err(Failure::into_message)
}

/// Parse `set-policy`'s params; absent keys take the WIT defaults.
pub fn parse_policy(params: &Value) -> Result<Policy, String> {
    let parse = || -> Result<Policy, Failure> {
        Ok(Policy {
            max_concurrent: params_opt_u32(params, "max_concurrent")?.unwrap_or(1),
            grant_timeout_seconds: params_opt_u32(params, "grant_timeout_seconds")?,
            rank_ordering: params_bool(params, "rank_ordering", false)?,
            halt_on_health_failure: params_bool(params, "halt_on_health_failure", true)?,
        })
    };
    parse().map_err(Failure::into_message)
}

/// Parse `control`'s params: `{"action":"pause","reason":S}`, `{"action":"resume"}`,
/// `{"action":"cancel","callback_id":S?}`, `{"action":"force-release","unit":S?}`.
pub fn parse_control(params: &Value) -> Result<Control, String> {
    let parse = || -> Result<Control, Failure> {
        let action = params_str(params, "action")?;
        Ok(match action {
            "pause" => Control::Pause(params_opt_str(params, "reason")?.unwrap_or_default()),
            "resume" => Control::Resume,
            "cancel" => Control::Cancel(params_opt_str(params, "callback_id")?),
            "force-release" => Control::ForceRelease(params_opt_str(params, "unit")?),
            other => {
                return Err(Failure::protocol(format!(
                    "unknown control action {other:?} (pause, resume, cancel, force-release)"
                )));
            }
        })
    };
    parse().map_err(Failure::into_message)
}

/// Parse `start-roll`'s params.
pub fn parse_roll(params: &Value) -> Result<RollRequest, String> {
    let parse = || -> Result<RollRequest, Failure> {
        Ok(RollRequest {
            callback_id: params_str(params, "callback_id")?.to_string(),
            kwargs_json: params_kwargs(params),
            health_check: params_opt_str(params, "health_check")?,
            health_timeout_seconds: params_opt_u32(params, "health_timeout_seconds")?,
            on_complete: params_opt_str(params, "on_complete")?,
        })
    };
    parse().map_err(Failure::into_message)
}

/// Parse `create`'s `config`.
pub fn parse_config(value: &Value) -> Result<Config, String> {
    let config = value.get("config").unwrap_or(value);
    let parse = || -> Result<Config, Failure> {
        Ok(Config {
            peer_relation_name: params_str(config, "peer_relation_name")?.to_string(),
            etcd_relation_name: params_opt_str(config, "etcd_relation_name")?,
            cluster_id: params_opt_str(config, "cluster_id")?,
            base_dir: params_opt_str(config, "base_dir")?
                .unwrap_or_else(|| DEFAULT_BASE_DIR.to_string()),
            callback_ids: params_strings(config, "callback_ids")?,
            sync_lock_ids: params_strings(config, "sync_lock_ids")?,
        })
    };
    parse().map_err(Failure::into_message)
}

/// Parse an event: `{"event":"peer-relation-departed","unit":"app/2"}` and friends.
pub fn parse_event(params: &Value) -> Result<Event, String> {
    let name = params
        .get("event")
        .and_then(Value::as_str)
        .ok_or("params.event must be a string")?;
    let text = |key: &str| {
        params
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(format!("params.{key} must be a string for {name}"))
    };
    Ok(match name {
        "peer-relation-changed" => Event::PeerRelationChanged,
        "peer-relation-departed" => Event::PeerRelationDeparted(text("unit")?),
        "leader-elected" => Event::LeaderElected,
        "update-status" => Event::UpdateStatus,
        "lock-granted" => Event::LockGranted,
        "etcd-failed" => Event::EtcdFailed,
        "etcd-relation-created" => Event::EtcdRelationCreated,
        "etcd-relation-changed" => Event::EtcdRelationChanged,
        "etcd-relation-broken" => Event::EtcdRelationBroken,
        "secret-changed" => Event::SecretChanged(text("label")?),
        other => return Err(format!("unknown event {other:?}")),
    })
}

/// An event as the protocol writes it.
pub fn event_json(event: &Event) -> Value {
    match event {
        Event::PeerRelationChanged => json!({"event": "peer-relation-changed"}),
        Event::PeerRelationDeparted(unit) => {
            json!({"event": "peer-relation-departed", "unit": unit})
        }
        Event::LeaderElected => json!({"event": "leader-elected"}),
        Event::UpdateStatus => json!({"event": "update-status"}),
        Event::LockGranted => json!({"event": "lock-granted"}),
        Event::EtcdFailed => json!({"event": "etcd-failed"}),
        Event::EtcdRelationCreated => json!({"event": "etcd-relation-created"}),
        Event::EtcdRelationChanged => json!({"event": "etcd-relation-changed"}),
        Event::EtcdRelationBroken => json!({"event": "etcd-relation-broken"}),
        Event::SecretChanged(label) => json!({"event": "secret-changed", "label": label}),
    }
}

fn state_json(state: &State) -> Value {
    json!({
        "status": match state.status {
            Status::NotReady => "not-ready",
            Status::Waiting => "waiting",
            Status::Granted => "granted",
            Status::Idle => "idle",
        },
        "processing_backend": match state.processing_backend {
            ProcessingBackend::Peer => "peer",
            ProcessingBackend::Etcd => "etcd",
        },
    })
}

impl Bridge {
    /// A bridge over a reader and a writer.
    pub fn new(
        options: Options,
        reader: Box<dyn BufRead + Send>,
        writer: Box<dyn Write + Send>,
    ) -> Self {
        Bridge {
            io: Arc::new(Mutex::new(Io {
                reader,
                writer,
                next_import: 0,
                closed: false,
            })),
            options,
            runtimes: BTreeMap::new(),
            managers: BTreeMap::new(),
            next_manager: 0,
        }
    }

    fn send(&self, message: &Value) {
        self.io
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(message);
    }

    /// Announce the protocol, then answer requests until the input ends.
    pub fn serve(mut self) -> std::io::Result<()> {
        self.send(&json!({
            "hello": "rollingops-bridge",
            "protocol": PROTOCOL_VERSION,
            "version": env!("CARGO_PKG_VERSION"),
            "hook_tools": self.options.hook_tools,
            "client_clock": self.options.client_clock,
        }));
        loop {
            let next = self.io.lock().unwrap_or_else(|p| p.into_inner()).receive();
            let message = match next {
                None => return Ok(()),
                Some(Err(why)) => {
                    self.send(&protocol_error(
                        Value::Null,
                        &format!("unreadable line: {why}"),
                    ));
                    continue;
                }
                Some(Ok(message)) => message,
            };
            let id = message.get("id").cloned().unwrap_or(Value::Null);
            let Some(method) = message.get("method").and_then(Value::as_str) else {
                if message.get("result").is_some() || message.get("error").is_some() {
                    eprintln!("rollingops bridge: ignoring a reply outside any import: {message}");
                } else {
                    self.send(&protocol_error(id, "a request needs a \"method\""));
                }
                continue;
            };
            let params = message.get("params").cloned().unwrap_or(json!({}));
            let reply = match self.handle(method, &params) {
                Ok(result) => json!({"id": id, "result": result}),
                Err(Failure(error)) => json!({"id": id, "error": error}),
            };
            self.send(&reply);
            if self.io.lock().unwrap_or_else(|p| p.into_inner()).closed {
                return Ok(());
            }
        }
    }

    fn runtime(&mut self, base_dir: &str) -> Result<&Runtime, Failure> {
        let key = PathBuf::from(base_dir);
        if !self.runtimes.contains_key(&key) {
            let runtime = Runtime::new(Some(&key))?;
            self.runtimes.insert(key.clone(), runtime);
        }
        Ok(&self.runtimes[&key])
    }

    fn create(&mut self, params: &Value) -> Result<Value, Failure> {
        let config = parse_config(params).map_err(Failure::protocol)?;
        let io = self.io.clone();
        let options = self.options.clone();
        let sandbox = Sandbox::new(options.charm_dir.clone(), PathBuf::from(&config.base_dir));
        let host: Box<dyn Host> = if options.hook_tools {
            let env = JujuEnv::from_env().map_err(|e| {
                Failure(json!({"kind": "host", "class": "RollingOpsError", "message": e}))
            })?;
            let host = JujuHost::new(
                env,
                PathBuf::from(&config.base_dir),
                Box::new(ClientCharm { io }),
            );
            // This binary is a `rollingops`: it can be the unit's etcd worker too.
            match std::env::current_exe() {
                Ok(program) => Box::new(host.with_worker(WorkerLaunch {
                    program,
                    peer_relation: config.peer_relation_name.clone(),
                    etcd_relation: config.etcd_relation_name.clone(),
                    cluster_id: config.cluster_id.clone(),
                })),
                Err(_) => Box::new(host),
            }
        } else {
            Box::new(ClientHost {
                io: io.clone(),
                charm: ClientCharm { io },
                client_clock: options.client_clock,
            })
        };
        let runtime = self.runtime(&config.base_dir)?;
        let session = Session::new(runtime, host, sandbox, &config)?;
        self.next_manager += 1;
        self.managers.insert(
            self.next_manager,
            Managed {
                session,
                peer_relation_name: config.peer_relation_name,
                etcd_relation_name: config.etcd_relation_name,
                trapped: false,
            },
        );
        Ok(json!({"manager": self.next_manager}))
    }

    fn manager(&mut self, params: &Value) -> Result<&mut Managed, Failure> {
        let handle = params
            .get("manager")
            .and_then(Value::as_u64)
            .ok_or_else(|| Failure::protocol("params.manager must be a manager handle"))?;
        let managed = self
            .managers
            .get_mut(&handle)
            .ok_or_else(|| Failure::protocol(format!("no manager {handle}")))?;
        if managed.trapped {
            return Err(Failure(json!({
                "kind": "trap", "class": null,
                "message": format!("manager {handle} trapped earlier; create a new one"),
            })));
        }
        Ok(managed)
    }

    fn handle(&mut self, method: &str, params: &Value) -> Result<Value, Failure> {
        match method {
            "create" => return self.create(params),
            "drop" => {
                let handle = params.get("manager").and_then(Value::as_u64).unwrap_or(0);
                return match self.managers.remove(&handle) {
                    Some(_) => Ok(Value::Null),
                    None => Err(Failure::protocol(format!("no manager {handle}"))),
                };
            }
            "version" => {
                return Ok(
                    json!({"protocol": PROTOCOL_VERSION, "version": env!("CARGO_PKG_VERSION")}),
                );
            }
            _ => {}
        }
        let managed = self.manager(params)?;
        let result = Self::call(managed, method, params);
        if let Err(Failure(error)) = &result
            && error["kind"] == "trap"
        {
            managed.trapped = true;
        }
        result
    }

    fn call(managed: &mut Managed, method: &str, params: &Value) -> Result<Value, Failure> {
        let session = &mut managed.session;
        match method {
            "request-async-lock" => {
                let callback_id = params_str(params, "callback_id")?;
                let kwargs = params.get("kwargs").cloned().unwrap_or(json!({}));
                let max_retry = match params.get("max_retry") {
                    None | Some(Value::Null) => None,
                    Some(value) => Some(value.as_i64().ok_or_else(|| {
                        Failure::protocol("params.max_retry must be an integer or null")
                    })?),
                };
                session.request_async_lock(callback_id, &kwargs.to_string(), max_retry)?;
                Ok(Value::Null)
            }
            "request-lock" => {
                let callback_id = params_str(params, "callback_id")?;
                let options = parse_request_options(params).map_err(Failure::protocol)?;
                session.request_lock(callback_id, &params_kwargs(params), &options)?;
                Ok(Value::Null)
            }
            "set-policy" => {
                let policy = parse_policy(params).map_err(Failure::protocol)?;
                session.set_policy(&policy)?;
                Ok(Value::Null)
            }
            "set-rank" => {
                let rank = params
                    .get("rank")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| Failure::protocol("params.rank must be an integer"))?;
                session.set_rank(rank)?;
                Ok(Value::Null)
            }
            "control" => {
                let action = parse_control(params).map_err(Failure::protocol)?;
                Ok(json!(session.control(&action)?))
            }
            "start-roll" => {
                let roll = parse_roll(params).map_err(Failure::protocol)?;
                Ok(json!(session.start_roll(&roll)?))
            }
            "handle-event" => {
                let event = parse_event(params).map_err(Failure::protocol)?;
                session.handle_event(&event)?;
                Ok(Value::Null)
            }
            "handle-hook" => {
                let hook = match params.get("env") {
                    None | Some(Value::Null) => HookEnv::from_env(),
                    Some(Value::Object(env)) => {
                        let env: Map<String, Value> = env.clone();
                        HookEnv::from_vars(|key| {
                            env.get(key).and_then(Value::as_str).map(str::to_string)
                        })
                    }
                    Some(_) => return Err(Failure::protocol("params.env must be an object")),
                };
                let event = hook.event(
                    &managed.peer_relation_name,
                    managed.etcd_relation_name.as_deref(),
                );
                match event {
                    None => Ok(json!({"event": null})),
                    Some(event) => {
                        session.handle_event(&event)?;
                        Ok(event_json(&event))
                    }
                }
            }
            "state" => Ok(state_json(&session.state()?)),
            "is-waiting" => {
                let unit = params_opt_str(params, "unit_name")?;
                let callback = params_opt_str(params, "callback_id")?;
                Ok(Value::Bool(
                    session.is_waiting(unit.as_deref(), callback.as_deref())?,
                ))
            }
            "acquire-sync-lock" => {
                let backend = params_str(params, "backend_id")?;
                let timeout = params_opt_u32(params, "timeout_seconds")?;
                session.acquire_sync_lock(backend, timeout)?;
                Ok(Value::Null)
            }
            "release-sync-lock" => {
                session.release_sync_lock(params_str(params, "backend_id")?)?;
                Ok(Value::Null)
            }
            "describe" => {
                let text = session.describe()?;
                serde_json::from_str(&text).map_err(|e| {
                    Failure::protocol(format!("describe() returned invalid JSON: {e}"))
                })
            }
            "run-worker" => {
                session.run_worker()?;
                Ok(Value::Null)
            }
            other => Err(Failure::protocol(format!("unknown method {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_json_form() {
        let events = [
            Event::PeerRelationChanged,
            Event::PeerRelationDeparted("app/2".into()),
            Event::LeaderElected,
            Event::UpdateStatus,
            Event::LockGranted,
            Event::EtcdFailed,
            Event::EtcdRelationCreated,
            Event::EtcdRelationChanged,
            Event::EtcdRelationBroken,
            Event::SecretChanged("certs".into()),
        ];
        for event in events {
            let back = parse_event(&event_json(&event)).unwrap();
            assert_eq!(format!("{back:?}"), format!("{event:?}"));
        }
        assert!(parse_event(&json!({"event": "peer-relation-departed"})).is_err());
        assert!(parse_event(&json!({"event": "bogus"})).is_err());
    }

    #[test]
    fn issue_8_params_parse_with_their_defaults() {
        let options = parse_request_options(&json!({"callback_id": "x"})).unwrap();
        assert_eq!(
            format!("{options:?}"),
            format!(
                "{:?}",
                RequestOptions {
                    max_retry: None,
                    health_check: None,
                    health_timeout_seconds: None,
                    generation_kwarg: None,
                }
            )
        );
        let options = parse_request_options(&json!({"max_retry": -1, "health_check": "h",
            "health_timeout_seconds": 5, "generation_kwarg": "g"}))
        .unwrap();
        assert_eq!(options.max_retry, Some(-1));
        assert_eq!(options.health_timeout_seconds, Some(5));
        assert!(parse_request_options(&json!({"health_timeout_seconds": -1})).is_err());
        assert!(parse_request_options(&json!({"max_retry": 1.5})).is_err());

        let policy = parse_policy(&json!({})).unwrap();
        assert_eq!(
            (
                policy.max_concurrent,
                policy.grant_timeout_seconds,
                policy.rank_ordering,
                policy.halt_on_health_failure
            ),
            (1, None, false, true)
        );
        assert!(parse_policy(&json!({"rank_ordering": 1})).is_err());

        let control = |params: Value| format!("{:?}", parse_control(&params).unwrap());
        assert_eq!(
            control(json!({"action": "pause", "reason": "why"})),
            format!("{:?}", Control::Pause("why".into()))
        );
        assert_eq!(
            control(json!({"action": "pause"})),
            format!("{:?}", Control::Pause(String::new()))
        );
        assert_eq!(
            control(json!({"action": "resume"})),
            format!("{:?}", Control::Resume)
        );
        assert_eq!(
            control(json!({"action": "cancel", "callback_id": "restart"})),
            format!("{:?}", Control::Cancel(Some("restart".into())))
        );
        assert_eq!(
            control(json!({"action": "force-release"})),
            format!("{:?}", Control::ForceRelease(None))
        );
        assert!(parse_control(&json!({"action": "stop"})).is_err());
        assert!(parse_control(&json!({"action": "cancel", "callback_id": 3})).is_err());

        let roll = parse_roll(&json!({"callback_id": "restart", "on_complete": "done"})).unwrap();
        assert_eq!(roll.kwargs_json, "{}");
        assert_eq!(roll.on_complete.as_deref(), Some("done"));
        assert!(parse_roll(&json!({})).is_err());
    }

    #[test]
    fn returned_booleans_become_health_answers() {
        assert_eq!(returned_value(&json!(true)).as_deref(), Some("true"));
        assert_eq!(returned_value(&json!(false)).as_deref(), Some("false"));
        assert_eq!(
            returned_value(&json!("retry-hold")).as_deref(),
            Some("retry-hold")
        );
        assert_eq!(returned_value(&json!(3)), None);
        assert_eq!(returned_value(&Value::Null), None);
    }

    #[test]
    fn config_defaults_and_checks() {
        let config = parse_config(&json!({"config": {"peer_relation_name": "restart"}})).unwrap();
        assert_eq!(config.base_dir, DEFAULT_BASE_DIR);
        assert!(config.callback_ids.is_empty());
        assert!(parse_config(&json!({"config": {}})).is_err());
        assert!(
            parse_config(&json!({"config": {"peer_relation_name": "r", "callback_ids": [1]}}))
                .is_err()
        );
    }
}
