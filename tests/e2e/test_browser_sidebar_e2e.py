"""The conversation sidebar, the conversation menu and the error pages in headless Chromium, on the
real stack (docs/protocol.md §7 REST, §9 notifications, §10 unread):

1. The sidebar lists the user's conversations newest activity first with unread badges; a search
   filters by title; a mention in another conversation moves it to the top with its badge, live,
   and the tab's title and favicon carry the total.
2. "New conversation" with and without the assistant creates it and opens it; the sidebar lists it.
3. An owner invites from the Members dialog (the invited user sees it in their sidebar); a member
   sees the list read only, and the server refuses a member's invite (403).
4. Rename, archive and delete from the conversation menu; join an open conversation of a workspace
   from the workspace switcher.
5. At 390×844 the sidebar is a drawer (menu button, Esc, focus kept inside) and nothing scrolls sideways.
6. The 404 and 500 pages are the product's, with a link home.
Screenshots (desktop and phone, light and dark) go to tests/e2e/artifacts/.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.template.loader import render_to_string
from django.test import RequestFactory, override_settings
from django.views.defaults import server_error
from playwright.sync_api import expect
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from tests.e2e.conftest import PageErrors, wait_live
from tests.support.servers import Stack, shared_conversation
from tests.support.servers import login as token_for

pytestmark = [pytest.mark.e2e]

ARTIFACTS = Path(__file__).parent / "artifacts"
PHONE = {"width": 390, "height": 844}
FOCUS_IN_SIDEBAR = "() => document.querySelector('[data-testid=sidebar]').contains(document.activeElement)"
NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"
CSRF_FETCH = """
async ([method, path, body]) => {
  const csrf = document.querySelector('input[name=csrfmiddlewaretoken]').value;
  const response = await fetch(path, { method, credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', 'X-CSRFToken': csrf }, body: JSON.stringify(body) });
  return response.status;
}
"""


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Transitions finished at once: a shot right after a colour-scheme switch shows the new colours.
    page.screenshot(path=str(ARTIFACTS / f"sidebar-{name}.png"), animations="disabled")


def no_page_errors(errors: PageErrors, *refusals: int) -> None:
    """No JavaScript error; the browser's log line for an HTTP status the test provoked on purpose
    (the server's refusals, `refusals`) is not one."""
    expected = tuple(f"the server responded with a status of {code} " for code in refusals)
    left = [item for item in errors.items if not any(text in item for text in expected)]
    assert not left, "\n".join(left)


def rest(stack: Stack, username: str) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {token_for(stack, username)}"})


def create(stack: Stack, username: str, title: str, **fields: Any) -> str:
    with rest(stack, username) as client:
        answer = client.post("/api/conversations/", json={"title": title, "agent": False, **fields})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])


def say(stack: Stack, username: str, conversation_id: str, text: str) -> None:
    """`username` sends `text` in the conversation over the socket, like another person's page."""
    token = token_for(stack, username)
    with connect(
        stack.ws_url(), subprotocols=[Subprotocol("chat.v1")], additional_headers={"Authorization": f"Bearer {token}"}
    ) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "welcome"
        command = {"type": "send", "id": "s1", "conversation": conversation_id, "client_msg_id": str(uuid.uuid4())}
        socket.send(json.dumps({**command, "text": text}))
        while True:
            frame = json.loads(socket.recv(timeout=10))
            if frame.get("type") == "reply" and frame.get("id") == "s1":
                assert frame["ok"], frame
                return


def sidebar_titles(page: Any) -> list[str]:
    return [str(t) for t in page.get_by_test_id("sidebar-item-title").all_text_contents()]


def item(page: Any, title: str) -> Any:
    return page.get_by_test_id("sidebar-item").filter(has=page.get_by_text(title, exact=True))


def open_menu(page: Any, action: str) -> None:
    page.get_by_test_id("chat-menu-button").click()
    page.get_by_test_id(f"chat-menu-{action}").click()


def test_sidebar_lists_by_activity_searches_and_moves_live(
    stack: Stack, new_page: Callable[[str], Any], login: Callable[[Any, str], None], page_errors: PageErrors
) -> None:
    alpha = shared_conversation(stack, token_for(stack, "alice"), "bob", title="Sidebar alpha")
    beta = shared_conversation(stack, token_for(stack, "alice"), "bob", title="Sidebar beta")
    gamma = create(stack, "alice", "Sidebar gamma")
    say(stack, "bob", alpha, "the alpha numbers are in")

    page = new_page("alice")
    login(page, "alice")
    page.goto(f"/c/{gamma}/")
    wait_live(page)
    with rest(stack, "alice") as client:
        expected = [c["title"] for c in client.get("/api/conversations/").json()]
    assert expected[:2] == ["Sidebar alpha", "Sidebar gamma"], expected
    expect(page.get_by_test_id("sidebar-item-title")).to_have_count(len(expected))
    assert sidebar_titles(page) == expected
    expect(item(page, "Sidebar gamma")).to_have_attribute("aria-current", "page")
    expect(item(page, "Sidebar alpha").get_by_test_id("sidebar-unread")).to_have_text("1")
    expect(item(page, "Sidebar alpha").get_by_test_id("sidebar-item-preview")).to_contain_text(
        "bob: the alpha numbers are in"
    )
    expect(item(page, "Sidebar beta").get_by_test_id("sidebar-unread")).to_be_hidden()
    expect(page).to_have_title(re.compile(r"^\(1\) Sidebar gamma · Chatcore$"))
    shot(page, "desktop-light")

    search = page.get_by_test_id("sidebar-search")
    search.fill("BETA")
    expect(page.get_by_test_id("sidebar-item-title")).to_have_text(["Sidebar beta"])
    search.fill("no such title")
    expect(page.get_by_test_id("sidebar-item")).to_have_count(0)
    expect(page.get_by_test_id("sidebar-empty")).to_be_visible()
    search.fill("")
    expect(page.get_by_test_id("sidebar-item-title")).to_have_count(len(expected))

    # A mention in beta reaches alice's socket as a notification: the sidebar refreshes on it.
    say(stack, "bob", beta, "@alice can you look at beta?")
    expect(page.get_by_test_id("sidebar-item-title").first).to_have_text("Sidebar beta", timeout=20_000)
    expect(item(page, "Sidebar beta").get_by_test_id("sidebar-unread")).to_have_text("1")
    expect(page).to_have_title(re.compile(r"^\(2\) Sidebar gamma"))
    expect(page.locator("link[rel=icon]")).to_have_attribute("data-unread", "2")
    assert page.locator("link[rel=icon]").get_attribute("href").startswith("data:image/png")
    page.emulate_media(color_scheme="dark")
    shot(page, "desktop-dark")

    # Opening beta reads it: its badge goes, on its own page, and the total follows.
    item(page, "Sidebar beta").click()
    page.wait_for_url(f"**/c/{beta}/")
    wait_live(page)
    expect(item(page, "Sidebar beta").get_by_test_id("sidebar-unread")).to_be_hidden()
    expect(page).to_have_title(re.compile(r"^\(1\) Sidebar beta"))
    no_page_errors(page_errors)


def test_new_conversation_dialog_with_and_without_the_assistant(
    new_page: Callable[[str], Any], login: Callable[[Any, str], None], page_errors: PageErrors
) -> None:
    page = new_page("carol")
    login(page, "carol")
    for title, agent in (("Planning without a bot", False), ("Ask the bot", True)):
        page.get_by_test_id("sidebar-new").click()
        dialog = page.get_by_test_id("new-conversation-dialog")
        expect(dialog).to_be_visible()
        expect(dialog.get_by_test_id("new-dialog-title")).to_be_focused()
        dialog.get_by_test_id("new-dialog-submit").click()
        expect(dialog.get_by_test_id("new-dialog-error")).to_have_text("Give the conversation a title.")
        dialog.get_by_test_id("new-dialog-title").fill(title)
        dialog.get_by_test_id("new-dialog-agent").set_checked(agent)
        if title == "Ask the bot":
            shot(page, "new-dialog")
        dialog.get_by_test_id("new-dialog-submit").click()
        page.wait_for_url(re.compile(r"/c/[0-9a-f-]+/$"))
        wait_live(page)
        expect(page.locator(".chat-header [data-testid=conversation-title]")).to_have_text(title)
        expect(page.locator(".chat-header .tag-agent")).to_have_count(1 if agent else 0)
        expect(item(page, title)).to_have_attribute("aria-current", "page")
        expect(page.get_by_test_id("sidebar-item-title").first).to_have_text(title)
    no_page_errors(page_errors)


def test_owner_invites_members_see_the_list_read_only(
    stack: Stack, new_page: Callable[[str], Any], login: Callable[[Any, str], None], page_errors: PageErrors
) -> None:
    room = shared_conversation(stack, token_for(stack, "alice"), "bob", title="Invite room")
    alice = new_page("alice")
    login(alice, "alice")
    alice.goto(f"/c/{room}/")
    wait_live(alice)
    open_menu(alice, "members")
    dialog = alice.get_by_test_id("members-dialog")
    expect(dialog.get_by_test_id("member-row")).to_have_count(2)
    dialog.get_by_test_id("invite-username").fill("no-such-user-here")
    dialog.get_by_test_id("invite-submit").click()
    expect(dialog.get_by_test_id("members-error")).to_be_visible()
    expect(dialog.get_by_test_id("members-error")).not_to_be_empty()
    dialog.get_by_test_id("invite-username").fill("dave")
    dialog.get_by_test_id("invite-role").select_option("viewer")
    dialog.get_by_test_id("invite-submit").click()
    dave_row = dialog.locator("[data-testid=member-row][data-username=dave]")
    expect(dave_row).to_have_attribute("data-role", "viewer")
    expect(dialog.get_by_test_id("members-error")).to_be_hidden()
    # The last owner cannot step down: the server's refusal shows in the dialog.
    alice_row = dialog.locator("[data-testid=member-row][data-username=alice]")
    alice_row.get_by_test_id("member-role-select").select_option("member")
    expect(dialog.get_by_test_id("members-error")).to_be_visible()
    expect(alice_row.get_by_test_id("member-role-select")).to_have_value("owner")
    shot(alice, "members-owner")
    dialog.get_by_test_id("members-close").click()

    dave = new_page("dave")
    login(dave, "dave")
    expect(item(dave, "Invite room")).to_have_count(1)

    bob = new_page("bob")
    login(bob, "bob")
    bob.goto(f"/c/{room}/")
    wait_live(bob)
    open_menu(bob, "members")
    members = bob.get_by_test_id("members-dialog")
    expect(members.get_by_test_id("member-row")).to_have_count(3)
    expect(members.get_by_test_id("invite-form")).to_be_hidden()
    expect(members.get_by_test_id("member-role-select")).to_have_count(0)
    expect(members.get_by_test_id("member-remove")).to_have_count(0)
    invite = {"username": "carol", "role": "member"}
    status = bob.evaluate(CSRF_FETCH, ["POST", f"/api/conversations/{room}/members/", invite])
    assert status == 403
    # A member leaves from the menu: back on the list, the conversation is no longer in his sidebar.
    members.get_by_test_id("members-close").click()
    open_menu(bob, "leave")
    bob.get_by_test_id("confirm-submit").click()
    bob.wait_for_url(re.compile(r"/$"))
    expect(bob.get_by_test_id("sidebar-item").first).to_be_visible()
    expect(item(bob, "Invite room")).to_have_count(0)
    no_page_errors(page_errors, 404, 409, 403)  # unknown user, last owner, a member's invite


def test_rename_archive_and_delete_from_the_menu(
    stack: Stack, new_page: Callable[[str], Any], login: Callable[[Any, str], None], page_errors: PageErrors
) -> None:
    room = shared_conversation(stack, token_for(stack, "alice"), "bob", title="Rename me")
    bob = new_page("bob")
    login(bob, "bob")
    bob.goto(f"/c/{room}/")
    wait_live(bob)
    page = new_page("alice")
    login(page, "alice")
    page.goto(f"/c/{room}/")
    wait_live(page)

    open_menu(page, "rename")
    page.get_by_test_id("rename-title").fill("Renamed room")
    page.get_by_test_id("rename-submit").click()
    expect(page.get_by_test_id("rename-dialog")).to_be_hidden()
    expect(page.locator(".chat-header [data-testid=conversation-title]")).to_have_text("Renamed room")
    expect(item(page, "Renamed room")).to_have_count(1)
    expect(page).to_have_title(re.compile(r"Renamed room · Chatcore$"))
    # bob sees it live: the header, the tab and his sidebar (the conversation_updated event).
    expect(bob.locator(".chat-header [data-testid=conversation-title]")).to_have_text("Renamed room")
    expect(bob).to_have_title(re.compile(r"Renamed room · Chatcore$"))
    expect(item(bob, "Renamed room")).to_have_count(1)

    open_menu(page, "archive")
    expect(page.get_by_test_id("chat-menu-notice")).to_contain_text("Archived")
    expect(item(page, "Renamed room")).to_have_count(0)
    page.get_by_test_id("sidebar-archived").click()
    expect(item(page, "Renamed room")).to_have_count(1)
    page.get_by_test_id("chat-menu-button").click()
    expect(page.get_by_test_id("chat-menu-archive")).to_have_text("Unarchive")
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("chat-menu")).to_be_hidden()

    open_menu(page, "delete")
    confirm = page.get_by_test_id("confirm-dialog")
    expect(confirm).to_be_visible()
    shot(page, "confirm-delete")
    confirm.get_by_test_id("confirm-submit").click()
    page.wait_for_url(re.compile(r"/$"))
    with rest(stack, "alice") as client:
        assert client.get(f"/api/conversations/{room}/").status_code == 404
    no_page_errors(page_errors)


def test_join_an_open_conversation_from_the_workspace_switcher(
    stack: Stack, new_page: Callable[[str], Any], login: Callable[[Any, str], None], page_errors: PageErrors
) -> None:
    with rest(stack, "alice") as client:
        team = next(w for w in client.get("/api/workspaces/").json() if w["name"] == "Demo team")
    room = create(stack, "alice", "Open standup", workspace=team["id"], visibility="open")

    page = new_page("dave")
    login(page, "dave")
    page.get_by_test_id("sidebar-workspace").select_option(label="Demo team")
    open_section = page.get_by_test_id("sidebar-open")
    expect(open_section.get_by_test_id("sidebar-open-workspace")).to_have_text("Demo team")
    row = open_section.locator(f"[data-testid=sidebar-open-item][data-conversation-id='{room}']")
    expect(row).to_contain_text("Open standup")
    shot(page, "workspace-open")
    row.get_by_test_id("sidebar-join").click()
    page.wait_for_url(f"**/c/{room}/")
    wait_live(page)
    expect(page.get_by_test_id("role")).to_have_text("Member")
    # The switcher is remembered: still on the team workspace, and the joined one is listed.
    expect(page.get_by_test_id("sidebar-workspace")).to_have_value(team["id"])
    expect(item(page, "Open standup")).to_have_attribute("aria-current", "page")
    expect(page.locator(f"[data-testid=sidebar-open-item][data-conversation-id='{room}']")).to_have_count(0)
    no_page_errors(page_errors)


def test_phone_drawer_and_no_sideways_scroll(
    browser: Any, stack: Stack, login: Callable[[Any, str], None], page_errors: PageErrors
) -> None:
    context = browser.new_context(base_url=stack.base_url, viewport=PHONE, has_touch=True, is_mobile=True)
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        page_errors.attach(page, "phone")
        login(page, "alice")
        assert page.evaluate(NO_SIDEWAYS_SCROLL)
        sidebar = page.get_by_test_id("sidebar")
        toggle = page.get_by_test_id("sidebar-toggle")
        expect(sidebar).not_to_be_in_viewport()
        shot(page, "phone-list")

        page.get_by_test_id("conversation-link").first.click()
        wait_live(page)
        assert page.evaluate(NO_SIDEWAYS_SCROLL)
        shot(page, "phone-chat")

        toggle.click()
        expect(sidebar).to_be_in_viewport()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(page.get_by_test_id("sidebar-search")).to_be_focused()
        for _ in range(25):  # Tab never leaves the open drawer
            page.keyboard.press("Tab")
            assert page.evaluate(
                "() => document.querySelector('[data-testid=sidebar]').contains(document.activeElement)"
            )
        assert page.evaluate(NO_SIDEWAYS_SCROLL)
        shot(page, "phone-drawer-light")
        page.emulate_media(color_scheme="dark")
        shot(page, "phone-drawer-dark")
        page.keyboard.press("Escape")
        expect(sidebar).not_to_be_in_viewport()
        expect(toggle).to_be_focused()
        expect(toggle).to_have_attribute("aria-expanded", "false")

        toggle.press("Enter")  # keyboard opens it too; the backdrop closes it
        expect(sidebar).to_be_in_viewport()
        page.get_by_test_id("sidebar-backdrop").click(position={"x": 380, "y": 400})
        expect(sidebar).not_to_be_in_viewport()
        shot(page, "phone-chat-dark")
    finally:
        context.close()
    no_page_errors(page_errors)


def test_404_page_is_styled_with_a_link_home(new_page: Callable[[str], Any], login: Callable[[Any, str], None]) -> None:
    page = new_page("anonymous")
    response = page.goto("/no/such/page/")
    assert response is not None
    assert response.status == 404
    expect(page.get_by_test_id("error-page")).to_be_visible()
    expect(page.get_by_test_id("error-home")).to_have_attribute("href", "/")
    # The product's stylesheet applies (the CSP allows no inline style: it is chat.css + sidebar.css).
    assert page.evaluate("() => getComputedStyle(document.querySelector('.error-code')).fontSize") == "64px"

    login(page, "bob")
    response = page.goto(f"/c/{uuid.uuid4()}/")  # a conversation that does not exist, signed in
    assert response is not None
    assert response.status == 404
    expect(page.get_by_test_id("error-home")).to_be_visible()
    expect(page.get_by_test_id("current-user")).to_have_text("bob")
    shot(page, "404")


def test_500_page_renders_without_a_request_or_the_database() -> None:
    html = render_to_string("500.html")  # no request, no context processor
    assert 'data-testid="error-home"' in html
    assert 'href="/"' in html
    assert "chat/chat.css" in html
    assert "{{" not in html
    assert "{%" not in html
    with override_settings(DEBUG=False):
        response = server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    assert b'data-testid="error-page"' in response.content
