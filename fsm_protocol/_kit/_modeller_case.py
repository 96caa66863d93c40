"""Running a modeller under test: the kit plays every pod, after the scenario line."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Sequence
from typing import Any, Final, final

import attrs
import trio

from .._algo._protocols import (
    ECHO,
    EchoProtocol,
    ProtocolRegistry,
    WorkerContext,
    WorkerPlan,
)
from .._base._errors import BrokenTransportError, DecodeError, TransportError
from .._core._engine import Step
from .._runtime._logs import LogHandle
from .._runtime._transport import Transport
from .._runtime._worker import Pod, WorkerReport, run_worker_for_kit
from .._wire._messages import LogMessageBody, Message, MessageType, ScenarioBody, encode
from ._endpoints import ModellerEndpoint, ModellerLauncher, clean_exit_statuses
from ._limits import DRAIN_WAIT, EXIT_WAIT, KIT_MODELLER, KIT_SENDER, MAX_LINES
from ._owed import OwedWatch
from ._recording import Recorder
from ._scenarios import Fault, FaultKind, Matcher, Scenario

_POD_SEND: Final = frozenset({FaultKind.DELAY_SEND})
_POD_RECV: Final = frozenset(
    {
        FaultKind.HOLD_RECV,
        FaultKind.HOLD_UNTIL_ABORT,
        FaultKind.DROP,
        FaultKind.GARBLE,
        FaultKind.END,
    }
)
# Matched on the states the pod's machine enters, not on messages.
_POD_ENTER: Final = frozenset({FaultKind.LOG, FaultKind.SPOOF_LOG, FaultKind.SPOOF_RESPONSE})


@final
class _PodLink:
    """A kit pod's side of its conversation with the modeller under test.

    Its own messages are recorded as they go on the wire (after any delay),
    so the trace shows what the modeller could have known. A held message
    stalls the link (what comes after waits too, as on one stream); a message
    the kit spoofs goes ahead of it, with the modeller's later ``seq`` shifted
    up so that the pod still sees them rise.
    """

    def __init__(
        self,
        pod: str,
        inner: Transport,
        faults: Iterable[Fault],
        recorder: Recorder,
        scale: float,
        logs: LogHandle,
    ) -> None:
        self.pod = pod
        self.inner = inner
        self.faults = tuple(faults)
        self.matcher = Matcher(self.faults)
        self.entering = Matcher(self.faults)
        self.recorder = recorder
        self.scale = scale
        self.logs = logs
        self.aborting = trio.Event()
        self.ended = False
        self.held: tuple[Message, frozenset[FaultKind], float] | None = None
        self.spoofed: collections.deque[Message] = collections.deque()
        self.waiting: trio.CancelScope | None = None
        self.last: Message | None = None
        self.shift = 0
        self.token = ""

    async def send(self, message: Message) -> None:
        for fault in self.matcher.match(message.type.value, _POD_SEND):
            await trio.sleep(fault.seconds * self.scale)
        if message.type is MessageType.ONLINE_CHECK and isinstance(message.body, str):
            self.token = message.body
        raw = encode(message)
        entries = self.recorder.entries
        at = len(entries)
        self.recorder.line(raw)
        try:
            await self.inner.send(message)
        except (TransportError, trio.BrokenResourceError, trio.ClosedResourceError):
            # It never reached the modeller (gone already): not part of the conversation.
            if at < len(entries) and entries[at] == raw:
                del entries[at]
            self.recorder.undelivered.add(self.pod)
            raise

    def entered(self, states: Iterable[str]) -> None:
        """The pod's machine entered ``states``: release, log or spoof as the faults say."""
        for state in states:
            if state == "aborting":
                self.aborting.set()
            for fault in self.entering.match(state, _POD_ENTER):
                if fault.kind is FaultKind.LOG:
                    self.logs.log(self.pod, f"conformance kit: pod {self.pod} entered {state}")
                else:
                    self._spoof(fault.kind, state)

    def _spoof(self, kind: FaultKind, state: str) -> None:
        last = self.last
        if last is None:
            return
        body: LogMessageBody | str
        if kind is FaultKind.SPOOF_LOG:
            type_, body = MessageType.LOG_MESSAGE, LogMessageBody("INFO", "not from the modeller")
        else:
            type_, body = MessageType.ONLINE_RESPONSE, self.token or f"{self.pod}-spoofed"
        self.shift += 1
        seq = (self.spoofed[-1] if self.spoofed else last).seq + 1
        fake = Message.make(
            type_, task_id=last.task_id, sender=last.sender, recipient=self.pod, seq=seq, body=body
        )
        self.recorder.note(self.pod, f"the kit hands it a {type_.value} the modeller never sent")
        self.spoofed.append(fake)
        if self.waiting is not None:
            self.waiting.cancel()

    async def receive(self) -> Message:
        while True:
            if self.spoofed:
                fake = self.spoofed.popleft()
                self.last = fake
                return fake
            if self.ended:
                raise trio.EndOfChannel
            if self.held is None:
                with trio.CancelScope() as scope:
                    self.waiting = scope
                    message = await self.inner.receive()
                self.waiting = None
                if scope.cancelled_caught:
                    continue  # a spoofed message goes first; nothing was taken from the link
                faults = self.matcher.match(message.type.value, _POD_RECV)
                release = trio.current_time()
                for fault in faults:
                    if fault.kind in (FaultKind.HOLD_RECV, FaultKind.HOLD_UNTIL_ABORT):
                        release = max(release, trio.current_time() + fault.seconds * self.scale)
                self.held = (message, frozenset(f.kind for f in faults), release)
            message, kinds, release = self.held
            # A stall, not a reordering: what comes after waits too, as on one stream.
            with trio.CancelScope() as scope:
                self.waiting = scope
                with trio.move_on_at(release):
                    if FaultKind.HOLD_UNTIL_ABORT in kinds:
                        await self.aborting.wait()
                    elif FaultKind.HOLD_RECV in kinds:
                        await trio.sleep_forever()
            self.waiting = None
            if scope.cancelled_caught:
                continue  # a spoofed message goes ahead of the held one
            self.held = None
            if self.shift:
                # The spoofed messages took seq numbers: the modeller's rise above them.
                message = attrs.evolve(message, seq=message.seq + self.shift)
            self.last = message
            return self._deliver(message, kinds)

    def _deliver(self, message: Message, kinds: frozenset[FaultKind]) -> Message:
        what = message.type.value
        if FaultKind.DROP in kinds:
            self.recorder.note(self.pod, f"its {what} is lost, and its input ends")
            self.ended = True
            raise trio.EndOfChannel
        if FaultKind.GARBLE in kinds:
            self.recorder.note(self.pod, f"its {what} arrives garbled")
            raise DecodeError(f"kit fault: {what} garbled on purpose")
        if FaultKind.END in kinds:
            self.recorder.note(self.pod, f"its input ends after its {what}")
            self.ended = True
        return message

    async def aclose(self) -> None:
        await self.inner.aclose()


def _pod_registry(faults: Iterable[Fault], scale: float) -> ProtocolRegistry | None:
    """The kit pod's protocols: Echo, or an Echo whose setup fails or takes its time."""
    fail = any(f.kind is FaultKind.FAIL_SETUP for f in faults)
    delay = sum(f.seconds for f in faults if f.kind is FaultKind.SLOW_SETUP) * scale
    if not fail and not delay:
        return None

    def plan(config: EchoProtocol, context: WorkerContext) -> WorkerPlan:
        echo = ECHO.worker(config, context)
        return attrs.evolve(echo, algorithm=_KitEcho(echo.algorithm, fail=fail, delay=delay))

    return ProtocolRegistry([attrs.evolve(ECHO, worker=plan)])


@final
class _KitEcho:
    """An Echo worker whose setup raises (WORKER_ERROR), or takes ``delay`` seconds."""

    def __init__(self, inner: Any, *, fail: bool, delay: float) -> None:
        self.inner = inner
        self.fail = fail
        self.delay = delay

    async def setup(self) -> None:
        await trio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("conformance kit: this pod's setup fails on purpose")

    def run_batch(self, items: Any, info: Any) -> Any:
        return self.inner.run_batch(items, info)

    def results_body(self, items: Any, results: Any) -> Any:
        return self.inner.results_body(items, results)


@attrs.define
class ModellerCase:
    scenario: Scenario
    recorder: Recorder
    reports: dict[str, WorkerReport] = attrs.field(factory=dict)
    violations: list[str] = attrs.field(factory=list)
    job_problems: list[str] = attrs.field(factory=list)
    exit_code: int | None = None
    exited: bool = False
    stderr: str = ""
    start_error: str | None = None
    pod_states: dict[str, str] = attrs.field(factory=dict)
    clean_exits: frozenset[int] = frozenset({0})
    watch: OwedWatch | None = None
    ended_at: dict[str, float] = attrs.field(factory=dict)

    @property
    def cut_short(self) -> bool:
        """The kit ended the case early: an owed message was overdue, or a violation."""
        return self.watch is not None and (self.watch.expired is not None or self.watch.violated)


def _scenario_line(scenario: Scenario, task_id: str, scale: float) -> bytes:
    body = ScenarioBody(
        pods=scenario.pods,
        job=scenario.job(scenario.pods[0], scale=scale),
        response_timeout_s=scenario.response_timeout_s * scale,
        require_all_pods=scenario.require_all_pods,
        job_overrides={pod: dict(fields) for pod, fields in scenario.overrides.items()},
    )
    message = Message.make(
        MessageType.CONFORMANCE_SCENARIO,
        task_id=task_id,
        sender=KIT_SENDER,
        recipient=KIT_MODELLER,
        seq=0,
        body=body,
    )
    # The job's protocol is the base one; overrides go in job_overrides.
    wire = json.loads(encode(message))
    wire["body"]["job"]["protocol"] = scenario.echo.to_json()
    if scenario.omit_job_overrides:
        del wire["body"]["job_overrides"]
    return (json.dumps(wire, separators=(",", ":")) + "\n").encode()


def _job_problems(scenario: Scenario, message: Message, scale: float) -> list[str]:
    if message.type is not MessageType.JOB_REQUEST:
        return []
    pod = message.recipient
    if pod not in scenario.pods:
        return []
    expected = scenario.job(pod, scale=scale)
    body = message.body if isinstance(message.body, dict) else {}
    problems = []
    wanted: dict[str, Any] = {
        "protocol": expected.protocol,
        "batched_execution": expected.batched_execution,
        "test_run": expected.test_run,
        "options": expected.options,
    }
    for field, value in wanted.items():
        found = body.get(field)
        if field == "options" and isinstance(found, dict):
            found = {k: found.get(k) for k in value}
            same = all(
                isinstance(found[k], (int, float)) and abs(found[k] - value[k]) < 1e-6
                for k in value
            )
        else:
            same = found == value
        if not same:
            problems.append(
                f"the JOB_REQUEST to {pod} does not carry the scenario's job: {field} is"
                f" {json.dumps(found)[:120]}, expected {json.dumps(value)[:120]}"
            )
    return problems


async def run_modeller_case(
    scenario: Scenario,
    command: Sequence[str],
    launcher: ModellerLauncher,
    *,
    scale: float,
    recorder: Recorder,
) -> ModellerCase:
    coverage = recorder.coverage
    case = ModellerCase(scenario, recorder)
    task_id = f"conform-{scenario.name}"
    initial = recorder.chart.settle(recorder.chart.initial)
    recorder.states.update({pod: initial for pod in scenario.pods if pod not in scenario.silent})

    def on_line(raw: bytes, message: Message | None) -> None:
        if len(recorder.entries) >= MAX_LINES:
            return  # SharedStdio stops reading at its own limit; keep the trace bounded
        recorder.line(raw)
        if message is not None:
            case.job_problems += _job_problems(scenario, message, scale)

    def on_problem(text: str, raw: bytes) -> None:
        recorder.problems.append((text, raw))

    endpoint: ModellerEndpoint | None = None
    async with trio.open_nursery() as nursery:
        try:
            try:
                endpoint = await launcher(
                    nursery,
                    command,
                    _scenario_line(scenario, task_id, scale),
                    scenario.pods,
                    on_line,
                    on_problem,
                )
            except (OSError, BrokenTransportError) as exc:
                case.start_error = f"cannot start {' '.join(command)!r}: {exc}"
                return case
            case.clean_exits = clean_exit_statuses([endpoint])
            recorder.interleaved = getattr(endpoint, "interleaved", False)
            # The modeller owes each pod a JOB_REQUEST from now on: it has started (and, over
            # TCP, every pod is connected), and nothing it wrote has been read yet.
            watch = case.watch = OwedWatch(
                task_id,
                scenario.pods,
                silent=scenario.unanswering,
                scale=scale,
                response_timeout=scenario.response_timeout_s * scale,
                interleaved=recorder.interleaved,
            )
            recorder.on_line = watch.feed
            reader_done = trio.Event()

            async def read() -> None:
                assert endpoint is not None
                try:
                    await endpoint.run()
                finally:
                    reader_done.set()

            nursery.start_soon(read)

            def on_step(pod: str, link: _PodLink, step: Step) -> None:
                coverage.add(step)
                case.pod_states[pod] = step.target
                if recorder.chart.state(step.target).final:
                    case.ended_at[pod] = trio.current_time()
                if step.target != "aborting" and step.target != "aborted":
                    recorder.states[pod] = step.target
                if step.entered:
                    link.entered(step.entered)

            async def serve(pod: str) -> None:
                assert endpoint is not None
                faults = [f for f in scenario.faults if f.pod == pod]
                logs = LogHandle()
                link = _PodLink(pod, endpoint.transport(pod), faults, recorder, scale, logs)
                report = await run_worker_for_kit(
                    Pod(pod, registry=_pod_registry(faults, scale)),
                    link,
                    on_step=lambda key, step: on_step(key, link, step),
                    markers=not any(f.kind is FaultKind.SKIP_MARKERS for f in faults),
                    logs=logs,
                )
                case.reports[pod] = report

            async def sink(pod: str) -> None:
                assert endpoint is not None
                transport = endpoint.transport(pod)
                while True:
                    try:
                        await transport.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        return

            # Every wait of the pods is bounded: by their chart's timers, and by the
            # watch on what the modeller owes them, which ends the case when it is overdue.
            with trio.CancelScope() as live:
                async with trio.open_nursery() as pods:
                    silent_scope = trio.CancelScope()
                    watching = trio.CancelScope()

                    async def run_silent(pod: str) -> None:
                        with silent_scope:
                            await sink(pod)

                    async def run_watch() -> None:
                        with watching:
                            await watch.watch(live.cancel)

                    pods.start_soon(run_watch)
                    async with trio.open_nursery() as answering:
                        for pod in scenario.pods:
                            if pod in scenario.silent:
                                pods.start_soon(run_silent, pod)
                            else:
                                answering.start_soon(serve, pod)
                    silent_scope.cancel()
                    watching.cancel()
            await endpoint.end_input()
            # Once the verdict is known, the exit status no longer matters.
            exit_wait = 0.1 if case.cut_short else EXIT_WAIT
            case.exit_code = await endpoint.finish(exit_wait * scale)
            case.exited = case.exit_code is not None
            if case.exited:  # a process that still runs may never close its output
                with trio.move_on_after(DRAIN_WAIT * scale):
                    await reader_done.wait()
        finally:
            if endpoint is not None:
                case.stderr = endpoint.stderr_tail()
                with trio.CancelScope(shield=True):
                    await endpoint.close()
            nursery.cancel_scope.cancel()
    return case
