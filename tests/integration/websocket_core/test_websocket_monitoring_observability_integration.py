"""Health, readiness and metrics endpoints against the real database and channel layer, and alerts
end to end: real agent runs over the socket judged by the monitoring sweep."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient
from django.utils import timezone

from agents.models import AgentRun
from agents.runner import get_supervisor
from agents.services import run_claim_next
from chat.models import Event
from monitoring.config import option
from monitoring.event_monitor import sweep
from monitoring.models import Alert, RunEventRecord
from tests.support import factories
from tests.support.ws import Client

pytestmark = [pytest.mark.django_db(transaction=True)]


def staff_client(make_user: Any) -> HttpClient:
    """/readyz shows its checks to staff only (the test of that is test_health_endpoints_integration)."""
    client = HttpClient()
    client.force_login(make_user(is_staff=True))
    return client


def test_healthz_and_readyz_report_real_dependencies(make_user: Any) -> None:
    client = staff_client(make_user)
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["channel_layer"]["ok"] is True


def test_readyz_stays_ready_but_degraded_when_the_channel_layer_is_unreachable(settings: Any, make_user: Any) -> None:
    """Without Redis a process still serves from PostgreSQL (docs/operations.md): it must not be
    taken out of the balancer, but it says it is degraded."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    channel_layers.backends.clear()
    try:
        response = staff_client(make_user).get("/readyz")
        assert response.status_code == 200
        assert response.json()["status"] == "degraded"
        assert response.json()["checks"]["channel_layer"]["ok"] is False
        assert response.json()["checks"]["database"]["ok"] is True
        assert "redis" in response.json()["degraded"]
    finally:
        channel_layers.backends.clear()


def test_metrics_are_staff_only_and_count_events(make_user: Any) -> None:
    from chat.services.conversations import conversation_create
    from chat.services.messages import message_send

    staff = make_user(is_staff=True)
    user = make_user()
    conv = conversation_create(creator=user, title="t", agent="").conversation
    message_send(
        conversation_id=str(conv.id),
        author_id=user.id,
        username=user.username,
        client_msg_id="1",
        text="hi",
        can_write=True,
    )
    client = HttpClient()
    client.force_login(user)
    assert client.get("/metrics").status_code == 302  # not staff: sent to the admin login
    client.force_login(staff)
    body = client.get("/metrics").json()
    assert body["events_in_log"]["message"] >= 1
    assert body["process"]["counters"]["events_appended"]["type=message"] >= 1


# --- alerts end to end: real runs of the offline agent over the socket, then the monitoring sweep ---

TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")


async def run_over_socket(user: Any, text: str) -> tuple[Client, str, str]:
    """Send `text` to a fresh agent conversation over the socket; returns (client, conversation, run id)."""
    conv = await factories.conversation(user)
    client, accepted, _ = await Client.connect(user)
    assert accepted
    assert (await client.recv())["type"] == "welcome"
    assert (await client.command("subscribe", conversation=conv))["ok"] is True
    sent = await client.command("send", conversation=conv, client_msg_id="m1", text=text)
    return client, conv, sent["run_id"]


async def alerts_now() -> list[tuple[str, str, int]]:
    return await database_sync_to_async(
        lambda: sorted(Alert.objects.filter(resolved_at=None).values_list("kind", "subject", "count"))
    )()


async def test_real_runs_with_and_without_tools_are_complete_and_raise_no_alert(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    for text in ("hello there", "what is 17 * 23?"):  # no tool, then the calculator
        client, conv, run_id = await run_over_socket(user, text)
        await client.seen_or_until(lambda f: f.get("type") in TERMINAL)
        kinds = {e["type"] for e in client.events(conv)}
        assert ("tool_executing" in kinds) is ("17" in text)
        await client.close()
        report = await database_sync_to_async(sweep)()
        assert report.raised == []
        record = await database_sync_to_async(RunEventRecord.objects.get)(run_id=run_id)
        assert record.complete
        assert record.missing_critical == []
        assert record.problems == []
    assert await alerts_now() == []


async def test_a_real_run_with_a_deleted_event_raises_exactly_one_alert(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    client, _, run_id = await run_over_socket(user, "hello there")
    await client.seen_or_until(lambda f: f.get("type") in TERMINAL)
    await client.close()
    deleted, _ = await database_sync_to_async(Event.objects.filter(run_id=run_id, type="agent_thinking").delete)()
    assert deleted == 1
    for _ in range(2):  # a second sweep finds nothing new
        await database_sync_to_async(sweep)()
    assert await alerts_now() == [("missing_event", run_id, 1)]


async def test_a_stuck_real_run_raises_exactly_one_alert(make_user: Any, settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"  # no runner here: the run is claimed by a worker that then hangs
    user = await database_sync_to_async(make_user)()
    client, conv, run_id = await run_over_socket(user, "hello there")
    claimed = await database_sync_to_async(run_claim_next)(worker_id="hung-worker")
    assert claimed is not None
    assert claimed.run_id == run_id
    await client.seen_or_until(lambda f: f.get("type") == "agent_started")
    await client.close()
    stuck_after = timedelta(seconds=float(option("stuck_after_s")) + 1)
    assert (await database_sync_to_async(sweep)()).raised == []  # silent, but not for long yet
    for extra in (0, 30):
        await database_sync_to_async(sweep)(timezone.now() + stuck_after + timedelta(seconds=extra))
    assert await alerts_now() == [("stuck_run", run_id, 2)]  # one alert, seen by two sweeps


async def test_a_real_run_with_a_slow_first_event_raises_exactly_one_alert(make_user: Any, settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"  # nobody claims the run yet: it waits in the queue
    user = await database_sync_to_async(make_user)()
    client, conv, run_id = await run_over_socket(user, "hello there")
    objective = float(option("first_event_s")["free"])
    await database_sync_to_async(AgentRun.objects.filter(id=run_id).update)(
        created_at=timezone.now() - timedelta(seconds=objective + 5)
    )
    await database_sync_to_async(sweep)()
    assert await alerts_now() == [("slow_first_event", run_id, 1)]
    settings.AGENT_RUNNER = "inprocess"  # now a runner takes it and the run completes
    get_supervisor().wake()
    await client.seen_or_until(lambda f: f.get("type") in TERMINAL, timeout=20)
    await client.close()
    await database_sync_to_async(sweep)()
    assert await alerts_now() == [("slow_first_event", run_id, 2)]  # the same alert, seen again
    record = await database_sync_to_async(RunEventRecord.objects.get)(run_id=run_id)
    assert record.complete
    assert record.ttfe_ms is not None
    assert record.ttfe_ms > objective * 1000
