"""``machine_from_chart``: Hypothesis rules from a chart, used on the shipped charts.

Both shipped charts run twice: with stand-in bindings (every guard free, so
every arc is reachable) and with their real bindings (``WorkerBindings``,
``LinkBindings``), where the invariants below are about the bindings' state.
A user's own chart works the same way.
"""

from __future__ import annotations

import doctest
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

import fsm_protocol.testing
from fsm_protocol import (
    BindingNames,
    EchoProtocol,
    JobRequestBody,
    Machine,
    Message,
    MessageType,
    Meta,
    Pod,
    ResultKey,
    Snapshot,
    load_chart,
    load_chart_text,
    shipped_chart,
)
from fsm_protocol._runtime._executor import Executor
from fsm_protocol._runtime._modeller import LinkBindings, TaskTimeouts, _Task
from fsm_protocol._runtime._worker import WorkerBindings
from fsm_protocol.testing import ChartRun, machine_from_chart

from .chart_replay import _Recorder

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "testing.md"

# Stateful runs: fewer, longer examples than the profile's default.
STATEFUL = settings(stateful_step_count=40, suppress_health_check=[HealthCheck.too_slow])
# For tests that expect a failure: finding it is the point, shrinking it only costs time.
NO_SHRINK = (Phase.explicit, Phase.generate)


def run(machine: type[RuleBasedStateMachine], **overrides: Any) -> None:
    run_state_machine_as_test(machine, settings=settings(STATEFUL, **overrides))


# ------------------------------------------------------------ stand-ins

WORKER = shipped_chart("worker")
MODELLER = shipped_chart("modeller")


def coverage_of(chart: Any) -> tuple[Callable[[ChartRun], None], set[int]]:
    """An invariant that records which transitions fired, and the set it fills."""
    seen: set[int] = set()

    def record(run: ChartRun) -> None:
        seen.update(run.fired)

    return record, seen


def uncovered(chart: Any, *, rounds: int = 10) -> list[str]:
    """Explore ``chart`` with stand-ins from each state in turn, until every arc fired.

    A walk from the initial state rarely gets deep: most states of the shipped
    charts have several ways to abort. So each round starts machines in every
    state that still has an arc that never fired, and runs them briefly.
    """
    record, seen = coverage_of(chart)
    leaves = [s.name for s in chart.states if not s.children and not s.final]

    def missing() -> list[int]:
        return [i for i in range(len(chart.transitions)) if i not in seen]

    for round_ in range(rounds):
        sources = {chart.transitions[i].source for i in missing()}
        todo = [leaf for leaf in leaves if sources & set(chart.ancestors(leaf))]
        if not todo:
            break
        machine = machine_from_chart(chart, invariants=[record], start_in=todo)
        # A seed of its own per round: fresh examples each round, the same every run.
        run(
            seed(round_)(machine), max_examples=20 * len(todo), stateful_step_count=2, database=None
        )
    return [
        f"{t.source} --{t.event}{list(t.guards) if t.guards else ''}--> {t.target}"
        for i, t in enumerate(chart.transitions)
        if i not in seen
    ]


@pytest.mark.parametrize("chart", [WORKER, MODELLER], ids=["worker", "modeller"])
def test_stand_ins_reach_every_transition_of_the_shipped_charts(chart: Any) -> None:
    assert uncovered(chart) == []


@pytest.mark.parametrize("chart", [WORKER, MODELLER], ids=["worker", "modeller"])
def test_stand_ins_walk_the_shipped_charts_from_the_start(chart: Any) -> None:
    run(machine_from_chart(chart), max_examples=40)


# ---------------------------------------------------- worker, real bindings


def estimate() -> Message:
    return Message.make(
        MessageType.NUMBER_OF_BATCHES, task_id="t", sender="w/p", recipient="m", seq=0, body=3
    )


def no_second_estimate(run: ChartRun) -> bool:
    """Once an estimate went out, the chart lets no other one out."""
    sent = any(s.event == "send:NUMBER_OF_BATCHES" and s.internal for s in run.steps)
    return not sent or not run.machine.accepts("send:NUMBER_OF_BATCHES", estimate())


def worker_bindings(batched: bool, initial_setup: bool, failure_limit: int) -> WorkerBindings:
    """Real worker bindings, with the job the ``vet_job`` activity would have stored."""
    bindings = WorkerBindings(
        Pod("w/p"), Executor(options=WORKER.options), failure_limit=failure_limit
    )
    bindings.job = JobRequestBody(protocol={"class_name": "x"}, batched_execution=batched)
    bindings.config = EchoProtocol(items=("a",), initial_setup=initial_setup)
    return bindings


def an_abort_has_a_reason(run: ChartRun) -> bool:
    """Every way into ``aborting`` notes why, so TASK_ABORT always has a reason."""
    bindings: WorkerBindings = run.bindings  # type: ignore[assignment]
    return run.machine.state not in ("aborting", "aborted") or bindings.abort is not None


def failures_stop_at_the_limit(run: ChartRun) -> bool:
    bindings: WorkerBindings = run.bindings  # type: ignore[assignment]
    over = bindings.consecutive_failures >= bindings.failure_limit
    return not over or run.machine.state in ("aborting", "aborted")


def batch_ids_count_up(run: ChartRun) -> bool:
    bindings: WorkerBindings = run.bindings  # type: ignore[assignment]
    return bindings.next_batch_id == bindings.current_batch + 1


def one_estimate_at_most(run: ChartRun) -> bool:
    estimates = [s for s in run.steps if s.event == "send:NUMBER_OF_BATCHES" and s.internal]
    return len(estimates) <= 1


def results_only_while_running(run: ChartRun) -> bool:
    sources = {s.source for s in run.steps if s.event == "send:EVALUATION_RESULTS"}
    return sources <= {"running", "running_batch", "resilience"}


def test_worker_chart_with_its_real_bindings() -> None:
    machine = machine_from_chart(
        WORKER,
        bindings=st.builds(
            worker_bindings, st.booleans(), st.booleans(), st.integers(min_value=1, max_value=5)
        ),
        invariants=[
            an_abort_has_a_reason,
            failures_stop_at_the_limit,
            batch_ids_count_up,
            one_estimate_at_most,
            no_second_estimate,
            results_only_while_running,
        ],
    )
    run(machine)


def test_worker_chart_with_its_real_bindings_inside_the_batch_loop() -> None:
    """Walks from the start rarely get this deep; start each machine in the loop instead."""
    machine = machine_from_chart(
        WORKER,
        bindings=st.builds(
            worker_bindings, st.just(True), st.booleans(), st.integers(min_value=1, max_value=5)
        ),
        invariants=[
            an_abort_has_a_reason,
            failures_stop_at_the_limit,
            batch_ids_count_up,
            one_estimate_at_most,
            no_second_estimate,
            results_only_while_running,
        ],
        start_in=["batches", "resilience", "final_step"],
    )
    run(machine, stateful_step_count=15)


# -------------------------------------------------- modeller, real bindings


# Where a second worker of the same task may be, and what the modeller knows of it then.
OTHER_WORKER = {
    "requested": {},  # has not answered yet
    "configuring": {"accepted": True, "answered": True},
    "single_ready": {"accepted": True, "answered": True},
    "running": {"accepted": True, "answered": True, "start_raised": True},
    "final_step": {"accepted": True, "answered": True, "start_raised": True},
}


def link_bindings(batched: bool, initial_setup: bool, other: str | None = None) -> LinkBindings:
    """Real bindings of one modeller link, in a task of its own or beside a second worker."""
    task = _Task("t-1", "modeller", _Recorder(), TaskTimeouts(), None, False)  # type: ignore[arg-type]
    job = JobRequestBody(protocol={"class_name": "x"}, batched_execution=batched)
    config = EchoProtocol(initial_setup=initial_setup)
    link = LinkBindings(task, "pod", job, config)
    task.links["pod"] = link
    if other is not None:
        second = LinkBindings(task, "other", job, config)
        second.machine = Machine.restore(MODELLER, second, Snapshot("modeller", other))
        for name, value in OTHER_WORKER[other].items():
            setattr(second, name, value)
        task.links["other"] = second
    return link


def link_machine_of(run: ChartRun) -> None:
    # LinkBindings reads its own machine (expects()); point it at the one under test.
    bindings: LinkBindings = run.bindings  # type: ignore[assignment]
    bindings.machine = run.machine


def cancel_goes_at_most_once(run: ChartRun) -> bool:
    return len([s for s in run.steps if s.event == "send:TASK_CANCEL"]) <= 1


def no_complete_after_a_cancel(run: ChartRun) -> bool:
    bindings: LinkBindings = run.bindings  # type: ignore[assignment]
    return not (run.machine.state == "complete" and bindings.cancel_sent)


def every_result_is_kept(run: ChartRun) -> bool:
    """Each EVALUATION_RESULTS the chart took is stored; none overwrites another."""
    bindings: LinkBindings = run.bindings  # type: ignore[assignment]
    taken = [s for s in run.steps if s.event == "recv:EVALUATION_RESULTS"]
    return len(bindings.task.results) == len(taken)


# The rules the guards stand for, stated without the chart: when the chart
# would let a message out, the task-wide condition behind it must hold.


def task_start_only_through_the_barrier(run: ChartRun) -> bool:
    bindings: LinkBindings = run.bindings  # type: ignore[assignment]
    return not run.machine.accepts("send:TASK_START") or bindings.task.all_ready()


def task_complete_only_when_all_are_done(run: ChartRun) -> bool:
    bindings: LinkBindings = run.bindings  # type: ignore[assignment]
    return not run.machine.accepts("send:TASK_COMPLETE") or bindings.task.all_done()


def no_second_cancel(run: ChartRun) -> bool:
    bindings: LinkBindings = run.bindings  # type: ignore[assignment]
    return not bindings.cancel_sent or not run.machine.accepts("send:TASK_CANCEL")


def a_late_accept_is_cancelled(run: ChartRun) -> bool:
    """Spec section 4: a JOB_ACCEPT after the response timeout is answered with TASK_CANCEL."""
    bindings: LinkBindings = run.bindings  # type: ignore[assignment]
    return not bindings.late or bindings.cancel_raised


def no_second_result_for_a_slot(run: ChartRun) -> bool:
    """Two results with the same batch and algorithm index are a violation (spec section 4).

    Retries in the resilience phase carry no batch id, and several are allowed.
    """
    bindings: LinkBindings = run.bindings  # type: ignore[assignment]
    if run.machine.state == "resilience":
        return True
    return not any(
        run.machine.accepts("recv:EVALUATION_RESULTS", result(batch, algorithm))
        for batch, algorithm in bindings.result_slots
    )


def result(batch: int | None, algorithm: int = 0) -> Message:
    return Message.make(
        MessageType.EVALUATION_RESULTS,
        task_id="t-1",
        sender="pod",
        recipient="modeller",
        seq=0,
        body={"items": []},
        meta=Meta(batch_number=batch, algorithm_index=algorithm),
    )


def modeller_invariants(*, keep_results: bool) -> list[Callable[[ChartRun], object]]:
    found: list[Callable[[ChartRun], object]] = [
        link_machine_of,
        cancel_goes_at_most_once,
        no_complete_after_a_cancel,
        task_start_only_through_the_barrier,
        task_complete_only_when_all_are_done,
        no_second_cancel,
        a_late_accept_is_cancelled,
        no_second_result_for_a_slot,
    ]
    return [*found, every_result_is_kept] if keep_results else found


def modeller_data(event: str) -> Any:
    if event == "recv:EVALUATION_RESULTS":
        # One algorithm index per result keeps this run about the order; several
        # results per batch have tests of their own below.
        return st.builds(
            result,
            st.none() | st.integers(min_value=0, max_value=3),
        )
    return None


def test_modeller_chart_with_its_real_bindings() -> None:
    machine = machine_from_chart(
        MODELLER,
        bindings=st.builds(link_bindings, st.booleans(), st.booleans()),
        invariants=modeller_invariants(keep_results=True),
        data_for=modeller_data,
    )
    run(machine)


@pytest.mark.parametrize(
    ("batched", "states"),
    [
        (False, ["single_announced", "single_ready", "running", "final_step"]),
        (True, ["batch_announced", "batch_ready", "running_batch", "resilience", "final_step"]),
    ],
    ids=["non-batched", "batched"],
)
def test_modeller_chart_beside_a_second_worker(batched: bool, states: list[str]) -> None:
    """The barrier and completion look across workers, so give the task a second one."""
    machine = machine_from_chart(
        MODELLER,
        bindings=st.builds(
            link_bindings, st.just(batched), st.booleans(), st.sampled_from(sorted(OTHER_WORKER))
        ),
        invariants=modeller_invariants(keep_results=True),
        data_for=modeller_data,
        start_in=states,
    )
    run(machine, stateful_step_count=10)


def test_modeller_results_states_keep_every_result() -> None:
    """From the states that take results, with results of two algorithm indexes.

    This is how the bug pinned below showed: ``every_result_is_kept`` failed
    after two ``recv:EVALUATION_RESULTS`` of one batch.
    """
    machine = machine_from_chart(
        MODELLER,
        bindings=st.builds(link_bindings, st.booleans(), st.booleans()),
        invariants=modeller_invariants(keep_results=True),
        start_in=["running", "resilience"],
    )
    run(machine, max_examples=200, database=None, phases=NO_SHRINK)


def link_in_batch(initial_setup: bool) -> LinkBindings:
    """A batched link whose worker announced batch 2: what ``running_batch`` holds."""
    link = link_bindings(batched=True, initial_setup=initial_setup)
    link.current_batch, link.next_batch_id = 2, 3
    return link


def batch_results(event: str) -> Any:
    if event == "recv:EVALUATION_RESULTS":
        # Mostly the current batch and the first algorithm, so that slots repeat.
        batches = st.sampled_from([2, 2, 2, 1, 3, None])
        return st.builds(result, batches, st.sampled_from([0, 0, 1]))
    return None


def test_modeller_running_batch_takes_one_result_per_slot() -> None:
    """Walks from the start seldom announce a batch id; start inside a batch instead."""
    machine = machine_from_chart(
        MODELLER,
        bindings=st.builds(link_in_batch, st.booleans()),
        invariants=modeller_invariants(keep_results=True),
        data_for=batch_results,
        start_in=["running_batch"],
    )
    run(machine, stateful_step_count=10)


def test_modeller_keeps_every_algorithms_result_of_a_batch() -> None:
    """Found by ``every_result_is_kept`` (see the test above); the minimal case.

    The spec allows several ``EVALUATION_RESULTS`` per batch, one per
    ``meta.algorithm_index``, and the chart takes them (its duplicate check
    is keyed by batch and index). ``LinkBindings.action_store_result`` used
    to file each under ``ResultKey(worker, batch)``, so the second replaced
    the first; ``ResultKey`` now carries the algorithm index.
    """
    link = link_bindings(batched=False, initial_setup=False)
    link.machine = machine = Machine.from_chart(MODELLER, link)

    def message(type_: MessageType, body: Any = None, meta: Meta | None = None) -> Message:
        return Message.make(
            type_, task_id="t-1", sender="pod", recipient="modeller", seq=0, body=body, meta=meta
        )

    machine.fire("send:JOB_REQUEST")
    machine.fire("recv:JOB_ACCEPT", message(MessageType.JOB_ACCEPT, {"ACCEPT": "pod"}))
    machine.fire("recv:NUMBER_OF_BATCHES", message(MessageType.NUMBER_OF_BATCHES, 1))
    machine.fire("recv:TASK_START", message(MessageType.TASK_START))
    machine.fire("send:TASK_START")
    for index in (0, 1):
        body = {"items": [f"from algorithm {index}"]}
        meta = Meta(batch_number=None, algorithm_index=index)
        machine.fire("recv:EVALUATION_RESULTS", message(MessageType.EVALUATION_RESULTS, body, meta))
    assert len(link.task.results) == 2, link.task.results
    assert ResultKey("pod") in link.task.results


# ------------------------------------------------------------ any chart


DOOR = """
chart: door
initial: closed
events: {open: open it, close: close it, lock: lock it, unlock: unlock it, smash: break it}
states:
  closed:
    transitions:
      - {event: open, target: opened, guards: ["!jammed"]}
      - {event: open, guards: [jammed], actions: [complain]}
      - {event: lock, target: locked, guards: [has_key], actions: [turn_key]}
  opened:
    on_entry: [swing]
    transitions: [{event: close, target: closed}]
  locked:
    transitions:
      - {event: unlock, target: closed, guards: [has_key]}
      - {event: smash, target: broken}
  broken: {final: true}
"""


def test_a_users_own_chart_with_stand_ins() -> None:
    chart = load_chart_text(DOOR)
    run(machine_from_chart(chart), max_examples=30)
    assert uncovered(chart) == []


def test_the_minimal_fixture_chart() -> None:
    names = BindingNames(guards=frozenset({"ready"}), actions=frozenset({"note"}))
    chart = load_chart(HERE / "charts" / "minimal.yaml", bindings=names)
    run(machine_from_chart(chart), max_examples=10)
    assert uncovered(chart) == []


class DoorBindings:
    """A user's bindings, with state of their own."""

    def __init__(self, has_key: bool) -> None:
        self.key = has_key
        self.locks = 0

    def guard_jammed(self, event: Any) -> bool:
        return False

    def guard_has_key(self, event: Any) -> bool:
        return self.key

    def action_complain(self, event: Any) -> None:
        pass

    def action_turn_key(self, event: Any) -> None:
        self.locks += 1

    def action_swing(self, event: Any) -> None:
        pass


def locked_only_with_the_key(run: ChartRun) -> bool:
    bindings: DoorBindings = run.bindings  # type: ignore[assignment]
    return run.machine.state != "locked" or bindings.key


def test_a_users_own_bindings_and_invariants() -> None:
    chart = load_chart_text(DOOR)
    machine = machine_from_chart(
        chart,
        bindings=st.builds(DoorBindings, st.booleans()),
        invariants=[locked_only_with_the_key],
    )
    run(machine, max_examples=30)


def test_a_chart_bug_is_found_and_named() -> None:
    """A planted arc out of ``broken`` breaks the invariant "broken stays broken"."""
    buggy = load_chart_text(
        DOOR.replace(
            "  broken: {final: true}",
            "  broken:\n"
            "    transitions:\n"
            "      - {event: smash, target: scrapped}\n"
            "      - {event: close, target: closed}\n"  # the bug
            "  scrapped: {final: true}",
        )
    )

    def broken_stays_broken(run: ChartRun) -> bool:
        return not any(s.source == "broken" and s.target != "scrapped" for s in run.steps)

    machine = machine_from_chart(buggy, invariants=[broken_stays_broken], name="BuggyDoor")
    with pytest.raises(AssertionError, match="invariant broken_stays_broken does not hold"):
        run(machine, max_examples=200, database=None, phases=NO_SHRINK)


def test_an_engine_that_ignores_the_chart_is_caught() -> None:
    """If the machine went somewhere the chart does not say, the step check fails."""
    chart = load_chart_text(DOOR)

    class Liar(DoorBindings):
        def action_turn_key(self, event: Any) -> None:
            raise AssertionError("the lock turned without a key check")

    machine = machine_from_chart(chart, bindings=lambda: Liar(True))
    with pytest.raises((AssertionError, Flaky), match="lock turned"):
        run(machine, max_examples=100, database=None, phases=NO_SHRINK)


def test_the_generated_class_is_named_after_the_chart() -> None:
    assert machine_from_chart(WORKER).__name__ == "WorkerChart"
    names = [n for n in dir(machine_from_chart(WORKER)) if re.match(r"t\d\d_", n)]
    assert len(names) == len(WORKER.transitions)
    assert any(re.fullmatch(r"t\d\d_idle__recv_JOB_REQUEST", n) for n in names)


# ------------------------------------------------------------ the docs


def test_the_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(fsm_protocol.testing, raise_on_error=False)
    assert tried and not failures


def test_the_docs_page_example_runs() -> None:
    """The python blocks of docs/testing.md, run in order in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert blocks
    namespace: dict[str, Any] = {"__name__": "docs_testing"}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
