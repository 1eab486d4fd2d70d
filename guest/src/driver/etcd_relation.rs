//! The driver's side of the etcd relation flows (`manager::etcd_relation`): read the
//! relation and the files it governs before the manager is built, and carry out its
//! [`RelationCommand`]s.

use super::{BagOwner, Effects};
use crate::error::Error;
use crate::etcd::config::{ETCDCTL_JSON, SERVER_CA};
use crate::manager::etcd_relation::{CLIENT_CA, CLIENT_CERT, CLIENT_KEY, SALT_RANDOM_BYTES};
use crate::manager::{EtcdRelation, LocalFiles, LogLevel, Manager, RelationCommand};

/// The etcd relation on `endpoint` and the files under `base_dir`. Failed reads are logged
/// and left out (`None`), so a broken relation or file never fails a hook that does not
/// need it.
pub(super) fn load(
    fx: &mut impl Effects,
    endpoint: &str,
    unit: &str,
    leader: bool,
) -> Result<EtcdRelation, Error> {
    let relation_id = fx.relation_ids(endpoint)?.first().copied();
    let files = LocalFiles {
        client_cert: read_text(fx, CLIENT_CERT),
        client_key: read_text(fx, CLIENT_KEY),
        client_ca: read_text(fx, CLIENT_CA),
        server_ca: read_text(fx, SERVER_CA),
        etcdctl_json: read_text(fx, ETCDCTL_JSON),
    };
    let mut relation = EtcdRelation {
        relation_id,
        files,
        ..EtcdRelation::default()
    };
    let Some(relation_id) = relation_id else {
        return Ok(relation);
    };
    relation.local_unit = logged(fx, "this unit's etcd relation bag", |fx| {
        fx.relation_get(relation_id, BagOwner::Unit(unit))
    });
    relation.remote_app = logged(fx, "the etcd provider's bag", |fx| {
        fx.relation_get_remote_app(relation_id)
    });
    if leader {
        relation.local_app = logged(fx, "the etcd relation's application bag", |fx| {
            fx.relation_get(relation_id, BagOwner::App)
        });
        let mut random = vec![0u8; SALT_RANDOM_BYTES];
        match fx.random_bytes(&mut random) {
            Ok(()) => relation.random = random,
            Err(e) => fx.log(LogLevel::Warning, &format!("{e}")),
        }
    }
    Ok(relation)
}

/// A file's text; a file that cannot be read counts as missing (logged).
fn read_text(fx: &mut impl Effects, path: &str) -> Option<String> {
    logged(fx, path, |fx| fx.read_file(path))
        .flatten()
        .map(|data| String::from_utf8_lossy(&data).into_owned())
}

fn logged<E: Effects, T>(
    fx: &mut E,
    what: &str,
    read: impl FnOnce(&mut E) -> Result<T, Error>,
) -> Option<T> {
    match read(fx) {
        Ok(value) => Some(value),
        Err(e) => {
            fx.log(LogLevel::Warning, &format!("Could not read {what}: {e}"));
            None
        }
    }
}

/// Carry out one command and hand its outcome to the manager. File errors and the
/// manager's verdicts (an invalid shared secret) fail the hook.
pub(super) fn carry_out(
    manager: &mut Manager,
    fx: &mut impl Effects,
    command: RelationCommand,
) -> Result<(), Error> {
    match command {
        RelationCommand::GetSecret {
            label_or_id,
            purpose,
        } => {
            let found = fx.secret_get(&label_or_id);
            manager.handle_secret(purpose, found)
        }
        RelationCommand::GenerateIdentity { common_name } => {
            let identity = fx.generate_client_identity(&common_name);
            manager.handle_identity(identity)
        }
        RelationCommand::AddSecret {
            label,
            content,
            purpose,
        } => {
            let id = fx.secret_add(&label, &content);
            manager.handle_secret_added(purpose, id)
        }
        RelationCommand::GrantSecret { id, request } => {
            let granted = fx.secret_grant(&id, request.relation_id);
            manager.handle_secret_granted(&id, request, granted)
        }
        RelationCommand::WriteFile { path, data, mode } => fx
            .write_file(&path, data.as_bytes(), mode)
            .map_err(|e| file_error(&path, e)),
        RelationCommand::RemoveFile { path } => {
            fx.remove_file(&path).map_err(|e| file_error(&path, e))
        }
    }
}

fn file_error(path: &str, error: Error) -> Error {
    match error {
        Error::FileSystem(_) => error,
        other => Error::FileSystem(format!("{path}: {}", other.message())),
    }
}
