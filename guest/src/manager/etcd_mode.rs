//! The manager's etcd mode (spec/etcd.md §6.4, §6.6, §8): backend selection, enqueueing
//! into etcd, running a claimed operation in the lock-granted hook and mirroring its result
//! into the peer queue, falling back to the peer relation, and the etcd status.
//!
//! The hook reads etcd before the manager is built ([`EtcdContext`]); writes go out as
//! [`Command::Etcdctl`] and come back through [`Manager::handle_etcdctl_result`]. Fixes
//! over the reference: values are quoted in transactions (§11 item 3), a queued etcd unit
//! reports `waiting` (item 4), de-duplication is the peer queue's rule for both copies
//! (item 5), a lock-granted or update-status hook that finds nothing claimed does nothing
//! instead of falling back (item 6), and update-status restarts a missing worker instead of
//! falling back (item 11).

use serde_json::json;

use super::{Command, LogLevel, Manager};
use crate::etcd::handoff;
use crate::etcd::keys::{self, Keys};
use crate::etcd::queue::finalize;
use crate::etcd::turn;
use crate::op::{Operation, OperationResult};
use crate::wire::{self, Backend, Intent, UnitRecord};

pub use crate::etcd::turn::EtcdFacts;

/// etcd as this hook sees it; present only when the charm gave both an etcd relation name
/// and a cluster id.
#[derive(Clone, Debug)]
pub struct EtcdContext {
    /// The model's UUID (part of the owner).
    pub model_uuid: String,
    /// The cluster id.
    pub cluster_id: String,
    /// Whether the etcd relation exists.
    pub relation: bool,
    /// The etcdctl environment, or why etcd is not configured on this unit.
    pub environment: Result<Vec<(String, String)>, String>,
    /// What etcd said, or why it could not be read; `None` when not read.
    pub facts: Option<Result<EtcdFacts, String>>,
    /// The last grant this unit ran a callback for ([`crate::etcd::turn::GRANT_FILE`]; 0:
    /// none or not read — only hooks that read the facts read it —, `u64::MAX`: unreadable).
    pub last_grant: u64,
}

impl EtcdContext {
    /// This unit's owner string and keys.
    pub fn identity(&self, unit: &str) -> (String, Keys) {
        let owner = keys::owner(&self.model_uuid, unit);
        let keys = Keys::new(&self.cluster_id, &owner);
        (owner, keys)
    }

    /// Why etcd cannot be used in this hook, if it cannot.
    pub fn unusable(&self) -> Option<String> {
        if !self.relation {
            return Some("the etcd relation does not exist".into());
        }
        if let Err(why) = &self.environment {
            return Some(why.clone());
        }
        match &self.facts {
            Some(Err(why)) => Some(format!("etcd could not be read: {why}")),
            _ => None,
        }
    }
}

/// Which etcd write a [`Command::Etcdctl`] carries, so its result can be judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtcdPurpose {
    /// Deleting a stale queue prefix before enqueueing.
    Cleanup,
    /// Putting a new op into `pending`.
    Enqueue,
    /// Moving the executed op to `completed` (T4), or dropping/requeueing it and releasing.
    Finalize,
    /// The finalize that hands the lock to a waiter (see [`crate::etcd::handoff`]); on
    /// failure the plain one follows.
    HandOver,
    /// The waiters' registrations, read while a callback run on its worker's claim ran.
    ReadWaiters,
    /// The waiters' registrations, read again after the callback: none were registered when
    /// it started, and a unit that registered while it ran is better handed the lock than
    /// left to race for it after a plain release. A fresh etcdctl, paid only then: a process
    /// started ahead for it in every hook cost more CPU than it saved (bench, 5 units:
    /// median 3.6–4.1 ms against 2.8).
    ReadWaitersAgain,
}

impl Manager {
    /// etcd as this hook sees it (none: the charm gave no etcd relation or cluster id).
    pub fn etcd_context(&self) -> Option<&EtcdContext> {
        self.etcd.as_ref()
    }

    fn etcd_usable(&self) -> bool {
        self.etcd.as_ref().is_some_and(|e| e.unusable().is_none())
    }

    /// Whether a request made now goes to etcd (spec/etcd.md §8.5).
    pub(super) fn etcd_selected(&self, local: &UnitRecord) -> bool {
        if !self.etcd_usable() {
            return false;
        }
        match (&local.backend, &local.queue) {
            (Ok(Backend::Etcd), _) => true,
            (Ok(Backend::Peer), Ok(queue)) => queue.is_empty(),
            _ => false,
        }
    }

    /// Enqueue `op` into etcd (after the peer copy), clean stale queues first, and make sure
    /// a worker runs. Returns the peer-bag fields to write with the request.
    pub(super) fn etcd_enqueue(
        &mut self,
        local: &UnitRecord,
        op: Option<&Operation>,
    ) -> Vec<(String, String)> {
        let etcd = self
            .etcd
            .clone()
            .expect("selected only with an etcd context");
        let (_, keys) = etcd.identity(&self.unit);
        let env = etcd.environment.clone().unwrap_or_default();
        let bag = self
            .peer
            .as_ref()
            .map(|p| p.local.clone())
            .unwrap_or_default();
        let cleanup = bag
            .get(wire::ETCD_CLEANUP_NEEDED)
            .is_some_and(|v| v == "true");
        let switching = !matches!(local.backend, Ok(Backend::Etcd));
        if cleanup {
            for prefix in [&keys.inprogress, &keys.pending, &keys.completed] {
                self.etcdctl(
                    vec!["del".into(), prefix.clone(), "--prefix".into()],
                    None,
                    &env,
                    EtcdPurpose::Cleanup,
                );
            }
        }
        if let Some(op) = op {
            let key = format!("{}{}", keys.pending, op.op_id());
            self.etcdctl(
                vec!["put".into(), key],
                Some(op.to_json()),
                &env,
                EtcdPurpose::Enqueue,
            );
        }
        if switching {
            self.log(LogLevel::Info, "Queue handed to etcd.".into());
        }
        self.commands.push_back(Command::StartWorker);
        vec![
            (
                wire::PROCESSING_BACKEND.into(),
                Backend::Etcd.as_str().into(),
            ),
            (wire::ETCD_CLEANUP_NEEDED.into(), "false".into()),
        ]
    }

    fn etcdctl(
        &mut self,
        args: Vec<String>,
        stdin: Option<String>,
        env: &[(String, String)],
        purpose: EtcdPurpose,
    ) {
        self.commands.push_back(Command::Etcdctl {
            args,
            stdin,
            env: env.to_vec(),
            purpose,
        });
    }

    /// Hand this unit's queue back to the peer relation (spec/etcd.md §8.6): nothing is
    /// lost, because the peer copy holds every unfinished op.
    pub(super) fn fall_back(&mut self, why: &str) {
        if self.local_record().peer_managed() {
            return;
        }
        self.log(
            LogLevel::Warning,
            format!("Falling back to the peer relation: {why}."),
        );
        self.set_local(vec![
            (
                wire::PROCESSING_BACKEND.into(),
                Backend::Peer.as_str().into(),
            ),
            (wire::ETCD_CLEANUP_NEEDED.into(), "true".into()),
        ]);
        if self.etcd.is_some() {
            self.commands.push_back(Command::StopWorker);
        }
    }

    /// lock-granted / update-status for an etcd-managed unit: run the op the worker claimed,
    /// if this unit holds the lock; otherwise nothing.
    pub(super) fn etcd_turn(&mut self, update_status: bool) {
        if let Some(why) = self
            .etcd
            .as_ref()
            .map_or(Some("no cluster id in this hook".into()), |e| e.unusable())
        {
            self.fall_back(&why);
            return;
        }
        let etcd = self.etcd.clone().expect("usable");
        let (owner, _) = etcd.identity(&self.unit);
        let facts = match etcd.facts.clone() {
            Some(Ok(facts)) => facts,
            _ => EtcdFacts::default(),
        };
        let held = facts.lock_holder.as_deref() == Some(owner.as_str());
        let work_left = facts.pending_head.is_some()
            || facts.inprogress.is_some()
            || facts.completed_head.is_some();
        let Some((key, op)) = facts.inprogress.filter(|_| held) else {
            if update_status && work_left {
                // A worker may have died with work left (queued, claimed, or finished but
                // not post-processed): start one (it is a no-op if one runs). The reference
                // fell back to the peer relation here.
                self.commands.push_back(Command::StartWorker);
            }
            return;
        };
        let local = self.local_record();
        let head = local.queue.as_ref().ok().and_then(|q| q.head().cloned());
        if head.as_ref().map(Operation::op_id) != Some(op.op_id()) {
            self.fall_back(&format!(
                "etcd claimed {} but the peer queue's head is {}",
                op.op_id(),
                head.map(|h| h.op_id()).unwrap_or_else(|| "empty".into())
            ));
            return;
        }
        if !self.config.callback_ids.contains(&op.callback_id) {
            self.log(
                LogLevel::Error,
                format!(
                    "Unknown callback_id {:?}: dropping the operation.",
                    op.callback_id
                ),
            );
            self.etcd_record(OperationResult::Release, &key, &op);
            return;
        }
        self.log(
            LogLevel::Info,
            format!(
                "Running {:?} under the etcd lock (attempt {}, grant {}, {}).",
                op.callback_id,
                op.attempt + 1,
                facts.inprogress_revision,
                if facts.from_claim {
                    "on the worker's claim"
                } else {
                    "read from etcd"
                }
            ),
        );
        if facts.inprogress_revision > etcd.last_grant {
            self.commands.push_back(Command::RecordGrant {
                revision: facts.inprogress_revision,
            });
        }
        if let Some(lease) = facts.lock_lease.clone() {
            // Renewed first unless this worker's claim vouches that the lease lives on.
            let vouched = facts
                .worker_claim
                .as_ref()
                .is_some_and(|c| c.op_id == op.op_id() && c.vouches_for(&lease, self.now.micros()));
            self.commands.push_back(Command::KeepLeaseAlive {
                lease,
                env: etcd.environment.clone().unwrap_or_default(),
                renew_first: !vouched,
            });
        }
        // The finalize transaction follows the callback; the next unit waits on it.
        self.commands.push_back(Command::PrepareEtcdctl {
            args: vec!["txn".into()],
            env: etcd.environment.clone().unwrap_or_default(),
        });
        if facts.from_claim {
            // Nothing was read: the waiters to hand the lock to are read while the callback
            // runs (the read starts now and needs no input).
            let (_, keys) = etcd.identity(&self.unit);
            self.commands.push_back(Command::PrepareEtcdctl {
                args: turn::waiters_read(&keys).argv().0,
                env: etcd.environment.clone().unwrap_or_default(),
            });
        }

        self.commands.push_back(Command::RunCallback {
            id: op.callback_id.clone(),
            kwargs_json: crate::op::kwargs_json(&op.kwargs),
        });
        self.awaiting_etcd = Some((key, op));
        self.callback_ran = true;
    }

    /// The etcd-managed callback returned `result`: record it — after collecting the
    /// waiters read while it ran, when it ran on its worker's claim, and after reading them
    /// again when none were waiting and the lock would be handed over.
    pub(super) fn etcd_callback_done(
        &mut self,
        result: OperationResult,
        key: String,
        op: Operation,
    ) {
        self.etcd_result_waiting = Some((result, key, op));
        let from_claim = matches!(
            self.etcd.as_ref().and_then(|e| e.facts.as_ref()),
            Some(Ok(facts)) if facts.from_claim
        );
        if from_claim {
            let etcd = self.etcd.clone().expect("etcd turn");
            let (_, keys) = etcd.identity(&self.unit);
            self.etcdctl(
                turn::waiters_read(&keys).argv().0,
                None,
                &etcd.environment.unwrap_or_default(),
                EtcdPurpose::ReadWaiters,
            );
        } else {
            self.etcd_waiters_known(false);
        }
    }

    /// The waiters the hook knows of are in its facts (`again`: after reading them again).
    /// With none, and the lock to be handed on, read them once more; else record the result.
    fn etcd_waiters_known(&mut self, again: bool) {
        let Some((result, key, op)) = self.etcd_result_waiting.take() else {
            return;
        };
        let etcd = self.etcd.clone().expect("etcd turn");
        let none_waiting = matches!(&etcd.facts, Some(Ok(facts)) if facts.waiters.is_empty());
        let hands_on = self.worker_waits_for(&op) && turn::releases(&finalize(&op, result));
        if !again && none_waiting && hands_on {
            let (_, keys) = etcd.identity(&self.unit);
            self.etcd_result_waiting = Some((result, key, op));
            self.etcdctl(
                turn::waiters_read(&keys).argv().0,
                None,
                &etcd.environment.unwrap_or_default(),
                EtcdPurpose::ReadWaitersAgain,
            );
            return;
        }
        self.etcd_record(result, &key, &op);
        self.advance(false);
    }

    /// Whether this implementation's worker claimed `op` and waits for its result (so the
    /// hook may release the lock, or hand it over, with the result).
    fn worker_waits_for(&self, op: &Operation) -> bool {
        matches!(
            self.etcd.as_ref().and_then(|e| e.facts.as_ref()),
            Some(Ok(facts)) if facts.worker_claim.as_ref().is_some_and(|c| c.op_id == op.op_id())
        )
    }

    /// Finalize in etcd (T4) and mirror into the peer queue.
    pub(super) fn etcd_record(&mut self, result: OperationResult, key: &str, op: &Operation) {
        let etcd = self.etcd.clone().expect("etcd turn");
        let (owner, keys) = etcd.identity(&self.unit);
        let done = finalize(op, result);
        let worker_waits = self.worker_waits_for(op);
        let body = turn::finalize_body(&keys, &owner, key, &done, worker_waits);
        let env = etcd.environment.unwrap_or_default();
        // When this implementation's worker waits for the result, the lock goes straight
        // to the oldest registered waiter (read with the hook's facts), if there is one.
        let waiters = match &etcd.facts {
            Some(Ok(facts)) => facts.waiters.as_slice(),
            _ => &[],
        };
        let successor = handoff::successor(&keys, &owner, waiters)
            .filter(|_| worker_waits && turn::releases(&done));
        match successor {
            Some(to) => {
                self.log(
                    LogLevel::Debug,
                    format!("Handing the etcd lock to {}.", to.owner),
                );
                let handing = turn::hand_over_body(&keys, &owner, key, &done, &to);
                self.etcd_plain_release = Some(body);
                self.etcdctl(
                    vec!["txn".into()],
                    Some(handing),
                    &env,
                    EtcdPurpose::HandOver,
                );
            }
            None => self.etcdctl(vec!["txn".into()], Some(body), &env, EtcdPurpose::Finalize),
        }
        // Mirror exactly as the peer backend records a result.
        let Ok(mut queue) = self.local_record().queue else {
            return;
        };
        let recorded = queue.record(result);
        let removed = matches!(recorded, Some(crate::queue::Recorded::Removed { .. }));
        let intent = match recorded {
            Some(crate::queue::Recorded::Retained(OperationResult::RetryHold)) => Intent::RetryHold,
            Some(crate::queue::Recorded::Retained(_)) => Intent::RetryRelease,
            _ if queue.is_empty() => Intent::Idle,
            _ => Intent::Request,
        };
        self.set_local(vec![
            (wire::OPERATIONS.into(), queue.encode()),
            (wire::STATE.into(), intent.as_str().into()),
            (wire::EXECUTED_AT.into(), self.now.to_string()),
        ]);
        if removed {
            // Its options go, and an application-wide roll counts this unit as done.
            self.forget_op(op);
        }
    }

    /// The host's answer to [`Command::Etcdctl`]: `Ok(stdout)` after success, `Err` after
    /// the host gave up retrying.
    pub fn handle_etcdctl_result(&mut self, purpose: EtcdPurpose, result: Result<String, String>) {
        match (purpose, result) {
            (purpose @ (EtcdPurpose::ReadWaiters | EtcdPurpose::ReadWaitersAgain), outcome) => {
                let again = purpose == EtcdPurpose::ReadWaitersAgain;
                match outcome.and_then(|out| turn::parse_waiters(&out)) {
                    Ok(waiters) => {
                        self.log(
                            LogLevel::Debug,
                            format!("{} registered for the etcd lock.", waiters.len()),
                        );
                        if let Some(Some(Ok(facts))) = self.etcd.as_mut().map(|e| e.facts.as_mut())
                        {
                            facts.waiters = waiters;
                        }
                    }
                    // Then the lock is released plainly: slower for the next unit, no less
                    // correct.
                    Err(why) => self.log(
                        LogLevel::Warning,
                        format!("Could not read the units waiting for the etcd lock: {why}."),
                    ),
                }
                self.etcd_waiters_known(again);
            }
            (EtcdPurpose::HandOver, Ok(stdout))
                if crate::etcd::etcdctl::parse_txn(&stdout) == Ok(true) =>
            {
                self.etcd_plain_release = None;
            }
            (EtcdPurpose::HandOver, outcome) => {
                // The waiter left (or the read is stale): release plainly; the plain
                // finalize judges whether the lock is still ours.
                if let Err(why) = outcome {
                    self.log(
                        LogLevel::Warning,
                        format!("Handing the lock over failed: {why}."),
                    );
                }
                self.release_plainly();
            }
            (EtcdPurpose::Finalize, Ok(stdout))
                if crate::etcd::etcdctl::parse_txn(&stdout) == Ok(true) => {}
            (EtcdPurpose::Finalize, outcome) => {
                let why = outcome
                    .err()
                    .unwrap_or_else(|| "the lock was lost before the result was committed".into());
                self.fall_back(&format!(
                    "the operation ran but etcd did not record it ({why})"
                ));
            }
            (_, Ok(_)) => {}
            (purpose, Err(why)) => {
                // Nothing is lost: the peer queue already has the op.
                self.commands
                    .retain(|c| !matches!(c, Command::Etcdctl { .. } | Command::StartWorker));
                self.fall_back(&format!("etcd {purpose:?} failed: {why}"));
            }
        }
    }

    /// The lock's lease could not be renewed before the callback: the lock is gone (its
    /// worker died and the lease lapsed), so the callback must not run. The op stays in
    /// progress for the next worker to recover.
    pub fn handle_lease_lapsed(&mut self, why: &str) {
        self.abandon_etcd_turn();
        self.log(
            LogLevel::Warning,
            format!("The etcd lock's lease lapsed before the callback could run ({why}); not running it."),
        );
    }

    /// The answer to a failed [`Command::RecordGrant`]: a later hook could not tell that
    /// this grant ran, so the callback does not run (the worker asks for the hook again
    /// after its timeout).
    pub fn handle_grant_unrecorded(&mut self, why: &str) {
        self.abandon_etcd_turn();
        self.log(
            LogLevel::Error,
            format!("Could not record the etcd grant before running its callback ({why}); not running it."),
        );
    }

    fn abandon_etcd_turn(&mut self) {
        self.commands.retain(|c| {
            !matches!(
                c,
                Command::RunCallback { .. }
                    | Command::PrepareEtcdctl { .. }
                    | Command::KeepLeaseAlive { .. }
                    | Command::Etcdctl { .. }
            )
        });
        self.awaiting_etcd = None;
        self.callback_ran = false;
    }

    fn release_plainly(&mut self) {
        let Some(plain) = self.etcd_plain_release.take() else {
            return;
        };
        let env = self
            .etcd
            .as_ref()
            .and_then(|e| e.environment.clone().ok())
            .unwrap_or_default();
        self.etcdctl(vec!["txn".into()], Some(plain), &env, EtcdPurpose::Finalize);
    }

    /// The etcd status of an etcd-managed unit (spec/etcd.md §8.8, counting `pending` as
    /// waiting). `None` when etcd is unusable (the caller falls back).
    pub(super) fn etcd_status(&self) -> Option<super::Status> {
        let etcd = self.etcd.as_ref()?;
        if etcd.unusable().is_some() {
            return None;
        }
        let (owner, _) = etcd.identity(&self.unit);
        let facts = match &etcd.facts {
            Some(Ok(facts)) => facts.clone(),
            _ => EtcdFacts::default(),
        };
        Some(
            if facts.lock_holder.as_deref() == Some(owner.as_str()) && facts.inprogress.is_some() {
                super::Status::Granted
            } else if facts.inprogress.is_some() || facts.pending_head.is_some() {
                super::Status::Waiting
            } else {
                super::Status::Idle
            },
        )
    }

    /// etcd's part of `describe`.
    pub(super) fn describe_etcd(&self) -> serde_json::Value {
        let Some(etcd) = &self.etcd else {
            return serde_json::Value::Null;
        };
        let (owner, keys) = etcd.identity(&self.unit);
        let facts = match &etcd.facts {
            Some(Ok(f)) => json!({
                "lock_holder": f.lock_holder,
                "inprogress": f.inprogress.as_ref().map(|(_, op)| op.op_id()),
                "pending_head": f.pending_head.as_ref().map(|(_, op)| op.op_id()),
            }),
            Some(Err(why)) => json!({"error": why}),
            None => serde_json::Value::Null,
        };
        json!({"owner": owner, "lock_key": keys.lock, "usable": etcd.unusable().is_none(), "why_not": etcd.unusable(), "facts": facts})
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::driver::{self, BagOwner, Effects};
    use crate::error::Error;
    use crate::etcd::config::{ETCDCTL_JSON, SERVER_CA, render};
    use crate::etcd::fake::FakeEtcd;
    use crate::etcd::keys::{Keys, owner};
    use crate::etcd::turn::{GRANT_FILE, WorkerClaim};
    use crate::etcd::worker::{Call, Output, STOP_FILE};
    use crate::manager::{CallbackOutcome, Config, Event, LogLevel, Status, SyncBackendError};
    use crate::timestamp::Timestamp;
    use crate::wire::{Backend, Bag};

    const MODEL: &str = "model-uuid";

    /// One unit over an in-memory peer relation, base_dir and etcd.
    struct Unit<'a> {
        name: &'static str,
        bags: &'a mut BTreeMap<String, Bag>,
        files: &'a mut BTreeMap<String, Vec<u8>>,
        etcd: &'a mut FakeEtcd,
        relation: bool,
        calls: Vec<String>,
        result: Option<String>,
        worker_starts: u32,
        /// Another unit takes the lock while the callback runs (lease lapsed).
        steal_lock: Option<String>,
        /// Another unit registers for the lock while the callback runs (unit, op time).
        registers_meanwhile: Option<(&'static str, i64)>,
        /// etcdctl invocations and callbacks, in order.
        trace: Vec<String>,
        /// Writes to base_dir fail.
        read_only: bool,
        /// Started etcdctl processes: the output of one that needed no input (it ran when
        /// started, as a real `get` does), or the arguments of one waiting for its stdin.
        started: Vec<Result<Output, Vec<String>>>,
    }

    impl Effects for Unit<'_> {
        fn unit_name(&mut self) -> String {
            self.name.into()
        }
        fn is_leader(&mut self) -> Result<bool, Error> {
            Ok(false)
        }
        fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, Error> {
            Ok(
                if endpoint == "restart" || (endpoint == "etcd" && self.relation) {
                    vec![1]
                } else {
                    vec![]
                },
            )
        }
        fn relation_units(&mut self, _: u32) -> Result<Vec<String>, Error> {
            Ok(vec![])
        }
        fn relation_get(&mut self, _: u32, owner: BagOwner<'_>) -> Result<Bag, Error> {
            let key = match owner {
                BagOwner::App => "app".to_string(),
                BagOwner::Unit(u) => u.to_string(),
            };
            Ok(self.bags.get(&key).cloned().unwrap_or_default())
        }
        fn relation_set(
            &mut self,
            _: u32,
            app: bool,
            pairs: &[(String, String)],
        ) -> Result<(), Error> {
            let key = if app {
                "app".to_string()
            } else {
                self.name.to_string()
            };
            let bag = self.bags.entry(key).or_default();
            for (k, v) in pairs {
                if v.is_empty() {
                    bag.remove(k);
                } else {
                    bag.insert(k.clone(), v.clone());
                }
            }
            Ok(())
        }
        fn log(&mut self, _: LogLevel, _: &str) {}
        fn dispatch(&mut self, _: &str) -> Result<(), Error> {
            Ok(())
        }
        fn now(&mut self) -> Timestamp {
            Timestamp::from_micros(1_777_636_800_000_000 + self.etcd.now_ms as i64 * 1000)
        }
        fn run_callback(&mut self, id: &str, _: &str) -> CallbackOutcome {
            self.calls.push(id.into());
            self.trace.push(format!("callback {id}"));
            if let Some(lock) = self.steal_lock.take() {
                self.etcd.put(&lock, "someone-else");
            }
            if let Some((unit, micros)) = self.registers_meanwhile.take() {
                register_waiter(self.etcd, unit, micros);
            }
            CallbackOutcome::Returned(self.result.clone())
        }
        fn sync_backend_acquire(
            &mut self,
            _: &str,
            _: Option<u32>,
        ) -> Result<(), SyncBackendError> {
            Ok(())
        }
        fn sync_backend_release(&mut self, _: &str) -> Result<(), SyncBackendError> {
            Ok(())
        }
        fn model_uuid(&mut self) -> String {
            MODEL.into()
        }
        fn run_etcdctl(
            &mut self,
            args: &[String],
            _: &[(String, String)],
            stdin: Option<&str>,
            _: u32,
        ) -> Result<Output, Error> {
            self.trace.push(format!("etcdctl {}", args.join(" ")));
            let call = match args
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["get", key, "--print-value-only"] => Call::Value(key.to_string()),
                ["get", prefix, "--prefix", "--limit=1"] => Call::First(prefix.to_string()),
                ["txn"] => Call::Txn(stdin.unwrap_or_default().into()),
                ["lease", "keep-alive", "--once", id] => Call::KeepAlive(id.to_string()),
                ["-w", "json", "txn"] => Call::TxnJson(stdin.unwrap_or_default().into()),
                ["-w", "json", "get", prefix, "--prefix"] => Call::Range(prefix.to_string()),
                ["put", key] => {
                    self.etcd.put(key, stdin.unwrap_or_default());
                    return Ok(Output {
                        code: 0,
                        stdout: "OK\n".into(),
                        stderr: String::new(),
                        timed_out: false,
                    });
                }
                ["del", prefix, "--prefix"] => {
                    let doomed: Vec<String> = self
                        .etcd
                        .kv
                        .keys()
                        .filter(|k| k.starts_with(prefix))
                        .cloned()
                        .collect();
                    doomed.iter().for_each(|k| self.etcd.delete(k));
                    return Ok(Output {
                        code: 0,
                        stdout: "0\n".into(),
                        stderr: String::new(),
                        timed_out: false,
                    });
                }
                other => panic!("unexpected etcdctl {other:?}"),
            };
            Ok(self.etcd.run(&call))
        }
        fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>, Error> {
            Ok(self.files.get(path).cloned())
        }
        fn write_file(&mut self, path: &str, data: &[u8], _: u32) -> Result<(), Error> {
            if self.read_only {
                return Err(Error::FileSystem(format!("{path}: read-only file system")));
            }
            self.files.insert(path.into(), data.to_vec());
            Ok(())
        }
        fn remove_file(&mut self, path: &str) -> Result<(), Error> {
            self.files.remove(path);
            Ok(())
        }
        fn start_worker(&mut self) -> Result<(), Error> {
            self.worker_starts += 1;
            Ok(())
        }
        fn start_etcdctl(
            &mut self,
            args: &[String],
            env: &[(String, String)],
        ) -> Result<u32, Error> {
            if args.first().map(String::as_str) == Some("lease") {
                return Err(Error::Etcdctl("no keep-alive here".into()));
            }
            self.trace.push(format!("start {}", args.join(" ")));
            let started = if args.contains(&"txn".to_string()) {
                Err(args.to_vec())
            } else {
                let output = self.run_etcdctl(args, env, None, 0)?;
                self.trace.pop();
                Ok(output)
            };
            self.started.push(started);
            Ok(self.started.len() as u32 - 1)
        }
        fn finish_etcdctl(
            &mut self,
            handle: u32,
            stdin: Option<&str>,
            _: u32,
        ) -> Result<Output, Error> {
            let slot = std::mem::replace(&mut self.started[handle as usize], Err(vec![]));
            match slot {
                Ok(output) => {
                    self.trace.push("collect".into());
                    Ok(output)
                }
                Err(args) if args.is_empty() => Err(Error::Etcdctl("spent".into())),
                Err(args) => self.run_etcdctl(&args, &[], stdin, 0),
            }
        }
    }

    fn config() -> Config {
        Config {
            peer_relation_name: "restart".into(),
            etcd_relation_name: Some("etcd".into()),
            cluster_id: Some("c1".into()),
            base_dir: "/var/lib/rollingops".into(),
            callback_ids: vec!["restart".into()],
            sync_lock_ids: vec![],
        }
    }

    struct World {
        bags: BTreeMap<String, Bag>,
        files: BTreeMap<String, Vec<u8>>,
        etcd: FakeEtcd,
    }

    impl World {
        fn configured() -> World {
            let mut files = BTreeMap::new();
            files.insert(
                ETCDCTL_JSON.to_string(),
                render(
                    "127.0.0.1:2379",
                    "/b",
                    "/b/tls/client.pem",
                    "/b/tls/client.key",
                )
                .into_bytes(),
            );
            files.insert(SERVER_CA.to_string(), b"PEM".to_vec());
            World {
                bags: BTreeMap::new(),
                files,
                etcd: FakeEtcd::default(),
            }
        }

        /// One op requested and claimed by the worker under the lock.
        fn with_a_claimed_op() -> World {
            let mut world = World::configured();
            request(&mut world.unit(), "{}");
            worker_claims(&mut world);
            world
        }

        fn unit(&mut self) -> Unit<'_> {
            Unit {
                name: "app/0",
                bags: &mut self.bags,
                files: &mut self.files,
                etcd: &mut self.etcd,
                relation: true,
                calls: vec![],
                result: None,
                worker_starts: 0,
                steal_lock: None,
                registers_meanwhile: None,
                trace: vec![],
                started: vec![],
                read_only: false,
            }
        }

        fn keys(&self) -> Keys {
            Keys::new("c1", &owner(MODEL, "app/0"))
        }

        fn bag(&self) -> &Bag {
            &self.bags["app/0"]
        }
    }

    fn request(unit: &mut Unit<'_>, kwargs: &str) {
        let mut manager = driver::load(config(), unit).unwrap();
        driver::request_async_lock(&mut manager, unit, "restart", kwargs, Some(2)).unwrap();
    }

    /// A hook whose first use of the manager is `event`, as the component loads it.
    fn event(unit: &mut Unit<'_>, event: Event) {
        let mut manager = driver::load_for(config(), unit, Some(&event)).unwrap();
        driver::handle_event(&mut manager, unit, event).unwrap();
    }

    /// What the worker writes before it dispatches the hook after claiming the op in
    /// progress, vouching for the lock's lease for another `certain_ms`: its claim.
    fn full_claim(world: &mut World, certain_ms: i64) -> WorkerClaim {
        let keys = world.keys();
        let (key, value) = world.etcd.first(&keys.inprogress).unwrap();
        let op = crate::op::Operation::from_json(&value).unwrap();
        let (_, lease) = world.etcd.kv[&keys.lock];
        let now = world.unit().now().micros();
        let claim = WorkerClaim {
            op_id: op.op_id(),
            lease: format!("{:x}", lease.unwrap()),
            lease_certain_until_micros: now + certain_ms * 1000,
            revision: world.etcd.mod_revision(&key).unwrap(),
            op: Some((key, op)),
        };
        world.files.insert(
            crate::etcd::worker::CLAIM_FILE.into(),
            claim.encode().into_bytes(),
        );
        claim
    }

    /// What happened after the callback.
    fn after_callback(trace: &[String]) -> Vec<&str> {
        trace
            .iter()
            .skip_while(|t| !t.starts_with("callback"))
            .skip(1)
            .map(String::as_str)
            .collect()
    }

    /// The etcdctl invocations waited for before the callback (processes started in the
    /// background, as a host starts them, left out).
    fn before_callback(trace: &[String]) -> Vec<&str> {
        trace
            .iter()
            .take_while(|t| !t.starts_with("callback"))
            .filter(|t| t.starts_with("etcdctl"))
            .map(String::as_str)
            .collect()
    }

    /// What the worker writes before it dispatches the hook: the claimed op's id.
    fn claim_file_names_the_claimed_op(world: &mut World) {
        let (_, claimed) = world.etcd.first(&world.keys().inprogress).unwrap();
        let op_id = crate::op::Operation::from_json(&claimed).unwrap().op_id();
        world.files.insert(
            crate::etcd::worker::CLAIM_FILE.into(),
            op_id.as_bytes().to_vec(),
        );
    }

    /// A 60 s lease from the fake etcd: its id.
    fn grant_lease(world: &mut World) -> String {
        lease_from(&mut world.etcd)
    }

    fn lease_from(etcd: &mut FakeEtcd) -> String {
        let granted = etcd.run(&Call::LeaseGrant(60)).stdout;
        granted.split_whitespace().nth(1).unwrap().to_string()
    }

    /// What the worker does once it holds the lock: claim the pending head.
    fn worker_claims(world: &mut World) {
        let keys = world.keys();
        let owner = owner(MODEL, "app/0");
        let lease = grant_lease(world);
        let acquired = world.etcd.run(&Call::Txn(crate::etcd::txn::acquire(
            &keys.lock, &owner, &lease,
        )));
        assert!(acquired.stdout.starts_with("SUCCESS"));
        let (key, value) = world.etcd.first(&keys.pending).unwrap();
        let op = crate::op::Operation::from_json(&value).unwrap();
        let to = format!("{}{}", keys.inprogress, op.op_id());
        let claimed = world.etcd.run(&Call::Txn(crate::etcd::txn::move_op(
            &keys.lock, &owner, &key, &to, &value,
        )));
        assert!(claimed.stdout.starts_with("SUCCESS"));
    }

    #[test]
    fn s8_4_request_goes_to_etcd_and_starts_the_worker() {
        let mut world = World::configured();
        let mut unit = world.unit();
        request(&mut unit, r#"{"msg": "a b \"c\""}"#);
        assert_eq!(unit.worker_starts, 1);
        let keys = world.keys();
        let bag = world.bag();
        assert_eq!(bag["processing_backend"], "etcd");
        assert_eq!(bag["etcd_cleanup_needed"], "false");
        assert_eq!(bag["state"], "request");
        let (key, value) = world.etcd.first(&keys.pending).unwrap();
        // The same op JSON in both copies, spaces and quotes intact (§11 item 3).
        assert!(bag["operations"].contains(&value), "{value}");
        assert!(key.ends_with("-restart"));
    }

    #[test]
    fn s8_5_without_etcd_config_the_request_stays_on_peer() {
        let mut world = World::configured();
        world.files.remove(ETCDCTL_JSON);
        let mut unit = world.unit();
        request(&mut unit, "{}");
        assert_eq!(unit.worker_starts, 0);
        assert_eq!(world.bag()["processing_backend"], "peer");
        assert!(world.etcd.kv.is_empty());
    }

    #[test]
    fn s6_4_lock_granted_runs_the_claimed_op_and_mirrors_it() {
        let mut world = World::with_a_claimed_op();
        let mut unit = world.unit();
        unit.result = Some("retry-release".into());
        event(&mut unit, Event::LockGranted);
        assert_eq!(unit.calls, ["restart"]);
        let keys = world.keys();
        let (_, done) = world
            .etcd
            .first(&keys.completed)
            .expect("finalized into completed");
        assert!(
            done.contains(r#""attempt":1,"result":"retry-release""#),
            "{done}"
        );
        let bag = world.bag();
        assert_eq!(bag["state"], "retry-release");
        assert!(bag["operations"].contains(r#""attempt":1,"result":null"#));
        assert_eq!(bag["processing_backend"], "etcd");
    }

    /// Another unit's worker waiting for the lock with its op `micros` pending, registered
    /// the way its failed lock transaction registers it.
    fn waiter(world: &mut World, unit: &str, micros: i64) -> (Keys, String, String) {
        register_waiter(&mut world.etcd, unit, micros)
    }

    fn register_waiter(etcd: &mut FakeEtcd, unit: &str, micros: i64) -> (Keys, String, String) {
        let owner = owner(MODEL, unit);
        let keys = Keys::new("c1", &owner);
        let lease = lease_from(etcd);
        let op = crate::op::Operation::new(
            "restart",
            Default::default(),
            None,
            crate::timestamp::Timestamp::from_micros(micros),
        );
        let from = format!("{}{}", keys.pending, op.op_id());
        etcd.put(&from, &op.to_json());
        let registration = crate::etcd::handoff::Registration {
            owner: owner.clone(),
            lease: lease.clone(),
            op: Some((from.clone(), op.clone())),
        };
        let attempt = etcd.run(&Call::TxnJson(crate::etcd::txn::acquire_and_claim(
            &keys.lock,
            &owner,
            &lease,
            &from,
            &format!("{}{}", keys.inprogress, op.op_id()),
            &op.to_json(),
            (&keys.waiting_entry(&owner), &registration.encode()),
        )));
        assert!(
            !attempt.stdout.contains("\"succeeded\""),
            "the lock is held"
        );
        (keys, owner, lease)
    }

    #[test]
    fn the_hook_hands_the_lock_to_the_longest_waiting_unit() {
        for (result, requeued) in [("release", false), ("retry-release", true)] {
            let mut world = World::with_a_claimed_op();
            let (first, first_owner, first_lease) = waiter(&mut world, "other/3", 5);
            let (second, _, _) = waiter(&mut world, "other/1", 1);
            let keys = world.keys();
            claim_file_names_the_claimed_op(&mut world);
            let mut unit = world.unit();
            unit.result = Some(result.into());
            event(&mut unit, Event::LockGranted);
            assert_eq!(unit.calls, ["restart"]);
            let lock = world
                .etcd
                .kv
                .get(&keys.lock)
                .cloned()
                .expect("handed, not freed");
            assert_eq!(lock.0, first_owner, "the first to register gets it");
            assert_eq!(lock.1.map(|l| format!("{l:x}")), Some(first_lease));
            assert_eq!(world.etcd.first(&first.pending), None, "its op is claimed");
            assert!(world.etcd.first(&first.inprogress).is_some());
            assert!(
                world.etcd.first(&keys.waiting).is_some(),
                "the other still waits"
            );
            assert!(world.etcd.get(&keys.waiting_entry(&first_owner)).is_none());
            assert!(world.etcd.first(&second.pending).is_some());
            assert_eq!(world.etcd.first(&keys.inprogress), None, "ours is done");
            assert_eq!(world.etcd.first(&keys.pending).is_some(), requeued);
            assert_eq!(world.bag()["processing_backend"], "etcd", "no fallback");
        }
    }

    #[test]
    fn a_waiting_sync_lock_request_is_handed_the_lock_in_its_turn() {
        let mut world = World::with_a_claimed_op();
        // Another unit's `acquire_sync_lock` found the lock held and registered.
        let sync_owner = format!("{}:sync", owner(MODEL, "other/0"));
        let keys = world.keys();
        let lease = grant_lease(&mut world);
        let registration = crate::etcd::handoff::Registration {
            owner: sync_owner.clone(),
            lease: lease.clone(),
            op: None,
        };
        let entry = keys.waiting_entry(&sync_owner);
        let attempt = world
            .etcd
            .run(&Call::TxnJson(crate::etcd::txn::acquire_or_register(
                &keys.lock,
                &sync_owner,
                &lease,
                (&entry, &registration.encode()),
            )));
        assert!(
            !attempt.stdout.contains("\"succeeded\""),
            "the lock is held"
        );
        claim_file_names_the_claimed_op(&mut world);
        let mut unit = world.unit();
        unit.result = Some("release".into());
        event(&mut unit, Event::LockGranted);
        let lock = world.etcd.kv.get(&keys.lock).cloned().expect("handed over");
        assert_eq!(lock.0, sync_owner);
        assert_eq!(lock.1.map(|l| format!("{l:x}")), Some(lease));
        assert_eq!(world.etcd.get(&entry), None, "its registration is used up");
        assert_eq!(world.etcd.first(&keys.inprogress), None, "ours is done");
    }

    #[test]
    fn a_waiter_that_left_gets_nothing_and_the_lock_is_released() {
        let mut world = World::with_a_claimed_op();
        let (gone, gone_owner, _) = waiter(&mut world, "other/0", 5);
        // Its op went (the unit fell back and cleaned up) but the registration is still read.
        let (pending, _) = world.etcd.first(&gone.pending).unwrap();
        world.etcd.delete(&pending);
        let keys = world.keys();
        claim_file_names_the_claimed_op(&mut world);
        let mut unit = world.unit();
        unit.result = Some("release".into());
        event(&mut unit, Event::LockGranted);
        assert_eq!(world.etcd.get(&keys.lock), None, "released plainly");
        assert!(
            world.etcd.first(&gone.inprogress).is_none(),
            "nothing claimed for it"
        );
        assert!(world.etcd.get(&keys.waiting_entry(&gone_owner)).is_some());
        assert_eq!(world.etcd.first(&keys.inprogress), None);
        assert_eq!(world.bag()["processing_backend"], "etcd", "no fallback");
    }

    #[test]
    fn the_hook_releases_the_lock_with_the_result_when_our_worker_claimed_the_op() {
        for (result, requeued) in [("release", false), ("retry-release", true)] {
            let mut world = World::with_a_claimed_op();
            let keys = world.keys();
            claim_file_names_the_claimed_op(&mut world);
            let mut unit = world.unit();
            unit.result = Some(result.into());
            event(&mut unit, Event::LockGranted);
            assert_eq!(unit.calls, ["restart"]);
            assert_eq!(
                world.etcd.get(&keys.lock),
                None,
                "lock released by the hook"
            );
            assert_eq!(world.etcd.first(&keys.inprogress), None);
            assert_eq!(world.etcd.first(&keys.completed), None);
            let pending = world.etcd.first(&keys.pending).map(|(_, v)| v);
            assert_eq!(pending.is_some(), requeued, "{pending:?}");
            let bag = world.bag();
            assert_eq!(bag["processing_backend"], "etcd", "no fallback");
            assert_eq!(
                bag["state"],
                if requeued { "retry-release" } else { "idle" }
            );
        }
    }

    #[test]
    fn the_hook_takes_its_workers_claim_at_its_word_and_reads_the_waiters_meanwhile() {
        let mut world = World::with_a_claimed_op();
        let (_, waiter_owner, _) = waiter(&mut world, "other/3", 5);
        let claim = full_claim(&mut world, 30_000);
        let keys = world.keys();
        let mut unit = world.unit();
        unit.result = Some("release".into());
        event(&mut unit, Event::LockGranted);
        assert_eq!(unit.calls, ["restart"]);
        assert_eq!(
            before_callback(&unit.trace),
            Vec::<&str>::new(),
            "no etcdctl between the dispatch and the callback"
        );
        let after = after_callback(&unit.trace);
        assert_eq!(
            after,
            ["collect", "etcdctl txn"],
            "the registrations read with the callback are collected, then one finalize"
        );
        let started = format!("start -w json get {} --prefix", keys.waiting);
        assert!(unit.trace.contains(&started), "{:?}", unit.trace);
        assert_eq!(world.etcd.get(&keys.lock), Some(waiter_owner.as_str()));
        assert_eq!(
            world
                .files
                .get(GRANT_FILE)
                .map(|g| String::from_utf8_lossy(g).to_string()),
            Some(format!("{}\n", claim.revision)),
            "the grant is recorded"
        );
        assert_eq!(world.bag()["state"], "idle");
        assert_eq!(world.bag()["processing_backend"], "etcd");
    }

    #[test]
    fn a_unit_that_registers_during_the_callback_is_handed_the_lock() {
        for on_claim in [true, false] {
            let mut world = World::with_a_claimed_op();
            if on_claim {
                full_claim(&mut world, 30_000);
            } else {
                claim_file_names_the_claimed_op(&mut world);
            }
            let keys = world.keys();
            let mut unit = world.unit();
            unit.result = Some("release".into());
            unit.registers_meanwhile = Some(("other/2", 5));
            event(&mut unit, Event::LockGranted);
            assert_eq!(unit.calls, ["restart"]);
            let after = after_callback(&unit.trace);
            assert_eq!(
                after.last(),
                Some(&"etcdctl txn"),
                "read again, then one finalize: {after:?}"
            );
            let read = format!("etcdctl -w json get {} --prefix", keys.waiting);
            assert!(after.contains(&read.as_str()), "{after:?}");
            assert_eq!(
                world.etcd.get(&keys.lock),
                Some(owner(MODEL, "other/2").as_str()),
                "on_claim {on_claim}: handed over, not released"
            );
        }
    }

    #[test]
    fn a_claim_is_taken_at_its_word_once_and_a_repeated_hook_runs_nothing() {
        for result in ["release", "retry-hold"] {
            let mut world = World::with_a_claimed_op();
            full_claim(&mut world, 30_000);
            let mut unit = world.unit();
            unit.result = Some(result.into());
            event(&mut unit, Event::LockGranted);
            assert_eq!(unit.calls, ["restart"]);
            // The same dispatch again (the claim file is still there): it reads etcd, where
            // the op is finished.
            let mut again = world.unit();
            event(&mut again, Event::LockGranted);
            assert!(again.calls.is_empty(), "{result}: ran twice");
            assert!(
                before_callback(&again.trace)
                    .first()
                    .is_some_and(|t| t.contains("txn")),
                "{result}: it read etcd: {:?}",
                again.trace
            );
        }
    }

    #[test]
    fn a_stale_hook_that_ran_the_grant_from_etcd_stops_the_claim_being_taken() {
        let mut world = World::with_a_claimed_op();
        // The worker has claimed the op but not yet written its claim when a hook from
        // before (a dispatch of an earlier worker) reads etcd and runs the op, keeping the
        // lock (retry-hold).
        let claim = full_claim(&mut world, 30_000);
        world.files.remove(crate::etcd::worker::CLAIM_FILE);
        let mut stale = world.unit();
        stale.result = Some("retry-hold".into());
        event(&mut stale, Event::LockGranted);
        assert_eq!(stale.calls, ["restart"]);
        assert!(world.etcd.first(&world.keys().completed).is_some());
        // Now the claim lands, and its hook runs.
        world.files.insert(
            crate::etcd::worker::CLAIM_FILE.into(),
            claim.encode().into_bytes(),
        );
        let mut claimed = world.unit();
        event(&mut claimed, Event::LockGranted);
        assert!(claimed.calls.is_empty(), "the grant ran already");
    }

    #[test]
    fn a_claim_whose_lease_may_have_lapsed_is_checked_in_etcd() {
        let mut world = World::with_a_claimed_op();
        full_claim(&mut world, -1);
        let mut unit = world.unit();
        event(&mut unit, Event::LockGranted);
        assert_eq!(unit.calls, ["restart"], "the lock is still ours");
        let before = before_callback(&unit.trace);
        assert!(before[0].ends_with("-w json txn"), "{before:?}");
        assert!(
            before[1].contains("keep-alive --once"),
            "renewed first: {before:?}"
        );
    }

    #[test]
    fn the_hook_that_reads_etcd_records_the_grant_it_runs() {
        let mut world = World::with_a_claimed_op();
        claim_file_names_the_claimed_op(&mut world);
        let keys = world.keys();
        let (key, _) = world.etcd.first(&keys.inprogress).unwrap();
        let revision = world.etcd.mod_revision(&key).unwrap();
        event(&mut world.unit(), Event::LockGranted);
        assert_eq!(
            world
                .files
                .get(GRANT_FILE)
                .map(|g| String::from_utf8_lossy(g).to_string()),
            Some(format!("{revision}\n"))
        );
    }

    #[test]
    fn a_grant_that_cannot_be_recorded_is_not_run() {
        let mut world = World::with_a_claimed_op();
        full_claim(&mut world, 30_000);
        let keys = world.keys();
        let mut unit = world.unit();
        unit.read_only = true;
        event(&mut unit, Event::LockGranted);
        assert!(unit.calls.is_empty());
        assert!(
            world.etcd.first(&keys.inprogress).is_some(),
            "still claimed"
        );
        assert_eq!(
            world.etcd.get(&keys.lock),
            Some(owner(MODEL, "app/0").as_str())
        );
    }

    #[test]
    fn s11_6_hooks_that_find_nothing_claimed_do_not_fall_back() {
        let mut world = World::configured();
        request(&mut world.unit(), "{}");
        for e in [Event::LockGranted, Event::UpdateStatus] {
            event(&mut world.unit(), e);
        }
        assert_eq!(world.bag()["processing_backend"], "etcd");
    }

    #[test]
    fn s11_11_update_status_restarts_a_missing_worker() {
        let mut world = World::configured();
        request(&mut world.unit(), "{}");
        let mut unit = world.unit();
        event(&mut unit, Event::UpdateStatus);
        assert_eq!(unit.worker_starts, 1);
    }

    #[test]
    fn s11_4_a_queued_etcd_unit_reports_waiting() {
        let mut world = World::configured();
        request(&mut world.unit(), "{}");
        let mut unit = world.unit();
        let mut manager = driver::load(config(), &mut unit).unwrap();
        let state = driver::state(&mut manager, &mut unit).unwrap();
        assert_eq!(
            (state.status, state.processing_backend),
            (Status::Waiting, Backend::Etcd)
        );
        worker_claims(&mut world);
        let mut unit = world.unit();
        let mut manager = driver::load(config(), &mut unit).unwrap();
        assert_eq!(
            driver::state(&mut manager, &mut unit).unwrap().status,
            Status::Granted
        );
    }

    #[test]
    fn s8_6_etcd_down_falls_back_and_stops_the_worker_with_nothing_lost() {
        let mut world = World::configured();
        request(&mut world.unit(), "{}");
        world.etcd.unavailable = true;
        event(&mut world.unit(), Event::UpdateStatus);
        let bag = world.bag().clone();
        assert_eq!(bag["processing_backend"], "peer");
        assert_eq!(bag["etcd_cleanup_needed"], "true");
        assert!(
            bag["operations"].contains("restart"),
            "the op is still queued on the peer side"
        );
        assert!(world.files.contains_key(STOP_FILE));
        // Back on etcd once the peer queue drains: cleanup first, then the new op.
        world.etcd.unavailable = false;
        world
            .bags
            .get_mut("app/0")
            .unwrap()
            .insert("operations".into(), "[]".into());
        let mut unit = world.unit();
        request(&mut unit, r#"{"n": 2}"#);
        assert_eq!(unit.worker_starts, 1);
        assert!(
            !world.files.contains_key(STOP_FILE),
            "starting a worker clears the stop request"
        );
        assert_eq!(world.bag()["processing_backend"], "etcd");
        assert_eq!(
            world.etcd.kv.len(),
            1,
            "stale queues cleaned, one op pending"
        );
    }

    #[test]
    fn s8_7_etcd_failed_hook_falls_back() {
        let mut world = World::configured();
        request(&mut world.unit(), "{}");
        event(&mut world.unit(), Event::EtcdFailed);
        assert_eq!(world.bag()["processing_backend"], "peer");
    }

    #[test]
    fn a_hook_without_the_lock_runs_nothing() {
        let mut world = World::with_a_claimed_op();
        let keys = world.keys();
        world.etcd.put(&keys.lock, &owner(MODEL, "app/9"));
        let mut unit = world.unit();
        event(&mut unit, Event::LockGranted);
        assert!(unit.calls.is_empty());
        assert_eq!(world.bag()["processing_backend"], "etcd");
    }

    #[test]
    fn s6_4_lock_lost_during_the_callback_mirrors_then_falls_back() {
        let mut world = World::with_a_claimed_op();
        let lock = world.keys().lock;
        let mut unit = world.unit();
        unit.steal_lock = Some(lock);
        event(&mut unit, Event::LockGranted);
        assert_eq!(unit.calls, ["restart"]);
        let bag = world.bag();
        assert_eq!(
            bag["operations"], "[]",
            "the result is mirrored: the op ran"
        );
        assert_eq!(bag["state"], "idle");
        assert_eq!(
            bag["processing_backend"], "peer",
            "executed but not committed: fall back"
        );
    }
}
