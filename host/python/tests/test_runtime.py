"""The host side: component cache, traps, the WIT <-> Python mapping, imports and sandbox."""

from __future__ import annotations

import logging
import os
import platform
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wasmtime
from ops import testing
from wasmtime import component as wc
from wasmtime.component import Variant

import rollingops
from charm import ACTIONS, CALLS, META, RollingOpsCharm
from conftest import lock_granted, op, queue
from rollingops import _errors, _host, _runtime


def context(charm_type: type = RollingOpsCharm) -> testing.Context:
    return testing.Context(charm_type, meta=META, actions=ACTIONS, app_name='charm', unit_id=0)


def fresh_load(base_dir: Path) -> _runtime.Compiled:
    _runtime._COMPILED.clear()
    return _runtime.load(str(base_dir))


# -- the compiled-component cache -------------------------------------------------------------


def test_cache_written_then_loaded(tmp_path: Path):
    compiled = fresh_load(tmp_path)
    assert compiled.source == 'compiled'
    [cached] = list(tmp_path.glob('rollingops-*.cwasm'))
    assert cached.name == f'rollingops-{compiled.key}.cwasm'
    assert f'wasmtime{_runtime.wasmtime_version()}' in compiled.key
    assert fresh_load(tmp_path).source == 'cache'
    assert list(tmp_path.glob('.rollingops-*')) == []


def test_corrupt_cache_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    compiled = fresh_load(tmp_path)
    path = Path(_runtime.cache_file(str(tmp_path), compiled.key))
    path.write_bytes(b'\x7fELF not really')
    assert fresh_load(tmp_path).source == 'compiled'
    assert 'Ignoring unusable compiled component' in caplog.text
    assert fresh_load(tmp_path).source == 'cache'


def test_stale_caches_are_removed_but_other_hosts_caches_kept(tmp_path: Path):
    stale = tmp_path / f'rollingops-0000-wasmtime1.0.0-{platform.machine()}.cwasm'
    stale.write_bytes(b'old')
    rust_cli = tmp_path / 'rollingops-00ff-wasmtime48-0123456789abcdef.cwasm'
    rust_cli.write_bytes(b'the Rust host')
    fresh_load(tmp_path)
    assert not stale.exists()
    assert rust_cli.read_bytes() == b'the Rust host'


def test_unwritable_base_dir_compiles_in_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    compiled = fresh_load(blocker / 'base')
    assert compiled.source == 'memory'
    assert 'Cannot cache the compiled component' in caplog.text


def test_manager_works_with_unwritable_base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    monkeypatch.setattr(RollingOpsCharm, 'base_dir', str(blocker / 'base'))
    ctx = context()
    peer = testing.PeerRelation('restart')
    out = ctx.run(ctx.on.action('restart'), testing.State(relations={peer}))
    assert out.get_relation(peer.id).local_unit_data['state'] == 'request'


def test_missing_wasm_is_a_lib_missing_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(_runtime.WASM_ENV, str(tmp_path / 'nope.wasm'))
    with pytest.raises(rollingops.RollingOpsLibMissingError, match=r'build_wasm\.sh'):
        fresh_load(tmp_path)


def test_wheel_layout_ships_the_component():
    assert Path(_runtime.wasm_path()).name == 'rollingops.wasm'
    assert Path(rollingops.__file__).with_name('py.typed').exists()


# -- the WIT mapping ---------------------------------------------------------------------------


def api_types(compiled: _runtime.Compiled) -> dict[str, object]:
    engine = compiled.engine
    exports = compiled.component.type.exports(engine)
    api = exports['juju:rollingops/api@0.1.0'].ty
    assert isinstance(api, wc.ComponentInstanceType)
    return {name: item.ty for name, item in api.exports(engine).items()}


def test_every_wit_error_case_has_an_exception(session_base_dir: Path):
    error = api_types(_runtime.load(str(session_base_dir)))['error']
    assert isinstance(error, wc.VariantType)
    cases = [name for name, _ in error.cases]
    assert set(cases) == set(_errors._BY_CASE)
    # Every case carries a string, so wasmtime-py tags the variant (Variant(tag, payload))
    # and `result<_, error>` comes back untagged: None, or that Variant.
    assert error._tagged()
    for case in cases:
        exc = _errors.error_from_wit(case, 'message')
        assert str(exc) == 'message'


@pytest.mark.parametrize(
    ('case', 'cls'),
    [
        ('no-relation', rollingops.RollingOpsNoRelationError),
        ('invalid-lock-request', rollingops.RollingOpsInvalidLockRequestError),
        ('decoding', rollingops.RollingOpsDecodingError),
        ('etcd-not-configured', rollingops.RollingOpsEtcdNotConfiguredError),
        ('sync-lock', rollingops.RollingOpsSyncLockError),
        ('timeout', TimeoutError),
        ('invalid-argument', ValueError),
        ('host', rollingops.RollingOpsError),
    ],
)
def test_error_cases_map_to_the_reference_classes(case: str, cls: type):
    assert type(_errors.error_from_wit(case, 'm')) is cls


def test_exception_hierarchy_matches_the_reference():
    base = rollingops.RollingOpsError
    for name in rollingops.__all__:
        obj = getattr(rollingops, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, base)
    assert issubclass(
        rollingops.RollingOpsEtcdNotConfiguredError, rollingops.RollingOpsEtcdctlError
    )
    assert issubclass(
        rollingops.RollingOpsNoEtcdRelationError, rollingops.RollingOpsNoRelationError
    )


def test_public_names_match_the_reference():
    reference = pytest.importorskip('charmlibs.rollingops')
    assert set(reference.__all__) <= set(rollingops.__all__)
    for name in ('OperationResult', 'ProcessingBackend', 'RollingOpsStatus'):
        ours, theirs = getattr(rollingops, name), getattr(reference, name)
        assert {m.name: m.value for m in ours} == {m.name: m.value for m in theirs}
    assert rollingops.OperationResult.RETRY_HOLD == 'retry-hold'
    assert str(rollingops.RollingOpsStatus.NOT_READY) == 'not-ready'


# -- traps and re-entrance ---------------------------------------------------------------------


def test_exception_in_an_import_reaches_the_charm_and_the_next_call_works(
    monkeypatch: pytest.MonkeyPatch,
):
    ctx = context()
    peer = testing.PeerRelation('restart')
    with ctx(ctx.on.update_status(), testing.State(relations={peer})) as mgr:
        manager = mgr.charm.rollingops
        original = _host.Host.relation_get
        monkeypatch.setattr(
            _host.Host, 'relation_get', lambda *a: (_ for _ in ()).throw(OSError('boom'))
        )
        with pytest.raises(OSError, match='boom'):
            manager.request_async_lock('_restart')
        monkeypatch.setattr(_host.Host, 'relation_get', original)
        manager.request_async_lock('_restart')
        assert manager.state.status == 'waiting'


def test_base_exception_in_a_callback_propagates():
    class Interrupted(RollingOpsCharm):
        def _restart(self, delay: int | None = None) -> None:
            raise KeyboardInterrupt

    ctx = context(Interrupted)
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/0', 'granted_at': '1.0'},
        local_unit_data={'operations': queue(op()), 'state': 'request'},
        peers_data={1: {}},
    )
    with ctx(ctx.on.update_status(), testing.State(relations={peer})) as mgr:
        with pytest.raises(KeyboardInterrupt):
            mgr.run()
        # The broken instance is replaced on the next call.
        assert mgr.charm.rollingops.state.status == 'granted'


def test_callback_may_read_the_manager():
    seen = []

    class Reading(RollingOpsCharm):
        def _restart(self, delay: int | None = None) -> None:
            seen.append((self.rollingops.state.status, self.rollingops.is_waiting()))

    ctx = context(Reading)
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/0', 'granted_at': '1.0'},
        local_unit_data={'operations': queue(op()), 'state': 'request'},
        peers_data={1: {}},
    )
    ctx.run(ctx.on.relation_changed(peer, remote_unit=1), testing.State(relations={peer}))
    assert seen == [('granted', True)]


def test_new_callback_registered_after_construction_is_known():
    ctx = context()
    peer = testing.PeerRelation('restart')
    with ctx(ctx.on.update_status(), testing.State(relations={peer})) as mgr:
        manager = mgr.charm.rollingops
        manager._callback_targets['late'] = lambda: None  # type: ignore[index]
        manager.request_async_lock('late')
        assert manager.is_waiting_callback('late')


# -- imports: dispatch -------------------------------------------------------------------------


@pytest.fixture
def fake_juju_exec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    record = tmp_path / 'juju-exec.calls'
    script = bin_dir / 'juju-exec'
    script.write_text(
        '#!/bin/sh\n'
        f'printf "%s\\n" "$@" > {record}.tmp\n'
        f'echo "JUJU_CONTEXT_ID=${{JUJU_CONTEXT_ID:-unset}}" >> {record}.tmp\n'
        f'mv {record}.tmp {record}\n'
        'echo dispatched\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv('PATH', f'{bin_dir}:{os.environ["PATH"]}')
    monkeypatch.setenv('JUJU_CONTEXT_ID', 'ctx-1')
    return record


def test_dispatch_runs_juju_exec_detached(fake_juju_exec: Path, tmp_path: Path):
    base = tmp_path / 'base'
    started = time.monotonic()
    _host.spawn_dispatch(
        'charm/0', '/var/lib/juju/agents/unit-charm-0/charm', 'rollingops_lock_granted', str(base)
    )
    assert time.monotonic() - started < 1
    for _ in range(100):
        if fake_juju_exec.exists():
            break
        time.sleep(0.05)
    lines = fake_juju_exec.read_text().splitlines()
    assert lines == [
        '-u',
        'charm/0',
        'JUJU_DISPATCH_PATH=hooks/rollingops_lock_granted '
        '/var/lib/juju/agents/unit-charm-0/charm/dispatch',
        'JUJU_CONTEXT_ID=unset',
    ]
    for _ in range(100):
        if 'dispatched' in (base / _host.DISPATCH_LOG).read_text():
            break
        time.sleep(0.05)
    assert 'dispatched' in (base / _host.DISPATCH_LOG).read_text()


def test_leader_request_dispatches_through_juju_exec(fake_juju_exec: Path):
    ctx = context()
    peer = testing.PeerRelation('restart')
    ctx.run(ctx.on.action('restart'), testing.State(leader=True, relations={peer}))
    for _ in range(100):
        if fake_juju_exec.exists():
            break
        time.sleep(0.05)
    assert 'JUJU_DISPATCH_PATH=hooks/rollingops_lock_granted' in fake_juju_exec.read_text()


def test_missing_juju_exec_is_logged_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv('PATH', str(tmp_path))
    monkeypatch.setattr(_host, '_JUJU_EXEC_FALLBACKS', ())
    ctx = context()
    peer = testing.PeerRelation('restart')
    with caplog.at_level(logging.WARNING, logger='rollingops'):
        out = ctx.run(ctx.on.action('restart'), testing.State(leader=True, relations={peer}))
    assert out.get_relation(peer.id).local_app_data['granted_unit'] == 'charm/0'
    assert 'juju-exec not found' in caplog.text


def test_dispatch_after_waits_in_a_detached_process(fake_juju_exec: Path, tmp_path: Path):
    base = tmp_path / 'base'
    started = time.monotonic()
    _host.spawn_dispatch(
        'charm/0',
        '/var/lib/juju/agents/unit-charm-0/charm',
        'rollingops_lock_granted',
        str(base),
        delay_ms=600,
    )
    # The hook goes on at once; the waiting happens in the child.
    assert time.monotonic() - started < 0.3
    time.sleep(0.2)
    assert not fake_juju_exec.exists()
    for _ in range(200):
        if fake_juju_exec.exists():
            break
        time.sleep(0.05)
    assert time.monotonic() - started >= 0.6
    assert fake_juju_exec.read_text().splitlines() == [
        '-u',
        'charm/0',
        'JUJU_DISPATCH_PATH=hooks/rollingops_lock_granted '
        '/var/lib/juju/agents/unit-charm-0/charm/dispatch',
        'JUJU_CONTEXT_ID=unset',
    ]


def test_dispatch_command_quotes_odd_charm_dirs():
    import shlex

    assert (
        _host.dispatch_command('/var/lib/juju/agents/unit-app-0/charm', 'x')
        == 'JUJU_DISPATCH_PATH=hooks/x /var/lib/juju/agents/unit-app-0/charm/dispatch'
    )
    command = _host.dispatch_command("/tmp/it's here", 'x')
    assert shlex.split(command) == ['JUJU_DISPATCH_PATH=hooks/x', "/tmp/it's here/dispatch"]


def host_of(mgr: testing.Manager) -> _host.Host:
    return mgr.charm.rollingops._host  # type: ignore[attr-defined]


def test_dispatch_refuses_odd_hook_names():
    ctx = context()
    with ctx(ctx.on.update_status(), testing.State()) as mgr:
        result = host_of(mgr).dispatch('x; rm -rf /')
    assert isinstance(result, Variant)
    assert result.tag == 'host'
    with ctx(ctx.on.update_status(), testing.State()) as mgr:
        result = host_of(mgr).dispatch_after('$(reboot)', 1000)
    assert isinstance(result, Variant)
    assert result.tag == 'host'


def test_host_dispatch_after_passes_the_delay(monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[str, str, int]] = []

    def spawn(
        unit_name: str, charm_dir: str, event_name: str, base_dir: str, delay_ms: int = 0
    ) -> None:
        calls.append((unit_name, event_name, delay_ms))

    monkeypatch.setattr(_host, 'spawn_dispatch', spawn)
    ctx = context()
    with ctx(ctx.on.update_status(), testing.State()) as mgr:
        assert host_of(mgr).dispatch_after('rollingops_lock_granted', 2500) is None
        assert host_of(mgr).dispatch('rollingops_lock_granted') is None
    assert calls == [
        ('charm/0', 'rollingops_lock_granted', 2500),
        ('charm/0', 'rollingops_lock_granted', 0),
    ]


@pytest.mark.parametrize(
    ('value', 'text'),
    [
        (True, 'true'),
        (False, 'false'),
        ('true', 'true'),
        (rollingops.OperationResult.RETRY_HOLD, 'retry-hold'),
        (None, None),
        (1, None),
        (0, None),
        ([True], None),
    ],
)
def test_callback_results_reach_the_component_as_text(value: object, text: str | None):
    # Booleans (health checks) become "true"/"false"; other non-strings stay None.
    assert _host._returned_text(value) == text


# -- imports: files and etcdctl (the sandbox) ----------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    base = tmp_path / 'base'
    base.mkdir()
    monkeypatch.setattr(RollingOpsCharm, 'base_dir', str(base))
    ctx = context()
    with ctx(ctx.on.update_status(), testing.State()) as mgr:
        yield host_of(mgr), base


def _read(host, path: str) -> bytes | None:
    found = host.read(path)
    assert not isinstance(found, Variant), found
    return bytes(found.data) if found.exists else None


def test_files_round_trip(sandbox):
    host, base = sandbox
    assert _read(host, 'etcd/client.pem') is None
    assert host.write('etcd/client.pem', b'PEM', 0o600) is None
    assert (base / 'etcd' / 'client.pem').read_bytes() == b'PEM'
    assert stat.S_IMODE((base / 'etcd' / 'client.pem').stat().st_mode) == 0o600
    assert _read(host, 'etcd/client.pem') == b'PEM'
    assert host.remove('etcd/client.pem') is None
    assert host.remove('etcd/client.pem') is None
    assert _read(host, 'etcd/client.pem') is None


@pytest.mark.parametrize('path', ['../escape', '/etc/passwd', 'a/../../escape', '', '.'])
def test_files_refuse_paths_outside_base_dir(sandbox, path: str):
    host, _ = sandbox
    for result in (host.write(path, b'x', 0o644), host.remove(path), host.read(path)):
        assert isinstance(result, Variant)
        assert result.tag == 'file-system'


def test_files_refuse_symlink_escape(sandbox, tmp_path: Path):
    host, base = sandbox
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'secret').write_text('s')
    (base / 'link').symlink_to(outside)
    (base / 'file-link').symlink_to(outside / 'secret')
    for path in ('link/secret', 'file-link', 'link/new'):
        result = host.write(path, b'x', 0o644)
        assert isinstance(result, Variant), path
        assert result.tag == 'file-system'
        refused = host.read(path)
        assert isinstance(refused, Variant), path
        assert refused.tag == 'file-system'
    assert (outside / 'secret').read_text() == 's'
    assert not (outside / 'new').exists()


def test_etcdctl_missing_is_refused(sandbox):
    host, _ = sandbox
    result = host.run_etcdctl(['version'], [], None, 1000)
    assert isinstance(result, Variant)
    assert result.tag == 'etcdctl'


def test_etcdctl_runs_only_the_charm_binary(sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path):
    host, _ = sandbox
    program = tmp_path / 'charm' / 'usr' / 'bin' / 'etcdctl'
    program.parent.mkdir(parents=True)
    program.write_text('#!/bin/sh\necho "args:$*"\necho "env:$ETCDCTL_ENDPOINTS:$HOME" >&2\ncat\n')
    program.chmod(0o755)
    monkeypatch.setattr(_host.Host, 'etcdctl_path', lambda self: str(program))
    out = host.run_etcdctl(['get', 'k'], [('ETCDCTL_ENDPOINTS', 'https://a:2379')], 'in', 5000)
    assert isinstance(out, wc.Record)
    assert out.code == 0
    assert out.stdout == 'args:get k\nin'
    assert out.stderr == 'env:https://a:2379:\n'
    assert getattr(out, 'timed-out') is False


def test_etcdctl_timeout(sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path):
    host, _ = sandbox
    program = tmp_path / 'etcdctl'
    program.write_text('#!/bin/sh\nsleep 5\n')
    program.chmod(0o755)
    monkeypatch.setattr(_host.Host, 'etcdctl_path', lambda self: str(program))
    out = host.run_etcdctl([], [], None, 100)
    assert out.code == -1
    assert getattr(out, 'timed-out') is True


def test_watch_returns_at_the_first_line(sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path):
    host, _ = sandbox
    program = tmp_path / 'etcdctl'
    program.write_text(
        '#!/bin/sh\n'
        'case "$1" in\n'
        '  event) echo "DELETE $ETCDCTL_API:$HOME"; sleep 1; echo late; sleep 5;;\n'
        '  quiet) sleep 5;;\n'
        '  fail) echo oops >&2; exit 3;;\n'
        'esac\n'
    )
    program.chmod(0o755)
    monkeypatch.setattr(_host.Host, 'etcdctl_path', lambda self: str(program))
    started = time.monotonic()
    out = host.watch_etcdctl(['event'], [('ETCDCTL_API', '3')], 4000)
    assert time.monotonic() - started < 0.9, 'waited past the first line'
    assert isinstance(out, wc.Record)
    assert out.stdout == 'DELETE 3:\n'
    assert (out.code, getattr(out, 'timed-out')) == (-1, False)

    started = time.monotonic()
    out = host.watch_etcdctl(['quiet'], [], 300)
    assert 0.3 <= time.monotonic() - started < 3
    assert (out.code, out.stdout, getattr(out, 'timed-out')) == (-1, '', True)

    out = host.watch_etcdctl(['fail'], [], 4000)
    assert (out.code, out.stderr, getattr(out, 'timed-out')) == (3, 'oops\n', False)


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def test_started_etcdctl_waits_for_its_input_and_dies_when_stopped(
    sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path
):
    host, _ = sandbox
    program = tmp_path / 'etcdctl'
    # `txn`: one line of input echoed; `keep`: runs until killed (like `lease keep-alive`).
    program.write_text(
        '#!/bin/sh\n'
        'case "$1" in\n'
        '  txn) read -r line; echo "got $line $ETCDCTL_API";;\n'
        '  keep) exec sleep 30;;\n'
        '  stream) echo one; echo two; sleep 0.3; echo three; exec sleep 30;;\n'
        '  short) echo only; echo oops >&2;;\n'
        'esac\n'
    )
    program.chmod(0o755)
    monkeypatch.setattr(_host.Host, 'etcdctl_path', lambda self: str(program))

    handle = host.start_etcdctl(['txn'], [('ETCDCTL_API', '3')])
    assert isinstance(handle, int)
    time.sleep(0.1)
    assert _alive(host._started[handle].pid), 'it did not wait for its input'
    out = host.finish_etcdctl(handle, 'body\n', 5000)
    assert isinstance(out, wc.Record)
    assert (out.code, out.stdout) == (0, 'got body 3\n')
    spent = host.finish_etcdctl(handle, None, 1000)
    assert isinstance(spent, Variant) and spent.tag == 'etcdctl', 'a spent handle is refused'

    keep = host.start_etcdctl(['keep'], [])
    assert isinstance(keep, int)
    pid = host._started[keep].pid
    assert _alive(pid)
    host.stop_etcdctl(keep)
    assert not _alive(pid), 'stop left it running'
    host.stop_etcdctl(keep)  # an unknown handle is ignored

    # Lines one by one as they come (a watch's stream); none before the timeout; an error
    # once the process has ended and every line was read.
    stream = host.start_etcdctl(['stream'], [])
    assert isinstance(stream, int)
    assert host.read_etcdctl_line(stream, 4000) == 'one'
    assert host.read_etcdctl_line(stream, 4000) == 'two'
    assert host.read_etcdctl_line(stream, 50) is None
    assert host.read_etcdctl_line(stream, 4000) == 'three'
    host.stop_etcdctl(stream)
    short = host.start_etcdctl(['short'], [])
    assert isinstance(short, int)
    assert host.read_etcdctl_line(short, 4000) == 'only'
    ended = host.read_etcdctl_line(short, 4000)
    assert isinstance(ended, Variant) and ended.tag == 'etcdctl' and 'oops' in ended.payload
    host.stop_etcdctl(short)
    unknown = host.read_etcdctl_line(12345, 10)
    assert isinstance(unknown, Variant) and unknown.tag == 'etcdctl'


def test_a_started_etcdctl_dies_with_the_hook_process(tmp_path):
    # The hook process (here a child Python) starts a keep-alive and is killed: the kernel
    # kills the keep-alive too (PR_SET_PDEATHSIG), so a lease cannot outlive its hook.
    program = tmp_path / 'etcdctl'
    program.write_text('#!/bin/sh\nexec sleep 30\n')
    program.chmod(0o755)
    # Started as the host's start-etcdctl starts it: by a thread of its own.
    script = (
        'import time\n'
        'from rollingops import _host\n'
        f'p = _host._Background(lambda: _host._spawn({str(program)!r}, [], [], '
        'stdin=True, die_with_parent=True))\n'
        'print(p.pid, flush=True)\n'
        'time.sleep(30)\n'
    )
    hook = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
    assert hook.stdout is not None
    pid = int(hook.stdout.readline())
    assert _alive(pid)
    hook.kill()
    hook.wait()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid), 'the keep-alive outlived its hook'


def test_watch_with_etcdctl_missing_is_refused(sandbox):
    host, _ = sandbox
    result = host.watch_etcdctl(['watch', 'k'], [], 1000)
    assert isinstance(result, Variant)
    assert result.tag == 'etcdctl'


def test_component_gets_no_wasi_capabilities(session_base_dir: Path):
    # The component's WASI world has no filesystem and no sockets imports to preopen or allow.
    compiled = _runtime.load(str(session_base_dir))
    imports = set(compiled.component.type.imports(compiled.engine))
    assert not any(
        name.startswith(('wasi:filesystem', 'wasi:sockets', 'wasi:http')) for name in imports
    )
    assert isinstance(compiled.engine, wasmtime.Engine)


def test_callback_log_lines_reach_the_python_logger(caplog: pytest.LogCaptureFixture):
    ctx = context()
    peer = testing.PeerRelation('restart')
    with caplog.at_level(logging.INFO, logger='rollingops'):
        ctx.run(ctx.on.action('restart'), testing.State(relations={peer}))
    assert 'Queued "_restart"' in caplog.text
    assert CALLS == []


def test_health_gate_dispatches_its_recheck_after_a_delay(dispatched: list[tuple]):
    ctx = context()
    peer = testing.PeerRelation('restart')
    with ctx(ctx.on.update_status(), testing.State(leader=True, relations={peer})) as mgr:
        # `_deferred_restart` returns "retry-hold", not True: the check never passes.
        mgr.charm.rollingops.request_async_lock('_restart', health_check='_deferred_restart')
        out = mgr.run()
    assert dispatched == [('charm/0', 'rollingops_lock_granted')]
    out = ctx.run(lock_granted(), out)  # the turn: `_restart` runs, the gate opens
    assert [c['callback'] for c in CALLS] == ['_restart']
    assert dispatched[-1] == ('charm/0', 'rollingops_lock_granted', 2000)
    assert out.get_relation(peer.id).local_app_data['granted_unit'] == 'charm/0'
