"""The Python host's etcd worker against a real etcd (Debian's ``etcd-server``/``etcd-client``).

etcd runs on loopback with TLS and client-certificate auth. The units get there through the
real relation flow driven with ops.testing: the leader creates the shared client identity
(``leader-elected``), each unit turns the provider's answer into ``etcd/etcdctl.json`` and
``etcd/server-ca.pem`` (``etcd-relation-changed``), and ``<charm_dir>/usr/bin/etcdctl`` is the
system's etcdctl. Then two units queue an operation each in etcd mode; their real worker
processes (``python -m rollingops._worker``, started by the hooks) compete for the lock in
etcd and dispatch ``rollingops_lock_granted`` through a ``juju-exec`` on ``PATH`` that records
the dispatch; the test runs each dispatched hook through ops.testing, and checks that the
callbacks ran one at a time.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from ops import testing

import charm
from charm import ACTIONS, META, EtcdConfiguredCharm
from conftest import lock_granted, ops_of
from rollingops import _worker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.skipif(
    shutil.which('etcd') is None or shutil.which('etcdctl') is None,
    reason='etcd is not installed (Debian packages etcd-server and etcd-client)',
)

CLIENT_LABEL = 'rollingops-client-cert'
RESOURCE = '/rollingops/default/cluster-12345/'
MODEL = testing.Model(name='m', uuid='6f1ad4f8-2b1c-4b1e-9a43-2f3c1f0e0a01')


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


def server_certificate(directory: Path) -> str:
    """A server CA and an etcd server certificate for 127.0.0.1; returns the CA's PEM."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'test etcd CA')])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, '127.0.0.1')]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / 'server.pem').write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / 'server.key').write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return ca.public_bytes(serialization.Encoding.PEM).decode()


class Etcd:
    """One etcd member on loopback requiring client certificates signed by ``client_ca``."""

    def __init__(self, directory: Path, client_ca: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.server_ca = server_certificate(directory)
        (directory / 'client-ca.pem').write_text(client_ca)
        self.endpoint = f'https://127.0.0.1:{free_port()}'
        peer = f'http://127.0.0.1:{free_port()}'
        self.log = directory / 'etcd.log'
        with open(self.log, 'wb') as log:
            self.process = subprocess.Popen(
                [
                    'etcd',
                    '--name=t',
                    f'--data-dir={directory / "data"}',
                    f'--listen-client-urls={self.endpoint}',
                    f'--advertise-client-urls={self.endpoint}',
                    f'--listen-peer-urls={peer}',
                    f'--initial-advertise-peer-urls={peer}',
                    f'--initial-cluster=t={peer}',
                    '--client-cert-auth',
                    f'--trusted-ca-file={directory / "client-ca.pem"}',
                    f'--cert-file={directory / "server.pem"}',
                    f'--key-file={directory / "server.key"}',
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Unit:
    """One unit: its charm directory (``usr/bin/etcdctl`` -> the system's), base_dir, state."""

    def __init__(self, root: Path, unit_id: int, session_base_dir: Path):
        self.id = unit_id
        self.name = f'charm/{unit_id}'
        self.charm_dir = root / f'charm{unit_id}'
        self.base_dir = root / f'base{unit_id}'
        (self.charm_dir / 'usr' / 'bin').mkdir(parents=True)
        self.base_dir.mkdir()
        for cached in session_base_dir.glob('rollingops-*.cwasm'):
            (self.base_dir / cached.name).write_bytes(cached.read_bytes())
        os.symlink(str(shutil.which('etcdctl')), self.charm_dir / 'usr' / 'bin' / 'etcdctl')
        charm_type = type(
            f'Unit{unit_id}Charm', (EtcdConfiguredCharm,), {'base_dir': str(self.base_dir)}
        )
        self.ctx = testing.Context(
            charm_type,
            meta=META,
            actions=ACTIONS,
            app_name='charm',
            unit_id=unit_id,
            charm_root=self.charm_dir,
        )
        self.state = testing.State(model=MODEL)

    def run(self, event: Any) -> None:
        self.state = self.ctx.run(event, self.state)

    def peer(self) -> testing.PeerRelation:
        [peer] = [r for r in self.state.relations if r.endpoint == 'restart']
        assert isinstance(peer, testing.PeerRelation)
        return peer

    def etcd(self) -> testing.Relation:
        [etcd] = [r for r in self.state.relations if r.endpoint == 'etcd']
        assert isinstance(etcd, testing.Relation)
        return etcd

    def worker_log(self) -> str:
        try:
            return (self.base_dir / _worker.WORKER_LOG).read_text()
        except FileNotFoundError:
            return ''

    def stop_worker(self) -> None:
        pid = _worker.worker_pid(str(self.base_dir))
        if pid is not None and _worker.worker_running(str(self.base_dir)):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def juju_exec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``juju-exec`` on PATH that records each dispatch as one line: its arguments."""
    record = tmp_path / 'dispatches'
    fake_bin = tmp_path / 'bin'
    fake_bin.mkdir()
    program = fake_bin / 'juju-exec'
    program.write_text(f'#!/bin/sh\necho "$*" >> {record}\n')
    program.chmod(0o755)
    monkeypatch.setenv('PATH', f'{fake_bin}:{os.environ["PATH"]}')
    return record


@pytest.fixture
def units(tmp_path: Path, session_base_dir: Path) -> Iterator[list[Unit]]:
    from rollingops._runtime import load

    load(str(session_base_dir))
    made = [Unit(tmp_path, i, session_base_dir) for i in (0, 1)]
    yield made
    for unit in made:
        unit.stop_worker()


@pytest.fixture
def etcd_servers() -> Iterator[list[Etcd]]:
    started: list[Etcd] = []
    yield started
    for server in started:
        server.stop()


def dispatched(record: Path) -> list[str]:
    try:
        return record.read_text().splitlines()
    except FileNotFoundError:
        return []


def connect(tmp_path: Path, units: list[Unit], etcd_servers: list[Etcd]) -> dict[str, str]:
    """Run the real relation flow: the leader makes the client identity, a TLS etcd trusting
    it starts, every unit gets the provider's answer and writes its etcdctl files. Returns an
    etcdctl environment using the units' own files."""
    first = units[0]
    # The leader creates the shared client identity (a real one) on leader-elected.
    first.state = testing.State(
        model=MODEL, leader=True, relations={testing.PeerRelation('restart', peers_data={1: {}})}
    )
    first.run(first.ctx.on.leader_elected())
    identity = first.state.get_secret(label=CLIENT_LABEL).tracked_content
    secret_id = first.peer().local_app_data['rollingops-client-secret-id']

    etcd = Etcd(tmp_path / 'etcd', identity['client-ca'])
    etcd_servers.append(etcd)

    # The provider's answer, as the etcd charm writes it.
    shared = testing.Secret(
        tracked_content=identity, id=secret_id, owner='app', label=CLIENT_LABEL
    )
    tls = testing.Secret(tracked_content={'tls-ca': etcd.server_ca})
    user = testing.Secret(tracked_content={'username': 'x'})
    response = {
        'resource': RESOURCE,
        'request-id': 'c16f08d1bf66d60a',
        'salt': '9yeEUXhRVEMnJ8Nz',
        'endpoints': etcd.endpoint,
        'secret-user': user.id,
        'secret-tls': tls.id,
        'version': '3.4.23',
    }
    for unit in units:
        other = 1 - unit.id
        etcd_relation = testing.Relation(
            'etcd',
            remote_app_name='etcd',
            remote_app_data={
                'requests': json.dumps([response]),
                'data': json.dumps({'c16f08d1bf66d60a': {'resource': RESOURCE}}),
            },
        )
        peer = testing.PeerRelation(
            'restart',
            local_app_data={'rollingops-client-secret-id': secret_id},
            peers_data={other: {}},
        )
        unit.state = testing.State(
            model=MODEL, relations={peer, etcd_relation}, secrets={shared, tls, user}
        )
        unit.run(unit.ctx.on.relation_changed(etcd_relation, remote_unit=0))
        config = json.loads((unit.base_dir / 'etcd' / 'etcdctl.json').read_text())
        assert config['endpoints'] == etcd.endpoint
        assert (unit.base_dir / 'tls' / 'client.pem').read_text() == identity['client-cert']

    # etcd is up and the units' files let etcdctl in.
    env = {
        'PATH': os.environ['PATH'],
        'ETCDCTL_API': '3',
        'ETCDCTL_ENDPOINTS': etcd.endpoint,
        'ETCDCTL_CACERT': str(first.base_dir / 'etcd' / 'server-ca.pem'),
        'ETCDCTL_CERT': str(first.base_dir / 'tls' / 'client.pem'),
        'ETCDCTL_KEY': str(first.base_dir / 'tls' / 'client.key'),
    }

    def etcd_healthy() -> bool:
        done = subprocess.run(
            ['etcdctl', 'endpoint', 'health'], env=env, capture_output=True, check=False
        )
        return done.returncode == 0

    wait_for(f'etcd to start (see {etcd.log})', etcd_healthy)
    return env


def etcdctl(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(['etcdctl', *args], env=env, capture_output=True, text=True, check=True)
    return done.stdout


def test_two_units_take_turns_through_real_etcd_and_real_workers(
    tmp_path: Path, units: list[Unit], juju_exec: Path, etcd_servers: list[Etcd]
):
    env = connect(tmp_path, units, etcd_servers)

    def lock_holder() -> str:
        return etcdctl(env, 'get', f'{RESOURCE}granted-unit/', '--print-value-only').strip()

    # Each unit queues an operation: the hooks put it in etcd and start the unit's worker.
    for unit in units:
        unit.run(unit.ctx.on.action('restart', params={'delay': unit.id + 1}))
        assert unit.peer().local_unit_data.get('processing_backend') == 'etcd', (
            unit.peer().local_unit_data
        )
    for unit in units:
        wait_for(f'the worker of {unit.name}', lambda u=unit: 'Worker started' in u.worker_log())

    # The workers dispatch rollingops_lock_granted one unit at a time; run each hook.
    by_name = {unit.name: unit for unit in units}
    seen = 0
    order: list[str] = []
    deadline = time.monotonic() + 120
    while len(order) < 2:
        assert time.monotonic() < deadline, (
            f'dispatches {dispatched(juju_exec)}; logs: '
            + ' | '.join(u.worker_log() for u in units)
        )
        lines = dispatched(juju_exec)
        if len(lines) == seen:
            time.sleep(0.05)
            continue
        line = lines[seen]
        seen += 1
        _, unit_name, command = line.split(' ', 2)
        unit = by_name[unit_name]
        assert command == (
            f'JUJU_DISPATCH_PATH=hooks/rollingops_lock_granted {unit.charm_dir}/dispatch'
        )
        # This unit holds the lock in etcd, and meanwhile the other worker dispatches nothing.
        assert lock_holder() == f'{MODEL.uuid}-{unit_name}'.replace('/', '-')
        time.sleep(1.0)
        assert dispatched(juju_exec)[seen:] == [], 'a second unit was granted the lock'
        assert lock_holder() == f'{MODEL.uuid}-{unit_name}'.replace('/', '-')
        calls_before = len(charm.CALLS)
        unit.run(lock_granted())
        assert len(charm.CALLS) == calls_before + 1, f'{unit.name} ran no callback'
        order.append(unit.name)

    assert sorted(order) == ['charm/0', 'charm/1']
    assert [(c['unit'], c['callback'], c['kwargs']) for c in charm.CALLS] == [
        (name, '_restart', {'delay': by_name[name].id + 1}) for name in order
    ]
    # Nothing is left: both workers exit and free their locks; the queues are empty.
    for unit in units:
        wait_for(
            f'the worker of {unit.name} to exit',
            lambda u=unit: not _worker.worker_running(str(u.base_dir)),
        )
        assert 'nothing left to do' in unit.worker_log(), unit.worker_log()
        assert ops_of(unit.peer().local_unit_data) == []
    assert len(dispatched(juju_exec)) == 2
    assert lock_holder() == '', 'the lock is free'


def test_the_sync_lock_takes_the_etcd_lock_under_a_kept_alive_lease(
    tmp_path: Path, units: list[Unit], etcd_servers: list[Etcd]
):
    env = connect(tmp_path, units, etcd_servers)
    unit = units[0]
    lock = f'{RESOURCE}granted-unit/'
    seen: dict[str, str] = {}

    def observe_inside(*_args: Any, **_kwargs: Any) -> None:
        # Inside the sync block: the cluster lock is this unit's sync owner, and a
        # `lease keep-alive` renews its lease.
        seen['holder'] = etcdctl(env, 'get', lock, '--print-value-only').strip()
        seen['lease'] = format(
            json.loads(etcdctl(env, 'get', lock, '-w', 'json'))['kvs'][0]['lease'], 'x'
        )
        ps = subprocess.run(
            ['ps', '-ww', '-eo', 'args'], capture_output=True, text=True, check=True
        )
        seen['keep-alive'] = str(
            any(f'lease keep-alive {seen["lease"]}' in line for line in ps.stdout.splitlines())
        )

    charm.RecordingBackend.calls.clear()
    original = charm.RollingOpsCharm._record
    try:
        charm.RollingOpsCharm._record = lambda self, *a, **k: observe_inside()  # type: ignore[method-assign]
        unit.run(unit.ctx.on.action('sync-restart'))
    finally:
        charm.RollingOpsCharm._record = original  # type: ignore[method-assign]
    owner = f'{MODEL.uuid}-{unit.name}'.replace('/', '-')
    assert seen['holder'] == f'{owner}:sync'
    assert seen['keep-alive'] == 'True', 'no keep-alive ran for the lease'
    assert charm.RecordingBackend.calls == [], 'etcd was available: the backend is not used'
    # Released: the key is gone, the lease revoked, the keep-alive stopped.
    assert etcdctl(env, 'get', lock, '--print-value-only').strip() == ''
    assert etcdctl(env, 'lease', 'list').startswith('found 0 leases')

    # Someone else holds the lock: the sync lock times out as a TimeoutError, no fallback.
    lease = etcdctl(env, 'lease', 'grant', '60').split()[1]
    etcdctl(env, 'put', lock, 'someone-else', f'--lease={lease}')
    started = time.monotonic()
    with pytest.raises(testing.errors.UncaughtCharmError) as raised:
        unit.run(unit.ctx.on.action('sync-restart', params={'timeout': 2}))
    assert isinstance(raised.value.__cause__, TimeoutError), raised.value.__cause__
    assert 1.5 <= time.monotonic() - started < 15
    assert charm.RecordingBackend.calls == []
    assert etcdctl(env, 'get', lock, '--print-value-only').strip() == 'someone-else'
