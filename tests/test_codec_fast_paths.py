"""The codec's fast paths build exactly what the converter builds, or step aside.

:func:`encode` and :func:`decode` take a shortcut for the common shape of a
message and leave everything else to the cattrs converter (which also words
the errors). Here both are held to the converter on generated messages, and
on JSON objects that are almost messages.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import sys
import tracemalloc
import uuid
from typing import Any
from unittest import mock

import attrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsm_protocol import DecodeError, Message, MessageType, decode, encode
from fsm_protocol._wire import _messages
from tests.strategies import json_values, messages


def slow_decode(obj: dict[str, Any]) -> Message | str:
    try:
        message: Message = _messages._structure_message(obj, Message)
    except Exception as exc:
        return type(exc).__name__
    return message


@given(messages())
def test_the_fast_wire_dict_is_the_converters(message: Message) -> None:
    fast = _messages._fast_wire(message)
    if fast is not None:
        assert json.dumps(fast) == json.dumps(_messages._unstructure_message(message))


@given(messages())
def test_a_decoded_message_is_the_converters(message: Message) -> None:
    obj = json.loads(encode(message))
    fast = _messages._fast_message(obj)
    if fast is not None:
        assert fast == slow_decode(obj)
    assert decode(encode(message)) == message


ENVELOPE_VALUES = st.one_of(
    st.integers(min_value=-2, max_value=3),
    st.booleans(),
    st.none(),
    st.sampled_from(["", "x", "TASK_START", "EVALUATION_RESULTS", "1"]),
    st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def near_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A message's wire object with some fields replaced, dropped or added."""
    obj: dict[str, Any] = json.loads(encode(draw(messages())))
    for key in draw(st.lists(st.sampled_from(sorted(obj) + ["extra"]), max_size=3)):
        action = draw(st.sampled_from(["replace", "drop"]))
        if action == "drop":
            obj.pop(key, None)
        else:
            obj[key] = draw(ENVELOPE_VALUES | json_values(max_leaves=3))
    if "meta" in obj and isinstance(obj["meta"], dict):
        for key in draw(
            st.lists(
                st.sampled_from(
                    ["batch_number", "algorithm_index", "resources_consumed", "reason", "x"]
                ),
                max_size=2,
            )
        ):
            obj["meta"][key] = draw(ENVELOPE_VALUES | json_values(max_leaves=3))
    return obj


@given(near_messages())
def test_on_almost_messages_the_fast_path_agrees_or_steps_aside(obj: dict[str, Any]) -> None:
    fast = _messages._fast_message(obj)
    if fast is not None:
        assert fast == slow_decode(obj)
    line = json.dumps(obj).encode()
    try:
        decoded: Message | str = decode(line)
    except DecodeError as exc:
        decoded = str(exc)
    if fast is not None:
        # The envelope passed; only the body's own check (or the result's batch_number
        # rule) may still refuse the line.
        assert decoded == fast or "$.body" in decoded or "batch_number" in decoded, decoded


def test_a_typical_result_takes_the_fast_path() -> None:
    line = (
        b'{"v":1,"type":"EVALUATION_RESULTS","task_id":"t","sender":"a/p","recipient":"modeller",'
        b'"seq":3,"body":{"items":["x"]},"meta":{"batch_number":0,"resources_consumed":'
        b'[{"resource_type":"MODEL_INFERENCE","resource_identifier":"e","amount":1}]}}'
    )
    obj = json.loads(line)
    assert _messages._fast_message(obj) is not None
    assert decode(line) == slow_decode(obj)
    assert decode(line).type is MessageType.EVALUATION_RESULTS
    assert encode(decode(line)) == line + b"\n"


BODY_VALUES = st.one_of(
    st.integers(min_value=-3, max_value=3),
    st.booleans(),
    st.none(),
    st.sampled_from(["", "x", "BATCHES_ONLY", "TASK_COMPLETE", "batches_only"]),
    st.floats(allow_nan=False, allow_infinity=False),
    json_values(max_leaves=3),
)


@given(st.sampled_from(sorted(_messages._FAST_BODY_OK, key=lambda t: t.value)), BODY_VALUES)
def test_a_body_the_fast_check_passes_is_one_the_converter_takes(
    type_: MessageType, body: Any
) -> None:
    if _messages._FAST_BODY_OK[type_](body):
        _messages._converter.structure(body, _messages._BODY_TYPES[type_])  # does not raise
    else:
        # What the fast check turns away, the converter refuses too (it words the error).
        try:
            _messages._converter.structure(body, _messages._BODY_TYPES[type_])
        except Exception:
            return
        raise AssertionError(f"the converter takes {body!r} for {type_.value}")


LOCAL_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**60), max_value=2**60),
        st.floats(),
        st.text(alphabet=st.characters(codec=None), max_size=4),
        st.sampled_from(["\udce9", "a\ud800b", object(), b"x", 1j]),
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=3) | st.sampled_from([1, "\udce9"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(LOCAL_VALUES)
def test_the_quick_value_check_agrees_with_the_walk_that_names_the_field(value: Any) -> None:
    walked = _messages._local_problem(value, "$", 1)
    assert _messages._locally_fine(value, 1) is (walked is None)


def test_the_quick_value_check_knows_the_nesting_limit() -> None:
    deep: Any = "x"
    for _ in range(_messages.MAX_NESTING):
        deep = [deep]
    assert _messages._locally_fine(deep, 1)
    assert not _messages._locally_fine([deep], 1)
    assert _messages.value_problem([deep]) is not None


# --- orjson: the plain path of decode() and encode() ----------------------------------------


def careful_decode(line: bytes) -> Message | str:
    """What decode() makes of ``line`` without its orjson path: the message, or the error."""
    with mock.patch.object(_messages, "_plain_decode", lambda raw: None):
        try:
            return decode(line)
        except DecodeError as exc:
            return f"DecodeError: {exc}"


def plain_decode(line: bytes) -> Message | str | None:
    """What the orjson path makes of ``line``: the message, or None when it steps aside."""
    return _messages._plain_decode(line)


# Text spliced into a line: what orjson and json might read differently.
TRICKY = st.sampled_from(
    [
        b"12345678901234567890",  # beyond 2^53, within orjson's 64 bits
        b"123456789012345678901234567890",  # beyond 64 bits: orjson reads a float
        b"-9223372036854775809",
        b"9007199254740993",
        b"9.3e18",
        b"1e999",
        b"-1e-400",
        b"1.5",
        b"NaN",
        b'"\\ud800"',
        b'"\\udc00\\ud800"',
        b'"\\ud83d\\ude00"',
        b'"\xed\xa0\x80"',  # a surrogate written in UTF-8: not UTF-8
        b'"\xff"',
        b'"a\\nb"',
        b'"\t"',
        b"[" * 70 + b"1" + b"]" * 70,
        b"[" * 64 + b"1" + b"]" * 64,
        b'{"x":1,"x":2}',
        b'{"x":1,"y":{"x":2,"x":3}}',
        b"\n1",
        b" 1 ",
        b"\xef\xbb\xbf1",
        b"true",
        b'"a:b{["',
        b"1",
        b"0",
        b"null",
        b'"x"',
        b'{"n":[1,2.5,"z"]}',
    ]
)


PLAIN_MESSAGES = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    task_id=st.sampled_from(["t", "task-1"]),
    sender=st.sampled_from(["modeller", "org/pod-1"]),
    recipient=st.sampled_from(["modeller", "org/pod-1"]),
    seq=st.integers(min_value=0, max_value=10),
    body=st.sampled_from([None, 0, 1, -1, "BATCHES_ONLY", "x", {"echo": ["a"]}, [1, 2]]),
)
"""Messages of plain ASCII names and small bodies, as most lines are."""


@st.composite
def spliced_lines(draw: st.DrawFn) -> bytes:
    """A message's line with one of its values (or its body's) replaced by tricky text."""
    message = draw(messages() | PLAIN_MESSAGES)
    line = encode(message)
    value = draw(TRICKY)
    key = draw(st.sampled_from([b'"seq":', b'"body":', b'"v":', b'"task_id":']))
    start = line.find(key)
    if start == -1:
        return line
    start += len(key)
    # Replace the value up to the next comma or closing brace at depth 0 (a guess at its
    # end is enough: a broken line must be refused by both paths alike).
    end = start
    depth = 0
    while end < len(line):
        char = line[end : end + 1]
        if char in b"[{":
            depth += 1
        elif char in b"]}":
            if depth == 0:
                break
            depth -= 1
        elif char == b"," and depth == 0:
            break
        end += 1
    return line[:start] + value + line[end:]


@given(messages())
def test_the_orjson_path_decodes_what_it_encodes(message: Message) -> None:
    line = encode(message)
    assert decode(line) == careful_decode(line) == message


@given(st.one_of(spliced_lines(), messages().map(encode)))
def test_the_orjson_path_agrees_with_the_careful_path_or_steps_aside(line: bytes) -> None:
    careful = careful_decode(line)
    plain = plain_decode(line)
    if plain is not None:
        assert plain == careful
    # Whatever the path, decode() gives the careful answer, errors included.
    try:
        got: Message | str = decode(line)
    except DecodeError as exc:
        got = f"DecodeError: {exc}"
    assert got == careful


def test_an_integer_orjson_reads_as_a_float_is_still_refused() -> None:
    line = (
        b'{"v":1,"type":"EVALUATION_RESULTS","task_id":"t","sender":"a/p","recipient":"m",'
        b'"seq":3,"body":{"n":123456789012345678901234567890},"meta":{"batch_number":0}}'
    )
    assert plain_decode(line) is None
    with pytest.raises(DecodeError, match=r"\$\.body\.n"):
        decode(line)


def test_a_newline_inside_a_line_is_refused_though_orjson_reads_it_as_space() -> None:
    line = (
        b'{"v":1,"type":"TASK_START","task_id":"t","sender":"a","recipient":"m",\n'
        b'"seq":3,"body":null}'
    )
    assert plain_decode(line) is None
    with pytest.raises(DecodeError, match="newline"):
        decode(line)


def json_encode(message: Message) -> bytes:
    """encode() without its orjson path."""
    with mock.patch.object(_messages, "_plainly_json", lambda message: False):
        return encode(message)


@given(messages())
def test_orjson_writes_what_json_writes(message: Message) -> None:
    fast, careful = encode(message), json_encode(message)
    assert json.loads(fast) == json.loads(careful)
    if b"e-" not in careful:  # float exponents differ in form only: 1e-7 against 1e-07
        assert fast == careful


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"x": math.nan}, ValueError),
        ([math.inf], ValueError),
        ({"x": Colour.RED}, TypeError),
        ({"x": uuid.UUID(int=1)}, TypeError),
        ({"x": Point(1)}, TypeError),
        ({"x": datetime.date(2026, 1, 1)}, TypeError),
        ({"x": b"bytes"}, TypeError),
    ],
)
def test_values_json_cannot_carry_are_refused_as_json_refuses_them(
    body: Any, error: type[Exception]
) -> None:
    message = Message(
        type=MessageType.EVALUATION_RESULTS, task_id="t", sender="a", recipient="m", seq=0, body=0
    )
    message = attrs.evolve(message, body=body)
    with pytest.raises(error):
        encode(message)


def test_what_json_writes_differently_from_orjson_goes_json_s_way() -> None:
    class Name(str):
        pass

    message = Message(
        type=MessageType.EVALUATION_RESULTS,
        task_id="t",
        sender="a",
        recipient="m",
        seq=0,
        body={"n": Name("x"), "big": 2**70, "keys": {1: "one"}, "lone": "\ud800"},
    )
    assert encode(message) == json_encode(message)
    assert json.loads(encode(message))["body"] == {
        "n": "x",
        "big": 2**70,
        "keys": {"1": "one"},
        "lone": "\ud800",
    }


@given(LOCAL_VALUES)
def test_what_passes_the_type_check_orjson_writes_as_json_does_or_refuses(value: Any) -> None:
    if not _messages._json_typed(value):
        return
    try:
        fast = orjson.dumps(value)
    except TypeError:
        return  # encode() then goes json's way
    assert json.loads(fast) == json.loads(json.dumps(value, allow_nan=False))


def test_an_encoded_line_holds_no_more_memory_than_its_bytes() -> None:
    """Lines wait in queues (stdio's writer, an in-memory transport not yet read): orjson's
    output keeps its whole write buffer, so encode() hands out a right-sized copy."""
    pods = [f"org/pod-{n}" for n in range(1000)]
    messages_ = [
        Message(
            type=MessageType.TASK_START, task_id="t", sender="a", recipient="m", seq=0, body=None
        ),
        Message(
            type=MessageType.NUMBER_OF_BATCHES,
            task_id="t",
            sender="a",
            recipient="m",
            seq=1,
            body={"pods": pods},
        ),
    ]
    for message in messages_:
        line = encode(message)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = [encode(message) for _ in range(20)]
            per_line = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
        finally:
            tracemalloc.stop()
        assert per_line < sys.getsizeof(line) + 64, (len(line), per_line)
