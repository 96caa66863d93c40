"""Signed job requests: what a pod accepts, and why it refuses the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from fsm_protocol import (
    ConfigError,
    EchoProtocol,
    JobRequestBody,
    Message,
    MessageType,
    Pod,
    RejectReason,
    TaskStatus,
    decode,
    encode,
    memory_transport_pair,
    registry,
    run_modeller,
    run_worker,
)
from fsm_protocol._net._auth import (
    SIGNATURE_OPTION,
    FileSeenJobs,
    JobSigner,
    MemorySeenJobs,
    generate_key,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_text,
    require_signed_jobs,
)

NOW = 1_800_000_000.0
MODELLER_KEY = generate_key()
STRANGER_KEY = generate_key()


def body(**options: Any) -> JobRequestBody:
    return JobRequestBody(
        protocol=registry.dump(EchoProtocol(items=("a", "b"), batch_size=1)),
        pod_identifiers=("a/p",),
        batched_execution=True,
        options={"soft_timeout_s": 180.0, **options},
    )


def request(
    job: JobRequestBody, *, task_id: str = "t-1", recipient: str = "a/p", sender: str = "modeller"
) -> Message:
    """A JOB_REQUEST as the pod decodes it off the wire."""
    message = Message.make(
        MessageType.JOB_REQUEST,
        task_id=task_id,
        sender=sender,
        recipient=recipient,
        seq=0,
        body=job,
    )
    return decode(encode(message))


def signed(
    *, key: Any = MODELLER_KEY, at: float = NOW, task_id: str = "t-1", recipient: str = "a/p"
) -> Message:
    signer = JobSigner(key, clock=lambda: at)
    job = signer.sign(body(), task_id=task_id, sender="modeller", recipient=recipient)
    return request(job, task_id=task_id, recipient=recipient)


def vet(message: Message, *, now: float = NOW, **kwargs: Any) -> Any:
    check = kwargs.pop("check", None) or require_signed_jobs(
        [MODELLER_KEY.public_key()], pod_id="a/p", clock=lambda: now, **kwargs
    )
    from fsm_protocol import body_of

    return check(message, body_of(message))


def test_a_signed_fresh_request_is_accepted() -> None:
    assert vet(signed()) is None


def test_the_signature_travels_in_the_options() -> None:
    block = signed().body["options"][SIGNATURE_OPTION]
    assert set(block) == {"alg", "public_key", "signed_at", "value"}
    assert block["alg"] == "Ed25519" and block["signed_at"] == int(NOW)
    assert block["public_key"] == public_key_text(MODELLER_KEY.public_key())


def test_an_unsigned_request_is_refused_for_lack_of_proof() -> None:
    reason, details = vet(request(body()))
    assert reason is RejectReason.NO_PROOF_OF_IDENTITY
    assert "not signed" in details[0]


def test_a_key_off_the_allowlist_is_unauthorised() -> None:
    reason, details = vet(signed(key=STRANGER_KEY))
    assert reason is RejectReason.UNAUTHORISED
    assert "not on this pod's allowlist" in details[0]


@pytest.mark.parametrize(
    "change",
    [
        lambda wire: wire["body"]["protocol"].update(items=["a", "b", "evil"]),
        lambda wire: wire["body"]["options"].update(soft_timeout_s=1.0),
        lambda wire: wire["body"].update(test_run=True),
        lambda wire: wire.update(task_id="t-other"),
        lambda wire: wire.update(sender="mallory"),
        lambda wire: wire["body"]["options"]["signature"].update(signed_at=int(NOW) + 10),
    ],
    ids=["protocol", "options", "flag", "task id", "sender", "time"],
)
def test_any_change_after_signing_is_an_invalid_proof(change: Any) -> None:
    wire = json.loads(encode(signed()))
    change(wire)
    reason, details = vet(decode(json.dumps(wire)))
    assert reason is RejectReason.INVALID_PROOF_OF_IDENTITY
    assert "does not match this request" in details[0]


def test_a_request_signed_for_another_pod_is_refused() -> None:
    reason, details = vet(signed(recipient="b/p"))
    assert reason is RejectReason.INVALID_PROOF_OF_IDENTITY
    assert "signed for pod 'b/p'" in details[0]
    # Readdressing it breaks the signature instead.
    wire = json.loads(encode(signed(recipient="b/p")))
    wire["recipient"] = "a/p"
    assert vet(decode(json.dumps(wire)))[0] is RejectReason.INVALID_PROOF_OF_IDENTITY


def test_a_stale_request_is_refused_with_task_timeout() -> None:
    assert vet(signed(at=NOW - 300)) is None  # exactly at the limit: still fresh
    reason, details = vet(signed(at=NOW - 301, task_id="t-2"))
    assert reason is RejectReason.TASK_TIMEOUT
    assert "signed 301 s ago" in details[0]
    reason, _ = vet(signed(at=NOW - 60), max_age_s=30)
    assert reason is RejectReason.TASK_TIMEOUT


def test_a_request_from_the_future_is_refused_beyond_the_clock_skew() -> None:
    assert vet(signed(at=NOW + 60)) is None
    reason, details = vet(signed(at=NOW + 61, task_id="t-2"))
    assert reason is RejectReason.TASK_TIMEOUT
    assert "in the future" in details[0]


def test_a_replayed_request_is_refused() -> None:
    check = require_signed_jobs([MODELLER_KEY.public_key()], pod_id="a/p", clock=lambda: NOW)
    message = signed()
    assert vet(message, check=check) is None
    reason, details = vet(message, check=check)
    assert reason is RejectReason.INVALID_PROOF_OF_IDENTITY
    assert "already used" in details[0] and "replay" in details[0]
    # The same task id freshly signed is still a reuse of the id.
    assert vet(signed(at=NOW + 1), check=check)[0] is RejectReason.INVALID_PROOF_OF_IDENTITY


def test_a_refused_request_does_not_use_up_its_task_id() -> None:
    check = require_signed_jobs([MODELLER_KEY.public_key()], pod_id="a/p", clock=lambda: NOW)
    assert vet(signed(key=STRANGER_KEY), check=check)[0] is RejectReason.UNAUTHORISED
    assert vet(signed(), check=check) is None


def test_replays_are_refused_across_processes_with_a_file(tmp_path: Path) -> None:
    database = tmp_path / "state" / "seen.sqlite"
    first = require_signed_jobs(
        [MODELLER_KEY.public_key()], pod_id="a/p", clock=lambda: NOW, seen=FileSeenJobs(database)
    )
    assert vet(signed(), check=first) is None
    restarted = require_signed_jobs(
        [MODELLER_KEY.public_key()], pod_id="a/p", clock=lambda: NOW, seen=FileSeenJobs(database)
    )
    assert vet(signed(), check=restarted)[0] is RejectReason.INVALID_PROOF_OF_IDENTITY


def test_seen_task_ids_are_forgotten_once_they_would_be_stale_anyway() -> None:
    seen = MemorySeenJobs(forget_after_s=360)
    assert seen.remember("t-1", signed_at=NOW, now=NOW)
    assert not seen.remember("t-1", signed_at=NOW, now=NOW + 100)
    assert seen.remember("t-2", signed_at=NOW + 400, now=NOW + 400)
    assert seen.remember("t-1", signed_at=NOW + 400, now=NOW + 400)  # t-1 was dropped


@pytest.mark.parametrize(
    ("block", "text"),
    [
        ("yes", "expected an object"),
        ({"alg": "RSA"}, "alg: expected 'Ed25519'"),
        ({"alg": "Ed25519", "signed_at": 1.5}, "signed_at: expected an int"),
        ({"alg": "Ed25519", "signed_at": 1, "public_key": "ed25519:!!"}, "not valid base64"),
        ({"alg": "Ed25519", "signed_at": 1, "public_key": "ed25519:AAAA"}, "32 bytes"),
    ],
)
def test_a_malformed_signature_block_is_an_invalid_proof(block: Any, text: str) -> None:
    reason, details = vet(request(body(signature=block)))
    assert reason is RejectReason.INVALID_PROOF_OF_IDENTITY
    assert text in details[0]


# -------------------------------------------------------------- key files


def test_key_files_round_trip(tmp_path: Path) -> None:
    key = generate_key()
    (tmp_path / "m.key").write_bytes(private_key_pem(key))
    (tmp_path / "m.pub").write_text(public_key_text(key.public_key()) + "\n")
    loaded = load_private_key(tmp_path / "m.key")
    assert public_key_text(loaded.public_key()) == public_key_text(key.public_key())
    assert public_key_text(load_public_key(tmp_path / "m.pub")) == public_key_text(key.public_key())


def test_bad_key_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such signing key file"):
        load_private_key(tmp_path / "missing.key")
    (tmp_path / "junk").write_text("hello\n")
    with pytest.raises(ConfigError, match="keys generate"):
        load_private_key(tmp_path / "junk")
    with pytest.raises(ConfigError, match="ed25519:<base64>"):
        load_public_key(tmp_path / "junk")


# --------------------------------------------------------- in the runtime


async def run_signed(pod: Pod, signer: JobSigner | None, *, task_id: str = "t-1") -> Any:
    """One task between a modeller that signs (or not) and ``pod``."""
    job = body()
    if signer is not None:
        job = signer.sign(job, task_id=task_id, sender="modeller", recipient=pod.pod_id)
    modeller_end, worker_end = memory_transport_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_worker, pod, worker_end)
        run = await run_modeller(
            task_id=task_id,
            jobs={pod.pod_id: job},
            configs={pod.pod_id: EchoProtocol(items=("a", "b"))},
            links={pod.pod_id: modeller_end},
        )
    return run


async def test_only_authorised_fresh_new_jobs_get_work_done() -> None:
    clock = {"now": NOW}
    pod = Pod(
        "a/p",
        vet=require_signed_jobs(
            [MODELLER_KEY.public_key()], pod_id="a/p", clock=lambda: clock["now"]
        ),
    )
    good = JobSigner(MODELLER_KEY, clock=lambda: clock["now"])
    accepted = await run_signed(pod, good)
    assert accepted.status is TaskStatus.COMPLETE

    def reason(run: Any) -> RejectReason:
        assert run.status is TaskStatus.REJECTED
        reject = run.workers["a/p"].reject
        assert reject is not None
        return RejectReason(reject.reason)

    assert reason(await run_signed(pod, None, task_id="t-2")) is RejectReason.NO_PROOF_OF_IDENTITY
    stranger = JobSigner(STRANGER_KEY, clock=lambda: clock["now"])
    assert reason(await run_signed(pod, stranger, task_id="t-3")) is RejectReason.UNAUTHORISED
    stale = JobSigner(MODELLER_KEY, clock=lambda: clock["now"] - 301)
    assert reason(await run_signed(pod, stale, task_id="t-4")) is RejectReason.TASK_TIMEOUT
    replayed = await run_signed(pod, good, task_id="t-1")
    assert reason(replayed) is RejectReason.INVALID_PROOF_OF_IDENTITY


def test_signing_leaves_the_rest_of_the_body_alone() -> None:
    job = body(project="x")
    signed_job = JobSigner(MODELLER_KEY).sign(job, task_id="t", sender="modeller", recipient="a/p")
    options = dict(signed_job.options)
    del options[SIGNATURE_OPTION]
    assert attrs.evolve(signed_job, options=options) == job
