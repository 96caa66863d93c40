"""Signed job requests: only modellers a pod trusts get work done.

The modeller signs each ``JOB_REQUEST`` with an Ed25519 key. The signature
travels in the request body, as ``body.options.signature`` (``options`` is
kept as raw JSON by every peer, while unknown ``meta`` keys are dropped)::

    "signature": {"alg": "Ed25519", "public_key": "<base64 of the 32-byte key>",
                  "signed_at": <int, Unix seconds>, "value": "<base64 of 64 bytes>"}

What is signed is the UTF-8 of one canonical JSON object (sorted keys, no
spaces, ASCII only, as ``json.dumps(..., sort_keys=True, separators=(",", ":"),
ensure_ascii=True)`` writes it)::

    {"body": <the JOB_REQUEST body as sent, without options.signature>,
     "context": "fsm-protocol JOB_REQUEST signature v1",
     "public_key": ..., "recipient": ..., "sender": ..., "signed_at": ..., "task_id": ...}

So a signature binds the job to its task id, its modeller, the one pod it is
addressed to, its whole body (protocol, options, timeouts) and its time.

A pod checks, in order, and answers ``JOB_REJECT`` with:

* ``NO_PROOF_OF_IDENTITY``: the request is not signed;
* ``INVALID_PROOF_OF_IDENTITY``: the signature block is malformed;
* ``UNAUTHORISED``: the key is not on the pod's allowlist;
* ``INVALID_PROOF_OF_IDENTITY``: the signature does not verify, or the
  request was signed for another pod;
* ``TASK_TIMEOUT``: it was signed more than ``max_age_s`` ago (300 s by
  default), or further in the future than the allowed clock skew;
* ``INVALID_PROOF_OF_IDENTITY``: its task id was seen before (a replay).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias, final

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._base._errors import ConfigError
from .._wire._messages import JobRequestBody, Message, MessageType, RejectReason

SIGNATURE_OPTION: Final = "signature"
"""The key of ``JOB_REQUEST.body.options`` that carries the signature."""

SIGNATURE_CONTEXT: Final = "fsm-protocol JOB_REQUEST signature v1"
"""Signed along with the request, so the signature means nothing anywhere else."""

DEFAULT_MAX_AGE_S: Final = 300.0
"""A request signed longer ago than this is refused as stale."""

DEFAULT_MAX_CLOCK_SKEW_S: Final = 60.0
"""How far in the future a request's time may be, for clocks that differ."""

PUBLIC_KEY_PREFIX: Final = "ed25519:"
"""The one-line text form of a public key: this prefix, then base64 of its 32 bytes."""

Verdict: TypeAlias = "tuple[RejectReason, Sequence[str]] | None"
Vet: TypeAlias = Callable[[Message, JobRequestBody], "tuple[RejectReason, Sequence[str]] | None"]


# ------------------------------------------------------------------- keys


def generate_key() -> Ed25519PrivateKey:
    """A new modeller signing key."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM: keep the file private (mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_text(key: Ed25519PublicKey) -> str:
    """The one-line form, ``ed25519:<base64>``, used in files and signatures."""
    return PUBLIC_KEY_PREFIX + _b64(_raw(key))


def fingerprint(key: Ed25519PublicKey) -> str:
    """A short name for a key in messages: the start of its SHA-256."""
    return "sha256:" + hashlib.sha256(_raw(key)).hexdigest()[:16]


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a signing key written by ``fsm-protocol keys generate``.

    Raises:
        ConfigError: The file is missing, unreadable, or not an Ed25519 PEM key.
    """
    data = _read(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{path}: not an unencrypted PEM private key ({exc}); "
            "create one with `fsm-protocol keys generate`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an Ed25519 key, found {type(key).__name__}")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a modeller public key: the ``ed25519:<base64>`` line, or a PEM public key.

    Raises:
        ConfigError: The file is missing or holds no Ed25519 public key.
    """
    data = _read(path, "public key")
    text = data.decode(errors="replace").strip()
    if text.startswith(PUBLIC_KEY_PREFIX):
        try:
            return parse_public_key(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{path}: expected a line 'ed25519:<base64>' or a PEM public key; "
            "use the .pub file written by `fsm-protocol keys generate`"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: expected an Ed25519 key, found {type(key).__name__}")
    return key


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``ed25519:<base64>`` (the prefix is optional).

    Raises:
        ValueError: Not base64 of 32 bytes.
    """
    body = text.removeprefix(PUBLIC_KEY_PREFIX)
    raw = _unb64(body, "public key")
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, found {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file (check the path)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"the {what} is not valid base64") from None


# ---------------------------------------------------------------- signing


def canonical_json(value: Any) -> bytes:
    """The exact bytes that are signed for ``value``."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def signed_payload(
    *,
    task_id: str,
    sender: str,
    recipient: str,
    body: Mapping[str, Any],
    signed_at: int,
    public_key: str,
) -> bytes:
    """What a signature covers. ``body`` is the wire body without its signature."""
    return canonical_json(
        {
            "context": SIGNATURE_CONTEXT,
            "task_id": task_id,
            "sender": sender,
            "recipient": recipient,
            "signed_at": signed_at,
            "public_key": public_key,
            "body": body,
        }
    )


def _unsigned(body: Mapping[str, Any]) -> dict[str, Any]:
    """The wire body with ``options.signature`` taken out."""
    options = body.get("options")
    result = dict(body)
    if isinstance(options, Mapping):
        result["options"] = {k: v for k, v in options.items() if k != SIGNATURE_OPTION}
    return result


@final
class JobSigner:
    """The modeller's half: signs each pod's job request body.

    Args:
        key: The modeller's private key.
        clock: Unix time now; ``time.time`` unless a test fixes it.
    """

    def __init__(self, key: Ed25519PrivateKey, *, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock
        self.public_key = key.public_key()
        self._public_text = public_key_text(self.public_key)

    def sign(
        self, body: JobRequestBody, *, task_id: str, sender: str, recipient: str
    ) -> JobRequestBody:
        """The same body, with ``options.signature`` for this task and pod."""
        wire = Message.make(
            MessageType.JOB_REQUEST,
            task_id=task_id,
            sender=sender,
            recipient=recipient,
            seq=0,
            body=body,
        ).body
        # A JSON round trip gives the body exactly as a receiver will decode it.
        unsigned = _unsigned(json.loads(json.dumps(wire)))
        signed_at = int(self._clock())
        payload = signed_payload(
            task_id=task_id,
            sender=sender,
            recipient=recipient,
            body=unsigned,
            signed_at=signed_at,
            public_key=self._public_text,
        )
        signature = {
            "alg": "Ed25519",
            "public_key": self._public_text,
            "signed_at": signed_at,
            "value": _b64(self._key.sign(payload)),
        }
        options = {**unsigned["options"], SIGNATURE_OPTION: signature}
        return attrs.evolve(body, options=options)


# -------------------------------------------------------------- replays


class SeenJobs(Protocol):
    """Where a pod remembers the task ids of the jobs it accepted."""

    def remember(self, task_id: str, *, signed_at: float, now: float) -> bool:
        """Record ``task_id``; False when it was recorded before (a replay)."""
        ...

    def forget(self, task_id: str) -> None:
        """Drop ``task_id`` again: the pod refused the job after all, so it may come back."""
        ...


@final
class MemorySeenJobs:
    """Task ids seen by this process. Entries older than ``forget_after_s`` go,
    since a request that old is refused as stale anyway."""

    def __init__(self, *, forget_after_s: float = DEFAULT_MAX_AGE_S + DEFAULT_MAX_CLOCK_SKEW_S):
        self._forget_after_s = forget_after_s
        self._seen: dict[str, float] = {}

    def remember(self, task_id: str, *, signed_at: float, now: float) -> bool:
        horizon = now - self._forget_after_s
        for old in [t for t, at in self._seen.items() if at < horizon]:
            del self._seen[old]
        if task_id in self._seen:
            return False
        self._seen[task_id] = signed_at
        return True

    def forget(self, task_id: str) -> None:
        self._seen.pop(task_id, None)


@final
class FileSeenJobs:
    """Task ids kept in a SQLite file, shared by every worker process that uses it.

    One worker process serves one task, so only a file makes replay
    protection outlast the process.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        forget_after_s: float = DEFAULT_MAX_AGE_S + DEFAULT_MAX_CLOCK_SKEW_S,
    ) -> None:
        self._path = Path(path)
        self._forget_after_s = forget_after_s
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS seen_jobs"
                    " (task_id TEXT PRIMARY KEY, signed_at REAL NOT NULL)"
                )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"{path}: cannot use it to remember job requests: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path, timeout=30.0)

    def remember(self, task_id: str, *, signed_at: float, now: float) -> bool:
        db = self._connect()
        try:
            with db:
                db.execute(
                    "DELETE FROM seen_jobs WHERE signed_at < ?", (now - self._forget_after_s,)
                )
                cursor = db.execute(
                    "INSERT OR IGNORE INTO seen_jobs (task_id, signed_at) VALUES (?, ?)",
                    (task_id, signed_at),
                )
                return cursor.rowcount == 1
        finally:
            db.close()

    def forget(self, task_id: str) -> None:
        db = self._connect()
        try:
            with db:
                db.execute("DELETE FROM seen_jobs WHERE task_id = ?", (task_id,))
        finally:
            db.close()


# ---------------------------------------------------------------- vetting


def require_signed_jobs(
    trusted: Iterable[Ed25519PublicKey],
    *,
    pod_id: str,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    clock: Callable[[], float] = time.time,
    seen: SeenJobs | None = None,
) -> Vet:
    """A :attr:`Pod.vet <fsm_protocol.Pod.vet>` that accepts only signed, fresh, new jobs.

    Args:
        trusted: The modeller public keys this pod takes work from.
        pod_id: This pod's id; a request signed for another pod is refused.
        max_age_s: Refuse requests signed longer ago than this.
        max_clock_skew_s: Refuse requests signed further in the future than this.
        clock: Unix time now.
        seen: Where accepted task ids are remembered; this process's memory
            by default (see :class:`FileSeenJobs` to outlast it).

    Returns:
        A callable that returns None to accept, or a reject reason and details.
    """
    allowed = {_raw(key): key for key in trusted}
    memory: SeenJobs = (
        seen if seen is not None else MemorySeenJobs(forget_after_s=max_age_s + max_clock_skew_s)
    )

    def vet(message: Message, job: JobRequestBody) -> Verdict:
        block = job.options.get(SIGNATURE_OPTION)
        if block is None:
            return RejectReason.NO_PROOF_OF_IDENTITY, [
                "the job request is not signed (no options.signature); this pod takes jobs "
                "only from modellers whose keys it trusts"
            ]
        try:
            signed_at, public_text, key_raw, value = _parse_block(block)
        except ValueError as exc:
            return RejectReason.INVALID_PROOF_OF_IDENTITY, [f"options.signature: {exc}"]
        key = allowed.get(key_raw)
        if key is None:
            unknown = fingerprint(Ed25519PublicKey.from_public_bytes(key_raw))
            return RejectReason.UNAUTHORISED, [
                f"the job is signed by modeller key {unknown}, which is not on this pod's "
                "allowlist (--trust-key)"
            ]
        body = message.body if isinstance(message.body, Mapping) else {}
        payload = signed_payload(
            task_id=message.task_id,
            sender=message.sender,
            recipient=message.recipient,
            body=_unsigned(body),
            signed_at=signed_at,
            public_key=public_text,
        )
        try:
            key.verify(value, payload)
        except InvalidSignature:
            return RejectReason.INVALID_PROOF_OF_IDENTITY, [
                f"the signature by {fingerprint(key)} does not match this request: its task id, "
                "sender, recipient, body or time was changed after signing"
            ]
        if message.recipient != pod_id:
            return RejectReason.INVALID_PROOF_OF_IDENTITY, [
                f"the job was signed for pod {message.recipient!r}, not for this pod {pod_id!r}"
            ]
        now = clock()
        age = now - signed_at
        if age > max_age_s:
            return RejectReason.TASK_TIMEOUT, [
                f"the job was signed {age:.0f} s ago; requests older than {max_age_s:g} s are "
                "refused as stale"
            ]
        if -age > max_clock_skew_s:
            return RejectReason.TASK_TIMEOUT, [
                f"the job is signed {-age:.0f} s in the future (more than the allowed "
                f"{max_clock_skew_s:g} s of clock skew); check both machines' clocks"
            ]
        if not memory.remember(message.task_id, signed_at=signed_at, now=now):
            return RejectReason.INVALID_PROOF_OF_IDENTITY, [
                f"task id {message.task_id!r} was already used: this request is a replay"
            ]
        return None

    # The worker calls this when it refuses a job that passed these checks (its protocol
    # or parameters do not fit), so that a refused request does not use up its task id.
    vet.forget = memory.forget  # type: ignore[attr-defined]
    return vet


def _parse_block(block: Any) -> tuple[int, str, bytes, bytes]:
    if not isinstance(block, Mapping):
        raise ValueError(f"expected an object, found {type(block).__name__}")
    if block.get("alg") != "Ed25519":
        raise ValueError(f"alg: expected 'Ed25519', found {block.get('alg')!r}")
    signed_at = block.get("signed_at")
    if type(signed_at) is not int:
        raise ValueError(f"signed_at: expected an int (Unix seconds), found {signed_at!r}")
    public_text = block.get("public_key")
    if not isinstance(public_text, str) or not public_text.startswith(PUBLIC_KEY_PREFIX):
        raise ValueError("public_key: expected 'ed25519:<base64>'")
    key_raw = _unb64(public_text.removeprefix(PUBLIC_KEY_PREFIX), "public key")
    if len(key_raw) != 32:
        raise ValueError(f"public_key: expected 32 bytes, found {len(key_raw)}")
    value_text = block.get("value")
    if not isinstance(value_text, str):
        raise ValueError("value: expected the base64 signature")
    value = _unb64(value_text, "signature")
    if len(value) != 64:
        raise ValueError(f"value: an Ed25519 signature has 64 bytes, found {len(value)}")
    return signed_at, public_text, key_raw, value
