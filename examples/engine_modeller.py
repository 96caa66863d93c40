#!/usr/bin/env python3
"""fsm_protocol's own modeller (the engine) running a conformance scenario over stdio.

The reference the conformance kit is checked against:

    fsm-protocol conform --role modeller -- python examples/engine_modeller.py

It reads the CONFORMANCE_SCENARIO line (spec section 6), runs the task with
``run_modeller`` over one conversation per pod, and exits with status 0
however the task ended. Every pod's messages share stdin, so they are routed
by ``sender``; a line that cannot be read belongs to nobody, so every running
worker is cancelled (spec section 1).

To run our implementation as a peer, use ``fsm-protocol modeller --stdio``:
the same, with the CLI's options, defaults and one-line errors (docs/conformance.md).
"""

from __future__ import annotations

import math
import sys

import trio

from fsm_protocol import (
    ConfigError,
    DecodeError,
    EchoProtocol,
    JobRequestBody,
    Message,
    TaskTimeouts,
    body_of,
    decode,
    encode,
    registry,
    run_modeller,
)


class Lines:
    """This process's stdin as lines."""

    def __init__(self) -> None:
        self._in = trio.lowlevel.FdStream(sys.stdin.fileno())
        self._buffer = b""

    async def next(self) -> bytes:
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


class PodLink:
    """One pod's conversation: its lines from the shared stdin, ours to the shared stdout.

    ``send_nowait`` queues the line behind every earlier one of the task: the
    runtime stamps ``seq`` when it calls it, and one writer (``write_out``)
    keeps that order on stdout, so the modeller's seq rises by 1 in write order.
    """

    def __init__(self, out: trio.MemorySendChannel[bytes]) -> None:
        self._out = out
        self.inbox, self._incoming = trio.open_memory_channel[Message](math.inf)

    async def send(self, message: Message) -> None:
        self.send_nowait(message)
        await trio.lowlevel.checkpoint()

    def send_nowait(self, message: Message) -> None:
        self._out.send_nowait(encode(message))

    async def receive(self) -> Message:
        return await self._incoming.receive()

    async def aclose(self) -> None:
        self._incoming.close()


async def main() -> int:
    lines = Lines()
    try:
        control = decode(await lines.next())
        scenario = body_of(control)
    except (trio.EndOfChannel, DecodeError) as exc:
        print(f"engine_modeller: no scenario line: {exc}", file=sys.stderr)
        return 2
    out, pending = trio.open_memory_channel[bytes](math.inf)
    links = {pod: PodLink(out) for pod in scenario.pods}
    jobs, configs = {}, {}
    for pod in scenario.pods:
        protocol = {**scenario.job.protocol, **scenario.job_overrides.get(pod, {})}
        jobs[pod] = JobRequestBody(
            protocol=protocol,
            pod_identifiers=scenario.pods,
            batched_execution=scenario.job.batched_execution,
            run_on_new_data_only=scenario.job.run_on_new_data_only,
            force_rerun_failed_files=scenario.job.force_rerun_failed_files,
            test_run=scenario.job.test_run,
            project_id=scenario.job.project_id,
            options=scenario.job.options,
        )
        try:
            configs[pod] = registry.load(protocol)
        except ConfigError:
            configs[pod] = EchoProtocol()
    cancel = trio.Event()

    async def route() -> None:
        while True:
            try:
                line = await lines.next()
            except trio.EndOfChannel:
                break
            try:
                message = decode(line)
            except DecodeError as exc:
                print(f"engine_modeller: unreadable line, cancelling: {exc}", file=sys.stderr)
                cancel.set()
                continue
            link = links.get(message.sender)
            if link is not None:
                link.inbox.send_nowait(message)
        for link in links.values():
            link.inbox.close()

    async def write_out() -> None:
        stdout = trio.lowlevel.FdStream(sys.stdout.fileno())
        async for line in pending:
            await stdout.send_all(line)

    async with trio.open_nursery() as writer:
        writer.start_soon(write_out)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(route)
            run = await run_modeller(
                task_id=control.task_id,
                jobs=jobs,
                configs=configs,
                links=links,
                algorithm=None,
                timeouts=TaskTimeouts(response_timeout_s=scenario.response_timeout_s),
                require_all_pods=scenario.require_all_pods,
                cancel=cancel,
            )
            nursery.cancel_scope.cancel()
        out.close()  # write_out ends once every line is written
    print(f"engine_modeller: task ended {run.status.value}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
