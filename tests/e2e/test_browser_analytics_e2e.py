"""The workspace analytics page (/w/{id}/analytics/) in headless Chromium against the real stack: carol, an
enterprise owner, sees every chart drawn and totals equal to what the API answers; bob, a member, gets the
403 page and a stranger the 404 page. Screenshots (desktop light and dark, phone) go to tests/e2e/artifacts/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import PageErrors
from tests.support.servers import Stack

pytestmark = [pytest.mark.e2e]

ARTIFACTS = Path(__file__).parent / "artifacts"
NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"

# Two weeks of usage in a workspace carol owns and bob is a member of; prints the workspace's id.
SEED = """
from datetime import timedelta
from django.utils import timezone
from agents.models import AgentRun, ToolCall
from chat.models import Message, User
from chat.services.conversations import conversation_create, workspace_create, workspace_member_add
carol, bob = User.objects.get(username="carol"), User.objects.get(username="bob")
ws = workspace_create(owner=carol, name="Analytics e2e")
workspace_member_add(workspace=ws, actor=carol, username="bob", role="member")
conv = conversation_create(creator=carol, title="Numbers", agent="", workspace_id=ws.id).conversation
now = timezone.now()
for day in range(14):
    at = now - timedelta(days=day, hours=1)
    for n in range(day % 4 + 1):
        m = Message.objects.create(conversation=conv, author=carol if n % 2 else bob, text="x")
        Message.objects.filter(id=m.id).update(created_at=at)
    status = "failed" if day % 5 == 0 else "completed"
    run = AgentRun.objects.create(conversation=conv, agent="assistant", status=status,
        model="gpt-4o" if day % 2 else "offline", first_token_ms=200 + 37 * day,
        usage={"prompt_tokens": 900 + day * 10, "completion_tokens": 300 + day})
    AgentRun.objects.filter(id=run.id).update(created_at=at)
    if day % 3 == 0:
        ToolCall.objects.create(run=run, call_id="c1", tool="calculator" if day % 2 else "search", status="error",
            started_at=at)
print(ws.id)
"""


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"analytics-{name}.png"), animations="disabled", full_page=True)


def test_owner_sees_charts_and_the_apis_totals_members_do_not(
    stack: Stack,
    new_page: Callable[[str], Any],
    login: Callable[[Any, str], None],
    page_errors: PageErrors,
) -> None:
    workspace_id = stack.manage("shell", "-c", SEED).stdout.strip().splitlines()[-1]
    page = new_page("carol")
    login(page, "carol")
    page.goto(f"/w/{workspace_id}/analytics/")
    expect(page.locator("#analytics")).to_have_attribute("data-loaded", "true")
    expect(page.locator(".an-chart canvas")).to_have_count(5)
    expect(page.get_by_test_id("analytics-sla").locator("tbody tr")).to_have_count(3)
    api = page.request.get(f"/api/workspaces/{workspace_id}/analytics/").json()["totals"]

    def shown(testid: str) -> str:
        return page.get_by_test_id(testid).get_attribute("data-value") or ""

    assert shown("total-messages") == str(api["messages"])
    assert api["messages"] == sum(day % 4 + 1 for day in range(14))
    assert shown("total-active-users") == str(api["active_users"]) == "2"
    assert shown("total-runs-completed") == str(api["runs"]["completed"])
    assert shown("total-runs-failed") == str(api["runs"]["failed"]) == "3"
    assert shown("total-tokens") == str(api["tokens"]["prompt"] + api["tokens"]["completion"])
    assert float(shown("total-cost")) == api["cost"]
    assert float(shown("total-ttft")) == api["time_to_first_token_ms"]["p50"]
    assert shown("total-tool-errors") == str(sum(api["tool_errors"].values())) == "5"
    page.get_by_label("By").select_option("week")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_test_id("analytics-status")).to_contain_text("by week")
    shot(page, "desktop-light")
    page.emulate_media(color_scheme="dark")  # the page redraws in the dark palette
    expect(page.locator("#analytics")).to_have_attribute("data-loaded", "true")
    expect(page.locator(".an-chart canvas")).to_have_count(5)
    shot(page, "desktop-dark")
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(page.locator("#analytics")).to_have_attribute("data-loaded", "true")
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    shot(page, "phone")
    assert not page_errors.items, "\n".join(page_errors.items)  # the refusals below log their status: not errors

    member = new_page("bob")
    login(member, "bob")
    refused = member.goto(f"/w/{workspace_id}/analytics/")
    assert refused is not None
    assert refused.status == 403
    expect(member.get_by_test_id("error-page")).to_have_attribute("data-status", "403")
    stranger = new_page("dave")
    login(stranger, "dave")
    missing = stranger.goto(f"/w/{workspace_id}/analytics/")
    assert missing is not None
    assert missing.status == 404
