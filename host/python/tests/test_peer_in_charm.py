"""spec/peer.md §7.2 (rows 27-45): peer behaviour in a charm, plus §7.5 rows the core fixes.

Each test is one row: given the bags, when a hook runs, then the bags (and callbacks) are as
the reference's upstream tests expect, with this library's two extra keys tolerated.
"""

from __future__ import annotations

import json
import time

import pytest
from ops import testing

from charm import ACTIONS, CALLS, META, EtcdConfiguredCharm, RollingOpsCharm
from conftest import lock_granted, op, ops_of, queue
from rollingops import RollingOpsInvalidLockRequestError

CHARMS = [RollingOpsCharm, EtcdConfiguredCharm]


def context(charm_type: type = RollingOpsCharm, unit_id: int = 0) -> testing.Context:
    return testing.Context(
        charm_type, meta=META, actions=ACTIONS, app_name='charm', unit_id=unit_id
    )


def now() -> str:
    return repr(round(time.time(), 6))


@pytest.mark.parametrize('charm_type', CHARMS)
def test_27_restart_action_queues_a_request(charm_type: type):
    ctx = context(charm_type, unit_id=0)
    peer = testing.PeerRelation('restart', peers_data={1: {}})
    out = ctx.run(ctx.on.action('restart', params={'delay': 10}), testing.State(relations={peer}))
    bag = out.get_relation(peer.id).local_unit_data
    assert bag['state'] == 'request'
    [queued] = ops_of(bag)
    assert queued['callback_id'] == '_restart'
    assert queued['kwargs'] == {'delay': 10}
    assert queued['max_retry'] is None
    assert float(queued['requested_at']) > 0
    assert list(queued) == [
        'callback_id',
        'requested_at',
        'max_retry',
        'attempt',
        'result',
        'kwargs',
    ]


@pytest.mark.parametrize('max_retry', [-5, -1])
def test_28_negative_max_retry_is_rejected(max_retry: int):
    ctx = context()
    peer = testing.PeerRelation('restart')
    with pytest.raises(testing.errors.UncaughtCharmError) as raised:
        ctx.run(
            ctx.on.action('failed-restart', params={'max-retry': max_retry}),
            testing.State(relations={peer}),
        )
    assert isinstance(raised.value.__cause__, RollingOpsInvalidLockRequestError)
    assert 'Failed to create the lock request' in str(raised.value.__cause__)


@pytest.mark.parametrize('callback_id', ['', '   ', 'unknown'])
def test_29_unknown_callback_id(callback_id: str):
    ctx = context()
    peer = testing.PeerRelation('restart')
    with ctx(ctx.on.update_status(), testing.State(relations={peer})) as mgr:
        with pytest.raises(RollingOpsInvalidLockRequestError, match='Unknown callback_id'):
            mgr.charm.rollingops.request_async_lock(callback_id)


class NotJson:
    pass


@pytest.mark.parametrize('kwargs', ['nope', [], {'x': NotJson()}, {1: 'a'}, ('a', 'b')])
def test_30_invalid_kwargs(kwargs: object):
    ctx = context()
    peer = testing.PeerRelation('restart')
    with ctx(ctx.on.update_status(), testing.State(relations={peer})) as mgr:
        with pytest.raises(
            RollingOpsInvalidLockRequestError, match='Failed to create the lock request'
        ):
            mgr.charm.rollingops.request_async_lock('_restart', kwargs=kwargs)  # type: ignore[arg-type]
        out = mgr.run()
    assert 'operations' not in out.get_relation(peer.id).local_unit_data


def test_31_request_appends_behind_queued_op():
    ctx = context()
    peer = testing.PeerRelation(
        'restart',
        local_unit_data={'operations': queue(op('_failed_restart')), 'state': 'request'},
    )
    out = ctx.run(ctx.on.action('restart'), testing.State(relations={peer}))
    bag = out.get_relation(peer.id).local_unit_data
    assert [o['callback_id'] for o in ops_of(bag)] == ['_failed_restart', '_restart']
    assert bag['state'] == 'request'


def test_32_retry_release_state_is_kept_on_new_request():
    ctx = context()
    executed = '1777636801.5'
    peer = testing.PeerRelation(
        'restart',
        local_unit_data={
            'operations': queue(op('_failed_restart', attempt=1)),
            'state': 'retry-release',
            'executed_at': executed,
        },
    )
    out = ctx.run(ctx.on.action('restart'), testing.State(relations={peer}))
    bag = out.get_relation(peer.id).local_unit_data
    assert bag['state'] == 'retry-release'
    assert bag['executed_at'] == executed
    assert len(ops_of(bag)) == 2


def test_33_non_holder_does_not_run():
    ctx = context()
    stored = queue(op('_restart'))
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/1', 'granted_at': now()},
        local_unit_data={'operations': stored, 'state': 'request'},
        peers_data={1: {}},
    )
    out = ctx.run(ctx.on.relation_changed(peer, remote_unit=1), testing.State(relations={peer}))
    bag = out.get_relation(peer.id).local_unit_data
    assert bag['operations'] == stored
    assert 'executed_at' not in bag
    assert CALLS == []


def test_34_holder_runs_on_relation_changed():
    ctx = context()
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/0', 'granted_at': now()},
        local_unit_data={
            'operations': queue(op('_restart', kwargs={'delay': 1})),
            'state': 'request',
        },
        peers_data={1: {}},
    )
    out = ctx.run(ctx.on.relation_changed(peer, remote_unit=1), testing.State(relations={peer}))
    bag = out.get_relation(peer.id).local_unit_data
    assert [c['callback'] for c in CALLS] == ['_restart']
    assert CALLS[0]['kwargs'] == {'delay': 1}
    assert bag['state'] == 'idle'
    assert bag['operations'] == '[]'
    assert float(bag['executed_at']) > 0


def test_35_holder_runs_head_only():
    ctx = context()
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/0', 'granted_at': now()},
        local_unit_data={
            'operations': queue(op('_restart'), op('_failed_restart', '1777636800.2')),
            'state': 'request',
        },
        peers_data={1: {}},
    )
    out = ctx.run(ctx.on.relation_changed(peer, remote_unit=1), testing.State(relations={peer}))
    bag = out.get_relation(peer.id).local_unit_data
    assert [o['callback_id'] for o in ops_of(bag)] == ['_failed_restart']
    assert bag['state'] == 'request'


@pytest.mark.parametrize(
    ('callback_id', 'intent'),
    [('_failed_restart', 'retry-release'), ('_deferred_restart', 'retry-hold')],
)
def test_36_retry_results_keep_the_op(callback_id: str, intent: str):
    ctx = context()
    original = op(callback_id, max_retry=3, kwargs={'delay': 1})
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/0', 'granted_at': now()},
        local_unit_data={'operations': queue(original), 'state': 'request'},
        peers_data={1: {}},
    )
    out = ctx.run(ctx.on.relation_changed(peer, remote_unit=1), testing.State(relations={peer}))
    bag = out.get_relation(peer.id).local_unit_data
    assert bag['state'] == intent
    [after] = ops_of(bag)
    assert after == {**original, 'attempt': 1}


@pytest.mark.parametrize('callback_id', ['_failed_restart', '_deferred_restart'])
def test_37_retry_budget_exhausted_drops_the_op(callback_id: str):
    ctx = context()
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/0', 'granted_at': now()},
        local_unit_data={
            'operations': queue(op(callback_id, max_retry=3, attempt=3)),
            'state': 'retry-release',
        },
        peers_data={1: {}},
    )
    out = ctx.run(ctx.on.relation_changed(peer, remote_unit=1), testing.State(relations={peer}))
    bag = out.get_relation(peer.id).local_unit_data
    assert ops_of(bag) == []
    assert bag['state'] == 'idle'
    assert float(bag['executed_at']) > 0


def leader_run(peers: dict[int, dict[str, str]], app: dict[str, str] | None = None, event=None):
    ctx = context()
    peer = testing.PeerRelation('restart', local_app_data=app or {}, peers_data=peers)
    state = testing.State(leader=True, relations={peer})
    out = ctx.run(event(ctx, peer) if event else ctx.on.leader_elected(), state)
    return out.get_relation(peer.id).local_app_data


def requesting(
    requested_at: str = '1777636800.1', callback_id: str = '_restart'
) -> dict[str, str]:
    return {'operations': queue(op(callback_id, requested_at)), 'state': 'request'}


@pytest.mark.parametrize('charm_type', CHARMS)
def test_38_leader_elected_grants_a_requester(charm_type: type):
    ctx = context(charm_type)
    peer = testing.PeerRelation('restart', peers_data={1: requesting()})
    out = ctx.run(ctx.on.leader_elected(), testing.State(leader=True, relations={peer}))
    app = out.get_relation(peer.id).local_app_data
    assert app['granted_unit'] == 'charm/1'
    assert float(app['granted_at']) > 0


def test_39_held_grant_is_not_changed():
    granted_at = now()
    app = leader_run(
        {1: requesting('1777636800.1'), 2: requesting('1777636800.2')},
        app={'granted_unit': 'charm/1', 'granted_at': granted_at},
        event=lambda ctx, peer: ctx.on.relation_changed(peer, remote_unit=2),
    )
    assert app['granted_unit'] == 'charm/1'
    assert app['granted_at'] == granted_at


def test_40_retry_hold_goes_first():
    app = leader_run(
        {
            1: {
                'operations': queue(op('_failed_restart', attempt=1)),
                'state': 'retry-release',
                'executed_at': '1777636700.0',
            },
            2: requesting(),
            3: {'operations': queue(op('_deferred_restart', attempt=1)), 'state': 'retry-hold'},
        }
    )
    assert app['granted_unit'] == 'charm/3'


def test_41_oldest_request_goes_first():
    app = leader_run({1: requesting('1777636800.5'), 2: requesting('1777636800.1')})
    assert app['granted_unit'] == 'charm/2'


def test_42_least_recently_executed_retry_release_goes_first():
    def retrying(executed_at: str) -> dict[str, str]:
        return {
            'operations': queue(op('_failed_restart', attempt=1)),
            'state': 'retry-release',
            'executed_at': executed_at,
        }

    app = leader_run({1: retrying('1777636900.0'), 2: retrying('1777636800.0')})
    assert app['granted_unit'] == 'charm/2'


def test_43_request_beats_retry_release():
    app = leader_run(
        {
            1: {
                'operations': queue(op('_failed_restart', attempt=1)),
                'state': 'retry-release',
                'executed_at': '1777636700.0',
            },
            2: requesting(),
        }
    )
    assert app['granted_unit'] == 'charm/2'


@pytest.mark.parametrize('charm_type', CHARMS)
def test_44_all_idle_grants_nobody(charm_type: type):
    ctx = context(charm_type)
    idle = {'operations': '[]', 'state': 'idle'}
    peer = testing.PeerRelation('restart', peers_data={1: dict(idle), 2: dict(idle)})
    out = ctx.run(ctx.on.leader_elected(), testing.State(leader=True, relations={peer}))
    app = out.get_relation(peer.id).local_app_data
    assert 'granted_unit' not in app
    assert 'granted_at' not in app


def test_45_empty_bag_values_read_as_idle():
    ctx = context()
    peer = testing.PeerRelation(
        'restart',
        local_unit_data={'operations': '', 'state': '', 'processing_backend': 'peer'},
    )
    with ctx(ctx.on.update_status(), testing.State(relations={peer})) as mgr:
        state = mgr.charm.rollingops.state
    assert (state.status, state.processing_backend) == ('idle', 'peer')


# -- §7.5: behaviours verified by simulation; rows where the core fixes the reference ---------


def test_66_holder_departs_next_unit_granted_in_the_same_hook():
    ctx = context()
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/1', 'granted_at': now()},
        peers_data={1: requesting('1777636800.1'), 2: requesting('1777636800.2')},
    )
    out = ctx.run(
        ctx.on.relation_departed(peer, remote_unit=1, departing_unit=1),
        testing.State(leader=True, relations={peer}),
    )
    assert out.get_relation(peer.id).local_app_data['granted_unit'] == 'charm/2'


def test_67_stale_grant_is_cleared_at_leader_elected():
    app = leader_run(
        {2: requesting()},
        app={'granted_unit': 'charm/9', 'granted_at': now()},
    )
    # The reference clears and grants nobody until the next run (W5 b); the core re-grants.
    assert app.get('granted_unit') in (None, 'charm/2')


def test_68_unit_granted_before_its_election_runs_at_leader_elected(
    dispatched: list[tuple[str, str]],
):
    ctx = context()
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/0', 'granted_at': now()},
        local_unit_data=requesting(),
        peers_data={1: {}},
    )
    out = ctx.run(ctx.on.leader_elected(), testing.State(leader=True, relations={peer}))
    # Fixes W5 a: the reference waits for update-status.
    assert [c['callback'] for c in CALLS] == ['_restart']
    app = out.get_relation(peer.id).local_app_data
    assert 'granted_unit' not in app


def test_71_v0_leftover_state_does_not_break_the_leader():
    app = leader_run({1: {'state': 'release'}, 2: requesting()})
    # Fixes W11: the reference fails every leader hook with "'release' is not a valid LockIntent".
    assert app['granted_unit'] == 'charm/2'


def test_leader_own_request_dispatches_lock_granted(dispatched: list[tuple[str, str]]):
    ctx = context()
    peer = testing.PeerRelation('restart', peers_data={1: {}})
    out = ctx.run(ctx.on.action('restart'), testing.State(leader=True, relations={peer}))
    rel = out.get_relation(peer.id)
    assert rel.local_app_data['granted_unit'] == 'charm/0'
    assert dispatched == [('charm/0', 'rollingops_lock_granted')]
    assert CALLS == []

    peer = testing.PeerRelation(
        'restart',
        local_app_data=dict(rel.local_app_data),
        local_unit_data=dict(rel.local_unit_data),
        peers_data={1: {}},
    )
    out = ctx.run(lock_granted(), testing.State(leader=True, relations={peer}))
    rel = out.get_relation(peer.id)
    assert [c['callback'] for c in CALLS] == ['_restart']
    assert 'granted_unit' not in rel.local_app_data
    assert rel.local_unit_data['state'] == 'idle'
    grant = json.loads(rel.local_app_data['rollingops-grant'])
    assert grant == {'seq': 1}


def test_leader_retry_hold_runs_again_after_a_dispatch(dispatched: list[tuple[str, str]]):
    ctx = context()
    peer = testing.PeerRelation(
        'restart',
        local_app_data={'granted_unit': 'charm/0', 'granted_at': now()},
        local_unit_data={
            'operations': queue(op('_deferred_restart', max_retry=1)),
            'state': 'request',
        },
        peers_data={1: requesting()},
    )
    out = ctx.run(lock_granted(), testing.State(leader=True, relations={peer}))
    rel = out.get_relation(peer.id)
    # One callback per hook: the retry keeps the lock and asks for a fresh hook.
    assert [c['callback'] for c in CALLS] == ['_deferred_restart']
    assert rel.local_app_data['granted_unit'] == 'charm/0'
    assert rel.local_unit_data['state'] == 'retry-hold'
    assert dispatched == [('charm/0', 'rollingops_lock_granted')]

    peer = testing.PeerRelation(
        'restart',
        local_app_data=dict(rel.local_app_data),
        local_unit_data=dict(rel.local_unit_data),
        peers_data={1: requesting()},
    )
    out = ctx.run(lock_granted(), testing.State(leader=True, relations={peer}))
    rel = out.get_relation(peer.id)
    assert [c['callback'] for c in CALLS] == ['_deferred_restart', '_deferred_restart']
    assert ops_of(rel.local_unit_data) == []
    assert rel.local_app_data['granted_unit'] == 'charm/1'
