"""Typed views of the lock, the queues, the policy and the current roll.

:meth:`RollingOpsManager.snapshot` builds a :class:`RollingOpsSnapshot` from the component's
``describe`` JSON; the component decodes the databags, this module only gives the answer types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True)
class Holder:
    """A unit that holds the lock.

    Attributes:
        unit: The holder's name (``app/0``).
        generation: The grant's generation (grows with every grant); None for a grant written
            by the reference library.
        held_for: Seconds since the grant was written (leader clock), when known.
    """

    unit: str
    generation: int | None
    held_for: float | None


@dataclass(frozen=True)
class QueuedOperation:
    """One operation in a unit's queue.

    Attributes:
        callback_id: The callback it runs.
        kwargs: Its keyword arguments.
        attempt: Attempts made so far.
        max_retry: Retries allowed; None retries forever.
        requested_at: When it was requested (seconds since the epoch, as stored).
        age: Seconds since it was requested.
    """

    callback_id: str
    kwargs: Mapping[str, Any]
    attempt: int
    max_retry: int | None
    requested_at: str
    age: float


@dataclass(frozen=True)
class HealthGateStatus:
    """A health gate: the unit keeps the lock until its check passes.

    Attributes:
        check: The health-check callback id.
        attempts: Checks run so far.
        waiting_for: Seconds since the gated operation finished.
        failed: True once the check timed out and the lock was handed on without it.
    """

    check: str
    attempts: int
    waiting_for: float
    failed: bool


@dataclass(frozen=True)
class UnitSnapshot:
    """One unit's queue and progress.

    Attributes:
        name: The unit's name.
        queue: Its queued operations, oldest first; None when its queue cannot be decoded.
        intent: ``request``, ``retry-hold``, ``retry-release`` or ``idle``; None if unreadable.
        features: Protocol features it advertises (empty for a reference-library unit).
        rank: Its scheduling rank (lower goes first under rank ordering).
        roll_seen: Highest application-wide roll generation it has joined.
        roll_done: Highest roll generation it has finished.
        health_gate: Its health gate, if any.
        errors: Why parts of its databag could not be read.
    """

    name: str
    queue: tuple[QueuedOperation, ...] | None
    intent: str | None
    features: frozenset[str]
    rank: int
    roll_seen: int
    roll_done: int
    health_gate: HealthGateStatus | None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """The leader's scheduling policy (see :meth:`RollingOpsManager.set_policy`).

    Attributes:
        max_concurrent: Units that may hold the lock at once.
        grant_timeout: Seconds after which a stuck holder's grant is reclaimed; None never.
        rank_ordering: Whether waiting units go by rank instead of request age.
        halt_on_health_failure: Whether a timed-out health check pauses the application.
    """

    max_concurrent: int = 1
    grant_timeout: int | None = None
    rank_ordering: bool = False
    halt_on_health_failure: bool = True


@dataclass(frozen=True)
class PauseStatus:
    """Why grants are paused.

    Attributes:
        reason: The reason given to :meth:`RollingOpsManager.pause`, or the failed check.
        since: When the pause started (leader clock, seconds since the epoch, as stored).
    """

    reason: str
    since: str


@dataclass(frozen=True)
class RollProgress:
    """The latest application-wide roll (see :meth:`RollingOpsManager.start_roll`).

    Attributes:
        generation: The roll's generation (1, 2, …).
        callback_id: The callback every unit runs once.
        started: When it started (seconds since the epoch, as stored).
        completed: When every unit had finished, or None while in progress.
        pending_units: Units that have not finished their part yet.
    """

    generation: int
    callback_id: str
    started: str
    completed: str | None
    pending_units: tuple[str, ...]

    @property
    def done(self) -> bool:
        """Whether every unit has finished."""
        return self.completed is not None


@dataclass(frozen=True)
class RollingOpsSnapshot:
    """The lock, every unit's queue, the policy and the current roll, as one unit sees them.

    Non-leaders read the application data the leader published, so the view is as fresh as
    the last ``relation-changed`` this unit saw.

    Attributes:
        unit: The unit that took the snapshot.
        leader: Whether that unit is the leader.
        relation: Whether the peer relation exists (everything else is empty without it).
        holders: Units holding the lock, oldest grant first.
        units: Every known unit's queue and progress, by name.
        engaged_features: Protocol features in force (supported by every unit).
        policy: The stored policy (parts need their feature engaged to be in force).
        pause: Why grants are paused, or None.
        roll: The latest application-wide roll, or None.
    """

    unit: str
    leader: bool
    relation: bool
    holders: tuple[Holder, ...] = ()
    units: Mapping[str, UnitSnapshot] = field(default_factory=dict)
    engaged_features: frozenset[str] = frozenset()
    policy: Policy = Policy()
    pause: PauseStatus | None = None
    roll: RollProgress | None = None

    @property
    def holder(self) -> Holder | None:
        """The oldest holder (the only one unless ``max_concurrent`` > 1)."""
        return self.holders[0] if self.holders else None

    @property
    def paused(self) -> bool:
        """Whether grants are paused (in force only when every unit supports pausing)."""
        return self.pause is not None

    @property
    def queue(self) -> tuple[QueuedOperation, ...]:
        """This unit's queued operations, oldest first."""
        own = self.units.get(self.unit)
        return own.queue or () if own is not None else ()

    @property
    def waiting_units(self) -> tuple[str, ...]:
        """Units with queued operations that do not hold the lock, by name."""
        holding = {h.unit for h in self.holders}
        return tuple(u.name for u in self.units.values() if u.queue and u.name not in holding)


def parse_snapshot(text: str) -> RollingOpsSnapshot:
    """Build a snapshot from the component's ``describe`` JSON."""
    view: dict[str, Any] = json.loads(text)
    unit = str(view.get('unit', ''))
    leader = bool(view.get('leader', False))
    if not view.get('relation'):
        return RollingOpsSnapshot(unit=unit, leader=leader, relation=False)
    holders = tuple(
        Holder(
            unit=h['unit'],
            generation=h.get('generation'),
            held_for=h.get('held_for_seconds'),
        )
        for h in view.get('holders') or ()
    )
    units = {u['name']: _unit(u) for u in view.get('units') or ()}
    raw_policy = view.get('policy') or {}
    policy = Policy(
        max_concurrent=int(raw_policy.get('max_concurrent', 1)),
        grant_timeout=raw_policy.get('grant_timeout'),
        rank_ordering=raw_policy.get('ordering') == 'rank',
        halt_on_health_failure=bool(raw_policy.get('halt_on_health_failure', True)),
    )
    raw_pause = view.get('paused')
    pause = (
        PauseStatus(reason=str(raw_pause.get('reason', '')), since=str(raw_pause.get('since')))
        if raw_pause
        else None
    )
    raw_roll = view.get('roll')
    roll = (
        RollProgress(
            generation=int(raw_roll['generation']),
            callback_id=str(raw_roll['callback_id']),
            started=str(raw_roll['started']),
            completed=raw_roll.get('completed'),
            pending_units=tuple(raw_roll.get('pending_units') or ()),
        )
        if raw_roll
        else None
    )
    return RollingOpsSnapshot(
        unit=unit,
        leader=leader,
        relation=True,
        holders=holders,
        units=units,
        engaged_features=frozenset(view.get('engaged_features') or ()),
        policy=policy,
        pause=pause,
        roll=roll,
    )


def _unit(raw: dict[str, Any]) -> UnitSnapshot:
    queue = raw.get('queue')
    gate = raw.get('health_gate')
    roll = raw.get('roll') or {}
    return UnitSnapshot(
        name=raw['name'],
        queue=None
        if queue is None
        else tuple(
            QueuedOperation(
                callback_id=op['callback_id'],
                kwargs=op.get('kwargs') or {},
                attempt=int(op.get('attempt') or 0),
                max_retry=op.get('max_retry'),
                requested_at=str(op.get('requested_at')),
                age=float(op.get('age_seconds') or 0.0),
            )
            for op in queue
        ),
        intent=raw.get('intent'),
        features=frozenset(raw.get('features') or ()),
        rank=int(raw.get('rank') or 0),
        roll_seen=int(roll.get('seen') or 0),
        roll_done=int(roll.get('done') or 0),
        health_gate=None
        if not gate
        else HealthGateStatus(
            check=gate['check'],
            attempts=int(gate.get('attempts') or 0),
            waiting_for=float(gate.get('waiting_seconds') or 0.0),
            failed=bool(gate.get('failed')),
        ),
        errors=tuple(raw.get('errors') or ()),
    )
