//! The etcd worker as a sans-IO state machine (spec/etcd.md §6.2, with the fixes of §11).
//!
//! The worker competes for the cluster's lock key on behalf of one unit, claims the unit's
//! next pending operation, asks for the `rollingops_lock_granted` hook (where the charm's
//! callback runs), waits for the hook to move the operation to `completed`, post-processes
//! it and releases. A host drives it: [`Worker::poll`] says what to do next
//! ([`Step`]: an etcdctl call, a sleep, a dispatch, or exit) and [`Worker::handle`] takes the
//! call's output.
//!
//! Differences from the reference, all invisible to other units:
//! * no 15 s lock polling and no 30 s sleep after a release: a worker that finds the lock
//!   held watches the lock key from the revision at which it saw it held (so a release in
//!   between is not missed) and tries again at the first event, and after a release it
//!   yields briefly before competing again so that waiting units get the key first;
//! * taking the lock and claiming the pending head is one transaction, which also registers
//!   the worker as a waiter when the lock is held; the hook that finishes an op drops or
//!   requeues it and hands the lock to the oldest waiter (or releases it) in one
//!   transaction (when the worker that claimed it is this one, see [`CLAIM_FILE`] and
//!   [`crate::etcd::handoff`]); a waiter handed the lock learns it from its watch, with its
//!   op already claimed; the worker watches its in-progress key to learn that the hook is
//!   done. The lock and queue keys and values written are those of the reference's sequence
//!   of transactions, so other units see the same states;
//! * a watch is one process read event by event (see [`crate::driver::Prepared`]), and the
//!   lock transaction after a watch is started ahead;
//! * the lease is kept alive with `lease keep-alive --once` between steps (no helper
//!   process); if the worker dies the lease lapses within its TTL and the key goes with it;
//! * the worker exits when its unit has nothing pending instead of idling forever, and a
//!   dispatched hook that never reports back is dispatched again after a timeout;
//! * an interrupted previous worker's `inprogress`/`completed` entries are recovered rather
//!   than declared fatal.

use crate::etcd::etcdctl::{self, Failure};
use crate::etcd::handoff::Registration;
use crate::etcd::keys::Keys;
use crate::etcd::txn;
use crate::op::{Operation, OperationResult};

/// Hook the worker dispatches when the unit holds the lock and has claimed an operation.
pub const LOCK_GRANTED_HOOK: &str = "rollingops_lock_granted";
/// Hook the worker dispatches when etcd fails for good.
pub const ETCD_FAILED_HOOK: &str = "rollingops_etcd_failed";
/// A file under base_dir whose presence asks the worker to release and exit (written when
/// the unit falls back to the peer relation; removed when a worker is started).
pub const STOP_FILE: &str = "etcd/worker-stop";
/// A file under base_dir where the worker writes what it claimed before dispatching the
/// lock-granted hook ([`crate::etcd::turn::WorkerClaim`]). The hook may take it at its word
/// and run the op without reading etcd (see there when); a hook that finds the op it runs
/// named there knows that this implementation's worker is waiting (watching the
/// in-progress key), so it may finalize and release (or hand the lock over) in one
/// transaction; for any other worker (the reference's, still running after an upgrade,
/// polls `completed`) it moves the op to `completed` as the reference does.
pub const CLAIM_FILE: &str = "etcd/worker-claim";

/// Timing knobs.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Lease TTL in seconds (the reference uses 60).
    pub lease_ttl: u32,
    /// Renew the lease at least this often (milliseconds).
    pub keep_alive_ms: u64,
    /// First retry delay after a failed etcdctl call or watch (milliseconds); doubles up to
    /// `max_backoff_ms`.
    pub min_backoff_ms: u64,
    /// Longest retry delay (milliseconds).
    pub max_backoff_ms: u64,
    /// Re-dispatch the lock-granted hook if no result arrives within this (milliseconds).
    pub hook_timeout_ms: u64,
    /// Retryable etcdctl failures tolerated in a row before giving up.
    pub retry_budget: u32,
    /// …and for at most this long (milliseconds): a call to a dead server can take the
    /// host's whole per-call timeout, so a count alone could mean minutes before falling
    /// back.
    pub retry_window_ms: u64,
    /// Longest single watch (milliseconds); below `keep_alive_ms` so renewals stay on time.
    pub watch_timeout_ms: u32,
    /// After releasing, wait this long before competing again, so that units already
    /// waiting (woken by their watch) take the lock first (milliseconds). Short, so that
    /// this unit registers again soon and the next holder finds it to hand the lock to.
    pub yield_after_release_ms: u64,
    /// After losing the race that followed a release, wait this long before watching again
    /// (milliseconds). The watch starts from the revision of the lost attempt, so nothing is
    /// missed; a pause would keep the losers' etcdctl start-ups off the CPU while the
    /// winner's hook starts. Default 0: since the hook takes its worker's claim at its word
    /// (no etcdctl of its own before the callback), a late watch costs more than the CPU
    /// (bench, 5 units × 20 rounds: median 14.5–16.9 ms with 0, 20.9 ms with 20).
    pub rewatch_delay_ms: u64,
    /// After the hook's finalize (the watch on the in-progress key fired), wait this long
    /// before this worker's own bookkeeping (milliseconds): when the hook handed the lock
    /// over, the next unit is starting, and this worker's etcdctl start-ups would compete
    /// with it for the CPU. The next unit's hook needs well under a millisecond to its
    /// callback now (its claim taken at its word, its processes started in the background),
    /// so a short pause is enough, and a long one keeps this unit from registering again in
    /// time to be handed the lock (bench, 5 units × 20 rounds, lease kept between ops:
    /// median 2.4–2.7 ms with 10 and 10, 3.1–3.4 ms with 100 and 50 for this and
    /// `yield_after_release_ms`).
    pub after_hook_delay_ms: u64,
    /// The claim a worker hands its hook (see [`CLAIM_FILE`]) vouches for the lease until
    /// its last renewal (as sent) plus its TTL, less this margin (milliseconds).
    pub claim_margin_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_ttl: 60,
            keep_alive_ms: 15_000,
            min_backoff_ms: 25,
            max_backoff_ms: 250,
            hook_timeout_ms: 600_000,
            retry_budget: 12,
            retry_window_ms: 20_000,
            watch_timeout_ms: 10_000,
            yield_after_release_ms: 10,
            rewatch_delay_ms: 0,
            after_hook_delay_ms: 10,
            claim_margin_ms: 20_000,
        }
    }
}

/// One etcdctl invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// First key/value under a prefix.
    First(String),
    /// The value of one key (empty when absent).
    Value(String),
    /// Every key/value under a prefix, as JSON (`-w json`).
    Range(String),
    /// A transaction body.
    Txn(String),
    /// A transaction body, answered as JSON (`-w json`): its revision and reads.
    TxnJson(String),
    /// `lease grant <ttl>`.
    LeaseGrant(u32),
    /// `lease keep-alive --once <id>`.
    KeepAlive(String),
    /// `lease revoke <id>`.
    LeaseRevoke(String),
    /// `watch <key> --rev=<from_revision>`: never ends by itself; run it with the host's
    /// watch, which returns at the first line of output (the first event). Run with
    /// `-w json`, so the event carries the key's new value and lease.
    Watch {
        /// The key watched.
        key: String,
        /// The first revision reported (earlier events are history).
        from_revision: u64,
    },
}

impl Call {
    /// etcdctl arguments and stdin.
    pub fn argv(&self) -> (Vec<String>, Option<String>) {
        let args = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            Call::First(prefix) => (args(&["get", prefix, "--prefix", "--limit=1"]), None),
            Call::Value(key) => (args(&["get", key, "--print-value-only"]), None),
            Call::Range(prefix) => (args(&["-w", "json", "get", prefix, "--prefix"]), None),
            Call::Txn(body) => (args(&["txn"]), Some(body.clone())),
            Call::TxnJson(body) => (args(&["-w", "json", "txn"]), Some(body.clone())),
            Call::LeaseGrant(ttl) => (args(&["lease", "grant", &ttl.to_string()]), None),
            Call::KeepAlive(id) => (args(&["lease", "keep-alive", "--once", id]), None),
            Call::LeaseRevoke(id) => (args(&["lease", "revoke", id]), None),
            Call::Watch { key, from_revision } => (
                args(&[
                    "-w",
                    "json",
                    "watch",
                    key,
                    &format!("--rev={from_revision}"),
                ]),
                None,
            ),
        }
    }
}

/// What the host should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run etcdctl and report with [`Worker::handle`].
    Etcdctl(Call),
    /// Watch with etcdctl until its first line of output, its exit, or `timeout_ms` (then
    /// kill it), and report with [`Worker::handle`].
    Watch(Call, u32),
    /// Wait, then poll again.
    Sleep(u64),
    /// Run this hook on the unit (returns at once), then poll again.
    Dispatch(&'static str),
    /// Stop: `Ok` when there is nothing left to do, `Err` when etcd failed (the worker has
    /// already asked for the etcd-failed hook).
    Exit(Result<(), String>),
}

/// What a worker vouches for when it asks for the lock-granted hook.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    /// The op's in-progress key.
    pub key: String,
    /// The op.
    pub op: Operation,
    /// The lease the lock key is bound to.
    pub lease: String,
    /// For how much longer (milliseconds from the last poll) the lease certainly lives:
    /// its last renewal as sent, plus its TTL, less [`Timing::claim_margin_ms`].
    pub certain_ms: u64,
    /// The revision at which the op was put in progress (the grant), when this worker
    /// knows it; 0 otherwise.
    pub revision: u64,
}

/// The output of an etcdctl call, as the host saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Exit code (-1 if killed).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Killed at the timeout.
    pub timed_out: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Look for work an interrupted worker left in `completed`.
    RecoverCompleted,
    /// Look for work an interrupted worker left in `inprogress`.
    RecoverInProgress,
    /// Is anything pending?
    CheckPending,
    /// Nothing pending: is anything in progress after all? A hand-over to a registration
    /// this unit's previous worker left (its lease not yet lapsed) claims the op for that
    /// worker's lease; the op must not be left behind.
    LastLook,
    /// Get a lease.
    ExpectLease,
    /// Try the lock transaction.
    ExpectLock,
    /// Lock seen held at this revision: watch it.
    Contended { from_revision: u64 },
    /// Watching the lock key.
    WatchingLock,
    /// Read the pending head to claim it.
    ExpectPendingHead,
    /// Move the head to `inprogress`.
    ExpectClaim,
    /// The claim transaction said FAILURE: look whether an earlier, ambiguous attempt (a
    /// member went away mid-reply) did claim it.
    VerifyClaim,
    /// The lock is taken again for a recovered in-progress op: is the op still there?
    VerifyRecovered,
    /// Ask for the hook.
    DispatchHook,
    /// Poll `completed`.
    ExpectCompleted,
    /// `completed` is empty: is the op still in progress, or did the hook finish it and
    /// release the lock itself?
    ExpectInProgress,
    /// Waiting for the hook to finish.
    AwaitingHook,
    /// Watching the in-progress key for the hook's finalize.
    WatchingHook,
    /// Requeue or drop the completed op.
    ExpectPostProcess { release_after: bool },
    /// Revoke the lease (frees the lock).
    ExpectRevoke,
    /// Guarded release transaction (normally a no-op after the revoke).
    ExpectReleaseTxn,
    /// Renewing the lease, then resume `resume`.
    ExpectKeepAlive { resume: Box<State> },
    /// Asked for the etcd-failed hook; exit next.
    Failed(String),
    /// Done.
    Finished,
}

/// The worker of one unit.
pub struct Worker {
    keys: Keys,
    owner: String,
    timing: Timing,
    state: State,
    lease: Option<String>,
    holding: bool,
    backoff_ms: u64,
    retries: u32,
    /// When the current run of retryable failures began (poll time, milliseconds).
    failing_since: Option<u64>,
    last_keep_alive_ms: u64,
    /// When the lease grant or keep-alive under way was sent.
    renewal_sent_ms: u64,
    hook_dispatched_at_ms: u64,
    now_ms: u64,
    /// The op claimed under the lock, if any.
    claimed: Option<(String, Operation)>,
    /// The revision of the claim (the watch for the hook starts after it), if known.
    claim_revision: Option<u64>,
    /// The revision at which the claimed op was put in progress, when this worker's own
    /// transaction (or a hand-over to it) did so.
    grant_revision: Option<u64>,
    /// A lock-granted hook was asked for and has not been seen to finish: the lock is its
    /// to release (see [`Worker::stop`]).
    hook_pending: bool,
    /// An op another worker's hook finished waits in `completed` (see `ExpectCompleted`).
    leftover_completed: bool,
    /// The pending head to claim together with the lock.
    next: Option<(String, Operation)>,
    /// The completed op being post-processed.
    completed: Option<(String, Operation)>,
    /// After a release with more work pending, yield once before competing again.
    yield_before_lock: bool,
    /// The last lock watch reported an event (a release), so a failed attempt now is a
    /// lost race.
    woken_by_release: bool,
    /// A pause to take before the next step (retryable failure).
    pending_sleep: Option<u64>,
    /// Asked to stop: exit after releasing.
    stopping: bool,
    /// How the worker ended.
    finished: Option<Result<(), String>>,
    /// Hooks dispatched (for tests and logs).
    pub dispatched: u32,
}

impl Worker {
    /// A worker for `owner` with these keys.
    pub fn new(keys: Keys, owner: String, timing: Timing, now_ms: u64) -> Self {
        let backoff_ms = timing.min_backoff_ms;
        Worker {
            keys,
            owner,
            timing,
            state: State::RecoverCompleted,
            lease: None,
            holding: false,
            backoff_ms,
            retries: 0,
            failing_since: None,
            last_keep_alive_ms: now_ms,
            renewal_sent_ms: now_ms,
            hook_dispatched_at_ms: 0,
            now_ms,
            claimed: None,
            claim_revision: None,
            grant_revision: None,
            hook_pending: false,
            leftover_completed: false,
            next: None,
            completed: None,
            yield_before_lock: false,
            woken_by_release: false,
            pending_sleep: None,
            stopping: false,
            finished: None,
            dispatched: 0,
        }
    }

    /// Whether this worker currently holds the lock.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// The id of the op this worker claimed and is running a hook for (see [`CLAIM_FILE`]).
    pub fn claimed_op_id(&self) -> Option<String> {
        self.claimed.as_ref().map(|(_, op)| op.op_id())
    }

    /// The etcdctl arguments of the call that follows the watch under way when it fires, so
    /// that the host can start that process ahead: after a watch on the lock comes the lock
    /// transaction, on the hand-off's critical path.
    pub fn args_after_watch(&self) -> Option<Vec<String>> {
        (self.state == State::WatchingLock).then(|| Call::TxnJson(String::new()).argv().0)
    }

    /// The op this worker claimed under the lock, for the claim handed to the hook (see
    /// [`CLAIM_FILE`]).
    pub fn claim(&self) -> Option<Claimed> {
        let (_, op) = self.claimed.as_ref().filter(|_| self.holding)?;
        let lease = self.lease.clone()?;
        // (The claimed entry's key is the pending one it was moved from.)
        let key = format!("{}{}", self.keys.inprogress, op.op_id());
        let lease_ends = self.last_keep_alive_ms + u64::from(self.timing.lease_ttl) * 1000;
        let certain_ms = lease_ends
            .saturating_sub(self.timing.claim_margin_ms)
            .saturating_sub(self.now_ms);
        Some(Claimed {
            key,
            op: op.clone(),
            lease,
            certain_ms,
            revision: self.grant_revision.unwrap_or(0),
        })
    }

    /// Release (if holding) and exit, without claiming anything more. With a lock-granted
    /// hook still to finish, the lock is left to that hook (its finalize releases it, and
    /// it keeps the lease alive while its callback runs) or to the lease's expiry: revoking
    /// now could free the lock under a running callback.
    pub fn stop(&mut self) {
        self.stopping = true;
        self.pending_sleep = None;
        self.state = if self.hook_pending {
            State::Finished
        } else if self.lease.is_some() || self.holding {
            State::ExpectRevoke
        } else {
            State::Finished
        };
    }

    /// What to do next, at time `now_ms` (any monotonic milliseconds).
    pub fn poll(&mut self, now_ms: u64) -> Step {
        self.now_ms = now_ms;
        if let Some(ms) = self.pending_sleep.take() {
            return Step::Sleep(ms);
        }
        let keep_alive_due =
            now_ms.saturating_sub(self.last_keep_alive_ms) >= self.timing.keep_alive_ms;
        if let (Some(lease), true, true) = (&self.lease, keep_alive_due, self.waiting_state()) {
            let lease = lease.clone();
            let resume = Box::new(std::mem::replace(&mut self.state, State::Finished));
            self.state = State::ExpectKeepAlive { resume };
            self.renewal_sent_ms = now_ms;
            return Step::Etcdctl(Call::KeepAlive(lease));
        }
        match &self.state {
            State::RecoverCompleted => Step::Etcdctl(Call::First(self.keys.completed.clone())),
            State::LastLook => Step::Etcdctl(Call::First(self.keys.inprogress.clone())),
            State::RecoverInProgress => Step::Etcdctl(Call::First(self.keys.inprogress.clone())),
            State::CheckPending => {
                if self.yield_before_lock {
                    self.yield_before_lock = false;
                    return Step::Sleep(self.timing.yield_after_release_ms);
                }
                Step::Etcdctl(Call::First(self.keys.pending.clone()))
            }
            State::ExpectLease => {
                self.renewal_sent_ms = now_ms;
                Step::Etcdctl(Call::LeaseGrant(self.timing.lease_ttl))
            }
            State::ExpectLock => {
                let lease = self.lease.clone().unwrap_or_default();
                let body = match &self.next {
                    Some((key, op)) if self.claimed.is_none() && self.completed.is_none() => {
                        let to = format!("{}{}", self.keys.inprogress, op.op_id());
                        let registration = Registration {
                            owner: self.owner.clone(),
                            lease: lease.clone(),
                            op: Some((key.clone(), op.clone())),
                        };
                        txn::acquire_and_claim(
                            &self.keys.lock,
                            &self.owner,
                            &lease,
                            key,
                            &to,
                            &op.to_json(),
                            (
                                &self.keys.waiting_entry(&self.owner),
                                &registration.encode(),
                            ),
                        )
                    }
                    _ => txn::acquire_or_read(&self.keys.lock, &self.owner, &lease),
                };
                Step::Etcdctl(Call::TxnJson(body))
            }
            State::Contended { from_revision } => {
                let call = Call::Watch {
                    key: self.keys.lock.clone(),
                    from_revision: *from_revision,
                };
                self.state = State::WatchingLock;
                Step::Watch(call, self.timing.watch_timeout_ms)
            }
            State::ExpectPendingHead => Step::Etcdctl(Call::First(self.keys.pending.clone())),
            State::ExpectClaim => {
                let (key, op) = self.claimed.clone().expect("claim follows a pending head");
                let to = format!("{}{}", self.keys.inprogress, op.op_id());
                Step::Etcdctl(Call::TxnJson(txn::move_op(
                    &self.keys.lock,
                    &self.owner,
                    &key,
                    &to,
                    &op.to_json(),
                )))
            }
            State::DispatchHook => {
                self.dispatched += 1;
                self.hook_pending = true;
                self.hook_dispatched_at_ms = now_ms;
                self.backoff_ms = self.timing.min_backoff_ms;
                self.state = State::ExpectCompleted;
                Step::Dispatch(LOCK_GRANTED_HOOK)
            }
            State::ExpectCompleted => Step::Etcdctl(Call::First(self.keys.completed.clone())),
            State::ExpectInProgress | State::VerifyClaim | State::VerifyRecovered => {
                Step::Etcdctl(Call::First(self.keys.inprogress.clone()))
            }
            State::AwaitingHook => {
                if now_ms.saturating_sub(self.hook_dispatched_at_ms) >= self.timing.hook_timeout_ms
                {
                    self.state = State::DispatchHook;
                    return self.poll(now_ms);
                }
                match (&self.claimed, self.claim_revision) {
                    (Some((_, op)), Some(revision)) => {
                        let call = Call::Watch {
                            key: format!("{}{}", self.keys.inprogress, op.op_id()),
                            from_revision: revision + 1,
                        };
                        self.state = State::WatchingHook;
                        Step::Watch(call, self.timing.watch_timeout_ms)
                    }
                    _ => {
                        let wait = self.backoff_ms;
                        self.backoff_ms = (self.backoff_ms * 2).min(self.timing.max_backoff_ms);
                        self.state = State::ExpectCompleted;
                        Step::Sleep(wait)
                    }
                }
            }
            // A watch is under way; the host reports its end with `handle`.
            State::WatchingLock | State::WatchingHook => {
                Step::Exit(Err("polled during a watch".into()))
            }
            State::ExpectPostProcess { .. } => {
                let (key, op) = self
                    .completed
                    .clone()
                    .expect("post-processing follows a completed op");
                let body = match op.result {
                    Some(OperationResult::RetryHold) | Some(OperationResult::RetryRelease) => {
                        let back = format!("{}{}", self.keys.pending, op.op_id());
                        txn::move_op(&self.keys.lock, &self.owner, &key, &back, &op.to_json())
                    }
                    _ => txn::drop_op(&self.keys.lock, &self.owner, &key),
                };
                Step::Etcdctl(Call::Txn(body))
            }
            State::ExpectRevoke => match self.lease.clone() {
                Some(lease) => Step::Etcdctl(Call::LeaseRevoke(lease)),
                None => {
                    self.state = State::ExpectReleaseTxn;
                    self.poll(now_ms)
                }
            },
            State::ExpectReleaseTxn => {
                Step::Etcdctl(Call::Txn(txn::release(&self.keys.lock, &self.owner)))
            }
            State::ExpectKeepAlive { .. } => {
                self.renewal_sent_ms = now_ms;
                Step::Etcdctl(Call::KeepAlive(self.lease.clone().unwrap_or_default()))
            }
            State::Failed(why) => {
                let why = why.clone();
                self.state = State::Finished;
                self.finished = Some(Err(why));
                Step::Dispatch(ETCD_FAILED_HOOK)
            }
            State::Finished => Step::Exit(self.finished.clone().unwrap_or(Ok(()))),
        }
    }

    fn waiting_state(&self) -> bool {
        matches!(self.state, State::Contended { .. } | State::AwaitingHook)
    }

    /// Report the output of the last [`Step::Etcdctl`] or [`Step::Watch`].
    pub fn handle(&mut self, output: Output) {
        if matches!(self.state, State::WatchingLock | State::WatchingHook) {
            self.after_watch(&output);
            return;
        }
        if let Some(failure) = etcdctl::classify(output.code, &output.stderr, output.timed_out) {
            self.on_failure(failure);
            return;
        }
        self.retries = 0;
        self.failing_since = None;
        let state = std::mem::replace(&mut self.state, State::Finished);
        self.state = match self.advance(state, &output.stdout) {
            Ok(next) => next,
            Err(why) => State::Failed(why),
        };
    }

    /// Whatever a watch reports, the next step re-reads etcd, which is where errors are
    /// judged; a watch that ended without an event or a timeout (etcd unreachable, revision
    /// compacted) is followed by a backoff so that a failing watch cannot spin.
    fn after_watch(&mut self, output: &Output) {
        let events = etcdctl::parse_watch_events(&output.stdout);
        if self.state == State::WatchingLock
            && let Some(next) = self.after_lock_event(&events)
        {
            self.backoff_ms = self.timing.min_backoff_ms;
            self.state = next;
            return;
        }
        let saw_event = !events.is_empty();
        self.woken_by_release = saw_event && self.state == State::WatchingLock;
        if saw_event {
            self.backoff_ms = self.timing.min_backoff_ms;
            if self.state == State::WatchingHook {
                self.pending_sleep = Some(self.timing.after_hook_delay_ms);
            }
        } else if !output.timed_out {
            self.pending_sleep = Some(self.backoff_ms);
            self.backoff_ms = (self.backoff_ms * 2).min(self.timing.max_backoff_ms);
        }
        self.state = match self.state {
            State::WatchingLock => State::ExpectLock,
            _ => State::ExpectCompleted,
        };
    }

    /// What a watch on the lock saw, when it settles the next step without a transaction:
    /// the holder handed the lock to this worker (the key now names it, under its lease,
    /// and the registered op is claimed — see [`crate::etcd::handoff`]), or the lock
    /// passed to someone else (watch on from there). A release, or nothing, is for the
    /// lock transaction to judge.
    fn after_lock_event(&mut self, events: &[etcdctl::WatchEvent]) -> Option<State> {
        let last = events.last()?;
        if last.deleted {
            return None;
        }
        let ours = last.kv.value == self.owner && same_lease(&last.kv.lease, self.lease.as_deref());
        if !ours {
            return Some(State::Contended {
                from_revision: last.kv.mod_revision + 1,
            });
        }
        if self.claimed.is_some() || self.completed.is_some() {
            return None;
        }
        let next = self.next.take()?;
        self.holding = true;
        self.claimed = Some(next);
        self.claim_revision = Some(last.kv.mod_revision);
        self.grant_revision = Some(last.kv.mod_revision);
        Some(State::DispatchHook)
    }

    fn on_failure(&mut self, failure: Failure) {
        match failure {
            // Retry the same step after a pause.
            Failure::Retryable(_)
                if self.retries < self.timing.retry_budget
                    && self
                        .now_ms
                        .saturating_sub(*self.failing_since.get_or_insert(self.now_ms))
                        < self.timing.retry_window_ms =>
            {
                self.retries += 1;
                self.pending_sleep = Some(self.timing.max_backoff_ms);
            }
            Failure::Retryable(why) | Failure::Fatal(why) => self.state = State::Failed(why),
        }
    }

    fn advance(&mut self, state: State, stdout: &str) -> Result<State, String> {
        let first = |stdout: &str| etcdctl::parse_first_op(stdout).map_err(|e| e.0);
        Ok(match state {
            State::RecoverCompleted => match first(stdout)? {
                // A previous worker died after the hook finished: post-process it. It holds
                // no lock any more, so re-acquire first.
                Some(found) => {
                    self.completed = Some(found);
                    State::ExpectLease
                }
                None => State::RecoverInProgress,
            },
            State::RecoverInProgress => match first(stdout)? {
                // A claimed op whose hook never reported: run it again under a new lock.
                Some((key, op)) => {
                    self.claimed = Some((key, op));
                    State::ExpectLease
                }
                None => State::CheckPending,
            },
            State::CheckPending => match first(stdout)? {
                None if self.holding => State::Finished,
                None => State::LastLook,
                Some(head) if self.holding => {
                    self.claimed = Some(head);
                    State::ExpectClaim
                }
                Some(head) => {
                    self.next = Some(head);
                    if self.lease.is_some() {
                        State::ExpectLock
                    } else {
                        State::ExpectLease
                    }
                }
            },
            State::LastLook => match first(stdout)? {
                // Done: give the lease back, then exit.
                None if self.lease.is_some() => {
                    self.stopping = true;
                    State::ExpectRevoke
                }
                None => State::Finished,
                Some(found) => {
                    self.claimed = Some(found);
                    if self.lease.is_some() {
                        State::ExpectLock
                    } else {
                        State::ExpectLease
                    }
                }
            },
            State::ExpectLease => {
                self.lease = Some(etcdctl::parse_lease_grant(stdout).map_err(|e| e.0)?);
                // The server set the expiry after it received the call: counting from the
                // send errs on the safe side.
                self.last_keep_alive_ms = self.renewal_sent_ms;
                State::ExpectLock
            }
            State::ExpectLock => {
                let reply = etcdctl::parse_txn_json(stdout).map_err(|e| e.0)?;
                let claiming = self.claimed.is_none() && self.completed.is_none();
                let holder = reply.ranges.first().and_then(|kvs| kvs.first());
                // Held with our own lease although the compare failed: an earlier attempt
                // whose reply was lost took it (a retried call finds its own write).
                let ours_already = holder.is_some_and(|kv| {
                    kv.value == self.owner && same_lease(&kv.lease, self.lease.as_deref())
                });
                if reply.succeeded || ours_already {
                    self.holding = true;
                    self.backoff_ms = self.timing.min_backoff_ms;
                    if let (true, Some(next)) = (claiming, self.next.take()) {
                        self.claimed = Some(next);
                        if reply.succeeded {
                            self.claim_revision = Some(reply.revision);
                            self.grant_revision = Some(reply.revision);
                            State::DispatchHook
                        } else {
                            // Whether that attempt also claimed the op is what
                            // VerifyClaim finds out.
                            State::VerifyClaim
                        }
                    } else if self.completed.is_some() {
                        State::ExpectPostProcess {
                            release_after: true,
                        }
                    } else if self.claimed.is_some() {
                        // A recovered in-progress op: ours again under the new lock, unless
                        // a late hook of the previous worker finished it meanwhile.
                        self.claim_revision = Some(reply.revision);
                        self.grant_revision = None;
                        State::VerifyRecovered
                    } else {
                        State::ExpectPendingHead
                    }
                } else if holder.is_none() && claiming {
                    // The lock was free, so the pending head is what changed: look again.
                    self.next = None;
                    State::CheckPending
                } else {
                    if std::mem::take(&mut self.woken_by_release) {
                        self.pending_sleep = Some(self.timing.rewatch_delay_ms);
                    }
                    State::Contended {
                        from_revision: reply.revision + 1,
                    }
                }
            }
            State::ExpectPendingHead => match first(stdout)? {
                Some(found) => {
                    self.claimed = Some(found);
                    State::ExpectClaim
                }
                None => State::ExpectRevoke,
            },
            State::ExpectClaim => {
                let reply = etcdctl::parse_txn_json(stdout).map_err(|e| e.0)?;
                if reply.succeeded {
                    self.claim_revision = Some(reply.revision);
                    self.grant_revision = Some(reply.revision);
                    State::DispatchHook
                } else {
                    State::VerifyClaim
                }
            }
            State::VerifyClaim => match first(stdout)? {
                Some(found)
                    if self.claimed.as_ref().map(|(_, op)| op.op_id()) == Some(found.1.op_id()) =>
                {
                    self.claimed = Some(found);
                    self.claim_revision = None;
                    self.grant_revision = None;
                    State::DispatchHook
                }
                _ => {
                    return Err(
                        "claiming the pending operation failed: the lock is no longer ours".into(),
                    );
                }
            },
            State::VerifyRecovered => match first(stdout)? {
                Some(found)
                    if self.claimed.as_ref().map(|(_, op)| op.op_id()) == Some(found.1.op_id()) =>
                {
                    self.claimed = Some(found);
                    State::DispatchHook
                }
                // Done already: on to the next pending op, under the lock just taken.
                _ => {
                    self.claimed = None;
                    self.claim_revision = None;
                    self.grant_revision = None;
                    State::ExpectPendingHead
                }
            },
            State::ExpectCompleted => match first(stdout)? {
                // Not the claimed op's: a late hook of an earlier worker finished that one
                // (this worker recovered it meanwhile, and found it gone). Taking it for
                // this claim's result would claim anew while the claimed op still runs:
                // it is post-processed once this claim is done.
                Some(found)
                    if self
                        .claimed
                        .as_ref()
                        .is_some_and(|(_, op)| op.op_id() != found.1.op_id()) =>
                {
                    self.leftover_completed = true;
                    State::ExpectInProgress
                }
                Some(found) => {
                    self.hook_pending = false;
                    let release_after = found.1.result != Some(OperationResult::RetryHold);
                    self.completed = Some(found);
                    self.claimed = None;
                    State::ExpectPostProcess { release_after }
                }
                None => State::ExpectInProgress,
            },
            State::ExpectInProgress => match first(stdout)? {
                Some(_) => State::AwaitingHook,
                // The hook finalized and released the lock (or handed it over) in one
                // transaction: look for more work, keeping the lease (nothing is attached to
                // it any more) for the next attempt — two etcdctl calls fewer before this
                // unit registers again; it is revoked when there is nothing left.
                None => {
                    self.hook_pending = false;
                    self.claimed = None;
                    self.claim_revision = None;
                    self.grant_revision = None;
                    self.after_release()
                }
            },
            State::ExpectPostProcess { release_after } => {
                if !etcdctl::parse_txn(stdout).map_err(|e| e.0)? {
                    return Err("post-processing the completed operation failed: the lock is no longer ours".into());
                }
                self.completed = None;
                if release_after {
                    State::ExpectRevoke
                } else {
                    State::ExpectPendingHead
                }
            }
            State::ExpectRevoke => {
                self.lease = None;
                if self.holding {
                    State::ExpectReleaseTxn
                } else {
                    // The hook released the lock already (or it was never taken).
                    self.after_release()
                }
            }
            State::ExpectReleaseTxn => self.after_release(),
            State::ExpectKeepAlive { resume } => {
                self.last_keep_alive_ms = self.renewal_sent_ms;
                *resume
            }
            other => other,
        })
    }

    fn after_release(&mut self) -> State {
        self.holding = false;
        self.yield_before_lock = true;
        if self.stopping {
            State::Finished
        } else if std::mem::take(&mut self.leftover_completed) {
            State::RecoverCompleted
        } else {
            State::CheckPending
        }
    }
}

/// `a` names the lease `b` (when there is one).
fn same_lease(a: &str, b: Option<&str>) -> bool {
    b.is_some_and(|b| etcdctl::same_lease(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::fake::FakeEtcd;
    use crate::etcd::keys::owner;
    use crate::etcd::queue::finalize;
    use crate::etcd::turn::WorkerClaim;
    use crate::timestamp::Timestamp;

    /// One unit: its worker, the results its callback returns in turn, and its runs.
    struct Unit {
        owner: String,
        keys: Keys,
        worker: Option<Worker>,
        wake_at: u64,
        results: Vec<OperationResult>,
        /// When dispatched lock-granted hooks are due (they run one at a time).
        hooks: Vec<u64>,
        /// The claim file: what the worker wrote before dispatching (times in virtual
        /// microseconds); removed when it withdraws the claim or exits, left by a crash.
        claim: Option<WorkerClaim>,
        /// The grant file: the last grant a hook of this unit ran.
        last_grant: u64,
        /// A callback under way: when it ends, the op it runs, whether the claim the hook
        /// read names it (its worker waits), and the registrations read when it started.
        running: Option<(u64, String, Operation, bool, Vec<etcdctl::Kv>)>,
        runs: Vec<(u64, u64)>,
        exit: Option<Result<(), String>>,
        /// A watch under way: key, from revision, deadline.
        watching: Option<(String, u64, u64)>,
        /// etcdctl invocations (calls and watches) made by the worker.
        invocations: u32,
        /// Hooks that handed the lock straight to a waiter.
        handed_over: u32,
        /// Hooks that ran their op on the claim's word, without reading etcd.
        on_claim: u32,
    }

    const CALLBACK_MS: u64 = 2_000;
    const HOOK_DELAY_MS: u64 = 300;
    const ETCDCTL_MS: u64 = 20;

    /// How long things take: fixed, or drawn from a seeded generator.
    struct Pace {
        state: Option<u64>,
    }

    impl Pace {
        fn fixed() -> Self {
            Pace { state: None }
        }

        fn seeded(seed: u64) -> Self {
            Pace {
                state: Some(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            }
        }

        /// A draw in `low..=high`, or `fixed` when not seeded.
        fn pick(&mut self, fixed: u64, low: u64, high: u64) -> u64 {
            let Some(state) = self.state.as_mut() else {
                return fixed;
            };
            // xorshift64*
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            let draw = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            low + draw % (high - low + 1)
        }

        fn etcdctl_ms(&mut self) -> u64 {
            self.pick(ETCDCTL_MS, 2, 60)
        }

        /// Mostly quick; now and then the unit's hook queue is backed up for minutes.
        fn hook_delay_ms(&mut self) -> u64 {
            if self.pick(1, 0, 19) == 0 {
                self.pick(HOOK_DELAY_MS, 30_000, 150_000)
            } else {
                self.pick(HOOK_DELAY_MS, 10, 1_500)
            }
        }

        fn callback_ms(&mut self) -> u64 {
            self.pick(CALLBACK_MS, 1, 3_000)
        }
    }

    fn unit(etcd: &mut FakeEtcd, name: &str, ops: usize, results: Vec<OperationResult>) -> Unit {
        let owner = owner("model", name);
        let keys = Keys::new("c1", &owner);
        for i in 0..ops {
            let op = Operation::new(
                "restart",
                Default::default(),
                Some(5),
                Timestamp::from_micros(1_777_636_800_000_000 + i as i64),
            );
            etcd.put(&format!("{}{}", keys.pending, op.op_id()), &op.to_json());
        }
        let worker = Worker::new(keys.clone(), owner.clone(), Timing::default(), etcd.now_ms);
        Unit {
            owner,
            keys,
            worker: Some(worker),
            wake_at: 0,
            results,
            hooks: vec![],
            claim: None,
            last_grant: 0,
            running: None,
            runs: vec![],
            exit: None,
            watching: None,
            invocations: 0,
            handed_over: 0,
            on_claim: 0,
        }
    }

    /// The lock-granted hook's start, as the driver and the manager run it: take the
    /// worker's claim at its word when [`WorkerClaim::taken_at_its_word`] allows (checking
    /// here, as a checker only, that etcd agrees), else read the lock and the op; record
    /// the grant; keep the lock's lease alive while the callback runs, renewing it first
    /// unless the claim vouches for it (then checking that it does live); read the
    /// waiters' registrations; then the callback starts.
    fn start_hook(etcd: &mut FakeEtcd, unit: &mut Unit, pace: &mut Pace) {
        let now_micros = etcd.now_ms as i64 * 1000;
        let claim = unit.claim.clone();
        let lock = etcd.kv.get(&unit.keys.lock).cloned();
        let taken = claim
            .as_ref()
            .and_then(|c| c.taken_at_its_word(unit.last_grant, now_micros));
        let (key, op, lease, grant) = match taken {
            Some((key, op)) => {
                let claim = claim.as_ref().expect("taken");
                let lease = claim.lease.clone();
                assert_eq!(
                    lock.as_ref()
                        .map(|(holder, l)| (holder.as_str(), l.map(|l| format!("{l:x}")))),
                    Some((unit.owner.as_str(), Some(lease.clone()))),
                    "{} took a claim at its word whose lock is gone",
                    unit.owner
                );
                assert_eq!(
                    etcd.mod_revision(&key),
                    Some(claim.revision),
                    "{} took a claim at its word whose grant is gone",
                    unit.owner
                );
                unit.on_claim += 1;
                (key, op, lease, claim.revision)
            }
            None => {
                let Some((key, value)) = etcd.first(&unit.keys.inprogress) else {
                    return;
                };
                let Some((holder, Some(lease))) = lock else {
                    return;
                };
                if holder != unit.owner {
                    return;
                }
                let grant = etcd.mod_revision(&key).expect("read");
                (
                    key,
                    Operation::from_json(&value).unwrap(),
                    format!("{lease:x}"),
                    grant,
                )
            }
        };
        let claimed = claim.as_ref().is_some_and(|c| c.op_id == op.op_id());
        let vouched = claimed
            && claim
                .as_ref()
                .is_some_and(|c| c.vouches_for(&lease, now_micros));
        let renewed = etcd.run(&Call::KeepAlive(lease.clone())).code == 0;
        if vouched {
            assert!(renewed, "{} was vouched a lease that lapsed", unit.owner);
        } else if !renewed {
            return;
        }
        unit.last_grant = unit.last_grant.max(grant);
        let read = etcd.range_json(&unit.keys.waiting);
        let (_, registrations) = etcdctl::parse_get_json(&read.stdout).unwrap();
        let end = etcd.now_ms + pace.callback_ms();
        unit.runs.push((etcd.now_ms, end));
        unit.running = Some((end, key, op, claimed, registrations));
    }

    /// The callback ended: finalize as [`crate::etcd::turn`] and the manager decide.
    fn end_hook(etcd: &mut FakeEtcd, unit: &mut Unit) {
        let Some((_, key, op, worker_waits, registrations)) = unit.running.take() else {
            return;
        };
        let result = if unit.results.is_empty() {
            OperationResult::Release
        } else {
            unit.results.remove(0)
        };
        let done = finalize(&op, result);
        // As the manager does: with nobody registered when the callback started, read the
        // registrations again; hand the lock to the oldest registered waiter the hook read,
        // else (or if that fails) release.
        let registrations =
            if registrations.is_empty() && worker_waits && crate::etcd::turn::releases(&done) {
                let read = etcd.range_json(&unit.keys.waiting);
                etcdctl::parse_get_json(&read.stdout).unwrap().1
            } else {
                registrations
            };
        if worker_waits
            && crate::etcd::turn::releases(&done)
            && let Some(to) =
                crate::etcd::handoff::successor(&unit.keys, &unit.owner, &registrations)
        {
            let body = crate::etcd::turn::hand_over_body(&unit.keys, &unit.owner, &key, &done, &to);
            if etcd.run(&Call::Txn(body)).stdout.starts_with("SUCCESS") {
                unit.handed_over += 1;
                return;
            }
        }
        let body =
            crate::etcd::turn::finalize_body(&unit.keys, &unit.owner, &key, &done, worker_waits);
        let _ = etcd.run(&Call::Txn(body));
    }

    /// Run every unit until all workers exit and no hook is left (or `limit_ms` passes).
    fn run(etcd: &mut FakeEtcd, units: &mut [Unit], limit_ms: u64) {
        run_paced(etcd, units, limit_ms, &mut Pace::fixed());
    }

    fn run_paced(etcd: &mut FakeEtcd, units: &mut [Unit], limit_ms: u64, pace: &mut Pace) {
        while etcd.now_ms < limit_ms {
            // A watcher wakes at its first event (after etcdctl's latency) or its deadline.
            for unit in units.iter_mut() {
                if let Some((key, from, _)) = &unit.watching
                    && etcd.watch_event(key, *from).is_some()
                {
                    let latency = pace.etcdctl_ms();
                    unit.wake_at = unit.wake_at.min(etcd.now_ms + latency);
                }
            }
            let due = |u: &Unit| {
                let end = u.running.as_ref().map_or(u64::MAX, |r| r.0);
                // A unit's hooks run one at a time (Juju's hook lock).
                let hook = match (u.hooks.iter().min().copied(), &u.running) {
                    (Some(at), Some(running)) => at.max(running.0),
                    (Some(at), None) => at,
                    (None, _) => u64::MAX,
                };
                let worker = if u.worker.is_some() {
                    u.wake_at
                } else {
                    u64::MAX
                };
                hook.min(end).min(worker)
            };
            let Some(index) = (0..units.len())
                .filter(|i| due(&units[*i]) < u64::MAX)
                .min_by_key(|i| due(&units[*i]))
            else {
                // Nothing to do before the limit (the caller may restart workers then).
                if limit_ms != u64::MAX && limit_ms > etcd.now_ms {
                    etcd.advance(limit_ms - etcd.now_ms);
                }
                return;
            };
            let unit = &mut units[index];
            let next = due(unit);
            if next > limit_ms {
                etcd.advance(limit_ms.saturating_sub(etcd.now_ms));
                return;
            }
            if next > etcd.now_ms {
                etcd.advance(next - etcd.now_ms);
            }
            if unit.running.as_ref().is_some_and(|r| r.0 <= etcd.now_ms) {
                end_hook(etcd, unit);
                continue;
            }
            if unit.running.is_none() && unit.hooks.iter().any(|at| *at <= etcd.now_ms) {
                let first = unit.hooks.iter().min().copied();
                unit.hooks.retain(|at| Some(*at) != first);
                start_hook(etcd, unit, pace);
                continue;
            }
            let Some(worker) = unit.worker.as_mut() else {
                continue;
            };
            if let Some((key, from, _)) = unit.watching.take() {
                worker.handle(etcd.run(&Call::Watch {
                    key,
                    from_revision: from,
                }));
                unit.wake_at = etcd.now_ms;
                continue;
            }
            match worker.poll(etcd.now_ms) {
                Step::Etcdctl(call) => {
                    unit.invocations += 1;
                    let output = etcd.run(&call);
                    worker.handle(output);
                    unit.wake_at = etcd.now_ms + pace.etcdctl_ms();
                }
                Step::Watch(Call::Watch { key, from_revision }, timeout_ms) => {
                    unit.invocations += 1;
                    let deadline = etcd.now_ms + u64::from(timeout_ms);
                    unit.watching = Some((key, from_revision, deadline));
                    unit.wake_at = deadline;
                }
                Step::Watch(other, _) => panic!("watching with {other:?}"),
                Step::Sleep(ms) => unit.wake_at = etcd.now_ms + ms,
                Step::Dispatch(hook) => {
                    if hook == LOCK_GRANTED_HOOK {
                        // What the driver writes to the claim file.
                        if let Some(c) = worker.claim() {
                            unit.claim = Some(WorkerClaim {
                                op_id: c.op.op_id(),
                                lease: c.lease,
                                lease_certain_until_micros: (etcd.now_ms + c.certain_ms) as i64
                                    * 1000,
                                revision: c.revision,
                                op: Some((c.key, c.op)),
                            });
                        }
                        unit.hooks.push(etcd.now_ms + pace.hook_delay_ms());
                    }
                    unit.wake_at = etcd.now_ms;
                }
                Step::Exit(result) => {
                    unit.exit = Some(result);
                    unit.worker = None;
                    unit.claim = None;
                }
            }
        }
    }

    fn assert_exclusive(units: &[Unit]) {
        let mut all: Vec<(u64, u64, &str)> = units
            .iter()
            .flat_map(|u| u.runs.iter().map(move |(a, b)| (*a, *b, u.owner.as_str())))
            .collect();
        all.sort();
        for pair in all.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "overlap: {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    /// Seeds for the searches: `ROLLINGOPS_SEEDS` (default 200).
    fn seeds() -> u64 {
        std::env::var("ROLLINGOPS_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200)
    }

    /// Seeded interleavings of contending workers on one lock: random latencies, hook
    /// delays and callback lengths, random callback results (release / retry-release /
    /// retry-hold, within `max_retry`), workers that crash (their lease lapses; a dispatched
    /// hook still runs, as Juju runs it) and come back later, as update-status restarts
    /// them. At every instant at most one callback runs (checked over the recorded runs,
    /// and at every hook that takes its worker's claim at its word), and every op completes:
    /// every queue is empty at the end, each op having run at least once.
    #[test]
    fn seeded_interleavings_keep_one_holder_and_finish_every_op() {
        use OperationResult::*;
        let (mut hand_overs, mut crashes, mut stops, mut runs, mut on_claim, mut spurious) =
            (0, 0, 0, 0, 0, 0);
        // To replay one failing seed: ROLLINGOPS_FIRST_SEED=n ROLLINGOPS_SEEDS=n+1.
        let first: u64 = std::env::var("ROLLINGOPS_FIRST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        for seed in first..seeds() {
            if std::env::var("TRACE_SEEDS").is_ok() {
                eprintln!("seed {seed}");
            }
            let mut pace = Pace::seeded(seed);
            let mut etcd = FakeEtcd::default();
            let count = pace.pick(0, 2, 6) as usize;
            let mut ops = Vec::new();
            let mut units: Vec<Unit> = (0..count)
                .map(|i| {
                    let n = pace.pick(0, 1, 3) as usize;
                    ops.push(n);
                    let results = (0..pace.pick(0, 0, 3))
                        .map(|_| [Release, RetryRelease, RetryHold][pace.pick(0, 0, 2) as usize])
                        .collect();
                    unit(&mut etcd, &format!("app/{i}"), n, results)
                })
                .collect();
            let mut restart_at: Vec<Option<u64>> = vec![None; count];
            let limit = 3_600_000;
            while etcd.now_ms < limit {
                let slice = etcd.now_ms + pace.pick(0, 500, 20_000);
                run_paced(&mut etcd, &mut units, slice, &mut pace);
                assert_exclusive(&units);
                for (i, unit) in units.iter_mut().enumerate() {
                    if pace.pick(0, 0, 3) == 0 {
                        // A lock-granted hook nobody asked for just now: dispatched twice,
                        // re-run after an agent restart, or by hand.
                        let at = etcd.now_ms + pace.pick(0, 0, 20_000);
                        unit.hooks.push(at);
                        spurious += 1;
                    }
                    if unit.worker.is_some() && pace.pick(0, 0, 9) == 0 {
                        // The worker dies: no clean-up, its lease lapses.
                        unit.worker = None;
                        unit.watching = None;
                        restart_at[i] = Some(etcd.now_ms + pace.pick(0, 5_000, 90_000));
                        crashes += 1;
                    } else if let Some(worker) = unit.worker.as_mut()
                        && pace.pick(0, 0, 19) == 0
                    {
                        // Asked to stop (the unit fell back to the peer relation): it
                        // releases and exits; a worker comes back later (etcd is back).
                        worker.stop();
                        unit.watching = None;
                        unit.wake_at = etcd.now_ms;
                        restart_at[i] = Some(etcd.now_ms + pace.pick(0, 5_000, 90_000));
                        stops += 1;
                    } else if unit.worker.is_none()
                        && restart_at[i].is_some_and(|at| at <= etcd.now_ms)
                    {
                        restart_at[i] = None;
                        unit.worker = Some(Worker::new(
                            unit.keys.clone(),
                            unit.owner.clone(),
                            Timing::default(),
                            etcd.now_ms,
                        ));
                        unit.wake_at = etcd.now_ms;
                    }
                }
                let idle = units
                    .iter()
                    .all(|u| u.worker.is_none() && u.hooks.is_empty() && u.running.is_none());
                let queued = units.iter().any(|u| {
                    [&u.keys.pending, &u.keys.inprogress, &u.keys.completed]
                        .iter()
                        .any(|prefix| etcd.first(prefix).is_some())
                });
                if idle && !queued {
                    break;
                }
                if idle && restart_at.iter().all(Option::is_none) {
                    // update-status: a unit with work and no worker gets one (as the
                    // manager's etcd turn decides from the hook's read).
                    for (i, unit) in units.iter().enumerate() {
                        let has_work = [
                            &unit.keys.pending,
                            &unit.keys.inprogress,
                            &unit.keys.completed,
                        ]
                        .iter()
                        .any(|prefix| etcd.first(prefix).is_some());
                        if has_work {
                            restart_at[i] = Some(etcd.now_ms + 300_000);
                        }
                    }
                }
            }
            for (unit, n) in units.iter().zip(&ops) {
                for prefix in [
                    &unit.keys.pending,
                    &unit.keys.inprogress,
                    &unit.keys.completed,
                ] {
                    assert_eq!(
                        etcd.first(prefix),
                        None,
                        "seed {seed}: {prefix} left behind"
                    );
                }
                assert!(
                    unit.runs.len() >= *n,
                    "seed {seed}: {} ran {:?}",
                    unit.owner,
                    unit.runs
                );
                hand_overs += unit.handed_over;
                on_claim += unit.on_claim;
                runs += unit.runs.len();
            }
        }
        assert!(
            hand_overs > 0 && crashes > 0 && stops > 0 && on_claim > 0,
            "the search never handed over, crashed, or took a claim at its word"
        );
        println!(
            "{} seeds: {runs} callbacks ({on_claim} on the claim's word), {hand_overs} hand-overs, {crashes} worker crashes, {stops} stops, {spurious} extra lock-granted hooks, never two at once",
            seeds()
        );
    }

    #[test]
    fn one_unit_runs_its_ops_then_exits_and_frees_the_lock() {
        let mut etcd = FakeEtcd::default();
        let mut units = [unit(&mut etcd, "app/0", 2, vec![])];
        run(&mut etcd, &mut units, 600_000);
        assert_eq!(units[0].exit, Some(Ok(())));
        assert_eq!(units[0].runs.len(), 2);
        assert_eq!(etcd.get(&units[0].keys.lock), None);
        assert!(etcd.kv.is_empty(), "queues drained: {:?}", etcd.kv);
    }

    #[test]
    fn contending_units_take_turns_without_long_polls() {
        let mut etcd = FakeEtcd::default();
        let mut units: Vec<Unit> = (0..5)
            .map(|i| unit(&mut etcd, &format!("app/{i}"), 1, vec![]))
            .collect();
        run(&mut etcd, &mut units, 600_000);
        assert_exclusive(&units);
        assert!(
            units
                .iter()
                .all(|u| u.exit == Some(Ok(())) && u.runs.len() == 1)
        );
        let mut runs: Vec<(u64, u64)> = units.iter().flat_map(|u| u.runs.clone()).collect();
        runs.sort();
        // Every hook but the last handed the lock straight to the longest waiter.
        let handed: u32 = units.iter().map(|u| u.handed_over).sum();
        assert_eq!(handed, 4, "hand-overs");
        for pair in runs.windows(2) {
            let gap = pair[1].0 - pair[0].1;
            // The hook's finalize hands the lock over, the waiter's watch fires, the
            // dispatch and the hook's start: no transaction of the waiter's, no backoff or
            // poll interval in between.
            let expected = ETCDCTL_MS + HOOK_DELAY_MS;
            assert!(
                gap <= expected,
                "hand-off took {gap} ms, expected {expected}"
            );
        }
        // The last unit waited behind four callbacks of 2 s; polling every 250 ms would
        // take ~40 calls. Watching costs a few per hand-off it sees.
        for unit in &units {
            assert!(
                unit.invocations <= 30,
                "{} made {} etcdctl invocations",
                unit.owner,
                unit.invocations
            );
        }
    }

    #[test]
    fn a_release_before_the_watch_starts_is_not_missed() {
        let mut etcd = FakeEtcd::default();
        let mut u = unit(&mut etcd, "app/0", 1, vec![]);
        etcd.put(&u.keys.lock, "someone-else");
        let worker = u.worker.as_mut().unwrap();
        let watch = loop {
            match worker.poll(etcd.now_ms) {
                Step::Etcdctl(call) => worker.handle(etcd.run(&call)),
                Step::Watch(call, _) => break call,
                other => panic!("unexpected {other:?}"),
            }
        };
        let seen_held_at = etcd.revision;
        assert_eq!(
            watch,
            Call::Watch {
                key: u.keys.lock.clone(),
                from_revision: seen_held_at + 1
            }
        );
        // Released (and another key written) before the watch starts.
        etcd.delete(&u.keys.lock);
        etcd.put("/unrelated", "x");
        let seen = etcd.run(&watch);
        let events = etcdctl::parse_watch_events(&seen.stdout);
        assert!(!seen.timed_out && events[0].deleted, "{seen:?}");
        worker.handle(seen);
        let Step::Etcdctl(acquire @ Call::TxnJson(_)) = worker.poll(etcd.now_ms) else {
            panic!("no attempt after the release");
        };
        worker.handle(etcd.run(&acquire));
        assert_eq!(worker.poll(etcd.now_ms), Step::Dispatch(LOCK_GRANTED_HOOK));
        assert_eq!(etcd.get(&u.keys.lock), Some(u.owner.as_str()));
        assert!(
            etcd.first(&u.keys.inprogress).is_some(),
            "claimed with the lock"
        );
    }

    #[test]
    fn a_watch_that_ends_without_an_event_backs_off_instead_of_spinning() {
        let mut etcd = FakeEtcd::default();
        let mut u = unit(&mut etcd, "app/0", 1, vec![]);
        etcd.put(&u.keys.lock, "someone-else");
        let worker = u.worker.as_mut().unwrap();
        loop {
            match worker.poll(etcd.now_ms) {
                Step::Etcdctl(call) => worker.handle(etcd.run(&call)),
                Step::Watch(..) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        worker.handle(Output {
            code: 1,
            stdout: String::new(),
            stderr: "Error: context deadline exceeded".into(),
            timed_out: false,
        });
        assert!(matches!(worker.poll(etcd.now_ms), Step::Sleep(ms) if ms > 0));
    }

    #[test]
    fn retry_hold_keeps_the_lock_and_retry_release_lets_others_in() {
        let mut etcd = FakeEtcd::default();
        use OperationResult::*;
        let mut units = vec![
            unit(&mut etcd, "app/0", 1, vec![RetryHold, RetryHold, Release]),
            unit(&mut etcd, "app/1", 1, vec![]),
        ];
        run(&mut etcd, &mut units, 600_000);
        assert_exclusive(&units);
        let first_other = units[1].runs[0].0;
        assert_eq!(units[0].runs.len(), 3);
        assert!(
            units[0].runs.iter().all(|r| r.1 <= first_other),
            "a held lock let another unit in"
        );
        assert!(units[0].worker.is_none() && units[1].worker.is_none());
    }

    #[test]
    fn a_dead_holders_lease_lapses_and_the_next_unit_proceeds() {
        let mut etcd = FakeEtcd::default();
        let mut units = [
            unit(&mut etcd, "app/0", 1, vec![]),
            unit(&mut etcd, "app/1", 1, vec![]),
        ];
        // app/0 takes the lock, then its worker dies before the hook runs.
        while etcd.get(&units[0].keys.lock).is_none() {
            let until = etcd.now_ms + 10;
            run(&mut etcd, &mut units[..1], until);
        }
        units[0].worker = None;
        units[0].hooks.clear();
        let died_at = etcd.now_ms;
        run(&mut etcd, &mut units[1..], 600_000);
        assert_eq!(units[1].runs.len(), 1);
        assert!(
            units[1].runs[0].0 >= died_at + 60_000 - 1_000,
            "the lock outlived its lease"
        );
        assert!(
            units[1].runs[0].0 <= died_at + 62_000,
            "the next unit waited too long"
        );
    }

    #[test]
    fn an_interrupted_claim_is_recovered_by_the_next_worker() {
        let mut etcd = FakeEtcd::default();
        let mut units = vec![unit(&mut etcd, "app/0", 1, vec![])];
        while etcd.first(&units[0].keys.inprogress).is_none() {
            let until = etcd.now_ms + 10;
            run(&mut etcd, &mut units, until);
        }
        // The worker and its hook die; the lease lapses.
        units[0].worker = None;
        units[0].hooks.clear();
        etcd.advance(61_000);
        let keys = units[0].keys.clone();
        units[0].worker = Some(Worker::new(
            keys,
            units[0].owner.clone(),
            Timing::default(),
            etcd.now_ms,
        ));
        run(&mut etcd, &mut units, 600_000);
        assert_eq!(units[0].runs.len(), 1);
        assert_eq!(units[0].exit, Some(Ok(())));
        assert!(etcd.kv.is_empty());
    }

    #[test]
    fn etcd_down_exhausts_retries_then_asks_for_the_failed_hook() {
        let mut etcd = FakeEtcd::default();
        let mut u = unit(&mut etcd, "app/0", 1, vec![]);
        etcd.unavailable = true;
        let worker = u.worker.as_mut().unwrap();
        let mut steps = Vec::new();
        for _ in 0..100 {
            let step = worker.poll(etcd.now_ms);
            match &step {
                Step::Etcdctl(call) | Step::Watch(call, _) => worker.handle(etcd.run(call)),
                Step::Sleep(ms) => etcd.advance(*ms),
                Step::Dispatch(_) => {}
                Step::Exit(_) => {
                    steps.push(step);
                    break;
                }
            }
            steps.push(step);
        }
        assert!(steps.contains(&Step::Dispatch(ETCD_FAILED_HOOK)));
        assert!(matches!(steps.last(), Some(Step::Exit(Err(why))) if why.contains("deadline")));
        let attempts = steps
            .iter()
            .filter(|s| matches!(s, Step::Etcdctl(_)))
            .count();
        assert_eq!(attempts as u32, Timing::default().retry_budget + 1);
    }

    #[test]
    fn slow_failures_give_up_by_time_not_only_by_count() {
        // A dead server: every call hangs until the host kills it (6 s here).
        let mut etcd = FakeEtcd::default();
        let mut u = unit(&mut etcd, "app/0", 1, vec![]);
        etcd.unavailable = true;
        let worker = u.worker.as_mut().unwrap();
        let (start, mut attempts, mut failed_at) = (etcd.now_ms, 0, None);
        for _ in 0..100 {
            match worker.poll(etcd.now_ms) {
                Step::Etcdctl(call) | Step::Watch(call, _) => {
                    attempts += 1;
                    etcd.advance(6_000);
                    worker.handle(etcd.run(&call));
                }
                Step::Sleep(ms) => etcd.advance(ms),
                Step::Dispatch(hook) => {
                    assert_eq!(hook, ETCD_FAILED_HOOK);
                    failed_at.get_or_insert(etcd.now_ms);
                }
                Step::Exit(_) => break,
            }
        }
        let took = failed_at.expect("gave up") - start;
        assert!(
            attempts < Timing::default().retry_budget + 1,
            "{attempts} attempts"
        );
        // The 20 s window, plus the call in flight when it ran out (12 × 6 s by count).
        assert!(took <= 35_000, "gave up after {took} ms");
    }

    #[test]
    fn fatal_errors_do_not_retry() {
        let mut worker = Worker::new(Keys::new("c", "o"), "o".into(), Timing::default(), 0);
        assert!(matches!(worker.poll(0), Step::Etcdctl(_)));
        worker.handle(Output {
            code: 1,
            stdout: String::new(),
            stderr: "Error: x509: certificate signed by unknown authority".into(),
            timed_out: false,
        });
        assert_eq!(worker.poll(0), Step::Dispatch(ETCD_FAILED_HOOK));
        assert!(matches!(worker.poll(0), Step::Exit(Err(why)) if why.contains("x509")));
    }

    #[test]
    fn an_ambiguous_claim_that_did_apply_is_recognised() {
        let mut etcd = FakeEtcd::default();
        let mut u = unit(&mut etcd, "app/0", 1, vec![]);
        let worker = u.worker.as_mut().unwrap();
        let mut applied_once = false;
        for _ in 0..50 {
            match worker.poll(etcd.now_ms) {
                Step::Etcdctl(call) => {
                    let output = etcd.run(&call);
                    let is_claim =
                        matches!(&call, Call::TxnJson(body) if body.contains("/inprogress/"));
                    if is_claim && !applied_once {
                        // Applied on the server, but the reply was lost.
                        applied_once = true;
                        worker.handle(Output {
                            code: 1,
                            stdout: String::new(),
                            stderr: "Error: connection reset by peer".into(),
                            timed_out: false,
                        });
                    } else {
                        worker.handle(output);
                    }
                }
                Step::Watch(call, _) => panic!("watched {call:?}: its own lock looked taken"),
                Step::Sleep(ms) => etcd.advance(ms),
                Step::Dispatch(hook) => {
                    assert_eq!(
                        hook, LOCK_GRANTED_HOOK,
                        "the retried claim must not fail the worker"
                    );
                    assert!(applied_once);
                    return;
                }
                Step::Exit(result) => panic!("exited: {result:?}"),
            }
        }
        panic!("never dispatched");
    }

    #[test]
    fn a_lost_reply_to_the_recovery_lock_is_recognised() {
        let mut etcd = FakeEtcd::default();
        let mut units = vec![unit(&mut etcd, "app/0", 1, vec![])];
        while etcd.first(&units[0].keys.inprogress).is_none() {
            let until = etcd.now_ms + 10;
            run(&mut etcd, &mut units, until);
        }
        // The worker dies after its claim; its lease lapses; a new worker recovers the op.
        units[0].worker = None;
        units[0].hooks.clear();
        etcd.advance(61_000);
        let u = &units[0];
        let mut worker = Worker::new(u.keys.clone(), u.owner.clone(), Timing::default(), 0);
        let mut lost_once = false;
        for _ in 0..20 {
            match worker.poll(etcd.now_ms) {
                Step::Etcdctl(call) => {
                    let output = etcd.run(&call);
                    if matches!(&call, Call::TxnJson(_)) && !lost_once {
                        lost_once = true;
                        worker.handle(Output {
                            code: 1,
                            stdout: String::new(),
                            stderr: "Error: connection reset by peer".into(),
                            timed_out: false,
                        });
                    } else {
                        worker.handle(output);
                    }
                }
                Step::Sleep(ms) => etcd.advance(ms),
                Step::Dispatch(hook) => {
                    assert_eq!(hook, LOCK_GRANTED_HOOK);
                    assert!(lost_once && worker.holding());
                    return;
                }
                other => panic!("{other:?}: its own lock looked taken"),
            }
        }
        panic!("never dispatched");
    }

    #[test]
    fn lease_ids_compare_as_numbers() {
        assert!(same_lease("694d9c9aeca3422a", Some("694d9c9aeca3422a")));
        assert!(same_lease("94d9c9aeca3422a", Some("094d9c9aeca3422a")));
        assert!(!same_lease("1", Some("2")));
        assert!(!same_lease("", None));
    }

    #[test]
    fn call_argv() {
        assert_eq!(
            Call::First("/p/".into()).argv().0,
            ["get", "/p/", "--prefix", "--limit=1"]
        );
        assert_eq!(
            Call::KeepAlive("ab".into()).argv().0,
            ["lease", "keep-alive", "--once", "ab"]
        );
        let (args, stdin) = Call::Txn("body".into()).argv();
        assert_eq!(
            (args, stdin.as_deref()),
            (vec!["txn".to_string()], Some("body"))
        );
    }
}
