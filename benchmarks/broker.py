"""Broker benchmark: one task through a local JetStream server, and over direct TCP.

Not a test: run it by hand from the repository root (the test extra brings
``nats-server``)::

    python benchmarks/broker.py                  # 100 pods x 20 batches
    python benchmarks/broker.py --pods 10        # a quick look

In one process, the modeller and every pod run the conformance Echo task
(``--batches`` batches of 2 items each) twice: first over direct TCP on
127.0.0.1 (``PodListener`` and ``connect``, plain TCP), then through a
``nats-server -js`` started here on 127.0.0.1 with a temporary store. Both
runs share one trio loop; the broker run shares one NATS connection.

``msgs_per_s`` is the protocol messages of the broker run (its trace) per
second of task time (from the first job request to the modeller's end);
``vs_tcp`` divides it by the TCP run's rate. Both are wall-clock rates,
so a machine busy with other work moves them; the CPU seconds of this
process (and of ``nats-server``) are printed before the last line. ``lost`` counts the results of
the TCP run missing from the broker run; ``duplicated`` counts messages the
modeller applied more than once (a ``(sender, seq)`` twice in its trace)
plus results stored more than once. Both traces are checked by
``fsm-protocol check``. The last line is::

    broker: pods=<int> msgs_per_s=<int> vs_tcp=<ratio> lost=<int> duplicated=<int>
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fsm_protocol import EchoProtocol, JobRequestBody, Pod, run_modeller, run_worker  # noqa: E402
from fsm_protocol._net._broker import (  # noqa: E402
    Broker,
    BrokerOptions,
    run_modeller_via_broker,
    serve_offers,
)
from fsm_protocol._net._tcp import Limits, PodListener, connect  # noqa: E402
from fsm_protocol._runtime._modeller import ModellerRun  # noqa: E402
from fsm_protocol._wire._messages import encode  # noqa: E402
from tests.broker_servers import NatsServer  # noqa: E402

LOCAL = "127.0.0.1"


def jobs(protocol: EchoProtocol, pods: Sequence[str]) -> dict[str, JobRequestBody]:
    body = JobRequestBody(
        protocol={
            "class_name": "conformance.Echo",
            "items": list(protocol.items),
            "batch_size": protocol.batch_size,
        },
        pod_identifiers=tuple(pods),
        batched_execution=True,
    )
    return dict.fromkeys(pods, body)


async def over_tcp(protocol: EchoProtocol, pods: Sequence[str]) -> tuple[ModellerRun, float]:
    limits = Limits(max_messages_per_second=1e9, burst=1_000_000)
    listener = await PodListener.open(LOCAL, 0, pods=pods, limits=limits)

    async def worker(pod_id: str) -> None:
        transport = await connect(LOCAL, listener.port, pod_id=pod_id, limits=limits)
        try:
            await run_worker(Pod(pod_id), transport)
        finally:
            await transport.aclose()

    async with trio.open_nursery() as nursery:
        for pod_id in pods:
            nursery.start_soon(worker, pod_id)
        links = await listener.wait_for_pods(60)
        started = time.perf_counter()
        run = await run_modeller(
            task_id="bench-tcp",
            jobs=jobs(protocol, pods),
            configs=dict.fromkeys(pods, protocol),
            links=links,
        )
        elapsed = time.perf_counter() - started
    return run, elapsed


async def over_broker(
    url: str, protocol: EchoProtocol, pods: Sequence[str]
) -> tuple[ModellerRun, float, Any]:
    async with Broker.connect(BrokerOptions(servers=(url,))) as broker:
        async with trio.open_nursery() as nursery:
            for pod_id in pods:
                nursery.start_soon(serve_offers, broker, Pod(pod_id))
            started = time.perf_counter()
            run = await run_modeller_via_broker(
                broker,
                task_id="bench-broker",
                jobs=jobs(protocol, pods),
                configs=dict.fromkeys(pods, protocol),
            )
            elapsed = time.perf_counter() - started
        return run, elapsed, broker.stats()


def server_cpu_s(server: NatsServer) -> float:
    """CPU seconds the server process used so far (user + system), from /proc."""
    assert server.process is not None
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def duplicated(run: ModellerRun) -> int:
    applied = Counter((m.sender, m.seq) for m in run.trace)
    return sum(n - 1 for n in applied.values() if n > 1)


def check(run: ModellerRun, folder: Path, name: str) -> None:
    path = folder / f"{name}.ndjson"
    path.write_bytes(b"".join(encode(m) for m in run.trace))
    done = subprocess.run(
        [sys.executable, "-m", "fsm_protocol", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    verdict = "passes" if done.returncode == 0 else f"FAILS ({done.returncode})"
    print(f"  fsm-protocol check {name}: {verdict}")
    if done.returncode != 0:
        print("   ", (done.stdout + done.stderr).strip().replace("\n", "\n    ")[:2000])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args(argv)
    pods = [f"bench/pod-{n:04d}" for n in range(args.pods)]
    protocol = EchoProtocol(items=tuple(f"i{k}" for k in range(2 * args.batches)), batch_size=2)

    cpu = time.process_time()
    tcp_run, tcp_s = trio.run(over_tcp, protocol, pods)
    tcp_cpu = time.process_time() - cpu
    tcp_rate = len(tcp_run.trace) / tcp_s
    print(
        f"tcp:    {tcp_run.status.value}, {len(tcp_run.results)} results, "
        f"{len(tcp_run.trace)} messages in {tcp_s:.2f} s = {tcp_rate:.0f} msgs/s "
        f"(this process: {tcp_cpu:.2f} s CPU)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = NatsServer(folder / "nats" / "store")
        try:
            server.start()
            cpu = time.process_time()
            run, broker_s, stats = trio.run(over_broker, server.url, protocol, pods)
            broker_cpu = time.process_time() - cpu
            server_cpu = server_cpu_s(server)
        finally:
            server.stop()
        rate = len(run.trace) / broker_s
        print(
            f"broker: {run.status.value}, {len(run.results)} results, "
            f"{len(run.trace)} messages in {broker_s:.2f} s = {rate:.0f} msgs/s "
            f"(this process: {broker_cpu:.2f} s CPU; nats-server: {server_cpu:.2f} s CPU)"
        )
        print(f"  {stats}")
        check(tcp_run, folder, "tcp")
        check(run, folder, "broker")
    lost = len(set(tcp_run.results) - set(run.results))
    twice = duplicated(run)
    print(
        f"broker: pods={args.pods} msgs_per_s={int(rate)} vs_tcp={rate / tcp_rate:.2f} "
        f"lost={lost} duplicated={twice}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
