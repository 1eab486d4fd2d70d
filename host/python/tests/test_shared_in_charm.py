"""spec/peer.md §7.3 (rows 46-50) and §7.5 row 73: state, is_waiting, the sync lock, bad input."""

from __future__ import annotations

import pytest
from ops import testing

from charm import (
    ACTIONS,
    CALLS,
    META,
    EtcdConfiguredCharm,
    RecordingBackend,
    RollingOpsCharm,
)
from conftest import etcd_failed, op, ops_of, queue
from rollingops import (
    ProcessingBackend,
    RollingOpsNoRelationError,
    RollingOpsStatus,
    RollingOpsSyncLockError,
)

CHARMS = [RollingOpsCharm, EtcdConfiguredCharm]


def context(charm_type: type = RollingOpsCharm, unit_id: int = 0) -> testing.Context:
    return testing.Context(
        charm_type, meta=META, actions=ACTIONS, app_name='charm', unit_id=unit_id
    )


@pytest.mark.parametrize('charm_type', CHARMS)
def test_46_request_without_etcd_relation_is_stored_on_peer(charm_type: type):
    ctx = context(charm_type, unit_id=1)
    peer = testing.PeerRelation('restart', peers_data={0: {}})
    out = ctx.run(ctx.on.action('restart', params={'delay': 2}), testing.State(relations={peer}))
    bag = out.get_relation(peer.id).local_unit_data
    assert len(ops_of(bag)) == 1
    assert bag['processing_backend'] == 'peer'
    assert bag['etcd_cleanup_needed'] == 'true'


@pytest.mark.parametrize('charm_type', CHARMS)
def test_47_no_relations_is_not_ready(charm_type: type):
    ctx = context(charm_type)
    with ctx(ctx.on.update_status(), testing.State()) as mgr:
        state = mgr.charm.rollingops.state
    assert state.status is RollingOpsStatus.NOT_READY
    assert state.processing_backend is ProcessingBackend.PEER


@pytest.mark.parametrize('charm_type', CHARMS)
@pytest.mark.parametrize(
    ('app', 'unit', 'expected'),
    [
        ({}, {'operations': '[]', 'state': 'idle'}, 'idle'),
        ({}, {'operations': queue(op()), 'state': 'request'}, 'waiting'),
        (
            {'granted_unit': 'charm/0', 'granted_at': '1777636800.5'},
            {'operations': queue(op()), 'state': 'request'},
            'granted',
        ),
        (
            {'granted_unit': 'charm/1', 'granted_at': '1777636800.5'},
            {
                'operations': queue(op('_failed_restart', attempt=1)),
                'state': 'retry-release',
                'executed_at': '1777636800.4',
            },
            'waiting',
        ),
    ],
)
def test_48_peer_managed_status(charm_type: type, app: dict, unit: dict, expected: str):
    ctx = context(charm_type)
    peer = testing.PeerRelation(
        'restart',
        local_app_data=app,
        local_unit_data={**unit, 'processing_backend': 'peer'},
        peers_data={1: {}},
    )
    with ctx(ctx.on.update_status(), testing.State(relations={peer})) as mgr:
        state = mgr.charm.rollingops.state
    assert state.status == expected
    assert state.processing_backend == 'peer'
    assert isinstance(state.status, RollingOpsStatus)


@pytest.mark.parametrize('unit_name', [None, 'charm/1'])
def test_49_is_waiting(unit_name: str | None):
    ctx = context()
    two = {'operations': queue(op(), op(requested_at='1777636800.2', kwargs={'a': 1}))}
    empty = {'operations': '[]'}

    def check(bags: dict[str, str], waiting: bool, restart: bool) -> None:
        local, remote = (bags, {}) if unit_name is None else ({}, bags)
        peer = testing.PeerRelation('restart', local_unit_data=local, peers_data={1: remote})
        with ctx(ctx.on.update_status(), testing.State(relations={peer})) as mgr:
            manager = mgr.charm.rollingops
            assert manager.is_waiting(unit_name) is waiting
            assert manager.is_waiting_callback('_restart', unit_name) is restart
            assert manager.is_waiting_callback('other-callback', unit_name) is False

    check(two, waiting=True, restart=True)
    check(empty, waiting=False, restart=False)


def test_50_sync_lock_custom_backend():
    ctx = context()
    peer = testing.PeerRelation('restart')
    ctx.run(ctx.on.action('sync-restart'), testing.State(relations={peer}))
    assert RecordingBackend.calls == [('acquire', 30), ('release', None)]
    assert [c['callback'] for c in CALLS] == ['_sync_restart']


def test_50_sync_lock_block_error_propagates_and_releases():
    ctx = context()
    peer = testing.PeerRelation('restart')
    with pytest.raises(testing.errors.UncaughtCharmError) as raised:
        ctx.run(ctx.on.action('failed-sync-restart'), testing.State(relations={peer}))
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert RecordingBackend.calls == [('acquire', 30), ('release', None)]


def run_sync_lock(backend_id: str = 'stop-replset-member', timeout: int | None = 5) -> None:
    ctx = context()
    with ctx(ctx.on.update_status(), testing.State()) as mgr:
        with mgr.charm.rollingops.acquire_sync_lock(backend_id, timeout):
            CALLS.append({'callback': 'block'})


def test_73_unknown_sync_backend():
    with pytest.raises(RollingOpsSyncLockError, match=r'Unknown sync lock backend: zzz\.'):
        run_sync_lock('zzz')
    assert CALLS == []


def test_sync_lock_timeout_is_a_timeout_error():
    RecordingBackend.fail_acquire = TimeoutError('busy')
    with pytest.raises(TimeoutError) as raised:
        run_sync_lock(timeout=None)
    assert isinstance(raised.value.__cause__, TimeoutError)
    assert RecordingBackend.calls == [('acquire', None)]
    assert CALLS == []


def test_sync_lock_acquire_failure_is_chained():
    RecordingBackend.fail_acquire = OSError('disk on fire')
    with pytest.raises(RollingOpsSyncLockError, match='Failed to acquire') as raised:
        run_sync_lock()
    assert isinstance(raised.value.__cause__, OSError)
    assert RecordingBackend.calls == [('acquire', 5)]


def test_sync_lock_release_failure_replaces_the_block_error():
    RecordingBackend.fail_release = RuntimeError('cannot release')
    with pytest.raises(RollingOpsSyncLockError, match='Failed to release') as raised:
        run_sync_lock()
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert [c['callback'] for c in CALLS] == ['block']


def test_73_request_without_peer_relation():
    ctx = context()
    with ctx(ctx.on.update_status(), testing.State()) as mgr:
        manager = mgr.charm.rollingops
        with pytest.raises(RollingOpsNoRelationError, match='No restart peer relation yet'):
            manager.request_async_lock('_restart')
        assert manager.state.status == 'not-ready'
        assert manager.is_waiting() is False


def test_73_is_waiting_for_a_foreign_unit():
    ctx = context()
    peer = testing.PeerRelation('restart', peers_data={1: {}})
    with ctx(ctx.on.update_status(), testing.State(relations={peer})) as mgr:
        with pytest.raises(ValueError, match='does not belong to the peer relation'):
            mgr.charm.rollingops.is_waiting('charm/9')


def test_unknown_callback_checked_before_the_relation():
    ctx = context()
    with ctx(ctx.on.update_status(), testing.State()) as mgr:
        with pytest.raises(Exception, match='Unknown callback_id: nope'):
            mgr.charm.rollingops.request_async_lock('nope')


def test_etcd_failed_on_a_peer_managed_unit_is_harmless():
    ctx = context(EtcdConfiguredCharm)
    bag = {'operations': queue(op()), 'state': 'request', 'processing_backend': 'peer'}
    peer = testing.PeerRelation('restart', local_unit_data=dict(bag))
    out = ctx.run(etcd_failed(), testing.State(relations={peer}))
    assert out.get_relation(peer.id).local_unit_data['operations'] == bag['operations']


def test_etcd_managed_unit_falls_back_to_peer():
    ctx = context(EtcdConfiguredCharm)
    bag = {'operations': queue(op()), 'state': 'request', 'processing_backend': 'etcd'}
    peer = testing.PeerRelation('restart', local_unit_data=bag, peers_data={1: {}})
    out = ctx.run(ctx.on.update_status(), testing.State(relations={peer}))
    assert out.get_relation(peer.id).local_unit_data['processing_backend'] == 'peer'


def test_cluster_id_without_etcd_relation_name_fails_construction():
    class Broken(RollingOpsCharm):
        etcd = {'cluster_id': 'c1'}

    ctx = context(Broken)
    with pytest.raises(testing.errors.UncaughtCharmError) as raised:
        ctx.run(ctx.on.update_status(), testing.State())
    assert isinstance(raised.value.__cause__, ValueError)
    assert 'cluster_id provided without etcd_relation_name.' in str(raised.value.__cause__)


def test_callback_exception_is_retry_release_with_traceback(caplog: pytest.LogCaptureFixture):
    class Raising(RollingOpsCharm):
        def _restart(self, delay: int | None = None) -> None:
            raise RuntimeError('workload refused to restart')

    ctx = context(Raising)
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/0', 'granted_at': '1.0'},
        local_unit_data={'operations': queue(op(max_retry=5)), 'state': 'request'},
        peers_data={1: {}},
    )
    out = ctx.run(ctx.on.relation_changed(peer, remote_unit=1), testing.State(relations={peer}))
    bag = out.get_relation(peer.id).local_unit_data
    assert bag['state'] == 'retry-release'
    assert ops_of(bag)[0]['attempt'] == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']
    assert any('Traceback' in m and 'workload refused to restart' in m for m in errors)


@pytest.mark.parametrize(
    ('returned', 'intent'),
    [
        ('retry-hold', 'retry-hold'),
        ('retry-release', 'retry-release'),
        ('bogus', 'idle'),
        (42, 'idle'),
        (None, 'idle'),
    ],
)
def test_callback_return_values(returned: object, intent: str):
    class Returning(RollingOpsCharm):
        def _restart(self, delay: int | None = None) -> object:
            return returned

    ctx = context(Returning)
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/0', 'granted_at': '1.0'},
        local_unit_data={'operations': queue(op()), 'state': 'request'},
        peers_data={1: {}},
    )
    out = ctx.run(ctx.on.relation_changed(peer, remote_unit=1), testing.State(relations={peer}))
    assert out.get_relation(peer.id).local_unit_data['state'] == intent


def test_callback_removed_after_upgrade_drops_the_op():
    ctx = context()
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/0', 'granted_at': '1.0'},
        local_unit_data={'operations': queue(op('_gone'), op('_restart')), 'state': 'request'},
        peers_data={1: {}},
    )
    out = ctx.run(ctx.on.relation_changed(peer, remote_unit=1), testing.State(relations={peer}))
    bag = out.get_relation(peer.id).local_unit_data
    assert [o['callback_id'] for o in ops_of(bag)] == ['_restart']


def test_kwargs_round_trip_through_json():
    ctx = context()
    peer = testing.PeerRelation('restart')
    kwargs = {'b': (1, 2), 'a': float('nan'), 'é': 'ü'}
    with ctx(ctx.on.update_status(), testing.State(relations={peer})) as mgr:
        mgr.charm.rollingops.request_async_lock('_restart', kwargs=kwargs)
        out = mgr.run()
    stored = out.get_relation(peer.id).local_unit_data['operations']
    assert ops_of({'operations': stored})[0]['kwargs'] == {'a': None, 'b': [1, 2], 'é': 'ü'}
    assert '"é":"ü"' in stored
