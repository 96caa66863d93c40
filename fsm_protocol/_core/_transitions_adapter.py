"""The one module that talks to the ``transitions`` library.

transitions decorates its model with ``setattr`` (``to_x``, ``is_x``, trigger
methods) and types itself only through stubs. Everything of that stays here,
on a private model object: the rest of the package sees plain chart names and
never imports transitions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from transitions.extensions.nesting import HierarchicalMachine, NestedState

from ._chart import Chart, Transition, parse_guard

# transitions joins nested names with "_" by default, which clashes with our
# snake_case state names; "/" cannot appear in a valid state name.
_SEPARATOR = "/"
# transitions binds each trigger, plus is_<state>, may_<trigger>, trigger, to
# and state, to the model, and fails (or silently skips one) when two collide.
# Chart events are free-form ("state", "is_idle", "trigger"), so the trigger
# names given to transitions get a prefix with ":", which no state name and no
# internal event name may contain.
_TRIGGER_PREFIX = "fsm:"


def _trigger_name(event: str) -> str:
    return _TRIGGER_PREFIX + event


class _State(NestedState):
    separator = _SEPARATOR


class _Machine(HierarchicalMachine):
    state_cls = _State


class _Model:
    """Receives transitions' attributes so that no user object ever does."""

    # Set by transitions on construction; declared for the type checker.
    state: str
    trigger: Callable[..., bool]


GuardFn = Callable[[str, Any], bool]


@attrs.define
class Fired:
    """What one trigger did, in chart terms."""

    transition: Transition
    exited: list[str] = attrs.field(factory=list)
    entered: list[str] = attrs.field(factory=list)


class Adapter:
    """Runs a chart's state changes on a transitions HierarchicalMachine.

    Guards are evaluated through ``guard(name, payload)``, with the payload given
    to :meth:`trigger` (the engine gives the Event); actions are *not* run
    here, the engine runs them in statechart order from the :class:`Fired`
    record.
    """

    def __init__(self, chart: Chart, guard: GuardFn) -> None:
        self._chart = chart
        self._guard = guard
        self._fired: Fired | None = None
        self._model = _Model()
        self._machine = _Machine(
            model=self._model,
            states=[self._state_config(s.name) for s in chart.states if s.parent is None],
            transitions=[self._transition_config(t) for t in chart.transitions],
            initial=self._nested(chart.initial),
            auto_transitions=False,
            ignore_invalid_triggers=False,
            send_event=True,
            model_attribute="state",
        )

    def _nested(self, name: str) -> str:
        return _SEPARATOR.join(reversed(list(self._chart.ancestors(name))))

    def _state_config(self, name: str) -> dict[str, Any]:
        state = self._chart.state(name)
        config: dict[str, Any] = {
            "name": name,
            "on_enter": [lambda _e, n=name: self._note("entered", n)],
            "on_exit": [lambda _e, n=name: self._note("exited", n)],
        }
        if state.children:
            config["children"] = [self._state_config(c) for c in state.children]
            config["initial"] = state.initial
        return config

    def _note(self, kind: str, name: str) -> None:
        if self._fired is not None:
            getattr(self._fired, kind).append(name)

    def _transition_config(self, t: Transition) -> dict[str, Any]:
        def check(guard: str) -> Callable[[Any], bool]:
            name, want = parse_guard(guard)
            return lambda event_data: self._guard(name, event_data.kwargs.get("data")) is want

        def begin(_event_data: Any) -> None:
            self._fired = Fired(t)

        return {
            "trigger": _trigger_name(t.event),
            "source": self._nested(t.source),
            "dest": None if t.target is None else self._nested(t.target),
            # All as conditions, negated ones included, so that transitions asks
            # them in the order the chart writes them (it would ask every
            # ``conditions`` entry before any ``unless`` one).
            "conditions": [check(g) for g in t.guards],
            "before": [begin],
        }

    @property
    def leaf(self) -> str:
        path: str = self._model.state
        return path.rsplit(_SEPARATOR, 1)[-1]

    def trigger(self, event: str, data: Any) -> Fired | None:
        """Fire ``event``; None when every candidate transition's guards failed."""
        self._fired = None
        try:
            if not self._model.trigger(_trigger_name(event), data=data):
                return None
            return self._fired
        finally:
            self._fired = None

    def set_leaf(self, name: str) -> None:
        self._machine.set_state(self._nested(name), model=self._model)
