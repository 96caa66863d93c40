"""The oracle of the documented order (spec section 4), on hand-written traces.

Each accepted trace is a case the spec spells out; each rejected one breaks
exactly one rule, and the test pins the message the oracle names. The
property tests (tests/test_properties.py) then hold the oracle against the
charts on the runtime's traces and on mutations of them.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from fsm_protocol import AbortReason, Message, MessageType, Meta, TaskAbortBody, registry
from fsm_protocol._algo._protocols import EchoProtocol
from tests.oracle import Rejection, check_order

from .chart_replay import replay_modeller_chart

T = MessageType
TASK = "t-oracle"
_UNSET: Any = object()


def req(pod: str, *, batched: bool = False, setup: bool = False) -> Message:
    protocol = registry.dump(EchoProtocol(items=("x",), initial_setup=setup))
    body = {
        "protocol": protocol,
        "pod_identifiers": [pod],
        "batched_execution": batched,
        "run_on_new_data_only": False,
        "force_rerun_failed_files": False,
        "test_run": False,
        "project_id": None,
        "options": {},
    }
    return m(pod, T.JOB_REQUEST, body)


def m(pod: str, kind: MessageType, body: Any = None) -> Message:
    return Message.make(kind, task_id=TASK, sender="modeller", recipient=pod, seq=0, body=body)


def w(
    pod: str, kind: MessageType, body: Any = None, *, batch: Any = _UNSET, index: int = 0
) -> Message:
    meta = None
    if kind is T.EVALUATION_RESULTS:
        meta = Meta(batch_number=None if batch is _UNSET else batch, algorithm_index=index)
    return Message.make(
        kind, task_id=TASK, sender=pod, recipient="modeller", seq=0, body=body, meta=meta
    )


def abort(pod: str, reason: AbortReason = AbortReason.WORKER_ERROR) -> Message:
    return w(pod, T.TASK_ABORT, TaskAbortBody("stop", reason))


Part = Message | list["Part"]


def flatten(parts: Any) -> list[Message]:
    if isinstance(parts, Message):
        return [parts]
    return [m for part in parts for m in flatten(part)]


def trace(*parts: Part) -> list[Message]:
    """Flatten, and number each sender's messages 0, 1, 2, ..."""
    flat = flatten(parts)
    seqs: dict[str, int] = {}
    out = []
    for message in flat:
        seq = seqs.get(message.sender, 0)
        seqs[message.sender] = seq + 1
        out.append(Message.make(
            message.type, task_id=message.task_id, sender=message.sender,
            recipient=message.recipient, seq=seq, body=message.body, meta=message.meta,
        ))  # fmt: skip
    return out


def opening(pod: str, *, batched: bool = False, setup: bool = False) -> list[Message]:
    """From the accept to the worker's TASK_START."""
    out = [w(pod, T.JOB_ACCEPT, {"ACCEPT": pod})]
    if setup:
        out.append(m(pod, T.ALGORITHM_EXCHANGE, {}))
    out += [w(pod, T.PREPARING_DATA), w(pod, T.CONFIGURING_TASK)]
    if batched:
        out += [
            w(pod, T.PREPARING_DATA_BATCHES),
            w(pod, T.NUMBER_OF_BATCHES, -1),
            w(pod, T.CURRENT_BATCH_ID, 0),
            w(pod, T.TASK_START),
        ]
    else:
        out += [w(pod, T.NUMBER_OF_BATCHES, 1), w(pod, T.TASK_START)]
    return out


def single_run(pod: str) -> list[Message]:
    """A non-batched worker from the modeller's TASK_START to its end."""
    return [
        m(pod, T.TASK_START),
        w(pod, T.EVALUATION_RESULTS, {"items": ["x"]}),
        w(pod, T.BATCHES_COMPLETE, "TASK_COMPLETE"),
        m(pod, T.TASK_COMPLETE),
    ]


def accepted(t: list[Message], **kwargs: Any) -> None:
    verdict = check_order(t, **kwargs)
    assert verdict is None, str(verdict)
    # Every trace accepted here is one the modeller chart accepts too.
    assert replay_modeller_chart(t, **kwargs) is None


def rejected(t: list[Message], index: int, words: str, **kwargs: Any) -> Rejection:
    verdict = check_order(t, **kwargs)
    assert verdict is not None, "the oracle accepted it"
    assert (verdict.index, words in verdict.reason) == (index, True), str(verdict)
    return verdict


# --------------------------------------------------------------- accepted


def test_a_non_batched_task() -> None:
    accepted(trace(req("a"), opening("a"), single_run("a")))


def test_a_streaming_task_with_resilience_and_an_early_estimate() -> None:
    accepted(
        trace(
            req("a", batched=True),
            w("a", T.JOB_ACCEPT, {"ACCEPT": "a"}),
            w("a", T.NUMBER_OF_BATCHES, -1),  # PREPARING_DATA, CONFIGURING_TASK are optional
            w("a", T.CURRENT_BATCH_ID, 0),
            w("a", T.NUMBER_OF_BATCHES, 3),  # the estimate, before the TASK_START handshake
            w("a", T.TASK_START),
            m("a", T.TASK_START),
            w("a", T.EVALUATION_RESULTS, {"items": ["x"]}, batch=0),
            w("a", T.EVALUATION_RESULTS, {"items": ["x"]}, batch=0, index=1),  # a second algorithm
            w("a", T.CURRENT_BATCH_ID, 1),  # batch 1 failed: no results
            w("a", T.CURRENT_BATCH_ID, 2),
            w("a", T.EVALUATION_RESULTS, {"items": ["z"]}, batch=2),
            w("a", T.BATCHES_COMPLETE, "BATCHES_ONLY"),
            w("a", T.EVALUATION_RESULTS, {"items": ["y1"]}),  # one per retried item
            w("a", T.EVALUATION_RESULTS, {"items": ["y2"]}),
            w("a", T.BATCHES_COMPLETE, "TASK_COMPLETE"),
            m("a", T.TASK_COMPLETE),
        )
    )


def test_the_setup_exchange_may_cross_the_workers_progress_markers() -> None:
    accepted(
        trace(
            req("a", setup=True),
            w("a", T.JOB_ACCEPT, {"ACCEPT": "a"}),
            w("a", T.PREPARING_DATA),
            w("a", T.CONFIGURING_TASK),
            m("a", T.ALGORITHM_EXCHANGE, {"k": 1}),
            w("a", T.NUMBER_OF_BATCHES, 1),
            w("a", T.TASK_START),
            single_run("a"),
        )
    )


def test_two_workers_meet_at_the_barrier_and_at_completion() -> None:
    accepted(
        trace(
            req("a"),
            req("b"),
            opening("a"),
            opening("b"),
            m("a", T.TASK_START),
            m("b", T.TASK_START),
            w("b", T.EVALUATION_RESULTS, {"items": ["x"]}),
            w("b", T.BATCHES_COMPLETE, "TASK_COMPLETE"),
            w("a", T.LOG_MESSAGE, {"level": "INFO", "message": "slow"}),
            w("a", T.ONLINE_CHECK, "t1"),
            m("a", T.ONLINE_RESPONSE, "t1"),
            w("a", T.EVALUATION_RESULTS, {"items": ["x"]}),
            w("a", T.BATCHES_COMPLETE, "TASK_COMPLETE"),
            m("b", T.TASK_COMPLETE),
            m("a", T.TASK_COMPLETE),
        )
    )


def test_a_cancel_may_cross_the_workers_messages_and_its_abort() -> None:
    accepted(
        trace(
            req("a"),
            req("b"),
            opening("a"),
            opening("b"),
            m("a", T.TASK_START),
            m("b", T.TASK_START),
            w("b", T.EVALUATION_RESULTS, {"items": ["x"]}),
            w("b", T.BATCHES_COMPLETE, "TASK_COMPLETE"),
            abort("a", AbortReason.LIMITS_EXCEEDED),  # a aborts on its own ...
            m("b", T.TASK_CANCEL),  # ... so b, done already, is cancelled
            abort("b", AbortReason.CANCELLED_BY_MODELLER),
        )
    )
    # The cancel crosses the worker's own abort: valid, and the worker ignores it.
    accepted(trace(req("a"), opening("a"), m("a", T.TASK_CANCEL), abort("a", AbortReason.NO_DATA)))


def test_a_pod_that_never_answers_is_left_out_but_has_not_ended() -> None:
    t = trace(req("a"), req("mute"), opening("a"), single_run("a"))
    accepted(t, faulty={"mute"})
    rejected(t, len(t), "trace ends while pod mute has not answered its JOB_REQUEST")


def test_a_late_accept_is_cancelled_and_not_waited_for() -> None:
    accepted(
        trace(
            req("a"),
            req("late"),
            opening("a"),
            m("a", T.TASK_START),  # the modeller stopped waiting for "late"
            w("late", T.JOB_ACCEPT, {"ACCEPT": "late"}),
            m("late", T.TASK_CANCEL),
            w("late", T.PREPARING_DATA),  # crossed the cancel
            abort("late", AbortReason.CANCELLED_BY_MODELLER),
            w("a", T.EVALUATION_RESULTS, {"items": ["x"]}),
            w("a", T.BATCHES_COMPLETE, "TASK_COMPLETE"),
            m("a", T.TASK_COMPLETE),
        )
    )


def test_a_faulty_pods_conversation_may_stop_anywhere() -> None:
    t = trace(req("a"), w("a", T.JOB_ACCEPT, {"ACCEPT": "a"}), w("a", T.PREPARING_DATA))
    accepted(t, faulty={"a"})
    rejected(t, 3, "trace ends while pod a is engaged")


# --------------------------------------------------------------- rejected


def test_an_empty_trace() -> None:
    assert check_order([]) == Rejection(0, "an empty trace is a violation")


def test_a_task_starts_with_a_job_request() -> None:
    rejected(trace(w("a", T.JOB_ACCEPT, {"ACCEPT": "a"})), 0, "starts with JOB_REQUEST")


def test_the_end_of_the_trace_is_named_after_the_last_line() -> None:
    t = trace(req("a"), opening("a"), m("a", T.TASK_START))
    verdict = rejected(
        t, len(t), "trace ends while pod a is engaged (after the modeller's TASK_START)"
    )
    assert verdict.line == len(t) + 1 and verdict.message is None
    assert str(verdict).startswith(f"at the end of the trace (line {len(t) + 1})")


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (w("a", T.EVALUATION_RESULTS, {}, batch=0), "a second result for batch 0"),
        (w("a", T.EVALUATION_RESULTS, {}, batch=1), "result for batch 1 during batch 0"),
        (w("a", T.EVALUATION_RESULTS, {}), "result for batch None during batch 0"),
        (w("a", T.CURRENT_BATCH_ID, 2), "CURRENT_BATCH_ID(2) after batch 0; expected 1"),
        (w("a", T.NUMBER_OF_BATCHES, 4), "a second estimate"),
        (w("a", T.NUMBER_OF_BATCHES, -1), "an estimate must be positive"),
        (w("a", T.BATCHES_COMPLETE, "TASK_COMPLETE"), 'BATCHES_COMPLETE("TASK_COMPLETE") after'),
        (w("a", T.TASK_START), "the worker's TASK_START comes after"),
        (w("a", T.JOB_ACCEPT, {"ACCEPT": "a"}), "already answered"),
        (m("a", T.TASK_START), "the modeller's TASK_START to a after the modeller's TASK_START"),
        (m("a", T.TASK_COMPLETE), "TASK_COMPLETE to a after the modeller's TASK_START"),
        (m("a", T.ALGORITHM_EXCHANGE, {}), "ALGORITHM_EXCHANGE for a protocol without"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_one_wrong_message_in_a_streaming_run(extra: Message, words: str) -> None:
    before = trace(
        req("a", batched=True),
        w("a", T.JOB_ACCEPT, {"ACCEPT": "a"}),
        w("a", T.NUMBER_OF_BATCHES, -1),
        w("a", T.CURRENT_BATCH_ID, 0),
        w("a", T.NUMBER_OF_BATCHES, 3),
        w("a", T.TASK_START),
        m("a", T.TASK_START),
        w("a", T.EVALUATION_RESULTS, {"items": ["x"]}, batch=0),
    )
    t = trace(before, extra)
    rejected(t, len(before), words)
    assert replay_modeller_chart(t) is not None  # the chart refuses it too


def test_results_before_the_handshake() -> None:
    before = trace(req("a"), opening("a"))
    t = trace(before, w("a", T.EVALUATION_RESULTS, {}))
    rejected(t, len(before), "results follow the modeller's TASK_START")


def test_an_estimate_after_batches_only_or_in_a_non_batched_run() -> None:
    before = trace(
        req("a", batched=True), opening("a", batched=True), m("a", T.TASK_START),
        w("a", T.BATCHES_COMPLETE, "BATCHES_ONLY"),
    )  # fmt: skip
    streaming = trace(before, w("a", T.NUMBER_OF_BATCHES, 2))
    rejected(streaming, len(before), "an estimate comes after CURRENT_BATCH_ID(0) and before")
    before = trace(req("a"), opening("a"), m("a", T.TASK_START))
    single = trace(before, w("a", T.NUMBER_OF_BATCHES, 2))
    rejected(single, len(before), "a second NUMBER_OF_BATCHES in a non-batched job")


def test_the_initial_setup_must_come_before_the_batches_are_planned() -> None:
    t = trace(
        req("a", setup=True), w("a", T.JOB_ACCEPT, {"ACCEPT": "a"}), w("a", T.NUMBER_OF_BATCHES, 1)
    )
    rejected(t, 2, "before the modeller's ALGORITHM_EXCHANGE")


def test_the_barrier_waits_for_every_accepted_worker() -> None:
    before = trace(req("a"), req("b"), opening("a"), w("b", T.JOB_ACCEPT, {"ACCEPT": "b"}))
    t = trace(before, m("a", T.TASK_START))
    rejected(
        t, len(before), "TASK_START before every accepted worker sent TASK_START: waiting for b"
    )


def test_completion_waits_for_every_worker_and_for_no_abort() -> None:
    both = [
        req("a"),
        req("b"),
        opening("a"),
        opening("b"),
        m("a", T.TASK_START),
        m("b", T.TASK_START),
    ]
    a_done = [
        w("a", T.EVALUATION_RESULTS, {"items": []}),
        w("a", T.BATCHES_COMPLETE, "TASK_COMPLETE"),
    ]
    n = len(trace(both, a_done))
    rejected(trace(both, a_done, m("a", T.TASK_COMPLETE)), n, "waiting for b")
    t = trace(both, a_done, abort("b"), m("a", T.TASK_COMPLETE))
    rejected(t, n + 1, "TASK_COMPLETE to a, which is owed a TASK_CANCEL")
    t = trace(both, a_done, abort("b"), m("a", T.TASK_CANCEL), abort("a"))
    accepted(t)


def test_a_cancel_goes_at_most_once_and_only_to_an_accepted_worker() -> None:
    rejected(trace(req("a"), m("a", T.TASK_CANCEL)), 1, "TASK_CANCEL to a before its JOB_ACCEPT")
    before = trace(req("a"), opening("a"), m("a", T.TASK_CANCEL))
    rejected(trace(before, m("a", T.TASK_CANCEL)), len(before), "a second TASK_CANCEL")
    run = single_run("a")
    t = trace(req("a"), opening("a"), run[:-1], m("a", T.TASK_CANCEL), run[-1])
    rejected(t, len(t) - 1, "TASK_COMPLETE to a after its TASK_CANCEL")
    # Alone and cancelled, a is no longer waited for, so nothing can open the barrier.
    rejected(trace(before, run), len(before), "TASK_START while no accepted worker is left")


def test_nothing_follows_the_end() -> None:
    done = trace(req("a"), opening("a"), single_run("a"))
    log = w("a", T.LOG_MESSAGE, {"level": "INFO", "message": "hi"})
    rejected(trace(done, log), len(done), "a already ended (complete)")
    refused = trace(req("a"), w("a", T.JOB_REJECT, {"NO_DATA": []}))
    rejected(trace(refused, log), len(refused), "a already ended (rejected)")


def test_the_envelope_seq_task_and_direction() -> None:
    good = trace(req("a"), opening("a"), single_run("a"))
    gap = [*good[:3], attrs.evolve(good[3], seq=good[3].seq + 1), *good[4:]]
    rejected(gap, 3, "seq 3 of a, expected 2")
    assert check_order(gap, check_seq=False) is None
    assert check_order(gap, check_seq=False, faulty={"a"}) is None

    def second(**fields: Any) -> list[Message]:
        return [good[0], attrs.evolve(good[1], **fields)]

    rejected(second(task_id="t-other"), 1, "task id 't-other', expected 't-oracle'")
    rejected(second(recipient="b"), 1, "neither sender 'a' nor recipient 'b' is the modeller")
    rejected(second(type=T.TASK_CANCEL), 1, "a worker never sends TASK_CANCEL")


def test_a_rejection_names_the_message() -> None:
    t = trace(req("a"), m("a", T.TASK_CANCEL))
    verdict = check_order(t)
    assert verdict is not None
    assert str(verdict) == (
        "message 1 (line 2, TASK_CANCEL modeller -> a, seq 1): "
        "TASK_CANCEL to a before its JOB_ACCEPT"
    )
    assert verdict.pod == "a" and verdict.message == t[1]
