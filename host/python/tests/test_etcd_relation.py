"""spec/etcd.md §3: the shared mTLS client identity and the etcd relation, through ops.testing.

Rows of §10.1 (test_etcd_certificates.py and the certificate rows of
test_etcd_rollingops_in_charm.py), the §3.3 request with its §12 vector, the provider's data
(§3.4) and relation-broken (§3.5), on the Python host.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from ops import testing

from charm import ACTIONS, META, EtcdConfiguredCharm
from rollingops import RollingOpsInvalidSecretContentError
from rollingops._crypto import ClientIdentity, generate_client_identity
from rollingops._host import Host

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

RESOURCE = '/rollingops/default/cluster-12345/'
CLIENT_LABEL = 'rollingops-client-cert'


@pytest.fixture(scope='module')
def real_identity() -> ClientIdentity:
    """One real identity per module (two RSA-4096 keys)."""
    return generate_client_identity('VUtRzu9SC3Zp9GqQonvEy9')


def fake_identity(tag: str) -> ClientIdentity:
    def pem(label: str, body: str) -> str:
        return f'-----BEGIN {label}-----\n{body}\n-----END {label}-----\n'

    return ClientIdentity(
        ca_cert=pem('CERTIFICATE', f'ca-{tag}'),
        client_cert=pem('CERTIFICATE', f'cert-{tag}'),
        client_key=pem('RSA PRIVATE KEY', f'key-{tag}'),
    )


@pytest.fixture
def base_dir(session_base_dir: Path) -> Iterator[Path]:
    """The session base_dir (it holds the compiled component) without etcd or tls files."""
    for sub in ('tls', 'etcd'):
        shutil.rmtree(session_base_dir / sub, ignore_errors=True)
    yield session_base_dir
    for sub in ('tls', 'etcd'):
        shutil.rmtree(session_base_dir / sub, ignore_errors=True)


@pytest.fixture
def generated(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make key generation fast and count it (common names asked for)."""
    calls: list[str] = []

    def fake(common_name: str) -> ClientIdentity:
        calls.append(common_name)
        return fake_identity(f'{common_name}-{len(calls)}')

    monkeypatch.setattr('rollingops._crypto.generate_client_identity', fake)
    return calls


def context(unit_id: int = 0) -> testing.Context:
    return testing.Context(
        EtcdConfiguredCharm, meta=META, actions=ACTIONS, app_name='charm', unit_id=unit_id
    )


def shared_secret(identity: ClientIdentity, **changes: str) -> testing.Secret:
    content = {
        'client-cert': identity.client_cert,
        'client-key': identity.client_key,
        'client-ca': identity.ca_cert,
        **changes,
    }
    return testing.Secret(tracked_content=content, owner='app', label=CLIENT_LABEL)


def files(base_dir: Path) -> ClientIdentity | None:
    try:
        return ClientIdentity(
            ca_cert=(base_dir / 'tls' / 'client-ca.pem').read_text(),
            client_cert=(base_dir / 'tls' / 'client.pem').read_text(),
            client_key=(base_dir / 'tls' / 'client.key').read_text(),
        )
    except FileNotFoundError:
        return None


# -- the Python host's key generation (test_etcd_certificates.py) -----------------------------


def test_make_shared_certificate_is_valid(real_identity: ClientIdentity):
    ca = x509.load_pem_x509_certificate(real_identity.ca_cert.encode())
    cert = x509.load_pem_x509_certificate(real_identity.client_cert.encode())
    key = load_pem_private_key(real_identity.client_key.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 4096
    assert real_identity.client_key.startswith('-----BEGIN RSA PRIVATE KEY-----')
    assert real_identity.ca_cert.startswith('-----BEGIN CERTIFICATE-----')
    assert real_identity.client_cert.startswith('-----BEGIN CERTIFICATE-----')
    cn = x509.Name.from_rfc4514_string('CN=VUtRzu9SC3Zp9GqQonvEy9')
    assert ca.subject == ca.issuer == cert.subject == cert.issuer == cn
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 18250
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 18250
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    cert.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)

    ca_ext = {e.oid: e for e in ca.extensions}
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature and ku.value.key_encipherment and ku.value.key_cert_sign
    assert not ku.value.crl_sign
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert len(ca_ext) == 3

    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert len(cert.extensions) == 3, 'no key usage, extended key usage or SAN'


def test_host_returns_the_wit_record(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr('rollingops._crypto.generate_client_identity', fake_identity)
    record = Host.generate_client_identity(None, 'cn')  # type: ignore[arg-type]
    assert getattr(record, 'ca-cert') == fake_identity('cn').ca_cert
    assert getattr(record, 'client-cert') == fake_identity('cn').client_cert
    assert getattr(record, 'client-key') == fake_identity('cn').client_key


# -- test_etcd_rollingops_in_charm.py: certificate rows ---------------------------------------


def test_leader_elected_creates_shared_secret_and_stores_id(base_dir: Path, generated: list[str]):
    ctx = context()
    peer = testing.PeerRelation('restart')
    out = ctx.run(ctx.on.leader_elected(), testing.State(leader=True, relations={peer}))
    secret_id = out.get_relation(peer.id).local_app_data['rollingops-client-secret-id']
    assert secret_id.startswith('secret:')
    assert len(generated) == 1
    secret = out.get_secret(label=CLIENT_LABEL)
    assert secret.owner == 'app'
    assert files(base_dir) == ClientIdentity(
        ca_cert=secret.tracked_content['client-ca'],
        client_cert=secret.tracked_content['client-cert'],
        client_key=secret.tracked_content['client-key'],
    )
    assert (base_dir / 'tls' / 'client.key').stat().st_mode & 0o777 == 0o600
    assert (base_dir / 'tls' / 'client.pem').stat().st_mode & 0o777 == 0o644


def test_leader_generates_a_real_identity(base_dir: Path):
    ctx = context()
    peer = testing.PeerRelation('restart')
    out = ctx.run(ctx.on.leader_elected(), testing.State(leader=True, relations={peer}))
    content = out.get_secret(label=CLIENT_LABEL).tracked_content
    cert = x509.load_pem_x509_certificate(content['client-cert'].encode())
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert len(str(cn)) == 22
    assert files(base_dir) is not None


def test_leader_elected_does_not_regenerate_when_secret_already_exists(
    base_dir: Path, generated: list[str]
):
    ctx = context()
    secret = shared_secret(fake_identity('old'))
    peer = testing.PeerRelation(
        'restart', local_app_data={'rollingops-client-secret-id': secret.id}
    )
    state = testing.State(leader=True, relations={peer}, secrets={secret})
    out = ctx.run(ctx.on.leader_elected(), state)
    assert out.get_relation(peer.id).local_app_data['rollingops-client-secret-id'] == secret.id
    assert generated == []
    assert len(out.secrets) == 1


def test_non_leader_does_not_create_shared_secret(base_dir: Path, generated: list[str]):
    ctx = context(unit_id=1)
    peer = testing.PeerRelation('restart', peers_data={0: {}})
    out = ctx.run(ctx.on.relation_changed(peer, remote_unit=0), testing.State(relations={peer}))
    assert 'rollingops-client-secret-id' not in out.get_relation(peer.id).local_app_data
    assert generated == []
    assert not out.secrets


def test_relation_changed_syncs_local_certificate_from_secret(base_dir: Path):
    ctx = context(unit_id=1)
    shared = fake_identity('shared')
    secret = shared_secret(shared)
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'rollingops-client-secret-id': secret.id},
        peers_data={0: {}},
    )
    state = testing.State(relations={peer}, secrets={secret})
    ctx.run(ctx.on.relation_changed(peer, remote_unit=0), state)
    assert files(base_dir) == shared


@pytest.mark.parametrize('field', ['client-cert', 'client-key', 'client-ca'])
def test_invalid_certificate_secret_content_raises(base_dir: Path, field: str):
    ctx = context(unit_id=1)
    secret = shared_secret(fake_identity('shared'), **{field: ''})
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'rollingops-client-secret-id': secret.id},
        peers_data={0: {}},
    )
    state = testing.State(relations={peer}, secrets={secret})
    with pytest.raises(testing.errors.UncaughtCharmError) as raised:
        ctx.run(ctx.on.relation_changed(peer, remote_unit=0), state)
    # Checked outside the `raises` block (spec/etcd.md §11 item 28).
    assert isinstance(raised.value.__cause__, RollingOpsInvalidSecretContentError)
    assert field in str(raised.value.__cause__)
    assert files(base_dir) is None


def test_a_broken_secret_does_not_fail_unrelated_hooks(base_dir: Path):
    """§11 item 15: the secret is not read when the charm (and the manager) is built."""
    ctx = context(unit_id=1)
    secret = shared_secret(fake_identity('shared'), **{'client-cert': ''})
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'rollingops-client-secret-id': secret.id},
        peers_data={0: {}},
    )
    state = testing.State(relations={peer}, secrets={secret})
    ctx.run(ctx.on.update_status(), state)
    ctx.run(ctx.on.action('restart', params={'delay': 1}), state)


# -- the relation request (§3.3, §12) ----------------------------------------------------------


def request_of(bag: dict[str, str]) -> dict[str, Any]:
    assert bag['version'] == 'v1'
    [request] = json.loads(bag['requests'])
    return request


def test_leader_writes_the_request_on_relation_created(base_dir: Path, generated: list[str]):
    ctx = context()
    peer = testing.PeerRelation('restart')
    etcd = testing.Relation('etcd', remote_app_name='etcd')
    out = ctx.run(
        ctx.on.relation_created(etcd), testing.State(leader=True, relations={peer, etcd})
    )
    bag = out.get_relation(etcd.id).local_app_data
    assert set(bag) == {'version', 'requests'}
    request = request_of(bag)
    assert list(request) == [
        'resource',
        'request-id',
        'salt',
        'extra-user-roles',
        'extra-group-roles',
        'external-node-connectivity',
        'entity-type',
        'entity-permissions',
        'secret-mtls',
    ]
    assert request['resource'] == RESOURCE
    salt = request['salt']
    assert len(salt) == 16 and salt.isalnum() and salt.isascii()
    expected_id = hashlib.sha256(f'{RESOURCE}:{salt}'.encode()).hexdigest()[:16]
    assert request['request-id'] == expected_id
    # Byte-exact: Python's json.dumps of the same object.
    assert bag['requests'] == json.dumps([request])
    label = f'etcd.{etcd.id}.{expected_id}.mtls.secret'
    mtls = out.get_secret(label=label)
    assert mtls.id == request['secret-mtls']
    shared = out.get_secret(label=CLIENT_LABEL)
    assert mtls.tracked_content == {'mtls-cert': shared.tracked_content['client-cert']}
    assert mtls.remote_grants == {etcd.id: {'etcd'}}
    assert 'data' not in out.get_relation(etcd.id).local_unit_data


def test_request_vector():
    """§12: resource `/rollingops/default/cluster-12345/`, salt `9yeEUXhRVEMnJ8Nz`."""
    assert (
        hashlib.sha256(f'{RESOURCE}:9yeEUXhRVEMnJ8Nz'.encode()).hexdigest()[:16]
        == 'c16f08d1bf66d60a'
    )


def test_request_written_later_when_missing(base_dir: Path, generated: list[str]):
    """§11 item 12: a relation without a valid request gets one in any later leader hook."""
    ctx = context()
    peer = testing.PeerRelation('restart')
    etcd = testing.Relation(
        'etcd',
        remote_app_name='etcd',
        local_app_data={
            'version': 'v1',
            'requests': json.dumps(
                [{'resource': RESOURCE, 'request-id': 'x', 'salt': 'y', 'secret-mtls': None}]
            ),
        },
    )
    out = ctx.run(ctx.on.update_status(), testing.State(leader=True, relations={peer, etcd}))
    request = request_of(out.get_relation(etcd.id).local_app_data)
    assert request['secret-mtls'].startswith('secret:')
    # Valid now: nothing more is written.
    again = ctx.run(ctx.on.update_status(), out)
    assert again.get_relation(etcd.id).local_app_data == out.get_relation(etcd.id).local_app_data
    assert len(again.secrets) == len(out.secrets)


# -- the provider's data (§3.4), relation-broken (§3.5) ----------------------------------------

CA = '-----BEGIN CERTIFICATE-----\nserver-ca\n-----END CERTIFICATE-----\n'


def provisioned(base_dir: Path) -> tuple[testing.State, testing.Relation, testing.Secret]:
    """A follower whose etcd relation carries the provider's answer."""
    shared = shared_secret(fake_identity('shared'))
    tls = testing.Secret(tracked_content={'tls-ca': CA})
    user = testing.Secret(tracked_content={'username': 'x'})
    response = {
        'resource': RESOURCE,
        'request-id': 'c16f08d1bf66d60a',
        'salt': '9yeEUXhRVEMnJ8Nz',
        'endpoints': '10.0.0.1:2379,10.0.0.2:2379',
        'secret-user': user.id,
        'secret-tls': tls.id,
        'version': '3.6.10',
    }
    etcd = testing.Relation(
        'etcd',
        remote_app_name='etcd',
        remote_app_data={
            'requests': json.dumps([response]),
            'data': json.dumps({'c16f08d1bf66d60a': {'resource': RESOURCE}}),
        },
    )
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'rollingops-client-secret-id': shared.id},
        peers_data={0: {}},
    )
    state = testing.State(relations={peer, etcd}, secrets={shared, tls, user})
    return state, etcd, tls


def test_relation_changed_writes_the_server_ca_and_etcdctl_config(base_dir: Path):
    ctx = context(unit_id=1)
    state, etcd, _ = provisioned(base_dir)
    out = ctx.run(ctx.on.relation_changed(etcd, remote_unit=0), state)
    assert (base_dir / 'etcd' / 'server-ca.pem').read_text() == CA
    config = (base_dir / 'etcd' / 'etcdctl.json').read_text()
    assert json.loads(config) == {
        'endpoints': '10.0.0.1:2379,10.0.0.2:2379',
        'cacert_path': f'{base_dir}/etcd/server-ca.pem',
        'cert_path': f'{base_dir}/tls/client.pem',
        'key_path': f'{base_dir}/tls/client.key',
    }
    assert config == json.dumps(json.loads(config), indent=2)
    assert (base_dir / 'etcd' / 'etcdctl.json').stat().st_mode & 0o777 == 0o600
    assert files(base_dir) == fake_identity('shared')
    data = json.loads(out.get_relation(etcd.id).local_unit_data['data'])
    assert data['c16f08d1bf66d60a']['endpoints'] == '10.0.0.1:2379,10.0.0.2:2379'
    # The unit is now etcd-ready.
    with ctx(ctx.on.update_status(), out) as mgr:
        view = mgr.charm.rollingops.describe()
    assert view['etcd']['usable'] is True, view


def test_server_ca_rotation(base_dir: Path):
    ctx = context(unit_id=1)
    state, etcd, tls = provisioned(base_dir)
    out = ctx.run(ctx.on.relation_changed(etcd, remote_unit=0), state)
    rotated = CA.replace('server-ca', 'server-ca-2')
    new_tls = testing.Secret(
        id=tls.id, tracked_content={'tls-ca': CA}, latest_content={'tls-ca': rotated}
    )
    secrets = {s for s in out.secrets if s.id != tls.id} | {new_tls}
    out = ctx.run(
        ctx.on.secret_changed(new_tls), testing.State(relations=out.relations, secrets=secrets)
    )
    assert (base_dir / 'etcd' / 'server-ca.pem').read_text() == rotated


def test_relation_broken_keeps_files_until_a_later_hook(base_dir: Path):
    ctx = context(unit_id=1)
    state, etcd, _ = provisioned(base_dir)
    out = ctx.run(ctx.on.relation_changed(etcd, remote_unit=0), state)
    out = ctx.run(ctx.on.relation_broken(out.get_relation(etcd.id)), out)
    assert (base_dir / 'etcd' / 'etcdctl.json').exists()
    remaining = testing.State(
        relations={r for r in out.relations if r.id != etcd.id}, secrets=out.secrets
    )
    ctx.run(ctx.on.update_status(), remaining)
    assert not (base_dir / 'etcd' / 'etcdctl.json').exists()
    assert not (base_dir / 'etcd' / 'server-ca.pem').exists()
    assert files(base_dir) == fake_identity('shared'), 'the client identity is kept'
