//! Hand-off latency on a real etcd (TLS with client certificates, one member, loopback):
//! five units contending for the rollingops lock key, side by side with five `etcdctl lock`
//! processes contending on the same cluster.
//!
//! The rollingops side runs the production path: each unit drives the core's [`Worker`]
//! exactly as the component's `run-worker` does (etcdctl calls and watches through the host
//! library's [`Sandbox`]; the lock transaction's etcdctl started while the watch runs, as
//! the driver's `Prepared` does), and plays the lock-granted hook with the manager's own
//! etcd steps ([`turn`], [`handoff`]: one read, with the waiters' registrations; the lease
//! kept alive during the callback; the finalize's etcdctl started before the callback; the
//! lock handed to the oldest waiter in the finalize). Only the hook's process
//! start (juju-exec, the charm) is left out, so the numbers are the lock protocol's.
//!
//! A hand-off is the time from one critical section ending to the next one starting in a
//! different unit. The rollingops hand-off is also split into its steps, and the cost of
//! one etcdctl process (start-up alone, and a TLS round trip) is measured, to show where the
//! time goes.
//!
//! Run: `cargo bench -p rollingops-tests --bench etcd_handoff`
//! (`ROLLINGOPS_BENCH_ROUNDS=N` ops per unit, default 10).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollingops::sandbox::{Sandbox, StartedEtcdctl};
use rollingops_guest::etcd::handoff;
use rollingops_guest::etcd::keys::{Keys, owner};
use rollingops_guest::etcd::queue::finalize;
use rollingops_guest::etcd::turn::{self, WorkerClaim};
use rollingops_guest::etcd::worker::{Call, LOCK_GRANTED_HOOK, Output, Step, Timing, Worker};
use rollingops_guest::{Operation, OperationResult, Timestamp};
use rollingops_tests::etcd_cluster::Etcd;

const UNITS: usize = 5;
const HOLD: Duration = Duration::from_millis(50);
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(15);

fn rounds() -> usize {
    std::env::var("ROLLINGOPS_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// What happened when, per unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// Critical section start / end.
    Start,
    End,
    /// The hook's finalize transaction returned.
    Finalized,
    /// A watch on the lock key returned.
    WatchedLock,
    /// The lock (and claim) transaction returned, successfully.
    Acquired,
}

type Marks = Arc<Mutex<Vec<(usize, Mark, u128)>>>;

fn output(
    result: Result<rollingops::bindings::juju::rollingops::types::ExecOutput, impl std::fmt::Debug>,
) -> Output {
    let out = result.expect("etcdctl runs");
    Output {
        code: out.code,
        stdout: out.stdout,
        stderr: out.stderr,
        timed_out: out.timed_out,
    }
}

/// A charm directory whose `usr/bin/etcdctl` is the system's, as the sandbox requires.
fn charm_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rollingops-bench-charm-{}", std::process::id()));
    let bin = dir.join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let etcdctl = bin.join("etcdctl");
    if !etcdctl.exists() {
        let system = String::from_utf8(
            Command::new("which")
                .arg("etcdctl")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        std::os::unix::fs::symlink(system.trim(), &etcdctl).unwrap();
    }
    dir
}

/// The lock-granted hook's etcd part, as the manager runs it: read the lock, the op and the
/// waiters' registrations; keep the lease alive during the callback (renewed first unless
/// the worker's claim vouches for it); the finalize's etcdctl started before the callback;
/// then hand the lock to the oldest waiter, or release it.
fn hook(
    sandbox: &Sandbox,
    env: &[(String, String)],
    keys: &Keys,
    owner: &str,
    claim: Option<WorkerClaim>,
    unit: usize,
    marks: &Marks,
) {
    let read = turn::read(keys);
    let (args, stdin) = read.argv();
    let out = output(sandbox.run_etcdctl(&args, env, stdin.as_deref(), ETCDCTL_TIMEOUT));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let facts = turn::parse(&out.stdout).expect("facts");
    assert_eq!(
        facts.lock_holder.as_deref(),
        Some(owner),
        "a hook ran without the lock"
    );
    let (key, op) = facts.inprogress.clone().expect("a claimed op");
    let lease = facts.lock_lease.clone().expect("a leased lock");
    let now = (now_ns() / 1000) as i64;
    let worker_waits = claim.as_ref().is_some_and(|c| c.op_id == op.op_id());
    let vouched = claim.is_some_and(|c| c.op_id == op.op_id() && c.vouches_for(&lease, now));
    if !vouched {
        let renewed = output(sandbox.run_etcdctl(
            &Call::KeepAlive(lease.clone()).argv().0,
            env,
            None,
            ETCDCTL_TIMEOUT,
        ));
        assert_eq!(renewed.code, 0, "{}", renewed.stderr);
    }
    let keep_alive = sandbox
        .start_etcdctl(&["lease".into(), "keep-alive".into(), lease], env)
        .expect("start");
    let finalize_txn = sandbox.start_etcdctl(&["txn".into()], env).expect("start");
    marks.lock().unwrap().push((unit, Mark::Start, now_ns()));
    std::thread::sleep(HOLD);
    marks.lock().unwrap().push((unit, Mark::End, now_ns()));
    let done = finalize(&op, OperationResult::Release);
    let successor = handoff::successor(keys, owner, &facts.waiters)
        .filter(|_| worker_waits && turn::releases(&done));
    let plain = turn::finalize_body(keys, owner, &key, &done, worker_waits);
    let handed = successor.is_some_and(|to| {
        let body = turn::hand_over_body(keys, owner, &key, &done, &to);
        let out = output(finalize_txn.finish(Some(&body), ETCDCTL_TIMEOUT));
        out.stdout.lines().next() == Some("SUCCESS")
    });
    if !handed {
        let out = output(sandbox.run_etcdctl(&["txn".into()], env, Some(&plain), ETCDCTL_TIMEOUT));
        assert_eq!(out.stdout.lines().next(), Some("SUCCESS"), "{}", out.stderr);
    }
    marks
        .lock()
        .unwrap()
        .push((unit, Mark::Finalized, now_ns()));
    drop(keep_alive);
}

fn rollingops(etcd: &Etcd, marks: Marks) {
    let charm = charm_dir();
    let rounds = rounds();
    let threads: Vec<_> = (0..UNITS)
        .map(|unit| {
            let env = etcd.env();
            let marks = marks.clone();
            let sandbox = Sandbox::new(&charm, std::env::temp_dir());
            std::thread::spawn(move || {
                let owner = owner("bench", &format!("app/{unit}"));
                let keys = Keys::new("bench", &owner);
                for round in 0..rounds {
                    let op = Operation::new(
                        "restart",
                        Default::default(),
                        None,
                        Timestamp::from_micros(round as i64),
                    );
                    let key = format!("{}{}", keys.pending, op.op_id());
                    let out = output(sandbox.run_etcdctl(
                        &["put".into(), key],
                        &env,
                        Some(&op.to_json()),
                        ETCDCTL_TIMEOUT,
                    ));
                    assert_eq!(out.code, 0, "{}", out.stderr);
                }
                let clock = Instant::now();
                let mut timing = Timing::default();
                if let Some(ms) = std::env::var("REWATCH").ok().and_then(|v| v.parse().ok()) {
                    timing.rewatch_delay_ms = ms;
                }
                let mut worker = Worker::new(keys.clone(), owner.clone(), timing, 0);
                // What the driver's `Prepared` does: the call after a lock watch is started
                // while the watch runs.
                let mut ahead: Option<(Vec<String>, StartedEtcdctl)> = None;
                loop {
                    match worker.poll(clock.elapsed().as_millis() as u64) {
                        Step::Etcdctl(call) => {
                            let (args, stdin) = call.argv();
                            let out = output(match ahead.take() {
                                Some((ready, started)) if ready == args => {
                                    started.finish(stdin.as_deref(), ETCDCTL_TIMEOUT)
                                }
                                _ => sandbox.run_etcdctl(
                                    &args,
                                    &env,
                                    stdin.as_deref(),
                                    ETCDCTL_TIMEOUT,
                                ),
                            });
                            let was_holding = worker.holding();
                            worker.handle(out);
                            if matches!(call, Call::TxnJson(_)) && !was_holding && worker.holding()
                            {
                                marks.lock().unwrap().push((unit, Mark::Acquired, now_ns()));
                            }
                        }
                        Step::Watch(call, timeout_ms) => {
                            if let (None, Some(next)) = (&ahead, worker.args_after_watch()) {
                                let started = sandbox.start_etcdctl(&next, &env).expect("start");
                                ahead = Some((next, started));
                            }
                            let (args, _) = call.argv();
                            let out = output(sandbox.watch_etcdctl(
                                &args,
                                &env,
                                Duration::from_millis(timeout_ms.into()),
                            ));
                            if matches!(&call, Call::Watch { key, .. } if *key == keys.lock) {
                                marks
                                    .lock()
                                    .unwrap()
                                    .push((unit, Mark::WatchedLock, now_ns()));
                            }
                            let was_holding = worker.holding();
                            worker.handle(out);
                            if !was_holding && worker.holding() {
                                // Handed over: the watch itself brought the lock.
                                marks.lock().unwrap().push((unit, Mark::Acquired, now_ns()));
                            }
                        }
                        Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
                        Step::Dispatch(event) => {
                            assert_eq!(event, LOCK_GRANTED_HOOK);
                            // What the driver writes to the claim file before dispatching.
                            let now = (now_ns() / 1000) as i64;
                            let claim = worker.claim().map(|c| WorkerClaim {
                                op_id: c.op.op_id(),
                                lease: c.lease,
                                lease_certain_until_micros: now + c.certain_ms as i64 * 1000,
                            });
                            hook(&sandbox, &env, &keys, &owner, claim, unit, &marks);
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

fn etcdctl_lock(etcd: &Etcd, marks: Marks) {
    let script = format!("date +%s%N; sleep {}; date +%s%N", HOLD.as_secs_f64());
    let rounds = rounds();
    let threads: Vec<_> = (0..UNITS)
        .map(|unit| {
            let env = etcd.env();
            let marks = marks.clone();
            let script = script.clone();
            std::thread::spawn(move || {
                for _ in 0..rounds {
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
                    let mut marks = marks.lock().unwrap();
                    marks.push((unit, Mark::Start, stamps[0]));
                    marks.push((unit, Mark::End, stamps[1]));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Critical sections (unit, start, end), sorted; checks that no two overlap.
fn sections(marks: &Marks) -> Vec<(usize, u128, u128)> {
    let marks = marks.lock().unwrap();
    let mut all = Vec::new();
    for unit in 0..UNITS {
        let starts = marks
            .iter()
            .filter(|m| m.0 == unit && m.1 == Mark::Start)
            .map(|m| m.2);
        let ends = marks
            .iter()
            .filter(|m| m.0 == unit && m.1 == Mark::End)
            .map(|m| m.2);
        all.extend(starts.zip(ends).map(|(s, e)| (unit, s, e)));
    }
    all.sort_by_key(|s| s.1);
    for pair in all.windows(2) {
        assert!(pair[1].1 >= pair[0].2, "two holders at once: {pair:?}");
    }
    all
}

/// Gaps (ms) between consecutive critical sections of different units.
fn handoffs(sections: &[(usize, u128, u128)]) -> Vec<f64> {
    let mut gaps: Vec<f64> = sections
        .windows(2)
        .filter(|p| p[1].0 != p[0].0)
        .map(|p| (p[1].1 - p[0].2) as f64 / 1e6)
        .collect();
    gaps.sort_by(f64::total_cmp);
    gaps
}

fn stats(values: &[f64]) -> (f64, f64) {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    let pick = |q: f64| values[((values.len() as f64 - 1.0) * q).round() as usize];
    (pick(0.5), pick(0.95))
}

/// The rollingops hand-off split into steps: holder's finalize txn, the waiter's watch
/// waking up, the waiter's lock+claim txn, the hook's read.
fn steps(marks: &Marks, sections: &[(usize, u128, u128)]) -> Vec<(&'static str, Vec<f64>)> {
    let marks = marks.lock().unwrap();
    let last_before = |unit: usize, kind: Mark, from: u128, to: u128| {
        marks
            .iter()
            .filter(|m| m.0 == unit && m.1 == kind && m.2 >= from && m.2 <= to)
            .map(|m| m.2)
            .max()
    };
    let mut parts: Vec<(&'static str, Vec<f64>)> = vec![
        (
            "section end -> holder's hand-over (or release) returned",
            vec![],
        ),
        ("-> waiter's watch returned", vec![]),
        ("-> waiter holds the lock (handed: at once)", vec![]),
        ("-> hook read etcd, next section starts", vec![]),
    ];
    for pair in sections.windows(2).filter(|p| p[1].0 != p[0].0) {
        let (a, b) = (pair[0], pair[1]);
        let ms = |from: u128, to: u128| (to as f64 - from as f64) / 1e6;
        let (Some(finalized), Some(watched), Some(acquired)) = (
            last_before(a.0, Mark::Finalized, a.2, b.1),
            last_before(b.0, Mark::WatchedLock, a.2, b.1),
            last_before(b.0, Mark::Acquired, a.2, b.1),
        ) else {
            continue;
        };
        if !(finalized <= watched && watched <= acquired) {
            continue;
        }
        parts[0].1.push(ms(a.2, finalized));
        parts[1].1.push(ms(finalized, watched));
        parts[2].1.push(ms(watched, acquired));
        parts[3].1.push(ms(acquired, b.1));
    }
    parts
}

/// The cost of one etcdctl process: start-up alone (`version`, no network) and a TLS
/// round trip (`get`, which dials, handshakes and reads).
fn etcdctl_costs(etcd: &Etcd) -> [(&'static str, Vec<f64>); 4] {
    let sandbox = Sandbox::new(charm_dir(), std::env::temp_dir());
    let env = etcd.env();
    let body = "\n\nget /bench-probe\n\n";
    let txn_times = |ahead: bool| -> Vec<f64> {
        let args = vec!["txn".to_string()];
        (0..20)
            .map(|_| {
                let (started, out) = if ahead {
                    let process = sandbox.start_etcdctl(&args, &env).unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    let started = Instant::now();
                    (started, process.finish(Some(body), ETCDCTL_TIMEOUT))
                } else {
                    let started = Instant::now();
                    (
                        started,
                        sandbox.run_etcdctl(&args, &env, Some(body), ETCDCTL_TIMEOUT),
                    )
                };
                let out = output(out);
                assert_eq!(out.stdout.lines().next(), Some("SUCCESS"), "{}", out.stderr);
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect()
    };
    let time = |args: &[&str]| -> Vec<f64> {
        (0..20)
            .map(|_| {
                let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                let started = Instant::now();
                let out = output(sandbox.run_etcdctl(&args, &env, None, ETCDCTL_TIMEOUT));
                assert_eq!(out.code, 0, "{}", out.stderr);
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect()
    };
    [
        (
            "etcdctl version (process start-up only)",
            time(&["version"]),
        ),
        (
            "etcdctl get over TLS (start-up + handshake + read)",
            time(&["get", "/bench-probe"]),
        ),
        (
            "etcdctl txn over TLS, started when needed",
            txn_times(false),
        ),
        (
            "etcdctl txn over TLS, started 100 ms ahead",
            txn_times(true),
        ),
    ]
}

fn main() {
    let etcd = Etcd::start(26_790, 1);
    let rounds = rounds();
    let ours = Marks::default();
    let started = Instant::now();
    rollingops(&etcd, ours.clone());
    let ours_total = started.elapsed();
    let theirs = Marks::default();
    let started = Instant::now();
    etcdctl_lock(&etcd, theirs.clone());
    let theirs_total = started.elapsed();
    let (ours_sections, theirs_sections) = (sections(&ours), sections(&theirs));
    let (ours_gaps, theirs_gaps) = (handoffs(&ours_sections), handoffs(&theirs_sections));
    let (om, op) = stats(&ours_gaps);
    let (tm, tp) = stats(&theirs_gaps);
    println!(
        "etcd hand-off latency: {UNITS} contending units × {rounds} rounds, {} ms critical sections, TLS, loopback\n",
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
    println!("\n  where a rollingops hand-off goes (median / p95 ms):");
    for (step, values) in steps(&ours, &ours_sections) {
        if !values.is_empty() {
            let (m, p) = stats(&values);
            println!("    {step:<56} {m:>6.1} {p:>6.1}   (n={})", values.len());
        }
    }
    println!("\n  one etcdctl process (median / p95 ms, 20 runs):");
    for (what, values) in etcdctl_costs(&etcd) {
        let (m, p) = stats(&values);
        println!("    {what:<56} {m:>6.1} {p:>6.1}");
    }
    let _ = std::fs::remove_dir_all(charm_dir());
}
