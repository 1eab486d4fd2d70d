//! The etcd client identity (spec/etcd.md §3.2), made with RustCrypto (`rsa`, `x509-cert`):
//! the `crypto.generate-client-identity` import of every Rust host.
//!
//! A self-signed CA (RSA-4096, `CA:TRUE` critical, key usage digitalSignature +
//! keyEncipherment + keyCertSign critical, subject key identifier) signs a client
//! certificate (RSA-4096, `CA:FALSE` critical, authority and subject key identifiers, no
//! key usage); SHA-256 signatures, 50 years of validity, subject = CN only (UTF8String).
//! The client key is PKCS#1 PEM; the CA key is dropped. The two keys are generated on two
//! threads (an RSA-4096 key takes about a second).

use std::time::Duration;

use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs1v15::{Signature, SigningKey};
use rsa::pkcs8::LineEnding;
use rsa::rand_core::{OsRng, RngCore};
use sha2::Sha256;
use x509_cert::Certificate;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::asn1::{Any, ObjectIdentifier, SetOfVec, Utf8StringRef};
use x509_cert::der::referenced::OwnedToRef;
use x509_cert::der::{EncodePem, Tag};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

/// RSA modulus size of both keys.
pub const KEY_BITS: usize = 4096;
/// Validity of both certificates: 365 × 50 days.
pub const VALIDITY_DAYS: u64 = 365 * 50;

/// The three PEM texts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The self-signed client CA certificate.
    pub ca_cert: String,
    /// The client certificate, signed by the CA.
    pub client_cert: String,
    /// The client's private key, PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`).
    pub client_key: String,
}

/// Generate a client CA and client certificate for `common_name`.
pub fn generate(common_name: &str) -> Result<Identity, String> {
    let (ca_key, client_key) = std::thread::scope(|scope| {
        let ca = scope.spawn(new_key);
        let client = new_key();
        (
            ca.join()
                .unwrap_or_else(|_| Err("key thread panicked".into())),
            client,
        )
    });
    issue(common_name, ca_key?, &client_key?)
}

fn new_key() -> Result<RsaPrivateKey, String> {
    RsaPrivateKey::new(&mut OsRng, KEY_BITS).map_err(|e| format!("RSA key generation: {e}"))
}

/// The certificates for two given keys (the CA key is consumed).
pub fn issue(
    common_name: &str,
    ca_key: RsaPrivateKey,
    client_key: &RsaPrivateKey,
) -> Result<Identity, String> {
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: &dyn std::fmt::Display| format!("{what}: {e}")
    };
    let subject = common_name_only(common_name).map_err(|e| fail("subject")(&e))?;
    let validity = Validity::from_now(Duration::from_secs(VALIDITY_DAYS * 86_400))
        .map_err(|e| fail("validity")(&e))?;
    let ca_signer = SigningKey::<Sha256>::new(ca_key);
    let ca_spki = SubjectPublicKeyInfoOwned::from_key(ca_signer.as_ref().to_public_key())
        .map_err(|e| fail("CA public key")(&e))?;
    let client_spki = SubjectPublicKeyInfoOwned::from_key(client_key.to_public_key())
        .map_err(|e| fail("client public key")(&e))?;

    let ca = {
        let mut builder = CertificateBuilder::new(
            Profile::Manual { issuer: None },
            serial_number().map_err(|e| fail("serial")(&e))?,
            validity,
            subject.clone(),
            ca_spki.clone(),
            &ca_signer,
        )
        .map_err(|e| fail("CA certificate")(&e))?;
        let ski = SubjectKeyIdentifier::try_from(ca_spki.owned_to_ref())
            .map_err(|e| fail("CA key identifier")(&e))?;
        let usage = KeyUsage(
            KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment | KeyUsages::KeyCertSign,
        );
        // Basic constraints and key usage are marked critical by x509-cert.
        builder
            .add_extension(&BasicConstraints {
                ca: true,
                path_len_constraint: None,
            })
            .and_then(|()| builder.add_extension(&usage))
            .and_then(|()| builder.add_extension(&ski))
            .map_err(|e| fail("CA extensions")(&e))?;
        builder
            .build::<Signature>()
            .map_err(|e| fail("signing the CA certificate")(&e))?
    };

    let client = {
        let mut builder = CertificateBuilder::new(
            Profile::Manual {
                issuer: Some(subject.clone()),
            },
            serial_number().map_err(|e| fail("serial")(&e))?,
            validity,
            subject,
            client_spki.clone(),
            &ca_signer,
        )
        .map_err(|e| fail("client certificate")(&e))?;
        let aki = AuthorityKeyIdentifier::try_from(ca_spki.owned_to_ref())
            .map_err(|e| fail("authority key identifier")(&e))?;
        let ski = SubjectKeyIdentifier::try_from(client_spki.owned_to_ref())
            .map_err(|e| fail("client key identifier")(&e))?;
        builder
            .add_extension(&BasicConstraints {
                ca: false,
                path_len_constraint: None,
            })
            .and_then(|()| builder.add_extension(&aki))
            .and_then(|()| builder.add_extension(&ski))
            .map_err(|e| fail("client extensions")(&e))?;
        builder
            .build::<Signature>()
            .map_err(|e| fail("signing the client certificate")(&e))?
    };

    Ok(Identity {
        ca_cert: pem(&ca)?,
        client_cert: pem(&client)?,
        client_key: client_key
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|e| fail("client key PEM")(&e))?
            .to_string(),
    })
}

fn pem(cert: &Certificate) -> Result<String, String> {
    cert.to_pem(LineEnding::LF)
        .map_err(|e| format!("certificate PEM: {e}"))
}

/// A subject holding only `CN=<common_name>` as a UTF8String (no escaping rules apply).
fn common_name_only(common_name: &str) -> Result<Name, x509_cert::der::Error> {
    const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    let value = Utf8StringRef::new(common_name)?;
    let attribute = AttributeTypeAndValue {
        oid: COMMON_NAME,
        value: Any::new(Tag::Utf8String, value.as_bytes())?,
    };
    let rdn = RelativeDistinguishedName(SetOfVec::try_from(vec![attribute])?);
    Ok(RdnSequence(vec![rdn]))
}

/// A random positive serial of up to 159 bits, as `cryptography` makes them.
fn serial_number() -> Result<SerialNumber, x509_cert::der::Error> {
    let mut bytes = [0u8; 20];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    SerialNumber::new(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::oid_registry;
    use x509_parser::prelude::*;

    /// One identity for the whole test binary (two RSA-4096 keys take a while).
    fn identity() -> &'static Identity {
        static IDENTITY: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();
        IDENTITY.get_or_init(|| generate("VUtRzu9SC3Zp9GqQonvEy9").expect("generate"))
    }

    /// `cert`'s SHA-256 RSA signature checks out with `issuer`'s key.
    fn verify(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) {
        use rsa::pkcs8::DecodePublicKey;
        use rsa::signature::Verifier;
        let key = rsa::RsaPublicKey::from_public_key_der(issuer.public_key().raw).unwrap();
        let signature = Signature::try_from(cert.signature_value.data.as_ref()).unwrap();
        rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
            .verify(cert.tbs_certificate.as_ref(), &signature)
            .expect("signature verifies");
    }

    fn parse(pem_text: &str) -> (Vec<u8>, String) {
        let (_, pem) = parse_x509_pem(pem_text.as_bytes()).expect("PEM");
        (pem.contents, pem.label)
    }

    #[test]
    fn s10_1_generated_material_is_pem_and_parses() {
        let id = identity();
        assert!(id.ca_cert.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(id.client_cert.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(
            id.client_key
                .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
        );
        let (der, label) = parse(&id.client_key);
        assert_eq!(label, "RSA PRIVATE KEY");
        let key = <RsaPrivateKey as rsa::pkcs1::DecodeRsaPrivateKey>::from_pkcs1_der(&der)
            .expect("PKCS#1 key");
        assert_eq!(rsa::traits::PublicKeyParts::size(&key) * 8, KEY_BITS);
    }

    #[test]
    fn s3_2_ca_extensions() {
        let (der, _) = parse(&identity().ca_cert);
        let (_, ca) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(ca.subject().to_string(), "CN=VUtRzu9SC3Zp9GqQonvEy9");
        assert_eq!(ca.issuer(), ca.subject());
        assert_eq!(
            ca.signature_algorithm.algorithm,
            oid_registry::OID_PKCS1_SHA256WITHRSA
        );
        let bc = ca.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        let ku = ca.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(ku.value.digital_signature() && ku.value.key_encipherment());
        assert!(ku.value.key_cert_sign() && !ku.value.crl_sign());
        assert!(
            ca.get_extension_unique(&oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
                .unwrap()
                .is_some()
        );
        let SubjectPublicKeyInfo { .. } = ca.public_key();
        let days =
            (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp()) / 86_400;
        assert_eq!(days as u64, VALIDITY_DAYS);
        // Self-signed.
        verify(&ca, &ca);
    }

    #[test]
    fn s3_2_client_extensions_and_chain() {
        let (ca_der, _) = parse(&identity().ca_cert);
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        let (der, _) = parse(&identity().client_cert);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=VUtRzu9SC3Zp9GqQonvEy9");
        assert_eq!(cert.issuer(), ca.subject());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca);
        assert!(cert.key_usage().unwrap().is_none(), "no key usage");
        assert!(cert.extended_key_usage().unwrap().is_none());
        assert!(cert.subject_alternative_name().unwrap().is_none());
        let ski = |c: &X509Certificate<'_>| {
            c.extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                    _ => None,
                })
        };
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
                _ => None,
            })
            .expect("authority key identifier");
        assert_eq!(Some(aki.0.to_vec()), ski(&ca));
        assert!(ski(&cert).is_some());
        assert_ne!(ski(&cert), ski(&ca));
        verify(&cert, &ca);
        // The client certificate matches the client key.
        let (key_der, _) = parse(&identity().client_key);
        let key =
            <RsaPrivateKey as rsa::pkcs1::DecodeRsaPrivateKey>::from_pkcs1_der(&key_der).unwrap();
        let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).unwrap();
        let spki_der = x509_cert::der::Encode::to_der(&spki).unwrap();
        assert_eq!(cert.public_key().raw, spki_der.as_slice());
    }

    #[test]
    fn odd_common_names_are_kept_verbatim() {
        let name = common_name_only("a,b+c=d \"e\"").unwrap();
        let der = x509_cert::der::Encode::to_der(&name).unwrap();
        let (_, parsed) = X509Name::from_der(&der).unwrap();
        let cn = parsed.iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "a,b+c=d \"e\"");
    }

    /// A server CA and a server certificate for 127.0.0.1 (RSA-2048: only the client side
    /// is under test).
    fn server_identity() -> (String, String, String) {
        use std::net::{IpAddr, Ipv4Addr};
        use x509_cert::ext::pkix::SubjectAltName;
        use x509_cert::ext::pkix::name::GeneralName;
        let key = |bits| RsaPrivateKey::new(&mut OsRng, bits).unwrap();
        let ca_signer = SigningKey::<Sha256>::new(key(2048));
        let ca_name = common_name_only("test etcd server CA").unwrap();
        let validity = x509_cert::time::Validity::from_now(Duration::from_secs(86_400)).unwrap();
        let ca_spki =
            SubjectPublicKeyInfoOwned::from_key(ca_signer.as_ref().to_public_key()).unwrap();
        let ca = CertificateBuilder::new(
            Profile::Root,
            serial_number().unwrap(),
            validity,
            ca_name.clone(),
            ca_spki,
            &ca_signer,
        )
        .unwrap()
        .build::<Signature>()
        .unwrap();
        let server_key = key(2048);
        let spki = SubjectPublicKeyInfoOwned::from_key(server_key.to_public_key()).unwrap();
        let mut builder = CertificateBuilder::new(
            Profile::Leaf {
                issuer: ca_name,
                enable_key_agreement: false,
                enable_key_encipherment: true,
                include_subject_key_identifier: true,
            },
            serial_number().unwrap(),
            validity,
            common_name_only("127.0.0.1").unwrap(),
            spki,
            &ca_signer,
        )
        .unwrap();
        builder
            .add_extension(&SubjectAltName(vec![GeneralName::from(IpAddr::V4(
                Ipv4Addr::LOCALHOST,
            ))]))
            .unwrap();
        let server = builder.build::<Signature>().unwrap();
        (
            pem(&ca).unwrap(),
            pem(&server).unwrap(),
            server_key.to_pkcs1_pem(LineEnding::LF).unwrap().to_string(),
        )
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// etcd with `--client-cert-auth` trusting only the generated client CA accepts the
    /// client certificate, maps its CN to the etcd user (as charmed-etcd provisions it:
    /// user = role = CN, read-write on the requested prefix), and refuses a certificate
    /// from another CA.
    #[test]
    fn etcd_accepts_the_identity_for_client_cert_auth() {
        let (Ok(etcd), Ok(etcdctl)) = (which("etcd"), which("etcdctl")) else {
            eprintln!("skipped: etcd or etcdctl is not installed");
            return;
        };
        let id = identity();
        let (server_ca, server_cert, server_key) = server_identity();
        let dir = std::env::temp_dir().join(format!("rollingops-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let client_ca = write("client-ca.pem", &id.ca_cert);
        let client_cert = write("client.pem", &id.client_cert);
        let client_key = write("client.key", &id.client_key);
        let server_ca = write("server-ca.pem", &server_ca);
        let server_cert = write("server.pem", &server_cert);
        let server_key = write("server.key", &server_key);
        let (client_port, peer_port) = (free_port(), free_port());
        let endpoint = format!("https://127.0.0.1:{client_port}");
        let mut server = std::process::Command::new(etcd)
            .args(["--name", "identity-test", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{peer_port}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{peer_port}"))
            .arg("--initial-cluster")
            .arg(format!("identity-test=http://127.0.0.1:{peer_port}"))
            .args(["--client-cert-auth", "--trusted-ca-file", &client_ca])
            .args(["--cert-file", &server_cert, "--key-file", &server_key])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("start etcd");
        struct Kill<'a>(&'a mut std::process::Child);
        impl Drop for Kill<'_> {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _guard = Kill(&mut server);
        let run = |cert: &str, key: &str, args: &[&str]| {
            let out = std::process::Command::new(&etcdctl)
                .args(args)
                .env("ETCDCTL_API", "3")
                .env("ETCDCTL_ENDPOINTS", &endpoint)
                .env("ETCDCTL_CACERT", &server_ca)
                .env("ETCDCTL_CERT", cert)
                .env("ETCDCTL_KEY", key)
                .env("ETCDCTL_DIAL_TIMEOUT", "2s")
                .output()
                .unwrap();
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        };
        let client = |args: &[&str]| run(&client_cert, &client_key, args);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !client(&["endpoint", "health"]).0 {
            assert!(
                std::time::Instant::now() < deadline,
                "etcd did not come up: {}",
                std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let cn = "VUtRzu9SC3Zp9GqQonvEy9";
        let prefix = "/rollingops/default/cluster-12345/";
        for args in [
            vec!["user", "add", "root:rootpw"],
            vec!["user", "grant-role", "root", "root"],
            vec!["role", "add", cn],
            vec![
                "role",
                "grant-permission",
                cn,
                "readwrite",
                prefix,
                "--prefix=true",
            ],
            vec!["user", "add", cn, "--no-password"],
            vec!["user", "grant-role", cn, cn],
            vec!["auth", "enable"],
        ] {
            let (ok, out) = client(&args);
            assert!(ok, "etcdctl {args:?}: {out}");
        }
        // Authenticated as the CN: the prefix is writable, the rest is not.
        let key = format!("{prefix}granted-unit/");
        let (ok, out) = client(&["put", &key, "owner"]);
        assert!(ok, "{out}");
        let (ok, out) = client(&["get", &key, "--print-value-only"]);
        assert!(ok && out.trim() == "owner", "{out}");
        let (ok, out) = client(&["put", "/elsewhere", "x"]);
        assert!(!ok && out.contains("permission denied"), "{out}");
        // A certificate from another CA is refused at the TLS handshake.
        let (ok, out) = run(&server_cert, &server_key, &["get", &key]);
        assert!(!ok, "{out}");
        drop(_guard);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn which(program: &str) -> Result<std::path::PathBuf, ()> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .ok_or(())
    }
}
