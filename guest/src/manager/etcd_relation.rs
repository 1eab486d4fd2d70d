//! The etcd relation (`etcd_client`) and the shared mTLS client identity (spec/etcd.md §3).
//!
//! Three flows, each a chain of [`RelationCommand`]s and replies:
//!
//! * **Identity** (§3.2, leader): when the peer app bag has no
//!   `rollingops-client-secret-id`, reuse `<base_dir>/tls/*` or have the host generate a CA
//!   and client certificate ([`RelationCommand::GenerateIdentity`]), write the files, share
//!   them in the app secret `rollingops-client-cert` and store its id. Every unit syncs its
//!   files from that secret on peer relation-changed and on its `secret-changed`.
//! * **Request** (§3.3, leader): whenever the etcd relation's app bag has no valid request
//!   for this cluster prefix (any hook, not only relation-created: §11 item 12), write one
//!   with a fresh salt and a second app secret holding the client certificate, granted to
//!   the relation. A changed shared certificate is re-sent (§11 item 14).
//! * **Provider** (§3.4, every unit): on etcd relation-changed, pick the provider's response
//!   for this cluster prefix, read the server CA from its `secret-tls`, and write
//!   `etcd/server-ca.pem` and `etcd/etcdctl.json` when they differ from what is on disk. The
//!   response is kept in this unit's relation bag `data` as the reference does; a response
//!   whose CA could not be read is not recorded, so the next hook retries (§11 item 13), and
//!   a `secret-changed` of any other secret re-reads the CA (server CA rotation).
//!
//! The shared secret is never read while the manager is built (§11 item 15): only the hooks
//! that need it read it, and only the sync flow fails a hook on invalid content (as the
//! reference does); the leader's flows log failures and retry in a later hook, so a broken
//! secret or a host without key generation never stops the peer backend.
//!
//! relation-broken (§3.5, §11 item 24): the relation is treated as gone at once (the unit
//! falls back to the peer relation and asks its worker to release and exit), but the
//! connection files stay until a later hook that still sees no etcd relation, so the worker
//! can release its lock with them instead of failing; the client identity under `tls/` and
//! the shared secret are kept.

use serde_json::{Map, Value};

use super::{Command, Event, LogLevel, Manager};
use crate::error::Error;
use crate::etcd::config::{ETCDCTL_JSON, SERVER_CA, render};
use crate::etcd::keys::{self, Keys};
use crate::wire::Bag;

/// Peer app bag: id of the shared client-identity secret.
pub const CLIENT_SECRET_ID: &str = "rollingops-client-secret-id";
/// Label of the shared client-identity secret.
pub const CLIENT_SECRET_LABEL: &str = "rollingops-client-cert";
/// The client certificate, relative to `base_dir`.
pub const CLIENT_CERT: &str = "tls/client.pem";
/// The client private key, relative to `base_dir`.
pub const CLIENT_KEY: &str = "tls/client.key";
/// The client CA certificate, relative to `base_dir`.
pub const CLIENT_CA: &str = "tls/client-ca.pem";
/// Mode of certificates and the server CA.
pub const MODE_PUBLIC: u32 = 0o644;
/// Mode of the private key and the etcdctl config.
pub const MODE_PRIVATE: u32 = 0o600;

const FIELD_CERT: &str = "client-cert";
const FIELD_KEY: &str = "client-key";
const FIELD_CA: &str = "client-ca";
const FIELD_MTLS: &str = "mtls-cert";
const FIELD_TLS_CA: &str = "tls-ca";
/// Relation app bag keys of the request.
const VERSION: &str = "version";
const REQUESTS: &str = "requests";
/// Provider app bag key: what the provider saw of our requests.
const DATA: &str = "data";
/// Salt alphabet (`[A-Za-z0-9]`).
const SALT_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Random bytes the driver supplies for one salt (rejection sampling needs a few spare).
pub const SALT_RANDOM_BYTES: usize = 64;

/// The shared client identity, as PEM texts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The self-signed client CA certificate.
    pub ca_cert: String,
    /// The client certificate.
    pub client_cert: String,
    /// The client private key (PKCS#1).
    pub client_key: String,
}

impl ClientIdentity {
    /// The identity in a secret's content (`client-cert`, `client-key`, `client-ca`),
    /// checked as the reference does: every field present, non-empty and PEM.
    pub fn from_secret(content: &Bag) -> Result<Self, Error> {
        let field = |key: &str| -> Result<String, Error> {
            match content.get(key).map(|v| v.trim()) {
                Some(value) if !value.is_empty() => Ok(content[key].clone()),
                _ => Err(Error::InvalidSecretContent(format!(
                    "Invalid certificate secret content: {key} is missing or empty."
                ))),
            }
        };
        let identity = ClientIdentity {
            client_cert: field(FIELD_CERT)?,
            client_key: field(FIELD_KEY)?,
            ca_cert: field(FIELD_CA)?,
        };
        for (key, text, kind) in [
            (FIELD_CERT, &identity.client_cert, "CERTIFICATE"),
            (FIELD_CA, &identity.ca_cert, "CERTIFICATE"),
            (FIELD_KEY, &identity.client_key, "PRIVATE KEY"),
        ] {
            if !looks_like_pem(text, kind) {
                return Err(Error::InvalidSecretContent(format!(
                    "Invalid certificate secret content: {key} is not a PEM {kind}."
                )));
            }
        }
        Ok(identity)
    }

    /// The secret content.
    pub fn to_secret(&self) -> Vec<(String, String)> {
        vec![
            (FIELD_CERT.into(), self.client_cert.clone()),
            (FIELD_KEY.into(), self.client_key.clone()),
            (FIELD_CA.into(), self.ca_cert.clone()),
        ]
    }
}

/// Whether `text` holds one PEM block of `kind` (`CERTIFICATE`, or any `… PRIVATE KEY`).
fn looks_like_pem(text: &str, kind: &str) -> bool {
    let text = text.trim();
    let Some(begin) = text.strip_prefix("-----BEGIN ") else {
        return false;
    };
    let Some((label, rest)) = begin.split_once("-----") else {
        return false;
    };
    label.ends_with(kind) && rest.trim_end().ends_with(&format!("-----END {label}-----"))
}

/// Files under `base_dir` this module reads, as the hook found them (`None`: missing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalFiles {
    /// `tls/client.pem`.
    pub client_cert: Option<String>,
    /// `tls/client.key`.
    pub client_key: Option<String>,
    /// `tls/client-ca.pem`.
    pub client_ca: Option<String>,
    /// `etcd/server-ca.pem`.
    pub server_ca: Option<String>,
    /// `etcd/etcdctl.json`.
    pub etcdctl_json: Option<String>,
}

impl LocalFiles {
    /// The client identity, when all three files exist (and are not empty).
    pub fn identity(&self) -> Option<ClientIdentity> {
        let get = |f: &Option<String>| f.clone().filter(|t| !t.trim().is_empty());
        Some(ClientIdentity {
            ca_cert: get(&self.client_ca)?,
            client_cert: get(&self.client_cert)?,
            client_key: get(&self.client_key)?,
        })
    }
}

/// The etcd relation as this hook sees it; present when the charm configured an etcd
/// relation name and a cluster id (the reference's "etcd backend exists").
#[derive(Clone, Debug, Default)]
pub struct EtcdRelation {
    /// The relation's id; `None` when there is no etcd relation.
    pub relation_id: Option<u32>,
    /// This application's bag on it (the leader's request); `None` when not read (not the
    /// leader, no relation, or the read failed).
    pub local_app: Option<Bag>,
    /// This unit's bag on it (the provider response this unit last acted on).
    pub local_unit: Option<Bag>,
    /// The provider's application bag.
    pub remote_app: Option<Bag>,
    /// The files under `base_dir`.
    pub files: LocalFiles,
    /// Random bytes for a request's salt (the leader's only; see [`SALT_RANDOM_BYTES`]).
    pub random: Vec<u8>,
}

/// What a secret read is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRead {
    /// The shared identity, to sync this unit's files.
    SyncIdentity {
        /// Whether a leader should then check the certificate the relation request carries.
        check_request: bool,
    },
    /// The shared identity, for the relation request's certificate.
    RequestCert,
    /// The request's mTLS secret, to compare with the shared certificate.
    CheckRequestCert {
        /// The shared certificate.
        cert: String,
    },
    /// The provider's TLS secret (server CA).
    ServerCa(ProviderResponse),
}

/// The provider's response for our prefix, carried through the server CA read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderResponse {
    /// The relation.
    pub relation_id: u32,
    /// Its request id.
    pub request_id: String,
    /// Its fields, nulls dropped (as stored under `data`).
    pub fields: Map<String, Value>,
}

/// What a new secret is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretAdd {
    /// The shared identity.
    SharedIdentity {
        /// The client certificate it holds.
        cert: String,
        /// Whether it was generated in this hook (any existing request is then stale).
        generated: bool,
    },
    /// The mTLS secret of a relation request.
    Request(Request),
}

/// A relation request being written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The relation.
    pub relation_id: u32,
    /// `/rollingops/default/<cluster_id>/`.
    pub resource: String,
    /// 16 characters `[A-Za-z0-9]`.
    pub salt: String,
    /// sha256(`resource:salt`), first 16 hex digits.
    pub request_id: String,
}

/// Effects of the etcd relation flows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelationCommand {
    /// Read a secret by id or label (latest revision); answer with
    /// [`Manager::handle_secret`].
    GetSecret {
        /// Id (`secret:…`) or label.
        label_or_id: String,
        /// Why.
        purpose: SecretRead,
    },
    /// Generate a client identity; answer with [`Manager::handle_identity`].
    GenerateIdentity {
        /// The certificates' common name.
        common_name: String,
    },
    /// Create an application secret; answer with [`Manager::handle_secret_added`].
    AddSecret {
        /// Label.
        label: String,
        /// Content.
        content: Vec<(String, String)>,
        /// Why.
        purpose: SecretAdd,
    },
    /// Grant a secret to the request's relation; answer with
    /// [`Manager::handle_secret_granted`].
    GrantSecret {
        /// Secret id.
        id: String,
        /// The request the secret belongs to.
        request: Request,
    },
    /// Create or replace a file under `base_dir` (a failure fails the hook).
    WriteFile {
        /// Path relative to `base_dir`.
        path: String,
        /// Content.
        data: String,
        /// Unix mode.
        mode: u32,
    },
    /// Remove a file under `base_dir` (missing is fine; a failure fails the hook).
    RemoveFile {
        /// Path relative to `base_dir`.
        path: String,
    },
}

/// What the relation flows did so far in this hook.
#[derive(Clone, Debug, Default)]
pub(super) struct RelationFlow {
    /// The leader generated or shared the identity in this hook.
    identity_shared: bool,
    /// A request write started in this hook.
    request_started: bool,
}

impl Manager {
    /// The etcd relation's part of a hook; runs before the peer logic of every event.
    pub(super) fn etcd_relation_event(&mut self, event: &Event) {
        if self.etcd_relation.is_none() || self.etcd.is_none() {
            return;
        }
        if *event == Event::EtcdRelationBroken {
            self.etcd_relation_broken();
            return;
        }
        self.remove_stale_connection_files();
        if self.leader && self.peer.is_some() {
            self.share_identity();
        }
        match event {
            Event::PeerRelationChanged if !self.relation_flow.identity_shared => {
                self.sync_identity(false);
            }
            Event::SecretChanged(label) if self.is_client_secret(label) => {
                self.sync_identity(self.leader);
            }
            Event::SecretChanged(_) => self.read_provider(true),
            Event::EtcdRelationChanged => {
                if self.relation().files.identity().is_none() && !self.relation_flow.identity_shared
                {
                    self.sync_identity(false);
                }
                self.read_provider(false);
            }
            _ => {}
        }
    }

    fn relation(&self) -> &EtcdRelation {
        self.etcd_relation
            .as_ref()
            .expect("etcd relation flows run only with an etcd relation snapshot")
    }

    fn relation_mut(&mut self) -> &mut EtcdRelation {
        self.etcd_relation
            .as_mut()
            .expect("etcd relation flows run only with an etcd relation snapshot")
    }

    fn relation_command(&mut self, command: RelationCommand) {
        self.commands.push_back(Command::EtcdRelation(command));
    }

    fn shared_secret_id(&self) -> Option<String> {
        self.peer
            .as_ref()?
            .app
            .get(CLIENT_SECRET_ID)
            .filter(|id| !id.trim().is_empty())
            .cloned()
    }

    fn is_client_secret(&self, label_or_id: &str) -> bool {
        label_or_id == CLIENT_SECRET_LABEL
            || self
                .shared_secret_id()
                .is_some_and(|id| same_secret(&id, label_or_id))
    }

    fn cluster_keys(&self) -> Keys {
        let etcd = self.etcd.as_ref().expect("etcd configured");
        Keys::new(&etcd.cluster_id, "")
    }

    fn etcd_relation_name(&self) -> String {
        self.config.etcd_relation_name.clone().unwrap_or_default()
    }

    fn write_file(&mut self, path: &str, data: &str, mode: u32) {
        self.relation_command(RelationCommand::WriteFile {
            path: path.into(),
            data: data.into(),
            mode,
        });
        let files = &mut self.relation_mut().files;
        let slot = match path {
            CLIENT_CERT => &mut files.client_cert,
            CLIENT_KEY => &mut files.client_key,
            CLIENT_CA => &mut files.client_ca,
            SERVER_CA => &mut files.server_ca,
            ETCDCTL_JSON => &mut files.etcdctl_json,
            _ => return,
        };
        *slot = Some(data.into());
    }

    fn write_identity(&mut self, identity: &ClientIdentity) {
        self.write_file(CLIENT_CA, &identity.ca_cert, MODE_PUBLIC);
        self.write_file(CLIENT_KEY, &identity.client_key, MODE_PRIVATE);
        self.write_file(CLIENT_CERT, &identity.client_cert, MODE_PUBLIC);
    }

    // ---------------------------------------------------------------------------------
    // Identity (leader) and sync (every unit)

    /// §3.2 "create and share certificate": nothing when the id is already shared (then
    /// only the relation request is checked), else reuse the files or generate.
    fn share_identity(&mut self) {
        if self.shared_secret_id().is_some() {
            self.ensure_request(None, false);
            return;
        }
        self.relation_flow.identity_shared = true;
        if let Some(identity) = self.relation().files.identity() {
            self.log(
                LogLevel::Info,
                "Sharing the etcd client identity found under base_dir.".into(),
            );
            self.add_shared_secret(&identity, false);
            return;
        }
        let etcd = self.etcd.as_ref().expect("etcd configured");
        let app = self.unit.split('/').next().unwrap_or_default();
        let common_name = keys::common_name(&etcd.model_uuid, app);
        self.log(
            LogLevel::Info,
            format!("Generating the etcd client identity (CN {common_name})."),
        );
        self.relation_command(RelationCommand::GenerateIdentity { common_name });
    }

    /// The host's answer to [`RelationCommand::GenerateIdentity`].
    pub fn handle_identity(&mut self, result: Result<ClientIdentity, Error>) -> Result<(), Error> {
        match result {
            Ok(identity) => {
                self.write_identity(&identity);
                self.add_shared_secret(&identity, true);
            }
            Err(e) => self.log(
                LogLevel::Error,
                format!(
                    "Could not generate the etcd client identity ({e}); etcd stays unused until \
                     a later hook succeeds."
                ),
            ),
        }
        Ok(())
    }

    fn add_shared_secret(&mut self, identity: &ClientIdentity, generated: bool) {
        self.relation_command(RelationCommand::AddSecret {
            label: CLIENT_SECRET_LABEL.into(),
            content: identity.to_secret(),
            purpose: SecretAdd::SharedIdentity {
                cert: identity.client_cert.clone(),
                generated,
            },
        });
    }

    /// §3.2 "sync to local files": read the shared secret and write the files that differ.
    fn sync_identity(&mut self, check_request: bool) {
        let Some(id) = self.shared_secret_id() else {
            return;
        };
        self.relation_command(RelationCommand::GetSecret {
            label_or_id: id,
            purpose: SecretRead::SyncIdentity { check_request },
        });
    }

    fn synced(&mut self, content: &Bag, check_request: bool) -> Result<(), Error> {
        let identity = ClientIdentity::from_secret(content)?;
        if self.relation().files.identity().as_ref() != Some(&identity) {
            self.log(
                LogLevel::Info,
                "Writing the shared etcd client identity under base_dir.".into(),
            );
            self.write_identity(&identity);
        }
        if check_request {
            self.check_request_cert(identity.client_cert);
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // The relation request (leader)

    /// Write the request unless the relation already holds a valid one for this prefix
    /// (`force`: the certificate changed).
    fn ensure_request(&mut self, cert: Option<String>, force: bool) {
        if self.relation_flow.request_started {
            return;
        }
        let resource = self.cluster_keys().cluster_prefix;
        let relation = self.relation();
        let (Some(relation_id), Some(bag)) = (relation.relation_id, relation.local_app.as_ref())
        else {
            return;
        };
        let why = match request_problem(bag, &resource) {
            None if !force => return,
            None => "the client certificate changed".to_string(),
            Some(why) => why,
        };
        self.relation_flow.request_started = true;
        self.log(
            LogLevel::Info,
            format!("Writing the etcd relation request: {why}."),
        );
        match cert {
            Some(cert) => self.write_request(relation_id, &cert),
            None => match self.shared_secret_id() {
                Some(id) => self.relation_command(RelationCommand::GetSecret {
                    label_or_id: id,
                    purpose: SecretRead::RequestCert,
                }),
                None => self.relation_flow.request_started = false,
            },
        }
    }

    fn write_request(&mut self, relation_id: u32, cert: &str) {
        let resource = self.cluster_keys().cluster_prefix;
        let salt = salt(&self.relation().random);
        let request_id = keys::request_id(&resource, &salt);
        let label = format!(
            "{}.{relation_id}.{request_id}.mtls.secret",
            self.etcd_relation_name()
        );
        self.relation_command(RelationCommand::AddSecret {
            label,
            content: vec![(FIELD_MTLS.into(), cert.into())],
            purpose: SecretAdd::Request(Request {
                relation_id,
                resource,
                salt,
                request_id,
            }),
        });
    }

    /// A leader's `secret-changed` of the shared secret: re-send a changed certificate.
    fn check_request_cert(&mut self, cert: String) {
        let resource = self.cluster_keys().cluster_prefix;
        let relation = self.relation();
        let Some(bag) = relation.local_app.as_ref() else {
            return;
        };
        if relation.relation_id.is_none() {
            return;
        }
        match request_problem(bag, &resource) {
            Some(_) => self.ensure_request(Some(cert), false),
            None => {
                let mtls = request_secret(bag).expect("a valid request names its secret");
                self.relation_command(RelationCommand::GetSecret {
                    label_or_id: mtls,
                    purpose: SecretRead::CheckRequestCert { cert },
                });
            }
        }
    }

    /// The host's answer to [`RelationCommand::AddSecret`].
    pub fn handle_secret_added(
        &mut self,
        purpose: SecretAdd,
        result: Result<String, Error>,
    ) -> Result<(), Error> {
        let id = match result {
            Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
            Ok(_) => {
                self.log(
                    LogLevel::Error,
                    "secret-add returned no secret id; retrying in a later hook.".into(),
                );
                return Ok(());
            }
            Err(e) => {
                self.log(
                    LogLevel::Error,
                    format!("Could not create an etcd secret ({e}); retrying in a later hook."),
                );
                return Ok(());
            }
        };
        match purpose {
            SecretAdd::SharedIdentity { cert, generated } => {
                self.log(
                    LogLevel::Info,
                    format!("Shared the etcd client identity in secret {id}."),
                );
                self.set_app(vec![(CLIENT_SECRET_ID.into(), id)]);
                self.ensure_request(Some(cert), generated);
            }
            SecretAdd::Request(request) => {
                self.relation_command(RelationCommand::GrantSecret { id, request });
            }
        }
        Ok(())
    }

    /// The host's answer to [`RelationCommand::GrantSecret`]: write the request.
    pub fn handle_secret_granted(
        &mut self,
        id: &str,
        request: Request,
        result: Result<(), Error>,
    ) -> Result<(), Error> {
        if let Err(e) = result {
            self.log(
                LogLevel::Error,
                format!(
                    "Could not grant secret {id} to the etcd relation ({e}); retrying in a later \
                     hook."
                ),
            );
            return Ok(());
        }
        let requests = request_json(&request.resource, &request.request_id, &request.salt, id);
        let pairs = vec![
            (VERSION.to_string(), "v1".to_string()),
            (REQUESTS.to_string(), requests),
        ];
        if let Some(bag) = self.relation_mut().local_app.as_mut() {
            bag.extend(pairs.iter().cloned());
        }
        self.log(
            LogLevel::Info,
            format!(
                "Requested etcd access to {} (request {}).",
                request.resource, request.request_id
            ),
        );
        self.commands.push_back(Command::SetBag {
            relation_id: request.relation_id,
            app: true,
            pairs,
        });
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // The provider's data (every unit)

    /// §3.4: act on the provider's response for this cluster prefix. `force` re-reads the
    /// server CA even when nothing changed (a `secret-changed` may be its rotation).
    fn read_provider(&mut self, force: bool) {
        let resource = self.cluster_keys().cluster_prefix;
        let relation = self.relation();
        let (Some(relation_id), Some(remote)) =
            (relation.relation_id, relation.remote_app.as_ref())
        else {
            return;
        };
        let (Some(requests), Some(_)) = (remote.get(REQUESTS), remote.get(DATA)) else {
            return;
        };
        let response = match parse_objects(requests) {
            Ok(responses) => responses
                .into_iter()
                .rev()
                .find(|r| r.get("resource").and_then(Value::as_str) == Some(resource.as_str())),
            Err(why) => {
                self.log(
                    LogLevel::Warning,
                    format!("Ignoring the etcd provider's requests: {why}."),
                );
                return;
            }
        };
        let Some(response) = response else {
            self.log(
                LogLevel::Info,
                format!("The etcd provider has not answered the request for {resource} yet."),
            );
            return;
        };
        let response = ProviderResponse {
            relation_id,
            request_id: str_field(&response, "request-id"),
            fields: response.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        };
        let recorded = self.recorded_response(&response);
        if str_field(&response.fields, "secret-user").is_empty() {
            if !recorded {
                self.record_response(&response);
            }
            self.log(
                LogLevel::Info,
                "The etcd provider has not created the etcd user yet.".into(),
            );
            return;
        }
        if recorded && !force && self.connection_current(&response) {
            return;
        }
        let secret_tls = str_field(&response.fields, "secret-tls");
        if secret_tls.is_empty() {
            self.log(
                LogLevel::Error,
                "The etcd provider's response has no secret-tls: the server CA is unknown; \
                 waiting for it."
                    .into(),
            );
            return;
        }
        self.relation_command(RelationCommand::GetSecret {
            label_or_id: secret_tls,
            purpose: SecretRead::ServerCa(response),
        });
    }

    fn recorded_response(&self, response: &ProviderResponse) -> bool {
        let stored = self
            .relation()
            .local_unit
            .as_ref()
            .and_then(|bag| bag.get(DATA))
            .and_then(|text| serde_json::from_str::<Map<String, Value>>(text).ok());
        stored.and_then(|s| s.get(&response.request_id).cloned())
            == Some(Value::Object(response.fields.clone()))
    }

    /// Whether the files already say what the response says.
    fn connection_current(&self, response: &ProviderResponse) -> bool {
        let files = &self.relation().files;
        let endpoints = str_field(&response.fields, "endpoints");
        files.server_ca.is_some()
            && (endpoints.is_empty()
                || files.etcdctl_json.as_deref() == Some(self.etcdctl_json(&endpoints).as_str()))
    }

    fn etcdctl_json(&self, endpoints: &str) -> String {
        let base = self.config.base_dir.trim_end_matches('/');
        render(
            endpoints,
            base,
            &format!("{base}/{CLIENT_CERT}"),
            &format!("{base}/{CLIENT_KEY}"),
        )
    }

    /// Store the response under this unit's `data` (the reference's diff state).
    fn record_response(&mut self, response: &ProviderResponse) {
        let relation = self.relation_mut();
        let Some(bag) = relation.local_unit.as_mut() else {
            return;
        };
        let mut stored = bag
            .get(DATA)
            .and_then(|text| serde_json::from_str::<Map<String, Value>>(text).ok())
            .unwrap_or_default();
        stored.insert(
            response.request_id.clone(),
            Value::Object(response.fields.clone()),
        );
        let text = python_json(&Value::Object(stored));
        if bag.get(DATA) == Some(&text) {
            return;
        }
        bag.insert(DATA.into(), text.clone());
        self.commands.push_back(Command::SetBag {
            relation_id: response.relation_id,
            app: false,
            pairs: vec![(DATA.into(), text)],
        });
    }

    fn server_ca_read(&mut self, response: ProviderResponse, content: &Bag) {
        let tls_ca = content.get(FIELD_TLS_CA).cloned().unwrap_or_default();
        if tls_ca.trim().is_empty() {
            self.log(
                LogLevel::Error,
                "The etcd provider's TLS secret has no tls-ca; waiting for it.".into(),
            );
            return;
        }
        match self.relation().files.server_ca.as_deref() {
            Some(current) if current == tls_ca => {}
            current => {
                let what = if current.is_some() {
                    "Updating the etcd server CA (it changed)."
                } else {
                    "Writing the etcd server CA."
                };
                self.log(LogLevel::Info, what.into());
                self.write_file(SERVER_CA, &tls_ca, MODE_PUBLIC);
            }
        }
        let endpoints = str_field(&response.fields, "endpoints");
        if endpoints.is_empty() {
            self.log(
                LogLevel::Error,
                "The etcd provider gave no endpoints; waiting for them.".into(),
            );
        } else {
            let text = self.etcdctl_json(&endpoints);
            if self.relation().files.etcdctl_json.as_deref() != Some(text.as_str()) {
                self.log(
                    LogLevel::Info,
                    format!("Writing the etcdctl configuration (endpoints {endpoints})."),
                );
                self.write_file(ETCDCTL_JSON, &text, MODE_PRIVATE);
            }
        }
        self.record_response(&response);
    }

    /// The host's answer to [`RelationCommand::GetSecret`] (`None`: no such secret).
    pub fn handle_secret(
        &mut self,
        purpose: SecretRead,
        result: Result<Option<Bag>, Error>,
    ) -> Result<(), Error> {
        let what = match &purpose {
            SecretRead::SyncIdentity { .. } | SecretRead::RequestCert => {
                "the shared etcd client-identity secret"
            }
            SecretRead::CheckRequestCert { .. } => "the etcd relation request's mTLS secret",
            SecretRead::ServerCa(_) => "the etcd provider's TLS secret",
        };
        let content = match result {
            Ok(Some(content)) => content,
            Ok(None) => {
                self.log(LogLevel::Error, format!("Could not find {what}."));
                return Ok(());
            }
            Err(e) => {
                self.log(LogLevel::Error, format!("Could not read {what}: {e}"));
                return Ok(());
            }
        };
        match purpose {
            SecretRead::SyncIdentity { check_request } => self.synced(&content, check_request)?,
            SecretRead::RequestCert => match ClientIdentity::from_secret(&content) {
                Ok(identity) => {
                    if let Some(relation_id) = self.relation().relation_id {
                        self.write_request(relation_id, &identity.client_cert);
                    }
                }
                Err(e) => self.log(
                    LogLevel::Error,
                    format!("Cannot write the etcd relation request: {e}"),
                ),
            },
            SecretRead::CheckRequestCert { cert } => {
                if content.get(FIELD_MTLS) != Some(&cert) {
                    self.ensure_request(Some(cert), true);
                }
            }
            SecretRead::ServerCa(response) => self.server_ca_read(response, &content),
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // relation-broken

    fn etcd_relation_broken(&mut self) {
        self.relation_mut().relation_id = None;
        if let Some(etcd) = self.etcd.as_mut() {
            etcd.relation = false;
        }
        self.log(
            LogLevel::Info,
            "The etcd relation is gone: this unit uses the peer relation; the etcd connection \
             files are removed in a later hook, once the worker has released."
                .into(),
        );
    }

    /// §3.5's cleanup, one hook late: no etcd relation, yet connection files.
    fn remove_stale_connection_files(&mut self) {
        let relation = self.relation();
        if relation.relation_id.is_some()
            || (relation.files.etcdctl_json.is_none() && relation.files.server_ca.is_none())
        {
            return;
        }
        self.log(
            LogLevel::Info,
            "No etcd relation: removing the etcd connection files.".into(),
        );
        for path in [ETCDCTL_JSON, SERVER_CA] {
            self.relation_command(RelationCommand::RemoveFile { path: path.into() });
        }
        let files = &mut self.relation_mut().files;
        files.etcdctl_json = None;
        files.server_ca = None;
    }
}

/// Why `bag` does not hold a valid request for `resource` (`None`: it does).
fn request_problem(bag: &Bag, resource: &str) -> Option<String> {
    let Some(requests) = bag.get(REQUESTS) else {
        return Some("there is none yet".into());
    };
    if bag.get(VERSION).map(String::as_str) != Some("v1") {
        return Some("its version is not v1".into());
    }
    let request = match parse_objects(requests) {
        Ok(list) if list.len() == 1 => list.into_iter().next().expect("one"),
        Ok(list) => return Some(format!("it holds {} requests, not one", list.len())),
        Err(why) => return Some(why),
    };
    if str_field(&request, "resource") != resource {
        return Some(format!(
            "it is for {:?}, not {resource:?}",
            str_field(&request, "resource")
        ));
    }
    let salt = str_field(&request, "salt");
    if salt.is_empty() || str_field(&request, "request-id") != keys::request_id(resource, &salt) {
        return Some("its request-id does not match its salt".into());
    }
    if str_field(&request, "secret-mtls").is_empty() {
        return Some("it carries no client certificate (secret-mtls)".into());
    }
    None
}

/// The mTLS secret id of the request in `bag`.
fn request_secret(bag: &Bag) -> Option<String> {
    let request = parse_objects(bag.get(REQUESTS)?).ok()?.into_iter().next()?;
    Some(str_field(&request, "secret-mtls")).filter(|s| !s.is_empty())
}

fn parse_objects(text: &str) -> Result<Vec<Map<String, Value>>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(map) => Ok(map),
                _ => Err("an entry is not a JSON object".to_string()),
            })
            .collect(),
        Ok(_) => Err("not a JSON array".into()),
        Err(e) => Err(format!("not JSON ({e})")),
    }
}

fn str_field(map: &Map<String, Value>, key: &str) -> String {
    map.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Whether two secret references name the same secret (`secret:ID`, `secret://model/ID`,
/// or a bare id).
fn same_secret(a: &str, b: &str) -> bool {
    let tail = |s: &str| {
        s.rsplit(['/', ':'])
            .next()
            .unwrap_or_default()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    !tail(a).is_empty() && tail(a) == tail(b)
}

/// A salt of 16 characters `[A-Za-z0-9]` from random bytes (rejection sampling, so every
/// character is equally likely).
pub fn salt(random: &[u8]) -> String {
    let n = SALT_ALPHABET.len();
    let limit = (256 / n * n) as u8;
    let mut out: String = random
        .iter()
        .filter(|b| **b < limit)
        .take(16)
        .map(|b| SALT_ALPHABET[*b as usize % n] as char)
        .collect();
    // Too few usable bytes (never with SALT_RANDOM_BYTES of real randomness).
    let mut extra = random.iter().cycle();
    while out.len() < 16 {
        let b = extra.next().copied().unwrap_or(0);
        out.push(SALT_ALPHABET[b as usize % n] as char);
    }
    out
}

/// The `requests` value (spec/etcd.md §3.3): one request, keys in the reference's order,
/// Python `json.dumps` separators.
pub fn request_json(resource: &str, request_id: &str, salt: &str, secret_mtls: &str) -> String {
    let mut request = Map::new();
    request.insert("resource".into(), resource.into());
    request.insert("request-id".into(), request_id.into());
    request.insert("salt".into(), salt.into());
    request.insert("extra-user-roles".into(), Value::Null);
    request.insert("extra-group-roles".into(), Value::Null);
    request.insert("external-node-connectivity".into(), false.into());
    request.insert("entity-type".into(), Value::Null);
    request.insert("entity-permissions".into(), Value::Null);
    request.insert("secret-mtls".into(), secret_mtls.into());
    python_json(&Value::Array(vec![Value::Object(request)]))
}

/// `json.dumps(value)` with Python's defaults: `", "` and `": "` separators, keys in the
/// map's order, non-ASCII and DEL escaped as `\uXXXX`.
pub fn python_json(value: &Value) -> String {
    let mut out = String::new();
    write_python_json(value, &mut out);
    out
}

fn write_python_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_python_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_string(key, out);
                out.push_str(": ");
                write_python_json(item, out);
            }
            out.push('}');
        }
    }
}

fn write_python_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests;
