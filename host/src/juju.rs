//! The Juju hook tools, wrapped 1:1, and [`JujuHost`]: the [`Host`] a charm uses in a
//! real unit.
//!
//! Every function below runs one hook tool, found on `PATH` as Juju puts them there for a
//! hook, with the arguments `ops` uses (`--format=json` everywhere, `relation-set --file -`
//! with JSON on stdin so large values never meet the command line, secret content through
//! `key#file=` arguments). All of them go through one [`run`], which turns any failure
//! into a [`HookToolError`] carrying the command line, the exit code and the tool's
//! stderr; [`JujuHost`] hands it to the component as the WIT `host` error. Nothing here
//! panics on a tool's behaviour.
//!
//! [`JujuHost`] decides nothing: it maps each import onto one tool call (or, for
//! `dispatch`, one detached `juju-exec`) and reports the outcome verbatim.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::bindings::juju::rollingops::charm::SyncBackendError;
use crate::bindings::juju::rollingops::types::{
    BagOwner, CallbackOutcome, Error as WitError, LogLevel,
};
use crate::host::Host;
use crate::worker_process::{self, WorkerLaunch};

/// The file under `base_dir` that receives the output of dispatched `juju-exec` runs
/// (the same name the Python host uses).
pub const DISPATCH_LOG: &str = "rollingops_dispatch.log";

/// Where machine and Kubernetes agents install `juju-exec` when it is not on `PATH`.
const JUJU_EXEC_FALLBACKS: [&str; 2] = ["/usr/bin/juju-exec", "/charm/bin/juju-exec"];

/// A hook tool failed: it could not start, exited non-zero, was killed, or printed
/// something that is not what Juju prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookToolError {
    /// The command line, as a person would type it.
    pub cmd: String,
    /// The exit code; `None` when the tool could not start or was killed by a signal.
    pub code: Option<i32>,
    /// The tool's stderr (trimmed), or what went wrong around it.
    pub stderr: String,
}

impl HookToolError {
    /// Whether the tool reported that the thing asked for does not exist (`secret-get`
    /// of an unknown secret says `ERROR secret "…" not found`).
    pub fn is_not_found(&self) -> bool {
        self.code.is_some_and(|c| c != 0) && self.stderr.contains("not found")
    }
}

impl fmt::Display for HookToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "`{}` failed (exit {code}): {}", self.cmd, self.stderr),
            None => write!(f, "`{}` failed: {}", self.cmd, self.stderr),
        }
    }
}

impl std::error::Error for HookToolError {}

impl From<HookToolError> for WitError {
    fn from(error: HookToolError) -> Self {
        WitError::Host(error.to_string())
    }
}

fn command_line(tool: &str, args: &[&str]) -> String {
    let mut line = tool.to_string();
    for arg in args {
        line.push(' ');
        if !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=./:#@%+,".contains(c))
        {
            line.push_str(arg);
        } else {
            line.push_str(&shell_quote(arg));
        }
    }
    line
}

/// Quote `text` for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Run one hook tool (found on `PATH`) with `args` and optional stdin; its stdout on
/// success, a [`HookToolError`] otherwise.
pub fn run(tool: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, HookToolError> {
    let fail = |code: Option<i32>, stderr: String| HookToolError {
        cmd: command_line(tool, args),
        code,
        stderr,
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            fail(
                None,
                if e.kind() == std::io::ErrorKind::NotFound {
                    format!("{tool} not found on PATH: is this running inside a Juju hook?")
                } else {
                    format!("cannot start {tool}: {e}")
                },
            )
        })?;
    // Feed stdin from a thread so a tool that writes before it reads cannot deadlock us.
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || pipe.write_all(&data)))
        }
        _ => None,
    };
    let output = child
        .wait_with_output()
        .map_err(|e| fail(None, format!("waiting for {tool}: {e}")))?;
    let stdin_result = writer.map(|w| w.join());
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if !output.status.success() {
        return Err(match output.status.code() {
            Some(code) => fail(Some(code), stderr),
            None => {
                use std::os::unix::process::ExitStatusExt;
                let signal = output.status.signal().unwrap_or(0);
                fail(None, format!("killed by signal {signal}. {stderr}"))
            }
        });
    }
    match stdin_result {
        Some(Ok(Err(e))) => return Err(fail(Some(0), format!("writing its stdin: {e}"))),
        Some(Err(_)) => return Err(fail(Some(0), "writing its stdin failed".into())),
        _ => {}
    }
    String::from_utf8(output.stdout).map_err(|_| fail(Some(0), "its output is not UTF-8".into()))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    tool: &str,
    args: &[&str],
    stdout: &str,
) -> Result<T, HookToolError> {
    serde_json::from_str(stdout).map_err(|e| HookToolError {
        cmd: command_line(tool, args),
        code: Some(0),
        stderr: format!("unexpected output {:?}: {e}", truncate(stdout, 200)),
    })
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

fn run_json<T: serde::de::DeserializeOwned>(tool: &str, args: &[&str]) -> Result<T, HookToolError> {
    let stdout = run(tool, args, None)?;
    parse_json(tool, args, &stdout)
}

/// `is-leader --format=json`.
pub fn is_leader() -> Result<bool, HookToolError> {
    run_json("is-leader", &["--format=json"])
}

/// `relation-ids <endpoint> --format=json`: ids such as `restart:3`.
pub fn relation_ids(endpoint: &str) -> Result<Vec<String>, HookToolError> {
    run_json("relation-ids", &[endpoint, "--format=json"])
}

/// `relation-list --format=json -r <relation>`: the remote units.
pub fn relation_list(relation: &str) -> Result<Vec<String>, HookToolError> {
    run_json("relation-list", &["--format=json", "-r", relation])
}

/// `relation-list --format=json --app -r <relation>`: the remote application's name
/// (empty before it has joined).
pub fn relation_list_app(relation: &str) -> Result<String, HookToolError> {
    let name: Option<String> =
        run_json("relation-list", &["--format=json", "--app", "-r", relation])?;
    Ok(name.unwrap_or_default())
}

/// `relation-get --format=json -r <relation> [--app] - <member>`: a whole bag. `member`
/// is a unit name, or with `app` an application name.
pub fn relation_get(
    relation: &str,
    member: &str,
    app: bool,
) -> Result<BTreeMap<String, String>, HookToolError> {
    let mut args = vec!["--format=json", "-r", relation];
    if app {
        args.push("--app");
    }
    args.extend(["-", member]);
    // Juju prints `null` for a bag it has nothing for.
    let bag: Option<BTreeMap<String, String>> = run_json("relation-get", &args)?;
    Ok(bag.unwrap_or_default())
}

/// `relation-set -r <relation> [--app] --file -` with the pairs as JSON on stdin; an
/// empty value deletes its key.
pub fn relation_set(
    relation: &str,
    app: bool,
    pairs: &[(String, String)],
) -> Result<(), HookToolError> {
    let mut args = vec!["-r", relation];
    if app {
        args.push("--app");
    }
    args.extend(["--file", "-"]);
    let data: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let body = Value::Object(data).to_string();
    run("relation-set", &args, Some(body.as_bytes())).map(|_| ())
}

/// `secret-get --format=json [<id>] [--label <label>]`.
pub fn secret_get(
    id: Option<&str>,
    label: Option<&str>,
) -> Result<BTreeMap<String, String>, HookToolError> {
    let mut args = vec!["--format=json"];
    if let Some(id) = id {
        args.push(id);
    }
    if let Some(label) = label {
        args.extend(["--label", label]);
    }
    run_json("secret-get", &args)
}

/// Content as `key#file=<path>` arguments, so secret values never appear on a command
/// line; the files live in a private temporary directory removed afterwards.
fn with_content_files<T>(
    tool: &str,
    content: &[(String, String)],
    f: impl FnOnce(Vec<String>) -> Result<T, HookToolError>,
) -> Result<T, HookToolError> {
    use std::os::unix::fs::DirBuilderExt;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rollingops-{tool}-{}-{n}", std::process::id()));
    let fail = |e: std::io::Error| HookToolError {
        cmd: tool.to_string(),
        code: None,
        stderr: format!("cannot stage the content in {}: {e}", dir.display()),
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(fail)?;
    let result = (|| {
        let mut args = Vec::new();
        for (index, (key, value)) in content.iter().enumerate() {
            let path = dir.join(format!("{index}"));
            std::fs::write(&path, value).map_err(fail)?;
            args.push(format!("{key}#file={}", path.display()));
        }
        f(args)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `secret-add --label <label> --owner application key#file=…`: the new secret's id.
pub fn secret_add(label: &str, content: &[(String, String)]) -> Result<String, HookToolError> {
    with_content_files("secret-add", content, |files| {
        let mut args = vec!["--label", label, "--owner", "application"];
        args.extend(files.iter().map(String::as_str));
        Ok(run("secret-add", &args, None)?.trim().to_string())
    })
}

/// `secret-grant <id> -r <relation>`: let the remote application read the secret.
pub fn secret_grant(id: &str, relation: &str) -> Result<(), HookToolError> {
    run("secret-grant", &[id, "-r", relation], None).map(|_| ())
}

/// `secret-set <id> key#file=…`: replace a secret's content.
pub fn secret_set(id: &str, content: &[(String, String)]) -> Result<(), HookToolError> {
    with_content_files("secret-set", content, |files| {
        let mut args = vec![id];
        args.extend(files.iter().map(String::as_str));
        run("secret-set", &args, None).map(|_| ())
    })
}

/// `juju-log --log-level <LEVEL> -- <message>`.
pub fn juju_log(level: &str, message: &str) -> Result<(), HookToolError> {
    run("juju-log", &["--log-level", level, "--", message], None).map(|_| ())
}

/// `config-get --format=json [<key>]`.
pub fn config_get(key: Option<&str>) -> Result<Value, HookToolError> {
    let mut args = vec!["--format=json"];
    args.extend(key);
    run_json("config-get", &args)
}

/// `action-get --format=json`: the running action's parameters.
pub fn action_get() -> Result<Value, HookToolError> {
    run_json("action-get", &["--format=json"])
}

/// `juju-exec` on `PATH`, else where the agents install it.
pub fn find_juju_exec() -> Option<PathBuf> {
    find_on_path("juju-exec").or_else(|| {
        JUJU_EXEC_FALLBACKS
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p))
    })
}

/// The first executable file called `name` in `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `event` may name a dispatched hook: it ends up in a shell command line.
pub fn valid_hook_name(event: &str) -> bool {
    let mut chars = event.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && event.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The shell command `juju-exec` runs: `JUJU_DISPATCH_PATH=hooks/<event> <charm_dir>/dispatch`.
pub fn dispatch_command(charm_dir: &Path, event: &str) -> String {
    let dispatch = charm_dir.join("dispatch");
    let dispatch = dispatch.to_string_lossy();
    let quoted = if dispatch
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        dispatch.to_string()
    } else {
        shell_quote(&dispatch)
    };
    format!("JUJU_DISPATCH_PATH=hooks/{event} {quoted}")
}

/// `juju-exec -u <unit> "JUJU_DISPATCH_PATH=hooks/<event> <charm_dir>/dispatch"`, started
/// detached: a new session, no stdin, stdout and stderr appended to `log`, the hook's
/// environment without `JUJU_CONTEXT_ID`. It returns at once; `juju-exec` itself waits for
/// the unit's hook lock, so the new hook runs after the current one. Returns the pid.
///
/// With a `delay_ms`, the detached process first waits (`/bin/sh -c 'sleep …; exec …'`),
/// so the hook that asked never sleeps.
pub fn spawn_juju_exec(
    juju_exec: &Path,
    unit: &str,
    charm_dir: &Path,
    event: &str,
    log: &Path,
    delay_ms: u32,
) -> std::io::Result<u32> {
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = if delay_ms == 0 {
        Command::new(juju_exec)
    } else {
        let mut sh = Command::new("/bin/sh");
        sh.args(["-c", "sleep \"$0\" && exec \"$@\""])
            .arg(format!("{}.{:03}", delay_ms / 1000, delay_ms % 1000))
            .arg(juju_exec);
        sh
    };
    command
        .args([OsStr::new("-u"), OsStr::new(unit)])
        .arg(dispatch_command(charm_dir, event))
        .env_remove("JUJU_CONTEXT_ID")
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    if charm_dir.is_dir() {
        command.current_dir(charm_dir);
    }
    // SAFETY: `setsid` is async-signal-safe and touches no memory of the parent; it only
    // moves the child into a new session so that it outlives the hook's process group.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id();
    // Reap it if this process lives long enough (the bridge); a hook process exits first
    // and the child is re-parented.
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

/// Who this unit is, read from the hook's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JujuEnv {
    /// `JUJU_UNIT_NAME`, e.g. `app/0`.
    pub unit_name: String,
    /// `JUJU_MODEL_UUID`.
    pub model_uuid: String,
    /// `JUJU_CHARM_DIR`: where `dispatch` lives.
    pub charm_dir: PathBuf,
}

impl JujuEnv {
    /// Read the identity from the process environment.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    /// Read the identity through `var` (a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let unit_name = var("JUJU_UNIT_NAME").filter(|u| !u.is_empty()).ok_or(
            "JUJU_UNIT_NAME is not set: run this inside a Juju hook (juju exec, juju-exec or a charm's dispatch)",
        )?;
        if !unit_name.contains('/') {
            return Err(format!(
                "JUJU_UNIT_NAME={unit_name:?} is not a unit name (app/N)"
            ));
        }
        let charm_dir = var("JUJU_CHARM_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(JujuEnv {
            unit_name,
            model_uuid: var("JUJU_MODEL_UUID").unwrap_or_default(),
            charm_dir,
        })
    }

    /// The application's name (`app` of `app/0`).
    pub fn app_name(&self) -> &str {
        self.unit_name
            .split_once('/')
            .map(|(app, _)| app)
            .unwrap_or(&self.unit_name)
    }
}

/// The charm's own code that the component calls: its callbacks and sync-lock backends
/// (the WIT `charm` interface).
pub trait CharmCode: Send {
    /// Run the callback registered under `id` with keyword arguments (a JSON object).
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome;
    /// `acquire` of the sync-lock backend `id`.
    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError> {
        let _ = (id, timeout_seconds);
        Err(SyncBackendError::Missing)
    }
    /// `release` of the sync-lock backend `id`.
    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError> {
        let _ = id;
        Err(SyncBackendError::Missing)
    }
}

/// A charm with no callbacks and no sync-lock backends (for `rollingops status` and the
/// worker).
pub struct NoCharmCode;

impl CharmCode for NoCharmCode {
    fn run_callback(&mut self, _: &str, _: &str) -> CallbackOutcome {
        CallbackOutcome::Missing
    }
}

/// The [`Host`] over real hook tools.
pub struct JujuHost {
    env: JujuEnv,
    base_dir: PathBuf,
    /// How to start this unit's etcd worker (`None`: this host cannot).
    worker: Option<WorkerLaunch>,
    /// Relation id → the `endpoint:id` form the tools print, as `relation-ids` said.
    relations: BTreeMap<u32, String>,
    charm: Box<dyn CharmCode>,
}

impl JujuHost {
    /// A host for the unit `env`, dispatching with logs under `base_dir`, calling `charm`.
    pub fn new(env: JujuEnv, base_dir: impl Into<PathBuf>, charm: Box<dyn CharmCode>) -> Self {
        JujuHost {
            env,
            base_dir: base_dir.into(),
            worker: None,
            relations: BTreeMap::new(),
            charm,
        }
    }

    /// Let the component start this unit's etcd worker with `launch`.
    pub fn with_worker(mut self, launch: WorkerLaunch) -> Self {
        self.worker = Some(launch);
        self
    }

    /// The unit's identity.
    pub fn env(&self) -> &JujuEnv {
        &self.env
    }

    fn relation_ref(&self, relation_id: u32) -> String {
        self.relations
            .get(&relation_id)
            .cloned()
            .unwrap_or_else(|| relation_id.to_string())
    }
}

/// The numeric part of a relation id as the tools print it (`restart:3` → 3).
pub fn parse_relation_id(text: &str) -> Option<u32> {
    text.rsplit(':').next()?.trim().parse().ok()
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warning => "WARNING",
        LogLevel::Error => "ERROR",
    }
}

impl Host for JujuHost {
    fn unit_name(&mut self) -> String {
        self.env.unit_name.clone()
    }

    fn model_uuid(&mut self) -> String {
        self.env.model_uuid.clone()
    }

    fn is_leader(&mut self) -> Result<bool, WitError> {
        Ok(is_leader()?)
    }

    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, WitError> {
        let mut ids = Vec::new();
        for text in relation_ids(endpoint)? {
            let id = parse_relation_id(&text).ok_or_else(|| {
                WitError::Host(format!(
                    "`relation-ids {endpoint}` printed {text:?}, which is not a relation id"
                ))
            })?;
            self.relations.insert(id, text);
            ids.push(id);
        }
        Ok(ids)
    }

    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, WitError> {
        Ok(relation_list(&self.relation_ref(relation_id))?)
    }

    fn relation_get(
        &mut self,
        relation_id: u32,
        owner: &BagOwner,
    ) -> Result<Vec<(String, String)>, WitError> {
        let relation = self.relation_ref(relation_id);
        let bag = match owner {
            BagOwner::App => relation_get(&relation, self.env.app_name(), true)?,
            BagOwner::Unit(unit) => relation_get(&relation, unit, false)?,
        };
        Ok(bag.into_iter().collect())
    }

    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), WitError> {
        Ok(relation_set(&self.relation_ref(relation_id), app, pairs)?)
    }

    fn secret_get(&mut self, label_or_id: &str) -> Result<Option<Vec<(String, String)>>, WitError> {
        let found = if label_or_id.starts_with("secret:") {
            secret_get(Some(label_or_id), None)
        } else {
            secret_get(None, Some(label_or_id))
        };
        match found {
            Ok(content) => Ok(Some(content.into_iter().collect())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn secret_add(
        &mut self,
        label: &str,
        content: &[(String, String)],
    ) -> Result<String, WitError> {
        Ok(secret_add(label, content)?)
    }

    fn secret_grant(&mut self, id: &str, relation_id: u32) -> Result<(), WitError> {
        Ok(secret_grant(id, &self.relation_ref(relation_id))?)
    }

    fn relation_get_remote_app(
        &mut self,
        relation_id: u32,
    ) -> Result<Vec<(String, String)>, WitError> {
        let relation = self.relation_ref(relation_id);
        let app = relation_list_app(&relation)?;
        if app.is_empty() {
            return Ok(vec![]);
        }
        Ok(relation_get(&relation, &app, true)?.into_iter().collect())
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        // Outside a hook context (the detached worker) juju-log cannot work: go straight to
        // stderr, which is the worker's log file.
        if std::env::var_os("JUJU_CONTEXT_ID").is_none() {
            eprintln!("rollingops {}: {message}", level_name(level));
            return;
        }
        if let Err(e) = juju_log(level_name(level), message) {
            // Outside a hook (the worker, a person's shell) juju-log cannot work; stderr
            // still reaches a log file or the terminal.
            eprintln!("rollingops {}: {message} ({e})", level_name(level));
        }
    }

    fn dispatch(&mut self, event: &str) -> Result<(), WitError> {
        self.dispatch_after(event, 0)
    }

    fn dispatch_after(&mut self, event: &str, delay_ms: u32) -> Result<(), WitError> {
        if !valid_hook_name(event) {
            return Err(WitError::Host(format!(
                "refusing to dispatch {event:?}: not a hook name"
            )));
        }
        let juju_exec = find_juju_exec().ok_or_else(|| {
            WitError::Host(format!(
                "juju-exec not found on PATH or in {}",
                JUJU_EXEC_FALLBACKS.join(", ")
            ))
        })?;
        let log = self.base_dir.join(DISPATCH_LOG);
        spawn_juju_exec(
            &juju_exec,
            &self.env.unit_name,
            &self.env.charm_dir,
            event,
            &log,
            delay_ms,
        )
        .map(|_| ())
        .map_err(|e| {
            WitError::Host(format!(
                "cannot start `{} -u {} {:?}`: {e}",
                juju_exec.display(),
                self.env.unit_name,
                dispatch_command(&self.env.charm_dir, event)
            ))
        })
    }

    /// Start `rollingops worker` detached unless this unit's worker runs (it holds the
    /// worker lock under base_dir).
    fn start_worker(&mut self) -> Result<(), WitError> {
        let Some(launch) = &self.worker else {
            return Err(WitError::EtcdNotConfigured(
                "this charm did not say how to start the etcd worker".into(),
            ));
        };
        worker_process::request_worker(&self.base_dir)
            .map_err(|e| WitError::FileSystem(format!("requesting the worker: {e}")))?;
        let running = worker_process::worker_running(&self.base_dir)
            .map_err(|e| WitError::FileSystem(format!("checking the worker lock: {e}")))?;
        if running {
            return Ok(());
        }
        if !launch.program.is_file() {
            return Err(WitError::EtcdNotConfigured(format!(
                "the rollingops worker program is missing: {}",
                launch.program.display()
            )));
        }
        worker_process::spawn_detached(
            &launch.program,
            &launch.args(&self.base_dir),
            &self.base_dir,
        )
        .map(|_| ())
        .map_err(|e| WitError::Host(format!("cannot start {}: {e}", launch.program.display())))
    }

    fn now_micros(&mut self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_worker_spawns_one_detached_worker_per_unit() {
        use std::os::unix::fs::PermissionsExt;
        use std::time::{Duration, Instant};
        let root = std::env::temp_dir().join(format!("rollingops-startw-{}", std::process::id()));
        let base = root.join("base");
        std::fs::create_dir_all(&base).unwrap();
        // A stand-in for `rollingops worker`: records its arguments, then holds the worker
        // lock (flock, as the real one does) for a while.
        let program = root.join("rollingops");
        std::fs::write(
            &program,
            "#!/bin/sh\necho \"$*\" >> \"$5/starts\"\nexec flock -n \"$5/etcd/worker.lock\" sleep 2\n",
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = JujuEnv::from_vars(|key| match key {
            "JUJU_UNIT_NAME" => Some("app/0".into()),
            "JUJU_CHARM_DIR" => Some(root.display().to_string()),
            _ => None,
        })
        .unwrap();
        let launch = WorkerLaunch {
            program: program.clone(),
            peer_relation: "restart".into(),
            etcd_relation: Some("etcd".into()),
            cluster_id: Some("c1".into()),
        };
        let mut host = JujuHost::new(env.clone(), &base, Box::new(NoCharmCode)).with_worker(launch);
        let starts = || {
            std::fs::read_to_string(base.join("starts"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !ok() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };

        host.start_worker().unwrap();
        wait_for("the worker lock", &|| {
            worker_process::worker_running(&base).unwrap()
        });
        assert_eq!(
            starts(),
            [format!(
                "worker --peer-relation restart --base-dir {} --etcd-relation etcd --cluster-id c1",
                base.display()
            )]
        );
        // While it runs, asking again starts nothing.
        host.start_worker().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(starts().len(), 1);
        // Once it has exited, the next request starts a new one.
        wait_for("the worker to exit", &|| {
            !worker_process::worker_running(&base).unwrap()
        });
        host.start_worker().unwrap();
        wait_for("a second start", &|| starts().len() == 2);

        let missing = WorkerLaunch {
            program: root.join("nowhere"),
            peer_relation: "restart".into(),
            etcd_relation: None,
            cluster_id: None,
        };
        let mut host = JujuHost::new(env.clone(), root.join("other"), Box::new(NoCharmCode))
            .with_worker(missing);
        assert!(matches!(
            host.start_worker(),
            Err(WitError::EtcdNotConfigured(_))
        ));
        let mut host = JujuHost::new(env, root.join("other"), Box::new(NoCharmCode));
        assert!(matches!(
            host.start_worker(),
            Err(WitError::EtcdNotConfigured(_))
        ));
        wait_for("the second worker to exit", &|| {
            !worker_process::worker_running(&base).unwrap()
        });
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn relation_ids_parse_with_or_without_endpoint() {
        assert_eq!(parse_relation_id("restart:3"), Some(3));
        assert_eq!(parse_relation_id("12"), Some(12));
        assert_eq!(parse_relation_id("restart:x"), None);
    }

    #[test]
    fn hook_names_that_reach_a_shell_are_plain() {
        assert!(valid_hook_name("rollingops_lock_granted"));
        assert!(valid_hook_name("update-status"));
        for bad in [
            "",
            "Upper",
            "a b",
            "x;rm -rf /",
            "$(id)",
            "../x",
            &"a".repeat(65),
        ] {
            assert!(!valid_hook_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn dispatch_command_quotes_odd_charm_dirs() {
        assert_eq!(
            dispatch_command(Path::new("/var/lib/juju/agents/unit-app-0/charm"), "x"),
            "JUJU_DISPATCH_PATH=hooks/x /var/lib/juju/agents/unit-app-0/charm/dispatch"
        );
        assert_eq!(
            dispatch_command(Path::new("/tmp/it's here"), "x"),
            r"JUJU_DISPATCH_PATH=hooks/x '/tmp/it'\''s here/dispatch'"
        );
    }

    #[test]
    fn errors_name_the_command_code_and_stderr() {
        let error = HookToolError {
            cmd: command_line("relation-get", &["-r", "restart:3", "-", "app/1"]),
            code: Some(1),
            stderr: "ERROR permission denied".into(),
        };
        assert_eq!(
            error.to_string(),
            "`relation-get -r restart:3 - app/1` failed (exit 1): ERROR permission denied"
        );
        assert!(
            matches!(WitError::from(error), WitError::Host(m) if m.contains("permission denied"))
        );
        let missing = run("rollingops-no-such-tool", &[], None).unwrap_err();
        assert_eq!(missing.code, None);
        assert!(missing.stderr.contains("not found on PATH"), "{missing}");
    }

    #[test]
    fn identity_comes_from_the_environment() {
        let vars: BTreeMap<&str, &str> = [
            ("JUJU_UNIT_NAME", "db/2"),
            ("JUJU_MODEL_UUID", "uuid"),
            ("JUJU_CHARM_DIR", "/charm"),
        ]
        .into();
        let env = JujuEnv::from_vars(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(env.app_name(), "db");
        assert_eq!(env.charm_dir, PathBuf::from("/charm"));
        assert!(JujuEnv::from_vars(|_| None).is_err());
    }
}
