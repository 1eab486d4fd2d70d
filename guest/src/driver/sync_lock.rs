//! The synchronous lock (`acquire_sync_lock`, spec/etcd.md §7): the cluster's lock key,
//! taken with the owner `<owner>:sync` under a fresh lease, so a sync section excludes every
//! asynchronous operation and every other sync section across all applications sharing the
//! cluster id. Without etcd (or when etcd fails) the charm's own backend is used.
//!
//! Fixes over the reference (§11 items 1, 2, 22):
//! * a timeout surfaces as a timeout, never as a fallback to the charm's backend;
//! * no 15 s polling: a held lock is watched from the revision at which it was seen held,
//!   so the waiter tries again as soon as it is released, and the deadline is checked after
//!   every wake-up (each watch lasts at most until the deadline);
//! * a hook asking for the sync lock while this unit's own worker holds the lock for an
//!   asynchronous operation fails at once: that operation's hook cannot run before this one
//!   ends, so waiting could only end at the timeout (or never).
//!
//! The lease is kept alive by a `lease keep-alive` etcdctl started through the host, which
//! kills it with the hook's process: if the hook dies holding the lock, the lease lapses
//! within its TTL and etcd frees the key.

use super::{Effects, HOOK_ATTEMPTS, run_with_retries};
use crate::etcd::etcdctl;
use crate::etcd::handoff::Registration;
use crate::etcd::txn;
use crate::etcd::worker::Call;
use crate::manager::LogLevel;

/// TTL of the sync lock's lease (the reference's).
const LEASE_TTL: u32 = 60;
/// Longest single watch while waiting.
const WATCH_MS: u64 = 10_000;
/// Pause after a watch that ended without an event (etcd unreachable), so it cannot spin.
const WATCH_RETRY_MS: u64 = 250;

/// What the sync lock needs of etcd, when etcd is available to this hook.
#[derive(Clone, Debug)]
pub(super) struct SyncEtcd {
    /// The etcdctl environment.
    pub(super) env: Vec<(String, String)>,
    /// The cluster's lock key.
    pub(super) lock: String,
    /// This unit's asynchronous owner (its worker's).
    pub(super) owner: String,
    /// The sync owner's waiter registration key.
    pub(super) waiting_entry: String,
}

impl SyncEtcd {
    fn sync_owner(&self) -> String {
        format!("{}:sync", self.owner)
    }
}

/// A sync lock held through etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdHold {
    lease: String,
    keep_alive: u32,
}

/// Why etcd did not give the lock.
#[derive(Debug)]
pub(super) enum Refusal {
    /// The deadline passed while someone else held it: a `TimeoutError`, no fallback.
    TimedOut(String),
    /// This unit's own asynchronous operation holds it (would deadlock).
    OwnOperation(String),
    /// etcd could not be used; the charm's backend is the fallback.
    Unusable(String),
}

/// Take the lock through etcd, waiting at most `timeout_seconds` (none: forever).
pub(super) fn acquire(
    fx: &mut impl Effects,
    etcd: &SyncEtcd,
    timeout_seconds: Option<u32>,
) -> Result<EtcdHold, Refusal> {
    let deadline = timeout_seconds.map(|s| fx.now().micros() + i64::from(s) * 1_000_000);
    let lease = etcdctl::parse_lease_grant(
        &run_with_retries(fx, &Call::LeaseGrant(LEASE_TTL), &etcd.env, HOOK_ATTEMPTS)
            .map_err(Refusal::Unusable)?,
    )
    .map_err(|e| Refusal::Unusable(e.0))?;
    let keep_alive = match fx.start_etcdctl(
        &["lease".into(), "keep-alive".into(), lease.clone()],
        &etcd.env,
    ) {
        Ok(handle) => handle,
        Err(e) => {
            revoke(fx, etcd, &lease);
            return Err(Refusal::Unusable(format!(
                "cannot keep the lease alive while the charm works: {e}"
            )));
        }
    };
    let hold = EtcdHold { lease, keep_alive };
    wait_for_lock(fx, etcd, &hold, deadline).inspect_err(|_| give_up(fx, etcd, &hold))?;
    Ok(hold)
}

fn wait_for_lock(
    fx: &mut impl Effects,
    etcd: &SyncEtcd,
    hold: &EtcdHold,
    deadline: Option<i64>,
) -> Result<(), Refusal> {
    let sync_owner = etcd.sync_owner();
    // Registered as a waiter like any worker (see `crate::etcd::handoff`): a holder that
    // finishes hands the lock straight to the oldest waiter, this one included, so a sync
    // request is served in its turn, not only when the lock happens to be released plainly.
    let registration = Registration {
        owner: sync_owner.clone(),
        lease: hold.lease.clone(),
        op: None,
    }
    .encode();
    loop {
        let body = txn::acquire_or_register(
            &etcd.lock,
            &sync_owner,
            &hold.lease,
            (&etcd.waiting_entry, &registration),
        );
        let stdout = run_with_retries(fx, &Call::TxnJson(body), &etcd.env, HOOK_ATTEMPTS)
            .map_err(Refusal::Unusable)?;
        let reply = etcdctl::parse_txn_json(&stdout).map_err(|e| Refusal::Unusable(e.0))?;
        let holder = reply.ranges.first().and_then(|kvs| kvs.first());
        // A retried call whose first reply was lost finds its own write.
        let ours = holder.is_some_and(|kv| {
            kv.value == sync_owner && etcdctl::same_lease(&kv.lease, &hold.lease)
        });
        if reply.succeeded || ours {
            return Ok(());
        }
        let holder = holder.map(|kv| kv.value.clone()).unwrap_or_default();
        if holder == etcd.owner {
            return Err(Refusal::OwnOperation(format!(
                "This unit's etcd worker holds the lock for one of its queued operations, whose \
                 {} hook cannot run before this hook ends; not waiting for the sync lock.",
                crate::etcd::worker::LOCK_GRANTED_HOOK
            )));
        }
        let now = fx.now().micros();
        let left_ms = match deadline {
            Some(deadline) if now >= deadline => {
                return Err(Refusal::TimedOut(format!(
                    "Timed out waiting for the etcd sync lock (held by {holder})."
                )));
            }
            Some(deadline) => ((deadline - now) as u64).div_ceil(1000).min(WATCH_MS),
            None => WATCH_MS,
        };
        let watch = Call::Watch {
            key: etcd.lock.clone(),
            from_revision: reply.revision + 1,
        };
        let (args, _) = watch.argv();
        let saw_event = match fx.watch_etcdctl(&args, &etcd.env, left_ms as u32) {
            Ok(out) => etcdctl::watch_saw_event(&out.stdout) || out.timed_out,
            Err(_) => false,
        };
        if !saw_event {
            fx.sleep_ms(WATCH_RETRY_MS);
        }
    }
}

/// Let go of the lock: the guarded release, then the lease (which frees the key even if the
/// release failed), then the keep-alive. Failures are logged, never raised: the block has
/// run, and an unrevoked lease lapses within its TTL once the keep-alive is gone.
pub(super) fn release(fx: &mut impl Effects, etcd: &SyncEtcd, hold: EtcdHold) {
    let body = txn::release(&etcd.lock, &etcd.sync_owner());
    if let Err(why) = run_with_retries(fx, &Call::Txn(body), &etcd.env, HOOK_ATTEMPTS) {
        fx.log(
            LogLevel::Warning,
            &format!("Releasing the etcd sync lock failed ({why}); revoking its lease."),
        );
    }
    give_up(fx, etcd, &hold);
}

fn give_up(fx: &mut impl Effects, etcd: &SyncEtcd, hold: &EtcdHold) {
    revoke(fx, etcd, &hold.lease);
    fx.stop_etcdctl(hold.keep_alive);
}

fn revoke(fx: &mut impl Effects, etcd: &SyncEtcd, lease: &str) {
    if let Err(why) = run_with_retries(
        fx,
        &Call::LeaseRevoke(lease.to_string()),
        &etcd.env,
        HOOK_ATTEMPTS,
    ) {
        fx.log(
            LogLevel::Warning,
            &format!(
                "Revoking the sync lock's lease {lease} failed ({why}); it lapses in {LEASE_TTL} s."
            ),
        );
    }
}
