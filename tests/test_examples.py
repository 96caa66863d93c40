"""The kit against the examples: correct ones pass, broken ones fail for the right reason.

``examples/plain_worker.py`` and ``examples/plain_modeller.py`` are written from
the wire spec without this library, as another team would. Each ``--bug`` makes
one deviation; for each, the test names a scenario that exposes it and the words
the verdict must contain. All runs share one trio loop, so their waits overlap.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import pytest
import trio

from fsm_protocol import Role
from fsm_protocol.conformance import Report, Verdict, catalogue, conform

PY = sys.executable
EXAMPLES = Path(__file__).parent.parent / "examples"
PLAIN_WORKER = [PY, str(EXAMPLES / "plain_worker.py")]
PLAIN_MODELLER = [PY, str(EXAMPLES / "plain_modeller.py")]
SEED = 20240601

# bug -> (scenario, verdict, words the reason must contain)
WORKER_BUGS: dict[str, tuple[str, Verdict, tuple[str, ...]]] = {
    "one-based-batches": (
        "batches",
        Verdict.FAIL,
        ("sent CURRENT_BATCH_ID 1 in state counting", "with body 0 (the next batch id)"),
    ),
    "skip-batches-only": (
        "batches",
        Verdict.FAIL,
        ('BATCHES_COMPLETE "TASK_COMPLETE" in state running_batch', 'body "BATCHES_ONLY"'),
    ),
    "duplicate-results": ("batches", Verdict.FAIL, ("no duplicate results",)),
    "lose-item": ("batches", Verdict.FAIL, ("item(s) 'i2' lost",)),
    "ignore-cancel": (
        "cancel-during-batches",
        Verdict.FAIL,
        (
            "ignored TASK_CANCEL: expected TASK_ABORT from it within 1 s after the modeller's"
            " TASK_CANCEL (line ",
            "got nothing",
        ),
    ),
    "silent": (
        "batches",
        Verdict.TIMEOUT,
        (
            "went silent in state running_batch: expected EVALUATION_RESULTS, CURRENT_BATCH_ID"
            " or BATCHES_COMPLETE from it within 2 s after the modeller's TASK_START (line ",
            "got nothing",
        ),
    ),
    "limit-off-by-one": (
        "limit-exact",
        Verdict.FAIL,
        ("reached the inference limit", "Echo expects TASK_ABORT(LIMITS_EXCEEDED) next"),
    ),
    "no-online-check": ("online-check-before-complete", Verdict.FAIL, ("never sent ONLINE_CHECK",)),
    "wrong-seq": ("batches", Verdict.FAIL, ("seq 10 from kit/pod-a", "expected 9")),
    "no-batch-number": (
        "batches",
        Verdict.FAIL,
        ("invalid message: field $.meta.batch_number", "required on EVALUATION_RESULTS"),
    ),
    "accept-bad-batch-size": (
        "reject-batch-size",
        Verdict.FAIL,
        ("accepted a conformance.Echo job whose configuration is invalid", "batch_size"),
    ),
    "send-after-end": ("batches", Verdict.FAIL, ("after that worker's end",)),
    "crash-on-retry": ("resilience", Verdict.FAIL, ("the process exited with status 1",)),
    "retry-with-batch-number": (
        "resilience",
        Verdict.FAIL,
        ("in state resilience", "meta.batch_number null (a retried item)"),
    ),
    "no-abort-on-eof": (
        "link-drops",
        Verdict.FAIL,
        ("input ended mid-task", "sends TASK_ABORT(MODELLER_TIMEOUT) when its input ends"),
    ),
    "linger": ("single-run", Verdict.TIMEOUT, ("did not exit", "after its input ended")),
    "always-streams": (
        "single-run",
        Verdict.FAIL,
        ("PREPARING_DATA_BATCHES", "in a batched job (batched_execution true)"),
    ),
}

MODELLER_BUGS: dict[str, tuple[str, Verdict, tuple[str, ...]]] = {
    "no-barrier": (
        "slow-pod-barrier",
        Verdict.FAIL,
        ("sent TASK_START to pod kit/pod-a", "still waiting for TASK_START from kit/pod-b"),
    ),
    "early-complete": (
        "slow-pod-completion",
        Verdict.FAIL,
        ("sent TASK_COMPLETE to pod kit/pod-a", "still waiting for BATCHES_COMPLETE"),
    ),
    "no-cancel-on-abort": (
        "pod-aborts",
        Verdict.TIMEOUT,
        (
            "expected TASK_CANCEL to kit/pod-a within 2 s after pod kit/pod-b aborted with"
            " LIMITS_EXCEEDED (line ",
            "got nothing",
        ),
    ),
    "ignore-late-accept": (
        "late-accept",
        Verdict.FAIL,
        ("whose JOB_ACCEPT came late", "a late accept is answered with TASK_CANCEL"),
    ),
    "lose-quick-start": (
        "two-pods",
        Verdict.TIMEOUT,
        (
            "expected TASK_START to kit/pod-",
            "within 2 s after every accepted pod had sent TASK_START (line ",
            "got nothing",
        ),
    ),
    "no-online-response": (
        "slow-pod-completion",
        Verdict.TIMEOUT,
        (
            "gave up waiting for the modeller",
            "expected ONLINE_RESPONSE to kit/pod-a after its ONLINE_CHECK (line ",
            "got nothing",
        ),
    ),
    "wrong-seq": ("two-pods", Verdict.FAIL, ("from the modeller", "was used before")),
    "no-setup": (
        "initial-setup",
        Verdict.TIMEOUT,
        (
            "expected ALGORITHM_EXCHANGE to kit/pod-",
            "within 2 s after its JOB_ACCEPT of a job with an initial setup (line ",
            "got nothing",
        ),
    ),
    "hang-at-end": ("single-run", Verdict.TIMEOUT, ("the modeller did not exit",)),
}


@pytest.fixture(scope="module")
def reports() -> dict[str, Report]:
    """Every run of this module, all at once."""
    results: dict[str, Report] = {}
    limiter = trio.CapacityLimiter(8)

    async def run(key: str, **kwargs: object) -> None:
        async with limiter:
            results[key] = await conform(seed=SEED, **kwargs)  # type: ignore[arg-type]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run("worker", role="worker", command=PLAIN_WORKER, generated=10)
            )
            nursery.start_soon(
                lambda: run("modeller", role="modeller", command=PLAIN_MODELLER, generated=10)
            )
            for role, base, bugs in (
                ("worker", PLAIN_WORKER, WORKER_BUGS),
                ("modeller", PLAIN_MODELLER, MODELLER_BUGS),
            ):
                for bug, (name, _, _) in bugs.items():
                    nursery.start_soon(
                        functools.partial(
                            run,
                            f"{role}:{bug}",
                            role=role,
                            command=[*base, "--bug", bug],
                            scenarios=[name],
                        )
                    )

    trio.run(main)
    return results


@pytest.mark.parametrize("role", ["worker", "modeller"])
def test_the_plain_example_passes_the_whole_catalogue(
    reports: dict[str, Report], role: str
) -> None:
    report = reports[role]
    report.assert_passed()
    assert len(report.cases) == len(catalogue(Role(role))) + 10
    # Cases run two at a time where timing allows, and are reported in the catalogue's order.
    names = [scenario.name for scenario in catalogue(Role(role))]
    assert [case.name for case in report.cases] == names + [f"generated-{n}" for n in range(1, 11)]


def test_the_worker_catalogue_reaches_every_transition(reports: dict[str, Report]) -> None:
    coverage = reports["worker"].coverage
    assert coverage.chart.name == "modeller"
    assert coverage.state_percent() == 100
    assert coverage.missing_transitions() == []
    assert coverage.transition_percent() == 100
    assert "transitions 47/47 (100%)" in reports["worker"].summary()


def test_the_modeller_catalogue_reaches_every_transition(reports: dict[str, Report]) -> None:
    coverage = reports["modeller"].coverage
    assert coverage.chart.name == "worker"
    assert coverage.state_percent() == 100
    # Including those only a misbehaving peer provokes: bad input, the input ending,
    # a failing setup, skipped markers, and messages the modeller never sent.
    assert coverage.missing_transitions() == []
    assert "transitions 68/68 (100%)" in reports["modeller"].summary()


@pytest.mark.parametrize("bug", sorted(WORKER_BUGS))
def test_each_broken_worker_fails_for_the_right_reason(
    reports: dict[str, Report], bug: str
) -> None:
    _check_broken(reports[f"worker:{bug}"], *WORKER_BUGS[bug])


@pytest.mark.parametrize("bug", sorted(MODELLER_BUGS))
def test_each_broken_modeller_fails_for_the_right_reason(
    reports: dict[str, Report], bug: str
) -> None:
    _check_broken(reports[f"modeller:{bug}"], *MODELLER_BUGS[bug])


def _check_broken(report: Report, name: str, verdict: Verdict, words: tuple[str, ...]) -> None:
    (case,) = report.cases
    assert case.name == name
    assert case.verdict is verdict, case.reason
    for word in words:
        assert word in case.reason, f"{word!r} not in {case.reason!r}"
    assert not report.passed
    assert case.trace, "a failing case keeps its trace"
    assert case.mermaid().startswith("sequenceDiagram\n")


def test_there_are_enough_broken_variants() -> None:
    assert len(WORKER_BUGS) >= 12 and len(MODELLER_BUGS) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("role", ["worker", "modeller"])
def test_the_engine_itself_passes_its_kit(role: str) -> None:
    """The library's own worker and modeller, over stdio (slow: each start imports it)."""
    from fsm_protocol.conformance import run_conformance

    script = EXAMPLES / ("engine_worker.py" if role == "worker" else "engine_modeller.py")
    report = run_conformance(role=role, command=[PY, str(script)], seed=SEED, generated=10)
    report.assert_passed()


# The bounds for a whole default run (the catalogue and 10 generated cases): under
# 60 s against a correct implementation, under 120 s against a broken one.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("role", "bug", "bound"),
    [
        ("worker", None, 60.0),
        ("modeller", None, 60.0),
        ("worker", "silent", 120.0),
        ("worker", "ignore-cancel", 120.0),
        ("modeller", "no-cancel-on-abort", 120.0),
        ("modeller", "lose-quick-start", 120.0),
        ("modeller", "no-online-response", 120.0),
        ("modeller", "ignore-late-accept", 120.0),
    ],
)
def test_a_whole_run_stays_within_its_bound(role: str, bug: str | None, bound: float) -> None:
    from fsm_protocol.conformance import run_conformance

    command = [*(PLAIN_WORKER if role == "worker" else PLAIN_MODELLER)]
    if bug is not None:
        command += ["--bug", bug]
    started = time.monotonic()
    report = run_conformance(role=role, command=command, seed=SEED, generated=10)
    elapsed = time.monotonic() - started
    assert report.passed is (bug is None), report.summary()
    assert elapsed < bound, f"{elapsed:.1f} s"
    assert all(case.duration_s < 15 for case in report.cases)
