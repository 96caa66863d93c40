"""The chart model: frozen values that describe one state machine.

A chart is data, not code. The engine, the diagram exporters, the validator
and the conformance kit all read this model; none of them reads YAML.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping

import attrs

from .._wire import _catalogue
from .._wire._messages import MessageType


@attrs.frozen
class Location:
    """Where something was written, for error messages. Never part of equality."""

    file: str = "<memory>"
    line: int = 0
    column: int = 0


NOWHERE = Location()


class Role(str, enum.Enum):
    """Which side of the protocol a chart describes.

    The role decides which message types a chart may receive and which Python
    bindings (guards, actions, activities) its names must resolve to.
    """

    WORKER = _catalogue.WORKER
    MODELLER = _catalogue.MODELLER


_SENT_BY = {role: _catalogue.sent_by(role.value) for role in Role}


# Not part of a task's conversation: it is the kit's control line.
WIRE_TYPES = frozenset(t for t in MessageType if t is not MessageType.CONFORMANCE_SCENARIO)


def sent_by(role: Role) -> frozenset[MessageType]:
    """Message types that ``role`` may send, from the message catalogue."""
    return _SENT_BY[role]


# A guard written ``!name`` in a chart holds when ``guard_name`` returns false.
NEGATION = "!"


def parse_guard(text: str) -> tuple[str, bool]:
    """``"!x"`` → ``("x", False)``, ``"x"`` → ``("x", True)``: the one reader of guard syntax."""
    return (text[1:], False) if text.startswith(NEGATION) else (text, True)


def message_event(direction: str, type_: MessageType | str) -> str:
    """The event name for a message, e.g. ``recv:TASK_START``."""
    return f"{direction}:{MessageType(type_).value}"


def parse_message_event(event: str) -> tuple[str, MessageType] | None:
    """Split ``send:X``/``recv:X`` into its parts, or None for an internal event."""
    direction, sep, name = event.partition(":")
    if not sep or direction not in ("send", "recv"):
        return None
    try:
        return direction, MessageType(name)
    except ValueError:
        return None


@attrs.frozen
class Timer:
    """``after: seconds`` raises ``event`` while the owning state stays active.

    ``seconds`` is a number, or the name of a chart option so that a run can
    shorten it (the conformance kit uses short timeouts).
    """

    seconds: float | str
    event: str
    loc: Location = attrs.field(default=NOWHERE, eq=False, repr=False)


@attrs.frozen
class Transition:
    """One arc. ``target`` None means an internal transition: no exit, no entry."""

    source: str
    event: str
    target: str | None = None
    guards: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    description: str = ""
    loc: Location = attrs.field(default=NOWHERE, eq=False, repr=False)


@attrs.frozen
class State:
    """A state. Names are unique across the whole chart, nested or not."""

    name: str
    parent: str | None = None
    children: tuple[str, ...] = ()
    initial: str | None = None
    final: bool = False
    do: str | None = None
    on_entry: tuple[str, ...] = ()
    on_exit: tuple[str, ...] = ()
    after: tuple[Timer, ...] = ()
    description: str = ""
    loc: Location = attrs.field(default=NOWHERE, eq=False, repr=False)

    @property
    def compound(self) -> bool:
        return bool(self.children)


DISPLAY_RENDERERS: list[Callable[[Chart], dict[str, str]]] = []
"""How a chart shows itself in Jupyter, by MIME type; the export layer adds its diagrams."""


@attrs.frozen
class Chart:
    """A validated chart. Build it with :func:`load_chart`, not by hand."""

    name: str
    role: Role | None
    initial: str
    states: tuple[State, ...]
    transitions: tuple[Transition, ...]
    events: Mapping[str, str] = attrs.field(factory=dict)
    options: Mapping[str, float] = attrs.field(factory=dict)
    version: int = 1
    description: str = ""
    source: str = attrs.field(default="<memory>", eq=False)
    _index: dict[str, State] = attrs.field(init=False, eq=False, repr=False)
    _by_source: dict[str, tuple[Transition, ...]] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_index", {s.name: s for s in self.states})
        by_source: dict[str, list[Transition]] = {}
        for t in self.transitions:
            by_source.setdefault(t.source, []).append(t)
        object.__setattr__(self, "_by_source", {k: tuple(v) for k, v in by_source.items()})

    def state(self, name: str) -> State:
        return self._index[name]

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict[str, str]:
        """Jupyter shows a chart as its diagram (renderers come from the export layer)."""
        bundle = {"text/plain": f"<Chart {self.name}: {len(self.states)} states>"}
        for render in DISPLAY_RENDERERS:
            bundle.update(render(self))
        return bundle

    def has_state(self, name: str) -> bool:
        return name in self._index

    def ancestors(self, name: str) -> Iterator[str]:
        """``name`` and then each enclosing state, innermost first."""
        current: str | None = name
        while current is not None:
            yield current
            current = self._index[current].parent

    def path(self, name: str) -> str:
        """Dotted path from the top, e.g. ``engaged.batches.running_batch``."""
        return ".".join(reversed(list(self.ancestors(name))))

    def settle(self, name: str) -> str:
        """The leaf entered when ``name`` is the target: follow initial children."""
        state = self._index[name]
        while state.initial is not None:
            state = self._index[state.initial]
        return state.name

    def transitions_from(self, leaf: str) -> Iterator[Transition]:
        """Transitions enabled in leaf ``leaf``, innermost source first, in file order."""
        for name in self.ancestors(leaf):
            yield from self._by_source.get(name, ())

    def message_events(self) -> frozenset[str]:
        return frozenset(t.event for t in self.transitions if parse_message_event(t.event))
