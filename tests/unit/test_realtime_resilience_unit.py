"""Realtime resilience without the network: the republisher, the hub's resync fallback to the log,
and an outbox that stalls instead of closing when the log cannot be read."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.layers import InMemoryChannelLayer

from chat.infra.breakers import reset_breakers
from chat.infra.bus import Republisher
from chat.infra.message_buffer import MemoryBuffer
from chat.realtime.broadcast_manager import Hub
from chat.realtime.outbox import Outbox
from chat.wire.frames import StoredEvent
from tests.support.waiting import eventually


@pytest.fixture(autouse=True)
def _fresh_breakers() -> None:
    reset_breakers()


def frame(conv: str, seq: int) -> str:
    return json.dumps({"type": "message", "conversation": conv, "seq": seq, "data": {"n": seq}})


class DownBuffer(MemoryBuffer):
    """Redis down: every call fails like a refused connection."""

    def __init__(self) -> None:
        super().__init__(max_events=100, max_age_s=60)
        self.down = True

    async def heads(self, streams):  # type: ignore[no-untyped-def]
        if self.down:
            raise ConnectionError("redis down")
        return await super().heads(streams)

    async def epoch(self) -> str:
        if self.down:
            raise ConnectionError("redis down")
        return "e1"


class Log:
    def __init__(self) -> None:
        self.events: dict[str, dict[int, str]] = {}
        self.down = False

    async def load(self, conversation_id: str, after: int, up_to: int) -> list[tuple[int, str]]:
        if self.down:
            raise OSError("database down")
        return [(s, t) for s, t in sorted(self.events.get(conversation_id, {}).items()) if after < s <= up_to]

    async def heads(self, conversation_ids: list[str]) -> list[int]:
        if self.down:
            raise OSError("database down")
        return [max(self.events.get(c, {0: ""})) for c in conversation_ids]


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)

    def seqs(self) -> list[int]:
        return [json.loads(t)["seq"] for t in self.sent if "seq" in json.loads(t)]


def outbox(hub: Hub, rec: Recorder) -> Outbox:
    return Outbox(
        hub=hub, send_text=rec.send, maxsize=100, user_id=1, session_id="s",
        on_overflow=lambda: None, on_user_message=lambda m: None,
    )  # fmt: skip


def event(conv: str, seq: int) -> StoredEvent:
    return StoredEvent(conversation_id=conv, seq=seq, type="message", ts="2024-01-01T00:00:00Z", data={"n": seq})


async def test_republisher_retries_until_redis_takes_it_in_seq_order_and_drops_the_oldest_beyond_its_bound() -> None:
    published: list[list[int]] = []
    failures = [2]

    async def publish(events):  # type: ignore[no-untyped-def]
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("redis down")
        published.append([e.seq for e in events])

    async def no_sleep(_: float) -> None:
        await asyncio.sleep(0)

    rep = Republisher(publish, max_events=3, sleep=no_sleep, rng=lambda: 0.0)
    rep.add_events([event("c", 1), event("c", 3)])
    rep.add_events([event("c", 2), event("c", 4), event("c", 2)])  # 2 twice; 4 events > bound 3
    await eventually(
        lambda: rep.pending() == 0, 5, lambda: f"the republisher to drain ({rep.pending()} left)", interval=0.01
    )
    assert published == [[2, 3, 4]]  # seq 1 dropped (the log has it), 2 published once, in order


async def test_resync_reads_the_log_while_redis_is_down_and_once_after_it_returns() -> None:
    log, buffer = Log(), DownBuffer()
    hub = Hub(layer=InMemoryChannelLayer(), load=log.load, buffer=buffer, heads_from_log=log.heads)
    rec = Recorder()
    box = outbox(hub, rec)
    await hub.join("c", box)
    hub.observe_head("c", 0)
    box.start_stream("c", from_seq=0, up_to_seq=0)
    task = asyncio.create_task(box.run())
    log.events["c"] = {1: frame("c", 1), 2: frame("c", 2)}  # published while Redis was down: no doorbell
    assert await hub.resync() == 2
    buffer.down = False  # Redis back, empty: its heads say 0, the log says 3
    log.events["c"][3] = frame("c", 3)
    assert await hub.resync() == 1
    assert hub.check_log_next is False
    await eventually(lambda: rec.seqs() == [1, 2, 3], 5, lambda: f"seqs 1, 2, 3 sent; sent: {rec.sent}", interval=0.01)
    task.cancel()


async def test_an_outbox_fill_that_cannot_read_the_log_stalls_and_resumes_in_order() -> None:
    log = Log()
    hub = Hub(layer=InMemoryChannelLayer(), load=log.load, buffer=MemoryBuffer(max_events=100, max_age_s=60))
    rec = Recorder()
    box = outbox(hub, rec)
    import chat.realtime.outbox as outbox_module

    original = outbox_module.load_events
    outbox_module.load_events = log.load  # type: ignore[assignment]
    try:
        task = asyncio.create_task(box.run())
        box.start_stream("c", from_seq=0, up_to_seq=0)
        log.events["c"] = {1: frame("c", 1), 2: frame("c", 2), 3: frame("c", 3)}
        log.down = True
        box.deliver_event("c", 3, frame("c", 3))  # 1 and 2 must be read first: the log is down
        box.send_frame('{"type":"reply","id":"x","ok":true}')  # replies still flow
        await eventually(lambda: len(rec.sent) == 1, 5, lambda: f"one frame sent; sent: {rec.sent}", interval=0.01)
        assert rec.sent == ['{"type":"reply","id":"x","ok":true}']
        assert box.stalled == {"c": 3}
        log.down = False
        await eventually(
            lambda: rec.seqs() == [1, 2, 3], 5, lambda: f"seqs 1, 2, 3 sent; sent: {rec.sent}", interval=0.01
        )
        assert box.stalled == {}
        assert not task.done()  # the socket's writer survived the outage
        task.cancel()
    finally:
        outbox_module.load_events = original  # type: ignore[assignment]
