//! `rollingops control`: the operator's levers — pause and resume grants, release a stuck
//! lock, cancel a unit's queued operations — from a unit's hook context, so an operator can
//! act without the charm wiring actions (`juju exec --unit app/leader -- rollingops …`).
//! The component decides what each lever may do (leader only, wire rule); this command only
//! carries the request.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::Control;
use crate::charm::DEFAULT_BASE_DIR;

const AFTER_HELP: &str = "Examples:
  juju exec --unit app/leader -- rollingops control --peer-relation restart pause --reason 'db maintenance'
  juju exec --unit app/leader -- rollingops control --peer-relation restart resume
  juju exec --unit app/leader -- rollingops control --peer-relation restart force-release --unit app/3
  juju exec --unit app/2 -- rollingops control --peer-relation restart cancel --callback restart

pause, resume and force-release run on the leader; cancel runs on the unit whose queue it
edits. A force-released holder's grant generation becomes stale: a callback that still
runs there should be fenced by the generation it was given.";

/// Pause, resume, force-release, cancel.
#[derive(Debug, Parser)]
#[command(after_help = AFTER_HELP)]
pub struct ControlCommand {
    /// The peer relation's endpoint name, as in the charm's metadata.
    #[arg(long, value_name = "ENDPOINT")]
    pub peer_relation: String,
    /// The library's runtime directory (component cache).
    #[arg(long, default_value = DEFAULT_BASE_DIR)]
    pub base_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub lever: Lever,
}

/// One operator lever.
#[derive(Debug, Subcommand)]
pub enum Lever {
    /// Stop granting the lock; holders finish their turn (leader only).
    Pause {
        /// Why, shown by `rollingops status`.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Grant the lock again (leader only).
    Resume,
    /// End a grant whose holder is stuck or gone (leader only).
    ForceRelease {
        /// The holder to release; every holder when omitted.
        #[arg(long)]
        unit: Option<String>,
    },
    /// Drop this unit's queued operations that have not started.
    Cancel {
        /// Only operations of this callback.
        #[arg(long)]
        callback: Option<String>,
    },
}

impl Lever {
    /// The component's control.
    pub fn control(&self) -> Control {
        match self {
            Lever::Pause { reason } => Control::Pause(reason.clone()),
            Lever::Resume => Control::Resume,
            Lever::ForceRelease { unit } => Control::ForceRelease(unit.clone()),
            Lever::Cancel { callback } => Control::Cancel(callback.clone()),
        }
    }

    /// A sentence about what happened.
    pub fn outcome(&self, changed: u32) -> String {
        match (self, changed) {
            (Lever::Pause { .. }, 0) => "already paused".into(),
            (Lever::Pause { .. }, _) => "paused: no new grants until resumed".into(),
            (Lever::Resume, 0) => "was not paused".into(),
            (Lever::Resume, _) => "resumed".into(),
            (Lever::ForceRelease { .. }, n) => format!("released {n} grant(s)"),
            (Lever::Cancel { .. }, n) => format!("cancelled {n} queued operation(s)"),
        }
    }
}

impl ControlCommand {
    /// Apply the lever in this unit's hook context.
    pub fn execute(self) -> anyhow::Result<bool> {
        let (mut session, unit) = super::hook_context_session(&self.peer_relation, &self.base_dir)?;
        let changed = session
            .control(&self.lever.control())
            .with_context(|| format!("on {unit}"))?;
        println!("{unit}: {}", self.lever.outcome(changed));
        Ok(true)
    }
}
