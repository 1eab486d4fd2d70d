"""``RollingOpsManager``: the charm-facing object, a thin shell over the component."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import operator
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ops

from ._errors import RollingOpsInvalidLockRequestError, RollingOpsSyncLockError
from ._host import Host, WorkerSettings
from ._models import ProcessingBackend, RollingOpsState, RollingOpsStatus
from ._runtime import Instance, load, record, variant
from ._status import RollingOpsSnapshot, parse_snapshot

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from os import PathLike

    from ._models import SyncLockBackend

logger = logging.getLogger('rollingops')

LOCK_GRANTED_HOOK_NAME = 'rollingops_lock_granted'
ETCD_FAILED_HOOK_NAME = 'rollingops_etcd_failed'
DEFAULT_BASE_DIR = '/var/lib/rollingops'

_S64_MAX = 2**63 - 1
_U32_MAX = 2**32 - 1
_FAILED = 'Failed to create the lock request'


class _RollingOpsLockGrantedEvent(ops.EventBase):
    """Custom event dispatched (through ``juju-exec``) when this unit should take its turn."""


class _RollingOpsEtcdFailedEvent(ops.EventBase):
    """Custom event dispatched when the etcd worker hits a fatal error."""


class RollingOpsManager(ops.Object):
    """Coordinate rolling operations across the units of an application.

    All decisions are made by the ``rollingops.wasm`` component; this object hands it the
    charm's hooks and carries out what it asks for with ``ops``.

    Args:
        charm: The charm instance owning this manager.
        callback_targets: Mapping of callback identifiers to callables executed when the unit
            is granted the lock. The mapping is kept by reference.
        peer_relation_name: Name of the peer relation holding the queues and the lock.
        etcd_relation_name: Name of the relation providing etcd access. If not provided, only
            the peer backend is used.
        cluster_id: Identifier scoping etcd-backed state; do not provide it without
            ``etcd_relation_name``.
        sync_lock_targets: Optional mapping of sync lock backend identifiers to backend
            implementations used by :meth:`acquire_sync_lock`.
        base_dir: Directory for runtime files (the compiled component cache, the dispatch log);
            ``/var/lib/rollingops`` by default.

    Raises:
        ValueError: ``cluster_id`` is given without ``etcd_relation_name``.
    """

    def __init__(
        self,
        charm: ops.CharmBase,
        *,
        callback_targets: Mapping[str, Callable[..., Any]],
        peer_relation_name: str,
        etcd_relation_name: str | None = None,
        cluster_id: str | None = None,
        sync_lock_targets: Mapping[str, SyncLockBackend] | None = None,
        base_dir: str | PathLike[str] | None = None,
    ):
        super().__init__(charm, 'rolling-ops-manager')
        self._charm = charm
        self.peer_relation_name = peer_relation_name
        self.etcd_relation_name = etcd_relation_name
        self._cluster_id = cluster_id
        self._callback_targets = callback_targets
        self._sync_lock_targets: Mapping[str, SyncLockBackend] = (
            sync_lock_targets if sync_lock_targets is not None else {}
        )
        self._base_dir = str(base_dir) if base_dir is not None else DEFAULT_BASE_DIR
        endpoints = [peer_relation_name] + ([etcd_relation_name] if etcd_relation_name else [])
        self._host = Host(
            charm, callback_targets, self._sync_lock_targets, self._base_dir, endpoints
        )
        if etcd_relation_name and cluster_id:
            self._host.worker = WorkerSettings(peer_relation_name, etcd_relation_name, cluster_id)
        self._compiled = load(self._base_dir)
        self._config_ids: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._instance: Instance | None = None
        # Validates the configuration (cluster_id without etcd_relation_name -> ValueError).
        self._ensure_instance()

        for name, event_type in (
            (LOCK_GRANTED_HOOK_NAME, _RollingOpsLockGrantedEvent),
            (ETCD_FAILED_HOOK_NAME, _RollingOpsEtcdFailedEvent),
        ):
            if not hasattr(type(charm.on), name):
                charm.on.define_event(name, event_type)

        peer_events = charm.on[peer_relation_name]
        self.framework.observe(peer_events.relation_changed, self._on_peer_relation_changed)
        self.framework.observe(peer_events.relation_departed, self._on_peer_relation_departed)
        self.framework.observe(charm.on.leader_elected, self._on_leader_elected)
        self.framework.observe(getattr(charm.on, LOCK_GRANTED_HOOK_NAME), self._on_lock_granted)
        self.framework.observe(getattr(charm.on, ETCD_FAILED_HOOK_NAME), self._on_etcd_failed)
        self.framework.observe(charm.on.update_status, self._on_update_status)
        if etcd_relation_name and cluster_id and etcd_relation_name in charm.meta.relations:
            etcd_events = charm.on[etcd_relation_name]
            self.framework.observe(etcd_events.relation_created, self._on_etcd_relation_created)
            self.framework.observe(etcd_events.relation_changed, self._on_etcd_relation_changed)
            self.framework.observe(etcd_events.relation_broken, self._on_etcd_relation_broken)
            self.framework.observe(charm.on.secret_changed, self._on_secret_changed)

    # -- the component ---------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {
            'peer-relation-name': self.peer_relation_name,
            'etcd-relation-name': self.etcd_relation_name,
            'cluster-id': self._cluster_id,
            'base-dir': self._base_dir,
            'callback-ids': list(self._config_ids[0]),
            'sync-lock-ids': list(self._config_ids[1]),
        }

    def _ensure_instance(self) -> Instance:
        ids = (tuple(self._callback_targets), tuple(self._sync_lock_targets))
        instance = self._instance
        if instance is not None and instance.busy:
            # Re-entered from a callback (say, reading `state`): the busy instance cannot be
            # entered again, so answer from a fresh one that reads the bags as they are now.
            return Instance(self._compiled, self._host, self._config())
        if instance is None or instance.broken or ids != self._config_ids:
            self._config_ids = ids
            self._instance = None
            instance = self._instance = Instance(self._compiled, self._host, self._config())
        return instance

    def _call(self, method: str, *args: Any) -> Any:
        return self._ensure_instance().call(method, *args)

    def _handle(self, case: str, payload: Any = None) -> None:
        self._call('handle-event', variant(case, payload))

    # -- events ----------------------------------------------------------------------------

    def _on_peer_relation_changed(self, _: ops.RelationChangedEvent) -> None:
        self._handle('peer-relation-changed')

    def _on_peer_relation_departed(self, event: ops.RelationDepartedEvent) -> None:
        departing = event.departing_unit or event.unit
        self._handle('peer-relation-departed', departing.name if departing else '')

    def _on_leader_elected(self, _: ops.LeaderElectedEvent) -> None:
        self._handle('leader-elected')

    def _on_update_status(self, _: ops.UpdateStatusEvent) -> None:
        self._handle('update-status')

    def _on_lock_granted(self, _: ops.EventBase) -> None:
        self._handle('lock-granted')

    def _on_etcd_failed(self, _: ops.EventBase) -> None:
        logger.warning('Received %s.', ETCD_FAILED_HOOK_NAME)
        self._handle('etcd-failed')

    def _on_etcd_relation_created(self, _: ops.RelationCreatedEvent) -> None:
        self._handle('etcd-relation-created')

    def _on_etcd_relation_changed(self, _: ops.RelationChangedEvent) -> None:
        self._handle('etcd-relation-changed')

    def _on_etcd_relation_broken(self, _: ops.RelationBrokenEvent) -> None:
        self._handle('etcd-relation-broken')

    def _on_secret_changed(self, event: ops.SecretChangedEvent) -> None:
        self._handle('secret-changed', event.secret.label or event.secret.id or '')

    # -- public API ------------------------------------------------------------------------

    def request_async_lock(
        self,
        callback_id: str,
        kwargs: dict[str, Any] | None = None,
        max_retry: int | None = None,
        *,
        health_check: str | None = None,
        health_timeout: float | datetime.timedelta | None = None,
        generation_kwarg: str | None = None,
    ) -> None:
        """Queue a rolling operation for this unit and trigger scheduling.

        The callback runs later, in a hook of this unit, once the unit holds the lock.

        With ``health_check``, the unit keeps the lock after the callback has released it
        until the health-check callback returns ``True``: the check runs in hooks dispatched
        on a backoff schedule (2 s, doubling, at most 30 s apart), never by sleeping in a hook.
        When it has not passed after ``health_timeout``, the lock moves on anyway and, unless
        the policy says otherwise, the leader pauses further grants (see :meth:`set_policy`).
        The health check receives the operation's ``kwargs``.

        The health gate needs every unit on the peer relation to run this library; while a
        unit of the reference library is present, the lock moves on as soon as the callback
        returns and a warning is logged. Under a grant written by a reference leader,
        ``generation_kwarg`` receives 0.

        Args:
            callback_id: Identifier of the callback to execute when the operation is granted
                the rolling lock.
            kwargs: Optional keyword arguments passed to the callback target; they must be
                JSON-serialisable, with string keys.
            max_retry: Optional maximum number of retries allowed for the operation. None
                means infinite retries.
            health_check: Identifier of a registered callback that returns ``True`` once the
                unit is healthy again.
            health_timeout: How long to wait for the health check (seconds, or a
                ``timedelta``; rounded up to whole seconds); 300 s by default.
            generation_kwarg: Name of a keyword argument that receives the grant's generation
                (an integer that grows with every grant), to fence work started under an
                older grant.

        Raises:
            RollingOpsInvalidLockRequestError: If the callback or health-check identifier is
                unknown, or the operation cannot be created (invalid kwargs, negative
                max_retry, a health_timeout below one second, a blank generation_kwarg).
            RollingOpsNoRelationError: If the peer relation is not available.
        """
        if kwargs is None:
            kwargs = {}
        kwargs_json, problem = _encode_kwargs(kwargs)
        retry, retry_problem = _encode_max_retry(max_retry)
        problem = problem or retry_problem
        try:
            if health_check is None and health_timeout is None and generation_kwarg is None:
                self._call('request-async-lock', callback_id, kwargs_json, retry)
            else:
                timeout = _seconds(
                    health_timeout, 'health_timeout', RollingOpsInvalidLockRequestError
                )
                options = record(
                    {
                        'max-retry': retry,
                        'health-check': health_check,
                        'health-timeout-seconds': timeout,
                        'generation-kwarg': generation_kwarg,
                    }
                )
                self._call('request-lock', callback_id, kwargs_json, options)
        except RollingOpsInvalidLockRequestError as e:
            # The component checks in the reference's order (callback id, relation, kwargs);
            # when it rejects what we could not encode, say why in Python terms.
            if problem is not None and str(e).startswith(_FAILED):
                raise RollingOpsInvalidLockRequestError(f'{_FAILED}: {problem}') from problem
            raise

    @contextlib.contextmanager
    def acquire_sync_lock(self, backend_id: str, timeout: int | None) -> Iterator[None]:
        """Hold a synchronous lock around a block (for paths that cannot wait for a hook).

        Without etcd, the lock is the charm's own ``SyncLockBackend`` registered under
        ``backend_id``: its ``acquire(timeout=...)`` runs before the block and its
        ``release()`` after it, even when the block raises.

        Args:
            backend_id: Identifier of the sync lock backend in ``sync_lock_targets``.
            timeout: Maximum time in seconds to wait for the lock. None means infinite time.

        Yields:
            None. The protected code runs while the lock is held.

        Raises:
            TimeoutError: If the backend timed out acquiring the lock.
            RollingOpsSyncLockError: If the backend is unknown, or failed to acquire or
                release the lock (a release failure replaces the block's exception).
        """
        seconds = None if timeout is None else max(0, min(int(timeout), _U32_MAX))
        try:
            self._call('acquire-sync-lock', backend_id, seconds)
        except (RollingOpsSyncLockError, TimeoutError) as e:
            cause, self._host.backend_error = self._host.backend_error, None
            if cause is not None:
                raise e from cause
            raise
        logger.info('Sync lock %s acquired.', backend_id)
        try:
            yield
        except Exception as e:
            logger.error('Error while holding sync lock backend %s: %s', backend_id, e)
            raise
        finally:
            try:
                self._call('release-sync-lock', backend_id)
            except RollingOpsSyncLockError as e:
                cause, self._host.backend_error = self._host.backend_error, None
                raise e from cause
            logger.info('Sync lock %s released.', backend_id)

    @property
    def state(self) -> RollingOpsState:
        """The current rolling-ops state of this unit (status and processing backend)."""
        record = self._call('state')
        return RollingOpsState(
            status=RollingOpsStatus(record.status),
            processing_backend=ProcessingBackend(getattr(record, 'processing-backend')),
        )

    def is_waiting(self, unit_name: str | None = None) -> bool:
        """Whether a unit (this one by default) has queued operations.

        Raises:
            ValueError: ``unit_name`` is neither this unit nor on the peer relation.
        """
        return bool(self._call('is-waiting', unit_name, None))

    def is_waiting_callback(self, callback_id: str, unit_name: str | None = None) -> bool:
        """Whether a unit (this one by default) has a queued operation for ``callback_id``.

        Raises:
            ValueError: ``unit_name`` is neither this unit nor on the peer relation.
        """
        return bool(self._call('is-waiting', unit_name, callback_id))

    def set_policy(
        self,
        max_concurrent: int = 1,
        *,
        grant_timeout: float | datetime.timedelta | None = None,
        rank_ordering: bool = False,
        halt_on_health_failure: bool = True,
    ) -> None:
        """Set how the leader hands out the lock (leader only).

        The policy is stored in the application databag and replaces the previous one as a
        whole. Each part is in force only once every unit on the peer relation runs this
        library; until then the leader warns and keeps the reference behaviour (one holder,
        oldest request first, no timeout).

        Args:
            max_concurrent: How many units may hold the lock at once (at least 1).
            grant_timeout: Reclaim a grant whose holder has not finished within this long
                (seconds, or a ``timedelta``; rounded up to whole seconds). None never does.
            rank_ordering: Grant waiting units by :meth:`set_rank` (lowest first, then the
                oldest request) instead of by request age.
            halt_on_health_failure: Pause grants when a health check times out.

        Raises:
            ValueError: This unit is not the leader, ``max_concurrent`` is below 1, or
                ``grant_timeout`` is below one second.
            RollingOpsNoRelationError: If the peer relation is not available.
        """
        if isinstance(max_concurrent, bool) or not 1 <= operator.index(max_concurrent) <= _U32_MAX:
            raise ValueError(f'max_concurrent must be between 1 and {_U32_MAX}')
        timeout = _seconds(grant_timeout, 'grant_timeout', ValueError)
        policy = record(
            {
                'max-concurrent': operator.index(max_concurrent),
                'grant-timeout-seconds': timeout,
                'rank-ordering': bool(rank_ordering),
                'halt-on-health-failure': bool(halt_on_health_failure),
            }
        )
        self._call('set-policy', policy)

    def set_rank(self, rank: int) -> None:
        """Set this unit's rank: with ``rank_ordering``, lower ranks get the lock first.

        A unit that should go last (a database primary, say) sets a higher rank than the
        others; equal ranks go by request age. The rank is kept in this unit's databag until
        changed; it is 0 by default.

        Args:
            rank: Any 64-bit signed integer.

        Raises:
            ValueError: ``rank`` is not a 64-bit integer.
            RollingOpsNoRelationError: If the peer relation is not available.
        """
        if isinstance(rank, bool) or not -_S64_MAX - 1 <= operator.index(rank) <= _S64_MAX:
            raise ValueError('rank must be a 64-bit signed integer')
        self._call('set-rank', operator.index(rank))

    def pause(self, reason: str = '') -> bool:
        """Stop granting the lock (leader only); holders finish their turn.

        Args:
            reason: Why, for people reading :meth:`snapshot` or the log.

        Returns:
            Whether this paused grants (False when they were paused already).

        Raises:
            ValueError: This unit is not the leader, or some units run the reference library
                (the message names them); the application then keeps granting.
            RollingOpsNoRelationError: If the peer relation is not available.
        """
        return bool(self._call('control', variant('pause', reason)))

    def resume(self) -> bool:
        """Grant the lock again after :meth:`pause` or a failed health check (leader only).

        Returns:
            Whether grants were paused.

        Raises:
            ValueError: This unit is not the leader.
            RollingOpsNoRelationError: If the peer relation is not available.
        """
        return bool(self._call('control', variant('resume')))

    def cancel(self, callback_id: str | None = None) -> int:
        """Drop this unit's queued operations that have not started.

        An operation that is running or waiting for its health check stays.

        Args:
            callback_id: Drop only operations of this callback; None drops every one.

        Returns:
            How many operations were dropped.

        Raises:
            ValueError: This unit's queue is managed by etcd.
            RollingOpsDecodingError: This unit's queue cannot be decoded.
            RollingOpsNoRelationError: If the peer relation is not available.
        """
        return int(self._call('control', variant('cancel', callback_id)))

    def force_release(self, unit: str | None = None) -> int:
        """End a grant without waiting for its holder (leader only).

        Use it when a holder is gone for good or stuck; its generation becomes stale, so work
        fenced with ``generation_kwarg`` can tell. The holder's operation stays queued.

        Args:
            unit: The holder to release (``app/0``); None releases every holder.

        Returns:
            How many grants ended.

        Raises:
            ValueError: This unit is not the leader, or ``unit`` does not hold the lock.
            RollingOpsNoRelationError: If the peer relation is not available.
        """
        return int(self._call('control', variant('force-release', unit)))

    def start_roll(
        self,
        callback_id: str,
        kwargs: dict[str, Any] | None = None,
        *,
        health_check: str | None = None,
        health_timeout: float | datetime.timedelta | None = None,
        on_complete: str | None = None,
    ) -> int:
        """Run ``callback_id`` once on every unit, one unit at a time (leader only).

        Every unit, the leader included, queues the operation in its next hook and runs it
        under the lock like any other request (policy, ranks and pauses apply). Once every
        unit on the peer relation has finished, the leader calls ``on_complete`` once, with
        ``generation=<the roll's generation>``. Progress is in :meth:`snapshot` ``.roll``.

        Args:
            callback_id: The callback every unit runs (registered on every unit).
            kwargs: Its keyword arguments (JSON-serialisable, string keys).
            health_check: A callback each unit must pass before the lock moves on
                (see :meth:`request_async_lock`).
            health_timeout: How long to wait for that check (default 300 s).
            on_complete: A callback the leader runs once the whole roll has finished.

        Returns:
            The roll's generation (1 for the first roll, then 2, …).

        Raises:
            ValueError: This unit is not the leader, a roll is still in progress, or some
                units run the reference library (the message names them).
            RollingOpsInvalidLockRequestError: An unknown callback id or invalid kwargs.
            RollingOpsNoRelationError: If the peer relation is not available.
        """
        kwargs_json, problem = _encode_kwargs({} if kwargs is None else kwargs)
        if problem is not None:
            raise RollingOpsInvalidLockRequestError(f'Failed to start the roll: {problem}')
        timeout = _seconds(health_timeout, 'health_timeout', RollingOpsInvalidLockRequestError)
        request = record(
            {
                'callback-id': callback_id,
                'kwargs-json': kwargs_json,
                'health-check': health_check,
                'health-timeout-seconds': timeout,
                'on-complete': on_complete,
            }
        )
        return int(self._call('start-roll', request))

    def snapshot(self) -> RollingOpsSnapshot:
        """The lock, the queues, the policy, the pause and the current roll, typed.

        Use it to set the unit's status from the charm's own collect-status handler; the
        library never sets a status itself.
        """
        return parse_snapshot(self._call('describe'))

    def describe(self) -> dict[str, Any]:
        """A snapshot of the lock and of every known unit's queue, for people and scripts."""
        view: dict[str, Any] = json.loads(self._call('describe'))
        return view


def _seconds(
    value: float | datetime.timedelta | None, name: str, error: type[Exception]
) -> int | None:
    """Whole seconds (rounded up) for a WIT ``u32``, or the error for a value out of range."""
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise error(f'{name} must be a number of seconds or a timedelta, got {value!r}')
    seconds = math.ceil(value)
    if not 1 <= seconds <= _U32_MAX:
        raise error(f'{name} must be at least 1 second (got {value!r})')
    return seconds


def _encode_kwargs(kwargs: object) -> tuple[str, Exception | None]:
    """The kwargs as JSON for the component, or an empty string and why that failed.

    Non-object values are encoded as they are: the component rejects them itself.
    """
    value: Any = kwargs
    if isinstance(kwargs, Mapping):
        bad = [key for key in kwargs if not isinstance(key, str)]
        if bad:
            return '', TypeError(f'kwargs keys must be strings, got {bad[0]!r}')
        value = dict(kwargs)
    try:
        return _dumps(value, allow_nan=False), None
    except ValueError:
        # NaN/Infinity: stored as null, as the reference does.
        try:
            return _dumps(_finite(value), allow_nan=False), None
        except (TypeError, ValueError) as e:
            return '', e
    except TypeError as e:
        return '', TypeError(f'kwargs are not JSON-serialisable: {e}')


def _dumps(value: Any, *, allow_nan: bool) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=allow_nan, separators=(',', ':'))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _encode_max_retry(max_retry: object) -> tuple[int | None, Exception | None]:
    if max_retry is None:
        return None, None
    try:
        number = operator.index(max_retry)  # type: ignore[arg-type]
    except TypeError:
        return -1, TypeError(f'max_retry must be an integer or None, got {max_retry!r}')
    return max(-1, min(number, _S64_MAX)), None
