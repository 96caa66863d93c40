"""Running a worker under test: the kit is the modeller, with faults on each pod's link."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Sequence
from typing import Final, final

import attrs
import trio

from .._algo._protocols import EchoModeller, registry
from .._base._errors import BrokenTransportError, ConfigError, DecodeError
from .._core._engine import Step
from .._runtime._logs import LogHandle
from .._runtime._modeller import ModellerRun, TaskTimeouts, run_modeller_for_kit
from .._runtime._transport import Transport
from .._wire._messages import Message, MessageType, encode
from ._endpoints import WorkerEndpoint, WorkerLauncher, clean_exit_statuses
from ._limits import CANCEL_WAIT, DRAIN_WAIT, EXIT_WAIT, IDLE_WAIT, KIT_MODELLER, MAX_LINES
from ._recording import FAULT_EVENTS, FAULTED, MARKED_EVENTS, Marker, Recorder
from ._scenarios import Fault, FaultKind, Matcher, Scenario

_KIT_SEND: Final = frozenset({FaultKind.DELAY_SEND})
# Matched on the states the kit's machine enters.
_KIT_ENTER: Final = frozenset({FaultKind.LOG})
# The kit's modeller's states while it waits for a pod's answer to its JOB_REQUEST.
_ANSWER_WAITS: Final = frozenset({"requested", "left_out"})
_KIT_RECV: Final = frozenset(
    {
        FaultKind.HOLD_RECV,
        FaultKind.CANCEL,
        FaultKind.DROP,
        FaultKind.GARBLE,
        FaultKind.SWALLOW,
    }
)


# What a worker with an initial setup sends only after ALGORITHM_EXCHANGE (W-4.6).
_NEEDS_SETUP: Final = (MessageType.PREPARING_DATA_BATCHES, MessageType.NUMBER_OF_BATCHES)


@final
class _KitLink:
    """The kit modeller's side of one worker's link: faults, and the record of arrivals."""

    def __init__(
        self,
        pod: str,
        endpoint: WorkerEndpoint,
        faults: Iterable[Fault],
        recorder: Recorder,
        cancel: trio.Event,
        scale: float,
        startup: float,
    ) -> None:
        self.pod = pod
        self.endpoint = endpoint
        self.inner = endpoint.transport
        self.matcher = Matcher(faults)
        self.recorder = recorder
        self.cancel = cancel
        self.scale = scale
        self.startup = startup
        self.received = 0
        self.kinds: set[MessageType] = set()
        self.held: tuple[Message, list[Fault], float, str | None] | None = None

    async def send(self, message: Message) -> None:
        delayed = False
        for fault in self.matcher.match(message.type.value, _KIT_SEND):
            seconds = fault.seconds * self.scale
            if message.type is MessageType.JOB_REQUEST:
                # Measured from a start, like the response timeout: both get the allowance.
                seconds += self.startup
            self.recorder.note(self.pod, f"{message.type.value} held back {seconds:.3g} s")
            await trio.sleep(seconds)
            delayed = True
        if delayed and message.type is MessageType.ALGORITHM_EXCHANGE:
            early = [t.value for t in _NEEDS_SETUP if t in self.kinds]
            if early:
                self.recorder.before_setup[self.pod] = early
        if message.type is MessageType.JOB_REQUEST and not delayed:
            self.recorder.requested_at[self.pod] = trio.current_time()
        await self.inner.send(message)

    def _answered(self, message: Message) -> None:
        if message.type in (MessageType.JOB_ACCEPT, MessageType.JOB_REJECT):
            self.recorder.answered[self.pod].set()
            asked = self.recorder.requested_at.get(self.pod)
            if asked is not None:
                latency = trio.current_time() - asked
                self.recorder.latency = max(self.recorder.latency, latency)

    @property
    def holding(self) -> bool:
        """The kit holds a message of this worker: its silence meanwhile is the kit's doing."""
        return self.held is not None

    async def receive(self) -> Message:
        arrivals = self.recorder.arrivals[self.pod]
        while True:
            if self.held is None:
                self.received += 1
                if self.received > MAX_LINES:
                    self.recorder.problems.append(
                        (f"pod {self.pod} wrote more than {MAX_LINES} lines in one case", b"")
                    )
                    self.recorder.cut.add(self.pod)
                    await self.endpoint.cut()
                    raise BrokenTransportError(f"more than {MAX_LINES} lines")
                try:
                    message = await self.inner.receive()
                except DecodeError as exc:
                    line = exc.line if isinstance(exc.line, bytes) else (exc.line or "").encode()
                    arrivals.append(line)
                    raise
                faults = self.matcher.match(message.type.value, _KIT_RECV)
                release, until = trio.current_time(), None
                for fault in faults:
                    if fault.kind is FaultKind.HOLD_RECV:
                        longest = fault.seconds * self.scale
                        if fault.until is not None:
                            longest += self.startup  # the other pod's answer includes its start
                            until = fault.until
                        release = max(release, trio.current_time() + longest)
                self.held = (message, faults, release, until)
            # Invariant: a held message survives a cancelled receive (the next one goes on
            # holding it), so a hold never loses a line.
            message, faults, release, until = self.held
            if release > trio.current_time():
                with trio.move_on_at(release):
                    if until is not None:
                        await self.recorder.answered[until].wait()
                        await trio.sleep(0.05 * self.scale)  # let its answer go first
                    else:
                        await trio.sleep_forever()
            self.held = None
            kinds = {fault.kind for fault in faults}
            self._answered(message)
            if FaultKind.CANCEL in kinds:
                self.recorder.note(self.pod, f"cancel the task after its {message.type.value}")
                self.cancel.set()
            if FaultKind.SWALLOW in kinds:
                self.recorder.faulted.add(self.pod)
                self.recorder.swallowed.add(self.pod)
                self.recorder.note(self.pod, f"its {message.type.value} and all after are lost")
                await trio.sleep_forever()
            if FaultKind.GARBLE in kinds:
                self.recorder.faulted.add(self.pod)
                self.recorder.note(self.pod, f"its {message.type.value} arrives garbled")
                arrivals.append(FAULTED)
                raise DecodeError(f"kit fault: {message.type.value} garbled on purpose")
            if FaultKind.DROP in kinds:
                self.recorder.faulted.add(self.pod)
                self.recorder.note(self.pod, f"the link drops with its {message.type.value}")
                arrivals.append(FAULTED)
                await self.endpoint.cut()
                raise BrokenTransportError(f"kit fault: the link dropped at {message.type.value}")
            arrivals.append(encode(message))
            self.kinds.add(message.type)
            return message

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.define
class WorkerCase:
    scenario: Scenario
    recorder: Recorder
    endpoints: dict[str, WorkerEndpoint] = attrs.field(factory=dict)
    run: ModellerRun | None = None
    exit_codes: dict[str, int | None] = attrs.field(factory=dict)
    leftovers: dict[str, list[bytes]] = attrs.field(factory=dict)
    start_error: str | None = None
    timed_out: bool = False
    clean_exits: frozenset[int] = frozenset({0})
    response_timeout: float = 0.0


def _quiet_ok(links: dict[str, Transport], pod: str, state: str) -> bool:
    """Silence that is not the worker's: its answer has its own wait, the response timeout,
    and a message the kit holds on purpose is not late by the worker's doing."""
    link = links[pod]
    return state in _ANSWER_WAITS or (isinstance(link, _KitLink) and link.holding)


def _on_modeller_step(recorder: Recorder, pod: str, step: Step) -> None:
    recorder.coverage.add(step)
    recorder.states[pod] = step.target
    if recorder.chart.state(step.target).final:
        recorder.ended_from[pod] = step.source
    if step.event == "link_lost":
        recorder.lost_at[pod] = len(recorder.entries)
    if step.event == "recv:ONLINE_CHECK":
        recorder.online_checks.add(pod)
    arrivals = recorder.arrivals[pod]
    if step.event in MARKED_EVENTS:
        recorder.entries.append(Marker(pod, step.event))
        if step.event == "response_timeout":
            recorder.note(pod, "no answer within the response timeout")
    elif step.event in FAULT_EVENTS and pod in recorder.swallowed:
        recorder.entries.append(Marker(pod, step.event, excuse=True))
    elif step.event in ("bad_input", "link_lost"):
        if arrivals and arrivals[0] is FAULTED:
            arrivals.popleft()
            recorder.entries.append(Marker(pod, step.event, excuse=True))
        elif step.event == "bad_input" and arrivals:
            raw = arrivals.popleft()
            assert isinstance(raw, bytes)
            recorder.line(raw)


def _on_modeller_message(recorder: Recorder, pod: str, message: Message) -> None:
    if message.sender == KIT_MODELLER:
        recorder.line(encode(message))
        return
    arrivals = recorder.arrivals[pod]
    while arrivals and arrivals[0] is FAULTED:
        arrivals.popleft()
    raw = arrivals.popleft() if arrivals else encode(message)
    assert isinstance(raw, bytes)
    recorder.line(raw)


async def run_worker_case(
    scenario: Scenario,
    command: Sequence[str],
    launcher: WorkerLauncher,
    *,
    scale: float,
    startup: float = 0.0,
    recorder: Recorder,
) -> WorkerCase:
    """Run one case against workers; ``startup`` is added to the waits that include a start."""
    case = WorkerCase(scenario, recorder)
    task_id = f"conform-{scenario.name}"
    initial = recorder.chart.settle(recorder.chart.initial)
    recorder.states.update({pod: initial for pod in scenario.pods})
    async with trio.open_nursery() as nursery:
        try:
            try:
                case.endpoints.update(await launcher(nursery, command, scenario.pods))
                case.clean_exits = clean_exit_statuses(case.endpoints.values())
            except OSError as exc:
                case.start_error = f"cannot start {' '.join(command)!r}: {exc}"
                return case
            if scenario.first_line is not None:
                await _raw_first_line(case, scale)
                return case
            cancel = trio.Event()
            links: dict[str, Transport] = {
                pod: _KitLink(
                    pod,
                    endpoint,
                    [f for f in scenario.faults if f.pod == pod],
                    recorder,
                    cancel,
                    scale,
                    startup,
                )
                for pod, endpoint in case.endpoints.items()
            }
            jobs = {pod: scenario.job(pod, scale=scale) for pod in scenario.pods}
            configs: dict[str, object] = {}
            for pod in scenario.pods:
                try:
                    configs[pod] = registry.load(scenario.protocol_json(pod))
                except ConfigError:
                    configs[pod] = scenario.echo.protocol()
            case.response_timeout = scenario.response_timeout_s * scale + startup
            timeouts = TaskTimeouts(
                response_timeout_s=case.response_timeout,
                cancel_timeout_s=CANCEL_WAIT * scale,
                worker_idle_timeout_s=IDLE_WAIT * scale,
                task_start_timeout_s=scenario.task_start_timeout_s * scale,
                soft_timeout_s=scenario.soft_timeout_s * scale,
                hard_timeout_s=scenario.hard_timeout_s * scale,
            )
            logs = LogHandle()
            entering = {pod: Matcher(f for f in scenario.faults if f.pod == pod) for pod in links}

            def on_step(pod: str, step: Step) -> None:
                _on_modeller_step(recorder, pod, step)
                for state in step.entered:
                    for _ in entering[pod].match(state, _KIT_ENTER):
                        recorder.note(pod, f"the kit's modeller logs as it enters {state}")
                        logs.log(pod, f"conformance kit: the modeller entered {state}")

            case.run = await run_modeller_for_kit(
                task_id=task_id,
                jobs=jobs,
                configs=configs,
                links=links,
                algorithm=EchoModeller(scenario.echo.protocol()),
                timeouts=timeouts,
                require_all_pods=scenario.require_all_pods,
                cancel=cancel,
                on_step=on_step,
                on_message=functools.partial(_on_modeller_message, recorder),
                logs=logs,
                quiet_ok=functools.partial(_quiet_ok, links),
            )
            # Lines that arrived but were never processed came after that worker's end.
            for pod in scenario.pods:
                for raw in recorder.arrivals[pod]:
                    if isinstance(raw, bytes):
                        recorder.line(raw)
                recorder.arrivals[pod].clear()

            async def drain(pod: str, endpoint: WorkerEndpoint) -> None:
                # Its input ends first: a worker that has ended exits anyway, and one the
                # kit gave up on learns it at once. What it still writes until its output
                # ends, and its exit, share one wait.
                await endpoint.cut()
                started = trio.current_time()
                lines = await endpoint.drain(EXIT_WAIT * scale)
                if pod in recorder.cut:
                    pass
                elif pod in recorder.faulted:
                    recorder.after_fault[pod] += lines
                else:
                    for raw in lines:
                        recorder.line(raw)
                left = EXIT_WAIT * scale - (trio.current_time() - started)
                case.exit_codes[pod] = await endpoint.finish(max(0.1 * scale, left))

            async with trio.open_nursery() as drains:
                for pod, endpoint in case.endpoints.items():
                    drains.start_soon(drain, pod, endpoint)
        finally:
            with trio.CancelScope(shield=True):
                for endpoint in case.endpoints.values():
                    await endpoint.close()
            nursery.cancel_scope.cancel()
    return case


async def _raw_first_line(case: WorkerCase, scale: float) -> None:
    line = case.scenario.first_line
    assert line is not None
    for pod, endpoint in case.endpoints.items():
        if line:
            with contextlib.suppress(BrokenTransportError):
                await endpoint.write_raw(line)
        await endpoint.cut()
        case.leftovers[pod] = await endpoint.drain(DRAIN_WAIT * scale)
        case.exit_codes[pod] = await endpoint.finish(EXIT_WAIT * scale)
