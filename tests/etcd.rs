//! The etcd worker's protocol against a real etcd (Debian's `etcd-server`/`etcd-client`):
//! workers of several units, each driven by the core's state machine and running the real
//! `etcdctl`, contend for one lock key; the lock-granted hook is played in-process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollingops_guest::etcd::keys::{Keys, owner};
use rollingops_guest::etcd::queue::finalize;
use rollingops_guest::etcd::txn;
use rollingops_guest::etcd::worker::{Call, LOCK_GRANTED_HOOK, Output, Step, Timing, Worker};
use rollingops_guest::{Operation, OperationResult, Timestamp};

/// An etcd on loopback ports in a temporary directory, stopped on drop.
struct Etcd {
    child: Child,
    dir: PathBuf,
    endpoint: String,
}

impl Etcd {
    fn start(port: u16) -> Etcd {
        let dir =
            std::env::temp_dir().join(format!("rollingops-etcd-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let endpoint = format!("http://127.0.0.1:{port}");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", port + 1),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", port + 1),
            ])
            .args([
                "--initial-cluster",
                &format!("test=http://127.0.0.1:{}", port + 1),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd is installed (Debian package etcd-server; ./test.sh installs it)");
        let etcd = Etcd {
            child,
            dir,
            endpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while etcdctl(&etcd.endpoint, &["endpoint", "health"], None).code != 0 {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .args(args)
        .env_clear()
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", endpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is installed (Debian package etcd-client)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        timed_out: false,
    }
}

fn run_call(endpoint: &str, call: &Call) -> Output {
    let (args, stdin) = call.argv();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    etcdctl(endpoint, &args, stdin.as_deref())
}

/// The lock-granted hook: run the claimed op under the lock, then finalize it.
fn hook(
    endpoint: &str,
    keys: &Keys,
    owner: &str,
    log: &std::sync::Mutex<Vec<(String, Instant, Instant)>>,
) {
    let head = etcdctl(
        endpoint,
        &["get", &keys.inprogress, "--prefix", "--limit=1"],
        None,
    );
    let mut lines = head.stdout.lines();
    let (Some(key), Some(value)) = (lines.next(), lines.next()) else {
        return;
    };
    let op = Operation::from_json(value).expect("a valid op in inprogress");
    let holder = etcdctl(endpoint, &["get", &keys.lock, "--print-value-only"], None);
    assert_eq!(holder.stdout.trim(), owner, "the hook ran without the lock");
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(150));
    log.lock()
        .unwrap()
        .push((owner.to_string(), start, Instant::now()));
    let done = finalize(&op, OperationResult::Release);
    let to = format!("{}{}", keys.completed, done.op_id());
    let body = txn::move_op(&keys.lock, owner, key, &to, &done.to_json());
    assert_eq!(
        etcdctl(endpoint, &["txn"], Some(&body))
            .stdout
            .lines()
            .next(),
        Some("SUCCESS")
    );
}

#[test]
fn workers_on_real_etcd_take_turns_and_drain_their_queues() {
    let etcd = Etcd::start(23_790);
    let endpoint = etcd.endpoint.clone();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let units = 4;
    let mut threads = Vec::new();
    for i in 0..units {
        let endpoint = endpoint.clone();
        let log = log.clone();
        threads.push(std::thread::spawn(move || {
            let owner = owner("model", &format!("app/{i}"));
            let keys = Keys::new("cluster-1", &owner);
            // Two ops, one with kwargs the reference would have truncated (§11 item 3).
            for (n, text) in ["plain", "with spaces and \"quotes\""].iter().enumerate() {
                let mut kwargs = serde_json::Map::new();
                kwargs.insert("note".into(), serde_json::Value::String(text.to_string()));
                let op = Operation::new(
                    "restart",
                    kwargs,
                    None,
                    Timestamp::from_micros(1_777_636_800_000_000 + n as i64),
                );
                let key = format!("{}{}", keys.pending, op.op_id());
                assert_eq!(
                    etcdctl(&endpoint, &["put", &key], Some(&op.to_json())).code,
                    0
                );
            }
            let clock = Instant::now();
            let mut worker = Worker::new(keys.clone(), owner.clone(), Timing::default(), 0);
            loop {
                match worker.poll(clock.elapsed().as_millis() as u64) {
                    Step::Etcdctl(call) => worker.handle(run_call(&endpoint, &call)),
                    Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
                    Step::Dispatch(event) => {
                        assert_eq!(event, LOCK_GRANTED_HOOK, "etcd failed");
                        hook(&endpoint, &keys, &owner, &log);
                    }
                    Step::Exit(result) => return result,
                }
            }
        }));
    }
    for thread in threads {
        assert_eq!(thread.join().unwrap(), Ok(()));
    }
    let mut runs = log.lock().unwrap().clone();
    assert_eq!(runs.len(), units * 2);
    runs.sort_by_key(|r| r.1);
    for pair in runs.windows(2) {
        assert!(
            pair[1].1 >= pair[0].2,
            "{} started before {} finished",
            pair[1].0,
            pair[0].0
        );
    }
    let left = etcdctl(
        &endpoint,
        &["get", "/rollingops/", "--prefix", "--keys-only"],
        None,
    );
    assert_eq!(left.stdout.trim(), "", "keys left behind");
}
