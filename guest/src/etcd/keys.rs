//! Who a unit is in etcd and where its data lives (spec/etcd.md §3.2, §3.3, §5.1, §5.2).

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The keys of one owner in one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// `/rollingops/default/<cluster>/`: the relation `resource` and permission scope.
    pub cluster_prefix: String,
    /// The lock key shared by every unit of every application on the cluster.
    pub lock: String,
    /// Ops waiting to run.
    pub pending: String,
    /// The op the worker claimed.
    pub inprogress: String,
    /// The op executed and awaiting post-processing.
    pub completed: String,
    /// Prefix of the waiters' registrations (one key per waiting owner), through which a
    /// releasing unit hands the lock straight to the longest-waiting one (see
    /// [`crate::etcd::handoff`]). Not part of the reference's layout; it ignores these keys.
    pub waiting: String,
}

impl Keys {
    /// Keys for `owner` in `cluster_id` (used verbatim, not escaped).
    pub fn new(cluster_id: &str, owner: &str) -> Self {
        let cluster_prefix = format!("/rollingops/default/{cluster_id}/");
        Keys {
            lock: format!("{cluster_prefix}granted-unit/"),
            pending: format!("{cluster_prefix}{owner}/pending/"),
            inprogress: format!("{cluster_prefix}{owner}/inprogress/"),
            completed: format!("{cluster_prefix}{owner}/completed/"),
            waiting: format!("{cluster_prefix}waiting/"),
            cluster_prefix,
        }
    }
}

impl Keys {
    /// The registration key of `owner` while it waits for the lock.
    pub fn waiting_entry(&self, owner: &str) -> String {
        format!("{}{owner}", self.waiting)
    }

    /// The in-progress key of `owner`'s op `op_id` (any owner in this cluster).
    pub fn inprogress_of(&self, owner: &str, op_id: &str) -> String {
        format!("{}{owner}/inprogress/{op_id}", self.cluster_prefix)
    }
}

/// The async owner: `<model_uuid>-<unit_name>` with `/` replaced by `-`.
pub fn owner(model_uuid: &str, unit_name: &str) -> String {
    format!("{model_uuid}-{unit_name}").replace('/', "-")
}

/// The sync-lock owner of the same unit.
pub fn sync_owner(model_uuid: &str, unit_name: &str) -> String {
    format!("{}:sync", owner(model_uuid, unit_name))
}

/// The relation request id: the first 16 hex digits of sha256(`<resource>:<salt>`).
pub fn request_id(resource: &str, salt: &str) -> String {
    let digest = Sha256::digest(format!("{resource}:{salt}").as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

const SHORTUUID_ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// The client certificate's Common Name: `shortuuid.uuid(name=<model_uuid>-<app>)`, i.e.
/// UUIDv5 in the DNS namespace, encoded most significant digit first in the 57-symbol
/// alphabet and left-padded with `2` to 22 characters.
pub fn common_name(model_uuid: &str, app_name: &str) -> String {
    shortuuid(uuid_v5_dns(&format!("{model_uuid}-{app_name}")))
}

/// UUIDv5 of `name` in the DNS namespace, as a 128-bit integer.
pub fn uuid_v5_dns(name: &str) -> u128 {
    const DNS_NAMESPACE: [u8; 16] = [
        0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30,
        0xc8,
    ];
    let mut hasher = Sha1::new();
    hasher.update(DNS_NAMESPACE);
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    u128::from_be_bytes(bytes)
}

fn shortuuid(mut value: u128) -> String {
    let base = SHORTUUID_ALPHABET.len() as u128;
    let mut digits = Vec::new();
    while value > 0 {
        digits.push(SHORTUUID_ALPHABET[(value % base) as usize]);
        value /= base;
    }
    while digits.len() < 22 {
        digits.push(b'2');
    }
    digits.reverse();
    String::from_utf8(digits).expect("alphabet is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "f1d2c3b4-0000-4000-8000-123456789abc";

    #[test]
    fn s12_uuid_and_common_names() {
        let uuid = uuid_v5_dns(&format!("{MODEL}-myapp"));
        assert_eq!(format!("{uuid:032x}"), "9a675160618d5a7eb2a0dd38b64de7f9");
        assert_eq!(common_name(MODEL, "myapp"), "VUtRzu9SC3Zp9GqQonvEy9");
        assert_eq!(
            common_name("model-uuid-1234", "myapp"),
            "bmMQVosN2RCkT6dhyJbRPf"
        );
    }

    #[test]
    fn s12_owner_and_keys() {
        let owner = owner(MODEL, "myapp/0");
        assert_eq!(owner, "f1d2c3b4-0000-4000-8000-123456789abc-myapp-0");
        assert_eq!(sync_owner(MODEL, "myapp/0"), format!("{owner}:sync"));
        let keys = Keys::new("cid", &owner);
        assert_eq!(keys.lock, "/rollingops/default/cid/granted-unit/");
        assert_eq!(
            keys.pending,
            format!("/rollingops/default/cid/{owner}/pending/")
        );
    }

    #[test]
    fn s10_1_key_paths_and_shared_lock() {
        let one = Keys::new("cluster-a", "unit-1");
        let two = Keys::new("cluster-a", "unit-2");
        assert_eq!(one.cluster_prefix, "/rollingops/default/cluster-a/");
        assert_eq!(
            one.inprogress,
            "/rollingops/default/cluster-a/unit-1/inprogress/"
        );
        assert_eq!(
            one.completed,
            "/rollingops/default/cluster-a/unit-1/completed/"
        );
        assert_eq!(one.lock, two.lock);
        assert_ne!(one.pending, two.pending);
    }

    #[test]
    fn s12_request_id() {
        assert_eq!(
            request_id("/rollingops/default/cluster-12345/", "9yeEUXhRVEMnJ8Nz"),
            "c16f08d1bf66d60a"
        );
    }
}
