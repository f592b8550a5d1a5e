"""Two people and the assistant in the browser (docs/protocol.md §8, §10), on the demo's team room
(`auto` mode, alice, bob and carol):

1. A message that does not address the assistant starts no run; one that does (picked from the
   mention autocomplete) does, and the assistant answers.
2. A message waiting for bob shows as an unread badge on his conversation list and in the tab title;
   once he has seen it, the badge goes, and alice sees "Seen by bob" and "Read" under her message.
3. A draft typed in one of bob's tabs appears in his other tab (and after a reload), nobody else's;
   while the assistant answers, both see who is watching the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import PageErrors, wait_live

pytestmark = [pytest.mark.e2e]

TEAM_TITLE = "Demo: team room"
RUN_TIMEOUT_MS = 30_000
# Screenshots to look at after a run, outside the repository.
SHOTS = Path(os.environ.get("E2E_LOG_DIR", "/tmp")) / "collaboration-screenshots"


def open_team_room(page: Any, login: Callable[[Any, str], None], username: str) -> str:
    login(page, username)
    link = page.get_by_test_id("conversation-link").filter(has_text=TEAM_TITLE)
    expect(link).to_have_count(1)
    conversation_id = str(link.get_attribute("data-conversation-id"))
    link.click()
    page.wait_for_url(f"**/c/{conversation_id}/")
    wait_live(page)
    return conversation_id


def send(page: Any, text: str) -> None:
    composer = page.get_by_test_id("composer")
    composer.fill(text)
    composer.press("Enter")
    expect(composer).to_have_value("")


def reply_for(page: Any, index: int) -> dict[str, Any]:
    """What the server answered the page's `index`-th send (window.__chat.sendReplies, in order)."""
    page.wait_for_function("(n) => window.__chat.sendReplies.length > n", arg=index)
    return dict(page.evaluate("(n) => window.__chat.sendReplies[n]", index))


def no_page_errors(errors: PageErrors) -> None:
    assert not errors.items, "\n".join(errors.items)


def test_in_auto_mode_only_a_message_to_the_assistant_starts_a_run(
    new_page: Callable[[str], Any], login: Callable[[Any, str], None], page_errors: PageErrors
) -> None:
    alice = new_page("alice")
    bob = new_page("bob")
    open_team_room(alice, login, "alice")
    open_team_room(bob, login, "bob")
    expect(alice.get_by_test_id("agent-mode")).to_have_value("auto")  # the owner's control
    expect(bob.get_by_test_id("agent-mode-label")).to_have_attribute("data-mode", "auto")
    expect(alice.get_by_test_id("composer")).to_have_attribute("placeholder", re.compile("@assistant"))

    send(alice, "hey bob, are you there?")
    expect(bob.get_by_test_id("message-text").filter(has_text="hey bob, are you there?")).to_have_count(1)
    assert reply_for(alice, 0)["run_id"] is None

    # The assistant, picked from the autocomplete: "@ass" + Enter completes the mention.
    composer = alice.get_by_test_id("composer")
    composer.click()
    composer.press_sequentially("@ass")
    option = alice.get_by_test_id("mention-option").filter(has_text="@assistant")
    expect(option).to_have_count(1)
    composer.press("Enter")
    expect(composer).to_have_value("@assistant ")
    composer.press_sequentially("what is 6 * 7?")
    composer.press("Enter")
    expect(composer).to_have_value("")
    asked = reply_for(alice, 1)
    assert asked["run_id"]
    run = bob.get_by_test_id("agent-run")
    expect(run).to_have_count(1)  # exactly one run: none for "hey bob"
    expect(run).to_have_attribute("data-run-id", asked["run_id"])
    expect(run).to_have_attribute("data-status", "completed", timeout=RUN_TIMEOUT_MS)
    expect(alice.get_by_test_id("agent-run")).to_have_count(1)
    mention = alice.get_by_test_id("message-text").filter(has_text="what is 6 * 7?").locator(".mention")
    expect(mention).to_have_text("@assistant")
    SHOTS.mkdir(parents=True, exist_ok=True)
    alice.screenshot(path=str(SHOTS / "auto-mode-alice.png"))
    no_page_errors(page_errors)


def test_unread_badge_title_and_seen_by(
    new_page: Callable[[str], Any], login: Callable[[Any, str], None], page_errors: PageErrors
) -> None:
    alice = new_page("alice")
    bob = new_page("bob")
    open_team_room(alice, login, "alice")
    login(bob, "bob")  # bob is on his conversation list
    link = bob.get_by_test_id("conversation-link").filter(has_text=TEAM_TITLE)
    badge = link.get_by_test_id("unread-badge")
    # Whatever earlier tests left unread: bob reads it first, so the count below is this test's.
    link.click()
    wait_live(bob)
    bob.wait_for_function("() => window.__chat.unread === 0")
    bob.go_back()
    bob.evaluate("() => window.dispatchEvent(new Event('focus'))")
    expect(badge).to_be_hidden()

    send(alice, "@bob the launch checklist is ready")
    expect(alice.get_by_test_id("message-text").filter(has_text="the launch checklist is ready")).to_have_count(1)
    # The list refreshes when its tab gets the focus (and every few seconds).
    bob.evaluate("() => window.dispatchEvent(new Event('focus'))")
    expect(badge).to_have_text("1")
    expect(bob).to_have_title(re.compile(r"^\(1\) "))
    expect(link.get_by_test_id("conversation-preview")).to_contain_text("the launch checklist is ready")
    SHOTS.mkdir(parents=True, exist_ok=True)
    bob.screenshot(path=str(SHOTS / "unread-badge-bob.png"))

    # Delivery before bob reads: he has no socket on the conversation, so not delivered to him.
    delivery = alice.get_by_test_id("delivery-state")
    expect(delivery).to_have_attribute("data-read", "0")

    link.click()
    wait_live(bob)
    mention = bob.get_by_test_id("message").filter(has_text="the launch checklist is ready")
    expect(mention).to_have_class(re.compile("msg-mentions-me"))
    bob.wait_for_function("() => window.__chat.unread === 0")
    expect(bob).not_to_have_title(re.compile(r"^\(\d+\) "))
    seen = alice.get_by_test_id("message").filter(has_text="the launch checklist is ready").get_by_test_id("seen-by")
    expect(seen).to_have_attribute("data-users", re.compile(r"(^|,)bob(,|$)"))
    expect(delivery).not_to_have_attribute("data-read", "0")
    alice.screenshot(path=str(SHOTS / "seen-by-alice.png"))
    bob.go_back()
    bob.evaluate("() => window.dispatchEvent(new Event('focus'))")
    expect(badge).to_be_hidden()
    no_page_errors(page_errors)


def test_drafts_follow_bob_to_his_other_tab_and_everyone_sees_who_watches_a_run(
    new_page: Callable[[str], Any], login: Callable[[Any, str], None], page_errors: PageErrors
) -> None:
    alice = new_page("alice")
    bob = new_page("bob")
    open_team_room(alice, login, "alice")
    conversation_id = open_team_room(bob, login, "bob")
    bob_again = bob.context.new_page()  # a second tab of the same session
    page_errors.attach(bob_again, "bob-tab-2")
    bob_again.goto(f"/c/{conversation_id}/")
    wait_live(bob_again)

    bob.get_by_test_id("composer").fill("a half-written thought about the launch")
    expect(bob_again.get_by_test_id("composer")).to_have_value("a half-written thought about the launch")
    bob_again.reload()  # a device that opens the conversation later gets it from subscribe
    wait_live(bob_again)
    expect(bob_again.get_by_test_id("composer")).to_have_value("a half-written thought about the launch")
    expect(alice.get_by_test_id("composer")).to_have_value("")  # drafts are nobody else's
    bob_again.get_by_test_id("composer").press("Enter")  # sent from the other tab: the draft is gone
    expect(bob.get_by_test_id("composer")).to_have_value("")

    # Co-viewing: while the assistant answers, every member sees who is watching.
    send(alice, "@assistant tell me a story about a launch")
    run = bob.get_by_test_id("agent-run").last
    expect(run).to_have_attribute("data-status", "running")
    expect(run.get_by_test_id("run-watchers")).to_have_attribute("data-users", "alice,bob")
    expect(alice.get_by_test_id("agent-run").last.get_by_test_id("run-watchers")).to_have_attribute(
        "data-users", "alice,bob"
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    bob.screenshot(path=str(SHOTS / "watchers-bob.png"))
    expect(run).to_have_attribute("data-status", "completed", timeout=RUN_TIMEOUT_MS)
    expect(run.get_by_test_id("run-watchers")).to_be_hidden()
    no_page_errors(page_errors)
