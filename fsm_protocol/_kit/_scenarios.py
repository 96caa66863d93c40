"""What the conformance kit runs: verdicts, faults, Echo jobs, scenarios, and the catalogue.

The catalogue holds the named cases per role; :func:`generated_scenarios` adds
Hypothesis-drawn ones, and :func:`select_scenarios` picks a run's cases by name.
"""

from __future__ import annotations

import difflib
import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, final

import attrs

from .._algo._echo_model import EchoPrediction, predict_echo
from .._algo._protocols import EchoProtocol, UsageLimit, registry
from .._base._errors import ConfigError
from .._core._chart import Role
from .._core._shipped import shipped_chart
from .._wire._messages import JobRequestBody


class Verdict(str, enum.Enum):
    """The outcome of one case."""

    PASS = "PASS"
    FAIL = "FAIL"
    TIMEOUT = "TIMEOUT"


class FaultKind(str, enum.Enum):
    """What the kit does to one pod's link on purpose, seen from the kit's side.

    * ``delay_send``: the kit sends the matching message late.
    * ``hold_recv``: the kit gets the matching message late (a slow pod, or a
      slow modeller when the kit plays the pod).
    * ``cancel``: when the matching message arrives, the kit's modeller cancels
      the task.
    * ``drop``: the matching message is lost and the link breaks (the kit
      closes the worker's input).
    * ``garble``: the matching message arrives unreadable.
    * ``swallow``: the matching message, and all after it, are lost in transit.

    When the kit plays the pods, ``drop`` loses the matching message and ends
    the pod's input, and ``garble`` hands it to the pod unreadable. The kinds
    below make the kit a misbehaving peer, to reach the transitions of its chart
    that a correct implementation under test never provokes:

    * ``end``: kit pods: the matching message arrives, and the pod's input
      ends right after it.
    * ``hold_until_abort``: kit pods: the matching message waits until the pod
      decides to abort on its own (``seconds`` is the longest wait); with
      ``drop`` or ``garble`` too, it is then lost or garbled.
    * ``log``: the kit's side sends a LOG_MESSAGE on the pod's link as its own
      machine enters a state named in ``on``.
    * ``skip_markers``: the kit's pod leaves out the optional PREPARING_DATA and
      PREPARING_DATA_BATCHES markers (``on`` is empty).
    * ``fail_setup``: the kit's pod's algorithm raises in its setup, so the pod
      aborts with WORKER_ERROR (``on`` is empty).
    * ``slow_setup``: the kit's pod's algorithm takes ``seconds`` over its setup,
      so the modeller's ALGORITHM_EXCHANGE arrives while it prepares.
    * ``spoof_log``, ``spoof_response``: the kit's link hands the pod a
      LOG_MESSAGE, or an ONLINE_RESPONSE, that the modeller never sent, as the
      pod enters a state named in ``on``. The trace holds only what the modeller
      wrote; the kit's note says what it handed the pod.
    """

    DELAY_SEND = "delay_send"
    HOLD_RECV = "hold_recv"
    CANCEL = "cancel"
    DROP = "drop"
    GARBLE = "garble"
    SWALLOW = "swallow"
    # --- the kit as a misbehaving peer (chart coverage) ---
    END = "end"
    HOLD_UNTIL_ABORT = "hold_until_abort"
    LOG = "log"
    SKIP_MARKERS = "skip_markers"
    FAIL_SETUP = "fail_setup"
    SLOW_SETUP = "slow_setup"
    SPOOF_LOG = "spoof_log"
    SPOOF_RESPONSE = "spoof_response"


@final
@attrs.frozen
class Fault:
    """One deliberate fault on one pod's link.

    Args:
        pod: The pod whose link it affects.
        kind: What happens.
        on: The message types it matches.
        nth: It applies to the nth matching message (1 is the first); None
            applies it to every one.
        seconds: How long, for ``delay_send`` and ``hold_recv``.
        until: For ``hold_recv``: release the message as soon as this pod has
            answered the JOB_REQUEST (``seconds`` is then the longest wait).
    """

    pod: str
    kind: FaultKind
    on: tuple[str, ...]
    nth: int | None = 1
    seconds: float = 0.0
    until: str | None = None


@final
@attrs.frozen(kw_only=True)
class Echo:
    """A ``conformance.Echo`` job (spec section 5), and what a correct worker does with it."""

    items: tuple[str, ...] = ()
    batch_size: int = 1
    fail_in_batch: tuple[str, ...] = ()
    fail_alone: tuple[str, ...] = ()
    inference_limit: UsageLimit | None = None
    initial_setup: bool = False

    def protocol(self) -> EchoProtocol:
        """The same job as the runtime's protocol configuration."""
        return EchoProtocol(
            items=self.items,
            batch_size=self.batch_size,
            fail_in_batch=self.fail_in_batch,
            fail_alone=self.fail_alone,
            inference_limit=self.inference_limit,
            initial_setup=self.initial_setup,
        )

    def to_json(self) -> dict[str, Any]:
        """``JOB_REQUEST.body.protocol``."""
        return registry.dump(self.protocol())

    def predict(self, *, batched: bool, test_run: bool = False) -> EchoPrediction:
        """What a conforming worker sends: its results in order, its end, each item's fate."""
        return predict_echo(self.protocol(), batched=batched, test_run=test_run)


def _items(n: int) -> tuple[str, ...]:
    return tuple(f"i{k}" for k in range(n))


@final
@attrs.frozen(kw_only=True)
class Scenario:
    """One named case of the catalogue: a task, the kit's behaviour, and its expectations.

    Timings are in seconds and are multiplied by the run's ``time_scale``.

    Args:
        name: Unique within its role's catalogue.
        role: The role under test.
        description: What the case exercises, for people.
        echo: The job every pod gets, before ``overrides``.
        pods: The simulated pods.
        batched: The job's ``batched_execution``.
        test_run: The job's ``test_run``.
        overrides: Per pod, raw fields that replace those of the protocol JSON.
        require_all_pods: A rejection or a missing answer cancels the task.
        response_timeout_s: The modeller's wait for answers to JOB_REQUEST.
        task_start_timeout_s: The workers' wait for TASK_START (job options).
        soft_timeout_s: The workers' quiet time before ONLINE_CHECK (job options).
        hard_timeout_s: The workers' wait for the answer (job options).
        faults: What the kit does to the links on purpose.
        silent: Pods that never answer (kit pods, for ``role=modeller``).
        expect: For ``role=modeller``: a pod's outcome when the default rule
            (Echo's prediction, and cancellation after an abort) does not say it:
            ``"complete"``, ``"rejected"`` or ``"aborted:<REASON>"``; several
            allowed outcomes are separated by ``|``. For ``role=worker``: the
            worker's end, where the trace cannot judge it (a timeout).
        expect_online_check: Pods that must send ONLINE_CHECK (``role=worker``).
        first_line: For ``role=worker``: instead of a task, write this line
            (empty: nothing) and close the input; the worker must write nothing.
        omit_job_overrides: For ``role=modeller``: the control line leaves out
            ``job_overrides``, which is optional (spec section 6).
    """

    name: str
    role: Role
    description: str
    echo: Echo = Echo(items=_items(3))
    pods: tuple[str, ...] = ("kit/pod-a",)
    batched: bool = True
    test_run: bool = False
    overrides: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    require_all_pods: bool = False
    response_timeout_s: float = 5.0
    task_start_timeout_s: float = 10.0
    soft_timeout_s: float = 2.0
    hard_timeout_s: float = 3.0
    faults: tuple[Fault, ...] = ()
    silent: tuple[str, ...] = ()
    expect: Mapping[str, str] = attrs.field(factory=dict)
    expect_online_check: tuple[str, ...] = ()
    first_line: bytes | None = None
    omit_job_overrides: bool = False

    @property
    def unanswering(self) -> tuple[str, ...]:
        """Pods that never answer: the silent ones, and those whose link fails at the job."""
        failing = {
            f.pod
            for f in self.faults
            if f.kind in (FaultKind.DROP, FaultKind.GARBLE, FaultKind.END) and "JOB_REQUEST" in f.on
        }
        return self.silent + tuple(p for p in self.pods if p in failing and p not in self.silent)

    def protocol_json(self, pod: str) -> dict[str, Any]:
        """The protocol JSON pod ``pod`` gets: the Echo job with its overrides."""
        return {**self.echo.to_json(), **self.overrides.get(pod, {})}

    def job(self, pod: str, *, scale: float = 1.0) -> JobRequestBody:
        """The JOB_REQUEST body for ``pod``."""
        return JobRequestBody(
            protocol=self.protocol_json(pod),
            pod_identifiers=self.pods,
            batched_execution=self.batched,
            test_run=self.test_run,
            # The options a job may set are the ones the worker chart declares.
            options={name: getattr(self, name) * scale for name in shipped_chart("worker").options},
        )


# --- The catalogue ---------------------------------------------------------------------------

_A, _B, _C = "kit/pod-a", "kit/pod-b", "kit/pod-c"
_W = Role.WORKER
_M = Role.MODELLER


def _worker_catalogue() -> tuple[Scenario, ...]:
    """Cases for a worker under test; the kit is the modeller."""
    return (
        Scenario(
            name="single-run",
            role=_W,
            description="non-batched: NUMBER_OF_BATCHES(1), one run, TASK_COMPLETE",
            echo=Echo(items=_items(3)),
            batched=False,
        ),
        Scenario(
            name="single-run-test-run",
            role=_W,
            description="non-batched test_run: only the first item runs",
            echo=Echo(items=_items(3)),
            batched=False,
            test_run=True,
        ),
        Scenario(
            name="batches",
            role=_W,
            description="streaming batches, the last one short",
            echo=Echo(items=_items(7), batch_size=3),
        ),
        Scenario(
            name="batches-test-run",
            role=_W,
            description="streaming test_run: one batch of one item",
            echo=Echo(items=_items(7), batch_size=3),
            test_run=True,
        ),
        Scenario(
            name="initial-setup-batches",
            role=_W,
            description="ALGORITHM_EXCHANGE before the first NUMBER_OF_BATCHES (streaming)",
            echo=Echo(items=_items(4), batch_size=2, initial_setup=True),
        ),
        Scenario(
            name="initial-setup-single",
            role=_W,
            description="ALGORITHM_EXCHANGE before NUMBER_OF_BATCHES(1) (non-batched)",
            echo=Echo(items=_items(2), initial_setup=True),
            batched=False,
        ),
        Scenario(
            name="resilience",
            role=_W,
            description="a failed batch sends nothing; its items are retried one by one",
            echo=Echo(items=_items(8), batch_size=2, fail_in_batch=("i2", "i5")),
        ),
        Scenario(
            name="resilience-fail-alone",
            role=_W,
            description="an item that fails alone too is reported failed; the task completes",
            echo=Echo(items=_items(6), batch_size=2, fail_in_batch=("i0",), fail_alone=("i3",)),
        ),
        Scenario(
            name="nothing-succeeds",
            role=_W,
            description="every batch and every retry fails: TASK_ABORT(WORKER_ERROR)",
            echo=Echo(items=_items(4), batch_size=2, fail_alone=("i0", "i1", "i2", "i3")),
        ),
        Scenario(
            name="five-failed-batches",
            role=_W,
            description="5 consecutive failed batches: TASK_ABORT(WORKER_ERROR) at once",
            echo=Echo(items=_items(8), batch_size=1, fail_in_batch=_items(6)[1:]),
        ),
        Scenario(
            name="single-run-failure",
            role=_W,
            description="non-batched, an item fails: no resilience, TASK_ABORT(WORKER_ERROR)",
            echo=Echo(items=_items(3), fail_in_batch=("i1",)),
            batched=False,
        ),
        Scenario(
            name="limit-in-batch",
            role=_W,
            description="spec example: total 10, limit 20, a batch of 14 sends 10 then aborts",
            echo=Echo(items=_items(20), batch_size=14, inference_limit=UsageLimit(20, 10)),
        ),
        Scenario(
            name="limit-exact",
            role=_W,
            description="usage reaches the limit exactly: the whole batch, then LIMITS_EXCEEDED",
            echo=Echo(items=_items(6), batch_size=2, inference_limit=UsageLimit(4, 0)),
        ),
        Scenario(
            name="limit-already-over",
            role=_W,
            description="usage is over the limit already: empty results, then LIMITS_EXCEEDED",
            echo=Echo(items=_items(4), batch_size=2, inference_limit=UsageLimit(5, 7)),
        ),
        Scenario(
            name="limit-in-resilience",
            role=_W,
            description="the limit is reached while retrying items",
            echo=Echo(
                items=_items(6),
                batch_size=3,
                fail_in_batch=("i0",),
                inference_limit=UsageLimit(4, 0),
            ),
        ),
        Scenario(
            name="limit-single-run",
            role=_W,
            description="non-batched: the one run is cut at the limit",
            echo=Echo(items=_items(5), inference_limit=UsageLimit(3, 1)),
            batched=False,
        ),
        Scenario(
            name="no-data",
            role=_W,
            description="no items: JOB_ACCEPT, then TASK_ABORT(NO_DATA)",
            echo=Echo(items=()),
        ),
        Scenario(
            name="reject-batch-size",
            role=_W,
            description="batch_size 0: JOB_REJECT(TASK_SETUP_ERROR)",
            echo=Echo(items=_items(3), batch_size=0),
        ),
        Scenario(
            name="reject-duplicate-items",
            role=_W,
            description="duplicate item names: JOB_REJECT(TASK_SETUP_ERROR)",
            echo=Echo(items=("i0", "i1", "i0")),
        ),
        Scenario(
            name="reject-unknown-protocol",
            role=_W,
            description="an unknown protocol class: JOB_REJECT(TASK_SETUP_ERROR)",
            overrides={_A: {"class_name": "conformance.NoSuchProtocol"}},
        ),
        Scenario(
            name="three-pods",
            role=_W,
            description="three workers with different jobs pass the TASK_START barrier together",
            echo=Echo(items=_items(6), batch_size=2),
            pods=(_A, _B, _C),
            overrides={_B: {"items": ["b0", "b1", "b2"]}, _C: {"batch_size": 4}},
        ),
        Scenario(
            name="other-pod-aborts",
            role=_W,
            description="one worker hits its limit; the modeller cancels the other",
            echo=Echo(items=_items(8), batch_size=2),
            pods=(_A, _B),
            overrides={_B: {"inference_limit": {"limit": 1, "total_usage": 0}}},
        ),
        Scenario(
            name="cancel-during-batches",
            role=_W,
            description="the modeller cancels mid-batches: TASK_ABORT(CANCELLED_BY_MODELLER)",
            echo=Echo(items=_items(12), batch_size=1),
            faults=(Fault(_A, FaultKind.CANCEL, ("CURRENT_BATCH_ID",), nth=2),),
        ),
        Scenario(
            name="cancel-before-start",
            role=_W,
            description="the modeller cancels when the worker's TASK_START arrives",
            echo=Echo(items=_items(4), batch_size=2),
            faults=(Fault(_A, FaultKind.CANCEL, ("TASK_START",)),),
        ),
        Scenario(
            name="cancel-after-batches",
            role=_W,
            description='the modeller cancels after BATCHES_COMPLETE "TASK_COMPLETE"',
            echo=Echo(items=_items(4), batch_size=2),
            faults=(Fault(_A, FaultKind.CANCEL, ("BATCHES_COMPLETE",), nth=2),),
        ),
        Scenario(
            name="cancel-twice",
            role=_W,
            description="a second reason to cancel (an abort, then the user) sends one cancel",
            echo=Echo(items=_items(12), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"inference_limit": {"limit": 1, "total_usage": 0}}},
            faults=(Fault(_B, FaultKind.CANCEL, ("TASK_ABORT",)),),
        ),
        Scenario(
            name="late-accept",
            role=_W,
            description="a JOB_ACCEPT after the response timeout is answered with TASK_CANCEL",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=1.0),
                Fault(_A, FaultKind.HOLD_RECV, ("BATCHES_COMPLETE",), nth=2, seconds=3.0, until=_B),
            ),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="late-reject",
            role=_W,
            description="a JOB_REJECT after the response timeout",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            overrides={_B: {"batch_size": 0}},
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=1.0),
                Fault(_A, FaultKind.HOLD_RECV, ("BATCHES_COMPLETE",), nth=2, seconds=3.0, until=_B),
            ),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="late-after-end",
            role=_W,
            description="the job request arrives after the task ended: nothing is owed",
            echo=Echo(items=_items(2), batch_size=2),
            pods=(_A, _B),
            faults=(Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=1.2),),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="online-check-before-complete",
            role=_W,
            description="a worker waiting for TASK_COMPLETE checks that the modeller is alive",
            echo=Echo(items=_items(2), batch_size=1),
            pods=(_A, _B),
            faults=(Fault(_B, FaultKind.HOLD_RECV, ("BATCHES_COMPLETE",), nth=2, seconds=0.6),),
            expect_online_check=(_A,),
            soft_timeout_s=0.1,
            hard_timeout_s=2.0,
        ),
        Scenario(
            name="online-check-in-setup",
            role=_W,
            description="a worker waiting for ALGORITHM_EXCHANGE checks that the modeller is alive",
            echo=Echo(items=_items(2), batch_size=1, initial_setup=True),
            faults=(Fault(_A, FaultKind.DELAY_SEND, ("ALGORITHM_EXCHANGE",), seconds=0.5),),
            expect_online_check=(_A,),
            soft_timeout_s=0.1,
            hard_timeout_s=2.0,
        ),
        Scenario(
            name="require-all-pods",
            role=_W,
            description="require_all_pods: a rejection cancels the worker that accepted",
            echo=Echo(items=_items(6), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"items": ["x", "x"]}},
            require_all_pods=True,
            faults=(Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=0.3),),
        ),
        Scenario(
            name="abort-before-other-answers",
            role=_W,
            description="a worker aborts before the other has answered: that one is owed nothing",
            echo=Echo(items=_items(6), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"items": []}},
            faults=(Fault(_A, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=0.5),),
        ),
        Scenario(
            name="link-drops",
            role=_W,
            description="the link drops mid-task: the worker aborts (MODELLER_TIMEOUT) and exits",
            echo=Echo(items=_items(10), batch_size=1),
            pods=(_A, _B),
            faults=(Fault(_A, FaultKind.DROP, ("CURRENT_BATCH_ID",), nth=2),),
        ),
        Scenario(
            name="garbled-line",
            role=_W,
            description="a line arrives garbled: the modeller drops that worker, cancels the other",
            echo=Echo(items=_items(10), batch_size=1),
            pods=(_A, _B),
            faults=(Fault(_A, FaultKind.GARBLE, ("EVALUATION_RESULTS",), nth=2),),
        ),
        Scenario(
            name="cancel-confirmation-lost",
            role=_W,
            description="the TASK_ABORT answering a cancel is lost; the worker still exits",
            echo=Echo(items=_items(10), batch_size=1),
            faults=(
                Fault(_A, FaultKind.CANCEL, ("CURRENT_BATCH_ID",), nth=2),
                Fault(_A, FaultKind.SWALLOW, ("TASK_ABORT",)),
            ),
        ),
        Scenario(
            name="answer-garbled",
            role=_W,
            description="the JOB_ACCEPT arrives garbled: the modeller gives up on that pod",
            echo=Echo(items=_items(3)),
            pods=(_A, _B),
            faults=(Fault(_B, FaultKind.GARBLE, ("JOB_ACCEPT",)),),
        ),
        Scenario(
            name="answer-lost",
            role=_W,
            description="the link drops with the JOB_ACCEPT: the worker must notice and exit",
            echo=Echo(items=_items(3)),
            pods=(_A, _B),
            faults=(Fault(_B, FaultKind.DROP, ("JOB_ACCEPT",)),),
        ),
        Scenario(
            name="late-answer-garbled",
            role=_W,
            description="a late JOB_ACCEPT arrives garbled",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=1.0),
                Fault(_B, FaultKind.GARBLE, ("JOB_ACCEPT",)),
                Fault(_A, FaultKind.HOLD_RECV, ("BATCHES_COMPLETE",), nth=2, seconds=3.0, until=_B),
            ),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="late-answer-lost",
            role=_W,
            description="the link drops with a late JOB_ACCEPT",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=1.0),
                Fault(_B, FaultKind.DROP, ("JOB_ACCEPT",)),
                Fault(_A, FaultKind.HOLD_RECV, ("BATCHES_COMPLETE",), nth=2, seconds=3.0, until=_B),
            ),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="invalid-first-line",
            role=_W,
            description="a first line that is not a JOB_REQUEST: write nothing, exit non-zero",
            first_line=b'{"v": 1, "type": "HELLO"}\n',
        ),
        Scenario(
            name="input-ends-before-job",
            role=_W,
            description="the input ends before any JOB_REQUEST: write nothing and exit",
            first_line=b"",
        ),
    )


def _modeller_catalogue() -> tuple[Scenario, ...]:
    """Cases for a modeller under test; the kit plays every pod."""
    return (
        Scenario(
            name="single-run",
            role=_M,
            description="one pod, non-batched",
            echo=Echo(items=_items(3)),
            batched=False,
        ),
        Scenario(
            name="batches",
            role=_M,
            description="one pod, streaming batches",
            echo=Echo(items=_items(7), batch_size=3),
        ),
        Scenario(
            name="two-pods",
            role=_M,
            description="two pods: TASK_START only after both are ready, TASK_COMPLETE after both",
            echo=Echo(items=_items(6), batch_size=2),
            pods=(_A, _B),
        ),
        Scenario(
            name="three-pods-overrides",
            role=_M,
            description="job_overrides give each pod its own items",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B, _C),
            overrides={_B: {"items": ["b0", "b1", "b2"]}, _C: {"batch_size": 3}},
        ),
        Scenario(
            name="resilience",
            role=_M,
            description="failed batches and retried items, with results filed by meta",
            echo=Echo(items=_items(8), batch_size=2, fail_in_batch=("i2",), fail_alone=("i5",)),
            pods=(_A, _B),
        ),
        Scenario(
            name="initial-setup",
            role=_M,
            description="ALGORITHM_EXCHANGE to each pod as its JOB_ACCEPT arrives",
            echo=Echo(items=_items(4), batch_size=2, initial_setup=True),
            pods=(_A, _B),
        ),
        Scenario(
            name="test-run",
            role=_M,
            description="test_run: one item per pod",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            test_run=True,
        ),
        Scenario(
            name="slow-pod-barrier",
            role=_M,
            description="one pod is slow to send TASK_START; nobody gets TASK_START before it",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            faults=(Fault(_B, FaultKind.DELAY_SEND, ("TASK_START",), seconds=0.4),),
        ),
        Scenario(
            name="slow-pod-completion",
            role=_M,
            description="one pod finishes late; the other waits, checks online, then completes",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            # b gets its TASK_START late, so a waits for TASK_COMPLETE meanwhile.
            faults=(Fault(_B, FaultKind.HOLD_RECV, ("TASK_START",), seconds=1.0),),
            soft_timeout_s=0.15,
            hard_timeout_s=0.5,
        ),
        Scenario(
            name="pod-aborts",
            role=_M,
            description="one pod hits its limit: the modeller cancels the other",
            echo=Echo(items=_items(10), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"inference_limit": {"limit": 2, "total_usage": 0}}},
            faults=(Fault(_A, FaultKind.DELAY_SEND, ("BATCHES_COMPLETE",), nth=2, seconds=0.5),),
        ),
        Scenario(
            name="five-failed-batches",
            role=_M,
            description="a pod aborts after 5 consecutive failed batches; the other is cancelled",
            echo=Echo(items=_items(8), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"fail_in_batch": ["i1", "i2", "i3", "i4", "i5"]}},
        ),
        Scenario(
            name="pod-aborts-before-start",
            role=_M,
            description="one pod has no data: the other is cancelled, nobody gets TASK_START",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            overrides={_B: {"items": []}},
        ),
        Scenario(
            name="pod-fails",
            role=_M,
            description="one pod's run fails (WORKER_ERROR): the other is cancelled",
            echo=Echo(items=_items(3)),
            pods=(_A, _B),
            batched=False,
            overrides={_B: {"fail_in_batch": ["i1"]}},
        ),
        Scenario(
            name="pod-rejects",
            role=_M,
            description="one pod rejects the job; the other completes alone",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            overrides={_B: {"batch_size": 0}},
        ),
        Scenario(
            name="all-reject",
            role=_M,
            description="every pod rejects: the task ends and the modeller exits",
            echo=Echo(items=_items(4), batch_size=0),
            pods=(_A, _B),
        ),
        Scenario(
            name="require-all-pods",
            role=_M,
            description="require_all_pods and a rejection: the pod that accepted is cancelled",
            echo=Echo(items=_items(6), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"batch_size": 0}},
            require_all_pods=True,
            # b answers after a, so a is accepted when the rejection comes.
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_REJECT",), seconds=0.3),
                Fault(_A, FaultKind.DELAY_SEND, ("BATCHES_COMPLETE",), nth=2, seconds=0.8),
            ),
        ),
        Scenario(
            name="silent-pod",
            role=_M,
            description="a pod never answers: after the response timeout the others run",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B, _C),
            silent=(_C,),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="late-accept",
            role=_M,
            description="a JOB_ACCEPT after the response timeout is answered with TASK_CANCEL",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            response_timeout_s=0.5,
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_ACCEPT",), seconds=1.0),
                Fault(_A, FaultKind.DELAY_SEND, ("BATCHES_COMPLETE",), nth=2, seconds=1.6),
            ),
            expect={_B: "aborted:CANCELLED_BY_MODELLER"},
        ),
        Scenario(
            name="late-accept-after-end",
            role=_M,
            description="a JOB_ACCEPT after the task ended is owed nothing; the modeller exits",
            echo=Echo(items=_items(2), batch_size=2),
            pods=(_A, _B),
            response_timeout_s=0.5,
            faults=(Fault(_B, FaultKind.DELAY_SEND, ("JOB_ACCEPT",), seconds=1.8),),
            expect={_B: "aborted:MODELLER_TIMEOUT|aborted:CANCELLED_BY_MODELLER"},
        ),
        Scenario(
            name="online-check-in-setup",
            role=_M,
            description="a pod waiting for ALGORITHM_EXCHANGE checks online; it is answered",
            echo=Echo(items=_items(2), batch_size=1, initial_setup=True),
            faults=(Fault(_A, FaultKind.HOLD_RECV, ("ALGORITHM_EXCHANGE",), seconds=0.5),),
            soft_timeout_s=0.15,
        ),
        Scenario(
            name="setup-timeout",
            role=_M,
            description="a pod gives up waiting for its setup values: the other is cancelled",
            echo=Echo(items=_items(4), batch_size=2, initial_setup=True),
            pods=(_A, _B),
            faults=(
                Fault(
                    _A,
                    FaultKind.HOLD_RECV,
                    ("ALGORITHM_EXCHANGE", "ONLINE_RESPONSE"),
                    nth=None,
                    seconds=2.0,
                ),
            ),
            expect={_A: "aborted:MODELLER_TIMEOUT"},
            soft_timeout_s=0.2,
            hard_timeout_s=0.4,
        ),
        Scenario(
            name="complete-delayed",
            role=_M,
            description="a pod gets TASK_COMPLETE late: it checks online, and ends when the"
            " modeller, done, exits",
            echo=Echo(items=_items(2), batch_size=2),
            faults=(
                Fault(
                    _A,
                    FaultKind.HOLD_RECV,
                    ("TASK_COMPLETE", "ONLINE_RESPONSE"),
                    nth=None,
                    seconds=2.0,
                ),
            ),
            expect={_A: "aborted:MODELLER_TIMEOUT"},
            soft_timeout_s=0.2,
            hard_timeout_s=0.4,
        ),
        Scenario(
            name="start-timeout-single",
            role=_M,
            description="a non-batched pod gives up waiting for TASK_START",
            echo=Echo(items=_items(2)),
            batched=False,
            task_start_timeout_s=0.3,
            faults=(Fault(_A, FaultKind.HOLD_RECV, ("TASK_START",), seconds=2.0),),
            expect={_A: "aborted:MODELLER_TIMEOUT"},
        ),
        Scenario(
            name="start-timeout-batches",
            role=_M,
            description="a streaming pod gives up waiting for TASK_START; the other is cancelled",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            task_start_timeout_s=0.3,
            faults=(Fault(_A, FaultKind.HOLD_RECV, ("TASK_START",), seconds=2.0),),
            expect={_A: "aborted:MODELLER_TIMEOUT"},
        ),
    )


# --- Cases for rules of the rule book that no case above provokes ------------------------------


def _worker_rule_cases() -> tuple[Scenario, ...]:
    """Worker cases added for a rule of the rule book (the rule is in each description)."""
    return (
        Scenario(
            name="start-timeout",
            role=_W,
            description="W-4.28: no TASK_START within task_start_timeout_s of the worker's own:"
            " TASK_ABORT(MODELLER_TIMEOUT)",
            echo=Echo(items=_items(4), batch_size=2),
            task_start_timeout_s=0.3,
            faults=(Fault(_A, FaultKind.DELAY_SEND, ("TASK_START",), seconds=1.2),),
            expect={_A: "aborted:MODELLER_TIMEOUT"},
        ),
        Scenario(
            name="slow-start",
            role=_W,
            description="W-4.28: TASK_START comes late but within task_start_timeout_s: the"
            " worker waits for it, whatever its soft and hard timeouts",
            echo=Echo(items=_items(4), batch_size=2),
            task_start_timeout_s=4.0,
            soft_timeout_s=0.1,
            hard_timeout_s=0.2,
            faults=(Fault(_A, FaultKind.DELAY_SEND, ("TASK_START",), seconds=0.8),),
            expect={_A: "complete"},
        ),
    )


def _modeller_rule_cases() -> tuple[Scenario, ...]:
    """Modeller cases added for a rule of the rule book (the rule is in each description)."""
    return (
        Scenario(
            name="no-job-overrides",
            role=_M,
            description="M-6.2: a control line without job_overrides (it is optional)",
            echo=Echo(items=_items(3), batch_size=2),
            omit_job_overrides=True,
        ),
        Scenario(
            name="slow-answer",
            role=_M,
            description="M-4.18: a pod answers late but within the response timeout: the"
            " modeller waits for it, and it runs",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            response_timeout_s=4.0,
            faults=(Fault(_B, FaultKind.DELAY_SEND, ("JOB_ACCEPT",), seconds=0.8),),
        ),
    )


# --- Chart coverage: the kit as a misbehaving peer ---------------------------------------------
# Cases that reach the transitions of the kit's own chart that the cases above do not: the
# kit's modeller logging, and the kit's pods whose links fail, that skip optional markers,
# whose setup fails, that log, or that are handed messages the modeller never sent.


def _worker_coverage_cases() -> tuple[Scenario, ...]:
    return (
        Scenario(
            name="modeller-logs",
            role=_W,
            description="the modeller sends LOG_MESSAGE while the worker prepares, runs batches"
            " and waits for TASK_COMPLETE",
            echo=Echo(items=_items(4), batch_size=2),
            faults=(Fault(_A, FaultKind.LOG, ("accepted", "running_batch", "final_step")),),
        ),
    )


def _modeller_coverage_cases() -> tuple[Scenario, ...]:
    _D = "kit/pod-d"
    return (
        Scenario(
            name="links-fail-at-the-job",
            role=_M,
            description="three pods' links fail as the JOB_REQUEST comes (lost, garbled, input"
            " ended after it): they never answer, the fourth pod runs alone",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B, _C, _D),
            response_timeout_s=0.5,
            faults=(
                Fault(_B, FaultKind.DROP, ("JOB_REQUEST",)),
                Fault(_C, FaultKind.GARBLE, ("JOB_REQUEST",)),
                Fault(_D, FaultKind.END, ("JOB_REQUEST",)),
            ),
            expect={_B: "closed", _C: "closed", _D: "closed"},
        ),
        Scenario(
            name="pod-skips-markers",
            role=_M,
            description="a pod leaves out the optional PREPARING_DATA and PREPARING_DATA_BATCHES"
            " and sends LOG_MESSAGE as it runs (it is also handed one the modeller never sent)",
            echo=Echo(items=_items(6), batch_size=2),
            faults=(
                Fault(_A, FaultKind.SKIP_MARKERS, ()),
                Fault(_A, FaultKind.LOG, ("accepted", "running_batch")),
                Fault(_A, FaultKind.SPOOF_LOG, ("running_batch",)),
            ),
        ),
        Scenario(
            name="slow-preparation",
            role=_M,
            description="a pod is slow to prepare: the ALGORITHM_EXCHANGE arrives before it has"
            " sent CONFIGURING_TASK",
            echo=Echo(items=_items(4), batch_size=2, initial_setup=True),
            faults=(Fault(_A, FaultKind.SLOW_SETUP, (), seconds=0.5),),
        ),
        Scenario(
            name="pod-setup-fails",
            role=_M,
            description="a pod's setup raises (WORKER_ERROR, its job fails anyway): the other"
            " is cancelled",
            echo=Echo(items=_items(8), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"fail_alone": list(_items(8))}},
            faults=(Fault(_B, FaultKind.FAIL_SETUP, ()),),
        ),
        Scenario(
            name="garbled-start",
            role=_M,
            description="a pod's TASK_START arrives garbled: it aborts with PROTOCOL_ERROR, and"
            " the other is cancelled",
            echo=Echo(items=_items(8), batch_size=1),
            pods=(_A, _B),
            faults=(Fault(_B, FaultKind.GARBLE, ("TASK_START",)),),
            expect={_B: "aborted:PROTOCOL_ERROR"},
        ),
        Scenario(
            name="cancel-crosses-abort",
            role=_M,
            description="a pod with no data aborts; the others' TASK_CANCEL reaches them only as"
            " they give up on TASK_START (as is, garbled, or with the link's end)",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B, _C, _D),
            overrides={_B: {"items": []}},
            task_start_timeout_s=0.3,
            faults=(
                Fault(_A, FaultKind.HOLD_UNTIL_ABORT, ("TASK_CANCEL",), seconds=2.0),
                Fault(_A, FaultKind.LOG, ("aborting",)),
                Fault(_C, FaultKind.HOLD_UNTIL_ABORT, ("TASK_CANCEL",), seconds=2.0),
                Fault(_C, FaultKind.GARBLE, ("TASK_CANCEL",)),
                Fault(_D, FaultKind.HOLD_UNTIL_ABORT, ("TASK_CANCEL",), seconds=2.0),
                Fault(_D, FaultKind.DROP, ("TASK_CANCEL",)),
            ),
            expect={
                pod: "aborted:MODELLER_TIMEOUT|aborted:CANCELLED_BY_MODELLER"
                for pod in (_A, _C, _D)
            },
        ),
        Scenario(
            name="spoofed-in-setup",
            role=_M,
            description="a pod waiting for ALGORITHM_EXCHANGE is handed a LOG_MESSAGE and an"
            " ONLINE_RESPONSE the modeller never sent; it checks online again, and runs",
            echo=Echo(items=_items(2), batch_size=1, initial_setup=True),
            soft_timeout_s=0.15,
            hard_timeout_s=2.0,
            faults=(
                Fault(_A, FaultKind.HOLD_RECV, ("ALGORITHM_EXCHANGE",), seconds=1.0),
                Fault(_A, FaultKind.SPOOF_LOG, ("setup_listening",)),
                Fault(_A, FaultKind.SPOOF_RESPONSE, ("setup_listening",), nth=2),
                Fault(_A, FaultKind.SPOOF_LOG, ("setup_checking",)),
                Fault(_A, FaultKind.SPOOF_RESPONSE, ("setup_checking",), nth=2),
            ),
        ),
        Scenario(
            name="spoofed-before-complete",
            role=_M,
            description="a pod waiting for TASK_COMPLETE (the other is slow) is handed a"
            " LOG_MESSAGE and an ONLINE_RESPONSE the modeller never sent; both complete",
            echo=Echo(items=_items(2), batch_size=1),
            pods=(_A, _B),
            soft_timeout_s=0.15,
            hard_timeout_s=2.0,
            faults=(
                Fault(_B, FaultKind.HOLD_RECV, ("TASK_START",), seconds=1.0),
                Fault(_A, FaultKind.SPOOF_LOG, ("complete_listening",)),
                Fault(_A, FaultKind.SPOOF_RESPONSE, ("complete_listening",), nth=2),
                Fault(_A, FaultKind.SPOOF_LOG, ("complete_checking",)),
                Fault(_A, FaultKind.SPOOF_RESPONSE, ("complete_checking",), nth=2),
            ),
        ),
        Scenario(
            name="online-response-delayed",
            role=_M,
            description="a pod waiting for TASK_COMPLETE gets the answers to its ONLINE_CHECK"
            " too late and gives up (MODELLER_TIMEOUT): the slow other pod is cancelled",
            echo=Echo(items=_items(2), batch_size=1),
            pods=(_A, _B),
            soft_timeout_s=0.15,
            hard_timeout_s=0.4,
            faults=(
                Fault(_B, FaultKind.HOLD_RECV, ("TASK_START",), seconds=1.5),
                Fault(_A, FaultKind.HOLD_RECV, ("ONLINE_RESPONSE",), nth=None, seconds=2.0),
            ),
            expect={_A: "aborted:MODELLER_TIMEOUT"},
        ),
        Scenario(
            name="nothing-succeeds",
            role=_M,
            description="every batch and every retry of a pod fails: it aborts with"
            " WORKER_ERROR after its resilience phase, and the other is cancelled",
            echo=Echo(items=_items(6), batch_size=1),
            pods=(_A, _B),
            overrides={
                _B: {
                    "items": ["b0", "b1", "b2", "b3"],
                    "batch_size": 2,
                    "fail_alone": ["b0", "b1", "b2", "b3"],
                }
            },
            faults=(Fault(_A, FaultKind.DELAY_SEND, ("BATCHES_COMPLETE",), nth=2, seconds=0.5),),
        ),
    )


@functools.cache
def catalogue(role: Role) -> tuple[Scenario, ...]:
    """The named scenarios for testing an implementation of ``role``."""
    if role is Role.WORKER:
        return _worker_catalogue() + _worker_rule_cases() + _worker_coverage_cases()
    return _modeller_catalogue() + _modeller_rule_cases() + _modeller_coverage_cases()


def depends_on_timing(scenario: Scenario) -> bool:
    """Whether a case's meaning depends on timing, so that the kit runs it alone.

    Cases with a fault, a short response timeout or short worker timeouts check
    what happens when something is late or lost, often against one of the kit's
    short waits; another case running beside them could make something late
    that should not be.
    """
    defaults = Scenario(name="", role=scenario.role, description="")
    return (
        bool(scenario.faults)
        or scenario.response_timeout_s != defaults.response_timeout_s
        or scenario.task_start_timeout_s != defaults.task_start_timeout_s
        or scenario.soft_timeout_s != defaults.soft_timeout_s
        or scenario.hard_timeout_s != defaults.hard_timeout_s
        or bool(scenario.silent or scenario.expect_online_check)
    )


# --- Generated scenarios ---------------------------------------------------------------------


def generated_scenarios(role: Role, *, seed: int, count: int) -> tuple[Scenario, ...]:
    """``count`` Hypothesis-generated scenarios, the same ones for the same seed."""
    if count <= 0:
        return ()
    try:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as with_seed
        from hypothesis import strategies as st
    except ImportError:
        raise ConfigError(
            "generated scenarios need Hypothesis: pip install 'fsm-protocol[kit]', or run only the"
            " named scenarios (--generated 0)"
        ) from None

    names = st.sampled_from(_items(10))

    @st.composite
    def jobs(draw: st.DrawFn) -> Scenario:
        items = tuple(draw(st.lists(names, max_size=8, unique=True)))
        failing = (
            st.lists(st.sampled_from(items), max_size=3, unique=True) if items else st.just([])
        )
        limit = draw(
            st.none()
            | st.builds(
                UsageLimit,
                limit=st.integers(1, 12),
                total_usage=st.integers(0, 8),
            )
        )
        echo = Echo(
            items=items,
            batch_size=draw(st.integers(1, 4)),
            fail_in_batch=tuple(draw(failing)),
            fail_alone=tuple(draw(failing)),
            inference_limit=limit,
            initial_setup=draw(st.booleans()),
        )
        pods = (_A, _B, _C)[: draw(st.integers(1, 3))]
        overrides = {}
        for pod in pods[1:]:
            if draw(st.booleans()):
                overrides[pod] = {"items": list(draw(st.lists(names, max_size=6, unique=True)))}
        return Scenario(
            name="generated",
            role=role,
            description="",
            echo=echo,
            pods=pods,
            batched=draw(st.booleans()),
            test_run=draw(st.integers(0, 5)) == 0,
            overrides=overrides,
        )

    drawn: list[Scenario] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @with_seed(seed)
    @given(jobs())
    def collect(scenario: Scenario) -> None:
        drawn.append(scenario)

    collect()
    result = []
    for number, scenario in enumerate(drawn[:count], start=1):
        prediction = scenario.echo.predict(batched=scenario.batched, test_run=scenario.test_run)
        outcome = "completes" if prediction.complete else f"aborts {prediction.abort_reason}"
        described = (
            f"Hypothesis seed {seed} #{number}: {len(scenario.pods)} pod(s),"
            f" {len(scenario.echo.items)} items, batch_size {scenario.echo.batch_size},"
            f" {'batched' if scenario.batched else 'non-batched'}; pod-a {outcome}"
        )
        result.append(attrs.evolve(scenario, name=f"generated-{number}", description=described))
    return tuple(result)


def select_scenarios(
    role: Role, names: Sequence[str | Scenario] | None, *, seed: int, generated: int
) -> tuple[Scenario, ...]:
    """The catalogue (or the named part of it) followed by the generated scenarios.

    Raises:
        ConfigError: A name is neither in the catalogue nor ``generated-<n>``.
    """
    named = {s.name: s for s in catalogue(role)}
    if names is None:
        return catalogue(role) + generated_scenarios(role, seed=seed, count=generated)
    wanted_generated = [n for n in names if isinstance(n, str) and n.startswith("generated-")]
    count = generated
    for name in wanted_generated:
        number = name.removeprefix("generated-")
        if not number.isdigit() or int(number) < 1:
            raise ConfigError(
                f"unknown scenario {name!r}: generated scenarios are generated-1, generated-2, ..."
            )
        count = max(count, int(number))
    made = {s.name: s for s in generated_scenarios(role, seed=seed, count=count)}
    chosen: list[Scenario] = []
    for item in names:
        if isinstance(item, Scenario):
            chosen.append(item)
        elif item in named:
            chosen.append(named[item])
        elif item in made:
            chosen.append(made[item])
        else:
            close = difflib.get_close_matches(item, list(named), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown {role.value} scenario {item!r}{hint} (see `fsm-protocol conform"
                f" --role {role.value} --list`)"
            )
    if not wanted_generated:
        chosen += [s for s in made.values() if s not in chosen][:generated]
    return tuple(chosen)


# --- Which fault applies to a message ---------------------------------------------------------


class Matcher:
    """Counts messages per fault and says which fault applies to a message."""

    def __init__(self, faults: Iterable[Fault]) -> None:
        self.faults = list(faults)
        self.seen = [0] * len(self.faults)

    def match(self, type_: str, kinds: frozenset[FaultKind]) -> list[Fault]:
        found = []
        for i, fault in enumerate(self.faults):
            if fault.kind in kinds and type_ in fault.on:
                self.seen[i] += 1
                if fault.nth is None or self.seen[i] == fault.nth:
                    found.append(fault)
        return found
