"""NDJSON over TCP, optionally inside TLS: the transport for runs across machines.

Workers dial out to the modeller, so a pod behind a firewall needs only an
outbound connection. Before the task protocol starts, each connection carries
one transport-level exchange, the *hello*, which is not a message of wire v1:

1. the worker writes ``{"hello": "fsm-protocol", "v": 1, "pod_id": "<pod id>"}``;
2. the modeller answers ``{"welcome": "fsm-protocol", "v": 1}``, or
   ``{"refused": "<why>", "v": 1}`` and closes the connection.

After the welcome the connection is an ordinary wire v1 conversation, so the
modeller's ``JOB_REQUEST`` is still the first protocol message. With mutual
TLS the pod id in the hello must also be named by the worker's certificate.

Every connection is held to :class:`Limits`: a longest line, a message rate,
and deadlines for the handshake, each write and (optionally) each read. A
malformed line raises :class:`~fsm_protocol.DecodeError` once and stops the
reading; the modeller's side also closes the connection at once, so one bad
worker costs the others nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import ssl
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Final, final

import attrs
import trio

from .._base._errors import BrokenTransportError, ClosedTransportError, DecodeError, TransportError
from .._wire._messages import DEFAULT_MAX_LINE_BYTES, Message, decode, encode

HELLO_VERSION: Final = 1
"""The version of the hello exchange, carried in its ``v`` key."""

HELLO_MAX_BYTES: Final = 4096
"""The longest hello or welcome line either side reads."""

ALREADY_CONNECTED: Final = "is already connected"
"""The words of the refusal a worker retries: its own earlier connection holds its slot."""

_READ_CHUNK: Final = 65536
_CLOSE_TIMEOUT_S: Final = 5.0


class HandshakeError(TransportError):
    """The connection could not be set up: TLS failed, or the hello was refused."""


@attrs.frozen(kw_only=True)
class Limits:
    """What one connection may cost the side that reads it.

    Args:
        max_line_bytes: A longer line is refused and reading stops (spec section 1).
        max_messages_per_second: Sustained rate of lines read from one
            connection. Faster peers are slowed down, not cut off: reading
            pauses, and TCP makes the sender wait.
        burst: Lines that may arrive at once before the rate applies.
        handshake_timeout_s: For the TLS handshake and the hello together.
        send_timeout_s: For writing one line. A peer that reads nothing for
            this long is treated as gone, so a writer never blocks for ever.
        idle_timeout_s: The longest wait for a line, or None for no limit.
            The charts' own timers usually decide how long silence may last.
        keepalive: Turn on TCP keepalive, so that a peer whose machine
            vanished is noticed even while neither side has anything to say.
        max_pending_handshakes: The modeller sets up at most this many new
            connections at once; further ones wait in the kernel's backlog.
        max_algorithm_index: The highest ``meta.algorithm_index`` accepted; a
            higher one is a malformed line (each index is a result slot the
            modeller keeps per batch).
    """

    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_messages_per_second: float = 1000.0
    burst: int = 1000
    handshake_timeout_s: float = 10.0
    send_timeout_s: float = 60.0
    idle_timeout_s: float | None = None
    keepalive: bool = True
    max_pending_handshakes: int = 256
    max_algorithm_index: int = 255


@final
class TcpTransport:
    """One NDJSON conversation over a trio stream (TCP, TLS, or any other).

    Args:
        stream: The connected stream; the transport owns it from now on.
        peer: Who is at the other end, for error messages.
        limits: Line length, rate and deadlines.
        expect_sender: If set, a message whose ``sender`` differs is refused,
            so a worker cannot speak for another pod.
        close_on_bad_frame: Close the connection at once on a malformed line.
            Without it reading stops, but writing goes on until
            :meth:`aclose` (a worker still owes its ``TASK_ABORT``).
        first_message_timeout_s: The longest wait for the first message, for
            a worker waiting for its job request.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        peer: str,
        limits: Limits = Limits(),
        expect_sender: str | None = None,
        close_on_bad_frame: bool = False,
        first_message_timeout_s: float | None = None,
    ) -> None:
        self._stream = stream
        # trio streams refuse two concurrent writers; results, cancels and an EOF
        # can all be on their way at once.
        self._send_lock = trio.Lock()
        self.peer = peer
        self.limits = limits
        self.expect_sender = expect_sender
        self.close_on_bad_frame = close_on_bad_frame
        self._first_message_timeout_s = first_message_timeout_s
        self._buffer = bytearray()
        self._scanned = 0
        self._received_any = False
        self._tokens = float(limits.burst)
        self._refilled_at: float | None = None
        self._closed = False
        self._stopped: str | None = None
        self.failure: str | None = None
        """Why the connection failed or reading stopped, when it did; for reports."""

    # ---------------------------------------------------------------- sending

    async def send(self, message: Message) -> None:
        await self.send_line(encode(message))

    async def send_eof(self) -> None:
        """Half-close: the peer sees the end of its input, and its answer can still be read.

        A TLS stream cannot half-close; it is closed instead.
        """
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            async with self._send_lock:
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await self._stream.send_eof()
            return
        await self.aclose()

    async def send_line(self, line: bytes) -> None:
        """Write bytes as they are: the hello, or malformed input in tests."""
        if self._closed:
            raise ClosedTransportError(
                f"the connection to {self.peer} was closed; no more messages can be sent"
            )
        try:
            # A cancel scope, not trio.fail_after: it is a generator, and this runs per line.
            with trio.CancelScope(
                deadline=trio.current_time() + self.limits.send_timeout_s
            ) as scope:
                lock = self._send_lock
                if lock.locked():
                    async with lock:
                        await self._stream.send_all(line)
                else:
                    # Taken without Lock.acquire's extra trip through the scheduler (a
                    # task switch per line); send_all checkpoints in any case.
                    lock.acquire_nowait()
                    try:
                        await self._stream.send_all(line)
                    finally:
                        lock.release()
            too_slow = scope.cancelled_caught
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            text = f"the connection to {self.peer} broke while sending: {_cause(exc)}"
            self.failure = self.failure or text
            raise BrokenTransportError(text) from exc
        if too_slow:
            text = (
                f"{self.peer} read nothing for {self.limits.send_timeout_s:g} s "
                "(send_timeout_s); the connection was closed"
            )
            await self._fail(text)
            raise BrokenTransportError(text)

    # -------------------------------------------------------------- receiving

    async def receive(self) -> Message:
        if self._closed:
            raise ClosedTransportError(
                f"the connection to {self.peer} was closed; nothing more can be received"
            )
        if self._stopped is not None:
            raise BrokenTransportError(self._stopped)
        await self._take_token()
        timeout = (
            self._first_message_timeout_s if not self._received_any else self.limits.idle_timeout_s
        )
        line = await self._read_line_within(timeout, self.limits.max_line_bytes)
        try:
            message = decode(line, max_line_bytes=self.limits.max_line_bytes)
        except DecodeError as exc:
            await self._refuse(exc)
            raise
        if message.meta.algorithm_index > self.limits.max_algorithm_index:
            too_high = DecodeError(
                f"field $.meta.algorithm_index: expected an int from 0 to "
                f"{self.limits.max_algorithm_index} (max_algorithm_index), "
                f"found {message.meta.algorithm_index}",
                field="$.meta.algorithm_index",
                line=line[:200],
            )
            await self._refuse(too_high)
            raise too_high
        if self.expect_sender is not None and message.sender != self.expect_sender:
            impostor = DecodeError(
                f"field $.sender: expected {self.expect_sender!r} (the pod this connection "
                f"said hello as), found {message.sender!r}",
                field="$.sender",
                line=line[:200],
            )
            await self._refuse(impostor)
            raise impostor
        self._received_any = True
        return message

    async def receive_line(self, max_bytes: int) -> bytes:
        """Read one raw line (the hello), without decoding it as a message."""
        if self._closed:
            raise ClosedTransportError(f"the connection to {self.peer} was closed")
        return await self._read_line_within(self.limits.handshake_timeout_s, max_bytes)

    async def _read_line_within(self, timeout: float | None, max_bytes: int) -> bytes:
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            return await self._read_line(max_bytes)
        assert scope.cancelled_caught
        waited = "the first message" if not self._received_any else "a message"
        text = f"{self.peer} sent no complete line for {timeout:g} s (while waiting for {waited})"
        self.failure = text
        raise BrokenTransportError(text)

    async def _read_line(self, max_bytes: int) -> bytes:
        # Invariant: self._buffer[:self._scanned] holds no newline, so each byte is scanned once.
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end != -1:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buffer)
            if len(self._buffer) > max_bytes:
                exc = DecodeError(
                    f"field $: expected a line of at most {max_bytes} bytes, found more than "
                    f"{len(self._buffer)} bytes without a newline",
                    line=bytes(self._buffer[:200]),
                )
                await self._refuse(exc)
                raise exc
            try:
                data = await self._stream.receive_some(_READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                text = f"the connection to {self.peer} broke: {_cause(exc)}"
                self.failure = self.failure or text
                raise BrokenTransportError(text) from exc
            if not data:
                if self._buffer:
                    text = (
                        f"{self.peer} closed the connection in the middle of a line "
                        f"({len(self._buffer)} bytes without a newline)"
                    )
                    self.failure = self.failure or text
                    raise BrokenTransportError(text)
                raise trio.EndOfChannel
            self._buffer += data

    async def _take_token(self) -> None:
        """Wait until the rate allows one more line (a token bucket)."""
        rate = self.limits.max_messages_per_second
        now = trio.current_time()
        if self._refilled_at is not None:
            self._tokens = min(
                float(self.limits.burst), self._tokens + (now - self._refilled_at) * rate
            )
        self._refilled_at = now
        if self._tokens < 1.0:
            await trio.sleep((1.0 - self._tokens) / rate)
            self._tokens = 1.0
            self._refilled_at = trio.current_time()
        self._tokens -= 1.0

    async def _refuse(self, exc: DecodeError) -> None:
        """A malformed line: reading stops for good, and the connection may close."""
        self._stopped = f"reading from {self.peer} stopped after a malformed line: {exc}"
        self.failure = self._stopped
        self._buffer.clear()
        if self.close_on_bad_frame:
            await self._fail(self._stopped)

    async def _fail(self, text: str) -> None:
        self.failure = self.failure or text
        self._stopped = self._stopped or text
        await trio.aclose_forcefully(self._stream)

    # ---------------------------------------------------------------- closing

    async def aclose(self) -> None:
        """Close the connection; bounded in time even when the peer is gone."""
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(_CLOSE_TIMEOUT_S) as scope:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self._stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self._stream)

    def peer_certificate(self) -> Mapping[str, Any] | None:
        """The peer's verified TLS certificate (as ``ssl`` decodes it), if any."""
        if isinstance(self._stream, trio.SSLStream):
            cert: Mapping[str, Any] | None = self._stream.getpeercert()
            return cert
        return None


def _cause(exc: BaseException) -> str:
    """The most specific reason in an exception chain, for people."""
    inner = exc.__cause__ or exc.__context__
    if isinstance(inner, ssl.SSLCertVerificationError):
        return f"{inner.reason}: {inner.verify_message}"
    if isinstance(inner, ssl.SSLError):
        return inner.reason or str(inner)
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _peer_gone(transport: TcpTransport) -> bool:
    """Whether the peer of an idle connection has closed it (an EOF or reset is waiting).

    Looks at the socket without reading: a peer that vanished without closing
    (its machine lost) still looks alive.
    """
    stream: Any = transport._stream
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return False
    try:
        # A duplicate of the descriptor: trio's socket only offers an async recv.
        with socket.fromfd(stream.socket.fileno(), socket.AF_INET, socket.SOCK_STREAM) as dup:
            data = dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset, or the descriptor is already closed
    return data == b""


def _set_keepalive(stream: trio.abc.Stream, limits: Limits) -> None:
    if not limits.keepalive or not isinstance(stream, trio.SocketStream):
        return
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
    # Linux names: a vanished peer is noticed within about two minutes.
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
        option = getattr(socket, name, None)
        if option is not None:
            stream.setsockopt(socket.IPPROTO_TCP, option, value)


# ------------------------------------------------------------------- TLS


def server_ssl_context(
    cert: str | Path, key: str | Path, *, client_ca: str | Path | None = None
) -> ssl.SSLContext:
    """The modeller's TLS settings.

    Args:
        cert: Its certificate chain (PEM).
        key: Its private key (PEM).
        client_ca: Trust these CA certificates for client certificates, and
            require one from every worker (mutual TLS).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.load_verify_locations(str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(
    *,
    ca: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
) -> ssl.SSLContext:
    """A worker's TLS settings.

    Args:
        ca: Trust only these CA certificates for the modeller's certificate;
            the system's trust store when None.
        cert: The worker's own certificate chain, for mutual TLS.
        key: Its private key.
    """
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=None if ca is None else str(ca)
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(str(cert), None if key is None else str(key))
    return context


def certificate_names(cert: Mapping[str, Any]) -> list[str]:
    """The common names and DNS names a decoded certificate is issued to."""
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return names


# ----------------------------------------------------------------- hello


def hello_line(pod_id: str) -> bytes:
    """The worker's first line on a new connection."""
    return _line({"hello": "fsm-protocol", "v": HELLO_VERSION, "pod_id": pod_id})


def welcome_line() -> bytes:
    return _line({"welcome": "fsm-protocol", "v": HELLO_VERSION})


def refused_line(reason: str) -> bytes:
    return _line({"refused": reason, "v": HELLO_VERSION})


def _line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def parse_hello(line: bytes) -> str:
    """The pod id of a hello line.

    Raises:
        HandshakeError: The line is not a hello of a version we speak.
    """
    obj = _json_object(line)
    if obj is None or obj.get("hello") != "fsm-protocol":
        raise HandshakeError(
            'expected a hello line first, {"hello": "fsm-protocol", "v": 1, "pod_id": ...}, '
            f"found {_excerpt(line)}"
        )
    version = obj.get("v")
    if type(version) is not int or version != HELLO_VERSION:
        raise HandshakeError(f"hello version {version!r} is not supported; expected 1")
    pod_id = obj.get("pod_id")
    if type(pod_id) is not str or not pod_id:
        raise HandshakeError(f"hello field pod_id: expected a non-empty string, found {pod_id!r}")
    return pod_id


def _parse_welcome(line: bytes, peer: str) -> None:
    obj = _json_object(line)
    if obj is not None and obj.get("welcome") == "fsm-protocol":
        return
    if obj is not None and isinstance(obj.get("refused"), str):
        raise HandshakeError(f"{peer} refused this worker: {obj['refused']}")
    raise HandshakeError(
        f"{peer} did not answer the hello with a welcome (is it an fsm-protocol "
        f"modeller?); found {_excerpt(line)}"
    )


def _json_object(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _excerpt(line: bytes) -> str:
    text = line.decode(errors="replace").rstrip("\n")
    return repr(text if len(text) <= 120 else text[:117] + "...")


# --------------------------------------------------------------- worker side


async def connect(
    host: str,
    port: int,
    *,
    pod_id: str,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    limits: Limits = Limits(),
    job_timeout_s: float | None = 600.0,
    retry_for_s: float = 0.0,
) -> TcpTransport:
    """Dial the modeller, say hello as ``pod_id``, and return the conversation.

    Args:
        host: The modeller's address.
        port: Its port.
        pod_id: This pod's identifier, sent in the hello.
        ssl_context: Use TLS with these settings (see :func:`client_ssl_context`).
        server_hostname: The name the modeller's certificate must carry;
            ``host`` by default.
        limits: Limits on what the modeller sends.
        job_timeout_s: The longest wait for the job request after the welcome.
        retry_for_s: Keep retrying this long, backing off from 0.1 s to 2 s, while
            the modeller is unreachable or a handshake does not finish (timed out,
            or the connection closed during it). A refusal or a failed TLS
            verification is not retried.

    Raises:
        BrokenTransportError: The modeller could not be reached.
        HandshakeError: TLS failed, or the modeller refused the hello.
    """
    peer = f"the modeller at {host}:{port}"
    deadline = trio.current_time() + retry_for_s
    delay = 0.1
    while True:
        try:
            return await _dial(
                host, port, peer, pod_id, ssl_context, server_hostname, limits, job_timeout_s
            )
        except _Retryable as exc:
            # Unreachable, or a handshake that did not finish (a busy or flooded
            # modeller, or one restarting): try again, backing off, within retry_for_s.
            if trio.current_time() + delay > deadline:
                suffix = f" (retried for {retry_for_s:g} s)" if retry_for_s else ""
                raise exc.error_type(f"{exc}{suffix}") from exc
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)


class _Retryable(Exception):
    """A failed attempt to dial that a later attempt may get past."""

    def __init__(self, text: str, error_type: type[TransportError]) -> None:
        super().__init__(text)
        self.error_type = error_type


async def _dial(
    host: str,
    port: int,
    peer: str,
    pod_id: str,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    limits: Limits,
    job_timeout_s: float | None,
) -> TcpTransport:
    """One attempt: connect, TLS, hello. Raises :class:`_Retryable` for what may pass."""
    try:
        raw: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise _Retryable(
            f"cannot connect to {peer}: {exc.strerror or exc}", BrokenTransportError
        ) from exc
    _set_keepalive(raw, limits)
    stream = raw
    try:
        with trio.fail_after(limits.handshake_timeout_s):
            if ssl_context is not None:
                stream = trio.SSLStream(raw, ssl_context, server_hostname=server_hostname or host)
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as exc:
                    raise HandshakeError(
                        f"TLS handshake with {peer} failed: {_cause(exc)}"
                    ) from exc
            transport = TcpTransport(
                stream, peer=peer, limits=limits, first_message_timeout_s=job_timeout_s
            )
            await transport.send_line(hello_line(pod_id))
            try:
                line = await transport.receive_line(HELLO_MAX_BYTES)
            except trio.EndOfChannel:
                raise _Retryable(
                    f"{peer} closed the connection instead of answering the hello",
                    HandshakeError,
                ) from None
            except DecodeError as exc:
                raise HandshakeError(
                    f"{peer} answered the hello with more than {HELLO_MAX_BYTES} bytes "
                    "without a newline; is it an fsm-protocol modeller?"
                ) from exc
            except TransportError as exc:
                raise _Retryable(
                    f"{peer} ended the connection during the hello: {exc}"
                    + (
                        " (it may require a client certificate: --tls-cert/--tls-key)"
                        if ssl_context is not None
                        else ""
                    ),
                    HandshakeError,
                ) from exc
            try:
                _parse_welcome(line, peer)
            except HandshakeError as exc:
                if ALREADY_CONNECTED not in str(exc):
                    raise
                # Our earlier connection may still hold the slot; the modeller frees it
                # once it sees that connection closed.
                raise _Retryable(str(exc), HandshakeError) from None
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise _Retryable(
            f"{peer} did not complete the handshake within {limits.handshake_timeout_s:g} s",
            HandshakeError,
        ) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return transport


# ------------------------------------------------------------- modeller side


@final
class PodListener:
    """Accepts worker connections and admits each expected pod once, by its hello.

    Use :meth:`open`, then :meth:`wait_for_pods`. Connections that are not
    admitted (an unknown or duplicate pod id, a bad hello, a certificate that
    does not name the pod) are answered with a ``refused`` line and closed.
    """

    def __init__(
        self,
        listeners: list[trio.SocketListener],
        *,
        pods: Collection[str],
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits = Limits(),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._listeners = listeners
        self._expected = frozenset(pods)
        self._ssl_context = ssl_context
        self._limits = limits
        self._log = log or (lambda text: None)
        self._admitted: dict[str, TcpTransport] = {}
        self._reserved: set[str] = set()
        self._dropped: list[TcpTransport] = []
        self._all_in = trio.Event()
        self._pending = trio.Semaphore(limits.max_pending_handshakes)
        if not self._expected:
            self._all_in.set()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        pods: Collection[str],
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits = Limits(),
        log: Callable[[str], None] | None = None,
    ) -> PodListener:
        """Listen on ``host:port`` (port 0 picks a free one; see :attr:`port`)."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        if port == 0:
            # Each address got its own free port; keep one, so that the port is one number.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        return cls(listeners, pods=pods, ssl_context=ssl_context, limits=limits, log=log)

    @property
    def port(self) -> int:
        """The port actually listened on."""
        sockname = self._listeners[0].socket.getsockname()
        return int(sockname[1])

    @property
    def requires_client_certificates(self) -> bool:
        return self._ssl_context is not None and self._ssl_context.verify_mode == ssl.CERT_REQUIRED

    async def wait_for_pods(self, timeout_s: float) -> dict[str, TcpTransport]:
        """Admit pods until every expected pod is in or ``timeout_s`` has passed.

        Listening stops when this returns: later connections are refused by
        the operating system. Returns the admitted pods' conversations.
        """
        async with trio.open_nursery() as nursery:
            for listener in self._listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            with trio.move_on_after(timeout_s):
                while True:
                    await self._all_in.wait()
                    # A pod that gave up (or died) after its welcome frees its slot, so
                    # that it can come back; wait on until every pod is in and alive.
                    gone = [pod for pod, t in self._admitted.items() if _peer_gone(t)]
                    # A pod whose new connection is taking its slot over (see _reserve) is
                    # out until that admission ends: every pod must be in, not only none gone.
                    if not gone and self._expected <= self._admitted.keys():
                        break
                    for pod in gone:
                        self._log(f"pod {pod} closed its connection before the task began")
                        self._dropped.append(self._admitted.pop(pod))
                        self._reserved.discard(pod)
                    self._all_in = trio.Event()
            nursery.cancel_scope.cancel()
        for listener in self._listeners:
            await listener.aclose()
        for transport in self._dropped:
            await transport.aclose()
        return dict(self._admitted)

    async def aclose(self) -> None:
        """Stop listening and close every admitted connection (on an early exit)."""
        for listener in self._listeners:
            await listener.aclose()
        for transport in self._admitted.values():
            await transport.aclose()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            # Invariant: at most max_pending_handshakes admissions run at once.
            await self._pending.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:  # e.g. out of file descriptors: wait, do not spin
                self._pending.release()
                self._log(f"accept failed: {exc}")
                await trio.sleep(0.1)
                continue
            except BaseException:
                self._pending.release()
                raise
            nursery.start_soon(self._admit_and_release, stream)

    async def _admit_and_release(self, raw: trio.SocketStream) -> None:
        try:
            await self._admit(raw)
        finally:
            self._pending.release()

    async def _admit(self, raw: trio.SocketStream) -> None:
        try:
            address = "{}:{}".format(*raw.socket.getpeername()[:2])
        except OSError:
            address = "an unknown address"
        _set_keepalive(raw, self._limits)
        stream: trio.abc.Stream = raw
        pod_id: str | None = None
        admitted = False
        try:
            with trio.fail_after(self._limits.handshake_timeout_s):
                if self._ssl_context is not None:
                    stream = trio.SSLStream(raw, self._ssl_context, server_side=True)
                    try:
                        await stream.do_handshake()
                    except trio.BrokenResourceError as exc:
                        self._log(f"refused {address}: TLS handshake failed: {_cause(exc)}")
                        return
                probe = TcpTransport(stream, peer=f"a worker at {address}", limits=self._limits)
                try:
                    claimed = parse_hello(await probe.receive_line(HELLO_MAX_BYTES))
                    pod_id = self._reserve(claimed, probe)
                except (HandshakeError, DecodeError) as exc:
                    self._log(f"refused {address}: {exc}")
                    await probe.send_line(refused_line(str(exc)))
                    return
                await probe.send_line(welcome_line())
            # The same object goes on, so bytes read past the hello are kept.
            probe.peer = f"pod {pod_id} at {address}"
            probe.expect_sender = pod_id
            probe.close_on_bad_frame = True
            self._admitted[pod_id] = probe
            admitted = True
            self._log(
                f"pod {pod_id} connected from {address} "
                f"({len(self._admitted)} of {len(self._expected)})"
            )
            if self._expected <= self._admitted.keys():
                self._all_in.set()
        except trio.TooSlowError:
            self._log(f"refused {address}: no hello within {self._limits.handshake_timeout_s:g} s")
        except (TransportError, trio.EndOfChannel) as exc:
            self._log(f"refused {address}: the connection ended during the hello ({exc})")
        finally:
            if not admitted:
                if pod_id is not None:
                    self._reserved.discard(pod_id)
                await trio.aclose_forcefully(stream)

    def _reserve(self, pod_id: str, probe: TcpTransport) -> str:
        """Reserve ``pod_id`` for this connection, or say why it may not have it."""
        if pod_id not in self._expected:
            raise HandshakeError(f"pod {pod_id!r} is not part of this task")
        if pod_id in self._reserved:
            earlier = self._admitted.get(pod_id)
            if earlier is None or not _peer_gone(earlier):
                raise HandshakeError(f"pod {pod_id!r} {ALREADY_CONNECTED}")
        if self.requires_client_certificates:
            cert = probe.peer_certificate() or {}
            names = certificate_names(cert)
            if pod_id not in names:
                issued = ", ".join(map(repr, names)) or "no name"
                raise HandshakeError(
                    f"the client certificate is issued to {issued}, not to pod {pod_id!r}; "
                    "issue it with the pod id as its common name"
                )
        earlier = self._admitted.pop(pod_id, None)
        if earlier is not None:
            # The pod restarted before the task began: its new connection takes the slot.
            self._log(f"pod {pod_id} reconnected; its earlier connection had closed")
            self._dropped.append(earlier)
        self._reserved.add(pod_id)
        return pod_id


@final
class AbsentTransport:
    """Stands for a pod that never connected: its link ends as lost at once."""

    def __init__(self, pod_id: str, waited_s: float) -> None:
        self.failure = f"pod {pod_id} did not connect within {waited_s:g} s"

    async def send(self, message: Message) -> None:
        raise BrokenTransportError(self.failure)

    async def receive(self) -> Message:
        await trio.lowlevel.checkpoint()
        raise BrokenTransportError(self.failure)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
