"""OpenAIBackend.steps driven directly, the way agents.runtime.execute_run drives it, against the
fake chat-completions server (the only fake) and the real tool registry."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import pytest

from agents.backends.base import (
    AgentInput,
    AnswerChunk,
    BackendError,
    CallTool,
    Step,
    Think,
    ToolOutcome,
    Usage,
)
from agents.backends.openai import DEFAULT_SYSTEM_PROMPT, MAX_TOOL_ROUNDS, OpenAIBackend
from agents.tools import ToolContext, ToolRegistry, default_registry
from tests.support.fake_llm import (
    FakeLLM,
    Reply,
    ToolCallSpec,
    answer,
    blackhole_port,
    dropped,
    http_error,
    malformed,
    refusing_port,
    stalled,
    tool_call,
    tool_calls,
)

STEP_TIMEOUT_S = 10
CTX = ToolContext(user_id=None, conversation_id="c-unit")


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
def registry() -> ToolRegistry:
    return default_registry()


def backend_for(fake: FakeLLM, **kwargs: Any) -> OpenAIBackend:
    options: dict[str, Any] = {"base_url": fake.base_url, "model": "fake-model", "timeout_s": 10.0}
    options.update(kwargs)
    return OpenAIBackend(**options)


def request(prompt: str = "what is 17 * 23?", history: list[dict[str, str]] | None = None) -> AgentInput:
    return AgentInput("run-1", "c-unit", None, prompt, history or [])


Respond = Callable[[CallTool], ToolOutcome]


async def drive(
    gen: AsyncGenerator[Step, ToolOutcome | None],
    registry: ToolRegistry,
    steps: list[Step] | None = None,
    respond: Respond | None = None,
) -> list[Step]:
    """Run the generator to its end like the runtime does; CallTools are answered by `respond`,
    else by the real registry. Steps are collected into `steps` (kept even if it raises)."""
    collected = steps if steps is not None else []
    outcome: ToolOutcome | None = None
    try:
        while True:
            step = await asyncio.wait_for(gen.asend(outcome), timeout=STEP_TIMEOUT_S)
            outcome = None
            collected.append(step)
            if isinstance(step, CallTool):
                outcome = respond(step) if respond else await registry.call(step.tool, step.arguments, CTX)
    except StopAsyncIteration:
        pass
    finally:
        await gen.aclose()
    return collected


def of(kind: type, steps: list[Step]) -> list[Any]:
    return [s for s in steps if isinstance(s, kind)]


# --- answers and what is sent -----------------------------------------------------------------------


async def test_streamed_answer_without_tools_yields_every_content_delta(fake: FakeLLM, registry: ToolRegistry) -> None:
    text = "Hello there, this answer comes in five pieces."
    fake.script(answer(text, pieces=5, usage=(12, 8)))
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    steps = await drive(backend_for(fake).steps(request("say something", history), registry), registry)

    chunks = of(AnswerChunk, steps)
    assert len(chunks) == 5
    assert "".join(c.text for c in chunks) == text
    assert not of(Think, steps)
    assert not of(CallTool, steps)
    assert steps[-1] == Usage(prompt_tokens=12, completion_tokens=8)

    [sent] = fake.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "fake-model"
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sorted(sent.tool_names) == registry.names()
    assert sent.body["tools"] == registry.specs()
    assert sent.messages == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "say something"},
    ]


async def test_answer_text_is_yielded_while_the_stream_is_still_open(fake: FakeLLM, registry: ToolRegistry) -> None:
    # The server sends the role chunk and the first piece, then goes quiet for far longer than the
    # test waits: the first piece must reach the caller before the completion is finished.
    fake.script(stalled(answer("abcdef", pieces=3), after=2, seconds=60))
    gen = backend_for(fake, timeout_s=60.0).steps(request(), registry)
    try:
        first = await asyncio.wait_for(gen.asend(None), timeout=STEP_TIMEOUT_S)
        assert first == AnswerChunk("ab")
    finally:
        await gen.aclose()


async def test_without_a_system_prompt_or_tools_neither_is_sent(fake: FakeLLM) -> None:
    fake.script(answer("ok"))
    empty = ToolRegistry()
    await drive(backend_for(fake, system_prompt=None).steps(request("ping"), empty), empty)
    [sent] = fake.requests
    assert "tools" not in sent.body
    assert sent.messages == [{"role": "user", "content": "ping"}]


# --- tool rounds --------------------------------------------------------------------------------------


async def test_tool_round_thinks_calls_the_tool_and_sends_the_result_back(
    fake: FakeLLM, registry: ToolRegistry
) -> None:
    fake.script(tool_call("calculator", {"expression": "17 * 23"}, call_id="call_abc", usage=(20, 9)))
    # The follow-up request is answered by the default rule: "The answer is <value>." (usage 11/7).
    gen = backend_for(fake).steps(request(), registry)

    think = await gen.asend(None)
    assert isinstance(think, Think)
    assert 'calculator with {"expression": "17 * 23"}' in think.text
    call = await gen.asend(None)
    assert call == CallTool(call_id="call_abc", tool="calculator", arguments={"expression": "17 * 23"})
    assert len(fake.requests) == 1  # nothing more is asked before the tool's outcome is in

    result = {"expression": "17 * 23", "value": 391}
    rest = await drive(gen, registry, steps=[await gen.asend(ToolOutcome(True, result))])

    assert "".join(c.text for c in of(AnswerChunk, rest)) == "The answer is 391."
    assert rest[-1] == Usage(prompt_tokens=31, completion_tokens=16)
    assert len(fake.requests) == 2
    follow_up = fake.requests[1].messages
    assert follow_up[-2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "calculator", "arguments": '{"expression": "17 * 23"}'},
            }
        ],
    }
    assert follow_up[-1]["role"] == "tool"
    assert follow_up[-1]["tool_call_id"] == "call_abc"
    assert json.loads(follow_up[-1]["content"]) == result
    assert follow_up[:-2] == fake.requests[0].messages


async def test_a_failed_tool_outcome_is_reported_to_the_model(fake: FakeLLM, registry: ToolRegistry) -> None:
    fake.script(tool_call("calculator", {"expression": "1 / 0"}))
    steps = await drive(backend_for(fake).steps(request("what is 1/0"), registry), registry)
    assert of(CallTool, steps)[0].arguments == {"expression": "1 / 0"}
    tool_message = fake.requests[1].messages[-1]
    assert json.loads(tool_message["content"]) == {"error": "division by zero"}
    assert "division by zero" in "".join(c.text for c in of(AnswerChunk, steps))


async def test_a_call_without_an_id_gets_one_used_on_both_sides(fake: FakeLLM, registry: ToolRegistry) -> None:
    fake.script(tool_call("calculator", {"expression": "2 + 2"}, call_id=None))
    steps = await drive(backend_for(fake).steps(request(), registry), registry)
    [call] = of(CallTool, steps)
    assert call.call_id
    follow_up = fake.requests[1].messages
    assert follow_up[-2]["tool_calls"][0]["id"] == call.call_id
    assert follow_up[-1]["tool_call_id"] == call.call_id
    assert "The answer is 4." == "".join(c.text for c in of(AnswerChunk, steps))


async def test_reused_call_ids_are_made_unique_within_the_run(fake: FakeLLM, registry: ToolRegistry) -> None:
    # Some servers number calls per response ("call_0" every round); the run stores ids uniquely.
    fake.script(
        tool_call("calculator", {"expression": "1 + 1"}, call_id="call_0"),
        tool_call("calculator", {"expression": "2 + 2"}, call_id="call_0"),
    )
    steps = await drive(backend_for(fake).steps(request(), registry), registry)
    first, second = of(CallTool, steps)
    assert first.call_id == "call_0"
    assert second.call_id != "call_0"
    assert fake.requests[2].messages[-1]["tool_call_id"] == second.call_id


async def test_several_calls_in_one_round_run_in_order(fake: FakeLLM, registry: ToolRegistry) -> None:
    fake.script(
        tool_calls(
            ToolCallSpec("calculator", {"expression": "6 * 7"}, "call_a"), ToolCallSpec("current_time", "", "call_b")
        )
    )
    steps = await drive(backend_for(fake).steps(request(), registry), registry)
    thinks = of(Think, steps)
    assert len(thinks) == 1
    assert "calculator" in thinks[0].text
    assert "current_time with {}" in thinks[0].text
    assert of(CallTool, steps) == [
        CallTool("call_a", "calculator", {"expression": "6 * 7"}),
        CallTool("call_b", "current_time", {}),
    ]
    follow_up = fake.requests[1].messages
    assert [m.get("tool_call_id") for m in follow_up[-2:]] == ["call_a", "call_b"]
    assert json.loads(follow_up[-2]["content"])["value"] == 42
    assert "utc" in json.loads(follow_up[-1]["content"])


async def test_invalid_json_arguments_are_sent_back_and_the_model_retries(
    fake: FakeLLM, registry: ToolRegistry
) -> None:
    fake.script(
        tool_call("calculator", '{"expression": "17 *', call_id="call_bad"),
        tool_call("calculator", {"expression": "17 * 23"}, call_id="call_good"),
    )
    steps = await drive(backend_for(fake).steps(request(), registry), registry)

    assert [type(s) for s in steps[:3]] == [Think, Think, CallTool]
    assert "not valid JSON" in steps[0].text  # type: ignore[union-attr]
    assert of(CallTool, steps) == [CallTool("call_good", "calculator", {"expression": "17 * 23"})]
    retry = fake.requests[1].messages
    assert retry[-2]["tool_calls"][0]["function"]["arguments"] == '{"expression": "17 *'
    assert retry[-1]["tool_call_id"] == "call_bad"
    assert "not valid JSON" in json.loads(retry[-1]["content"])["error"]
    assert "".join(c.text for c in of(AnswerChunk, steps)) == "The answer is 391."


async def test_a_model_that_never_stops_calling_tools_fails_after_the_bound(
    fake: FakeLLM, registry: ToolRegistry
) -> None:
    fake.rule = lambda _req: tool_call("calculator", {"expression": "1 + 1"}, call_id=None)
    steps: list[Step] = []
    with pytest.raises(BackendError) as info:
        await drive(backend_for(fake).steps(request(), registry), registry, steps)
    assert info.value.code == "llm_error"
    assert len(of(CallTool, steps)) == MAX_TOOL_ROUNDS
    assert len(fake.requests) == MAX_TOOL_ROUNDS + 1


# --- failures -----------------------------------------------------------------------------------------


async def test_http_500_is_an_llm_error_naming_the_status(fake: FakeLLM, registry: ToolRegistry) -> None:
    fake.script(http_error(500, "the GPU caught fire"))
    with pytest.raises(BackendError) as info:
        await drive(backend_for(fake).steps(request(), registry), registry)
    assert info.value.code == "llm_error"
    assert "500" in info.value.message
    assert "the GPU caught fire" in info.value.message


KEY = "sk-very-secret-0123456789"


@pytest.mark.parametrize(
    "reply",
    [
        http_error(401, f"Incorrect API key provided: {KEY}"),
        Reply(events=[json.dumps({"error": {"message": f"key {KEY} is over its quota"}})]),
    ],
    ids=["http-status", "error-in-stream"],
)
async def test_an_error_never_repeats_the_api_key(fake: FakeLLM, registry: ToolRegistry, reply: Reply) -> None:
    key = KEY
    fake.script(reply)
    backend = backend_for(fake, api_key=key)
    with pytest.raises(BackendError) as info:
        await drive(backend.steps(request(), registry), registry)
    assert info.value.code == "llm_error"
    assert "[redacted]" in info.value.message
    assert key not in info.value.message
    assert key not in str(info.value)
    assert key not in repr(backend)


async def test_a_connection_dropped_mid_stream_is_an_llm_error(fake: FakeLLM, registry: ToolRegistry) -> None:
    fake.script(dropped(answer("one two three four", pieces=4), after=3))
    steps: list[Step] = []
    with pytest.raises(BackendError) as info:
        await drive(backend_for(fake).steps(request(), registry), registry, steps)
    assert info.value.code == "llm_error"
    assert [type(s) for s in steps] == [AnswerChunk, AnswerChunk]  # what arrived before the drop


async def test_a_stream_that_ends_without_finishing_is_an_llm_error(fake: FakeLLM, registry: ToolRegistry) -> None:
    # A clean end of the body, but no finish_reason and no [DONE]: the answer is cut short.
    fake.script(Reply(events=answer("cut short", pieces=2).events[:2]))
    with pytest.raises(BackendError) as info:
        await drive(backend_for(fake).steps(request(), registry), registry)
    assert info.value.code == "llm_error"


async def test_malformed_json_in_a_chunk_is_an_llm_error(fake: FakeLLM, registry: ToolRegistry) -> None:
    fake.script(malformed())
    with pytest.raises(BackendError) as info:
        await drive(backend_for(fake).steps(request(), registry), registry)
    assert info.value.code == "llm_error"
    assert "JSON" in info.value.message


async def test_an_error_object_in_the_stream_is_an_llm_error(fake: FakeLLM, registry: ToolRegistry) -> None:
    fake.script(Reply(events=[json.dumps({"error": {"message": "model overloaded"}})]))
    with pytest.raises(BackendError) as info:
        await drive(backend_for(fake).steps(request(), registry), registry)
    assert info.value.code == "llm_error"
    assert "model overloaded" in info.value.message


async def test_a_server_that_does_not_stream_is_an_llm_error(fake: FakeLLM, registry: ToolRegistry) -> None:
    fake.script(Reply(events=[]))  # 200 with an empty body: no event stream at all
    with pytest.raises(BackendError) as info:
        await drive(backend_for(fake).steps(request(), registry), registry)
    assert info.value.code == "llm_error"


@pytest.mark.parametrize("after", [0, 2], ids=["before-headers", "between-chunks"])
async def test_a_silent_server_times_out(fake: FakeLLM, registry: ToolRegistry, after: int) -> None:
    fake.script(stalled(answer("too late"), after=after, seconds=60))
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        await drive(backend_for(fake, timeout_s=0.3).steps(request(), registry), registry)
    assert info.value.code == "llm_timeout"
    assert time.monotonic() - started < 5


async def test_a_connect_that_hangs_times_out(registry: ToolRegistry) -> None:
    with blackhole_port() as port:
        backend = OpenAIBackend(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(BackendError) as info:
            await drive(backend.steps(request(), registry), registry)
    assert info.value.code == "llm_timeout"
    assert time.monotonic() - started < 5


async def test_a_refused_connection_is_llm_unavailable(registry: ToolRegistry) -> None:
    with refusing_port() as port:
        backend = OpenAIBackend(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=5)
        with pytest.raises(BackendError) as info:
            await drive(backend.steps(request(), registry), registry)
    assert info.value.code == "llm_unavailable"
    assert str(port) in info.value.message


# --- configuration ------------------------------------------------------------------------------------


async def test_authorization_is_sent_only_when_a_key_is_set(fake: FakeLLM, registry: ToolRegistry) -> None:
    fake.script(answer("a"), answer("b"))
    await drive(backend_for(fake, api_key="sk-test-key").steps(request(), registry), registry)
    await drive(backend_for(fake, api_key="").steps(request(), registry), registry)
    with_key, without_key = fake.requests
    assert with_key.headers["authorization"] == "Bearer sk-test-key"
    assert "authorization" not in without_key.headers


async def test_from_settings_reads_the_agent_llm_settings(fake: FakeLLM, registry: ToolRegistry, settings: Any) -> None:
    from agents.backends import get_backend

    settings.AGENT_BACKEND = "openai"
    settings.AGENT_LLM_BASE_URL = fake.base_url + "/"
    settings.AGENT_LLM_MODEL = "tiny-model"
    settings.AGENT_LLM_API_KEY = "sk-from-settings"
    settings.AGENT_LLM_TIMEOUT_S = 7.5
    backend = get_backend()
    assert isinstance(backend, OpenAIBackend)
    assert backend.name == "openai"
    assert backend.timeout_s == 7.5
    fake.script(answer("hi"))
    await drive(backend.steps(request(), registry), registry)
    [sent] = fake.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "tiny-model"
    assert sent.headers["authorization"] == "Bearer sk-from-settings"
