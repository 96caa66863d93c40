"""Protocols for tests that run workers in other processes (``--algorithm``).

``SLOW_ECHO`` is Echo with a pause in every batch, so that a test can act
while a task is running. Load it with ``--algorithm tests.net_algorithms:SLOW_ECHO``
and the repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import trio

from fsm_protocol import BatchInfo, Item, ListDatasource, ProtocolFactory, WorkerContext, WorkerPlan


@attrs.frozen
class SlowEcho:
    items: tuple[str, ...] = ()
    batch_size: int = 1
    delay_s: float = 0.1


@attrs.frozen
class SlowEchoWorker:
    config: SlowEcho

    async def run_batch(self, items: Sequence[Item], info: BatchInfo) -> list[str]:
        await trio.sleep(self.config.delay_s)
        return [item.name for item in items]

    def results_body(self, items: Sequence[Item], results: Sequence[Any]) -> Any:
        return {"items": [item.name for item in items]}


def _plan(config: SlowEcho, context: WorkerContext) -> WorkerPlan:
    items = ListDatasource.from_names(config.items).items()
    return WorkerPlan(SlowEchoWorker(config), items, config.batch_size)


SLOW_ECHO = ProtocolFactory("test.SlowEcho", SlowEcho, _plan)
