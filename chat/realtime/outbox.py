"""Per-socket outbound queue and writer: the one place that orders what a socket receives.

Everything a socket is sent (replies, errors, durable and ephemeral events) passes through one
bounded queue drained by one task, so replies and events keep their order. For each subscribed
conversation the writer tracks the last `seq` delivered: an older or repeated event is dropped,
an event past a gap first pulls the missing ones (from the hub's recent cache, else the log).
That is the whole of "no gap, no duplicate, increasing seq" (PROTOCOL §3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from chat.realtime.hub import Hub
from chat.realtime.replay import load_events, load_from_log
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

SendText = Callable[[str], Awaitable[None]]


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
        on_user_message: Callable[[dict[str, Any]], None],
    ) -> None:
        self.hub = hub
        self.user_id = user_id
        self.session_id = session_id
        self._send_text = send_text
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(maxsize=maxsize)
        self._on_overflow = on_overflow
        self._on_user_message = on_user_message
        self.positions: dict[str, int] = {}
        self.overflowed = False
        self.sent_frames = 0

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

    def deliver_user(self, message: dict[str, Any]) -> None:
        self._on_user_message(message)

    def start_stream(self, conversation_id: str, *, from_seq: int, up_to_seq: int) -> None:
        """Begin delivering a conversation after `from_seq`, replaying up to `up_to_seq` first.
        Queued behind the subscribe reply, so the reply is always sent before the replay."""
        self._put(("start", conversation_id, from_seq, up_to_seq))

    def stop_stream(self, conversation_id: str) -> None:
        self._put(("stop", conversation_id))

    # --- the writer ------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            item = await self._queue.get()
            kind = item[0]
            if kind == "frame":
                await self._send(item[1])
            elif kind == "event":
                await self._event(item[1], item[2], item[3])
            elif kind == "start":
                _, conversation_id, from_seq, up_to_seq = item
                self.positions[conversation_id] = from_seq
                # Events queued before this marker were dropped (not yet subscribed); the hub had
                # seen at most `last_seen` by now, so catching up to it covers them.
                target = max(up_to_seq, self.hub.last_seen.get(conversation_id, 0))
                if target > from_seq:
                    await self._fill(conversation_id, target)
            elif kind == "stop":
                self.positions.pop(item[1], None)

    async def _send(self, text: str) -> None:
        await self._send_text(text)
        self.sent_frames += 1

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
            rows = await load_from_log(conversation_id, seq - 1, seq)
            if not rows:
                return
            text = rows[0][1]
        await self._send(text)
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
            for seq, text in await load_events(conversation_id, position, up_to_seq):
                if seq <= self.positions[conversation_id]:
                    continue
                await self._send(text)
                self.positions[conversation_id] = seq
            # Every seq up to `up_to_seq` is committed (seqs commit in order under the row lock), so
            # one the log no longer has was compacted (PROTOCOL §4): it is skipped, not awaited.
            self.positions[conversation_id] = max(self.positions[conversation_id], up_to_seq)

    def pending(self) -> int:
        return self._queue.qsize()
