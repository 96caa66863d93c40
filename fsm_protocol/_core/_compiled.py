"""A chart compiled once into a lookup table, as ``re.compile`` does for a pattern.

The rich :class:`Chart` model stays for validation, diagrams and error messages.
Stepping reads only this table: for each (leaf state, event) the candidate
transitions in the order the semantics tries them (innermost source first, then
file order), each with its parsed guards, the whole ordered action sequence
(exit, transition, entry), the states exited and entered, and the target leaf.
The runtime, the trace checker, the conformance kit and ``machine_from_chart``
all step this one table, so there is one reading of a chart, not several.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import Any, final

import attrs

from ._bindings import ACTION_PREFIX, GUARD_PREFIX
from ._chart import Chart, Transition, parse_guard


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
class Arc:
    """One transition as taken from one leaf: everything a step needs, precomputed.

    ``target`` is the leaf the machine is in afterwards (the source leaf itself
    for an internal transition). ``actions`` is the full run: exit actions
    innermost first, the transition's actions, entry actions outermost first.
    """

    transition: Transition
    source: str
    target: str
    guards: tuple[tuple[str, bool], ...]
    actions: tuple[str, ...]
    exited: tuple[str, ...]
    entered: tuple[str, ...]
    step: Step


@final
@attrs.frozen
class CompiledChart:
    """The immutable step table of one chart. Build it with :func:`compile_chart`."""

    chart: Chart
    initial: str
    table: Mapping[str, Mapping[str, tuple[Arc, ...]]]
    expected: Mapping[str, tuple[str, ...]]
    finals: frozenset[str]
    guard_names: frozenset[str]
    action_names: frozenset[str]
    _bound: weakref.WeakKeyDictionary[type, BoundTable] = attrs.field(
        init=False, eq=False, repr=False, factory=weakref.WeakKeyDictionary
    )

    def leaves(self) -> tuple[str, ...]:
        return tuple(self.table)

    def arcs(self, leaf: str, event: str) -> tuple[Arc, ...]:
        """The candidates for ``event`` in ``leaf``, in the order they are tried."""
        return self.table[leaf].get(event, ())

    def bind(self, owner: type) -> BoundTable:
        """The table with ``owner``'s guard and action functions resolved, cached per class.

        Raises:
            LookupError: naming each ``guard_``/``action_`` method ``owner`` lacks.
        """
        bound = self._bound.get(owner)
        if bound is None:
            bound = _bind(self, owner)
            self._bound[owner] = bound
        return bound


GuardFn = Callable[[Any, Any], Any]
ActionFn = Callable[[Any, Any], Any]


@attrs.frozen
class BoundArc:
    """An :class:`Arc` with unbound functions of one bindings class: call as ``fn(self, event)``."""

    arc: Arc
    guards: tuple[tuple[GuardFn, bool], ...]
    actions: tuple[ActionFn, ...]
    step: Step


@final
@attrs.frozen
class BoundTable:
    """leaf → event → bound arcs, for one bindings class."""

    compiled: CompiledChart
    owner: type
    rows: Mapping[str, Mapping[str, tuple[BoundArc, ...]]]


def missing_bindings(compiled: CompiledChart, owner: type) -> list[str]:
    """The ``guard_``/``action_`` method names ``owner`` lacks for ``compiled``, sorted."""
    return sorted(
        [
            GUARD_PREFIX + g
            for g in compiled.guard_names
            if not callable(getattr(owner, GUARD_PREFIX + g, None))
        ]
        + [
            ACTION_PREFIX + a
            for a in compiled.action_names
            if not callable(getattr(owner, ACTION_PREFIX + a, None))
        ]
    )


def _bind(compiled: CompiledChart, owner: type) -> BoundTable:
    missing = missing_bindings(compiled, owner)
    if missing:
        raise LookupError(", ".join(missing))
    guard = {g: _unbound(owner, GUARD_PREFIX + g) for g in compiled.guard_names}
    action = {a: _unbound(owner, ACTION_PREFIX + a) for a in compiled.action_names}
    rows = {
        leaf: {
            event: tuple(
                BoundArc(
                    arc,
                    tuple((guard[name], want) for name, want in arc.guards),
                    tuple(action[a] for a in arc.actions),
                    arc.step,
                )
                for arc in arcs
            )
            for event, arcs in row.items()
        }
        for leaf, row in compiled.table.items()
    }
    return BoundTable(compiled, owner, rows)


def _unbound(owner: type, name: str) -> Callable[[Any, Any], Any]:
    """``owner``'s method as a function of (bindings, event), static and class methods too."""
    raw = inspect.getattr_static(owner, name)
    fn: Callable[..., Any] = getattr(owner, name)
    if isinstance(raw, (staticmethod, classmethod)):
        return lambda _self, event: fn(event)
    return fn


def _domain(chart: Chart, source: str, target: str) -> str | None:
    """The state a transition stays inside: nothing at or above it is exited.

    Follows docs/charts.md: a target that is the source or encloses it is
    itself exited (domain: its parent); a target inside the source leaves the
    source active (domain: the source); otherwise the innermost state that
    encloses both.
    """
    source_line = list(chart.ancestors(source))
    target_line = list(chart.ancestors(target))
    if target in source_line:
        return chart.state(target).parent
    if source in target_line:
        return source
    return next((s for s in source_line if s in target_line), None)


def _below(line: list[str], domain: str | None) -> list[str]:
    return line[: line.index(domain)] if domain in line else line


def _arc(chart: Chart, leaf: str, t: Transition) -> Arc:
    guards = tuple(parse_guard(g) for g in t.guards)
    if t.target is None:
        return Arc(t, leaf, leaf, guards, t.actions, (), (), Step(leaf, t.event, leaf, t.actions))
    target_leaf = chart.settle(t.target)
    domain = _domain(chart, t.source, t.target)
    exited = _below(list(chart.ancestors(leaf)), domain)
    entered = list(reversed(_below(list(chart.ancestors(target_leaf)), domain)))
    actions = (
        *(a for s in exited for a in chart.state(s).on_exit),
        *t.actions,
        *(a for s in entered for a in chart.state(s).on_entry),
    )
    step = Step(leaf, t.event, target_leaf, actions, tuple(exited), tuple(entered))
    return Arc(t, leaf, target_leaf, guards, actions, tuple(exited), tuple(entered), step)


def compile_chart(chart: Chart) -> CompiledChart:
    """Compile ``chart`` once into its step table; cached on the chart object."""
    cached = _compiled.get(id(chart))
    if cached is not None and cached.chart is chart:
        return cached
    table: dict[str, dict[str, tuple[Arc, ...]]] = {}
    expected: dict[str, tuple[str, ...]] = {}
    finals: set[str] = set()
    for state in chart.states:
        if state.children:
            continue
        row: dict[str, list[Arc]] = {}
        if state.final:
            finals.add(state.name)
        else:
            for t in chart.transitions_from(state.name):
                row.setdefault(t.event, []).append(_arc(chart, state.name, t))
        table[state.name] = {event: tuple(arcs) for event, arcs in row.items()}
        expected[state.name] = tuple(row)
    compiled = CompiledChart(
        chart=chart,
        initial=chart.settle(chart.initial),
        table=table,
        expected=expected,
        finals=frozenset(finals),
        guard_names=frozenset(parse_guard(g)[0] for t in chart.transitions for g in t.guards),
        action_names=frozenset(
            [a for t in chart.transitions for a in t.actions]
            + [a for s in chart.states for a in (*s.on_entry, *s.on_exit)]
        ),
    )
    _compiled[id(chart)] = compiled
    weakref.finalize(chart, _compiled.pop, id(chart), None)
    return compiled


# Charts are frozen attrs values with dict fields, so not hashable: key by id,
# and drop the entry when the chart is collected.
_compiled: dict[int, CompiledChart] = {}
