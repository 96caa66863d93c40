"""Exceptions from user code reach the outcome and the log, with their tracebacks."""

from __future__ import annotations

import logging

import attrs
import pytest

import fsm_protocol as fp


@attrs.frozen
class Divide:
    batch_size: int = 2


class DivideWorker:
    def run_batch(self, items: list[fp.Item], info: fp.BatchInfo) -> list[float]:
        return [1 / 0 for _ in items]  # the user's bug


def _plan(config: Divide, context: fp.WorkerContext) -> fp.WorkerPlan:
    return fp.WorkerPlan(DivideWorker(), context.datasource.items(), config.batch_size)


PROTOCOLS = fp.registry.with_protocol(fp.ProtocolFactory("test.Divide", Divide, worker=_plan))


def _pods() -> list[fp.Pod]:
    return [fp.Pod("org/pod-1", datasource=fp.ListDatasource.from_names(["a", "b", "c"]))]


async def test_a_zero_division_in_run_batch_reaches_outcome_abort_and_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fsm_protocol")
    outcome = await fp.run_task(Divide(), _pods(), protocols=PROTOCOLS, batched_execution=True)
    assert outcome.status is fp.TaskStatus.ABORTED
    # Every failed call is kept: two batches, then each of three items retried alone.
    assert [(e.where, e.items) for e in outcome.errors] == [
        ("run_batch", ("a", "b")),
        ("run_batch", ("c",)),
        ("run_batch", ("a",)),
        ("run_batch", ("b",)),
        ("run_batch", ("c",)),
    ]
    first = outcome.errors[0]
    assert (first.pod_id, first.type, first.message) == (
        "org/pod-1",
        "ZeroDivisionError",
        "division by zero",
    )
    assert first.traceback.startswith("Traceback (most recent call last):")
    assert "in run_batch\n    return [1 / 0 for _ in items]" in first.traceback
    assert first.traceback.rstrip().endswith("ZeroDivisionError: division by zero")
    assert outcome.worker_reports["org/pod-1"].errors == outcome.errors
    # The TASK_ABORT names the exception, not null.
    (abort,) = [m for m in outcome.trace if m.type is fp.MessageType.TASK_ABORT]
    body = fp.body_of(abort)
    assert body.exception_type == "ZeroDivisionError"
    assert "division by zero" in (body.traceback_summary or "")
    assert body.message == "no batch and no retry succeeded"
    # Logged through the runtime's logger, traceback attached: retried ones as warnings.
    records = [r for r in caplog.records if r.name == "fsm_protocol.runtime"]
    assert [r.levelname for r in records] == ["WARNING"] * 2 + ["ERROR"] * 3
    assert all(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in records)
    assert records[0].getMessage() == (
        "org/pod-1: run_batch raised ZeroDivisionError: division by zero (items a, b)"
    )


async def test_a_failing_datasource_is_reported_and_the_job_rejected() -> None:
    class Broken:
        def items(self) -> list[fp.Item]:
            raise OSError("disk on fire")

    outcome = await fp.run_task(
        Divide(), [fp.Pod("org/pod-1", datasource=Broken())], protocols=PROTOCOLS
    )
    assert outcome.status is fp.TaskStatus.REJECTED
    (error,) = outcome.errors
    assert (error.where, error.type, error.message) == ("worker_plan", "OSError", "disk on fire")
    assert "in items\n    raise OSError" in error.traceback
    reject = outcome.workers["org/pod-1"].reject
    assert reject is not None and reject.details == ("OSError: disk on fire",)


async def test_a_failing_hook_is_reported() -> None:
    class SetupFails(DivideWorker):
        def setup(self) -> None:
            raise KeyError("model weights")

    protocols = fp.registry.with_protocol(
        fp.ProtocolFactory(
            "test.Divide",
            Divide,
            worker=lambda config, context: fp.WorkerPlan(
                SetupFails(), context.datasource.items(), config.batch_size
            ),
        )
    )
    outcome = await fp.run_task(Divide(), _pods(), protocols=protocols)
    (error,) = outcome.errors
    assert (error.where, error.type, error.message) == ("setup", "KeyError", "'model weights'")
    assert outcome.abort_reasons == {"org/pod-1": fp.AbortReason.WORKER_ERROR}


@attrs.frozen
class Upper:
    batch_size: int = 2


class UpperWorker:
    def run_batch(self, items: list[fp.Item], info: fp.BatchInfo) -> list[str]:
        return [item.name.upper() for item in items]


class FinalStepFails:
    def final_step(self, results: object) -> None:
        raise RuntimeError("cannot aggregate")


def _upper_protocols() -> fp.ProtocolRegistry:
    return fp.registry.with_protocol(
        fp.ProtocolFactory(
            "test.Upper",
            Upper,
            worker=lambda config, context: fp.WorkerPlan(
                UpperWorker(), context.datasource.items(), config.batch_size
            ),
            modeller=lambda config: FinalStepFails(),
        )
    )


async def test_a_failing_run_hook_is_kept_and_the_task_still_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="fsm_protocol")
    calls: list[str] = []

    def on_message(who: str, message: fp.Message) -> None:
        calls.append(who)
        if len(calls) == 3:
            raise ValueError("the user's dashboard is down")

    outcome = await fp.run_task(
        Upper(),
        _pods(),
        protocols=_upper_protocols(),
        batched_execution=True,
        hooks=fp.Hooks(on_message=on_message),
    )
    # Every result still arrives; the hook's bug is kept, not raised.
    assert outcome.status is fp.TaskStatus.COMPLETE
    assert [k.batch for k in sorted(outcome.results)] == [0, 1]
    hook_errors = [e for e in outcome.errors if e.where == "on_message"]
    assert [(e.type, e.message) for e in hook_errors] == [
        ("ValueError", "the user's dashboard is down")
    ]
    assert "raise ValueError" in hook_errors[0].traceback
    assert "the user's dashboard is down" in caplog.text
    final = [e for e in outcome.errors if e.where == "final_step"]
    assert [(e.type, e.message) for e in final] == [("RuntimeError", "cannot aggregate")]
    assert outcome.final_result is None


def test_the_library_installs_no_log_handlers() -> None:
    import fsm_protocol._cli._main  # noqa: F401  (imports every layer)

    for name in ("fsm_protocol", "fsm_protocol.runtime", "fsm_protocol.net", "fsm_protocol.cli"):
        assert logging.getLogger(name).handlers == [], name
