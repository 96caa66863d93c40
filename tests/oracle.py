"""An independent recognizer of the documented message order (wire spec, section 4).

This module is written from the spec's text, not from the charts, and never
imports them: the property tests compare its verdict with the charts' on the
same traces, so a misreading on either side shows up as a disagreement.

A trace is every message of one task, both directions, in the order the
modeller observed them. :func:`check_order` returns ``None`` when the trace
follows the order, or the first :class:`Rejection`, naming the message and why.

Where the spec leaves a point open, the reading chosen here is stated next to
the rule (look for "Reading:").
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence

import attrs

from fsm_protocol._base._errors import DecodeError
from fsm_protocol._wire._messages import Message, MessageType, body_of

__all__ = ["Rejection", "check_order"]

T = MessageType

# Who may send what (spec section 3). LOG_MESSAGE and TASK_START go both ways.
_WORKER_SENDS = frozenset(
    {
        T.JOB_ACCEPT, T.JOB_REJECT, T.PREPARING_DATA, T.CONFIGURING_TASK,
        T.PREPARING_DATA_BATCHES, T.NUMBER_OF_BATCHES, T.CURRENT_BATCH_ID, T.TASK_START,
        T.EVALUATION_RESULTS, T.BATCHES_COMPLETE, T.TASK_ABORT, T.ONLINE_CHECK, T.LOG_MESSAGE,
    }
)  # fmt: skip
_MODELLER_SENDS = frozenset(
    {
        T.JOB_REQUEST, T.ALGORITHM_EXCHANGE, T.TASK_START, T.TASK_COMPLETE, T.TASK_CANCEL,
        T.ONLINE_RESPONSE, T.LOG_MESSAGE,
    }
)  # fmt: skip


@attrs.frozen
class Rejection:
    """Why a trace does not follow the documented order.

    ``index`` is the 0-based position of the offending message; a problem
    found when the trace ends has ``index == len(trace)`` and no message.
    """

    index: int
    reason: str
    message: Message | None = None
    pod: str | None = None

    @property
    def line(self) -> int:
        """The 1-based line in a trace file (``len(trace) + 1`` for the end)."""
        return self.index + 1

    def __str__(self) -> str:
        if self.message is None:
            return f"at the end of the trace (line {self.line}): {self.reason}"
        m = self.message
        return (
            f"message {self.index} (line {self.line}, {m.type.value} "
            f"{m.sender} -> {m.recipient}, seq {m.seq}): {self.reason}"
        )


class _Stage(enum.Enum):
    REQUESTED = "requested"  # JOB_REQUEST sent, no answer yet
    ENGAGED = "engaged"  # JOB_ACCEPT received
    ENDED = "ended"


class _Pos(enum.Enum):
    """Where an engaged worker is in the grammar of section 4."""

    ACCEPTED = "after JOB_ACCEPT"
    PREPARED = "after PREPARING_DATA"
    CONFIGURED = "after CONFIGURING_TASK"
    PREPARING_BATCHES = "after PREPARING_DATA_BATCHES"
    SINGLE = "after NUMBER_OF_BATCHES(1)"
    COUNTING = "after NUMBER_OF_BATCHES(-1)"
    ANNOUNCED = "after CURRENT_BATCH_ID(0)"
    READY = "after the worker's TASK_START"
    RUNNING = "after the modeller's TASK_START"
    RESILIENCE = 'after BATCHES_COMPLETE("BATCHES_ONLY")'
    DONE = 'after BATCHES_COMPLETE("TASK_COMPLETE")'


_OPENING = (_Pos.ACCEPTED, _Pos.PREPARED, _Pos.CONFIGURED)


@attrs.define
class _Pod:
    name: str
    batched: bool
    setup: bool
    stage: _Stage = _Stage.REQUESTED
    pos: _Pos = _Pos.ACCEPTED
    end: str = ""
    left_out: bool = False  # had not answered when the modeller stopped waiting
    late: bool = False  # accepted after being left out
    cancelled: bool = False
    owes_cancel: bool = False  # the modeller must cancel it (or it ends by itself first)
    setup_sent: bool = False
    batch: int | None = None
    estimate_seen: bool = False
    slots: set[tuple[int | None, int]] = attrs.field(factory=set)

    @property
    def running(self) -> bool:
        return self.stage is _Stage.ENGAGED

    @property
    def counted(self) -> bool:
        """Part of the barrier and of completion.

        Reading: the spec leaves out only workers cancelled for a late
        JOB_ACCEPT; a trace cannot show why a worker was cancelled, so every
        cancelled worker is left out, as the modeller chart does.
        """
        return (
            self.stage is not _Stage.REQUESTED
            and not self.late
            and not self.cancelled
            and (self.end != "rejected")
        )


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _expect(condition: bool, reason: str) -> None:
    if not condition:
        raise _Refused(reason)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@attrs.define
class _Recognizer:
    modeller: str
    task_id: str
    faulty: frozenset[str]
    unanswered_ok: frozenset[str]
    check_seq: bool
    pods: dict[str, _Pod] = attrs.field(factory=dict)
    seqs: dict[str, int] = attrs.field(factory=dict)
    own_abort: bool = False
    start_open: bool = False  # the TASK_START barrier has opened
    complete_open: bool = False

    # ------------------------------------------------------------ envelope

    def envelope(self, m: Message) -> str:
        """Check task id, direction and seq; return the pod the message belongs to."""
        _expect(m.task_id == self.task_id, f"task id {m.task_id!r}, expected {self.task_id!r}")
        if m.sender == self.modeller:
            _expect(m.type in _MODELLER_SENDS, f"the modeller never sends {m.type.value}")
            pod = m.recipient
        else:
            _expect(
                m.recipient == self.modeller,
                f"neither sender {m.sender!r} nor recipient {m.recipient!r} is the modeller",
            )
            _expect(m.type in _WORKER_SENDS, f"a worker never sends {m.type.value}")
            pod = m.sender
        if self.check_seq:
            last = self.seqs.get(m.sender, -1)
            if m.sender in self.faulty:
                _expect(m.seq > last, f"seq {m.seq} of {m.sender} did not rise after {last}")
            else:
                _expect(m.seq == last + 1, f"seq {m.seq} of {m.sender}, expected {last + 1}")
            self.seqs[m.sender] = m.seq
        return pod

    # -------------------------------------------------------------- steps

    def step(self, m: Message) -> None:
        name = self.envelope(m)
        if m.type is T.JOB_REQUEST:
            self.job_request(name, m)
            return
        pod = self.pods.get(name)
        _expect(pod is not None, f"{m.type.value} before any JOB_REQUEST to {name!r}")
        assert pod is not None
        _expect(
            pod.stage is not _Stage.ENDED,
            f"{name} already ended ({pod.end}); nothing may follow the end",
        )
        if m.sender == self.modeller:
            self.from_modeller(pod, m)
        else:
            self.from_worker(pod, m)

    def job_request(self, name: str, m: Message) -> None:
        _expect(name not in self.pods, f"a second JOB_REQUEST to {name}")
        try:
            job = body_of(m)
        except DecodeError as exc:
            raise _Refused(f"unreadable JOB_REQUEST body: {exc}") from None
        setup = job.protocol.get("initial_setup") is True
        self.pods[name] = _Pod(name, batched=job.batched_execution, setup=setup)

    # ----------------------------------------------------- worker messages

    def from_worker(self, pod: _Pod, m: Message) -> None:
        if pod.stage is _Stage.REQUESTED:
            _expect(
                m.type in (T.JOB_ACCEPT, T.JOB_REJECT),
                f"{m.type.value} before the answer to the JOB_REQUEST; "
                "expected JOB_ACCEPT or JOB_REJECT",
            )
            if m.type is T.JOB_REJECT:
                self.end(pod, "rejected")
                return
            pod.stage = _Stage.ENGAGED
            if pod.left_out:
                pod.late = True
                # "A JOB_ACCEPT that arrives after that is answered with TASK_CANCEL.
                # If it arrives after every other worker has ended, nothing is owed."
                pod.owes_cancel = any(p.stage is not _Stage.ENDED for p in self.others(pod))
            return
        kind = m.type
        if kind in (T.LOG_MESSAGE, T.ONLINE_CHECK):
            return
        if kind is T.TASK_ABORT:
            if not pod.cancelled:
                self.note_own_abort(pod)
            self.end(pod, "aborted")
            return
        _expect(
            kind not in (T.JOB_ACCEPT, T.JOB_REJECT), f"{pod.name} already answered the JOB_REQUEST"
        )
        handler = {
            T.PREPARING_DATA: self.preparing_data,
            T.CONFIGURING_TASK: self.configuring_task,
            T.PREPARING_DATA_BATCHES: self.preparing_batches,
            T.NUMBER_OF_BATCHES: self.number_of_batches,
            T.CURRENT_BATCH_ID: self.current_batch_id,
            T.TASK_START: self.worker_task_start,
            T.EVALUATION_RESULTS: self.results,
            T.BATCHES_COMPLETE: self.batches_complete,
        }[kind]
        handler(pod, m)

    def preparing_data(self, pod: _Pod, m: Message) -> None:
        _expect(
            pod.pos is _Pos.ACCEPTED,
            f"PREPARING_DATA comes right after JOB_ACCEPT, not {pod.pos.value}",
        )
        pod.pos = _Pos.PREPARED

    def configuring_task(self, pod: _Pod, m: Message) -> None:
        _expect(
            pod.pos in (_Pos.ACCEPTED, _Pos.PREPARED),
            f"CONFIGURING_TASK comes after JOB_ACCEPT or PREPARING_DATA, not {pod.pos.value}",
        )
        pod.pos = _Pos.CONFIGURED

    def _setup_settled(self, pod: _Pod, what: str) -> None:
        _expect(
            not pod.setup or pod.setup_sent,
            f"{what} before the modeller's ALGORITHM_EXCHANGE (the protocol has an initial setup)",
        )

    def preparing_batches(self, pod: _Pod, m: Message) -> None:
        _expect(pod.batched, "PREPARING_DATA_BATCHES in a non-batched job")
        _expect(pod.pos in _OPENING, f"PREPARING_DATA_BATCHES {pod.pos.value}")
        self._setup_settled(pod, "PREPARING_DATA_BATCHES")
        pod.pos = _Pos.PREPARING_BATCHES

    def number_of_batches(self, pod: _Pod, m: Message) -> None:
        n = m.body
        _expect(_is_int(n), f"NUMBER_OF_BATCHES body must be an int, found {n!r}")
        first = pod.pos in _OPENING or pod.pos is _Pos.PREPARING_BATCHES
        if first:
            self._setup_settled(pod, "the first NUMBER_OF_BATCHES")
            if pod.batched:
                _expect(n == -1, f"the first NUMBER_OF_BATCHES of a streaming job is -1, found {n}")
                pod.pos = _Pos.COUNTING
            else:
                _expect(
                    pod.pos is not _Pos.PREPARING_BATCHES,
                    "PREPARING_DATA_BATCHES in a non-batched job",
                )
                _expect(n == 1, f"the NUMBER_OF_BATCHES of a non-batched job is 1, found {n}")
                pod.pos = _Pos.SINGLE
            return
        # "A positive NUMBER_OF_BATCHES(n) is an estimate of the total. It is sent at most
        # once, at any point after CURRENT_BATCH_ID(0) ... and before BATCHES_ONLY."
        _expect(pod.batched, f"a second NUMBER_OF_BATCHES in a non-batched job ({pod.pos.value})")
        _expect(n > 0, f"an estimate must be positive, found {n}")
        _expect(
            pod.pos in (_Pos.ANNOUNCED, _Pos.READY, _Pos.RUNNING),
            "an estimate comes after CURRENT_BATCH_ID(0) and before BATCHES_ONLY, "
            f"not {pod.pos.value}",
        )
        _expect(not pod.estimate_seen, "a second estimate; it is sent at most once")
        pod.estimate_seen = True

    def current_batch_id(self, pod: _Pod, m: Message) -> None:
        k = m.body
        _expect(_is_int(k), f"CURRENT_BATCH_ID body must be an int, found {k!r}")
        if pod.pos is _Pos.COUNTING:
            _expect(k == 0, f"the first CURRENT_BATCH_ID is 0, found {k}")
            pod.pos = _Pos.ANNOUNCED
            pod.batch = 0
            return
        _expect(
            pod.batched and pod.pos is _Pos.RUNNING,
            f"CURRENT_BATCH_ID {pod.pos.value}; batch ids follow the TASK_START handshake",
        )
        assert pod.batch is not None
        _expect(
            k == pod.batch + 1,
            f"CURRENT_BATCH_ID({k}) after batch {pod.batch}; expected {pod.batch + 1}",
        )
        pod.batch = k

    def worker_task_start(self, pod: _Pod, m: Message) -> None:
        _expect(
            pod.pos in (_Pos.SINGLE, _Pos.ANNOUNCED),
            f"the worker's TASK_START comes after NUMBER_OF_BATCHES(1) or CURRENT_BATCH_ID(0), "
            f"not {pod.pos.value}",
        )
        pod.pos = _Pos.READY

    def results(self, pod: _Pod, m: Message) -> None:
        batch, index = m.meta.batch_number, m.meta.algorithm_index
        if pod.pos is _Pos.RESILIENCE:
            _expect(batch is None, f"a resilience result has meta.batch_number null, found {batch}")
            return
        _expect(
            pod.pos is _Pos.RUNNING,
            f"EVALUATION_RESULTS {pod.pos.value}; results follow the modeller's TASK_START",
        )
        if pod.batched:
            _expect(batch == pod.batch, f"result for batch {batch} during batch {pod.batch}")
        else:
            _expect(
                batch is None, f"a non-batched result has meta.batch_number null, found {batch}"
            )
        _expect(
            (batch, index) not in pod.slots,
            f"a second result for batch {batch}, algorithm index {index}",
        )
        pod.slots.add((batch, index))

    def batches_complete(self, pod: _Pod, m: Message) -> None:
        if m.body == "BATCHES_ONLY":
            _expect(pod.batched, 'BATCHES_COMPLETE("BATCHES_ONLY") in a non-batched job')
            _expect(pod.pos is _Pos.RUNNING, f'BATCHES_COMPLETE("BATCHES_ONLY") {pod.pos.value}')
            pod.pos = _Pos.RESILIENCE
        elif m.body == "TASK_COMPLETE":
            want = _Pos.RESILIENCE if pod.batched else _Pos.RUNNING
            _expect(
                pod.pos is want,
                f'BATCHES_COMPLETE("TASK_COMPLETE") {pod.pos.value}, expected {want.value}',
            )
            pod.pos = _Pos.DONE
        else:
            raise _Refused(f"BATCHES_COMPLETE body {m.body!r}")

    # --------------------------------------------------- modeller messages

    def from_modeller(self, pod: _Pod, m: Message) -> None:
        kind = m.type
        _expect(pod.stage is _Stage.ENGAGED, f"{kind.value} to {pod.name} before its JOB_ACCEPT")
        if kind in (T.LOG_MESSAGE, T.ONLINE_RESPONSE):
            return
        if kind is T.ALGORITHM_EXCHANGE:
            _expect(pod.setup, "ALGORITHM_EXCHANGE for a protocol without an initial setup")
            _expect(not pod.setup_sent, "a second ALGORITHM_EXCHANGE")
            pod.setup_sent = True
        elif kind is T.TASK_CANCEL:
            _expect(not pod.cancelled, f"a second TASK_CANCEL to {pod.name}; it goes at most once")
            pod.cancelled = True
            pod.owes_cancel = False
        elif kind is T.TASK_START:
            self.modeller_task_start(pod)
        elif kind is T.TASK_COMPLETE:
            self.modeller_task_complete(pod)
        else:
            raise _Refused(f"the modeller never sends {kind.value}")  # JOB_REQUEST is handled above

    def modeller_task_start(self, pod: _Pod) -> None:
        _expect(pod.pos is _Pos.READY, f"the modeller's TASK_START to {pod.name} {pod.pos.value}")
        _expect(not pod.owes_cancel, f"TASK_START to {pod.name}, which is owed a TASK_CANCEL")
        if not self.start_open:
            # "The modeller sends TASK_START only after every accepted worker has sent
            # TASK_START." The barrier opens once, for every worker it waited for.
            # Reading: a worker that ended before it opened never lets it open.
            self.stop_waiting_for_answers()
            self.barrier("TASK_START", _Pos.READY, "sent TASK_START")
            self.start_open = True
        pod.pos = _Pos.RUNNING

    def modeller_task_complete(self, pod: _Pod) -> None:
        _expect(pod.pos is _Pos.DONE, f"TASK_COMPLETE to {pod.name} {pod.pos.value}")
        _expect(not pod.cancelled, f"TASK_COMPLETE to {pod.name} after its TASK_CANCEL")
        _expect(not pod.owes_cancel, f"TASK_COMPLETE to {pod.name}, which is owed a TASK_CANCEL")
        _expect(not self.own_abort, "TASK_COMPLETE after a worker aborted on its own")
        if not self.complete_open:
            self.stop_waiting_for_answers()
            self.barrier("TASK_COMPLETE", _Pos.DONE, 'sent BATCHES_COMPLETE("TASK_COMPLETE")')
            self.complete_open = True
        self.end(pod, "complete")

    def barrier(self, what: str, where: _Pos, did: str) -> None:
        counted = [p for p in self.pods.values() if p.counted]
        _expect(bool(counted), f"{what} while no accepted worker is left in the task")
        waiting = [p.name for p in counted if p.pos is not where or p.stage is _Stage.ENDED]
        _expect(
            not waiting,
            f"{what} before every accepted worker {did}: waiting for {', '.join(sorted(waiting))}",
        )

    # ------------------------------------------------------ shared rules

    def others(self, pod: _Pod) -> list[_Pod]:
        return [p for p in self.pods.values() if p is not pod]

    def stop_waiting_for_answers(self) -> None:
        """The modeller went on without the pods that have not answered: they are left out."""
        for p in self.pods.values():
            if p.stage is _Stage.REQUESTED:
                p.left_out = True

    def note_own_abort(self, pod: _Pod) -> None:
        # "If one worker aborts (for any reason other than answering a cancel), the
        # modeller sends TASK_CANCEL to every other worker still running."
        self.own_abort = True
        for other in self.others(pod):
            if other.stage is _Stage.ENGAGED and not other.cancelled:
                other.owes_cancel = True
            elif other.stage is _Stage.REQUESTED:
                other.left_out = True

    def end(self, pod: _Pod, how: str) -> None:
        pod.stage = _Stage.ENDED
        pod.end = how
        pod.owes_cancel = False

    def finish(self) -> str | None:
        for pod in self.pods.values():
            if pod.name in self.faulty or pod.stage is _Stage.ENDED:
                continue
            if pod.stage is _Stage.REQUESTED:
                if pod.name in self.unanswered_ok:
                    continue
                # The modeller may leave it out, but the pod itself never reached an end.
                return f"trace ends while pod {pod.name} has not answered its JOB_REQUEST"
            where = pod.pos.value
            if pod.cancelled:
                where += ", cancelled, expecting TASK_ABORT"
            return f"trace ends while pod {pod.name} is engaged ({where})"
        return None


def check_order(
    trace: Sequence[Message],
    *,
    faulty: Collection[str] = (),
    unanswered_ok: Collection[str] = (),
    check_seq: bool = True,
) -> Rejection | None:
    """Check a task's trace against the documented order (spec section 4).

    Args:
        trace: Every message of one task, both directions, in the order the
            modeller observed them. The first is a ``JOB_REQUEST``; its sender
            is the modeller and its task id the task's.
        faulty: Pods known to have crashed, gone silent or answered too late.
            Their conversation may stop anywhere (even before an answer), and
            their seq may skip (messages refused after the fault are not in
            the trace).
        unanswered_ok: Pods the trace may end without an answer from: the
            modeller stopped waiting for them (a cancel, or the response
            timeout) and the task ended before they answered.
        check_seq: Check that each sender's seq starts at 0 and rises by 1.

    Returns:
        None when the trace follows the order, else the first problem.
    """
    if not trace:
        return Rejection(0, "an empty trace is a violation")
    first = trace[0]
    if first.type is not T.JOB_REQUEST:
        return Rejection(0, f"a task starts with JOB_REQUEST, found {first.type.value}", first)
    recognizer = _Recognizer(
        first.sender, first.task_id, frozenset(faulty), frozenset(unanswered_ok), check_seq
    )
    for index, message in enumerate(trace):
        try:
            recognizer.step(message)
        except _Refused as refused:
            pod = message.recipient if message.sender == recognizer.modeller else message.sender
            return Rejection(index, refused.reason, message, pod)
    problem = recognizer.finish()
    if problem is not None:
        return Rejection(len(trace), problem)
    return None
