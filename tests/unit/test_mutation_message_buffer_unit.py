"""The buffer's edges that the behaviour tests leave open: heads, the epoch, exact expiry bounds,
the key's time to live, trimming by rank, frames that contain the separator, duplicates written by
two publishers, the settings-chosen buffer and the read wrapper that turns any failure into a miss."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.conf import settings

from chat.infra import message_buffer
from chat.infra.message_buffer import MemoryBuffer, RedisBuffer, buffered_or_none, get_buffer
from chat.infra.redis_client import redis_client
from monitoring.metrics import metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def frames(*seqs: int) -> list[tuple[int, str]]:
    return [(s, f'{{"seq":{s}}}') for s in seqs]


@pytest.fixture
async def redis_buffer() -> AsyncIterator[tuple[RedisBuffer, Clock]]:
    clock = Clock()
    prefix = f"bufmut{uuid.uuid4().hex[:8]}"
    buffer = RedisBuffer(settings.REDIS_URL, max_events=5, max_age_s=60, prefix=prefix, clock=clock)
    yield buffer, clock
    redis = buffer._redis()
    keys = await redis.keys(f"{prefix}:*")
    if keys:
        await redis.delete(*keys)


@pytest.fixture
def reset_buffer() -> Any:
    saved = message_buffer._buffer
    message_buffer._buffer = None
    yield
    message_buffer._buffer = saved


async def test_memory_heads_are_the_highest_seq_or_zero() -> None:
    buffer = MemoryBuffer(max_events=5, max_age_s=60, clock=Clock())
    await buffer.append("a", frames(3, 1, 2))
    assert await buffer.heads(["a", "missing"]) == [3, 0]
    assert await buffer.epoch() == "memory"


async def test_memory_out_of_order_append_is_sorted_before_trimming() -> None:
    """The oldest *seq* goes first when the count bound trims, whatever the arrival order."""
    buffer = MemoryBuffer(max_events=2, max_age_s=60, clock=Clock())
    await buffer.append("a", frames(2))
    await buffer.append("a", frames(3, 1))
    assert await buffer.read("a", 1, 3) == frames(2, 3)
    assert list(buffer._streams["a"]) == [2, 3]


async def test_memory_second_element_out_of_order_is_sorted() -> None:
    buffer = MemoryBuffer(max_events=5, max_age_s=60, clock=Clock())
    await buffer.append("a", frames(5, 6, 1))
    assert list(buffer._streams["a"]) == [1, 5, 6]


async def test_memory_append_applies_the_per_stream_age() -> None:
    """A stream appended with a short age drops its stale entries at once, not at the next read."""
    clock = Clock()
    buffer = MemoryBuffer(max_events=5, max_age_s=60, clock=clock)
    await buffer.append("u:1", frames(1), max_age_s=10)
    clock.now += 11
    await buffer.append("u:1", frames(2), max_age_s=10)
    assert list(buffer._streams["u:1"]) == [2]
    await buffer.append("other", frames(1))
    clock.now += 11
    await buffer.append("x", frames(1), max_age_s=10)  # expiry on append concerns only its own stream
    assert "other" in buffer._streams


async def test_memory_an_entry_exactly_at_the_age_limit_is_still_served() -> None:
    clock = Clock()
    buffer = MemoryBuffer(max_events=5, max_age_s=60, clock=clock)
    await buffer.append("a", frames(1))
    clock.now += 60
    assert await buffer.read("a", 0, 1) == frames(1)


async def test_memory_read_ignores_entries_past_the_range() -> None:
    buffer = MemoryBuffer(max_events=5, max_age_s=60, clock=Clock())
    await buffer.append("a", frames(1, 2, 3))
    assert await buffer.read("a", 0, 2) == frames(1, 2)


async def test_redis_heads_and_epoch(redis_buffer: Any) -> None:
    buffer, _ = redis_buffer
    assert await buffer.heads([]) == []
    await buffer.append("a", frames(4, 2))
    await buffer.append("b", [])  # nothing to append writes nothing
    assert await buffer.heads(["a", "b"]) == [4, 0]
    first = await buffer.epoch()
    assert len(first) == 32
    assert await buffer.epoch() == first  # set once, then only read
    redis = buffer._redis()
    assert await redis.get(f"{buffer.prefix}:buf-epoch") == first
    await redis.delete(f"{buffer.prefix}:buf-epoch")  # a flushed Redis: a new epoch
    assert await buffer.epoch() != first


async def test_redis_key_lives_just_longer_than_the_age_limit(redis_buffer: Any) -> None:
    buffer, _ = redis_buffer
    await buffer.append("a", frames(1))
    assert await buffer._redis().ttl(buffer.key("a")) == 61
    await buffer.append("u:1", frames(1), max_age_s=10)
    assert await buffer._redis().ttl(buffer.key("u:1")) == 11


async def test_redis_trims_to_exactly_the_newest_max_events(redis_buffer: Any) -> None:
    buffer, _ = redis_buffer
    await buffer.append("a", frames(1, 2, 3, 4, 5))
    assert await buffer._redis().zcard(buffer.key("a")) == 5
    await buffer.append("a", frames(6))
    assert await buffer._redis().zcard(buffer.key("a")) == 5
    assert await buffer.read("a", 1, 6) == frames(2, 3, 4, 5, 6)


async def test_redis_frames_may_contain_the_separator(redis_buffer: Any) -> None:
    buffer, _ = redis_buffer
    await buffer.append("a", [(1, "x|y|z")])
    assert await buffer.read("a", 0, 1) == [(1, "x|y|z")]


async def test_redis_an_entry_exactly_at_the_age_limit_is_still_served(redis_buffer: Any) -> None:
    buffer, clock = redis_buffer
    await buffer.append("a", frames(1))
    clock.now += 60
    assert await buffer.read("a", 0, 1) == frames(1)


async def test_redis_a_seq_written_twice_is_served_once(redis_buffer: Any) -> None:
    buffer, clock = redis_buffer
    await buffer.append("a", frames(1, 2))
    clock.now += 1
    await buffer.append("a", frames(2, 3))  # a second publisher repeats 2 with a newer stamp
    assert await buffer.read("a", 0, 3) == frames(1, 2, 3)


async def test_redis_uses_its_own_url(redis_buffer: Any) -> None:
    buffer, _ = redis_buffer
    assert buffer.url == settings.REDIS_URL
    assert buffer._redis() is redis_client(settings.REDIS_URL)


def test_get_buffer_follows_settings(reset_buffer: Any, settings: Any) -> None:
    settings.CHAT_BUFFER_MAX_EVENTS = 7
    settings.CHAT_BUFFER_MAX_AGE_S = 42
    buffer = get_buffer()
    assert isinstance(buffer, RedisBuffer)
    assert (buffer.url, buffer.max_events, buffer.max_age_s) == (settings.REDIS_URL, 7, 42)
    assert buffer.prefix == settings.CHANNEL_PREFIX
    assert get_buffer() is buffer  # one per process
    message_buffer._buffer = None
    settings.REDIS_URL = ""
    memory = get_buffer()
    assert isinstance(memory, MemoryBuffer)
    assert (memory.max_events, memory.max_age_s) == (7, 42)


async def test_buffered_or_none_reads_counts_and_swallows_failures(reset_buffer: Any) -> None:
    clock = Clock()
    memory = MemoryBuffer(max_events=5, max_age_s=60, clock=clock)
    message_buffer._buffer = memory
    await memory.append("u:1", frames(1, 2))
    hits, misses = metrics.counter("buffer_reads", outcome="hit"), metrics.counter("buffer_reads", outcome="miss")
    assert await buffered_or_none("u:1", 0, 2) == frames(1, 2)
    assert await buffered_or_none("u:1", 0, 3) is None
    assert metrics.counter("buffer_reads", outcome="hit") == hits + 1
    assert metrics.counter("buffer_reads", outcome="miss") == misses + 1
    clock.now += 20
    assert await buffered_or_none("u:1", 0, 2, max_age_s=10) is None  # the age is passed through

    class Broken:
        async def read(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("down")

    message_buffer._buffer = Broken()  # type: ignore[assignment]
    errors = metrics.counter("buffer_errors")
    assert await buffered_or_none("u:1", 0, 2) is None
    assert metrics.counter("buffer_errors") == errors + 1
