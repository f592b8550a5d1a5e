"""Health and metrics endpoints. /livez (and its older name /healthz): the process answers, nothing
else is asked. /readyz: it can reach the database and the channel layer (load balancers stop routing
to a process that cannot). /metrics: Prometheus text (monitoring/metrics), for a staff session or a
scraper holding METRICS_TOKEN. /staff/dashboard/: charts of the same numbers, for staff.

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
import hmac
import time
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render as render_page

from chat import publishing
from chat.infra.breakers import all_breakers
from monitoring import slo
from monitoring.alerts import open_alerts
from monitoring.health import shared_breakers, shared_state_max_age_s, worse
from monitoring.metrics.exposition import render, summary
from monitoring.selectors import runs_with_problems

CHECK_TIMEOUT_S = 2.0
# The dashboard's poll: often enough to look live, rare enough that an open tab costs nothing.
DASHBOARD_POLL_MS = 2000
# Rows per dashboard table (the admin lists them all).
DASHBOARD_ROWS = 50


async def livez(request: HttpRequest) -> JsonResponse:
    """Liveness: this process's event loop answers. No dependency is asked, so a database or Redis
    outage never makes an orchestrator restart healthy processes (/readyz is for routing)."""
    return JsonResponse({"status": "ok"})


healthz = livez  # the older name, kept for probes configured with it


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
    user = await _session_user(request)
    return bool(user is not None and user.is_active and user.is_staff)


async def _session_user(request: HttpRequest) -> Any:
    """The session's user (maybe AnonymousUser), or None when it cannot be read in time."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            return await request.auser()
    except (TimeoutError, DatabaseError, OSError):
        return None


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


def scraper_token_ok(request: HttpRequest) -> bool:
    """`Authorization: Bearer <METRICS_TOKEN>`, compared in constant time. No token configured: never."""
    expected = str(getattr(settings, "METRICS_TOKEN", "") or "")
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.strip().encode(), expected.encode())


async def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text of every process of this deployment. A scraper's token or an active staff
    session; anyone else gets 401 (no credentials, or not ones we accept) or 403 (a non-staff
    session), as JSON, and nothing about the metrics."""
    if not scraper_token_ok(request) and not await _is_staff(request):
        user = await _session_user(request)  # cached on the request by the first read
        if user is not None and user.is_authenticated:
            return JsonResponse({"error": "forbidden", "detail": "staff only"}, status=403)
        return JsonResponse(
            {"error": "unauthorized", "detail": "a staff session or the metrics bearer token is required"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    # Off the event loop: a scrape reads every process's file of the multiprocess directory.
    body, content_type = await asyncio.to_thread(render)
    return HttpResponse(body, content_type=content_type)


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The staff operations dashboard: a page whose script polls `dashboard_data` (no inline script
    or style: the Content-Security-Policy allows neither)."""
    return render_page(
        request, "monitoring/dashboard.html", {"poll_ms": DASHBOARD_POLL_MS, "poll_s": DASHBOARD_POLL_MS / 1000}
    )


async def dashboard_data(request: HttpRequest) -> JsonResponse:
    """The dashboard's numbers: the metric families from the registry /metrics reads (so both show
    the same), the open alerts, the SLO burn rates and the runs the event monitor found incomplete.
    Staff sessions only (a scraper's token is for /metrics)."""
    if not await _is_staff(request):
        return JsonResponse({"error": "forbidden", "detail": "staff only"}, status=403)
    families = await asyncio.to_thread(summary)
    panels = await database_sync_to_async(_panels)()
    return JsonResponse({"at": time.time(), "families": families, **panels})


def _panels() -> dict[str, Any]:
    alerts = [
        {
            "id": a.id,
            "kind": a.kind,
            "severity": a.severity,
            "subject": a.subject,
            "message": a.message,
            "count": a.count,
            "first_seen": a.first_seen,
            "last_seen": a.last_seen,
        }
        for a in open_alerts(DASHBOARD_ROWS)
    ]
    return {"alerts": alerts, "slo": slo.burn_rates(), "runs_with_problems": runs_with_problems(DASHBOARD_ROWS)}
