//! The lock-granted hook's side of etcd mode (spec/etcd.md §6.4): what it reads, in one
//! round trip, and the transaction that finalizes the op it ran.

use crate::etcd::etcdctl;
use crate::etcd::keys::Keys;
use crate::etcd::txn;
use crate::etcd::worker::Call;
use crate::op::{Operation, OperationResult};

/// What etcd holds for this unit, read at the start of the hook.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EtcdFacts {
    /// Value of the cluster's lock key (`None`: nobody holds it).
    pub lock_holder: Option<String>,
    /// The op this unit's worker claimed, with its key.
    pub inprogress: Option<(String, Operation)>,
    /// The first op waiting in this unit's `pending` queue.
    pub pending_head: Option<(String, Operation)>,
    /// The op id this implementation's worker says it claimed (its claim file), if any.
    pub worker_claim: Option<String>,
}

/// What a worker of this implementation writes to its claim file
/// ([`crate::etcd::worker::CLAIM_FILE`]) before it dispatches the lock-granted hook: the op
/// it claimed under the lock, and until when that lock is certainly its own. The lock is
/// the worker's lease's: it ends only when the worker releases it (it never does while a
/// claim is out — a stopping worker first removes the file) or when the lease lapses, which
/// cannot happen before the last renewal as sent plus the TTL. Within that time the hook can
/// run the op on the claim's word instead of reading etcd — one etcdctl process less between
/// two units' critical sections. The hook consumes the claim (removes the file) before it
/// trusts it, so a claim serves one hook.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerClaim {
    /// The lock's owner string.
    pub owner: String,
    /// The claimed op's in-progress key.
    pub key: String,
    /// The claimed op.
    pub op: Operation,
    /// Until when (microseconds since the epoch) the lock is certainly held.
    pub held_until_micros: i64,
}

impl WorkerClaim {
    /// The file's content.
    pub fn encode(&self) -> String {
        serde_json::json!({
            "owner": self.owner,
            "key": self.key,
            "op": self.op.to_json(),
            "held_until_micros": self.held_until_micros,
        })
        .to_string()
    }

    /// Read a claim file: the claim, if it is one of this format.
    pub fn decode(text: &str) -> Option<WorkerClaim> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let field = |name: &str| value.get(name).and_then(|v| v.as_str());
        Some(WorkerClaim {
            owner: field("owner")?.to_string(),
            key: field("key")?.to_string(),
            op: Operation::from_json(field("op")?).ok()?,
            held_until_micros: value.get("held_until_micros")?.as_i64()?,
        })
    }

    /// The claimed op's id in a claim file of any version (earlier ones held the id alone).
    pub fn op_id_in(text: &str) -> String {
        WorkerClaim::decode(text)
            .map(|claim| claim.op.op_id())
            .unwrap_or_else(|| text.trim().to_string())
    }

    /// The facts a hook takes from a claim it trusts: the lock is `owner`'s and the op is in
    /// progress. (The pending head is not known; it only matters when nothing is claimed.)
    pub fn facts(self) -> EtcdFacts {
        let op_id = self.op.op_id();
        EtcdFacts {
            lock_holder: Some(self.owner),
            inprogress: Some((self.key, self.op)),
            pending_head: None,
            worker_claim: Some(op_id),
        }
    }
}

/// The lock's holder and the heads of `inprogress` and `pending`, in one transaction
/// (the reference reads them with three `get`s).
pub fn read(keys: &Keys) -> Call {
    Call::TxnJson(txn::read_turn(&keys.lock, &keys.inprogress, &keys.pending))
}

/// The answer to [`read`]; `worker_claim` is left for the caller.
pub fn parse(stdout: &str) -> Result<EtcdFacts, String> {
    let reply = etcdctl::parse_txn_json(stdout).map_err(|e| e.0)?;
    let [lock, inprogress, pending] = reply.ranges.as_slice() else {
        return Err(format!("expected three reads, got {}", reply.ranges.len()));
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
        inprogress: op(inprogress)?,
        pending_head: op(pending)?,
        worker_claim: None,
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
