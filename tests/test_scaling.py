"""A message costs the modeller the same with 10 workers or 2,000.

The task-wide rules (the TASK_START barrier, completion, cancelling, the
slowest worker's progress) read counts kept up to date as links step; none of
them visits every worker. These tests count, with :mod:`cProfile` (exact call
counts, no timing), the guard evaluations of the modeller chart and every
call into the modeller and executor code, per message, at two sizes.
"""

from __future__ import annotations

import cProfile
import pstats
from fractions import Fraction
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from fsm_protocol import EchoProtocol, Hooks, Pod, Progress, TaskOutcome, TaskStatus, run_task
from fsm_protocol._runtime import _executor, _modeller

MODELLER = str(Path(_modeller.__file__).resolve())
EXECUTOR = str(Path(_executor.__file__).resolve())


@attrs.frozen
class Cost:
    outcome: TaskOutcome
    guards: int  # calls of LinkBindings.guard_* methods
    calls: int  # calls of any function in _modeller.py or _executor.py
    progress: tuple[Progress, ...]

    @property
    def messages(self) -> int:
        return len(self.outcome.trace)

    def per_message(self, count: int) -> Fraction:
        return Fraction(count, self.messages)


def run_profiled(workers: int, batches: int = 2) -> Cost:
    progress: list[Progress] = []
    protocol = EchoProtocol(items=tuple(f"i{n}" for n in range(batches)), batch_size=1)
    pods = [Pod(f"org/pod-{n}") for n in range(workers)]

    async def main() -> TaskOutcome:
        hooks = Hooks(on_progress=progress.append)
        return await run_task(protocol, pods, batched_execution=True, hooks=hooks)

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        outcome = trio.run(main, clock=trio.testing.MockClock())
    finally:
        profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    guards = calls = 0
    for (filename, _line, name), (_primitive, total, *_rest) in stats.items():
        if filename in (MODELLER, EXECUTOR):
            calls += total
            if filename == MODELLER and name.startswith("guard_"):
                guards += total
    return Cost(outcome, guards, calls, tuple(progress))


@pytest.fixture(scope="module")
def small() -> Cost:
    return run_profiled(10)


@pytest.fixture(scope="module")
def large() -> Cost:
    return run_profiled(2000)


def test_both_sizes_complete_with_every_result(small: Cost, large: Cost) -> None:
    for cost, workers in ((small, 10), (large, 2000)):
        assert cost.outcome.status is TaskStatus.COMPLETE
        assert len(cost.outcome.results) == workers * 2
        # Every worker's part is the same 16 messages (batched, two batches).
        assert cost.messages == workers * 16


def test_guard_evaluations_per_message_do_not_grow_with_workers(small: Cost, large: Cost) -> None:
    assert small.guards > 0
    assert small.per_message(small.guards) == large.per_message(large.guards)


def test_all_modeller_and_executor_work_per_message_does_not_grow_with_workers(
    small: Cost, large: Cost
) -> None:
    # Exact counts differ a little (a run's fixed set-up is spread over fewer
    # messages with 10 workers; which wake-up finds which events queued varies),
    # but a scan of every worker on some messages would multiply them.
    assert large.per_message(large.calls) <= small.per_message(small.calls) * Fraction(105, 100)


def test_progress_follows_the_slowest_worker(small: Cost) -> None:
    batches = [p.batch for p in small.progress]
    assert batches[0] == 0
    assert batches == sorted(batches)
    assert batches[-1] == 1
    assert small.progress[-1].total_estimate == 2
