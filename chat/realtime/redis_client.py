"""The process's Redis client for our own keys (hot buffer, presence), one per event loop.

A BlockingConnectionPool: under a burst (hundreds of concurrent publishes) callers wait for a
connection instead of failing with MaxConnectionsError, as redis-py's default pool does at its
limit (DESIGN "facts that bite"). 50 connections is far more than one process needs in flight.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings

MAX_CONNECTIONS = 50
# How long a caller waits for a free connection before giving up (then the log answers instead).
POOL_TIMEOUT_S = 5

_clients: dict[asyncio.AbstractEventLoop, Any] = {}


def redis_client(url: str | None = None) -> Any:
    import redis.asyncio as aioredis

    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        for closed in [lp for lp in _clients if lp.is_closed()]:
            del _clients[closed]
        pool = aioredis.BlockingConnectionPool.from_url(
            url or settings.REDIS_URL, max_connections=MAX_CONNECTIONS, timeout=POOL_TIMEOUT_S, decode_responses=True
        )
        client = _clients[loop] = aioredis.Redis(connection_pool=pool)
    return client
