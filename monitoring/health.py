"""Readiness: the breakers of every live process, shared through Redis.

Runs execute in the agent worker process, so the "llm" breaker that matters lives there, while
/readyz is answered by the web processes. Each process with breakers publishes their snapshots
into one Redis hash (field: the process, value: JSON with a wall-clock stamp); /readyz merges the
live ones with its own. Entries of processes that stopped publishing expire by age.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.conf import settings

from chat.infra.breakers import CLOSED, HALF_OPEN, OPEN, all_breakers
from chat.infra.redis_client import redis_client

_STATE_ORDER = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


def shared_state_max_age_s() -> float:
    """How old a process's published breakers may be before they are ignored: three missed agent
    heartbeats (runners publish with their heartbeat; older means gone or cut off from Redis)."""
    return 3 * float(getattr(settings, "AGENT_HEARTBEAT_S", 5.0)) + 1


def shared_state_key() -> str:
    """The Redis hash where processes publish their breakers (one per deployment prefix)."""
    return f"{getattr(settings, 'CHANNEL_PREFIX', 'chat')}:breakers"


async def publish_breakers(source: str, *, max_age_s: float) -> None:
    """Publish this process's breakers under `source`, and drop entries older than `max_age_s`.
    No-op without Redis. Raises on Redis errors (the caller's loop logs and carries on)."""
    if not getattr(settings, "REDIS_URL", ""):
        return
    now = time.time()
    snapshot = {name: b.snapshot() for name, b in all_breakers().items()}
    client = redis_client()
    key = shared_state_key()
    await client.hset(key, source, json.dumps({"at": now, "breakers": snapshot}))
    stale = [field for field, raw in (await client.hgetall(key)).items() if _age(raw, now) > max_age_s]
    if stale:
        await client.hdel(key, *stale)


async def withdraw_breakers(source: str) -> None:
    """Remove `source`'s published breakers (the process is stopping). No-op without Redis."""
    if not getattr(settings, "REDIS_URL", ""):
        return
    await redis_client().hdel(shared_state_key(), source)


async def shared_breakers(*, max_age_s: float) -> dict[str, dict[str, Any]]:
    """Every breaker published by a live process, merged by name: the worst state wins (one
    worker with the model unreachable makes the model degraded). Without Redis: {}."""
    if not getattr(settings, "REDIS_URL", ""):
        return {}
    now = time.time()
    merged: dict[str, dict[str, Any]] = {}
    for source, raw in (await redis_client().hgetall(shared_state_key())).items():
        if _age(raw, now) > max_age_s:
            continue
        for name, snap in json.loads(raw).get("breakers", {}).items():
            merged[name] = worse(merged.get(name), {**snap, "source": source})
    return merged


def worse(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Of two snapshots of a breaker, the one further from closed (b on a tie)."""
    if a is None:
        return b
    return a if _STATE_ORDER.get(a.get("state", CLOSED), 0) > _STATE_ORDER.get(b.get("state", CLOSED), 0) else b


def _age(raw: str, now: float) -> float:
    try:
        return now - float(json.loads(raw)["at"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # unreadable: treat as long gone
