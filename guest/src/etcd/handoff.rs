//! Handing the lock straight to the longest-waiting unit.
//!
//! A unit that finds the lock held registers as a waiter in the same transaction
//! (`<cluster>/waiting/<owner>`, bound to its lease, holding the op it wants to run), then
//! watches the lock key. The lock-granted hook of the holder reads the registrations with
//! everything else it reads before its callback (one transaction) and, when it finishes its
//! op, instead of deleting the lock key, puts it to the oldest registration's owner
//! under that owner's lease and moves that owner's op to `inprogress` — exactly the writes
//! the waiter's own lock-and-claim transaction would have made, in the holder's finalize
//! transaction. The waiter's watch reports the lock key put to its own name: it holds the
//! lock and has its op claimed, and asks for its hook at once. A hand-over costs one
//! transaction and one watch event, instead of a release, every waiter's attempt and the
//! winner's claim; and waiters are served in the order they registered (the reference had
//! no order at all, §11 item 21).
//!
//! Safety: the hand-over transaction holds only if the releasing unit still holds the lock
//! and the registration and the waiter's pending op are exactly as read; a waiter that
//! left (its worker revoked its lease, or the lease lapsed) has no registration any more.
//! Otherwise the hook releases plainly and waiters compete as before. Units running the
//! reference never register and never see these keys; they take the lock when it is
//! released plainly, which happens whenever no registered waiter is left. (A waiter that
//! registers while the holder's callback runs is not in that read; it competes at the plain
//! release that follows.)

use crate::etcd::etcdctl::Kv;
use crate::etcd::keys::Keys;
use crate::etcd::txn::Successor;
use crate::op::Operation;

/// What a waiter registers.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    /// The owner the lock key is to name (the async owner, or the sync owner).
    pub owner: String,
    /// The waiter's lease (hexadecimal), which the lock key is to be bound to.
    pub lease: String,
    /// The op to claim for it (its pending key and the op); none for the sync lock.
    pub op: Option<(String, Operation)>,
}

impl Registration {
    /// The registration's value.
    pub fn encode(&self) -> String {
        let mut value = serde_json::json!({"owner": self.owner, "lease": self.lease});
        if let Some((from, op)) = &self.op {
            value["from"] = from.clone().into();
            value["op"] = op.to_json().into();
        }
        value.to_string()
    }

    /// A registration's value, if it is one.
    pub fn decode(text: &str) -> Option<Registration> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let field = |name: &str| value.get(name).and_then(|v| v.as_str());
        let op = match (field("from"), field("op")) {
            (Some(from), Some(op)) => Some((from.to_string(), Operation::from_json(op).ok()?)),
            (None, None) => None,
            _ => return None,
        };
        Some(Registration {
            owner: field("owner")?.to_string(),
            lease: field("lease")?.to_string(),
            op,
        })
    }
}

/// The waiter to hand the lock to: the oldest registration (lowest create revision) that
/// is not `me` and can be read. `registrations` is what `get <waiting> --prefix` returned.
pub fn successor(keys: &Keys, me: &str, registrations: &[Kv]) -> Option<Successor> {
    let mut found: Vec<(&Kv, Registration)> = registrations
        .iter()
        .filter(|kv| kv.key.starts_with(&keys.waiting))
        .filter_map(|kv| Some((kv, Registration::decode(&kv.value)?)))
        .filter(|(kv, reg)| reg.owner != me && kv.key == keys.waiting_entry(&reg.owner))
        .collect();
    found.sort_by_key(|(kv, _)| (kv.create_revision, kv.key.clone()));
    let (kv, reg) = found.into_iter().next()?;
    Some(Successor {
        entry: kv.key.clone(),
        registration: kv.value.clone(),
        op: reg.op.as_ref().map(|(from, op)| {
            (
                from.clone(),
                keys.inprogress_of(&reg.owner, &op.op_id()),
                op.to_json(),
            )
        }),
        owner: reg.owner,
        lease: reg.lease,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Timestamp;

    fn op(micros: i64) -> Operation {
        Operation::new(
            "restart",
            Default::default(),
            None,
            Timestamp::from_micros(micros),
        )
    }

    fn kv(keys: &Keys, reg: &Registration, created: u64) -> Kv {
        Kv {
            key: keys.waiting_entry(&reg.owner),
            value: reg.encode(),
            lease: reg.lease.clone(),
            create_revision: created,
            mod_revision: created,
        }
    }

    #[test]
    fn registrations_round_trip_and_the_oldest_other_waiter_is_chosen() {
        let keys = Keys::new("c", "me");
        let waiter = |owner: &str, micros: i64| Registration {
            owner: owner.into(),
            lease: "1a".into(),
            op: Some((format!("/p/{owner}"), op(micros))),
        };
        let (a, b) = (waiter("a", 1), waiter("b", 2));
        let sync = Registration {
            owner: "s:sync".into(),
            lease: "2b".into(),
            op: None,
        };
        for reg in [&a, &sync] {
            assert_eq!(Registration::decode(&reg.encode()).as_ref(), Some(reg));
        }
        assert_eq!(Registration::decode("not json"), None);
        let me = waiter("me", 0);
        let chosen = successor(
            &keys,
            "me",
            &[
                kv(&keys, &me, 1),
                kv(&keys, &b, 3),
                kv(&keys, &a, 5),
                kv(&keys, &sync, 7),
            ],
        )
        .unwrap();
        assert_eq!(chosen.owner, "b", "the oldest registration other than mine");
        assert_eq!(chosen.registration, b.encode());
        let (from, into, value) = chosen.op.unwrap();
        assert_eq!(from, "/p/b");
        assert_eq!(into, keys.inprogress_of("b", &op(2).op_id()));
        assert_eq!(value, op(2).to_json());
        let only_sync = successor(&keys, "me", &[kv(&keys, &sync, 9)]).unwrap();
        assert_eq!((only_sync.owner.as_str(), only_sync.op), ("s:sync", None));
        assert_eq!(successor(&keys, "me", &[kv(&keys, &me, 1)]), None);
        // A registration filed under another owner's key is not trusted.
        let mut forged = kv(&keys, &a, 2);
        forged.key = keys.waiting_entry("b");
        assert_eq!(successor(&keys, "me", &[forged]), None);
    }
}
