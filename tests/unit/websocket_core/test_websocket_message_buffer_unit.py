"""The hot buffer: FIFO, bounded by count and age, expiry, concurrent appends, independent
streams — the in-memory twin and the Redis buffer behave the same, tested with an injected clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.conf import settings

from chat.infra.message_buffer import MemoryBuffer, RedisBuffer, conversation_stream, user_stream


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def buffer_and_clock(request: Any) -> AsyncIterator[tuple[Any, Clock]]:
    clock = Clock()
    if request.param == "memory":
        yield MemoryBuffer(max_events=5, max_age_s=60, clock=clock), clock
        return
    prefix = f"buftest{uuid.uuid4().hex[:8]}"
    buffer = RedisBuffer(settings.REDIS_URL, max_events=5, max_age_s=60, prefix=prefix, clock=clock)
    yield buffer, clock
    redis = buffer._redis()
    keys = await redis.keys(f"{prefix}:*")
    if keys:
        await redis.delete(*keys)


def frames(*seqs: int) -> list[tuple[int, str]]:
    return [(s, f'{{"seq":{s}}}') for s in seqs]


async def test_reads_a_whole_range_in_seq_order(buffer_and_clock: Any) -> None:
    buffer, _ = buffer_and_clock
    stream = conversation_stream("c1")
    await buffer.append(stream, frames(1, 2))
    await buffer.append(stream, frames(4, 3))  # two publishers: appends arrive out of order
    assert await buffer.read(stream, 0, 4) == frames(1, 2, 3, 4)
    assert await buffer.read(stream, 2, 4) == frames(3, 4)
    assert await buffer.read(stream, 4, 4) == []


async def test_an_incomplete_range_is_a_miss_never_a_partial_answer(buffer_and_clock: Any) -> None:
    buffer, _ = buffer_and_clock
    stream = conversation_stream("c1")
    await buffer.append(stream, frames(1, 2, 4))
    assert await buffer.read(stream, 0, 4) is None
    assert await buffer.read(stream, 0, 2) == frames(1, 2)
    assert await buffer.read(stream, 0, 9) is None  # asks beyond what was buffered


async def test_count_bound_drops_the_oldest_first(buffer_and_clock: Any) -> None:
    buffer, _ = buffer_and_clock
    stream = conversation_stream("c1")
    await buffer.append(stream, frames(*range(1, 9)))
    assert await buffer.read(stream, 3, 8) == frames(4, 5, 6, 7, 8)
    assert await buffer.read(stream, 2, 8) is None  # seq 3 fell out


async def test_entries_older_than_the_age_limit_are_not_served(buffer_and_clock: Any) -> None:
    buffer, clock = buffer_and_clock
    stream = conversation_stream("c1")
    await buffer.append(stream, frames(1, 2))
    clock.now += 30
    await buffer.append(stream, frames(3))
    clock.now += 31  # 1 and 2 are now 61 s old, 3 is 31 s old
    assert await buffer.read(stream, 2, 3) == frames(3)
    assert await buffer.read(stream, 0, 3) is None


async def test_streams_are_independent(buffer_and_clock: Any) -> None:
    buffer, _ = buffer_and_clock
    await buffer.append(conversation_stream("a"), frames(1, 2))
    await buffer.append(user_stream(7), frames(1))
    assert await buffer.read(conversation_stream("a"), 0, 2) == frames(1, 2)
    assert await buffer.read(conversation_stream("b"), 0, 1) is None
    assert await buffer.read(user_stream(7), 0, 1) == frames(1)
    assert await buffer.read(user_stream(8), 0, 1) is None


async def test_concurrent_appends_lose_nothing(buffer_and_clock: Any) -> None:
    buffer, _ = buffer_and_clock
    buffer.max_events = 1000
    stream = conversation_stream("busy")
    await asyncio.gather(*(buffer.append(stream, frames(s)) for s in range(200, 0, -1)))
    assert await buffer.read(stream, 0, 200) == frames(*range(1, 201))


async def test_memory_buffer_forgets_expired_streams() -> None:
    clock = Clock()
    buffer = MemoryBuffer(max_events=5, max_age_s=60, clock=clock)
    await buffer.append(conversation_stream("old"), frames(1))
    clock.now += 61
    await buffer.append(conversation_stream("new"), frames(1))
    assert await buffer.read(conversation_stream("old"), 0, 1) is None
    assert buffer.streams() == 1


async def test_per_stream_bounds_override_the_buffers_for_a_users_tier(buffer_and_clock: Any) -> None:
    """A user's notification buffer follows their tier: fewer events and a shorter age than the
    buffer's defaults (5 events, 60 s here) when the tier says so."""
    buffer, clock = buffer_and_clock
    await buffer.append("u:1", frames(1, 2, 3, 4), max_events=2, max_age_s=10)
    assert await buffer.read("u:1", 2, 4, max_age_s=10) == frames(3, 4)
    assert await buffer.read("u:1", 0, 4, max_age_s=10) is None  # 1 and 2 were trimmed by the tier's count
    clock.now += 11
    assert await buffer.read("u:1", 2, 4, max_age_s=10) is None  # older than the tier keeps (default: 60 s)
