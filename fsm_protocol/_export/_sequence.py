"""Sequence diagrams from traces: who sent what to whom, in order.

A trace is the NDJSON of a task's messages (spec section 1): one message a
line, both directions, in the order observed. The diagram has one participant
for the modeller and one for each worker, in the order they first appear.

Long traces fold. For each worker, the messages from ``CURRENT_BATCH_ID(k)``
up to the next batch id are batch ``k``; a run of consecutive batches with
the same messages keeps its first batches and its last one, and the batches
in between become one note, e.g. ``batches 3–97: CURRENT_BATCH_ID,
EVALUATION_RESULTS``. Any other long run of one message type on one link (the
resilience phase's results) folds the same way. A batch that differs (a failed
batch sends no results) breaks the run, so what is unusual stays visible.

Everything here is a pure function of the messages, except :func:`read_trace`,
which decodes text.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from .._base._errors import DecodeError
from .._wire._messages import MODELLER, Message, MessageType, decode
from ._diagram import mermaid_text

KEEP_FIRST = 2
"""How many batches (or messages) of a repeated run stay drawn before the fold."""

# Messages that end a worker's batch: anything after them is not in a batch.
_BATCH_ENDERS = frozenset(
    {
        MessageType.BATCHES_COMPLETE,
        MessageType.TASK_ABORT,
        MessageType.TASK_CANCEL,
        MessageType.TASK_COMPLETE,
    }
)


def read_trace(text: str, *, file: str = "<memory>") -> list[Message]:
    """Decode a trace: one wire message per line; blank lines are skipped.

    Args:
        text: The NDJSON text.
        file: The name to show in errors.

    Returns:
        The messages, in file order; the conformance kit's control line
        (``CONFORMANCE_SCENARIO``) is kept, and the diagrams skip it.

    Raises:
        DecodeError: A line is not a valid message; the message starts with
            ``file:line:`` and ``field`` names the offending field.
    """
    messages: list[Message] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            messages.append(decode(line))
        except DecodeError as exc:
            raise DecodeError(f"{file}:{number}: {exc}", field=exc.field, line=exc.line) from exc
    return messages


# ------------------------------------------------------------------ plan


@attrs.frozen
class Arrow:
    """One message drawn: ``line`` is its 1-based position among the trace's messages."""

    line: int
    sender: str
    recipient: str
    label: str


@attrs.frozen
class Note:
    """A fold: what was left out between the modeller and each of ``workers``."""

    workers: tuple[str, ...]
    text: str


@attrs.frozen
class SequencePlan:
    """What a sequence diagram shows, whatever the notation."""

    modeller: str
    workers: tuple[str, ...]
    rows: tuple[Arrow | Note, ...]
    total: int


def _body_summary(message: Message) -> str:
    body: Any = message.body
    kind = message.type
    if kind is MessageType.JOB_REQUEST and isinstance(body, dict):
        protocol = body.get("protocol")
        name = protocol.get("class_name", "") if isinstance(protocol, dict) else ""
        mode = "batched" if body.get("batched_execution") else "non-batched"
        return f"{name}, {mode}".strip(", ")
    if kind is MessageType.JOB_REJECT and isinstance(body, dict):
        return ", ".join(str(k) for k in body)
    if kind in (MessageType.NUMBER_OF_BATCHES, MessageType.CURRENT_BATCH_ID):
        return str(body)
    if kind is MessageType.BATCHES_COMPLETE:
        return str(body)
    if kind is MessageType.TASK_ABORT and isinstance(body, dict):
        return str(body.get("reason", ""))
    if kind is MessageType.EVALUATION_RESULTS:
        parts = []
        if message.meta.batch_number is not None:
            parts.append(f"batch {message.meta.batch_number}")
        if message.meta.algorithm_index:
            parts.append(f"algorithm {message.meta.algorithm_index}")
        return ", ".join(parts)
    if kind is MessageType.LOG_MESSAGE and isinstance(body, dict):
        return str(body.get("level", ""))
    return ""


def message_label(message: Message) -> str:
    """The type and a short summary of the body, e.g. ``CURRENT_BATCH_ID 3``."""
    summary = _body_summary(message)
    return f"{message.type.value} {summary}" if summary else message.type.value


def _modeller_of(messages: Sequence[Message]) -> str:
    for m in messages:
        if m.type is MessageType.JOB_REQUEST:
            return m.sender
    for m in messages:
        if m.type in (MessageType.JOB_ACCEPT, MessageType.JOB_REJECT):
            return m.recipient
    return MODELLER


def _signature_text(signature: Sequence[tuple[bool, MessageType]]) -> str:
    parts: list[str] = []
    i = 0
    while i < len(signature):
        j = i
        while j < len(signature) and signature[j] == signature[i]:
            j += 1
        from_modeller, kind = signature[i]
        text = ("modeller: " if from_modeller else "") + kind.value
        parts.append(text if j - i == 1 else f"{text} ×{j - i}")
        i = j
    return ", ".join(parts)


@attrs.define
class _Segment:
    """Consecutive messages of one link that fold together (a batch, or a run)."""

    key: Any  # batch id, or None for a run of one type
    indices: list[int]
    signature: tuple[tuple[bool, MessageType], ...] = ()


def _segments(link: list[int], messages: Sequence[Message], modeller: str) -> list[_Segment]:
    """Split one link's messages into batches and single messages."""
    out: list[_Segment] = []
    batch: _Segment | None = None
    for i in link:
        m = messages[i]
        if m.type is MessageType.CURRENT_BATCH_ID and m.sender != modeller:
            batch = _Segment(m.body, [i])
            out.append(batch)
        elif batch is not None and m.type not in _BATCH_ENDERS:
            batch.indices.append(i)
        else:
            batch = None
            out.append(_Segment(None, [i]))
    for segment in out:
        segment.signature = tuple(
            (messages[i].sender == modeller, messages[i].type) for i in segment.indices
        )
    return out


def _folds(segments: list[_Segment], keep: int) -> Iterable[tuple[list[_Segment], str]]:
    """Runs long enough to fold: the segments to hide and the note's text."""
    i = 0
    while i < len(segments):
        j = i + 1
        first = segments[i]
        while (
            j < len(segments)
            and segments[j].signature == first.signature
            and (
                first.key is None
                or (
                    isinstance(segments[j].key, int)
                    and isinstance(segments[j - 1].key, int)
                    and segments[j].key == segments[j - 1].key + 1
                )
            )
        ):
            j += 1
        hidden = segments[i + keep : j - 1]
        if len(hidden) >= 2:
            if first.key is None:
                kind = _signature_text(first.signature)
                yield hidden, f"{len(hidden)} more: {kind}"
            else:
                ids = f"{hidden[0].key}–{hidden[-1].key}"
                yield hidden, f"batches {ids}: {_signature_text(first.signature)}"
        i = j


def plan_sequence(
    messages: Sequence[Message], *, fold: bool = True, keep: int = KEEP_FIRST
) -> SequencePlan:
    """Decide the participants and rows of a trace's sequence diagram.

    Args:
        messages: The trace, e.g. from :func:`read_trace` or ``TaskOutcome.trace``.
        fold: Fold runs of repeated batches and messages into notes.
        keep: How many of a run's batches stay drawn before the fold (the
            run's last batch is always drawn).

    Returns:
        The plan that :func:`to_mermaid_sequence` and :func:`to_sequence_svg` draw.
    """
    wire = [m for m in messages if m.type is not MessageType.CONFORMANCE_SCENARIO]
    modeller = _modeller_of(wire)
    workers: dict[str, list[int]] = {}
    for i, m in enumerate(wire):
        other = m.recipient if m.sender == modeller else m.sender
        workers.setdefault(other, []).append(i)
        if modeller not in (m.sender, m.recipient):
            workers.setdefault(m.recipient, [])  # a stray recipient still gets its lifeline
    hidden: set[int] = set()
    notes: dict[int, Note] = {}
    if fold:
        for worker, link in workers.items():
            for segments, text in _folds(_segments(link, wire, modeller), keep):
                indices = [i for s in segments for i in s.indices]
                hidden.update(indices)
                notes[min(indices)] = Note((worker,), text)
    rows: list[Arrow | Note] = []
    for i, m in enumerate(wire):
        if i in notes:
            note = notes[i]
            last = rows[-1] if rows else None
            if isinstance(last, Note) and last.text == note.text:
                # Workers in step fold alike: one note for all of them.
                merged = sorted(last.workers + note.workers, key=list(workers).index)
                rows[-1] = Note(tuple(merged), note.text)
            else:
                rows.append(note)
        if i not in hidden:
            rows.append(Arrow(i + 1, m.sender, m.recipient, message_label(m)))
    return SequencePlan(modeller, tuple(workers), tuple(rows), len(wire))


def _note_text(note: Note, plan: SequencePlan) -> str:
    if len(plan.workers) == 1:
        return note.text
    return f"{', '.join(note.workers)}: {note.text}"


# ---------------------------------------------------------------- Mermaid


def to_mermaid_sequence(
    messages: Sequence[Message], *, fold: bool = True, keep: int = KEEP_FIRST
) -> str:
    """A trace as a Mermaid ``sequenceDiagram``.

    Args:
        messages: The trace.
        fold: Fold long runs into notes (see the module docs).
        keep: Batches of a run drawn before its fold.

    Returns:
        Mermaid text.
    """
    plan = plan_sequence(messages, fold=fold, keep=keep)
    alias = {plan.modeller: "M"}
    out = ["sequenceDiagram", f"    participant M as {mermaid_text(plan.modeller)}"]
    for n, worker in enumerate(plan.workers, start=1):
        alias[worker] = f"W{n}"
        out.append(f"    participant W{n} as {mermaid_text(worker)}")
    for row in plan.rows:
        if isinstance(row, Note):
            farthest = max(row.workers, key=plan.workers.index)
            text = _note_text(row, plan)
            out.append(f"    Note over M,{alias[farthest]}: {mermaid_text(text)}")
        else:
            out.append(
                f"    {alias[row.sender]}->>{alias[row.recipient]}: {mermaid_text(row.label)}"
            )
    return "\n".join(out) + "\n"


# -------------------------------------------------------------------- SVG

_FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"
_FONT_SIZE = 12
_CHAR = _FONT_SIZE * 0.6  # monospace advance, so widths can be computed here
_ROW = 24
_GUTTER = 44  # trace line numbers
_BOX_H = 30
_PAD = 16
_COLOURS = ("#1f5fa8", "#b2441a", "#2d7d3a", "#7a3fa0", "#a07a10", "#12807f", "#a0305a")
_MAX_LABEL = 56


def _clip(text: str, limit: int = _MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _width(text: str) -> float:
    return len(text) * _CHAR


def to_sequence_svg(
    messages: Sequence[Message], *, fold: bool = True, keep: int = KEEP_FIRST
) -> str:
    """A trace as a standalone SVG sequence diagram; needs no other program.

    Each worker's arrows have their own colour, so interleaved workers stay
    apart; the left margin shows each message's line in the trace.

    Args:
        messages: The trace.
        fold: Fold long runs into notes (see the module docs).
        keep: Batches of a run drawn before its fold.

    Returns:
        SVG text.
    """
    plan = plan_sequence(messages, fold=fold, keep=keep)
    names = [plan.modeller, *plan.workers]
    labels = [_clip(r.label) for r in plan.rows if isinstance(r, Arrow)]
    widest_label = max((_width(t) for t in labels), default=0.0)
    widest_name = max((_width(n) for n in names), default=0.0) + 2 * _PAD
    gap = max(widest_label + 3 * _PAD, widest_name + _PAD, 160.0)
    x = {name: _GUTTER + _PAD + widest_name / 2 + i * gap for i, name in enumerate(names)}
    colour = {w: _COLOURS[i % len(_COLOURS)] for i, w in enumerate(plan.workers)}
    colour[plan.modeller] = "#333333"

    body: list[str] = []
    y = _PAD + _BOX_H + _ROW
    for row in plan.rows:
        if isinstance(row, Note):
            lines = [row.text]
            if len(plan.workers) > 1:
                lines.insert(0, ", ".join(row.workers) + ":")
            farthest = max(row.workers, key=plan.workers.index)
            left = x[plan.modeller] - widest_name / 2
            right = x[farthest] + widest_name / 2
            width = max(right - left, max(_width(t) for t in lines) + _PAD)
            height = 6 + (_ROW - 6) * len(lines)
            body.append(
                f'<rect x="{left:.1f}" y="{y - _ROW + 8:.1f}" width="{width:.1f}" '
                f'height="{height:.1f}" rx="3" fill="#fff8d6" stroke="#c9b458"/>'
            )
            for n, text in enumerate(lines):
                body.append(
                    f'<text x="{left + _PAD / 2:.1f}" y="{y + 2 + n * (_ROW - 6):.1f}" '
                    f'fill="#4d4000">{html.escape(text)}</text>'
                )
            y += height + 4
            continue
        worker = row.recipient if row.sender == plan.modeller else row.sender
        stroke = colour.get(worker, "#333333")
        x1, x2 = x.get(row.sender, 0.0), x.get(row.recipient, 0.0)
        direction = 1 if x2 >= x1 else -1
        tip = x2 - direction * 1.5
        body.append(
            f'<text x="{_GUTTER - 6}" y="{y - 3}" text-anchor="end" fill="#999999" '
            f'font-size="10">{row.line}</text>'
        )
        body.append(
            f'<line x1="{x1:.1f}" y1="{y}" x2="{tip - direction * 8:.1f}" y2="{y}" '
            f'stroke="{stroke}" stroke-width="1.4"/>'
        )
        body.append(
            f'<polygon points="{tip:.1f},{y} {tip - direction * 9:.1f},{y - 4} '
            f'{tip - direction * 9:.1f},{y + 4}" fill="{stroke}"/>'
        )
        label_x = x1 + direction * (_PAD / 2)
        anchor = "start" if direction > 0 else "end"
        body.append(
            f'<text x="{label_x:.1f}" y="{y - 5}" text-anchor="{anchor}" fill="{stroke}">'
            f"{html.escape(_clip(row.label))}</text>"
        )
        y += _ROW
    bottom = y
    width = x[names[-1]] + widest_name / 2 + _PAD
    height = bottom + _BOX_H + _PAD

    head: list[str] = []
    for name in names:
        cx = x[name]
        stroke = colour.get(name, "#333333")
        head.append(
            f'<line x1="{cx:.1f}" y1="{_PAD + _BOX_H}" x2="{cx:.1f}" y2="{bottom}" '
            'stroke="#bbbbbb" stroke-dasharray="4 4"/>'
        )
        for top in (_PAD, bottom):
            head.append(
                f'<rect x="{cx - widest_name / 2:.1f}" y="{top}" width="{widest_name:.1f}" '
                f'height="{_BOX_H}" rx="4" fill="#f4f4ef" stroke="{stroke}" stroke-width="1.4"/>'
            )
            head.append(
                f'<text x="{cx:.1f}" y="{top + _BOX_H / 2 + 4}" text-anchor="middle" '
                f'font-weight="bold" fill="{stroke}">{html.escape(name)}</text>'
            )
    shown = sum(1 for r in plan.rows if isinstance(r, Arrow))
    title = f"{plan.total} messages" + (f", {shown} drawn" if shown != plan.total else "")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="{_FONT}" '
        f'font-size="{_FONT_SIZE}">\n'
        f"<title>{html.escape(title)}</title>\n"
        f'<rect width="100%" height="100%" fill="white"/>\n'
        + "\n".join(head)
        + "\n"
        + "\n".join(body)
        + "\n</svg>\n"
    )
