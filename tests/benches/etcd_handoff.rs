//! Hand-off latency on a real etcd (TLS with client certificates, one member, loopback):
//! five units contending for the rollingops lock key, side by side with five `etcdctl lock`
//! processes contending on the same cluster.
//!
//! The rollingops side runs the production path natively: each unit runs the core's own
//! worker loop (`driver::run_worker`, what the component's `run-worker` runs), and when the
//! worker dispatches the lock-granted hook, the hook runs at once in the worker's thread as
//! the component runs it (`driver::load_for` + `driver::handle_event`: the worker's claim
//! taken at its word, the grant recorded, the lease kept alive and the waiters read during
//! the callback, the finalize's etcdctl started before it, the lock handed to the oldest
//! waiter), over an in-memory peer relation and base_dir. Every etcdctl call, started
//! process and watch stream goes through the host library's [`Sandbox`]. Only the hook's
//! process start (juju-exec, the charm) is left out, so the numbers are the lock protocol's.
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

use std::collections::HashMap;

use rollingops::sandbox::{Sandbox, StartedEtcdctl};
use rollingops_guest::driver::{self, BagOwner, Effects};
use rollingops_guest::etcd::config::{ETCDCTL_JSON, SERVER_CA};
use rollingops_guest::etcd::keys::{Keys, owner};
use rollingops_guest::etcd::worker::{LOCK_GRANTED_HOOK, Output};
use rollingops_guest::manager::{Event, SyncBackendError};
use rollingops_guest::queue::OperationQueue;
use rollingops_guest::wire::Bag;
use rollingops_guest::{CallbackOutcome, Config, Error, LogLevel, Operation, Timestamp};
use rollingops_tests::etcd_cluster::Etcd;

const UNITS: usize = 5;
const HOLD: Duration = Duration::from_millis(50);
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(15);

/// The charm's configuration of every unit.
fn config() -> Config {
    Config {
        peer_relation_name: "restart".into(),
        etcd_relation_name: Some("etcd".into()),
        cluster_id: Some("bench".into()),
        base_dir: "/bench".into(),
        callback_ids: vec!["restart".into()],
        sync_lock_ids: vec![],
    }
}

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
    convert(result.expect("etcdctl runs"))
}

fn convert(out: rollingops::bindings::juju::rollingops::types::ExecOutput) -> Output {
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

/// One unit's outside world for the component's own worker loop
/// ([`driver::run_worker`]) and its lock-granted hook, over the host library's [`Sandbox`]:
/// etcdctl calls, started processes and watch streams as the Rust hosts run them; files,
/// and this unit's bag of the peer relation, in memory; the hook run inline when the worker
/// dispatches it.
struct BenchUnit {
    unit: usize,
    keys: Keys,
    /// This unit's bag on the peer relation (id 1).
    bag: Bag,
    callbacks: usize,
    sandbox: Sandbox,
    env: Vec<(String, String)>,
    files: HashMap<String, Vec<u8>>,
    started: HashMap<u32, (Vec<String>, StartedEtcdctl)>,
    next_handle: u32,
    marks: Marks,
}

fn host_error(e: rollingops::WitError) -> Error {
    Error::Etcdctl(format!("{e:?}"))
}

impl Effects for BenchUnit {
    fn unit_name(&mut self) -> String {
        format!("app/{}", self.unit)
    }
    fn model_uuid(&mut self) -> String {
        "bench".into()
    }
    fn is_leader(&mut self) -> Result<bool, Error> {
        Ok(false)
    }
    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, Error> {
        Ok(match endpoint {
            "restart" => vec![1],
            "etcd" => vec![2],
            _ => vec![],
        })
    }
    fn relation_units(&mut self, _: u32) -> Result<Vec<String>, Error> {
        Ok(vec![])
    }
    fn relation_get(&mut self, relation_id: u32, owner: BagOwner<'_>) -> Result<Bag, Error> {
        Ok(match (relation_id, owner) {
            (1, BagOwner::Unit(_)) => self.bag.clone(),
            _ => Bag::new(),
        })
    }
    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), Error> {
        assert_eq!(
            (relation_id, app),
            (1, false),
            "a unit hook writes its own peer bag"
        );
        for (key, value) in pairs {
            if value.is_empty() {
                self.bag.remove(key);
            } else {
                self.bag.insert(key.clone(), value.clone());
            }
        }
        Ok(())
    }
    fn log(&mut self, level: LogLevel, message: &str) {
        if matches!(level, LogLevel::Warning | LogLevel::Error) {
            eprintln!("app/{}: {message}", self.unit);
        }
    }
    /// The lock-granted hook, run at once as the component runs it.
    fn dispatch(&mut self, event: &str) -> Result<(), Error> {
        assert_eq!(event, LOCK_GRANTED_HOOK);
        let unit = self.unit;
        self.marks
            .lock()
            .unwrap()
            .push((unit, Mark::Acquired, now_ns()));
        let before = self.callbacks;
        let mut manager = driver::load_for(config(), self, Some(&Event::LockGranted))?;
        driver::handle_event(&mut manager, self, Event::LockGranted)?;
        self.marks
            .lock()
            .unwrap()
            .push((unit, Mark::Finalized, now_ns()));
        assert_eq!(
            self.callbacks,
            before + 1,
            "app/{unit}: the hook ran no callback"
        );
        assert_eq!(
            self.bag["processing_backend"], "etcd",
            "app/{unit} fell back"
        );
        Ok(())
    }
    fn now(&mut self) -> Timestamp {
        Timestamp::from_micros((now_ns() / 1000) as i64)
    }
    fn run_callback(&mut self, _: &str, _: &str) -> CallbackOutcome {
        self.callbacks += 1;
        let unit = self.unit;
        self.marks
            .lock()
            .unwrap()
            .push((unit, Mark::Start, now_ns()));
        std::thread::sleep(HOLD);
        self.marks.lock().unwrap().push((unit, Mark::End, now_ns()));
        CallbackOutcome::Returned(None)
    }
    fn sync_backend_acquire(&mut self, _: &str, _: Option<u32>) -> Result<(), SyncBackendError> {
        Ok(())
    }
    fn sync_backend_release(&mut self, _: &str) -> Result<(), SyncBackendError> {
        Ok(())
    }
    fn run_etcdctl(
        &mut self,
        args: &[String],
        env: &[(String, String)],
        stdin: Option<&str>,
        timeout_ms: u32,
    ) -> Result<Output, Error> {
        let timeout = Duration::from_millis(timeout_ms.into());
        let out = self.sandbox.run_etcdctl(args, env, stdin, timeout);
        out.map(convert).map_err(host_error)
    }
    fn watch_etcdctl(
        &mut self,
        args: &[String],
        env: &[(String, String)],
        timeout_ms: u32,
    ) -> Result<Output, Error> {
        let timeout = Duration::from_millis(timeout_ms.into());
        let out = convert(
            self.sandbox
                .watch_etcdctl(args, env, timeout)
                .map_err(host_error)?,
        );
        self.mark_lock_event(args, &out.stdout);
        Ok(out)
    }
    fn start_etcdctl(&mut self, args: &[String], env: &[(String, String)]) -> Result<u32, Error> {
        let started = self.sandbox.start_etcdctl(args, env).map_err(host_error)?;
        self.next_handle += 1;
        self.started
            .insert(self.next_handle, (args.to_vec(), started));
        Ok(self.next_handle)
    }
    fn finish_etcdctl(
        &mut self,
        handle: u32,
        stdin: Option<&str>,
        timeout_ms: u32,
    ) -> Result<Output, Error> {
        let (_, started) = self
            .started
            .remove(&handle)
            .ok_or_else(|| Error::Etcdctl("no such handle".into()))?;
        let timeout = Duration::from_millis(timeout_ms.into());
        started
            .finish(stdin, timeout)
            .map(convert)
            .map_err(host_error)
    }
    fn read_etcdctl_line(&mut self, handle: u32, timeout_ms: u32) -> Result<Option<String>, Error> {
        let (args, started) = self
            .started
            .get_mut(&handle)
            .ok_or_else(|| Error::Etcdctl("no such handle".into()))?;
        let line = started
            .next_line(Duration::from_millis(timeout_ms.into()))
            .map_err(host_error)?;
        let args = args.clone();
        if let Some(line) = &line {
            self.mark_lock_event(&args, line);
        }
        Ok(line)
    }
    fn stop_etcdctl(&mut self, handle: u32) {
        self.started.remove(&handle);
    }
    fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.files.get(path).cloned())
    }
    fn write_file(&mut self, path: &str, data: &[u8], _: u32) -> Result<(), Error> {
        self.files.insert(path.into(), data.to_vec());
        Ok(())
    }
    fn remove_file(&mut self, path: &str) -> Result<(), Error> {
        self.files.remove(path);
        Ok(())
    }
    fn sleep_ms(&mut self, ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

impl BenchUnit {
    /// A watch on the lock key reported something.
    fn mark_lock_event(&self, args: &[String], stdout: &str) {
        if args.contains(&"watch".to_string())
            && args.contains(&self.keys.lock)
            && !stdout.trim().is_empty()
        {
            let mark = (self.unit, Mark::WatchedLock, now_ns());
            self.marks.lock().unwrap().push(mark);
        }
    }
}

fn rollingops(etcd: &Etcd, marks: Marks) {
    let charm = charm_dir();
    let rounds = rounds();
    let threads: Vec<_> = (0..UNITS)
        .map(|unit| {
            let env = etcd.env();
            let var = |name: &str| env.iter().find(|(k, _)| k == name).unwrap().1.clone();
            let etcdctl_json = serde_json::json!({
                "endpoints": var("ETCDCTL_ENDPOINTS"),
                "cacert_path": var("ETCDCTL_CACERT"),
                "cert_path": var("ETCDCTL_CERT"),
                "key_path": var("ETCDCTL_KEY"),
            });
            let owner = owner("bench", &format!("app/{unit}"));
            let mut fx = BenchUnit {
                unit,
                keys: Keys::new("bench", &owner),
                bag: Bag::from([("processing_backend".to_string(), "etcd".to_string())]),
                callbacks: 0,
                sandbox: Sandbox::new(&charm, std::env::temp_dir()),
                env: env.clone(),
                files: HashMap::from([
                    (
                        ETCDCTL_JSON.to_string(),
                        etcdctl_json.to_string().into_bytes(),
                    ),
                    (
                        SERVER_CA.to_string(),
                        b"(the etcdctl config names the CA)".to_vec(),
                    ),
                ]),
                started: HashMap::new(),
                next_handle: 0,
                marks: marks.clone(),
            };
            std::thread::spawn(move || {
                let mut queue = Vec::new();
                for round in 0..rounds {
                    let op = Operation::new(
                        "restart",
                        Default::default(),
                        None,
                        Timestamp::from_micros(round as i64),
                    );
                    let key = format!("{}{}", fx.keys.pending, op.op_id());
                    let out = output(fx.sandbox.run_etcdctl(
                        &["put".into(), key],
                        &fx.env,
                        Some(&op.to_json()),
                        ETCDCTL_TIMEOUT,
                    ));
                    assert_eq!(out.code, 0, "{}", out.stderr);
                    queue.push(op);
                }
                // The peer relation's mirror of the queue, as a request writes it.
                let mirror = OperationQueue::from_ops(queue).encode();
                fx.bag.insert("operations".into(), mirror);
                driver::run_worker(&config(), &mut fx).expect("worker");
                assert_eq!(fx.callbacks, rounds, "app/{unit} ran every op once");
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

/// The rollingops hand-off split into steps: the waiter's watch seeing the lock move (the
/// holder's hand-over, or its release), the waiter's worker asking for its hook (at once when
/// handed the lock, after its lock transaction when released), the hook up to its callback.
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
        ("section end -> waiter's watch saw the lock move", vec![]),
        ("-> waiter's worker asked for its hook", vec![]),
        ("-> hook loaded, next section starts", vec![]),
        (
            "(holder's finalize txn returned, after section end)",
            vec![],
        ),
    ];
    for pair in sections.windows(2).filter(|p| p[1].0 != p[0].0) {
        let (a, b) = (pair[0], pair[1]);
        let ms = |from: u128, to: u128| (to as f64 - from as f64) / 1e6;
        if let Some(finalized) = last_before(a.0, Mark::Finalized, a.2, b.1) {
            parts[3].1.push(ms(a.2, finalized));
        }
        let (Some(watched), Some(acquired)) = (
            last_before(b.0, Mark::WatchedLock, a.2, b.1),
            last_before(b.0, Mark::Acquired, a.2, b.1),
        ) else {
            continue;
        };
        if watched > acquired {
            continue;
        }
        parts[0].1.push(ms(a.2, watched));
        parts[1].1.push(ms(watched, acquired));
        parts[2].1.push(ms(acquired, b.1));
    }
    parts
}

/// The cost of one etcdctl process: start-up alone (`version`, no network) and a TLS
/// round trip (`get`, which dials, handshakes and reads); and, for reading the baseline,
/// what `etcdctl lock` pays between the lock and its command's first mark (starting the
/// command: `sh`, then `date`) — the rollingops mark is taken inside the hook instead.
fn etcdctl_costs(etcd: &Etcd) -> [(&'static str, Vec<f64>); 5] {
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
    let command_start: Vec<f64> = (0..20)
        .map(|_| {
            let before = now_ns();
            let out = Command::new("/bin/sh")
                .args(["-c", "date +%s%N"])
                .output()
                .unwrap();
            let printed: u128 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            (printed.saturating_sub(before)) as f64 / 1e6
        })
        .collect();
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
        (
            "baseline's command start (sh -c 'date +%s%N')",
            command_start,
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
