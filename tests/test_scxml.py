"""SCXML export and import: round trips, another implementation loads them, foreign files.

Whether the exported SCXML means what the chart means is checked by running it in
python-statemachine's SCXML interpreter: tests/test_scxml_interop.py.
"""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsm_protocol import Chart, ChartError, ConfigError, load_chart_text, shipped_chart
from fsm_protocol._export._scxml import FSM_NS, SCXML_NS, from_scxml, to_scxml

from .scxml_reference import load

etree = pytest.importorskip("lxml.etree")


def assert_valid_scxml(text: str) -> None:
    """python-statemachine's SCXML reader loads it; ids are unique and every reference resolves.

    python-statemachine accepts a duplicate id and any version, so those two are ours to check.
    """
    load(text)
    document = etree.fromstring(text.encode("utf-8"))
    assert document.get("version") == "1.0", "SCXML documents are version 1.0"
    found = [e.get("id") for e in document.iter(f"{{{SCXML_NS}}}state", f"{{{SCXML_NS}}}final")]
    assert len(found) == len(set(found)), f"duplicate state ids in {found}"
    for element in document.iter():
        for key in ("initial", "target"):
            for ref in (element.get(key) or "").split():
                assert ref in found, f"{key}={ref!r} names no state"


# ------------------------------------------------------------- the shipped charts


@pytest.mark.parametrize("name", ["worker", "modeller"])
def test_shipped_charts_round_trip(name: str) -> None:
    chart = shipped_chart(name)
    text = to_scxml(chart)
    assert from_scxml(text, file=f"{name}.scxml") == chart


@pytest.mark.parametrize("name", ["worker", "modeller"])
def test_shipped_charts_load_in_another_scxml_implementation(name: str) -> None:
    assert_valid_scxml(to_scxml(shipped_chart(name)))


def test_the_load_check_catches_broken_documents() -> None:
    text = to_scxml(shipped_chart("worker"))
    with pytest.raises(AssertionError, match=r"version 1\.0"):
        assert_valid_scxml(text.replace('version="1.0" datamodel', 'version="2.0" datamodel'))
    with pytest.raises(AssertionError, match="duplicate state ids"):
        assert_valid_scxml(text.replace('<state id="idle"', '<state id="vetting"'))
    with pytest.raises(Exception, match="clsed"):
        assert_valid_scxml(text.replace('target="closed"', 'target="clsed"'))
    with pytest.raises(Exception, match="no element found"):
        assert_valid_scxml(text.replace("</scxml>", ""))


def test_export_uses_plain_scxml_where_scxml_has_the_concept() -> None:
    text = to_scxml(shipped_chart("worker"))
    root = etree.fromstring(text.encode())
    s = f"{{{SCXML_NS}}}"
    assert root.get("initial") == "idle" and root.get("datamodel") == "ecmascript"
    assert root.get(f"{{{FSM_NS}}}role") == "worker"
    data = {d.get("id"): d.get("expr") for d in root.iter(f"{s}data")}
    assert data == {
        "task_start_timeout_s": "1170",
        "soft_timeout_s": "180",
        "hard_timeout_s": "180",
    }
    (listening,) = [e for e in root.iter(f"{s}state") if e.get("id") == "setup_listening"]
    send = listening.find(f"{s}onentry/{s}send")
    assert send is not None
    assert send.get("event") == "soft_timeout"
    assert send.get("delayexpr") == "soft_timeout_s + 's'"
    cancel = listening.find(f"{s}onexit/{s}cancel")
    assert cancel is not None and cancel.get("sendid") == send.get("id")
    guarded = [
        t for t in root.iter(f"{s}transition") if t.get("cond") == "count_is_one && !batched_job"
    ]
    assert guarded and guarded[0].get("target") == "single_ready"
    store = [t for t in root.iter(f"{s}transition") if t.get("event") == "recv:JOB_REQUEST"]
    assert [e.text for e in store[0]] == ["store_job(_event)"]
    internal = [t for t in root.iter(f"{s}transition") if t.get("event") == "recv:ONLINE_RESPONSE"]
    assert any(t.get("target") is None for t in internal)
    assert [f.get("id") for f in root.iter(f"{s}final")] == [
        "rejected",
        "complete",
        "aborted",
        "closed",
    ]
    vetting = next(e for e in root.iter(f"{s}state") if e.get("id") == "vetting")
    assert vetting.get(f"{{{FSM_NS}}}do") == "vet_job"


# --------------------------------------------------------------- small charts

_NAMES = st.sampled_from
_TEXT = st.text(
    st.characters(
        blacklist_categories=("Cc", "Cs", "Co", "Cn", "Zl", "Zp", "Cf"),
        whitelist_characters="\n\t",
    ),
    max_size=12,
)


# Milliseconds: PyYAML (YAML 1.1) reads 5e-324 as a string, so keep to plain decimals.
def _SECONDS(least: int) -> st.SearchStrategy[float]:
    return st.integers(least, 10**9).map(lambda n: n / 1000)


_MESSAGES = ["recv:TASK_START", "send:TASK_ABORT", "recv:LOG_MESSAGE", "send:CURRENT_BATCH_ID"]


@st.composite
def small_charts(draw: st.DrawFn) -> Chart:
    """Valid charts of up to 7 states: nesting, finals, timers, guards, internal arcs.

    Built as chart-file data, then loaded, so each is what a user could write.
    """
    count = draw(st.integers(1, 6))
    parents: list[int | None] = [None]
    for i in range(1, count):
        parents.append(draw(st.none() | st.integers(0, i - 1)))
    names = [f"s{i}" for i in range(count)]
    children: dict[int | None, list[int]] = {}
    for i, parent in enumerate(parents):
        children.setdefault(parent, []).append(i)
    events = {f"e{i}": draw(_TEXT) for i in range(draw(st.integers(1, 4)))}
    options = {f"o{i}": draw(_SECONDS(0)) for i in range(draw(st.integers(0, 2)))}
    pool = list(events) + _MESSAGES
    raw: dict[int, dict[str, Any]] = {i: {} for i in range(count)}
    used: dict[str, set[str]] = {name: set() for name in names}
    finals: dict[str, int | None] = {}

    def transitions(i: int) -> list[dict[str, Any]]:
        return raw[i].setdefault("transitions", [])

    def fresh_event(i: int) -> str | None:
        free = [e for e in pool if e not in used[names[i]]]
        if not free:
            return None
        event = draw(st.sampled_from(free))
        used[names[i]].add(event)
        return event

    # Every compound state enters one of its own (non-final) children.
    for parent, kids in children.items():
        if parent is not None:
            raw[parent]["initial"] = names[draw(st.sampled_from(kids))]
    chart_initial = names[draw(st.sampled_from(children[None]))]

    def settle(name: str) -> int:
        i = names.index(name)
        while "initial" in raw[i]:
            i = names.index(raw[i]["initial"])
        return i

    # A chain through every non-final leaf, from the start, ends in the first final.
    leaves = [i for i in range(count) if i not in children]
    start = settle(chart_initial)
    chain = [start] + [i for i in leaves if i != start]
    finals["f0"] = None
    for i, nxt in zip(chain, [*[names[j] for j in chain[1:]], "f0"], strict=True):
        event = fresh_event(i)
        assert event is not None
        transitions(i).append({"event": event, "target": nxt})
    # More final states, some nested, each the target of some leaf.
    for k in range(1, draw(st.integers(1, 3))):
        compounds = [i for i in range(count) if i in children]
        finals[f"f{k}"] = draw(st.none() | st.sampled_from(compounds)) if compounds else None
        source = draw(st.sampled_from(leaves))
        event = fresh_event(source)
        if event is None:
            del finals[f"f{k}"]
            continue
        transitions(source).append({"event": event, "target": f"f{k}"})
    targets = names + list(finals)
    # Extra transitions: internal or external, guarded, with actions.
    for _ in range(draw(st.integers(0, 5))):
        source = draw(st.integers(0, count - 1))
        event = fresh_event(source)
        if event is None:
            continue
        arc: dict[str, Any] = {"event": event}
        target = draw(st.none() | st.sampled_from(targets))
        if target is not None:
            arc["target"] = target
        guards = draw(st.lists(_NAMES(["g0", "g1", "!g0", "!g2"]), max_size=2, unique=True))
        if guards:
            arc["guards"] = guards
        actions = draw(st.lists(_NAMES(["a0", "a1", "a2"]), max_size=3))
        if actions:
            arc["actions"] = actions
        description = draw(_TEXT)
        if description:
            arc["description"] = description
        transitions(source).append(arc)
    for i in range(count):
        state = raw[i]
        if draw(st.booleans()):
            state["description"] = draw(_TEXT)
        if draw(st.booleans()):
            state["on_entry"] = draw(st.lists(_NAMES(["a0", "a3"]), min_size=1, max_size=2))
        if draw(st.booleans()):
            state["on_exit"] = draw(st.lists(_NAMES(["a1", "a3"]), min_size=1, max_size=2))
        if draw(st.booleans()):
            state["do"] = draw(_NAMES(["work", "wait"]))
        if draw(st.booleans()):
            seconds = draw(
                st.sampled_from(list(options)) if options and draw(st.booleans()) else _SECONDS(1)
            )
            state["after"] = [{"seconds": seconds, "event": draw(st.sampled_from(list(events)))}]

    def nest(parent: int | None) -> dict[str, Any]:
        out = {
            names[i]: {**raw[i], **({"states": nest(i)} if i in children else {})}
            for i in children.get(parent, [])
        }
        for name, where in finals.items():
            if where == parent:
                out[name] = {"final": True}
        return out

    alphabet = string.ascii_letters + string.digits + " -_.:é"
    data = {
        "chart": draw(st.text(alphabet, min_size=1, max_size=10)),
        "version": 1,
        "description": draw(_TEXT),
        "initial": chart_initial,
        "options": options,
        "events": events,
        "states": nest(None),
    }
    # JSON is YAML, and keeps every string exactly as drawn.
    return load_chart_text(json.dumps(data, ensure_ascii=False), file="generated.json")


@given(small_charts())
def test_small_charts_round_trip_and_validate(chart: Chart) -> None:
    text = to_scxml(chart)
    assert_valid_scxml(text)
    assert from_scxml(text) == chart


def test_a_description_keeps_its_line_breaks_tabs_and_markup() -> None:
    chart = load_chart_text(
        json.dumps(
            {
                "chart": "x",
                "description": "a\nb\r\n\tc <d> & \"e\" 'f'",
                "initial": "a",
                "states": {
                    "a": {"transitions": [{"event": "recv:TASK_START", "target": "z"}]},
                    "z": {"final": True},
                },
            }
        )
    )
    assert from_scxml(to_scxml(chart)).description == chart.description


def test_a_chart_name_that_is_no_xml_token_goes_into_our_namespace() -> None:
    chart = load_chart_text(
        "chart: my chart\ninitial: a\nstates: {a: {transitions: [{event: recv:TASK_START, "
        "target: z}]}, z: {final: true}}\n"
    )
    text = to_scxml(chart)
    assert 'fsm:name="my chart"' in text and " name=" not in text
    assert_valid_scxml(text)
    assert from_scxml(text) == chart


def test_export_refuses_what_scxml_cannot_carry() -> None:
    # Without a role, names are not checked against bindings, so anything goes.
    chart = load_chart_text(
        "chart: x\ninitial: a\nevents: {tick: t}\nstates:\n"
        "  a: {transitions: [{event: tick, target: z, guards: ['is ready'], actions: ['do it']}]}\n"
        "  z: {final: true}\n"
    )
    with pytest.raises(ConfigError) as info:
        to_scxml(chart)
    message = str(info.value)
    assert "guard 'is ready' is not a name" in message
    assert "action 'do it' is not a name" in message


# ----------------------------------------------------------- foreign documents

FOREIGN = """<?xml version="1.0"?>
<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" name="door">
  <datamodel><data id="close_s" expr="30"/></datamodel>
  <state id="closed">
    <transition event="open" target="opened"/>
  </state>
  <state id="opened">
    <initial><transition target="swinging"/></initial>
    <onentry><send event="auto_close" delay="500ms"/></onentry>
    <state id="swinging">
      <transition event="auto_close" target="gone"/>
    </state>
  </state>
  <final id="gone"/>
</scxml>
"""


def test_a_foreign_document_loads_with_scxml_defaults() -> None:
    # Events need declaring in our charts; a foreign file declares them with fsm:event.
    text = FOREIGN.replace(
        "<datamodel>",
        f'<e:event xmlns:e="{FSM_NS}" name="open"/>'
        f'<e:event xmlns:e="{FSM_NS}" name="auto_close"/><datamodel>',
    )
    chart = from_scxml(text, file="door.scxml")
    assert chart.name == "door" and chart.initial == "closed"  # the first state
    assert chart.state("opened").initial == "swinging"
    (timer,) = chart.state("opened").after
    assert (timer.seconds, timer.event) == (0.5, "auto_close")
    assert chart.options == {"close_s": 30.0}
    assert chart.source == "door.scxml"
    assert chart.state("swinging").loc.line == 10


def test_problems_are_reported_at_their_element() -> None:
    with pytest.raises(ChartError) as info:
        from_scxml(FOREIGN, file="door.scxml")
    lines = {(p.line, p.message) for p in info.value.problems}
    assert (5, "event 'open' is neither a message event (send:TYPE, recv:TYPE) nor declared") in {
        (line, message) for line, message in lines
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('<final id="gone"/>', '<parallel id="p"/><final id="gone"/>'), "<parallel>"),
        (('target="opened"', 'target="opened gone"'), "several targets"),
        (('<transition event="open"', '<transition event="open" cond="x || y"'), "conjunction"),
        (('<transition event="open" ', "<transition "), "without exactly one event"),
        (("<scxml ", '<!DOCTYPE scxml [<!ENTITY a "b">]>\n<scxml '), "DOCTYPE"),
        (("</scxml>", ""), "XML syntax error"),
        (('delay="500ms"', 'delay="soon"'), "other than a timer"),
    ],
)
def test_unsupported_or_broken_documents_are_refused(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ChartError, match=message):
        from_scxml(FOREIGN.replace(*change), file="door.scxml")


def test_external_transition_into_the_source_is_refused() -> None:
    chart = load_chart_text(
        "chart: x\ninitial: a\nevents: {go: g}\nstates:\n"
        "  a:\n    initial: b\n    transitions: [{event: go, target: c}]\n"
        "    states: {b: {transitions: [{event: recv:TASK_START, target: z}]},\n"
        "             c: {transitions: [{event: recv:TASK_START, target: z}]}}\n"
        "  z: {final: true}\n"
    )
    text = to_scxml(chart)
    assert 'target="c" type="internal"' in text
    assert from_scxml(text) == chart
    with pytest.raises(ChartError, match='type="external", which exits and re-enters'):
        from_scxml(text.replace('type="internal"', 'type="external"'))
