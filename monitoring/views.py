"""Health and metrics endpoints. /healthz: the process answers. /readyz: it can reach the database
and the channel layer (load balancers stop routing to a process that cannot).

/readyz answers everyone with its status alone: "ready", "degraded" (it serves, but the channel layer
is unreachable or a circuit breaker is not closed) or "unavailable" (no database; 503). Staff (an
active staff session) also get why: each check, the list of degraded parts and every circuit breaker
(chat/infra/error_recovery.py), this process's merged with those the agent runners publish through
Redis. That detail (breaker thresholds and windows, last errors, the host:pid of every worker) tells
a load balancer nothing and an attacker something.

A breaker that is not closed makes the process degraded, not unready: with the model server down
(`llm` open) chat still works, and taking the process out of rotation would turn a degraded service
into no service. Readiness stays decided by the database check alone."""

from __future__ import annotations

import asyncio
import time

from channels.db import database_sync_to_async
from django.contrib.admin.views.decorators import staff_member_required
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse

from chat import publishing
from chat.infra.breakers import all_breakers
from monitoring.health import shared_breakers, shared_state_max_age_s, worse
from monitoring.metrics import metrics
from monitoring.selectors import event_counts

CHECK_TIMEOUT_S = 2.0


async def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _db_ok() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, dict[str, object]] = {}
    for name, check in (("database", lambda: database_sync_to_async(_db_ok)()), ("channel_layer", publishing.probe)):
        started = time.monotonic()
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await check()
            checks[name] = {"ok": True}
        except Exception as exc:
            checks[name] = {"ok": False, "error": type(exc).__name__}
        checks[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    # Only the database decides readiness: without Redis a process still serves (history, sends,
    # delivery through the log resync; docs/operations.md), and a balancer that dropped every
    # process during a Redis outage would turn a degradation into a full outage.
    ready = bool(checks["database"]["ok"])
    breakers = await _breakers()
    degraded = {name for name, snap in breakers.items() if snap["state"] != "closed"}
    if not checks["channel_layer"]["ok"]:
        degraded.add("redis")
    status = "unavailable" if not ready else "degraded" if degraded else "ready"
    body: dict[str, object] = {"status": status}
    if await _is_staff(request):
        body.update({"checks": checks, "degraded": sorted(degraded), "breakers": breakers})
    return JsonResponse(body, status=200 if ready else 503)


async def _is_staff(request: HttpRequest) -> bool:
    """An active staff user's session; anything else (no session, the database unreachable to read
    it within the checks' time) is anonymous: the details are only shown to someone known to be staff."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            user = await request.auser()
    except (TimeoutError, DatabaseError, OSError):
        return False
    return bool(user.is_active and user.is_staff)


async def _breakers() -> dict[str, dict[str, object]]:
    merged: dict[str, dict[str, object]] = {name: b.snapshot() for name, b in all_breakers().items()}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            shared = await shared_breakers(max_age_s=shared_state_max_age_s())
    except Exception:
        shared = {}  # Redis is down: the channel_layer check says so; report what this process knows
    for name, snap in shared.items():
        merged[name] = worse(merged.get(name), snap)
    return merged


@staff_member_required
def metrics_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "process": metrics.snapshot(),
            "breakers": {name: b.snapshot() for name, b in all_breakers().items()},
            "events_in_log": event_counts(),
        }
    )
