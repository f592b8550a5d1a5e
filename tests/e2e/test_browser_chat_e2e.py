"""The browser chat page against the real stack, in headless Chromium.

1. A member asks the assistant and sees the whole run: the message, thinking, the calculator tool call,
   the answer streaming in (a strict prefix first) and the final answer.
2. A second member reloads mid-run: both pages end with identical transcripts and no duplicated chunk.
3. A viewer sees the conversation live and cannot send.
Plus: the Cancel button, going offline and back online with a message written while offline, and a
send whose reply is lost with the connection (retried with the same client_msg_id, shown once).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import DEMO_TITLE, PageErrors, wait_live

pytestmark = [pytest.mark.e2e]


RUN_TIMEOUT_MS = 30_000

# Records every text an answer element shows, with its state, as the page renders it (a
# MutationObserver sees each intermediate text, which polling from the test could miss).
RECORD_ANSWERS = """
() => {
  if (window.__answerLog) return;
  window.__answerLog = [];
  const snapshot = () => {
    document.querySelectorAll('[data-testid=agent-run]').forEach((run) => {
      const answer = run.querySelector('[data-testid=agent-answer]');
      const entry = { run: run.dataset.runId, state: answer.dataset.state, text: answer.textContent };
      const last = window.__answerLog.filter((e) => e.run === entry.run).pop();
      if (!last || last.text !== entry.text || last.state !== entry.state) window.__answerLog.push(entry);
    });
  };
  const start = () => {
    snapshot();
    new MutationObserver(snapshot).observe(document.body,
      { subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['data-state'] });
  };
  if (document.body) start(); else document.addEventListener('DOMContentLoaded', start);
}
"""

TRANSCRIPT = """
() => Array.from(document.querySelectorAll(
  '[data-testid=transcript] > [data-testid=message], [data-testid=transcript] > [data-testid=agent-run]'
)).map((node) => {
  const texts = (selector) => Array.from(node.querySelectorAll(selector), (n) => n.textContent);
  if (node.dataset.testid === 'message') {
    return { kind: 'message', author: texts('[data-testid=message-author]')[0],
             text: texts('[data-testid=message-text]')[0] };
  }
  return {
    kind: 'run', run: node.dataset.runId, status: node.dataset.status,
    thinking: texts('[data-testid=thinking]'),
    tools: Array.from(node.querySelectorAll('[data-testid=tool-call]'), (call) => ({
      tool: call.dataset.tool, status: call.dataset.status,
      arguments: call.querySelector('[data-testid=tool-arguments]').textContent,
      result: call.querySelector('[data-testid=tool-result]').textContent,
    })),
    answer: node.querySelector('[data-testid=agent-answer]').textContent,
  };
})
"""


def runs(page: Any) -> Any:
    return page.get_by_test_id("transcript").get_by_test_id("agent-run")


def send(page: Any, text: str) -> None:
    composer = page.get_by_test_id("composer")
    composer.fill(text)
    composer.press("Enter")
    expect(composer).to_have_value("")


def wait_run_final(page: Any, index: int) -> Any:
    run = runs(page).nth(index)
    expect(run).to_have_attribute("data-status", "completed", timeout=RUN_TIMEOUT_MS)
    expect(run.get_by_test_id("agent-answer")).to_have_attribute("data-state", "final")
    return run


def completed_text(page: Any, conversation_id: str, run_id: str) -> str:
    """The agent_completed text for run_id, read through the REST API with the page's session."""
    response = page.context.request.get(f"/api/conversations/{conversation_id}/events/?limit=100")
    assert response.ok, response.text()
    for event in response.json()["events"]:
        if event["type"] == "agent_completed" and event["data"]["run_id"] == run_id:
            return str(event["data"]["text"])
    raise AssertionError(f"no agent_completed event for run {run_id}")


def no_page_errors(errors: PageErrors) -> None:
    assert not errors.items, "\n".join(errors.items)


def test_member_asks_the_assistant_and_sees_the_run_stream(
    new_page: Callable[[str], Any], open_demo: Callable[[Any, str], str], page_errors: PageErrors
) -> None:
    page = new_page("alice")
    conversation_id = open_demo(page, "alice")
    expect(page.get_by_test_id("connection-state")).to_have_attribute("data-state", "online")
    expect(page.get_by_test_id("role")).to_have_text("Owner")
    before_messages = page.get_by_test_id("transcript").get_by_test_id("message").count()
    before_runs = runs(page).count()
    page.evaluate(RECORD_ANSWERS)

    send(page, "what is 17 * 23?")

    message = page.get_by_test_id("transcript").get_by_test_id("message").nth(before_messages)
    expect(message.get_by_test_id("message-author")).to_have_text("alice")
    expect(message.get_by_test_id("message-text")).to_have_text("what is 17 * 23?")

    run = runs(page).nth(before_runs)
    expect(run.get_by_test_id("thinking").first).to_contain_text("calculat", timeout=RUN_TIMEOUT_MS)
    tool = run.get_by_test_id("tool-call").first
    expect(tool.get_by_test_id("tool-name")).to_have_text("calculator", timeout=RUN_TIMEOUT_MS)
    expect(tool.get_by_test_id("tool-arguments")).to_contain_text("17 * 23")
    expect(tool.get_by_test_id("tool-result")).to_contain_text("391", timeout=RUN_TIMEOUT_MS)
    expect(tool.get_by_test_id("tool-result-preview")).to_contain_text("391")
    expect(tool).to_have_attribute("data-status", "ok")
    # Tool details are collapsible: open them and the arguments and result are on screen.
    tool.locator("summary").click()
    expect(tool.get_by_test_id("tool-result")).to_be_visible()

    run = wait_run_final(page, before_runs)
    answer = run.get_by_test_id("agent-answer")
    expect(answer).to_contain_text("391")
    final = answer.text_content()
    run_id = run.get_attribute("data-run-id")
    assert final == completed_text(page, conversation_id, run_id)

    log = [e for e in page.evaluate("() => window.__answerLog") if e["run"] == run_id]
    partial = [e["text"] for e in log if e["state"] == "streaming" and e["text"]]
    assert partial, f"the answer never showed partial text before completion: {log}"
    assert any(final.startswith(text) and text != final for text in partial), (partial, final)
    assert all(final.startswith(text) for text in partial), f"a streamed text is not a prefix: {partial}"

    expect(run.get_by_test_id("cancel")).to_be_hidden()
    expect(page.get_by_test_id("stale-banner")).to_be_hidden()
    no_page_errors(page_errors)


def test_reload_mid_run_ends_with_the_same_transcript(
    new_page: Callable[[str], Any], open_demo: Callable[[Any, str], str], page_errors: PageErrors
) -> None:
    page_a = new_page("alice")
    page_b = new_page("bob")
    conversation_id = open_demo(page_a, "alice")
    assert open_demo(page_b, "bob") == conversation_id
    # B records what its answer elements show, before and after the reload.
    page_b.context.add_init_script(f"({RECORD_ANSWERS})()")
    page_b.evaluate(RECORD_ANSWERS)
    # A run both pages see live (its tool result then differs from the stored copy only in key order).
    index = runs(page_a).count()
    send(page_a, "what is 12 * 12?")
    wait_run_final(page_a, index)
    wait_run_final(page_b, index)
    index += 1
    assert runs(page_b).count() == index

    send(page_a, "hello there")  # the help text: ~30 words, ~2 s at 60 ms a word

    # While B shows part of the answer, reload B.
    answer_b = runs(page_b).nth(index).get_by_test_id("agent-answer")
    expect(answer_b).to_have_attribute("data-state", "streaming", timeout=RUN_TIMEOUT_MS)
    partial_before_reload = answer_b.text_content()
    assert partial_before_reload
    run_id = runs(page_b).nth(index).get_attribute("data-run-id")
    page_b.reload()
    wait_live(page_b)
    reloaded_mid_run = page_b.evaluate(
        '(runId) => { const n = document.querySelector(`[data-testid=agent-run][data-run-id="${runId}"]`);'
        " return n ? n.dataset.status : null; }",
        run_id,
    )

    run_a = wait_run_final(page_a, index)
    run_b = wait_run_final(page_b, index)
    final = completed_text(page_a, conversation_id, run_id)
    assert run_a.get_attribute("data-run-id") == run_b.get_attribute("data-run-id") == run_id
    # The answer is the agent_completed text exactly: no chunk was applied twice.
    expect(run_b.get_by_test_id("agent-answer")).to_have_text(final)
    expect(run_a.get_by_test_id("agent-answer")).to_have_text(final)
    assert final.startswith(partial_before_reload)
    assert final != partial_before_reload
    assert reloaded_mid_run == "running", f"B finished loading after the run ended ({reloaded_mid_run})"

    log_b = [e for e in page_b.evaluate("() => window.__answerLog") if e["run"] == run_id]
    assert all(final.startswith(e["text"]) for e in log_b), f"B showed a text that is not a prefix: {log_b}"

    transcript_a = page_a.evaluate(TRANSCRIPT)
    transcript_b = page_b.evaluate(TRANSCRIPT)
    assert transcript_a == transcript_b
    assert transcript_b[-1]["answer"] == final
    assert transcript_b[-2] == {"kind": "message", "author": "alice", "text": "hello there"}
    for page in (page_a, page_b):
        stats = page.evaluate("() => window.__chat.stats")
        assert stats["resyncs"] == 0, stats
    no_page_errors(page_errors)


def test_viewer_sees_the_conversation_and_cannot_send(
    new_page: Callable[[str], Any],
    open_demo: Callable[[Any, str], str],
    login: Callable[[Any, str], None],
    page_errors: PageErrors,
) -> None:
    viewer = new_page("carol")
    owner = new_page("alice")
    open_demo(owner, "alice")
    login(viewer, "carol")
    link = viewer.get_by_test_id("conversation-link").filter(has_text=DEMO_TITLE)
    expect(link.get_by_test_id("conversation-role")).to_have_text("Viewer")
    link.click()
    wait_live(viewer)
    # The list showed carol's role; the chat view does too.
    expect(viewer.get_by_test_id("role")).to_have_text("Viewer")
    expect(viewer.get_by_test_id("composer")).to_be_disabled()
    expect(viewer.get_by_test_id("send")).to_be_disabled()
    expect(viewer.get_by_test_id("composer-form")).to_have_attribute("data-readonly", "true")

    # The viewer still sees everything live, without the owner's controls.
    index = runs(viewer).count()
    messages = viewer.get_by_test_id("transcript").get_by_test_id("message")
    count = messages.count()
    send(owner, "hello again, viewers")
    expect(messages.nth(count).get_by_test_id("message-text")).to_have_text("hello again, viewers")
    run = runs(viewer).nth(index)
    expect(run.get_by_test_id("agent-answer")).to_have_attribute("data-state", "streaming", timeout=RUN_TIMEOUT_MS)
    expect(runs(owner).nth(index).get_by_test_id("cancel")).to_be_visible()
    expect(run.get_by_test_id("cancel")).to_be_hidden()
    wait_run_final(viewer, index)

    # Forcing a click on the disabled Send button sends nothing.
    viewer.get_by_test_id("send").click(force=True)
    assert viewer.evaluate("() => window.__chat.pending.length") == 0
    expect(messages).to_have_count(count + 1)

    # Logging out is a POST form (Django 5); afterwards the chat view asks for a login again.
    viewer.get_by_test_id("logout").click()
    viewer.wait_for_url(re.compile(r"/login/"))
    viewer.goto(owner.url)
    expect(viewer.get_by_test_id("login-form")).to_be_visible()
    no_page_errors(page_errors)


def test_cancel_stops_an_active_run(
    new_page: Callable[[str], Any], open_demo: Callable[[Any, str], str], page_errors: PageErrors
) -> None:
    page = new_page("bob")
    open_demo(page, "bob")
    index = runs(page).count()
    messages = page.get_by_test_id("transcript").get_by_test_id("message")
    count = messages.count()
    # Markup in a message is text, never HTML.
    hostile = 'hello <b>bold</b> <img src=x onerror="window.__xss = 1">, please stop'
    send(page, hostile)
    expect(messages.nth(count).get_by_test_id("message-text")).to_have_text(hostile)
    expect(page.get_by_test_id("transcript").locator("img, b")).to_have_count(0)
    run = runs(page).nth(index)
    expect(run.get_by_test_id("agent-answer")).to_have_attribute("data-state", "streaming", timeout=RUN_TIMEOUT_MS)
    run.get_by_test_id("cancel").click()
    expect(run).to_have_attribute("data-status", "cancelled", timeout=RUN_TIMEOUT_MS)
    expect(run.get_by_test_id("run-error")).to_contain_text("Cancelled by bob")
    expect(run.get_by_test_id("cancel")).to_be_hidden()
    assert page.evaluate("() => window.__xss") is None
    no_page_errors(page_errors)


def test_offline_then_online_delivers_the_message_written_offline_once(
    new_page: Callable[[str], Any], open_demo: Callable[[Any, str], str], page_errors: PageErrors
) -> None:
    page = new_page("alice")
    open_demo(page, "alice")
    state = page.get_by_test_id("connection-state")
    messages = page.get_by_test_id("transcript").get_by_test_id("message")
    count = messages.count()
    index = runs(page).count()

    page.context.set_offline(True)
    expect(state).to_have_attribute("data-state", "offline")
    expect(page.get_by_test_id("stale-banner")).to_be_visible()
    send(page, "written while offline: what is 2 + 2?")
    pending = page.get_by_test_id("pending-message")
    expect(pending).to_have_attribute("data-state", "waiting")

    page.context.set_offline(False)
    wait_live(page)
    expect(page.get_by_test_id("stale-banner")).to_be_hidden()
    expect(messages.nth(count).get_by_test_id("message-text")).to_have_text("written while offline: what is 2 + 2?")
    expect(pending).to_have_count(0)
    run = wait_run_final(page, index)
    expect(run.get_by_test_id("agent-answer")).to_contain_text("4")
    expect(messages).to_have_count(count + 1)
    no_page_errors(page_errors)


def test_a_send_whose_reply_is_lost_is_retried_with_the_same_client_msg_id(
    new_page: Callable[[str], Any], open_demo: Callable[[Any, str], str], page_errors: PageErrors
) -> None:
    """The connection drops right after a send left the page, before any answer came back: the page
    reconnects, resends the same client_msg_id, the server answers duplicate, the message shows once."""
    page = new_page("bob")
    sends: list[dict[str, Any]] = []
    replies: dict[str, dict[str, Any]] = {}

    def route(ws: Any) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            server.send(message)
            if frame.get("type") == "send":
                sends.append(frame)
                if len(sends) == 1:  # the connection dies with the first send in flight
                    server.close()
                    ws.close(code=4000, reason="test: connection lost")

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "reply":
                replies[frame["id"]] = frame
            ws.send(message)

        ws.on_message(from_page)
        server.on_message(from_server)

    page.route_web_socket(re.compile(r"/ws/chat/$"), route)
    open_demo(page, "bob")
    messages = page.get_by_test_id("transcript").get_by_test_id("message")
    count = messages.count()
    index = runs(page).count()

    send(page, "delivered once? what is 5 * 5?")
    expect(messages.nth(count).get_by_test_id("message-text")).to_have_text("delivered once? what is 5 * 5?")
    wait_run_final(page, index)
    page.wait_for_function("() => window.__chat.pending.length === 0")
    assert len(sends) >= 2, sends
    assert {frame["client_msg_id"] for frame in sends} == {sends[0]["client_msg_id"]}
    retry_reply = replies[sends[1]["id"]]
    assert retry_reply["ok"], retry_reply
    assert retry_reply["duplicate"] is True, retry_reply
    expect(messages).to_have_count(count + 1)
    expect(runs(page)).to_have_count(index + 1)
    no_page_errors(page_errors)
