"""`rollingops.testing`: state builders, the multi-unit driver and the single-unit helpers."""

from __future__ import annotations

from typing import Any

import pytest
from ops import testing

import charm as test_charm
from feature_charm import HEALTH, META, RUNS, FeatureCharm
from rollingops import testing as rt

CALLBACKS = ['restart', 'healthy', 'roll_done']


@pytest.fixture(autouse=True)
def _feature_setup(session_base_dir: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FeatureCharm, 'base_dir', str(session_base_dir))
    RUNS.clear()
    HEALTH.clear()


def stub(units: int = 3) -> rt.Cluster:
    return rt.Cluster.stub('cluster', units=units, app_name='db', callbacks=CALLBACKS)


def context(unit: int) -> testing.Context[FeatureCharm]:
    return testing.Context(FeatureCharm, meta=META, app_name='db', unit_id=unit)


# -- state builders ------------------------------------------------------------------------


def test_holds_lock_state_runs_the_callback_in_your_charm():
    kit = stub()
    kit.holds_lock(1, 'restart', {'n': 7})
    assert kit.holders == ('db/1',)
    peer = kit.peer_relation(1)
    ctx = context(1)
    with rt.recorded_dispatches() as dispatches:
        out = ctx.run(
            ctx.on.relation_changed(peer, remote_unit=0), testing.State(relations={peer})
        )
    assert RUNS == [{'unit': 'db/1', 'callback': 'restart', 'kwargs': {'n': 7}}]
    assert dispatches == []
    # The unit recorded its finished turn for the leader.
    assert 'operations' in out.get_relation(peer.id).local_unit_data


def test_queued_state_is_waiting_in_your_charm():
    kit = stub()
    kit.holds_lock(2, 'restart')
    kit.request(1, 'restart', {'n': 1})
    ctx = context(1)
    with ctx(ctx.on.update_status(), kit.state(1)) as mgr:
        manager = mgr.charm.rollingops
        assert manager.is_waiting()
        assert manager.state.status == 'waiting'
        snap = manager.snapshot()
    assert snap.holder is not None
    assert snap.holder.unit == 'db/2'
    assert [op.kwargs for op in snap.queue] == [{'n': 1}]
    assert [(op.requested_at, op.kwargs) for op in kit.snapshot(1).queue] == [
        (op.requested_at, op.kwargs) for op in snap.queue
    ]


def test_paused_state_grants_nothing_in_your_charm():
    kit = stub()
    kit.pause('upgrade')
    ctx = context(0)
    with rt.recorded_dispatches():
        with ctx(ctx.on.update_status(), kit.state(0)) as mgr:
            mgr.charm.rollingops.request_async_lock('restart')
            snap = mgr.charm.rollingops.snapshot()
            out = mgr.run()
    assert snap.pause is not None
    assert snap.pause.reason == 'upgrade'
    assert 'granted_unit' not in out.get_relation(kit.relation_id).local_app_data
    assert RUNS == []


def test_roll_in_progress_state():
    kit = stub()
    kit.start_roll('restart', on_complete='roll_done')
    kit.drive(until=lambda k: len(k.timeline.runs('restart')) == 1)
    [first] = kit.timeline.runs('restart')
    snap = kit.snapshot()
    assert snap.roll is not None
    assert not snap.roll.done
    assert first not in snap.roll.pending_units
    assert len(snap.roll.pending_units) == 2
    # Your charm, given that state, sees the same roll.
    ctx = context(0)
    with ctx(ctx.on.update_status(), kit.state(0)) as mgr:
        theirs = mgr.charm.rollingops.snapshot()
        mgr.run()
    assert theirs.roll == snap.roll


def test_state_passes_further_fields():
    kit = stub()
    relation = testing.Relation('db-client')
    state = kit.state(2, relations=[relation], config={'a': 1})
    assert not state.leader
    assert relation in state.relations
    assert len(state.relations) == 2
    assert kit.state(0).leader


# -- the driver ----------------------------------------------------------------------------


@pytest.mark.parametrize('units', [1, 3, 5])
def test_run_rolling_restart_returns_the_timeline(units: int):
    timeline = rt.run_rolling_restart(FeatureCharm, 'restart', {'n': 1}, units=units, meta=META)
    assert sorted(timeline.runs('restart')) == [f'db/{i}' for i in range(units)]
    assert timeline.max_holders == 1
    assert [u for _, u in timeline.grants] == timeline.runs('restart')
    assert all(run.unit in run.holders for run in timeline.callbacks)
    assert timeline.duration > 0
    assert timeline.hooks[-1].holders == ()


def test_run_rolling_restart_as_a_roll():
    timeline = rt.run_rolling_restart(
        FeatureCharm, 'restart', units=4, roll=True, on_complete='roll_done', meta=META
    )
    assert sorted(timeline.runs('restart')) == [f'db/{i}' for i in range(4)]
    assert timeline.runs('roll_done') == ['db/0']


def test_the_same_seed_gives_the_same_order():
    def order(seed: int) -> list[tuple[str, str]]:
        timeline = rt.run_rolling_restart(FeatureCharm, units=4, seed=seed, meta=META)
        return [(h.unit, h.hook) for h in timeline.hooks]

    assert order(4) == order(4)
    assert order(4) != order(5)


def test_delayed_dispatches_wait_for_the_clock():
    kit = rt.Cluster(FeatureCharm, units=2, meta=META)
    HEALTH['db/1'] = [False, False]
    kit.request(1, 'restart', health_check='healthy', health_timeout=60)
    kit.drive(until=lambda k: k.timeline.runs('restart') == ['db/1'])
    kit.drive(until=lambda k: not k.pending())
    [(seconds, unit, event)] = kit.delayed
    assert unit == 'db/1'
    assert event == 'rollingops_lock_granted'
    assert 1.5 < seconds <= 2.0
    kit.advance(1)
    assert kit.pending() == 0
    kit.advance(1.1)
    assert kit.pending('db/1') == 1
    kit.drive(max_seconds=1)  # runs the check (fails); the next one is 4 s away
    assert kit.timeline.runs('healthy') == ['db/1']
    assert kit.delayed
    kit.drive()
    assert kit.timeline.runs('healthy') == ['db/1'] * 3


def test_holders_of_matches_the_component():
    kit = rt.Cluster(FeatureCharm, units=4, meta=META)
    kit.set_policy(3)
    for i in (1, 2, 3):
        kit.request(i, 'restart')
    kit.run(0, 'relation-changed')
    assert len(kit.holders) == 3
    assert kit.holders == tuple(h.unit for h in kit.snapshot().holders)
    # An older leader rewrote the primary grant: the extra holders no longer count.
    kit.app_bag['granted_at'] = '1.0'
    assert rt.holders_of(kit.app_bag) == (kit.app_bag['granted_unit'],)
    assert rt.holders_of(kit.app_bag) == tuple(h.unit for h in kit.snapshot().holders)
    assert rt.holders_of({}) == ()


def test_cluster_arguments_are_checked():
    with pytest.raises(ValueError, match='leader'):
        rt.Cluster(FeatureCharm, units=2, leader=5, meta=META)
    meta = {'name': 'two', 'peers': {'a': {'interface': 'x'}, 'b': {'interface': 'y'}}}
    with pytest.raises(ValueError, match='peer_relation_name'):
        rt.Cluster(FeatureCharm, units=2, meta=meta)
    with pytest.raises(RuntimeError, match='settle'):
        kit = rt.Cluster(FeatureCharm, units=3, meta=META)
        for i in range(3):
            kit.request(i, 'restart')
        kit.drive(max_hooks=3)


# -- single-unit helpers -------------------------------------------------------------------


def test_recorded_dispatches_and_lock_granted_event():
    ctx = context(0)
    peer = testing.PeerRelation('cluster')
    with rt.recorded_dispatches() as dispatches:
        with ctx(ctx.on.update_status(), testing.State(leader=True, relations={peer})) as mgr:
            mgr.charm.rollingops.request_async_lock('restart', {'n': 3})
            out = mgr.run()
        assert dispatches == [rt.Dispatch('db/0', 'rollingops_lock_granted', 0.0)]
        assert RUNS == []
        ctx.run(rt.lock_granted_event(), out)
    assert RUNS == [{'unit': 'db/0', 'callback': 'restart', 'kwargs': {'n': 3}}]


def test_timeline_counts_every_grant_even_to_the_same_unit():
    kit = rt.Cluster(
        test_charm.RollingOpsCharm, units=2, meta=test_charm.META, actions=test_charm.ACTIONS
    )
    kit.request(1, '_failed_restart', max_retry=1)  # retry-release, the only one waiting
    timeline = kit.drive()
    assert timeline.runs('_failed_restart') == ['charm/1', 'charm/1']
    assert [unit for _, unit in timeline.grants] == ['charm/1', 'charm/1']
    assert all(len(h.grant_ids) == len(h.holders) for h in timeline.hooks)


def test_call_runs_only_the_given_function_and_keeps_its_writes():
    kit = rt.Cluster(FeatureCharm, units=2, meta=META)
    kit.holds_lock(1, 'restart')
    hooks = len(kit.timeline.hooks)
    with pytest.raises(ValueError, match='leader'):
        kit.call(1, lambda m: m.pause())
    assert len(kit.timeline.hooks) == hooks  # a failed hook keeps nothing
    assert RUNS == []  # and no handler ran (db/1's turn is still due)
    kit.call(1, lambda m: m.set_rank(3))
    assert kit.unit_bags[1]['rollingops-rank'] == '3'
    assert kit.timeline.hooks[-1].hook == 'call'
    assert RUNS == []
