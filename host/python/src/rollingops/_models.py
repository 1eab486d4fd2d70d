"""Public value types: result, backend and status enums, the state snapshot, sync backends."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum as _StrEnum
else:  # pragma: no cover - Python 3.10

    class _StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class OperationResult(_StrEnum):
    """Result values returned by rolling-ops callbacks on async locks.

    - RELEASE: the operation completed; the lock is released and the next unit may go.
    - RETRY_RELEASE: the operation failed; retry it later, letting other units go first.
    - RETRY_HOLD: the operation failed; retry it at once, keeping the lock.

    A callback that returns ``None`` (or any other value) releases the lock; one that raises
    counts as ``RETRY_RELEASE``.
    """

    RELEASE = 'release'
    RETRY_RELEASE = 'retry-release'
    RETRY_HOLD = 'retry-hold'


class ProcessingBackend(_StrEnum):
    """Backend responsible for processing a unit's queue."""

    PEER = 'peer'
    ETCD = 'etcd'


class RollingOpsStatus(_StrEnum):
    """High-level rolling-ops status for a unit.

    - NOT_READY: rolling-ops cannot be used on this unit (the peer relation does not exist).
    - WAITING: the unit has pending operations but does not hold the lock.
    - GRANTED: the unit holds the lock and has not yet run under it.
    - IDLE: the unit has no pending operations and does not hold the lock.
    """

    NOT_READY = 'not-ready'
    WAITING = 'waiting'
    GRANTED = 'granted'
    IDLE = 'idle'


@dataclass(frozen=True)
class RollingOpsState:
    """Snapshot of the rolling-ops state for a unit.

    Attributes:
        status: High-level rolling-ops status for the unit.
        processing_backend: Backend currently responsible for executing operations.
    """

    status: RollingOpsStatus
    processing_backend: ProcessingBackend


class SyncLockBackend(ABC):
    """Interface for synchronous lock backends supplied by the charm.

    ``RollingOpsManager.acquire_sync_lock`` calls ``acquire(timeout=...)`` before the protected
    block and ``release()`` after it.
    """

    @abstractmethod
    def acquire(self, timeout: int | None) -> None:
        """Acquire the lock, blocking until it is granted or timeout expires.

        Args:
            timeout: Maximum time in seconds to wait for the lock. None means wait indefinitely.

        Raises:
            TimeoutError: If the lock could not be acquired within the timeout.
        """
        raise NotImplementedError

    @abstractmethod
    def release(self) -> None:
        """Release the lock.

        Implementations must ensure that only the lock owner can release the lock and that any
        associated resources are cleaned up.
        """
        raise NotImplementedError
