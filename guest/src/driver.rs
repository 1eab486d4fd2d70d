//! Runs a [`Manager`] against the outside world: reads the hook's snapshot through
//! [`Effects`], then loops `poll_command → effect → reply`. [`Effects`] is the Rust mirror
//! of the WIT imports; the component implements it with them, tests with memory.

use crate::error::Error;
use crate::etcd::config::{ETCDCTL_JSON, SERVER_CA, environment};
use crate::etcd::etcdctl::{self, Failure};
use crate::etcd::keys;
use crate::etcd::turn::{self, EtcdFacts, WorkerClaim};
use crate::etcd::worker::{self, Call, LOCK_GRANTED_HOOK, Output, Step, Timing, Worker};
use crate::manager::{
    CallbackOutcome, ClientIdentity, Command, Config, EtcdContext, Event, HookContext, LogLevel,
    Manager, PeerData, State, SyncBackendError, sync_acquire_error, sync_release_error,
};
use crate::timestamp::Timestamp;
use crate::wire::Bag;

mod etcd_relation;
mod prepared;
mod sync_lock;

pub use prepared::Prepared;
pub use sync_lock::EtcdHold;
use sync_lock::{Refusal, SyncEtcd};

/// Whose bag to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BagOwner<'a> {
    /// The application bag.
    App,
    /// A unit's bag.
    Unit(&'a str),
}

/// The outside world, as the WIT imports offer it.
pub trait Effects {
    /// This unit's name.
    fn unit_name(&mut self) -> String;
    /// Leadership.
    fn is_leader(&mut self) -> Result<bool, Error>;
    /// Relation ids on an endpoint.
    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, Error>;
    /// Remote units on a relation.
    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, Error>;
    /// A databag.
    fn relation_get(&mut self, relation_id: u32, owner: BagOwner<'_>) -> Result<Bag, Error>;
    /// Write keys (empty value deletes).
    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), Error>;
    /// Log a line.
    fn log(&mut self, level: LogLevel, message: &str);
    /// Run a hook on this unit after the current one.
    fn dispatch(&mut self, event: &str) -> Result<(), Error>;
    /// Run a hook on this unit once `delay_ms` have passed (after the current one).
    fn dispatch_after(&mut self, event: &str, delay_ms: u32) -> Result<(), Error> {
        let _ = (event, delay_ms);
        Err(Error::Host(
            "this host cannot dispatch a hook after a delay".into(),
        ))
    }
    /// Wall clock.
    fn now(&mut self) -> Timestamp;
    /// Run a charm callback.
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome;
    /// Acquire a charm sync-lock backend.
    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError>;
    /// Release a charm sync-lock backend.
    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError>;
    /// The model's UUID.
    fn model_uuid(&mut self) -> String {
        String::new()
    }
    /// Run `etcdctl` (the host refuses any other program).
    fn run_etcdctl(
        &mut self,
        args: &[String],
        env: &[(String, String)],
        stdin: Option<&str>,
        timeout_ms: u32,
    ) -> Result<Output, Error> {
        let _ = (args, env, stdin, timeout_ms);
        Err(Error::Etcdctl("this host cannot run etcdctl".into()))
    }
    /// Run `etcdctl` until it prints its first complete line of stdout, exits, or reaches
    /// `timeout_ms` (then it is killed and the output says `timed_out`): for `watch`.
    fn watch_etcdctl(
        &mut self,
        args: &[String],
        env: &[(String, String)],
        timeout_ms: u32,
    ) -> Result<Output, Error> {
        let _ = (args, env, timeout_ms);
        Err(Error::Etcdctl("this host cannot watch with etcdctl".into()))
    }
    /// Start `etcdctl` and leave it waiting for its stdin; a handle for
    /// [`Effects::finish_etcdctl`] / [`Effects::stop_etcdctl`]. Hosts that cannot say so,
    /// and callers then run the invocation whole.
    fn start_etcdctl(&mut self, args: &[String], env: &[(String, String)]) -> Result<u32, Error> {
        let _ = (args, env);
        Err(Error::Etcdctl(
            "this host cannot start etcdctl ahead".into(),
        ))
    }
    /// Give a started etcdctl its stdin and wait for its output (the handle is spent).
    fn finish_etcdctl(
        &mut self,
        handle: u32,
        stdin: Option<&str>,
        timeout_ms: u32,
    ) -> Result<Output, Error> {
        let _ = (handle, stdin, timeout_ms);
        Err(Error::Etcdctl(
            "this host cannot start etcdctl ahead".into(),
        ))
    }
    /// The next stdout line of a started etcdctl; `None` when `timeout_ms` passes first, an
    /// error once it has exited and every line was read.
    fn read_etcdctl_line(&mut self, handle: u32, timeout_ms: u32) -> Result<Option<String>, Error> {
        let _ = (handle, timeout_ms);
        Err(Error::Etcdctl(
            "this host cannot stream etcdctl output".into(),
        ))
    }
    /// Kill a started etcdctl.
    fn stop_etcdctl(&mut self, handle: u32) {
        let _ = handle;
    }
    /// Read a file under base_dir; `None` if it does not exist.
    fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        let _ = path;
        Ok(None)
    }
    /// Create or replace a file under base_dir.
    fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<(), Error> {
        let _ = (path, data, mode);
        Err(Error::FileSystem("this host has no files".into()))
    }
    /// Remove a file under base_dir (missing is fine).
    fn remove_file(&mut self, path: &str) -> Result<(), Error> {
        let _ = path;
        Ok(())
    }
    /// Start this unit's etcd worker unless one runs.
    fn start_worker(&mut self) -> Result<(), Error> {
        Err(Error::EtcdNotConfigured(
            "this host cannot start the etcd worker".into(),
        ))
    }
    /// Block.
    fn sleep_ms(&mut self, ms: u64) {
        let _ = ms;
    }
    /// The remote application's bag on a relation.
    fn relation_get_remote_app(&mut self, relation_id: u32) -> Result<Bag, Error> {
        let _ = relation_id;
        Err(Error::Host(
            "this host cannot read a remote application's bag".into(),
        ))
    }
    /// A secret's content by id or label (latest revision); `None` if there is none.
    fn secret_get(&mut self, label_or_id: &str) -> Result<Option<Bag>, Error> {
        let _ = label_or_id;
        Err(Error::Host("this host has no secrets".into()))
    }
    /// Create an application secret; its id.
    fn secret_add(&mut self, label: &str, content: &[(String, String)]) -> Result<String, Error> {
        let _ = (label, content);
        Err(Error::Host("this host has no secrets".into()))
    }
    /// Grant a secret to a relation.
    fn secret_grant(&mut self, id: &str, relation_id: u32) -> Result<(), Error> {
        let _ = (id, relation_id);
        Err(Error::Host("this host has no secrets".into()))
    }
    /// Generate the etcd client identity for `common_name` (spec/etcd.md §3.2).
    fn generate_client_identity(&mut self, common_name: &str) -> Result<ClientIdentity, Error> {
        let _ = common_name;
        Err(Error::Host("this host cannot generate keys".into()))
    }
    /// Fill `buf` with random bytes (the operating system's, or WASI's in the component).
    fn random_bytes(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        getrandom::fill(buf).map_err(|e| Error::Host(format!("no randomness: {e}")))
    }
}

/// Read this hook's snapshot and build the manager.
pub fn load(config: Config, fx: &mut impl Effects) -> Result<Manager, Error> {
    load_for(config, fx, None)
}

/// [`load`], knowing the hook's first use of the manager: for `event`, when it is the
/// lock-granted hook, an etcd-managed unit may take its worker's claim at its word instead
/// of reading etcd (see [`WorkerClaim`]).
pub fn load_for(
    config: Config,
    fx: &mut impl Effects,
    event: Option<&Event>,
) -> Result<Manager, Error> {
    config.validate()?;
    let unit = fx.unit_name();
    let now = fx.now();
    let leader = fx.is_leader()?;
    let peer = match fx.relation_ids(&config.peer_relation_name)?.first() {
        None => None,
        Some(&relation_id) => {
            let remote_units = fx.relation_units(relation_id)?;
            let app = fx.relation_get(relation_id, BagOwner::App)?;
            let local = fx.relation_get(relation_id, BagOwner::Unit(&unit))?;
            let mut remote_bags = std::collections::BTreeMap::new();
            if Manager::reads_all_units(leader) {
                for remote in &remote_units {
                    remote_bags.insert(
                        remote.clone(),
                        fx.relation_get(relation_id, BagOwner::Unit(remote))?,
                    );
                }
            }
            Some(PeerData {
                relation_id,
                app,
                local,
                remote_units,
                remote_bags,
            })
        }
    };
    let (etcd, etcd_relation) = match (&config.etcd_relation_name, &config.cluster_id) {
        (Some(endpoint), Some(cluster)) if !cluster.is_empty() => {
            let etcd_managed = peer
                .as_ref()
                .and_then(|p| p.local.get(crate::wire::PROCESSING_BACKEND))
                .is_some_and(|b| b == "etcd");
            let relation = etcd_relation::load(fx, endpoint, &unit, leader)?;
            let exists = relation.relation_id.is_some();
            let facts = match (etcd_managed, event) {
                (false, _) => Facts::Skip,
                (true, Some(Event::LockGranted)) => Facts::ClaimOrRead(now),
                (true, _) => Facts::Read,
            };
            let etcd = load_etcd(fx, exists, cluster, &unit, facts)?;
            (Some(etcd), Some(relation))
        }
        _ => (None, None),
    };
    Manager::new(
        config,
        HookContext {
            now,
            unit,
            leader,
            peer,
            etcd,
            etcd_relation,
        },
    )
}

/// Whether and how a hook learns what etcd holds for its unit.
enum Facts {
    /// Not an etcd-managed unit.
    Skip,
    /// Read etcd.
    Read,
    /// The lock-granted hook at this time: take the worker's claim at its word if it may
    /// be, else read etcd.
    ClaimOrRead(Timestamp),
}

/// What the hook knows about etcd: relation, configuration, and (for an etcd-managed unit)
/// the lock and this unit's queues.
fn load_etcd(
    fx: &mut impl Effects,
    relation: bool,
    cluster_id: &str,
    unit: &str,
    facts: Facts,
) -> Result<EtcdContext, Error> {
    let environment = match (fx.read_file(ETCDCTL_JSON), fx.read_file(SERVER_CA)) {
        (Ok(Some(config)), Ok(Some(_))) => environment(&String::from_utf8_lossy(&config)),
        (Ok(None), _) => Err(format!(
            "etcdctl config file does not exist: {ETCDCTL_JSON}"
        )),
        (_, Ok(None)) => Err(format!(
            "etcdctl server CA file does not exist: {SERVER_CA}"
        )),
        (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
    };
    let model_uuid = fx.model_uuid();
    let mut context = EtcdContext {
        model_uuid,
        cluster_id: cluster_id.to_string(),
        relation,
        environment,
        facts: None,
        last_grant: 0,
    };
    if matches!(facts, Facts::Skip) || context.unusable().is_some() {
        return Ok(context);
    }
    // Unreadable, no claim may be taken at its word (nor a grant recorded).
    context.last_grant = match fx.read_file(turn::GRANT_FILE) {
        Ok(Some(text)) => turn::decode_last_grant(&String::from_utf8_lossy(&text)),
        Ok(None) => 0,
        Err(_) => u64::MAX,
    };
    let last_grant = context.last_grant;
    let (owner, keys) = context.identity(unit);
    let claim = fx
        .read_file(worker::CLAIM_FILE)
        .ok()
        .flatten()
        .map(|text| WorkerClaim::decode(&String::from_utf8_lossy(&text)));
    if let (Facts::ClaimOrRead(now), Some(claim)) = (&facts, &claim)
        && let Some((key, op)) = claim.taken_at_its_word(last_grant, now.micros())
    {
        context.facts = Some(Ok(EtcdFacts::from_claim(&owner, claim.clone(), key, op)));
        return Ok(context);
    }
    let env = context.environment.clone().unwrap_or_default();
    let facts = run_with_retries(fx, &turn::read(&keys), &env, HOOK_ATTEMPTS)
        .and_then(|out| turn::parse(&out))
        .map(|mut facts| {
            facts.worker_claim = claim.filter(|_| facts.inprogress.is_some());
            facts
        });
    context.facts = Some(facts);
    Ok(context)
}

/// etcdctl attempts a hook makes before giving up on a transient failure (a hook must not
/// stall for minutes as the reference's 12 × 5 s can).
const HOOK_ATTEMPTS: u32 = 3;
/// Per-invocation timeout: just above etcdctl's own 5 s command timeout, because with the
/// server gone `etcdctl txn` (3.4) ignores that timeout and would hang until killed — a
/// hook must not hold the unit's hook lock for long, and the worker's retries add up.
const ETCDCTL_TIMEOUT_MS: u32 = 6_000;

/// Run one etcdctl call, retrying transient failures up to `attempts` times.
fn run_with_retries(
    fx: &mut impl Effects,
    call: &Call,
    env: &[(String, String)],
    attempts: u32,
) -> Result<String, String> {
    let (args, stdin) = call.argv();
    run_args_with_retries(
        fx,
        &mut Prepared::default(),
        &args,
        stdin.as_deref(),
        env,
        attempts,
    )
}

fn run_args_with_retries(
    fx: &mut impl Effects,
    prepared: &mut Prepared,
    args: &[String],
    stdin: Option<&str>,
    env: &[(String, String)],
    attempts: u32,
) -> Result<String, String> {
    let mut last = String::new();
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            fx.sleep_ms(500);
        }
        let output = prepared
            .run(fx, args, env, stdin, ETCDCTL_TIMEOUT_MS)
            .map_err(|e| e.to_string())?;
        match etcdctl::classify(output.code, &output.stderr, output.timed_out) {
            None => return Ok(output.stdout),
            Some(Failure::Fatal(why)) => return Err(why),
            Some(Failure::Retryable(why)) => last = why,
        }
    }
    Err(last)
}

/// Carry out every pending command. A failed databag write fails the hook (Juju then
/// discards all of its writes and retries it); a failed wake-up is logged, never fatal.
pub fn drive(manager: &mut Manager, fx: &mut impl Effects) -> Result<(), Error> {
    let mut prepared = Prepared::default();
    let result = drive_with(manager, fx, &mut prepared);
    prepared.stop_all(fx);
    result
}

fn drive_with(
    manager: &mut Manager,
    fx: &mut impl Effects,
    prepared: &mut Prepared,
) -> Result<(), Error> {
    while let Some(command) = manager.poll_command() {
        match command {
            Command::SetBag {
                relation_id,
                app,
                pairs,
            } => match fx.relation_set(relation_id, app, &pairs) {
                Ok(()) => {}
                // Leadership moved during this hook: the app bag is the new leader's to
                // write, and it re-decides the lock from the units' bags. Failing the hook
                // would also discard this unit's own writes — a turn it already ran — and
                // a dispatched hook is not retried.
                Err(e) if app && fx.is_leader().is_ok_and(|leader| !leader) => fx.log(
                    LogLevel::Warning,
                    &format!(
                        "Leadership moved during this hook; leaving the lock to the new leader ({e})."
                    ),
                ),
                Err(e) => return Err(e),
            },
            Command::RunCallback { id, kwargs_json } => {
                let outcome = fx.run_callback(&id, &kwargs_json);
                let now = fx.now();
                manager.handle_callback_result(outcome, now);
            }
            Command::Dispatch { event } => {
                if let Err(e) = fx.dispatch(&event) {
                    fx.log(
                        LogLevel::Warning,
                        &format!(
                            "Could not dispatch {event}; the next hook will pick the turn up: {e}"
                        ),
                    );
                }
            }
            Command::DispatchAfter { event, delay_ms } => {
                if let Err(e) = fx.dispatch_after(&event, delay_ms) {
                    fx.log(
                        LogLevel::Error,
                        &format!(
                            "Could not schedule {event} in {delay_ms} ms; update-status will pick the turn up: {e}"
                        ),
                    );
                }
            }
            Command::Etcdctl {
                args,
                stdin,
                env,
                purpose,
            } => {
                let result = run_args_with_retries(
                    fx,
                    prepared,
                    &args,
                    stdin.as_deref(),
                    &env,
                    HOOK_ATTEMPTS,
                );
                manager.handle_etcdctl_result(purpose, result);
            }
            Command::PrepareEtcdctl { args, env } => prepared.prepare(fx, &args, &env),
            Command::KeepLeaseAlive {
                lease,
                env,
                renew_first,
            } => {
                if renew_first
                    && let Err(why) =
                        run_with_retries(fx, &Call::KeepAlive(lease.clone()), &env, HOOK_ATTEMPTS)
                {
                    manager.handle_lease_lapsed(&why);
                    continue;
                }
                let args = ["lease", "keep-alive", lease.as_str()].map(String::from);
                if let Err(e) = prepared.keep_running(fx, &args, &env) {
                    fx.log(
                        LogLevel::Warning,
                        &format!("Could not keep lease {lease} alive during the callback: {e}"),
                    );
                }
            }
            Command::RecordGrant { revision } => {
                let text = format!("{revision}\n");
                if let Err(e) = fx.write_file(turn::GRANT_FILE, text.as_bytes(), 0o644) {
                    manager.handle_grant_unrecorded(&e.to_string());
                }
            }
            Command::StartWorker => {
                let _ = fx.remove_file(worker::STOP_FILE);
                if let Err(e) = fx.start_worker() {
                    manager.handle_worker_start_failed(&e.to_string());
                }
            }
            Command::StopWorker => {
                if let Err(e) = fx.write_file(worker::STOP_FILE, b"stop\n", 0o644) {
                    fx.log(
                        LogLevel::Warning,
                        &format!("Could not ask the etcd worker to stop: {e}"),
                    );
                }
            }
            Command::Log { level, message } => fx.log(level, &message),
            Command::EtcdRelation(command) => etcd_relation::carry_out(manager, fx, command)?,
        }
    }
    Ok(())
}

/// The etcd worker process's loop (`run-worker`): drive [`Worker`] until it exits.
pub fn run_worker(config: &Config, fx: &mut impl Effects) -> Result<(), Error> {
    let cluster_id = config
        .cluster_id
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::EtcdNotConfigured("the etcd worker needs a cluster id".into()))?;
    let unit = fx.unit_name();
    let owner = keys::owner(&fx.model_uuid(), &unit);
    let env = match fx.read_file(ETCDCTL_JSON)? {
        Some(content) => {
            environment(&String::from_utf8_lossy(&content)).map_err(Error::EtcdNotConfigured)?
        }
        None => {
            return Err(Error::EtcdNotConfigured(format!(
                "etcdctl config file does not exist: {ETCDCTL_JSON}"
            )));
        }
    };
    let start = fx.now();
    let mut worker = Worker::new(
        keys::Keys::new(&cluster_id, &owner),
        owner.clone(),
        Timing::default(),
        0,
    );
    fx.log(
        LogLevel::Info,
        &format!("etcd worker started for {owner} on cluster {cluster_id}."),
    );
    let mut prepared = Prepared::default();
    let result = work(&mut worker, fx, &env, start, &mut prepared);
    prepared.stop_all(fx);
    // Without its worker a claim can only grow stale: a hook still to come reads etcd.
    let _ = fx.remove_file(worker::CLAIM_FILE);
    match result? {
        Ok(()) => {
            fx.log(LogLevel::Info, "etcd worker: nothing left to do; exiting.");
            Ok(())
        }
        Err(why) => {
            fx.log(LogLevel::Error, &format!("etcd worker failed: {why}"));
            Err(Error::Etcdctl(why))
        }
    }
}

/// What the worker is told when the host could not run etcdctl at all.
fn not_run(e: Error) -> Output {
    Output {
        code: 127,
        stdout: String::new(),
        stderr: e.to_string(),
        timed_out: false,
    }
}

fn stop(worker: &mut Worker, fx: &mut impl Effects) {
    fx.log(LogLevel::Info, "etcd worker asked to stop; releasing.");
    worker.stop();
}

/// Drive the worker until it exits; its verdict, or a host error.
fn work(
    worker: &mut Worker,
    fx: &mut impl Effects,
    env: &[(String, String)],
    start: Timestamp,
    prepared: &mut Prepared,
) -> Result<Result<(), String>, Error> {
    loop {
        let now = (fx.now().micros() - start.micros()).max(0) as u64 / 1000;
        match worker.poll(now) {
            Step::Etcdctl(call) => {
                let (args, stdin) = call.argv();
                let output = prepared.run(fx, &args, env, stdin.as_deref(), ETCDCTL_TIMEOUT_MS);
                worker.handle(output.unwrap_or_else(not_run));
            }
            Step::Sleep(ms) => {
                if fx.read_file(worker::STOP_FILE)?.is_some() {
                    stop(worker, fx);
                    continue;
                }
                fx.sleep_ms(ms);
            }
            Step::Watch(call, timeout_ms) => {
                if fx.read_file(worker::STOP_FILE)?.is_some() {
                    stop(worker, fx);
                    continue;
                }
                if let Some(next) = worker.args_after_watch() {
                    prepared.prepare(fx, &next, env);
                }
                let output = prepared.watch(fx, &call, env, timeout_ms);
                worker.handle(output.unwrap_or_else(not_run));
            }
            Step::Dispatch(event) => {
                let claim = worker
                    .claim()
                    .filter(|_| event == LOCK_GRANTED_HOOK)
                    .map(|c| WorkerClaim {
                        op_id: c.op.op_id(),
                        lease: c.lease,
                        lease_certain_until_micros: fx.now().micros() + c.certain_ms as i64 * 1000,
                        revision: c.revision,
                        op: Some((c.key, c.op)),
                    });
                if let Some(claim) = claim
                    && let Err(e) =
                        fx.write_file(worker::CLAIM_FILE, claim.encode().as_bytes(), 0o644)
                {
                    // The hook then finalizes as for any worker; only slower.
                    fx.log(
                        LogLevel::Warning,
                        &format!("Could not record the claim: {e}"),
                    );
                }
                if let Err(e) = fx.dispatch(event) {
                    fx.log(LogLevel::Error, &format!("Could not dispatch {event}: {e}"));
                }
            }
            Step::Exit(result) => return Ok(result),
        }
    }
}

/// `request_async_lock` end to end.
pub fn request_async_lock(
    manager: &mut Manager,
    fx: &mut impl Effects,
    callback_id: &str,
    kwargs_json: &str,
    max_retry: Option<i64>,
) -> Result<(), Error> {
    call(manager, fx, |m| {
        m.request_async_lock(callback_id, kwargs_json, max_retry)
    })
}

/// A manager call end to end: run it, then carry out what it asked for.
pub fn call<T>(
    manager: &mut Manager,
    fx: &mut impl Effects,
    f: impl FnOnce(&mut Manager) -> Result<T, Error>,
) -> Result<T, Error> {
    let result = f(manager);
    drive(manager, fx)?;
    result
}

/// One hook event end to end.
pub fn handle_event(
    manager: &mut Manager,
    fx: &mut impl Effects,
    event: Event,
) -> Result<(), Error> {
    call(manager, fx, |m| m.handle_event(event))
}

/// `state`.
pub fn state(manager: &mut Manager, fx: &mut impl Effects) -> Result<State, Error> {
    call(manager, fx, Manager::state)
}

/// `is_waiting*`, reading the asked unit's bag if this hook has not.
pub fn is_waiting(
    manager: &mut Manager,
    fx: &mut impl Effects,
    unit: Option<&str>,
    callback_id: Option<&str>,
) -> Result<bool, Error> {
    if let (Some(name), Some(relation_id)) = (unit, manager.relation_id())
        && manager.needs_remote_bag(name)
    {
        let bag = fx.relation_get(relation_id, BagOwner::Unit(name))?;
        manager.add_remote_bag(name, &bag);
    }
    manager.is_waiting(unit, callback_id)
}

/// `describe`, reading every unit's bag first so a non-leader sees the whole relation.
pub fn describe(manager: &mut Manager, fx: &mut impl Effects) -> Result<String, Error> {
    if let Some(relation_id) = manager.relation_id() {
        for unit in manager.unread_remote_units() {
            let bag = fx.relation_get(relation_id, BagOwner::Unit(&unit))?;
            manager.add_remote_bag(&unit, &bag);
        }
    }
    Ok(manager.describe())
}

/// Who gives the synchronous lock a hook holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncHeld {
    /// The cluster's etcd lock key.
    Etcd(EtcdHold),
    /// The charm's backend (peer mode, or etcd failed).
    Backend,
}

/// Acquire the synchronous lock (spec/etcd.md §7): through etcd when this hook can use it,
/// else — or when etcd fails — through the charm's backend `backend_id`. A timeout is a
/// timeout either way (no fallback). The caller keeps what this returns for
/// [`release_sync_lock`].
pub fn acquire_sync_lock(
    manager: &Manager,
    fx: &mut impl Effects,
    backend_id: &str,
    timeout_seconds: Option<u32>,
) -> Result<SyncHeld, Error> {
    if let Some(etcd) = sync_etcd(manager) {
        match sync_lock::acquire(fx, &etcd, timeout_seconds) {
            Ok(hold) => {
                fx.log(LogLevel::Info, "Acquired the etcd sync lock.");
                return Ok(SyncHeld::Etcd(hold));
            }
            Err(Refusal::TimedOut(why)) => return Err(Error::Timeout(why)),
            Err(Refusal::OwnOperation(why)) => return Err(Error::SyncLock(why)),
            Err(Refusal::Unusable(why)) => fx.log(
                LogLevel::Warning,
                &format!(
                    "The etcd sync lock is unavailable ({why}); using sync lock backend {backend_id}."
                ),
            ),
        }
    }
    manager.check_sync_backend(backend_id)?;
    fx.sync_backend_acquire(backend_id, timeout_seconds)
        .map_err(|e| sync_acquire_error(backend_id, e))?;
    Ok(SyncHeld::Backend)
}

/// Release the synchronous lock `held` (what [`acquire_sync_lock`] returned; none: the
/// charm's backend, as the reference would).
pub fn release_sync_lock(
    manager: &Manager,
    fx: &mut impl Effects,
    backend_id: &str,
    held: Option<SyncHeld>,
) -> Result<(), Error> {
    if let (Some(SyncHeld::Etcd(hold)), Some(etcd)) = (&held, sync_etcd(manager)) {
        sync_lock::release(fx, &etcd, hold.clone());
        fx.log(LogLevel::Info, "Released the etcd sync lock.");
        return Ok(());
    }
    manager.check_sync_backend(backend_id)?;
    fx.sync_backend_release(backend_id)
        .map_err(|e| sync_release_error(backend_id, e))
}

/// etcd for the sync lock: the relation exists and this unit has its etcdctl configuration
/// (spec/etcd.md §8.3; no network call).
fn sync_etcd(manager: &Manager) -> Option<SyncEtcd> {
    let etcd = manager.etcd_context()?;
    if !etcd.relation {
        return None;
    }
    let env = etcd.environment.clone().ok()?;
    let (owner, keys) = etcd.identity(manager.unit());
    Some(SyncEtcd {
        env,
        waiting_entry: keys.waiting_entry(&format!("{owner}:sync")),
        lock: keys.lock,
        owner,
    })
}
