"""Purity: charts, the engine, the exporters and the checker need no runtime.

Loading or validating a chart, stepping a machine, drawing a chart and
checking a trace must never import trio, cryptography, or the runtime,
network, kit and CLI layers: a tool that only reads charts or traces should
not pay for (or be broken by) the async runtime. Each test runs in a fresh
interpreter, since this process has long since imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fsm_protocol
import fsm_protocol.conformance

REPO = Path(__file__).resolve().parent.parent
TRACES = REPO / "tests" / "traces"

# Libraries and layers that only the runtime and its users may load. hypothesis
# is for tests (fsm_protocol.testing) and rich for the CLI.
FORBIDDEN = (
    "trio",
    "cryptography",
    "hypothesis",
    "rich",
    # The compiled engine is the default; transitions is loaded only for
    # Machine.from_chart(..., backend="transitions"), the reference backend.
    "transitions",
    "fsm_protocol._core._transitions_adapter",
    "fsm_protocol._runtime",
    "fsm_protocol._net",
    "fsm_protocol._kit",
    "fsm_protocol._cli",
)

# Runs first in the child: notes who imported each forbidden module, so that a
# failure names the import line to fix instead of only the module.
PRELUDE = """
import json, sys, traceback

FORBIDDEN = tuple(json.loads(sys.argv[1]))
culprits = {}

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(FORBIDDEN) and name not in culprits:
            frames = [
                f"{f.filename}:{f.lineno}"
                for f in traceback.extract_stack()
                if "fsm_protocol" in f.filename and "importlib" not in f.filename
            ]
            culprits[name] = frames[-1] if frames else "?"
        return None

sys.meta_path.insert(0, Watch())

def loaded():
    # Each forbidden package once (not its submodules), with the line that imported it.
    found = sorted(m for m in sys.modules if m.startswith(FORBIDDEN))
    roots = [m for m in found if not any(m.startswith(r + ".") for r in found)]
    return {m: culprits.get(m, "?") for m in roots}
"""


def run_child(body: str) -> dict[str, object]:
    """Run ``body`` after the prelude in a fresh interpreter; its last line is JSON."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body), json.dumps(FORBIDDEN)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_import_loads_only_the_pure_layers() -> None:
    result = run_child(
        """
        import fsm_protocol
        public = {
            "conformance": "fsm_protocol.conformance" in sys.modules,
            "testing": "fsm_protocol.testing" in sys.modules,
        }
        print(json.dumps({"loaded": loaded(), "public": public}))
        """
    )
    assert result["loaded"] == {}, "imported by import fsm_protocol: " + json.dumps(
        result["loaded"], indent=1
    )
    assert result["public"] == {"conformance": False, "testing": False}


def test_load_validate_step_export_and_check_without_the_runtime() -> None:
    result = run_child(
        f"""
        import fsm_protocol
        from fsm_protocol import (
            BindingNames, Machine, check_chart_text, from_scxml, load_chart,
            read_trace, shipped_chart, to_dot, to_mermaid, to_mermaid_sequence,
            to_plantuml, to_scxml,
        )
        from fsm_protocol.conformance import check_trace

        def recording_bindings(chart):
            # Any object with a guard_/action_ method per name will do: every
            # guard gives the same answer, and every action is logged.
            log = []
            def guard(name):
                return lambda self, event: self.answer
            def action(name):
                return lambda self, event: log.append(name)
            methods = {{"answer": True}}
            for t in chart.transitions:
                for g in t.guards:
                    methods["guard_" + g.removeprefix("!")] = guard(g)
                methods.update({{"action_" + a: action(a) for a in t.actions}})
            for s in chart.states:
                methods.update({{"action_" + a: action(a) for a in (*s.on_entry, *s.on_exit)}})
                if s.do is not None:
                    methods["do_" + s.do] = lambda self, ctx: None
            return type("Recording", (), methods)(), log

        out = {{}}
        for name in ("worker", "modeller"):
            chart = shipped_chart(name)
            bindings, log = recording_bindings(chart)
            names = BindingNames.from_class(type(bindings))
            again = load_chart(chart.source, bindings=names)
            _, problems = check_chart_text(open(chart.source).read(), bindings=names)
            machine = Machine.from_chart(chart, bindings)
            steps = []
            def ends(event):
                return all(
                    t.target is not None and chart.state(chart.settle(t.target)).final
                    for t in chart.transitions_from(machine.state)
                    if t.event == event
                )

            while len(steps) < 40 and not machine.is_final:
                # An event some answer of the guards lets through: one that
                # does not end the run, and one not taken yet, if any.
                for bindings.answer in (True, False):
                    ready = [e for e in machine.expected() if machine.accepts(e)]
                    if ready:
                        taken = {{s.event for s in steps}}
                        ready.sort(key=lambda e: (ends(e), e in taken))
                        steps.append(machine.fire(ready[0]))
                        break
                else:
                    break
            exports = {{
                "mermaid": to_mermaid(chart).startswith("stateDiagram-v2"),
                "dot": to_dot(chart).startswith("digraph"),
                "plantuml": "@startuml" in to_plantuml(chart),
                "scxml": from_scxml(to_scxml(chart)) == chart,
            }}
            out[name] = {{
                "same": again == chart,
                "problems": [str(p) for p in problems],
                "steps": len(steps),
                "actions_logged": log == [a for s in steps for a in s.actions],
                "exports": exports,
            }}
        trace = {str(TRACES / "good-single-run.jsonl")!r}
        out["good"] = check_trace(trace).ok
        bad = check_trace({str(TRACES / "bad-lost-item.jsonl")!r})
        out["bad_line"] = bad.finding.line if bad.finding else None
        text = open(trace).read()
        out["sequence"] = to_mermaid_sequence(read_trace(text)).startswith("sequenceDiagram")
        print(json.dumps({{"loaded": loaded(), "out": out}}))
        """
    )
    out = result["out"]
    assert isinstance(out, dict)
    for name in ("worker", "modeller"):
        assert out[name]["same"] and out[name]["problems"] == [], out[name]
        assert out[name]["steps"] > 3, out[name]
        assert out[name]["actions_logged"], out[name]
        assert all(out[name]["exports"].values()), out[name]["exports"]
    expected = json.loads((TRACES / "expected.json").read_text())
    assert out["good"] is True
    assert out["bad_line"] == expected["bad-lost-item.jsonl"]["line"]
    assert out["sequence"] is True
    assert result["loaded"] == {}, "imported by the pure layers: " + json.dumps(
        result["loaded"], indent=1
    )


def test_the_lazy_names_are_listed_and_resolve() -> None:
    # dir() and star-imports see the runtime's names before their first use.
    assert set(fsm_protocol.__all__) <= set(dir(fsm_protocol))
    assert set(fsm_protocol.conformance.__all__) <= set(dir(fsm_protocol.conformance))
    assert fsm_protocol.run_worker.__module__ == "fsm_protocol._runtime._worker"
    assert fsm_protocol.conformance.conform.__module__ == "fsm_protocol._kit._run"
