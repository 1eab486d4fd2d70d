//! `rollingops worker`: the long-lived worker process, which runs the component's
//! `run-worker` loop (etcd mode). A charm starts it detached (`--detach`); in peer mode
//! the component answers at once with `RollingOpsEtcdNotConfiguredError`, which this
//! command reports and exits non-zero on.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use crate::Config;
use crate::charm::DEFAULT_BASE_DIR;
use crate::juju::{JujuEnv, JujuHost, NoCharmCode};
use crate::runtime::{Runtime, Session};
use crate::sandbox::Sandbox;
use crate::worker_process::{self, WorkerLaunch};

pub use crate::worker_process::WORKER_LOG;

const AFTER_HELP: &str = "Examples:
  rollingops worker --peer-relation restart --etcd-relation etcd --cluster-id c1
  rollingops worker --peer-relation restart --detach     start it in the background

With --detach the worker starts in a new session with its output appended to
<base-dir>/rollingops_worker.log, and this command returns at once with its pid.
Only one worker runs per base-dir: it holds <base-dir>/etcd/worker.lock while it runs,
and a second one exits at once.";

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
        // One worker per unit: it holds the worker lock for as long as it runs. A start
        // request left while it was finishing makes it run again.
        loop {
            let Some(lock) = worker_process::take_worker_lock(&self.base_dir)
                .with_context(|| format!("locking {}", self.base_dir.display()))?
            else {
                eprintln!("rollingops worker: this unit's worker is already running; exiting.");
                return Ok(true);
            };
            worker_process::take_request(&self.base_dir);
            self.run_once()?;
            drop(lock);
            if !worker_process::take_request(&self.base_dir) {
                return Ok(true);
            }
            eprintln!("rollingops worker: a start request came while finishing; running again.");
        }
    }

    fn run_once(&self) -> anyhow::Result<()> {
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
        Ok(())
    }

    fn spawn_detached(&self) -> anyhow::Result<u32> {
        let exe = std::env::current_exe().context("locating the rollingops binary")?;
        let launch = WorkerLaunch {
            program: exe.clone(),
            peer_relation: self.peer_relation.clone(),
            etcd_relation: self.etcd_relation.clone(),
            cluster_id: self.cluster_id.clone(),
        };
        worker_process::spawn_detached(&exe, &launch.args(&self.base_dir), &self.base_dir)
            .with_context(|| format!("starting the worker under {}", self.base_dir.display()))
    }
}
