//! This unit's etcd worker as an OS process: `rollingops worker`, started detached from the
//! hook that asked for it, one per unit. The worker holds an exclusive lock on
//! [`WORKER_LOCK`] under `base_dir` for as long as it runs, so "is a worker running" is a
//! question to the kernel, not a stored PID (spec/etcd.md §11 item 10), and a second worker
//! started by a race exits at once.

use std::fs::{File, TryLockError};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The lock file the running worker holds, under `base_dir`.
pub const WORKER_LOCK: &str = "etcd/worker.lock";
/// Left by every start request before it checks the lock; a worker about to exit runs
/// again when it finds one, so a request that came while it was finishing is not lost
/// (the Python host uses the same file).
pub const WORKER_WANTED: &str = "etcd/worker-wanted";

/// Leave a start request (see [`WORKER_WANTED`]).
pub fn request_worker(base_dir: &Path) -> std::io::Result<()> {
    let path = base_dir.join(WORKER_WANTED);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, b"wanted\n")
}

/// Take a start request if there is one.
pub fn take_request(base_dir: &Path) -> bool {
    std::fs::remove_file(base_dir.join(WORKER_WANTED)).is_ok()
}

/// The worker's log file under `base_dir` (stdout and stderr of a detached worker).
pub const WORKER_LOG: &str = "rollingops_worker.log";

/// What a worker needs to run: its program (a `rollingops` binary) and the charm's
/// rolling-ops configuration, as `rollingops worker` flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerLaunch {
    /// The `rollingops` binary.
    pub program: PathBuf,
    /// The peer relation's endpoint.
    pub peer_relation: String,
    /// The etcd relation's endpoint.
    pub etcd_relation: Option<String>,
    /// The etcd lock scope.
    pub cluster_id: Option<String>,
}

impl WorkerLaunch {
    /// The `rollingops worker` arguments for `base_dir`.
    pub fn args(&self, base_dir: &Path) -> Vec<String> {
        let mut args = vec![
            "worker".to_string(),
            "--peer-relation".into(),
            self.peer_relation.clone(),
            "--base-dir".into(),
            base_dir.to_string_lossy().into_owned(),
        ];
        if let Some(etcd) = &self.etcd_relation {
            args.extend(["--etcd-relation".into(), etcd.clone()]);
        }
        if let Some(cluster) = &self.cluster_id {
            args.extend(["--cluster-id".into(), cluster.clone()]);
        }
        args
    }
}

/// Take the unit's worker lock if it is free: `Some(file)` holds it until dropped, `None`
/// means a worker runs.
pub fn take_worker_lock(base_dir: &Path) -> std::io::Result<Option<File>> {
    let path = base_dir.join(WORKER_LOCK);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Whether this unit's worker runs (someone holds the worker lock).
pub fn worker_running(base_dir: &Path) -> std::io::Result<bool> {
    Ok(take_worker_lock(base_dir)?.is_none())
}

/// Start `program args…` in a new session, outside the hook (no `JUJU_CONTEXT_ID`, so hook
/// tools are not bound to this hook), output appended to `<base_dir>/rollingops_worker.log`.
/// Returns its pid; the child is not waited for.
pub fn spawn_detached(program: &Path, args: &[String], base_dir: &Path) -> std::io::Result<u32> {
    std::fs::create_dir_all(base_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(base_dir.join(WORKER_LOG))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_remove("JUJU_CONTEXT_ID")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: `setsid` is async-signal-safe; the child only leaves our session.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command.spawn()?.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_lock_is_exclusive_while_held() {
        let base = std::env::temp_dir().join(format!("rollingops-wlock-{}", std::process::id()));
        let held = take_worker_lock(&base).unwrap().expect("free at first");
        assert!(worker_running(&base).unwrap());
        assert!(take_worker_lock(&base).unwrap().is_none());
        drop(held);
        assert!(!worker_running(&base).unwrap());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_start_request_is_taken_once() {
        let base = std::env::temp_dir().join(format!("rollingops-wreq-{}", std::process::id()));
        assert!(!take_request(&base), "no request yet");
        request_worker(&base).unwrap();
        request_worker(&base).unwrap();
        assert!(take_request(&base));
        assert!(!take_request(&base), "requests do not pile up");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn args_carry_the_configuration() {
        let launch = WorkerLaunch {
            program: "/charm/usr/bin/rollingops".into(),
            peer_relation: "restart".into(),
            etcd_relation: Some("etcd".into()),
            cluster_id: Some("c 1".into()),
        };
        assert_eq!(
            launch.args(Path::new("/var/lib/rollingops")),
            [
                "worker",
                "--peer-relation",
                "restart",
                "--base-dir",
                "/var/lib/rollingops",
                "--etcd-relation",
                "etcd",
                "--cluster-id",
                "c 1"
            ]
        );
    }
}
