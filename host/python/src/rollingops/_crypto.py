"""The etcd client identity (spec/etcd.md §3.2), made with ``cryptography``.

A self-signed CA (RSA-4096, ``CA:TRUE`` critical, key usage digitalSignature +
keyEncipherment + keyCertSign critical, subject key identifier) signs a client certificate
(RSA-4096, ``CA:FALSE`` critical, authority and subject key identifiers, no key usage), as
``charmlibs.rollingops`` does: SHA-256, 50 years of validity, subject = the common name only.
The CA's private key is dropped; the client key is PKCS#1 PEM.
"""

from __future__ import annotations

import datetime
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

KEY_BITS = 4096
VALIDITY = datetime.timedelta(days=365 * 50)


class ClientIdentity(NamedTuple):
    """The three PEM texts."""

    ca_cert: str
    client_cert: str
    client_key: str


def generate_client_identity(common_name: str) -> ClientIdentity:
    """Generate a client CA and a client certificate signed by it for ``common_name``."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    client_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    client = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(client_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = client_key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.TraditionalOpenSSL,
        encryption_algorithm=serialization.NoEncryption(),
    )
    return ClientIdentity(
        ca_cert=ca.public_bytes(serialization.Encoding.PEM).decode(),
        client_cert=client.public_bytes(serialization.Encoding.PEM).decode(),
        client_key=key_pem.decode(),
    )
