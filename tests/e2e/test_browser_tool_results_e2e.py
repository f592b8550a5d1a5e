"""A tool result too long for its event, in headless Chromium on the real stack: the run's tool call
shows the start of the result and a button that fetches the whole of it (the `href` of the truncated
`tool_completed.result`, docs/protocol.md §4). The stack's agent is the OpenAI-compatible backend
talking to the suite's fake model server, which asks for twenty search matches: more than the
built-in agent ever asks for, and more than one event carries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import TOKEN_DELAY_MS, PageErrors, wait_live
from tests.support.fake_llm import FakeLLM, tool_call
from tests.support.servers import Stack, running_stack, shared_conversation
from tests.support.servers import login as token_for

pytestmark = [pytest.mark.e2e]

LONG_MATCHES = """
from django.contrib.auth import get_user_model
from chat.services.messages import message_send

alice = get_user_model().objects.get(username="alice")
for i in range(20):
    message_send(conversation_id={cid!r}, author_id=alice.id, username="alice", client_msg_id=f"lh-{{i}}",
                 text=f"lighthouse log {{i:02d}}: " + "the keeper trimmed the wick and wrote it down. " * 9,
                 can_write=True)
"""


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture(scope="module")
def stack(fake_llm: FakeLLM) -> Iterator[Stack]:
    env = {
        "AGENT_OFFLINE_TOKEN_DELAY_MS": TOKEN_DELAY_MS,
        "AGENT_BACKEND": "openai",
        "AGENT_LLM_BASE_URL": fake_llm.base_url,
        "AGENT_LLM_MODEL": "fake-model",
        "AGENT_LLM_API_KEY": "sk-e2e",
    }
    with running_stack(env_overrides=env) as running:
        yield running


def test_a_tool_result_too_long_for_its_event_is_read_whole_on_demand(
    new_page: Callable[[str], Any],
    login: Callable[[Any, str], None],
    stack: Stack,
    fake_llm: FakeLLM,
    page_errors: PageErrors,
) -> None:
    conversation = shared_conversation(stack, token_for(stack, "alice"), "bob", title="Long results", agent=True)
    stack.manage("shell", "-c", LONG_MATCHES.format(cid=conversation))
    fake_llm.script(tool_call("search_history", {"query": "lighthouse log", "limit": 20}))
    page = new_page("alice")
    login(page, "alice")
    page.goto(f"/c/{conversation}/")
    wait_live(page)
    composer = page.get_by_test_id("composer")
    composer.fill("@assistant what do the lighthouse logs say?")
    composer.press("Enter")

    run = page.get_by_test_id("transcript").get_by_test_id("agent-run").last
    expect(run).to_have_attribute("data-status", "completed", timeout=30_000)
    call = run.get_by_test_id("tool-call").first
    expect(call).to_have_attribute("data-status", "ok")
    if run.get_by_test_id("run-steps-wrap").get_attribute("open") is None:  # steps fold once the answer is in
        run.get_by_test_id("run-steps-summary").click()
    call.locator("summary").click()
    result = call.get_by_test_id("tool-result")
    # Each match is a snippet with the matched words marked («lighthouse» «log» 19: the keeper …), so what
    # follows the marks names it. Equal ranks: the newest match comes first...
    expect(result).to_contain_text("19: the keeper")
    assert "00: the keeper" not in result.inner_text()  # ...and the oldest were cut from the event
    whole = call.get_by_test_id("tool-result-whole")
    expect(whole).to_contain_text("Show the whole result")
    whole.click()
    expect(whole).to_have_count(0)
    expect(result).to_contain_text("00: the keeper")
    page.screenshot(path="tests/e2e/artifacts/tool-result-whole.png")
    assert not page_errors.items, "\n".join(page_errors.items)
