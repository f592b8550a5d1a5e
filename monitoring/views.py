"""Health and metrics endpoints. /healthz: the process answers. /readyz: it can reach the database
and the channel layer (load balancers stop routing to a process that cannot)."""

from __future__ import annotations

import asyncio
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.admin.views.decorators import staff_member_required
from django.db import connection
from django.http import HttpRequest, JsonResponse

from monitoring.metrics import metrics
from monitoring.selectors import event_counts

CHECK_TIMEOUT_S = 2.0


async def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _db_ok() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _layer_ok() -> None:
    # A publish to a group exercises the layer's connection and leaves no state behind (a probe
    # channel would stay subscribed, or break once a timed-out receive unsubscribed it).
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    await layer.group_send("readyz", {"type": "readyz.ping"})


async def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, dict[str, object]] = {}
    for name, check in (("database", lambda: database_sync_to_async(_db_ok)()), ("channel_layer", _layer_ok)):
        started = time.monotonic()
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await check()
            checks[name] = {"ok": True}
        except Exception as exc:
            checks[name] = {"ok": False, "error": type(exc).__name__}
        checks[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    ready = all(c["ok"] for c in checks.values())
    return JsonResponse({"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


@staff_member_required
def metrics_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"process": metrics.snapshot(), "events_in_log": event_counts()})
