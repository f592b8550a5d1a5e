"""The staff dashboard in headless Chromium against the real stack: a member chats in another
browser, and the numbers the dashboard shows (read from the page) are the ones /metrics serves.

The dashboard polls its JSON every 2 s; the test waits for the page's next poll (the status line
counts them) instead of sleeping, and compares once the traffic has settled."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import PageErrors, wait_live

pytestmark = [pytest.mark.e2e]

MESSAGES = 3
SCREENSHOT_DIR = os.environ.get("E2E_SCREENSHOT_DIR", "/tmp")
# The tiles the test reads, and how each is computed from /metrics.
TILES: dict[str, Callable[[dict[tuple[str, tuple[tuple[str, str], ...]], float]], float]] = {
    "stat-connections": lambda m: _sum(m, "chat_connections"),
    "stat-users": lambda m: _sum(m, "chat_users_online"),
    "stat-subscriptions": lambda m: _sum(m, "chat_subscriptions"),
    "stat-messages": lambda m: _sum(m, "chat_commands_total", command="send", outcome="ok"),
    "stat-frames": lambda m: _sum(m, "chat_frames_sent_total"),
    "stat-runs": lambda m: _sum(m, "agent_runs_total"),
}


def _sum(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, have), v in metrics.items() if n == name and set(labels.items()) <= set(have))


def scrape(page: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics read with the staff page's own session."""
    response = page.request.get("/metrics")
    assert response.status == 200, response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(response.text())
        for s in f.samples
    }


def tiles(page: Any) -> dict[str, float]:
    return {tile: float(page.get_by_test_id(tile).get_attribute("data-value") or "nan") for tile in TILES}


def next_poll(page: Any) -> None:
    polls = int(page.get_by_test_id("dashboard-status").get_attribute("data-polls") or "0")
    page.wait_for_function(
        "(n) => Number(document.getElementById('dash-status').dataset.polls || 0) > n", arg=polls, timeout=10_000
    )


def test_the_dashboard_shows_live_numbers_that_match_metrics(
    new_page: Callable[[str], Any],
    login: Callable[[Any, str], None],
    page_errors: PageErrors,
) -> None:
    anonymous = new_page("anonymous")
    anonymous.goto("/staff/dashboard/")
    assert "/admin/login/" in anonymous.url  # not staff: the admin's login

    staff = new_page("staff")
    login(staff, "admin")
    staff.goto("/staff/dashboard/")
    expect(staff.get_by_test_id("dashboard-status")).to_have_class(re.compile("is-live"))
    expect(staff.locator(".chart canvas")).to_have_count(8)

    member = new_page("member")
    # The team room: people only unless the assistant is addressed, so no streamed answer keeps moving
    # the frame count while the page and /metrics are compared.
    login(member, "alice")
    member.get_by_test_id("conversation-link").filter(has_text="Demo: team room").click()
    wait_live(member)
    for i in range(MESSAGES):
        member.get_by_test_id("composer").fill(f"dashboard traffic {i}")
        member.get_by_test_id("composer").press("Enter")
        expect(member.get_by_test_id("message-text").filter(has_text=f"dashboard traffic {i}")).to_have_count(1)

    # The page and /metrics agree once the counts are published (each second) and polled (every 2 s).
    seen: dict[str, float] = {}
    expected: dict[str, float] = {}
    for _ in range(8):
        next_poll(staff)
        metrics = scrape(staff)
        seen, expected = tiles(staff), {tile: compute(metrics) for tile, compute in TILES.items()}
        if seen == expected and expected["stat-messages"] == MESSAGES:
            break
    assert seen == expected
    assert expected["stat-messages"] == MESSAGES
    assert expected["stat-connections"] == 1  # the member's page; the dashboard holds no socket
    assert expected["stat-frames"] >= MESSAGES
    next_poll(staff)  # one more poll, so the rate charts have two points after the traffic
    staff.screenshot(path=os.path.join(SCREENSHOT_DIR, "staff_dashboard.png"), full_page=True)
    assert staff.get_by_test_id("stat-alerts").get_attribute("data-value") is not None
    assert page_errors.items == []  # no script error, no CSP violation (a console error in Chromium)
