"""The Python host's etcd worker process (``rollingops._worker``): start, singleton, environment.

The workers here are real ``python -m rollingops._worker`` processes running the component's
``run-worker``. Their ``etcdctl`` (``<charm_dir>/usr/bin/etcdctl``) is a script that records
its calls and blocks while a gate file exists, so a worker stays alive for as long as a test
needs it and then fails (etcd "unreachable"), dispatching ``rollingops_etcd_failed`` through a
``juju-exec`` on ``PATH`` that records its environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from ops import testing
from wasmtime.component import Variant

from charm import ACTIONS, META, EtcdConfiguredCharm, RollingOpsCharm
from rollingops import _host, _worker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split(') ', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


class Unit:
    """A unit's charm directory and base_dir, with a gated fake etcdctl and juju-exec."""

    def __init__(self, root: Path, session_base_dir: Path):
        self.root = root
        self.charm_dir = root / 'charm'
        self.base_dir = root / 'base'
        self.gate = root / 'gate'
        self.etcdctl_calls = root / 'etcdctl-calls'
        self.dispatches = root / 'dispatches'
        bin_dir = self.charm_dir / 'usr' / 'bin'
        bin_dir.mkdir(parents=True)
        (self.base_dir / 'etcd').mkdir(parents=True)
        # Reuse the session's compiled component: no compile per test.
        for cached in session_base_dir.glob('rollingops-*.cwasm'):
            (self.base_dir / cached.name).write_bytes(cached.read_bytes())
        self.gate.touch()
        etcdctl = bin_dir / 'etcdctl'
        etcdctl.write_text(
            '#!/bin/sh\n'
            f'echo "$*" >> {self.etcdctl_calls}\n'
            f'while [ -e {self.gate} ]; do sleep 0.05; done\n'
            'echo "Error: context deadline exceeded" >&2\n'
            'exit 1\n'
        )
        etcdctl.chmod(0o755)
        fake_bin = root / 'bin'
        fake_bin.mkdir()
        juju_exec = fake_bin / 'juju-exec'
        juju_exec.write_text(
            f'#!/bin/sh\necho "$* context=${{JUJU_CONTEXT_ID-unset}}" >> {self.dispatches}\n'
        )
        juju_exec.chmod(0o755)
        self.path = f'{fake_bin}:{os.environ["PATH"]}'
        (self.base_dir / 'etcd' / 'etcdctl.json').write_text(
            json.dumps(
                {
                    'endpoints': 'https://127.0.0.1:1',
                    'cacert_path': f'{self.base_dir}/etcd/server-ca.pem',
                    'cert_path': f'{self.base_dir}/tls/client.pem',
                    'key_path': f'{self.base_dir}/tls/client.key',
                },
                indent=2,
            )
        )

    def launch(self, **changes: Any) -> _worker.WorkerLaunch:
        fields: dict[str, Any] = {
            'unit_name': 'charm/0',
            'model_uuid': 'model-uuid',
            'charm_dir': str(self.charm_dir),
            'base_dir': str(self.base_dir),
            'peer_relation': 'restart',
            'etcd_relation': 'etcd',
            'cluster_id': 'cluster-12345',
            'callback_ids': ('_restart',),
            **changes,
        }
        return _worker.WorkerLaunch(**fields)

    def worker_log(self) -> str:
        try:
            return (self.base_dir / _worker.WORKER_LOG).read_text()
        except FileNotFoundError:
            return ''

    def lines(self, path: Path) -> list[str]:
        try:
            return path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        """Let a gated worker fail, and kill whatever worker is left."""
        self.gate.unlink(missing_ok=True)
        pid = _worker.worker_pid(str(self.base_dir))
        if pid is not None and _worker.worker_running(str(self.base_dir)):
            try:
                wait_for('the worker to exit', lambda: not pid_alive(pid), timeout=20)
            except AssertionError:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def unit(
    tmp_path: Path, session_base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Unit]:
    # Compile once into the session base_dir (the worker copies it).
    from rollingops._runtime import load

    load(str(session_base_dir))
    made = Unit(tmp_path, session_base_dir)
    monkeypatch.setenv('PATH', made.path)
    monkeypatch.setenv('JUJU_CONTEXT_ID', 'charm/0-update-status-1234')
    yield made
    made.stop()


def worker_env(pid: int) -> dict[str, str]:
    with open(f'/proc/{pid}/environ', 'rb') as f:
        pairs = [item.split(b'=', 1) for item in f.read().split(b'\0') if b'=' in item]
    return {k.decode(): v.decode() for k, v in pairs}


def host_context(unit: Unit, charm_type: type[RollingOpsCharm]) -> testing.Context[Any]:
    return testing.Context(
        charm_type,
        meta=META,
        actions=ACTIONS,
        app_name='charm',
        unit_id=0,
        charm_root=unit.charm_dir,
    )


def test_start_worker_spawns_exactly_one_worker(
    unit: Unit, monkeypatch: pytest.MonkeyPatch, session_base_dir: Path
):
    monkeypatch.setattr(RollingOpsCharm, 'base_dir', str(unit.base_dir))
    ctx = host_context(unit, EtcdConfiguredCharm)
    with ctx(ctx.on.update_status(), testing.State()) as mgr:
        host: _host.Host = mgr.charm.rollingops._host  # type: ignore[attr-defined]
        started = time.monotonic()
        assert host.start_worker() is None
        assert time.monotonic() - started < 2, 'start_worker must not wait for the worker'
        wait_for('the worker lock', lambda: _worker.worker_running(str(unit.base_dir)))
        # The worker reached etcdctl (the gate holds it there).
        wait_for('the first etcdctl call', lambda: bool(unit.lines(unit.etcdctl_calls)))
        pid = _worker.worker_pid(str(unit.base_dir))
        assert pid is not None and pid_alive(pid)
        env = worker_env(pid)
        assert 'JUJU_CONTEXT_ID' not in env
        assert os.environ['JUJU_CONTEXT_ID']
        assert os.getsid(pid) == pid, 'the worker leads a session of its own'
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            argv = f.read().rstrip(b'\0').split(b'\0')
        assert argv[1:3] == [b'-m', b'rollingops._worker']
        assert b'--unit=charm/0' in argv
        assert b'--cluster-id=cluster-12345' in argv
        assert f'--base-dir={unit.base_dir}'.encode() in argv
        assert f'--charm-dir={unit.charm_dir}'.encode() in argv
        assert b'--etcd-relation=etcd' in argv
        assert b'--callback-id=_restart' in argv

        # While it runs, asking again starts nothing.
        assert host.start_worker() is None
        assert host.start_worker() is None
        time.sleep(0.5)
    assert unit.worker_log().count('Worker started') == 1, unit.worker_log()
    assert 'already running' not in unit.worker_log()
    assert _worker.worker_pid(str(unit.base_dir)) == pid

    # Once it has failed (etcd unreachable) it has dispatched rollingops_etcd_failed through
    # juju-exec, outside the hook, and released the lock.
    unit.gate.unlink()
    wait_for('the worker to exit', lambda: not _worker.worker_running(str(unit.base_dir)))
    wait_for('the etcd-failed dispatch', lambda: bool(unit.lines(unit.dispatches)))
    [dispatch] = unit.lines(unit.dispatches)
    assert dispatch == (
        f'-u charm/0 JUJU_DISPATCH_PATH=hooks/rollingops_etcd_failed '
        f'{unit.charm_dir}/dispatch context=unset'
    )
    assert 'The etcd worker stopped' in unit.worker_log()

    # The lock is free again: the next request starts a new worker.
    unit.gate.touch()
    pid2 = _worker.start(unit.launch())
    assert pid2 is not None and pid2 != pid
    wait_for('the second worker', lambda: unit.worker_log().count('Worker started') == 2)


def test_a_second_worker_exits_at_once_while_the_lock_is_held(unit: Unit):
    lock = _worker.take_worker_lock(str(unit.base_dir))
    assert lock is not None
    try:
        assert _worker.worker_running(str(unit.base_dir))
        assert _worker.start(unit.launch()) is None, 'nothing is started while the lock is held'
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, '-m', 'rollingops._worker', *unit.launch().args()],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert 'already running' in done.stderr
        assert time.monotonic() - started < 30
        assert not unit.lines(unit.etcdctl_calls), 'it never ran etcdctl'
    finally:
        os.close(lock)
    assert not _worker.worker_running(str(unit.base_dir))


def test_the_worker_lock_is_the_rust_hosts_path(unit: Unit):
    """A lock held by another process on `<base_dir>/etcd/worker.lock` (flock, as the Rust
    host's `rollingops worker` takes it) counts as a running worker."""
    holder = subprocess.Popen(
        ['flock', '-n', str(unit.base_dir / 'etcd' / 'worker.lock'), 'sleep', '30'],
        start_new_session=True,
    )
    try:
        wait_for('flock', lambda: _worker.worker_running(str(unit.base_dir)))
        assert _worker.start(unit.launch()) is None
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and the sleep holding the lock
        holder.wait()
    # The sleep (which holds the descriptor) dies a moment after flock itself.
    wait_for('the lock to be released', lambda: not _worker.worker_running(str(unit.base_dir)))


@pytest.mark.parametrize(
    ('changes', 'needs'),
    [
        ({'cluster_id': None}, 'cluster id'),
        ({'cluster_id': ''}, 'cluster id'),
        ({'etcd_relation': None}, 'etcd relation name'),
        ({'unit_name': ''}, 'unit name'),
        ({'base_dir': 'relative/dir'}, 'absolute base_dir'),
    ],
)
def test_an_incomplete_configuration_is_refused(unit: Unit, changes: dict[str, Any], needs: str):
    with pytest.raises(_worker.WorkerConfigError, match=needs):
        _worker.start(unit.launch(**changes))
    assert not (unit.base_dir / _worker.WORKER_LOG).exists(), 'nothing was started'
    # The worker itself refuses it too, with the same message and status 2.
    done = subprocess.run(
        [sys.executable, '-m', 'rollingops._worker', *unit.launch(**changes).args()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert needs in done.stderr


def test_missing_arguments_are_a_usage_error(unit: Unit):
    done = subprocess.run(
        [sys.executable, '-m', 'rollingops._worker', f'--base-dir={unit.base_dir}'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert 'the following arguments are required: --unit' in done.stderr


def test_a_worker_without_etcdctl_config_fails_clearly(unit: Unit):
    (unit.base_dir / 'etcd' / 'etcdctl.json').unlink()
    done = subprocess.run(
        [sys.executable, '-m', 'rollingops._worker', *unit.launch().args()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert 'RollingOpsEtcdNotConfiguredError' in done.stderr
    assert 'etcdctl config file does not exist: etcd/etcdctl.json' in done.stderr
    assert not _worker.worker_running(str(unit.base_dir)), 'the lock went with the process'


def test_start_worker_without_etcd_mode_is_not_configured(unit: Unit):
    """A peer-only manager has no worker to start (the component keeps the peer relation)."""
    ctx = host_context(unit, RollingOpsCharm)
    with ctx(ctx.on.update_status(), testing.State()) as mgr:
        result = mgr.charm.rollingops._host.start_worker()  # type: ignore[attr-defined]
    assert isinstance(result, Variant)
    assert result.tag == 'etcd-not-configured'
    assert not (unit.base_dir / _worker.WORKER_LOG).exists()


def test_the_worker_host_refuses_hook_tools_at_once(unit: Unit):
    host = _worker.WorkerHost(unit.launch())
    assert host.unit_name() == 'charm/0'
    assert host.model_uuid() == 'model-uuid'
    assert host.etcdctl_path() == f'{unit.charm_dir}/usr/bin/etcdctl'
    for result in (
        host.is_leader(),
        host.relation_ids('restart'),
        host.relation_units(1),
        host.relation_get(1, None),
        host.relation_set(1, False, [('k', 'v')]),
        host.secret_get('label'),
        host.secret_add('label', []),
        host.secret_grant('secret:x', 1),
        host.relation_get_remote_app(1),
    ):
        assert isinstance(result, Variant)
        assert result.tag == 'host'
        assert 'outside a hook' in result.payload
    outcome = host.run_callback('_restart', '{}')
    assert isinstance(outcome, Variant)
    assert outcome.tag == 'missing'
    assert host.start_worker() is None
    # Files stay confined to base_dir.
    assert host.write('etcd/x', b'1', 0o600) is None
    assert (unit.base_dir / 'etcd' / 'x').read_bytes() == b'1'
    refused = host.read('../charm/usr/bin/etcdctl')
    assert isinstance(refused, Variant)
    assert refused.tag == 'file-system'


def test_a_request_while_the_worker_finishes_runs_it_again(
    unit: Unit, monkeypatch: pytest.MonkeyPatch
):
    """start() leaves a request before it checks the lock; a worker whose run-worker returned
    runs again when it finds one, so an op queued as it was finishing is not stranded."""
    monkeypatch.setattr(_worker, '_configure_logging', lambda unit_name: None)
    runs: list[bool] = []
    ask = [True]

    def run(launch: _worker.WorkerLaunch) -> None:
        # Held for the whole run, pid written; a hook asks during the first run only.
        assert _worker.worker_running(launch.base_dir)
        assert _worker.worker_pid(launch.base_dir) == os.getpid()
        runs.append(True)
        if ask and len(runs) == 1:
            assert _worker.start(launch) is None, 'the lock is held: nothing is started'

    monkeypatch.setattr(_worker, 'run', run)
    assert _worker.main(unit.launch().args()) == 0
    assert len(runs) == 2
    assert not (unit.base_dir / _worker.WORKER_REQUEST).exists()
    assert not _worker.worker_running(str(unit.base_dir))
    assert not (unit.base_dir / _worker.WORKER_LOG).exists(), 'no process was spawned'

    # Without a request, one run.
    runs.clear()
    ask.clear()
    assert _worker.main(unit.launch().args()) == 0
    assert len(runs) == 1
