"""Exceptions, with the hierarchy of ``charmlibs.rollingops`` 1.x.

The component reports failures as the WIT ``error`` variant; :func:`error_from_wit` is the one
place where a case becomes a Python exception.
"""

from __future__ import annotations


class RollingOpsError(Exception):
    """General rollingops error."""


class RollingOpsNoRelationError(RollingOpsError):
    """Raised if we are trying to process a lock, but do not appear to have a relation yet."""


class RollingOpsNoEtcdRelationError(RollingOpsNoRelationError):
    """Raised if the etcd relation does not exist yet."""


class RollingOpsFileSystemError(RollingOpsError):
    """Raised if there is a problem when interacting with the filesystem."""


class RollingOpsInvalidLockRequestError(RollingOpsError):
    """Raised if the lock request is invalid."""


class RollingOpsDecodingError(RollingOpsError):
    """Raised if json content cannot be processed."""


class RollingOpsInvalidSecretContentError(RollingOpsError):
    """Raised if the content of a secret is invalid."""


class RollingOpsLibMissingError(RollingOpsError):
    """Raised if the path to the libraries cannot be resolved."""


class RollingOpsEtcdctlError(RollingOpsError):
    """Base exception for etcdctl command failures."""


class RollingOpsEtcdctlRetryableError(RollingOpsEtcdctlError):
    """A transient etcdctl failure that may succeed on retry."""


class RollingOpsEtcdNotConfiguredError(RollingOpsEtcdctlError):
    """Raised if etcd client has not been configured yet (env file does not exist)."""


class RollingOpsEtcdctlFatalError(RollingOpsEtcdctlError):
    """A non-retryable etcdctl failure."""


class RollingOpsEtcdctlParseError(RollingOpsEtcdctlError):
    """Raised when etcdctl output cannot be parsed."""


class RollingOpsSyncLockError(RollingOpsError):
    """Raised when there is an error during sync lock execution."""


class RollingOpsEtcdTransactionError(RollingOpsError):
    """Raised when an etcd transaction fails."""


# WIT `error` case -> exception class. `host` (a hook tool or other effect failed) has no class
# of its own in the reference; it surfaces as the base class.
_BY_CASE: dict[str, type[Exception]] = {
    'no-relation': RollingOpsNoRelationError,
    'file-system': RollingOpsFileSystemError,
    'invalid-lock-request': RollingOpsInvalidLockRequestError,
    'decoding': RollingOpsDecodingError,
    'invalid-secret-content': RollingOpsInvalidSecretContentError,
    'lib-missing': RollingOpsLibMissingError,
    'etcdctl': RollingOpsEtcdctlError,
    'etcd-not-configured': RollingOpsEtcdNotConfiguredError,
    'sync-lock': RollingOpsSyncLockError,
    'timeout': TimeoutError,
    'invalid-argument': ValueError,
    'host': RollingOpsError,
}


def error_from_wit(case: str, message: object) -> Exception:
    """Build the exception for one case of the WIT ``error`` variant.

    Args:
        case: The variant case name, such as ``invalid-lock-request``.
        message: The case payload (the message).
    """
    cls = _BY_CASE.get(case)
    if cls is None:
        return RollingOpsError(f'{case}: {message}')
    return cls(str(message))
