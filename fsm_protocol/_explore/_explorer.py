"""Exhaustive exploration of one modeller and N workers, stepping the compiled charts.

The system is one modeller (one modeller-chart machine per worker, plus the
rules that span them) and N worker-chart machines, joined by FIFO channels,
one per direction per worker. A global state is one int: flag bits, then one
interned number per worker (its *part*) that stands for (its link's leaf and
data, its leaf and data and the rest of its running activity, its status, both
channels). The search is breadth first, so the first violation found has a
shortest path in the graph explored.

Every step is an engine step: :class:`Machine.fire` on the compiled table with
the bindings of :mod:`._model`. Steps are memoised per component (a worker's
part; the modeller's flags, links and event), so each distinct local step runs
the engine once, and the search itself only adds to the state int (a worker's
own move is its new part minus its old, shifted to its place) and looks parts
up in the memo of a modeller step's change to them.

Reductions (each can be turned off, and tests show they change no verdict):

* **Symmetry.** Workers run the same job, so states that differ only by which
  worker is which are one state: the per-worker numbers are kept sorted.
* **Partial order.** A worker's own steps (reading its input channel, the
  next output of its activity, its crash or silence) touch only that worker
  and the two ends of its channels that no one else writes or reads, and they
  stay enabled until taken. When some worker has such steps, only that
  worker's steps are expanded (an ample set). They are invisible to every
  check but the ones made inside the step itself, and they cannot form a
  cycle (each consumes input or output, or advances the chart), so the
  reduction keeps every deadlock and every violation reachable.
"""

from __future__ import annotations

import gc
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Literal, final

import attrs

from .._algo._echo_model import Fate, predict_echo
from .._algo._protocols import EchoProtocol, UsageLimit, registry
from .._base._errors import InternalError, ProtocolViolation
from .._check._checker import TraceChecker
from .._core._chart import Chart
from .._core._compiled import BoundTable, compile_chart
from .._core._engine import Machine
from .._wire._messages import (
    MODELLER,
    AbortReason,
    JobRejectBody,
    JobRequestBody,
    Message,
    MessageType,
    Meta,
    RejectReason,
    ResourceConsumed,
    TaskAbortBody,
    encode,
)
from ._model import (
    ABORT_REASONS,
    DUPLICATE,
    EOF,
    FAULTS,
    L_INITIAL,
    OFFER,
    OFFER_SEND,
    W_INITIAL,
    Bounds,
    LinkBindings,
    ModellerTask,
    Msg,
    WorkerBindings,
    activities,
    alternatives,
    timers,
)

# Worker status.
# Worker status: below CRASHED it is running. At most one worker may crash, one
# go silent and one send a result twice; which one is chosen at the start, so
# the fault stays that worker's own step.
ALIVE: Final = 0
MAY_CRASH: Final = 1
MAY_GO_SILENT: Final = 2
MAY_DUPLICATE: Final = 3
CRASHED: Final = 4
SILENT: Final = 5
ENDED: Final = 6

# Global flags.
OWN_ABORT: Final = 1
USER_CANCELLED: Final = 2
MODELLER_ENDED: Final = 4
USED_CANCEL: Final = 8
USED_CRASH: Final = 16
USED_SILENCE: Final = 32
USED_LATE: Final = 64
USED_DUPLICATE: Final = 128
# The flags that the modeller's part of a step depends on (see Explorer._context).
_CONTEXT_FLAGS: Final = OWN_ABORT | USER_CANCELLED | MODELLER_ENDED | USED_CANCEL | USED_LATE
_MODELLER_FLAGS: Final = OWN_ABORT | USER_CANCELLED | MODELLER_ENDED
# A global state is one int: the flags in the low _FLAG_BITS, then each worker's
# part (an interned id) in _PART_BITS of its own. One int hashes and compares
# faster than a tuple, and a step of one worker is one addition to it.
_FLAG_BITS: Final = 8
_FLAG_MASK: Final = (1 << _FLAG_BITS) - 1
_PART_BITS: Final = 32
_PART_MASK: Final = (1 << _PART_BITS) - 1

# Step kinds (the first field of a label).
W_RECV: Final = 0  # worker i reads its input
W_ACT: Final = 1  # worker i's activity entry `arg` posts its next event
W_TIMER: Final = 2  # a timer of worker i expires (event `arg`)
M_RECV: Final = 3  # the modeller reads worker i's message
M_TIMER: Final = 4  # a modeller timer of link i expires (event `arg`)
LATE: Final = 5  # link i's response timeout, while an answer may be in flight
CRASH: Final = 6
SILENCE: Final = 7
CANCEL: Final = 8  # the user cancels the task
START: Final = 9

USER_CANCEL_EVENT: Final = "user_cancel"
START_EVENT: Final = "start"

TASK_ID: Final = "t-explore"
# The branch number of a worker step's variant in which the ``duplicate`` fault
# sends the step's batch result a second time.
DUP_BRANCH: Final = 1 << 16

Label = tuple[int, int, Any, int]  # kind, worker, argument, branch


@attrs.frozen
class Violation:
    """A broken rule: its name (see docs/testing.md) and what happened."""

    check: str
    message: str
    at_state: bool = False

    def named(self, names: Sequence[str]) -> Violation:
        """The message with each worker's position ``{wN}`` replaced by its pod name."""
        text = self.message
        for n, name in enumerate(names):
            text = text.replace(f"{{w{n}}}", name)
        return Violation(self.check, text, self.at_state)


@final
@attrs.frozen
class Counterexample:
    """The shortest path found to a violation: its steps and the modeller's trace."""

    violation: Violation
    steps: tuple[str, ...]
    trace: tuple[Message, ...]
    markers: tuple[tuple[int, str, str], ...] = ()

    def ndjson(self) -> str:
        return "".join(encode(m).decode() for m in self.trace)


@final
@attrs.frozen
class ExploreResult:
    """What :func:`explore` found.

    ``verdict`` is ``"ok"`` (every reachable state visited, every check held),
    ``"violation"`` or ``"limit"`` (``max_states`` stopped it first).
    """

    verdict: Literal["ok", "violation", "limit"]
    bounds: Bounds
    states: int
    transitions: int
    seconds: float
    ends: int
    traces_checked: int
    symmetry: bool
    por: bool
    symmetry_factor: float
    por_factor: float
    counterexample: Counterexample | None = None

    @property
    def states_per_s(self) -> float:
        return self.states / self.seconds if self.seconds > 0 else 0.0

    @property
    def reduction_factor(self) -> float:
        return self.symmetry_factor * self.por_factor


def _signature(link: LinkBindings) -> tuple[Any, ...]:
    """What the other links' guards and the modeller-wide rules read of a link."""
    machine = link.machine
    expected = () if machine.is_final else machine.expected()
    return (
        machine.is_final,
        machine.state == "requested",
        link.acc,
        link.ans,
        link.late,
        link.csent,
        link.ts,
        link.done,
        link.ssent,
        link.dsent,
        link.wend,
        tuple(e for e in _CROSS_EVENTS if e in expected),
    )


_CROSS_EVENTS: Final = (
    "send:TASK_START",
    "send:TASK_COMPLETE",
    "task_ended",
    "cancel_requested",
    "response_timeout",
)


class _Found(Exception):
    def __init__(self, violation: Violation, state: int) -> None:
        super().__init__(violation.message)
        self.violation = violation
        self.state = state


def _pods(n: int) -> list[str]:
    return [f"explore/w{i}" for i in range(n)]


def _item(i: int) -> str:
    return f"i{i}"


@final
class System:
    """The composed system for given bounds and charts, with its memo tables."""

    def __init__(self, bounds: Bounds, worker_chart: Chart, modeller_chart: Chart) -> None:
        self.bounds = bounds
        self.worker_chart = worker_chart
        self.modeller_chart = modeller_chart
        self.wc = compile_chart(worker_chart)
        self.mc = compile_chart(modeller_chart)
        self.w_activity = activities(worker_chart)
        self.w_timers = timers(self.wc)
        self.m_timers = timers(self.mc)
        self.w_finals = self.wc.finals
        self.w_table = self.wc.bind(WorkerBindings)
        self.m_table = self.mc.bind(LinkBindings)
        self.w_active = {leaf: frozenset(worker_chart.ancestors(leaf)) for leaf in self.wc.leaves()}
        # Interned component states.
        self.wloc: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = []
        self._wloc_id: dict[Any, int] = {}
        self.lloc: list[tuple[str, tuple[Any, ...]]] = []
        self._lloc_id: dict[Any, int] = {}
        self.pw: list[tuple[int, int, int, tuple[Msg, ...], tuple[Msg, ...]]] = []
        self._pw_id: dict[Any, int] = {}
        # Per part, what the search reads of it on every state: its link, and the
        # head of its worker-to-modeller channel (None when empty).
        self.pw_ll: list[int] = []
        self.pw_head: list[Any] = []
        self._wmemo: dict[Any, Any] = {}
        self._mmemo: dict[Any, Any] = {}
        self._rmemo: dict[Any, Any] = {}
        self._pmemo: dict[Any, int] = {}
        self.abort_states = frozenset(s for s, a in self.w_activity.items() if a == "send_abort")

    # ------------------------------------------------------------ interning

    def intern_w(self, leaf: str, data: tuple[Any, ...], pend: tuple[Any, ...]) -> int:
        key = (leaf, data, pend)
        found = self._wloc_id.get(key)
        if found is None:
            found = self._wloc_id[key] = len(self.wloc)
            self.wloc.append(key)
        return found

    def intern_l(self, leaf: str, data: tuple[Any, ...]) -> int:
        key = (leaf, data)
        found = self._lloc_id.get(key)
        if found is None:
            found = self._lloc_id[key] = len(self.lloc)
            self.lloc.append(key)
        return found

    def intern_pw(self, key: tuple[int, int, int, tuple[Msg, ...], tuple[Msg, ...]]) -> int:
        found = self._pw_id.get(key)
        if found is None:
            found = self._pw_id[key] = len(self.pw)
            if found > _PART_MASK:
                raise InternalError("more distinct worker parts than a state can number")
            self.pw.append(key)
            self.pw_ll.append(key[0])
            self.pw_head.append(key[4][0] if key[4] else None)
        return found

    # ---------------------------------------------------------------- worker

    def _activate(
        self, bindings: WorkerBindings, entered: Sequence[str], pend: tuple[Any, ...]
    ) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """Start the activities of the states entered: every (data, pending) they can lead to."""
        options: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = [(bindings.data(), pend)]
        for state in entered:
            activity = self.w_activity.get(state)
            if activity is None:
                continue
            grown = []
            for data, pending in options:
                base = WorkerBindings(self.bounds, data)
                for after, out in alternatives(base, activity):
                    entry = (state, tuple(out))
                    grown.append((after, (*pending, entry) if out else pending))
            options = grown
        return options

    def initial_workers(self) -> list[int]:
        leaf = self.wc.initial
        bindings = WorkerBindings(self.bounds, W_INITIAL)
        entered = list(reversed(tuple(self.worker_chart.ancestors(leaf))))
        return [self.intern_w(leaf, d, p) for d, p in self._activate(bindings, entered, ())]

    def worker_step(self, wl: int, kind: int, arg: Any) -> tuple[Any, ...]:
        """A worker's step: ((wl', sends, violation, event, branch), ...), memoised."""
        key = (wl, kind, arg)
        found = self._wmemo.get(key)
        if found is None:
            found = self._wmemo[key] = tuple(self._worker_step(wl, kind, arg))
        return found

    def _worker_step(self, wl: int, kind: int, arg: Any) -> Iterator[tuple[Any, ...]]:
        # An activity's run posts all its events at once (Echo never awaits), so the
        # worker takes them one after the other, run to completion each, and drops
        # the rest once the activity's state is left, as the runtime does.
        leaf, data, pend = self.wloc[wl]
        owner = None
        if kind == W_RECV:
            queue: list[tuple[str, Any]] = [
                ("input_closed" if arg == EOF else f"recv:{arg[0]}", arg)
            ]
        elif kind == W_ACT:
            owner, outs = pend[arg]
            pend = pend[:arg] + pend[arg + 1 :]
            queue = list(outs)
        else:
            queue = [(arg, None)]
        work: list[tuple[str, tuple[Any, ...], tuple[Any, ...], tuple[Msg, ...], int]] = [
            (leaf, data, pend, (), 0)
        ]
        w_table = self.w_table
        active = self.w_active
        while work:
            leaf, data, pend, sends, k = work.pop()
            if k == len(queue) or (owner is not None and owner not in active[leaf]):
                yield (self.intern_w(leaf, data, pend), sends, None, queue[0][0])
                continue
            event, msg = queue[k]
            bindings = WorkerBindings(self.bounds, data)
            machine = _machine(w_table, leaf, bindings)
            if machine.is_final:
                yield (self.intern_w(leaf, data, pend), sends, None, event)
                continue
            if event.startswith(OFFER_SEND):
                event = event[6:]
                if not machine.accepts(event, msg):
                    work.append((leaf, data, pend, sends, k + 1))  # the chart says no
                    continue
            violation = self._abort_rule(bindings, msg) if event == "send:TASK_ABORT" else None
            try:
                step = machine.fire(event, msg)
            except ProtocolViolation as exc:
                # As the runtime does: a refused message becomes bad_input. Where the
                # chart ignores bad_input (a message that crossed the worker's abort),
                # nothing is wrong.
                ignored = event.startswith("recv:") and any(
                    arc.step.internal for arc in self.wc.arcs(leaf, "bad_input") if not arc.guards
                )
                if not ignored:
                    yield (wl, sends, self._refusal("worker", event, exc), event)
                    continue
                step = machine.fire("bad_input", exc)
            if event.startswith("send:"):
                sends = (*sends, msg)
            exited = step.exited
            if exited:
                pend = tuple(p for p in pend if p[0] not in exited)
            if step.entered and self.abort_states.intersection(step.entered):
                bindings.cause = event
            for data2, pend2 in self._activate(bindings, step.entered, pend):
                if violation is not None:
                    yield (self.intern_w(step.target, data2, pend2), sends, violation, event)
                else:
                    work.append((step.target, data2, pend2, sends, k + 1))

    def _abort_rule(self, bindings: WorkerBindings, msg: Msg) -> Violation | None:
        reason, noted = msg[1]
        cause = bindings.cause
        if not noted:
            return Violation(
                "abort-reason",
                f"the worker aborted on {cause or 'an event'} without noting why: its TASK_ABORT "
                f"says only {reason} 'aborted'"
                + (
                    f", where the spec asks for {ABORT_REASONS[cause]}"
                    if cause in ABORT_REASONS
                    else ""
                ),
            )
        want = ABORT_REASONS.get(cause)
        if want is not None and reason != want:
            return Violation(
                "abort-reason",
                f"the worker aborted on {cause} with reason {reason}; the spec asks for {want}",
            )
        return None

    @staticmethod
    def _refusal(side: str, event: str, exc: ProtocolViolation) -> Violation:
        if event.startswith("recv:"):
            other = "modeller" if side == "worker" else "worker"
            return Violation("refused", f"the {side} refused the {other}'s {event[5:]}: {exc}")
        if event.startswith("send:"):
            return Violation(
                "own-send",
                f"the {side} tried to send {event[5:]}, which its own chart refuses: {exc}",
            )
        return Violation("internal-event", f"the {side}'s own event {event} was refused: {exc}")

    # -------------------------------------------------------------- modeller

    def modeller_step(
        self, mflags: int, lls: tuple[int, ...], index: int, event: str, msg: Any
    ) -> tuple[Any, ...]:
        """(mflags', lls', sends per link, violation, log, ended_now), memoised."""
        key = (mflags, lls, index, event, msg)
        found = self._mmemo.get(key)
        if found is None:
            found = self._mmemo[key] = self._modeller_step(mflags, lls, index, event, msg)
        return found

    def read(self, mflags: int, lls: tuple[int, ...], index: int, msg: Msg) -> tuple[Any, ...]:
        """The modeller reads ``msg`` from worker ``index``: :meth:`modeller_step`, memoised."""
        key = (mflags, lls, index, msg)
        found = self._rmemo.get(key)
        if found is None:
            found = self._rmemo[key] = self.modeller_step(mflags, lls, index, _recv_event(msg), msg)
        return found

    def _modeller_step(
        self, mflags: int, lls: tuple[int, ...], index: int, event: str, msg: Any
    ) -> tuple[Any, ...]:
        task = ModellerTask(self.bounds, bool(mflags & OWN_ABORT), bool(mflags & USER_CANCELLED))
        m_table = self.m_table
        for j, ll in enumerate(lls):
            leaf, data = self.lloc[ll]
            link = LinkBindings(task, j, data)
            link.machine = _machine(m_table, leaf, link)
            task.links.append(link)
        if event == USER_CANCEL_EVENT:
            task.user_cancelled = True
            task.cancel_all()
        elif event == START_EVENT:
            for j in range(len(lls)):
                task.raise_event(j, "send:JOB_REQUEST", ("JOB_REQUEST", None, None))
        else:
            task.raise_event(index, event, msg)
        log: list[tuple[str, int, Any]] = []
        sends: list[list[Msg]] = [[] for _ in lls]
        before = _signature(task.links[index]) if index >= 0 else None
        violation: Violation | None = None
        while task.queue and violation is None:
            j, name, data = task.queue.popleft()
            link = task.links[j]
            machine = link.machine
            if name == OFFER:
                name, data = data, (data[5:], None, None)
                if machine.is_final or name not in machine.expected():
                    continue
                if not machine.accepts(name, data):
                    continue
            if machine.is_final:
                if name.startswith("recv:") and link.wend:
                    violation = Violation(
                        "after-end",
                        f"worker {{w{j}}} sent {name[5:]} after its end "
                        "(its TASK_ABORT or JOB_REJECT)",
                    )
                continue  # the modeller has finished with this worker: nothing more is read
            if name.startswith("send:"):
                violation = self._send_rules(task, link, name[5:])
                if violation is not None:
                    log.append(("send", j, data))
                    break
            if name.startswith("recv:") and len(data) == 4:
                # A result the duplicate fault sent again: the chart must refuse it (W-4.11).
                violation = self._duplicate(link, data, log)
                continue
            try:
                machine.fire(name, data)
            except ProtocolViolation as exc:
                violation = self._refusal("modeller", name, exc)
                if name.startswith("recv:"):
                    log.append(("recv", j, data))  # it was on the wire: the trace shows it
                break
            if name.startswith("recv:"):
                log.append(("recv", j, data))
                typ = name[5:]
                if typ == "TASK_START":
                    link.ts = True
                elif typ == "BATCHES_COMPLETE" and data[1] == "TASK_COMPLETE":
                    link.done = True
                elif typ in ("TASK_ABORT", "JOB_REJECT"):
                    link.wend = True
            elif name.startswith("send:"):
                log.append(("send", j, data))
                sends[j].append(data)
                typ = name[5:]
                if typ == "TASK_START":
                    link.ssent = True
                elif typ == "TASK_COMPLETE":
                    link.dsent = True
            else:
                log.append(("internal", j, name))
        flags = (
            (OWN_ABORT if task.own_abort else 0)
            | (USER_CANCELLED if task.user_cancelled else 0)
            | (mflags & MODELLER_ENDED)
        )
        ended_now = False
        if not flags & MODELLER_ENDED and all(link.machine.is_final for link in task.links):
            flags |= MODELLER_ENDED
            ended_now = True
        new_lls = tuple(self.intern_l(link.machine.state, link.data()) for link in task.links)
        # Local: a read that looked at no other link, changed only this link and
        # nothing the others look at, and sent only to this worker. It commutes
        # with every step of the other workers and links (see the module docs).
        local = (
            before is not None
            and violation is None
            and not task.crossed
            and flags == mflags
            and not before[0]
            and before == _signature(task.links[index])
            and all(new_lls[j] == lls[j] and not sends[j] for j in range(len(lls)) if j != index)
        )
        # Links and their machines point at each other, and at the task: break those
        # cycles, so that reference counting frees them (the search runs without the
        # cyclic collector, see Explorer.run).
        for link in task.links:
            del link.machine
        task.links.clear()
        return (
            flags,
            new_lls,
            tuple(tuple(s) for s in sends),
            violation,
            tuple(log),
            ended_now,
            local,
        )

    @staticmethod
    def _duplicate(
        link: LinkBindings, data: tuple[Any, ...], log: list[tuple[str, int, Any]]
    ) -> Violation | None:
        """The modeller reads a batch result a second time: it must refuse it, as bad input.

        The refusal goes the runtime's way: ``bad_input`` (the link is lost, the others
        are cancelled). The trace then holds the worker's protocol error, which
        :meth:`Explorer._trace_check` expects ``check`` to report at that line.
        """
        machine, j = link.machine, link.index
        log.append((DUPLICATE, j, None))
        log.append(("recv", j, data[:3]))
        try:
            machine.fire(f"recv:{data[0]}", data)
        except ProtocolViolation as exc:
            if machine.accepts("bad_input", exc):
                machine.fire("bad_input", exc)
                log.append(("internal", j, "bad_input"))
            return None
        return Violation(
            "duplicate-result",
            f"the modeller took a second {data[0]} for batch {data[2]} from worker {{w{j}}}: "
            "the protocol allows one result per batch (rule W-4.11), and the chart must refuse "
            "the second",
        )

    def _send_rules(self, task: ModellerTask, link: LinkBindings, typ: str) -> Violation | None:
        """The spec's rules on what the modeller sends (section 4), checked as it sends.

        Time is not modelled, so a pod that has not answered yet may always be
        one whose response timeout expired: the rules count the workers that
        accepted in time and were not cancelled, as a trace checker does.
        """
        if link.dsent:
            return Violation(
                "after-end",
                f"the modeller sent {typ} to worker {{w{link.index}}} after TASK_COMPLETE",
            )
        if typ not in ("TASK_START", "TASK_COMPLETE"):
            return None
        counted = [o for o in task.links if o.acc and not o.late and not o.csent]
        if typ == "TASK_START":
            not_ready = [f"{{w{o.index}}}" for o in counted if not o.ts]
            if not_ready:
                return Violation(
                    "barrier",
                    f"the modeller sent TASK_START to worker {{w{link.index}}} before accepted "
                    f"worker(s) {', '.join(not_ready)} had sent TASK_START",
                )
            return None
        not_done = [f"{{w{o.index}}}" for o in counted if not o.done]
        if task.own_abort or not_done:
            why = (
                "a worker had aborted on its own"
                if task.own_abort
                else f"accepted worker(s) {', '.join(not_done)} had not finished"
            )
            return Violation(
                "completion",
                f"the modeller sent TASK_COMPLETE to worker {{w{link.index}}} while {why}",
            )
        return None

    # ------------------------------------------------------------ the system

    def initial_states(self) -> list[tuple[int, ...]]:
        lls0 = tuple(self.intern_l(self.mc.initial, L_INITIAL) for _ in range(self.bounds.workers))
        flags, lls, sends, violation, _, _, _ = self.modeller_step(0, lls0, -1, START_EVENT, None)
        if violation is not None:
            raise InternalError(f"the modeller cannot start: {violation.message}")
        n = self.bounds.workers
        roles = [[ALIVE] * n]
        faults = self.bounds.faults
        if "crash" in faults:
            roles += [[MAY_CRASH if j == w else ALIVE for j in range(n)] for w in range(n)]
        if "silence" in faults:
            for role in list(roles):
                for w in range(n):
                    if role[w] == ALIVE:
                        roles.append([MAY_GO_SILENT if j == w else r for j, r in enumerate(role)])
        if "duplicate" in faults:
            for role in list(roles):
                for w in range(n):
                    if role[w] == ALIVE:
                        roles.append([MAY_DUPLICATE if j == w else r for j, r in enumerate(role)])
        found = []
        for wl in self.initial_workers():
            for role in roles:
                pws = [self.intern_pw((lls[j], wl, role[j], sends[j], ())) for j in range(n)]
                found.append((flags, *sorted(pws)))
        return found

    def is_end(self, state: tuple[int, ...]) -> bool:
        if not state[0] & MODELLER_ENDED:
            return False
        return all(self.pw[p][2] >= CRASHED for p in state[1:])


@final
class Explorer:
    """Breadth-first search over a :class:`System`, with the checks of docs/testing.md."""

    def __init__(
        self,
        system: System,
        *,
        symmetry: bool = True,
        por: bool = True,
        max_states: int | None = None,
        spec_chart: Chart | None = None,
        progress: Callable[[int, float], None] | None = None,
        check_traces: bool = True,
    ) -> None:
        self.system = system
        self.symmetry = symmetry
        self.por = por
        self.max_states = max_states
        self.spec_chart = spec_chart or system.modeller_chart
        self.progress = progress
        self.check_traces = check_traces
        self.faults = system.bounds.faults
        self.index: dict[int, int] = {}
        self.states: list[int] = []  # encoded: see _encode
        self.parent = array("q")
        self.label: list[Label | None] = []
        # The graph, forward: state s's successors are edges_dst[edge_start[s]:edge_start[s + 1]].
        self.edge_start = array("q")
        self.edges_dst = array("q")
        self.ends: list[int] = []
        self.orbit_total = 0
        self.enabled_total = 0
        self.expanded_total = 0
        self.traces_checked = 0
        self.trace_keys: set[Any] = set()
        self._previous_order: list[str] = []
        self.n = system.bounds.workers
        self.shifts = [_FLAG_BITS + _PART_BITS * k for k in range(self.n)]
        self._messages: dict[Any, tuple[Message, bytes]] = {}
        self._accounts: dict[tuple[Any, ...], tuple[int, bool, int]] = {}
        self._local_cache: dict[int, tuple[tuple[Any, ...], bool, bool]] = {}
        self._plans: dict[Any, tuple[Any, ...]] = {}
        self._contexts: dict[Any, tuple[Any, ...]] = {}
        self._changes: dict[Any, dict[int, int]] = {}

    # ------------------------------------------------------------ successors

    def _local(self, pw: int, ended: int, i: int) -> tuple[tuple[Any, ...], bool, bool]:
        """Worker ``i``'s own moves from its part ``pw`` (cached): (moves, busy, ample).

        A move is (label, new part, violation, flags it sets); busy: it can read a
        message or run an activity; ample: its moves may be expanded alone (its
        input channel is not empty, or the modeller has ended).
        """
        system = self.system
        comp = system.pw[pw]
        _, wl, ws, m2w, _ = comp
        steps: list[tuple[int, Any]] = []
        if ws < CRASHED:
            if m2w:
                steps.append((W_RECV, m2w[0]))
            steps.extend((W_ACT, k) for k in range(len(system.wloc[wl][2])))
        busy = bool(steps)
        # The worker chosen at the start may crash or go silent, once, before its end.
        if ws == MAY_CRASH:
            steps.append((CRASH, None))
        elif ws == MAY_GO_SILENT:
            steps.append((SILENCE, None))
        flags = MODELLER_ENDED if ended else 0
        moves = []
        for kind, arg in steps:
            for label, new_flags, new, violation in self._apply(flags, [pw], [comp], kind, 0, arg):
                delta = (new[0] - pw) << self.shifts[i]
                moves.append(
                    ((kind, i, arg, label[3]), new[0], violation, new_flags & ~flags, delta)
                )
        found = (tuple(moves), busy, busy and bool(m2w or ended))
        self._local_cache[(pw * 2 + (1 if ended else 0)) * self.n + i] = found
        return found

    def _plan(
        self, mflags: int, lls: tuple[int, ...], kind: int, i: int, arg: Any, msg: Any = None
    ) -> tuple[Any, ...]:
        """A modeller step as the search applies it (cached by the caller).

        (label, flags it sets, changes, violation, local): ``changes`` lists, for
        each worker whose part changes, (position, memo of part to new part, the
        change), so a step from a state only looks parts up in those memos.
        """
        system = self.system
        used = 0
        if kind == M_RECV:
            result = system.read(mflags, lls, i, msg)
        else:
            if kind == CANCEL:
                event, used = USER_CANCEL_EVENT, USED_CANCEL
            elif kind == LATE:
                event, used = arg, USED_LATE
            else:
                event = arg
            result = system.modeller_step(mflags, lls, i, event, None)
        new_flags, lls2, sends, violation, _log, ended_now, local = result
        changes = []
        for j in range(len(lls)):
            popped = j == i and kind == M_RECV
            if popped or lls2[j] != lls[j] or sends[j] or ended_now:
                change = (lls2[j], sends[j], popped, ended_now)
                memo = self._changes.get(change)
                if memo is None:
                    memo = self._changes[change] = {}
                changes.append((j, memo, change))
        label = (kind, i, result if kind == M_RECV else arg, 0)
        return (label, new_flags | used, tuple(changes), violation, local)

    def _changed(self, p: int, change: tuple[Any, ...], memo: dict[int, int]) -> int:
        """Part ``p`` after a modeller step's ``change`` to it (see :meth:`_modeller_move`)."""
        ll2, sends, popped, ended_now = change
        _, wl, ws, m2w, w2m = self.system.pw[p]
        if popped:
            w2m = w2m[1:]
        if ws < CRASHED:
            if sends:
                m2w = m2w + sends
            if ended_now:
                m2w = (*m2w, EOF)
        if ended_now:
            w2m = ()
        found = memo[p] = self.system.intern_pw((ll2, wl, ws, m2w, w2m))
        return found

    def successors(self, state: int) -> tuple[list[Any], bool]:
        """The moves to expand from ``state`` (see :meth:`_encode`), and whether it is quiescent.

        A move is (successor state, label, violation). Quiescent: no message can
        be read and no activity has output left. Only then may timers expire,
        and only after a fault that silenced a party (crash, silence); otherwise
        a quiescent state that is not an end is a deadlock.

        This is the search's hot loop: everything a step needs of a worker's part
        or of the modeller is cached (:meth:`_local`, :meth:`_plan`), so a state
        costs a few dictionary look-ups, and a worker's own move, without the
        symmetry reduction, one addition to the encoded state.
        """
        system = self.system
        flags = state & _FLAG_MASK
        shifts = self.shifts
        pws = [(state >> shift) & _PART_MASK for shift in shifts]
        n = self.n
        ended = flags & MODELLER_ENDED
        por = self.por
        symmetry = self.symmetry
        mflags = flags & _MODELLER_FLAGS
        heads = system.pw_head
        part_ll = system.pw_ll
        lls = tuple([part_ll[p] for p in pws])
        plans: tuple[Any, ...] = ()
        memos: list[dict[Any, tuple[Any, ...]]] = []
        if not ended:
            context = (flags & _CONTEXT_FLAGS, lls)
            found_context = self._contexts.get(context)
            if found_context is None:
                found_context = self._context(*context)
            plans, memos = found_context
        busy = False
        local_moves = []
        ample_worker = -1
        ample_read = -1
        reads: list[tuple[Any, ...]] = []
        enabled = 0
        local_get = self._local_cache.get
        plan_get = self._plans.get
        base = 1 if ended else 0
        for i in range(n):
            p = pws[i]
            cached = local_get((p * 2 + base) * n + i)
            moves, own, alone = cached if cached is not None else self._local(p, ended, i)
            local_moves.append(moves)
            enabled += len(moves)
            if own:
                busy = True
                if ample_worker < 0 and alone:
                    # Every move of this worker: what the modeller sends later queues
                    # behind the message at the head, so nothing can overtake these.
                    ample_worker = i
            head = heads[p]
            if head is not None and not ended:
                busy = True
                plan = memos[i].get(head)
                if plan is None:
                    plan = memos[i][head] = self._plan(mflags, lls, M_RECV, i, None, head)
                reads.append(plan)
                if ample_read < 0 and plan[4]:
                    ample_read = len(reads) - 1
        out: list[Any] = []
        if por and ample_read >= 0:
            self._steps(out, state, pws, [reads[ample_read]])
            self.enabled_total += enabled + len(reads)
            self.expanded_total += 1
            return out, False
        if por and ample_worker >= 0:
            self._moves(out, state, pws, ample_worker, local_moves[ample_worker])
            self.enabled_total += enabled + len(reads)
            self.expanded_total += len(local_moves[ample_worker])
            return out, False
        if symmetry:
            for i in range(n):
                self._moves(out, state, pws, i, local_moves[i])
        else:
            # _moves without symmetry, written out: the hottest loop of the search.
            append = out.append
            for moves in local_moves:
                for label, _, violation, bits, delta in moves:
                    append(((state + delta) | bits, label, violation))
        if reads:
            self._steps(out, state, pws, reads)
        count = enabled + len(reads)
        if not ended and plans:
            # The user's cancel and late answers, when asked for and still unused.
            self._steps(out, state, pws, plans)
            count += len(plans)
        if busy:
            if por:  # the partial-order factor's tally (1 without the reduction)
                self.enabled_total += count
                self.expanded_total += count
            return out, False
        global_steps: list[tuple[int, int, Any]] = []
        if flags & (USED_CRASH | USED_SILENCE):
            comps = [system.pw[p] for p in pws]
            timer_steps: list[list[tuple[int, Any]]] = [[] for _ in range(n)]
            self._timers(comps, timer_steps, global_steps, ended)
            for i in range(n):
                global_steps.extend((k, i, a) for k, a in timer_steps[i])
        timer_plans = []
        for kind, i, arg in global_steps:
            if kind == W_TIMER:
                comps = [system.pw[p] for p in pws]
                for label, new_flags, new, violation in self._apply(
                    flags, list(pws), comps, kind, i, arg
                ):
                    out.append((self._encode(new_flags, new), label, violation))
                continue
            step_key = (mflags, lls, i, kind, arg)
            found = plan_get(step_key)
            if found is None:
                found = self._plans[step_key] = self._plan(mflags, lls, kind, i, arg)
            timer_plans.append(found)
        if timer_plans:
            self._steps(out, state, pws, timer_plans)
        count += len(global_steps)
        if por:
            self.enabled_total += count
            self.expanded_total += count
        return out, True

    def _context(self, cflags: int, lls: tuple[int, ...]) -> tuple[Any, ...]:
        """What the modeller offers, given its flags and links (cached): (steps, reads).

        ``steps`` are the plans of the user's cancel and of late answers, when
        those faults are asked for and still unused; ``reads[i]`` maps the
        message at the head of worker ``i``'s channel to the plan of reading it
        (filled as the search meets them).
        """
        system = self.system
        faults = self.faults
        mflags = cflags & _MODELLER_FLAGS
        plans = []
        if "cancel" in faults and not cflags & USED_CANCEL:
            plans.append(self._plan(mflags, lls, CANCEL, -1, None))
        if "late-accept" in faults and not cflags & USED_LATE:
            for i in range(self.n):
                if "response_timeout" in system.mc.expected[system.lloc[lls[i]][0]]:
                    plans.append(self._plan(mflags, lls, LATE, i, "response_timeout"))
        reads: list[dict[Any, tuple[Any, ...]]] = [{} for _ in range(self.n)]
        found = self._contexts[(cflags, lls)] = (tuple(plans), reads)
        return found

    def _encode(self, flags: int, pws: list[int]) -> int:
        """A state as one int: the flags, then each worker's part (sorted, with symmetry)."""
        if self.symmetry:
            pws.sort()
        state = flags
        for shift, p in zip(self.shifts, pws, strict=True):
            state |= p << shift
        return state

    def _decode(self, state: int) -> tuple[int, ...]:
        """``(flags, part of worker 0, part of worker 1, ...)`` of an encoded state."""
        return (state & _FLAG_MASK, *((state >> shift) & _PART_MASK for shift in self.shifts))

    def _steps(
        self, out: list[Any], state: int, pws: list[int], plans: Sequence[tuple[Any, ...]]
    ) -> None:
        """Append the successors that the modeller steps ``plans`` lead to."""
        symmetry = self.symmetry
        shifts = self.shifts
        changed = self._changed
        keep = state & ~_MODELLER_FLAGS
        for label, bits, changes, violation, _ in plans:
            if symmetry:
                new = list(pws)
                for j, memo, change in changes:
                    p = new[j]
                    q = memo.get(p)
                    new[j] = q if q is not None else changed(p, change, memo)
                succ = self._encode(keep & _FLAG_MASK | bits, new)
            else:
                succ = keep
                for j, memo, change in changes:
                    p = pws[j]
                    q = memo.get(p)
                    if q is None:
                        q = changed(p, change, memo)
                    succ += (q - p) << shifts[j]
                succ |= bits
            out.append((succ, label, violation))

    def _moves(
        self, out: list[Any], state: int, pws: list[int], i: int, moves: tuple[Any, ...]
    ) -> None:
        """Append the successors of worker ``i``'s own ``moves``."""
        if self.symmetry:
            flags = state & _FLAG_MASK
            for label, q, violation, bits, _ in moves:
                new = list(pws)
                new[i] = q
                out.append((self._encode(flags | bits, new), label, violation))
        else:
            for label, _, violation, bits, delta in moves:
                out.append(((state + delta) | bits, label, violation))

    def _timers(
        self,
        comps: list[Any],
        local: list[list[tuple[int, Any]]],
        global_steps: list[tuple[int, int, Any]],
        ended: int,
    ) -> None:
        system = self.system
        for i, (ll, wl, ws, _, _) in enumerate(comps):
            if ws < CRASHED:
                for event in system.w_timers[system.wloc[wl][0]]:
                    local[i].append((W_TIMER, event))
            if ended:
                continue
            lleaf, ldata = system.lloc[ll]
            for event in system.m_timers[lleaf]:
                global_steps.append((M_TIMER, i, event))
            if lleaf in system.mc.finals:
                continue
            expected = system.mc.expected[lleaf]
            if ldata[3] and "cancel_unconfirmed" in expected:
                global_steps.append((M_TIMER, i, "cancel_unconfirmed"))
            if (
                "link_lost" in expected
                and "send:TASK_START" not in expected
                and "send:TASK_COMPLETE" not in expected
            ):
                # The runtime's idle timeout: the modeller waits on a silent worker.
                global_steps.append((M_TIMER, i, "link_lost"))

    def _apply(
        self, flags: int, pws: list[int], comps: list[Any], kind: int, i: int, arg: Any
    ) -> Iterator[tuple[Label, int, list[int], Any]]:
        system = self.system
        if kind in (W_RECV, W_ACT, W_TIMER):
            ll, wl, ws, m2w, w2m = comps[i]
            if kind == W_RECV:
                m2w = m2w[1:]
            for branch, (wl2, sends, violation, _event) in enumerate(
                system.worker_step(wl, kind, arg)
            ):
                ws2 = ENDED if system.wloc[wl2][0] in system.w_finals else ws
                out = w2m + sends if sends and not flags & MODELLER_ENDED else w2m
                new = list(pws)
                new[i] = system.intern_pw((ll, wl2, ws2, () if ws2 == ENDED else m2w, out))
                yield (kind, i, arg, branch), flags, new, violation
                if ws == MAY_DUPLICATE and violation is None and not flags & MODELLER_ENDED:
                    doubled = _doubled(sends)
                    if doubled is not None:
                        new = list(pws)
                        ws3 = ENDED if ws2 == ENDED else ALIVE
                        m2w3 = () if ws3 == ENDED else m2w
                        new[i] = system.intern_pw((ll, wl2, ws3, m2w3, w2m + doubled))
                        yield (kind, i, arg, branch | DUP_BRANCH), flags | USED_DUPLICATE, new, None
            return
        if kind in (CRASH, SILENCE):
            ll, wl, ws, m2w, w2m = comps[i]
            new = list(pws)
            if kind == CRASH:
                out = w2m + (EOF,) if not flags & MODELLER_ENDED else w2m
                new[i] = system.intern_pw((ll, wl, CRASHED, (), out))
                yield (kind, i, arg, 0), flags | USED_CRASH, new, None
            else:
                new[i] = system.intern_pw((ll, wl, SILENT, (), w2m))
                yield (kind, i, arg, 0), flags | USED_SILENCE, new, None
            return
        used = 0
        if kind == M_RECV:
            result = arg  # computed by successors()
        else:
            if kind == CANCEL:
                event, used = USER_CANCEL_EVENT, USED_CANCEL
            elif kind == LATE:
                event, used = arg, USED_LATE
            else:
                event = arg
            lls = tuple(c[0] for c in comps)
            result = system.modeller_step(flags & _MODELLER_FLAGS, lls, i, event, None)
        yield self._modeller_move(flags, pws, comps, kind, i, arg, result, used)

    def _modeller_move(
        self,
        flags: int,
        pws: Sequence[int],
        comps: list[Any],
        kind: int,
        i: int,
        arg: Any,
        result: tuple[Any, ...],
        used: int,
    ) -> tuple[Label, int, list[int], Any]:
        """The move of a modeller step whose ``result`` is known: every worker's new part."""
        mflags, lls2, sends, violation, _log, ended_now, _local = result
        new_flags = (flags & ~_MODELLER_FLAGS) | mflags | used
        new = []
        memo = self.system._pmemo
        for j, p in enumerate(pws):
            popped = j == i and kind == M_RECV
            key = (p, lls2[j], sends[j], popped, ended_now)
            found = memo.get(key)
            if found is None:
                _, wl, ws, m2w, w2m = comps[j]
                if popped:
                    w2m = w2m[1:]
                if ws < CRASHED:
                    if sends[j]:
                        m2w = m2w + sends[j]
                    if ended_now:
                        m2w = (*m2w, EOF)
                if ended_now:
                    w2m = ()
                found = memo[key] = self.system.intern_pw((lls2[j], wl, ws, m2w, w2m))
            new.append(found)
        return (kind, i, arg, 0), new_flags, new, violation

    # ---------------------------------------------------------------- search

    def run(self) -> ExploreResult:
        # The search makes millions of tuples that live to the end and no reference
        # cycles but a few (the modeller step's bindings and machines): the cyclic
        # collector would scan the growing state table again and again, for nothing.
        # It is off while the search runs (the few cycles a step makes are broken by hand).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if collecting:
                gc.enable()

    def _run(self) -> ExploreResult:
        start = time.perf_counter()
        system = self.system
        index = self.index
        states = self.states
        parent = self.parent
        labels = self.label
        starts, dst = self.edge_start, self.edges_dst
        for initial in system.initial_states():
            s = self._encode(initial[0], list(initial[1:]))
            if s not in index:
                index[s] = len(states)
                states.append(s)
                parent.append(-1)
                labels.append(None)
        verdict: Literal["ok", "violation", "limit"] = "ok"
        counterexample = None
        transitions = 0
        last_report = start
        head = 0
        successors = self.successors
        index_get = index.get
        states_append = states.append
        parent_append = parent.append
        labels_append = labels.append
        starts_append = starts.append
        dst_append = dst.append
        limit = self.max_states if self.max_states is not None else -1
        progress = self.progress
        try:
            while head < len(states):
                state = states[head]
                current = head
                head += 1
                if 0 <= limit < len(states):
                    verdict = "limit"
                    break
                moves, quiescent = successors(state)
                if quiescent:
                    self._quiescent(current, self._decode(state), moves)
                transitions += len(moves)
                starts_append(len(dst))
                for succ, label, violation in moves:
                    found = index_get(succ)
                    if found is None:
                        found = index[succ] = len(states)
                        states_append(succ)
                        parent_append(current)
                        labels_append(label)
                    dst_append(found)
                    if violation is not None:
                        raise _Found(violation, found)
                if progress is not None and head & 0x3FFF == 0:
                    now = time.perf_counter()
                    if now - last_report >= 1.0:
                        last_report = now
                        progress(len(states), now - start)
            if verdict == "ok":
                starts_append(len(dst))
                self._progress_check()
        except _Found as found:
            verdict = "violation"
            counterexample = self.counterexample(found.state, found.violation)
        seconds = time.perf_counter() - start
        if self.symmetry and verdict == "ok":
            # The mean orbit over an even sample of at most 65,536 states.
            stride = max(1, len(states) // 65536)
            sample = states[::stride]
            orbit = sum(self._orbit(self._decode(s)) for s in sample) / max(1, len(sample))
        else:
            orbit = 1.0
        por_factor = self.enabled_total / self.expanded_total if self.expanded_total else 1.0
        return ExploreResult(
            verdict=verdict,
            bounds=system.bounds,
            states=len(states),
            transitions=transitions,
            seconds=seconds,
            ends=len(self.ends),
            traces_checked=self.traces_checked,
            symmetry=self.symmetry,
            por=self.por,
            symmetry_factor=orbit,
            por_factor=por_factor if self.por else 1.0,
            counterexample=counterexample,
        )

    @staticmethod
    def _orbit(state: tuple[int, ...]) -> int:
        """How many concrete states this sorted state stands for: n! / prod(k!)."""
        from math import factorial

        pws = state[1:]
        result = factorial(len(pws))
        for value in set(pws):
            result //= factorial(pws.count(value))
        return result

    # ----------------------------------------------------------------- checks

    def _quiescent(self, current: int, state: tuple[int, ...], moves: list[Any]) -> None:
        system = self.system
        if not system.is_end(state):
            if not any(label[0] in (W_TIMER, M_TIMER) for _, label, _ in moves):
                raise _Found(self._deadlock(state), current)
            return
        self.ends.append(current)
        violation = self._items(state)
        if violation is not None:
            raise _Found(violation, current)
        if self.check_traces:
            self._trace_check(current)

    def _deadlock(self, state: tuple[int, ...]) -> Violation:
        system = self.system
        parts = []
        for n, p in enumerate(state[1:]):
            ll, wl, ws, _, _ = system.pw[p]
            status = {CRASHED: " (crashed)", SILENT: " (silent)"}.get(ws, "")
            parts.append(f"{{w{n}}}: {system.wloc[wl][0]}{status} / link {system.lloc[ll][0]}")
        return Violation(
            at_state=True,
            check="deadlock",
            message="nothing can happen and the task has not ended: " + "; ".join(parts),
        )

    def _items(self, state: tuple[int, ...]) -> Violation | None:
        """Spec section 5: every item delivered exactly once, or failed, or cut, or not run."""
        system = self.system
        for n, p in enumerate(state[1:]):
            ll, wl, _, _, _ = system.pw[p]
            link = system.lloc[ll][1]
            data = system.wloc[wl][1]
            received, dup, completed = link[9], link[10], link[14]
            if data[0] and not received and not completed:
                continue  # it rejected the job: nothing to account for
            if dup:
                return Violation(
                    "items",
                    at_state=True,
                    message=f"an item of worker {{w{n}}} was delivered twice",
                )
            deliverable, complete, failed = self._account(data)
            extra = received & ~deliverable
            if extra:
                return Violation(
                    "items",
                    at_state=True,
                    message=f"worker {{w{n}}} delivered {_names(extra)}, "
                    "which its Echo job does not deliver",
                )
            if completed:
                if not complete:
                    return Violation(
                        "items",
                        at_state=True,
                        message=f"the modeller completed worker {{w{n}}}, "
                        "whose Echo job cannot complete",
                    )
                if received != deliverable:
                    return Violation(
                        "items",
                        at_state=True,
                        message=f"worker {{w{n}}} completed without delivering "
                        f"{_names(deliverable & ~received)}",
                    )
                if data[7] != failed:
                    return Violation(
                        "items",
                        at_state=True,
                        message=f"worker {{w{n}}} reports {_names(data[7]) or 'nothing'} "
                        "failed; its job fails "
                        f"{_names(failed) or 'nothing'}",
                    )
        return None

    def _account(self, data: tuple[Any, ...]) -> tuple[int, bool, int]:
        """What a worker's Echo job delivers and fails (bitmasks), and whether it completes."""
        found = self._accounts.get(data)
        if found is None:
            bounds = self.system.bounds
            prediction = predict_echo(_echo_config(bounds, data), batched=bounds.batched)
            deliverable = failed = 0
            for name in prediction.items_with(Fate.DELIVERED):
                deliverable |= 1 << int(name[1:])
            for name in prediction.items_with(Fate.FAILED):
                failed |= 1 << int(name[1:])
            found = self._accounts[data] = (deliverable, prediction.complete, failed)
        return found

    def _trace_check(self, current: int) -> None:
        """Check one run to each distinct outcome with the trace checker (``fsm-protocol check``).

        An outcome is, per worker, the modeller's end for it, the worker's own
        end and status, the items the modeller received and the abort reason.
        """
        system = self.system
        outcome = []
        state = self._decode(self.states[current])
        for p in state[1:]:
            ll, wl, ws, _, _ = system.pw[p]
            lleaf, ldata = system.lloc[ll]
            wleaf, wdata, _ = system.wloc[wl]
            outcome.append((lleaf, wleaf, ws, ldata[9], wdata[10], wdata[0], wdata[1]))
        key = (state[0], tuple(sorted(outcome)))
        if key in self.trace_keys:
            return
        self.trace_keys.add(key)
        _, _, markers, order, lines = self.replay(current, describe=False)
        silent = [
            pod for pod, p in zip(order, state[1:], strict=True) if self.system.pw[p][2] == SILENT
        ]
        checker = TraceChecker(chart=self.spec_chart, unanswered_ok=silent)
        # A result the duplicate fault sent again is the worker's protocol error:
        # check must report it, at its line, as the first finding (rule W-4.11).
        duplicate = next((at + 1 for at, _, event in markers if event == DUPLICATE), None)
        internal = [m for m in markers if m[2] != DUPLICATE]
        at = 0
        for position, line in enumerate(lines):
            while at < len(internal) and internal[at][0] <= position:
                _, pod, event = internal[at]
                checker.internal(TASK_ID, pod, event, excuse=event in _EXCUSED)
                at += 1
            if checker.feed(line) is not None:
                break
        while at < len(internal):
            _, pod, event = internal[at]
            checker.internal(TASK_ID, pod, event, excuse=event in _EXCUSED)
            at += 1
        result = checker.finish()
        self.traces_checked += 1
        if duplicate is not None:
            finding = result.finding
            if finding is None or finding.line != duplicate or finding.rule != "W-4.11":
                said = "accepts it" if finding is None else finding.render()
                raise _Found(
                    Violation(
                        "trace",
                        f"line {duplicate} of this run is a batch result sent twice (fault "
                        f"duplicate), which fsm-protocol check should report there under rule "
                        f"W-4.11; it says: {said}",
                        at_state=True,
                    ),
                    current,
                )
        elif not result.ok:
            assert result.finding is not None
            raise _Found(
                Violation(
                    "trace",
                    "fsm-protocol check rejects this run: " + result.finding.render(),
                    at_state=True,
                ),
                current,
            )

    def _progress_check(self) -> None:
        """No run may go on for ever without progress: from every state an end is reachable."""
        stuck = self.reaching_ends().find(0)
        if stuck >= 0:
            raise _Found(
                Violation(
                    at_state=True,
                    check="no-progress",
                    message="from here no run reaches an end: the system can only go round a cycle "
                    "(for example ONLINE_CHECK and ONLINE_RESPONSE for ever)",
                ),
                stuck,
            )

    def reaching_ends(self, passes: int = 4) -> bytearray:
        """Per state of a finished search, 1 if some run from it reaches an end, else 0.

        Backwards over the states, in up to ``passes`` passes: a state reaches an
        end if one of its successors does. Most edges lead to a state found later
        (breadth first), so one pass settles nearly all; a pass that settles
        nothing more ends it. If the passes run out first, a search backwards
        over the reversed edges settles the rest.
        """
        count = len(self.states)
        starts, dst = self.edge_start, self.edges_dst
        reach = bytearray(count)
        for e in self.ends:
            reach[e] = 1
        pending: Sequence[int] = range(count - 1, -1, -1)
        for _ in range(passes):
            left = []
            for s in pending:
                if reach[s]:
                    continue
                for k in range(starts[s], starts[s + 1]):
                    if reach[dst[k]]:
                        reach[s] = 1
                        break
                else:
                    left.append(s)
            if not left or len(left) == len(pending):
                return reach
            pending = left
        self._reach_backwards(reach)
        return reach

    def _reach_backwards(self, reach: bytearray) -> None:
        """Mark in ``reach`` every state from which a marked one is reachable (reverse search)."""
        count = len(self.states)
        starts, dst = self.edge_start, self.edges_dst
        degree = [0] * (count + 1)
        for d in dst:
            degree[d + 1] += 1
        for k in range(count):
            degree[k + 1] += degree[k]
        fill = degree[:]
        back = array("q", bytes(8 * len(dst)))
        for s in range(count):
            for k in range(starts[s], starts[s + 1]):
                d = dst[k]
                back[fill[d]] = s
                fill[d] += 1
        todo = [s for s in range(count) if reach[s]]
        while todo:
            d = todo.pop()
            for k in range(degree[d], degree[d + 1]):
                s = back[k]
                if not reach[s]:
                    reach[s] = 1
                    todo.append(s)

    # ---------------------------------------------------------- counterexample

    def _path(self, target: int) -> list[int]:
        path = []
        node = target
        while node >= 0:
            path.append(node)
            node = self.parent[node]
        path.reverse()
        return path

    def replay(
        self, target: int, *, describe: bool = True
    ) -> tuple[list[str], list[Message], list[tuple[int, str, str]], list[str], list[bytes]]:
        """Re-run the path to ``target``: its steps, the modeller's trace, the internal markers.

        Returns the pod names in the order of ``target``'s workers as well, and
        the trace's lines as ``fsm-protocol check`` reads them. Without
        ``describe``, the steps are not put in words (they stay empty).
        """
        system = self.system
        path = self._path(target)
        names = _pods(system.bounds.workers)
        # Each stored state keeps its workers sorted; ``order[k]`` is the pod at position k.
        initial = self._decode(self.states[path[0]])
        order = list(names)
        initial_pws = list(initial[1:])
        events: list[tuple[str, int, Any]] = []
        steps: list[str] = []
        flags0 = 0
        lls0 = tuple(system.intern_l(system.mc.initial, L_INITIAL) for _ in names)
        log = system.modeller_step(flags0, lls0, -1, START_EVENT, None)[4]
        for kind, j, payload in log:
            events.append((kind, names.index(order[j]), payload))
        steps.append("the modeller sends JOB_REQUEST to every worker")
        # All workers start identical, so the initial order is arbitrary but fixed.
        del initial_pws
        previous_order = list(order)
        for k in range(1, len(path)):
            previous_order = list(order)
            prev = self._decode(self.states[path[k - 1]])
            label = self.label[path[k]]
            assert label is not None
            kind, i, arg, branch = label
            flags = prev[0]
            pws = list(prev[1:])
            comps = [system.pw[p] for p in pws]
            pod = order[i]
            if describe:
                steps.append(self._describe(kind, pod, arg, comps[i], branch))
            if kind in (M_RECV, M_TIMER, LATE, CANCEL):
                lls = tuple(c[0] for c in comps)
                if kind == M_RECV:
                    msg = comps[i][4][0]
                    event = "link_lost" if msg == EOF else f"recv:{msg[0]}"
                elif kind == CANCEL:
                    event, msg = USER_CANCEL_EVENT, None
                else:
                    event, msg = arg, None
                result = system.modeller_step(flags & _MODELLER_FLAGS, lls, i, event, msg)
                if kind == M_RECV:
                    arg = result
                for entry_kind, j, payload in result[4]:
                    events.append((entry_kind, names.index(order[j]), payload))
            produced = None
            for candidate_label, new_flags, new_pws, _ in self._apply(
                flags, pws, comps, kind, i, arg
            ):
                if candidate_label[3] == branch:
                    produced = (new_flags, new_pws)
                    break
            assert produced is not None
            new_flags, new_pws = produced
            if self._encode(new_flags, list(new_pws)) != self.states[path[k]]:
                # The search's cached steps and the engine's own disagree: a bug here.
                raise InternalError(f"replaying step {k} of a path reached another state")
            if self.symmetry:
                ranked = sorted(range(len(new_pws)), key=lambda m: new_pws[m])
                order = [order[m] for m in ranked]
        trace, markers, lines = self._render(events, path[-1], order)
        self._previous_order = previous_order
        return steps, trace, markers, order, lines

    def _describe(self, kind: int, pod: str, arg: Any, comp: Any, branch: int) -> str:
        system = self.system
        if kind == W_RECV:
            return f"{pod} reads {_show(arg)}"
        if kind == W_ACT:
            pend = system.wloc[comp[1]][2]
            state, outs = pend[arg]
            what = ", then ".join(_output(event, msg) for event, msg in outs)
            if branch & DUP_BRANCH:
                what += " (fault duplicate: its batch result goes out twice)"
            return f"{pod} ({state}) {what}"
        if kind == W_TIMER:
            return f"{pod}: timer {arg} expires"
        if kind == M_RECV:
            msg = comp[4][0]
            again = " again (fault duplicate)" if len(msg) == 4 else ""
            return f"the modeller reads {_show(msg)} from {pod}{again}"
        if kind == M_TIMER:
            return f"the modeller's timer {arg} for {pod} expires"
        if kind == LATE:
            return f"the modeller's response timeout for {pod} expires (fault late-accept)"
        if kind == CRASH:
            return f"{pod} crashes (fault crash)"
        if kind == SILENCE:
            return f"{pod} goes silent (fault silence)"
        if kind == CANCEL:
            return "the user cancels the task (fault cancel)"
        return f"step {kind}"

    def _render(
        self, events: list[tuple[str, int, Any]], target: int, order: list[str]
    ) -> tuple[list[Message], list[tuple[int, str, str]], list[bytes]]:
        """The modeller's trace of the path (wire messages with real seqs, and encoded), and
        internal events."""
        system = self.system
        bounds = system.bounds
        names = _pods(bounds.workers)
        state = self._decode(self.states[target])
        configs = {}
        for pod, p in zip(order, state[1:], strict=True):
            configs[pod] = _echo_config(bounds, system.wloc[system.pw[p][1]][1])
        modeller_seq = 0
        worker_seq = dict.fromkeys(names, 0)
        trace: list[Message] = []
        lines: list[bytes] = []
        markers: list[tuple[int, str, str]] = []
        memo = self._messages
        for kind, j, payload in events:
            pod = names[j]
            if kind == "internal":
                markers.append((len(trace), pod, payload))
                continue
            if kind == DUPLICATE:
                markers.append((len(trace), pod, DUPLICATE))
                continue
            if kind == "send":
                sender, recipient, seq = MODELLER, pod, modeller_seq
                modeller_seq += 1
            else:
                sender, recipient, seq = pod, MODELLER, worker_seq[pod]
                worker_seq[pod] += 1
            key = (payload, sender, seq, pod, configs[pod])
            found = memo.get(key)
            if found is None:
                message = _message(
                    payload, sender, recipient, seq, pod, names, configs[pod], bounds
                )
                found = memo[key] = (message, encode(message))
            trace.append(found[0])
            lines.append(found[1])
        return trace, markers, lines

    def counterexample(self, target: int, violation: Violation) -> Counterexample:
        steps, trace, markers, order, _ = self.replay(target)
        named = violation.named(order if violation.at_state else self._previous_order)
        return Counterexample(named, tuple(steps), tuple(trace), tuple(markers))


_EXCUSED: Final = frozenset({"link_lost", "cancel_unconfirmed"})


def _machine(table: BoundTable, leaf: str, bindings: object) -> Machine:
    """A machine over an already bound table, put in ``leaf``: the engine, without its set-up."""
    machine = Machine.__new__(Machine)
    machine._table = table
    machine._leaf = leaf
    machine._bindings = bindings
    machine._reference = None
    return machine


def _doubled(sends: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """``sends`` with its first batch result sent twice, the second marked; None if none."""
    for k, msg in enumerate(sends):
        if msg[0] == "EVALUATION_RESULTS" and msg[2] is not None:
            return (*sends[: k + 1], (*msg, DUPLICATE), *sends[k + 1 :])
    return None


def _recv_event(msg: Msg) -> str:
    return "link_lost" if msg == EOF else f"recv:{msg[0]}"


def _output(event: str, msg: Any) -> str:
    if event.startswith(OFFER_SEND):
        return f"offers {_show(msg)} (its chart decides)"
    return f"sends {_show(msg)}" if event.startswith("send:") else f"posts {event}"


def _names(mask: int) -> str:
    return ", ".join(_item(i) for i in range(mask.bit_length()) if mask >> i & 1)


def _show(msg: Any) -> str:
    if msg == EOF:
        return "the end of the stream"
    typ, body, batch = msg[:3]
    if typ == "EVALUATION_RESULTS":
        where = "no batch" if batch is None else f"batch {batch}"
        return f"EVALUATION_RESULTS({where}: {', '.join(_item(i) for i in body) or 'no items'})"
    if typ == "TASK_ABORT":
        return f"TASK_ABORT({body[0]})"
    if body is None:
        return str(typ)
    return f"{typ}({body})"


def _echo_config(bounds: Bounds, data: tuple[Any, ...]) -> EchoProtocol:
    """The Echo job whose fixed fates are the choices this worker made on the path."""
    fld = data[7]
    fib = data[8]
    alone = {i for i in range(bounds.items) if fld >> i & 1}
    alone |= {item for item, fails in data[6] if fails}
    in_batch: list[str] = []
    for b in range(bounds.batches):
        if fib >> b & 1:
            items = bounds.batch_items(b)
            if not any(i in alone for i in items):
                in_batch.append(_item(items[0]))
    return EchoProtocol(
        items=tuple(_item(i) for i in range(bounds.items)),
        # A worker that rejects was sent a job it must refuse (spec section 5).
        batch_size=0 if data[0] else bounds.batch_size,
        fail_in_batch=tuple(in_batch),
        fail_alone=tuple(_item(i) for i in sorted(alone)),
        inference_limit=UsageLimit(bounds.limit) if data[1] else None,
        initial_setup=bounds.initial_setup,
    )


def _message(
    payload: Msg,
    sender: str,
    recipient: str,
    seq: int,
    pod: str,
    pods: list[str],
    config: EchoProtocol,
    bounds: Bounds,
) -> Message:
    typ, body, batch = payload
    meta = None
    wire: Any = body
    if typ == "JOB_REQUEST":
        wire = JobRequestBody(
            protocol=registry.dump(config),
            pod_identifiers=tuple(pods),
            batched_execution=bounds.batched,
            force_rerun_failed_files=True,
        )
    elif typ == "JOB_ACCEPT":
        wire = {"ACCEPT": pod}
    elif typ == "JOB_REJECT":
        wire = JobRejectBody(RejectReason(body), ("batch_size must be at least 1 (fault reject)",))
    elif typ == "EVALUATION_RESULTS":
        wire = {"items": [_item(i) for i in body]}
        meta = Meta(
            batch_number=batch,
            resources_consumed=(ResourceConsumed("MODEL_INFERENCE", EchoProtocol.name, len(body)),),
        )
    elif typ == "TASK_ABORT":
        reason, noted = body
        wire = TaskAbortBody(
            f"explore: {reason.lower().replace('_', ' ')}" if noted else "aborted",
            AbortReason(reason),
        )
        meta = Meta(reason=reason)
    elif typ == "ALGORITHM_EXCHANGE":
        wire = {"echo": True}
    return Message.make(
        MessageType(typ),
        task_id=TASK_ID,
        sender=sender,
        recipient=recipient,
        seq=seq,
        body=wire,
        meta=meta,
    )


def explore(
    bounds: Bounds,
    *,
    worker_chart: Chart,
    modeller_chart: Chart,
    spec_chart: Chart | None = None,
    symmetry: bool = True,
    por: bool = True,
    max_states: int | None = None,
    progress: Callable[[int, float], None] | None = None,
    check_traces: bool = True,
) -> ExploreResult:
    """Visit every reachable state of one modeller and ``bounds.workers`` workers.

    Args:
        bounds: Workers, items, batch size and faults.
        worker_chart: The worker chart to step.
        modeller_chart: The modeller chart to step.
        spec_chart: The modeller chart the trace checker judges runs by
            (``fsm-protocol check`` uses the shipped one); by default ``modeller_chart``.
        symmetry: Treat states that differ only by which worker is which as one.
        por: Expand one worker's own steps at a time where that is enough.
        max_states: Stop after this many states (verdict ``"limit"``).
        progress: Called about once a second with (states, seconds).
        check_traces: Check one run to each distinct end with the trace checker.
    """
    unknown = sorted(bounds.faults - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown faults: {', '.join(unknown)}")
    system = System(bounds, worker_chart, modeller_chart)
    explorer = Explorer(
        system,
        symmetry=symmetry,
        por=por,
        max_states=max_states,
        spec_chart=spec_chart,
        progress=progress,
        check_traces=check_traces,
    )
    return explorer.run()
