//! Hand-off latency on a real etcd (TLS, one member, loopback): five units contending for
//! the rollingops lock key through the core's worker state machine, side by side with five
//! `etcdctl lock` processes contending on the same cluster.
//!
//! A hand-off is the time from one critical section ending to the next one starting (in a
//! different unit). The rollingops side plays the lock-granted hook in-process, so the
//! numbers are the lock protocol's; a real hook adds its own start-up on top.
//!
//! Run: `cargo bench -p rollingops-tests --bench etcd_handoff`.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollingops_guest::etcd::keys::{Keys, owner};
use rollingops_guest::etcd::queue::finalize;
use rollingops_guest::etcd::txn;
use rollingops_guest::etcd::worker::{Call, LOCK_GRANTED_HOOK, Step, Timing, Worker};
use rollingops_guest::{Operation, OperationResult, Timestamp};
use rollingops_tests::etcd_cluster::{Etcd, etcdctl};

const UNITS: usize = 5;
const ROUNDS: usize = 4;
const HOLD: Duration = Duration::from_millis(50);

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

type Sections = Arc<Mutex<Vec<(usize, u128, u128)>>>;

fn rollingops(etcd: &Etcd, sections: Sections) {
    let threads: Vec<_> = (0..UNITS)
        .map(|unit| {
            let env = etcd.env();
            let sections = sections.clone();
            std::thread::spawn(move || {
                let owner = owner("bench", &format!("app/{unit}"));
                let keys = Keys::new("bench", &owner);
                for round in 0..ROUNDS {
                    let op = Operation::new(
                        "restart",
                        Default::default(),
                        None,
                        Timestamp::from_micros(round as i64),
                    );
                    let key = format!("{}{}", keys.pending, op.op_id());
                    assert_eq!(etcdctl(&env, &["put", &key], Some(&op.to_json())).code, 0);
                }
                let clock = Instant::now();
                let mut worker = Worker::new(keys.clone(), owner.clone(), Timing::default(), 0);
                loop {
                    match worker.poll(clock.elapsed().as_millis() as u64) {
                        Step::Etcdctl(call) => {
                            let (args, stdin) = call.argv();
                            let args: Vec<&str> = args.iter().map(String::as_str).collect();
                            worker.handle(etcdctl(&env, &args, stdin.as_deref()));
                        }
                        Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
                        Step::Dispatch(event) => {
                            assert_eq!(event, LOCK_GRANTED_HOOK);
                            // The hook: read the claimed op, hold, finalize.
                            let head = etcdctl(
                                &env,
                                &["get", &keys.inprogress, "--prefix", "--limit=1"],
                                None,
                            );
                            let mut lines = head.stdout.lines();
                            let (Some(key), Some(value)) = (lines.next(), lines.next()) else {
                                continue;
                            };
                            let op = Operation::from_json(value).unwrap();
                            let start = now_ns();
                            std::thread::sleep(HOLD);
                            let end = now_ns();
                            sections.lock().unwrap().push((unit, start, end));
                            let done = finalize(&op, OperationResult::Release);
                            let to = format!("{}{}", keys.completed, done.op_id());
                            let body = txn::move_op(&keys.lock, &owner, key, &to, &done.to_json());
                            let _ = etcdctl(&env, &["txn"], Some(&body));
                        }
                        Step::Exit(result) => {
                            result.expect("worker");
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn etcdctl_lock(etcd: &Etcd, sections: Sections) {
    let script = format!("date +%s%N; sleep {}; date +%s%N", HOLD.as_secs_f64());
    let threads: Vec<_> = (0..UNITS)
        .map(|unit| {
            let env = etcd.env();
            let sections = sections.clone();
            let script = script.clone();
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    let out = Command::new("etcdctl")
                        .args(["lock", "bench-etcdctl-lock", "--", "/bin/sh", "-c", &script])
                        .env_clear()
                        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .output()
                        .unwrap();
                    let stamps: Vec<u128> = String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .collect();
                    assert_eq!(
                        stamps.len(),
                        2,
                        "{:?}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    sections.lock().unwrap().push((unit, stamps[0], stamps[1]));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Gaps (ms) between consecutive critical sections of different units; checks exclusion.
fn handoffs(sections: &Sections) -> Vec<f64> {
    let mut all = sections.lock().unwrap().clone();
    all.sort_by_key(|s| s.1);
    let mut gaps = Vec::new();
    for pair in all.windows(2) {
        assert!(pair[1].1 >= pair[0].2, "two holders at once");
        if pair[1].0 != pair[0].0 {
            gaps.push((pair[1].1 - pair[0].2) as f64 / 1e6);
        }
    }
    gaps.sort_by(f64::total_cmp);
    gaps
}

fn stats(gaps: &[f64]) -> (f64, f64) {
    let pick = |q: f64| gaps[((gaps.len() as f64 - 1.0) * q).round() as usize];
    (pick(0.5), pick(0.95))
}

fn main() {
    let etcd = Etcd::start(26_790, 1);
    let ours = Sections::default();
    let started = Instant::now();
    rollingops(&etcd, ours.clone());
    let ours_total = started.elapsed();
    let theirs = Sections::default();
    let started = Instant::now();
    etcdctl_lock(&etcd, theirs.clone());
    let theirs_total = started.elapsed();
    let (ours_gaps, theirs_gaps) = (handoffs(&ours), handoffs(&theirs));
    let (om, op) = stats(&ours_gaps);
    let (tm, tp) = stats(&theirs_gaps);
    println!(
        "etcd hand-off latency: {UNITS} contending units × {ROUNDS} rounds, {} ms critical sections, TLS, loopback\n",
        HOLD.as_millis()
    );
    println!(
        "  {:<28} {:>10} {:>10} {:>10} {:>12}",
        "", "median ms", "p95 ms", "hand-offs", "wall s"
    );
    println!(
        "  {:<28} {:>10.1} {:>10.1} {:>10} {:>12.1}",
        "rollingops worker",
        om,
        op,
        ours_gaps.len(),
        ours_total.as_secs_f64()
    );
    println!(
        "  {:<28} {:>10.1} {:>10.1} {:>10} {:>12.1}",
        "etcdctl lock (baseline)",
        tm,
        tp,
        theirs_gaps.len(),
        theirs_total.as_secs_f64()
    );
    println!(
        "\n  ratio (rollingops / etcdctl lock): median {:.2}×, p95 {:.2}×",
        om / tm,
        op / tp
    );
    let _ = Call::First(String::new());
}
