"""The engine: a chart plus Python bindings, stepped one event at a time.

The engine is synchronous and pure apart from the bindings it calls. The trio
runtime awaits I/O *between* steps, so a step always runs to completion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, final

import attrs
import cattrs

from .._base._errors import ConfigError, InternalError, ProtocolViolation
from ._bindings import ACTION_PREFIX, GUARD_PREFIX
from ._chart import Chart
from ._compiled import (
    BoundArc,
    CompiledChart,
    Event,
    Step,
    compile_chart,
)

if TYPE_CHECKING:
    from ._transitions_adapter import Adapter

__all__ = ["Event", "Machine", "Snapshot", "Step", "check_internal"]


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


_Backend = Literal["compiled", "transitions"]


@final
class Machine:
    """A running instance of a chart.

    Create one with :meth:`from_chart`. ``bindings`` is any object whose
    ``guard_<name>(event)`` and ``action_<name>(event)`` methods implement the
    names the chart uses; the machine never sets attributes on it. A machine is
    a few slots: the chart's compiled table (shared by every machine of that
    chart and bindings class), the current leaf and the bindings.
    """

    __slots__ = ("_bindings", "_current", "_leaf", "_reference", "_table")

    def __init__(self, chart: Chart, bindings: object, *, backend: _Backend = "compiled") -> None:
        compiled = compile_chart(chart)
        try:
            self._table = compiled.bind(type(bindings))
        except LookupError as exc:
            raise ConfigError(
                f"{type(bindings).__name__} cannot run chart {chart.name!r}: it lacks {exc.args[0]}"
            ) from None
        self._leaf = compiled.initial
        self._bindings = bindings
        self._reference: Adapter | None = None
        if backend == "transitions":
            # Imported here: the compiled engine never loads transitions.
            from ._transitions_adapter import Adapter

            self._current = Event("")
            self._reference = Adapter(chart, self._reference_guard)
        elif backend != "compiled":
            raise ConfigError(f"unknown backend {backend!r}; expected 'compiled' or 'transitions'")

    @classmethod
    def from_chart(
        cls, chart: Chart, bindings: object, *, backend: _Backend = "compiled"
    ) -> Machine:
        """Build a machine in the chart's initial state.

        ``backend="transitions"`` steps the chart on the transitions library
        instead of the compiled table: the slow reference that the compiled
        engine is tested against. Both give the same steps.

        Raises:
            ConfigError: ``bindings`` lacks a guard or action the chart names.
        """
        return cls(chart, bindings, backend=backend)

    # ------------------------------------------------------------ inspection

    @property
    def chart(self) -> Chart:
        return self._table.compiled.chart

    @property
    def compiled(self) -> CompiledChart:
        return self._table.compiled

    @property
    def backend(self) -> _Backend:
        return "compiled" if self._reference is None else "transitions"

    @property
    def state(self) -> str:
        """The active leaf state."""
        return self._leaf

    @property
    def active(self) -> tuple[str, ...]:
        """The active leaf and its enclosing states, innermost first."""
        return tuple(self.chart.ancestors(self._leaf))

    @property
    def is_final(self) -> bool:
        return self._leaf in self._table.compiled.finals

    def expected(self) -> tuple[str, ...]:
        """Events the current state has a transition for, guards not yet checked."""
        return self._table.compiled.expected[self._leaf]

    def accepts(self, event: str, data: Any = None) -> bool:
        """Would :meth:`fire` take this event now? Runs guards, changes nothing."""
        return self._choose(event, Event(event, data)) is not None

    def _choose(self, name: str, event: Event) -> BoundArc | None:
        bindings = self._bindings
        for arc in self._table.rows[self._leaf].get(name, ()):
            for guard, want in arc.guards:
                if (not guard(bindings, event)) is want:
                    break
            else:
                return arc
        return None

    # --------------------------------------------------------------- stepping

    def fire(self, event: str, data: Any = None) -> Step:
        """Process one event to completion.

        Raises:
            ProtocolViolation: The current state has no transition for
                ``event``, or none whose guards hold. Never silently ignored.
        """
        if self._reference is not None:
            return self._fire_reference(event, data)
        arcs = self._table.rows[self._leaf].get(event)
        if arcs is None:
            raise self._refusal(event)
        current = Event(event, data)
        bindings = self._bindings
        for arc in arcs:
            for guard, want in arc.guards:
                if (not guard(bindings, current)) is want:
                    break
            else:
                step = arc.step
                self._leaf = step.target
                for action in arc.actions:
                    action(bindings, current)
                return step
        raise self._refusal(event)

    def _refusal(self, event: str) -> ProtocolViolation:
        """The violation for an event the current state does not take."""
        chart = self.chart
        source = self._leaf
        if self.is_final:
            return ProtocolViolation(
                f"{chart.name}: got {event!r} after the end (final state {source!r}); "
                "nothing may follow the end",
                state=source,
                event=event,
            )
        arcs = self._table.compiled.arcs(source, event)
        expected = self.expected()
        if not arcs:
            return ProtocolViolation(
                f"{chart.name}: in state {source!r}, event {event!r} is not allowed; "
                f"expected one of: {', '.join(expected) or 'nothing'}",
                state=source,
                event=event,
                expected=expected,
            )
        conditions = "; or ".join(" and ".join(a.transition.guards) for a in arcs)
        return ProtocolViolation(
            f"{chart.name}: in state {source!r}, event {event!r} is allowed only "
            f"when {conditions}, and none held",
            state=source,
            event=event,
            expected=expected,
        )

    # ------------------------------------------------------ reference backend

    def _reference_guard(self, name: str, data: Any) -> bool:
        fn = getattr(self._table.owner, GUARD_PREFIX + name)
        return bool(fn(self._bindings, self._current))

    def _fire_reference(self, event: str, data: Any) -> Step:
        """Step on transitions' HierarchicalMachine: states and guards from it, not the table."""
        assert self._reference is not None
        if self.is_final or event not in self.expected():
            raise self._refusal(event)
        self._current = Event(event, data)
        fired = self._reference.trigger(event, data)
        if fired is None:
            raise self._refusal(event)
        chart = self.chart
        source = self._leaf
        self._leaf = self._reference.leaf
        transition = fired.transition
        run = (
            *(a for s in fired.exited for a in chart.state(s).on_exit),
            *transition.actions,
            *(a for s in fired.entered for a in chart.state(s).on_entry),
        )
        for name in run:
            getattr(self._table.owner, ACTION_PREFIX + name)(self._bindings, self._current)
        return Step(
            source=source,
            event=event,
            target=self._leaf,
            actions=run,
            exited=tuple(fired.exited),
            entered=tuple(fired.entered),
        )

    # ----------------------------------------------------------- persistence

    def snapshot(self) -> Snapshot:
        chart = self.chart
        return Snapshot(chart=chart.name, state=self._leaf, version=chart.version)

    @classmethod
    def restore(
        cls,
        chart: Chart,
        bindings: object,
        snapshot: Snapshot,
        *,
        backend: _Backend = "compiled",
    ) -> Machine:
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
        machine = cls.from_chart(chart, bindings, backend=backend)
        machine._jump(snapshot.state)
        return machine

    def _jump(self, leaf: str) -> None:
        """Put the machine in ``leaf`` without a step (restore, and test walks)."""
        self._leaf = leaf
        if self._reference is not None:
            self._reference.set_leaf(leaf)

    def __repr__(self) -> str:
        return f"<Machine {self.chart.name} in {self._leaf!r}>"


def check_internal(condition: bool, message: str) -> None:
    """Raise InternalError when an invariant we rely on does not hold."""
    if not condition:
        raise InternalError(message)
