"""The wire codec: round trips first, then every way a peer can get a line wrong."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm_protocol._base._errors import DecodeError
from fsm_protocol._wire._messages import (
    DEFAULT_MAX_LINE_BYTES,
    MODELLER,
    AbortReason,
    JobAcceptBody,
    JobRejectBody,
    JobRequestBody,
    LogMessageBody,
    Message,
    MessageType,
    Meta,
    RejectReason,
    ResourceConsumed,
    ScenarioBody,
    TaskAbortBody,
    body_of,
    decode,
    encode,
)

from .strategies import bodies, json_values, messages

SPEC_EXAMPLE = (
    '{"v": 1, "type": "CURRENT_BATCH_ID", "task_id": "t-42", "sender": "alice/pod-a",'
    ' "recipient": "modeller", "seq": 7, "body": 0, "meta": {}}'
)

# A valid envelope to break one field at a time.
GOOD: dict[str, Any] = {
    "v": 1,
    "type": "CURRENT_BATCH_ID",
    "task_id": "t-42",
    "sender": "alice/pod-a",
    "recipient": "modeller",
    "seq": 7,
    "body": 0,
    "meta": {},
}


def line(**changes: Any) -> bytes:
    """GOOD with some fields replaced; a value of ``...`` removes the field."""
    wire = {**GOOD, **changes}
    return json.dumps({k: v for k, v in wire.items() if v is not ...}).encode() + b"\n"


def rejected(raw: bytes | str, **kwargs: Any) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(raw, **kwargs)
    error = info.value
    assert "expected" in str(error)
    # What was found is either said so, or named as unknown.
    assert "found" in str(error) or "unknown" in str(error)
    return error


# --- Round trips ---------------------------------------------------------------------------


@given(messages())
@settings(max_examples=200)
def test_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


@pytest.mark.parametrize("type", list(MessageType))
@given(data=st.data())
@settings(max_examples=10)
def test_round_trip_of_each_type(type: MessageType, data: st.DataObject) -> None:
    message = data.draw(messages(type=type))
    raw = encode(message)
    assert decode(raw) == message
    assert decode(raw.decode()) == message


@pytest.mark.parametrize(
    "type", [t for t in MessageType if t not in (MessageType.EVALUATION_RESULTS,)]
)
@given(data=st.data())
@settings(max_examples=5)
def test_body_of_returns_the_typed_body(type: MessageType, data: st.DataObject) -> None:
    body = data.draw(bodies(type))
    message = Message.make(type, task_id="t", sender="a", recipient="b", seq=0, body=body)
    assert body_of(message) == body


def test_spec_example_decodes() -> None:
    assert decode(SPEC_EXAMPLE + "\n") == Message(
        type=MessageType.CURRENT_BATCH_ID,
        task_id="t-42",
        sender="alice/pod-a",
        recipient=MODELLER,
        seq=7,
        body=0,
    )
    assert decode(SPEC_EXAMPLE.encode()) == decode(SPEC_EXAMPLE)


def test_encode_is_one_compact_utf8_line() -> None:
    message = Message.make(
        MessageType.LOG_MESSAGE,
        task_id="t",
        sender="alice/pod-é",
        recipient=MODELLER,
        seq=0,
        body=LogMessageBody(level="INFO", message="ok"),
    )
    assert (
        encode(message)
        == (
            '{"v":1,"type":"LOG_MESSAGE","task_id":"t","sender":"alice/pod-é","recipient":"modeller",'
            '"seq":0,"body":{"level":"INFO","message":"ok"},"meta":{}}\n'
        ).encode()
    )


def test_encode_writes_a_null_batch_number_on_evaluation_results() -> None:
    message = Message.make(
        MessageType.EVALUATION_RESULTS, task_id="t", sender="p", recipient=MODELLER, seq=3
    )
    assert b'"meta":{"batch_number":null}' in encode(message)
    assert decode(encode(message)) == message


def test_encode_escapes_a_lone_surrogate_rather_than_fail() -> None:
    message = Message.make(
        MessageType.ONLINE_CHECK, task_id="t", sender="p", recipient="m", seq=0, body="\ud800"
    )
    line = encode(message)
    assert b"\\ud800" in line
    # ...and a receiver refuses it: a lone surrogate has no UTF-8 form (the wire value rule).
    with pytest.raises(DecodeError) as caught:
        decode(line)
    assert caught.value.field == "$.body"


def test_typed_bodies_use_the_wire_shapes() -> None:
    def wire(body: object) -> Any:
        # make() converts without validating, so the type does not matter here.
        return Message.make(
            "LOG_MESSAGE", task_id="", sender="", recipient="", seq=0, body=body
        ).body

    assert wire(JobAcceptBody("alice/pod-a")) == {"ACCEPT": "alice/pod-a"}
    assert wire(JobRejectBody(RejectReason.NO_DATA, ("empty",))) == {"NO_DATA": ["empty"]}
    abort = wire(TaskAbortBody("bye", AbortReason.PROTOCOL_ERROR))
    assert type(abort["reason"]) is str  # plain JSON, not the enum
    assert abort == {
        "message": "bye",
        "reason": "PROTOCOL_ERROR",
        "exception_type": None,
        "traceback_summary": None,
    }


def test_unknown_meta_keys_are_ignored() -> None:
    raw = line(
        type="EVALUATION_RESULTS",
        body={"items": ["a"]},
        meta={"batch_number": 2, "from_the_future": {"x": [1]}, "algorithm_index": 1},
    )
    assert decode(raw).meta == Meta(batch_number=2, algorithm_index=1)


def test_meta_is_optional() -> None:
    assert decode(line(meta=...)).meta == Meta()


def test_meta_fields_decode() -> None:
    meta = {
        "batch_number": None,
        "total_batches": -1,
        "resources_consumed": [
            {"resource_type": "MODEL_INFERENCE", "resource_identifier": "m", "amount": 4}
        ],
        "reason": "LIMITS_EXCEEDED",
    }
    assert decode(line(meta=meta)).meta == Meta(
        total_batches=-1,
        resources_consumed=(ResourceConsumed("MODEL_INFERENCE", "m", 4),),
        reason="LIMITS_EXCEEDED",
    )


def test_scenario_body() -> None:
    job: dict[str, Any] = {
        "protocol": {"class_name": "conformance.Echo", "items": ["a"], "batch_size": 1},
        "pod_identifiers": ["alice/pod-a"],
        "batched_execution": True,
        "run_on_new_data_only": False,
        "force_rerun_failed_files": False,
        "test_run": False,
        "project_id": None,
        "options": {"soft_timeout_s": 1},
    }
    body = {"pods": ["alice/pod-a"], "job": job, "response_timeout_s": 5, "require_all_pods": True}
    message = decode(line(type="CONFORMANCE_SCENARIO", sender="conformance", seq=0, body=body))
    assert body_of(message) == ScenarioBody(
        pods=("alice/pod-a",),
        job=JobRequestBody(
            protocol=job["protocol"],
            pod_identifiers=("alice/pod-a",),
            batched_execution=True,
            options={"soft_timeout_s": 1},
        ),
        response_timeout_s=5.0,
        require_all_pods=True,
    )


# --- Nothing but DecodeError ---------------------------------------------------------------


@given(st.binary())
@settings(max_examples=300)
def test_arbitrary_bytes_raise_only_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(raw)


@given(st.text())
@settings(max_examples=300)
def test_arbitrary_text_raises_only_decode_error(raw: str) -> None:
    with contextlib.suppress(DecodeError):
        decode(raw)


@given(json_values())
@settings(max_examples=300)
def test_arbitrary_json_raises_only_decode_error(value: Any) -> None:
    with contextlib.suppress(DecodeError):
        decode(json.dumps(value))


@given(
    messages(),
    st.sampled_from([*GOOD, "extra"]),
    json_values(max_leaves=4) | st.just(...),
)
@settings(max_examples=300)
def test_a_message_with_one_field_replaced_raises_only_decode_error(
    message: Message, key: str, value: Any
) -> None:
    wire = json.loads(encode(message))
    if value is ...:
        wire.pop(key, None)
    else:
        wire[key] = value
    try:
        decode(json.dumps(wire))
    except DecodeError as error:
        assert error.field.startswith("$")


@pytest.mark.parametrize("raw", ["[" * 100_000, '{"a":' * 100_000, b"[" * 100_000])
def test_deep_nesting_is_rejected(raw: str | bytes) -> None:
    assert rejected(raw).field == "$"


# --- Each rejection of spec sections 1 and 2 -----------------------------------------------


def test_too_long_line() -> None:
    error = rejected(line(body="x" * 200), max_line_bytes=100)
    assert error.field == "$"
    assert "at most 100 bytes" in str(error)
    assert error.line is not None
    assert len(error.line) == 200


def test_default_line_limit_is_16_mib() -> None:
    assert DEFAULT_MAX_LINE_BYTES == 16 * 1024 * 1024
    error = rejected(b" " * (DEFAULT_MAX_LINE_BYTES + 1))
    assert f"found {DEFAULT_MAX_LINE_BYTES + 1} bytes" in str(error)


def test_too_long_text_line() -> None:
    assert rejected("é" * 60, max_line_bytes=100).field == "$"  # 120 bytes in UTF-8


@pytest.mark.parametrize("raw", [b'{"v": 1,', b"", b"\n", b"{'v': 1}", b'{"v":1} x', b'{"a":NaN}'])
def test_invalid_json(raw: bytes) -> None:
    error = rejected(raw)
    assert error.field == "$"
    assert "JSON" in str(error)


def test_int_too_long_to_convert() -> None:
    assert rejected(line(seq=0).replace(b'"seq": 0', b'"seq": 1' + b"0" * 5000)).field == "$"


def test_invalid_utf8() -> None:
    error = rejected(line(task_id="t").replace(b'"t"', b'"\xff"'))
    assert error.field == "$"
    assert "UTF-8" in str(error)
    assert "0xff" in str(error)


def test_utf16_is_not_utf8() -> None:
    assert rejected(SPEC_EXAMPLE.encode("utf-16")).field == "$"


def test_newline_inside_the_line() -> None:
    assert rejected(SPEC_EXAMPLE.replace(", ", ",\n") + "\n").field == "$"


@pytest.mark.parametrize("raw", [b"[]", b"null", b"7", b'"JOB_REQUEST"'])
def test_not_an_object(raw: bytes) -> None:
    assert rejected(raw).field == "$"


@pytest.mark.parametrize("field", ["v", "type", "task_id", "sender", "recipient", "seq", "body"])
def test_missing_envelope_field(field: str) -> None:
    error = rejected(line(**{field: ...}))
    assert error.field == f"$.{field}"
    assert "missing" in str(error)


def test_extra_envelope_field() -> None:
    error = rejected(line(priority="high"))
    assert error.field == "$.priority"
    assert "'priority'" in str(error)


@pytest.mark.parametrize(
    ("value", "shown"), [(1.0, "1.0"), (True, "true"), ("7", '"7"'), (None, "null"), (-3, "-3")]
)
def test_ill_typed_seq(value: Any, shown: str) -> None:
    error = rejected(line(seq=value))
    assert error.field == "$.seq"
    assert str(error) == f"field $.seq: expected an int >= 0, found {shown}"


@pytest.mark.parametrize("value", [2, 0, 1.0, True, "1"])
def test_wrong_version(value: Any) -> None:
    assert rejected(line(v=value)).field == "$.v"


@pytest.mark.parametrize("field", ["task_id", "sender", "recipient"])
def test_ill_typed_name(field: str) -> None:
    error = rejected(line(**{field: 42}))
    assert error.field == f"$.{field}"
    assert "expected a string, found 42" in str(error)


def test_unknown_type() -> None:
    error = rejected(line(type="FOO"))
    assert error.field == "$.type"
    assert "unknown message type 'FOO' (expected one of JOB_REQUEST, " in str(error)


def test_unknown_type_suggests_a_close_one() -> None:
    assert "did you mean 'NUMBER_OF_BATCHES'?" in str(rejected(line(type="NUM_BATCHES")))


def test_type_must_be_a_string() -> None:
    assert rejected(line(type=3)).field == "$.type"


def test_several_problems_are_all_reported() -> None:
    error = rejected(line(seq=-1, sender=None, oops=1))
    assert error.field == "$.sender"  # the first in field order
    assert "$.seq" in str(error)
    assert "$.oops" in str(error)


def test_error_line_is_truncated() -> None:
    raw = line(seq=-1, body="x" * 1000)
    error = rejected(raw)
    assert error.line == raw[:200]


@pytest.mark.parametrize(
    ("type", "body", "field"),
    [
        ("CURRENT_BATCH_ID", -1, "$.body"),
        ("CURRENT_BATCH_ID", 1.0, "$.body"),
        ("CURRENT_BATCH_ID", None, "$.body"),
        ("NUMBER_OF_BATCHES", 0, "$.body"),
        ("NUMBER_OF_BATCHES", -2, "$.body"),
        ("NUMBER_OF_BATCHES", True, "$.body"),
        ("NUMBER_OF_BATCHES", 2.0, "$.body"),
        ("BATCHES_COMPLETE", "DONE", "$.body"),
        ("BATCHES_COMPLETE", None, "$.body"),
        ("TASK_START", {}, "$.body"),
        ("TASK_COMPLETE", 0, "$.body"),
        ("TASK_CANCEL", "", "$.body"),
        ("PREPARING_DATA", [], "$.body"),
        ("CONFIGURING_TASK", False, "$.body"),
        ("PREPARING_DATA_BATCHES", {"x": 1}, "$.body"),
        ("ONLINE_CHECK", 3, "$.body"),
        ("ONLINE_RESPONSE", None, "$.body"),
        ("ALGORITHM_EXCHANGE", [], "$.body"),
        ("JOB_ACCEPT", "alice/pod-a", "$.body"),
        ("JOB_ACCEPT", {"ACCEPT": 3}, "$.body.ACCEPT"),
        ("JOB_ACCEPT", {}, "$.body.ACCEPT"),
        ("JOB_ACCEPT", {"ACCEPT": "a", "extra": 1}, "$.body.extra"),
        ("JOB_REJECT", {}, "$.body"),
        ("JOB_REJECT", {"NO_DATA": [], "NO_ACCESS": []}, "$.body"),
        ("JOB_REJECT", {"NOT_A_REASON": []}, "$.body"),
        ("JOB_REJECT", {"NO_DATA": "empty"}, "$.body.NO_DATA"),
        ("JOB_REJECT", {"NO_DATA": ["ok", 3]}, "$.body.NO_DATA[1]"),
        ("TASK_ABORT", {"message": "m", "reason": "BORED"}, "$.body.reason"),
        (
            "TASK_ABORT",
            {"message": "m", "reason": "WORKER_ERROR", "exception_type": None},
            "$.body.traceback_summary",
        ),
        ("LOG_MESSAGE", {"level": "INFO"}, "$.body.message"),
        ("LOG_MESSAGE", {"level": 20, "message": "m"}, "$.body.level"),
        ("JOB_REQUEST", {"protocol": {"items": []}}, "$.body.protocol"),
        ("CONFORMANCE_SCENARIO", {"pods": "alice"}, "$.body.pods"),
    ],
)
def test_wrong_body_for_type(type: str, body: Any, field: str) -> None:
    meta = {"batch_number": 0} if type == "EVALUATION_RESULTS" else {}
    error = rejected(line(type=type, body=body, meta=meta))
    assert error.field == field
    assert str(error).startswith(f"field {field}: ")


def test_body_of_rejects_a_locally_built_bad_body() -> None:
    message = Message.make(
        MessageType.CURRENT_BATCH_ID, task_id="t", sender="p", recipient="m", seq=0, body="0"
    )
    with pytest.raises(DecodeError) as info:
        body_of(message)
    assert info.value.field == "$.body"
    assert str(info.value) == 'field $.body: expected an int >= 0, found "0"'


@pytest.mark.parametrize("meta", [..., {}, {"algorithm_index": 0}])
def test_evaluation_results_requires_batch_number(meta: Any) -> None:
    error = rejected(line(type="EVALUATION_RESULTS", body={"items": []}, meta=meta))
    assert error.field == "$.meta.batch_number"
    assert "missing" in str(error)


@pytest.mark.parametrize("batch_number", [None, 0, 5])
def test_evaluation_results_batch_number_may_be_null(batch_number: int | None) -> None:
    raw = line(type="EVALUATION_RESULTS", body=None, meta={"batch_number": batch_number})
    assert decode(raw).meta.batch_number == batch_number


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        (None, "$.meta"),
        ([], "$.meta"),
        ({"batch_number": -1}, "$.meta.batch_number"),
        ({"batch_number": 1.0}, "$.meta.batch_number"),
        ({"algorithm_index": None}, "$.meta.algorithm_index"),
        ({"total_batches": "3"}, "$.meta.total_batches"),
        ({"reason": 3}, "$.meta.reason"),
        ({"resources_consumed": {}}, "$.meta.resources_consumed"),
        (
            {"resources_consumed": [{"resource_type": "a", "resource_identifier": "b"}]},
            "$.meta.resources_consumed[0].amount",
        ),
    ],
)
def test_ill_typed_meta(meta: Any, field: str) -> None:
    assert rejected(line(meta=meta)).field == field


# --- The value rule: only what every JSON implementation round-trips ------------------------

_RESULTS = (
    b'{"v":1,"type":"EVALUATION_RESULTS","task_id":"t","sender":"p","recipient":"modeller",'
    b'"seq":1,"meta":{"batch_number":0},"body":%s}\n'
)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"name":"\\ud800"}', "$.body.name", "lone UTF-16 surrogate"),
        (b'["ok","\\udc00\\ud800"]', "$.body[1]", "lone UTF-16 surrogate"),
        (b"[1e999]", "$.body[0]", "finite number"),
        (b'{"x":-1e400}', "$.body.x", "finite number"),
        (b"[9007199254740993]", "$.body[0]", "within ±2^53"),
        (b"[-9007199254740993]", "$.body[0]", "within ±2^53"),
        (b'{"a":1,"b":2,"a":3}', "$.body.a", "once per object"),
        (b"[" * 64 + b"]" * 64, "$.body", "levels"),
    ],
)
def test_values_beyond_the_rule_are_refused_naming_the_field(
    body: bytes, field: str, words: str
) -> None:
    error = rejected(_RESULTS % body)
    assert error.field.startswith(field)
    assert words in str(error)


def test_values_inside_the_rule_pass() -> None:
    body = b'["\\ud83d\\ude00", 9007199254740992, -9007199254740992, 1e308, 1e-999, "\\\\ud800"]'
    message = decode(_RESULTS % body)
    assert message.body == ["\U0001f600", 2**53, -(2**53), 1e308, 0.0, "\\ud800"]
    deep = b"[" * 63 + b"]" * 63  # with the envelope, exactly MAX_NESTING levels
    assert decode(_RESULTS % deep).body is not None


def test_a_duplicate_envelope_key_is_refused() -> None:
    error = rejected(b'{"v":1,"v":1,' + line()[1:])
    assert error.field == "$.v"


def test_a_line_of_too_many_arrays_is_refused_before_parsing() -> None:
    from fsm_protocol._wire._messages import MAX_CONTAINERS

    error = rejected(_RESULTS % (b"[" + b"[]," * MAX_CONTAINERS + b"[]]"))
    assert error.field == "$"
    assert "arrays and objects" in str(error)


def test_a_lone_surrogate_in_a_decoded_str_line_is_refused() -> None:
    text = (_RESULTS % b'"x"').decode().replace('"x"', '"\ud800"')
    assert rejected(text).field == "$.body"


def test_value_problem_names_what_cannot_be_sent() -> None:
    from fsm_protocol._wire._messages import value_problem, wire_text

    assert value_problem({"a": [1, float("nan")]}) == (
        "field $.a[1]: expected a finite number, found NaN"
    )
    assert "Python object" in str(value_problem({"a": object()}))
    assert value_problem({"a": (1, "\U0001f600")}) is None
    assert wire_text("caf\udce9") == "caf\\udce9"
