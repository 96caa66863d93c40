"""The wire messages of protocol version 1, and their one codec.

A message is a frozen value. One cattrs converter, ``_converter``, owns the
wire format in both directions, so there is a single place that decides what
a valid line is. Decoding is strict (``1.0`` and ``true`` are not ints, extra
envelope keys are errors) because the conformance kit must catch peers that
a lenient decoder would let through. The one leniency is the spec's own:
unknown ``meta`` keys are ignored, so newer peers can add metadata.

The envelope keeps ``body`` as raw JSON. :func:`body_of` turns it into a typed
value when a caller needs one; :func:`decode` runs the same check, so a
decoded message always has a body that fits its type.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from types import UnionType
from typing import Annotated, Any, Final, Literal, TypeAlias, Union, get_args, get_origin

import attrs
import cattrs
import orjson
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .._base._errors import DecodeError

JSON: TypeAlias = Any
"""Any value ``json.loads`` can return. Kept as ``Any`` so bodies stay cheap."""

MODELLER: Final = "modeller"
"""The modeller's name on the wire unless configured otherwise."""

DEFAULT_MAX_LINE_BYTES: Final = 16 * 1024 * 1024
"""A receiver rejects longer lines (spec section 1), so a peer cannot exhaust its memory."""

# How much of an offending line a DecodeError keeps, and how much of a found value it shows.
_LINE_EXCERPT: Final = 200
_VALUE_EXCERPT: Final = 80


class MessageType(str, enum.Enum):
    """Every message type of wire version 1, plus the kit's control message."""

    JOB_REQUEST = "JOB_REQUEST"
    JOB_ACCEPT = "JOB_ACCEPT"
    JOB_REJECT = "JOB_REJECT"
    PREPARING_DATA = "PREPARING_DATA"
    CONFIGURING_TASK = "CONFIGURING_TASK"
    PREPARING_DATA_BATCHES = "PREPARING_DATA_BATCHES"
    ALGORITHM_EXCHANGE = "ALGORITHM_EXCHANGE"
    NUMBER_OF_BATCHES = "NUMBER_OF_BATCHES"
    CURRENT_BATCH_ID = "CURRENT_BATCH_ID"
    TASK_START = "TASK_START"
    EVALUATION_RESULTS = "EVALUATION_RESULTS"
    BATCHES_COMPLETE = "BATCHES_COMPLETE"
    TASK_COMPLETE = "TASK_COMPLETE"
    TASK_ABORT = "TASK_ABORT"
    TASK_CANCEL = "TASK_CANCEL"
    ONLINE_CHECK = "ONLINE_CHECK"
    ONLINE_RESPONSE = "ONLINE_RESPONSE"
    LOG_MESSAGE = "LOG_MESSAGE"
    #: The conformance kit's first line to a modeller under test (spec section 6).
    CONFORMANCE_SCENARIO = "CONFORMANCE_SCENARIO"


class RejectReason(str, enum.Enum):
    """Why a worker refused a job: the single key of a ``JOB_REJECT`` body."""

    NO_ACCESS = "NO_ACCESS"
    UNAUTHORISED = "UNAUTHORISED"
    INVALID_PROOF_OF_IDENTITY = "INVALID_PROOF_OF_IDENTITY"
    NO_PROOF_OF_IDENTITY = "NO_PROOF_OF_IDENTITY"
    NO_DATA = "NO_DATA"
    INCOMPATIBLE_DATASOURCE = "INCOMPATIBLE_DATASOURCE"
    TASK_SETUP_ERROR = "TASK_SETUP_ERROR"
    TASK_TIMEOUT = "TASK_TIMEOUT"
    DATASOURCE_INACCESSIBLE = "DATASOURCE_INACCESSIBLE"


class AbortReason(str, enum.Enum):
    """Why a worker ended a task it had accepted (``TASK_ABORT.reason``)."""

    WORKER_ERROR = "WORKER_ERROR"
    NO_NEW_DATA = "NO_NEW_DATA"
    MODELLER_TIMEOUT = "MODELLER_TIMEOUT"
    NO_DATA = "NO_DATA"
    LIMITS_EXCEEDED = "LIMITS_EXCEEDED"
    DATA_NOT_AVAILABLE = "DATA_NOT_AVAILABLE"
    CANCELLED_BY_MODELLER = "CANCELLED_BY_MODELLER"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"
    # Only for compatibility with the reference platform; this library never sends them.
    EHR_ERROR = "EHR_ERROR"
    TASK_COMPLETE_MODELLER_TIMEOUT = "TASK_COMPLETE_MODELLER_TIMEOUT"
    INVALID_SIGNATURE = "INVALID_SIGNATURE"
    STALE_REQUEST = "STALE_REQUEST"


@attrs.frozen
class _Constraint:
    """A value check beyond the JSON type, attached with ``Annotated``.

    ``expected`` completes "expected ..." in error messages, and also names
    the field's type when the field is missing.
    """

    expected: str
    ok: Callable[[Any], bool]


_NonNegativeInt: TypeAlias = Annotated[int, _Constraint("an int >= 0", lambda x: x >= 0)]
_Version: TypeAlias = Annotated[int, _Constraint("the protocol version 1", lambda x: x == 1)]
_BatchCount: TypeAlias = Annotated[
    int, _Constraint("-1 (streaming) or an int >= 1", lambda x: x == -1 or x >= 1)
]
_NonNegativeNumber: TypeAlias = Annotated[float, _Constraint("a number >= 0", lambda x: x >= 0)]
_ProtocolSpec: TypeAlias = Annotated[
    dict[str, JSON],
    _Constraint('an object with a string "class_name"', lambda d: type(d.get("class_name")) is str),
]
BatchesCompleteKind: TypeAlias = Literal["BATCHES_ONLY", "TASK_COMPLETE"]
"""The body of ``BATCHES_COMPLETE``: the batch loop ended, or the whole task did."""

# Field metadata: the key may be absent on the wire. Every other field must be
# present even when its constructor has a default, so peers are held to the spec.
_WIRE_OPTIONAL: Final = "fsm_protocol.wire_optional"
_OPTIONAL_ON_WIRE: Final = {_WIRE_OPTIONAL: True}


@attrs.frozen
class ResourceConsumed:
    """One entry of ``meta.resources_consumed``: what a run used, e.g. inferences."""

    resource_type: str
    resource_identifier: str
    amount: int


@attrs.frozen
class Meta:
    """Optional metadata of any message; every key may be absent.

    Only ``EVALUATION_RESULTS`` must carry ``batch_number`` (possibly null);
    :func:`encode` always writes it for that type.
    """

    batch_number: _NonNegativeInt | None = attrs.field(default=None, metadata=_OPTIONAL_ON_WIRE)
    total_batches: int | None = attrs.field(default=None, metadata=_OPTIONAL_ON_WIRE)
    algorithm_index: _NonNegativeInt = attrs.field(default=0, metadata=_OPTIONAL_ON_WIRE)
    resources_consumed: tuple[ResourceConsumed, ...] = attrs.field(
        default=(), metadata=_OPTIONAL_ON_WIRE
    )
    reason: str | None = attrs.field(default=None, metadata=_OPTIONAL_ON_WIRE)


_EMPTY_META: Final = Meta()


@attrs.frozen(kw_only=True)
class Message:
    """One line on the wire: the envelope of spec section 2.

    ``body`` stays raw JSON so that relaying, logging and trace checking do
    not pay for typing it; use :func:`body_of` to get a typed body.
    """

    v: _Version = 1
    type: MessageType
    task_id: str
    sender: str
    recipient: str
    seq: _NonNegativeInt
    body: JSON
    meta: Meta = attrs.field(default=_EMPTY_META, metadata=_OPTIONAL_ON_WIRE)

    @classmethod
    def make(
        cls,
        type: MessageType | str,
        *,
        task_id: str,
        sender: str,
        recipient: str,
        seq: int,
        body: object = None,
        meta: Meta | None = None,
    ) -> Message:
        """Build a message, accepting a typed body as well as raw JSON.

        Args:
            type: The message type, or its name.
            task_id: The task this message belongs to.
            sender: Who sends it (:data:`MODELLER` or a pod identifier).
            recipient: Who receives it.
            seq: The sender's counter for this task.
            body: Raw JSON, or one of the typed body classes (such as
                :class:`TaskAbortBody`), which is converted to its wire form.
            meta: Metadata; empty by default.

        Returns:
            The message. It is not validated: :func:`body_of` does that.
        """
        if attrs.has(type_of_body := body.__class__):
            body = _converter.unstructure(body, type_of_body)
        return cls(
            type=MessageType(type),
            task_id=task_id,
            sender=sender,
            recipient=recipient,
            seq=seq,
            body=body,
            meta=_EMPTY_META if meta is None else meta,
        )


@attrs.frozen
class JobRequestBody:
    """Body of ``JOB_REQUEST``: what to run and how.

    ``protocol`` and ``options`` stay raw JSON: their meaning belongs to the
    protocol class named by ``protocol["class_name"]``, and a worker must be able
    to answer bad parameters with ``JOB_REJECT(TASK_SETUP_ERROR)`` rather than
    fail to decode the request.
    """

    protocol: _ProtocolSpec
    pod_identifiers: tuple[str, ...] = ()
    batched_execution: bool = False
    run_on_new_data_only: bool = False
    force_rerun_failed_files: bool = False
    test_run: bool = False
    project_id: str | None = None
    options: dict[str, JSON] = attrs.field(factory=dict)


@attrs.frozen
class JobAcceptBody:
    """Body of ``JOB_ACCEPT``, ``{"ACCEPT": <pod id>}`` on the wire."""

    pod_id: str


@attrs.frozen
class JobRejectBody:
    """Body of ``JOB_REJECT``, ``{<reason>: [<detail>, ...]}`` on the wire."""

    reason: RejectReason
    details: tuple[str, ...] = ()


@attrs.frozen
class TaskAbortBody:
    """Body of ``TASK_ABORT``: why the worker stopped, for people and for the modeller."""

    message: str
    reason: AbortReason
    exception_type: str | None = None
    traceback_summary: str | None = None


@attrs.frozen
class LogMessageBody:
    """Body of ``LOG_MESSAGE``: a log record forwarded to the other side."""

    level: str
    message: str


@attrs.frozen
class ScenarioBody:
    """Body of ``CONFORMANCE_SCENARIO``: the task a modeller under test must run.

    ``job_overrides`` maps a pod id to fields that replace those of
    ``job.protocol`` for that pod only.
    """

    pods: tuple[str, ...]
    job: JobRequestBody
    response_timeout_s: _NonNegativeNumber
    require_all_pods: bool
    job_overrides: dict[str, dict[str, JSON]] = attrs.field(
        factory=dict, metadata=_OPTIONAL_ON_WIRE
    )


_NULL: Final = type(None)

# The wire type of each body, as the converter structures it (spec section 3).
_BODY_TYPES: Final[Mapping[MessageType, Any]] = {
    MessageType.JOB_REQUEST: JobRequestBody,
    MessageType.JOB_ACCEPT: JobAcceptBody,
    MessageType.JOB_REJECT: JobRejectBody,
    MessageType.PREPARING_DATA: _NULL,
    MessageType.CONFIGURING_TASK: _NULL,
    MessageType.PREPARING_DATA_BATCHES: _NULL,
    MessageType.ALGORITHM_EXCHANGE: dict[str, JSON],
    MessageType.NUMBER_OF_BATCHES: _BatchCount,
    MessageType.CURRENT_BATCH_ID: _NonNegativeInt,
    MessageType.TASK_START: _NULL,
    MessageType.EVALUATION_RESULTS: JSON,
    MessageType.BATCHES_COMPLETE: BatchesCompleteKind,
    MessageType.TASK_COMPLETE: _NULL,
    MessageType.TASK_ABORT: TaskAbortBody,
    MessageType.TASK_CANCEL: _NULL,
    MessageType.ONLINE_CHECK: str,
    MessageType.ONLINE_RESPONSE: str,
    MessageType.LOG_MESSAGE: LogMessageBody,
    MessageType.CONFORMANCE_SCENARIO: ScenarioBody,
}

_ENUM_LABELS: Final[Mapping[type[enum.Enum], str]] = {
    MessageType: "a message type",
    RejectReason: "a reject reason",
    AbortReason: "an abort reason",
}

# Wire names that differ from attribute names.
_RENAMES: Final[Mapping[type, Mapping[str, str]]] = {JobAcceptBody: {"pod_id": "ACCEPT"}}


# --- Errors raised by the hooks ------------------------------------------------------------


class _Mismatch(Exception):
    """A value does not fit its field. ``text`` replaces the generic "expected X, found Y"."""

    def __init__(self, found: Any, text: str | None = None) -> None:
        super().__init__(text or "type mismatch")
        self.found = found
        self.text = text


class _Missing(Exception):
    """A required key is absent."""


# --- The converter -------------------------------------------------------------------------

_converter: Final = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)


def _strict(kind: type) -> Callable[[Any, Any], Any]:
    # `type(x) is kind` rather than isinstance, so that True is not an int.
    def hook(value: Any, _: Any) -> Any:
        if type(value) is kind:
            return value
        raise _Mismatch(value)

    return hook


def _structure_number(value: Any, _: Any) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    raise _Mismatch(value)


def _structure_none(value: Any, _: Any) -> None:
    if value is not None:
        raise _Mismatch(value)


def _structure_any(value: Any, _: Any = None) -> Any:
    return value


def _enum_hook(cls: Any) -> Callable[[Any, Any], Any]:
    by_value = {member.value: member for member in cls}
    label = _ENUM_LABELS.get(cls, cls.__name__)

    def hook(value: Any, _: Any) -> Any:
        member = by_value.get(value) if isinstance(value, str) else None
        if member is not None:
            return member
        choices = ", ".join(by_value)
        if not isinstance(value, str):
            raise _Mismatch(value, f"expected {label} (one of {choices}), found {_show(value)}")
        close = difflib.get_close_matches(value, by_value, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise _Mismatch(
            value, f"unknown {label.split(' ', 1)[1]} {value!r} (expected one of {choices}){hint}"
        )

    return hook


def _enum_value(member: enum.Enum) -> Any:
    return member.value


def _literal_hook(literal: Any) -> Callable[[Any, Any], Any]:
    # Compare types too: the stdlib hook would accept True for Literal[1].
    allowed = {(type(v), v) for v in get_args(literal)}

    def hook(value: Any, _: Any) -> Any:
        if (type(value), value) in allowed:
            return value
        raise _Mismatch(value)

    return hook


def _annotated_hook(annotated: Any) -> Callable[[Any, Any], Any]:
    base, *extras = get_args(annotated)
    base_hook = _converter.get_structure_hook(base)
    [constraint] = [c for c in extras if isinstance(c, _Constraint)]
    ok = constraint.ok

    def hook(value: Any, _: Any) -> Any:
        result = base_hook(value, base)
        if ok(result):
            return result
        raise _Mismatch(value)

    return hook


def _optional_hook(union: Any) -> Callable[[Any, Any], Any]:
    # Resolves the inner hook once; cattrs' own looks it up on every call.
    [inner] = [arg for arg in get_args(union) if arg is not _NULL]
    inner_hook = _converter.get_structure_hook(inner)

    def hook(value: Any, _: Any) -> Any:
        return None if value is None else inner_hook(value, inner)

    return hook


def _tuple_hook(cls: Any) -> Callable[[Any, Any], Any]:
    # cattrs would accept any iterable, e.g. turn "ab" into ("a", "b"); the wire has lists.
    item_type = get_args(cls)[0]
    item_hook = _converter.get_structure_hook(item_type)

    # A list of exact strs or ints (no bools) needs no per-item hook: check the types
    # in one pass (a job request names every pod, so this list can be long).
    fast = item_type in (str, int)

    def hook(value: Any, _: Any) -> Any:
        if type(value) is not list:
            raise _Mismatch(value)
        if fast and set(map(type, value)) <= {item_type}:
            return tuple(value)
        items = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                items.append(item_hook(item, item_type))
            except Exception as exc:
                exc.__notes__ = [IterableValidationNote(f"@ index {index}", index, item_type)]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {cls!r}", errors, cls)
        return tuple(items)

    return hook


def _dict_hook(cls: Any) -> Callable[[Any, Any], Any]:
    # JSON object keys are always strings, so only the values need checking.
    value_type = get_args(cls)[1]
    if value_type is Any:

        def shallow(value: Any, _: Any) -> Any:
            if type(value) is not dict:
                raise _Mismatch(value)
            return value

        return shallow
    value_hook = _converter.get_structure_hook(value_type)

    def deep(value: Any, _: Any) -> Any:
        if type(value) is not dict:
            raise _Mismatch(value)
        result = {}
        errors: list[Exception] = []
        for key, item in value.items():
            try:
                result[key] = value_hook(item, value_type)
            except Exception as exc:
                exc.__notes__ = [IterableValidationNote(f"@ key {key!r}", key, value_type)]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {cls!r}", errors, cls)
        return result

    return deep


def _class_hook(cls: Any) -> Callable[[Any, Any], Any]:
    """Structure an attrs class from a JSON object, insisting on every wire-required key."""
    renames = _RENAMES.get(cls, {})
    # Only meta ignores unknown keys (spec section 2), so newer peers can add some.
    overrides: dict[str, Any] = {name: override(rename=wire) for name, wire in renames.items()}
    base = make_dict_structure_fn(
        cls, _converter, _cattrs_forbid_extra_keys=cls is not Meta, **overrides
    )
    required = {
        renames.get(a.name, a.name): a
        for a in attrs.fields(cls)
        if not a.metadata.get(_WIRE_OPTIONAL)
    }
    required_keys = frozenset(required)
    order = {a.name: index for index, a in enumerate(attrs.fields(cls))}

    def hook(value: Any, _: Any) -> Any:
        if type(value) is not dict:
            raise _Mismatch(value)
        if value.keys() >= required_keys:
            return base(value, cls)
        # Slow path: report the missing keys together with any other problem.
        missing = [key for key in required if key not in value]
        errors: list[Exception] = []
        for key in missing:
            field = required[key]
            exc = _Missing(key)
            exc.__notes__ = [AttributeValidationNote(f"@ {key}", field.name, field.type)]
            errors.append(exc)
        try:
            base(value, cls)
        except ClassValidationError as group:
            errors.extend(e for e in group.exceptions if not isinstance(e, KeyError))
        # Report in field order, as the fast path does; unknown keys go last.
        errors.sort(key=lambda e: order.get(_note_name(e), len(order)))
        raise ClassValidationError(f"While structuring {cls.__name__}", errors, cls)

    return hook


def _note_name(exc: BaseException) -> str | None:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            return note.name
    return None


def _structure_reject(value: Any, _: Any) -> JobRejectBody:
    if type(value) is not dict or len(value) != 1:
        raise _Mismatch(value)
    [(key, details)] = value.items()
    reason = _converter.structure(key, RejectReason)
    try:
        return JobRejectBody(reason, _converter.structure(details, tuple[str, ...]))
    except Exception as exc:
        exc.__notes__ = [AttributeValidationNote(f"@ {key}", key, tuple[str, ...])]
        raise ClassValidationError(
            "While structuring JobRejectBody", [exc], JobRejectBody
        ) from None


def _unstructure_reject(body: JobRejectBody) -> dict[str, list[str]]:
    return {body.reason.value: list(body.details)}


def _origin(cls: Any) -> Any:
    # Typed as Any: mypy cannot compare get_origin's result with special forms.
    return get_origin(cls)


def _is_homogeneous_tuple(cls: Any) -> bool:
    args = get_args(cls)
    return _origin(cls) is tuple and len(args) == 2 and args[1] is Ellipsis


def _is_optional(cls: Any) -> bool:
    args = get_args(cls)
    return _origin(cls) in (Union, UnionType) and len(args) == 2 and _NULL in args


def _is_annotated_constraint(cls: Any) -> bool:
    return _origin(cls) is Annotated and any(isinstance(a, _Constraint) for a in get_args(cls))


for _kind in (int, str, bool):
    _converter.register_structure_hook(_kind, _strict(_kind))
_converter.register_structure_hook(float, _structure_number)
_converter.register_structure_hook(_NULL, _structure_none)
_converter.register_structure_hook_func(lambda cls: cls is Any, _structure_any)
# Registered per class: the str hooks would otherwise claim these str subclasses.
for _enum in _ENUM_LABELS:
    _converter.register_structure_hook(_enum, _enum_hook(_enum))
    # Plain str on the way out, so a body built by make() equals its decoded self.
    _converter.register_unstructure_hook(_enum, _enum_value)
_converter.register_structure_hook_factory(lambda cls: _origin(cls) is Literal, _literal_hook)
_converter.register_structure_hook_factory(_is_homogeneous_tuple, _tuple_hook)
_converter.register_structure_hook_factory(lambda cls: _origin(cls) is dict, _dict_hook)
_converter.register_structure_hook_factory(attrs.has, _class_hook)
_converter.register_structure_hook_factory(_is_annotated_constraint, _annotated_hook)
_converter.register_structure_hook_factory(_is_optional, _optional_hook)
_converter.register_structure_hook(JobRejectBody, _structure_reject)

_converter.register_unstructure_hook(JobRejectBody, _unstructure_reject)
_converter.register_unstructure_hook(
    JobAcceptBody,
    make_dict_unstructure_fn(JobAcceptBody, _converter, pod_id=override(rename="ACCEPT")),
)
# Meta writes only what differs from the defaults, so most lines carry "meta":{}.
_converter.register_unstructure_hook(
    Meta, make_dict_unstructure_fn(Meta, _converter, _cattrs_omit_if_default=True)
)
# Bodies are already JSON; copying them would only cost time.
_converter.register_unstructure_hook(
    Message,
    make_dict_unstructure_fn(Message, _converter, body=override(unstruct_hook=_structure_any)),
)

_structure_message: Final = _converter.get_structure_hook(Message)
_unstructure_message: Final = _converter.get_unstructure_hook(Message)


# --- Fast paths ----------------------------------------------------------------------------
#
# Most lines are well formed and simple. These build the same Message (or wire dict) as the
# converter does, but only for a shape they check completely; anything else (an error, an
# unusual meta) goes the converter's way, which also says what is wrong. tests/test_messages.py
# holds them equal to the converter on generated messages.

_ENVELOPE_KEYS: Final = frozenset({"v", "type", "task_id", "sender", "recipient", "seq", "body"})
_MESSAGE_KEYS: Final = _ENVELOPE_KEYS | {"meta"}
_TYPES_BY_VALUE: Final = {member.value: member for member in MessageType}
_VALUES_BY_TYPE: Final = {member: member.value for member in MessageType}
_RESOURCE_KEYS: Final = frozenset({"resource_type", "resource_identifier", "amount"})


def _fast_meta(meta: Any) -> Meta | None:
    """Meta from a dict of the common keys with plainly valid values; None for anything else."""
    if type(meta) is not dict:
        return None
    if not meta:
        return _EMPTY_META
    batch = meta.get("batch_number")
    index = meta.get("algorithm_index", 0)
    resources = meta.get("resources_consumed", ())
    if (
        not meta.keys() <= {"batch_number", "algorithm_index", "resources_consumed"}
        or not (batch is None or (type(batch) is int and batch >= 0))
        or type(index) is not int
        or index < 0
    ):
        return None
    consumed = []
    if resources != ():
        if type(resources) is not list:
            return None
        for entry in resources:
            if type(entry) is not dict or entry.keys() != _RESOURCE_KEYS:
                return None
            kind, name, amount = (
                entry["resource_type"],
                entry["resource_identifier"],
                entry["amount"],
            )
            if type(kind) is not str or type(name) is not str or type(amount) is not int:
                return None
            consumed.append(ResourceConsumed(kind, name, amount))
    return Meta(batch_number=batch, algorithm_index=index, resources_consumed=tuple(consumed))


def _fast_message(obj: dict[str, Any]) -> Message | None:
    """The Message the converter would build from ``obj``, or None to let it decide."""
    keys = obj.keys()
    if not _ENVELOPE_KEYS <= keys <= _MESSAGE_KEYS:
        return None
    v, kind, task_id, sender, recipient, seq = (
        obj["v"],
        obj["type"],
        obj["task_id"],
        obj["sender"],
        obj["recipient"],
        obj["seq"],
    )
    if (
        type(v) is not int
        or v != 1
        or type(kind) is not str
        or type(task_id) is not str
        or type(sender) is not str
        or type(recipient) is not str
        or type(seq) is not int
        or seq < 0
    ):
        return None
    type_ = _TYPES_BY_VALUE.get(kind)
    meta = _fast_meta(obj["meta"]) if "meta" in obj else _EMPTY_META
    if type_ is None or meta is None:
        return None
    return Message(
        v=1,
        type=type_,
        task_id=task_id,
        sender=sender,
        recipient=recipient,
        seq=seq,
        body=obj["body"],
        meta=meta,
    )


def _fast_wire(message: Message) -> dict[str, Any] | None:
    """The converter's wire dict for ``message`` when its meta is the common kind, else None."""
    meta = message.meta
    if meta.total_batches is not None or meta.reason is not None:
        return None
    wire_meta: dict[str, Any] = {}
    if meta.batch_number is not None:
        wire_meta["batch_number"] = meta.batch_number
    if meta.algorithm_index != 0:
        wire_meta["algorithm_index"] = meta.algorithm_index
    if meta.resources_consumed != ():
        wire_meta["resources_consumed"] = [
            {
                "resource_type": r.resource_type,
                "resource_identifier": r.resource_identifier,
                "amount": r.amount,
            }
            for r in meta.resources_consumed
        ]
    return {
        "v": message.v,
        "type": _VALUES_BY_TYPE[message.type],
        "task_id": message.task_id,
        "sender": message.sender,
        "recipient": message.recipient,
        "seq": message.seq,
        "body": message.body,
        "meta": wire_meta,
    }


# The body types whose values the converter takes as they are when a plain check holds. A
# body that fails its check goes the converter's way, which words the error.
_FAST_BODY_OK: Final[Mapping[MessageType, Callable[[Any], bool]]] = {
    MessageType.CURRENT_BATCH_ID: lambda b: b.__class__ is int and b >= 0,
    MessageType.NUMBER_OF_BATCHES: lambda b: b.__class__ is int and (b == -1 or b >= 1),
    MessageType.BATCHES_COMPLETE: lambda b: b == "BATCHES_ONLY" or b == "TASK_COMPLETE",
    MessageType.ONLINE_CHECK: lambda b: b.__class__ is str,
    MessageType.ONLINE_RESPONSE: lambda b: b.__class__ is str,
    **{t: lambda b: b is None for t, cls in _BODY_TYPES.items() if cls is _NULL},
}

# --- Error reporting -----------------------------------------------------------------------

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _step(key: str | int) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    if _IDENTIFIER.fullmatch(key):
        return f".{key}"
    return f"[{json.dumps(key, ensure_ascii=False)}]"


def _show(value: Any) -> str:
    """Render a found value as JSON, the way the peer's author wrote it."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        text = repr(value)
    return text if len(text) <= _VALUE_EXCERPT else text[: _VALUE_EXCERPT - 3] + "..."


def _describe(cls: Any) -> str:
    """Name a field's type the way a peer's author thinks of JSON."""
    if cls is Any:
        return "any JSON value"
    if cls is None or cls is type(None):
        return "null"
    simple = {int: "an int", str: "a string", bool: "a bool", float: "a number"}
    if cls in simple:
        return simple[cls]
    origin, args = get_origin(cls), get_args(cls)
    if origin is Annotated:
        constraints = [a for a in args[1:] if isinstance(a, _Constraint)]
        return constraints[0].expected if constraints else _describe(args[0])
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin is tuple:
        return "a list" if args[0] is Any else f"a list (each item {_describe(args[0])})"
    if origin is dict:
        return "an object"
    if cls is JobRejectBody:
        return "an object with one reject reason key"
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return "one of " + ", ".join(m.value for m in cls)
    if attrs.has(cls):
        keys = [_RENAMES.get(cls, {}).get(a.name, a.name) for a in attrs.fields(cls)]
        return "an object with keys " + ", ".join(keys)
    if len(args) == 2 and type(None) in args:  # an optional field: X | None
        inner = args[0] if args[1] is type(None) else args[1]
        return f"{_describe(inner)} or null"
    return str(cls)


def _problems(exc: BaseException, path: str, cls: Any) -> list[tuple[str, str]]:
    """Flatten a cattrs error tree into (JSON path, explanation) pairs, in field order."""
    if isinstance(exc, BaseValidationError):
        renames = _RENAMES.get(exc.cl, {})
        found: list[tuple[str, str]] = []
        for sub in exc.exceptions:
            sub_path, sub_cls = path, None
            for note in getattr(sub, "__notes__", ()):
                if isinstance(note, AttributeValidationNote):
                    sub_path = path + _step(renames.get(note.name, note.name))
                    sub_cls = note.type
                elif isinstance(note, IterableValidationNote):
                    sub_path, sub_cls = path + _step(note.index), note.type
            found.extend(_problems(sub, sub_path, sub_cls))
        return found
    if isinstance(exc, _Mismatch):
        return [(path, exc.text or f"expected {_describe(cls)}, found {_show(exc.found)}")]
    if isinstance(exc, _Missing):
        return [(path, f"expected {_describe(cls)}, found nothing (the field is missing)")]
    if isinstance(exc, ForbiddenExtraKeysError):
        allowed = [_RENAMES.get(exc.cl, {}).get(a.name, a.name) for a in attrs.fields(exc.cl)]
        return [
            (
                path + _step(key),
                f"unexpected field (expected only {', '.join(allowed)}, found {key!r})",
            )
            for key in sorted(exc.extra_fields)
        ]
    return [(path, f"expected {_describe(cls)}, but {type(exc).__name__}: {exc}")]


def _decode_error(exc: BaseException, path: str, cls: Any, line: bytes | str | None) -> DecodeError:
    problems = _problems(exc, path, cls) or [(path, str(exc))]
    text = "; ".join(f"field {where}: {what}" for where, what in problems[:5])
    if len(problems) > 5:
        text += f"; and {len(problems) - 5} more"
    return DecodeError(text, field=problems[0][0], line=line)


# --- Public functions ----------------------------------------------------------------------


def body_of(message: Message) -> Any:
    """Check a message's body against its type and return it typed.

    Args:
        message: A message, decoded or built locally.

    Returns:
        The typed body: :class:`JobRequestBody`, :class:`JobAcceptBody`,
        :class:`JobRejectBody`, :class:`TaskAbortBody`, :class:`LogMessageBody` or
        :class:`ScenarioBody` for those types; an ``int`` for ``NUMBER_OF_BATCHES``
        and ``CURRENT_BATCH_ID``; a ``str`` for ``BATCHES_COMPLETE``, ``ONLINE_CHECK``
        and ``ONLINE_RESPONSE``; a ``dict`` for ``ALGORITHM_EXCHANGE``; the raw JSON
        for ``EVALUATION_RESULTS``; ``None`` for the types without a body.

    Raises:
        DecodeError: The body does not fit the type; ``field`` is its path under ``$.body``.
    """
    cls = _BODY_TYPES[message.type]
    try:
        return _converter.structure(message.body, cls)
    except Exception as exc:
        raise _decode_error(exc, "$.body", cls, None) from None


def encode(message: Message) -> bytes:
    """Write a message as one compact NDJSON line.

    Args:
        message: The message. It is not validated, so tests can send bad bodies;
            use :func:`body_of` first to check one.

    Returns:
        UTF-8 JSON ending in ``b"\\n"``.

    Raises:
        ValueError: The body holds a value JSON cannot carry (NaN, infinity).
        TypeError: The body holds a non-JSON Python object.
    """
    wire = _fast_wire(message) if type(message.type) is MessageType else None
    common = wire is not None
    if wire is None:
        wire = _unstructure_message(message)
    if message.type is MessageType.EVALUATION_RESULTS:
        # The spec requires the key here even when null; omit_if_default would drop it.
        wire["meta"].setdefault("batch_number", None)
    if common and _plainly_json(message):
        try:
            return _right_sized(orjson.dumps(wire, option=_ORJSON_OPTIONS))
        except TypeError:
            pass  # a value orjson will not write the way json does: json decides below
    try:
        return _json_encoder.encode(wire).encode() + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate (legal as a JSON escape) has no UTF-8 form; escape it instead.
        return _json_ascii_encoder.encode(wire).encode() + b"\n"


def _plainly_json(message: Message) -> bool:
    """Whether orjson writes ``message`` as json would, to the byte but float exponents.

    orjson writes NaN as null and writes enums and UUIDs, where json refuses
    them; so every value must be of an exact JSON type, and every float finite.
    Bodies and meta of other values go json's way, which also raises its errors.
    """
    meta = message.meta
    body = message.body
    kind = body.__class__
    return (
        message.task_id.__class__ is str
        and message.sender.__class__ is str
        and message.recipient.__class__ is str
        and message.seq.__class__ is int
        and message.v.__class__ is int
        and (meta.batch_number is None or meta.batch_number.__class__ is int)
        and meta.algorithm_index.__class__ is int
        and all(
            r.resource_type.__class__ is str
            and r.resource_identifier.__class__ is str
            and r.amount.__class__ is int
            for r in meta.resources_consumed
        )
        and (kind is int or kind is str or body is None or _json_typed(body))
    )


def plain_json_bytes(value: Any) -> bytes | None:
    """``value`` as compact UTF-8 JSON written by orjson, or None if json must decide.

    None for what orjson would write differently from ``json.dumps`` (NaN, enums,
    subclasses) or refuses (lone surrogates, integers beyond 64 bits).
    """
    if not _json_typed(value):
        return None
    try:
        return _right_sized(orjson.dumps(value, option=_ORJSON_PASSTHROUGH))
    except TypeError:
        return None


def _right_sized(data: bytes) -> bytes:
    """A copy of orjson's output that holds only its bytes.

    orjson's bytes keep the capacity of its write buffer (4 KiB for a 20-byte line,
    250 KiB for a 14 KB job request), so a line kept in a queue would hold that much.
    """
    return bytes(memoryview(data))


_JSON_SCALARS: Final = frozenset({str, int, bool, type(None)})


def _json_typed(value: Any) -> bool:
    """Whether ``value`` holds only exact JSON types and finite floats.

    What orjson itself refuses (lone surrogates, integers beyond 64 bits, keys that
    are not strings, deep nesting) needs no look: it raises, and json decides. A
    list or object of scalars (a job request's thousand pod names) is settled in C.
    """
    kind = value.__class__
    if kind is dict:
        items: Any = value.values()
    elif kind is list or kind is tuple:
        items = value
    elif kind is float:
        return bool(value - value == 0.0)  # inf - inf and nan - nan are nan
    else:
        return kind in _JSON_SCALARS
    kinds = set(map(type, items))
    if kinds <= _JSON_SCALARS:
        return True
    return all(item.__class__ in _JSON_SCALARS or _json_typed(item) for item in items)


# orjson's output differs from json's only in a float's exponent (1e-7, not 1e-07); values
# it would write differently (subclasses of str and int, dataclasses) go json's way.
_ORJSON_PASSTHROUGH: Final = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)
_ORJSON_OPTIONS: Final = orjson.OPT_APPEND_NEWLINE | _ORJSON_PASSTHROUGH

# The encoders json.dumps would build for each line, built once.
_json_encoder: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_json_ascii_encoder: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


# --- The value rule: what every JSON implementation can round-trip ------------------------

MAX_WAIT_S: Final = 7 * 24 * 3600.0
"""The longest timeout any option may set (a week): longer is surely a typo, and a wait
that never ends is a hang."""

MAX_SAFE_INTEGER: Final = 2**53
"""The largest integer magnitude on the wire: beyond it, a double (JavaScript) loses digits."""

MAX_NESTING: Final = 64
"""The deepest nesting of arrays and objects in a message (the envelope is level 1)."""

MAX_CONTAINERS: Final = 500_000
"""The most arrays and objects one message may hold, so a line cannot swell tenfold in memory."""


class _Flags:
    """What the parser's hooks saw in the current line that needs a closer look.

    Counters rather than booleans: decode() compares them before and after a parse,
    so a parse in another thread can only cause a needless look, never a missed one.
    """

    duplicates = 0
    big_numbers = 0


class _Duplicates(dict[str, Any]):
    """An object that repeated a key; the value walk reports it with its path."""

    duplicate: str = ""


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    _Flags.duplicates += 1
    seen: set[str] = set()
    flagged = _Duplicates(pairs)
    for key, _ in pairs:
        if key in seen:
            flagged.duplicate = key
            break
        seen.add(key)
    return flagged


def _parse_int(text: str) -> int:
    if len(text) > 15:  # 2^53 has 16 digits; shorter ones are always in range
        _Flags.big_numbers += 1
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # inf - inf is nan; a finite number minus itself is 0
        _Flags.big_numbers += 1
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder, built once: NaN and Infinity are Python extensions, not JSON.
_json_decoder: Final = json.JSONDecoder(
    parse_constant=_reject_constant,
    object_pairs_hook=_object_pairs,
    parse_int=_parse_int,
    parse_float=_parse_float,
)

# The same parser without the value rule's hooks, at full C speed (NaN and Infinity are still
# refused: that hook runs only on those tokens). A repeated key silently keeps its last value,
# so its result needs the proof under "Plain parsing" below before it can be trusted.
_plain_json_decoder: Final = json.JSONDecoder(parse_constant=_reject_constant)

# Every byte but the brackets, deleted by bytes.translate to leave a line's skeleton.
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND: Final = bytes.maketrans(b"{}", b"[]")
# A JSON string, for counting brackets outside strings.
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
# An escaped high surrogate not followed by a low one, or a low one not after a high one.
_MAYBE_LONE_SURROGATE: Final = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<![dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _check_size(raw: bytes, line: bytes | str) -> None:
    """Refuse, before parsing, a line whose arrays and objects would swamp memory."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_CONTAINERS:
        return
    found = len(_JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)) // 2
    if found > MAX_CONTAINERS:
        raise DecodeError(
            f"field $: expected at most {MAX_CONTAINERS} arrays and objects, found {found}",
            line=line[:_LINE_EXCERPT],
        )


def _too_deep(raw: bytes) -> bool:
    """Whether the nesting may exceed MAX_NESTING (brackets inside strings can only add)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:
        return False
    skeleton = raw.translate(_ONE_KIND, _NOT_BRACKETS)
    # Each round removes the innermost pairs, one level, so the rounds needed are the depth.
    for _ in range(MAX_NESTING):
        if not skeleton:
            return False
        skeleton = skeleton.replace(b"[]", b"")
    return bool(skeleton)


# --- Plain parsing: the value rule proved without the parser's hooks -----------------------
#
# A fast reader (the trace checker) parses with _plain_json_decoder and then proves that
# decode() would find nothing wrong with the values, by comparing two counts:
#
# * the line's structure bytes, its "{", "[", ":" and backslashes (_STRUCTURE): what
#   bytes.translate deletes from it;
# * the value's structure: its objects, arrays and keys, counted by _plain_extent.
#
# Each object and array of the value has its own "{" or "[" on the line and each key its own
# ":", and any other such byte sits inside a string. So the line has at least as many
# structure bytes as the value has structure, and exactly as many only if no key was dropped
# as a repeat and no string has a backslash: then there is no escape, so no escaped lone
# surrogate (the UTF-8 was checked by decoding it). _plain_extent checks the numbers and the
# nesting on its way. When the counts differ (a string holds such a byte, or a key repeats),
# _keeps_value_rule settles it the way decode() does.

_STRUCTURE: Final = b"{[:\\"
"""The structure bytes; ``len(raw) - len(raw.translate(None, _STRUCTURE))`` counts them."""

_PLAIN_PARSE_MAX_BYTES: Final = 2 * MAX_CONTAINERS
"""Lines up to this long are safe to parse before counting their containers ("[]" is 2 bytes)."""


_TWO_63: Final = 2.0**63
_STR_ONLY: Final = frozenset({str})


def _plain_extent(value: Any, depth: int) -> int:
    """The keys, objects and arrays in ``value``, which sits at nesting ``depth``.

    -1 if a number in it is beyond the value rule (an integer beyond ±2^53, a float that
    overflowed to infinity) or it nests deeper than MAX_NESTING.
    """
    kind = value.__class__
    if kind is dict:
        extent = 1 + len(value)
        items = value.values()
    elif kind is list:
        extent = 1
        items = value
    elif kind is int:
        return 0 if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else -1
    elif kind is float:
        # inf - inf is nan. A float beyond 2^63 may be orjson's reading of an integer
        # literal out of its range, which decode() refuses: the slow check settles it.
        return 0 if value - value == 0.0 and -_TWO_63 < value < _TWO_63 else -1
    else:
        return 0  # a string, a bool or null
    if depth > MAX_NESTING:
        return -1
    for item in items:
        kind = item.__class__
        if kind is str:
            continue
        if kind is list and depth < MAX_NESTING:
            if len(item) > 16:  # a long list (a job request's pod names): settled in C
                if set(map(type, item)) <= _STR_ONLY:
                    extent += 1
                    continue
            else:  # a short list of strings, without a call
                for inner_item in item:
                    if inner_item.__class__ is not str:
                        break
                else:
                    extent += 1
                    continue
        inner = _plain_extent(item, depth + 1)
        if inner < 0:
            return -1
        extent += inner
    return extent


def _keeps_value_rule(text: str, raw: bytes) -> bool:
    """Whether decode() finds the values of a line (``text``, UTF-8 ``raw``) within the rule.

    The slower check, with the hooked parser and decode()'s own scans, for a line whose
    structure counts do not settle it.
    """
    if len(raw) > _PLAIN_PARSE_MAX_BYTES and raw.count(b"[") + raw.count(b"{") > MAX_CONTAINERS:
        return False
    flags_before = _Flags.duplicates + _Flags.big_numbers
    try:
        obj = _json_decoder.decode(text)
        _check_values(obj, raw, text, _Flags.duplicates + _Flags.big_numbers != flags_before)
    except (DecodeError, ValueError, RecursionError):
        return False
    return True


def _lone_surrogate_at(text: str) -> int:
    """The offset of a lone UTF-16 surrogate in ``text``, or -1."""
    if text.isascii():
        return -1
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        return exc.start
    return -1


# Values that can never break the rule, skipped without a call.
_ALWAYS_OK: Final = frozenset({bool, type(None)})


def _value_problem(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    """The first value, in document order, that breaks the rule: (path, explanation)."""
    kind = type(value)
    if kind is str:
        if (at := _lone_surrogate_at(value)) != -1:
            return path, (
                "expected text without lone UTF-16 surrogates (they have no UTF-8 form), "
                f"found {value[at]!a} at offset {at}"
            )
        return None
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return None
        digits = str(value)
        shown = digits if len(digits) <= 24 else f"{digits[:20]}... ({len(digits)} digits)"
        return path, f"expected an integer within ±2^53 ({MAX_SAFE_INTEGER}), found {shown}"
    if kind is float:
        if math.isfinite(value):
            return None
        shown = "NaN" if value != value else "a number too large for a double (infinity)"
        return path, f"expected a finite number, found {shown}"
    if kind is not list and kind is not dict and kind is not _Duplicates:
        return None
    if depth > MAX_NESTING:
        return path, f"expected at most {MAX_NESTING} levels of arrays and objects, found more"
    if kind is list:
        for index, item in enumerate(value):
            if type(item) not in _ALWAYS_OK:
                found = _value_problem(item, f"{path}[{index}]", depth + 1)
                if found is not None:
                    return found
        return None
    for key, item in value.items():
        if (at := _lone_surrogate_at(key)) != -1:
            return path, f"expected keys without lone UTF-16 surrogates, found {key!a}"
        if kind is _Duplicates and key == value.duplicate:
            return path + _step(key), f"expected each key once per object, found {key!r} twice"
        if type(item) not in _ALWAYS_OK:
            found = _value_problem(item, path + _step(key), depth + 1)
            if found is not None:
                return found
    return None


def value_problem(value: Any, path: str = "$") -> str | None:
    """Why ``value`` cannot go on the wire, or None when it can.

    For values built locally (an algorithm's results) before they are sent: the
    same rule :func:`decode` holds peers to, plus "only JSON types" (tuples count
    as lists). The answer names the first offending field under ``path``.
    """
    if _locally_fine(value, 1):
        return None
    found = _local_problem(value, path, 1)
    return None if found is None else f"field {found[0]}: {found[1]}"


def _locally_fine(value: Any, depth: int) -> bool:
    """Whether :func:`_local_problem` finds nothing: the same rule, without building paths.

    Values are sent far more often than refused; the walk that names the
    offending field runs only when this says there is one.
    """
    kind = value.__class__
    if kind is str:
        return _lone_surrogate_at(value) == -1
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    if kind is float:
        return math.isfinite(value)
    if kind is bool or value is None:
        return True
    if kind is list or kind is tuple:
        if depth > MAX_NESTING:
            return False
        return all(_locally_fine(item, depth + 1) for item in value)
    if kind is dict:
        if depth > MAX_NESTING:
            return False
        for key, item in value.items():
            if key.__class__ is not str or _lone_surrogate_at(key) != -1:
                return False
            if not _locally_fine(item, depth + 1):
                return False
        return True
    return False


def _local_problem(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    kind = type(value)
    if kind in (str, int, float, bool, type(None)):
        return _value_problem(value, path, depth)
    if kind is list or kind is tuple:
        if depth > MAX_NESTING:
            return path, f"expected at most {MAX_NESTING} levels of arrays and objects, found more"
        for index, item in enumerate(value):
            found = _local_problem(item, f"{path}[{index}]", depth + 1)
            if found is not None:
                return found
        return None
    if kind is dict:
        if depth > MAX_NESTING:
            return path, f"expected at most {MAX_NESTING} levels of arrays and objects, found more"
        for key, item in value.items():
            if type(key) is not str:
                return path, f"expected string keys, found {type(key).__name__} {key!r:.40}"
            if _lone_surrogate_at(key) != -1:
                return path, f"expected keys without lone UTF-16 surrogates, found {key!a}"
            found = _local_problem(item, path + _step(key), depth + 1)
            if found is not None:
                return found
        return None
    return path, f"expected a JSON value, found a Python {type(value).__name__}"


def wire_text(text: str) -> str:
    """``text`` with any lone surrogate written as ``\\udXXX``, so it can go on the wire."""
    if _lone_surrogate_at(text) == -1:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_values(obj: Any, raw: bytes, line: bytes | str, flagged: bool) -> None:
    """Enforce the value rule on a parsed line.

    The parser's hooks and byte scans at C speed decide whether the parsed value
    needs a walk; for most lines none does. The walk names the first offending field.
    """
    if not (
        flagged
        or (b"\\u" in raw and _MAYBE_LONE_SURROGATE.search(raw))
        or (type(line) is str and not line.isascii() and _lone_surrogate_at(line) != -1)
        or _too_deep(raw)
    ):
        return
    found = _value_problem(obj, "$", 1)
    if found is not None:
        where, what = found
        if len(where) > 120:
            where = where[:100] + "..." + where[-17:]
        raise DecodeError(f"field {where}: {what}", field=where, line=line[:_LINE_EXCERPT])


def _plain_decode(raw: bytes) -> Message | None:
    """The message of a line that is plainly well formed, or None to let decode() judge it.

    orjson parses (it refuses what json refuses, and also lone surrogates, numbers
    that overflow, and nesting json would recurse on); the structure counts under
    "Plain parsing" prove the value rule. Any doubt goes the careful way, which
    also words the error.
    """
    if len(raw) > _PLAIN_PARSE_MAX_BYTES:
        return None
    newline = raw.find(b"\n")
    if newline != -1 and newline != len(raw) - 1:
        return None  # orjson would read a newline inside a line as white space
    try:
        obj = _orjson_loads(raw)
    except orjson.JSONDecodeError:
        return None
    if obj.__class__ is not dict or len(raw) - len(raw.translate(None, _STRUCTURE)) != (
        _plain_extent(obj, 1)
    ):
        return None
    try:
        return _message_from(obj, raw)
    except DecodeError:
        return None  # decode() says it again, with the whole story


_orjson_loads: Final = orjson.loads


def decode(line: bytes | str, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Message:
    """Parse and validate one wire line, never trusting the peer.

    Args:
        line: One NDJSON line, with or without its final newline.
        max_line_bytes: Longer lines are rejected before parsing.

    Returns:
        The message; its body fits its type (see :func:`body_of`).

    Raises:
        DecodeError: For any bad input, and only that. ``field`` is the JSON
            path of the first problem (``$`` for the whole line) and the message
            says what was expected and what was found.
    """
    if line.__class__ is bytes and len(line) <= max_line_bytes:
        plain = _plain_decode(line)
        if plain is not None:
            return plain
    if isinstance(line, str):
        # A character is at most 4 bytes, so most lines skip the encoding.
        size = len(line) if len(line) * 4 <= max_line_bytes else len(line.encode(errors="replace"))
    else:
        size = len(line)
    if size > max_line_bytes:
        raise DecodeError(
            f"field $: expected a line of at most {max_line_bytes} bytes, found {size} bytes",
            line=line[:_LINE_EXCERPT],
        )
    try:
        text = line if isinstance(line, str) else line.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"field $: expected UTF-8 text, found byte 0x{exc.object[exc.start]:02x}"
            f" at offset {exc.start}",
            line=line[:_LINE_EXCERPT],
        ) from None
    newline = text.find("\n")
    if newline != -1 and newline != len(text) - 1:
        raise DecodeError(
            f"field $: expected one line, found a newline at offset {newline}",
            line=line[:_LINE_EXCERPT],
        )
    raw = line if isinstance(line, bytes) else text.encode(errors="surrogatepass")
    _check_size(raw, line)
    flags_before = _Flags.duplicates + _Flags.big_numbers
    try:
        obj = _json_decoder.decode(text)
    except RecursionError:
        raise DecodeError(
            "field $: expected JSON, found nesting too deep", line=line[:_LINE_EXCERPT]
        ) from None
    except ValueError as exc:  # json.JSONDecodeError, NaN, or an int too long to convert
        raise DecodeError(
            f"field $: expected JSON, found invalid JSON ({exc})", line=line[:_LINE_EXCERPT]
        ) from None
    if type(obj) is not dict and type(obj) is not _Duplicates:
        raise DecodeError(
            f"field $: expected a JSON object, found {_show(obj)}", line=line[:_LINE_EXCERPT]
        )
    _check_values(obj, raw, line, _Flags.duplicates + _Flags.big_numbers != flags_before)
    return _message_from(obj, line)


def _message_from(obj: dict[str, Any], line: bytes | str) -> Message:
    """The message of a parsed line whose values keep the value rule."""
    fast = _fast_message(obj)
    if fast is not None:
        message = fast
    else:
        try:
            message = _structure_message(obj, Message)
        except Exception as exc:
            raise _decode_error(exc, "$", Message, line[:_LINE_EXCERPT]) from None
    body_type = _BODY_TYPES[message.type]
    fast_ok = _FAST_BODY_OK.get(message.type)
    if fast_ok is not None and fast_ok(message.body):
        pass
    elif body_type is not JSON:
        try:
            _converter.structure(message.body, body_type)
        except Exception as exc:
            raise _decode_error(exc, "$.body", body_type, line[:_LINE_EXCERPT]) from None
    elif message.type is MessageType.EVALUATION_RESULTS and "batch_number" not in obj.get(
        "meta", ()
    ):
        raise DecodeError(
            "field $.meta.batch_number: expected an int >= 0 or null (required on"
            " EVALUATION_RESULTS), found nothing (the field is missing)",
            field="$.meta.batch_number",
            line=line[:_LINE_EXCERPT],
        )
    return message
