"""Statechart diagrams: pure functions from a :class:`Chart` to diagram text.

Each exporter draws the same picture in its own notation:

* compound states as nested boxes (DOT clusters, ``state X { }``);
* the initial state of the chart and of each compound state as a black dot;
* final states with a double border, and an arrow to the end (``[*]``);
* each transition as ``event [g1 and !g2] / action, action``; a transition
  raised by a timer of its own source state reads ``after(soft_timeout_s)``;
* internal transitions (no target: nothing is exited or entered) and the
  ``do`` activity listed inside their state, never drawn as arrows.

Only :func:`render_graphviz` runs a program (Graphviz ``dot``); everything
else is text in, text out.
"""

from __future__ import annotations

import contextlib
import html
import re
import shutil
import subprocess
from collections.abc import Iterator

import attrs

from .._base._errors import ConfigError
from .._core._chart import DISPLAY_RENDERERS, Chart, State, Transition

GRAPHVIZ_FORMATS = ("svg", "png")
"""The formats :func:`render_graphviz` produces."""

_FONT = "Helvetica"
_FINAL_FILL = "#eef3fb"
_STATE_FILL = "#fbfbf8"
_CLUSTER_FILL = "#f7f7f2"


# ------------------------------------------------------------------ labels


def _seconds_text(seconds: float | str) -> str:
    if isinstance(seconds, str):
        return seconds
    return f"{seconds:g} s"


def _timer_for(chart: Chart, transition: Transition) -> str | None:
    """``after(...)`` when a timer of the transition's own source raises its event."""
    for timer in chart.state(transition.source).after:
        if timer.event == transition.event:
            return f"after({_seconds_text(timer.seconds)})"
    return None


def transition_label(chart: Chart, transition: Transition) -> str:
    """The UML-style label ``event [g1 and !g2] / a1, a2`` of one transition."""
    text = _timer_for(chart, transition) or transition.event
    if transition.guards:
        text += f" [{' and '.join(transition.guards)}]"
    if transition.actions:
        text += f" / {', '.join(transition.actions)}"
    return text


def state_body(chart: Chart, state: State) -> list[str]:
    """The lines written inside a state: activity, entry/exit, loose timers, internal arcs."""
    lines: list[str] = []
    if state.do is not None:
        lines.append(f"do / {state.do}")
    if state.on_entry:
        lines.append(f"entry / {', '.join(state.on_entry)}")
    if state.on_exit:
        lines.append(f"exit / {', '.join(state.on_exit)}")
    own_events = {t.event for t in chart.transitions if t.source == state.name}
    for timer in state.after:
        if timer.event not in own_events:
            # The event is handled further out (or nowhere): say which event it raises.
            lines.append(f"after({_seconds_text(timer.seconds)}) raises {timer.event}")
    for t in chart.transitions:
        if t.source == state.name and t.target is None:
            lines.append(transition_label(chart, t))
    return lines


@attrs.frozen
class _Edge:
    """Every external transition between one pair of states, drawn as one arrow."""

    source: str
    target: str
    labels: tuple[str, ...]


def _edges(chart: Chart) -> list[_Edge]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for t in chart.transitions:
        if t.target is not None:
            grouped.setdefault((t.source, t.target), []).append(transition_label(chart, t))
    return [_Edge(s, d, tuple(labels)) for (s, d), labels in grouped.items()]


def _top_level(chart: Chart) -> list[State]:
    return [s for s in chart.states if s.parent is None]


def _children(chart: Chart, state: State) -> Iterator[State]:
    for name in state.children:
        yield chart.state(name)


# --------------------------------------------------------------------- DOT


def _dot_id(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _dot_html_rows(title: str, body: list[str], *, bold: bool = True) -> str:
    head = f"<b>{html.escape(title)}</b>" if bold else html.escape(title)
    rows = [f"<tr><td>{head}</td></tr>"]
    if body:
        rows.append("<hr/>")
        rows.extend(
            f'<tr><td align="left"><font point-size="9">{html.escape(line)}</font></td></tr>'
            for line in body
        )
    return (
        '<<table border="0" cellborder="0" cellspacing="0" cellpadding="1">'
        + "".join(rows)
        + "</table>>"
    )


def _initial_id(name: str | None) -> str:
    return _dot_id(f"__initial__{name or ''}")


def _exit_id(name: str) -> str:
    return _dot_id(f"__exit__{name}")


def to_dot(chart: Chart) -> str:
    """The chart as a Graphviz DOT digraph.

    Compound states are clusters; an arrow into a compound state ends at its
    border (it enters the initial child, shown by the cluster's black dot),
    and an arrow out of one starts at its border (it applies in every state
    inside). Descriptions become tooltips in SVG output.

    Args:
        chart: Any chart, usually one from :func:`load_chart` or
            :func:`shipped_chart`.

    Returns:
        DOT text, ready for ``dot -Tsvg``; see :func:`render_graphviz`.
    """
    out: list[str] = []
    title = chart.name + (f": {chart.description}" if chart.description else "")
    out.append(f"digraph {_dot_id(chart.name)} {{")
    out.append(
        f'  graph [rankdir=TB, compound=true, newrank=true, fontname="{_FONT}", fontsize=14, '
        f"labelloc=t, label={_dot_id(title)}, nodesep=0.5, ranksep=0.45, "
        "pad=0.2, outputorder=edgesfirst];"
    )
    out.append(
        f'  node [shape=box, style="rounded,filled", fillcolor="{_STATE_FILL}", '
        f'color="#444444", fontname="{_FONT}", fontsize=11, margin="0.12,0.06"];'
    )
    out.append(
        f'  edge [fontname="{_FONT}", fontsize=9, color="#555555", fontcolor="#222222", '
        "arrowsize=0.7];"
    )

    def entry(name: str) -> str:
        # An arrow into a compound state ends at its border, at its initial dot.
        if chart.state(name).compound:
            return f"{_initial_id(name)} [lhead={_dot_id('cluster_' + name)}]"
        return _dot_id(name)

    def point(name: str | None, indent: str) -> None:
        out.append(
            f"{indent}{_initial_id(name)} [shape=point, width=0.13, height=0.13, "
            'style=filled, fillcolor=black, label=""];'
        )

    def draw(state: State, indent: str) -> None:
        tooltip = _dot_id(state.description or state.name)
        body = state_body(chart, state)
        if state.compound:
            out.append(f"{indent}subgraph {_dot_id('cluster_' + state.name)} {{")
            out.append(
                f"{indent}  graph [label={_dot_html_rows(state.name, body)}, "
                f'style="rounded,filled", fillcolor="{_CLUSTER_FILL}", color="#777777", '
                f"labeljust=l, tooltip={tooltip}];"
            )
            point(state.name, indent + "  ")
            # An invisible point below every child: arrows out of the compound
            # state start there, so their labels sit below the cluster.
            out.append(
                f"{indent}  {_exit_id(state.name)} [shape=point, style=invis, width=0.01, "
                'height=0.01, label=""];'
            )
            for child in _children(chart, state):
                draw(child, indent + "  ")
                bottom = _exit_id(child.name) if child.compound else _dot_id(child.name)
                out.append(f"{indent}  {bottom} -> {_exit_id(state.name)} [style=invis, weight=0];")
            assert state.initial is not None
            out.append(f"{indent}  {_initial_id(state.name)} -> {entry(state.initial)};")
            out.append(f"{indent}}}")
            return
        attrs_ = [f"label={_dot_html_rows(state.name, body)}", f"tooltip={tooltip}"]
        if state.final:
            attrs_.append(f'peripheries=2, fillcolor="{_FINAL_FILL}"')
        out.append(f"{indent}{_dot_id(state.name)} [{', '.join(attrs_)}];")

    point(None, "  ")
    for state in _top_level(chart):
        draw(state, "  ")
    out.append(f"  {_initial_id(None)} -> {entry(chart.initial)};")

    def inside(name: str, container: str) -> bool:
        return container in chart.ancestors(name)

    for edge in _edges(chart):
        source, target = chart.state(edge.source), chart.state(edge.target)
        # Invariant: an arrow into a compound state ends at its initial dot, one out of
        # it starts at its exit point, and both are clipped at the cluster's border,
        # except at a cluster that holds the arrow's other end.
        tail = _exit_id(source.name) if source.compound else _dot_id(source.name)
        head = _initial_id(target.name) if target.compound else _dot_id(target.name)
        extra = [f"label={_dot_id(chr(10).join(edge.labels))}"]
        if source.compound and not inside(target.name, source.name):
            extra.append(f"ltail={_dot_id('cluster_' + source.name)}")
        if target.compound and not inside(source.name, target.name):
            extra.append(f"lhead={_dot_id('cluster_' + target.name)}")
        out.append(f"  {tail} -> {head} [{', '.join(extra)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def render_graphviz(dot_text: str, format: str, *, dot: str = "dot") -> bytes:
    """Lay out DOT text with the Graphviz ``dot`` program.

    Args:
        dot_text: A graph, e.g. from :func:`to_dot`.
        format: ``"svg"`` or ``"png"``.
        dot: The program to run; found on ``PATH`` when not a path.

    Returns:
        The rendered picture.

    Raises:
        ConfigError: Graphviz is not installed (the message names the package
            to install), the format is not one of the above, or ``dot`` failed.
    """
    if format not in GRAPHVIZ_FORMATS:
        raise ConfigError(
            f"cannot render format {format!r} with Graphviz; "
            f"use one of {', '.join(GRAPHVIZ_FORMATS)}"
        )
    program = shutil.which(dot)
    if program is None:
        raise ConfigError(
            f"the Graphviz program {dot!r} was not found, and {format.upper()} output needs it: "
            "install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
            "graphviz), or ask for a text format (--format dot, mermaid or plantuml)"
        )
    try:
        done = subprocess.run(
            [program, f"-T{format}"],
            input=dot_text.encode("utf-8"),
            capture_output=True,
            check=False,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"could not run Graphviz {program!r}: {exc}") from exc
    if done.returncode != 0 or not done.stdout:
        details = done.stderr.decode("utf-8", "replace").strip() or "no error message"
        raise ConfigError(f"Graphviz {program!r} failed (exit {done.returncode}): {details}")
    return done.stdout


# ----------------------------------------------------------------- Mermaid


_MERMAID_SPECIAL = re.compile(r"[#;:<>\n]")


def mermaid_text(text: str) -> str:
    """``text`` on one line, with Mermaid's special characters as entity codes."""
    # Mermaid reads '#', ';', ':' and HTML as syntax (':' starts a state's description
    # or a label); its entity codes (``#58;``) show them as written.
    return _MERMAID_SPECIAL.sub(lambda m: " " if m.group() == "\n" else f"#{ord(m.group())};", text)


def to_mermaid(chart: Chart) -> str:
    """The chart as a Mermaid ``stateDiagram-v2``.

    Leaf states list their activity and internal transitions as description
    lines; a compound state gets them in a note beside it. The transitions
    between one pair of states share one arrow, a label line each. Final
    states lead to the end marker ``[*]``.

    Args:
        chart: The chart to draw.

    Returns:
        Mermaid text, e.g. for a fenced ```` ```mermaid ```` block.
    """
    out = ["stateDiagram-v2"]
    if chart.description:
        out.append(f"    %% {chart.name}: {mermaid_text(chart.description)}")
    out.append("    classDef final stroke-width:3px,stroke-dasharray:0,fill:" + _FINAL_FILL)

    def draw(state: State, indent: str) -> None:
        body = state_body(chart, state)
        if state.compound:
            out.append(f"{indent}state {state.name} {{")
            out.append(f"{indent}    [*] --> {state.initial}")
            for child in _children(chart, state):
                draw(child, indent + "    ")
            out.append(f"{indent}}}")
            if body:
                out.append(f"{indent}note right of {state.name}")
                out.extend(f"{indent}    {mermaid_text(line)}" for line in body)
                out.append(f"{indent}end note")
            return
        # Invariant: Mermaid shows a state's name above its description lines
        # only when the state is declared with one.
        out.append(f'{indent}state "{state.name}" as {state.name}' if body else indent + state.name)
        for line in body:
            out.append(f"{indent}{state.name} : {mermaid_text(line)}")

    out.append(f"    [*] --> {chart.initial}")
    for state in _top_level(chart):
        draw(state, "    ")
    for edge in _edges(chart):
        label = "<br/>".join(mermaid_text(text) for text in edge.labels)
        out.append(f"    {edge.source} --> {edge.target} : {label}")
    finals = [s.name for s in chart.states if s.final]
    for name in finals:
        out.append(f"    {name} --> [*]")
    if finals:
        out.append(f"    class {', '.join(finals)} final")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- PlantUML

_PLANTUML_UNSAFE = re.compile(r"[\\]")


def _plantuml_text(text: str) -> str:
    return _PLANTUML_UNSAFE.sub(r"\\\\", text).replace("\n", " ")


def to_plantuml(chart: Chart) -> str:
    """The chart as a PlantUML state diagram.

    Args:
        chart: The chart to draw.

    Returns:
        Text between ``@startuml`` and ``@enduml``.
    """
    out = [f"@startuml {chart.name}", "hide empty description"]
    if chart.description:
        out.append(f"title {_plantuml_text(chart.name + ': ' + chart.description)}")
    out.append("skinparam state {")
    out.append(f"  BackgroundColor {_STATE_FILL}")
    out.append(f"  BackgroundColor<<final>> {_FINAL_FILL}")
    out.append("  BorderThickness<<final>> 3")
    out.append("}")

    def draw(state: State, indent: str) -> None:
        stereotype = " <<final>>" if state.final else ""
        if state.compound:
            out.append(f"{indent}state {state.name}{stereotype} {{")
            out.append(f"{indent}  [*] --> {state.initial}")
            for child in _children(chart, state):
                draw(child, indent + "  ")
            out.append(f"{indent}}}")
        else:
            out.append(f"{indent}state {state.name}{stereotype}")
        for line in state_body(chart, state):
            out.append(f"{indent}{state.name} : {_plantuml_text(line)}")

    out.append(f"[*] --> {chart.initial}")
    for state in _top_level(chart):
        draw(state, "")
    for edge in _edges(chart):
        label = "\\n".join(_plantuml_text(text) for text in edge.labels)
        out.append(f"{edge.source} --> {edge.target} : {label}")
    for state in chart.states:
        if state.final:
            out.append(f"{state.name} --> [*]")
    out.append("@enduml")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------- Jupyter


def jupyter_bundle(chart: Chart) -> dict[str, str]:
    """The chart for Jupyter: an SVG when Graphviz is installed, and Mermaid in Markdown."""
    bundle = {"text/markdown": f"```mermaid\n{to_mermaid(chart)}```\n"}
    if shutil.which("dot") is not None:
        with contextlib.suppress(ConfigError):  # the Markdown still shows the chart
            bundle["image/svg+xml"] = render_graphviz(to_dot(chart), "svg").decode("utf-8")
    return bundle


DISPLAY_RENDERERS.append(jupyter_bundle)
