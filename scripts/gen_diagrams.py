"""Regenerate the diagrams in docs/diagrams/ from the shipped charts and the demo trace.

    python scripts/gen_diagrams.py              # rewrite every diagram
    python scripts/gen_diagrams.py --check      # list what is out of date; exit 1 if any
    python scripts/gen_diagrams.py --new-trace  # run the demo task again first

For each shipped chart it writes Mermaid (.mmd), DOT (.dot), PlantUML (.puml),
SCXML (.scxml) and, through Graphviz, SVG (.svg). The demo trace
(trace-demo.ndjson) is committed, because a run's interleaving of workers
varies; its sequence diagram (.mmd, .svg) is drawn from it.

An SVG from Graphviz differs between Graphviz versions, so it is not compared
byte for byte: each carries the SHA-256 of the DOT text it was drawn from,
and --check (and tests/test_docs.py) compare that with the current DOT.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsm_protocol import Chart, Message, shipped_chart  # noqa: E402
from fsm_protocol._export._diagram import render_graphviz, to_dot, to_mermaid, to_plantuml  # noqa: E402
from fsm_protocol._export._scxml import to_scxml  # noqa: E402
from fsm_protocol._export._sequence import read_trace, to_mermaid_sequence, to_sequence_svg  # noqa: E402

OUT = ROOT / "docs" / "diagrams"
CHARTS = ("worker", "modeller")
TRACE = "trace-demo.ndjson"

_TEXT: dict[str, Callable[[Chart], str]] = {
    "mmd": to_mermaid,
    "dot": to_dot,
    "puml": to_plantuml,
    "scxml": to_scxml,
}


def svg_marker(dot_text: str) -> str:
    """The comment that ties an SVG to the DOT text it was drawn from."""
    digest = hashlib.sha256(dot_text.encode("utf-8")).hexdigest()
    return f"<!-- fsm-protocol: drawn from DOT sha256 {digest} -->"


def text_files() -> dict[str, str]:
    """Every generated file that is plain text, by name, as it should be now."""
    files: dict[str, str] = {}
    for name in CHARTS:
        chart = shipped_chart(name)
        for suffix, write in _TEXT.items():
            files[f"{name}.{suffix}"] = write(chart)
    messages = demo_trace()
    files["trace-demo.mmd"] = to_mermaid_sequence(messages)
    files["trace-demo.svg"] = to_sequence_svg(messages)
    return files


def demo_trace() -> list[Message]:
    path = OUT / TRACE
    return read_trace(path.read_text(encoding="utf-8"), file=str(path))


def new_demo_trace() -> None:
    """Run a demo task (two workers, a failed batch, resilience) and keep its trace."""
    import trio

    from fsm_protocol import EchoProtocol, Pod, encode, run_task

    protocol = EchoProtocol(
        items=tuple(f"item-{n}" for n in range(1, 31)), batch_size=2, fail_in_batch=("item-9",)
    )
    pods = [Pod("demo/pod-a"), Pod("demo/pod-b")]
    outcome = trio.run(lambda: run_task(protocol, pods, batched_execution=True, task_id="t-demo"))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / TRACE).write_bytes(b"".join(encode(m) for m in outcome.trace))


def drifted() -> list[str]:
    """Names of the committed files that differ from what the charts give now."""
    stale = [
        name
        for name, text in text_files().items()
        if not (OUT / name).is_file() or (OUT / name).read_text(encoding="utf-8") != text
    ]
    for name in CHARTS:
        svg = OUT / f"{name}.svg"
        marker = svg_marker(to_dot(shipped_chart(name)))
        if not svg.is_file() or marker not in svg.read_text(encoding="utf-8"):
            stale.append(svg.name)
    return stale


def write_all() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in text_files().items():
        (OUT / name).write_text(text, encoding="utf-8")
    for name in CHARTS:
        dot_text = to_dot(shipped_chart(name))
        svg = render_graphviz(dot_text, "svg").decode("utf-8")
        head, sep, rest = svg.partition("?>\n")
        svg = f"{head}{sep}{svg_marker(dot_text)}\n{rest}" if sep else svg_marker(dot_text) + svg
        (OUT / f"{name}.svg").write_text(svg, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report what is out of date")
    parser.add_argument("--new-trace", action="store_true", help="run the demo task again first")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        for name in stale:
            print(f"docs/diagrams/{name} is out of date: run python scripts/gen_diagrams.py")
        return 1 if stale else 0
    if args.new_trace:
        new_demo_trace()
    write_all()
    print(f"wrote {len(text_files()) + len(CHARTS)} files in {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
