"""The test charm of spec/peer.md §7 (the reference's tests/unit/conftest.py), on this package.

Callbacks record their calls in ``CALLS`` (module level) so that tests can check who ran what,
under which grant.
"""

from __future__ import annotations

from typing import Any

import ops

from rollingops import OperationResult, RollingOpsManager, SyncLockBackend

CALLS: list[dict[str, Any]] = []

META: dict[str, Any] = {
    'name': 'charm',
    'peers': {'restart': {'interface': 'rolling_op'}},
    'requires': {'etcd': {'interface': 'etcd_client', 'limit': 1, 'optional': True}},
}
ACTIONS: dict[str, Any] = {
    'restart': {'params': {'delay': {'type': 'integer', 'default': 0}}},
    'failed-restart': {
        'params': {
            'delay': {'type': 'integer', 'default': 0},
            'max-retry': {'type': 'integer'},
        }
    },
    'deferred-restart': {
        'params': {
            'delay': {'type': 'integer', 'default': 0},
            'max-retry': {'type': 'integer'},
        }
    },
    'sync-restart': {
        'params': {
            'delay': {'type': 'integer', 'default': 0},
            'timeout': {'type': 'integer', 'default': 30},
        }
    },
    'failed-sync-restart': {'params': {'delay': {'type': 'integer', 'default': 0}}},
}


class RecordingBackend(SyncLockBackend):
    """A no-op sync lock that records its calls (and can be told to fail)."""

    calls: list[tuple[str, Any]] = []
    fail_acquire: BaseException | None = None
    fail_release: BaseException | None = None

    def acquire(self, timeout: int | None) -> None:
        type(self).calls.append(('acquire', timeout))
        if type(self).fail_acquire is not None:
            raise type(self).fail_acquire

    def release(self) -> None:
        type(self).calls.append(('release', None))
        if type(self).fail_release is not None:
            raise type(self).fail_release


class RollingOpsCharm(ops.CharmBase):
    """Peer-only manager, as in the reference's strict-peer fixture."""

    base_dir = '/tmp/rollingops-tests'
    etcd: dict[str, Any] = {}
    manager_class: Any = RollingOpsManager

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.rollingops = self.manager_class(
            charm=self,
            callback_targets={
                '_restart': self._restart,
                '_failed_restart': self._failed_restart,
                '_deferred_restart': self._deferred_restart,
            },
            peer_relation_name='restart',
            sync_lock_targets={'stop-replset-member': RecordingBackend()},
            base_dir=self.base_dir,
            **self.etcd,
        )
        observe = self.framework.observe
        observe(self.on.restart_action, self._on_restart_action)
        observe(self.on.failed_restart_action, self._on_failed_restart_action)
        observe(self.on.deferred_restart_action, self._on_deferred_restart_action)
        observe(self.on.sync_restart_action, self._on_sync_restart_action)
        observe(self.on.failed_sync_restart_action, self._on_failed_sync_restart_action)

    def _record(self, callback: str, **kwargs: Any) -> None:
        relation = self.model.get_relation('restart')
        app_bag = dict(relation.data[self.app]) if relation is not None else {}
        CALLS.append(
            {
                'unit': self.unit.name,
                'callback': callback,
                'kwargs': kwargs,
                'granted_unit': app_bag.get('granted_unit'),
                'grant': app_bag.get('rollingops-grant'),
            }
        )

    def _restart(self, delay: int | None = None) -> None:
        self._record('_restart', delay=delay)

    def _failed_restart(self, delay: int | None = None) -> OperationResult:
        self._record('_failed_restart', delay=delay)
        return OperationResult.RETRY_RELEASE

    def _deferred_restart(self, delay: int | None = None) -> OperationResult:
        self._record('_deferred_restart', delay=delay)
        return OperationResult.RETRY_HOLD

    def _on_restart_action(self, event: ops.ActionEvent) -> None:
        self.rollingops.request_async_lock('_restart', kwargs={'delay': event.params.get('delay')})

    def _on_failed_restart_action(self, event: ops.ActionEvent) -> None:
        self.rollingops.request_async_lock(
            '_failed_restart',
            kwargs={'delay': event.params.get('delay')},
            max_retry=event.params.get('max-retry'),
        )

    def _on_deferred_restart_action(self, event: ops.ActionEvent) -> None:
        self.rollingops.request_async_lock(
            '_deferred_restart',
            kwargs={'delay': event.params.get('delay')},
            max_retry=event.params.get('max-retry'),
        )

    def _on_sync_restart_action(self, event: ops.ActionEvent) -> None:
        timeout = event.params.get('timeout', 30)
        with self.rollingops.acquire_sync_lock(backend_id='stop-replset-member', timeout=timeout):
            self._record('_sync_restart', delay=event.params.get('delay'))

    def _on_failed_sync_restart_action(self, event: ops.ActionEvent) -> None:
        with self.rollingops.acquire_sync_lock(backend_id='stop-replset-member', timeout=30):
            raise RuntimeError('failed sync restart')


class EtcdConfiguredCharm(RollingOpsCharm):
    """The reference's default fixture: etcd relation named, cluster_id set (no etcd related)."""

    etcd: dict[str, Any] = {'etcd_relation_name': 'etcd', 'cluster_id': 'cluster-12345'}
