"""RollingOps: coordinated rolling operations for Juju charms.

A drop-in replacement for ``charmlibs.rollingops`` 1.x whose coordination logic runs in one
WebAssembly component, ``rollingops.wasm``, shared with the Rust and Go hosts. Switch a charm
by changing its import::

    from rollingops import OperationResult, RollingOpsManager

    class MyCharm(ops.CharmBase):
        def __init__(self, framework: ops.Framework):
            super().__init__(framework)
            self.rollingops = RollingOpsManager(
                charm=self,
                callback_targets={'restart': self._restart},
                peer_relation_name='restart',
            )

        def _restart(self, delay: int | None = None) -> OperationResult:
            ...
            return OperationResult.RELEASE

The peer relation's databags stay wire-compatible with ``charmlibs.rollingops``, so units on
either library can share one relation during an upgrade.
"""

from ._errors import (
    RollingOpsDecodingError,
    RollingOpsError,
    RollingOpsEtcdctlError,
    RollingOpsEtcdctlFatalError,
    RollingOpsEtcdctlParseError,
    RollingOpsEtcdctlRetryableError,
    RollingOpsEtcdNotConfiguredError,
    RollingOpsEtcdTransactionError,
    RollingOpsFileSystemError,
    RollingOpsInvalidLockRequestError,
    RollingOpsInvalidSecretContentError,
    RollingOpsLibMissingError,
    RollingOpsNoEtcdRelationError,
    RollingOpsNoRelationError,
    RollingOpsSyncLockError,
)
from ._manager import RollingOpsManager
from ._models import (
    OperationResult,
    ProcessingBackend,
    RollingOpsState,
    RollingOpsStatus,
    SyncLockBackend,
)
from ._status import (
    HealthGateStatus,
    Holder,
    PauseStatus,
    Policy,
    QueuedOperation,
    RollingOpsSnapshot,
    RollProgress,
    UnitSnapshot,
)
from ._version import __version__ as __version__

__all__ = (
    'HealthGateStatus',
    'Holder',
    'OperationResult',
    'PauseStatus',
    'Policy',
    'ProcessingBackend',
    'QueuedOperation',
    'RollProgress',
    'RollingOpsDecodingError',
    'RollingOpsError',
    'RollingOpsEtcdNotConfiguredError',
    'RollingOpsEtcdTransactionError',
    'RollingOpsEtcdctlError',
    'RollingOpsEtcdctlFatalError',
    'RollingOpsEtcdctlParseError',
    'RollingOpsEtcdctlRetryableError',
    'RollingOpsFileSystemError',
    'RollingOpsInvalidLockRequestError',
    'RollingOpsInvalidSecretContentError',
    'RollingOpsLibMissingError',
    'RollingOpsManager',
    'RollingOpsNoEtcdRelationError',
    'RollingOpsNoRelationError',
    'RollingOpsSnapshot',
    'RollingOpsState',
    'RollingOpsStatus',
    'RollingOpsSyncLockError',
    'SyncLockBackend',
    'UnitSnapshot',
)
