"""/readyz says how the process is to anyone, and why only to staff (docs/operations.md "Health
endpoints"): the breaker configuration and the host:pid of every worker that publishes its breakers
are of no use to a load balancer and of some use to an attacker."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from chat.infra.breakers import CircuitBreaker, _registry, _registry_lock, reset_breakers
from chat.models import User
from monitoring.health import publish_breakers, withdraw_breakers

pytestmark = [pytest.mark.django_db(transaction=True)]


async def _published_open_llm_breaker(source: str) -> None:
    """Another process (an agent worker) publishing an open "llm" breaker, as the runners do."""
    remote = CircuitBreaker("llm", failure_threshold=1, reset_timeout_s=30.0)
    remote.record_failure(ConnectionRefusedError())
    with _registry_lock:
        _registry["llm"] = remote
    try:
        await publish_breakers(source, max_age_s=60.0)
    finally:
        reset_breakers()


async def _client(make_user: Any, **flags: Any) -> AsyncClient:
    client = AsyncClient()
    if flags:
        await client.aforce_login(await database_sync_to_async(make_user)(**flags))
    return client


async def test_anonymous_callers_get_the_status_and_nothing_else(make_user: Any) -> None:
    reset_breakers()
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_a_degraded_process_says_so_without_saying_why_or_where(make_user: Any) -> None:
    source = f"{socket.gethostname()}:{time.monotonic_ns()}"
    await _published_open_llm_breaker(source)
    try:
        for client in (await _client(make_user), await _client(make_user, is_staff=False)):
            response = await client.get("/readyz")
            assert response.status_code == 200  # degraded still serves chat: stays in rotation
            assert response.json() == {"status": "degraded"}
            assert source not in response.content.decode()
        staff = await (await _client(make_user, is_staff=True)).get("/readyz")
        assert staff.status_code == 200
        body = staff.json()
        assert body["status"] == "degraded"
        assert body["degraded"] == ["llm"]
        assert body["breakers"]["llm"]["state"] == "open"
        assert body["breakers"]["llm"]["source"] == source
        assert body["checks"]["database"]["ok"] is True
    finally:
        await withdraw_breakers(source)


async def test_a_deactivated_staff_session_is_anonymous(make_user: Any) -> None:
    client = AsyncClient()
    staff = await database_sync_to_async(make_user)(is_staff=True)
    await client.aforce_login(staff)
    await User.objects.filter(pk=staff.pk).aupdate(is_active=False)
    response = await client.get("/readyz")
    assert json.loads(response.content) == {"status": "ready"}
