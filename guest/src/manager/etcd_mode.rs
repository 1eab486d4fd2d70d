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
use crate::etcd::keys::{self, Keys};
use crate::etcd::queue::finalize;
use crate::etcd::txn;
use crate::op::{Operation, OperationResult};
use crate::wire::{self, Backend, Intent, UnitRecord};

/// What etcd holds for this unit, read at the start of the hook.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EtcdFacts {
    /// Value of the cluster's lock key (`None`: nobody holds it).
    pub lock_holder: Option<String>,
    /// The op this unit's worker claimed, with its key.
    pub inprogress: Option<(String, Operation)>,
    /// The first op waiting in this unit's `pending` queue.
    pub pending_head: Option<(String, Operation)>,
}

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
    /// Moving the executed op to `completed` (T4).
    Finalize,
}

impl Manager {
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
        let facts = match etcd.facts {
            Some(Ok(facts)) => facts,
            _ => EtcdFacts::default(),
        };
        let held = facts.lock_holder.as_deref() == Some(owner.as_str());
        let Some((key, op)) = facts.inprogress.filter(|_| held) else {
            if update_status && facts.pending_head.is_some() {
                // A worker may have died with work pending: start one (it is a no-op if one
                // runs). The reference fell back to the peer relation here.
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
                "Running {:?} under the etcd lock (attempt {}).",
                op.callback_id,
                op.attempt + 1
            ),
        );
        self.commands.push_back(Command::RunCallback {
            id: op.callback_id.clone(),
            kwargs_json: crate::op::kwargs_json(&op.kwargs),
        });
        self.awaiting_etcd = Some((key, op));
        self.callback_ran = true;
    }

    /// Finalize in etcd (T4) and mirror into the peer queue.
    pub(super) fn etcd_record(&mut self, result: OperationResult, key: &str, op: &Operation) {
        let etcd = self.etcd.clone().expect("etcd turn");
        let (owner, keys) = etcd.identity(&self.unit);
        let done = finalize(op, result);
        let to = format!("{}{}", keys.completed, done.op_id());
        let body = txn::move_op(&keys.lock, &owner, key, &to, &done.to_json());
        let env = etcd.environment.unwrap_or_default();
        self.etcdctl(vec!["txn".into()], Some(body), &env, EtcdPurpose::Finalize);
        // Mirror exactly as the peer backend records a result.
        let Ok(mut queue) = self.local_record().queue else {
            return;
        };
        let intent = match queue.record(result) {
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
    }

    /// The host's answer to [`Command::Etcdctl`]: `Ok(stdout)` after success, `Err` after
    /// the host gave up retrying.
    pub fn handle_etcdctl_result(&mut self, purpose: EtcdPurpose, result: Result<String, String>) {
        match (purpose, result) {
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
