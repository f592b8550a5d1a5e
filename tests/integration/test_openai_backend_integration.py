"""User -> socket -> run -> OpenAIBackend -> a chat-completions server over real HTTP -> every
member, against PostgreSQL and Redis. The model server is the fake one (tests/support/fake_llm)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async

from agents import runner
from agents.backends.openai import OpenAIBackend
from tests.support import factories
from tests.support.fake_llm import FakeLLM, answer, fake_backend, refusing_port, stalled, tool_call
from tests.support.waiting import eventually
from tests.support.ws import subscribed_client

pytestmark = [pytest.mark.django_db(transaction=True)]

API_KEY = "sk-integration-test-key"


@pytest.fixture
def fake_llm(settings: Any) -> Iterator[FakeLLM]:
    with fake_backend(settings, api_key=API_KEY, timeout_s=10.0) as server:
        yield server


def loop_backend() -> Any:
    supervisor = runner.supervisors.current()
    assert supervisor is not None, "no run supervisor on this loop"
    return supervisor.backend


async def test_a_tool_using_answer_streams_every_agent_event_in_seq_order(make_user: Any, fake_llm: FakeLLM) -> None:
    fake_llm.script(tool_call("calculator", {"expression": "17 * 23"}, call_id="call_calc"))
    # The follow-up request is answered by the fake's default rule from the tool message.
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user, agent="assistant")
    async with subscribed_client(user, conv) as client:
        reply = await client.command("send", conversation=conv, client_msg_id="m1", text="what is 17 * 23?")
        assert reply["ok"] is True
        assert reply["run_id"]
        await client.until(lambda f: f.get("type") in ("agent_completed", "agent_failed"), timeout=15)
    assert isinstance(loop_backend(), OpenAIBackend)

    events = client.events(conv)
    types = [e["type"] for e in events]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert types[:5] == ["message", "agent_started", "agent_thinking", "tool_executing", "tool_completed"]
    assert types[-1] == "agent_completed", events[-1]
    assert set(types[5:-1]) == {"agent_delta"}
    assert 'calculator with {"expression": "17 * 23"}' in events[2]["data"]["text"]
    executing, completed_tool = events[3]["data"], events[4]["data"]
    assert executing["call_id"] == "call_calc"
    assert executing["tool"] == "calculator"
    assert executing["arguments"] == {"expression": "17 * 23"}
    assert completed_tool["ok"] is True
    assert completed_tool["result"]["value"] == 391
    completed = events[-1]["data"]
    assert completed["run_id"] == reply["run_id"]
    assert "391" in completed["text"]
    assert "".join(e["data"]["text"] for e in events if e["type"] == "agent_delta") == completed["text"]
    assert completed["usage"] == {"prompt_tokens": 31, "completion_tokens": 16}

    # What the model server was asked: the model, the key, the tools, then the tool's result.
    first, second = fake_llm.requests
    assert first.body["model"] == "fake-model"
    assert first.headers["authorization"] == f"Bearer {API_KEY}"
    assert "calculator" in first.tool_names
    assert first.messages[-1] == {"role": "user", "content": "what is 17 * 23?"}
    assert second.messages[-1]["role"] == "tool"
    assert second.messages[-1]["tool_call_id"] == "call_calc"
    assert json.loads(second.messages[-1]["content"])["value"] == 391


async def test_an_unreachable_model_fails_the_run_once_and_keeps_the_message(make_user: Any, settings: Any) -> None:
    from agents.models import AgentRun
    from chat.models import Message

    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user, agent="assistant")
    with refusing_port() as port:
        settings.AGENT_BACKEND = "openai"
        settings.AGENT_LLM_BASE_URL = f"http://127.0.0.1:{port}/v1"
        settings.AGENT_LLM_TIMEOUT_S = 5.0
        async with subscribed_client(user, conv) as client:
            reply = await client.command("send", conversation=conv, client_msg_id="m1", text="what is 17 * 23?")
            assert reply["ok"] is True
            assert reply["message"]["seq"] == 1
            failed = await client.until(lambda f: f.get("type") in ("agent_completed", "agent_failed"), timeout=15)
            # The stored log, not just what this socket saw: the message, the start, one terminal event.
            history = await client.command("history", conversation=conv)

    assert isinstance(loop_backend(), OpenAIBackend)
    assert failed["type"] == "agent_failed"
    assert failed["data"]["run_id"] == reply["run_id"]
    assert failed["data"]["error"]["code"] == "llm_unavailable"
    live = client.events(conv)
    assert live[0]["type"] == "message"
    assert live[0]["data"]["text"] == "what is 17 * 23?"
    assert [e["type"] for e in history["events"]] == ["message", "agent_started", "agent_failed"]
    stored = await database_sync_to_async(
        lambda: list(Message.objects.filter(conversation_id=conv).values_list("text", flat=True))
    )()
    assert stored == ["what is 17 * 23?"]
    run = await database_sync_to_async(AgentRun.objects.get)(id=reply["run_id"])
    assert run.status == "failed"
    assert run.error_code == "llm_unavailable"


async def test_a_cancel_hangs_up_on_the_model_server_at_once(make_user: Any, fake_llm: FakeLLM) -> None:
    """Stop pressed mid-answer: the run's HTTP stream to the model server is closed within 100 ms of
    the cancel's reply (the model stops generating, and paying for, an answer nobody reads), and the
    run ends cancelled with what it had streamed."""
    fake_llm.script(stalled(answer("one two three four five six", pieces=6), after=2, seconds=30))
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user, agent="assistant")
    async with subscribed_client(user, conv) as client:
        reply = await client.command("send", conversation=conv, client_msg_id="m1", text="tell me a story")
        await client.until(lambda f: f.get("type") == "agent_delta", timeout=15)
        cancelled = await client.command("cancel", run_id=reply["run_id"])
        replied_at = time.monotonic()
        assert cancelled["ok"] is True
        await eventually(lambda: fake_llm.hangups, timeout=5, what="the backend hanging up on the model server")
        ended = await client.until(lambda f: f.get("type") in ("agent_completed", "agent_cancelled"), timeout=10)

    assert fake_llm.hangups[0] - replied_at < 0.1, f"hung up {fake_llm.hangups[0] - replied_at:.3f} s after the cancel"
    assert ended["type"] == "agent_cancelled"
    assert ended["data"]["partial_text"] == "".join(
        e["data"]["text"] for e in client.events(conv) if e["type"] == "agent_delta"
    )
    assert len(fake_llm.requests) == 1
