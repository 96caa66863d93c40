"""The conformance kit's runner: play the other role with the engine, judge by the trace.

For ``--role worker`` the kit is the modeller (:func:`run_modeller`) and starts
the command once per simulated pod; for ``--role modeller`` the kit plays
every pod (:func:`run_worker`) against one process, after the
``CONFORMANCE_SCENARIO`` line of spec section 6. Either way it records the
conversation as a trace, in the order the kit's side saw it, and the trace
checker (:mod:`fsm_protocol._check._checker`) judges it, Echo item account included.
What a trace cannot show is judged from the kit's own outcome: a process
that crashed, went silent, ignored a cancel, did not exit, or (for a modeller)
left a pod waiting.

Every wait of a case is bounded by the step it waits at: the kit's modeller
gives a silent worker its idle wait and a cancelled one its cancel wait; the
kit's pods give a modeller that owes them a message (a JOB_REQUEST, a
TASK_CANCEL, a TASK_START...) the kit's owed wait, and their chart's own timers.
A verdict then names the message that did not come. A last-resort cap per case
stops a peer that keeps talking without progressing, and the processes are
killed at the end of each case, so no implementation can hang the kit.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence

import trio

from .._base._errors import ConfigError
from .._core._chart import Role
from .._core._shipped import shipped_chart
from ._coverage import CoverageRecorder
from ._endpoints import MODELLER_TRANSPORTS, WORKER_TRANSPORTS, check_tcp_command
from ._judges import judge_deadline, judge_modeller_case, judge_worker_case
from ._limits import CASE_CAP, start_allowance
from ._modeller_case import run_modeller_case
from ._recording import Recorder
from ._reports import CaseResult, Report
from ._scenarios import Scenario, Verdict, depends_on_timing, select_scenarios
from ._worker_case import run_worker_case

CaseHook = Callable[[CaseResult], None]


async def _run_one(
    scenario: Scenario,
    command: Sequence[str],
    transport: str,
    *,
    timeout: float,
    scale: float,
    startup: float,
    coverage: CoverageRecorder,
) -> tuple[CaseResult, float]:
    """Run one case under its last-resort cap; its result, and the slowest answer in it."""
    started = time.monotonic()
    recorder = Recorder(coverage.chart, coverage)
    with trio.move_on_after(timeout) as deadline:
        if scenario.role is Role.WORKER:
            worker_case = await run_worker_case(
                scenario,
                command,
                WORKER_TRANSPORTS[transport],
                scale=scale,
                startup=startup,
                recorder=recorder,
            )
            judgement = judge_worker_case(worker_case, scale)
        else:
            modeller_case = await run_modeller_case(
                scenario, command, MODELLER_TRANSPORTS[transport], scale=scale, recorder=recorder
            )
            judgement = judge_modeller_case(modeller_case, scale)
    if deadline.cancelled_caught:
        judgement = judge_deadline(scenario, recorder, timeout)
    # The rule the case failed on: the kit's own, or the checker's finding's; the reason cites it.
    rule = judgement.rule
    if rule is None and judgement.finding is not None:
        rule = judgement.finding.rule
    rule = rule or None
    reason = judgement.reason
    if rule is not None and f"[{rule}]" not in reason:
        reason += f" [{rule}]"
    result = CaseResult(
        scenario=scenario,
        verdict=judgement.verdict,
        reason=reason,
        details=judgement.details,
        duration_s=time.monotonic() - started,
        trace=tuple(e for e in recorder.entries if isinstance(e, bytes)),
        notes=tuple(recorder.notes),
        finding=judgement.finding,
        rule=None if judgement.verdict is Verdict.PASS else rule,
    )
    return result, recorder.latency


async def conform(
    *,
    role: Role | str,
    command: Sequence[str],
    scenarios: Sequence[str | Scenario] | None = None,
    seed: int | None = None,
    generated: int | None = None,
    timeout: float | None = None,
    time_scale: float = 1.0,
    transport: str = "stdio",
    on_case: CaseHook | None = None,
    jobs: int | None = None,
) -> Report:
    """Test an implementation of ``role`` started as ``command``: the async form.

    See :func:`~fsm_protocol.conformance.run_conformance` for the arguments.
    """
    role = Role(role)
    if not command:
        raise ConfigError("no command to test: give the implementation's command line")
    launchers: Mapping[str, object] = (
        WORKER_TRANSPORTS if role is Role.WORKER else MODELLER_TRANSPORTS
    )
    if transport not in launchers:
        raise ConfigError(
            f"unknown transport {transport!r}; available: {', '.join(sorted(launchers))}"
        )
    if (timeout is not None and timeout <= 0) or time_scale <= 0:
        raise ConfigError("timeout and time_scale must be positive")
    if jobs is None:
        jobs = 2 if transport == "stdio" else 1  # over TCP, one case at a time
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, found {jobs}")
    cap = CASE_CAP * time_scale if timeout is None else timeout
    if transport == "tcp":
        check_tcp_command(role, command)
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    count = generated if generated is not None else (10 if scenarios is None else 0)
    chosen = select_scenarios(role, scenarios, seed=seed, generated=count)
    wrong = [s.name for s in chosen if s.role is not role]
    if wrong:
        raise ConfigError(f"scenarios for the other role: {', '.join(wrong)}")
    chart = shipped_chart("modeller" if role is Role.WORKER else "worker")
    coverage = CoverageRecorder(chart)
    results: list[CaseResult | None] = [None] * len(chosen)
    latency = 0.0
    limiter = trio.CapacityLimiter(jobs)

    async def run(index: int) -> None:
        nonlocal latency
        result, seen = await _run_one(
            chosen[index],
            command,
            transport,
            timeout=cap,
            scale=time_scale,
            startup=start_allowance(latency),
            coverage=coverage,
        )
        latency = max(latency, seen)
        results[index] = result
        if on_case is not None:
            on_case(result)

    async def run_limited(index: int) -> None:
        async with limiter:
            await run(index)

    # Cases whose meaning depends on timing run alone; the others, up to ``jobs`` at once.
    index = 0
    while index < len(chosen):
        if jobs == 1 or depends_on_timing(chosen[index]):
            await run(index)
            index += 1
            continue
        async with trio.open_nursery() as nursery:
            while index < len(chosen) and not depends_on_timing(chosen[index]):
                nursery.start_soon(run_limited, index)
                index += 1
    return Report(
        role=role,
        command=tuple(command),
        transport=transport,
        seed=seed,
        cases=tuple(r for r in results if r is not None),
        coverage=coverage.result(),
        answer_latency_s=latency,
        time_scale=time_scale,
    )
