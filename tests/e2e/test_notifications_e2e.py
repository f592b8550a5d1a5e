"""Notifications on the real stack (`manage.py serve`, which starts the notifications worker):

1. A push is delivered by the worker, off the request path: the test push a user asks for over REST
   reaches their device at a local push service (VAPID checked, payload decrypted) within seconds.
2. In headless Chromium: the bell shows the unread count and the list, "mark all read" clears it,
   and the settings page saves every kind of preference (a bad time zone is refused with the
   server's message) and sends a test push.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from chat.services.notification_config import generate_vapid_private_key
from tests.e2e.conftest import PageErrors
from tests.support.push_endpoint import Browser, PushEndpoint
from tests.support.servers import Stack, login, running_stack

pytestmark = [pytest.mark.e2e]

SCREENSHOTS = Path("/tmp")


@pytest.fixture(scope="module")
def push_service() -> Iterator[PushEndpoint]:
    endpoint = PushEndpoint.start()
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="module")
def stack(push_service: PushEndpoint) -> Iterator[Stack]:
    env = {
        "VAPID_PRIVATE_KEY": generate_vapid_private_key(),
        "NOTIFICATIONS_JSON": json.dumps({"push_insecure_hosts": [push_service.host], "worker_poll_s": 0.2}),
    }
    with running_stack(env_overrides=env) as running:
        yield running


def api(stack: Stack, username: str) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {login(stack, username)}"})


def test_the_worker_started_by_serve_delivers_a_push(stack: Stack, push_service: PushEndpoint) -> None:
    laptop = Browser()
    with api(stack, "bob") as bob:
        assert (
            bob.post("/api/me/push-subscriptions/", json=laptop.subscription(push_service.url("bob"))).status_code
            == 201
        )
        answer = bob.post("/api/me/notifications/test/")
        assert answer.status_code == 202
        assert answer.json()["devices"] == 1
    deadline = time.monotonic() + 15
    while not push_service.received("bob"):  # the worker polls every 0.2 s here
        assert time.monotonic() < deadline, f"no push within 15 s:\n{stack.log()[-2000:]}"
        time.sleep(0.05)
    [push] = push_service.received("bob")
    payload = laptop.decrypt(push.body)
    assert (payload["kind"], payload["title"], payload["url"]) == ("test", "Test notification", "/")


def test_the_bell_and_the_settings_page(
    stack: Stack, new_page: Callable[[str], Any], login: Callable[[Any, str], None], page_errors: PageErrors
) -> None:
    with api(stack, "carol") as carol:  # carol has something to read: a test notification
        assert carol.post("/api/me/notifications/test/").status_code == 202
    page = new_page("carol")
    login(page, "carol")
    badge = page.get_by_test_id("notifications-unread")
    expect(badge).to_be_visible()
    unread = int(badge.inner_text())
    assert unread >= 1
    page.get_by_test_id("notifications-bell").click()
    expect(page.get_by_test_id("notifications-panel")).to_be_visible()
    expect(page.get_by_test_id("notification-item").first).to_contain_text("Test notification")
    page.screenshot(path=str(SCREENSHOTS / "notifications-bell.png"))
    page.get_by_test_id("notifications-mark-read").click()
    expect(badge).to_be_hidden()

    page.get_by_test_id("notifications-settings").click()
    page.wait_for_url("**/settings/notifications/")
    expect(page.get_by_test_id("kind-mention-email")).to_be_checked()
    page.get_by_test_id("kind-mention-email").uncheck()
    page.get_by_test_id("conversation-level").first.select_option("mentions")
    page.get_by_test_id("quiet-on").check()
    page.get_by_test_id("quiet-start").fill("21:30")
    page.get_by_test_id("quiet-end").fill("06:45")
    page.get_by_test_id("quiet-timezone").fill("Mars/Olympus")
    page.get_by_test_id("settings-save").click()
    expect(page.get_by_test_id("settings-status")).to_contain_text("quiet_hours.timezone")
    page.get_by_test_id("quiet-timezone").fill("Europe/Lisbon")
    page.get_by_test_id("settings-save").click()
    expect(page.get_by_test_id("settings-status")).to_have_text("Saved.")
    page.get_by_role("button", name="8 hours").click()
    expect(page.get_by_test_id("mute-state")).to_contain_text("muted until")
    page.get_by_test_id("push-test").click()
    expect(page.get_by_test_id("settings-status")).to_contain_text("Test notification added to your list")
    expect(badge).to_have_text("1")
    page.screenshot(path=str(SCREENSHOTS / "notification-settings.png"), full_page=True)

    page.reload()
    expect(page.get_by_test_id("kind-mention-email")).not_to_be_checked()
    expect(page.get_by_test_id("conversation-level").first).to_have_value("mentions")
    expect(page.get_by_test_id("quiet-on")).to_be_checked()
    expect(page.get_by_test_id("quiet-start")).to_have_value("21:30")
    expect(page.get_by_test_id("quiet-timezone")).to_have_value("Europe/Lisbon")
    with api(stack, "carol") as carol:
        saved = carol.get("/api/me/notification-settings/").json()
    assert saved["quiet_hours"] == {"start": "21:30", "end": "06:45", "timezone": "Europe/Lisbon"}
    assert saved["kinds"]["mention"]["email"] is False
    assert saved["muted_until"] is not None
    assert [e for e in page_errors.items if "400" not in e] == []  # the refused save is the one expected error
