"""The per-socket outbox's exact behaviour, written so that a broken writer fails fast.

The writer never waits on anything slow here (the log is a stub that answers at once), so one turn
of the event loop drains its whole queue: `settle` gives it a few turns instead of polling against
a wall-clock deadline. The retry timer is never waited out either: a test reads the scheduled
handle and fires it by hand. A writer that loops forever under a mutation blocks the loop, which
the module's timeout ends in seconds rather than the mutation run's budget in minutes."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer

from chat.infra.message_buffer import MemoryBuffer
from chat.realtime import outbox as outbox_module
from chat.realtime.broadcast_manager import Hub
from chat.realtime.outbox import FILL_RETRY_BASE_S, FILL_RETRY_MAX_S, Outbox
from monitoring.metrics import metrics

pytestmark = pytest.mark.timeout(10)


def frame(conv: str, seq: int) -> str:
    return json.dumps({"type": "message", "conversation": conv, "seq": seq, "data": {"n": seq}})


class Log:
    """The event log at the edge: answers at once, records every read, can be down (transient) or
    broken (a bug)."""

    def __init__(self) -> None:
        self.events: dict[str, dict[int, str]] = {}
        self.reads: list[tuple[str, int, int]] = []
        self.down = False
        self.broken = False

    async def load(self, conversation_id: str, after: int, up_to: int) -> list[tuple[int, str]]:
        self.reads.append((conversation_id, after, up_to))
        if self.down:
            raise ConnectionError("database down")
        if self.broken:
            raise ValueError("a bug")
        return [(s, t) for s, t in sorted(self.events.get(conversation_id, {}).items()) if after < s <= up_to]


class Socket:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.overflows = 0
        self.users: list[Any] = []
        self.fail_with: BaseException | None = None

    async def send(self, text: str) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(text)

    def seqs(self) -> list[int]:
        return [json.loads(t)["seq"] for t in self.sent if "seq" in json.loads(t)]


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> Log:
    stub = Log()
    monkeypatch.setattr(outbox_module, "load_events", stub.load)
    return stub


@pytest.fixture
def hub() -> Hub:
    return Hub(layer=InMemoryChannelLayer(), load=None, buffer=MemoryBuffer(max_events=100, max_age_s=60))  # type: ignore[arg-type]


@pytest.fixture
def sock() -> Socket:
    return Socket()


def make_box(hub: Hub, sock: Socket, maxsize: int = 100) -> Outbox:
    def overflow() -> None:
        sock.overflows += 1

    return Outbox(
        hub=hub,
        send_text=sock.send,
        maxsize=maxsize,
        user_id=7,
        session_id="sess-1",
        on_overflow=overflow,
        on_user_message=sock.users.append,
    )


@pytest.fixture
def box(hub: Hub, sock: Socket) -> Outbox:
    return make_box(hub, sock)


async def settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


@pytest.fixture
async def writer(box: Outbox) -> Any:
    task = asyncio.create_task(box.run())
    await settle()
    yield task
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# --- producers -----------------------------------------------------------------------------------


def test_a_new_outbox_is_empty(box: Outbox) -> None:
    assert (box.user_id, box.session_id) == (7, "sess-1")
    assert (box.positions, box.stalled, box.overflowed, box.sent_frames, box.pending()) == ({}, {}, False, 0, 0)
    assert (FILL_RETRY_BASE_S, FILL_RETRY_MAX_S) == (0.25, 3.0)


def test_the_queue_takes_exactly_maxsize_items_then_reports_one_overflow_and_takes_nothing_more(
    hub: Hub, sock: Socket
) -> None:
    box = make_box(hub, sock, maxsize=2)
    before = metrics.counter("slow_consumer_closes")
    box.send_frame("a")
    box.deliver_event("c", 1, "b")
    assert (box.pending(), box.overflowed, sock.overflows) == (2, False, 0)
    box.stop_stream("c")
    assert (box.pending(), box.overflowed, sock.overflows) == (2, True, 1)
    assert metrics.counter("slow_consumer_closes") == before + 1
    box._queue.get_nowait()  # room again: an overflowed outbox still takes nothing
    box.send_frame("d")
    box.start_stream("c", from_seq=0, up_to_seq=0)
    assert (box.pending(), sock.overflows) == (1, 1)
    assert metrics.counter("slow_consumer_closes") == before + 1


def test_each_producer_queues_its_own_item(box: Outbox) -> None:
    box.send_frame("f")
    box.deliver_event("c", 3, None)
    box.start_stream("c", from_seq=1, up_to_seq=4)
    box.stop_stream("c")
    items = [box._queue.get_nowait() for _ in range(box.pending())]
    assert items == [("frame", "f"), ("event", "c", 3, None), ("start", "c", 1, 4), ("stop", "c")]


def test_user_messages_go_straight_to_the_socket(box: Outbox, sock: Socket) -> None:
    box.deliver_user({"type": "notification", "n": 1})
    assert sock.users == [{"type": "notification", "n": 1}]
    assert box.pending() == 0


# --- the writer ------------------------------------------------------------------------------------


async def test_frames_are_sent_in_order_and_counted(box: Outbox, sock: Socket, writer: Any) -> None:
    box.send_frame('{"type":"reply","id":"1"}')
    box.send_frame('{"type":"reply","id":"2"}')
    await settle()
    assert sock.sent == ['{"type":"reply","id":"1"}', '{"type":"reply","id":"2"}']
    assert (box.sent_frames, box.pending()) == (2, 0)


async def test_events_of_a_conversation_not_streamed_are_dropped(box: Outbox, sock: Socket, writer: Any) -> None:
    box.deliver_event("c", 1, frame("c", 1))
    await settle()
    assert sock.sent == []
    assert box.positions == {}


async def test_live_events_in_order_duplicates_and_old_ones_dropped(
    box: Outbox, sock: Socket, log: Log, writer: Any
) -> None:
    box.start_stream("c", from_seq=2, up_to_seq=2)
    dropped = metrics.counter("duplicate_events_dropped")
    for seq in (3, 3, 2, 1, 4):
        box.deliver_event("c", seq, frame("c", seq))
    await settle()
    assert sock.seqs() == [3, 4]
    assert box.positions == {"c": 4}
    assert box.sent_frames == 2
    assert metrics.counter("duplicate_events_dropped") == dropped + 3
    assert log.reads == []  # nothing missing: the log is never read


async def test_start_replays_up_to_the_later_of_its_target_and_what_the_hub_has_seen(
    box: Outbox, hub: Hub, sock: Socket, log: Log, writer: Any
) -> None:
    log.events["c"] = {s: frame("c", s) for s in range(1, 6)}
    hub.last_seen["c"] = 4
    box.start_stream("c", from_seq=1, up_to_seq=3)
    await settle()
    assert sock.seqs() == [2, 3, 4]
    assert log.reads == [("c", 1, 4)]
    assert box.positions == {"c": 4}


async def test_start_with_nothing_to_replay_reads_nothing(
    box: Outbox, hub: Hub, sock: Socket, log: Log, writer: Any
) -> None:
    hub.last_seen["c"] = 2
    box.start_stream("c", from_seq=2, up_to_seq=1)
    await settle()
    assert (sock.sent, log.reads, box.positions) == ([], [], {"c": 2})


async def test_a_restart_clears_a_stall_and_a_stop_forgets_the_conversation(
    box: Outbox, sock: Socket, log: Log, writer: Any
) -> None:
    box.positions["c"], box.stalled["c"] = 5, 9
    box.start_stream("c", from_seq=9, up_to_seq=9)
    await settle()
    assert (box.positions, box.stalled) == ({"c": 9}, {})
    box.stalled["c"] = 12
    box.stop_stream("c")
    box.stop_stream("never-started")  # stopping an unknown conversation is harmless
    await settle()
    assert (box.positions, box.stalled) == ({}, {})
    box.deliver_event("c", 10, frame("c", 10))
    await settle()
    assert sock.sent == []


async def test_a_gap_is_filled_from_the_hubs_recent_events_then_the_log(
    box: Outbox, hub: Hub, sock: Socket, log: Log, writer: Any
) -> None:
    box.start_stream("c", from_seq=0, up_to_seq=0)
    hub.remember("c", 1, frame("c", 1))
    hub.remember("c", 2, frame("c", 2))
    log.events["c"] = {3: frame("c", 3), 4: frame("c", 4)}
    fills = metrics.counter("gap_fills")
    box.deliver_event("c", 5, frame("c", 5))
    await settle()
    assert sock.seqs() == [1, 2, 3, 4, 5]
    assert log.reads == [("c", 2, 4)]  # only what the hub no longer had
    assert metrics.counter("gap_fills") == fills + 1
    assert box.positions == {"c": 5}


async def test_a_fill_skips_what_the_log_no_longer_has_and_never_goes_back(
    box: Outbox, sock: Socket, log: Log, writer: Any
) -> None:
    box.start_stream("c", from_seq=0, up_to_seq=0)
    log.events["c"] = {2: frame("c", 2), 4: frame("c", 4)}  # 1 and 3 were compacted away
    box.deliver_event("c", 6, frame("c", 6))
    await settle()
    assert sock.seqs() == [2, 4, 6]
    assert box.positions == {"c": 6}
    await box._fill("c", 3)  # already past it: nothing is sent again
    assert sock.seqs() == [2, 4, 6]
    assert box.positions == {"c": 6}


async def test_a_fill_ignores_rows_at_or_before_the_position(box: Outbox, sock: Socket, log: Log) -> None:
    async def overlapping(conversation_id: str, after: int, up_to: int) -> list[tuple[int, str]]:
        return [(1, frame("c", 1)), (2, frame("c", 2)), (3, frame("c", 3))]  # more than asked

    box.positions["c"] = 2
    outbox_module.load_events = overlapping  # type: ignore[assignment]  # restored by the log fixture
    await box._fill("c", 3)
    assert sock.seqs() == [3]
    assert box.positions == {"c": 3}


async def test_an_event_without_text_is_taken_from_the_hub_else_read_from_the_log(
    box: Outbox, hub: Hub, sock: Socket, log: Log, writer: Any
) -> None:
    box.start_stream("c", from_seq=0, up_to_seq=0)
    hub.remember("c", 1, frame("c", 1))
    box.deliver_event("c", 1, None)
    await settle()
    assert (sock.seqs(), log.reads) == ([1], [])
    log.events["c"] = {2: frame("c", 2)}
    box.deliver_event("c", 2, None)
    await settle()
    assert (sock.seqs(), log.reads) == ([1, 2], [("c", 1, 2)])
    box.deliver_event("c", 3, None)  # not in the log either: nothing sent, the position stays
    await settle()
    assert (sock.seqs(), box.positions) == ([1, 2], {"c": 2})
    assert log.reads[-1] == ("c", 2, 3)


# --- stalls ----------------------------------------------------------------------------------------


async def test_a_fill_that_cannot_read_stalls_only_its_conversation(
    box: Outbox, sock: Socket, log: Log, writer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat.realtime.outbox")
    stalls = metrics.counter("outbox_stalls")
    box.start_stream("c", from_seq=0, up_to_seq=0)
    box.start_stream("d", from_seq=0, up_to_seq=0)
    log.events["c"] = {1: frame("c", 1), 2: frame("c", 2)}
    log.down = True
    box.deliver_event("c", 3, frame("c", 3))
    await settle()
    assert box.stalled == {"c": 3}
    assert metrics.counter("outbox_stalls") == stalls + 1
    assert "delivery of c stalled at 0: database down" in caplog.text
    assert box._retry_timer is not None
    assert box._fill_failures == 1
    box.deliver_event("c", 5, frame("c", 5))  # held back, and the stall's target moves on
    box.deliver_event("c", 4, frame("c", 4))  # an older one never moves it back
    box.deliver_event("d", 1, frame("d", 1))  # other conversations keep flowing
    box.send_frame('{"type":"reply"}')
    await settle()
    assert box.stalled == {"c": 5}
    assert sock.sent == [frame("d", 1), '{"type":"reply"}']
    assert len(log.reads) == 1  # a stalled conversation is not read again until the retry


async def test_the_retry_is_scheduled_once_with_full_jitter_backoff(
    box: Outbox, log: Log, writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module.random, "random", lambda: 1.0)
    loop = asyncio.get_running_loop()
    box.positions["c"] = 0
    box._stall("c", 2, ConnectionError("x"))
    first = box._retry_timer
    assert first is not None
    assert first.when() - loop.time() == pytest.approx(FILL_RETRY_BASE_S, abs=0.05)
    box._stall("c", 1, ConnectionError("x"))  # already scheduled: no second timer
    assert box._retry_timer is first
    assert box.stalled == {"c": 2}
    assert box._fill_failures == 1
    first.cancel()
    box._retry_timer = None
    box._fill_failures = 5  # 0.25 * 2**5 = 8 s, capped at 3 s
    box._schedule_retry()
    assert box._retry_timer is not None
    assert box._retry_timer.when() - loop.time() == pytest.approx(FILL_RETRY_MAX_S, abs=0.05)
    assert box._fill_failures == 6


async def test_a_due_retry_queues_one_retry_and_allows_the_next_timer(box: Outbox) -> None:
    box._retry_timer = asyncio.get_running_loop().call_later(60, lambda: None)
    box._retry_timer.cancel()
    box._retry_due()
    assert box._retry_timer is None
    assert [box._queue.get_nowait() for _ in range(box.pending())] == [("retry",)]


async def test_a_retry_that_reads_again_resumes_in_order_and_resets_the_backoff(
    box: Outbox, sock: Socket, log: Log, writer: Any
) -> None:
    unstalled = metrics.counter("outbox_unstalled")
    box.start_stream("c", from_seq=0, up_to_seq=0)
    log.events["c"] = {s: frame("c", s) for s in (1, 2, 3)}
    log.down = True
    box.deliver_event("c", 3, frame("c", 3))
    await settle()
    assert box.stalled == {"c": 3}
    timer = box._retry_timer
    assert timer is not None
    log.down = False
    timer.cancel()
    box._retry_due()  # fired by hand: the test does not wait out the backoff
    await settle()
    assert sock.seqs() == [1, 2, 3]
    assert (box.stalled, box.positions, box._fill_failures, box._retry_timer) == ({}, {"c": 3}, 0, None)
    assert metrics.counter("outbox_unstalled") == unstalled + 1


async def test_a_retry_that_still_cannot_read_backs_off_again(box: Outbox, log: Log, writer: Any) -> None:
    box.positions.update({"a": 0, "b": 0})
    box.stalled.update({"a": 1, "b": 1})
    log.down = True
    box._fill_failures = 1
    await box._retry_stalled()
    assert box.stalled == {"a": 1, "b": 1}
    assert log.reads == [("a", 0, 1)]  # the first failure ends this round
    assert box._fill_failures == 2
    assert box._retry_timer is not None


async def test_a_retry_drops_stalls_of_stopped_conversations_and_keeps_the_rest_scheduled(
    box: Outbox, sock: Socket, log: Log
) -> None:
    log.events["b"] = {1: frame("b", 1)}
    box.positions.update({"b": 0})
    box.stalled.update({"gone": 4, "b": 1})
    box._fill_failures = 3
    await box._retry_stalled()
    assert (box.stalled, box.positions, sock.seqs()) == ({}, {"b": 1}, [1])
    assert box._fill_failures == 0
    assert box._retry_timer is None
    assert log.reads == [("b", 0, 1)]


async def test_a_partly_successful_retry_schedules_another(box: Outbox, log: Log) -> None:
    log.events["a"] = {1: frame("a", 1)}
    box.positions.update({"a": 0, "b": 0})
    box.stalled.update({"a": 1, "b": 2})

    async def only_a(conversation_id: str, after: int, up_to: int) -> list[tuple[int, str]]:
        if conversation_id == "b":
            raise ConnectionError("down for b")
        return await log.load(conversation_id, after, up_to)

    outbox_module.load_events = only_a  # type: ignore[assignment]  # restored by the log fixture
    await box._retry_stalled()
    assert box.stalled == {"b": 2}
    assert box._retry_timer is not None
    assert box._fill_failures == 1


async def test_the_retry_timer_goes_with_the_writer(box: Outbox, log: Log) -> None:
    task = asyncio.create_task(box.run())
    await settle()
    box.positions["c"] = 0
    box._stall("c", 1, ConnectionError("x"))
    timer = box._retry_timer
    assert timer is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert timer.cancelled()


async def test_a_queued_retry_runs_the_stalled_fills(box: Outbox, sock: Socket, log: Log, writer: Any) -> None:
    log.events["c"] = {1: frame("c", 1)}
    box.positions["c"] = 0
    box.stalled["c"] = 1
    box._put(("retry",))
    await settle()
    assert (sock.seqs(), box.stalled) == ([1], {})


async def test_a_read_that_fails_for_another_reason_is_not_a_stall(box: Outbox, log: Log) -> None:
    log.broken = True
    box.positions["c"] = 0
    with pytest.raises(ValueError, match="a bug"):
        await box._catching_up("c", 2, box._fill, "c", 2)
    assert box.stalled == {}
    log.broken, log.down = False, True
    await box._catching_up("c", 2, box._fill, "c", 2)
    assert box.stalled == {"c": 2}
    if box._retry_timer is not None:
        box._retry_timer.cancel()


async def test_catching_up_runs_the_step_only_for_a_streamed_conversation_that_is_not_stalled(box: Outbox) -> None:
    ran: list[int] = []

    async def step(n: int) -> None:
        ran.append(n)

    await box._catching_up("c", 1, step, 1)
    box.positions["c"] = 0
    await box._catching_up("c", 2, step, 2)
    box.stalled["c"] = 7
    await box._catching_up("c", 3, step, 3)
    await box._catching_up("c", 9, step, 9)
    assert ran == [2]
    assert box.stalled == {"c": 9}


# --- serve: how the writer ends ---------------------------------------------------------------------


async def _serve_until_failure(box: Outbox, closed: bool) -> list[str]:
    failures: list[str] = []

    async def on_failure() -> None:
        failures.append("failed")

    box.send_frame("x")
    box.send_frame("y")
    box.send_frame("z")
    await asyncio.wait_for(box.serve(closed=lambda: closed, on_failure=on_failure), 5)
    return failures


async def test_a_vanished_client_ends_the_writer_quietly(
    box: Outbox, sock: Socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat.realtime.outbox")
    before = metrics.counter("writes_after_disconnect")
    sock.fail_with = ConnectionResetError("gone")
    assert await _serve_until_failure(box, closed=False) == []
    assert metrics.counter("writes_after_disconnect") == before + 1
    assert "socket sess-1 closed with 2 frame(s) unsent (ConnectionResetError)" in caplog.text
    assert "socket writer failed" not in caplog.text


async def test_a_write_after_the_server_closed_the_socket_ends_it_quietly(
    box: Outbox, sock: Socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat.realtime.outbox")
    before = metrics.counter("writes_after_disconnect")
    sock.fail_with = RuntimeError("closed")
    assert await _serve_until_failure(box, closed=True) == []
    assert metrics.counter("writes_after_disconnect") == before + 1
    assert "(RuntimeError)" in caplog.text


async def test_any_other_writer_failure_is_a_bug_that_ends_the_socket(
    box: Outbox, sock: Socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat.realtime.outbox")
    before = metrics.counter("writes_after_disconnect")
    sock.fail_with = RuntimeError("bug")
    assert await _serve_until_failure(box, closed=False) == ["failed"]
    assert metrics.counter("writes_after_disconnect") == before
    assert "socket writer failed" in caplog.text
    assert any(r.exc_info for r in caplog.records if r.getMessage() == "socket writer failed")


async def test_cancelling_the_writer_is_not_a_failure(box: Outbox) -> None:
    failures: list[str] = []

    async def on_failure() -> None:
        failures.append("failed")

    task = asyncio.create_task(box.serve(closed=lambda: False, on_failure=on_failure))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert failures == []
