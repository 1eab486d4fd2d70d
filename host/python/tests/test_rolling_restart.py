"""Multi-unit runs: three units carry their databags between Contexts until the work is done."""

from __future__ import annotations

import itertools
import json

import pytest

from charm import CALLS, RollingOpsCharm
from cluster import Cluster, Hook
from conftest import ops_of


@pytest.fixture
def cluster_dispatch(monkeypatch: pytest.MonkeyPatch) -> list[Cluster]:
    holder: list[Cluster] = []

    def spawn(
        unit_name: str, charm_dir: str, event_name: str, base_dir: str, delay_ms: int = 0
    ) -> None:
        assert delay_ms == 0, 'these tests use no delayed dispatch'
        holder[0].dispatch(unit_name, event_name)

    monkeypatch.setattr('rollingops._host.spawn_dispatch', spawn)
    return holder


def settle_and_check(cluster: Cluster) -> None:
    cluster.drive()
    for i in cluster.ids:
        assert ops_of(cluster.bags[i]) == [], cluster.bags[i]
        assert cluster.bags[i].get('state', 'idle') == 'idle'
    assert 'granted_unit' not in cluster.app


@pytest.mark.parametrize('seed', range(12))
@pytest.mark.parametrize('leader', [0, 2])
def test_three_unit_rolling_restart(cluster_dispatch: list[Cluster], seed: int, leader: int):
    cluster = Cluster([RollingOpsCharm] * 3, leader=leader, seed=seed)
    cluster_dispatch.append(cluster)
    for i in cluster.rng.sample(cluster.ids, 3):
        cluster.queue(i, Hook('action', 'restart', {'delay': 2}))
    settle_and_check(cluster)

    runs = [(c['unit'], c['callback']) for c in CALLS]
    assert sorted(runs) == [(f'charm/{i}', '_restart') for i in range(3)]
    # Each run happened while that unit held the grant, each under its own grant.
    assert all(c['granted_unit'] == c['unit'] for c in CALLS)
    generations = [json.loads(c['grant'])['seq'] for c in CALLS]
    assert generations == sorted(set(generations))


@pytest.mark.parametrize('seed', range(4))
def test_retry_hold_keeps_the_lock(cluster_dispatch: list[Cluster], seed: int):
    # spec/peer.md §7.4 row 56: a RETRY_HOLD holder runs all its attempts before the others.
    cluster = Cluster([RollingOpsCharm] * 4, leader=0, seed=seed)
    cluster_dispatch.append(cluster)
    cluster.queue(1, Hook('action', 'deferred-restart', {'max-retry': 2}))
    cluster.drive()
    cluster.queue(3, Hook('action', 'restart'))
    settle_and_check(cluster)
    runs = [(c['unit'], c['callback']) for c in CALLS]
    assert runs == [('charm/1', '_deferred_restart')] * 3 + [('charm/3', '_restart')]


@pytest.mark.parametrize('seed', range(8))
def test_retry_release_alternates(cluster_dispatch: list[Cluster], seed: int):
    # §7.4 row 57: two failing units take turns (least recently executed first).
    cluster = Cluster([RollingOpsCharm] * 3, leader=0, seed=seed)
    cluster_dispatch.append(cluster)
    # Both ask before any turn (otherwise a unit that asks late rightly finds the other
    # re-granted, being the only one waiting).
    cluster.run(1, Hook('action', 'failed-restart', {'max-retry': 2}))
    cluster.run(2, Hook('action', 'failed-restart', {'max-retry': 2}))
    settle_and_check(cluster)
    units = [c['unit'] for c in CALLS]
    assert units.count('charm/1') == 3
    assert units.count('charm/2') == 3
    # Nobody runs twice in a row while the other waits: a, b, a, b, a, b.
    assert all(a != b for a, b in itertools.pairwise(units)), units


def test_leader_unit_is_not_starved_by_its_own_retries(cluster_dispatch: list[Cluster]):
    # §7.4 row 61: the leader's endless retry-release does not starve a fresh request.
    cluster = Cluster([RollingOpsCharm] * 2, leader=0, seed=1)
    cluster_dispatch.append(cluster)
    cluster.queue(0, Hook('action', 'failed-restart', {'max-retry': 3}))
    cluster.queue(1, Hook('action', 'restart'))
    settle_and_check(cluster)
    assert ('charm/1', '_restart') in [(c['unit'], c['callback']) for c in CALLS]


def test_per_unit_fifo_and_max_retry_zero(cluster_dispatch: list[Cluster]):
    # §7.4 rows 58/59: per-unit FIFO; max-retry 0 runs once; identical tail requests de-dup.
    cluster = Cluster([RollingOpsCharm] * 2, leader=0, seed=3)
    cluster_dispatch.append(cluster)
    cluster.queue(1, Hook('action', 'failed-restart', {'max-retry': 2}))
    for _ in range(3):
        cluster.queue(1, Hook('action', 'deferred-restart', {'max-retry': 0}))
    cluster.queue(1, Hook('action', 'restart'))
    settle_and_check(cluster)
    assert [c['callback'] for c in CALLS] == ['_failed_restart'] * 3 + [
        '_deferred_restart',
        '_restart',
    ]


def test_the_exclusion_check_catches_an_early_grant():
    cluster = Cluster([RollingOpsCharm] * 2, leader=0)
    cluster.bags[1] = {
        'operations': '[]',
        'state': 'request',
        'rollingops-executed-grant': '1@1.0',
    }
    before = {
        'granted_unit': 'charm/1',
        'granted_at': '2.0',
        'rollingops-grant': '{"seq":2,"unit":"charm/1","at":"2.0"}',
    }
    after = {
        'granted_unit': 'charm/0',
        'granted_at': '3.0',
        'rollingops-grant': '{"seq":3,"unit":"charm/0","at":"3.0"}',
    }
    with pytest.raises(AssertionError, match='ended before its turn finished'):
        cluster._check_grant_change(before, after)
    cluster.bags[1]['rollingops-executed-grant'] = '2@2.0'
    cluster._check_grant_change(before, after)
