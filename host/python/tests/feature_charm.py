"""A charm using the extended API (health gates, rolls, policy), for the feature tests.

Callbacks append to ``RUNS``; health answers come from ``HEALTH`` (per unit, one answer per
check, ``True`` once the list is empty).
"""

from __future__ import annotations

from typing import Any

import ops

from rollingops import RollingOpsManager

RUNS: list[dict[str, Any]] = []
HEALTH: dict[str, list[bool]] = {}

META: dict[str, Any] = {'name': 'db', 'peers': {'cluster': {'interface': 'db_peers'}}}


class FeatureCharm(ops.CharmBase):
    """Registers ``restart``, ``healthy`` and ``roll_done``."""

    base_dir = '/tmp/rollingops-tests'

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.rollingops = RollingOpsManager(
            charm=self,
            callback_targets={
                'restart': self._restart,
                'healthy': self._healthy,
                'roll_done': self._roll_done,
            },
            peer_relation_name='cluster',
            base_dir=self.base_dir,
        )

    def _record(self, callback: str, **kwargs: Any) -> None:
        RUNS.append({'unit': self.unit.name, 'callback': callback, 'kwargs': kwargs})

    def _restart(self, **kwargs: Any) -> None:
        self._record('restart', **kwargs)

    def _healthy(self, **kwargs: Any) -> bool:
        answers = HEALTH.get(self.unit.name)
        answer = answers.pop(0) if answers else True
        self._record('healthy', answer=answer, **kwargs)
        return answer

    def _roll_done(self, generation: int) -> None:
        self._record('roll_done', generation=generation)
