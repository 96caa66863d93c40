"""Which states and transitions of the kit's chart a run exercised."""

from __future__ import annotations

from typing import final

import attrs

from .._core._chart import Chart, Transition
from .._core._compiled import compile_chart
from .._core._engine import Step


@final
@attrs.frozen
class Coverage:
    """Which states and transitions of the kit's chart the cases exercised.

    The kit plays the counterpart of the role under test, so this is the part
    of the protocol the implementation under test was made to go through.
    """

    chart: Chart
    states: frozenset[str]
    transitions: frozenset[int]

    @property
    def state_count(self) -> int:
        return len(self.chart.states)

    @property
    def transition_count(self) -> int:
        return len(self.chart.transitions)

    def state_percent(self) -> float:
        return 100.0 * len(self.states) / max(1, self.state_count)

    def transition_percent(self) -> float:
        return 100.0 * len(self.transitions) / max(1, self.transition_count)

    def missing_states(self) -> list[str]:
        return [s.name for s in self.chart.states if s.name not in self.states]

    def missing_transitions(self) -> list[str]:
        return [
            describe_transition(t)
            for i, t in enumerate(self.chart.transitions)
            if i not in self.transitions
        ]

    def summary(self) -> str:
        return (
            f"{self.chart.name} chart coverage: states {len(self.states)}/{self.state_count}"
            f" ({self.state_percent():.0f}%), transitions {len(self.transitions)}/"
            f"{self.transition_count} ({self.transition_percent():.0f}%)"
        )


def describe_transition(t: Transition) -> str:
    guards = f" [{', '.join(t.guards)}]" if t.guards else ""
    return f"{t.source} --{t.event}{guards}--> {t.target or '(internal)'}"


# --- Recording coverage ----------------------------------------------------------------------


class CoverageRecorder:
    """Maps the kit's Step records back to chart transitions."""

    def __init__(self, chart: Chart) -> None:
        self.chart = chart
        self.states: set[str] = set()
        self.transitions: set[int] = set()
        index = {id(t): i for i, t in enumerate(chart.transitions)}
        # Every step the engine can take is a precomputed record of the compiled
        # table, so a step names its transition (the first one, if two read alike).
        self._by_step: dict[Step, int] = {}
        for row in compile_chart(chart).table.values():
            for arcs in row.values():
                for arc in arcs:
                    self._by_step.setdefault(arc.step, index[id(arc.transition)])
        self.states.update(chart.ancestors(chart.settle(chart.initial)))

    def add(self, step: Step) -> None:
        index = self._by_step.get(step)
        if index is not None:
            self.transitions.add(index)
        self.states.update(self.chart.ancestors(step.target))

    def result(self) -> Coverage:
        return Coverage(self.chart, frozenset(self.states), frozenset(self.transitions))
