//! `rollingops worker`: the long-lived worker process, which runs the component's
//! `run-worker` loop (etcd mode). A charm starts it detached (`--detach`); in peer mode
//! the component answers at once with `RollingOpsEtcdNotConfiguredError`, which this
//! command reports and exits non-zero on.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Context;
use clap::Parser;

use crate::Config;
use crate::charm::DEFAULT_BASE_DIR;
use crate::juju::{JujuEnv, JujuHost, NoCharmCode};
use crate::runtime::{Runtime, Session};
use crate::sandbox::Sandbox;

/// The worker's log file under `base_dir` (stdout and stderr of a detached worker).
pub const WORKER_LOG: &str = "rollingops_worker.log";

const AFTER_HELP: &str = "Examples:
  rollingops worker --peer-relation restart --etcd-relation etcd --cluster-id c1
  rollingops worker --peer-relation restart --detach     start it in the background

With --detach the worker starts in a new session with its output appended to
<base-dir>/rollingops_worker.log, and this command returns at once with its pid.";

/// Run the worker loop.
#[derive(Debug, Parser)]
#[command(after_help = AFTER_HELP)]
pub struct WorkerCommand {
    /// The peer relation's endpoint name.
    #[arg(long, value_name = "ENDPOINT")]
    pub peer_relation: String,
    /// The etcd relation's endpoint name (etcd mode).
    #[arg(long, value_name = "ENDPOINT")]
    pub etcd_relation: Option<String>,
    /// The etcd lock scope (etcd mode).
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// The library's runtime directory.
    #[arg(long, default_value = DEFAULT_BASE_DIR)]
    pub base_dir: PathBuf,
    /// Start the worker detached and return its pid.
    #[arg(long)]
    pub detach: bool,
}

impl WorkerCommand {
    /// Run the loop (or start it detached).
    pub fn execute(self) -> anyhow::Result<bool> {
        if self.detach {
            let pid = self.spawn_detached()?;
            println!("{pid}");
            return Ok(true);
        }
        let env = JujuEnv::from_env().map_err(anyhow::Error::msg)?;
        let runtime = Runtime::new(Some(&self.base_dir))?;
        let config = Config {
            peer_relation_name: self.peer_relation.clone(),
            etcd_relation_name: self.etcd_relation.clone(),
            cluster_id: self.cluster_id.clone(),
            base_dir: self.base_dir.to_string_lossy().into_owned(),
            callback_ids: vec![],
            sync_lock_ids: vec![],
        };
        let sandbox = Sandbox::new(env.charm_dir.clone(), self.base_dir.clone());
        let host = JujuHost::new(env, self.base_dir.clone(), Box::new(NoCharmCode));
        let mut session = Session::new(&runtime, Box::new(host), sandbox, &config)?;
        session
            .run_worker()
            .context("the rollingops worker stopped")?;
        Ok(true)
    }

    fn spawn_detached(&self) -> anyhow::Result<u32> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().context("locating the rollingops binary")?;
        std::fs::create_dir_all(&self.base_dir)
            .with_context(|| format!("creating {}", self.base_dir.display()))?;
        let log_path = self.base_dir.join(WORKER_LOG);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = Command::new(exe);
        command
            .arg("worker")
            .arg("--peer-relation")
            .arg(&self.peer_relation)
            .arg("--base-dir")
            .arg(&self.base_dir);
        if let Some(etcd) = &self.etcd_relation {
            command.arg("--etcd-relation").arg(etcd);
        }
        if let Some(cluster) = &self.cluster_id {
            command.arg("--cluster-id").arg(cluster);
        }
        command
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
        let child = command.spawn().context("starting the worker")?;
        Ok(child.id())
    }
}
