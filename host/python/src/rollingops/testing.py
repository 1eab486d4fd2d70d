"""Test kit for charms using rollingops with ``ops.testing`` (Scenario).

Charm tests should not patch the library's internals. This module runs the real component
instead:

* :class:`Cluster` runs several units of one application, each hook in its own
  ``ops.testing.Context``, on one shared peer relation. It carries every unit's databag to the
  others (queuing ``relation-changed``), turns the hooks the library dispatches through
  ``juju-exec`` into queued hooks, and keeps a simulated clock so that delayed dispatches
  (health re-checks, grant timeouts) are delivered by moving the clock forward instead of
  waiting. It records a :class:`Timeline` of hooks and callbacks.
* The same class builds states for single-unit tests: arrange "unit 1 holds the lock",
  "unit 2 has queued ``restart``", "paused", "a roll is in progress" by running the component,
  then take :meth:`Cluster.peer_relation` (the exact databags as one unit sees them) into your
  own ``Context.run``. :meth:`Cluster.stub` builds them without your charm.
* :func:`run_rolling_restart` runs a rolling restart of N units to completion.
* :func:`recorded_dispatches` and :func:`lock_granted_event` help single-unit tests.

Example::

    from ops import testing
    from rollingops import testing as rollingops_testing

    def test_restart_holder_runs_callback():
        kit = rollingops_testing.Cluster.stub('restart', units=3, callbacks=['restart'])
        kit.holds_lock(1, 'restart')
        ctx = testing.Context(MyCharm, app_name=kit.app_name, unit_id=1)
        with rollingops_testing.recorded_dispatches():
            ctx.run(rollingops_testing.lock_granted_event(), kit.state(1))
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import tempfile
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import ops
from ops import testing
from scenario.state import _Event

from . import _host
from ._manager import LOCK_GRANTED_HOOK_NAME, RollingOpsManager

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from ._status import RollingOpsSnapshot

__all__ = (
    'CallbackRun',
    'Cluster',
    'Dispatch',
    'HookRun',
    'Timeline',
    'holders_of',
    'lock_granted_event',
    'recorded_dispatches',
    'run_rolling_restart',
)

# A hook that no handler observes (defined on the charm when first used).
_QUIET_HOOK = 'rollingops_testing_call'
_JUJU_KEYS = frozenset({'egress-subnets', 'ingress-address', 'private-address'})


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """A hook the library asked ``juju-exec`` to run.

    Attributes:
        unit: The unit it runs on.
        event: The hook name (``rollingops_lock_granted``).
        delay: Seconds it waits first (0 for a plain dispatch).
    """

    unit: str
    event: str
    delay: float = 0.0


@dataclasses.dataclass(frozen=True)
class CallbackRun:
    """One call of a charm callback (operation, health check or roll completion).

    Attributes:
        at: Simulated seconds since the cluster started.
        unit: The unit that ran it.
        callback_id: The callback's id.
        kwargs: The keyword arguments it got.
        result: What it returned, as the component saw it (``"release"``, ``"true"``…).
        error: The exception it raised, if it raised.
        holders: The lock holders this unit saw while running it.
    """

    at: float
    unit: str
    callback_id: str
    kwargs: Mapping[str, Any]
    result: str | None
    error: str | None
    holders: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class HookRun:
    """One hook run by :class:`Cluster`.

    Attributes:
        at: Simulated seconds since the cluster started.
        unit: The unit that ran it.
        hook: What ran (``relation-changed``, ``rollingops_lock_granted``, ``update-status``…).
        holders: The lock holders after the hook (from the application databag).
        callbacks: Callbacks the hook ran.
        dispatches: Hooks it asked for.
        grant_ids: An identity per holder (``<generation>@<granted_at>``), which changes
            with every grant, even to the same unit.
    """

    at: float
    unit: str
    hook: str
    holders: tuple[str, ...]
    callbacks: tuple[CallbackRun, ...] = ()
    dispatches: tuple[Dispatch, ...] = ()
    grant_ids: tuple[str, ...] = ()


@dataclasses.dataclass
class Timeline:
    """What a :class:`Cluster` ran, in order.

    Attributes:
        hooks: Every hook, in the order run.
    """

    hooks: list[HookRun] = dataclasses.field(default_factory=list)

    @property
    def callbacks(self) -> list[CallbackRun]:
        """Every callback run, in order."""
        return [run for hook in self.hooks for run in hook.callbacks]

    @property
    def dispatches(self) -> list[Dispatch]:
        """Every dispatch requested, in order."""
        return [d for hook in self.hooks for d in hook.dispatches]

    def runs(self, callback_id: str | None = None) -> list[str]:
        """Units that ran ``callback_id`` (any callback when None), in order."""
        return [
            run.unit
            for run in self.callbacks
            if callback_id is None or run.callback_id == callback_id
        ]

    @property
    def grants(self) -> list[tuple[float, str]]:
        """``(at, unit)`` for every grant written (a unit granted again counts again)."""
        out: list[tuple[float, str]] = []
        before: set[str] = set()
        for hook in self.hooks:
            out.extend(
                (hook.at, unit)
                for unit, grant in zip(hook.holders, hook.grant_ids, strict=False)
                if grant not in before
            )
            before = set(hook.grant_ids)
        return out

    @property
    def max_holders(self) -> int:
        """The most units that held the lock at once."""
        return max((len(hook.holders) for hook in self.hooks), default=0)

    @property
    def duration(self) -> float:
        """Simulated seconds from the cluster's start to the last hook."""
        return self.hooks[-1].at if self.hooks else 0.0


@dataclasses.dataclass
class _Pending:
    hook: str
    remote: int | None = None


def lock_granted_event() -> Any:
    """The hook the library dispatches to itself, as an ``ops.testing`` event.

    Use it as ``ctx.run(lock_granted_event(), state)`` to deliver a dispatched turn (or a
    health re-check) to a unit.
    """
    return _Event(LOCK_GRANTED_HOOK_NAME)


@contextlib.contextmanager
def recorded_dispatches() -> Iterator[list[Dispatch]]:
    """Record the hooks the library dispatches instead of starting ``juju-exec``.

    Yields:
        The list the dispatches are appended to.
    """
    calls: list[Dispatch] = []
    seam = _host.Seam(
        dispatch=lambda unit, event, delay_ms: calls.append(Dispatch(unit, event, delay_ms / 1000))
    )
    _host.SEAMS.append(seam)
    try:
        yield calls
    finally:
        _host.SEAMS.remove(seam)


def holders_of(app_bag: Mapping[str, str]) -> tuple[str, ...]:
    """The lock holders an application databag records, primary first.

    ``granted_unit`` is the holder (as the reference writes it); further holders count only
    while the ``rollingops-grant`` record they come from still matches ``granted_unit`` and
    ``granted_at`` (an older leader may have overwritten them).
    """
    return tuple(unit for unit, _ in _grants_of(app_bag))


def _grants_of(app_bag: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``(unit, grant identity)`` of every holder; the identity changes with every grant."""
    unit = app_bag.get('granted_unit')
    if not unit:
        return ()
    at = app_bag.get('granted_at', '')
    try:
        record = json.loads(app_bag.get('rollingops-grant') or 'null')
    except ValueError:
        record = None
    if (
        not isinstance(record, dict)
        or record.get('unit') != unit
        or record.get('at') != at
        or not isinstance(record.get('seq'), int)
    ):
        return ((unit, f'@{at}'),)
    grants = [(unit, f'{record["seq"]}@{at}')]
    for extra in record.get('extra') or ():
        if (
            isinstance(extra, dict)
            and isinstance(extra.get('unit'), str)
            and isinstance(extra.get('at'), str)
            and isinstance(extra.get('seq'), int)
        ):
            grants.append((extra['unit'], f'{extra["seq"]}@{extra["at"]}'))
    return tuple(grants)


class Cluster:
    """Units ``<app>/0`` … ``<app>/<n-1>`` of one application sharing a peer relation.

    Each hook runs in an ``ops.testing.Context`` of that unit with the databags as they are
    now. Changes are carried over as Juju would: a changed unit bag queues
    ``relation-changed`` on every other unit, a changed application bag on every non-leader,
    and a dispatched hook is queued on its unit (a delayed one once the simulated clock has
    reached it). :meth:`step` runs one queued hook (units chosen by a seeded random
    generator, each unit's hooks in order); :meth:`drive` runs until nothing is left.

    Args:
        charm_type: The charm class, or a list with one class per unit (say, to mix units on
            the reference library into the application).
        units: How many units (ignored when ``charm_type`` is a list).
        leader: The leader's unit number.
        peer_relation_name: The rollingops peer endpoint; by default the charm's only peer
            endpoint.
        app_name: The application's name; by default the charm's name.
        meta: Charm metadata for ``ops.testing.Context`` (read from the charm's directory
            when None, as ``Context`` does).
        actions: Actions for ``ops.testing.Context``.
        config: Config options for ``ops.testing.Context``.
        manager: How to find the manager on a charm instance: an attribute name, a
            function, or None to find the one attribute holding a manager.
        state: Builds each hook's ``ops.testing.State`` from ``(unit number, peer relation,
            leader)``; by default ``State(leader=leader, relations={peer})``.
        seed: Seed of the hook-ordering random generator.
        relation_id: The peer relation's id.
        joined: Start from a deployed application: every unit (the leader first) has run
            ``relation-changed`` on the peer relation and the cluster has settled, so every
            unit advertises what it supports. These hooks are not in the timeline.
    """

    def __init__(
        self,
        charm_type: type[ops.CharmBase] | Sequence[type[ops.CharmBase]],
        *,
        units: int = 3,
        leader: int = 0,
        peer_relation_name: str | None = None,
        app_name: str | None = None,
        meta: Mapping[str, Any] | None = None,
        actions: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        manager: str | Callable[[ops.CharmBase], Any] | None = None,
        state: Callable[[int, testing.PeerRelation, bool], testing.State] | None = None,
        seed: int = 0,
        relation_id: int = 1,
        joined: bool = True,
    ):
        types = [charm_type] * units if isinstance(charm_type, type) else list(charm_type)
        if not types:
            raise ValueError('a cluster needs at least one unit')
        self.ids = list(range(len(types)))
        if leader not in self.ids:
            raise ValueError(f'leader {leader} is not one of units {self.ids}')
        self.leader = leader
        self._types = types
        self._meta = dict(meta) if meta is not None else None
        self._actions = dict(actions) if actions is not None else None
        self._config = dict(config) if config is not None else None
        self._manager = manager
        self._state = state
        self._rng = random.Random(seed)
        self.relation_id = relation_id
        self._contexts: dict[int, testing.Context[ops.CharmBase]] = {}
        self.app_name = ''
        probe = self._context(0)
        self._contexts.clear()
        self.app_name = app_name or probe.app_name or 'app'
        peers = [
            r.endpoint
            for r in testing.State.from_context(probe).relations
            if isinstance(r, testing.PeerRelation)
        ]
        if peer_relation_name is None:
            if len(peers) != 1:
                raise ValueError(f'give peer_relation_name: the charm has peers {peers}')
            peer_relation_name = peers[0]
        self.peer_relation_name = peer_relation_name
        self.app_bag: dict[str, str] = {}
        self.unit_bags: dict[int, dict[str, str]] = {i: {} for i in self.ids}
        self._pending: dict[int, deque[_Pending]] = {i: deque() for i in self.ids}
        self._down: set[int] = set()
        self._timers: list[tuple[int, int, int, str]] = []  # (due µs, order, unit, event)
        self._timer_order = 0
        self._start_us = time.time_ns() // 1000
        self._offset_us = 0
        self.timeline = Timeline()
        self._dispatches: list[Dispatch] = []
        if joined:
            for i in [self.leader, *(j for j in self.ids if j != self.leader)]:
                self._run(i, 'relation-changed' if len(self.ids) > 1 else 'update-status')
            self.drive()
            self.timeline = Timeline()
            self._dispatches.clear()
            self._start_us = self._now_us()

    @classmethod
    def stub(
        cls,
        peer_relation_name: str,
        *,
        units: int = 3,
        leader: int = 0,
        app_name: str = 'app',
        callbacks: Iterable[str] = ('restart',),
        seed: int = 0,
        relation_id: int = 1,
        joined: bool = True,
    ) -> Cluster:
        """A cluster of a minimal charm, to build databags for tests of another charm.

        Its units register the given callback ids (each returns None: release) and nothing
        else, so building a state runs none of your charm's code.

        Args:
            peer_relation_name: Your charm's rollingops peer endpoint.
            units: How many units.
            leader: The leader's unit number.
            app_name: Your application's name (unit names are ``<app_name>/<n>``).
            callbacks: The callback ids your charm registers.
            seed: Seed of the hook-ordering random generator.
            relation_id: The peer relation's id.
            joined: Start from a deployed application (see :class:`Cluster`).
        """
        ids = tuple(callbacks)
        # One directory per user for every stub, so the compiled component is cached once.
        base_dir = os.path.join(tempfile.gettempdir(), f'rollingops-testing-{os.getuid()}')

        class _StubCharm(ops.CharmBase):
            def __init__(self, framework: ops.Framework):
                super().__init__(framework)
                self.rollingops = RollingOpsManager(
                    charm=self,
                    callback_targets={callback_id: _noop for callback_id in ids},
                    peer_relation_name=peer_relation_name,
                    base_dir=base_dir,
                )

        meta = {'name': app_name, 'peers': {peer_relation_name: {'interface': 'rollingops'}}}
        return cls(
            _StubCharm,
            units=units,
            leader=leader,
            meta=meta,
            app_name=app_name,
            seed=seed,
            relation_id=relation_id,
            joined=joined,
        )

    # -- names, clock, views -----------------------------------------------------------------

    def name(self, unit: int) -> str:
        """The unit's name (``<app>/<n>``)."""
        return f'{self.app_name}/{unit}'

    def number(self, unit: int | str) -> int:
        """The unit's number, from a number or a name."""
        if isinstance(unit, int):
            return unit
        return int(unit.rsplit('/', 1)[1])

    def now(self) -> float:
        """The simulated clock, in seconds since the epoch."""
        return self._now_us() / 1e6

    def elapsed(self) -> float:
        """Simulated seconds since the cluster started."""
        return (self._now_us() - self._start_us) / 1e6

    def advance(self, seconds: float) -> None:
        """Move the simulated clock forward; due delayed dispatches become queued hooks."""
        self._offset_us += max(0, round(seconds * 1e6))
        self._release_timers()

    def _now_us(self) -> int:
        # Real time plus the jumps made so far: monotonic, and close to the clock of any unit
        # on another library (which reads the real clock).
        return time.time_ns() // 1000 + self._offset_us

    @property
    def holders(self) -> tuple[str, ...]:
        """The lock holders the application databag records now."""
        return holders_of(self.app_bag)

    @property
    def dispatches(self) -> list[Dispatch]:
        """Every dispatch requested so far."""
        return list(self._dispatches)

    def pending(self, unit: int | str | None = None) -> int:
        """How many hooks are queued (on one unit, or on all units that are up).

        Delayed dispatches that are not yet due are not counted (see :attr:`delayed`).
        """
        if unit is None:
            return sum(len(self._pending[i]) for i in self.ids if i not in self._down)
        return len(self._pending[self.number(unit)])

    @property
    def delayed(self) -> list[tuple[float, str, str]]:
        """Delayed dispatches not yet due: ``(seconds from now, unit, event)``."""
        now = self._now_us()
        return [
            ((due - now) / 1e6, self.name(unit), event)
            for due, _, unit, event in sorted(self._timers)
        ]

    def peer_relation(self, unit: int | str) -> testing.PeerRelation:
        """The peer relation exactly as ``unit`` sees it now, for ``ops.testing.State``."""
        i = self.number(unit)
        return testing.PeerRelation(
            self.peer_relation_name,
            id=self.relation_id,
            local_app_data=dict(self.app_bag),
            local_unit_data=dict(self.unit_bags[i]),
            peers_data={j: dict(self.unit_bags[j]) for j in self.ids if j != i},
        )

    def state(self, unit: int | str, **kwargs: Any) -> testing.State:
        """A ``State`` for ``unit`` holding :meth:`peer_relation` (and ``leader`` set).

        Args:
            unit: The unit.
            kwargs: Further ``State`` fields; ``relations`` are added to the peer relation.
        """
        i = self.number(unit)
        relations = {self.peer_relation(i), *kwargs.pop('relations', ())}
        kwargs.setdefault('leader', i == self.leader)
        return testing.State(relations=relations, **kwargs)

    def snapshot(self, unit: int | str | None = None) -> RollingOpsSnapshot:
        """The manager's :meth:`~rollingops.RollingOpsManager.snapshot` on ``unit``.

        Reads it on the unit (the leader by default) in a hook that no handler observes, so
        no charm code and no turn runs; nothing is written.
        """
        i = self.leader if unit is None else self.number(unit)
        found: list[RollingOpsSnapshot] = []
        self._run(i, _QUIET_HOOK, call=lambda m: found.append(m.snapshot()), commit=False)
        return found[0]

    # -- running hooks --------------------------------------------------------------------

    def _context(self, i: int) -> testing.Context[ops.CharmBase]:
        ctx = self._contexts.get(i)
        if ctx is None:
            kwargs: dict[str, Any] = {'unit_id': i}
            if self.app_name:
                kwargs['app_name'] = self.app_name
            if self._meta is not None:
                kwargs['meta'] = self._meta
            if self._actions is not None:
                kwargs['actions'] = self._actions
            if self._config is not None:
                kwargs['config'] = self._config
            ctx = self._contexts[i] = testing.Context(self._types[i], **kwargs)
        return ctx

    def _event(
        self, ctx: testing.Context[ops.CharmBase], peer: testing.PeerRelation, item: object
    ) -> tuple[Any, str]:
        if isinstance(item, _Pending):
            if item.hook == 'relation-changed':
                return ctx.on.relation_changed(peer, remote_unit=item.remote), item.hook
            if item.hook == 'relation-departed':
                event = ctx.on.relation_departed(
                    peer, remote_unit=item.remote, departing_unit=item.remote
                )
                return event, item.hook
            item = item.hook
        if callable(item):
            return item(ctx, peer), getattr(item, '__name__', 'custom')
        if item == 'relation-changed':
            remote = next(iter(peer.peers_data), None)
            return ctx.on.relation_changed(peer, remote_unit=remote), item
        if item == 'update-status':
            return ctx.on.update_status(), item
        if item == 'leader-elected':
            return ctx.on.leader_elected(), item
        if item == 'config-changed':
            return ctx.on.config_changed(), item
        if item == 'upgrade-charm':
            return ctx.on.upgrade_charm(), item
        if isinstance(item, str) and item.startswith('action:'):
            return ctx.on.action(item[len('action:') :]), item
        if isinstance(item, str):
            # A dispatched (custom) hook, such as rollingops_lock_granted.
            return _Event(item), item
        raise ValueError(f'unknown hook {item!r}')

    def manager_of(self, charm: ops.CharmBase) -> Any:
        """The rollingops manager of a charm instance (see the ``manager`` argument)."""
        if isinstance(self._manager, str):
            return getattr(charm, self._manager)
        if self._manager is not None:
            return self._manager(charm)
        found = [
            value
            for value in vars(charm).values()
            if isinstance(value, ops.Object) and hasattr(value, 'request_async_lock')
        ]
        if len(found) != 1:
            raise ValueError(
                f'found {len(found)} rollingops managers on {type(charm).__name__}; '
                'pass manager= to Cluster'
            )
        return found[0]

    def call(self, unit: int | str, fn: Callable[[Any], Any]) -> Any:
        """Call ``fn(manager)`` on ``unit`` in a hook, as one of your handlers would.

        The hook is one that no handler observes, so only ``fn`` runs; its databag writes and
        dispatches are kept. When ``fn`` raises, the exception propagates and nothing is
        kept (Juju discards a failed hook's writes).

        Returns:
            What ``fn`` returned.
        """
        return self._run(self.number(unit), _QUIET_HOOK, call=fn, label='call')

    def run(
        self,
        unit: int | str,
        hook: str | Callable[[testing.Context[ops.CharmBase], testing.PeerRelation], Any],
        *,
        call: Callable[[Any], Any] | None = None,
        commit: bool = True,
    ) -> Any:
        """Run one hook on ``unit`` now and queue what follows from it.

        Args:
            unit: The unit (number or name).
            hook: ``relation-changed``, ``update-status``, ``leader-elected``,
                ``config-changed``, ``upgrade-charm``, ``action:<name>``, a dispatched
                hook's name such as ``rollingops_lock_granted``, or a function
                ``(ctx, peer) -> event``.
            call: Called with the unit's manager inside the hook, before the event is
                emitted; its result is returned. When it raises, ``ops.testing`` still
                emits the event (handlers run), but nothing is kept; :meth:`call` avoids
                that.
            commit: Keep the hook's databag writes and follow-ups (False: a dry run).

        Returns:
            What ``call`` returned, or None.
        """
        return self._run(self.number(unit), hook, call=call, commit=commit)

    def _run(
        self,
        i: int,
        hook: object,
        *,
        call: Callable[[Any], Any] | None = None,
        commit: bool = True,
        label: str | None = None,
    ) -> Any:
        ctx = self._context(i)
        peer = self.peer_relation(i)
        leader = i == self.leader
        state = (
            self._state(i, peer, leader)
            if self._state is not None
            else testing.State(leader=leader, relations={peer})
        )
        event, hook_label = self._event(ctx, peer, hook)
        callbacks: list[CallbackRun] = []
        dispatches: list[Dispatch] = []
        holders_seen = holders_of(self.app_bag)

        def on_callback(name: str, callback_id: str, kwargs_json: str, outcome: object) -> None:
            callbacks.append(
                CallbackRun(
                    at=self.elapsed(),
                    unit=name,
                    callback_id=callback_id,
                    kwargs=json.loads(kwargs_json),
                    result=outcome if isinstance(outcome, str) or outcome is None else None,
                    error=repr(outcome) if isinstance(outcome, BaseException) else None,
                    holders=holders_seen,
                )
            )

        def on_dispatch(name: str, event_name: str, delay_ms: int) -> None:
            dispatches.append(Dispatch(name, event_name, delay_ms / 1000))

        seam = _host.Seam(now_micros=self._now_us, dispatch=on_dispatch, callback=on_callback)
        result: Any = None
        _host.SEAMS.append(seam)
        try:
            with ctx(event, state) as mgr:
                if hook == _QUIET_HOOK and not hasattr(type(mgr.charm.on), _QUIET_HOOK):
                    mgr.charm.on.define_event(_QUIET_HOOK, ops.EventBase)
                if call is not None:
                    result = call(self.manager_of(mgr.charm))
                out = mgr.run()
        finally:
            _host.SEAMS.remove(seam)
        if not commit:
            return result
        relation = out.get_relation(self.relation_id)
        unit_bag = {k: v for k, v in relation.local_unit_data.items() if k not in _JUJU_KEYS}
        app_bag = dict(relation.local_app_data)
        others = [j for j in self.ids if j != i]
        if unit_bag != self.unit_bags[i]:
            self.unit_bags[i] = unit_bag
            for j in others:
                self._pending[j].append(_Pending('relation-changed', remote=i))
        if app_bag != self.app_bag:
            if not leader:
                raise AssertionError(f'{self.name(i)} is not the leader but wrote the app bag')
            self.app_bag = app_bag
            for j in others:
                self._pending[j].append(_Pending('relation-changed', remote=i))
        for d in dispatches:
            self.dispatch(d.unit, d.event, d.delay)
        self.timeline.hooks.append(
            HookRun(
                at=self.elapsed(),
                unit=self.name(i),
                hook=label or hook_label,
                holders=holders_of(self.app_bag),
                callbacks=tuple(callbacks),
                dispatches=tuple(dispatches),
                grant_ids=tuple(grant for _, grant in _grants_of(self.app_bag)),
            )
        )
        return result

    def dispatch(self, unit: int | str, event: str, delay: float = 0.0) -> None:
        """Queue hook ``event`` on ``unit``, at once or once ``delay`` seconds have passed.

        The cluster calls this for the library's own dispatches; call it to route another
        library's dispatches (say, the reference's worker) into the cluster.
        """
        i = self.number(unit)
        self._dispatches.append(Dispatch(self.name(i), event, delay))
        if delay <= 0:
            self._pending[i].append(_Pending(event))
            return
        self._timer_order += 1
        due = self._now_us() + round(delay * 1e6)
        self._timers.append((due, self._timer_order, i, event))

    def _release_timers(self) -> None:
        now = self._now_us()
        due = sorted(t for t in self._timers if t[0] <= now)
        self._timers = [t for t in self._timers if t[0] > now]
        for _, _, i, event in due:
            self._pending[i].append(_Pending(event))

    def step(self) -> bool:
        """Run one queued hook; when none is queued, move the clock to the next delayed one.

        Returns:
            False when there was nothing to run.
        """
        self._release_timers()
        ready = self._ready()
        while not ready:
            timers = [t for t in self._timers if t[2] not in self._down]
            if not timers:
                return False
            due = min(timers)[0]
            self._offset_us += max(0, due - self._now_us())
            self._release_timers()
            ready = self._ready()
        i = self._rng.choice(ready)
        self._run(i, self._pending[i].popleft())
        return True

    def _ready(self) -> list[int]:
        return [i for i in self.ids if self._pending[i] and i not in self._down]

    def set_down(self, unit: int | str, down: bool = True) -> None:
        """Stop (or resume) running ``unit``'s hooks; they stay queued meanwhile.

        A down unit models an agent that is stuck or gone: a holder that never finishes its
        turn, for instance, until the leader's grant timeout reclaims the lock.
        """
        i = self.number(unit)
        if down:
            self._down.add(i)
        else:
            self._down.discard(i)

    def drive(
        self,
        *,
        until: Callable[[Cluster], bool] | None = None,
        max_hooks: int = 1000,
        max_seconds: float | None = None,
    ) -> Timeline:
        """Run queued (and delayed) hooks until none is left or ``until(self)`` holds.

        Args:
            until: Stop as soon as this returns True (checked before each hook).
            max_hooks: Fail when more hooks than this run (a livelock).
            max_seconds: Stop before a delayed hook beyond this many simulated seconds
                from now.

        Returns:
            The cluster's timeline.

        Raises:
            RuntimeError: More than ``max_hooks`` hooks ran.
        """
        ran = 0
        limit = None if max_seconds is None else self._now_us() + round(max_seconds * 1e6)
        while until is None or not until(self):
            live = [t[0] for t in self._timers if t[2] not in self._down]
            if limit is not None and not self.pending() and live and min(live) > limit:
                break
            if not self.step():
                break
            ran += 1
            if ran > max_hooks:
                raise RuntimeError(f'the cluster did not settle within {max_hooks} hooks')
        return self.timeline

    def refresh(self, unit: int | str, charm_type: type[ops.CharmBase]) -> None:
        """Replace ``unit``'s charm (a refresh, say from the reference library to this one).

        Runs ``upgrade-charm`` on the unit with the new charm; its databag is kept.
        """
        i = self.number(unit)
        self._types[i] = charm_type
        self._contexts.pop(i, None)
        self._run(i, 'upgrade-charm')

    def depart(self, unit: int | str) -> None:
        """Remove ``unit`` from the application (``juju remove-unit``).

        Its queued hooks are dropped, and every other unit gets ``relation-departed``; a new
        leader is needed (:meth:`set_leader`) when the leader departs.
        """
        i = self.number(unit)
        if i not in self.ids:
            raise ValueError(f'{self.name(i)} is not in the application')
        self.ids.remove(i)
        self._pending[i].clear()
        self._timers = [t for t in self._timers if t[2] != i]
        self.unit_bags.pop(i, None)
        for j in self.ids:
            self._pending[j].append(_Pending('relation-departed', remote=i))

    def set_leader(self, unit: int | str) -> None:
        """Make ``unit`` the leader and run its ``leader-elected`` hook."""
        self.leader = self.number(unit)
        self.run(self.leader, 'leader-elected')

    # -- arranging states (each runs the real component) ----------------------------------

    def request(
        self,
        unit: int | str,
        callback_id: str,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """``request_async_lock`` on ``unit`` (see :meth:`call`); not delivered.

        Other units learn of it only when the queued hooks run (:meth:`step`, :meth:`drive`).
        A leader that requests grants itself at once, as in production.

        Args:
            unit: The unit.
            callback_id: The callback.
            kwargs: Its keyword arguments.
            options: ``max_retry``, ``health_check``, ``health_timeout``,
                ``generation_kwarg``.
        """
        self.call(unit, lambda m: m.request_async_lock(callback_id, kwargs, **options))

    def holds_lock(
        self, unit: int | str, callback_id: str, kwargs: dict[str, Any] | None = None
    ) -> None:
        """Arrange that ``unit`` holds the lock for ``callback_id`` and has not run it yet.

        Queues the operation on ``unit`` and runs the leader's ``relation-changed``; the
        hooks that would run the callback stay queued.

        Raises:
            RuntimeError: The leader granted another unit (one that asked earlier).
        """
        i = self.number(unit)
        self.request(i, callback_id, kwargs)
        if i != self.leader:
            self.run(self.leader, lambda ctx, peer: ctx.on.relation_changed(peer, remote_unit=i))
        if self.name(i) not in self.holders:
            raise RuntimeError(f'{self.name(i)} was not granted; holders: {self.holders}')

    def set_policy(self, max_concurrent: int = 1, **kwargs: Any) -> None:
        """``set_policy`` on the leader (see :meth:`rollingops.RollingOpsManager.set_policy`)."""
        self.call(self.leader, lambda m: m.set_policy(max_concurrent, **kwargs))

    def set_rank(self, unit: int | str, rank: int) -> None:
        """``set_rank`` on ``unit``."""
        self.call(unit, lambda m: m.set_rank(rank))

    def pause(self, reason: str = '') -> bool:
        """``pause`` on the leader."""
        return bool(self.call(self.leader, lambda m: m.pause(reason)))

    def resume(self) -> bool:
        """``resume`` on the leader."""
        return bool(self.call(self.leader, lambda m: m.resume()))

    def cancel(self, unit: int | str, callback_id: str | None = None) -> int:
        """``cancel`` on ``unit``."""
        return int(self.call(unit, lambda m: m.cancel(callback_id)))

    def force_release(self, unit: int | str | None = None) -> int:
        """``force_release`` on the leader."""
        name = None if unit is None else self.name(self.number(unit))
        return int(self.call(self.leader, lambda m: m.force_release(name)))

    def start_roll(
        self, callback_id: str, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> int:
        """``start_roll`` on the leader; other units join as their queued hooks run."""
        return int(self.call(self.leader, lambda m: m.start_roll(callback_id, kwargs, **options)))


def _noop(**_: Any) -> None:
    return None


def run_rolling_restart(
    charm_type: type[ops.CharmBase] | Sequence[type[ops.CharmBase]],
    callback_id: str = 'restart',
    kwargs: dict[str, Any] | None = None,
    *,
    units: int = 3,
    roll: bool = False,
    on_complete: str | None = None,
    health_check: str | None = None,
    health_timeout: float | None = None,
    max_hooks: int = 2000,
    **cluster_kwargs: Any,
) -> Timeline:
    """Run a rolling restart of every unit to completion through the real component.

    Args:
        charm_type: The charm class (or one per unit).
        callback_id: The callback each unit runs.
        kwargs: Its keyword arguments.
        units: How many units (ignored when ``charm_type`` is a list).
        roll: Start it as one application-wide roll from the leader (:meth:`start_roll`)
            instead of one request per unit.
        on_complete: With ``roll``, the callback the leader runs at the end.
        health_check: A health check gating each unit's hand-off.
        health_timeout: How long to wait for it.
        max_hooks: Fail when more hooks than this run.
        cluster_kwargs: Further :class:`Cluster` arguments (``leader``, ``seed``, ``meta``…).

    Returns:
        The timeline; ``timeline.runs(callback_id)`` lists who ran, in order.

    Raises:
        RuntimeError: The restart did not finish within ``max_hooks`` hooks.
    """
    cluster = Cluster(charm_type, units=units, **cluster_kwargs)
    options: dict[str, Any] = {}
    if health_check is not None:
        options['health_check'] = health_check
    if health_timeout is not None:
        options['health_timeout'] = health_timeout
    if roll:
        if on_complete is not None:
            options['on_complete'] = on_complete
        cluster.start_roll(callback_id, kwargs, **options)
    else:
        for i in cluster._rng.sample(cluster.ids, len(cluster.ids)):
            cluster.request(i, callback_id, kwargs, **options)
    return cluster.drive(max_hooks=max_hooks)
