"""Workspace analytics (GET /api/workspaces/{id}/analytics/, enterprise/analytics.py) on the real PostgreSQL:
two ISO weeks of usage written with known numbers (messages by two people, runs of several models with usage
and times to first token, failed tool calls), and the exact figures the API answers as JSON and as CSV, by day
and by week; who may read them, what each tier sees, and the range's validation. Also: a real run through the
runtime records its model ("offline") and its time to first token."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.utils import timezone
from rest_framework.test import APIClient

from agents.backends.offline import OfflineBackend
from agents.models import AgentRun, ToolCall
from agents.runtime import execute_run
from agents.services import run_claim_next
from agents.tools import default_registry
from chat.models import AuthorKind, Message, User, Workspace
from chat.services.conversations import workspace_create, workspace_member_add
from tests.support import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]

RANGE = {"from": "2026-10-05", "to": "2026-10-18"}  # Monday to Sunday: two ISO weeks


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def url(workspace: Workspace) -> str:
    return f"/api/workspaces/{workspace.id}/analytics/"


def message(conv: str, author: User | None, day: str, *, kind: str = AuthorKind.USER) -> None:
    created = Message.objects.create(conversation_id=conv, author=author, author_kind=kind, text="x")
    Message.objects.filter(id=created.id).update(created_at=at(day))


def run(
    conv: str,
    day: str,
    status: str,
    *,
    model: str = "",
    usage: dict[str, int] | None = None,
    ttft: int | None = None,
    tool_errors: tuple[str, ...] = (),
    tool_ok: tuple[str, ...] = (),
) -> AgentRun:
    created = AgentRun.objects.create(
        conversation_id=conv, agent="assistant", status=status, model=model, usage=usage or {}, first_token_ms=ttft
    )
    AgentRun.objects.filter(id=created.id).update(created_at=at(day))
    for n, tool in enumerate(tool_errors + tool_ok):
        ToolCall.objects.create(
            run=created,
            call_id=f"c{n}",
            tool=tool,
            status="error" if n < len(tool_errors) else "ok",
            started_at=at(day, 13),
        )
    return created


@pytest.fixture
def usage(make_user: Any) -> dict[str, Any]:
    """An enterprise workspace with two weeks of known usage, and the same kinds of rows outside it."""
    owner = make_user(tier="enterprise")
    member = make_user()
    viewer = make_user()
    stranger = make_user(tier="enterprise")
    workspace = workspace_create(owner=owner, name="Acme")
    workspace_member_add(workspace=workspace, actor=owner, username=member.username, role="member")
    workspace_member_add(workspace=workspace, actor=owner, username=viewer.username, role="viewer")
    conv = factories.conversation_sync(owner, agent="", workspace_id=workspace.id)
    other = factories.conversation_sync(stranger, agent="", workspace_id=workspace_create(owner=stranger, name="B").id)
    # Messages: 10-05 owner 2 + member 1; 10-07 member 2; 10-13 owner 1 (6 in range, by 2 people).
    for author, day in [(owner, "2026-10-05"), (owner, "2026-10-05"), (member, "2026-10-05")]:
        message(conv, author, day)
    message(conv, member, "2026-10-07")
    message(conv, member, "2026-10-07")
    message(conv, owner, "2026-10-13")
    message(conv, None, "2026-10-05", kind=AuthorKind.AGENT)  # an answer: a run, not a message
    message(conv, owner, "2026-10-04")  # before the range
    message(conv, owner, "2026-10-19")  # after it
    message(other, stranger, "2026-10-05")  # another workspace
    # Runs: 4 completed (gpt-4o, offline, gpt-4o-mini, an unpriced model), 1 failed, 1 cancelled.
    run(conv, "2026-10-05", "completed", model="gpt-4o", usage={"prompt_tokens": 1000, "completion_tokens": 500},
        ttft=100, tool_errors=("calculator",))  # fmt: skip
    run(conv, "2026-10-05", "completed", model="offline", usage={"prompt_tokens": 200, "completion_tokens": 100},
        ttft=300)  # fmt: skip
    run(conv, "2026-10-07", "failed")
    run(conv, "2026-10-13", "completed", model="gpt-4o-mini", usage={"prompt_tokens": 2000, "completion_tokens": 1000},
        ttft=500, tool_errors=("search", "search"), tool_ok=("search",))  # fmt: skip
    run(conv, "2026-10-13", "cancelled")
    run(
        conv, "2026-10-14", "completed", model="mystery", usage={"prompt_tokens": 10, "completion_tokens": 20}, ttft=400
    )
    run(conv, "2026-10-20", "completed", model="gpt-4o", usage={"prompt_tokens": 9, "completion_tokens": 9},
        ttft=9000, tool_errors=("calculator",))  # fmt: skip
    run(other, "2026-10-05", "completed", model="gpt-4o", usage={"prompt_tokens": 7, "completion_tokens": 7}, ttft=7)
    return {"owner": owner, "member": member, "viewer": viewer, "stranger": stranger, "workspace": workspace}


RUNS_TOTAL = {"queued": 0, "running": 0, "waiting_approval": 0, "completed": 4, "failed": 1, "cancelled": 1}


def test_enterprise_totals_and_weekly_series_are_exact(usage: dict[str, Any]) -> None:
    answer = api_for(usage["owner"]).get(url(usage["workspace"]), {**RANGE, "granularity": "week"})
    assert answer.status_code == 200, answer.json()
    body = answer.json()
    assert body["tier"] == "enterprise"
    assert body["sections"] == ["counts", "usage", "latency", "tool_errors", "csv"]
    assert (body["from"], body["to"], body["granularity"], body["time_zone"]) == (
        "2026-10-05",
        "2026-10-18",
        "week",
        "UTC",
    )
    assert body["totals"] == {
        "messages": 6,
        "active_users": 2,
        "runs": RUNS_TOTAL,
        "tokens": {"prompt": 3210, "completion": 1620},
        # gpt-4o: 1000/1000 x 0.0025 + 500/1000 x 0.01; gpt-4o-mini: 2 x 0.00015 + 1 x 0.0006; offline 0
        "cost": 0.0084,
        "by_model": {
            "gpt-4o": {"runs": 1, "prompt_tokens": 1000, "completion_tokens": 500, "cost": 0.0075},
            "gpt-4o-mini": {"runs": 1, "prompt_tokens": 2000, "completion_tokens": 1000, "cost": 0.0009},
            "mystery": {"runs": 1, "prompt_tokens": 10, "completion_tokens": 20, "cost": 0.0},
            "offline": {"runs": 1, "prompt_tokens": 200, "completion_tokens": 100, "cost": 0.0},
        },
        "unpriced_models": ["mystery"],
        "currency": "USD",
        # 100, 300, 400, 500: percentile_cont interpolates
        "time_to_first_token_ms": {"p50": 350.0, "p95": 485.0, "samples": 4},
        "tool_errors": {"calculator": 1, "search": 2},
    }
    first, second = body["series"]
    assert first["bucket"] == "2026-10-05"
    assert (first["messages"], first["active_users"]) == (5, 2)
    assert first["runs"] == {**RUNS_TOTAL, "completed": 2, "cancelled": 0}
    assert first["tokens"] == {"prompt": 1200, "completion": 600}
    assert first["cost"] == 0.0075
    assert first["time_to_first_token_ms"] == {"p50": 200.0, "p95": 290.0, "samples": 2}
    assert first["tool_errors"] == {"calculator": 1}
    assert second["bucket"] == "2026-10-12"
    assert (second["messages"], second["active_users"]) == (1, 1)
    assert second["runs"] == {**RUNS_TOTAL, "completed": 2, "failed": 0}
    assert second["cost"] == 0.0009
    assert second["time_to_first_token_ms"] == {"p50": 450.0, "p95": 495.0, "samples": 2}
    assert second["tool_errors"] == {"search": 2}


def test_daily_series_has_every_day_even_empty_ones(usage: dict[str, Any]) -> None:
    body = api_for(usage["owner"]).get(url(usage["workspace"]), RANGE).json()
    assert [cell["bucket"] for cell in body["series"]] == [
        (date(2026, 10, 5) + timedelta(days=n)).isoformat() for n in range(14)
    ]
    by_day = {cell["bucket"]: cell for cell in body["series"]}
    assert [by_day[d]["messages"] for d in ("2026-10-05", "2026-10-06", "2026-10-07", "2026-10-13")] == [3, 0, 2, 1]
    assert by_day["2026-10-07"]["runs"]["failed"] == 1
    assert by_day["2026-10-06"]["time_to_first_token_ms"] == {"p50": None, "p95": None, "samples": 0}
    assert by_day["2026-10-14"]["by_model"] == {
        "mystery": {"runs": 1, "prompt_tokens": 10, "completion_tokens": 20, "cost": 0.0}
    }


def test_csv_is_the_same_figures_one_row_per_bucket(usage: dict[str, Any]) -> None:
    answer = api_for(usage["owner"]).get(url(usage["workspace"]), {**RANGE, "granularity": "week", "format": "csv"})
    assert answer.status_code == 200
    assert answer["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in answer["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.content.decode())))
    assert len(rows) == 2
    assert rows[0] == {
        "bucket": "2026-10-05",
        "messages": "5",
        "active_users": "2",
        "runs_queued": "0",
        "runs_running": "0",
        "runs_waiting_approval": "0",
        "runs_completed": "2",
        "runs_failed": "1",
        "runs_cancelled": "0",
        "prompt_tokens": "1200",
        "completion_tokens": "600",
        "cost_usd": "0.0075",
        "cost_usd:gpt-4o": "0.0075",
        "cost_usd:gpt-4o-mini": "0.0",
        "cost_usd:mystery": "0.0",
        "cost_usd:offline": "0.0",
        "ttft_p50_ms": "200.0",
        "ttft_p95_ms": "290.0",
        "ttft_samples": "2",
        "tool_errors": "1",
        "tool_errors:calculator": "1",
        "tool_errors:search": "0",
    }
    assert (rows[1]["bucket"], rows[1]["cost_usd:gpt-4o-mini"], rows[1]["tool_errors:search"]) == (
        "2026-10-12",
        "0.0009",
        "2",
    )


def test_only_owners_read_and_non_members_are_told_it_does_not_exist(usage: dict[str, Any]) -> None:
    target = url(usage["workspace"])
    for who in ("member", "viewer"):
        refused = api_for(usage[who]).get(target, RANGE)
        assert refused.status_code == 403
        assert refused.json()["error"] == {
            "code": "forbidden",
            "message": "only a workspace owner may read its analytics",
        }
    for answer in (
        api_for(usage["stranger"]).get(target, RANGE),
        api_for(usage["owner"]).get(f"/api/workspaces/{uuid.uuid4()}/analytics/", RANGE),
        api_for(usage["owner"]).get("/api/workspaces/not-a-uuid/analytics/", RANGE),
        api_for(usage["stranger"]).get(target, {**RANGE, "format": "xml"}),  # still nothing to see: 404 first
    ):
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"
    assert APIClient().get(target).status_code in (401, 403)


def test_each_tier_sees_its_sections(usage: dict[str, Any]) -> None:
    owner, target = usage["owner"], url(usage["workspace"])
    User.objects.filter(id=owner.id).update(tier="pro")
    pro = api_for(owner).get(target, RANGE).json()
    assert pro["tier"] == "pro"
    assert pro["sections"] == ["counts", "usage", "latency"]
    assert set(pro["totals"]) == {
        "messages", "active_users", "runs", "tokens", "cost", "by_model", "unpriced_models", "currency",
        "time_to_first_token_ms",
    }  # fmt: skip
    assert pro["totals"]["cost"] == 0.0084
    assert "tool_errors" not in pro["series"][0]
    no_csv = api_for(owner).get(target, {**RANGE, "format": "csv"})
    assert no_csv.status_code == 403
    assert no_csv.json()["error"]["message"] == "CSV export is not part of this workspace's tier (pro)"
    User.objects.filter(id=owner.id).update(tier="free")
    free = api_for(owner).get(target, RANGE).json()
    assert free["sections"] == ["counts"]
    assert free["totals"] == {"messages": 6, "active_users": 2, "runs": RUNS_TOTAL}
    assert set(free["series"][0]) == {"bucket", "messages", "active_users", "runs"}
    # A workspace's tier is its best owner's: an enterprise co-owner gives it everything.
    usage["workspace"].memberships.filter(user=usage["member"]).update(role="owner")
    User.objects.filter(id=usage["member"].id).update(tier="enterprise")
    assert api_for(owner).get(target, RANGE).json()["tier"] == "enterprise"


def test_a_tier_without_analytics_is_refused(usage: dict[str, Any], settings: Any) -> None:
    settings.CHAT_TIERS = {**settings.CHAT_TIERS, "free": {**settings.CHAT_TIERS["free"], "analytics": []}}
    User.objects.filter(id=usage["owner"].id).update(tier="free")
    refused = api_for(usage["owner"]).get(url(usage["workspace"]), RANGE)
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "analytics are not part of this workspace's tier (free)"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2026-10-18", "to": "2026-10-05"}, "from (2026-10-18) is after to (2026-10-05)"),
        ({"from": "2025-01-01", "to": "2026-01-02"}, "the range is 367 days; at most 366 may be asked for"),
        ({"from": "2026-13-01"}, "from: expected a date YYYY-MM-DD, got '2026-13-01'"),
        ({"to": "yesterday"}, "to: expected a date YYYY-MM-DD, got 'yesterday'"),
        ({"granularity": "month"}, "granularity: expected one of day, week, got 'month'"),
        # DRF itself answered an unknown ?format= with a bare 404 {"detail"} before the view ran (found by
        # schemathesis): a bad query field, so a 400 saying which, after the membership check like the rest.
        ({"format": "xml"}, "format: expected json or csv, got 'xml'"),
    ],
)
def test_bad_ranges_are_400_with_the_reason(usage: dict[str, Any], params: dict[str, str], message: str) -> None:
    answer = api_for(usage["owner"]).get(url(usage["workspace"]), params)
    assert answer.status_code == 400
    assert answer.json() == {"error": {"code": "bad_request", "message": message}}


def test_the_default_range_is_the_last_30_days_and_366_days_are_allowed(usage: dict[str, Any]) -> None:
    today = timezone.now().date()
    body = api_for(usage["owner"]).get(url(usage["workspace"])).json()
    assert (body["from"], body["to"]) == ((today - timedelta(days=29)).isoformat(), today.isoformat())
    assert len(body["series"]) == 30
    longest = api_for(usage["owner"]).get(url(usage["workspace"]), {"from": "2025-10-18", "to": "2026-10-18"})
    assert longest.status_code == 200
    assert longest.json()["totals"]["messages"] == 7  # and the one of 2026-10-04


def test_a_real_run_records_its_model_and_time_to_first_token(make_user: Any, settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"  # queued until this test runs it
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    owner = make_user(tier="enterprise")
    workspace = workspace_create(owner=owner, name="Live")
    conv = factories.conversation_sync(owner, workspace_id=workspace.id)
    sent = factories.message_sync(conv, owner, "what is 17 * 23?")

    async def run_it() -> None:
        claimed = await database_sync_to_async(run_claim_next)(worker_id="analytics-test")
        assert claimed is not None
        assert claimed.run_id == sent.run_id
        await execute_run(claimed, backend=OfflineBackend(), tools=default_registry())

    async_to_sync(run_it)()
    ran = AgentRun.objects.get(id=sent.run_id)
    assert (ran.status, ran.model) == ("completed", "offline")
    assert ran.first_token_ms is not None
    assert 0 <= ran.first_token_ms < 10_000
    today = timezone.now().date().isoformat()
    body = api_for(owner).get(url(workspace), {"from": today, "to": today}).json()
    assert body["totals"]["by_model"]["offline"]["runs"] == 1
    assert body["totals"]["time_to_first_token_ms"]["samples"] == 1
    assert body["totals"]["time_to_first_token_ms"]["p50"] == float(ran.first_token_ms)
    assert body["totals"]["messages"] == 1
