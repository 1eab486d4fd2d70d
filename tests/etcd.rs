//! The etcd worker's protocol against a real etcd (Debian's `etcd-server`/`etcd-client`):
//! workers of several units, each driven by the core's state machine and running the real
//! `etcdctl`, contend for one lock key; the lock-granted hook is played in-process.

use std::time::{Duration, Instant};

use rollingops_guest::etcd::keys::{Keys, owner};
use rollingops_guest::etcd::queue::finalize;
use rollingops_guest::etcd::txn;
use rollingops_guest::etcd::worker::{Call, LOCK_GRANTED_HOOK, Output, Step, Timing, Worker};
use rollingops_guest::{Operation, OperationResult, Timestamp};
use rollingops_tests::etcd_cluster::{Etcd, etcdctl};

fn run_call(env: &[(String, String)], call: &Call) -> Output {
    let (args, stdin) = call.argv();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    etcdctl(env, &args, stdin.as_deref())
}

/// The lock-granted hook: run the claimed op under the lock, then finalize it.
fn hook(
    env: &[(String, String)],
    keys: &Keys,
    owner: &str,
    log: &std::sync::Mutex<Vec<(String, Instant, Instant)>>,
) {
    // Like the real hook, retry transient failures (a member may be down).
    let retrying = |args: &[&str], stdin: Option<&str>| {
        for _ in 0..5 {
            let out = etcdctl(env, args, stdin);
            if out.code == 0 {
                return out;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("etcdctl {args:?} kept failing");
    };
    let head = retrying(&["get", &keys.inprogress, "--prefix", "--limit=1"], None);
    let mut lines = head.stdout.lines();
    let (Some(key), Some(value)) = (lines.next(), lines.next()) else {
        return;
    };
    let op = Operation::from_json(value).expect("a valid op in inprogress");
    let holder = retrying(&["get", &keys.lock, "--print-value-only"], None);
    assert_eq!(holder.stdout.trim(), owner, "the hook ran without the lock");
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(150));
    log.lock()
        .unwrap()
        .push((owner.to_string(), start, Instant::now()));
    let done = finalize(&op, OperationResult::Release);
    let to = format!("{}{}", keys.completed, done.op_id());
    let body = txn::move_op(&keys.lock, owner, key, &to, &done.to_json());
    // A retried transaction may find its own earlier, ambiguous attempt applied.
    let outcome = retrying(&["txn"], Some(&body));
    if outcome.stdout.lines().next() != Some("SUCCESS") {
        let done = retrying(&["get", &to, "--print-value-only"], None);
        assert!(
            !done.stdout.trim().is_empty(),
            "finalize failed: {outcome:?}"
        );
    }
}

type RunLog = std::sync::Arc<std::sync::Mutex<Vec<(String, Instant, Instant)>>>;

/// A worker thread's exit and the hooks it dispatched.
type WorkerThread = std::thread::JoinHandle<(Result<(), String>, Vec<&'static str>)>;

/// `units` workers, each with `ops` queued ops, contending on one cluster until they exit.
/// Returns the worker threads; the callback runs go to `log`.
fn contend(
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
                        Step::Etcdctl(call) => worker.handle(run_call(&env, &call)),
                        Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
                        Step::Dispatch(event) => {
                            dispatched.push(event);
                            if event == LOCK_GRANTED_HOOK {
                                hook(&env, &keys, &owner, &log);
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
    for worker in contend(etcd.env(), 4, 2, Timing::default(), log.clone()) {
        assert_eq!(worker.join().unwrap().0, Ok(()));
    }
    assert_eq!(log.lock().unwrap().len(), 8);
    assert_no_overlap(&log);
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
    let workers = contend(etcd.env(), 3, 2, Timing::default(), log.clone());
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
            std::thread::spawn(move || {
                let owner = owner("model", &format!("app/{i}"));
                let mut worker = Worker::new(Keys::new("cluster-1", &owner), owner, timing, 0);
                let clock = Instant::now();
                let mut dispatched = Vec::new();
                loop {
                    match worker.poll(clock.elapsed().as_millis() as u64) {
                        Step::Etcdctl(call) => worker.handle(run_call(&env, &call)),
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
