"""Three people in one conversation, in headless Chromium against the real stack (`manage.py serve`
with the agent worker and the notifications worker, PostgreSQL, Redis):

- alice owns a team conversation with the assistant (agent_mode `auto`), bob is a member, carol a
  viewer; all three have it open.
- bob writes to alice without addressing the assistant: alice's bell counts a mention, nobody else's
  does, and no run starts.
- bob asks the assistant to invite dave: the run asks for an owner's approval; all three pages show
  the request, only alice's card can decide; alice is notified, narrows dave's role and approves
  while carol watches; the tool runs with alice's arguments and the assistant answers.
- The three transcripts end identical, approval cards included.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import PageErrors, wait_live
from tests.support.servers import Stack, login

pytestmark = [pytest.mark.e2e]

RUN_TIMEOUT_MS = 30_000
SCREENSHOTS = Path("/tmp")

# What a page shows of the conversation, in order: messages, runs (their steps, tool calls, approval
# cards and answer). Times are left out: each page formats them in its own clock.
TRANSCRIPT = """
() => Array.from(document.querySelectorAll(
  '[data-testid=transcript] > [data-testid=message], [data-testid=transcript] > [data-testid=agent-run]'
)).map((node) => {
  const texts = (selector) => Array.from(node.querySelectorAll(selector), (n) => n.textContent);
  if (node.dataset.testid === 'message') {
    return { kind: 'message', seq: node.dataset.seq, author: texts('[data-testid=message-author]')[0],
             text: texts('[data-testid=message-text]')[0] };
  }
  return {
    kind: 'run', run: node.dataset.runId, status: node.dataset.status,
    thinking: texts('[data-testid=thinking]'),
    approvals: Array.from(node.querySelectorAll('[data-testid=approval-card]'), (card) => ({
      call: card.dataset.callId, tool: card.dataset.tool, state: card.dataset.state,
      reason: card.querySelector('[data-testid=approval-reason]').textContent,
      arguments: JSON.parse(card.querySelector('[data-testid=approval-arguments]').value),
      status: card.querySelector('[data-testid=approval-status]').textContent,
    })),
    tools: Array.from(node.querySelectorAll('[data-testid=tool-call]'), (call) => ({
      tool: call.dataset.tool, status: call.dataset.status,
      arguments: JSON.parse(call.querySelector('[data-testid=tool-arguments]').textContent),
      result: call.querySelector('[data-testid=tool-result]').textContent,
    })),
    answer: node.querySelector('[data-testid=agent-answer]').textContent,
  };
})
"""


@pytest.fixture(scope="module")
def team(stack: Stack) -> dict[str, str]:
    """Over REST, as alice: a workspace with bob, carol and dave (all seeded demo users), and a
    conversation in it with the assistant, bob as member and carol as viewer (dave is in the
    workspace, not the conversation)."""
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {login(stack, 'alice')}"}) as alice:
        workspace = alice.post("/api/workspaces/", json={"name": "Collaboration team"})
        workspace.raise_for_status()
        workspace_id = workspace.json()["id"]
        for username in ("bob", "carol", "dave"):
            added = alice.post(
                f"/api/workspaces/{workspace_id}/members/", json={"username": username, "role": "member"}
            )
            added.raise_for_status()
        created = alice.post("/api/conversations/", json={"title": "Team room", "workspace": workspace_id})
        created.raise_for_status()
        conversation = created.json()
        assert conversation["agent_mode"] == "auto"
        for username, role in (("bob", "member"), ("carol", "viewer")):
            alice.post(
                f"/api/conversations/{conversation['id']}/members/", json={"username": username, "role": role}
            ).raise_for_status()
    return {"conversation": conversation["id"]}


def open_room(page: Any, login: Callable[[Any, str], None], username: str, conversation: str) -> Any:
    login(page, username)
    page.goto(f"/c/{conversation}/")
    wait_live(page)
    return page


def send(page: Any, text: str) -> None:
    composer = page.get_by_test_id("composer")
    composer.fill(text)
    composer.press("Enter")
    expect(composer).to_have_value("")


def messages(page: Any) -> Any:
    return page.get_by_test_id("transcript").get_by_test_id("message")


def runs(page: Any) -> Any:
    return page.get_by_test_id("transcript").get_by_test_id("agent-run")


def unread(page: Any) -> int:
    badge = page.get_by_test_id("notifications-unread")
    return int(badge.inner_text()) if badge.is_visible() else 0


def test_three_people_mention_ask_approve_and_end_with_the_same_transcript(
    team: dict[str, str],
    new_page: Callable[[str], Any],
    login: Callable[[Any, str], None],
    page_errors: PageErrors,
) -> None:
    conversation = team["conversation"]
    alice, bob, carol = (open_room(new_page(name), login, name, conversation) for name in ("alice", "bob", "carol"))
    pages = {"alice": alice, "bob": bob, "carol": carol}
    expect(carol.get_by_test_id("composer")).to_be_disabled()
    unread_before = {name: unread(page) for name, page in pages.items()}

    # 1. A mention without the assistant: alice is notified, no run starts anywhere.
    send(bob, "@alice can you add dave to the room?")
    for page in pages.values():
        expect(messages(page).last.get_by_test_id("message-text")).to_have_text("@alice can you add dave to the room?")
    expect(alice.get_by_test_id("notifications-unread")).to_have_text(str(unread_before["alice"] + 1))
    alice.get_by_test_id("notifications-bell").click()
    expect(alice.get_by_test_id("notification-item").first).to_contain_text("bob")
    assert unread(bob) == unread_before["bob"]  # never the author
    alice.get_by_test_id("notifications-bell").click()

    # 2. Addressed, the assistant answers: a run that needs an owner's approval.
    send(bob, "@assistant please invite @dave")
    for page in pages.values():
        expect(runs(page)).to_have_count(1, timeout=RUN_TIMEOUT_MS)  # one run: the mention above started none
        card = runs(page).first.get_by_test_id("approval-card")
        expect(card).to_have_attribute("data-state", "pending", timeout=RUN_TIMEOUT_MS)
        expect(card.get_by_test_id("approval-reason")).to_have_text("Add dave to this conversation as member.")
    # Only the owner can decide; the member who asked and the viewer watch.
    expect(alice.get_by_test_id("approval-approve")).to_be_visible()
    for page in (bob, carol):
        expect(page.get_by_test_id("approval-approve")).to_be_hidden()
        expect(page.get_by_test_id("approval-who")).to_contain_text("Waiting for an owner")
    # The owner is told (urgent), and the viewer is not.
    expect(alice.get_by_test_id("notifications-unread")).to_have_text(str(unread_before["alice"] + 2))
    assert (unread(bob), unread(carol)) == (unread_before["bob"], unread_before["carol"])
    carol.screenshot(path=str(SCREENSHOTS / "collaboration-viewer-waiting.png"))

    # alice narrows dave's role to viewer and approves, while carol watches.
    alice.get_by_test_id("approval-arguments").fill('{"username": "dave", "role": "viewer"}')
    alice.get_by_test_id("approval-approve").click()
    for page in pages.values():
        run = runs(page).first
        expect(run.get_by_test_id("approval-card")).to_have_attribute("data-state", "approved")
        expect(run.get_by_test_id("approval-status")).to_have_text("Approved by alice (with edited arguments).")
        expect(run).to_have_attribute("data-status", "completed", timeout=RUN_TIMEOUT_MS)
        expect(run.get_by_test_id("agent-answer")).to_have_text("Done: dave is now in this conversation as viewer.")
    tool = carol.get_by_test_id("tool-call").first
    expect(tool).to_have_attribute("data-tool", "invite_member")
    expect(tool).to_have_attribute("data-status", "ok")
    expect(tool.get_by_test_id("tool-arguments")).to_contain_text('"viewer"')
    carol.screenshot(path=str(SCREENSHOTS / "collaboration-viewer-done.png"))
    alice.screenshot(path=str(SCREENSHOTS / "collaboration-owner-done.png"))

    # 3. Every page shows the same conversation.
    transcripts = {name: page.evaluate(TRANSCRIPT) for name, page in pages.items()}
    assert transcripts["alice"] == transcripts["bob"] == transcripts["carol"], transcripts
    assert [entry["kind"] for entry in transcripts["alice"]] == ["message", "message", "run"]
    assert transcripts["alice"][2]["approvals"][0]["arguments"] == {"username": "dave", "role": "viewer"}
    assert not page_errors.items, "\n".join(page_errors.items)
