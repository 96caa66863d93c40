"""The streaming trace checker behind ``fsm-protocol check`` and the conformance kit.

A trace is wire messages (NDJSON) in the order one party observed them. The
checker runs one monitor per (task, worker): the modeller chart,
``statecharts/modeller.yaml``, which is the modeller's view of one worker. W→M
lines are its ``recv:`` events and M→W lines its ``send:`` events. The chart
is compiled once into a table, leaf state → event → arcs, straight from
:meth:`Chart.transitions_from`, so the chart stays the only statement of the
order; the table only makes a step a dictionary lookup instead of an engine
call. The guards and actions the chart names are implemented here with trace
semantics (:class:`_Link`): where the runtime *sends* (``send_cancel``), the
checker records an *obligation* that a later ``send:`` line discharges.

The chart's internal events are inferred from what the trace shows:

* the modeller's first ``TASK_START`` of a task means its response wait is
  over, so pods that have not answered get ``response_timeout``;
* a worker's own ``TASK_ABORT`` runs ``cancel_others``, which raises
  ``cancel_requested`` on the other links, as in the runtime;
* when every other link has ended, a pod still left out gets ``task_ended``.

Messages cross in flight, and a trace recorded on the worker side shows the
crossing. So a modeller message that reaches a worker after that worker's
``TASK_ABORT`` is judged against the state the worker was in before the abort
(spec section 4: a cancel that crosses the worker's abort is valid).

Every violation cites the rule it breaks, by its id in the rule book
(:mod:`fsm_protocol._check._rules`): a decode error by the field it names, a
refused message by its state, a false guard by the guard, the Echo account by
the prediction it contradicts. Each sender's seq must rise by exactly 1 in the
order the lines were written (E-2.6), the modeller's included.

Memory is bounded by the tasks still open: per worker, a few counters, and with
``conformance.Echo`` a compact prediction of its results; a task's monitors are
dropped once it has ended and :data:`KEEP_ENDED` more tasks have ended since.
"""

from __future__ import annotations

import collections
import copy
import itertools
import json
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any, Final, NoReturn, final

import attrs

from .._algo._echo_model import CONSECUTIVE_FAILURE_LIMIT, EchoPrediction, Fate, predict_echo
from .._algo._protocols import EchoProtocol, registry
from .._base._errors import ConfigError, DecodeError, InternalError
from .._core._chart import Chart
from .._core._compiled import BoundArc, compile_chart
from .._core._shipped import shipped_chart
from .._wire._catalogue import (
    BODY_GUARDS,
    MODELLER,
    SENDERS,
    WORKER,
    first_batch_id,
    only_sent_by,
    result_slot,
)
from .._wire._messages import (
    _PLAIN_PARSE_MAX_BYTES,
    _STRUCTURE,
    DEFAULT_MAX_LINE_BYTES,
    MAX_CONTAINERS,
    MAX_SAFE_INTEGER,
    _json_decoder,
    _keeps_value_rule,
    _plain_extent,
    _plain_json_decoder,
    decode,
)
from ._rules import RULE_BY_ID

# --- Results ------------------------------------------------------------------------------

_EXCERPT: Final = 300


@final
@attrs.frozen
class Finding:
    """The first violation in a trace: where, what, and what was expected instead.

    ``line`` is 1-based; a trace that ends too early is reported at the line
    after its last one, with ``text`` None. ``rule`` is the id of the rule
    broken (:data:`~fsm_protocol._check._rules.RULES`); the message ends with it.
    """

    line: int
    message: str
    text: str | None = None
    task_id: str | None = None
    pod: str | None = None
    state: str | None = None
    expected: tuple[str, ...] = ()
    rule: str | None = None

    def render(self, source: str = "trace") -> str:
        """The finding as a person reads it: location, reason, then the details."""
        lines = [f"{source}:{self.line}: {self.message}"]
        if self.rule is not None:
            rule = RULE_BY_ID.get(self.rule)
            lines.append(f"  rule:     {self.rule}" + (f": {rule.text}" if rule else ""))
        if self.text is not None:
            lines.append(f"  line:     {self.text}")
        if self.pod is not None:
            lines.append(f"  pod:      {self.pod} (task {self.task_id})")
        if self.state is not None:
            lines.append(f"  state:    {self.state}")
        if self.expected:
            lines.append("  expected: " + "\n            ".join(self.expected))
        return "\n".join(lines)


@final
@attrs.frozen
class ItemAccount:
    """How one worker's ``conformance.Echo`` items ended, per spec section 5."""

    task_id: str
    pod: str
    delivered: int = 0
    failed: int = 0
    cut: int = 0
    not_run: int = 0


@final
@attrs.frozen
class CheckResult:
    """What :func:`~fsm_protocol.conformance.check_trace` found.

    ``ok`` is True only when the trace conforms; ``finding`` is the first
    violation otherwise. ``accounts`` holds the item account of each worker
    that ran ``conformance.Echo`` (the first 10,000 of them, so that memory
    stays bounded), and ``item_totals`` the delivered, failed, cut and not-run
    items of all of them.
    """

    ok: bool
    lines: int
    tasks: int
    pods: int
    finding: Finding | None = None
    accounts: tuple[ItemAccount, ...] = ()
    item_totals: tuple[int, int, int, int] = (0, 0, 0, 0)

    def summary(self) -> str:
        """One line: the verdict and the trace's size."""
        if not self.ok:
            assert self.finding is not None
            return f"violation at line {self.finding.line}: {self.finding.message}"
        text = (
            f"conforms: {self.lines} {'line' if self.lines == 1 else 'lines'}, "
            f"{self.tasks} {'task' if self.tasks == 1 else 'tasks'}, "
            f"{self.pods} {'pod' if self.pods == 1 else 'pods'}"
        )
        if self.accounts:
            text += "; Echo items: " + ", ".join(
                f"{n} {label}" for n, label in zip(self.item_totals, _FATE_LABELS, strict=True)
            )
        return text


_FATE_LABELS: Final = ("delivered", "failed", "cut", "not run")


class _Stop(Exception):
    """Raised inside the checker at the first violation; carries it out."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


# --- The compiled chart ---------------------------------------------------------------------

# The checker steps the same compiled table as the runtime (fsm_protocol._core._compiled),
# bound to its own trace-side bindings (_Link): guards and actions get the raw JSON object.
Row = Mapping[str, tuple[BoundArc, ...]]


# --- Wire facts -----------------------------------------------------------------------------

_WORKER_ONLY: Final = only_sent_by(WORKER)
_MODELLER_ONLY: Final = only_sent_by(MODELLER)
_ALL_TYPES: Final = frozenset(t.value for t, senders in SENDERS.items() if senders)
_SEND: Final = {t: f"send:{t}" for t in _ALL_TYPES}
_RECV: Final = {t: f"recv:{t}" for t in _ALL_TYPES}
_SEND_TASK_START: Final = _SEND["TASK_START"]
_SEND_EVENTS: Final = frozenset(_SEND.values())
_RECV_RESULTS: Final = _RECV["EVALUATION_RESULTS"]
_RECV_EVENTS: Final = frozenset(_RECV.values())

ECHO: Final = EchoProtocol.name
# Abort reasons that blame the modeller or the link: the worker stops early, and
# its results so far must only be a prefix of the prediction.
_EARLY_END_REASONS: Final = frozenset(
    {"MODELLER_TIMEOUT", "PROTOCOL_ERROR", "CANCELLED_BY_MODELLER"}
)


# The body checks of the fast path: the body's extent (its keys, objects and arrays, see
# _plain_extent) if decode() accepts it, else -1 (then decode() judges the line).


def _count_extent(body: Any) -> int:
    ok = body.__class__ is int and (body == -1 or 1 <= body <= MAX_SAFE_INTEGER)
    return 0 if ok else -1


def _batch_id_extent(body: Any) -> int:
    return 0 if body.__class__ is int and 0 <= body <= MAX_SAFE_INTEGER else -1


def _null_extent(body: Any) -> int:
    return 0 if body is None else -1


def _str_extent(body: Any) -> int:
    return 0 if body.__class__ is str else -1


def _any_extent(body: Any) -> int:
    return _plain_extent(body, 2)


def _object_extent(body: Any) -> int:
    return _plain_extent(body, 2) if body.__class__ is dict else -1


def _batches_complete_extent(body: Any) -> int:
    return 0 if body.__class__ is str and body in ("BATCHES_ONLY", "TASK_COMPLETE") else -1


def _accept_extent(body: Any) -> int:
    ok = body.__class__ is dict and len(body) == 1 and body.get("ACCEPT").__class__ is str
    return 2 if ok else -1


# Bodies cheap to check here; every other type goes through the full decoder.
_FAST_BODY: Final[Mapping[str, Callable[[Any], int]]] = {
    "EVALUATION_RESULTS": _any_extent,
    "CURRENT_BATCH_ID": _batch_id_extent,
    "NUMBER_OF_BATCHES": _count_extent,
    "TASK_START": _null_extent,
    "PREPARING_DATA": _null_extent,
    "CONFIGURING_TASK": _null_extent,
    "PREPARING_DATA_BATCHES": _null_extent,
    "TASK_COMPLETE": _null_extent,
    "TASK_CANCEL": _null_extent,
    "BATCHES_COMPLETE": _batches_complete_extent,
    "ONLINE_CHECK": _str_extent,
    "ONLINE_RESPONSE": _str_extent,
    "ALGORITHM_EXCHANGE": _object_extent,
    "JOB_ACCEPT": _accept_extent,
}


def _meta_extent(meta: Any) -> int:
    """A sufficient check of ``meta``: its extent if :func:`decode` accepts it too, else -1."""
    if meta.__class__ is not dict:
        return -1
    if not meta:
        return 1
    if len(meta) == 1:  # the usual meta of results
        batch = meta.get("batch_number", -1)
        if batch is None or (batch.__class__ is int and 0 <= batch <= MAX_SAFE_INTEGER):
            return 2
    extent = 1 + len(meta)
    for key, value in meta.items():
        if key == "batch_number" or key == "algorithm_index":
            if value is None and key == "batch_number":
                continue
            if value.__class__ is not int or not 0 <= value <= MAX_SAFE_INTEGER:
                return -1
        elif key == "total_batches":
            if value is not None and (
                value.__class__ is not int or not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
            ):
                return -1
        elif key == "reason":
            if value is not None and value.__class__ is not str:
                return -1
        elif key == "resources_consumed":
            if value.__class__ is not list:
                return -1
            for entry in value:
                if (
                    entry.__class__ is not dict
                    or len(entry) != 3
                    or entry.get("resource_type").__class__ is not str
                    or entry.get("resource_identifier").__class__ is not str
                    or entry.get("amount").__class__ is not int
                    or not -MAX_SAFE_INTEGER <= entry["amount"] <= MAX_SAFE_INTEGER
                ):
                    return -1
            extent += 1 + 4 * len(value)
        else:  # ignored by decode(), but still held to the value rule
            inner = _plain_extent(value, 3)
            if inner < 0:
                return -1
            extent += inner
    return extent


# A line's structure bytes and newlines, which the fast path counts.
_MARKS: Final = _STRUCTURE + b"\n"

# The C scanner of the codec's plain decoder (NaN and Infinity rejected, no value-rule hooks),
# without the two regular-expression calls json.JSONDecoder.decode adds around it.
_scan: Final[Callable[[str, int], tuple[Any, int]]] = _plain_json_decoder.scan_once  # type: ignore[attr-defined]


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_message(obj: Mapping[str, Any]) -> str:
    """A message in a few words: its direction, its type and the part of it that matters."""
    typ = obj.get("type")
    body = obj.get("body")
    meta = obj.get("meta") or {}
    if typ == "EVALUATION_RESULTS":
        batch = meta.get("batch_number") if isinstance(meta, dict) else None
        return f"EVALUATION_RESULTS {_short(body, 50)} (meta.batch_number {_short(batch)})"
    if typ == "TASK_ABORT" and isinstance(body, dict):
        return f"TASK_ABORT({body.get('reason')})"
    if typ == "JOB_REJECT" and isinstance(body, dict):
        return f"JOB_REJECT({', '.join(map(str, body))})"
    if typ in ("NUMBER_OF_BATCHES", "CURRENT_BATCH_ID", "BATCHES_COMPLETE", "ONLINE_CHECK"):
        return f"{typ} {_short(body)}"
    return str(typ)


# --- Guard wording --------------------------------------------------------------------------


def _waiting_for(link: _Link, attribute: str, what: str) -> str:
    missing = [other.pod for other in link.task.counted() if not getattr(other, attribute)]
    if not missing:
        return ""
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return f" (still waiting for {what} from {shown})"


def _all_done_text(link: _Link) -> str:
    if link.task.own_abort is not None:
        return f"when no worker aborted on its own (but {link.task.own_abort})"

    return 'once every counted worker has sent BATCHES_COMPLETE "TASK_COMPLETE"' + _waiting_for(
        link, "finished", 'BATCHES_COMPLETE "TASK_COMPLETE"'
    )


# What each guard requires, worded as the condition that must hold; the key is
# (guard, wanted value). The argument is the link, for the values at hand.
_REQUIRES: Final[Mapping[tuple[str, bool], Callable[[_Link], str]]] = {
    ("initial_setup", True): lambda link: "when the protocol has an initial setup",
    ("initial_setup", False): lambda link: "when the protocol has no initial setup",
    ("batched_job", True): lambda link: "in a batched job (batched_execution true)",
    ("batched_job", False): lambda link: "in a non-batched job (batched_execution false)",
    ("cancel_sent", True): lambda link: "after the modeller's TASK_CANCEL",
    ("cancel_sent", False): lambda link: "before any TASK_CANCEL",
    ("setup_pending", True): lambda link: "once, when the protocol has an initial setup",
    ("setup_settled", True): lambda link: "after the modeller's ALGORITHM_EXCHANGE",
    ("count_is_one", True): lambda link: "with body 1",
    ("count_is_unknown", True): lambda link: "with body -1",
    ("is_estimate", True): lambda link: "with a positive body (an estimate)",
    ("estimate_seen", False): lambda link: "at most once",
    ("is_next_batch_id", True): lambda link: f"with body {link.next_batch_id} (the next batch id)",
    ("is_batch_result", True): lambda link: (
        f"with meta.batch_number {link.current_batch} (the current batch)"
    ),
    ("is_unbatched_result", True): lambda link: "with meta.batch_number null",
    ("is_retry_result", True): lambda link: "with meta.batch_number null (a retried item)",
    ("duplicate_result", False): lambda link: (
        "at most once per batch and meta.algorithm_index (no duplicate results)"
    ),
    ("is_batches_only", True): lambda link: 'with body "BATCHES_ONLY"',
    ("is_task_complete", True): lambda link: 'with body "TASK_COMPLETE"',
    ("all_ready", True): lambda link: (
        "once every accepted worker has sent TASK_START"
        + _waiting_for(link, "started", "TASK_START")
    ),
    ("all_done", True): _all_done_text,
}


# Wording that depends on the message a guard sits on.
_REQUIRES_FOR: Final[Mapping[tuple[str, str, bool], str]] = {
    ("send:TASK_CANCEL", "cancel_sent", False): "at most once",
    ("send:TASK_COMPLETE", "cancel_sent", False): "to a worker that was not cancelled",
    ("cancel_requested", "cancel_sent", False): "when no TASK_CANCEL was sent yet",
}

# Guards that read the message; the others can be evaluated without one.
_MESSAGE_GUARDS: Final = frozenset(
    {
        "count_is_one",
        "count_is_unknown",
        "is_estimate",
        "is_next_batch_id",
        "is_batch_result",
        "is_unbatched_result",
        "is_retry_result",
        "duplicate_result",
        "is_batches_only",
        "is_task_complete",
    }
)
# Modeller-wide guards: shown even when false, since they say what the task waits for.
_WAITING_GUARDS: Final = frozenset({"all_ready", "all_done"})


def _requirement(link: _Link, guard: str, want: bool, event: str = "") -> str:
    special = _REQUIRES_FOR.get((event, guard, want))
    if special is not None:
        return special
    text = _REQUIRES.get((guard, want))
    return text(link) if text else f"when {'' if want else 'not '}{guard}"


def _expected_texts(link: _Link) -> list[str]:
    """The messages the link's state allows now, each with the conditions on the message.

    Arcs whose message-independent guards are false are left out (the modeller-
    wide ones stay, to say what the task waits for); arcs that differ only in a
    guard and its negation are shown once, without it.
    """
    shown: list[str] = []
    for event, arcs in link.row.items():
        direction, sep, name = event.partition(":")
        if not sep or direction not in ("send", "recv"):
            continue
        options: list[frozenset[tuple[str, bool]]] = []
        for arc in arcs:
            live = True
            kept = set()
            for (guard, want), (fn, _) in zip(arc.arc.guards, arc.guards, strict=True):
                if guard in _MESSAGE_GUARDS or guard in _WAITING_GUARDS:
                    kept.add((guard, want))
                elif fn(link, None) is not want:
                    live = False
                    break
                elif (event, guard, want) in _REQUIRES_FOR:
                    kept.add((guard, want))
            if live:
                options.append(frozenset(kept))
        merged = _merge_complements(options)
        who = "M" if direction == "send" else "W"
        for option in merged:
            conditions = [_requirement(link, g, want, event) for g, want in sorted(option)]
            text = f"{who}: {name}" + (" " + " and ".join(conditions) if conditions else "")
            if text not in shown:
                shown.append(text)
    return shown


def _merge_complements(
    options: list[frozenset[tuple[str, bool]]],
) -> list[frozenset[tuple[str, bool]]]:
    merged = list(dict.fromkeys(options))
    changed = True
    while changed:
        changed = False
        for a in merged:
            for guard, want in a:
                b = (a - {(guard, want)}) | {(guard, not want)}
                if b in merged:
                    merged = [o for o in merged if o not in (a, b)] + [a - {(guard, want)}]
                    changed = True
                    break
            if changed:
                break
    if frozenset() in merged:
        return [frozenset()]
    return merged


_count_is_one: Final = BODY_GUARDS["count_is_one"]
_count_is_unknown: Final = BODY_GUARDS["count_is_unknown"]
_is_estimate: Final = BODY_GUARDS["is_estimate"]
_is_batches_only: Final = BODY_GUARDS["is_batches_only"]
_is_task_complete: Final = BODY_GUARDS["is_task_complete"]


# --- The checker's bindings -------------------------------------------------------------------


class _Task:
    """One task: its modeller, its links, and what the modeller-wide rules look across."""

    __slots__ = (
        "barrier_open",
        "checker",
        "last_in",
        "links",
        "modeller",
        "next_seq",
        "own_abort",
        "seq_ahead",
        "task_id",
    )

    def __init__(self, checker: TraceChecker, task_id: str, modeller: str) -> None:
        self.checker = checker
        self.task_id = task_id
        self.modeller = modeller
        self.links: dict[str, _Link] = {}
        self.next_seq = 0
        # Only when the trace interleaves streams: the modeller's numbers seen above
        # next_seq (they were read before a lower one written to another stream).
        self.seq_ahead: set[int] | None = None
        self.last_in: dict[str, int] | None = None  # the last such number per stream
        self.barrier_open = False
        self.own_abort: str | None = None

    def ended(self) -> bool:
        """Every link has reached a final state, and none owes anything more."""
        return all(not link.row and link.owed is None for link in self.links.values())

    def counted(self) -> list[_Link]:
        """Workers the barrier and completion wait for: accepted on time, not cancelled."""
        return [
            link
            for link in self.links.values()
            if link.accepted and not link.late and not link.cancel_sent
        ]

    def all_ready(self) -> bool:
        counted = self.counted()
        return bool(counted) and all(link.started for link in counted)

    def all_done(self) -> bool:
        counted = self.counted()
        return self.own_abort is None and bool(counted) and all(link.finished for link in counted)


class _Link:
    """The checker's bindings of the modeller chart for one worker.

    Guards read the message (the decoded JSON object) and what this link has
    seen; actions record facts and obligations. Every method returns a real
    bool or None, so the hot loop can compare with ``is``.
    """

    __slots__ = (
        "accepted",
        "account",
        "batched",
        "before_end",
        "cancel_line",
        "cancel_sent",
        "current_batch",
        "done",
        "ended_by",
        "estimate_seen",
        "excused",
        "finished",
        "ignored",
        "initial_setup",
        "late",
        "leaf",
        "next_batch_id",
        "next_seq",
        "owed",
        "pod",
        "row",
        "setup_sent",
        "slots",
        "started",
        "summary",
        "task",
        "tokens",
        "tokens_off",
        "unowed",
    )

    def __init__(self, task: _Task, pod: str, leaf: str, row: Row) -> None:
        self.task = task
        self.pod = pod
        self.leaf = leaf
        self.row = row
        self.next_seq = 0
        self.batched = False
        self.initial_setup = False
        self.accepted = False
        self.late = False
        self.cancel_sent = False
        self.cancel_line = 0
        self.setup_sent = False
        self.started = False
        self.finished = False
        self.current_batch: int | None = None
        self.next_batch_id: int = 0
        self.estimate_seen = False
        self.slots: set[tuple[int | None, int]] = set()
        self.owed: dict[str, tuple[int, str]] | None = None
        self.account: _EchoAccount | None = None
        self.summary: ItemAccount | None = None
        self.before_end: str | None = None
        self.ended_by = ""
        self.ignored = False
        self.excused = False
        # Tokens of this worker's ONLINE_CHECKs not answered yet (M-3.13).
        self.tokens: dict[str, int] | None = None
        self.tokens_off = False
        # A late answer after every other worker ended: checked, but owed nothing (M-4.19).
        self.unowed = False
        # The worker has ended on its own side as well (E-4.24).
        self.done = False

    # ------------------------------------------------------------------ guards

    def guard_initial_setup(self, obj: Any) -> bool:
        return self.initial_setup

    def guard_batched_job(self, obj: Any) -> bool:
        return self.batched

    def guard_cancel_sent(self, obj: Any) -> bool:
        return self.cancel_sent

    def guard_setup_pending(self, obj: Any) -> bool:
        return self.initial_setup and not self.setup_sent

    def guard_setup_settled(self, obj: Any) -> bool:
        return not self.initial_setup or self.setup_sent

    def guard_count_is_one(self, obj: Any) -> bool:
        return _count_is_one(obj["body"])

    def guard_count_is_unknown(self, obj: Any) -> bool:
        return _count_is_unknown(obj["body"])

    def guard_is_estimate(self, obj: Any) -> bool:
        return _is_estimate(obj["body"])

    def guard_estimate_seen(self, obj: Any) -> bool:
        return self.estimate_seen

    def guard_is_next_batch_id(self, obj: Any) -> bool:
        return bool(obj["body"] == self.next_batch_id)

    def guard_is_batch_result(self, obj: Any) -> bool:
        batch = obj["meta"]["batch_number"]
        return batch is not None and batch == self.current_batch

    def guard_is_unbatched_result(self, obj: Any) -> bool:
        return obj["meta"]["batch_number"] is None

    def guard_is_retry_result(self, obj: Any) -> bool:
        return obj["meta"]["batch_number"] is None

    def guard_duplicate_result(self, obj: Any) -> bool:
        # Results must name the current batch, so only its slots can repeat: the
        # slots are cleared at each new batch id to keep memory flat.
        meta = obj["meta"]
        return result_slot(meta["batch_number"], meta.get("algorithm_index", 0)) in self.slots

    def guard_is_batches_only(self, obj: Any) -> bool:
        return _is_batches_only(obj["body"])

    def guard_is_task_complete(self, obj: Any) -> bool:
        return _is_task_complete(obj["body"])

    def guard_all_ready(self, obj: Any) -> bool:
        return self.task.all_ready()

    def guard_all_done(self, obj: Any) -> bool:
        return self.task.all_done()

    # ----------------------------------------------------------------- actions

    def owe(self, type_: str, cause: str) -> None:
        if self.owed is None:
            self.owed = {}
        self.owed.setdefault(type_, (self.task.checker.line, cause))

    def action_note_accept(self, obj: Any) -> None:
        self.accepted = True
        named = obj["body"]["ACCEPT"]
        if named != self.pod:
            self.task.checker.violate(
                self,
                f'pod {self.pod} accepted with {{"ACCEPT": {_short(named)}}}; a JOB_ACCEPT names'
                " the pod that accepts, its sender",
                "W-3.4",
            )
        if self.account is not None and self.account.problem is not None:
            self.task.checker.violate(
                self,
                f"pod {self.pod} accepted a conformance.Echo job whose configuration is invalid"
                f" ({self.account.problem}); expected JOB_REJECT(TASK_SETUP_ERROR)",
                "W-5.3",
            )

    def action_note_late(self, obj: Any) -> None:
        self.late = True

    def action_note_reject(self, obj: Any) -> None:
        if self.account is None:
            return
        reasons = list(obj["body"])
        if self.account.problem is None:
            # Any pod may refuse any job (W-5.1): only the kit, which needs the job run,
            # expects a worker under test to accept a valid one.
            if self.task.checker.require_echo_accept:
                self.task.checker.violate(
                    self,
                    f"pod {self.pod} rejected a valid conformance.Echo job ({', '.join(reasons)});"
                    " a worker under test accepts it",
                    "W-5.1",
                )
        elif reasons != ["TASK_SETUP_ERROR"]:
            self.task.checker.violate(
                self,
                f"pod {self.pod} rejected an invalid conformance.Echo job with {reasons[0]};"
                " expected reason TASK_SETUP_ERROR",
                "W-5.3",
            )

    def action_note_no_answer(self, obj: Any) -> None:
        pass

    def action_note_bad_input(self, obj: Any) -> None:
        pass

    def action_note_link_lost(self, obj: Any) -> None:
        pass

    def action_check_progress(self, obj: Any) -> None:
        pass  # The barrier and completion are guards; inference runs after every step.

    def action_send_setup(self, obj: Any) -> None:
        self.owe("ALGORITHM_EXCHANGE", f"pod {self.pod} accepted a job with an initial setup")

    def action_note_setup_sent(self, obj: Any) -> None:
        self.setup_sent = True

    def action_send_cancel(self, obj: Any) -> None:
        if self.late:
            cause = f"the JOB_ACCEPT of pod {self.pod} came after the modeller stopped waiting"
        else:
            cause = self.task.checker.cause or "the modeller decided to cancel"
        self.owe("TASK_CANCEL", cause)

    def action_note_cancel_sent(self, obj: Any) -> None:
        self.cancel_sent = True
        self.cancel_line = self.task.checker.line

    def action_note_abort(self, obj: Any) -> None:
        reason = obj["body"]["reason"]
        if reason == "CANCELLED_BY_MODELLER" and not self.cancel_sent:
            self.task.checker.violate(
                self,
                f"pod {self.pod} aborted with CANCELLED_BY_MODELLER, but the modeller sent it no"
                " TASK_CANCEL",
                "W-4.16",
            )
        if not self.cancel_sent and self.task.own_abort is None:
            self.task.own_abort = f"pod {self.pod} aborted with {reason}"

    def action_cancel_others(self, obj: Any) -> None:
        checker = self.task.checker
        if self.task.own_abort is None:
            self.task.own_abort = f"pod {self.pod} was lost"
        cause = self.task.own_abort
        for other in self.task.links.values():
            if other is not self:
                checker.queue.append((other, "cancel_requested", cause))

    def action_answer_online_check(self, obj: Any) -> None:
        self.owe("ONLINE_RESPONSE", f"pod {self.pod} sent ONLINE_CHECK")
        if self.tokens_off:
            return  # too many unanswered checks: no longer token-checked (M-3.13)
        tokens = self.tokens
        if tokens is None:
            tokens = self.tokens = {}
        token = obj["body"]
        tokens[token] = tokens.get(token, 0) + 1
        if len(tokens) > _MAX_TOKENS:
            self.tokens = None
            self.tokens_off = True

    def action_note_batch_id(self, obj: Any) -> None:
        self.current_batch = obj["body"]
        self.next_batch_id = obj["body"] + 1
        self.slots.clear()

    def action_note_estimate(self, obj: Any) -> None:
        self.estimate_seen = True

    def action_store_result(self, obj: Any) -> None:
        meta = obj["meta"]
        self.slots.add(result_slot(meta["batch_number"], meta.get("algorithm_index", 0)))

    def action_store_retry_result(self, obj: Any) -> None:
        """Retries carry no batch id: the Echo item account checks them instead."""


def _note_started(link: _Link, obj: Any) -> None:
    link.started = True


def _note_finished(link: _Link, obj: Any) -> None:
    if obj["body"] == "TASK_COMPLETE":
        link.finished = True


def _answer(link: _Link, obj: Any) -> None:
    if link.tokens_off:
        return
    tokens = link.tokens
    token = obj["body"]
    count = tokens.get(token, 0) if tokens is not None else 0
    if count == 0:
        link.task.checker.violate(
            link,
            f"the modeller sent ONLINE_RESPONSE {_short(token)} to pod {link.pod}, which has no"
            " unanswered ONLINE_CHECK with that token; a response answers a check with its token",
            "M-3.13",
        )
    assert tokens is not None
    if count == 1:
        del tokens[token]
    else:
        tokens[token] = count - 1


# Facts the modeller-wide rules count, recorded on the worker's own messages.
_FACTS: Final[Mapping[str, Callable[[_Link, Any], None]]] = {
    "recv:TASK_START": _note_started,
    "recv:BATCHES_COMPLETE": _note_finished,
    "send:ONLINE_RESPONSE": _answer,
}


# --- The Echo item account ------------------------------------------------------------------


def _consecutive_stop(protocol: EchoProtocol, items: tuple[str, ...]) -> int | None:
    """The batch at which 5 consecutive failures end a batched Echo run, if any."""
    size = protocol.batch_size
    run = 0
    for batch, start in enumerate(range(0, len(items), size)):
        if any(protocol.fails(name, alone=False) for name in items[start : start + size]):
            run += 1
            if run >= CONSECUTIVE_FAILURE_LIMIT:
                return batch
        else:
            run = 0
    return None


# Where the batch loop is over, and the Echo account checked every batch's results.
_AFTER_BATCHES: Final = frozenset({"resilience", "final_step"})

Problem = tuple[str, str]
"""A rule id and what broke it."""


def _batch_name(batch: int | None, batched: bool = True) -> str:
    if batch is None:
        return "a retried item" if batched else "the single run"
    return f"batch {batch}"


class _EchoAccount:
    """What a correct worker sends for one Echo job, kept compact, and how far it got.

    The deliveries come from :func:`predict_echo`. Each is a contiguous run of
    the job's items, so delivery ``k`` is kept as three ints in three arrays:
    its batch (-1 for a retry), and the start and stop of its run of items.
    """

    __slots__ = (
        "abort_reason",
        "batch_of",
        "batched",
        "batches",
        "complete",
        "counts",
        "items",
        "last_batch",
        "limit_pending",
        "loop_stop",
        "next",
        "problem",
        "protocol",
        "starts",
        "stops",
        "test_run",
        "total",
    )

    def __init__(self, body: Mapping[str, Any], names: dict[str, str]) -> None:
        self.problem: str | None = None
        self.next = 0
        self.limit_pending = False
        self.items: tuple[str, ...] = ()
        self.total = 0
        self.counts: dict[Fate, int] = {}
        self.complete = False
        self.abort_reason: str | None = None
        self.batches = 0
        self.last_batch = -1
        self.loop_stop = False
        self.batched = body.get("batched_execution") is True
        self.test_run = body.get("test_run") is True
        try:
            protocol = registry.load(body.get("protocol", {}))
        except ConfigError as exc:
            self.problem = str(exc).removeprefix("invalid conformance.Echo configuration: ")
            self.protocol = EchoProtocol()
            self.batch_of = self.starts = self.stops = array("q")
            return
        assert isinstance(protocol, EchoProtocol)
        # Pods of one task usually share item names: keep one copy of each.
        shared = tuple(names.setdefault(name, name) for name in protocol.items)
        self.protocol = protocol = attrs.evolve(protocol, items=shared)
        prediction = self.predict()
        self.items = shared[:1] if self.test_run else shared
        index = {name: i for i, name in enumerate(self.items)}
        size = len(prediction.deliveries)
        self.batch_of, self.starts, self.stops = (
            array("q", bytes(8 * size)),
            array("q", bytes(8 * size)),
            array("q", bytes(8 * size)),
        )
        for k, delivery in enumerate(prediction.deliveries):
            start = index[delivery.items[0]] if delivery.items else 0
            stop = start + len(delivery.items)
            if self.items[start:stop] != delivery.items:
                raise InternalError(f"an Echo delivery is not a run of the items: {delivery}")
            self.batch_of[k] = -1 if delivery.batch is None else delivery.batch
            self.starts[k] = start
            self.stops[k] = stop
        self.total = size
        self.counts = dict(collections.Counter(prediction.fates.values()))
        self.complete = prediction.complete
        self.abort_reason = prediction.abort_reason.value if prediction.abort_reason else None
        self.batches = prediction.batches
        stop_at = _consecutive_stop(protocol, self.items) if self.batched else None
        self.loop_stop = stop_at is not None
        self.last_batch = stop_at if stop_at is not None else self.batches - 1

    def predict(self) -> EchoPrediction:
        return predict_echo(self.protocol, batched=self.batched, test_run=self.test_run)

    def delivered_items(self) -> int:
        return sum(self.stops[k] - self.starts[k] for k in range(self.next))

    def summary(self, task_id: str, pod: str, as_predicted: bool) -> ItemAccount:
        if as_predicted:
            c = self.counts
            return ItemAccount(
                task_id,
                pod,
                c.get(Fate.DELIVERED, 0),
                c.get(Fate.FAILED, 0),
                c.get(Fate.CUT, 0),
                c.get(Fate.NOT_RUN, 0),
            )
        delivered = self.delivered_items()
        return ItemAccount(task_id, pod, delivered, 0, 0, len(self.items) - delivered)

    # ---------------------------------------------------------------- checks

    def after(self, link: _Link, event: str, obj: Any) -> Problem | None:
        """Check a worker message the chart accepted; the rule and reason if Echo disagrees."""
        if event is _RECV_RESULTS:
            return self.result(obj)
        if self.problem is not None:
            return None
        typ = event[5:]
        if self.limit_pending and typ not in ("TASK_ABORT", "LOG_MESSAGE", "ONLINE_CHECK"):
            limit = self.protocol.inference_limit
            assert limit is not None
            return "W-5.8", (
                f"{describe_message(obj)} after the results that reached the inference limit"
                f" (limit {limit.limit}, total_usage {limit.total_usage}): Echo expects"
                " TASK_ABORT(LIMITS_EXCEEDED) next"
            )
        if self.abort_reason == "NO_DATA" and typ in (
            "NUMBER_OF_BATCHES",
            "PREPARING_DATA_BATCHES",
            "TASK_START",
        ):
            return "W-5.2", (
                f"{typ}, but the Echo job has no items to run: expected TASK_ABORT(NO_DATA)"
            )
        if typ == "CURRENT_BATCH_ID":
            batch = obj["body"]
            if batch > self.last_batch:
                if self.loop_stop:
                    return "W-5.7", (
                        f"CURRENT_BATCH_ID {batch}, but Echo predicts TASK_ABORT(WORKER_ERROR)"
                        f" after batch {self.last_batch}, the {CONSECUTIVE_FAILURE_LIMIT}th"
                        " consecutive failed batch"
                    )
                return ("W-5.9" if self.test_run else "W-5.4"), (
                    f"CURRENT_BATCH_ID {batch}, but Echo with {len(self.items)} items in batches"
                    f" of {self.protocol.batch_size} has batches 0 to {self.batches - 1} only"
                )
            if self.next < self.total and -1 < self.batch_of[self.next] < batch:
                return self.skipped(batch, f"CURRENT_BATCH_ID {batch}")
            return None
        if typ == "BATCHES_COMPLETE":
            return self.batches_complete(link, obj["body"])
        if typ == "TASK_ABORT":
            return self.abort(link, obj["body"]["reason"])
        return None

    def next_delivery(self) -> tuple[int | None, tuple[str, ...]] | None:
        k = self.next
        if k >= self.total:
            return None
        batch = self.batch_of[k]
        return (None if batch == -1 else batch), self.items[self.starts[k] : self.stops[k]]

    def skipped(self, before: int, what: str) -> Problem | None:
        """W-5.10: the results of every batch below ``before`` are in (results name their batch)."""
        k = self.next
        if k < self.total:
            batch = self.batch_of[k]
            if batch != -1 and batch < before:
                items = list(self.items[self.starts[k] : self.stops[k]])
                return "W-5.10", (
                    f"{what} before the results of batch {batch}: item(s) {items} lost (Echo"
                    f" predicts that batch {batch} succeeds, and its results can only come"
                    " while it is the current batch)"
                )
        return None

    def result(self, obj: Any) -> Problem | None:
        if self.problem is not None:
            return None
        body = obj["body"]
        got = body.get("items") if body.__class__ is dict else None
        k = self.next
        if k < self.total and got.__class__ is list:
            batch = obj["meta"]["batch_number"]
            expected = self.batch_of[k]
            if (batch == expected if batch is not None else expected == -1) and tuple(
                got
            ) == self.items[self.starts[k] : self.stops[k]]:
                self.next = k = k + 1
                if k == self.total and self.abort_reason == "LIMITS_EXCEEDED":
                    self.limit_pending = True
                return None
        if got.__class__ is not list or any(name.__class__ is not str for name in got):
            return "W-5.4", (
                'EVALUATION_RESULTS body must be {"items": [the items]} for conformance.Echo,'
                f" found {_short(body)}"
            )
        return self.explain(got, obj["meta"]["batch_number"], self.next_delivery())

    def _ends_rule(self) -> str:
        """The rule that predicts this job's abort."""
        reason = self.abort_reason
        if reason == "NO_DATA":
            return "W-5.2"
        if reason == "LIMITS_EXCEEDED":
            return "W-5.8"
        if reason == "WORKER_ERROR":
            return "W-5.7" if self.batched else "W-5.6"
        return "W-5.4"

    def explain(
        self, got: list[str], batch: int | None, expected: tuple[int | None, tuple[str, ...]] | None
    ) -> Problem:
        """Why a result differs from the prediction, in terms of the items' fates."""
        prediction = self.predict()
        where: dict[str, tuple[int, int | None]] = {}
        for k, delivery in enumerate(prediction.deliveries):
            for name in delivery.items:
                where[name] = (k, delivery.batch)
        seen: set[str] = set()
        for name in got:
            if self.test_run and name not in self.items and name in self.protocol.items:
                return "W-5.9", (
                    f"item {name!r} was delivered, but a test_run processes only the first"
                    f" item ({self.items[0]!r})"
                )
            if name not in prediction.fates:
                return "W-5.4", f"item {name!r} is not one of the job's items"
            if name in seen:
                return "W-5.10", f"item {name!r} appears twice in one EVALUATION_RESULTS"
            seen.add(name)
            fate = prediction.fates[name]
            if fate is Fate.FAILED:
                if name in self.protocol.fail_alone and self.batched:
                    rule, why = "W-5.5", "it is in fail_alone, so its retry fails too"
                else:
                    rule, why = "W-5.6", "a non-batched run has no retry"
                return rule, f"item {name!r} was delivered, but Echo predicts that it fails ({why})"
            if fate is Fate.CUT:
                limit = self.protocol.inference_limit
                assert limit is not None
                return "W-5.8", (
                    f"item {name!r} was delivered beyond the inference limit: Echo predicts it is"
                    f" cut (limit {limit.limit}, total_usage {limit.total_usage})"
                )
            if fate is Fate.NOT_RUN:
                return self._ends_rule(), (
                    f"item {name!r} was delivered, but Echo predicts the task ends before its turn"
                    f" (TASK_ABORT({self.abort_reason}))"
                )
            k, its_batch = where[name]
            if k < self.next:
                return "W-5.10", (
                    f"item {name!r} was delivered twice: it was already in the results of"
                    f" {_batch_name(its_batch)}"
                )
        if expected is None:
            return "W-5.4", "EVALUATION_RESULTS, but Echo predicts no more results"
        exp_batch, exp_items = expected
        if batch != exp_batch:
            if batch is not None and batch < self.batches:
                size = self.protocol.batch_size
                failing = [
                    n
                    for n in self.items[batch * size : (batch + 1) * size]
                    if self.protocol.fails(n, alone=False)
                ]
                if failing:
                    return "W-5.5", (
                        f"results for batch {batch}, but Echo predicts batch {batch} fails (item"
                        f" {failing[0]!r} fails in a batch), so it sends no results"
                    )
            return "W-5.4", (
                f"results for {_batch_name(batch, self.batched)}, but Echo predicts the next"
                f" results are for {_batch_name(exp_batch, self.batched)} with items"
                f" {list(exp_items)}"
            )
        lost = [name for name in exp_items if name not in seen]
        if lost:
            hint = ""
            rule = "W-5.10"
            if self.next == self.total - 1 and self.abort_reason == "LIMITS_EXCEEDED":
                hint = f" (the inference limit allows exactly these {len(exp_items)} items)"
                rule = "W-5.8"
            return rule, (
                f"item(s) {', '.join(map(repr, lost))} lost: Echo predicts the results of"
                f" {_batch_name(batch, self.batched)} hold {list(exp_items)}{hint}, found {got}"
            )
        return "W-5.4", (
            f"results of {_batch_name(batch, self.batched)} hold {got}, but Echo predicts"
            f" {list(exp_items)}"
        )

    def batches_complete(self, link: _Link, kind: str) -> Problem | None:
        expected = self.next_delivery()
        if kind == "BATCHES_ONLY":
            if link.current_batch != self.batches - 1:
                return "W-5.4", (
                    f'BATCHES_COMPLETE "BATCHES_ONLY" after batch {link.current_batch}, but Echo'
                    f" has batches 0 to {self.batches - 1}"
                )
            if self.loop_stop:
                return "W-5.7", (
                    'BATCHES_COMPLETE "BATCHES_ONLY", but Echo predicts TASK_ABORT(WORKER_ERROR)'
                    f" after {CONSECUTIVE_FAILURE_LIMIT} consecutive failed batches"
                )
            if expected is not None and expected[0] is not None:
                return "W-5.10", (
                    f'BATCHES_COMPLETE "BATCHES_ONLY" before the results of batch {expected[0]}:'
                    f" item(s) {list(expected[1])} lost"
                )
            return None
        if not self.complete:
            return "W-5.11", (
                f'BATCHES_COMPLETE "TASK_COMPLETE", but Echo predicts the worker aborts with'
                f" {self.abort_reason}"
            )
        if expected is not None:
            return "W-5.10", (
                f'BATCHES_COMPLETE "TASK_COMPLETE" before the results of'
                f" {_batch_name(expected[0], self.batched)}: item(s) {list(expected[1])} lost"
            )
        return None

    def abort(self, link: _Link, reason: str) -> Problem | None:
        if link.cancel_sent or reason in _EARLY_END_REASONS:
            # It stopped early: the batch it was running may be undelivered, no earlier one.
            if link.current_batch is not None and link.before_end not in _AFTER_BATCHES:
                return self.skipped(link.current_batch, f"TASK_ABORT({reason})")
            return None
        if self.complete:
            return "W-5.11", f"TASK_ABORT({reason}), but Echo predicts that this task completes"
        if reason != self.abort_reason:
            return "W-5.11", (
                f"TASK_ABORT({reason}), but Echo predicts TASK_ABORT({self.abort_reason})"
            )
        expected = self.next_delivery()
        if expected is not None:
            return "W-5.10", (
                f"TASK_ABORT({reason}) before the results of"
                f" {_batch_name(expected[0], self.batched)}: item(s) {list(expected[1])} lost"
            )
        return None


# --- The checker ----------------------------------------------------------------------------


class TraceChecker:
    """Checks a trace line by line; stops at the first violation.

    Feed it lines with :meth:`feed` (and, from the kit, the modeller's
    internal events with :meth:`internal`), then call :meth:`finish`.

    Memory is bounded by the tasks still open: a task's monitors are dropped
    once it has ended and :data:`KEEP_ENDED` more tasks have ended after it
    (they stay a while because messages cross in flight after an end).

    Args:
        echo: Check the item account of ``conformance.Echo`` jobs.
        unanswered_ok: Pods that are known never to answer (the kit's silent
            pods); a trace may end with them unanswered.
        max_line_bytes: Longer lines are a violation.
        require_echo_accept: Also require a worker to accept a valid
            ``conformance.Echo`` job (the kit's expectation W-5.1; the spec lets
            any pod refuse any job, so a trace alone does not).
        interleaved: The lines come from several streams (one TCP connection
            per pod) in the order an observer read them, which need not be the
            order they were written. The modeller's seq (E-2.6) is then checked
            as such an observer can: rising on each stream, each number once,
            and none missing below the highest seen. Without it (a trace file,
            one stdout) the exact +1 is checked in line order.
    """

    def __init__(
        self,
        *,
        echo: bool = True,
        unanswered_ok: Iterable[str] = (),
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        chart: Chart | None = None,
        require_echo_accept: bool = False,
        interleaved: bool = False,
    ) -> None:
        self.chart = chart or shipped_chart("modeller")
        self.interleaved = interleaved
        self.table = _table(self.chart)
        self.echo = echo
        self.unanswered_ok = frozenset(unanswered_ok)
        self.max_line_bytes = max_line_bytes
        self.require_echo_accept = require_echo_accept
        self.line = 0
        self.tasks: dict[str, _Task] = {}
        # Ids of ended tasks still kept, oldest first.
        self.ended: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Echo predictions by job, shared by the pods and tasks that run the same job
        # (a prediction never changes; a pod's account copies it and keeps its own progress).
        self.plans: dict[tuple[str, bool, bool], _EchoAccount] = {}
        self.task_count = 0
        self.pod_count = 0
        self.dropped = 0
        self.accounts: list[ItemAccount] = []
        self.totals = [0, 0, 0, 0]
        self.finding: Finding | None = None
        self.queue: collections.deque[tuple[_Link, str, str]] = collections.deque()
        self.cause: str | None = None
        self.raw: bytes | str = b""
        self._last_id: str | None = None
        self._last_task: _Task | None = None

    # ------------------------------------------------------------ violations

    def violate(self, link: _Link | None, message: str, rule: str) -> NoReturn:
        """Stop at a violation of ``rule`` on the current line."""
        raise _Stop(self._finding(link, message, rule))

    def _finding(
        self, link: _Link | None, message: str, rule: str, *, at_end: bool = False
    ) -> Finding:
        if rule not in RULE_BY_ID:
            raise InternalError(f"the checker cites {rule!r}, which is not in the rule book")
        text = None
        if not at_end:
            raw = self.raw
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            text = text.rstrip("\r\n")
            if len(text) > _EXCERPT:
                text = text[: _EXCERPT - 3] + "..."
        state = expected = None
        if link is not None:
            path = self.chart.path(link.leaf)
            state = link.leaf if path == link.leaf else f"{link.leaf} ({path})"
            expected = self.expected(link)
        return Finding(
            line=self.line + 1 if at_end else self.line,
            message=f"{message} [{rule}]",
            text=text,
            task_id=link.task.task_id if link is not None else None,
            pod=link.pod if link is not None else None,
            state=state,
            expected=expected or (),
            rule=rule,
        )

    def expected(self, link: _Link) -> tuple[str, ...]:
        """The messages the link's state allows, with their conditions."""
        shown = _expected_texts(link)
        if link.owed:
            for type_, (line, cause) in link.owed.items():
                shown.append(f"M: {type_} (owed since line {line}: {cause})")
        return tuple(shown)

    # -------------------------------------------------------------- feeding

    def feed(self, raw: bytes | str) -> Finding | None:
        """Check the next line of the trace; returns the first violation once found."""
        if self.finding is None:
            self.line += 1
            try:
                self._feed(raw)
            except _Stop as stop:
                self.finding = stop.finding
        return self.finding

    def feed_lines(self, lines: Iterable[bytes | str]) -> Finding | None:
        """Check many lines; the same as calling :meth:`feed` on each, only faster."""
        if self.finding is None:
            feed = self._feed
            try:
                for raw in lines:
                    self.line += 1
                    feed(raw)
            except _Stop as stop:
                self.finding = stop.finding
        return self.finding

    def internal(
        self, task_id: str, pod: str, event: str, *, excuse: bool = False
    ) -> Finding | None:
        """Apply an internal event the kit's own modeller took (a timeout, a kit fault).

        With ``excuse``, the pod's later lines are not checked: the kit cut
        its link on purpose.
        """
        if self.finding is not None:
            return self.finding
        task = self.tasks.get(task_id)
        link = task.links.get(pod) if task is not None else None
        if link is None:
            return None
        self.raw = ""
        try:
            if event in link.row:
                self._fire(link, event, "")
                self._drain()
            if excuse:
                link.excused = True
        except _Stop as stop:
            self.finding = stop.finding
        return self.finding

    def _feed(self, raw: bytes | str) -> None:
        # The hot path, written for speed: byte scans and one plain C JSON scan, then
        # only the checks that prove decode() would accept the line, the wire value rule
        # included. Anything unusual (and every type whose body is not cheap to check)
        # goes through decode() itself.
        self.raw = raw
        obj: Any
        try:
            if isinstance(raw, bytes):
                data, text = raw, raw.decode()
            else:
                data, text = raw.encode(), raw  # a lone surrogate fails here
            if len(data) > self.max_line_bytes or (
                len(data) > _PLAIN_PARSE_MAX_BYTES
                and data.count(b"[") + data.count(b"{") > MAX_CONTAINERS
            ):
                raise ValueError("not on the fast path")  # decode() refuses it unparsed
            obj, end = _scan(text, 0)
            newline = len(text) - end  # 1 for the line's own "\n", 0 without one
            if newline and (newline != 1 or text[end] != "\n"):
                raise ValueError("not one JSON value")
            size = len(obj)
            typ = obj["type"]
            task_id = obj["task_id"]
            sender = obj["sender"]
            recipient = obj["recipient"]
            seq = obj["seq"]
            version = obj["v"]
            body_extent = _FAST_BODY[typ](obj["body"])
            meta_extent = _meta_extent(obj["meta"]) if size == 8 else 0
            if (
                (size != 8 and (size != 7 or "meta" in obj))
                or body_extent < 0
                or meta_extent < 0
                or version.__class__ is not int
                or version != 1
                or task_id.__class__ is not str
                or sender.__class__ is not str
                or recipient.__class__ is not str
                or seq.__class__ is not int
                or not 0 <= seq <= MAX_SAFE_INTEGER
                or (
                    typ == "EVALUATION_RESULTS" and (size == 7 or "batch_number" not in obj["meta"])
                )
            ):
                raise ValueError("not on the fast path")
            # The wire value rule, proved by counting (see _wire/_messages.py, "Plain parsing"),
            # with newlines counted too: the envelope is one object with `size` keys, and the
            # line may end in its own newline; any other one is whitespace inside the line.
            marks = 1 + size + meta_extent + body_extent + newline
            if len(data) - len(data.translate(None, _MARKS)) != marks and (
                text.find("\n", 0, end) != -1 or not _keeps_value_rule(text, data)
            ):
                raise ValueError("not within the value rule, or a newline inside the line")
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            StopIteration,
            RecursionError,
        ):
            obj = self._decode(raw)
            if obj is None:
                return
            typ = obj["type"]
            task_id = obj["task_id"]
            sender = obj["sender"]
            recipient = obj["recipient"]
            seq = obj["seq"]

        if task_id == self._last_id:
            task = self._last_task
        else:
            task = self.tasks.get(task_id)
            if task is None:
                task = self._new_task(obj)
            self._last_id, self._last_task = task_id, task
        assert task is not None
        if sender == task.modeller:
            if typ in _WORKER_ONLY:
                self.violate(
                    task.links.get(recipient),
                    f"the modeller ({sender}) sent {typ}, which only workers send",
                    "M-3.1",
                )
            if seq != task.next_seq or task.seq_ahead:
                if not self.interleaved:
                    self._bad_seq(sender, seq, task.next_seq, task, task.links.get(recipient))
                self._seq_across_streams(task, seq, recipient)
            else:
                task.next_seq = seq + 1
            link = task.links.get(recipient)
            if link is None:
                if typ != "JOB_REQUEST":
                    self.violate(
                        None,
                        f"the modeller sent {typ} to {recipient!r}, which got no JOB_REQUEST in"
                        f" task {task.task_id!r}",
                        "E-4.1",
                    )
                link = self._new_link(task, recipient, obj)
            event = _SEND[typ]
        else:
            if typ in _MODELLER_ONLY:
                self.violate(
                    task.links.get(sender),
                    f"{sender!r} sent {typ}, which only the modeller sends (the modeller of task"
                    f" {task.task_id!r} is {task.modeller!r})",
                    "W-3.2",
                )
            link = task.links.get(sender)
            if link is None:
                self.violate(
                    None,
                    f"{sender!r} sent {typ} in task {task.task_id!r}, but the modeller sent it no"
                    " JOB_REQUEST",
                    "E-4.1",
                )
            if link.excused:
                return
            if recipient != task.modeller:
                self.violate(
                    link,
                    f"pod {sender} sent {typ} to {recipient!r}; workers write to the modeller"
                    f" ({task.modeller!r})",
                    "W-3.2",
                )
            if seq != link.next_seq:
                self._bad_seq(sender, seq, link.next_seq, task, link)
            link.next_seq = seq + 1
            event = _RECV[typ]
        if link.excused or link.ignored:
            return

        if event is _SEND_TASK_START and not task.barrier_open:
            self._open_barrier(task)
        arcs = link.row.get(event)
        if arcs is None:
            self._refused(link, event, obj)
            return
        self._take(link, event, obj, arcs)
        fact = _FACTS.get(event)
        if fact is not None:
            fact(link, obj)
        account = link.account
        if account is not None and event in _RECV_EVENTS:
            problem = account.after(link, event, obj)
            if problem is not None:
                self.violate(link, f"pod {link.pod}: {problem[1]}", problem[0])
            if not link.row:
                self._close_account(link)
        if self.queue:
            self._drain()

    def _close_account(self, link: _Link) -> None:
        """Keep only the summary of an ended worker's account; free the rest."""
        account = link.account
        if account is None:
            return
        link.account = None
        if account.problem is None and link.accepted:
            as_predicted = not link.row and not link.cancel_sent and account.next == account.total
            link.summary = account.summary(link.task.task_id, link.pod, as_predicted)

    def _decode(self, raw: bytes | str) -> Any:
        """The slow path: decode() judges the line; the JSON object, or None to skip it."""
        try:
            message = decode(raw, max_line_bytes=self.max_line_bytes)
        except DecodeError as exc:
            self.violate(self._link_of(raw), f"invalid message: {exc}", _decode_rule(exc, raw))
        if message.type.value == "CONFORMANCE_SCENARIO":
            return None  # The kit's control line, not part of any task.
        return _json_decoder.decode(raw.decode() if isinstance(raw, bytes) else raw)

    def _link_of(self, raw: bytes | str) -> _Link | None:
        """The monitor an invalid line seems to belong to, to show its pod and state."""
        try:
            obj = _json_decoder.decode(raw.decode() if isinstance(raw, bytes) else raw)
            task = self.tasks.get(obj["task_id"])
            if task is None:
                return None
            pod = obj["recipient"] if obj["sender"] == task.modeller else obj["sender"]
            return task.links.get(pod)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None

    def _bad_seq(
        self, sender: str, seq: int, expected: int, task: _Task, link: _Link | None = None
    ) -> NoReturn:
        who = "the modeller" if sender == task.modeller else sender
        if expected == 0:
            found = "its first message has seq 0"
        elif seq < expected:
            found = f"that number was used before; expected {expected}"
        else:
            found = f"expected {expected}"
        self.violate(
            link,
            f"seq {seq} from {who} in task {task.task_id!r}; {found} (each sender's seq goes up"
            " by exactly 1 with every message it writes, whoever receives it)",
            "E-2.6",
        )

    def _seq_across_streams(self, task: _Task, seq: int, recipient: str) -> None:
        """E-2.6 as an observer of interleaved streams sees it: each number once, rising per stream.

        None missing is checked when the task is dropped or the trace ends.
        """
        link = task.links.get(recipient)
        if seq < task.next_seq or (task.seq_ahead is not None and seq in task.seq_ahead):
            self._bad_seq(task.modeller, seq, task.next_seq, task, link)
        last_in = task.last_in
        if last_in is None:
            last_in = task.last_in = {}
        last = last_in.get(recipient, -1)
        if seq < last:
            self.violate(
                link,
                f"seq {seq} from the modeller to {recipient} in task {task.task_id!r} after seq"
                f" {last} on the same stream; each sender's seq rises in the order it writes",
                "E-2.6",
            )
        last_in[recipient] = seq
        ahead = task.seq_ahead
        if ahead is None:
            ahead = task.seq_ahead = set()
        ahead.add(seq)
        while task.next_seq in ahead:
            ahead.remove(task.next_seq)
            task.next_seq += 1

    def _seq_gap(self, task: _Task) -> Finding | None:
        """The modeller's first number never seen, when later ones were (interleaved streams)."""
        if not task.seq_ahead:
            return None
        return self._finding(
            None,
            f"the modeller's seq {task.next_seq} in task {task.task_id!r} never arrived on any"
            f" stream, though seq {max(task.seq_ahead)} did (each sender's seq goes up by exactly"
            " 1 with every message it writes, whoever receives it)",
            "E-2.6",
            at_end=True,
        )

    def _new_task(self, obj: Mapping[str, Any]) -> _Task:
        if obj["type"] != "JOB_REQUEST":
            gone = (
                f" (or it is one of the {self.dropped} tasks that ended more than {KEEP_ENDED}"
                " tasks ago, whose monitors are dropped)"
                if self.dropped
                else ""
            )
            self.violate(
                None,
                f"{obj['type']} for task {obj['task_id']!r}, which has no JOB_REQUEST before"
                f" it{gone}; a task starts with the modeller's JOB_REQUEST",
                "E-4.1",
            )
        task = _Task(self, obj["task_id"], obj["sender"])
        self.tasks[task.task_id] = task
        self.task_count += 1
        return task

    def _new_link(self, task: _Task, pod: str, obj: Mapping[str, Any]) -> _Link:
        initial = self.chart.settle(self.chart.initial)
        link = _Link(task, pod, initial, self.table[initial])
        body = obj["body"]
        link.batched = body.get("batched_execution") is True
        protocol = body.get("protocol", {})
        link.initial_setup = protocol.get("initial_setup") is True
        # A resumed task (our extension, docs/network.md) starts at a later batch, and an
        # earlier run delivered the batches before it: no item account can be kept.
        link.next_batch_id = first_batch_id(body.get("options"))
        if self.echo and protocol.get("class_name") == ECHO and not link.next_batch_id:
            test_run = body.get("test_run") is True
            key = (json.dumps(protocol, sort_keys=True), link.batched, test_run)
            plans = self.plans
            plan = plans.get(key)
            if plan is None:
                plan = plans[key] = _EchoAccount(body, {})
                if len(plans) > _MAX_PLANS:
                    del plans[next(iter(plans))]
            # The prediction is shared and never changes; only the progress is the link's.
            link.account = copy.copy(plan)
        task.links[pod] = link
        self.pod_count += 1
        return link

    # ------------------------------------------------------------- stepping

    def _take(self, link: _Link, event: str, obj: Any, arcs: tuple[BoundArc, ...]) -> None:
        # The first arc whose guards all hold (nested loops: no generator per message).
        for arc in arcs:
            for guard, want in arc.guards:
                if guard(link, obj) is not want:
                    break
            else:
                break
        else:
            self._guards_failed(link, event, obj, arcs)
        if link.owed is not None and event in _SEND_EVENTS:
            self._discharge(link, event[5:], obj)
        for action in arc.actions:
            action(link, obj)
        target = arc.step.target
        if target != link.leaf:
            self._move(link, event, target)

    def _move(self, link: _Link, event: str, target: str) -> None:
        before = link.leaf
        link.leaf = target
        link.row = self.table[target]
        if not link.row:
            link.before_end = before
            link.ended_by = event
            owed = link.owed
            # A late accept is answered with TASK_CANCEL even if the pod ends first (M-4.19);
            # every other obligation ends with the worker.
            if owed is not None and link.late and "TASK_CANCEL" in owed:
                link.owed = {"TASK_CANCEL": owed["TASK_CANCEL"]}
            else:
                link.owed = None
            self._after_change(link.task)

    def _fire(self, link: _Link, event: str, cause: str) -> None:
        """Take an internal event if the link's state has it (guards included)."""
        arcs = link.row.get(event)
        if arcs is None:
            return
        for arc in arcs:
            if all(guard(link, None) is want for guard, want in arc.guards):
                break
        else:
            return
        self.cause = cause or None
        try:
            self._take(link, event, None, (arc,))
        finally:
            self.cause = None

    def _drain(self) -> None:
        while self.queue:
            touched: dict[_Task, None] = {}
            while self.queue:
                link, event, cause = self.queue.popleft()
                self._fire(link, event, cause)
                touched[link.task] = None
            # A cancel can leave a pod that never answered out of a task whose other
            # workers have all ended: it is owed nothing from then on (M-4.19).
            for task in touched:
                self._after_change(task)

    def _open_barrier(self, task: _Task) -> None:
        # The modeller stopped waiting for answers: whoever has not answered is left out.
        task.barrier_open = True
        for link in list(task.links.values()):
            self._fire(link, "response_timeout", "")

    def _after_change(self, task: _Task) -> None:
        # When every other link has ended, a pod still left out is owed nothing.
        links = task.links.values()
        if all(not link.row or "task_ended" in link.row for link in links):
            for link in links:
                if "task_ended" in link.row:
                    self.queue.append((link, "task_ended", ""))
        if task.ended():
            self._task_ended(task)

    def _task_ended(self, task: _Task) -> None:
        """Keep an ended task a while (messages cross after an end), then drop it."""
        ended = self.ended
        ended[task.task_id] = None
        ended.move_to_end(task.task_id)
        while len(ended) > KEEP_ENDED:
            task_id, _ = ended.popitem(last=False)
            old = self.tasks.get(task_id)
            if old is not None and old is not task and old.ended():
                self._drop(old)

    def _drop(self, task: _Task) -> None:
        gap = self._seq_gap(task)
        if gap is not None:
            raise _Stop(gap)
        del self.tasks[task.task_id]
        self.dropped += 1
        if self._last_task is task:
            self._last_id = self._last_task = None
        self._collect(task)

    def _collect(self, task: _Task) -> None:
        for link in task.links.values():
            self._close_account(link)
            summary = link.summary
            if summary is not None:
                totals = self.totals
                totals[0] += summary.delivered
                totals[1] += summary.failed
                totals[2] += summary.cut
                totals[3] += summary.not_run
                if len(self.accounts) < MAX_ACCOUNTS:
                    self.accounts.append(summary)

    def _discharge(self, link: _Link, type_: str, obj: Any) -> None:
        owed = link.owed
        assert owed is not None
        cancel = owed.get("TASK_CANCEL")
        if cancel is not None and link.late and type_ in ("TASK_START", "TASK_COMPLETE"):
            self.violate(
                link,
                f"the modeller sent {type_} to pod {link.pod}, whose JOB_ACCEPT came late (line"
                f" {cancel[0]}): a late accept is answered with TASK_CANCEL",
                "M-4.19",
            )
        owed.pop(type_, None)
        if not owed:
            link.owed = None

    def _refused(self, link: _Link, event: str, obj: Any) -> None:
        direction, _, typ = event.partition(":")
        if not link.row:
            before = link.before_end
            if link.ended_by.startswith("recv:") and direction == "send" and before:
                # Crossed in flight: judge it as the modeller saw the worker before its end.
                for arc in self.table[before].get(event, ()):
                    if all(guard(link, obj) is want for guard, want in arc.guards):
                        if link.owed is not None:
                            self._discharge(link, typ, obj)
                        for action in arc.actions:
                            action(link, obj)
                        fact = _FACTS.get(event)
                        if fact is not None:
                            fact(link, obj)
                        link.before_end = arc.step.target
                        if link.task.ended():
                            self._task_ended(link.task)
                        return
            elif (
                link.ended_by.startswith("send:")
                and direction == "recv"
                and before
                and not link.done
            ):
                # Sent while the modeller's last message was in flight (an ONLINE_CHECK, or
                # an abort on a timeout): judged against the state before, with no effect
                # but the worker's own end.
                arcs = self.table[before].get(event, ())
                if any(all(guard(link, obj) is want for guard, want in arc.guards) for arc in arcs):
                    if typ == "TASK_ABORT":
                        link.done = True
                    return
            elif ":" not in link.ended_by and direction == "recv":
                before = before or link.leaf
                arcs = self.table[before].get(event, ())
                if link.leaf == "unanswered" and arcs:
                    # A late answer after every other worker ended: owed nothing, but the
                    # pod's own messages still follow the order (M-4.19, E-4.24).
                    link.unowed = True
                    link.leaf, link.row = before, self.table[before]
                    self._take(link, event, obj, arcs)
                    link.owed = None
                    return
                if arcs:
                    link.ignored = True  # after the kit's own internal end: not checked
                    return
            who = "the modeller sent" if direction == "send" else f"pod {link.pod} sent"
            target = f" to pod {link.pod}" if direction == "send" else ""
            self.violate(
                link,
                f"{who} {describe_message(obj)}{target} after that worker's end (state"
                f" {link.leaf}); nothing may follow the end",
                "E-4.24",
            )
        who = "the modeller sent" if direction == "send" else f"pod {link.pod} sent"
        target = f" to pod {link.pod}" if direction == "send" else ""
        self.violate(
            link,
            f"{who} {describe_message(obj)}{target} in state {link.leaf}, where {typ} is not"
            " allowed",
            _refusal_rule(link, direction, typ),
        )

    def _guards_failed(self, link: _Link, event: str, obj: Any, arcs: tuple[BoundArc, ...]) -> None:
        direction, _, typ = event.partition(":")
        options = []
        blamed: tuple[int, str] | None = None
        for arc in arcs:
            failed = [
                (name, want)
                for (name, want), (guard, _) in zip(arc.arc.guards, arc.guards, strict=True)
                if guard(link, obj) is not want
            ]
            options.append(" and ".join(_requirement(link, n, w, event) for n, w in failed))
            if failed and (blamed is None or len(failed) < blamed[0]):
                blamed = (len(failed), _guard_rule(event, *failed[0]))
        who = "the modeller sent" if direction == "send" else f"pod {link.pod} sent"
        target = f" to pod {link.pod}" if direction == "send" else ""
        self.violate(
            link,
            f"{who} {describe_message(obj)}{target} in state {link.leaf}, but {typ} is allowed"
            f" there only {'; or '.join(options)}",
            blamed[1] if blamed is not None else _refusal_rule(link, direction, typ),
        )

    # ---------------------------------------------------------------- finish

    def finish(self) -> CheckResult:
        """Check that every task reached its end, and return the verdict."""
        if self.finding is None:
            try:
                self._finish()
            except _Stop as stop:
                self.finding = stop.finding
        for task in self.tasks.values():
            self._collect(task)
        self.tasks.clear()
        self.ended.clear()
        self._last_id = self._last_task = None
        return CheckResult(
            ok=self.finding is None,
            lines=self.line,
            tasks=self.task_count,
            pods=self.pod_count,
            finding=self.finding,
            accounts=tuple(self.accounts),
            item_totals=(self.totals[0], self.totals[1], self.totals[2], self.totals[3]),
        )

    def _finish(self) -> None:
        if self.line == 0:
            raise _Stop(
                Finding(
                    1,
                    "the trace is empty; a trace holds every message of at least one task [E-4.27]",
                    rule="E-4.27",
                )
            )
        for task in self.tasks.values():
            gap = self._seq_gap(task)
            if gap is not None:
                raise _Stop(gap)
        waiting: list[tuple[_Link, str]] = []
        for task in self.tasks.values():
            for link in task.links.values():
                if not link.row:
                    if link.owed is not None:
                        line, cause = link.owed["TASK_CANCEL"]
                        raise _Stop(
                            self._finding(
                                link,
                                f"trace ends, and the modeller never sent TASK_CANCEL to pod"
                                f" {link.pod} (task {task.task_id}), owed since line {line}:"
                                f" {cause}; a late JOB_ACCEPT is answered with TASK_CANCEL even"
                                " if the pod ends first",
                                "M-4.19",
                                at_end=True,
                            )
                        )
                    continue
                if link.excused or link.ignored or link.unowed:
                    continue
                if link.pod in self.unanswered_ok and (
                    "response_timeout" in link.row or "task_ended" in link.row
                ):
                    continue
                waiting.append((link, _end_rule(link)))
        # The worker that has to speak first: the modeller may be waiting for it.
        waiting.sort(key=lambda item: item[1].startswith("M"))
        if waiting:
            link, rule = waiting[0]
            short = [
                text.split(" ", 2)[0] + " " + text.split(" ", 2)[1]
                for text in _expected_texts(link)
                if not any(h in text for h in _HOUSEKEEPING)
            ]
            expecting = ", ".join(dict.fromkeys(short)) or "nothing more"
            if link.owed:
                expecting += "; the modeller owes it " + ", ".join(
                    f"{type_} (since line {line}: {cause})"
                    for type_, (line, cause) in link.owed.items()
                )
            note = ""
            if link.cancel_sent:
                note = (
                    f" (the modeller cancelled it at line {link.cancel_line}; a cancelled"
                    " worker ends with TASK_ABORT)"
                )
            raise _Stop(
                self._finding(
                    link,
                    f"trace ends while pod {link.pod} (task {link.task.task_id}) is in state"
                    f" {link.leaf}, expecting {expecting}{note}",
                    rule,
                    at_end=True,
                )
            )


_HOUSEKEEPING: Final = ("LOG_MESSAGE", "ONLINE_CHECK", "ONLINE_RESPONSE")

KEEP_ENDED: Final = 1000
"""Ended tasks kept whole, for the messages that cross after an end; older ones are dropped."""
MAX_ACCOUNTS: Final = 10_000
"""Item accounts kept one by one in a :class:`CheckResult`; the totals count every worker."""
_MAX_TOKENS: Final = 64
_MAX_PLANS: Final = 16

# States where the modeller, not the worker, has to speak next.
_MODELLER_SPEAKS: Final = frozenset({"single_ready", "batch_ready", "final_step"})


def _end_rule(link: _Link) -> str:
    """Who a trace that ends here leaves waiting: the rule that names the silent side."""
    if link.cancel_sent:
        return "W-4.15"
    owed = link.owed
    if owed:
        if "ALGORITHM_EXCHANGE" in owed:
            return "M-4.7"
        if "TASK_CANCEL" in owed:
            return "M-4.19" if link.late else "M-4.22"
        return "M-4.26"
    return "M-4.26" if link.leaf in _MODELLER_SPEAKS else "W-4.25"


# The rule each chart guard enforces, when it is false on a message.
_GUARD_RULES: Final[Mapping[str, str]] = {
    "batched_job": "W-4.4",
    "count_is_one": "W-4.4",
    "count_is_unknown": "W-4.4",
    "setup_settled": "W-4.6",
    "setup_pending": "M-4.7",
    "initial_setup": "M-4.7",
    "is_estimate": "W-4.10",
    "estimate_seen": "W-4.10",
    "is_next_batch_id": "W-4.5",
    "is_batch_result": "W-2.11",
    "is_unbatched_result": "W-2.11",
    "is_retry_result": "W-2.11",
    "duplicate_result": "W-4.11",
    "is_batches_only": "W-4.12",
    "is_task_complete": "W-4.12",
    "all_ready": "M-4.20",
    "all_done": "M-4.21",
}


def _guard_rule(event: str, guard: str, want: bool) -> str:
    if guard == "cancel_sent":
        return "M-4.21" if event == "send:TASK_COMPLETE" else "M-4.14"
    return _GUARD_RULES.get(guard, "W-4.3" if event.startswith("recv:") else "E-4.1")


# States before the pod's answer, and the ones before the TASK_START handshake is over.
_UNANSWERED: Final = frozenset({"requested", "left_out"})
_BEFORE_GO: Final = frozenset(
    {
        "accepted",
        "preparing_data",
        "configuring",
        "preparing_batches",
        "counting",
        "single_announced",
        "single_ready",
        "batch_announced",
        "batch_ready",
    }
)
_MODELLER_SEND_RULES: Final[Mapping[str, str]] = {
    "JOB_REQUEST": "E-4.1",
    "ALGORITHM_EXCHANGE": "M-4.7",
    "TASK_START": "M-4.9",
    "TASK_COMPLETE": "M-4.21",
    "TASK_CANCEL": "M-4.14",
    "ONLINE_RESPONSE": "E-4.17",
    "LOG_MESSAGE": "E-4.17",
}


def _refusal_rule(link: _Link, direction: str, typ: str) -> str:
    """The rule a message breaks when the link's state does not allow it at all."""
    if direction == "send":
        return _MODELLER_SEND_RULES.get(typ, "E-4.1")
    leaf = link.leaf
    if leaf in _UNANSWERED:
        if typ == "TASK_ABORT":
            return "W-4.13"
        if typ in ("LOG_MESSAGE", "ONLINE_CHECK"):
            return "E-4.17"
        return "W-4.2"
    if typ in ("JOB_ACCEPT", "JOB_REJECT"):
        return "W-4.2"
    if typ == "NUMBER_OF_BATCHES":
        return "W-4.10"
    if typ == "PREPARING_DATA_BATCHES" and not link.batched:
        return "W-4.4"
    if typ == "CURRENT_BATCH_ID":
        if not link.batched:
            return "W-4.4"
        if leaf in ("resilience", "final_step"):
            return "W-4.12"
        return "W-4.8" if leaf in _BEFORE_GO else "W-4.3"
    if typ in ("TASK_START", "EVALUATION_RESULTS", "BATCHES_COMPLETE"):
        if leaf in _BEFORE_GO or typ == "TASK_START":
            return "W-4.8"
        if leaf == "final_step":
            return "W-4.12"
    return "W-4.3"


_ENVELOPE_RULES: Final[Mapping[str, str]] = {
    "v": "E-2.2",
    "type": "E-2.3",
    "task_id": "E-2.4",
    "sender": "E-2.4",
    "recipient": "E-2.4",
    "seq": "E-2.5",
    "body": "E-2.7",
    "meta": "E-2.8",
}
_BODY_RULES: Final[Mapping[str, str]] = {
    "JOB_REQUEST": "M-3.3",
    "JOB_ACCEPT": "W-3.4",
    "JOB_REJECT": "W-3.5",
    "PREPARING_DATA": "E-3.6",
    "CONFIGURING_TASK": "E-3.6",
    "PREPARING_DATA_BATCHES": "E-3.6",
    "TASK_START": "E-3.6",
    "TASK_COMPLETE": "E-3.6",
    "TASK_CANCEL": "E-3.6",
    "ALGORITHM_EXCHANGE": "M-3.7",
    "NUMBER_OF_BATCHES": "W-3.8",
    "CURRENT_BATCH_ID": "W-3.9",
    "BATCHES_COMPLETE": "W-3.10",
    "TASK_ABORT": "W-3.11",
    "ONLINE_CHECK": "W-3.12",
    "ONLINE_RESPONSE": "M-3.13",
    "LOG_MESSAGE": "E-3.14",
    "CONFORMANCE_SCENARIO": "M-6.1",
}


def _decode_rule(exc: DecodeError, raw: bytes | str) -> str:
    """The rule a line that decode() refused breaks, from the field it names."""
    field = exc.field
    if field == "$" or not field.startswith("$."):
        return "F-1.2" if "expected a line of at most" in str(exc) else "F-1.1"
    try:
        obj = _json_decoder.decode(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, RecursionError):  # pragma: no cover - decode() parsed it already
        return "F-1.1"
    top = field[2:].split(".", 1)[0].split("[", 1)[0]
    if top not in _ENVELOPE_RULES:
        return "E-2.1"  # an unexpected field
    if top not in obj:
        return "E-2.7" if top == "body" else "W-2.10" if top == "meta" else "E-2.1"
    if top == "body":
        return _BODY_RULES.get(str(obj.get("type")), "E-2.7")
    if top == "meta" and field != "$.meta":
        if field == "$.meta.batch_number" and "batch_number" not in obj["meta"]:
            return "W-2.10"
        return "E-2.9"
    return _ENVELOPE_RULES[top]


def _table(chart: Chart) -> Mapping[str, Row]:
    """The chart's compiled table, bound to the checker's bindings (compiled once, cached)."""
    return compile_chart(chart).bind(_Link).rows


# --- Reading ---------------------------------------------------------------------------------


_READ_CHUNK: Final = 256 * 1024


def read_lines(stream: IO[bytes], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[bytes]:
    """Lines of a binary stream, each ending in its newline (the last one maybe not).

    A longer line than ``max_line_bytes`` is cut at the limit plus one byte, which the
    checker then reports as too long, and nothing after it is read, so a huge line cannot
    exhaust memory: at most one chunk and one line are held. The same lines as
    ``stream.readline(max_line_bytes + 1)`` would give, but split in C a chunk at a time.
    """
    return itertools.chain.from_iterable(_line_batches(stream, max_line_bytes + 1, _READ_CHUNK))


def _line_batches(stream: IO[bytes], limit: int, size: int) -> Iterator[list[bytes]]:
    """The lines of each chunk of up to ``size`` bytes read, the last one cut at ``limit``."""
    # read1 returns what one read of the source gives, so a pipe is checked as it comes.
    read = getattr(stream, "read1", stream.read)
    tail = b""
    while True:
        chunk = read(size)
        if not chunk:
            if tail:
                yield [tail]
            return
        data = tail + chunk if tail else chunk
        if b"\r" in data:  # splitlines would break at "\r" too: split at "\n" only
            lines = [line + b"\n" for line in data.split(b"\n")]
            tail = lines.pop()[:-1]  # what follows the last "\n"
        else:
            lines = data.splitlines(keepends=True)
            tail = b"" if data.endswith(b"\n") else lines.pop()
        if len(data) > limit and lines and max(map(len, lines)) > limit:
            for index, line in enumerate(lines):
                if len(line) > limit:
                    yield [*lines[:index], line[:limit]]  # too long: the checker stops here
                    return
        if len(tail) >= limit:
            yield [*lines, tail[:limit]]
            return
        yield lines


def check_stream(stream: IO[bytes], checker: TraceChecker | None = None) -> CheckResult:
    """Check an open binary stream of NDJSON lines."""
    checker = checker or TraceChecker()
    checker.feed_lines(read_lines(stream, checker.max_line_bytes))
    return checker.finish()
