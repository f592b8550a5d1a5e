"""Per-socket outbound queue and writer: the one place that orders what a socket receives.

Everything a socket is sent (replies, errors, durable and ephemeral events) passes through one
bounded queue drained by one task, so replies and events keep their order. For each subscribed
conversation the writer tracks the last `seq` delivered: an older or repeated event is dropped,
an event past a gap first pulls the missing ones (from the hub's recent cache, else the log).
That is the whole of "no gap, no duplicate, increasing seq" (docs/protocol.md §3).

A fill that fails because a dependency is down (PostgreSQL refusing connections, its circuit
open) does not end the socket: the conversation *stalls* at the last seq delivered, later events
for it are held back (order matters more than speed), everything else keeps flowing (replies,
other conversations), and the fill is retried with backoff until it succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from chat.errors import ErrorClass
from chat.infra.error_recovery import backoff_delay, classify
from chat.realtime import compression_handler
from chat.realtime.broadcast_manager import Hub
from chat.realtime.reconnection_handler import load_events
from monitoring.metrics import metrics
from monitoring.metrics.meter import meter

logger = logging.getLogger(__name__)

# A stalled conversation's fill is retried after full-jitter backoff from this, capped at the max.
FILL_RETRY_BASE_S = 0.25
FILL_RETRY_MAX_S = 3.0

SendText = Callable[[str], Awaitable[None]]
SendBytes = Callable[[bytes], Awaitable[None]]


class _ReadFailed(Exception):
    """Reading events for a fill failed on a dependency (TRANSIENT): stall, do not close."""


class Outbox:
    def __init__(
        self,
        *,
        hub: Hub,
        send_text: SendText,
        maxsize: int,
        user_id: int,
        session_id: str,
        on_overflow: Callable[[], None],
        on_user_message: Callable[[Mapping[str, Any]], None],
        send_bytes: SendBytes | None = None,
        compress_min_bytes: int | None = None,
    ) -> None:
        self.hub = hub
        self.user_id = user_id
        self.session_id = session_id
        self._send_text = send_text
        # Set when the socket negotiated chat.v1.deflate: frames of compress_min_bytes or more go
        # out compressed, as binary (chat/realtime/compression_handler.py); None: every frame is text.
        self._send_bytes = send_bytes
        self._compress_min_bytes = compress_min_bytes
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(maxsize=maxsize)
        self._on_overflow = on_overflow
        self._on_user_message = on_user_message
        self.positions: dict[str, int] = {}
        # Conversation -> the highest seq known to exist, for conversations whose fill failed.
        self.stalled: dict[str, int] = {}
        self._fill_failures = 0
        self._retry_timer: asyncio.TimerHandle | None = None
        self.overflowed = False
        self.sent_frames = 0
        # Set once a close_after_queued() has written what was queued and closed the socket.
        self.drained = asyncio.Event()

    # --- producers (never block: a full queue means the client is too slow) ------------------
    def _put(self, item: tuple[Any, ...]) -> None:
        if self.overflowed:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True
            metrics.inc("slow_consumer_closes")
            self._on_overflow()

    def send_frame(self, text: str) -> None:
        self._put(("frame", text))

    def deliver_event(self, conversation_id: str, seq: int, text: str | None) -> None:
        self._put(("event", conversation_id, seq, text))

    def deliver_user(self, message: Mapping[str, Any]) -> None:
        self._on_user_message(message)

    def start_stream(self, conversation_id: str, *, from_seq: int, up_to_seq: int) -> None:
        """Begin delivering a conversation after `from_seq`, replaying up to `up_to_seq` first.
        Queued behind the subscribe reply, so the reply is always sent before the replay."""
        self._put(("start", conversation_id, from_seq, up_to_seq))

    def stop_stream(self, conversation_id: str) -> None:
        self._put(("stop", conversation_id))

    def close_after_queued(self, close: Callable[[], Awaitable[None]]) -> None:
        """Write what is queued, then `close` and stop: a server going down closes its sockets without
        losing what they were about to receive. What is queued after this is not written (the client
        resumes from the last seq it holds)."""
        self._put(("close", close))

    # --- the writer ------------------------------------------------------------------------------
    async def serve(self, *, closed: Callable[[], bool], on_failure: Callable[[], Awaitable[None]]) -> None:
        """The socket's writer task: `run` until the socket ends.

        A write that fails because the socket is gone or going (the client vanished: uvicorn raises
        ClientDisconnected, an OSError; or the server closed the socket while frames were still
        queued: uvicorn raises RuntimeError, daphne autobahn's Disconnected) is the normal end of a
        socket, logged as one line. Any other failure is a bug: a traceback, then `on_failure`."""
        try:
            await self.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, OSError) and not closed():
                logger.exception("socket writer failed")
                await on_failure()
                return
            metrics.inc("writes_after_disconnect")
            logger.info(
                "socket %s closed with %d frame(s) unsent (%s)", self.session_id, self.pending(), type(exc).__name__
            )

    async def run(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                kind = item[0]
                if kind == "frame":
                    await self._send(item[1])
                elif kind == "event":
                    await self._catching_up(item[1], item[2], self._event, item[1], item[2], item[3])
                elif kind == "start":
                    _, conversation_id, from_seq, up_to_seq = item
                    self.positions[conversation_id] = from_seq
                    self.stalled.pop(conversation_id, None)
                    # Events queued before this marker were dropped (not yet subscribed); the hub had
                    # seen at most `last_seen` by now, so catching up to it covers them.
                    target = max(up_to_seq, self.hub.last_seen.get(conversation_id, 0))
                    if target > from_seq:
                        await self._catching_up(conversation_id, target, self._fill, conversation_id, target)
                elif kind == "stop":
                    self.positions.pop(item[1], None)
                    self.stalled.pop(item[1], None)
                elif kind == "retry":
                    await self._retry_stalled()
                elif kind == "close":
                    try:
                        await item[1]()
                    finally:
                        self.drained.set()
                    return
        finally:
            if self._retry_timer is not None:
                self._retry_timer.cancel()

    async def _catching_up(
        self, conversation_id: str, seq: int, step: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        """Run `step` unless the conversation is stalled; a dependency failure stalls it."""
        if conversation_id not in self.positions:
            return
        if conversation_id in self.stalled:
            self.stalled[conversation_id] = max(self.stalled[conversation_id], seq)
            return
        try:
            await step(*args)
        except _ReadFailed as exc:
            self._stall(conversation_id, seq, exc.__cause__ or exc)

    def _stall(self, conversation_id: str, seq: int, exc: BaseException) -> None:
        metrics.inc("outbox_stalls")
        logger.info("delivery of %s stalled at %s: %s", conversation_id, self.positions.get(conversation_id), exc)
        self.stalled[conversation_id] = max(self.stalled.get(conversation_id, 0), seq)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._retry_timer is not None:
            return
        delay = backoff_delay(
            self._fill_failures, base_delay_s=FILL_RETRY_BASE_S, max_delay_s=FILL_RETRY_MAX_S, rng=random.random
        )
        self._fill_failures += 1
        self._retry_timer = asyncio.get_running_loop().call_later(delay, self._retry_due)

    def _retry_due(self) -> None:
        self._retry_timer = None
        self._put(("retry",))

    async def _retry_stalled(self) -> None:
        for conversation_id, target in list(self.stalled.items()):
            if conversation_id not in self.positions:
                self.stalled.pop(conversation_id, None)
                continue
            try:
                await self._fill(conversation_id, target)
            except _ReadFailed:
                self._schedule_retry()
                return
            # Nothing else ran meanwhile (this is the only writer): the conversation is caught up.
            del self.stalled[conversation_id]
            metrics.inc("outbox_unstalled")
        if self.stalled:
            self._schedule_retry()
        else:
            self._fill_failures = 0

    async def _write(self, text: str) -> None:
        if self._compress_min_bytes is not None and self._send_bytes is not None:
            data = compression_handler.compressed_form(text, self._compress_min_bytes)
            if data is not None:
                await self._send_bytes(data)
                return
        await self._send_text(text)

    async def _send(self, text: str) -> None:
        await self._write(text)
        self.sent_frames += 1
        meter.frame(text)  # chat_frames_sent_total, chat_bytes_sent_total (batched: O(1), no I/O)

    async def _send_live(self, text: str) -> None:
        """A live event: also its delivery lag (commit → written), which a replay would distort."""
        await self._write(text)
        self.sent_frames += 1
        meter.delivered(text, time.time())

    async def _event(self, conversation_id: str, seq: int, text: str | None) -> None:
        position = self.positions.get(conversation_id)
        if position is None:
            return
        if seq <= position:
            metrics.inc("duplicate_events_dropped")
            return
        if seq > position + 1:
            metrics.inc("gap_fills")
            await self._fill(conversation_id, seq - 1)
        if text is None:
            text = self.hub.recent_text(conversation_id, seq)
        if text is None:
            rows = await self._read(conversation_id, seq - 1, seq)
            if not rows:
                return
            text = rows[0][1]
        await self._send_live(text)
        self.positions[conversation_id] = seq

    async def _fill(self, conversation_id: str, up_to_seq: int) -> None:
        """Send every event after the current position up to `up_to_seq`, in order."""
        position = self.positions[conversation_id]
        while position < up_to_seq:
            text = self.hub.recent_text(conversation_id, position + 1)
            if text is None:
                break
            await self._send(text)
            position += 1
            self.positions[conversation_id] = position
        if position < up_to_seq:
            for seq, text in await self._read(conversation_id, position, up_to_seq):
                if seq <= self.positions[conversation_id]:
                    continue
                await self._send(text)
                self.positions[conversation_id] = seq
            # Every seq up to `up_to_seq` is committed (seqs commit in order under the row lock), so
            # one the log no longer has was compacted (docs/protocol.md §4): it is skipped, not awaited.
            self.positions[conversation_id] = max(self.positions[conversation_id], up_to_seq)

    async def _read(self, conversation_id: str, after_seq: int, up_to_seq: int) -> list[tuple[int, str]]:
        try:
            return await load_events(conversation_id, after_seq, up_to_seq)
        except Exception as exc:
            if classify(exc) is ErrorClass.TRANSIENT:
                raise _ReadFailed(str(exc)) from exc
            raise

    def pending(self) -> int:
        return self._queue.qsize()
