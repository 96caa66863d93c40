"""The codec's fast paths build exactly what the converter builds, or step aside.

:func:`encode` and :func:`decode` take a shortcut for the common shape of a
message and leave everything else to the cattrs converter (which also words
the errors). Here both are held to the converter on generated messages, and
on JSON objects that are almost messages.
"""

from __future__ import annotations

import json
from typing import Any

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
