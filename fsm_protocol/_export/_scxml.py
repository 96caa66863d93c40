"""SCXML export and import: a chart as W3C State Chart XML, and back.

The export uses plain SCXML 1.0 wherever SCXML has the concept, so that other
statechart tools can load and draw the file:

=====================  ====================================================
chart                  SCXML
=====================  ====================================================
state, compound state  ``<state id=... initial=...>``, nested
final state            ``<final id=...>``
transition             ``<transition event=... target=...>``; none is
                       internal (no target); a target inside a compound
                       source has ``type="internal"``, as in our semantics
guards                 ``cond="g1 && !g2"`` (an ECMAScript expression)
actions                ``<script>name(_event)</script>``, one per action, in
                       the transition, ``<onentry>`` or ``<onexit>``
timer                  ``<send event=... delay="2.5s"|delayexpr="opt + 's'">``
                       in ``<onentry>``, ``<cancel>`` in ``<onexit>``
options                ``<datamodel><data id=... expr=.../></datamodel>``
=====================  ====================================================

What SCXML has no place for goes into attributes and elements of our own
namespace (:data:`FSM_NS`), which SCXML tools ignore: ``fsm:role``,
``fsm:version``, ``fsm:description``, ``fsm:do`` (the activity) and one
``<fsm:event name=... description=.../>`` per declared internal event.

One difference in meaning: a ``<final>`` nested in a compound state ends the
whole machine here, where SCXML would only complete its parent. The shipped
charts keep their final states at the top level, where both agree.

Import reads the same mapping back and then runs every check of
:func:`load_chart`, so a file from another tool either becomes a valid chart
or is refused with every problem at its line and column.
"""

from __future__ import annotations

import math
import re
import xml.parsers.expat
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import attrs

from .._base._errors import ChartError, ConfigError, Problem
from .._core._bindings import BindingNames
from .._core._chart import Chart, Location, Role, State, Transition
from .._core._loader import _Builder, _Located, _structure

SCXML_NS = "http://www.w3.org/2005/07/scxml"
"""The SCXML 1.0 namespace."""

FSM_NS = "urn:fsm-protocol:scxml"
"""Our namespace, for what SCXML has no place for (descriptions, activities, events)."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# XML Schema's NCName, restricted to ASCII: what an xsd:ID must look like.
_NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
# SCXML's EventType.datatype: name characters in dot-separated tokens.
_EVENT = re.compile(r"^[\w:\-]+(\.[\w:\-]+)*$")
_NMTOKEN = re.compile(r"^[\w:.\-]+$")
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ACTION_SCRIPT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(\s*_event\s*\)\s*;?\s*$")
_DELAY = re.compile(r"^\s*(\d*(?:\.\d+)?)(ms|s|m|h|d)\s*$")
_DELAY_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\+\s*(['\"])s\2\s*$")
_UNIT_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_UNIT_SECONDS["d"] = Decimal(86400)


# ------------------------------------------------------------------ export


def _number(value: float) -> str:
    """A float as exact decimal digits, never in exponent form (SCXML durations forbid it)."""
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    text = format(Decimal(repr(value)), "f")
    return text


def _attr(value: str) -> str:
    # Tabs and line breaks are written as references so attribute-value
    # normalization keeps them: a description comes back exactly as it went.
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _tag(name: str, attributes: list[tuple[str, str | None]], *, empty: bool) -> str:
    parts = [name]
    parts.extend(f'{key}="{_attr(value)}"' for key, value in attributes if value is not None)
    return "<" + " ".join(parts) + ("/>" if empty else ">")


def _timer_id(state: str, index: int) -> str:
    return f"{state}.after.{index}"


def _export_problems(chart: Chart) -> list[str]:
    """What SCXML cannot carry faithfully, worded for the person who wrote the chart."""
    found: list[str] = []

    def text(what: str, value: str) -> None:
        bad = _NOT_XML.search(value)
        if bad:
            found.append(f"{what} contains the character {bad.group()!r}, which XML cannot hold")

    text("the chart name", chart.name)
    text("the chart description", chart.description)
    states = {s.name for s in chart.states}
    for name, seconds in chart.options.items():
        if not _NCNAME.match(name) or name in states:
            found.append(
                f"option {name!r} cannot be an SCXML <data id>: use letters, digits and "
                "underscores, and a name that no state has"
            )
        if not math.isfinite(seconds):
            found.append(f"option {name!r} has the value {seconds}, which is not a number")
    for name, description in chart.events.items():
        text(f"the description of event {name!r}", description)
    for state in chart.states:
        if not _NCNAME.match(state.name):
            found.append(f"state name {state.name!r} is not an XML name")
        text(f"the description of state {state.name!r}", state.description)
        for action in (*state.on_entry, *state.on_exit, *([state.do] if state.do else [])):
            if not _NAME.match(action):
                found.append(f"action or activity {action!r} of {state.name!r} is not a name")
        for timer in state.after:
            if not _EVENT.match(timer.event):
                found.append(f"timer event {timer.event!r} is not an SCXML event name")
            if isinstance(timer.seconds, str):
                if not _NAME.match(timer.seconds):
                    found.append(f"timer option {timer.seconds!r} is not a name")
            elif not (math.isfinite(timer.seconds) and timer.seconds >= 0):
                found.append(f"timer of {state.name!r} has {timer.seconds} seconds")
    for t in chart.transitions:
        where = f"transition {t.source} --{t.event}-->"
        if not _EVENT.match(t.event):
            found.append(f"{where}: {t.event!r} is not an SCXML event name")
        for guard in t.guards:
            if not _NAME.match(guard.removeprefix("!")):
                found.append(f"{where}: guard {guard!r} is not a name (optionally with !)")
        for action in t.actions:
            if not _NAME.match(action):
                found.append(f"{where}: action {action!r} is not a name")
        text(f"the description of {where}", t.description)
    return found


def to_scxml(chart: Chart) -> str:
    """The chart as an SCXML 1.0 document.

    Args:
        chart: The chart to export.

    Returns:
        The XML text, UTF-8 ready. :func:`from_scxml` reads it back into an
        equal chart.

    Raises:
        ConfigError: The chart uses a name or a character that SCXML cannot
            carry (possible only for charts that name no role, whose names
            are not checked); the message lists each one.
    """
    problems = _export_problems(chart)
    if problems:
        raise ConfigError(
            f"chart {chart.name!r} cannot be written as SCXML: " + "; ".join(problems)
        )
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>']
    named = _NMTOKEN.match(chart.name) is not None
    out.append(
        _tag(
            "scxml",
            [
                ("xmlns", SCXML_NS),
                ("xmlns:fsm", FSM_NS),
                ("version", "1.0"),
                ("datamodel", "ecmascript"),
                ("name", chart.name if named else None),
                ("fsm:name", None if named else chart.name),
                ("initial", chart.initial),
                ("fsm:role", chart.role.value if chart.role is not None else None),
                ("fsm:version", str(chart.version)),
                ("fsm:description", chart.description or None),
            ],
            empty=False,
        )
    )
    for name, description in chart.events.items():
        out.append(
            "  " + _tag("fsm:event", [("name", name), ("description", description)], empty=True)
        )
    if chart.options:
        out.append("  <datamodel>")
        for name, seconds in chart.options.items():
            out.append(
                "    " + _tag("data", [("id", name), ("expr", _number(seconds))], empty=True)
            )
        out.append("  </datamodel>")
    for state in chart.states:
        if state.parent is None:
            _write_state(chart, state, out, "  ")
    out.append("</scxml>")
    return "\n".join(out) + "\n"


def _scripts(actions: tuple[str, ...], indent: str) -> list[str]:
    return [f"{indent}<script>{_text(name)}(_event)</script>" for name in actions]


def _write_state(chart: Chart, state: State, out: list[str], indent: str) -> None:
    tag = "final" if state.final else "state"
    out.append(
        indent
        + _tag(
            tag,
            [
                ("id", state.name),
                ("initial", state.initial),
                ("fsm:do", state.do),
                ("fsm:description", state.description or None),
            ],
            empty=False,
        )
    )
    inner = indent + "  "
    if state.on_entry or state.after:
        out.append(f"{inner}<onentry>")
        out.extend(_scripts(state.on_entry, inner + "  "))
        for i, timer in enumerate(state.after):
            delay: list[tuple[str, str | None]] = (
                [("delayexpr", f"{timer.seconds} + 's'")]
                if isinstance(timer.seconds, str)
                else [("delay", _number(timer.seconds) + "s")]
            )
            out.append(
                inner
                + "  "
                + _tag(
                    "send",
                    [("id", _timer_id(state.name, i)), ("event", timer.event), *delay],
                    empty=True,
                )
            )
        out.append(f"{inner}</onentry>")
    if state.on_exit or state.after:
        out.append(f"{inner}<onexit>")
        out.extend(_scripts(state.on_exit, inner + "  "))
        for i in range(len(state.after)):
            out.append(
                inner + "  " + _tag("cancel", [("sendid", _timer_id(state.name, i))], empty=True)
            )
        out.append(f"{inner}</onexit>")
    for t in chart.transitions:
        if t.source == state.name:
            _write_transition(chart, t, out, inner)
    for child in state.children:
        _write_state(chart, chart.state(child), out, inner)
    out.append(f"{indent}</{tag}>")


def _write_transition(chart: Chart, t: Transition, out: list[str], indent: str) -> None:
    # Invariant: our external transition to a state inside its (compound) source
    # leaves the source active; in SCXML that is type="internal".
    into_source = (
        t.target is not None and t.target != t.source and t.source in chart.ancestors(t.target)
    )
    attributes: list[tuple[str, str | None]] = [
        ("event", t.event),
        ("cond", " && ".join(t.guards) or None),
        ("target", t.target),
        ("type", "internal" if into_source else None),
        ("fsm:description", t.description or None),
    ]
    if not t.actions:
        out.append(indent + _tag("transition", attributes, empty=True))
        return
    out.append(indent + _tag("transition", attributes, empty=False))
    out.extend(_scripts(t.actions, indent + "  "))
    out.append(f"{indent}</transition>")


# ------------------------------------------------------------------ import


@attrs.define
class _Node:
    """One XML element with its position; ``ns`` is its namespace URI."""

    ns: str
    tag: str
    attributes: dict[tuple[str, str], str]
    line: int
    column: int
    children: list[_Node] = attrs.field(factory=list)
    text: str = ""

    def get(self, name: str, ns: str = "") -> str | None:
        return self.attributes.get((ns, name))

    def elements(self, ns: str = SCXML_NS) -> Iterator[_Node]:
        return (c for c in self.children if c.ns == ns)


class _Refused(Exception):
    def __init__(self, line: int, column: int, message: str, hint: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message, self.hint = line, column, message, hint


def _split(name: str) -> tuple[str, str]:
    ns, sep, local = name.rpartition(" ")
    return (ns, local) if sep else ("", name)


def _parse_xml(text: str) -> _Node:
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    stack: list[_Node] = []
    root: list[_Node] = []

    def start(name: str, attributes: dict[str, str]) -> None:
        ns, tag = _split(name)
        node = _Node(
            ns,
            tag,
            {_split(key): value for key, value in attributes.items()},
            parser.CurrentLineNumber,
            parser.CurrentColumnNumber + 1,
        )
        (stack[-1].children if stack else root).append(node)
        stack.append(node)

    def end(_name: str) -> None:
        stack.pop()

    def data(chunk: str) -> None:
        if stack:
            stack[-1].text += chunk

    def doctype(*_args: Any) -> None:
        # Entity definitions are how XML bombs work; SCXML needs no DOCTYPE.
        raise _Refused(
            parser.CurrentLineNumber,
            parser.CurrentColumnNumber + 1,
            "a DOCTYPE is not allowed in an SCXML chart",
            "remove the <!DOCTYPE ...> declaration",
        )

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    parser.StartDoctypeDeclHandler = doctype
    try:
        parser.Parse(text, True)
    except xml.parsers.expat.ExpatError as exc:
        raise _Refused(
            exc.lineno,
            exc.offset + 1,
            f"XML syntax error: {xml.parsers.expat.ErrorString(exc.code)}",
            "fix the XML syntax",
        ) from None
    return root[0]


@attrs.define
class _Reader:
    """SCXML elements -> the plain data a chart file holds, with locations."""

    located: _Located
    # The <send> element of each timer, by its id, and every type="external"
    # transition with a target, checked once the chart is built.
    timer_nodes: dict[str, _Node] = attrs.field(factory=dict)
    external: list[tuple[_Node, str, str]] = attrs.field(factory=list)

    def loc(self, node: _Node) -> Location:
        return Location(self.located.file, node.line, node.column)

    def mark(self, path: tuple[str | int, ...], node: _Node) -> None:
        self.located.values[path] = self.loc(node)
        self.located.keys[path] = self.loc(node)

    def problem(self, node: _Node, message: str, hint: str = "") -> None:
        self.located.problems.append(
            Problem(self.located.file, node.line, node.column, message, hint)
        )

    def unsupported(self, node: _Node, what: str, hint: str) -> None:
        self.problem(
            node, f"SCXML <{node.tag}> {what} is not supported by fsm-protocol charts", hint
        )

    def chart(self, root: _Node) -> dict[str, Any]:
        if root.ns != SCXML_NS or root.tag != "scxml":
            self.problem(
                root,
                f"the root element is <{root.tag}> in namespace {root.ns or 'none'!r}",
                f'an SCXML chart starts with <scxml xmlns="{SCXML_NS}" version="1.0">',
            )
            return {}
        self.mark((), root)
        data: dict[str, Any] = {}
        name = root.get("name") or root.get("name", FSM_NS)
        data["chart"] = name if name is not None else ""
        if name is None:
            self.problem(root, "the <scxml> element has no name", 'add name="my_chart"')
        role = root.get("role", FSM_NS)
        if role is not None:
            data["role"] = role
        version = root.get("version", FSM_NS)
        if version is not None:
            try:
                data["version"] = int(version)
            except ValueError:
                self.problem(
                    root, f"fsm:version {version!r} is not an integer", 'use fsm:version="1"'
                )
        description = root.get("description", FSM_NS)
        if description is not None:
            data["description"] = description
        options: dict[str, float] = {}
        events: dict[str, str] = {}
        states: dict[str, Any] = {}
        for node in root.children:
            if node.ns == FSM_NS and node.tag == "event":
                self.event(node, events)
            elif node.ns == SCXML_NS and node.tag == "datamodel":
                self.datamodel(node, options)
            elif node.ns == SCXML_NS and node.tag in ("state", "final"):
                self.state(node, ("states",), states)
            elif node.ns == SCXML_NS:
                self.unsupported(node, "at the top level", "use <state>, <final> and <datamodel>")
        initial = root.get("initial")
        if initial is None:
            # SCXML's default: the first child state in document order.
            initial = next(iter(states), "")
        if len(initial.split()) > 1:
            self.problem(root, f"initial {initial!r} names several states", "name one state")
        data["initial"] = initial
        self.mark(("initial",), root)
        data["options"] = options
        data["events"] = events
        data["states"] = states
        return data

    def event(self, node: _Node, events: dict[str, str]) -> None:
        name = node.get("name")
        if name is None:
            self.problem(node, "<fsm:event> has no name", 'add name="my_event"')
            return
        self.mark(("events", name), node)
        events[name] = node.get("description") or ""

    def datamodel(self, node: _Node, options: dict[str, float]) -> None:
        for data in node.children:
            if data.ns != SCXML_NS:
                continue
            name = data.get("id")
            expr = data.get("expr")
            if data.tag != "data" or name is None:
                self.unsupported(
                    data, "in <datamodel>", 'options are <data id="name" expr="seconds"/>'
                )
                continue
            self.mark(("options", name), data)
            try:
                options[name] = float(expr) if expr is not None else math.nan
            except ValueError:
                options[name] = math.nan
            if not math.isfinite(options[name]):
                del options[name]
                self.problem(
                    data,
                    f"option {name!r} has no number of seconds (expr={expr!r})",
                    'give it a number: expr="180"',
                )

    def state(self, node: _Node, path: tuple[str | int, ...], into: dict[str, Any]) -> None:
        name = node.get("id")
        if name is None:
            self.problem(
                node, f"<{node.tag}> has no id", 'add id="my_state"; every state needs a name'
            )
            return
        spath = (*path, name)
        if name in into:
            first = self.located.keys[spath]
            self.problem(
                node,
                f"duplicate state {name!r}",
                f"first defined at line {first.line}; state names are unique across the chart",
            )
            return
        self.mark(spath, node)
        raw: dict[str, Any] = {}
        into[name] = raw
        if node.tag == "final":
            raw["final"] = True
        for key in ("description", "do"):
            value = node.get(key, FSM_NS)
            if value is not None:
                raw[key] = value
        initial = node.get("initial")
        transitions: list[dict[str, Any]] = []
        children: dict[str, Any] = {}
        timers: dict[str, dict[str, Any]] = {}
        on_entry: list[str] = []
        on_exit: list[str] = []
        cancels: list[_Node] = []
        for child in node.children:
            if child.ns != SCXML_NS:
                continue
            if child.tag == "onentry":
                self.actions(child, on_entry, timers=timers, name=name)
            elif child.tag == "onexit":
                self.actions(child, on_exit, cancels=cancels)
            elif child.tag == "transition" and node.tag == "state":
                self.transition(child, name, (*spath, "transitions", len(transitions)), transitions)
            elif child.tag in ("state", "final") and node.tag == "state":
                self.state(child, (*spath, "states"), children)
            elif child.tag == "initial" and node.tag == "state":
                initial = self.initial_element(child)
            elif child.tag == "parallel":
                self.unsupported(child, "(parallel regions)", "use compound states")
            elif child.tag == "history":
                self.unsupported(
                    child, "(history states)", "enter the compound state's initial state"
                )
            elif child.tag == "invoke":
                self.unsupported(child, "", 'name the state\'s activity with fsm:do="name"')
            else:
                self.unsupported(
                    child, f"inside <{node.tag}>", "see the SCXML mapping in docs/diagrams.md"
                )
        for cancel in cancels:
            if cancel.get("sendid") not in timers:
                self.unsupported(cancel, "other than of this state's own timers", "remove it")
        if on_entry:
            raw["on_entry"] = on_entry
        if on_exit:
            raw["on_exit"] = on_exit
        if timers:
            raw["after"] = list(timers.values())
            for i, timer_id in enumerate(timers):
                self.mark((*spath, "after", i), self.timer_nodes[timer_id])
        if transitions:
            raw["transitions"] = transitions
        if children:
            raw["states"] = children
            if initial is None:
                initial = next(iter(children))  # SCXML's default: the first child
        if initial is not None:
            raw["initial"] = initial
            self.mark((*spath, "initial"), node)

    def initial_element(self, node: _Node) -> str | None:
        transitions = list(node.elements())
        if len(transitions) != 1 or transitions[0].tag != "transition":
            self.problem(node, "<initial> must hold one <transition>", 'or use initial="child"')
            return None
        t = transitions[0]
        if list(t.elements()) or t.get("target") is None:
            self.unsupported(node, "with executable content", 'use initial="child"')
            return None
        return t.get("target")

    def actions(
        self,
        node: _Node,
        names: list[str],
        *,
        timers: dict[str, dict[str, Any]] | None = None,
        name: str = "",
        cancels: list[_Node] | None = None,
    ) -> None:
        for item in node.children:
            if item.ns != SCXML_NS:
                continue
            if item.tag == "script":
                match = _ACTION_SCRIPT.match(item.text)
                if match is None:
                    self.problem(
                        item,
                        f"<script> {item.text.strip()!r} is not an action call",
                        "write one action per script: <script>name(_event)</script>",
                    )
                    continue
                names.append(match.group(1))
            elif item.tag == "send" and timers is not None:
                self.timer(item, timers, name)
            elif item.tag == "cancel" and cancels is not None:
                cancels.append(item)
            else:
                self.unsupported(
                    item,
                    f"in <{node.tag}>",
                    "actions are <script>name(_event)</script>; timers are <send delay=...>",
                )

    def timer(self, node: _Node, timers: dict[str, dict[str, Any]], state: str) -> None:
        event = node.get("event")
        delay, delay_expr = node.get("delay"), node.get("delayexpr")
        seconds: float | str | None = None
        if delay is not None and (match := _DELAY.match(delay)) and match.group(1):
            seconds = float(Decimal(match.group(1)) * _UNIT_SECONDS[match.group(2)])
        elif delay_expr is not None and (match := _DELAY_EXPR.match(delay_expr)):
            seconds = match.group(1)
        if event is None or seconds is None or node.get("target") or node.get("type"):
            self.unsupported(
                node,
                "other than a timer",
                'a timer is <send event="e" delay="2.5s"/> or delayexpr="option + \'s\'"',
            )
            return
        timer_id = node.get("id") or f"{state}.after.{len(timers)}"
        timers[timer_id] = {"seconds": seconds, "event": event}
        self.timer_nodes[timer_id] = node

    def transition(
        self,
        node: _Node,
        source: str,
        path: tuple[str | int, ...],
        into: list[dict[str, Any]],
    ) -> None:
        self.mark(path, node)
        event = node.get("event")
        if event is None or len(event.split()) != 1:
            self.unsupported(
                node,
                "without exactly one event" if event is None else f"with several events {event!r}",
                "give each transition one event",
            )
            return
        raw: dict[str, Any] = {"event": event}
        target = node.get("target")
        if target is not None:
            if len(target.split()) != 1:
                self.unsupported(node, f"with several targets {target!r}", "name one target state")
                return
            raw["target"] = target
        cond = node.get("cond")
        if cond is not None:
            guards = [g.strip() for g in cond.split("&&")]
            if not all(_NAME.match(g.removeprefix("!")) for g in guards):
                self.problem(
                    node,
                    f"cond {cond!r} is not a conjunction of guard names",
                    'write guards as cond="g1 && !g2"',
                )
                return
            raw["guards"] = guards
        actions: list[str] = []
        self.actions(node, actions)
        if actions:
            raw["actions"] = actions
        description = node.get("description", FSM_NS)
        if description is not None:
            raw["description"] = description
        if node.get("type") == "external" and target is not None and target != source:
            self.external.append((node, source, target))
        into.append(raw)

    def check_external(self, chart: Chart) -> None:
        """``type="external"`` to a state inside the source would exit the source here too."""
        for node, source, target in self.external:
            if chart.has_state(target) and source in chart.ancestors(target):
                self.problem(
                    node,
                    f"transition from {source!r} into its own descendant {target!r} has "
                    'type="external", which exits and re-enters the source',
                    'fsm-protocol leaves the source active: drop type="external", or target '
                    "the source itself to re-enter it",
                )


def check_scxml_text(
    text: str,
    *,
    file: str = "<memory>",
    bindings: BindingNames | None = None,
    role_bindings: Mapping[Role, BindingNames] | None = None,
) -> tuple[Chart | None, list[Problem]]:
    """Read an SCXML document as a chart, returning the chart (or None) and every problem.

    ``bindings`` and ``role_bindings`` are as for :func:`check_chart_text`.
    """
    located = _Located(file)
    try:
        root = _parse_xml(text)
    except _Refused as exc:
        return None, [Problem(file, exc.line, exc.column, exc.message, exc.hint)]
    reader = _Reader(located)
    data = reader.chart(root)
    if located.problems:
        return None, sorted(located.problems, key=lambda p: (p.line, p.column))
    raw = _structure(data, located)
    chart = None if raw is None else _Builder(raw, located, bindings, role_bindings).build()
    if chart is not None:
        reader.check_external(chart)
        if located.problems:
            chart = None
    return chart, sorted(located.problems, key=lambda p: (p.line, p.column))


def from_scxml(text: str, *, file: str = "<memory>", bindings: BindingNames | None = None) -> Chart:
    """Read a chart from SCXML text, as written by :func:`to_scxml` or another tool.

    Args:
        text: The XML document.
        file: The file name to show in problems and to record as the chart's source.
        bindings: The guard, action and activity names to check against; by
            default they are not checked (as for :func:`load_chart`).

    Returns:
        The validated chart; ``from_scxml(to_scxml(chart)) == chart``.

    Raises:
        ChartError: With every problem found, each at the line and column of
            its element: XML syntax, SCXML features that charts do not have
            (parallel and history states, several targets, other executable
            content), and every check that :func:`load_chart` makes.
    """
    chart, problems = check_scxml_text(text, file=file, bindings=bindings)
    if chart is None:
        raise ChartError(problems)
    return chart
