"""Issue 8: health gates, policy (max_concurrent, rank ordering), pause/resume, cancel,
force-release, application-wide rolls and generation fencing, through the real component.

Every test runs whole units in `ops.testing` contexts with `rollingops.testing.Cluster`; the
component is never mocked and no hook sleeps.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from ops import testing

import rollingops
from feature_charm import HEALTH, META, RUNS, FeatureCharm
from rollingops import testing as rt


@pytest.fixture(autouse=True)
def _feature_setup(session_base_dir: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FeatureCharm, 'base_dir', str(session_base_dir))
    RUNS.clear()
    HEALTH.clear()


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any hook that sleeps."""

    def refuse(seconds: float) -> None:
        raise AssertionError(f'a hook slept {seconds} s')

    monkeypatch.setattr(time, 'sleep', refuse)


def cluster(units: int = 3, **kwargs: Any) -> rt.Cluster:
    return rt.Cluster(FeatureCharm, units=units, meta=META, **kwargs)


def runs(callback: str) -> list[str]:
    return [r['unit'] for r in RUNS if r['callback'] == callback]


# -- health gate -------------------------------------------------------------------------------


@pytest.mark.usefixtures('no_sleep')
def test_health_gate_keeps_the_lock_until_the_check_passes():
    c = cluster()
    HEALTH['db/1'] = [False, False]
    c.request(1, 'restart', {'n': 1}, health_check='healthy', health_timeout=120)
    c.request(2, 'restart', {'n': 2}, health_check='healthy', health_timeout=120)
    timeline = c.drive()

    assert runs('restart') == ['db/1', 'db/2']
    checks = [(r['unit'], r['kwargs']['answer']) for r in RUNS if r['callback'] == 'healthy']
    assert checks == [('db/1', False), ('db/1', False), ('db/1', True), ('db/2', True)]
    # The health check gets the operation's kwargs.
    assert all(r['kwargs']['n'] == 1 for r in RUNS if r['unit'] == 'db/1')

    # From db/1's restart until its check passed, db/1 alone held the lock.
    hooks = timeline.hooks
    start = next(
        i for i, h in enumerate(hooks) if any(c.callback_id == 'restart' for c in h.callbacks)
    )
    passed = next(i for i, h in enumerate(hooks) if any(c.result == 'true' for c in h.callbacks))
    assert all(h.holders == ('db/1',) for h in hooks[start : passed + 1])
    assert 'db/2' in [u for _, u in timeline.grants]
    # Re-checks came from delayed dispatches on the backoff schedule, not from sleeping.
    delayed = [d.delay for d in timeline.dispatches if d.unit == 'db/1' and d.delay > 0]
    assert delayed == [2.0, 4.0, 8.0]
    # ...and the simulated clock moved forward by them.
    assert timeline.duration >= 14
    assert c.snapshot().holders == ()


@pytest.mark.usefixtures('no_sleep')
def test_health_gate_that_never_passes_hands_on_after_the_timeout_and_pauses():
    c = cluster()
    HEALTH['db/1'] = [False] * 100
    c.request(1, 'restart', health_check='healthy', health_timeout=20)
    c.request(2, 'restart')
    c.drive()

    assert runs('restart') == ['db/1']  # db/2 waits: the application paused
    checks = runs('healthy')
    assert 3 <= len(checks) <= 6
    snap = c.snapshot()
    assert snap.holders == ()
    assert snap.paused
    assert snap.pause is not None
    assert 'healthy' in snap.pause.reason
    assert 'db/1' in snap.pause.reason
    gate = snap.units['db/1'].health_gate
    assert gate is not None
    assert gate.failed
    assert snap.units['db/1'].queue == ()
    assert [op.callback_id for op in snap.units['db/2'].queue or ()] == ['restart']

    assert c.resume() is True
    c.drive()
    assert runs('restart') == ['db/1', 'db/2']
    assert not c.snapshot().paused


@pytest.mark.usefixtures('no_sleep')
def test_health_gate_failure_without_halting_moves_on():
    c = cluster()
    c.set_policy(halt_on_health_failure=False)
    HEALTH['db/1'] = [False] * 100
    c.request(1, 'restart', health_check='healthy', health_timeout=5)
    c.request(2, 'restart')
    c.drive()
    assert runs('restart') == ['db/1', 'db/2']
    assert not c.snapshot().paused


def test_health_check_must_be_registered_and_timeout_positive():
    c = cluster()
    with pytest.raises(rollingops.RollingOpsInvalidLockRequestError, match='nope'):
        c.request(1, 'restart', health_check='nope')
    with pytest.raises(rollingops.RollingOpsInvalidLockRequestError, match='health_timeout'):
        c.request(1, 'restart', health_check='healthy', health_timeout=0)
    with pytest.raises(rollingops.RollingOpsInvalidLockRequestError, match='health_timeout'):
        c.request(1, 'restart', health_check='healthy', health_timeout=-3)
    with pytest.raises(rollingops.RollingOpsInvalidLockRequestError, match='generation_kwarg'):
        c.request(1, 'restart', generation_kwarg=' ')
    assert c.snapshot().units['db/1'].queue == ()


# -- policy: max_concurrent, rank ordering ---------------------------------------------------


@pytest.mark.parametrize('seed', range(3))
def test_max_concurrent_two_with_four_units(seed: int):
    c = cluster(4, seed=seed)
    c.set_policy(2)
    assert c.snapshot().policy.max_concurrent == 2
    for i in range(4):
        c.request(i, 'restart')
    timeline = c.drive()
    assert sorted(runs('restart')) == [f'db/{i}' for i in range(4)]
    assert timeline.max_holders == 2
    # Every callback ran while its unit held the lock, with at most one other holder.
    for run in timeline.callbacks:
        assert run.unit in run.holders
        assert len(run.holders) <= 2
    assert c.holders == ()


def test_rank_ordering_puts_the_primary_last():
    c = cluster(4)
    c.set_policy(rank_ordering=True)
    c.set_rank(1, 10)  # db/1 is the primary
    # Everyone asks (the primary first) before the leader schedules.
    for i in (1, 2, 3, 0):
        c.request(i, 'restart')
    c.drive()
    order = runs('restart')
    assert order[-1] == 'db/1'
    assert sorted(order) == ['db/0', 'db/1', 'db/2', 'db/3']
    assert c.snapshot().units['db/1'].rank == 10


def test_without_rank_ordering_the_oldest_request_goes_first():
    c = cluster(4)
    c.set_rank(1, 10)
    for i in (1, 2, 3, 0):
        c.request(i, 'restart')
    c.drive()
    assert runs('restart')[0] == 'db/1'


def test_policy_and_controls_are_for_the_leader():
    c = cluster()
    for action in (
        lambda m: m.set_policy(2),
        lambda m: m.pause('x'),
        lambda m: m.resume(),
        lambda m: m.force_release(),
        lambda m: m.start_roll('restart'),
    ):
        with pytest.raises(ValueError, match='leader'):
            c.call(1, action)
    with pytest.raises(ValueError, match='max_concurrent'):
        c.set_policy(0)
    with pytest.raises(ValueError, match='grant_timeout'):
        c.set_policy(grant_timeout=0)


# -- pause / resume / cancel / force-release ----------------------------------------------------


def test_pause_lets_the_holder_finish_and_grants_nothing_until_resume():
    c = cluster()
    c.holds_lock(1, 'restart')
    c.request(2, 'restart')
    assert c.pause('maintenance window') is True
    assert c.pause('again') is False
    c.drive()
    assert runs('restart') == ['db/1']
    snap = c.snapshot(2)
    assert snap.paused
    assert snap.pause is not None
    assert snap.pause.reason == 'maintenance window'
    assert snap.waiting_units == ('db/2',)

    assert c.resume() is True
    assert c.resume() is False
    c.drive()
    assert runs('restart') == ['db/1', 'db/2']


def test_cancel_drops_queued_operations_that_have_not_started():
    c = cluster()
    c.holds_lock(2, 'restart')  # keeps db/1 waiting
    c.request(1, 'restart', {'n': 1})
    c.request(1, 'healthy', {'n': 2})
    c.request(1, 'restart', {'n': 3})
    assert c.cancel(1, 'healthy') == 1
    assert [op.kwargs['n'] for op in c.snapshot(1).queue] == [1, 3]
    assert c.cancel(1) == 2
    assert c.cancel(1) == 0
    c.drive()
    assert runs('restart') == ['db/2']
    assert c.snapshot().units['db/1'].queue == ()


def test_cancel_keeps_an_operation_waiting_for_its_health_check():
    c = cluster()
    HEALTH['db/1'] = [False] * 5
    c.holds_lock(1, 'restart', {})
    c.cancel(1)  # nothing started yet: dropped
    assert c.snapshot(1).queue == ()
    c.request(1, 'restart', health_check='healthy', health_timeout=300)
    c.drive(until=lambda k: 'db/1' in runs('restart'))
    c.drive(until=lambda k: len(runs('healthy')) == 1)
    assert c.cancel(1) == 0  # under its health gate: stays
    assert len(c.snapshot(1).queue) == 1


def test_force_release_ends_a_grant_and_fences_its_generation():
    c = cluster()
    c.request(1, 'restart', generation_kwarg='generation')
    c.run(0, 'relation-changed')  # the leader grants db/1 (generation 1); db/1 has not run
    assert c.holders == ('db/1',)
    first = c.snapshot().holder
    assert first is not None
    assert first.generation is not None

    with pytest.raises(ValueError, match='does not hold'):
        c.force_release(2)
    assert c.force_release(1) == 1
    # Not re-granted at once: db/1 waits out a 60 s back-off...
    assert c.holders == ()
    c.run(0, 'update-status')
    assert c.holders == ()
    # ...but its operation is still queued: the leader's delayed wake-up grants it again,
    # under a new generation.
    c.drive(until=lambda k: bool(k.holders))
    snap = c.snapshot()
    assert snap.holder is not None
    assert snap.holder.unit == 'db/1'
    assert snap.holder.generation is not None
    assert snap.holder.generation > first.generation
    c.drive()
    [run] = [r for r in RUNS if r['callback'] == 'restart']
    assert run['kwargs']['generation'] == snap.holder.generation


def test_force_release_of_every_holder():
    c = cluster(4)
    c.set_policy(2)
    for i in (1, 2, 3):
        c.request(i, 'restart')
    c.run(0, 'relation-changed')
    assert len(c.holders) == 2
    assert c.force_release() == 2


# -- generation fencing --------------------------------------------------------------------


def test_generation_kwarg_reaches_the_callback_and_grows():
    c = cluster()
    for i in (2, 0, 1):
        c.request(i, 'restart', {'n': i}, generation_kwarg='fence')
    c.request(1, 'restart', {'n': 10})  # no generation requested: none passed
    c.drive()
    fences = [r['kwargs'].get('fence') for r in RUNS if r['callback'] == 'restart']
    assert fences[-1] is None
    assert all(isinstance(f, int) for f in fences[:-1])
    assert fences[:-1] == sorted(set(fences[:-1]))


# -- application-wide rolls ----------------------------------------------------------------


@pytest.mark.parametrize('units', [3, 4, 5])
def test_start_roll_runs_every_unit_once_and_completes_once(units: int):
    c = cluster(units, seed=units)
    generation = c.start_roll('restart', {'reason': 'tls'}, on_complete='roll_done')
    assert generation == 1
    snap = c.snapshot()
    assert snap.roll is not None
    assert not snap.roll.done
    timeline = c.drive()

    assert sorted(runs('restart')) == [f'db/{i}' for i in range(units)]
    assert all(r['kwargs'] == {'reason': 'tls'} for r in RUNS if r['callback'] == 'restart')
    done = [r for r in RUNS if r['callback'] == 'roll_done']
    assert done == [{'unit': 'db/0', 'callback': 'roll_done', 'kwargs': {'generation': 1}}]
    assert timeline.max_holders == 1
    # on_complete ran after the last unit's turn.
    assert timeline.runs()[-1] == 'db/0'
    assert timeline.callbacks[-1].callback_id == 'roll_done'
    snap = c.snapshot()
    assert snap.roll is not None
    assert snap.roll.done
    assert snap.roll.pending_units == ()

    # The next roll gets the next generation; nothing runs twice meanwhile.
    assert c.start_roll('restart') == 2
    c.drive()
    assert len(runs('restart')) == 2 * units
    assert len([r for r in RUNS if r['callback'] == 'roll_done']) == 1


def test_a_roll_in_progress_refuses_another():
    c = cluster()
    c.start_roll('restart')
    with pytest.raises(ValueError, match='in progress'):
        c.start_roll('restart')
    with pytest.raises(rollingops.RollingOpsInvalidLockRequestError, match='nope'):
        c.call(0, lambda m: m.start_roll('restart', on_complete='nope'))


@pytest.mark.usefixtures('no_sleep')
def test_a_roll_with_a_health_gate():
    c = cluster()
    HEALTH['db/2'] = [False]
    c.start_roll('restart', health_check='healthy', health_timeout=60, on_complete='roll_done')
    timeline = c.drive()
    assert sorted(runs('restart')) == ['db/0', 'db/1', 'db/2']
    assert runs('healthy').count('db/2') == 2
    assert runs('roll_done') == ['db/0']
    assert any(d.delay > 0 for d in timeline.dispatches)


# -- status ----------------------------------------------------------------------------------


def test_snapshot_reports_holders_queues_and_ages():
    c = cluster()
    c.holds_lock(1, 'restart', {'n': 1})
    c.request(2, 'restart', {'n': 2})
    c.advance(30)
    snap = c.snapshot(2)
    assert snap.unit == 'db/2'
    assert not snap.leader
    assert snap.relation
    assert snap.holder is not None
    assert snap.holder.unit == 'db/1'
    assert snap.holder.held_for is not None
    assert snap.holder.held_for >= 30
    [op] = snap.queue
    assert op.callback_id == 'restart'
    assert op.kwargs == {'n': 2}
    assert op.age >= 30
    assert snap.waiting_units == ('db/2',)
    assert snap.engaged_features >= {'health-gate', 'pause', 'roll', 'rank', 'max-concurrent'}
    assert snap.policy == rollingops.Policy()
    assert snap.roll is None


# -- grant timeout -------------------------------------------------------------------------


@pytest.mark.usefixtures('no_sleep')
def test_grant_timeout_reclaims_the_lock_from_a_stuck_holder():
    c = cluster()
    c.set_policy(grant_timeout=60)
    c.holds_lock(1, 'restart')
    c.set_down(1)  # db/1's agent is stuck: it never takes its turn
    c.request(2, 'restart')
    timeline = c.drive(max_seconds=100)
    assert runs('restart') == ['db/2']
    [at] = [at for at, u in timeline.grants if u == 'db/2']
    assert at >= 60
    # db/1 waits out a back-off (60 s, doubling at each reclaim) instead of being granted
    # again at once; while it is down the leader retries ever more rarely.
    assert c.holders == ()
    c.drive(max_seconds=1_000)
    retries = [at for at, u in c.timeline.grants if u == 'db/1']
    gaps = [b - a for a, b in itertools.pairwise(retries)]
    assert len(gaps) >= 2, retries
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps
    # Back up, db/1 gets its turn at the next retry.
    c.set_down(1, down=False)
    c.drive(max_seconds=5_000)
    assert runs('restart') == ['db/2', 'db/1']


# -- regressions: core issues found while building this suite, now fixed -------------------


def test_cancelling_a_roll_operation_does_not_wedge_the_roll():
    c = cluster()
    c.holds_lock(2, 'restart')  # the lock is busy, so db/1's roll operation waits
    c.start_roll('restart', on_complete='roll_done')
    c.run(1, 'relation-changed')  # db/1 joins the roll
    assert c.cancel(1) == 1
    c.drive()
    roll = c.snapshot().roll
    assert roll is not None
    assert roll.done, roll.pending_units
    assert c.start_roll('restart') == 2


def test_rank_ordering_puts_a_primary_leader_last_in_a_roll():
    c = cluster(4)
    c.set_policy(rank_ordering=True)
    c.set_rank(0, 10)  # the leader is the primary
    c.start_roll('restart')
    c.drive()
    assert runs('restart')[-1] == 'db/0', runs('restart')


def test_a_holder_that_departs_mid_roll_does_not_block_it():
    c = cluster(4)
    c.start_roll('restart', on_complete='roll_done')
    c.drive(until=lambda k: bool(k.holders) and k.holders[0] != 'db/0')
    gone = c.holders[0]
    c.set_down(gone)  # granted, but it never runs its turn: it is being removed
    c.depart(gone)
    c.drive()
    assert gone not in runs('restart')
    assert sorted(runs('restart')) == sorted({f'db/{i}' for i in range(4)} - {gone})
    assert runs('roll_done') == ['db/0']
    roll = c.snapshot().roll
    assert roll is not None
    assert roll.done


def test_snapshot_without_the_peer_relation():
    ctx = testing.Context(FeatureCharm, meta=META, app_name='db', unit_id=0)
    with ctx(ctx.on.update_status(), testing.State(leader=True)) as mgr:
        snap = mgr.charm.rollingops.snapshot()
        with pytest.raises(rollingops.RollingOpsNoRelationError):
            mgr.charm.rollingops.set_rank(1)
        with pytest.raises(rollingops.RollingOpsNoRelationError):
            mgr.charm.rollingops.pause()
    assert snap == rollingops.RollingOpsSnapshot(unit='db/0', leader=True, relation=False)
    assert snap.holder is None
    assert snap.queue == ()
    assert not snap.paused
