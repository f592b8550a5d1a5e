"""Ephemeral conversation events: typing, read, presence (PROTOCOL §5). Never stored, never
replayed, per user rather than per tab (DESIGN lesson 6).

Presence needs state shared by every server process: in Redis a sorted set per conversation of
"<user>:<session>" scored by expiry (refreshed by each socket's heartbeat, so a killed process's
sockets age out), in embedded mode the same structure in memory.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from chat.realtime.bus import conversation_group
from chat.realtime.protocol import encode
from chat.realtime.redis_client import redis_client

if TYPE_CHECKING:
    from chat.consumers import ChatConsumer

# A socket's presence entry lives this long without a refresh; sockets refresh every third of it.
PRESENCE_TTL_S = 90.0


async def broadcast(
    consumer: ChatConsumer, conversation_id: str, kind: str, data: dict[str, Any], *, include_self: bool = False
) -> None:
    frame = encode({"type": kind, "conversation": conversation_id, "data": data})
    layer = get_channel_layer()
    message = {
        "type": "conv.ephemeral",
        "c": conversation_id,
        "f": frame,
        "x": None if include_self else consumer.session_id,
    }
    await layer.group_send(conversation_group(conversation_id), message)


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


async def presence_join(consumer: ChatConsumer, conversation_id: str) -> None:
    count = await store().add(conversation_id, consumer.identity.user_id, consumer.session_id, time.time())
    if count == 1:
        await broadcast(
            consumer, conversation_id, "presence", {"joined": [consumer.user_public()], "left": []}, include_self=False
        )


async def presence_refresh(consumer: ChatConsumer) -> None:
    for conversation_id in list(consumer.subscriptions):
        await store().add(conversation_id, consumer.identity.user_id, consumer.session_id, time.time())


async def presence_leave(consumer: ChatConsumer, conversation_id: str) -> None:
    count = await store().remove(conversation_id, consumer.identity.user_id, consumer.session_id, time.time())
    if count == 0:
        await broadcast(
            consumer, conversation_id, "presence", {"joined": [], "left": [consumer.user_public()]}, include_self=False
        )


async def members(conversation_id: str) -> list[dict[str, Any]]:
    from chat.services.events import rfc3339

    online, seen = await store().online(conversation_id, time.time())
    rows = await database_sync_to_async(_member_rows)(conversation_id)
    from datetime import UTC, datetime

    out = []
    for user_id, username in rows:
        last = seen.get(str(user_id))
        out.append(
            {
                "user": {"id": user_id, "username": username},
                "online": user_id in online,
                "last_seen": None if user_id in online or last is None else rfc3339(datetime.fromtimestamp(last, UTC)),
            }
        )
    return out


def _member_rows(conversation_id: str) -> list[tuple[int, str]]:
    from chat.models import ConversationMember

    return list(
        ConversationMember.objects.filter(conversation_id=conversation_id)
        .values_list("user_id", "user__username")
        .order_by("user__username")
    )
