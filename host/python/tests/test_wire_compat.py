"""Issue 5 part 4: units on `charmlibs-rollingops` (PyPI) and on this package share a relation.

The same test charm runs on either library (only the manager class differs). Mixed clusters
run rolling restarts to completion with either library as leader: every unit restarts exactly
once, each under a grant it holds, no grant ends before its holder finished, and no queued
operation is lost.
"""

from __future__ import annotations

import pytest
from ops import testing

from charm import ACTIONS, CALLS, META, RollingOpsCharm
from cluster import Cluster, Hook
from conftest import ops_of

reference = pytest.importorskip('charmlibs.rollingops')
from charmlibs.rollingops._peer import _worker  # noqa: E402


class ReferenceCharm(RollingOpsCharm):
    """The test charm on charmlibs.rollingops."""

    manager_class = reference.RollingOpsManager


NEW, REF = RollingOpsCharm, ReferenceCharm


@pytest.fixture
def cluster_dispatch(monkeypatch: pytest.MonkeyPatch) -> list[Cluster]:
    holder: list[Cluster] = []

    def spawn(
        unit_name: str, charm_dir: str, event_name: str, base_dir: str, delay_ms: int = 0
    ) -> None:
        assert delay_ms == 0, 'these tests use no delayed dispatch'
        holder[0].dispatch(unit_name, event_name)

    def start_worker(self: _worker.PeerRollingOpsAsyncWorker) -> None:
        # The reference's worker sleeps 10 s, then juju-execs the same hook.
        holder[0].dispatch(self.model.unit.name, 'rollingops_lock_granted')

    monkeypatch.setattr('rollingops._host.spawn_dispatch', spawn)
    monkeypatch.setattr(_worker.PeerRollingOpsAsyncWorker, 'start', start_worker)
    return holder


LAYOUTS = {
    'ref-leader-new-followers': [REF, NEW, NEW],
    'new-leader-ref-followers': [NEW, REF, REF],
    'ref-leader-mixed': [REF, REF, NEW],
    'new-leader-mixed': [NEW, NEW, REF],
}


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_mixed_rolling_restart(cluster_dispatch: list[Cluster], layout: str, seed: int):
    cluster = Cluster(LAYOUTS[layout], leader=0, seed=seed)
    cluster_dispatch.append(cluster)
    for i in cluster.rng.sample(cluster.ids, len(cluster.ids)):
        cluster.queue(i, Hook('action', 'restart', {'delay': 1}))
    cluster.drive()
    for i in cluster.ids:
        assert ops_of(cluster.bags[i]) == [], (i, cluster.bags[i])
    assert not cluster.app.get('granted_unit')
    runs = sorted((c['unit'], c['callback']) for c in CALLS)
    assert runs == [(f'charm/{i}', '_restart') for i in cluster.ids]
    assert all(c['granted_unit'] == c['unit'] for c in CALLS)


@pytest.mark.parametrize('layout', ['ref-leader-new-followers', 'new-leader-ref-followers'])
def test_mixed_retries_are_not_lost(cluster_dispatch: list[Cluster], layout: str):
    cluster = Cluster(LAYOUTS[layout], leader=0, seed=5)
    cluster_dispatch.append(cluster)
    cluster.queue(1, Hook('action', 'failed-restart', {'max-retry': 1}))
    cluster.queue(2, Hook('action', 'deferred-restart', {'max-retry': 1}))
    cluster.queue(2, Hook('action', 'restart'))
    cluster.queue(0, Hook('action', 'restart'))
    cluster.drive()
    by_unit: dict[str, list[str]] = {}
    for call in CALLS:
        by_unit.setdefault(call['unit'], []).append(call['callback'])
    assert by_unit == {
        'charm/0': ['_restart'],
        'charm/1': ['_failed_restart'] * 2,
        'charm/2': ['_deferred_restart'] * 2 + ['_restart'],
    }
    # RETRY_HOLD kept the lock: charm/2's two deferred runs are adjacent.
    order = [(c['unit'], c['callback']) for c in CALLS]
    first = order.index(('charm/2', '_deferred_restart'))
    assert order[first + 1] == ('charm/2', '_deferred_restart')


def run_with(charm_type: type, unit_id: int, peer: testing.PeerRelation, leader: bool = False):
    ctx = testing.Context(
        charm_type, meta=META, actions=ACTIONS, app_name='charm', unit_id=unit_id
    )
    return ctx(ctx.on.update_status(), testing.State(leader=leader, relations={peer}))


@pytest.mark.parametrize(('writer', 'reader'), [(REF, NEW), (NEW, REF)])
def test_each_reads_the_others_queue_and_grant(
    cluster_dispatch: list[Cluster], writer: type, reader: type
):
    cluster = Cluster([writer, reader], leader=0, seed=0)
    cluster_dispatch.append(cluster)
    cluster.run(0, Hook('action', 'restart', {'delay': 3}))
    peer = testing.PeerRelation(
        'restart', local_unit_data=dict(cluster.bags[1]), peers_data={0: dict(cluster.bags[0])}
    )
    with run_with(reader, 1, peer) as mgr:
        assert mgr.charm.rollingops.is_waiting('charm/0') is True
        assert mgr.charm.rollingops.is_waiting_callback('_restart', 'charm/0') is True
        assert mgr.charm.rollingops.is_waiting_callback('_failed_restart', 'charm/0') is False

    # The writer (leader) granted itself; the reader sees the grant is not its own.
    assert cluster.app['granted_unit'] == 'charm/0'
    peer = testing.PeerRelation(
        'restart',
        local_app_data=dict(cluster.app),
        local_unit_data=dict(cluster.bags[1]),
        peers_data={0: dict(cluster.bags[0])},
    )
    with run_with(reader, 1, peer) as mgr:
        assert mgr.charm.rollingops.state.status == 'idle'
    # And the writer's own view of that grant.
    peer = testing.PeerRelation(
        'restart',
        local_app_data=dict(cluster.app),
        local_unit_data=dict(cluster.bags[0]),
        peers_data={1: dict(cluster.bags[1])},
    )
    with run_with(writer, 0, peer, leader=True) as mgr:
        assert mgr.charm.rollingops.state.status == 'granted'
