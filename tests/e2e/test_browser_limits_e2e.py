"""What a person sees when a tier limit is hit, in headless Chromium on the real stack:
a tab beyond the plan's connection limit says so and connects by itself once another tab closes;
a message sent too fast says it is being retried instead of failing or vanishing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import TOKEN_DELAY_MS, wait_live
from tests.support.servers import Stack, running_stack

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # bob is on the free tier (one socket), alice on pro (two messages a minute)
    tiers = {"free": {"connections": 1}, "pro": {"rates": {"messages": [2, 60]}}}
    with running_stack(
        env_overrides={"AGENT_OFFLINE_TOKEN_DELAY_MS": TOKEN_DELAY_MS, "CHAT_TIERS_JSON": json.dumps(tiers)}
    ) as running:
        yield running


@pytest.mark.timeout(180)  # waits up to 45 s for the page to reconnect, after the module's browser setup
def test_tab_over_the_connection_limit_says_so_and_recovers_when_another_closes(
    new_page: Callable[[str], Any], open_demo: Callable[[Any, str], str], login: Callable[[Any, str], None]
) -> None:
    from playwright.sync_api import expect

    first = new_page("first tab")
    conversation = open_demo(first, "bob")
    second = new_page("second tab")
    login(second, "bob")
    second.goto(f"/c/{conversation}/")
    state = second.get_by_test_id("connection-state")
    expect(state).to_have_attribute("data-state", "reconnecting")
    expect(state).to_contain_text("Too many open tabs for your plan")

    first.close()  # its slot is released as its socket closes
    wait_live(second, timeout=45_000)  # the second tab's next attempt (≥ 10 s later) gets in


def test_sending_too_fast_is_shown_as_retrying_not_lost(
    new_page: Callable[[str], Any], open_demo: Callable[[Any, str], str]
) -> None:
    from playwright.sync_api import expect

    page = new_page("alice")
    open_demo(page, "alice")
    composer = page.get_by_test_id("composer")
    for text in ("first", "second", "third, one too many"):
        composer.fill(text)
        composer.press("Enter")
        expect(composer).to_have_value("")
    pending = page.get_by_test_id("pending-message")
    expect(pending).to_have_count(1)
    expect(pending).to_have_attribute("data-state", "retrying")
    expect(pending).to_contain_text("Sending too fast")
    expect(pending).to_contain_text("third, one too many")
