"""The process hub and the per-socket outbox: one channel-layer subscription per process, each
event encoded once, per-socket ordering with duplicate drop and gap fill, slow-consumer overflow."""

from __future__ import annotations

import asyncio
import json

from channels.layers import InMemoryChannelLayer

from chat.infra.message_buffer import MemoryBuffer, conversation_stream
from chat.realtime.broadcast_manager import Hub as _Hub
from chat.realtime.outbox import Outbox
from tests.support.waiting import eventually


class LogStub:
    """Stands in for the event log at the edge (the database is tested in integration tests)."""

    def __init__(self, events: dict[int, str] | None = None) -> None:
        self.events = events or {}
        self.calls: list[tuple[str, int, int]] = []

    async def __call__(self, conversation_id: str, after: int, up_to: int) -> list[tuple[int, str]]:
        self.calls.append((conversation_id, after, up_to))
        return [(s, t) for s, t in sorted(self.events.items()) if after < s <= up_to]


def Hub(log: LogStub | None = None, buffer: MemoryBuffer | None = None) -> _Hub:  # noqa: N802
    """A hub on a private in-memory layer and buffer: these tests are about the hub, not Redis."""
    return _Hub(
        layer=InMemoryChannelLayer(), load=log or LogStub(), buffer=buffer or MemoryBuffer(max_events=100, max_age_s=60)
    )


def frame(conv: str, seq: int) -> str:
    return json.dumps({"type": "message", "conversation": conv, "seq": seq, "data": {"n": seq}})


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.overflowed = 0

    async def send(self, text: str) -> None:
        self.sent.append(text)

    def seqs(self) -> list[int]:
        return [json.loads(t)["seq"] for t in self.sent if "seq" in json.loads(t)]


def outbox_for(hub: _Hub, recorder: Recorder, maxsize: int = 100) -> Outbox:
    def overflow() -> None:
        recorder.overflowed += 1

    return Outbox(
        hub=hub,
        send_text=recorder.send,
        maxsize=maxsize,
        user_id=1,
        session_id="s",
        on_overflow=overflow,
        on_user_message=lambda m: None,
    )


async def drain(outbox: Outbox) -> None:
    task = asyncio.create_task(outbox.run())
    for _ in range(1000):
        if outbox.pending() == 0:
            break
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()


async def test_one_layer_subscription_per_conversation_per_process() -> None:
    hub = Hub()
    recorders = [Recorder() for _ in range(50)]
    boxes = [outbox_for(hub, r) for r in recorders]
    for box in boxes:
        await hub.join("c1", box)
    assert len(hub.layer.groups) == 1  # the in-memory layer: one group, one member (the hub's channel)
    assert list(hub.layer.groups["conv.c1"]) == [hub.channel]
    for box in boxes[:49]:
        await hub.leave("c1", box)
    assert "conv.c1" in hub.layer.groups
    await hub.leave("c1", boxes[49])
    assert "conv.c1" not in hub.layer.groups


async def test_the_same_encoded_text_object_goes_to_every_socket() -> None:
    hub = Hub()
    recorders = [Recorder() for _ in range(3)]
    boxes = [outbox_for(hub, r) for r in recorders]
    for box in boxes:
        await hub.join("c", box)
        box.start_stream("c", from_seq=0, up_to_seq=0)
    text = frame("c", 1)
    hub.dispatch({"type": "conv.event", "conversation": "c", "seq": 1, "frame": text})
    for box in boxes:
        await drain(box)
    # One object for all of them (the hub's shared Frame, whose compression they would share too).
    assert recorders[0].sent[0] == text
    assert all(r.sent[0] is recorders[0].sent[0] for r in recorders)


async def test_outbox_drops_duplicates_and_old_events() -> None:
    hub = Hub()
    rec = Recorder()
    box = outbox_for(hub, rec)
    box.start_stream("c", from_seq=0, up_to_seq=0)
    for seq in (1, 2, 2, 1, 3):
        hub.remember("c", seq, frame("c", seq))
        box.deliver_event("c", seq, frame("c", seq))
    await drain(box)
    assert rec.seqs() == [1, 2, 3]


async def test_outbox_fills_a_gap_from_the_hubs_recent_events_in_order() -> None:
    hub = Hub()
    rec = Recorder()
    box = outbox_for(hub, rec)
    box.start_stream("c", from_seq=0, up_to_seq=0)
    for seq in (1, 2, 3, 4):
        hub.remember("c", seq, frame("c", seq))
    box.deliver_event("c", 1, frame("c", 1))
    box.deliver_event("c", 4, frame("c", 4))  # the doorbells for 2 and 3 were lost
    await drain(box)
    assert rec.seqs() == [1, 2, 3, 4]


async def test_events_for_unsubscribed_conversations_are_not_sent() -> None:
    hub = Hub()
    rec = Recorder()
    box = outbox_for(hub, rec)
    box.deliver_event("other", 1, frame("other", 1))
    box.start_stream("c", from_seq=0, up_to_seq=0)
    box.stop_stream("c")
    box.deliver_event("c", 1, frame("c", 1))
    await drain(box)
    assert rec.sent == []


async def test_start_stream_catches_up_to_what_the_hub_already_dispatched() -> None:
    hub = Hub()
    rec = Recorder()
    box = outbox_for(hub, rec)
    await hub.join("c", box)
    for seq in (1, 2, 3):
        hub.dispatch({"type": "conv.event", "conversation": "c", "seq": seq, "frame": frame("c", seq)})
    # The subscribe read head_seq=1, but events 2 and 3 were dispatched before the stream started.
    box.send_frame('{"type":"reply","id":"s","ok":true}')
    box.start_stream("c", from_seq=0, up_to_seq=1)
    await drain(box)
    assert json.loads(rec.sent[0])["type"] == "reply"
    assert rec.seqs() == [1, 2, 3]


async def test_a_full_queue_reports_a_slow_consumer_once_and_stops_queueing() -> None:
    hub = Hub()
    rec = Recorder()
    box = outbox_for(hub, rec, maxsize=5)
    box.start_stream("c", from_seq=0, up_to_seq=0)
    for seq in range(1, 20):
        box.deliver_event("c", seq, frame("c", seq))
    assert rec.overflowed == 1
    assert box.overflowed is True
    assert box.pending() == 5


async def test_ephemeral_frames_skip_the_originating_session() -> None:
    hub = Hub()
    mine, theirs = Recorder(), Recorder()
    box_mine, box_theirs = outbox_for(hub, mine), outbox_for(hub, theirs)
    box_theirs.session_id = "other"
    await hub.join("c", box_mine)
    await hub.join("c", box_theirs)
    hub.dispatch({"type": "conv.ephemeral", "conversation": "c", "frame": '{"type":"typing"}', "exclude_session": "s"})
    await drain(box_mine)
    await drain(box_theirs)
    assert mine.sent == []
    assert theirs.sent == ['{"type":"typing"}']


class FlakyLayer(InMemoryChannelLayer):
    """group_add fails once, as it would while Redis restarts."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def group_add(self, group: str, channel: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis restarting")
        await super().group_add(group, channel)


async def test_a_failed_group_add_keeps_the_subscription_and_joins_in_the_background() -> None:
    hub = _Hub(layer=FlakyLayer())
    box = outbox_for(hub, Recorder())
    await hub.join("c", box)  # Redis restarting: the subscription stands (served by the log resync)
    assert hub.conversations["c"] == {box}
    assert hub.pending_groups == {"conv.c"}
    # The background join retries with backoff.
    await eventually(lambda: not hub.pending_groups, 3, "the background join to succeed", interval=0.01)
    assert list(hub.layer.groups["conv.c"]) == [hub.channel]


async def until_sent(recorders: list[Recorder], count: int, boxes: list[Outbox]) -> None:
    tasks = [asyncio.create_task(b.run()) for b in boxes]
    try:
        await eventually(
            lambda: all(len(r.seqs()) >= count for r in recorders),
            10,
            lambda: f"{count} events delivered to every socket; delivered: {[r.seqs() for r in recorders]}",
            interval=0.005,
        )
    finally:
        for task in tasks:
            task.cancel()


async def test_doorbells_out_of_order_are_delivered_in_order_without_a_log_read() -> None:
    log = LogStub()
    hub = Hub(log)
    recorders = [Recorder() for _ in range(20)]
    boxes = [outbox_for(hub, r) for r in recorders]
    for box in boxes:
        await hub.join("c", box)
        box.start_stream("c", from_seq=0, up_to_seq=0)
    for seq in (1, 3, 2, 5, 4):
        hub.dispatch({"type": "conv.event", "conversation": "c", "seq": seq, "frame": frame("c", seq)})
    await until_sent(recorders, 5, boxes)
    assert all(r.seqs() == [1, 2, 3, 4, 5] for r in recorders)
    assert log.calls == []


async def test_a_real_gap_is_read_from_the_log_once_per_process_not_per_socket() -> None:
    log = LogStub({2: frame("c", 2), 3: frame("c", 3)})
    hub = Hub(log)
    recorders = [Recorder() for _ in range(50)]
    boxes = [outbox_for(hub, r) for r in recorders]
    for box in boxes:
        await hub.join("c", box)
        box.start_stream("c", from_seq=0, up_to_seq=0)
    hub.dispatch({"type": "conv.event", "conversation": "c", "seq": 1, "frame": frame("c", 1)})
    hub.dispatch({"type": "conv.event", "conversation": "c", "seq": 4, "frame": frame("c", 4)})  # 2 and 3 never rang
    await until_sent(recorders, 4, boxes)
    assert all(r.seqs() == [1, 2, 3, 4] for r in recorders)
    assert log.calls == [("c", 1, 3)]


async def test_resync_delivers_an_event_whose_doorbell_was_lost_with_nothing_after_it() -> None:
    buffer = MemoryBuffer(max_events=100, max_age_s=60)
    log = LogStub({1: frame("c", 1), 2: frame("c", 2), 3: frame("c", 3)})
    hub = Hub(log, buffer)
    rec = Recorder()
    box = outbox_for(hub, rec)
    await hub.join("c", box)
    hub.observe_head("c", 1)  # the subscriber read head 1 from the database
    box.start_stream("c", from_seq=1, up_to_seq=1)
    await buffer.append(conversation_stream("c"), frames_for("c", 2, 3))  # published; doorbells lost
    assert await hub.resync() == 2
    await until_sent([rec], 2, [box])
    assert rec.seqs() == [2, 3]
    assert await hub.resync() == 0  # up to date: nothing read again
    assert log.calls == [("c", 1, 3)]


def frames_for(conv: str, *seqs: int) -> list[tuple[int, str]]:
    return [(s, frame(conv, s)) for s in seqs]
