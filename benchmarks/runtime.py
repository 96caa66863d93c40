"""Benchmark the in-process runtime: 1,000 workers × 100 batches in one process.

One task of the conformance Echo algorithm (batched, one item per batch) runs
between a modeller and 1,000 in-process workers over the in-memory transport
(every message really is encoded and decoded). In the same run, a bare trio
memory-channel ping-pong passes the same number of messages: two tasks, one
unbuffered channel each way, ``await send`` then ``await receive``: the cost
of a trio hand-off with no protocol at all.

Printed, one per line: messages/s at 10, 100 and 1,000 workers (100 batches
each; the 1,000-worker run is the main one), the main run again with the
garbage collector tuned as ``fsm-protocol worker --pods`` tunes it (for
information), the ping-pong, and the memory a worker costs. Usage::

    python benchmarks/runtime.py [--workers 1000] [--batches 100] [--profile N]

``--profile N`` also prints the top N entries (by own time) of a cProfile of
the main run.

The last line is always::

    runtime: vs_channels=<ratio> wall_s=<seconds> bytes_per_worker=<int> msgs_per_s=<int>

``vs_channels`` is the ping-pong's wall time over the main run's (1.0: as fast
as bare channels). ``wall_s`` and ``msgs_per_s`` are the main run's, set-up
of the 1,000 workers included. ``bytes_per_worker`` is the memory traced
by :mod:`tracemalloc` in a 1,000-worker task of 2 batches at the moment every
worker has sent its first result, minus the memory before the task, per
worker: what a running worker costs (its machine, bindings, connection and
tasks on both sides, and the messages and results so far). The peak, printed
too, is higher: when the task starts, every worker decodes its job request,
which names all 1,000 pods (the wire spec's ``pod_identifiers``), before any
has vetted it and dropped the list. The results and the trace of a long task
grow with its batches, not its workers. Targets (issue 12):
``vs_channels`` ≥ 0.5, ``wall_s`` < 10, ``bytes_per_worker`` < 51200, and
messages/s at 1,000 workers at least 75% of that at 10.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import pstats
import sys
import time
import tracemalloc

import trio

from fsm_protocol import (
    EchoProtocol,
    Hooks,
    Message,
    MessageType,
    Pod,
    TaskOutcome,
    TaskStatus,
    run_task,
)

NO_HOOKS = Hooks()


async def echo_task(workers: int, batches: int, hooks: Hooks = NO_HOOKS) -> TaskOutcome:
    protocol = EchoProtocol(items=tuple(f"item-{n}" for n in range(batches)), batch_size=1)
    pods = [Pod(f"org/pod-{n}") for n in range(workers)]
    outcome = await run_task(protocol, pods, batched_execution=True, hooks=hooks)
    if outcome.status is not TaskStatus.COMPLETE or len(outcome.results) != workers * batches:
        raise SystemExit(
            f"the task did not complete: {outcome.status.value}, {len(outcome.results)} results"
        )
    return outcome


def timed_task(workers: int, batches: int) -> tuple[float, int]:
    """Wall seconds and messages of one task, run on a fresh trio loop."""
    gc.collect()
    start = time.perf_counter()
    outcome = trio.run(echo_task, workers, batches)
    return time.perf_counter() - start, len(outcome.trace)


async def ping_pong(messages: int) -> None:
    a_send, a_receive = trio.open_memory_channel[bytes](0)
    b_send, b_receive = trio.open_memory_channel[bytes](0)

    async def pong() -> None:
        async for line in a_receive:
            await b_send.send(line)

    line = b'{"type":"EVALUATION_RESULTS"}\n'
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pong)
        for _ in range(messages // 2):
            await a_send.send(line)
            await b_receive.receive()
        await a_send.aclose()


def timed_ping_pong(messages: int) -> float:
    gc.collect()
    start = time.perf_counter()
    trio.run(ping_pong, messages)
    return time.perf_counter() - start


def memory_per_worker(workers: int, batches: int) -> tuple[int, int]:
    """Traced bytes per worker mid-task (every worker has sent a result), and at the peak."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    mid: list[int] = []
    results = 0

    def on_message(who: str, message: Message) -> None:
        nonlocal results
        if message.type is MessageType.EVALUATION_RESULTS and who.startswith("modeller"):
            results += 1
            if results == workers:
                mid.append(tracemalloc.get_traced_memory()[0])

    trio.run(echo_task, workers, batches, Hooks(on_message=on_message))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (mid[0] - before) // workers, (peak - before) // workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)

    rates = {}
    for workers in sorted({10, 100, args.workers}):
        if workers == args.workers:
            continue
        wall, messages = timed_task(workers, args.batches)
        rates[workers] = messages / wall
        print(f"{workers:>5} workers × {args.batches} batches: {messages} messages in "
              f"{wall:.2f} s, {rates[workers]:,.0f} messages/s", flush=True)  # fmt: skip
    wall, messages = timed_task(args.workers, args.batches)
    rates[args.workers] = messages / wall
    print(f"{args.workers:>5} workers × {args.batches} batches: {messages} messages in "
          f"{wall:.2f} s, {rates[args.workers]:,.0f} messages/s", flush=True)  # fmt: skip
    smallest = min(rates)
    kept = rates[args.workers] / rates[smallest]
    print(f"messages/s at {args.workers} workers: {kept:.0%} of that at {smallest} "
          f"(must stay above 75%)", flush=True)  # fmt: skip

    # The same run as a process that tunes its collector would make it (what
    # `fsm-protocol worker --pods` does for itself); for information, not the last line.
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, *thresholds[1:])
    gc.freeze()
    tuned, _ = timed_task(args.workers, args.batches)
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    rate = messages / tuned
    print(f"{args.workers:>5} workers × {args.batches} batches, gc.set_threshold(50000) and "
          f"gc.freeze(): {tuned:.2f} s, {rate:,.0f} messages/s", flush=True)  # fmt: skip

    channels = timed_ping_pong(messages)
    print(f"bare trio memory-channel ping-pong: {messages} messages in {channels:.2f} s, "
          f"{messages / channels:,.0f} messages/s", flush=True)  # fmt: skip

    per_worker, peak = memory_per_worker(args.workers, 2)
    print(f"memory per worker, {args.workers} workers × 2 batches (tracemalloc): {per_worker} "
          f"bytes mid-task, {peak} bytes at the peak (the job requests, each naming all "
          f"{args.workers} pods, decoded at once)", flush=True)  # fmt: skip

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        trio.run(echo_task, args.workers, args.batches)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.profile)
        print(out.getvalue(), flush=True)

    vs = channels / wall
    print(
        f"runtime: vs_channels={vs:.2f} wall_s={wall:.2f} bytes_per_worker={per_worker} "
        f"msgs_per_s={math.floor(messages / wall)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
