"""Ephemeral conversation events: typing, read, presence (docs/protocol.md §5). Never stored, never
replayed, per user rather than per tab.

Presence needs state shared by every server process: in Redis a sorted set per conversation of
"<user>:<session>" scored by expiry (refreshed by each socket's heartbeat, so a killed process's
sockets age out), in embedded mode the same structure in memory.

When Redis is down (or hung, or its circuit is open) every call here fails within a second, or at
once: typing, read and presence announcements are still handed to this process's own sockets and
otherwise dropped (ephemeral by definition; the command succeeds), while the `presence` query, which
cannot answer without Redis, raises and the client is told `unavailable`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.conf import settings

from chat import publishing, selectors
from chat.infra.doorbells import EphemeralDoorbell
from chat.infra.per_loop import PerLoop
from chat.infra.redis_client import redis_call, redis_client
from chat.realtime.broadcast_manager import get_hub
from chat.realtime.protocol import encode
from chat.wire.frames import rfc3339
from monitoring.metrics import metrics

if TYPE_CHECKING:
    from chat.realtime.session import Session

# A socket's presence entry lives this long without a refresh; sockets refresh every third of it.
PRESENCE_TTL_S = 90.0
# Presence changes in a conversation are announced together at most this often (see PresenceBatcher).
PRESENCE_BATCH_S = 1.0

logger = logging.getLogger(__name__)


async def broadcast(consumer: Session, conversation_id: str, kind: str, data: dict[str, Any]) -> None:
    frame = encode({"type": kind, "conversation": conversation_id, "data": data})
    # Not echoed to the socket that caused it.
    await _send_ephemeral(conversation_id, frame, exclude_session=consumer.session_id)


async def _send_ephemeral(conversation_id: str, frame: str, *, exclude_session: str | None) -> None:
    """To every process's sockets through the channel layer; if the layer cannot take it now, to
    this process's sockets only. Never raises for a Redis failure: a lost typing or presence frame
    is corrected by the next one, and an error would only make clients resend it."""
    message: EphemeralDoorbell = {
        "type": "conv.ephemeral",
        "conversation": conversation_id,
        "frame": frame,
        "exclude_session": exclude_session,
    }
    if not await publishing.announce(message):
        metrics.inc("ephemeral_local_only")
        get_hub().deliver_locally(message)


class _MemoryPresence:
    def __init__(self) -> None:
        self.entries: dict[str, dict[str, float]] = {}
        self.seen: dict[str, dict[str, float]] = {}

    async def add(self, conv: str, user_id: int, session: str, now: float) -> int:
        entries = self.entries.setdefault(conv, {})
        entries[f"{user_id}:{session}"] = now + PRESENCE_TTL_S
        return self._count(conv, user_id, now)

    async def remove(self, conv: str, user_id: int, session: str, now: float) -> int:
        self.entries.get(conv, {}).pop(f"{user_id}:{session}", None)
        self.seen.setdefault(conv, {})[str(user_id)] = now
        return self._count(conv, user_id, now)

    def _count(self, conv: str, user_id: int, now: float) -> int:
        prefix = f"{user_id}:"
        return sum(1 for k, exp in self.entries.get(conv, {}).items() if k.startswith(prefix) and exp > now)

    async def online(self, conv: str, now: float) -> tuple[set[int], dict[str, float]]:
        users = {int(k.split(":", 1)[0]) for k, exp in self.entries.get(conv, {}).items() if exp > now}
        return users, dict(self.seen.get(conv, {}))


class _RedisPresence:
    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    def _r(self) -> Any:
        return redis_client(self.url)

    async def add(self, conv: str, user_id: int, session: str, now: float) -> int:
        r = self._r()
        key = f"{self.prefix}:presence:{conv}"
        pipe = r.pipeline()
        pipe.zadd(key, {f"{user_id}:{session}": now + PRESENCE_TTL_S})
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.expire(key, int(PRESENCE_TTL_S * 2))
        pipe.zrange(key, 0, -1)
        *_, members = await pipe.execute()
        return sum(1 for m in members if m.startswith(f"{user_id}:"))

    async def remove(self, conv: str, user_id: int, session: str, now: float) -> int:
        r = self._r()
        pipe = r.pipeline()
        pipe.zrem(f"{self.prefix}:presence:{conv}", f"{user_id}:{session}")
        pipe.hset(f"{self.prefix}:presence_seen:{conv}", str(user_id), now)
        pipe.expire(f"{self.prefix}:presence_seen:{conv}", 7 * 24 * 3600)
        pipe.zrangebyscore(f"{self.prefix}:presence:{conv}", now, "+inf")
        *_, members = await pipe.execute()
        return sum(1 for m in members if m.startswith(f"{user_id}:"))

    async def online(self, conv: str, now: float) -> tuple[set[int], dict[str, float]]:
        r = self._r()
        members = await r.zrangebyscore(f"{self.prefix}:presence:{conv}", now, "+inf")
        seen = await r.hgetall(f"{self.prefix}:presence_seen:{conv}")
        return {int(m.split(":", 1)[0]) for m in members}, {k: float(v) for k, v in seen.items()}


_store: _MemoryPresence | _RedisPresence | None = None


def store() -> _MemoryPresence | _RedisPresence:
    global _store
    if _store is None:
        _store = (
            _RedisPresence(settings.REDIS_URL, settings.CHANNEL_PREFIX) if settings.REDIS_URL else _MemoryPresence()
        )
    return _store


class PresenceBatcher:
    """Collects presence changes per conversation and announces them once per window.

    One frame per change would be quadratic in a big room: 1,000 members reconnecting after a
    network blip would send ~500,000 presence frames. The presence frame carries lists, so
    changes within PRESENCE_BATCH_S go out together (last change per user wins)."""

    def __init__(self) -> None:
        self.changes: dict[str, dict[int, tuple[str, dict[str, Any]]]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def add(self, conversation_id: str, user: dict[str, Any], change: str) -> None:
        self.changes.setdefault(conversation_id, {})[int(user["id"])] = (change, user)
        if conversation_id not in self.tasks:
            self.tasks[conversation_id] = asyncio.create_task(self._flush_later(conversation_id))

    async def _flush_later(self, conversation_id: str) -> None:
        try:
            await asyncio.sleep(PRESENCE_BATCH_S)
        finally:
            self.tasks.pop(conversation_id, None)
            changes = self.changes.pop(conversation_id, {})
        joined = [user for change, user in changes.values() if change == "joined"]
        left = [user for change, user in changes.values() if change == "left"]
        frame = encode({"type": "presence", "conversation": conversation_id, "data": {"joined": joined, "left": left}})
        await _send_ephemeral(conversation_id, frame, exclude_session=None)


_batchers: PerLoop[PresenceBatcher] = PerLoop(lambda: PresenceBatcher())


def batcher() -> PresenceBatcher:
    return _batchers.get()


async def presence_join(consumer: Session, conversation_id: str) -> None:
    """Best effort: a subscription stands without its presence entry (never raises)."""
    add = functools.partial(store().add, conversation_id, consumer.identity.user_id, consumer.session_id, time.time())
    try:
        count = await redis_call(add)
    except Exception:
        logger.warning("presence join failed for %s", conversation_id, exc_info=True)
        return
    if count == 1:
        batcher().add(conversation_id, consumer.user_public(), "joined")


async def presence_refresh(consumer: Session) -> None:
    for conversation_id in list(consumer.subscriptions):
        add = functools.partial(
            store().add, conversation_id, consumer.identity.user_id, consumer.session_id, time.time()
        )
        await redis_call(add)


async def presence_leave(consumer: Session, conversation_id: str) -> None:
    remove = functools.partial(
        store().remove, conversation_id, consumer.identity.user_id, consumer.session_id, time.time()
    )
    count = await redis_call(remove)
    if count == 0:
        batcher().add(conversation_id, consumer.user_public(), "left")


async def members(conversation_id: str) -> list[dict[str, Any]]:
    online, seen = await redis_call(functools.partial(store().online, conversation_id, time.time()))
    rows = await database_sync_to_async(selectors.member_names)(conversation_id=conversation_id)
    out = []
    for user_id, username, last_read_seq in rows:
        last = seen.get(str(user_id))
        out.append(
            {
                "user": {"id": user_id, "username": username},
                "online": user_id in online,
                "last_seen": None if user_id in online or last is None else rfc3339(datetime.fromtimestamp(last, UTC)),
                "last_read_seq": last_read_seq,
            }
        )
    return out


async def watchers(conversation_id: str, me: dict[str, Any]) -> list[dict[str, Any]]:
    """Co-viewing: the members with a socket subscribed to the conversation now (its presence),
    by username, `me` always among them. Who watches a live run is exactly who is present while it
    runs; `presence` events keep a client's list current. Best effort: without Redis, just `me`."""
    try:
        online, _ = await redis_call(functools.partial(store().online, conversation_id, time.time()))
        rows = await database_sync_to_async(selectors.member_names)(conversation_id=conversation_id)
    except Exception:
        logger.warning("watchers of %s unknown", conversation_id, exc_info=True)
        return [me]
    found = [{"id": user_id, "username": username} for user_id, username, _ in rows if user_id in online]
    return found if any(user["id"] == me["id"] for user in found) else sorted([*found, me], key=lambda u: u["username"])
