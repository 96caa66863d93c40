"""The checker's fast path holds every line to the wire value rule exactly as decode() does.

The fast path parses with the plain C JSON decoder (no Python hook per object or integer)
and proves the value rule by counting a line's structure bytes (see ``_wire/_messages.py``,
"Plain parsing"). These tests hold that proof to decode(): a line that breaks the rule is
refused with decode()'s own message and the same rule id, and a valid line whose strings
hold structure bytes is still accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fsm_protocol import DecodeError, decode
from fsm_protocol._check._checker import TraceChecker, _decode_rule
from fsm_protocol._wire._messages import (
    _STRUCTURE,
    _keeps_value_rule,
    _plain_extent,
    _plain_json_decoder,
)
from fsm_protocol.conformance import check_trace

TRACES = Path(__file__).parent / "traces"
BIG = 2**53 + 1


def _line(**fields: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "v": 1,
        "type": "EVALUATION_RESULTS",
        "task_id": "t",
        "sender": "a/p",
        "recipient": "modeller",
        "seq": 3,
        "body": {"items": ["i0"]},
        "meta": {"batch_number": 0},
    }
    line.update(fields)
    return line


def _text(line: dict[str, Any], old: str = "", new: str = "") -> str:
    """The line as compact JSON, with the text ``old`` (a placeholder) replaced by ``new``."""
    return json.dumps(line, separators=(",", ":")).replace(old, new, 1) + "\n"


def _raw(line: dict[str, Any], old: str = "", new: str = "") -> bytes:
    return _text(line, old, new).encode()


def _decode_verdict(raw: bytes | str) -> DecodeError | None:
    try:
        decode(raw)
    except DecodeError as exc:
        return exc
    return None


def _assert_refused_as_decode_refuses(raw: bytes | str, rule: str | None = None) -> None:
    refused = _decode_verdict(raw)
    assert refused is not None, raw
    finding = TraceChecker().feed(raw)
    assert finding is not None
    assert finding.rule == _decode_rule(refused, raw)
    assert finding.message == f"invalid message: {refused} [{finding.rule}]"
    if rule is not None:
        assert finding.rule == rule


_BREAKING = [
    # A repeated key, in the envelope, the body or meta (the plain parser keeps the last).
    ("envelope key twice", _raw(_line(seq="@"), '"seq":"@"', '"seq":3,"seq":3'), "E-2.5"),
    (
        "type twice",
        _raw(_line(type="@"), '"type":"@"', '"type":"TASK_START","type":"TASK_START"'),
        "E-2.3",
    ),
    ("body key twice", _raw(_line(body="@"), '"@"', '{"items":["i0"],"items":["i0"]}'), "E-2.7"),
    (
        "accept key twice",
        _raw(_line(type="JOB_ACCEPT", body="@", meta={}), '"@"', '{"ACCEPT":"a/p","ACCEPT":"a/p"}'),
        "W-3.4",
    ),
    (
        "meta key twice",
        _raw(_line(meta="@"), '"@"', '{"batch_number":0,"batch_number":0}'),
        "E-2.9",
    ),
    (
        "nested key twice",
        _raw(_line(body="@"), '"@"', '{"items":["i0"],"x":[{"k":1,"k":1}]}'),
        "E-2.7",
    ),
    # Integers beyond ±2^53, wherever they are.
    ("big seq", _raw(_line(seq=BIG)), "E-2.5"),
    ("big batch id", _raw(_line(type="CURRENT_BATCH_ID", body=BIG, meta={})), "W-3.9"),
    ("big count", _raw(_line(type="NUMBER_OF_BATCHES", body=BIG, meta={})), "W-3.8"),
    ("big batch number", _raw(_line(meta={"batch_number": BIG})), "E-2.9"),
    ("big int in results", _raw(_line(body={"items": ["i0"], "n": -BIG})), "E-2.7"),
    ("big int as results", _raw(_line(body=10**30)), "E-2.7"),
    ("big unknown meta", _raw(_line(meta={"batch_number": 0, "future": [BIG]})), "E-2.9"),
    (
        "big amount",
        _raw(
            _line(
                meta={
                    "batch_number": 0,
                    "resources_consumed": [
                        {"resource_type": "x", "resource_identifier": "y", "amount": BIG}
                    ],
                }
            )
        ),
        "E-2.9",
    ),
    # Numbers that overflow a double.
    ("infinite result", _raw(_line(body="@"), '"@"', '{"items":["i0"],"x":1e999}'), "E-2.7"),
    ("infinite, long form", _raw(_line(body="@"), '"@"', "-1" + "0" * 400 + ".5"), "E-2.7"),
    ("infinite in meta", _raw(_line(meta="@"), '"@"', '{"batch_number":0,"x":1E+400}'), "E-2.9"),
    # Lone UTF-16 surrogates, escaped, in values and keys.
    ("lone surrogate", _raw(_line(body="@"), '"@"', '{"items":["\\ud800"]}'), "E-2.7"),
    ("lone surrogate key", _raw(_line(body="@"), '"@"', '{"items":[],"\\udc00":1}'), "E-2.7"),
    ("lone surrogate id", _raw(_line(task_id="@"), '"@"', '"t\\udbff"'), "E-2.4"),
    (
        "lone surrogate check",
        _raw(_line(type="ONLINE_CHECK", body="@", meta={}), '"@"', '"\\ude00x"'),
        "W-3.12",
    ),
    # Nesting beyond 64 levels (the envelope is level 1).
    ("too deep", _raw(_line(body="@"), '"@"', "[" * 64 + "]" * 64), "E-2.7"),
    (
        "too deep in meta",
        _raw(_line(meta="@"), '"@"', '{"x":' + "[" * 63 + "]" * 63 + "}"),
        "E-2.9",
    ),
]


@pytest.mark.parametrize(
    ("raw", "rule"), [(raw, rule) for _, raw, rule in _BREAKING], ids=[n for n, _, _ in _BREAKING]
)
def test_a_line_that_breaks_the_value_rule_is_refused_as_decode_refuses_it(
    raw: bytes, rule: str
) -> None:
    _assert_refused_as_decode_refuses(raw, rule)
    _assert_refused_as_decode_refuses(raw.decode(), rule)


def test_nesting_of_exactly_64_levels_is_accepted() -> None:
    raw = _raw(_line(body="@"), '"@"', "[" * 63 + "]" * 63)
    assert _decode_verdict(raw) is None
    finding = TraceChecker().feed(raw)
    assert finding is not None and finding.rule == "E-4.1"  # a lone line: no JOB_REQUEST


def test_a_line_given_as_text_with_a_raw_lone_surrogate_is_refused() -> None:
    text = _raw(_line(body={"items": ["@"]})).decode().replace("@", "\ud800")
    _assert_refused_as_decode_refuses(text, "E-2.7")


def test_a_lone_surrogate_refused_in_its_trace_position() -> None:
    """Where the chart expects results, the value rule still comes first."""
    lines = (TRACES / "good-single-run.jsonl").read_bytes().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if b'"EVALUATION_RESULTS"' in line)
    obj = json.loads(lines[at])
    obj["body"] = {"items": obj["body"]["items"], "x": "@"}
    bad = json.dumps(obj, separators=(",", ":")).replace('"@"', '"\\ud800"').encode() + b"\n"
    for huge in (bad, bad.replace(b'"\\ud800"', str(BIG).encode())):
        finding = check_trace([*lines[:at], huge, *lines[at + 1 :]]).finding
        refused = _decode_verdict(huge)
        assert refused is not None and finding is not None and finding.line == at + 1
        assert finding.message == f"invalid message: {refused} [{finding.rule}]"


def _renamed(raw: bytes, names: dict[str, str]) -> bytes:
    obj = json.loads(raw)
    for key in ("task_id", "sender", "recipient"):
        obj[key] = names.get(obj[key], obj[key])
    if obj["type"] == "JOB_ACCEPT":
        obj["body"] = {"ACCEPT": names[obj["body"]["ACCEPT"]]}
    if obj["type"] == "JOB_REQUEST":
        pods = obj["body"]["pod_identifiers"]
        obj["body"]["pod_identifiers"] = [names.get(pod, pod) for pod in pods]
    return json.dumps(obj, ensure_ascii=True).encode() + b"\n"


@pytest.mark.parametrize("name", ["good-resilience.jsonl", "good-abort-cancels-other.jsonl"])
def test_structure_bytes_inside_strings_keep_a_good_trace_good(name: str) -> None:
    """Names holding ':', '{', '[', escapes and non-ASCII defeat the count, not the verdict."""
    lines = (TRACES / name).read_bytes().splitlines(keepends=True)
    first = json.loads(lines[0])
    pods = {json.loads(line)["sender"] for line in lines} - {first["sender"]}
    names = {first["task_id"]: 't:{[\\"é"]}', **{pod: f"{pod}:\U0001f600[" for pod in pods}}
    renamed = [_renamed(line, names) for line in lines]
    assert b"\\ud83d\\ude00" in renamed[-1]  # a valid surrogate pair, escaped
    result = check_trace(renamed)
    assert result.ok, result.finding and result.finding.render()


# ------------------------------------------------------- the counting proof, fuzzed


_KEY = st.sampled_from(['"a"', '"b"', '"a:b"', '"{["', '"\\\\"', '"\\ud800"', '"\\u00e9"', '"é"'])
_NUMBER = st.sampled_from(
    [
        "0",
        "-1",
        "9007199254740992",
        "-9007199254740992",
        "9007199254740993",
        "-12345678901234567890",
        "1.5",
        "-0.0",
        "1e308",
        "1e309",
        "-1E+400",
        "1e-999",
        "999999999999999.9e99",
        "1" + "0" * 309,
    ]
) | st.integers(-(2**60), 2**60).map(str)
_STRING = st.text(st.sampled_from(list('az:{[]}\\"é\x00\ud800\udc00\U0001f600')), max_size=5).map(
    lambda s: json.dumps(s, ensure_ascii=False)
) | st.sampled_from(['"\\ud800\\udc00"', '"\\udc00\\ud800"', '"\\ud800"', '"\\u0041"'])
_SCALAR = _NUMBER | _STRING | st.sampled_from(["true", "false", "null"])


def _containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pairs = st.lists(st.tuples(_KEY | _STRING, children), max_size=4)
    return (
        pairs.map(lambda ps: "{" + ",".join(f"{k}:{v}" for k, v in ps) + "}")
        | st.lists(children, max_size=4).map(lambda vs: "[" + ",".join(vs) + "]")
        | st.tuples(st.integers(60, 66), children).map(lambda d: "[" * d[0] + d[1] + "]" * d[0])
    )


_JSON_TEXT = st.recursive(_SCALAR, _containers, max_leaves=8)


def _utf8(text: str) -> bytes | None:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a raw lone surrogate: no UTF-8 form, decode() refuses the line
        return None


@settings(max_examples=400)
@given(value=_JSON_TEXT)
@example(value='{"a":1,"a":1}')
@example(value='{"a:b":1}')
@example(value='["\\ud800"]')
def test_equal_counts_prove_what_the_hooked_parse_proves(value: str) -> None:
    """Whenever the structure counts agree, decode()'s value check passes too."""
    text = '{"v":1,"x":' + value + "}"
    raw = _utf8(text)
    if raw is None:
        return
    try:
        parsed = _plain_json_decoder.decode(text)
    except (ValueError, RecursionError):
        assert not _keeps_value_rule(text, raw)
        return
    extent = _plain_extent(parsed, 1)
    if extent >= 0 and len(raw) - len(raw.translate(None, _STRUCTURE)) == extent:
        assert _keeps_value_rule(text, raw), text


@settings(max_examples=300)
@given(value=_JSON_TEXT, where=st.sampled_from(["body", "meta", "type"]), as_text=st.booleans())
def test_property_the_fast_path_refuses_exactly_what_decode_refuses(
    value: str, where: str, as_text: bool
) -> None:
    if where == "body":
        text = _text(_line(body="@"), '"@"', value)
    elif where == "meta":
        text = _text(_line(meta={"batch_number": 0, "x": "@"}), '"@"', value)
    else:  # a type whose body the fast path checks on its own
        text = _text(_line(type="ALGORITHM_EXCHANGE", body="@"), '"@"', '{"k":' + value + "}")
    raw: bytes | str | None = text if as_text else _utf8(text)
    if raw is None:
        return
    refused = _decode_verdict(raw)
    finding = TraceChecker().feed(raw)
    assert finding is not None
    if refused is None:
        assert finding.rule == "E-4.1", (text, finding)  # a lone line: no JOB_REQUEST
    else:
        assert finding.rule == _decode_rule(refused, raw)
        assert finding.message == f"invalid message: {refused} [{finding.rule}]", text


# ------------------------------------- whole traces: fast path and decode() agree


def _verdict(lines: list[bytes]) -> tuple[Any, ...]:
    checker = TraceChecker()
    checker.feed_lines(lines)
    result = checker.finish()
    finding = result.finding
    if finding is None:
        return ("ok", result.summary())
    return (finding.line, finding.rule, finding.message, finding.state, finding.expected)


_ALL_TRACES = sorted(TRACES.glob("*.jsonl")) + sorted((TRACES / "rules").glob("*.jsonl"))


@pytest.mark.parametrize("path", _ALL_TRACES, ids=[p.name for p in _ALL_TRACES])
def test_every_stored_trace_gets_the_same_verdict_when_decode_judges_every_line(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    fast = _verdict(lines)
    # No type on the fast path: every line goes through decode() and the hooked parser.
    monkeypatch.setattr("fsm_protocol._check._checker._FAST_BODY", {})
    assert _verdict(lines) == fast
