//! The sans-IO manager: one hook's worth of decisions.
//!
//! A host (through [`crate::driver`]) builds a [`Manager`] from a [`HookContext`] — the
//! clock reading, leadership and the peer databags — then calls one entry point
//! ([`Manager::request_async_lock`], [`Manager::handle_event`]) and drains
//! [`Manager::poll_command`], answering [`Command::RunCallback`] with
//! [`Manager::handle_callback_result`]. The manager never performs I/O: it edits its
//! in-memory copy of the databags and emits the writes as commands.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::features::Feature;
use crate::op::{Operation, OperationResult, kwargs_json};
use crate::queue::{Enqueued, OperationQueue, Recorded};
use crate::scheduler::{ReleaseReason, next_grant, release_reason};
use crate::timestamp::Timestamp;
use crate::wire::{self, Backend, Bag, Grant, Intent, LockState, UnitRecord};

mod controls;
mod etcd_mode;
mod health;
mod roll;
pub use controls::{Control, PolicyUpdate, RequestOptions, RollRequest};
pub use etcd_mode::{EtcdContext, EtcdFacts, EtcdPurpose};
pub mod etcd_relation;
pub use etcd_relation::{
    ClientIdentity, EtcdRelation, LocalFiles, RelationCommand, SecretAdd, SecretRead,
};

/// The custom hook the manager dispatches to wake a unit up for its turn.
pub const LOCK_GRANTED_HOOK: &str = "rollingops_lock_granted";

/// The charm's configuration of the library (`RollingOpsManager(...)` arguments).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Peer endpoint holding all state.
    pub peer_relation_name: String,
    /// etcd endpoint, if any.
    pub etcd_relation_name: Option<String>,
    /// etcd lock scope, if any.
    pub cluster_id: Option<String>,
    /// Runtime directory.
    pub base_dir: String,
    /// Registered callback ids.
    pub callback_ids: Vec<String>,
    /// Registered sync-lock backend ids.
    pub sync_lock_ids: Vec<String>,
}

impl Config {
    /// The constructor's checks.
    pub fn validate(&self) -> Result<(), Error> {
        let cluster = self.cluster_id.as_deref().is_some_and(|c| !c.is_empty());
        if cluster && self.etcd_relation_name.is_none() {
            return Err(Error::InvalidArgument(
                "cluster_id provided without etcd_relation_name.".into(),
            ));
        }
        if self.peer_relation_name.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "peer_relation_name must not be empty.".into(),
            ));
        }
        Ok(())
    }
}

/// Hooks and custom events the library reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `<peer>-relation-changed`.
    PeerRelationChanged,
    /// `<peer>-relation-departed` of the named unit.
    PeerRelationDeparted(String),
    /// `leader-elected`.
    LeaderElected,
    /// `update-status`.
    UpdateStatus,
    /// `rollingops_lock_granted`.
    LockGranted,
    /// `rollingops_etcd_failed`.
    EtcdFailed,
    /// `<etcd>-relation-created`.
    EtcdRelationCreated,
    /// `<etcd>-relation-changed`.
    EtcdRelationChanged,
    /// `<etcd>-relation-broken`.
    EtcdRelationBroken,
    /// `secret-changed` of the labelled secret.
    SecretChanged(String),
}

/// The peer relation as this hook sees it.
#[derive(Clone, Debug, Default)]
pub struct PeerData {
    /// Relation id.
    pub relation_id: u32,
    /// Application bag.
    pub app: Bag,
    /// This unit's bag.
    pub local: Bag,
    /// Other units on the relation.
    pub remote_units: Vec<String>,
    /// Bags of the remote units that were read (all of them on the leader).
    pub remote_bags: BTreeMap<String, Bag>,
}

/// Everything a hook knows when the manager is built.
#[derive(Clone, Debug)]
pub struct HookContext {
    /// Clock reading at the start.
    pub now: Timestamp,
    /// This unit's name.
    pub unit: String,
    /// Leadership.
    pub leader: bool,
    /// The peer relation, if it exists.
    pub peer: Option<PeerData>,
    /// etcd, when the charm configured an etcd relation name and a cluster id.
    pub etcd: Option<EtcdContext>,
    /// The etcd relation and the files under `base_dir` it governs; present under the same
    /// condition as `etcd`.
    pub etcd_relation: Option<EtcdRelation>,
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the library handled.
    Warning,
    /// Something that needs a person.
    Error,
}

/// What a callback did, as reported by the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// Returned a value (its string form, `None` for non-strings).
    Returned(Option<String>),
    /// Raised; the description.
    Raised(String),
    /// Not registered in this process.
    Missing,
}

/// Work for the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Write keys to a bag of the peer relation (empty value deletes).
    SetBag {
        /// Relation id.
        relation_id: u32,
        /// App bag (else this unit's bag).
        app: bool,
        /// Keys and values.
        pairs: Vec<(String, String)>,
    },
    /// Run a charm callback and answer with [`Manager::handle_callback_result`].
    RunCallback {
        /// Callback id.
        id: String,
        /// Keyword arguments, a JSON object.
        kwargs_json: String,
    },
    /// Run the named hook on this unit after the current one (no delay).
    Dispatch {
        /// Hook name.
        event: String,
    },
    /// Run the named hook on this unit once `delay_ms` have passed (never sooner than
    /// after the current hook). The host must not sleep in the hook.
    DispatchAfter {
        /// Hook name.
        event: String,
        /// Delay in milliseconds.
        delay_ms: u32,
    },
    /// Run etcdctl (retrying transient failures) and answer with
    /// [`Manager::handle_etcdctl_result`].
    Etcdctl {
        /// Arguments after `etcdctl`.
        args: Vec<String>,
        /// Standard input.
        stdin: Option<String>,
        /// The etcdctl environment.
        env: Vec<(String, String)>,
        /// What the call is for.
        purpose: EtcdPurpose,
    },
    /// Start etcdctl with these arguments now, so that the [`Command::Etcdctl`] with the
    /// same arguments that follows (after a callback) runs without its start-up. No answer;
    /// a host that cannot simply runs that command whole.
    PrepareEtcdctl {
        /// Arguments after `etcdctl`.
        args: Vec<String>,
        /// The etcdctl environment.
        env: Vec<(String, String)>,
    },
    /// Keep the lock's lease alive until the hook's commands are done (a `lease
    /// keep-alive` run alongside), so the lock cannot lapse under a running callback even if
    /// the worker dies. With `renew_first`, renew once before (the lock was read, not
    /// vouched for by a claim) and answer a failure with [`Manager::handle_lease_lapsed`].
    KeepLeaseAlive {
        /// The lease (hexadecimal).
        lease: String,
        /// The etcdctl environment.
        env: Vec<(String, String)>,
        /// Renew once, synchronously, before starting.
        renew_first: bool,
    },
    /// Record that a lock-granted callback starts for this grant (the revision at which its
    /// op was claimed; [`crate::etcd::turn::GRANT_FILE`]); answer a failure with
    /// [`Manager::handle_grant_unrecorded`] (the callback must not run then).
    RecordGrant {
        /// The grant's revision.
        revision: u64,
    },
    /// Make sure this unit's etcd worker runs (clearing any stop request); answer failures
    /// with [`Manager::handle_worker_start_failed`].
    StartWorker,
    /// Ask this unit's etcd worker to release and exit.
    StopWorker,
    /// An effect of the etcd relation flows (secrets, key generation, files); the host
    /// answers as each variant says.
    EtcdRelation(RelationCommand),
    /// Write a log line.
    Log {
        /// Severity.
        level: LogLevel,
        /// Text.
        message: String,
    },
}

/// `RollingOpsStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// No peer relation.
    NotReady,
    /// Operations queued.
    Waiting,
    /// Holds the lock and has not run under it yet.
    Granted,
    /// Nothing queued.
    Idle,
}

/// `RollingOpsState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// Status.
    pub status: Status,
    /// Owning backend.
    pub processing_backend: Backend,
}

/// How a charm's sync-lock backend failed, as reported by the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncBackendError {
    /// It raised `TimeoutError`.
    TimedOut,
    /// It raised something else.
    Failed(String),
    /// Not registered in this process.
    Missing,
}

struct Peer {
    relation_id: u32,
    app: Bag,
    local: Bag,
    remote_units: BTreeSet<String>,
    /// Decoded remote bags, in unit order.
    remotes: Vec<UnitRecord>,
}

impl Peer {
    /// Every unit's record, this unit's (`local`) included, in unit order.
    fn units_with<'a>(&'a self, local: &'a UnitRecord) -> Vec<&'a UnitRecord> {
        let at = self
            .remotes
            .partition_point(|r| wire::unit_order_key(&r.name) < wire::unit_order_key(&local.name));
        let mut units: Vec<&UnitRecord> = self.remotes.iter().collect();
        units.insert(at, local);
        units
    }

    /// A remote unit's decoded bag, if it was read (binary search: `remotes` is in unit
    /// order, and the leader looks units up once per unit per pass).
    fn record(&self, name: &str) -> Option<&UnitRecord> {
        let key = wire::unit_order_key(name);
        self.remotes
            .binary_search_by(|r| wire::unit_order_key(&r.name).cmp(&key))
            .ok()
            .map(|i| &self.remotes[i])
    }
}

enum Execution {
    /// A callback runs; the manager waits for its result.
    CallbackStarted,
    /// The turn was recorded without a callback (empty queue, unknown id, bad queue).
    Recorded,
}

/// One hook's manager. See the module docs for the calling order.
pub struct Manager {
    config: Config,
    now: Timestamp,
    unit: String,
    leader: bool,
    peer: Option<Peer>,
    commands: VecDeque<Command>,
    /// The grant the running callback executes under.
    awaiting: Option<Grant>,
    /// The etcd op (key, op) the running callback executes.
    awaiting_etcd: Option<(String, Operation)>,
    /// The plain finalize to run if handing the lock over fails.
    etcd_plain_release: Option<String>,
    /// An etcd-managed callback finished with this result (key, op): it is recorded once
    /// the waiters to hand the lock to are known (read while it ran, or again after it).
    etcd_result_waiting: Option<(OperationResult, String, Operation)>,
    /// The health check running for the gate of this grant.
    awaiting_health: Option<(Grant, crate::features::HealthGate)>,
    /// The leader runs a finished roll's completion callback.
    awaiting_roll_notice: bool,
    /// The leader's engaged feature set, computed once per hook (remote bags do not change
    /// within a hook).
    engaged: std::cell::OnceCell<crate::features::FeatureSet>,
    etcd: Option<EtcdContext>,
    etcd_relation: Option<EtcdRelation>,
    relation_flow: etcd_relation::RelationFlow,
    callback_ran: bool,
    dispatched: bool,
    /// Identity of the grant committed before this hook started, if any. A unit runs inline
    /// only under a committed grant: a grant this hook wrote is invisible to everyone until
    /// the hook commits, so a leader that lost leadership meanwhile could be overruled by
    /// its successor while already running. Such a grant is run in a dispatched hook.
    committed_grant: Option<String>,
}

impl Manager {
    /// Whether a hook must read every remote unit's bag before building the manager:
    /// only the leader schedules, so only the leader needs them.
    pub fn reads_all_units(leader: bool) -> bool {
        leader
    }

    /// Build the manager for one hook.
    pub fn new(config: Config, context: HookContext) -> Result<Self, Error> {
        config.validate()?;
        let peer = context.peer.map(|data| {
            let mut remotes: Vec<UnitRecord> = data
                .remote_bags
                .iter()
                .filter(|(name, _)| **name != context.unit)
                .map(|(name, bag)| UnitRecord::decode(name, bag))
                .collect();
            // Names are unique, so an unstable sort orders them the same.
            remotes.sort_unstable_by(|a, b| {
                wire::unit_order_key(&a.name).cmp(&wire::unit_order_key(&b.name))
            });
            Peer {
                relation_id: data.relation_id,
                app: data.app,
                local: data.local,
                remote_units: data
                    .remote_units
                    .into_iter()
                    .filter(|u| *u != context.unit)
                    .collect(),
                remotes,
            }
        });
        let committed_grant = peer
            .as_ref()
            .and_then(|p| {
                LockState::decode(&p.app)
                    .holders()
                    .into_iter()
                    .find(|g| g.unit == context.unit)
            })
            .map(|g| g.identity());
        Ok(Manager {
            config,
            now: context.now,
            unit: context.unit,
            leader: context.leader,
            peer,
            commands: VecDeque::new(),
            awaiting: None,
            awaiting_etcd: None,
            etcd_plain_release: None,
            etcd_result_waiting: None,
            awaiting_health: None,
            awaiting_roll_notice: false,
            engaged: std::cell::OnceCell::new(),
            etcd: context.etcd,
            etcd_relation: context.etcd_relation,
            relation_flow: Default::default(),
            callback_ran: false,
            dispatched: false,
            committed_grant,
        })
    }

    /// Add a remote unit's bag read after construction (for [`Manager::is_waiting`]).
    pub fn add_remote_bag(&mut self, unit: &str, bag: &Bag) {
        self.engaged = std::cell::OnceCell::new();
        if let Some(peer) = self.peer.as_mut() {
            peer.remotes.retain(|r| r.name != unit);
            let at = peer
                .remotes
                .partition_point(|r| wire::unit_order_key(&r.name) < wire::unit_order_key(unit));
            peer.remotes.insert(at, UnitRecord::decode(unit, bag));
        }
    }

    /// Remote units whose bags this hook has not read (non-leaders read only their own).
    pub fn unread_remote_units(&self) -> Vec<String> {
        self.peer.as_ref().map_or_else(Vec::new, |p| {
            p.remote_units
                .iter()
                .filter(|u| p.record(u).is_none())
                .cloned()
                .collect()
        })
    }

    /// Whether `unit` is a remote unit whose bag has not been read.
    pub fn needs_remote_bag(&self, unit: &str) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|p| p.remote_units.contains(unit) && p.record(unit).is_none())
    }

    /// Next piece of work for the host.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// This unit's name.
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// The peer relation id, if the relation exists.
    pub fn relation_id(&self) -> Option<u32> {
        self.peer.as_ref().map(|p| p.relation_id)
    }

    // ---------------------------------------------------------------------------------
    // Entry points

    /// `request_async_lock`: queue an operation for this unit (spec/peer.md §1.4).
    pub fn request_async_lock(
        &mut self,
        callback_id: &str,
        kwargs_json: &str,
        max_retry: Option<i64>,
    ) -> Result<(), Error> {
        self.request_lock(
            callback_id,
            kwargs_json,
            RequestOptions {
                max_retry,
                ..Default::default()
            },
        )
    }

    /// Queue an operation with options (health gate, generation argument).
    pub fn request_lock(
        &mut self,
        callback_id: &str,
        kwargs_json: &str,
        options: RequestOptions,
    ) -> Result<(), Error> {
        const FAILED: &str = "Failed to create the lock request";
        if !self.config.callback_ids.iter().any(|id| id == callback_id) {
            return Err(Error::InvalidLockRequest(format!(
                "Unknown callback_id: {callback_id}"
            )));
        }
        if self.peer.is_none() {
            return Err(self.no_relation());
        }
        if callback_id.trim().is_empty() {
            return Err(Error::InvalidLockRequest(format!(
                "{FAILED}: callback_id is blank"
            )));
        }
        let kwargs: Map<String, Value> = match serde_json::from_str::<Value>(kwargs_json) {
            Ok(Value::Object(map)) => map,
            Ok(other) => {
                let kind = json_kind(&other);
                return Err(Error::InvalidLockRequest(format!(
                    "{FAILED}: kwargs must be a JSON object with string keys, got {kind}"
                )));
            }
            Err(e) => {
                return Err(Error::InvalidLockRequest(format!(
                    "{FAILED}: kwargs are not valid JSON: {e}"
                )));
            }
        };
        let max_retry = match options.max_retry {
            Some(n) if n < 0 => {
                return Err(Error::InvalidLockRequest(format!(
                    "{FAILED}: max_retry must be >= 0, got {n}"
                )));
            }
            other => other.map(|n| n as u64),
        };
        let op_options = self.check_request_options(&options)?;
        self.enqueue(callback_id, kwargs, max_retry, op_options)
            .map_err(|e| {
                Error::InvalidLockRequest(format!(
                    "{FAILED}: this unit's stored queue cannot be decoded ({}); it was left untouched",
                    e.0
                ))
            })?;
        self.advance(false);
        Ok(())
    }

    /// Put one operation in this unit's queue (peer or etcd). An undecodable stored queue is
    /// left untouched and reported.
    fn enqueue(
        &mut self,
        callback_id: &str,
        kwargs: Map<String, Value>,
        max_retry: Option<u64>,
        op_options: crate::features::OpOptions,
    ) -> Result<(), crate::op::DecodeError> {
        let local = self.local_record();
        let mut queue = local.queue.clone()?;
        let head_started = queue.head().is_some_and(|head| head.attempt > 0);
        let etcd_selected = self.etcd_selected(&local);
        let op = Operation::new(callback_id, kwargs, max_retry, self.now);
        let mut pairs = Vec::new();
        let mut appended = None;
        match queue.enqueue(op.clone(), head_started) {
            Enqueued::Duplicate => {
                self.log(
                    LogLevel::Info,
                    format!("An identical {callback_id:?} request is already queued and not started; not adding another."),
                );
                let twin = queue
                    .ops()
                    .iter()
                    .rev()
                    .find(|queued| queued.same_request(&op))
                    .map(Operation::op_id);
                if let Some(twin) = twin.filter(|_| !op_options.is_empty()) {
                    let mut options = self.op_options(&twin);
                    options.roll = op_options.roll.or(options.roll);
                    options.health_check = op_options.health_check.clone().or(options.health_check);
                    options.health_timeout = op_options.health_timeout.or(options.health_timeout);
                    options.generation_kwarg = op_options
                        .generation_kwarg
                        .clone()
                        .or(options.generation_kwarg);
                    pairs.push(self.op_options_pair(&queue, Some((twin, options))));
                }
            }
            Enqueued::Appended => {
                let intent = match (queue.len(), local.intent.clone()) {
                    (1, _) | (_, Ok(Intent::Idle)) | (_, Err(_)) => Intent::Request,
                    (_, Ok(intent)) => intent,
                };
                pairs.push((wire::OPERATIONS.to_string(), queue.encode()));
                pairs.push((wire::STATE.to_string(), intent.as_str().to_string()));
                if !op_options.is_empty() {
                    pairs.push(self.op_options_pair(&queue, Some((op.op_id(), op_options))));
                }
                appended = Some(op);
                self.log(
                    LogLevel::Info,
                    format!(
                        "Queued {callback_id:?} ({} queued on this unit).",
                        queue.len()
                    ),
                );
            }
        }
        if etcd_selected {
            let fields = self.etcd_enqueue(&local, appended.as_ref());
            pairs.extend(fields);
        } else {
            pairs.push((
                wire::PROCESSING_BACKEND.to_string(),
                Backend::Peer.as_str().to_string(),
            ));
            pairs.push((wire::ETCD_CLEANUP_NEEDED.to_string(), "true".to_string()));
            if self.etcd.is_some() && !local.peer_managed() {
                self.commands.push_back(Command::StopWorker);
            }
        }
        self.set_local(pairs);
        Ok(())
    }

    /// React to a hook.
    pub fn handle_event(&mut self, event: Event) -> Result<(), Error> {
        self.etcd_relation_event(&event);
        if self.peer.is_none() {
            if event == Event::LockGranted {
                self.log(LogLevel::Error, format!("{}", self.no_relation()));
            }
            return Ok(());
        }
        match event {
            Event::PeerRelationDeparted(departing) => {
                let peer = self.peer.as_mut().expect("checked above");
                peer.remote_units.remove(&departing);
                peer.remotes.retain(|r| r.name != departing);
                self.engaged = std::cell::OnceCell::new();
                self.advance(true);
            }
            Event::LockGranted | Event::UpdateStatus if !self.local_record().peer_managed() => {
                self.etcd_turn(event == Event::UpdateStatus);
                self.advance(true);
            }
            Event::PeerRelationChanged
            | Event::LeaderElected
            | Event::UpdateStatus
            | Event::LockGranted => self.advance(true),
            Event::EtcdFailed => {
                self.fall_back("the etcd worker reported a failure");
                self.advance(true);
            }
            // Without the relation an etcd-managed unit falls back at once.
            Event::EtcdRelationBroken => self.advance(true),
            Event::EtcdRelationCreated | Event::EtcdRelationChanged | Event::SecretChanged(_) => {}
        }
        Ok(())
    }

    /// The host's answer to [`Command::RunCallback`]; `now` is the clock after it returned.
    pub fn handle_callback_result(&mut self, outcome: CallbackOutcome, now: Timestamp) {
        self.now = now;
        if let Some((grant, gate)) = self.awaiting_health.take() {
            self.health_result(outcome, &grant, gate);
            self.advance(false);
            return;
        }
        if std::mem::take(&mut self.awaiting_roll_notice) {
            if let CallbackOutcome::Raised(why) | CallbackOutcome::Returned(Some(why)) = &outcome
                && matches!(outcome, CallbackOutcome::Raised(_))
            {
                self.log(
                    LogLevel::Error,
                    format!("The roll-complete callback raised: {why}"),
                );
            }
            self.advance(false);
            return;
        }
        if let Some((key, op)) = self.awaiting_etcd.take() {
            let result = self.map_outcome(&op.callback_id, outcome);
            self.etcd_callback_done(result, key, op);
            return;
        }
        let Some(grant) = self.awaiting.take() else {
            return;
        };
        let head = self
            .local_record()
            .queue
            .ok()
            .and_then(|q| q.head().map(|h| h.callback_id.clone()));
        let id = head.unwrap_or_default();
        let result = self.map_outcome(&id, outcome);
        self.record(result, &grant);
        self.advance(false);
    }

    /// A failed [`Command::StartWorker`]: without a worker etcd cannot run this unit's
    /// queue, so hand it back to the peer relation.
    pub fn handle_worker_start_failed(&mut self, why: &str) {
        self.fall_back(&format!("the etcd worker could not be started: {why}"));
        self.advance(false);
    }

    fn map_outcome(&mut self, id: &str, outcome: CallbackOutcome) -> OperationResult {
        match outcome {
            CallbackOutcome::Returned(value) => OperationResult::from_returned(value.as_deref()),
            CallbackOutcome::Raised(description) => {
                self.log(
                    LogLevel::Error,
                    format!("Callback {id:?} raised; treating it as retry-release: {description}"),
                );
                OperationResult::RetryRelease
            }
            CallbackOutcome::Missing => {
                self.log(
                    LogLevel::Error,
                    format!("Callback {id:?} is not registered; dropping the operation."),
                );
                OperationResult::Release
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Queries

    /// `state` (spec/peer.md §1.4, with `granted` only until the holder has run, §8 W16).
    pub fn state(&mut self) -> Result<State, Error> {
        let Some(_) = &self.peer else {
            return Ok(State {
                status: Status::NotReady,
                processing_backend: Backend::Peer,
            });
        };
        if !self.local_record().peer_managed() {
            match self.etcd_status() {
                Some(status) => {
                    return Ok(State {
                        status,
                        processing_backend: Backend::Etcd,
                    });
                }
                None => self.fall_back("etcd is not ready"),
            }
        }
        let local = self.local_record();
        let processing_backend = local.backend.clone().unwrap_or(Backend::Peer);
        let status = if self.should_run().is_some() {
            Status::Granted
        } else {
            match &local.queue {
                Err(e) => return Err(queue_decoding_error(&local.name, &e.0)),
                Ok(queue) if queue.is_empty() => Status::Idle,
                Ok(_) => Status::Waiting,
            }
        };
        Ok(State {
            status,
            processing_backend,
        })
    }

    /// `is_waiting` / `is_waiting_callback`.
    pub fn is_waiting(&self, unit: Option<&str>, callback_id: Option<&str>) -> Result<bool, Error> {
        let Some(peer) = &self.peer else {
            return Ok(false);
        };
        let record = match unit {
            None => self.local_record(),
            Some(name) if name == self.unit => self.local_record(),
            Some(name) if peer.remote_units.contains(name) => peer
                .remotes
                .iter()
                .find(|r| r.name == name)
                .cloned()
                .unwrap_or_else(|| UnitRecord::decode(name, &Bag::new())),
            Some(_) => {
                return Err(Error::InvalidArgument(
                    "unit_name provided does not belong to the peer relation.".into(),
                ));
            }
        };
        let queue = record
            .queue
            .map_err(|e| queue_decoding_error(&record.name, &e.0))?;
        Ok(match callback_id {
            None => !queue.is_empty(),
            Some(id) => queue.ops().iter().any(|op| op.callback_id == id),
        })
    }

    /// A JSON view of the lock and every known unit's queue, for people and scripts.
    pub fn describe(&self) -> String {
        let Some(peer) = &self.peer else {
            return json!({"unit": self.unit, "leader": self.leader, "relation": false})
                .to_string();
        };
        let lock = LockState::decode(&peer.app);
        let local = self.local_record();
        let units: Vec<Value> = peer
            .units_with(&local)
            .into_iter()
            .map(|u| describe_unit(u, self.now))
            .collect();
        json!({
            "unit": self.unit,
            "leader": self.leader,
            "relation": true,
            "now": self.now.to_string(),
            "lock": lock.grant.as_ref().map(|g| json!({
                "holder": g.unit,
                "granted_at": g.at_raw,
                "held_for_seconds": g.at.map(|at| self.now.seconds_since(at)),
                "generation": g.seq,
            })),
            "holders": lock.holders().iter().map(|g| json!({
                "unit": g.unit,
                "generation": g.seq,
                "held_for_seconds": g.at.map(|at| self.now.seconds_since(at)),
            })).collect::<Vec<_>>(),
            "engaged_features": self.engaged_features().iter().map(|f| f.as_str()).collect::<Vec<_>>(),
            "policy": crate::features::Record::to_value(&crate::features::decode_policy(&peer.app)),
            "paused": crate::features::decode_pause(&peer.app).map(|p| crate::features::Record::to_value(&p)),
            "roll": crate::features::decode_roll(&peer.app).map(|r| json!({
                "generation": r.generation,
                "callback_id": r.callback_id,
                "started": r.started,
                "completed": r.completed,
                "pending_units": self.roll_pending(r.generation),
            })),
            "units": units,
            "etcd": self.describe_etcd(),
            "remote_units_not_read": peer.remote_units.iter()
                .filter(|u| peer.record(u).is_none()).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// Check a sync-lock backend id before the host calls it.
    pub fn check_sync_backend(&self, backend_id: &str) -> Result<(), Error> {
        if self.config.sync_lock_ids.iter().any(|id| id == backend_id) {
            Ok(())
        } else {
            Err(unknown_sync_backend(backend_id))
        }
    }

    // ---------------------------------------------------------------------------------
    // Decisions

    /// Schedule (leader), run this unit's turn inline when it holds the lock (at most one
    /// callback per hook), and ask for a fresh hook when another turn is due.
    fn advance(&mut self, inline: bool) {
        if self.peer.is_none() || self.busy() {
            return;
        }
        self.advertise_features();
        self.join_roll();
        if !self.local_record().peer_managed() {
            let why = match &self.etcd {
                None => Some("this hook has no etcd cluster id".to_string()),
                Some(etcd) => etcd.unusable(),
            };
            if let Some(why) = why {
                self.fall_back(&why);
            }
        }
        loop {
            if self.leader {
                self.schedule();
                if inline && !self.callback_ran {
                    if self.notify_roll_complete() {
                        return;
                    }
                } else if self.roll_ready() {
                    // Finish the roll in a hook of its own (one callback per hook).
                    self.wake_up();
                }
            }
            let Some(grant) = self.should_run() else {
                return;
            };
            let committed = self.committed_grant.as_deref() == Some(grant.identity().as_str());
            if let Some(gate) = self.open_gate(&grant) {
                if inline && !self.callback_ran && committed {
                    self.run_health_check(&grant, gate);
                }
                return;
            }
            if !inline || self.callback_ran || !committed {
                self.wake_up();
                return;
            }
            match self.start_execution(&grant) {
                Execution::CallbackStarted => return,
                Execution::Recorded => continue,
            }
        }
    }

    /// The leader's pass: end finished grants, then grant waiting units up to capacity.
    fn schedule(&mut self) {
        // Only the app bag changes while scheduling: this unit's record is read once.
        let local = self.local_record();
        let (lock, policy, stored_backoff) = {
            let peer = self.peer.as_ref().expect("scheduling needs the relation");
            (
                LockState::decode(&peer.app),
                crate::features::decode_policy(&peer.app),
                crate::features::decode_reclaimed(&peer.app),
            )
        };
        let engaged = self.engaged_features();
        let mut seq = lock.last_seq;
        let mut holders = Vec::new();
        let mut changed = false;
        // Units whose grant was reclaimed wait out a back-off, so the lock really moves on
        // and a dead unit is not granted again and again.
        let mut backoff = stored_backoff.clone();
        {
            // An entry lasts while its unit is on the relation and still waits (so the next
            // reclaim doubles the back-off); a unit that got its turn starts afresh.
            let peer = self.peer.as_ref().expect("scheduling needs the relation");
            backoff.retain(|u, _| {
                let record = if *u == self.unit {
                    Some(&local)
                } else {
                    peer.record(u)
                };
                record.is_some_and(|r| {
                    r.schedulable()
                        .is_ok_and(|(_, intent)| intent != wire::Intent::Idle)
                })
            });
        }
        let now_micros = self.now.micros();
        let backoff_s = policy
            .grant_timeout
            .unwrap_or(crate::features::DEFAULT_RECLAIM_BACKOFF_S);
        let mut reclaimed_now: Option<u32> = None;
        for grant in lock.holders() {
            let holder = self.holder_record(&grant, &local);
            let reason = release_reason(holder.as_ref(), &grant).or_else(|| {
                let timeout = policy
                    .grant_timeout
                    .filter(|_| engaged.contains(&Feature::GrantTimeout))?;
                let at = grant.at?;
                // A holder waiting in its health gate is not stuck: the gate has its own
                // timeout, after which the grant timeout counts again.
                let gate_open = holder
                    .as_ref()
                    .and_then(|h| h.health.as_ref())
                    .is_some_and(|g| !g.failed && self.now.micros() < g.deadline);
                (!gate_open && self.now.seconds_since(at) >= f64::from(timeout))
                    .then_some(ReleaseReason::TimedOut)
            });
            match reason {
                None => holders.push(grant),
                Some(reason) => {
                    let level = match reason {
                        ReleaseReason::TimedOut => LogLevel::Warning,
                        _ => LogLevel::Info,
                    };
                    self.log(
                        level,
                        format!(
                            "Releasing the lock held by {}: {}.",
                            grant.unit,
                            reason.describe()
                        ),
                    );
                    if let Some(holder) = &holder {
                        self.halt_on_failed_gate(holder, &grant, &policy, &engaged);
                    }
                    if matches!(reason, ReleaseReason::TimedOut | ReleaseReason::Forced) {
                        let next = crate::features::next_backoff(
                            backoff.get(&grant.unit),
                            backoff_s,
                            now_micros,
                        );
                        backoff.insert(grant.unit.clone(), next);
                        reclaimed_now = Some(next.seconds);
                    }
                    changed = true;
                }
            }
        }
        let capacity = if engaged.contains(&Feature::MaxConcurrent) {
            policy.max_concurrent.max(1) as usize
        } else {
            1
        };
        // Read after the releases above: one of them may have paused the application (a
        // failed health gate). Grants also wait while units join a new roll.
        let hold_grants = self
            .peer
            .as_ref()
            .is_some_and(|p| crate::features::decode_pause(&p.app).is_some())
            && engaged.contains(&Feature::Pause)
            || self.roll_joining();
        let ranked =
            engaged.contains(&Feature::Rank) && policy.ordering == crate::features::Ordering::Rank;
        let mut granted = Vec::new();
        {
            let peer = self.peer.as_ref().expect("scheduling needs the relation");
            let units = peer.units_with(&local);
            let skipped: Vec<String> = units
                .iter()
                .filter_map(|u| {
                    u.schedulable()
                        .err()
                        .map(|e| format!("{} ({})", u.name, e.0))
                })
                .collect();
            if !skipped.is_empty() {
                self.commands.push_back(Command::Log {
                    level: LogLevel::Error,
                    message: format!(
                        "Skipping units whose rollingops data cannot be decoded: {}.",
                        skipped.join(", ")
                    ),
                });
            }
            let rank = |u: &UnitRecord| if ranked { u.rank } else { 0 };
            while !hold_grants && holders.len() + granted.len() < capacity {
                let candidates = units.iter().copied().filter(|u| {
                    !holders.iter().any(|g: &Grant| g.unit == u.name)
                        && !granted.contains(&u.name)
                        && backoff.get(&u.name).is_none_or(|b| b.until <= now_micros)
                });
                match next_grant(candidates, rank) {
                    Some(unit) => granted.push(unit.name.clone()),
                    None => break,
                }
            }
        }
        for unit in granted {
            seq += 1;
            self.log(
                LogLevel::Info,
                format!("Granting the lock to {unit} (generation {seq})."),
            );
            holders.push(wire::new_grant(&unit, self.now, seq));
            changed = true;
            if let Some(timeout) = policy
                .grant_timeout
                .filter(|_| engaged.contains(&Feature::GrantTimeout))
            {
                self.dispatch_after(timeout.saturating_mul(1000));
            }
        }
        if changed {
            self.set_app(LockState::pairs(&holders, seq));
        }
        if backoff != stored_backoff {
            self.set_app(vec![(
                crate::features::RECLAIMED.into(),
                crate::features::encode_reclaimed(&backoff),
            )]);
        }
        // Nothing else would wake the leader when the back-off ends.
        if let Some(seconds) = reclaimed_now {
            self.dispatch_after(seconds.saturating_mul(1000));
        }
    }

    fn holder_record(&self, grant: &Grant, local: &UnitRecord) -> Option<UnitRecord> {
        if grant.unit == self.unit {
            return Some(local.clone());
        }
        let peer = self.peer.as_ref()?;
        if !peer.remote_units.contains(&grant.unit) {
            return None;
        }
        let found = peer.record(&grant.unit).cloned();
        Some(found.unwrap_or_else(|| UnitRecord::decode(&grant.unit, &Bag::new())))
    }

    /// The grant this unit should run under now, if any.
    fn should_run(&self) -> Option<Grant> {
        let peer = self.peer.as_ref()?;
        let grant = LockState::decode(&peer.app)
            .holders()
            .into_iter()
            .find(|g| g.unit == self.unit)?;
        let local = self.local_record();
        if !local.peer_managed() {
            return None;
        }
        match &local.executed_grant {
            Some(echo) => (*echo != grant.identity()).then_some(grant),
            // No echo yet (a unit upgraded from the reference): the leader judges such a
            // holder by the reference's rule, so the holder must too, whoever wrote the
            // grant; otherwise it could start while the leader already granted another.
            None => {
                let ran = matches!((local.executed_at, grant.at), (Some(e), Some(g)) if e > g);
                (!ran).then_some(grant)
            }
        }
    }

    fn start_execution(&mut self, grant: &Grant) -> Execution {
        let local = self.local_record();
        let queue = match local.queue {
            Ok(queue) => queue,
            Err(e) => {
                self.log(
                    LogLevel::Error,
                    format!(
                        "Cannot run under the lock: this unit's queue cannot be decoded ({}). \
                         Handing the lock on; the stored queue is left untouched for repair.",
                        e.0
                    ),
                );
                self.set_local(vec![
                    (wire::EXECUTED_AT.into(), self.executed_at(grant)),
                    (wire::EXECUTED_GRANT.into(), grant.identity()),
                ]);
                return Execution::Recorded;
            }
        };
        let Some(head) = queue.head() else {
            self.write_turn(&queue, Intent::Idle, grant);
            return Execution::Recorded;
        };
        if !self.config.callback_ids.contains(&head.callback_id) {
            self.log(
                LogLevel::Error,
                format!(
                    "Unknown callback_id {:?}: dropping the operation.",
                    head.callback_id
                ),
            );
            let mut queue = queue;
            let dropped = queue.drop_head();
            let intent = if queue.is_empty() {
                Intent::Idle
            } else {
                Intent::Request
            };
            self.write_turn(&queue, intent, grant);
            if let Some(op) = dropped {
                self.forget_op(&op);
            }
            return Execution::Recorded;
        }
        self.log(
            LogLevel::Info,
            format!(
                "Running {:?} under the lock (attempt {}).",
                head.callback_id,
                head.attempt + 1
            ),
        );
        let mut kwargs = head.kwargs.clone();
        if let Some(name) = self.op_options(&head.op_id()).generation_kwarg {
            kwargs.insert(name, json!(grant.seq.unwrap_or(0)));
        }
        self.commands.push_back(Command::RunCallback {
            id: head.callback_id.clone(),
            kwargs_json: kwargs_json(&kwargs),
        });
        self.awaiting = Some(grant.clone());
        self.callback_ran = true;
        Execution::CallbackStarted
    }

    fn record(&mut self, result: OperationResult, grant: &Grant) {
        let Ok(queue) = self.local_record().queue else {
            return;
        };
        let head = queue.head().cloned();
        if let Some(head) = &head
            && result == OperationResult::Release
            && self.open_health_gate(grant, head)
        {
            return;
        }
        self.record_turn(queue, head, result, grant);
    }

    /// Record `result` of the head operation `head` (taken from `queue`) under `grant`.
    fn record_turn(
        &mut self,
        mut queue: OperationQueue,
        head: Option<Operation>,
        result: OperationResult,
        grant: &Grant,
    ) {
        let id = head
            .as_ref()
            .map(|h| h.callback_id.clone())
            .unwrap_or_default();
        let intent = match queue.record(result) {
            Some(Recorded::Retained(OperationResult::RetryHold)) => Intent::RetryHold,
            Some(Recorded::Retained(_)) => Intent::RetryRelease,
            Some(Recorded::Removed { exhausted }) => {
                if exhausted {
                    self.log(
                        LogLevel::Warning,
                        format!("{id:?} reached its max_retry; dropping it."),
                    );
                }
                if queue.is_empty() {
                    Intent::Idle
                } else {
                    Intent::Request
                }
            }
            None => Intent::Idle,
        };
        self.log(
            LogLevel::Info,
            format!("{id:?} finished with {}.", result.as_str()),
        );
        self.write_turn(&queue, intent, grant);
        if let Some(head) = head
            && queue.head().is_none_or(|h| h.op_id() != head.op_id())
        {
            self.forget_op(&head);
        }
    }

    fn write_turn(&mut self, queue: &OperationQueue, intent: Intent, grant: &Grant) {
        self.set_local(vec![
            (wire::OPERATIONS.into(), queue.encode()),
            (wire::STATE.into(), intent.as_str().into()),
            (wire::EXECUTED_AT.into(), self.executed_at(grant)),
            (wire::EXECUTED_GRANT.into(), grant.identity()),
        ]);
    }

    /// `executed_at` for a turn under `grant`: now, but always after `granted_at`. A
    /// reference leader releases only on `executed_at > granted_at` (or idle), and this
    /// unit never re-runs under the same grant, so a clock behind the leader's would
    /// otherwise hold the lock forever (spec/peer.md §8.1).
    fn executed_at(&self, grant: &Grant) -> String {
        match grant.at {
            Some(granted) if granted >= self.now => Timestamp::from_micros(granted.micros() + 1),
            _ => self.now,
        }
        .to_string()
    }

    fn wake_up(&mut self) {
        if !self.dispatched {
            self.dispatched = true;
            self.commands.push_back(Command::Dispatch {
                event: LOCK_GRANTED_HOOK.into(),
            });
        }
    }

    // ---------------------------------------------------------------------------------
    // Bag plumbing

    fn local_record(&self) -> UnitRecord {
        match &self.peer {
            Some(peer) => UnitRecord::decode(&self.unit, &peer.local),
            None => UnitRecord::decode(&self.unit, &Bag::new()),
        }
    }

    fn set_local(&mut self, pairs: Vec<(String, String)>) {
        self.set_bag(false, pairs);
    }

    fn set_app(&mut self, pairs: Vec<(String, String)>) {
        self.set_bag(true, pairs);
    }

    /// Apply writes to the in-memory bag and emit only those that change something.
    fn set_bag(&mut self, app: bool, pairs: Vec<(String, String)>) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let bag = if app { &mut peer.app } else { &mut peer.local };
        let mut changed = Vec::new();
        for (key, value) in pairs {
            let current = bag.get(&key).map(String::as_str).unwrap_or("");
            if current == value {
                continue;
            }
            if value.is_empty() {
                bag.remove(&key);
            } else {
                bag.insert(key.clone(), value.clone());
            }
            changed.push((key, value));
        }
        if !changed.is_empty() {
            self.commands.push_back(Command::SetBag {
                relation_id: peer.relation_id,
                app,
                pairs: changed,
            });
        }
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.commands.push_back(Command::Log { level, message });
    }

    fn no_relation(&self) -> Error {
        Error::NoRelation(format!(
            "No {} peer relation yet.",
            self.config.peer_relation_name
        ))
    }
}

/// The error for a `sync-backend-acquire` failure (spec/peer.md §5.1, with timeouts kept
/// as timeouts, §8 W14).
pub fn sync_acquire_error(backend_id: &str, error: SyncBackendError) -> Error {
    match error {
        SyncBackendError::TimedOut => Error::Timeout(format!(
            "Timed out acquiring sync lock backend {backend_id}"
        )),
        SyncBackendError::Failed(description) => Error::SyncLock(format!(
            "Failed to acquire sync lock backend {backend_id}: {description}"
        )),
        SyncBackendError::Missing => unknown_sync_backend(backend_id),
    }
}

/// The error for a `sync-backend-release` failure.
pub fn sync_release_error(backend_id: &str, error: SyncBackendError) -> Error {
    match error {
        SyncBackendError::Missing => unknown_sync_backend(backend_id),
        SyncBackendError::TimedOut => Error::SyncLock(format!(
            "Failed to release sync lock backend {backend_id}: timed out"
        )),
        SyncBackendError::Failed(description) => Error::SyncLock(format!(
            "Failed to release sync lock backend {backend_id}: {description}"
        )),
    }
}

fn unknown_sync_backend(backend_id: &str) -> Error {
    Error::SyncLock(format!("Unknown sync lock backend: {backend_id}."))
}

fn queue_decoding_error(unit: &str, why: &str) -> Error {
    Error::Decoding(format!(
        "Failed to deserialize data to create an OperationQueue (unit {unit}): {why}"
    ))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe_unit(unit: &UnitRecord, now: Timestamp) -> Value {
    let queue = match &unit.queue {
        Ok(queue) => Value::Array(
            queue
                .ops()
                .iter()
                .map(|op| {
                    json!({
                        "callback_id": op.callback_id,
                        "kwargs": op.kwargs,
                        "attempt": op.attempt,
                        "max_retry": op.max_retry,
                        "requested_at": op.requested_at.to_string(),
                        "age_seconds": now.seconds_since(op.requested_at),
                    })
                })
                .collect(),
        ),
        Err(_) => Value::Null,
    };
    let mut errors = Vec::new();
    if let Err(e) = &unit.queue {
        errors.push(format!("operations: {}", e.0));
    }
    if let Err(e) = &unit.intent {
        errors.push(format!("state: {}", e.0));
    }
    if let Err(e) = &unit.backend {
        errors.push(format!("processing_backend: {}", e.0));
    }
    json!({
        "name": unit.name,
        "intent": unit.schedulable().ok().map(|(_, intent)| intent.as_str()),
        "backend": unit.backend.as_ref().ok().map(|b| b.as_str()),
        "executed_at": unit.executed_at.map(|t| t.to_string()),
        "queue": queue,
        "errors": errors,
        "features": unit.features.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        "rank": unit.rank,
        "roll": {"seen": unit.roll.seen, "done": unit.roll.done},
        "health_gate": unit.health.as_ref().map(|g| json!({
            "check": g.check,
            "attempts": g.attempts,
            "waiting_seconds": health::gate_age(g, now),
            "failed": g.failed,
        })),
    })
}
