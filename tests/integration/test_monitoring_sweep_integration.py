"""The monitoring sweep over real runs in the real PostgreSQL: each run judged once for its shape,
stuck and slow runs found, alerts deduplicated and told to each sink once, the admin's list and
action, the SLO buckets, and degradation alerts. Runs are driven through the run services by hand
(the `runner` fixture keeps the in-process supervisor from claiming them); `sweep(now)` takes the
time it judges at, so a run is "stuck" without waiting two minutes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core import mail
from django.core.management import call_command
from django.db import transaction
from django.db.models import Sum
from django.test import Client as HttpClient
from django.utils import timezone

from agents import services
from agents.models import AgentRun
from agents.worker import monitoring_loop
from chat.models import Event
from chat.services.events import append_event
from monitoring import alerts, slo
from monitoring.event_monitor import sweep
from monitoring.models import Alert, AlertDelivery, RunEventRecord, SloBucket
from monitoring.performance import PerformanceMonitor
from tests.support import factories
from tests.support.waiting import eventually

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("runner")]

STUCK_S = 120.0  # monitoring/config.py's default


def start_run(user: Any, text: str = "hello there") -> services.ClaimedRun:
    conv = factories.conversation_sync(user)
    factories.message_sync(conv, user, text)
    claimed = services.run_claim_next(worker_id="test-worker")
    assert claimed is not None
    return claimed


def think(run: services.ClaimedRun, text: str = "thinking") -> None:
    services.run_emit(
        run_id=run.run_id, conversation_id=run.conversation_id, type="agent_thinking", data={"text": text}
    )


def complete(run: services.ClaimedRun) -> None:
    services.run_complete(run_id=run.run_id, conversation_id=run.conversation_id, text="done", usage={})


def tool(run: services.ClaimedRun, call_id: str, *, finish: bool = True) -> None:
    services.tool_call_start(
        run_id=run.run_id, conversation_id=run.conversation_id, call_id=call_id, tool="current_time", arguments={}
    )
    if finish:
        services.tool_call_finish(
            run_id=run.run_id, conversation_id=run.conversation_id, call_id=call_id, ok=True, result={}
        )


def open_alerts() -> list[tuple[str, str, int]]:
    return sorted(Alert.objects.filter(resolved_at=None).values_list("kind", "subject", "count"))


def later(seconds: float) -> datetime:
    return timezone.now() + timedelta(seconds=seconds)


def test_a_tool_less_run_and_a_tool_run_are_complete_and_raise_nothing(make_user: Any) -> None:
    user = make_user(tier="pro")
    plain = start_run(user)
    think(plain)
    complete(plain)
    tools = start_run(user, "what time is it?")
    think(tools)
    tool(tools, "c1")
    tool(tools, "c2")
    complete(tools)
    report = sweep()
    assert report.raised == []
    assert report.audited == 2
    assert report.first_events_checked == 2
    for run in (plain, tools):
        record = RunEventRecord.objects.get(run_id=run.run_id)
        assert record.complete
        assert record.missing == []
        assert record.problems == []
        assert record.tier == "pro"
        assert record.username == user.username
        assert record.ttfe_ms is not None
        assert 0 <= record.ttfe_ms < 5000
    assert sweep().audited == 0  # judged once
    # Summed over buckets: the two runs may end either side of a bucket's boundary.
    buckets = dict(SloBucket.objects.filter(tier="pro").values_list("sli").annotate(n=Sum("total")))
    assert buckets == {"run_success": 2, "first_event": 2}


def test_a_deleted_event_raises_one_missing_event_alert(make_user: Any) -> None:
    user = make_user()
    run = start_run(user)
    think(run)
    complete(run)
    Event.objects.filter(run_id=run.run_id, type="agent_thinking").delete()  # lost from the log
    sweep()
    assert open_alerts() == [("missing_event", run.run_id, 1)]
    alert = Alert.objects.get(kind="missing_event")
    assert "without agent_thinking" in alert.message
    assert user.username in alert.message
    sweep()
    assert open_alerts() == [("missing_event", run.run_id, 1)]  # not judged again, not counted again
    assert RunEventRecord.objects.get(run_id=run.run_id).missing_critical == ["agent_thinking"]


def test_a_run_whose_events_all_left_the_log_misses_them(make_user: Any) -> None:
    run = start_run(make_user())
    think(run)
    complete(run)
    Event.objects.filter(run_id=run.run_id).delete()
    sweep()
    assert open_alerts() == [("missing_event", run.run_id, 1)]
    assert RunEventRecord.objects.get(run_id=run.run_id).missing == ["agent_started", "agent_completed"]


def test_an_unfinished_tool_call_in_a_completed_run_is_missing(make_user: Any) -> None:
    run = start_run(make_user())
    think(run)
    tool(run, "c1", finish=False)
    complete(run)
    sweep()
    assert open_alerts() == [("missing_event", run.run_id, 1)]
    assert "tool_completed of call c1" in Alert.objects.get().message


def test_a_run_failed_mid_tool_owes_nothing(make_user: Any) -> None:
    run = start_run(make_user())
    tool(run, "c1", finish=False)
    services.run_fail(run_id=run.run_id, conversation_id=run.conversation_id, code="internal", message="boom")
    assert sweep().raised == []
    assert RunEventRecord.objects.get(run_id=run.run_id).complete


def test_a_second_terminal_event_raises_one_critical_alert(make_user: Any) -> None:
    run = start_run(make_user())
    think(run)
    complete(run)
    sweep()
    with transaction.atomic():  # a bug writing a second terminal event, straight into the log
        append_event(
            conversation_id=run.conversation_id, type="agent_failed", run_id=run.run_id, data={"run_id": run.run_id}
        )
    sweep()
    assert open_alerts() == [("duplicate_terminal", run.run_id, 1)]
    assert Alert.objects.get().severity == "critical"


def test_events_out_of_order_raise_one_alert(make_user: Any) -> None:
    run = start_run(make_user())
    think(run)
    complete(run)
    with transaction.atomic():
        append_event(
            conversation_id=run.conversation_id, type="agent_thinking", run_id=run.run_id, data={"run_id": run.run_id}
        )
    sweep()
    assert open_alerts() == [("out_of_order", run.run_id, 1)]


def test_a_stuck_run_raises_one_alert_until_it_ends(make_user: Any) -> None:
    run = start_run(make_user())
    think(run)
    assert sweep(later(STUCK_S - 5)).raised == []
    sweep(later(STUCK_S + 5))
    sweep(later(STUCK_S + 20))
    assert open_alerts() == [("stuck_run", run.run_id, 2)]  # one alert, seen by two sweeps
    complete(run)
    sweep()
    assert open_alerts() == []  # ended: resolved by the audit
    assert Alert.objects.get().resolved_at is not None


def test_a_run_waiting_for_approval_is_silent_by_design_until_its_approval_should_have_expired(
    make_user: Any, settings: Any
) -> None:
    run = start_run(make_user())
    think(run)
    AgentRun.objects.filter(id=run.run_id).update(status="waiting_approval")
    ttl_s = float(settings.AGENT_APPROVAL_TTL_S)
    assert sweep(later(STUCK_S + 5)).raised == []
    assert sweep(later(STUCK_S + ttl_s - 5)).raised == []
    sweep(later(STUCK_S + ttl_s + 5))  # the expiry should have resolved it by now: something is stuck
    assert open_alerts() == [("stuck_run", run.run_id, 1)]


def test_a_run_ended_in_the_runs_table_without_its_terminal_event_is_missing_it(make_user: Any) -> None:
    run = start_run(make_user())
    think(run)
    AgentRun.objects.filter(id=run.run_id).update(status="completed", finished_at=timezone.now())
    sweep(later(STUCK_S + 5))
    assert open_alerts() == [("missing_event", run.run_id, 1)]
    assert "terminal event is not in the log" in Alert.objects.get().message


def test_a_slow_first_event_raises_one_alert_while_queued_and_after_it_starts(make_user: Any) -> None:
    user = make_user()  # free tier: 10 s
    conv = factories.conversation_sync(user)
    sent = factories.message_sync(conv, user, "hello")
    AgentRun.objects.filter(id=sent.run_id).update(created_at=timezone.now() - timedelta(seconds=30))
    sweep()
    assert open_alerts() == [("slow_first_event", str(sent.run_id), 1)]
    assert "no event yet" in Alert.objects.get().message
    run = services.run_claim_next(worker_id="test-worker")
    assert run is not None
    think(run)
    complete(run)
    sweep()
    assert open_alerts() == [("slow_first_event", str(sent.run_id), 2)]
    assert RunEventRecord.objects.get(run_id=run.run_id).ttfe_ms >= 30_000


def test_a_run_queued_behind_a_long_run_counts_its_wait_from_that_runs_end(make_user: Any) -> None:
    user = make_user()
    conv = factories.conversation_sync(user)
    first = factories.message_sync(conv, user, "one")
    second = factories.message_sync(conv, user, "two")
    AgentRun.objects.filter(id=first.run_id).update(created_at=timezone.now() - timedelta(seconds=60))
    AgentRun.objects.filter(id=second.run_id).update(created_at=timezone.now() - timedelta(seconds=59))
    run = services.run_claim_next(worker_id="test-worker")
    assert run is not None
    assert run.run_id == str(first.run_id)
    sweep()
    assert [kind for kind, _, _ in open_alerts()] == ["slow_first_event"]  # the first one was late
    think(run)
    complete(run)  # the second run may start only now
    nxt = services.run_claim_next(worker_id="test-worker")
    assert nxt is not None
    assert nxt.run_id == str(second.run_id)
    sweep()
    assert [subject for _, subject, _ in open_alerts()] == [str(first.run_id)]
    assert RunEventRecord.objects.get(run_id=second.run_id).ttfe_ms < 5000


def test_alerts_are_deduplicated_while_open_and_reopen_after_resolve() -> None:
    a = alerts.raise_alert(kind="k", subject="s", message="one", severity="warning")
    b = alerts.raise_alert(kind="k", subject="s", message="two", severity="critical")
    assert a.id == b.id
    assert b.count == 2
    assert b.message == "two"
    assert b.severity == "critical"  # a worse repeat raises the severity
    assert alerts.resolve(kind="k", subject="s") == 1
    c = alerts.raise_alert(kind="k", subject="s", message="three", severity="warning")
    assert c.id != a.id
    assert c.count == 1
    with pytest.raises(ValueError, match="unknown severity"):
        alerts.raise_alert(kind="k", subject="s", message="x", severity="loud")


def test_each_sink_gets_each_alert_once(settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    settings.ALERT_EMAIL = ["ops@example.com"]
    alerts.raise_alert(kind="stuck_run", subject="r1", message="run r1 is stuck", severity="warning")
    alerts.raise_alert(kind="note", subject="x", message="for the log only", severity="info")
    with caplog.at_level(logging.INFO, logger="monitoring.alerts"):
        assert alerts.deliver_pending() == 3  # log x2, email x1 (info is below email's severity)
        alerts.raise_alert(kind="stuck_run", subject="r1", message="still stuck", severity="warning")
        assert alerts.deliver_pending() == 0  # a repeat of an open alert is not told again
    assert [m.subject for m in mail.outbox] == ["[chat alert] warning: stuck_run r1"]
    assert mail.outbox[0].to == ["ops@example.com"]
    assert sum("ALERT warning stuck_run r1" in r.getMessage() for r in caplog.records) == 1


def test_a_failing_sink_is_retried_then_given_up(settings: Any) -> None:
    settings.ALERT_EMAIL = []  # the email sink is off without recipients
    calls: list[str] = []

    def broken(alert: Alert) -> None:
        calls.append(alert.subject)
        raise ConnectionError("hook down")

    alerts.register_sink("hook", broken)
    try:
        alerts.raise_alert(kind="k", subject="s", message="m", severity="warning")
        for _ in range(alerts.MAX_ATTEMPTS + 2):
            alerts.deliver_pending()
    finally:
        alerts.unregister_sink("hook")
    assert calls == ["s"] * alerts.MAX_ATTEMPTS
    row = AlertDelivery.objects.get(sink="hook")
    assert row.delivered_at is None
    assert "hook down" in row.last_error
    assert set(AlertDelivery.objects.values_list("sink", flat=True)) == {"hook", "log"}


def test_the_admin_lists_alerts_and_runs_and_resolves(make_user: Any) -> None:
    staff = make_user(is_staff=True, is_superuser=True)
    run = start_run(make_user())
    complete(run)  # no thinking: missing
    sweep()
    client = HttpClient()
    client.force_login(staff)
    page = client.get("/admin/monitoring/alert/?state=open").content.decode()
    assert "missing_event" in page
    assert run.run_id in page
    runs = client.get("/admin/monitoring/runeventrecord/?verdict=problems").content.decode()
    assert run.run_id in runs
    assert "agent_thinking" in runs
    assert run.run_id not in client.get("/admin/monitoring/runeventrecord/?verdict=complete").content.decode()
    alert = Alert.objects.get()
    response = client.post(
        "/admin/monitoring/alert/", {"action": "resolve", "_selected_action": [alert.id]}, follow=True
    )
    assert response.status_code == 200
    alert.refresh_from_db()
    assert alert.resolved_at is not None


def test_monitor_runs_command_sweeps_once(make_user: Any, capsys: pytest.CaptureFixture[str]) -> None:
    run = start_run(make_user())
    complete(run)
    call_command("monitor_runs")
    out = capsys.readouterr().out
    assert "runs audited 1" in out
    assert f"alert: missing_event {run.run_id}" in out


def test_slo_buckets_sum_across_flushes_and_burn_alerts_fire_and_resolve() -> None:
    now = timezone.now()
    counts = slo.Counts()
    for minute in range(20):  # 20 minutes of the free tier's runs failing 9 in 10
        counts.add("run_success", "free", now - timedelta(minutes=minute), good=1, total=10)
    slo.flush(counts)
    again = slo.Counts()
    again.add("run_success", "free", now, good=1, total=10)
    slo.flush(again)
    assert (
        SloBucket.objects.get(sli="run_success", tier="free", minute=now.replace(second=0, microsecond=0)).total == 20
    )
    row = next(r for r in slo.burn_rates(now) if r["sli"] == "run_success" and r["tier"] == "free")
    assert row["firing"] == "page"
    assert row["windows"][300]["burn_rate"] == pytest.approx(18.0)
    raised = slo.check_burn_alerts(now)
    assert [(a.kind, a.subject, a.severity) for a in raised] == [("slo_burn", "run_success:free", "critical")]
    # Seven hours later every window is empty again: resolved.
    slo.check_burn_alerts(now + timedelta(hours=7))
    assert open_alerts() == []
    assert slo.prune(now + timedelta(days=9)) == 20


def test_a_latency_step_in_this_process_raises_one_alert_and_recovery_resolves_it() -> None:
    clock = [1_800_000_000.0]
    monitor = PerformanceMonitor(clock=lambda: clock[0])
    rng = random.Random(1)
    at = datetime.fromtimestamp(clock[0], tz=timezone.get_current_timezone())

    def traffic(seconds: int, mean: float) -> None:
        for _ in range(seconds):
            for _ in range(5):
                monitor.observe("send_ack", mean * (1 + rng.uniform(-0.3, 0.3)))
            clock[0] += 1
            if clock[0] % 15 == 0:
                alerts.check_performance(monitor, at + timedelta(seconds=clock[0] - 1_800_000_000.0))

    traffic(3900, 0.040)
    assert Alert.objects.count() == 0
    traffic(900, 0.200)
    assert [(a.kind, a.subject.split("@")[0], a.count) for a in Alert.objects.all()] == [
        ("latency_degraded", "send_ack", 1)
    ]
    traffic(900, 0.040)
    assert open_alerts() == []


async def test_the_agent_workers_loop_sweeps_periodically(make_user: Any, settings: Any) -> None:
    settings.MONITORING = {"sweep_interval_s": 0.05}
    user = await database_sync_to_async(make_user)()

    def finished_without_thinking() -> str:
        run = start_run(user)
        complete(run)
        return run.run_id

    run_id = await database_sync_to_async(finished_without_thinking)()
    loop = asyncio.create_task(monitoring_loop())
    try:
        await eventually(
            lambda: database_sync_to_async(open_alerts)(), timeout=10, what="the worker's sweep to raise the alert"
        )
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert await database_sync_to_async(open_alerts)() == [("missing_event", run_id, 1)]
