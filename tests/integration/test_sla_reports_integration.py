"""SLA reports (GET /api/workspaces/{id}/sla/, enterprise/sla.py) on the real PostgreSQL: measurements
recorded by real run ends (the terminal event's transaction counts run_success and first_event for the
run's workspace) and by the worker's availability sample (one per minute however often it is taken), the
report's values and met flags, who may read it, and the admin's summary of every enterprise workspace."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from rest_framework.test import APIClient

from agents import services
from agents.models import AgentRun
from chat.models import User
from chat.services.conversations import workspace_create, workspace_member_add
from enterprise import sla
from enterprise.models import SlaMeasurement
from tests.support import factories

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture(autouse=True)
def _runs_stay_queued(settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"


def queued_run(conv: str, user: Any) -> str:
    sent = factories.message_sync(conv, user, "hello agent")
    assert sent.run_id is not None
    return str(sent.run_id)


def claim(run_id: str, *, waited_s: float = 0.0) -> None:
    """Claim the queued run; `waited_s`: how long it had been queued when it started."""
    AgentRun.objects.filter(id=run_id).update(created_at=datetime.now(UTC) - timedelta(seconds=waited_s))
    claimed = services.run_claim_next(worker_id="sla-test")
    assert claimed is not None
    assert claimed.run_id == run_id


def finish(conv: str, run_id: str, how: str, by: Any = None) -> None:
    if how == "completed":
        services.run_complete(run_id=run_id, conversation_id=conv, text="done", usage={}, model="offline")
    elif how == "failed":
        services.run_fail(run_id=run_id, conversation_id=conv, code="internal", message="boom")
    else:
        with transaction.atomic():
            services.run_request_cancel(run_id=run_id, by_user_id=by.id, by_username=by.username)
            services.run_finish_cancelled(run_id=run_id, conversation_id=conv)


@pytest.fixture
def enterprise(make_user: Any) -> dict[str, Any]:
    owner = make_user(tier="enterprise")
    member = make_user(tier="enterprise")
    workspace = workspace_create(owner=owner, name="Acme")
    workspace_member_add(workspace=workspace, actor=owner, username=member.username, role="member")
    conv = factories.conversation_sync(owner, workspace_id=workspace.id)
    return {"owner": owner, "member": member, "workspace": workspace, "conv": conv}


def objective(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(o for o in report["objectives"] if o["objective"] == name)


def test_run_ends_are_measured_and_reported_with_met_flags(enterprise: dict[str, Any]) -> None:
    conv, owner = enterprise["conv"], enterprise["owner"]
    # 3 completed on time, 1 failed on time, 1 completed late (its first event after 30 s), 1 cancelled.
    for how, waited in [("completed", 0), ("completed", 0), ("completed", 0), ("failed", 0), ("completed", 30)]:
        run_id = queued_run(conv, owner)
        claim(run_id, waited_s=waited)
        finish(conv, run_id, how)
    cancelled = queued_run(conv, owner)
    claim(cancelled)
    finish(conv, cancelled, "cancelled", owner)
    today = datetime.now(UTC).date()
    rows = {
        (r.objective, r.good, r.total, r.tier)
        for r in SlaMeasurement.objects.filter(workspace_id=enterprise["workspace"].id, day=today)
    }
    assert rows == {("run_success", 4, 5, "enterprise"), ("first_event", 4, 5, "enterprise")}
    sla.sample_availability()
    answer = api_for(owner).get(f"/api/workspaces/{enterprise['workspace'].id}/sla/")
    assert answer.status_code == 200, answer.json()
    report = answer.json()
    assert (report["tier"], report["month"]) == ("enterprise", today.strftime("%Y-%m"))
    assert objective(report, "run_success") == {
        "objective": "run_success",
        "target": 0.99,
        "measured": 0.8,
        "met": False,
        "good": 4,
        "sample_size": 5,
        "unit": "runs",
    }
    assert objective(report, "first_event") == {
        "objective": "first_event",
        "target": 0.95,
        "measured": 0.8,
        "met": False,
        "good": 4,
        "sample_size": 5,
        "unit": "runs",
        "within_s": 2.0,
    }


def test_measurements_outlive_the_runs_they_counted(enterprise: dict[str, Any]) -> None:
    conv = enterprise["conv"]
    run_id = queued_run(conv, enterprise["owner"])
    claim(run_id)
    finish(conv, run_id, "completed")
    AgentRun.objects.filter(id=run_id).delete()  # as the purge of a deleted conversation does
    report = sla.report(
        workspace_id=enterprise["workspace"].id, tier="enterprise", month=datetime.now(UTC).date().replace(day=1)
    )
    assert objective(report, "run_success")["sample_size"] == 1
    assert objective(report, "run_success")["met"] is True


def test_availability_is_good_minutes_out_of_every_minute_since_the_first_sample() -> None:
    start = datetime(2026, 9, 30, 23, 58, 10, tzinfo=UTC)
    sla.sample_availability(start)  # 23:58 (September: not in October's report)
    sla.sample_availability(start + timedelta(minutes=2))  # 00:00 Oct 1
    sla.sample_availability(start + timedelta(minutes=2, seconds=30))  # the same minute again: not counted
    sla.sample_availability(start + timedelta(minutes=3))  # 00:01
    # 00:02 and 00:03 nobody sampled (no worker, or no database): down. Report as of 00:04.
    now = datetime(2026, 10, 1, 0, 4, 30, tzinfo=UTC)
    got = sla.availability_minutes(date(2026, 10, 1), now)
    assert (got.good, got.total) == (2, 4)
    report = sla.report(workspace_id=uuid.uuid4(), tier="enterprise", month=date(2026, 10, 1), now=now)
    assert objective(report, "availability") == {
        "objective": "availability",
        "target": 0.999,
        "measured": 0.5,
        "met": False,
        "good": 2,
        "sample_size": 4,
        "unit": "minutes",
    }
    empty = sla.report(workspace_id=uuid.uuid4(), tier="pro", month=date(2026, 8, 1), now=now)
    assert objective(empty, "run_success") == {
        "objective": "run_success",
        "target": 0.98,
        "measured": None,
        "met": True,
        "good": 0,
        "sample_size": 0,
        "unit": "runs",
    }


def test_only_owners_of_enterprise_workspaces_read_reports(enterprise: dict[str, Any], make_user: Any) -> None:
    target = f"/api/workspaces/{enterprise['workspace'].id}/sla/"
    refused = api_for(enterprise["member"]).get(target)
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "only a workspace owner may read its SLA report"
    assert api_for(make_user(tier="enterprise")).get(target).status_code == 404
    User.objects.filter(id=enterprise["owner"].id).update(tier="pro")
    pro = api_for(enterprise["owner"]).get(target)
    assert pro.status_code == 403
    assert pro.json()["error"]["message"] == "SLA reports are for enterprise workspaces; this one's tier is pro"
    for month in ("2026-13", "2026-1", "soon"):
        User.objects.filter(id=enterprise["owner"].id).update(tier="enterprise")
        bad = api_for(enterprise["owner"]).get(target, {"month": month})
        assert bad.status_code == 400
        assert bad.json()["error"] == {"code": "bad_request", "message": f"month: expected YYYY-MM, got {month!r}"}


def test_the_admin_summarises_every_enterprise_workspace(enterprise: dict[str, Any], make_user: Any) -> None:
    conv = enterprise["conv"]
    run_id = queued_run(conv, enterprise["owner"])
    claim(run_id)
    finish(conv, run_id, "failed")
    workspace_create(owner=make_user(tier="pro"), name="Not enterprise")
    staff = make_user(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    page = client.get("/admin/enterprise/slameasurement/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="sla-summary"' in html
    assert "Acme" in html
    assert "Not enterprise" not in html
    assert "0/1" in html  # run_success: 0 good of 1
