"""The rule book: every normative sentence of wire spec sections 2 to 6 as a numbered rule.

This table is the one statement of what conformance means. The trace checker
cites a rule's id in every violation it reports, ``docs/conformance.md`` prints
the table (generated from here, and tested against it), and
``tests/test_rule_book.py`` runs each rule's minimal breaking trace
(``tests/traces/rules/<id>.jsonl``) through ``fsm-protocol check``.

An id is ``<role letter>-<section>.<number>``: ``W`` binds the worker, ``M``
the modeller, ``E`` any sender (or the trace as a whole), ``F`` the framing of
section 1, which every violation of a line's bytes must also be able to cite.
Numbers run through a section whatever the letter, so ``4.9`` names one rule.

Where the spec can be read two ways, ``reading`` says which reading the
checker takes and why: permissive for what a correct peer *may* do, strict for
what it *must* do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, final

import attrs

WORKER: Final = "worker"
MODELLER: Final = "modeller"
ANY: Final = "any sender"

TRACE: Final = "trace"
"""The checker enforces the rule on a trace; the rule has a breaking trace."""
KIT: Final = "kit"
"""Only the live kit can see the rule (time, processes, the control line)."""


@final
@attrs.frozen
class Rule:
    """One rule of the rule book.

    Attributes:
        id: ``W-4.5``: role letter, spec section, number.
        role: Who the rule binds: ``worker``, ``modeller`` or ``any sender``.
        section: The wire spec section the sentence is in.
        text: The rule, as the spec says it.
        check: What enforces it (``decode()``, a chart guard, the Echo account, the kit).
        reading: Which reading we take where the spec is ambiguous, and why.
        by: ``trace`` (the checker enforces it and tests/traces/rules/<id>.jsonl breaks
            it) or ``kit`` (only a live run can see it).
        kit: Kit cases (``role:scenario``) that provoke it live; empty when a case is
            still needed.
    """

    id: str
    role: str
    section: int
    text: str
    check: str
    reading: str = ""
    by: str = TRACE
    kit: tuple[str, ...] = ()

    @property
    def trace(self) -> str | None:
        """The file name of the rule's breaking trace in ``tests/traces/rules/``."""
        return f"{self.id}.jsonl" if self.by == TRACE else None


def _r(
    id: str,
    role: str,
    text: str,
    check: str,
    *kit: str,
    reading: str = "",
    by: str = TRACE,
) -> Rule:
    section = int(id.split("-")[1].split(".")[0])
    return Rule(id, role, section, text, check, reading, by, tuple(kit))


RULES: Final[tuple[Rule, ...]] = (
    # --- 1. Framing (the bytes of a line) -------------------------------------------------
    _r(
        "F-1.1",
        ANY,
        "Each message is one JSON object, UTF-8, on one line ending with a newline.",
        "decode(): field $",
        "worker:single-run",
        "modeller:single-run",
    ),
    _r(
        "F-1.2",
        ANY,
        "A line is at most the receiver's limit (16 MiB by default).",
        "read_lines() cuts the line at the limit + 1 byte; decode(): field $",
        "worker:single-run",
        "modeller:single-run",
        reading="The trace is 16 MiB + 1 byte, so the test builds it instead of storing it.",
    ),
    # --- 2. Envelope --------------------------------------------------------------------
    _r(
        "E-2.1",
        ANY,
        "The envelope has the fields v, type, task_id, sender, recipient, seq, body and"
        " (optionally) meta, and no others.",
        "decode(): a missing or unexpected envelope field",
        "worker:single-run",
        "modeller:single-run",
    ),
    _r(
        "E-2.2",
        ANY,
        "v is the int 1.",
        "decode(): field $.v",
        "worker:single-run",
        "modeller:single-run",
        reading="1.0 and true are not the int 1 (section 1: 1.0 is not an int).",
    ),
    _r(
        "E-2.3",
        ANY,
        "type is one of the types of section 3.",
        "decode(): field $.type",
        "worker:single-run",
        "modeller:single-run",
    ),
    _r(
        "E-2.4",
        ANY,
        "task_id, sender and recipient are strings.",
        "decode(): fields $.task_id, $.sender, $.recipient",
        "worker:single-run",
        "modeller:single-run",
    ),
    _r(
        "E-2.5",
        ANY,
        "seq is an int >= 0.",
        "decode(): field $.seq",
        "worker:single-run",
        "modeller:single-run",
    ),
    _r(
        "E-2.6",
        ANY,
        "Each sender has one seq counter per task, starting at 0 and going up by exactly 1"
        " with every message it sends, whoever receives it.",
        "the checker's seq counter per (task, sender), in trace order",
        "worker:batches",
        "modeller:two-pods",
        reading="Strict: a trace checker sees everything, so it checks the exact +1 in the"
        " order the lines were written, the modeller's messages to different pods included"
        " (a modeller must stamp seq when it writes, not when it decides to send). Over TCP"
        " each pod has its own connection and the kit reads them concurrently, so it cannot"
        " see the order of writes across them: it checks what such an observer can"
        " (TraceChecker(interleaved=True)): rising on each connection, each number once,"
        " none missing below the highest seen.",
    ),
    _r(
        "E-2.7",
        ANY,
        "body is present (null where the type has no body).",
        "decode(): field $.body missing",
        "worker:single-run",
        "modeller:single-run",
    ),
    _r(
        "E-2.8",
        ANY,
        "meta, when present, is an object.",
        "decode(): field $.meta",
        "worker:single-run",
        "modeller:single-run",
        reading='"meta": null is not absent: it is refused, as decode() refuses it.'
        " Unknown meta keys are ignored (permissive, as the spec says).",
    ),
    _r(
        "E-2.9",
        ANY,
        "The known meta keys have their types: batch_number an int >= 0 or null,"
        " total_batches an int or null, algorithm_index an int >= 0, resources_consumed a"
        " list of {resource_type, resource_identifier, amount}, reason a string.",
        "decode(): fields $.meta.*",
        "worker:single-run",
        "modeller:single-run",
    ),
    _r(
        "W-2.10",
        WORKER,
        "EVALUATION_RESULTS carries meta with a batch_number.",
        "decode(): field $.meta.batch_number on EVALUATION_RESULTS",
        "worker:batches",
    ),
    _r(
        "W-2.11",
        WORKER,
        "meta.batch_number of EVALUATION_RESULTS is the current batch id during the batch loop,"
        " and null in a non-batched run or a resilience retry.",
        "chart guards is_batch_result, is_unbatched_result, is_retry_result",
        "worker:batches",
        "worker:resilience",
        "worker:single-run",
    ),
    # --- 3. Message types -----------------------------------------------------------------
    _r(
        "M-3.1",
        MODELLER,
        "The modeller sends only the M→W types (JOB_REQUEST, ALGORITHM_EXCHANGE, TASK_START,"
        " TASK_COMPLETE, TASK_CANCEL, ONLINE_RESPONSE, LOG_MESSAGE).",
        "the message catalogue's senders (SENDERS)",
        "modeller:single-run",
    ),
    _r(
        "W-3.2",
        WORKER,
        "A worker sends only the W→M types, and to the modeller.",
        "the message catalogue's senders (SENDERS); recipient is the task's modeller",
        "worker:single-run",
        reading="The modeller's name is the sender of the task's first JOB_REQUEST.",
    ),
    _r(
        "M-3.3",
        MODELLER,
        "JOB_REQUEST's body holds protocol (with a string class_name), pod_identifiers,"
        " batched_execution, run_on_new_data_only, force_rerun_failed_files, test_run,"
        " project_id and options, with their types.",
        "decode(): field $.body of JOB_REQUEST",
        "modeller:single-run",
    ),
    _r(
        "W-3.4",
        WORKER,
        'JOB_ACCEPT\'s body is {"ACCEPT": <pod id>}, the id of the pod that accepts.',
        "decode(): field $.body of JOB_ACCEPT; the checker compares the id with the sender",
        "worker:single-run",
        reading="Strict: <pod id> is the accepting pod's own identifier, its sender.",
    ),
    _r(
        "W-3.5",
        WORKER,
        "JOB_REJECT's body is {<reject reason>: [str, ...]} with a reason of section 3.",
        "decode(): field $.body of JOB_REJECT",
        "worker:reject-batch-size",
    ),
    _r(
        "E-3.6",
        ANY,
        "PREPARING_DATA, CONFIGURING_TASK, PREPARING_DATA_BATCHES, TASK_START, TASK_COMPLETE"
        " and TASK_CANCEL have the body null.",
        "decode(): field $.body",
        "worker:single-run",
        "modeller:single-run",
    ),
    _r(
        "M-3.7",
        MODELLER,
        "ALGORITHM_EXCHANGE's body is an object.",
        "decode(): field $.body of ALGORITHM_EXCHANGE",
        "modeller:initial-setup",
    ),
    _r(
        "W-3.8",
        WORKER,
        "NUMBER_OF_BATCHES's body is an int: -1, or 1 or more.",
        "decode(): field $.body of NUMBER_OF_BATCHES",
        "worker:batches",
    ),
    _r(
        "W-3.9",
        WORKER,
        "CURRENT_BATCH_ID's body is an int >= 0.",
        "decode(): field $.body of CURRENT_BATCH_ID",
        "worker:batches",
    ),
    _r(
        "W-3.10",
        WORKER,
        'BATCHES_COMPLETE\'s body is "BATCHES_ONLY" or "TASK_COMPLETE".',
        "decode(): field $.body of BATCHES_COMPLETE",
        "worker:batches",
    ),
    _r(
        "W-3.11",
        WORKER,
        "TASK_ABORT's body is {message: str, reason: <abort reason>, exception_type: str or"
        " null, traceback_summary: str or null} with a reason of section 3.",
        "decode(): field $.body of TASK_ABORT",
        "worker:no-data",
    ),
    _r(
        "W-3.12",
        WORKER,
        "ONLINE_CHECK's body is a string token.",
        "decode(): field $.body of ONLINE_CHECK",
        "worker:online-check-in-setup",
    ),
    _r(
        "M-3.13",
        MODELLER,
        "ONLINE_RESPONSE's body is the token of an ONLINE_CHECK from that worker that it answers.",
        "decode(): field $.body; the checker keeps each worker's unanswered tokens",
        "modeller:online-check-in-setup",
        reading="Strict: a response answers one check with the same token. A worker with more"
        " than 64 checks unanswered at once is no longer token-checked (memory stays bounded).",
    ),
    _r(
        "E-3.14",
        ANY,
        "LOG_MESSAGE's body is {level: str, message: str}.",
        "decode(): field $.body of LOG_MESSAGE",
        "worker:single-run",
        "modeller:single-run",
    ),
    # --- 4. Order, per worker -------------------------------------------------------------
    _r(
        "E-4.1",
        ANY,
        "A task begins with the modeller's JOB_REQUEST, sent once to each pod; every message"
        " between the modeller and a pod follows that pod's JOB_REQUEST.",
        "chart: idle allows only send:JOB_REQUEST; a line for an unknown task or pod",
        "modeller:two-pods",
    ),
    _r(
        "W-4.2",
        WORKER,
        "A pod answers the JOB_REQUEST once, with JOB_ACCEPT or JOB_REJECT, before anything"
        " else; JOB_REJECT ends it.",
        "chart: requested and left_out allow only recv:JOB_ACCEPT, recv:JOB_REJECT",
        "worker:single-run",
        "worker:reject-batch-size",
    ),
    _r(
        "W-4.3",
        WORKER,
        "After JOB_ACCEPT the worker's messages follow the order of section 4: PREPARING_DATA?"
        " CONFIGURING_TASK?, then the non-batched or the streaming sequence.",
        "chart: the states of engaged (the messages each state allows)",
        "worker:single-run",
        "worker:batches",
    ),
    _r(
        "W-4.4",
        WORKER,
        "batched_execution binds the worker's mode: non-batched, NUMBER_OF_BATCHES(1); streaming,"
        " PREPARING_DATA_BATCHES? NUMBER_OF_BATCHES(-1).",
        "chart guards batched_job, count_is_one, count_is_unknown",
        "worker:single-run",
        "worker:batches",
    ),
    _r(
        "W-4.5",
        WORKER,
        "Streaming: CURRENT_BATCH_ID(0) comes before the worker's TASK_START, and each later"
        " batch id is the previous one + 1.",
        "chart guard is_next_batch_id; counting allows only recv:CURRENT_BATCH_ID",
        "worker:batches",
        reading="Extension: a job whose options.resume_from_batch is an int N >= 0 (a task"
        " resumed by modeller serve --resume, docs/network.md) starts at batch N instead of 0;"
        " the item account of such a pod is not checked, since an earlier run delivered the"
        " batches before N.",
    ),
    _r(
        "W-4.6",
        WORKER,
        "With an initial setup, the worker waits for ALGORITHM_EXCHANGE before"
        " PREPARING_DATA_BATCHES and before its first NUMBER_OF_BATCHES (section 5 says it"
        " again for conformance.Echo).",
        "chart guard setup_settled",
        "worker:initial-setup-batches",
        "worker:initial-setup-single",
        "worker:online-check-in-setup",
        reading='A job has an initial setup when its protocol says "initial_setup": true (the'
        " trace cannot see a protocol's code).",
    ),
    _r(
        "M-4.7",
        MODELLER,
        "With an initial setup, the modeller sends ALGORITHM_EXCHANGE to a worker once, as soon"
        " as its JOB_ACCEPT arrives; without one, never.",
        "chart guard setup_pending; obligation send_setup",
        "modeller:initial-setup",
        reading="A trace cannot see 'as soon as': the checker requires the one"
        " ALGORITHM_EXCHANGE at some point after the JOB_ACCEPT, and reports it missing when"
        " the trace ends or the worker cannot go on without it.",
    ),
    _r(
        "W-4.8",
        WORKER,
        "The worker sends TASK_START once, after NUMBER_OF_BATCHES(1) or CURRENT_BATCH_ID(0),"
        " and sends results, further batch ids and BATCHES_COMPLETE only after the modeller's"
        " TASK_START.",
        "chart: single_announced, batch_announced, single_ready and batch_ready",
        "worker:three-pods",
        "worker:cancel-before-start",
    ),
    _r(
        "M-4.9",
        MODELLER,
        "The modeller sends TASK_START to a worker once, after that worker's TASK_START.",
        "chart: only single_ready and batch_ready allow send:TASK_START",
        "modeller:slow-pod-barrier",
    ),
    _r(
        "W-4.10",
        WORKER,
        "A positive NUMBER_OF_BATCHES (an estimate) is sent at most once, after"
        " CURRENT_BATCH_ID(0) and before BATCHES_ONLY.",
        "chart guards is_estimate, estimate_seen; only batches allows it",
        "worker:batches",
    ),
    _r(
        "W-4.11",
        WORKER,
        "Two EVALUATION_RESULTS with the same batch and meta.algorithm_index are a violation.",
        "chart guard duplicate_result",
        "worker:batches",
        reading="A retry (batch_number null) is one result per retried item, so retries are"
        " not counted here; the Echo account checks them (W-5.10).",
    ),
    _r(
        "W-4.12",
        WORKER,
        'Streaming ends the batch loop with BATCHES_COMPLETE("BATCHES_ONLY"), then the'
        ' resilience results, then BATCHES_COMPLETE("TASK_COMPLETE"); non-batched ends with'
        ' BATCHES_COMPLETE("TASK_COMPLETE").',
        "chart guards is_batches_only, is_task_complete",
        "worker:batches",
        "worker:resilience",
    ),
    _r(
        "W-4.13",
        WORKER,
        "TASK_ABORT may come at any point after JOB_ACCEPT (and not before it); it ends that"
        " worker.",
        "chart: engaged allows recv:TASK_ABORT; requested and left_out do not",
        "worker:no-data",
    ),
    _r(
        "M-4.14",
        MODELLER,
        "TASK_CANCEL goes to a worker at most once, after its JOB_ACCEPT and before"
        " TASK_COMPLETE (after its final BATCHES_COMPLETE too).",
        "chart guard cancel_sent; engaged allows send:TASK_CANCEL",
        "modeller:pod-aborts",
        "modeller:five-failed-batches",
        reading="A cancel that crosses the worker's own TASK_ABORT is valid (the spec says so):"
        " a cancel just after the abort is judged against the state before it.",
    ),
    _r(
        "W-4.15",
        WORKER,
        "A cancelled worker ends with TASK_ABORT; until then its messages follow the order.",
        "chart: after send:TASK_CANCEL, final_step cannot reach complete (guard !cancel_sent)",
        "worker:cancel-during-batches",
        "worker:cancel-after-batches",
        reading="Permissive about when: a trace cannot see when the worker read the cancel, so"
        " any messages that follow the order may come first, and the TASK_ABORT may have any"
        " reason.",
    ),
    _r(
        "W-4.16",
        WORKER,
        "TASK_ABORT(CANCELLED_BY_MODELLER) answers a TASK_CANCEL: it needs one before it.",
        "chart action note_abort",
        "worker:cancel-during-batches",
    ),
    _r(
        "E-4.17",
        ANY,
        "LOG_MESSAGE, ONLINE_CHECK and ONLINE_RESPONSE come only between JOB_ACCEPT and the"
        " end; they change no state.",
        "chart: engaged allows them, requested and left_out do not",
        "worker:online-check-before-complete",
        "modeller:online-check-in-setup",
    ),
    _r(
        "M-4.18",
        MODELLER,
        "The modeller first waits until every pod has answered the JOB_REQUEST, or until its"
        " response timeout; a pod that has not answered by then is left out.",
        "kit: the trace has no clock; the checker reads the modeller's first TASK_START as the"
        " end of the wait (chart event response_timeout)",
        "modeller:silent-pod",
        "modeller:slow-answer",
        "modeller:late-accept",
        by=KIT,
    ),
    _r(
        "M-4.19",
        MODELLER,
        "A JOB_ACCEPT that arrives after the response wait is answered with TASK_CANCEL (and"
        " gets neither TASK_START nor TASK_COMPLETE), even if the pod aborts later; if it"
        " arrives after every other worker has ended, nothing is owed.",
        "chart actions note_late, send_cancel (an obligation that outlives the pod's end)",
        "modeller:late-accept",
        "modeller:late-accept-after-end",
        reading="Strict: the cancel answers the late accept itself, so the pod's own abort"
        " does not excuse it (it may cross the abort).",
    ),
    _r(
        "M-4.20",
        MODELLER,
        "The modeller sends TASK_START only after every accepted worker has sent TASK_START.",
        "chart guard all_ready",
        "modeller:two-pods",
        "modeller:slow-pod-barrier",
    ),
    _r(
        "M-4.21",
        MODELLER,
        "The modeller sends TASK_COMPLETE only when every accepted worker has sent"
        ' BATCHES_COMPLETE("TASK_COMPLETE") and no worker has aborted on its own, and never'
        " to a cancelled worker; workers cancelled for a late JOB_ACCEPT are not counted.",
        "chart guards all_done, cancel_sent",
        "modeller:slow-pod-completion",
        "modeller:pod-aborts",
    ),
    _r(
        "M-4.22",
        MODELLER,
        "If one worker aborts (for any reason other than answering a cancel), the modeller"
        " sends TASK_CANCEL to every other worker still running.",
        "chart action cancel_others (an obligation, discharged by send:TASK_CANCEL)",
        "modeller:pod-aborts",
        "modeller:pod-fails",
        "modeller:pod-aborts-before-start",
        reading="Permissive: a worker that ends on its own before the cancel is written is no"
        " longer running, so it is owed nothing.",
    ),
    _r(
        "M-4.23",
        MODELLER,
        "With require_all_pods, a rejection or a missing answer cancels the workers that accepted.",
        "kit: require_all_pods is in the control line or the API, not in the trace",
        "modeller:require-all-pods",
        by=KIT,
    ),
    _r(
        "E-4.24",
        ANY,
        "Nothing follows a worker's end: neither the worker nor the modeller writes to the other"
        " after it.",
        "chart: final states allow nothing",
        "worker:batches",
        "modeller:single-run",
        reading="Messages cross in flight: a modeller message just after the worker's own"
        " end (a TASK_CANCEL crossing its TASK_ABORT), or a worker message just after"
        " TASK_COMPLETE (an ONLINE_CHECK or a timeout's TASK_ABORT), is judged against the"
        " state before the end. Once the worker has ended on its own side too, nothing more.",
    ),
    _r(
        "W-4.25",
        WORKER,
        "A worker does not stop where the chart expects it to speak: a trace that ends before"
        " the worker's end, waiting for the worker, is a violation.",
        "the checker's end of trace (line = number of lines + 1)",
        "worker:batches",
    ),
    _r(
        "M-4.26",
        MODELLER,
        "A modeller does not stop where the chart expects it to speak: a trace that ends while"
        " a worker waits for the modeller (TASK_START, TASK_COMPLETE, an owed TASK_CANCEL or"
        " ALGORITHM_EXCHANGE) is a violation.",
        "the checker's end of trace (line = number of lines + 1)",
        "modeller:two-pods",
        "modeller:pod-aborts",
    ),
    _r(
        "E-4.27",
        ANY,
        "An empty trace is a violation.",
        "the checker's end of trace",
        "modeller:single-run",
        reading="Only a modeller under test can break it live: a worker's trace starts with the"
        " kit's JOB_REQUEST.",
    ),
    _r(
        "W-4.28",
        WORKER,
        "The worker waits for the modeller's TASK_START for task_start_timeout_s, measured from"
        " its own TASK_START, and then aborts with MODELLER_TIMEOUT.",
        "kit: the trace has no clock",
        "worker:start-timeout",
        "worker:slow-start",
        by=KIT,
    ),
    _r(
        "W-4.29",
        WORKER,
        "For any other expected modeller message the worker waits soft_timeout_s, sends"
        " ONLINE_CHECK, waits hard_timeout_s more, and aborts with MODELLER_TIMEOUT; any"
        " modeller message restarts the soft wait.",
        "kit: the trace has no clock",
        "worker:online-check-before-complete",
        "worker:online-check-in-setup",
        by=KIT,
    ),
    _r(
        "M-4.30",
        MODELLER,
        "The modeller answers an ONLINE_CHECK with ONLINE_RESPONSE.",
        "kit: the trace has no clock (an answer still owed when the trace ends is M-4.26)",
        "modeller:online-check-in-setup",
        "modeller:slow-pod-completion",
        by=KIT,
    ),
    # --- 5. The conformance algorithm (conformance.Echo) ------------------------------------
    _r(
        "W-5.1",
        WORKER,
        "A worker that wants to be tested supports conformance.Echo: it accepts a valid Echo job.",
        "kit: TraceChecker(require_echo_accept=True); not a trace rule",
        "worker:single-run",
        reading="Permissive for traces: the spec never requires a pod to accept a job (any"
        " JOB_REJECT reason is a valid answer), so `fsm-protocol check` does not flag a"
        " rejection. Only the kit, which needs the worker to run the job, expects it: it"
        " checks the traces of a worker under test with require_echo_accept=True.",
        by=KIT,
    ),
    _r(
        "W-5.2",
        WORKER,
        "With empty items the worker accepts the job and then aborts with NO_DATA.",
        "Echo account",
        "worker:no-data",
    ),
    _r(
        "W-5.3",
        WORKER,
        "An Echo job with duplicate item names, or a batch_size below 1, is answered with"
        " JOB_REJECT(TASK_SETUP_ERROR).",
        "Echo account (registry.load of the protocol)",
        "worker:reject-batch-size",
        "worker:reject-duplicate-items",
        reading="Strict: accepting such a job, or rejecting it with another reason, is a"
        " violation.",
    ),
    _r(
        "W-5.4",
        WORKER,
        "Items are processed in the order given, in batches of batch_size (all in one run when"
        ' not batched); a successful batch or retry sends EVALUATION_RESULTS {"items": [the'
        " items]}.",
        "Echo account (predict_echo)",
        "worker:batches",
        "worker:single-run",
    ),
    _r(
        "W-5.5",
        WORKER,
        "A batch with an item of fail_in_batch or fail_alone fails and sends no results; its"
        " items are retried one by one in the resilience phase, in order, and a retried item of"
        " fail_alone fails again.",
        "Echo account (predict_echo)",
        "worker:resilience",
        "worker:resilience-fail-alone",
    ),
    _r(
        "W-5.6",
        WORKER,
        "A non-batched run has no resilience: any failing item aborts it with WORKER_ERROR.",
        "Echo account (predict_echo)",
        "worker:single-run-failure",
    ),
    _r(
        "W-5.7",
        WORKER,
        "The worker aborts with WORKER_ERROR after 5 consecutive failed batches, or when no"
        " batch and no retry succeeded.",
        "Echo account (predict_echo)",
        "worker:five-failed-batches",
        "worker:nothing-succeeds",
    ),
    _r(
        "W-5.8",
        WORKER,
        "At the inference limit the worker sends the first `allowed` items of the run (possibly"
        " none) and then TASK_ABORT(LIMITS_EXCEEDED) at once: no resilience, no"
        " BATCHES_COMPLETE.",
        "Echo account (predict_echo)",
        "worker:limit-in-batch",
        "worker:limit-exact",
        "worker:limit-already-over",
        "worker:limit-in-resilience",
        "worker:limit-single-run",
    ),
    _r(
        "W-5.9",
        WORKER,
        "test_run true means only the first item is processed.",
        "Echo account (predict_echo)",
        "worker:single-run-test-run",
        "worker:batches-test-run",
    ),
    _r(
        "W-5.10",
        WORKER,
        "Each item is delivered in exactly one EVALUATION_RESULTS, or failed, cut or not run;"
        " never delivered twice, and a batch's items are delivered before the worker moves on"
        " (to the next batch, BATCHES_COMPLETE, or an abort).",
        "Echo account (predict_echo)",
        "worker:batches",
        "worker:resilience",
        reading="A worker that stops early (cancelled, MODELLER_TIMEOUT, PROTOCOL_ERROR) may"
        " leave the batch it was running undelivered, but not an earlier one.",
    ),
    _r(
        "W-5.11",
        WORKER,
        'The worker ends as Echo predicts: BATCHES_COMPLETE("TASK_COMPLETE") when the job'
        " completes, TASK_ABORT with the predicted reason when it does not.",
        "Echo account (predict_echo)",
        "worker:nothing-succeeds",
        "worker:single-run",
        reading="Aborts that blame the modeller or the link (MODELLER_TIMEOUT, PROTOCOL_ERROR),"
        " and any abort after a cancel, are not held to the prediction.",
    ),
    # --- 6. Playing the modeller under test over stdio -----------------------------------------
    _r(
        "M-6.1",
        MODELLER,
        "After the control line the modeller sends JOB_REQUEST to each pod of the scenario,"
        " with the job and that pod's job_overrides, and runs the task.",
        "kit: the control line is not part of a task's trace",
        "modeller:three-pods-overrides",
        by=KIT,
    ),
    _r(
        "M-6.2",
        MODELLER,
        "job_overrides is optional in the control line.",
        "kit: the control line is not part of a task's trace",
        "modeller:no-job-overrides",
        reading="Permissive: a control line without job_overrides is the same as {}.",
        by=KIT,
    ),
    _r(
        "M-6.3",
        MODELLER,
        "The modeller process exits with status 0 after the task has ended, however it ended,"
        " and never hangs.",
        "kit: exit status and time",
        "modeller:single-run",
        "modeller:all-reject",
        by=KIT,
    ),
)

RULE_BY_ID: Final[Mapping[str, Rule]] = {rule.id: rule for rule in RULES}


def rule_book_markdown() -> str:
    """The rule book as the Markdown table in ``docs/conformance.md``."""
    head = [
        "| id | binds | rule | check | breaking trace | kit case | reading |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = []
    for rule in RULES:
        if rule.id == "F-1.2":
            trace = "built by the test (16 MiB + 1 byte)"
        elif rule.trace is not None:
            trace = f"`rules/{rule.trace}`"
        else:
            trace = "none: " + rule.check.removeprefix("kit: ")
        kit = ", ".join(f"`{case}`" for case in rule.kit) or "needs a kit case"
        cells = [f"**{rule.id}**", rule.role, rule.text, rule.check, trace, kit, rule.reading]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join([*head, *rows]) + "\n"
