//! spec/etcd.md §10.1 (test_etcd_certificates.py, test_etcd_etcdctl.py, the certificate rows
//! of test_etcd_rollingops_in_charm.py), §12's request vector, and the §11 fixes (items 12,
//! 13, 14, 15, 24), over an in-memory model: a peer relation (id 1), an etcd relation (id
//! 2) with a provider, app secrets, and one `base_dir` per unit.

use std::collections::BTreeMap;

use serde_json::Value;

use super::*;
use crate::driver::{self, BagOwner, Effects};
use crate::error::Error;
use crate::etcd::config::{ETCDCTL_JSON, SERVER_CA, environment};
use crate::etcd::worker::STOP_FILE;
use crate::manager::{CallbackOutcome, Config, Event, LogLevel, SyncBackendError};
use crate::timestamp::Timestamp;
use crate::wire::Bag;

const MODEL: &str = "f1d2c3b4-0000-4000-8000-123456789abc";
const BASE: &str = "/var/lib/rollingops";
const RESOURCE: &str = "/rollingops/default/cluster-12345/";
const PEER: u32 = 1;
const ETCD: u32 = 2;

#[derive(Clone, Debug)]
struct Secret {
    label: Option<String>,
    content: Bag,
}

#[derive(Default)]
struct World {
    /// Peer relation bags: "app" and unit names.
    peer: BTreeMap<String, Bag>,
    /// Whether the etcd relation exists (as `relation-ids` shows it).
    etcd_relation: bool,
    /// Our application's bag on the etcd relation.
    etcd_app: Bag,
    /// Our units' bags on the etcd relation.
    etcd_units: BTreeMap<String, Bag>,
    /// The provider's application bag.
    provider: Bag,
    secrets: BTreeMap<String, Secret>,
    grants: Vec<(String, u32)>,
    /// Files per unit: unit → path → (content, mode).
    files: BTreeMap<String, BTreeMap<String, (String, u32)>>,
    generated: u32,
    secret_reads: u32,
    file_writes: Vec<String>,
    /// Bytes `random_bytes` returns (cycled).
    random: Vec<u8>,
    /// Whether key generation fails.
    no_crypto: bool,
}

struct Unit<'a> {
    world: &'a mut World,
    name: &'static str,
    leader: bool,
    logs: Vec<(LogLevel, String)>,
}

impl World {
    fn new() -> World {
        World {
            random: salt_bytes("9yeEUXhRVEMnJ8Nz"),
            ..World::default()
        }
    }

    fn unit(&mut self, name: &'static str, leader: bool) -> Unit<'_> {
        Unit {
            world: self,
            name,
            leader,
            logs: vec![],
        }
    }

    fn leader(&mut self) -> Unit<'_> {
        self.unit("app/0", true)
    }

    fn follower(&mut self) -> Unit<'_> {
        self.unit("app/1", false)
    }

    fn file(&self, unit: &str, path: &str) -> Option<&str> {
        self.files
            .get(unit)
            .and_then(|f| f.get(path))
            .map(|(c, _)| c.as_str())
    }

    fn mode(&self, unit: &str, path: &str) -> Option<u32> {
        self.files
            .get(unit)
            .and_then(|f| f.get(path))
            .map(|(_, m)| *m)
    }

    fn put_file(&mut self, unit: &str, path: &str, content: &str) {
        self.files
            .entry(unit.into())
            .or_default()
            .insert(path.into(), (content.into(), 0o644));
    }

    fn shared_id(&self) -> Option<String> {
        self.peer
            .get("app")
            .and_then(|b| b.get(CLIENT_SECRET_ID))
            .cloned()
    }

    fn add_secret(&mut self, label: Option<&str>, content: &[(&str, &str)]) -> String {
        let id = format!("secret:s{}", self.secrets.len() + 1);
        self.secrets.insert(
            id.clone(),
            Secret {
                label: label.map(Into::into),
                content: content
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        );
        id
    }

    fn share(&mut self, identity: &ClientIdentity) -> String {
        let content = identity.to_secret();
        let pairs: Vec<(&str, &str)> = content
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let id = self.add_secret(Some(CLIENT_SECRET_LABEL), &pairs);
        self.peer
            .entry("app".into())
            .or_default()
            .insert(CLIENT_SECRET_ID.into(), id.clone());
        id
    }

    /// The provider's answer to our request, as charmed-etcd writes it.
    fn provide(&mut self, endpoints: &str, tls_ca: Option<&str>) -> String {
        let tls = self.add_secret(
            None,
            &match tls_ca {
                Some(ca) => vec![("tls-ca", ca)],
                None => vec![],
            },
        );
        let user = self.add_secret(None, &[("username", "VUtRzu9SC3Zp9GqQonvEy9")]);
        let request = self.request();
        let request_id = request["request-id"].as_str().unwrap().to_string();
        self.provider.insert(
            "requests".into(),
            serde_json::json!([{
                "resource": RESOURCE,
                "request-id": request_id,
                "salt": request["salt"],
                "endpoints": endpoints,
                "secret-user": user,
                "secret-tls": tls,
                "version": "3.6.10",
                "username": null,
            }])
            .to_string(),
        );
        self.provider.insert(
            "data".into(),
            serde_json::json!({request_id: request}).to_string(),
        );
        tls
    }

    /// The one request in our etcd app bag.
    fn request(&self) -> serde_json::Map<String, Value> {
        let requests: Value = serde_json::from_str(&self.etcd_app["requests"]).unwrap();
        requests[0].as_object().unwrap().clone()
    }
}

impl Effects for Unit<'_> {
    fn unit_name(&mut self) -> String {
        self.name.into()
    }
    fn model_uuid(&mut self) -> String {
        MODEL.into()
    }
    fn is_leader(&mut self) -> Result<bool, Error> {
        Ok(self.leader)
    }
    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, Error> {
        Ok(match endpoint {
            "restart" => vec![PEER],
            "etcd" if self.world.etcd_relation => vec![ETCD],
            _ => vec![],
        })
    }
    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, Error> {
        Ok(if relation_id == PEER {
            ["app/0", "app/1"]
                .into_iter()
                .filter(|u| *u != self.name)
                .map(Into::into)
                .collect()
        } else {
            vec!["etcd/0".into()]
        })
    }
    fn relation_get(&mut self, relation_id: u32, owner: BagOwner<'_>) -> Result<Bag, Error> {
        let world = &self.world;
        Ok(match (relation_id, owner) {
            (PEER, BagOwner::App) => world.peer.get("app").cloned().unwrap_or_default(),
            (PEER, BagOwner::Unit(u)) => world.peer.get(u).cloned().unwrap_or_default(),
            (ETCD, BagOwner::App) if self.leader => world.etcd_app.clone(),
            (ETCD, BagOwner::App) => return Err(Error::Host("permission denied".into())),
            (ETCD, BagOwner::Unit(u)) => world.etcd_units.get(u).cloned().unwrap_or_default(),
            _ => return Err(Error::Host("no such relation".into())),
        })
    }
    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), Error> {
        let bag = match (relation_id, app) {
            (PEER, true) => self.world.peer.entry("app".into()).or_default(),
            (PEER, false) => self.world.peer.entry(self.name.into()).or_default(),
            (ETCD, true) => &mut self.world.etcd_app,
            (ETCD, false) => self.world.etcd_units.entry(self.name.into()).or_default(),
            _ => return Err(Error::Host("no such relation".into())),
        };
        assert!(!app || self.leader, "only the leader writes app bags");
        for (k, v) in pairs {
            if v.is_empty() {
                bag.remove(k);
            } else {
                bag.insert(k.clone(), v.clone());
            }
        }
        Ok(())
    }
    fn relation_get_remote_app(&mut self, relation_id: u32) -> Result<Bag, Error> {
        assert_eq!(relation_id, ETCD);
        Ok(self.world.provider.clone())
    }
    fn secret_get(&mut self, label_or_id: &str) -> Result<Option<Bag>, Error> {
        self.world.secret_reads += 1;
        Ok(self
            .world
            .secrets
            .iter()
            .find(|(id, s)| *id == label_or_id || s.label.as_deref() == Some(label_or_id))
            .map(|(_, s)| s.content.clone()))
    }
    fn secret_add(&mut self, label: &str, content: &[(String, String)]) -> Result<String, Error> {
        assert!(self.leader, "only the leader adds app secrets");
        if self
            .world
            .secrets
            .values()
            .any(|s| s.label.as_deref() == Some(label))
        {
            return Err(Error::Host(format!("secret with label {label} exists")));
        }
        let pairs: Vec<(&str, &str)> = content
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Ok(self.world.add_secret(Some(label), &pairs))
    }
    fn secret_grant(&mut self, id: &str, relation_id: u32) -> Result<(), Error> {
        self.world.grants.push((id.into(), relation_id));
        Ok(())
    }
    fn generate_client_identity(&mut self, common_name: &str) -> Result<ClientIdentity, Error> {
        if self.world.no_crypto {
            return Err(Error::Host("no crypto here".into()));
        }
        self.world.generated += 1;
        Ok(identity(&format!("{common_name}-{}", self.world.generated)))
    }
    fn random_bytes(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        for (b, r) in buf.iter_mut().zip(self.world.random.iter().cycle()) {
            *b = *r;
        }
        Ok(())
    }
    fn log(&mut self, level: LogLevel, message: &str) {
        self.logs.push((level, message.into()));
    }
    fn dispatch(&mut self, _: &str) -> Result<(), Error> {
        Ok(())
    }
    fn now(&mut self) -> Timestamp {
        Timestamp::from_micros(1_777_636_800_000_000)
    }
    fn run_callback(&mut self, _: &str, _: &str) -> CallbackOutcome {
        CallbackOutcome::Returned(None)
    }
    fn sync_backend_acquire(&mut self, _: &str, _: Option<u32>) -> Result<(), SyncBackendError> {
        Ok(())
    }
    fn sync_backend_release(&mut self, _: &str) -> Result<(), SyncBackendError> {
        Ok(())
    }
    fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .world
            .file(self.name, path)
            .map(|c| c.as_bytes().to_vec()))
    }
    fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<(), Error> {
        self.world.file_writes.push(format!("{}:{path}", self.name));
        self.world
            .files
            .entry(self.name.into())
            .or_default()
            .insert(
                path.into(),
                (String::from_utf8(data.to_vec()).unwrap(), mode),
            );
        Ok(())
    }
    fn remove_file(&mut self, path: &str) -> Result<(), Error> {
        if let Some(files) = self.world.files.get_mut(self.name) {
            files.remove(path);
        }
        Ok(())
    }
    fn start_worker(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

fn config() -> Config {
    Config {
        peer_relation_name: "restart".into(),
        etcd_relation_name: Some("etcd".into()),
        cluster_id: Some("cluster-12345".into()),
        base_dir: BASE.into(),
        callback_ids: vec!["_restart".into()],
        sync_lock_ids: vec![],
    }
}

fn identity(tag: &str) -> ClientIdentity {
    let pem = |label: &str, body: &str| {
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    };
    ClientIdentity {
        ca_cert: pem("CERTIFICATE", &format!("ca-{tag}")),
        client_cert: pem("CERTIFICATE", &format!("cert-{tag}")),
        client_key: pem("RSA PRIVATE KEY", &format!("key-{tag}")),
    }
}

/// Bytes that `salt` maps to exactly `text`.
fn salt_bytes(text: &str) -> Vec<u8> {
    text.bytes()
        .map(|c| SALT_ALPHABET.iter().position(|a| *a == c).unwrap() as u8)
        .collect()
}

fn run(unit: &mut Unit<'_>, event: Event) -> Result<(), Error> {
    run_with(unit, config(), event)
}

fn run_with(unit: &mut Unit<'_>, config: Config, event: Event) -> Result<(), Error> {
    let mut manager = driver::load(config, unit)?;
    driver::handle_event(&mut manager, unit, event)
}

fn files_of(world: &World, unit: &str) -> Option<ClientIdentity> {
    Some(ClientIdentity {
        ca_cert: world.file(unit, CLIENT_CA)?.into(),
        client_cert: world.file(unit, CLIENT_CERT)?.into(),
        client_key: world.file(unit, CLIENT_KEY)?.into(),
    })
}

// -------------------------------------------------------------------------------------
// §12 and the wire format

#[test]
fn s12_request_json_and_request_id_vector() {
    assert_eq!(salt(&salt_bytes("9yeEUXhRVEMnJ8Nz")), "9yeEUXhRVEMnJ8Nz");
    let request_id = keys::request_id(RESOURCE, "9yeEUXhRVEMnJ8Nz");
    assert_eq!(request_id, "c16f08d1bf66d60a");
    assert_eq!(
        request_json(RESOURCE, &request_id, "9yeEUXhRVEMnJ8Nz", "secret:d1b0k3"),
        "[{\"resource\": \"/rollingops/default/cluster-12345/\", \"request-id\": \
         \"c16f08d1bf66d60a\", \"salt\": \"9yeEUXhRVEMnJ8Nz\", \"extra-user-roles\": null, \
         \"extra-group-roles\": null, \"external-node-connectivity\": false, \"entity-type\": \
         null, \"entity-permissions\": null, \"secret-mtls\": \"secret:d1b0k3\"}]"
    );
}

#[test]
fn salts_are_alphanumeric_and_use_every_byte_fairly() {
    let bytes: Vec<u8> = (0..=255).collect();
    let s = salt(&bytes);
    assert_eq!(s.len(), 16);
    assert!(s.chars().all(|c| c.is_ascii_alphanumeric()));
    // Bytes past the last multiple of 62 are skipped (no modulo bias).
    assert_eq!(
        salt(&[250, 251, 0, 1]).chars().take(2).collect::<String>(),
        "AB"
    );
}

#[test]
fn python_json_matches_json_dumps() {
    let value = serde_json::json!({"b": [1, null, true], "a": "é \"q\" \\ \n \u{7f} 😀"});
    assert_eq!(
        python_json(&value),
        r#"{"b": [1, null, true], "a": "\u00e9 \"q\" \\ \n \u007f \ud83d\ude00"}"#
    );
}

#[test]
fn pem_checks() {
    let id = identity("x");
    assert!(looks_like_pem(&id.client_cert, "CERTIFICATE"));
    assert!(looks_like_pem(&id.client_key, "PRIVATE KEY"));
    assert!(!looks_like_pem(&id.client_key, "CERTIFICATE"));
    assert!(!looks_like_pem("garbage", "CERTIFICATE"));
    assert!(!looks_like_pem(
        "-----BEGIN CERTIFICATE-----\nabc\n",
        "CERTIFICATE"
    ));
}

// -------------------------------------------------------------------------------------
// test_etcd_rollingops_in_charm.py: certificate rows

#[test]
fn test_leader_elected_creates_shared_secret_and_stores_id() {
    let mut world = World::new();
    run(&mut world.leader(), Event::LeaderElected).unwrap();
    let id = world.shared_id().expect("secret id stored");
    assert!(id.starts_with("secret:"), "{id}");
    assert_eq!(world.generated, 1);
    let secret = &world.secrets[&id];
    assert_eq!(secret.label.as_deref(), Some(CLIENT_SECRET_LABEL));
    let shared = ClientIdentity::from_secret(&secret.content).unwrap();
    // The CN is the app's short UUID.
    assert!(
        shared
            .client_cert
            .contains(&keys::common_name(MODEL, "app"))
    );
    // test_certificates_manager_persist_client_cert_and_key_writes_files: the raw PEMs.
    assert_eq!(files_of(&world, "app/0"), Some(shared));
    assert_eq!(world.mode("app/0", CLIENT_KEY), Some(0o600));
    assert_eq!(world.mode("app/0", CLIENT_CERT), Some(0o644));
    assert_eq!(world.mode("app/0", CLIENT_CA), Some(0o644));
    assert!(
        world.grants.is_empty(),
        "the shared secret is granted to nobody"
    );
}

#[test]
fn test_leader_elected_does_not_regenerate_when_secret_already_exists() {
    let mut world = World::new();
    let id = world.share(&identity("old"));
    run(&mut world.leader(), Event::LeaderElected).unwrap();
    assert_eq!(world.shared_id(), Some(id));
    assert_eq!(world.generated, 0);
    assert_eq!(world.secrets.len(), 1);
}

#[test]
fn test_non_leader_does_not_create_shared_secret() {
    let mut world = World::new();
    run(&mut world.follower(), Event::PeerRelationChanged).unwrap();
    assert_eq!(world.shared_id(), None);
    assert_eq!(world.generated, 0);
    assert!(world.secrets.is_empty());
}

#[test]
fn test_relation_changed_syncs_local_certificate_from_secret() {
    let mut world = World::new();
    let shared = identity("shared");
    world.share(&shared);
    run(&mut world.follower(), Event::PeerRelationChanged).unwrap();
    assert_eq!(files_of(&world, "app/1"), Some(shared.clone()));
    assert_eq!(world.file_writes.len(), 3);
    assert_eq!(world.mode("app/1", CLIENT_KEY), Some(0o600));
    // test_certificates_manager_has_client_cert_and_key_returns_true_when_material_matches:
    // identical material on disk is not written again.
    run(&mut world.follower(), Event::PeerRelationChanged).unwrap();
    assert_eq!(world.file_writes.len(), 3);
}

#[test]
fn test_invalid_certificate_secret_content_raises() {
    for broken in ["client-cert", "client-key", "client-ca"] {
        let mut world = World::new();
        world.share(&identity("shared"));
        let id = world.shared_id().unwrap();
        world
            .secrets
            .get_mut(&id)
            .unwrap()
            .content
            .insert(broken.into(), String::new());
        let err = run(&mut world.follower(), Event::PeerRelationChanged).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidSecretContent(m) if m.contains(broken)),
            "{err}"
        );
        assert_eq!(files_of(&world, "app/1"), None);
    }
    // A field that is not PEM fails the same way.
    let mut world = World::new();
    world.share(&identity("shared"));
    let id = world.shared_id().unwrap();
    world
        .secrets
        .get_mut(&id)
        .unwrap()
        .content
        .insert("client-key".into(), "not a key".into());
    let err = run(&mut world.follower(), Event::PeerRelationChanged).unwrap_err();
    assert!(matches!(err, Error::InvalidSecretContent(_)));
}

#[test]
fn secret_changed_of_the_shared_secret_syncs_by_label_or_id() {
    let mut world = World::new();
    world.share(&identity("one"));
    let id = world.shared_id().unwrap();
    run(
        &mut world.follower(),
        Event::SecretChanged(CLIENT_SECRET_LABEL.into()),
    )
    .unwrap();
    assert_eq!(files_of(&world, "app/1"), Some(identity("one")));
    let rotated = identity("two");
    world.secrets.get_mut(&id).unwrap().content = rotated.to_secret().into_iter().collect();
    let bare = id.trim_start_matches("secret:").to_string();
    run(&mut world.follower(), Event::SecretChanged(bare)).unwrap();
    assert_eq!(files_of(&world, "app/1"), Some(rotated));
}

#[test]
fn s11_15_the_secret_is_not_read_when_the_manager_is_built_or_in_unrelated_hooks() {
    let mut world = World::new();
    world.share(&identity("shared"));
    let id = world.shared_id().unwrap();
    world.secrets.get_mut(&id).unwrap().content.clear();
    for leader in [false, true] {
        let mut unit = world.unit(if leader { "app/0" } else { "app/1" }, leader);
        let mut manager = driver::load(config(), &mut unit).unwrap();
        driver::state(&mut manager, &mut unit).unwrap();
        for event in [
            Event::UpdateStatus,
            Event::LockGranted,
            Event::LeaderElected,
        ] {
            run(&mut unit, event).unwrap();
        }
    }
    assert_eq!(world.secret_reads, 0);
}

// -------------------------------------------------------------------------------------
// test_etcd_certificates.py (the certificates manager, as the leader sees it)

#[test]
fn test_certificates_manager_exists_returns_false_when_files_are_partial() {
    for present in [
        vec![],
        vec![CLIENT_KEY],
        vec![CLIENT_CERT],
        vec![CLIENT_KEY, CLIENT_CERT],
    ] {
        let mut world = World::new();
        for path in &present {
            world.put_file("app/0", path, "-----BEGIN X-----\nx\n-----END X-----\n");
        }
        run(&mut world.leader(), Event::LeaderElected).unwrap();
        assert_eq!(
            world.generated, 1,
            "files {present:?} do not count as existing"
        );
    }
}

#[test]
fn test_certificates_manager_generate_does_nothing_when_files_already_exist() {
    // test_certificates_manager_exists_returns_true_when_all_files_exist (arbitrary content).
    let mut world = World::new();
    world.put_file("app/0", CLIENT_KEY, "key");
    world.put_file("app/0", CLIENT_CERT, "cert");
    world.put_file("app/0", CLIENT_CA, "ca");
    run(&mut world.leader(), Event::LeaderElected).unwrap();
    assert_eq!(world.generated, 0);
    assert!(world.file_writes.is_empty(), "files unchanged");
    let id = world.shared_id().unwrap();
    // The shared material equals the files.
    let content = &world.secrets[&id].content;
    assert_eq!(content["client-key"], "key");
    assert_eq!(content["client-cert"], "cert");
    assert_eq!(content["client-ca"], "ca");
}

#[test]
fn test_certificates_manager_has_client_cert_and_key_returns_false_when_material_differs() {
    let mut world = World::new();
    let shared = identity("shared");
    world.share(&shared);
    // Cert and CA swapped on disk.
    world.put_file("app/1", CLIENT_CERT, &shared.ca_cert);
    world.put_file("app/1", CLIENT_CA, &shared.client_cert);
    world.put_file("app/1", CLIENT_KEY, &shared.client_key);
    run(&mut world.follower(), Event::PeerRelationChanged).unwrap();
    assert_eq!(files_of(&world, "app/1"), Some(shared));
}

#[test]
fn a_host_without_key_generation_leaves_the_peer_backend_working() {
    let mut world = World::new();
    world.no_crypto = true;
    world.etcd_relation = true;
    let mut unit = world.leader();
    run(&mut unit, Event::LeaderElected).unwrap();
    assert!(
        unit.logs
            .iter()
            .any(|(l, m)| *l == LogLevel::Error && m.contains("generate"))
    );
    assert_eq!(world.shared_id(), None);
    assert!(world.etcd_app.is_empty());
}

// -------------------------------------------------------------------------------------
// §3.3 the relation request (leader), §11 items 12 and 14

#[test]
fn s3_3_leader_writes_the_request_with_a_granted_mtls_secret() {
    let mut world = World::new();
    world.etcd_relation = true;
    run(&mut world.leader(), Event::EtcdRelationCreated).unwrap();
    assert_eq!(world.etcd_app["version"], "v1");
    let request = world.request();
    let mtls = request["secret-mtls"].as_str().unwrap().to_string();
    assert_eq!(
        world.etcd_app["requests"],
        request_json(RESOURCE, "c16f08d1bf66d60a", "9yeEUXhRVEMnJ8Nz", &mtls)
    );
    let secret = &world.secrets[&mtls];
    assert_eq!(
        secret.label.as_deref(),
        Some("etcd.2.c16f08d1bf66d60a.mtls.secret")
    );
    let shared =
        ClientIdentity::from_secret(&world.secrets[&world.shared_id().unwrap()].content).unwrap();
    assert_eq!(
        secret.content,
        Bag::from([("mtls-cert".into(), shared.client_cert)])
    );
    assert_eq!(world.grants, vec![(mtls, ETCD)]);
    assert_eq!(world.etcd_app.len(), 2, "exactly version and requests");
    assert!(world.etcd_units.is_empty(), "the unit bag is untouched");
}

#[test]
fn a_valid_request_is_left_alone() {
    let mut world = World::new();
    world.etcd_relation = true;
    run(&mut world.leader(), Event::EtcdRelationCreated).unwrap();
    let before = (world.etcd_app.clone(), world.secrets.len());
    world.random = salt_bytes("AAAAAAAAAAAAAAAA");
    for event in [
        Event::EtcdRelationChanged,
        Event::LeaderElected,
        Event::UpdateStatus,
        Event::PeerRelationChanged,
    ] {
        run(&mut world.leader(), event).unwrap();
    }
    assert_eq!((world.etcd_app.clone(), world.secrets.len()), before);
}

#[test]
fn s11_12_a_request_is_written_when_cluster_id_arrives_later() {
    let mut world = World::new();
    world.etcd_relation = true;
    let mut no_cluster = config();
    no_cluster.cluster_id = None;
    run_with(&mut world.leader(), no_cluster, Event::EtcdRelationCreated).unwrap();
    assert!(world.etcd_app.is_empty());
    assert_eq!(world.shared_id(), None);
    // Any later hook with a cluster id (here update-status) writes it.
    run(&mut world.leader(), Event::UpdateStatus).unwrap();
    assert_eq!(world.request()["resource"], RESOURCE);
    assert!(world.shared_id().is_some());
}

#[test]
fn s11_12_a_request_without_certificate_or_for_another_prefix_is_rewritten() {
    let mut world = World::new();
    world.etcd_relation = true;
    world.share(&identity("shared"));
    // What the reference writes when the certificate was not there yet.
    world.etcd_app.insert("version".into(), "v1".into());
    let salt = "9yeEUXhRVEMnJ8Nz";
    let request_id = keys::request_id(RESOURCE, salt);
    world.etcd_app.insert(
        "requests".into(),
        request_json(RESOURCE, &request_id, salt, "").replace("\"\"", "null"),
    );
    run(&mut world.leader(), Event::EtcdRelationChanged).unwrap();
    let mtls = world.request()["secret-mtls"].as_str().unwrap().to_string();
    assert_eq!(
        world.secrets[&mtls].content["mtls-cert"],
        identity("shared").client_cert
    );
    // cluster_id changes: a new request for the new prefix.
    let mut moved = config();
    moved.cluster_id = Some("cluster-2".into());
    world.random = salt_bytes("BBBBBBBBBBBBBBBB");
    run_with(&mut world.leader(), moved, Event::UpdateStatus).unwrap();
    let request = world.request();
    assert_eq!(request["resource"], "/rollingops/default/cluster-2/");
    assert_eq!(request["salt"], "BBBBBBBBBBBBBBBB");
    assert_eq!(
        request["request-id"],
        keys::request_id("/rollingops/default/cluster-2/", "BBBBBBBBBBBBBBBB")
    );
}

#[test]
fn s11_14_a_changed_shared_certificate_is_sent_to_the_provider() {
    let mut world = World::new();
    world.etcd_relation = true;
    run(&mut world.leader(), Event::LeaderElected).unwrap();
    let first = world.request();
    let id = world.shared_id().unwrap();
    let rotated = identity("rotated");
    world.secrets.get_mut(&id).unwrap().content = rotated.to_secret().into_iter().collect();
    world.random = salt_bytes("CCCCCCCCCCCCCCCC");
    run(
        &mut world.leader(),
        Event::SecretChanged(CLIENT_SECRET_LABEL.into()),
    )
    .unwrap();
    let second = world.request();
    assert_ne!(first["request-id"], second["request-id"]);
    let mtls = second["secret-mtls"].as_str().unwrap();
    assert_eq!(
        world.secrets[mtls].content["mtls-cert"],
        rotated.client_cert
    );
    assert_eq!(files_of(&world, "app/0"), Some(rotated));
    // Unchanged: nothing is re-sent.
    let secrets = world.secrets.len();
    run(
        &mut world.leader(),
        Event::SecretChanged(CLIENT_SECRET_LABEL.into()),
    )
    .unwrap();
    assert_eq!(world.secrets.len(), secrets);
}

#[test]
fn non_leaders_never_write_the_request() {
    let mut world = World::new();
    world.etcd_relation = true;
    world.share(&identity("shared"));
    run(&mut world.follower(), Event::EtcdRelationCreated).unwrap();
    run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
    assert!(world.etcd_app.is_empty());
}

// -------------------------------------------------------------------------------------
// §3.4 the provider's data; test_etcd_etcdctl.py

const CA: &str = "-----BEGIN CERTIFICATE-----\nserver-ca\n-----END CERTIFICATE-----\n";
const ENDPOINTS: &str = "10.0.0.1:2379,10.0.0.2:2379";

/// A leader with its request written and the provider's answer in place.
fn provisioned() -> World {
    let mut world = World::new();
    world.etcd_relation = true;
    run(&mut world.leader(), Event::EtcdRelationCreated).unwrap();
    world.provide(ENDPOINTS, Some(CA));
    world
}

fn expected_config(endpoints: &str) -> String {
    format!(
        "{{\n  \"endpoints\": \"{endpoints}\",\n  \"cacert_path\": \"{BASE}/etcd/server-ca.pem\",\n  \
         \"cert_path\": \"{BASE}/tls/client.pem\",\n  \"key_path\": \"{BASE}/tls/client.key\"\n}}"
    )
}

#[test]
fn s3_4_relation_changed_writes_the_server_ca_and_etcdctl_config() {
    let mut world = provisioned();
    run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
    // test_etcdctl_write_env
    assert_eq!(world.file("app/1", SERVER_CA), Some(CA));
    assert_eq!(world.mode("app/1", SERVER_CA), Some(0o644));
    assert_eq!(
        world.file("app/1", ETCDCTL_JSON),
        Some(expected_config(ENDPOINTS).as_str())
    );
    assert_eq!(world.mode("app/1", ETCDCTL_JSON), Some(0o600));
    // test_etcdctl_load_env_parses_exported_vars
    let env = environment(world.file("app/1", ETCDCTL_JSON).unwrap()).unwrap();
    assert!(env.contains(&("ETCDCTL_ENDPOINTS".into(), ENDPOINTS.into())));
    assert!(env.contains(&("ETCDCTL_CERT".into(), format!("{BASE}/tls/client.pem"))));
    // The unit also fetched the shared identity it was missing.
    assert!(files_of(&world, "app/1").is_some());
    // The diff state: the response's non-null fields under its request id.
    let data: Value = serde_json::from_str(&world.etcd_units["app/1"]["data"]).unwrap();
    let stored = &data["c16f08d1bf66d60a"];
    assert_eq!(stored["endpoints"], ENDPOINTS);
    assert!(stored.get("username").is_none(), "nulls are dropped");
    // Repeated hooks do nothing: no file writes, no secret reads.
    let (writes, reads) = (world.file_writes.len(), world.secret_reads);
    run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
    assert_eq!(
        (world.file_writes.len(), world.secret_reads),
        (writes, reads)
    );
}

#[test]
fn s3_4_the_unit_becomes_etcd_ready() {
    let mut world = provisioned();
    run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
    let mut unit = world.follower();
    let manager = driver::load(config(), &mut unit).unwrap();
    let view: Value = serde_json::from_str(&manager.describe()).unwrap();
    assert_eq!(view["etcd"]["usable"], true, "{view}");
}

#[test]
fn test_etcdctl_ensure_initialized_raises_when_env_missing() {
    let mut world = World::new();
    world.etcd_relation = true;
    let mut unit = world.follower();
    let manager = driver::load(config(), &mut unit).unwrap();
    let view: Value = serde_json::from_str(&manager.describe()).unwrap();
    assert_eq!(view["etcd"]["usable"], false);
    assert!(
        view["etcd"]["why_not"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
}

#[test]
fn s3_4_nothing_before_the_provider_created_the_user() {
    let mut world = provisioned();
    let mut requests: Value = serde_json::from_str(&world.provider["requests"]).unwrap();
    requests[0].as_object_mut().unwrap().remove("secret-user");
    world
        .provider
        .insert("requests".into(), requests.to_string());
    run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
    assert_eq!(world.file("app/1", SERVER_CA), None);
    assert_eq!(world.file("app/1", ETCDCTL_JSON), None);
}

#[test]
fn s3_4_nothing_without_requests_and_data_or_for_another_prefix() {
    let mut world = provisioned();
    let saved = world.provider.clone();
    world.provider.remove("data");
    run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
    assert_eq!(world.file("app/1", SERVER_CA), None);
    world.provider = saved;
    let other = world.provider["requests"].replace(RESOURCE, "/rollingops/default/other/");
    world.provider.insert("requests".into(), other);
    run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
    assert_eq!(world.file("app/1", SERVER_CA), None);
}

#[test]
fn s11_13_a_response_without_tls_ca_is_retried() {
    let mut world = World::new();
    world.etcd_relation = true;
    run(&mut world.leader(), Event::EtcdRelationCreated).unwrap();
    let tls = world.provide(ENDPOINTS, None);
    let mut unit = world.follower();
    run(&mut unit, Event::EtcdRelationChanged).unwrap();
    assert!(
        unit.logs
            .iter()
            .any(|(l, m)| *l == LogLevel::Error && m.contains("tls-ca"))
    );
    assert_eq!(world.file("app/1", SERVER_CA), None);
    // The CA arrives (same response): the next relation-changed writes everything.
    world
        .secrets
        .get_mut(&tls)
        .unwrap()
        .content
        .insert("tls-ca".into(), CA.into());
    run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
    assert_eq!(world.file("app/1", SERVER_CA), Some(CA));
    assert!(world.file("app/1", ETCDCTL_JSON).is_some());
}

#[test]
fn s11_13_server_ca_rotation_through_secret_changed() {
    let mut world = provisioned();
    run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
    let tls = serde_json::from_str::<Value>(&world.provider["requests"]).unwrap()[0]["secret-tls"]
        .as_str()
        .unwrap()
        .to_string();
    let rotated = CA.replace("server-ca", "server-ca-2");
    world
        .secrets
        .get_mut(&tls)
        .unwrap()
        .content
        .insert("tls-ca".into(), rotated.clone());
    run(&mut world.follower(), Event::SecretChanged(tls)).unwrap();
    assert_eq!(world.file("app/1", SERVER_CA), Some(rotated.as_str()));
}

#[test]
fn s3_4_changed_endpoints_rewrite_the_config() {
    let mut world = provisioned();
    run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
    let moved = world.provider["requests"].replace(ENDPOINTS, "10.0.0.9:2379");
    world.provider.insert("requests".into(), moved);
    run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
    assert_eq!(
        world.file("app/1", ETCDCTL_JSON),
        Some(expected_config("10.0.0.9:2379").as_str())
    );
    // Empty endpoints: the last good config stays.
    let emptied = world.provider["requests"].replace("10.0.0.9:2379", "");
    world.provider.insert("requests".into(), emptied);
    let mut unit = world.follower();
    run(&mut unit, Event::EtcdRelationChanged).unwrap();
    assert!(unit.logs.iter().any(|(_, m)| m.contains("no endpoints")));
    assert_eq!(
        world.file("app/1", ETCDCTL_JSON),
        Some(expected_config("10.0.0.9:2379").as_str())
    );
}

// -------------------------------------------------------------------------------------
// §3.5 relation-broken, §11 item 24

fn etcd_managed(world: &mut World, unit: &str) {
    world.peer.entry(unit.into()).or_default().extend([
        ("processing_backend".to_string(), "etcd".to_string()),
        ("etcd_cleanup_needed".to_string(), "false".to_string()),
        ("operations".to_string(), "[]".to_string()),
        ("state".to_string(), "idle".to_string()),
    ]);
}

#[test]
fn s3_5_broken_falls_back_and_removes_the_connection_files_one_hook_later() {
    // Juju (ops) no longer lists the relation in its relation-broken hook; the Rust host's
    // relation-ids may: both ways behave the same.
    for listed_while_broken in [false, true] {
        let mut world = provisioned();
        run(&mut world.follower(), Event::EtcdRelationChanged).unwrap();
        etcd_managed(&mut world, "app/1");
        world.etcd_relation = listed_while_broken;
        run(&mut world.follower(), Event::EtcdRelationBroken).unwrap();
        assert_eq!(world.peer["app/1"]["processing_backend"], "peer");
        assert_eq!(world.peer["app/1"]["etcd_cleanup_needed"], "true");
        assert!(
            world.file("app/1", STOP_FILE).is_some(),
            "the worker is asked to release"
        );
        // Kept for the worker's release in that hook.
        assert!(world.file("app/1", ETCDCTL_JSON).is_some());
        assert!(world.file("app/1", SERVER_CA).is_some());
        world.etcd_relation = false;
        run(&mut world.follower(), Event::UpdateStatus).unwrap();
        // test_etcdctl_cleanup_removes_env_file_and_server_ca
        assert_eq!(world.file("app/1", ETCDCTL_JSON), None);
        assert_eq!(world.file("app/1", SERVER_CA), None);
        // The client identity stays.
        assert!(files_of(&world, "app/1").is_some());
        assert!(world.shared_id().is_some());
    }
}

#[test]
fn test_etcdctl_cleanup_is_noop_when_files_do_not_exist() {
    let mut world = World::new();
    let mut unit = world.follower();
    let mut manager = driver::load(config(), &mut unit).unwrap();
    manager.handle_event(Event::EtcdRelationBroken).unwrap();
    manager.handle_event(Event::UpdateStatus).unwrap();
    while let Some(command) = manager.poll_command() {
        assert!(
            !matches!(
                command,
                Command::EtcdRelation(RelationCommand::RemoveFile { .. })
            ),
            "{command:?}"
        );
    }
}

#[test]
fn without_etcd_configuration_nothing_happens() {
    let mut world = World::new();
    world.etcd_relation = true;
    let mut peer_only = config();
    peer_only.etcd_relation_name = None;
    peer_only.cluster_id = None;
    for event in [
        Event::LeaderElected,
        Event::EtcdRelationCreated,
        Event::EtcdRelationChanged,
        Event::SecretChanged(CLIENT_SECRET_LABEL.into()),
    ] {
        run_with(&mut world.leader(), peer_only.clone(), event).unwrap();
    }
    assert!(world.secrets.is_empty() && world.etcd_app.is_empty());
}
