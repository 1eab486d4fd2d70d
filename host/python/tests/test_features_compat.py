"""Issue 8 wire rule: with a `charmlibs-rollingops` (PyPI) unit on the relation, the extended
features stay off and the application behaves as the reference does.

The test charm of `charm.py` runs on either library; `rollingops.testing.Cluster` runs the mixed
application, with the reference's 10-second worker routed into the cluster's hook queue.
"""

from __future__ import annotations

import pytest

from charm import ACTIONS, CALLS, META, RollingOpsCharm
from rollingops import testing as rt

reference = pytest.importorskip('charmlibs.rollingops')
from charmlibs.rollingops._peer import _worker  # noqa: E402


class ReferenceCharm(RollingOpsCharm):
    """The test charm on charmlibs.rollingops."""

    manager_class = reference.RollingOpsManager


NEW, REF = RollingOpsCharm, ReferenceCharm
LAYOUTS = {
    'new-leader': [NEW, REF, NEW, NEW],
    'ref-leader': [REF, NEW, NEW, NEW],
}


@pytest.fixture
def holder(monkeypatch: pytest.MonkeyPatch) -> list[rt.Cluster]:
    clusters: list[rt.Cluster] = []

    def start_worker(self: _worker.PeerRollingOpsAsyncWorker) -> None:
        # The reference's worker sleeps 10 s, then juju-execs this hook.
        clusters[0].dispatch(self.model.unit.name, 'rollingops_lock_granted', delay=10)

    monkeypatch.setattr(_worker.PeerRollingOpsAsyncWorker, 'start', start_worker)
    return clusters


def mixed(holder: list[rt.Cluster], layout: str, seed: int = 0) -> rt.Cluster:
    cluster = rt.Cluster(LAYOUTS[layout], meta=META, actions=ACTIONS, seed=seed)
    holder.append(cluster)
    return cluster


def test_a_reference_unit_keeps_the_extended_features_off(holder: list[rt.Cluster]):
    c = mixed(holder, 'new-leader')
    snap = c.snapshot()
    assert snap.engaged_features == frozenset()
    assert snap.units['charm/1'].features == frozenset()
    assert 'roll' in snap.units['charm/2'].features

    with pytest.raises(ValueError, match='charm/1'):
        c.start_roll('_restart')
    with pytest.raises(ValueError, match='charm/1'):
        c.pause('maintenance')
    # The policy is stored, not in force.
    c.set_policy(3, rank_ordering=True)
    assert c.snapshot().policy.max_concurrent == 3
    assert not c.snapshot().paused


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_mixed_application_stays_fifo_and_single_holder(
    holder: list[rt.Cluster], layout: str, seed: int
):
    c = mixed(holder, layout, seed)
    leader_is_new = LAYOUTS[layout][0] is NEW
    if leader_is_new:
        c.set_policy(3, rank_ordering=True)
        c.set_rank(3, -5)  # would go first under rank ordering
    order = [2, 1, 3, 0]
    for i in order:
        c.request(i, '_restart', {'delay': i})
    timeline = c.drive()

    assert [call['unit'] for call in CALLS] == [f'charm/{i}' for i in order]
    assert timeline.max_holders == 1
    assert all(call['granted_unit'] == call['unit'] for call in CALLS)
    assert c.holders == ()


def test_health_check_with_a_reference_unit_hands_on_at_once(holder: list[rt.Cluster]):
    c = mixed(holder, 'new-leader')
    c.request(2, '_restart', health_check='_deferred_restart')
    c.request(3, '_restart')
    timeline = c.drive()
    assert [call['unit'] for call in CALLS] == ['charm/2', 'charm/3']
    # The check never ran, and nobody waited for a delayed re-check.
    assert all(run.callback_id == '_restart' for run in timeline.callbacks)
    assert all(d.delay == 0 for d in timeline.dispatches)


class FencedCharm(RollingOpsCharm):
    """The test charm on this library, recording the generation argument."""

    def _restart(self, delay: int | None = None, fence: int | None = None) -> None:
        self._record('_restart', delay=delay, fence=fence)


@pytest.mark.parametrize(('layout', 'fenced'), [([REF, FencedCharm], 0), ([NEW, FencedCharm], 1)])
def test_generation_kwarg_under_either_leader(
    holder: list[rt.Cluster], layout: list[type], fenced: int
):
    c = rt.Cluster(layout, meta=META, actions=ACTIONS)
    holder.append(c)
    c.request(1, '_restart', generation_kwarg='fence')
    c.drive()
    # A reference leader writes no generation: the callback gets 0.
    assert [call['kwargs']['fence'] for call in CALLS] == [fenced]


def test_features_engage_once_the_last_reference_unit_is_refreshed(holder: list[rt.Cluster]):
    c = mixed(holder, 'new-leader')
    c.set_policy(2)
    with pytest.raises(ValueError, match='charm/1'):
        c.start_roll('_restart')
    c.refresh(1, NEW)
    # The refreshed unit advertises its features in its next rollingops hook.
    c.run(1, 'update-status')
    c.drive()
    snap = c.snapshot()
    assert 'roll' in snap.engaged_features
    assert 'max-concurrent' in snap.engaged_features
    assert c.start_roll('_restart', {'delay': 5}) == 1
    timeline = c.drive()
    assert sorted(call['unit'] for call in CALLS) == [f'charm/{i}' for i in range(4)]
    assert timeline.max_holders == 2  # the stored policy is now in force
