"""The executor's per-message path: no task per message or batch, the in-memory hand-over,
and the garbage collector tuned only while a run is under way."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from fsm_protocol import (
    BrokenTransportError,
    DecodeError,
    EchoProtocol,
    Hooks,
    Message,
    MessageType,
    Pod,
    TaskStatus,
    memory_transport_pair,
    run_task,
)
from fsm_protocol._runtime._collector import YOUNG_THRESHOLD


class Spawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


def spawns_for(batches: int, workers: int = 5) -> int:
    protocol = EchoProtocol(items=tuple(f"i{n}" for n in range(batches)), batch_size=1)
    pods = [Pod(f"org/pod-{n}") for n in range(workers)]
    spawns = Spawns()

    async def main() -> None:
        outcome = await run_task(protocol, pods, batched_execution=True)
        assert outcome.status is TaskStatus.COMPLETE
        assert len(outcome.results) == workers * batches

    trio.run(main, clock=trio.testing.MockClock(), instruments=[spawns])
    return spawns.count


def test_an_in_memory_task_starts_no_task_per_batch_or_message() -> None:
    # Ten times the batches, ten times the messages: not one task more.
    assert spawns_for(2) == spawns_for(20)


def message(seq: int, body: object = 1) -> Message:
    return Message.make(
        MessageType.CURRENT_BATCH_ID,
        task_id="t",
        sender="a/p",
        recipient="modeller",
        seq=seq,
        body=body,
    )


async def test_the_hand_over_takes_buffered_lines_first_then_each_line_as_it_is_sent() -> None:
    sender, receiver = memory_transport_pair()
    taken: list[int] = []
    refused: list[DecodeError] = []
    sender.send_nowait(message(0))
    await sender.send_raw(b'{"not": "a message"}\n')
    sender.send_nowait(message(1))
    receiver.deliver_to(lambda m: taken.append(m.seq), refused.append)
    assert taken == [0, 1] and len(refused) == 1
    sender.send_nowait(message(2))  # handed over at once, decoded: no task involved
    assert taken == [0, 1, 2]
    sender.send_nowait(message(3, body=-1))  # a body that does not fit its type
    assert taken == [0, 1, 2] and "$.body" in str(refused[-1])
    await sender.aclose()
    with pytest.raises(trio.EndOfChannel):
        await receiver.receive()  # the end of the input still comes the usual way


async def test_a_closed_receiver_refuses_what_its_peer_sends() -> None:
    sender, receiver = memory_transport_pair()
    receiver.deliver_to(lambda m: None, lambda e: None)
    await receiver.aclose()
    with pytest.raises(BrokenTransportError):
        sender.send_nowait(message(0))


@pytest.fixture
def default_collector() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def observe_collector(hooks_seen: list[tuple[int, int]]) -> TaskStatus:
    protocol = EchoProtocol(items=("a", "b"), batch_size=1)

    def on_message(_who: str, _message: Message) -> None:
        hooks_seen.append((gc.get_threshold()[0], gc.get_freeze_count()))

    async def main() -> TaskStatus:
        outcome = await run_task(
            protocol, [Pod("a/p"), Pod("b/p")], hooks=Hooks(on_message=on_message)
        )
        return outcome.status

    return trio.run(main, clock=trio.testing.MockClock())


@pytest.mark.usefixtures("default_collector")
def test_the_collector_is_tuned_during_a_run_and_restored_after() -> None:
    seen: list[tuple[int, int]] = []
    assert observe_collector(seen) is TaskStatus.COMPLETE
    # Nothing is frozen: freezing kept earlier runs' garbage alive (the fuzzer grew 800 MiB).
    assert seen and all(young == YOUNG_THRESHOLD and frozen == 0 for young, frozen in seen)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("default_collector")
def test_an_applications_own_collector_settings_are_left_alone() -> None:
    gc.disable()
    try:
        seen: list[tuple[int, int]] = []
        observe_collector(seen)
        assert all(young == 700 and frozen == 0 for young, frozen in seen)
    finally:
        gc.enable()
    keep = [object() for _ in range(10)]  # the application freezes what it built
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        seen = []
        observe_collector(seen)
        assert all(young == YOUNG_THRESHOLD and count == frozen for young, count in seen)
        assert gc.get_freeze_count() == frozen and gc.get_threshold() == (700, 10, 10)
    finally:
        gc.unfreeze()
    del keep
