"""Benchmark ``fsm-protocol explore``, and prove that it finds the planted chart bugs.

Three parts:

1. **Target.** The shipped charts, 3 workers x 4 items, batch size 2, faults
   ``cancel,reject,crash,fail-in-batch``, explored completely with both
   reductions (symmetry and partial order). Run ``--repeat`` times; the
   median wall time is reported.
2. **Speed before reductions.** The same faults with 2 workers x 2 items,
   batch size 1, with both reductions off: states per second of the bare search
   (median of ``--repeat`` runs).
3. **Mutants.** Each planted chart bug of ``scripts/mutate.py`` (the mutants
   whose file is under ``statecharts/``) applied to a temporary copy of the
   chart, and explored on a ladder of bounds from the smallest up; the first
   bound with a violation is reported with the check that failed, the
   counterexample's length (steps), and what ``fsm-protocol check`` says of the
   counterexample trace. The shipped charts are explored at that bound too and
   must pass. The Python-binding mutants are not counted: explore steps its own
   thin bindings, not the runtime's (see docs/testing.md).

Usage::

    python benchmarks/explore.py [--repeat 3] [--skip-target]

The last line is always::

    explore: states=<int> states_per_s=<int> wall_s=<float> mutants_found=<int>/<int>

``states`` and ``wall_s`` are the target's; ``states_per_s`` is the speed
before reductions; ``mutants_found`` counts the chart mutants found.
Targets (issue 17): the target explored in under 60 s; at least 100,000
states per second before reductions; every planted chart bug found.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from fsm_protocol._check._checker import TraceChecker
from fsm_protocol._core._chart import Chart, Role
from fsm_protocol._explore._charts import load_for_explore
from fsm_protocol._explore._explorer import ExploreResult, explore
from fsm_protocol._explore._model import Bounds
from fsm_protocol._wire._messages import encode

ROOT = Path(__file__).resolve().parent.parent
TARGET = Bounds(
    workers=3,
    items=4,
    batch_size=2,
    faults=frozenset({"cancel", "reject", "crash", "fail-in-batch"}),
)
SPEED = Bounds(
    workers=2,
    items=2,
    batch_size=1,
    faults=frozenset({"cancel", "reject", "crash", "fail-in-batch"}),
)

LADDER_FAULTS = ("late-accept", "cancel", "reject", "crash", "limit", "fail-in-batch", "duplicate")
# Smallest first: fewer workers, then fewer items, then one fault at a time.
LADDER = [
    Bounds(workers=1, items=1, batch_size=1),
    Bounds(workers=2, items=1, batch_size=1),
    *(
        Bounds(workers=w, items=1, batch_size=1, faults=frozenset({fault}))
        for w in (1, 2)
        for fault in LADDER_FAULTS
    ),
    Bounds(workers=2, items=2, batch_size=1),
    Bounds(workers=1, items=2, batch_size=1, faults=frozenset({"fail-in-batch"})),
    Bounds(workers=1, items=5, batch_size=1, faults=frozenset({"fail-in-batch"})),
    Bounds(workers=2, items=2, batch_size=1, faults=frozenset({"silence"})),
    Bounds(workers=2, items=2, batch_size=2, faults=frozenset({"fail-alone", "fail-in-batch"})),
]


def _mutate_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutate", ROOT / "scripts" / "mutate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutate"] = module
    spec.loader.exec_module(module)
    return module


def _describe(bounds: Bounds) -> str:
    faults = ",".join(sorted(bounds.faults)) or "no faults"
    return f"{bounds.workers}x{bounds.items} b{bounds.batch_size} {faults}"


def _run(
    bounds: Bounds, worker: Chart, modeller: Chart, spec: Chart, *, reduce: bool = True
) -> ExploreResult:
    return explore(
        bounds,
        worker_chart=worker,
        modeller_chart=modeller,
        spec_chart=spec,
        symmetry=reduce,
        por=reduce,
    )


def _check_says(result: ExploreResult) -> str:
    example = result.counterexample
    assert example is not None
    checker = TraceChecker()
    checker.feed_lines(encode(m) for m in example.trace)
    finding = checker.finish().finding
    return "accepts it" if finding is None else f"rejects it: {finding.message}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (median)")
    parser.add_argument(
        "--skip-target", action="store_true", help="skip the 3x4 target (for a quick look)"
    )
    args = parser.parse_args(argv)

    worker = load_for_explore(Role.WORKER)
    modeller = load_for_explore(Role.MODELLER)
    spec = load_for_explore(Role.MODELLER)

    states, wall = 0, 0.0
    if not args.skip_target:
        runs = []
        for _ in range(max(1, args.repeat)):
            result = _run(TARGET, worker, modeller, spec)
            print(
                f"target {_describe(TARGET)}: {result.verdict}, {result.states:,} states, "
                f"{result.transitions:,} transitions, {result.ends:,} ends, "
                f"{result.traces_checked:,} traces checked, {result.seconds:.1f} s, "
                f"{result.states_per_s:,.0f} states/s, reduction x{result.reduction_factor:.1f} "
                f"(symmetry x{result.symmetry_factor:.1f}, partial order x{result.por_factor:.1f})",
                flush=True,
            )
            if result.verdict != "ok":
                print("the shipped charts fail the target bounds", file=sys.stderr)
                return 1
            runs.append(result)
        states = runs[0].states
        wall = statistics.median(r.seconds for r in runs)

    speeds = []
    for _ in range(max(1, args.repeat)):
        result = _run(SPEED, worker, modeller, spec, reduce=False)
        speeds.append(result.states_per_s)
        print(
            f"before reductions {_describe(SPEED)}: {result.verdict}, {result.states:,} states "
            f"in {result.seconds:.1f} s, {result.states_per_s:,.0f} states/s",
            flush=True,
        )
    speed = statistics.median(speeds)

    mutate = _mutate_module()
    chart_mutants = [m for m in mutate.MUTANTS if m.file.startswith("statecharts/")]
    found = 0
    print(
        f"\n{'mutant':28} {'bound':28} {'check':14} {'steps':>5}  fsm-protocol check on the trace"
    )
    for mutant in chart_mutants:
        with tempfile.TemporaryDirectory(prefix="explore-mutant-") as tmp:
            root = Path(tmp)
            (root / "statecharts").mkdir()
            for name in ("worker.yaml", "modeller.yaml"):
                shutil.copy(ROOT / "statecharts" / name, root / "statecharts" / name)
            mutate.apply(mutant, root)
            bad_worker = load_for_explore(Role.WORKER, root / "statecharts" / "worker.yaml")
            bad_modeller = load_for_explore(Role.MODELLER, root / "statecharts" / "modeller.yaml")
            for bounds in LADDER:
                result = _run(bounds, bad_worker, bad_modeller, spec)
                if result.verdict != "violation":
                    continue
                shipped = _run(bounds, worker, modeller, spec)
                example = result.counterexample
                assert example is not None
                found += shipped.verdict == "ok"
                clean = "" if shipped.verdict == "ok" else " (the shipped charts FAIL here too)"
                print(
                    f"{mutant.name:28} {_describe(bounds):28} {example.violation.check:14} "
                    f"{len(example.steps):5}  {_check_says(result)[:110]}{clean}",
                    flush=True,
                )
                break
            else:
                print(f"{mutant.name:28} {'not found on the ladder':28}", flush=True)
    print(
        f"explore: states={states} states_per_s={round(speed)} wall_s={wall:.2f} "
        f"mutants_found={found}/{len(chart_mutants)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
