"""The hot buffer: recent durable events per conversation and per user, in front of the log.

Redis in production (one sorted set per stream, scored by seq, so appends from several processes
may arrive in any order), an in-memory twin in embedded mode. Bounded by count (oldest dropped
first) and by age (entries older than the limit are not served, and an idle stream's key
expires). A read answers only when it can return the *whole* requested range; otherwise the
caller goes to the log — the buffer is an optimisation, never a source of gaps.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from django.conf import settings

from chat.infra.redis_client import redis_call, redis_client
from monitoring.metrics import metrics

Clock = Callable[[], float]
logger = logging.getLogger(__name__)


class Buffer(Protocol):
    async def append(
        self,
        stream: str,
        entries: Sequence[tuple[int, str]],
        *,
        max_events: int | None = None,
        max_age_s: float | None = None,
    ) -> None: ...
    async def read(
        self, stream: str, after_seq: int, up_to_seq: int, *, max_age_s: float | None = None
    ) -> list[tuple[int, str]] | None: ...
    async def heads(self, streams: Sequence[str]) -> list[int]: ...
    async def epoch(self) -> str: ...
    async def forget(self, stream: str, seqs: Sequence[int]) -> None: ...


def conversation_stream(conversation_id: str) -> str:
    return f"c:{conversation_id}"


def user_stream(user_id: int) -> str:
    return f"u:{user_id}"


def _complete(rows: list[tuple[int, str]], after_seq: int, up_to_seq: int) -> bool:
    return len(rows) == up_to_seq - after_seq and all(seq == after_seq + 1 + i for i, (seq, _) in enumerate(rows))


class MemoryBuffer:
    """The embedded-mode twin: same bounds, same answers, one process."""

    def __init__(self, *, max_events: int, max_age_s: float, clock: Clock = time.time) -> None:
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.clock = clock
        self._streams: dict[str, OrderedDict[int, tuple[float, str]]] = {}
        self._lock = asyncio.Lock()

    async def append(
        self,
        stream: str,
        entries: Sequence[tuple[int, str]],
        *,
        max_events: int | None = None,
        max_age_s: float | None = None,
    ) -> None:
        now = self.clock()
        async with self._lock:
            buf = self._streams.setdefault(stream, OrderedDict())
            for seq, text in entries:
                buf[seq] = (now, text)
            if any(seq < last for seq, last in zip(list(buf)[1:], list(buf), strict=False)):
                self._streams[stream] = buf = OrderedDict(sorted(buf.items()))
            while len(buf) > (max_events or self.max_events):
                buf.popitem(last=False)
            self._expire(stream, now, max_age_s)

    def _expire(self, stream: str, now: float, max_age_s: float | None = None) -> None:
        buf = self._streams.get(stream)
        while buf and next(iter(buf.values()))[0] < now - (max_age_s or self.max_age_s):
            buf.popitem(last=False)
        if buf is not None and not buf:
            del self._streams[stream]

    async def read(
        self, stream: str, after_seq: int, up_to_seq: int, *, max_age_s: float | None = None
    ) -> list[tuple[int, str]] | None:
        self._expire(stream, self.clock(), max_age_s)
        buf = self._streams.get(stream, OrderedDict())
        rows = [(seq, buf[seq][1]) for seq in range(after_seq + 1, up_to_seq + 1) if seq in buf]
        return rows if _complete(rows, after_seq, up_to_seq) else None

    async def heads(self, streams: Sequence[str]) -> list[int]:
        """The highest buffered seq of each stream (0 when empty)."""
        return [max(self._streams[s], default=0) if s in self._streams else 0 for s in streams]

    def streams(self) -> int:
        return len(self._streams)

    async def forget(self, stream: str, seqs: Sequence[int]) -> None:
        """Drop these entries: a read over them misses and the log answers."""
        async with self._lock:
            buf = self._streams.get(stream)
            for seq in seqs:
                if buf is not None:
                    buf.pop(seq, None)

    async def epoch(self) -> str:
        """Never changes: the in-memory buffer lives and dies with the process that reads it."""
        return "memory"


class RedisBuffer:
    """Sorted set per stream: score = seq, member = "<written at, ms>|<frame>"."""

    def __init__(self, url: str, *, max_events: int, max_age_s: float, prefix: str, clock: Clock = time.time) -> None:
        self.url = url
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.prefix = prefix
        self.clock = clock

    def _redis(self) -> Any:
        return redis_client(self.url)

    def key(self, stream: str) -> str:
        return f"{self.prefix}:buf:{stream}"

    async def append(
        self,
        stream: str,
        entries: Sequence[tuple[int, str]],
        *,
        max_events: int | None = None,
        max_age_s: float | None = None,
    ) -> None:
        """`max_events`/`max_age_s` override the buffer's bounds for this stream (a user's
        notification buffer follows their tier); readers pass the same age."""
        if not entries:
            return
        max_events = max_events or self.max_events
        max_age_s = max_age_s or self.max_age_s
        stamp = int(self.clock() * 1000)
        key = self.key(stream)
        pipe = self._redis().pipeline(transaction=False)
        pipe.zadd(key, {f"{stamp}|{text}": seq for seq, text in entries})
        pipe.zremrangebyrank(key, 0, -(max_events + 1))  # keep the newest max_events
        pipe.expire(key, int(max_age_s) + 1)  # an idle stream disappears on its own
        await pipe.execute()

    async def read(
        self, stream: str, after_seq: int, up_to_seq: int, *, max_age_s: float | None = None
    ) -> list[tuple[int, str]] | None:
        members = await self._redis().zrangebyscore(self.key(stream), after_seq + 1, up_to_seq, withscores=True)
        oldest_ok = (self.clock() - (max_age_s or self.max_age_s)) * 1000
        rows: list[tuple[int, str]] = []
        for member, score in members:
            stamp, _, text = member.partition("|")
            if int(stamp) >= oldest_ok:
                rows.append((int(score), text))
        rows.sort()
        # A seq written twice (two publishers) appears once per distinct stamp: keep one.
        deduped = [row for i, row in enumerate(rows) if i == 0 or row[0] != rows[i - 1][0]]
        return deduped if _complete(deduped, after_seq, up_to_seq) else None

    async def forget(self, stream: str, seqs: Sequence[int]) -> None:
        """Drop these entries (every copy): a read over them misses and the log answers."""
        pipe = self._redis().pipeline(transaction=False)
        for seq in seqs:
            pipe.zremrangebyscore(self.key(stream), seq, seq)
        await pipe.execute()

    async def heads(self, streams: Sequence[str]) -> list[int]:
        """The highest buffered seq of each stream (0 when empty), in one round trip."""
        if not streams:
            return []
        pipe = self._redis().pipeline(transaction=False)
        for stream in streams:
            pipe.zrange(self.key(stream), -1, -1, withscores=True)
        return [int(found[0][1]) if found else 0 for found in await pipe.execute()]

    async def epoch(self) -> str:
        """An id of this Redis dataset: it changes when Redis restarts empty (or is flushed), which
        is how a hub learns that events buffered before may be gone and the buffer's heads cannot
        be trusted to show what it missed (see Hub.resync). The first reader after a restart sets it."""
        key = f"{self.prefix}:buf-epoch"
        pipe = self._redis().pipeline(transaction=False)
        pipe.set(key, uuid.uuid4().hex, nx=True)
        pipe.get(key)
        _, value = await pipe.execute()
        return str(value)


_buffer: Buffer | None = None


def get_buffer() -> Buffer:
    global _buffer
    if _buffer is None:
        max_events, max_age = settings.CHAT_BUFFER_MAX_EVENTS, settings.CHAT_BUFFER_MAX_AGE_S
        if settings.REDIS_URL:
            _buffer = RedisBuffer(
                settings.REDIS_URL, max_events=max_events, max_age_s=max_age, prefix=settings.CHANNEL_PREFIX
            )
        else:
            _buffer = MemoryBuffer(max_events=max_events, max_age_s=max_age)
    return _buffer


async def buffered_or_none(
    stream: str, after_seq: int, up_to_seq: int, *, max_age_s: float | None = None
) -> list[tuple[int, str]] | None:
    """Read the buffer; any failure (Redis down, slow, or its circuit open) is a miss, not an error:
    the log answers. Bounded by redis_call's timeout, so a hung Redis costs a replay a second at
    most, and nothing while the circuit is open."""
    buffer = get_buffer()
    try:
        rows = await redis_call(lambda: buffer.read(stream, after_seq, up_to_seq, max_age_s=max_age_s))
    except Exception:
        metrics.inc("buffer_errors")
        return None
    metrics.inc("buffer_reads", outcome="hit" if rows is not None else "miss")
    return rows


async def forget_buffered(conversation_id: str, seqs: Sequence[int]) -> None:
    """Drop rewritten events from the conversation's hot buffer (a deleted message's original event):
    replays over them read the log, which holds the rewritten data. A failure is logged, not raised:
    the entries then age out with the buffer (CHAT_BUFFER_MAX_AGE_S)."""
    buffer = get_buffer()
    try:
        await redis_call(functools.partial(buffer.forget, conversation_stream(conversation_id), seqs))
    except Exception:
        metrics.inc("buffer_errors")
        logger.warning("could not drop %d rewritten event(s) of %s from the hot buffer", len(seqs), conversation_id)
