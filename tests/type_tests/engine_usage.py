"""Type-checked by tests/test_public_api.py with ``mypy --strict``; never run.

Each ``assert_type`` pins a public signature; each ``type: ignore[code]`` is a
misuse that must stay an error (strict mode reports an ignore that is unused).
"""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

from fsm_protocol import (
    BindingNames,
    Chart,
    ConfigError,
    Event,
    Machine,
    ProtocolViolation,
    Snapshot,
    Step,
    load_chart_text,
    shipped_chart,
    snapshot_from_dict,
    snapshot_to_dict,
)


class Bindings:
    def guard_ready(self, event: Event) -> bool:
        return event.data is not None

    def action_note(self, event: Event) -> None:
        pass


chart = load_chart_text(
    "chart: c\ninitial: a\nevents: {go: g}\nstates:\n"
    "  a:\n    transitions:\n      - {event: go, target: b, guards: [ready], actions: [note]}\n"
    "  b:\n    final: true\n",
    bindings=BindingNames.from_class(Bindings),
)
assert_type(chart, Chart)
assert_type(shipped_chart("worker"), Chart)

machine = Machine.from_chart(chart, Bindings())
assert_type(machine, Machine)
assert_type(machine.chart, Chart)
assert_type(machine.state, str)
assert_type(machine.active, tuple[str, ...])
assert_type(machine.is_final, bool)
assert_type(machine.expected(), tuple[str, ...])
assert_type(machine.accepts("go"), bool)
assert_type(machine.accepts("go", {"any": "data"}), bool)

step = machine.fire("go", 1)
assert_type(step, Step)
assert_type(step.source, str)
assert_type(step.event, str)
assert_type(step.target, str)
assert_type(step.actions, tuple[str, ...])
assert_type(step.exited, tuple[str, ...])
assert_type(step.entered, tuple[str, ...])
assert_type(step.internal, bool)

snapshot = machine.snapshot()
assert_type(snapshot, Snapshot)
stored = snapshot_to_dict(snapshot)
assert_type(stored, dict[str, Any])
assert_type(snapshot_from_dict(stored), Snapshot)
assert_type(Machine.restore(chart, Bindings(), snapshot), Machine)

try:
    machine.fire("go")
except ProtocolViolation as violation:
    assert_type(violation.state, str | None)
    assert_type(violation.event, str | None)
    assert_type(violation.expected, tuple[str, ...])
except ConfigError:
    pass

event = Event("go", data=[1, 2])
assert_type(event.name, str)

# Misuse that must stay a type error.
machine.fire(1)  # type: ignore[arg-type]
Machine.from_chart(chart)  # type: ignore[call-arg]
step.target = "b"  # type: ignore[misc]
machine.state = "b"  # type: ignore[misc]
Snapshot("c")  # type: ignore[call-arg]


class Sub(Machine):  # type: ignore[misc]
    """Machine is final: users compose, they do not subclass."""
