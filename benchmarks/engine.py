"""Benchmark the engine against a plain-dict machine and the transitions library.

One process, one run. The machine is the same everywhere: a protocol-like loop
of six states,

    idle --start--> preparing --batches_ready--> running
    running --batch_done [more]--> (internal, count)      × 4
    running --batch_done [!more]--> resilience (count)    × 1
    resilience --resilience_done--> finalizing --finalize--> finished
    finished --reset--> idle (reset)

plus a final state ``closed`` (``idle --close--> closed``) that no loop visits:
the chart loader wants every chart to be able to end. One loop is ten events.
It runs on:

- ``dict``: a plain Python class stepping a ``(state, event)`` dict;
- ``transitions``: a flat ``transitions.Machine``;
- ``transitions-hsm``: a ``transitions`` ``HierarchicalMachine``;
- ``ours-transitions``: ``fsm_protocol.Machine(backend="transitions")``;
- ``ours``: ``fsm_protocol.Machine``, the compiled engine;

and the compiled engine also steps the shipped worker chart through whole
batched tasks (job request to TASK_COMPLETE, 100 batches), a new machine each
task, with guards answered by a table.

For each it prints events/s (the median of 7 interleaved rounds, CPU time,
with ± half the spread of the rounds), the time to build
one instance (µs), and the bytes each live instance holds (tracemalloc over
10,000 instances; every instance shares one bindings object, which is not
counted). The last line is always::

    engine: vs_dict=<ratio> vs_transitions=<ratio> bytes_per_instance=<int> build_us=<float>

where the ratios are the compiled engine's events/s over the ``dict`` class's
and over the flat transitions ``Machine``'s, and bytes and build time are the
compiled engine's. Targets (issue 11): vs_dict >= 0.33, vs_transitions >= 15,
bytes_per_instance <= 1024, build_us <= 20.

Usage::

    python benchmarks/engine.py [--seconds 0.2] [--rounds 7] [--instances 10000]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import transitions
from transitions.extensions import HierarchicalMachine

import fsm_protocol as fp

LOOP = (
    "start",
    "batches_ready",
    *["batch_done"] * 5,
    "resilience_done",
    "finalize",
    "reset",
)

CHART = fp.load_chart_text(
    """
chart: loop
initial: idle
events:
  start: s
  batches_ready: b
  batch_done: d
  resilience_done: r
  finalize: f
  reset: x
  close: c
states:
  idle:
    transitions:
      - {event: start, target: preparing}
      - {event: close, target: closed}
  preparing:
    transitions:
      - {event: batches_ready, target: running}
  running:
    transitions:
      - {event: batch_done, guards: [more], actions: [count]}
      - {event: batch_done, target: resilience, guards: ["!more"], actions: [count]}
  resilience:
    transitions:
      - {event: resilience_done, target: finalizing}
  finalizing:
    transitions:
      - {event: finalize, target: finished}
  finished:
    transitions:
      - {event: reset, target: idle, actions: [reset]}
  closed:
    final: true
""",
    file="loop.yaml",
    bindings=fp.BindingNames(guards=frozenset({"more"}), actions=frozenset({"count", "reset"})),
)

STATES = ["idle", "preparing", "running", "resilience", "finalizing", "finished", "closed"]


class Batches:
    """The bindings every engine shares: four batches to go after the first, then done."""

    def __init__(self) -> None:
        self.done = 0

    def guard_more(self, event: object = None) -> bool:
        return self.done < 4

    def action_count(self, event: object = None) -> None:
        self.done += 1

    def action_reset(self, event: object = None) -> None:
        self.done = 0


# ------------------------------------------------------------------ plain dict


class DictMachine:
    """What one would write by hand: a (state, event) dict of guarded candidates."""

    __slots__ = ("bindings", "state")

    # (state, event) -> ((guard, wanted answer, target, action), ...)
    TABLE: ClassVar[dict[tuple[str, str], tuple[tuple[Any, bool, str, Any], ...]]] = {
        ("idle", "start"): ((None, True, "preparing", None),),
        ("idle", "close"): ((None, True, "closed", None),),
        ("preparing", "batches_ready"): ((None, True, "running", None),),
        ("running", "batch_done"): (
            (Batches.guard_more, True, "running", Batches.action_count),
            (Batches.guard_more, False, "resilience", Batches.action_count),
        ),
        ("resilience", "resilience_done"): ((None, True, "finalizing", None),),
        ("finalizing", "finalize"): ((None, True, "finished", None),),
        ("finished", "reset"): ((None, True, "idle", Batches.action_reset),),
    }

    def __init__(self, bindings: Batches) -> None:
        self.state = "idle"
        self.bindings = bindings

    def fire(self, event: str) -> str:
        candidates = self.TABLE.get((self.state, event))
        if candidates is not None:
            bindings = self.bindings
            for guard, want, target, action in candidates:
                if guard is None or guard(bindings) is want:
                    self.state = target
                    if action is not None:
                        action(bindings)
                    return target
        raise fp.ProtocolViolation(
            f"in state {self.state!r}, event {event!r} is not allowed",
            state=self.state,
            event=event,
        )


# ----------------------------------------------------------------- transitions


class Model:
    """transitions keeps the state on a model object, one per machine."""


def _transitions_config(bindings: Batches) -> list[dict[str, Any]]:
    return [
        {"trigger": "start", "source": "idle", "dest": "preparing"},
        {"trigger": "close", "source": "idle", "dest": "closed"},
        {"trigger": "batches_ready", "source": "preparing", "dest": "running"},
        {
            "trigger": "batch_done",
            "source": "running",
            "dest": None,
            "conditions": [bindings.guard_more],
            "after": [bindings.action_count],
        },
        {
            "trigger": "batch_done",
            "source": "running",
            "dest": "resilience",
            "unless": [bindings.guard_more],
            "after": [bindings.action_count],
        },
        {"trigger": "resilience_done", "source": "resilience", "dest": "finalizing"},
        {"trigger": "finalize", "source": "finalizing", "dest": "finished"},
        {
            "trigger": "reset",
            "source": "finished",
            "dest": "idle",
            "after": [bindings.action_reset],
        },
    ]


def transitions_machine(bindings: Batches, kind: type[transitions.Machine]) -> Model:
    model = Model()
    # The machine lives on as the model's event dispatcher (model.trigger).
    kind(
        model=model,
        states=STATES,
        transitions=_transitions_config(bindings),
        initial="idle",
        auto_transitions=False,
        ignore_invalid_triggers=False,
    )
    return model


def transitions_fire(model: Model) -> Callable[[str], object]:
    trigger: Callable[[str], bool] = model.trigger  # type: ignore[attr-defined]

    def fire(event: str) -> object:
        if not trigger(event):
            raise fp.ProtocolViolation(f"event {event!r} refused", event=event)
        return None

    return fire


# ------------------------------------------------------------------ measuring


# The machine this runs on is shared: other processes take the CPU at random
# moments. So times are this process's CPU time (time.process_time), not wall
# time, and the engines are timed in interleaved rounds, so that a busy moment
# falls on all of them alike; a ratio is the median of the per-round ratios.
clock = time.process_time


def _no_gc(measure: Callable[..., Any]) -> Callable[..., Any]:
    """Time without the cyclic collector, as timeit does, so that one engine's
    garbage is not collected in another's time."""

    def timed(*args: Any) -> Any:
        gc.collect()
        gc.disable()
        try:
            return measure(*args)
        finally:
            gc.enable()

    return timed


def _run(fire: Callable[[str], object], events: Sequence[str], loops: int) -> float:
    start = clock()
    for _ in range(loops):
        for event in events:
            fire(event)
    return clock() - start


@_no_gc
def calibrate(fire: Callable[[str], object], events: Sequence[str], seconds: float) -> int:
    """How many loops over ``events`` take about ``seconds``."""
    loops = 1
    while (elapsed := _run(fire, events, loops)) < seconds / 10:
        loops *= 2
    return max(1, int(loops * seconds / elapsed))


@_no_gc
def events_per_second(fire: Callable[[str], object], events: Sequence[str], loops: int) -> float:
    return loops * len(events) / _run(fire, events, loops)


@_no_gc
def build_us(build: Callable[[], object], count: int) -> float:
    """Microseconds to build one instance, over ``count`` of them."""
    keep: list[object] = [None] * count
    start = clock()
    for i in range(count):
        keep[i] = build()
    return (clock() - start) / count * 1e6


def bytes_per_instance(build: Callable[[], object], count: int) -> int:
    """Bytes traced per live instance; the list holding them is allocated beforehand."""
    gc.collect()
    keep: list[object] = [None] * count
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(count):
        keep[i] = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    return round((after - before) / count)


# ------------------------------------------------------------- worker chart


class TableBindings:
    """Answers every guard of a chart from a table and counts action calls."""

    def __init__(self, table: dict[str, bool]) -> None:
        self.table = table
        self.actions = 0


def worker_bindings(table: dict[str, bool]) -> TableBindings:
    chart = fp.shipped_chart("worker")
    namespace: dict[str, Any] = {}
    guards = {g.removeprefix("!") for t in chart.transitions for g in t.guards}
    actions = {a for t in chart.transitions for a in t.actions} | {
        a for s in chart.states for a in (*s.on_entry, *s.on_exit)
    }
    for name in guards:
        namespace["guard_" + name] = lambda self, event, n=name: self.table[n]
    for name in actions:
        namespace["action_" + name] = _count
    owner = type("WorkerTable", (TableBindings,), namespace)
    instance: TableBindings = owner(table)
    return instance


def _count(self: TableBindings, event: object) -> None:
    self.actions += 1


WORKER_GUARDS = {
    "wants_setup_values": False,
    "initial_setup": False,
    "has_setup_values": False,
    "batched_job": True,
    "count_is_one": False,
    "count_is_unknown": True,
    "is_next_batch_id": True,
    "is_estimate": False,
    "estimate_sent": False,
    "is_batch_result": True,
    "at_failure_limit": False,
    "is_batches_only": True,
    "is_retry_result": True,
    "nothing_succeeded": False,
    "is_task_complete": True,
    "is_unbatched_result": False,
}


def worker_task(batches: int) -> list[str]:
    """A whole batched task as the worker chart sees it."""
    events = [
        "recv:JOB_REQUEST",
        "send:JOB_ACCEPT",
        "send:PREPARING_DATA",
        "send:CONFIGURING_TASK",
        "prepared",
        "send:PREPARING_DATA_BATCHES",
        "send:NUMBER_OF_BATCHES",
        "send:CURRENT_BATCH_ID",
        "send:TASK_START",
        "recv:TASK_START",
    ]
    for i in range(batches):
        events.append("send:EVALUATION_RESULTS")
        if i % 10 == 0:
            events.append("recv:LOG_MESSAGE")
        if i + 1 < batches:
            events.append("send:CURRENT_BATCH_ID")
    events += [
        "send:BATCHES_COMPLETE",
        "resilience_done",
        "send:BATCHES_COMPLETE",
        "recv:TASK_COMPLETE",
    ]
    return events


# ----------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.2, help="length of one timed run")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--instances", type=int, default=10_000, help="instances for bytes")
    args = parser.parse_args()
    shared = Batches()

    engines: dict[str, tuple[Callable[[], Any], Callable[[Any], Callable[[str], object]]]] = {
        "dict": (lambda: DictMachine(shared), lambda m: m.fire),
        "transitions": (
            lambda: transitions_machine(shared, transitions.Machine),
            transitions_fire,
        ),
        "transitions-hsm": (
            lambda: transitions_machine(shared, HierarchicalMachine),
            transitions_fire,
        ),
        "ours-transitions": (
            lambda: fp.Machine.from_chart(CHART, shared, backend="transitions"),
            lambda m: m.fire,
        ),
        "ours": (lambda: fp.Machine.from_chart(CHART, shared), lambda m: m.fire),
    }
    fires = {name: fire_of(build()) for name, (build, fire_of) in engines.items()}
    loops = {name: calibrate(fire, LOOP, args.seconds) for name, fire in fires.items()}
    rates: dict[str, list[float]] = {name: [] for name in engines}
    builds: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, (build, _) in engines.items():
            rates[name].append(events_per_second(fires[name], LOOP, loops[name]))
            builds[name].append(
                build_us(
                    build,
                    200 if name.startswith("transitions") or name == "ours-transitions" else 2_000,
                )
            )
    sizes = {
        name: bytes_per_instance(build, args.instances) for name, (build, _) in engines.items()
    }

    print(f"{'engine':<18}{'events/s':>14}{'±':>6}{'build µs':>12}{'bytes/instance':>16}")
    for name in engines:
        rate = statistics.median(rates[name])
        spread = (max(rates[name]) - min(rates[name])) / 2 / rate * 100
        build_time = statistics.median(builds[name])
        print(f"{name:<18}{rate:>14,.0f}{spread:>5.0f}%{build_time:>12.2f}{sizes[name]:>16,}")

    # The shipped worker chart through whole batched tasks, a new machine per task.
    chart = fp.shipped_chart("worker")
    bindings = worker_bindings(WORKER_GUARDS)
    task = worker_task(100)
    check = fp.Machine.from_chart(chart, bindings)
    for event in task:
        check.fire(event)
    assert check.state == "complete" and check.is_final, check.state

    def worker_fire_task(_: str) -> None:
        machine = fp.Machine.from_chart(chart, bindings)
        fire = machine.fire
        for event in task:
            fire(event)

    per_task = statistics.median(
        events_per_second(
            worker_fire_task, ["task"], calibrate(worker_fire_task, ["task"], args.seconds)
        )
        for _ in range(3)
    )
    print(
        f"{'ours, worker chart':<18}{per_task * len(task):>14,.0f}"
        f"   ({per_task:,.0f} tasks/s of {len(task)} events, 100 batches; build included)"
    )

    def ratio(over: str) -> float:
        return statistics.median(o / d for o, d in zip(rates["ours"], rates[over], strict=True))

    print(
        f"engine: vs_dict={ratio('dict'):.3f} vs_transitions={ratio('transitions'):.1f} "
        f"bytes_per_instance={sizes['ours']} build_us={statistics.median(builds['ours']):.2f}"
    )


if __name__ == "__main__":
    main()
