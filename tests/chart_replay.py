"""The chart side of the differential test: replay a trace through the modeller chart.

Each pod gets a ``statecharts/modeller.yaml`` machine with the real
``LinkBindings``, all under one ``_Task`` (the modeller-wide guards and
actions). A message from pod P fires ``recv:TYPE`` on P's machine, and one to
P fires ``send:TYPE``. What the modeller does on its own is invisible in a
trace, so the replay supplies it:

- events the bindings raise run at once, as the executor runs internal events
  before the next message; a raised ``send:TASK_CANCEL`` is an obligation: the
  trace must send it before any TASK_START or TASK_COMPLETE to that pod;
- a pod's ``response_timeout`` fires only when needed: when the barrier or
  completion would otherwise wait for it;
- after every step, the link's marks are refreshed, as the executor's
  ``after_step`` hook does (the task-wide rules read them);
- at the end, every pod must have answered, unless it is known to be faulty
  (crashed, silent, late) or to have been given up on (``unanswered_ok``);
  faulty pods lose their link, and ``task_ended`` runs for the ones left out.
"""

from __future__ import annotations

import types
from collections import deque
from collections.abc import Collection, Sequence
from typing import Any

from fsm_protocol import JobRequestBody, Machine, Message, MessageType, ProtocolViolation, body_of
from fsm_protocol._core._shipped import shipped_chart
from fsm_protocol._runtime._modeller import LinkBindings, TaskTimeouts, _Task
from tests.oracle import Rejection


class _Recorder:
    """Stands in for the executor: collects what the bindings raise."""

    def __init__(self) -> None:
        self.raised: deque[tuple[str, str, Any]] = deque()

    def raise_event(self, key: str, name: str, data: Any = None) -> None:
        self.raised.append((key, name, data))

    def start_timer(self, key: str, seconds: float, name: str, data: Any = None) -> None:
        pass  # the cancel wait never expires in a replay: a trace has no clock

    def call_soon(self, callback: Any) -> None:
        pass


class _Refused(Exception):
    pass


class _Replay:
    def __init__(
        self, trace: Sequence[Message], faulty: Collection[str], unanswered_ok: Collection[str]
    ) -> None:
        self.modeller = trace[0].sender
        self.faulty = frozenset(faulty)
        self.unanswered_ok = frozenset(unanswered_ok)
        self.recorder = _Recorder()
        self.task = _Task(
            trace[0].task_id,
            self.modeller,
            self.recorder,
            TaskTimeouts(),
            None,
            False,  # type: ignore[arg-type]
        )
        self.owed_cancel: set[str] = set()
        chart = shipped_chart("modeller")
        for m in trace:
            if m.type is MessageType.JOB_REQUEST and m.sender == self.modeller:
                if m.recipient in self.task.links:
                    continue
                job: JobRequestBody = body_of(m)
                config = types.SimpleNamespace(
                    initial_setup=job.protocol.get("initial_setup") is True
                )
                link = LinkBindings(self.task, m.recipient, job, config)
                link.machine = Machine.from_chart(chart, link)
                self.task.links[m.recipient] = link

    def step_link(self, pod: str, event: str, data: Any = None) -> None:
        """Fire ``event`` on ``pod``'s machine, then refresh its marks (the executor's hook)."""
        self.machine(pod).fire(event, data)
        self.task.links[pod].refresh()

    def machine(self, pod: str) -> Machine:
        link = self.task.links.get(pod)
        if link is None or link.machine is None:
            raise _Refused(f"{pod!r} was never sent a JOB_REQUEST")
        return link.machine

    def drain(self) -> None:
        while self.recorder.raised:
            key, name, data = self.recorder.raised.popleft()
            if name == "send:TASK_CANCEL":
                self.owed_cancel.add(key)
            if name.startswith("send:"):
                continue  # the trace says what was sent, and when
            machine = self.machine(key)
            if not machine.is_final and machine.accepts(name, data):
                self.step_link(key, name, data)

    def fire(self, pod: str, event: str, data: Any) -> None:
        machine = self.machine(pod)
        if machine.is_final:
            raise _Refused(f"{pod} already ended ({machine.state}); nothing may follow the end")
        if event in ("send:TASK_START", "send:TASK_COMPLETE") and pod in self.owed_cancel:
            raise _Refused(f"{event[5:]} to {pod}, which the chart had to cancel first")
        try:
            self.step_link(pod, event, data)
        except ProtocolViolation as exc:
            if event in ("send:TASK_START", "send:TASK_COMPLETE") and self.time_out_unanswered():
                self.fire(pod, event, data)
                return
            raise _Refused(str(exc)) from None
        if event == "send:TASK_CANCEL":
            self.owed_cancel.discard(pod)
        self.drain()

    def time_out_unanswered(self) -> bool:
        """Let every pod that has not answered miss the response timeout; False if none."""
        waiting = [
            pod
            for pod, link in self.task.links.items()
            if link.machine is not None and link.machine.state == "requested"
        ]
        for pod in waiting:
            self.step_link(pod, "response_timeout")
            self.drain()
        return bool(waiting)

    def step(self, m: Message) -> None:
        if m.sender == self.modeller:
            self.fire(m.recipient, f"send:{m.type.value}", m)
        elif m.recipient == self.modeller:
            self.fire(m.sender, f"recv:{m.type.value}", m)
        else:
            raise _Refused(f"neither {m.sender!r} nor {m.recipient!r} is the modeller")

    def finish(self) -> str | None:
        for pod, link in self.task.links.items():
            if pod not in self.faulty | self.unanswered_ok and not link.answered:
                # Left out or not, the pod itself never reached an end (spec section 4).
                return f"trace ends while pod {pod} has not answered its JOB_REQUEST"
        self.time_out_unanswered()
        for pod in sorted(self.faulty & set(self.task.links)):
            for event in ("cancel_unconfirmed", "link_lost"):
                machine = self.machine(pod)
                if not machine.is_final and machine.accepts(event):
                    self.step_link(pod, event)
                    self.drain()
        for pod in self.task.links:
            machine = self.machine(pod)
            if machine.accepts("task_ended"):
                self.step_link(pod, "task_ended")
                self.drain()
        for pod in self.task.links:
            machine = self.machine(pod)
            if not machine.is_final:
                return (
                    f"trace ends while pod {pod} is in state {machine.state}, expecting "
                    f"{', '.join(machine.expected())}"
                )
        return None


def replay_modeller_chart(
    trace: Sequence[Message], *, faulty: Collection[str] = (), unanswered_ok: Collection[str] = ()
) -> Rejection | None:
    """Replay ``trace`` through the modeller chart; None if the chart accepts it all."""
    if not trace:
        return Rejection(0, "an empty trace")
    if trace[0].type is not MessageType.JOB_REQUEST:
        return Rejection(0, "the first message is not a JOB_REQUEST", trace[0])
    try:
        replay = _Replay(trace, faulty, unanswered_ok)
    except Exception as exc:  # an unreadable JOB_REQUEST
        return Rejection(0, f"cannot set up the replay: {exc}", trace[0])
    for index, message in enumerate(trace):
        try:
            replay.step(message)
        except _Refused as exc:
            pod = message.recipient if message.sender == replay.modeller else message.sender
            return Rejection(index, str(exc), message, pod)
    problem = replay.finish()
    return None if problem is None else Rejection(len(trace), problem)
