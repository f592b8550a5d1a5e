"""Health, readiness and metrics endpoints against the real database and channel layer, and alerts
end to end: real agent runs over the socket judged by the monitoring sweep."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from agents.models import AgentRun
from agents.runner import get_supervisor
from agents.services import run_claim_next
from chat.models import Event
from monitoring.config import option
from monitoring.event_monitor import sweep
from monitoring.metrics.families import AGENT_RUNS_INCOMPLETE
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


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as {(sample name, sorted labels): value}; the parser refuses malformed text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_livez_and_its_old_name_answer_without_asking_anything() -> None:
    for path in ("/livez", "/healthz"):
        response = HttpClient().get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


def test_metrics_answer_a_scraper_token_or_staff_and_nobody_else(make_user: Any, settings: Any) -> None:
    settings.METRICS_TOKEN = "scrape-" + uuid.uuid4().hex
    anonymous = HttpClient().get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "unauthorized"
    assert anonymous["WWW-Authenticate"].startswith("Bearer")
    wrong = HttpClient().get("/metrics", HTTP_AUTHORIZATION="Bearer " + settings.METRICS_TOKEN + "x")
    assert wrong.status_code == 401
    assert settings.METRICS_TOKEN not in wrong.content.decode()
    basic = HttpClient().get("/metrics", HTTP_AUTHORIZATION="Basic " + settings.METRICS_TOKEN)
    assert basic.status_code == 401
    member = HttpClient()
    member.force_login(make_user())
    assert member.get("/metrics").status_code == 403  # a session, but not staff
    scraper = HttpClient().get("/metrics", HTTP_AUTHORIZATION="Bearer " + settings.METRICS_TOKEN)
    assert scraper.status_code == 200
    assert scraper["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name for f in text_string_to_metric_families(scraper.content.decode())}
    assert {"chat_commands", "agent_runs_incomplete", "chat_delivery_lag_seconds", "process_cpu_seconds"} <= families
    assert staff_client(make_user).get("/metrics").status_code == 200
    deactivated = make_user(is_staff=True)
    former = HttpClient()
    former.force_login(deactivated)
    deactivated.is_active = False
    deactivated.save(update_fields=["is_active"])
    assert former.get("/metrics").status_code in (401, 403)  # staff no longer: the session counts for nothing


def test_without_a_configured_token_no_bearer_is_accepted(settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    for header in ("Bearer ", "Bearer  ", "Bearer x"):
        assert HttpClient().get("/metrics", HTTP_AUTHORIZATION=header).status_code == 401


def test_metrics_count_events_written(make_user: Any) -> None:
    from chat.services.conversations import conversation_create
    from chat.services.messages import message_send

    user = make_user()
    client = staff_client(make_user)
    before = scrape(client.get("/metrics").content.decode()).get(
        ("chat_events_appended_total", (("type", "message"),)), 0
    )
    conv = conversation_create(creator=user, title="t", agent="").conversation
    message_send(
        conversation_id=str(conv.id),
        author_id=user.id,
        username=user.username,
        client_msg_id="1",
        text="hi",
        can_write=True,
    )
    after = scrape(client.get("/metrics").content.decode())
    assert after[("chat_events_appended_total", (("type", "message"),))] == before + 1


def test_the_dashboard_is_for_staff_and_its_data_is_the_metrics(make_user: Any, settings: Any) -> None:
    settings.METRICS_TOKEN = "scrape-" + uuid.uuid4().hex
    anonymous = HttpClient().get("/staff/dashboard/")
    assert anonymous.status_code == 302
    assert "/admin/login/" in anonymous["Location"]
    member = HttpClient()
    member.force_login(make_user())
    assert member.get("/staff/dashboard/").status_code == 302
    assert member.get("/staff/dashboard/data").status_code == 403
    assert HttpClient().get("/staff/dashboard/data").status_code == 403
    bearer = HttpClient().get("/staff/dashboard/data", HTTP_AUTHORIZATION="Bearer " + settings.METRICS_TOKEN)
    assert bearer.status_code == 403  # the scraper's token is for /metrics only
    staff = staff_client(make_user)
    page = staff.get("/staff/dashboard/").content.decode()
    assert "monitoring/dashboard.js" in page
    assert "uPlot.iife.min.js" in page
    assert "<script>" not in page  # the CSP allows no inline script...
    assert "style=" not in page  # ...nor inline style
    data = staff.get("/staff/dashboard/data").json()
    metrics = scrape(staff.get("/metrics").content.decode())
    assert {"alerts", "slo", "runs_with_problems"} <= set(data)
    for name in ("chat_commands_total", "chat_disconnects_total", "agent_runs_incomplete_total"):
        for key, value in data["families"][name]["series"].items():
            labels = tuple(sorted(tuple(part.split("=", 1)) for part in key.split(",") if part))
            assert metrics[(name, labels)] == value, (name, key)
    lag = data["families"]["chat_delivery_lag_seconds"]["series"][""]
    assert lag["buckets"][-1] == [None, metrics[("chat_delivery_lag_seconds_bucket", (("le", "+Inf"),))]]


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
    incomplete = AGENT_RUNS_INCOMPLETE.labels("agent_thinking")
    before = incomplete._value.get()
    for _ in range(2):  # a second sweep finds nothing new
        await database_sync_to_async(sweep)()
    assert await alerts_now() == [("missing_event", run_id, 1)]
    assert incomplete._value.get() == before + 1  # agent_runs_incomplete_total{missing="agent_thinking"}


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
