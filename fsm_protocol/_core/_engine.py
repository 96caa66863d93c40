"""The engine: a chart plus Python bindings, stepped one event at a time.

The engine is synchronous and pure apart from the bindings it calls. The trio
runtime awaits I/O *between* steps, so a step always runs to completion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, final

import attrs
import cattrs

from .._base._errors import ConfigError, InternalError, ProtocolViolation
from ._bindings import ACTION_PREFIX, GUARD_PREFIX, BindingNames
from ._chart import Chart
from ._transitions_adapter import Adapter


@attrs.frozen
class Event:
    """An event with its payload (the decoded message, for message events)."""

    name: str
    data: Any = None


@attrs.frozen
class Step:
    """The record of one run-to-completion step.

    ``actions`` lists every action that ran, in order: exit actions, then the
    transition's actions, then entry actions.
    """

    source: str
    event: str
    target: str
    actions: tuple[str, ...] = ()
    exited: tuple[str, ...] = ()
    entered: tuple[str, ...] = ()

    @property
    def internal(self) -> bool:
        """True when no state was exited or entered."""
        return not self.exited and not self.entered


@attrs.frozen
class Snapshot:
    """Enough to resume a machine later: which chart, and which state it was in."""

    chart: str
    state: str
    version: int = 1


_snapshots = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)


def _exactly(kind: type) -> Callable[[Any, Any], Any]:
    # cattrs would otherwise coerce: str(None) == "None", int("1") == 1, int(True) == 1.
    def hook(value: Any, _: Any) -> Any:
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, found {type(value).__name__}")
        return value

    return hook


_snapshots.register_structure_hook(str, _exactly(str))
_snapshots.register_structure_hook(int, _exactly(int))


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    """Unstructure a snapshot for storage as JSON."""
    result: dict[str, Any] = _snapshots.unstructure(snapshot)
    return result


def snapshot_from_dict(data: Mapping[str, Any]) -> Snapshot:
    """Structure a stored snapshot; raises ConfigError if it is malformed."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"invalid snapshot {data!r}: expected a mapping with chart and state")
    try:
        return _snapshots.structure(dict(data), Snapshot)
    except cattrs.BaseValidationError as exc:
        details = "; ".join(cattrs.transform_error(exc))
        raise ConfigError(f"invalid snapshot {dict(data)!r}: {details}") from exc


def _negated(guard: str) -> tuple[str, bool]:
    return (guard[1:], False) if guard.startswith("!") else (guard, True)


@final
class Machine:
    """A running instance of a chart.

    Create one with :meth:`from_chart`. ``bindings`` is any object whose
    ``guard_<name>(event)`` and ``action_<name>(event)`` methods implement the
    names the chart uses; the machine never sets attributes on it.
    """

    def __init__(self, chart: Chart, bindings: object) -> None:
        needed_guards = {_negated(g)[0] for t in chart.transitions for g in t.guards}
        needed_actions = {a for t in chart.transitions for a in t.actions} | {
            a for s in chart.states for a in (*s.on_entry, *s.on_exit)
        }
        provided = BindingNames.from_class(type(bindings))
        missing = sorted(
            [f"{GUARD_PREFIX}{g}" for g in needed_guards - provided.guards]
            + [f"{ACTION_PREFIX}{a}" for a in needed_actions - provided.actions]
        )
        if missing:
            raise ConfigError(
                f"{type(bindings).__name__} cannot run chart {chart.name!r}: "
                f"it lacks {', '.join(missing)}"
            )
        self._chart = chart
        self._current = Event("")
        self._guards = {g: getattr(bindings, GUARD_PREFIX + g) for g in needed_guards}
        self._actions = {a: getattr(bindings, ACTION_PREFIX + a) for a in needed_actions}
        self._adapter = Adapter(chart, self._check_guard)

    @classmethod
    def from_chart(cls, chart: Chart, bindings: object) -> Machine:
        """Build a machine in the chart's initial state.

        Raises:
            ConfigError: ``bindings`` lacks a guard or action the chart names.
        """
        return cls(chart, bindings)

    def _check_guard(self, name: str, data: Any) -> bool:
        return bool(self._guards[name](self._current))

    # ------------------------------------------------------------ inspection

    @property
    def chart(self) -> Chart:
        return self._chart

    @property
    def state(self) -> str:
        """The active leaf state."""
        return self._adapter.leaf

    @property
    def active(self) -> tuple[str, ...]:
        """The active leaf and its enclosing states, innermost first."""
        return tuple(self._chart.ancestors(self.state))

    @property
    def is_final(self) -> bool:
        return self._chart.state(self.state).final

    def expected(self) -> tuple[str, ...]:
        """Events the current state has a transition for, guards not yet checked."""
        seen: dict[str, None] = {}
        for t in self._chart.transitions_from(self.state):
            seen.setdefault(t.event, None)
        return tuple(seen)

    def accepts(self, event: str, data: Any = None) -> bool:
        """Would :meth:`fire` take this event now? Runs guards, changes nothing."""
        self._current = Event(event, data)
        for t in self._chart.transitions_from(self.state):
            if t.event == event and all(
                self._check_guard(name, data) is want for name, want in map(_negated, t.guards)
            ):
                return True
        return False

    # --------------------------------------------------------------- stepping

    def fire(self, event: str, data: Any = None) -> Step:
        """Process one event to completion.

        Raises:
            ProtocolViolation: The current state has no transition for
                ``event``, or none whose guards hold. Never silently ignored.
        """
        source = self.state
        if self.is_final:
            raise ProtocolViolation(
                f"{self._chart.name}: got {event!r} after the end (final state {source!r}); "
                "nothing may follow the end",
                state=source,
                event=event,
            )
        candidates = [t for t in self._chart.transitions_from(source) if t.event == event]
        if not candidates:
            expected = self.expected()
            raise ProtocolViolation(
                f"{self._chart.name}: in state {source!r}, event {event!r} is not allowed; "
                f"expected one of: {', '.join(expected) or 'nothing'}",
                state=source,
                event=event,
                expected=expected,
            )
        self._current = Event(event, data)
        fired = self._adapter.trigger(event, data)
        if fired is None:
            conditions = "; or ".join(" and ".join(t.guards) for t in candidates)
            raise ProtocolViolation(
                f"{self._chart.name}: in state {source!r}, event {event!r} is allowed only "
                f"when {conditions}, and none held",
                state=source,
                event=event,
                expected=self.expected(),
            )
        transition = fired.transition
        ran: list[str] = []
        exit_actions = [a for s in fired.exited for a in self._chart.state(s).on_exit]
        entry_actions = [a for s in fired.entered for a in self._chart.state(s).on_entry]
        for name in (*exit_actions, *transition.actions, *entry_actions):
            self._actions[name](self._current)
            ran.append(name)
        return Step(
            source=source,
            event=event,
            target=self.state,
            actions=tuple(ran),
            exited=tuple(fired.exited),
            entered=tuple(fired.entered),
        )

    # ----------------------------------------------------------- persistence

    def snapshot(self) -> Snapshot:
        return Snapshot(chart=self._chart.name, state=self.state, version=self._chart.version)

    @classmethod
    def restore(cls, chart: Chart, bindings: object, snapshot: Snapshot) -> Machine:
        """Rebuild a machine in the state a :meth:`snapshot` recorded.

        Raises:
            ConfigError: The snapshot is of another chart or names an unknown state.
        """
        if snapshot.chart != chart.name or snapshot.version != chart.version:
            raise ConfigError(
                f"snapshot is of chart {snapshot.chart!r} v{snapshot.version}, "
                f"expected {chart.name!r} v{chart.version}"
            )
        if not chart.has_state(snapshot.state) or chart.state(snapshot.state).children:
            raise ConfigError(
                f"snapshot state {snapshot.state!r} is not a leaf state of chart {chart.name!r}"
            )
        machine = cls.from_chart(chart, bindings)
        machine._adapter.set_leaf(snapshot.state)
        return machine

    def __repr__(self) -> str:
        return f"<Machine {self._chart.name} in {self.state!r}>"


def check_internal(condition: bool, message: str) -> None:
    """Raise InternalError when an invariant we rely on does not hold."""
    if not condition:
        raise InternalError(message)
