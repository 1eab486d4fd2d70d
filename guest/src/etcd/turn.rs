//! The lock-granted hook's side of etcd mode (spec/etcd.md §6.4): what it reads, in one
//! round trip, and the transaction that finalizes the op it ran.

use crate::etcd::etcdctl;
use crate::etcd::keys::Keys;
use crate::etcd::txn;
use crate::etcd::worker::Call;
use crate::op::{Operation, OperationResult};

/// What etcd holds for this unit, read at the start of the hook — or, when the hook takes
/// its worker's claim at its word ([`WorkerClaim::taken_at_its_word`]), what the claim says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EtcdFacts {
    /// Value of the cluster's lock key (`None`: nobody holds it).
    pub lock_holder: Option<String>,
    /// The lease the lock key is bound to (hexadecimal), when held under one.
    pub lock_lease: Option<String>,
    /// The op this unit's worker claimed, with its key.
    pub inprogress: Option<(String, Operation)>,
    /// The revision at which that op was claimed (its key's last change; 0: unknown): the
    /// grant a run of it consumes (see [`GRANT_FILE`]).
    pub inprogress_revision: u64,
    /// The first op waiting in this unit's `pending` queue.
    pub pending_head: Option<(String, Operation)>,
    /// An op the hook finished that a worker has not post-processed (a worker died).
    pub completed_head: Option<(String, Operation)>,
    /// The waiters' registrations (see [`crate::etcd::handoff`]).
    pub waiters: Vec<etcdctl::Kv>,
    /// What this implementation's worker says it claimed (its claim file), if anything.
    pub worker_claim: Option<WorkerClaim>,
    /// Taken from the worker's claim, not read: the waiters are read while the callback
    /// runs ([`waiters_read`]).
    pub from_claim: bool,
}

impl EtcdFacts {
    /// The facts a claim taken at its word stands for.
    pub fn from_claim(owner: &str, claim: WorkerClaim, key: String, op: Operation) -> Self {
        EtcdFacts {
            lock_holder: Some(owner.to_string()),
            lock_lease: Some(claim.lease.clone()),
            inprogress: Some((key, op)),
            inprogress_revision: claim.revision,
            worker_claim: Some(claim),
            from_claim: true,
            ..EtcdFacts::default()
        }
    }
}

/// A file under base_dir holding the latest grant (the revision at which an op was
/// claimed) a lock-granted hook of this unit started a callback for. Juju runs a unit's
/// hooks one at a time, so what one hook writes here the next one reads: a claim is taken
/// at its word only for a grant above it, so no two hooks run the same grant — a stale
/// lock-granted hook that read etcd and ran the op before the worker wrote its claim has
/// recorded that grant, and the hook dispatched for the claim then reads etcd, which says
/// the op is done.
pub const GRANT_FILE: &str = "etcd/last-grant";

/// What a worker of this implementation writes to its claim file
/// ([`crate::etcd::worker::CLAIM_FILE`]) before it dispatches the lock-granted hook: the op
/// it claimed and the revision of that claim, the lease the lock is bound to, and until when
/// that lease certainly lives — its last renewal as sent plus the TTL, less a margin.
///
/// The hook takes the claim at its word — runs the op without reading etcd first, the
/// hand-off's last etcdctl round trip — when the lease certainly lives and the grant is
/// above the last one this unit ran ([`GRANT_FILE`]). That is sound because, while the lease
/// lives, the lock leaves this unit only through a hook of this unit that ran this grant (and
/// recorded it), or through the worker once that hook is done — a worker asked to stop with
/// a hook still to finish leaves the lock to it ([`crate::etcd::worker::Worker::stop`]).
/// Otherwise the hook reads etcd, and the claim still says whether this worker waits for
/// the result and vouches for the lease.
/// The seeded search in the worker's tests plays stale, repeated and re-dispatched hooks,
/// crashes and lease lapses against both ways.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerClaim {
    /// The claimed op's id.
    pub op_id: String,
    /// The lease the lock key is bound to (hexadecimal).
    pub lease: String,
    /// Until when (microseconds since the epoch) the lease certainly lives.
    pub lease_certain_until_micros: i64,
    /// The revision at which the op was claimed (0: unknown, never taken at its word).
    pub revision: u64,
    /// The claimed op's in-progress key and the op (absent in older claim files).
    pub op: Option<(String, Operation)>,
}

impl WorkerClaim {
    /// The file's content.
    pub fn encode(&self) -> String {
        let mut value = serde_json::json!({
            "op_id": self.op_id,
            "lease": self.lease,
            "lease_certain_until_micros": self.lease_certain_until_micros,
            "revision": self.revision,
        });
        if let Some((key, op)) = &self.op {
            value["key"] = key.as_str().into();
            value["op"] = op.to_json().into();
        }
        value.to_string()
    }

    /// Read a claim file. Earlier versions wrote the op id alone, which is read as a claim
    /// that vouches for nothing.
    pub fn decode(text: &str) -> WorkerClaim {
        let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
        let field = |name: &str| value.as_ref()?.get(name)?.as_str().map(str::to_string);
        let number = |name: &str| value.as_ref()?.get(name)?.as_i64();
        let op = match (field("key"), field("op")) {
            (Some(key), Some(op)) => Operation::from_json(&op).ok().map(|op| (key, op)),
            _ => None,
        };
        match (
            field("op_id"),
            field("lease"),
            number("lease_certain_until_micros"),
        ) {
            (Some(op_id), Some(lease), Some(until)) => WorkerClaim {
                op: op.filter(|(_, op)| op.op_id() == op_id),
                op_id,
                lease,
                lease_certain_until_micros: until,
                revision: number("revision")
                    .and_then(|r| u64::try_from(r).ok())
                    .unwrap_or(0),
            },
            _ => WorkerClaim {
                op_id: text.trim().to_string(),
                lease: String::new(),
                lease_certain_until_micros: 0,
                revision: 0,
                op: None,
            },
        }
    }

    /// Whether this claim vouches, at `now_micros`, for `lease` living on.
    pub fn vouches_for(&self, lease: &str, now_micros: i64) -> bool {
        !self.lease.is_empty()
            && self.lease == lease
            && now_micros < self.lease_certain_until_micros
    }

    /// The op a lock-granted hook may run on this claim's word alone, at `now_micros`, when
    /// the last grant this unit ran is `last_grant`: a known grant above it, under a lease
    /// that certainly lives.
    pub fn taken_at_its_word(
        &self,
        last_grant: u64,
        now_micros: i64,
    ) -> Option<(String, Operation)> {
        let lease_lives = !self.lease.is_empty() && now_micros < self.lease_certain_until_micros;
        (self.revision > last_grant && lease_lives)
            .then(|| self.op.clone())
            .flatten()
    }
}

/// Read the last grant this unit ran ([`GRANT_FILE`]'s content; 0 when none).
pub fn decode_last_grant(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

/// The waiters' registrations, read while a callback taken on its claim's word runs.
pub fn waiters_read(keys: &Keys) -> Call {
    Call::Range(keys.waiting.clone())
}

/// The answer to [`waiters_read`].
pub fn parse_waiters(stdout: &str) -> Result<Vec<etcdctl::Kv>, String> {
    etcdctl::parse_get_json(stdout)
        .map(|(_, kvs)| kvs)
        .map_err(|e| e.0)
}

/// The lock's holder, the heads of `inprogress`, `pending` and `completed`, and the waiters'
/// registrations, in one transaction
/// (the reference reads them with three `get`s).
pub fn read(keys: &Keys) -> Call {
    Call::TxnJson(txn::read_turn(
        &keys.lock,
        &keys.inprogress,
        &keys.pending,
        &keys.completed,
        &keys.waiting,
    ))
}

/// The answer to [`read`]; `worker_claim` is left for the caller.
pub fn parse(stdout: &str) -> Result<EtcdFacts, String> {
    let reply = etcdctl::parse_txn_json(stdout).map_err(|e| e.0)?;
    let [lock, inprogress, pending, completed, waiting] = reply.ranges.as_slice() else {
        return Err(format!("expected five reads, got {}", reply.ranges.len()));
    };
    let op = |kvs: &[etcdctl::Kv]| -> Result<Option<(String, Operation)>, String> {
        kvs.first()
            .map(|kv| {
                Operation::from_json(&kv.value)
                    .map(|op| (kv.key.clone(), op))
                    .map_err(|e| format!("{}: {}", kv.key, e.0))
            })
            .transpose()
    };
    Ok(EtcdFacts {
        lock_holder: lock
            .first()
            .map(|kv| kv.value.clone())
            .filter(|v| !v.is_empty()),
        lock_lease: lock
            .first()
            .map(|kv| kv.lease.clone())
            .filter(|l| !l.is_empty()),
        inprogress: op(inprogress)?,
        inprogress_revision: inprogress.first().map_or(0, |kv| kv.mod_revision),
        pending_head: op(pending)?,
        completed_head: op(completed)?,
        waiters: waiting.clone(),
        worker_claim: None,
        from_claim: false,
    })
}

/// The transaction that records a run (`done` = the op after [`crate::etcd::queue::finalize`])
/// while `owner` holds the lock. When this implementation's worker claimed the op
/// (`worker_waits`), a `release` or `retry-release` also releases the lock in the same
/// transaction, so the next unit need not wait for this unit's worker; a `retry-hold`, or an
/// op claimed by another worker (the reference's, which polls `completed`), goes to
/// `completed` exactly as in the reference (T4).
pub fn finalize_body(
    keys: &Keys,
    owner: &str,
    key: &str,
    done: &Operation,
    worker_waits: bool,
) -> String {
    match (worker_waits, done.result) {
        (true, Some(OperationResult::Release)) => txn::drop_and_release(&keys.lock, owner, key),
        (true, Some(OperationResult::RetryRelease)) => txn::requeue_and_release(
            &keys.lock,
            owner,
            key,
            &format!("{}{}", keys.pending, done.op_id()),
            &done.to_json(),
        ),
        _ => txn::move_op(
            &keys.lock,
            owner,
            key,
            &format!("{}{}", keys.completed, done.op_id()),
            &done.to_json(),
        ),
    }
}

/// Whether a finished op (after [`crate::etcd::queue::finalize`]) lets the lock go: the
/// cases where the hook releases, or hands over, when its worker waits.
pub fn releases(done: &Operation) -> bool {
    matches!(
        done.result,
        Some(OperationResult::Release) | Some(OperationResult::RetryRelease)
    )
}

/// The finalize that hands the lock to `to` instead of releasing it (only when
/// [`releases`], and when this implementation's worker claimed the op): the writes of
/// [`finalize_body`]'s release, plus the successor's claim and lock.
pub fn hand_over_body(
    keys: &Keys,
    owner: &str,
    key: &str,
    done: &Operation,
    to: &txn::Successor,
) -> String {
    let back = format!("{}{}", keys.pending, done.op_id());
    let value = done.to_json();
    let own = match done.result {
        Some(OperationResult::RetryRelease) => txn::OwnOp::Requeue(&back, &value),
        _ => txn::OwnOp::Drop,
    };
    txn::hand_over(&keys.lock, owner, key, own, to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::fake::FakeEtcd;
    use crate::etcd::queue::finalize;
    use crate::timestamp::Timestamp;

    fn claimed(etcd: &mut FakeEtcd, keys: &Keys, owner: &str) -> (String, Operation) {
        let op = Operation::new(
            "restart",
            Default::default(),
            Some(3),
            Timestamp::from_micros(1_777_636_800_000_000),
        );
        let key = format!("{}{}", keys.inprogress, op.op_id());
        etcd.put(&keys.lock, owner);
        etcd.put(&key, &op.to_json());
        (key, op)
    }

    #[test]
    fn one_read_gives_holder_and_queue_heads() {
        let mut etcd = FakeEtcd::default();
        let keys = Keys::new("c", "o");
        assert_eq!(
            parse(&etcd.run(&read(&keys)).stdout).unwrap(),
            EtcdFacts::default()
        );
        let (key, op) = claimed(&mut etcd, &keys, "o");
        let facts = parse(&etcd.run(&read(&keys)).stdout).unwrap();
        assert_eq!(facts.lock_holder.as_deref(), Some("o"));
        assert_eq!(facts.inprogress, Some((key, op)));
        assert_eq!(facts.pending_head, None);
    }

    #[test]
    fn our_worker_gets_the_lock_back_with_the_result() {
        use OperationResult::*;
        for (result, requeued) in [(Release, false), (RetryRelease, true)] {
            let mut etcd = FakeEtcd::default();
            let keys = Keys::new("c", "o");
            let (key, op) = claimed(&mut etcd, &keys, "o");
            let done = finalize(&op, result);
            let out = etcd.run(&Call::Txn(finalize_body(&keys, "o", &key, &done, true)));
            assert_eq!(out.stdout.lines().next(), Some("SUCCESS"));
            assert_eq!(etcd.get(&keys.lock), None, "lock released with the result");
            assert_eq!(etcd.first(&keys.inprogress), None);
            assert_eq!(etcd.first(&keys.completed), None);
            let back = etcd.first(&keys.pending).map(|(_, v)| v);
            assert_eq!(back, requeued.then(|| done.to_json()));
        }
    }

    #[test]
    fn retry_hold_or_a_foreign_worker_goes_through_completed() {
        use OperationResult::*;
        for (result, ours) in [(RetryHold, true), (Release, false), (RetryRelease, false)] {
            let mut etcd = FakeEtcd::default();
            let keys = Keys::new("c", "o");
            let (key, op) = claimed(&mut etcd, &keys, "o");
            let done = finalize(&op, result);
            etcd.run(&Call::Txn(finalize_body(&keys, "o", &key, &done, ours)));
            assert_eq!(etcd.get(&keys.lock), Some("o"), "the worker releases");
            assert_eq!(
                etcd.first(&keys.completed).map(|(_, v)| v),
                Some(done.to_json())
            );
        }
    }

    #[test]
    fn a_lost_lock_records_nothing() {
        let mut etcd = FakeEtcd::default();
        let keys = Keys::new("c", "o");
        let (key, op) = claimed(&mut etcd, &keys, "someone-else");
        let done = finalize(&op, OperationResult::Release);
        let out = etcd.run(&Call::Txn(finalize_body(&keys, "o", &key, &done, true)));
        assert_eq!(out.stdout.lines().next(), Some("FAILURE"));
        assert_eq!(etcd.get(&keys.lock), Some("someone-else"));
        assert!(etcd.first(&keys.inprogress).is_some());
    }
}
