//! One module per `rollingops` subcommand.

pub mod bench;
pub mod bridge;
pub mod control;
pub mod simulate;
pub mod status;
pub mod worker;

use std::path::Path;

use crate::Config;
use crate::juju::{JujuEnv, JujuHost, NoCharmCode};
use crate::runtime::{Runtime, Session};
use crate::sandbox::Sandbox;

/// A session in this unit's hook context (`juju exec`, `juju-exec`, a hook), without charm
/// code: what `status` and `control` read and steer the relation through. Also returns the
/// unit's name.
pub fn hook_context_session(
    peer_relation: &str,
    base_dir: &Path,
) -> anyhow::Result<(Session, String)> {
    let env = JujuEnv::from_env().map_err(anyhow::Error::msg)?;
    let runtime = Runtime::new(Some(base_dir))?;
    let config = Config {
        peer_relation_name: peer_relation.to_string(),
        etcd_relation_name: None,
        cluster_id: None,
        base_dir: base_dir.to_string_lossy().into_owned(),
        callback_ids: vec![],
        sync_lock_ids: vec![],
    };
    let sandbox = Sandbox::new(env.charm_dir.clone(), base_dir.to_path_buf());
    let unit = env.unit_name.clone();
    let host = JujuHost::new(env, base_dir.to_path_buf(), Box::new(NoCharmCode));
    let session = Session::new(&runtime, Box::new(host), sandbox, &config)?;
    Ok((session, unit))
}
