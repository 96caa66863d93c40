#!/usr/bin/env python3
"""fsm_protocol's own worker (the engine) serving one task over stdin and stdout.

The reference the conformance kit is checked against:

    fsm-protocol conform --role worker -- python examples/engine_worker.py

It shows the whole of a stdio transport: a ``Transport`` is three methods.
The pod's name is the ``recipient`` of the first line, so that line is read
before the worker starts, and handed to it first.

To run our implementation as a peer, use ``fsm-protocol worker --stdio --pod-id ID``:
the same, with the CLI's options, defaults and one-line errors (docs/conformance.md).
"""

from __future__ import annotations

import sys

import trio

from fsm_protocol import DecodeError, Message, Pod, decode, encode, run_worker


class StdioTransport:
    """This process's stdin and stdout as one NDJSON conversation."""

    def __init__(self) -> None:
        self._in = trio.lowlevel.FdStream(sys.stdin.fileno())
        self._out = trio.lowlevel.FdStream(sys.stdout.fileno())
        self._buffer = b""
        self._first: bytes | None = None

    async def read_line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = await self._in.receive_some(65536)
            if not chunk:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line
                raise trio.EndOfChannel
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line + b"\n"

    def push_back(self, line: bytes) -> None:
        self._first = line

    async def send(self, message: Message) -> None:
        await self._out.send_all(encode(message))

    async def receive(self) -> Message:
        if self._first is not None:
            line, self._first = self._first, None
        else:
            line = await self.read_line()
        return decode(line)

    async def aclose(self) -> None:
        await self._out.aclose()


async def main() -> int:
    transport = StdioTransport()
    try:
        first = await transport.read_line()
        request = decode(first)
    except (trio.EndOfChannel, DecodeError):
        return 2  # spec section 1: no valid JOB_REQUEST, nobody to answer
    if request.type.value != "JOB_REQUEST":
        return 2
    transport.push_back(first)
    report = await run_worker(Pod(request.recipient), transport)
    print(f"engine_worker: {report.pod_id} ended {report.state}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
