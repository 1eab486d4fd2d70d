//! The etcd worker's protocol against a real etcd (Debian's `etcd-server`/`etcd-client`):
//! workers of several units, each driven by the core's state machine and running the real
//! `etcdctl` through the host library's sandbox (calls and watches), contend for one lock
//! key; the lock-granted hook's etcd steps are the manager's own ([`turn`]), in-process.

use std::time::{Duration, Instant};

use rollingops::sandbox::Sandbox;
use rollingops_guest::etcd::handoff;
use rollingops_guest::etcd::keys::{Keys, owner};
use rollingops_guest::etcd::queue::finalize;
use rollingops_guest::etcd::turn::{self, WorkerClaim};
use rollingops_guest::etcd::worker::{Call, LOCK_GRANTED_HOOK, Output, Step, Timing, Worker};
use rollingops_guest::{Operation, OperationResult, Timestamp};
use rollingops_tests::etcd_cluster::{Etcd, etcdctl};

const TIMEOUT: Duration = Duration::from_secs(15);

fn output(out: rollingops::ExecOutput) -> Output {
    Output {
        code: out.code,
        stdout: out.stdout,
        stderr: out.stderr,
        timed_out: out.timed_out,
    }
}

fn run_call(sandbox: &Sandbox, env: &[(String, String)], call: &Call) -> Output {
    let (args, stdin) = call.argv();
    output(
        sandbox
            .run_etcdctl(&args, env, stdin.as_deref(), TIMEOUT)
            .expect("etcdctl runs"),
    )
}

fn watch_call(sandbox: &Sandbox, env: &[(String, String)], call: &Call, timeout_ms: u32) -> Output {
    let (args, _) = call.argv();
    let timeout = Duration::from_millis(timeout_ms.into());
    output(
        sandbox
            .watch_etcdctl(&args, env, timeout)
            .expect("etcdctl runs"),
    )
}

/// The lock-granted hook's etcd part, as the manager does it: one read (is the lock ours,
/// what is claimed, who waits), the callback, and the finalize transaction — which, when
/// `claim` (the op id in the worker's claim file) names the op, hands the lock to the
/// oldest registered waiter, or releases it.
fn hook(
    sandbox: &Sandbox,
    env: &[(String, String)],
    keys: &Keys,
    owner: &str,
    claim: Option<&str>,
    log: &std::sync::Mutex<Vec<(String, Instant, Instant, bool)>>,
) {
    // Like the real hook, retry transient failures (a member may be down).
    let retrying = |call: &Call| {
        for _ in 0..5 {
            let out = run_call(sandbox, env, call);
            if out.code == 0 {
                return out;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("etcdctl {call:?} kept failing");
    };
    let facts = turn::parse(&retrying(&turn::read(keys)).stdout).expect("facts");
    let Some((key, op)) = facts.inprogress.clone() else {
        return;
    };
    assert_eq!(
        facts.lock_holder.as_deref(),
        Some(owner),
        "the hook ran without the lock"
    );
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(150));
    let end = Instant::now();
    let record = |handed: bool| {
        log.lock()
            .unwrap()
            .push((owner.to_string(), start, end, handed))
    };
    let done = finalize(&op, OperationResult::Release);
    let worker_waits = claim == Some(op.op_id().as_str());
    if let Some(to) = handoff::successor(keys, owner, &facts.waiters)
        .filter(|_| worker_waits && turn::releases(&done))
    {
        let handed = retrying(&Call::Txn(turn::hand_over_body(
            keys, owner, &key, &done, &to,
        )));
        if handed.stdout.lines().next() == Some("SUCCESS") {
            record(true);
            return;
        }
    }
    record(false);
    let body = turn::finalize_body(keys, owner, &key, &done, worker_waits);
    // A retried transaction may find its own earlier, ambiguous attempt applied.
    let outcome = retrying(&Call::Txn(body));
    if outcome.stdout.lines().next() != Some("SUCCESS") {
        let gone = retrying(&Call::First(keys.inprogress.clone()));
        assert!(
            gone.stdout.trim().is_empty(),
            "finalize failed: {outcome:?}"
        );
    }
}

/// Callback runs: owner, start, end, whether its hook handed the lock over.
type RunLog = std::sync::Arc<std::sync::Mutex<Vec<(String, Instant, Instant, bool)>>>;

/// A worker thread's exit and the hooks it dispatched.
type WorkerThread = std::thread::JoinHandle<(Result<(), String>, Vec<&'static str>)>;

/// `units` workers, each with `ops` queued ops, contending on one cluster until they exit.
/// Returns the worker threads; the callback runs go to `log`.
fn contend(
    sandbox: Sandbox,
    env: Vec<(String, String)>,
    units: usize,
    ops: usize,
    timing: Timing,
    log: RunLog,
) -> Vec<WorkerThread> {
    (0..units)
        .map(|i| {
            let env = env.clone();
            let log = log.clone();
            let timing = timing.clone();
            let sandbox = sandbox.clone();
            std::thread::spawn(move || {
                let owner = owner("model", &format!("app/{i}"));
                let keys = Keys::new("cluster-1", &owner);
                // Some ops carry kwargs the reference would have truncated (§11 item 3).
                for n in 0..ops {
                    let mut kwargs = serde_json::Map::new();
                    let note = if n % 2 == 0 {
                        "plain".to_string()
                    } else {
                        format!("op {n} with \"quotes\"")
                    };
                    kwargs.insert("note".into(), serde_json::Value::String(note));
                    let op = Operation::new(
                        "restart",
                        kwargs,
                        None,
                        Timestamp::from_micros(1_777_636_800_000_000 + n as i64),
                    );
                    let key = format!("{}{}", keys.pending, op.op_id());
                    assert_eq!(etcdctl(&env, &["put", &key], Some(&op.to_json())).code, 0);
                }
                let clock = Instant::now();
                let mut worker = Worker::new(keys.clone(), owner.clone(), timing, 0);
                let mut dispatched = Vec::new();
                loop {
                    match worker.poll(clock.elapsed().as_millis() as u64) {
                        Step::Etcdctl(call) => worker.handle(run_call(&sandbox, &env, &call)),
                        Step::Watch(call, ms) => {
                            worker.handle(watch_call(&sandbox, &env, &call, ms))
                        }
                        Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
                        Step::Dispatch(event) => {
                            dispatched.push(event);
                            if event == LOCK_GRANTED_HOOK {
                                let claim = worker.claimed_op_id();
                                hook(&sandbox, &env, &keys, &owner, claim.as_deref(), &log);
                            }
                        }
                        Step::Exit(result) => return (result, dispatched),
                    }
                }
            })
        })
        .collect()
}

fn assert_no_overlap(log: &RunLog) {
    let mut runs = log.lock().unwrap().clone();
    runs.sort_by_key(|r| r.1);
    for pair in runs.windows(2) {
        assert!(
            pair[1].1 >= pair[0].2,
            "{} started before {} finished",
            pair[1].0,
            pair[0].0
        );
    }
}

#[test]
fn workers_over_tls_take_turns_and_drain_their_queues() {
    let etcd = Etcd::start(23_790, 1);
    let log = RunLog::default();
    for worker in contend(
        etcd.sandbox(),
        etcd.env(),
        4,
        2,
        Timing::default(),
        log.clone(),
    ) {
        assert_eq!(worker.join().unwrap().0, Ok(()));
    }
    assert_eq!(log.lock().unwrap().len(), 8);
    assert_no_overlap(&log);
    // Waiting workers registered, and hooks handed the lock straight to them.
    let handed = log.lock().unwrap().iter().filter(|r| r.3).count();
    assert!(handed > 0, "no hook handed the lock over");
    let left = etcd.etcdctl(&["get", "/rollingops/", "--prefix", "--keys-only"], None);
    assert_eq!(left.stdout.trim(), "", "keys left behind");
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let etcd = Etcd::start(23_890, 1);
    let env: Vec<(String, String)> = etcd
        .env()
        .into_iter()
        .filter(|(k, _)| k != "ETCDCTL_CERT" && k != "ETCDCTL_KEY")
        .collect();
    let out = etcdctl(&env, &["get", "/x"], None);
    assert_ne!(out.code, 0);
    let failure = rollingops_guest::etcd::etcdctl::classify(out.code, &out.stderr, false);
    assert!(
        matches!(
            failure,
            Some(rollingops_guest::etcd::etcdctl::Failure::Fatal(_))
                | Some(rollingops_guest::etcd::etcdctl::Failure::Retryable(_))
        ),
        "{out:?}"
    );
}

#[test]
fn three_members_losing_one_keeps_the_lock_working() {
    let mut etcd = Etcd::start(24_790, 3);
    let log = RunLog::default();
    let workers = contend(
        etcd.sandbox(),
        etcd.env(),
        3,
        2,
        Timing::default(),
        log.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while log.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no progress before the failure");
        std::thread::sleep(Duration::from_millis(50));
    }
    etcd.kill(0);
    for worker in workers {
        assert_eq!(
            worker.join().unwrap().0,
            Ok(()),
            "a worker failed with one member down"
        );
    }
    assert_eq!(log.lock().unwrap().len(), 6);
    assert_no_overlap(&log);
}

#[test]
fn three_members_losing_quorum_asks_for_the_fallback() {
    let mut etcd = Etcd::start(25_790, 3);
    let env = etcd.env();
    let sandbox = etcd.sandbox();
    etcd.kill(1);
    etcd.kill(2);
    let timing = Timing {
        retry_budget: 2,
        ..Timing::default()
    };
    let log = RunLog::default();
    // Queue nothing through the dead cluster: the workers' first reads fail.
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let env = env.clone();
            let timing = timing.clone();
            let sandbox = sandbox.clone();
            std::thread::spawn(move || {
                let owner = owner("model", &format!("app/{i}"));
                let mut worker = Worker::new(Keys::new("cluster-1", &owner), owner, timing, 0);
                let clock = Instant::now();
                let mut dispatched = Vec::new();
                loop {
                    match worker.poll(clock.elapsed().as_millis() as u64) {
                        Step::Etcdctl(call) => worker.handle(run_call(&sandbox, &env, &call)),
                        Step::Watch(call, ms) => {
                            worker.handle(watch_call(&sandbox, &env, &call, ms))
                        }
                        Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
                        Step::Dispatch(event) => dispatched.push(event),
                        Step::Exit(result) => return (result, dispatched),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let (result, dispatched) = worker.join().unwrap();
        assert!(result.is_err(), "a worker kept going without quorum");
        assert_eq!(
            dispatched,
            [rollingops_guest::etcd::worker::ETCD_FAILED_HOOK]
        );
    }
    assert!(log.lock().unwrap().is_empty());
}

/// Another unit's lock, held with its own lease.
fn hold_lock(env: &[(String, String)], keys: &Keys, holder: &str) -> String {
    let grant = etcdctl(env, &["lease", "grant", "60"], None);
    let lease = rollingops_guest::etcd::etcdctl::parse_lease_grant(&grant.stdout).unwrap();
    let put = etcdctl(
        env,
        &["put", &keys.lock, holder, &format!("--lease={lease}")],
        None,
    );
    assert_eq!(put.code, 0, "{put:?}");
    lease
}

/// A worker with one pending op, driven until it asks to watch the lock (its attempt found
/// the lock held); returns the worker and that watch.
fn worker_until_watch(
    sandbox: &Sandbox,
    env: &[(String, String)],
    unit: &str,
) -> (Worker, Call, u32) {
    let owner = owner("model", unit);
    let keys = Keys::new("cluster-w", &owner);
    let op = Operation::new(
        "restart",
        Default::default(),
        None,
        Timestamp::from_micros(1),
    );
    let key = format!("{}{}", keys.pending, op.op_id());
    assert_eq!(etcdctl(env, &["put", &key], Some(&op.to_json())).code, 0);
    let mut worker = Worker::new(keys, owner, Timing::default(), 0);
    for _ in 0..20 {
        match worker.poll(0) {
            Step::Etcdctl(call) => worker.handle(run_call(sandbox, env, &call)),
            Step::Watch(call, ms) => return (worker, call, ms),
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("the worker never watched");
}

/// Drive a worker (no watch expected) until it dispatches the lock-granted hook.
fn until_dispatch(worker: &mut Worker, sandbox: &Sandbox, env: &[(String, String)]) -> usize {
    let mut calls = 0;
    for _ in 0..20 {
        match worker.poll(0) {
            Step::Etcdctl(call) => {
                calls += 1;
                worker.handle(run_call(sandbox, env, &call));
            }
            Step::Dispatch(event) => {
                assert_eq!(event, LOCK_GRANTED_HOOK);
                return calls;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("never dispatched");
}

#[test]
fn a_release_before_the_watch_starts_is_not_missed() {
    let etcd = Etcd::start(27_790, 1);
    let (env, sandbox) = (etcd.env(), etcd.sandbox());
    let keys = Keys::new("cluster-w", "someone-else");
    hold_lock(&env, &keys, "someone-else");
    let (mut worker, watch, timeout_ms) = worker_until_watch(&sandbox, &env, "app/1");
    assert!(matches!(&watch, Call::Watch { key, .. } if *key == keys.lock));
    // The holder releases between the failed attempt and the watch's start.
    assert_eq!(etcdctl(&env, &["del", &keys.lock], None).code, 0);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let seen = watch_call(&sandbox, &env, &watch, timeout_ms);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the watch waited for an event that had already happened"
    );
    assert!(!seen.timed_out);
    let events = rollingops_guest::etcd::etcdctl::parse_watch_events(&seen.stdout);
    assert!(events.first().is_some_and(|e| e.deleted), "{seen:?}");
    worker.handle(seen);
    // One transaction takes the lock and claims the op.
    assert_eq!(until_dispatch(&mut worker, &sandbox, &env), 1);
    assert!(worker.holding());
    let holder = etcdctl(&env, &["get", &keys.lock, "--print-value-only"], None);
    assert_eq!(holder.stdout.trim(), owner("model", "app/1"));
}

#[test]
fn a_waiting_worker_blocks_on_etcd_and_starts_at_the_release() {
    let etcd = Etcd::start(28_790, 1);
    let (env, sandbox) = (etcd.env(), etcd.sandbox());
    let keys = Keys::new("cluster-w", "someone-else");
    let lease = hold_lock(&env, &keys, "someone-else");
    let (mut worker, watch, timeout_ms) = worker_until_watch(&sandbox, &env, "app/2");
    let releaser = {
        let env = env.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1_500));
            let released = Instant::now();
            assert_eq!(etcdctl(&env, &["lease", "revoke", &lease], None).code, 0);
            released
        })
    };
    // Blocked in one watch the whole time, not polling.
    let started = Instant::now();
    let seen = watch_call(&sandbox, &env, &watch, timeout_ms);
    let woke = Instant::now();
    let released = releaser.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1_400),
        "returned before the release"
    );
    assert!(
        woke.saturating_duration_since(released) < Duration::from_millis(500),
        "woke {:?} after the release",
        woke.saturating_duration_since(released)
    );
    worker.handle(seen);
    assert_eq!(until_dispatch(&mut worker, &sandbox, &env), 1);
}

/// A unit's host for the component's `run-worker`: real time, and a lock-granted dispatch
/// that runs the hook's etcd part (as the manager does) in the background, like juju-exec.
struct WorkerHost {
    env: Vec<(String, String)>,
    sandbox: Sandbox,
    keys: Keys,
    owner: String,
    base_dir: std::path::PathBuf,
    dispatched: std::sync::Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
    hooks: Vec<std::thread::JoinHandle<()>>,
}

impl rollingops::Host for WorkerHost {
    fn unit_name(&mut self) -> String {
        "app/0".into()
    }
    fn model_uuid(&mut self) -> String {
        "model".into()
    }
    fn is_leader(&mut self) -> Result<bool, rollingops::WitError> {
        Ok(false)
    }
    fn relation_ids(&mut self, _: &str) -> Result<Vec<u32>, rollingops::WitError> {
        Ok(vec![])
    }
    fn relation_units(&mut self, _: u32) -> Result<Vec<String>, rollingops::WitError> {
        Ok(vec![])
    }
    fn relation_get(
        &mut self,
        _: u32,
        _: &rollingops::BagOwner,
    ) -> Result<Vec<(String, String)>, rollingops::WitError> {
        Ok(vec![])
    }
    fn relation_set(
        &mut self,
        _: u32,
        _: bool,
        _: &[(String, String)],
    ) -> Result<(), rollingops::WitError> {
        Ok(())
    }
    fn log(&mut self, _: rollingops::LogLevel, _: &str) {}
    fn dispatch(&mut self, event: &str) -> Result<(), rollingops::WitError> {
        self.dispatched
            .lock()
            .unwrap()
            .push((event.to_string(), Instant::now()));
        if event == LOCK_GRANTED_HOOK {
            let (sandbox, env, keys, owner) = (
                self.sandbox.clone(),
                self.env.clone(),
                self.keys.clone(),
                self.owner.clone(),
            );
            let claim_file = self
                .base_dir
                .join(rollingops_guest::etcd::worker::CLAIM_FILE);
            self.hooks.push(std::thread::spawn(move || {
                let claim = std::fs::read_to_string(claim_file)
                    .ok()
                    .map(|text| WorkerClaim::decode(&text).op_id);
                let log = std::sync::Mutex::default();
                hook(&sandbox, &env, &keys, &owner, claim.as_deref(), &log);
                assert_eq!(log.lock().unwrap().len(), 1, "the hook ran nothing");
            }));
        }
        Ok(())
    }
    fn now_micros(&mut self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
    }
    fn sleep_ms(&mut self, ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    fn run_callback(&mut self, _: &str, _: &str) -> rollingops::CallbackOutcome {
        rollingops::CallbackOutcome::Returned(None)
    }
    fn sync_backend_acquire(
        &mut self,
        _: &str,
        _: Option<u32>,
    ) -> Result<(), rollingops::SyncBackendError> {
        Ok(())
    }
    fn sync_backend_release(&mut self, _: &str) -> Result<(), rollingops::SyncBackendError> {
        Ok(())
    }
}

#[test]
fn the_components_worker_waits_in_a_watch_and_hands_over_through_the_hook() {
    let etcd = Etcd::start(29_790, 1);
    let (env, sandbox) = (etcd.env(), etcd.sandbox());
    let base_dir = sandbox.base_dir().to_path_buf();
    let var = |name: &str| env.iter().find(|(k, _)| k == name).unwrap().1.clone();
    std::fs::create_dir_all(base_dir.join("etcd")).unwrap();
    let config = serde_json::json!({
        "endpoints": var("ETCDCTL_ENDPOINTS"),
        "cacert_path": var("ETCDCTL_CACERT"),
        "cert_path": var("ETCDCTL_CERT"),
        "key_path": var("ETCDCTL_KEY"),
    });
    std::fs::write(base_dir.join("etcd/etcdctl.json"), config.to_string()).unwrap();
    let owner = owner("model", "app/0");
    let keys = Keys::new("cw", &owner);
    let op = Operation::new(
        "restart",
        Default::default(),
        None,
        Timestamp::from_micros(7),
    );
    let pending = format!("{}{}", keys.pending, op.op_id());
    assert_eq!(
        etcdctl(&env, &["put", &pending], Some(&op.to_json())).code,
        0
    );
    let other = hold_lock(&env, &keys, "someone-else");

    let claim_file = base_dir.join(rollingops_guest::etcd::worker::CLAIM_FILE);
    let dispatched = std::sync::Arc::default();
    let host = WorkerHost {
        env: env.clone(),
        sandbox: sandbox.clone(),
        keys: keys.clone(),
        owner: owner.clone(),
        base_dir: base_dir.clone(),
        dispatched: std::sync::Arc::clone(&dispatched),
        hooks: vec![],
    };
    let worker = std::thread::spawn(move || {
        let config = rollingops::Config {
            peer_relation_name: "restart".into(),
            etcd_relation_name: Some("etcd".into()),
            cluster_id: Some("cw".into()),
            base_dir: base_dir.to_string_lossy().into_owned(),
            callback_ids: vec![],
            sync_lock_ids: vec![],
        };
        let runtime = rollingops_tests::runtime();
        let mut session =
            rollingops::Session::new(runtime, Box::new(host), sandbox, &config).unwrap();
        session.run_worker()
    });
    std::thread::sleep(Duration::from_millis(2_000));
    assert!(
        dispatched.lock().unwrap().is_empty(),
        "ran while the lock was held"
    );
    let released = Instant::now();
    assert_eq!(etcdctl(&env, &["lease", "revoke", &other], None).code, 0);
    worker.join().unwrap().expect("the worker exits cleanly");
    assert!(!claim_file.exists(), "the claim outlived the worker");
    let dispatched = dispatched.lock().unwrap().clone();
    assert_eq!(dispatched.len(), 1, "{dispatched:?}");
    assert_eq!(dispatched[0].0, LOCK_GRANTED_HOOK);
    let woke = dispatched[0].1.saturating_duration_since(released);
    assert!(
        woke < Duration::from_secs(1),
        "dispatched {woke:?} after the release"
    );
    // The op ran and the hook released the lock with its result: nothing is left.
    let left = etcd.etcdctl(&["get", "/rollingops/", "--prefix", "--keys-only"], None);
    assert_eq!(left.stdout.trim(), "", "keys left behind");
}
