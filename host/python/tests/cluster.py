"""A few units of one application, each a Scenario `Context`, sharing one peer relation.

Hooks run one at a time. After each hook the unit's databag (and, on the leader, the app bag)
is carried to the other units: a changed unit bag queues `relation-changed` on every other
unit, a changed app bag on every non-leader, and a recorded `juju-exec` dispatch queues the
custom hook on its unit. Which unit runs next is drawn from a seeded RNG; each unit's hooks
keep their order, as Juju's per-unit hook queue does.

After every leader hook the cluster checks mutual exclusion: a new grant is only written once
the previous holder has recorded finishing its turn under the previous grant (the
`rollingops-executed-grant` echo), or has left.
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ops import testing

from charm import ACTIONS, META
from conftest import lock_granted

RELATION_ID = 7
_JUJU_KEYS = {'egress-subnets', 'ingress-address', 'private-address'}


@dataclass
class Hook:
    """One queued hook: `action` (name, params), `changed` (remote unit or None), `granted`."""

    kind: str
    name: str = ''
    params: dict[str, Any] = field(default_factory=dict)
    remote: int | None = None


def _clean(bag: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in bag.items() if k not in _JUJU_KEYS}


def grant_identity(app: dict[str, str]) -> str | None:
    """The current grant as `<seq>@<granted_at>` (the core's identity), or None."""
    unit = app.get('granted_unit')
    if not unit:
        return None
    seq = ''
    raw = app.get('rollingops-grant')
    if raw:
        grant = json.loads(raw)
        if grant.get('unit') == unit and grant.get('at') == app.get('granted_at'):
            seq = str(grant.get('seq', ''))
    return f'{seq}@{app.get("granted_at", "")}'


class Cluster:
    """Units `app/0..n-1` of app `charm`; `charm_types[i]` is unit i's charm class."""

    def __init__(self, charm_types: list[type], leader: int = 0, seed: int = 0):
        self.charm_types = charm_types
        self.ids = list(range(len(charm_types)))
        self.leader = leader
        self.rng = random.Random(seed)
        self.app: dict[str, str] = {}
        self.bags: dict[int, dict[str, str]] = {i: {} for i in self.ids}
        self.pending: dict[int, deque[Hook]] = {i: deque() for i in self.ids}
        self.hooks_run = 0
        self.grants: list[tuple[str, str]] = []  # (unit, identity) in the order written

    def name(self, i: int) -> str:
        return f'charm/{i}'

    def dispatch(self, unit_name: str, event_name: str) -> None:
        assert event_name == 'rollingops_lock_granted', event_name
        self.pending[int(unit_name.split('/')[1])].append(Hook('granted'))

    def queue(self, i: int, hook: Hook) -> None:
        self.pending[i].append(hook)

    def _event(self, ctx: testing.Context, peer: testing.PeerRelation, hook: Hook) -> Any:
        if hook.kind == 'action':
            return ctx.on.action(hook.name, params=hook.params)
        if hook.kind == 'changed':
            return ctx.on.relation_changed(peer, remote_unit=hook.remote)
        if hook.kind == 'granted':
            return lock_granted()
        if hook.kind == 'update-status':
            return ctx.on.update_status()
        if hook.kind == 'leader-elected':
            return ctx.on.leader_elected()
        raise AssertionError(hook.kind)

    def run(self, i: int, hook: Hook) -> None:
        ctx = testing.Context(
            self.charm_types[i], meta=META, actions=ACTIONS, app_name='charm', unit_id=i
        )
        peer = testing.PeerRelation(
            'restart',
            id=RELATION_ID,
            local_app_data=dict(self.app),
            local_unit_data=dict(self.bags[i]),
            peers_data={j: dict(self.bags[j]) for j in self.ids if j != i},
        )
        state = testing.State(leader=i == self.leader, relations={peer})
        out = ctx.run(self._event(ctx, peer, hook), state)
        self.hooks_run += 1
        relation = out.get_relation(RELATION_ID)
        unit_bag = _clean(dict(relation.local_unit_data))
        app_bag = dict(relation.local_app_data)
        if unit_bag != self.bags[i]:
            self.bags[i] = unit_bag
            for j in self.ids:
                if j != i:
                    self.queue(j, Hook('changed', remote=i))
        if app_bag != self.app:
            assert i == self.leader, 'only the leader writes the app bag'
            self._check_grant_change(self.app, app_bag)
            self.app = app_bag
            for j in self.ids:
                if j != i:
                    self.queue(j, Hook('changed', remote=i))

    def _check_grant_change(self, before: dict[str, str], after: dict[str, str]) -> None:
        old, new = grant_identity(before), grant_identity(after)
        if new is not None and new != old:
            self.grants.append((after['granted_unit'], new))
        if old is None or new == old:
            return
        # The grant was released or replaced: its holder must have finished under it.
        holder = int(before['granted_unit'].split('/')[1])
        if holder not in self.ids:
            return
        bag = self.bags[holder]
        finished = bag.get('rollingops-executed-grant') == old
        # A reference holder never writes the echo: the reference's rule applies.
        legacy = 'rollingops-executed-grant' not in bag and (
            float(bag.get('executed_at') or 0) > float(before.get('granted_at') or 0)
            or bag.get('state', 'idle') == 'idle'
        )
        assert finished or legacy, (
            f'grant {old} of {before["granted_unit"]} ended before its turn finished: {bag}; '
            f'app bag now {after}'
        )

    def step(self) -> bool:
        ready = [i for i in self.ids if self.pending[i]]
        if not ready:
            return False
        i = self.rng.choice(ready)
        self.run(i, self.pending[i].popleft())
        return True

    def drive(self, max_hooks: int = 500) -> None:
        while self.step():
            assert self.hooks_run <= max_hooks, 'the cluster did not settle'
