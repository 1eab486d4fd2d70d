"""Shared fixtures: one compiled component per session, recorded dispatches, clean records."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from scenario.state import _Event

sys.path.insert(0, str(Path(__file__).parent))

import charm as test_charm


@pytest.fixture(scope='session')
def session_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One base_dir (and so one compile) for the whole session."""
    return tmp_path_factory.mktemp('base-dir')


@pytest.fixture(autouse=True)
def _charm_setup(session_base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(test_charm.RollingOpsCharm, 'base_dir', str(session_base_dir))
    test_charm.CALLS.clear()
    test_charm.RecordingBackend.calls = []
    test_charm.RecordingBackend.fail_acquire = None
    test_charm.RecordingBackend.fail_release = None


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Record `juju-exec` dispatches as (unit, hook), or (unit, hook, delay_ms) when delayed,
    instead of spawning processes."""
    calls: list[tuple[Any, ...]] = []

    def spawn(
        unit_name: str, charm_dir: str, event_name: str, base_dir: str, delay_ms: int = 0
    ) -> None:
        calls.append((unit_name, event_name, delay_ms) if delay_ms else (unit_name, event_name))

    monkeypatch.setattr('rollingops._host.spawn_dispatch', spawn)
    return calls


def lock_granted() -> Any:
    """The custom hook the library dispatches, as a Scenario event."""
    return _Event('rollingops_lock_granted')


def etcd_failed() -> Any:
    """The custom hook the etcd worker dispatches, as a Scenario event."""
    return _Event('rollingops_etcd_failed')


def op(
    callback_id: str = '_restart',
    requested_at: str = '1777636800.1',
    *,
    max_retry: int | None = None,
    attempt: int = 0,
    kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One operation object, in the wire key order (spec/peer.md §2.3)."""
    return {
        'callback_id': callback_id,
        'requested_at': requested_at,
        'max_retry': max_retry,
        'attempt': attempt,
        'result': None,
        'kwargs': kwargs or {},
    }


def queue(*ops: dict[str, Any]) -> str:
    """A queue as stored in the `operations` key."""
    return json.dumps(list(ops), separators=(',', ':'))


def ops_of(bag: dict[str, str]) -> list[dict[str, Any]]:
    """The decoded queue of a unit bag."""
    return json.loads(bag.get('operations') or '[]')
