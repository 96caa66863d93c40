"""The kit's watch on what a modeller under test owes: each message has its own wait.

The watch reads the obligations from the trace checker as lines arrive, so a
case ends at the step it waits at, and its verdict names the missing message.
"""

from __future__ import annotations

import trio
import trio.testing

from fsm_protocol import Role
from fsm_protocol._kit._owed import OwedWatch
from fsm_protocol._wire._messages import Message, MessageType, encode
from fsm_protocol.conformance import Echo, Scenario

TASK = "t-1"
POD = "kit/pod-a"


def _request(initial_setup: bool) -> bytes:
    scenario = Scenario(
        name="x",
        role=Role.MODELLER,
        description="",
        echo=Echo(items=("i0", "i1"), initial_setup=initial_setup),
        pods=(POD,),
    )
    message = Message.make(
        MessageType.JOB_REQUEST,
        task_id=TASK,
        sender="modeller",
        recipient=POD,
        seq=0,
        body=scenario.job(POD),
    )
    return encode(message)


def _accept() -> bytes:
    return (
        f'{{"v":1,"type":"JOB_ACCEPT","task_id":"{TASK}","sender":"{POD}",'
        f'"recipient":"modeller","seq":0,"body":{{"ACCEPT":"{POD}"}},"meta":{{}}}}\n'
    ).encode()


async def _run_watch(watch: OwedWatch) -> float:
    stopped = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.watch, stopped.set)
        await stopped.wait()
    return trio.current_time()


async def test_an_owed_setup_message_is_named_when_its_wait_runs_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    watch = OwedWatch(TASK, [POD], silent=(), scale=1.0, response_timeout=5.0)
    assert [(o.pod, o.message) for o in watch.owed.values()] == [(POD, "JOB_REQUEST")]
    watch.feed(_request(initial_setup=True))
    assert watch.owed == {}
    await trio.sleep(0.5)
    watch.feed(_accept())
    assert [o.message for o in watch.owed.values()] == ["ALGORITHM_EXCHANGE"]
    ended = await _run_watch(watch)
    assert watch.expired is not None
    assert ended - start == 2.5  # the owed wait, from the line that made it owed
    assert watch.expired.text() == (
        "expected ALGORITHM_EXCHANGE to kit/pod-a within 2 s after its JOB_ACCEPT of a job"
        " with an initial setup (line 2), got nothing"
    )


async def test_a_missing_job_request_is_named_after_the_start_up_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watch = OwedWatch(TASK, [POD, "kit/pod-b"], silent=(), scale=0.5, response_timeout=5.0)
    watch.feed(_request(initial_setup=False))
    ended = await _run_watch(watch)
    assert ended == 2.5  # REQUEST_WAIT at time scale 0.5
    assert watch.expired is not None
    assert watch.expired.text() == (
        "expected JOB_REQUEST to kit/pod-b within 2.5 s after the CONFORMANCE_SCENARIO line,"
        " got nothing"
    )


async def test_a_violation_ends_the_watch_at_once(autojump_clock: trio.testing.MockClock) -> None:
    watch = OwedWatch(TASK, [POD], silent=(), scale=1.0, response_timeout=5.0)
    watch.feed(_request(initial_setup=False))
    watch.feed(_accept().replace(b'"seq":0', b'"seq":3'))  # seq must start at 0
    assert watch.violated
    assert await _run_watch(watch) == 0.0
    assert watch.expired is None
