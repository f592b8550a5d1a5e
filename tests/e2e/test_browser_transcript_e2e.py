"""The conversation page's transcript and composer in headless Chromium, on the real stack:

1. markdown and highlighted code with a working Copy button, while hostile HTML and javascript: links
   in a message stay inert text;
2. the first load of a long conversation (a 2,000-word answer streamed as 400 chunks, seeded with the
   services) shows the last 30 messages with the answer's question, links the answer to it, and
   loads the older ones when scrolled to the top;
3. edit, delete, regenerate and feedback through the page, seen live by another member;
4. typing fast never produces an error toast;
5. the phone layout (390×844) never scrolls sideways, light and dark.
Screenshots land in tests/e2e/artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import PageErrors, wait_live
from tests.support.servers import Stack, shared_conversation
from tests.support.servers import login as token_for

pytestmark = [pytest.mark.e2e]

ARTIFACTS = Path(__file__).parent / "artifacts"
RUN_TIMEOUT_MS = 30_000


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"transcript-{name}.png"), animations="disabled")


def both_schemes(page: Any, name: str) -> None:
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        shot(page, f"{name}-{scheme}")
    page.emulate_media(color_scheme="light")


def open_conversation(page: Any, login: Callable[[Any, str], None], username: str, conversation_id: str) -> None:
    login(page, username)
    page.goto(f"/c/{conversation_id}/")
    wait_live(page)


def send(page: Any, text: str) -> None:
    composer = page.get_by_test_id("composer")
    composer.fill(text)
    composer.press("Enter")
    expect(composer).to_have_value("")


def transcript_messages(page: Any) -> Any:
    return page.get_by_test_id("transcript").get_by_test_id("message")


def no_page_errors(errors: PageErrors) -> None:
    assert not errors.items, "\n".join(errors.items)


@pytest.fixture
def conversation(stack: Stack) -> str:
    """A fresh conversation of alice (owner) and bob (member), without the assistant."""
    return shared_conversation(stack, token_for(stack, "alice"), "bob", title="Transcript e2e")


MARKDOWN = """Here is **bold**, `inline code` and [a site](https://example.com/docs).

```python
def greet(name):
    return f"hello {name}"
```"""

HOSTILE = (
    '<img src=x onerror="window.__xss = 1"> <script>window.__xss = 2</script> '
    '[click me](javascript:window.__xss=3) <a href="javascript:window.__xss=4">raw</a> '
    'javascript:window.__xss=5 <iframe src="javascript:window.__xss=6"></iframe>'
)


def test_markdown_and_code_render_with_copy_while_hostile_html_stays_inert(
    new_page: Callable[[str], Any],
    login: Callable[[Any, str], None],
    conversation: str,
    stack: Stack,
    page_errors: PageErrors,
) -> None:
    page = new_page("alice")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.base_url)
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    open_conversation(page, login, "alice", conversation)
    expect(page.get_by_test_id("composer")).to_be_focused()  # the composer is focused on open

    send(page, MARKDOWN)
    message = transcript_messages(page).last
    text = message.get_by_test_id("message-text")
    expect(text.locator("strong")).to_have_text("bold")
    expect(text.locator(":not(pre) > code")).to_have_text("inline code")
    link = text.locator("a", has_text="a site")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    block = text.get_by_test_id("codeblock")
    expect(block.locator("code.hljs .hljs-keyword").first).to_have_text("def")  # highlighted, by class
    block.get_by_test_id("copy-code").click()
    expect(block.get_by_test_id("copy-code")).to_have_text("Copied")
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied.strip() == 'def greet(name):\n    return f"hello {name}"'

    send(page, HOSTILE)
    hostile = transcript_messages(page).last.get_by_test_id("message-text")
    expect(hostile).to_contain_text("<img src=x onerror=")
    expect(hostile).to_contain_text("<script>window.__xss = 2</script>")
    transcript = page.get_by_test_id("transcript")
    expect(transcript.locator("img, script, iframe")).to_have_count(0)
    expect(transcript.locator("a[href^='javascript' i]")).to_have_count(0)
    # The markdown link to javascript: is not a link; clicking its text does nothing.
    expect(hostile.locator("a")).to_have_count(0)
    hostile.get_by_text("click me", exact=False).click()
    page.evaluate("() => window.chatHooks.request({ type: 'ping' })")  # a round trip for anything to run
    assert page.evaluate("() => window.__xss") is None
    assert dialogs == []
    both_schemes(page, "markdown-desktop")
    no_page_errors(page_errors)


SEED = """
from django.db import transaction
from django.contrib.auth import get_user_model
from agents.models import AgentRun
from chat.models import AuthorKind, Message
from chat.services.events import append_event
from chat.services.messages import message_send

CID = {cid!r}
users = {{u.username: u for u in get_user_model().objects.filter(username__in=["alice", "bob"])}}

def say(who, key, text):
    user = users[who]
    return message_send(conversation_id=CID, author_id=user.id, username=who, client_msg_id=key, text=text,
                        can_write=True)

for i in range(40):
    say("bob" if i % 3 == 0 else "alice", f"seed-{{i}}", f"earlier message number {{i}}")
question = say("alice", "seed-question", "QUESTION: please write the long report about the harbour")
say("bob", "seed-meanwhile", "meanwhile: I will grab coffee")
words = [f"w{{i}}" for i in range(2000)]
answer = " ".join(words)
with transaction.atomic():
    run = AgentRun.objects.create(conversation_id=CID, trigger_message_id=question.message_id,
                                  requested_by=users["alice"], agent="assistant", status="completed")
    rid = str(run.id)
    append_event(conversation_id=CID, type="agent_started", run_id=rid, data={{
        "run_id": rid, "agent": "assistant", "trigger_message_id": question.message_id, "queued_ms": 0}})
    for i in range(0, 2000, 5):
        append_event(conversation_id=CID, type="agent_delta", run_id=rid,
                     data={{"run_id": rid, "text": " ".join(words[i:i + 5]) + " "}})
    reply = Message.objects.create(conversation_id=CID, author=None, author_kind=AuthorKind.AGENT, text=answer, run=run)
    done = append_event(conversation_id=CID, type="agent_completed", run_id=rid, data={{
        "run_id": rid, "message_id": str(reply.id), "text": answer, "duration_ms": 2300, "usage": {{}}}})
    Message.objects.filter(id=reply.id).update(seq=done.seq)
print(rid)
"""


def test_first_load_shows_the_last_30_messages_with_the_answers_question(
    new_page: Callable[[str], Any],
    login: Callable[[Any, str], None],
    conversation: str,
    stack: Stack,
    page_errors: PageErrors,
) -> None:
    run_id = stack.manage("shell", "-c", SEED.format(cid=conversation)).stdout.strip().splitlines()[-1]
    page = new_page("alice")
    history: list[dict[str, Any]] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: _note_history(payload, history)))
    open_conversation(page, login, "alice", conversation)

    assert history, "the page asked for no history"
    assert (history[0].get("unit"), history[0].get("limit")) == ("messages", 30), history
    assert page.evaluate("() => window.__chat.historyUnit") == "messages"  # the server paged by messages
    run = page.get_by_test_id("transcript").locator(f'[data-testid=agent-run][data-run-id="{run_id}"]')
    expect(run).to_have_attribute("data-status", "completed")
    expect(run.get_by_test_id("agent-answer")).to_contain_text("w0 w1 w2")
    expect(run.get_by_test_id("agent-answer")).to_contain_text("w1998 w1999")
    expect(run.get_by_test_id("run-duration")).to_have_text("answered in 2.3 s")
    question = transcript_messages(page).filter(has_text="QUESTION: please write the long report")
    expect(question).to_have_count(1)
    # The answer is not right below its question (bob spoke in between): it links to it.
    reply_to = run.get_by_test_id("reply-to")
    expect(reply_to).to_contain_text("in reply to alice: QUESTION: please write the long report")
    shot(page, "long-answer-first-load")
    count = transcript_messages(page).count()
    assert 29 <= count <= 42, count

    reply_to.click()
    expect(question).to_have_class(re.compile(r"msg-highlight"))
    expect(question).to_be_in_viewport()

    # Scrolled to the top, the older messages load by themselves, keeping the reader's place.
    page.get_by_test_id("scroller").evaluate("(s) => { s.scrollTop = 0; }")
    expect(transcript_messages(page)).to_have_count(42, timeout=15_000)  # 40 + the question + bob's
    expect(page.get_by_test_id("load-older")).to_be_hidden()
    expect(transcript_messages(page).first.get_by_test_id("message-text")).to_have_text("earlier message number 0")
    no_page_errors(page_errors)


def _note_history(payload: str | bytes, history: list[dict[str, Any]]) -> None:
    frame = json.loads(payload)
    if frame.get("type") == "history":
        history.append(frame)


def test_edit_delete_regenerate_and_rate_through_the_page(
    new_page: Callable[[str], Any],
    login: Callable[[Any, str], None],
    stack: Stack,
    page_errors: PageErrors,
) -> None:
    conversation_id = shared_conversation(stack, token_for(stack, "alice"), "bob", title="Actions e2e", agent=True)
    alice = new_page("alice")
    bob = new_page("bob")
    open_conversation(alice, login, "alice", conversation_id)
    open_conversation(bob, login, "bob", conversation_id)

    send(alice, "@assistant what is 6 * 7?")
    run = alice.get_by_test_id("agent-run").first
    expect(run).to_have_attribute("data-status", "completed", timeout=RUN_TIMEOUT_MS)
    expect(run.get_by_test_id("agent-answer")).to_contain_text("42")
    expect(run.get_by_test_id("run-duration")).to_contain_text("answered in")
    expect(run.get_by_test_id("run-steps-wrap")).not_to_have_attribute("open", "")  # folded once done

    # Edit: inline, Enter saves; bob sees the new text and "(edited)".
    mine = transcript_messages(alice).filter(has_text="what is 6 * 7?")
    mine.hover()
    mine.get_by_test_id("action-edit").click()
    editor = mine.get_by_test_id("message-editor")
    expect(editor).to_be_focused()
    editor.fill("@assistant what is 6 * 7, please?")
    editor.press("Enter")
    for page in (alice, bob):
        edited = transcript_messages(page).first
        expect(edited.get_by_test_id("message-text")).to_have_text("@assistant what is 6 * 7, please?")
        expect(edited.get_by_test_id("edited")).to_have_text("(edited)")
    # Bob may not edit or delete alice's message, and may not stop her runs.
    expect(transcript_messages(bob).first.get_by_test_id("action-edit")).to_have_count(0)
    expect(transcript_messages(bob).first.get_by_test_id("action-delete")).to_have_count(0)

    # Feedback: thumbs up lights up, and is still lit after a reload (read back from the server).
    run.hover()
    run.get_by_test_id("action-rate-up").click()
    expect(run.get_by_test_id("action-rate-up")).to_have_attribute("aria-pressed", "true")
    alice.reload()
    wait_live(alice)
    run = alice.get_by_test_id("agent-run").first
    expect(run.get_by_test_id("action-rate-up")).to_have_attribute("aria-pressed", "true")

    # Regenerate: a new run on the same question, linked to it; only alice (starter, owner) may stop it.
    run.hover()
    run.get_by_test_id("action-regenerate").click()
    second = alice.get_by_test_id("agent-run").nth(1)
    expect(second.get_by_test_id("reply-to")).to_contain_text("in reply to alice", timeout=RUN_TIMEOUT_MS)
    bob_second = bob.get_by_test_id("agent-run").nth(1)
    expect(bob_second).to_have_count(1, timeout=RUN_TIMEOUT_MS)
    expect(bob_second.get_by_test_id("cancel")).to_be_hidden()
    expect(second).to_have_attribute("data-status", "completed", timeout=RUN_TIMEOUT_MS)
    expect(second.get_by_test_id("agent-answer")).to_contain_text("42")
    shot(alice, "actions-desktop")

    # Delete (confirmed in place): both pages show the placeholder.
    mine = transcript_messages(alice).first
    mine.hover()
    mine.get_by_test_id("action-delete").click()
    alice.get_by_test_id("delete-confirm").click()
    for page in (alice, bob):
        gone = transcript_messages(page).first
        expect(gone.get_by_test_id("message-text")).to_have_text("This message was deleted")
        expect(gone.get_by_test_id("action-edit")).to_have_count(0)
    bob.reload()
    wait_live(bob)
    expect(transcript_messages(bob).first.get_by_test_id("message-text")).to_have_text("This message was deleted")
    both_schemes(alice, "actions")
    no_page_errors(page_errors)


def test_typing_fast_never_shows_an_error_toast(
    new_page: Callable[[str], Any],
    login: Callable[[Any, str], None],
    conversation: str,
    page_errors: PageErrors,
) -> None:
    page = new_page("alice")
    typing_frames: list[str] = []

    def watch(ws: Any) -> None:
        ws.on("framesent", lambda payload: _note_typing(payload, typing_frames))

    page.on("websocket", watch)
    open_conversation(page, login, "alice", conversation)
    composer = page.get_by_test_id("composer")
    text = ("the quick brown fox jumps over the lazy dog " * 7)[:300]
    started = time.monotonic()
    for _ in range(3):
        composer.press_sequentially(text, delay=0)
        composer.fill("")
    composer.press_sequentially(text, delay=0)
    # One round trip after the last keystroke: every typing request before it has been answered.
    page.evaluate("() => window.chatHooks.request({ type: 'ping' })")
    expect(page.get_by_test_id("toast")).to_have_count(0)
    expect(page.get_by_test_id("connection-state")).to_have_attribute("data-state", "online")
    starts = typing_frames.count("start")
    most = 1 + int((time.monotonic() - started) / 3)  # a `start` at most every 3 s, not one per key
    assert 1 <= starts <= most, (most, typing_frames)
    no_page_errors(page_errors)


def _note_typing(payload: str | bytes, frames: list[str]) -> None:
    frame = json.loads(payload)
    if frame.get("type") == "typing":
        frames.append(frame["state"])


LONG_CODE = "```js\nconst veryLongLine = '" + "x" * 300 + "'; // a line far wider than a phone\n```"
LONG_URL = "see https://example.com/" + "a-very-long-path-segment-" * 12 + " and " + "Supercalifragilistic" * 8


def test_phone_layout_has_no_sideways_scroll(
    browser: Any,
    stack: Stack,
    login: Callable[[Any, str], None],
    conversation: str,
    page_errors: PageErrors,
) -> None:
    context = browser.new_context(base_url=stack.base_url, viewport={"width": 390, "height": 844}, has_touch=True)
    try:
        page = context.new_page()
        page_errors.attach(page, "phone")
        open_conversation(page, login, "alice", conversation)
        send(page, LONG_CODE)
        send(page, LONG_URL)
        expect(transcript_messages(page)).to_have_count(2)
        expect(page.get_by_test_id("codeblock")).to_be_visible()
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"{scheme}: the page scrolls sideways ({width})"
            shot(page, f"phone-{scheme}")
        # The code block scrolls inside itself.
        pre = page.get_by_test_id("codeblock").locator("pre")
        assert pre.evaluate("(p) => p.scrollWidth > p.clientWidth")
        no_page_errors(page_errors)
    finally:
        context.close()
