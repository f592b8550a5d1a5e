"""agents/agui.py, pure: runs that the integration test's calculator run does not show — compacted answer
text, a failure, a cancellation, text on both sides of a tool call — and the `resume` answers it reads.
Every event is validated again through the package's event union, as a client would parse it."""

from __future__ import annotations

from typing import Any

import pytest
from ag_ui.core import Event, EventType, RunAgentInput
from pydantic import TypeAdapter

from agents import agui

EVENT: TypeAdapter[Any] = TypeAdapter(Event)
RUN = "7d0c3c7e-7a53-4d3a-9d3e-1f6c1f0b1a11"
TS = "2026-12-02T03:00:00.000Z"


def frame(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "seq": 1, "ts": TS, "data": {"run_id": RUN, **data}}


def run(*frames: dict[str, Any], live: bool = False) -> list[Any]:
    events = agui.translate(thread_id="c1", run_id=RUN, frames=list(frames), live=live)
    return [EVENT.validate_python(e.model_dump(mode="json", by_alias=True)) for e in events]


def kinds(events: list[Any]) -> list[str]:
    return [e.type.value for e in events]


def test_a_run_whose_deltas_were_compacted_exports_its_whole_answer() -> None:
    events = run(frame("agent_started"), frame("agent_completed", message_id="m1", text="all of it", usage={}))
    assert kinds(events) == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert events[2].delta == "all of it"
    assert events[-1].result == {"message_id": "m1"}


def test_text_on_both_sides_of_a_tool_call_is_two_messages_and_only_the_rest_is_sent_at_the_end() -> None:
    events = run(
        frame("agent_started"),
        frame("agent_delta", text="Let me check. "),
        frame("tool_executing", call_id="call_1", tool="current_time", arguments={}),
        frame("tool_completed", call_id="call_1", tool="current_time", ok=True, result={"utc": "x"}, duration_ms=3),
        frame("agent_delta", text="It is "),
        frame("agent_completed", message_id="m1", text="Let me check. It is noon.", usage={"prompt_tokens": 3}),
    )
    texts = [(e.type, getattr(e, "message_id", None)) for e in events if e.type.value.startswith("TEXT")]
    assert texts == [
        (EventType.TEXT_MESSAGE_START, f"{RUN}.m1"),
        (EventType.TEXT_MESSAGE_CONTENT, f"{RUN}.m1"),
        (EventType.TEXT_MESSAGE_END, f"{RUN}.m1"),
        (EventType.TEXT_MESSAGE_START, f"{RUN}.m2"),
        (EventType.TEXT_MESSAGE_CONTENT, f"{RUN}.m2"),
        (EventType.TEXT_MESSAGE_CONTENT, f"{RUN}.m2"),
        (EventType.TEXT_MESSAGE_END, f"{RUN}.m2"),
    ]
    assert [e.delta for e in events if e.type == EventType.TEXT_MESSAGE_CONTENT] == [
        "Let me check. ",
        "It is ",
        "noon.",
    ]
    assert events[-1].usage[0].input_tokens == 3


def test_a_failure_is_run_error_and_a_cancellation_a_cancelled_outcome() -> None:
    failed = run(
        frame("agent_started"),
        frame("agent_thinking", text="hmm"),
        frame("agent_delta", text="par"),
        frame("agent_failed", error={"code": "llm_unavailable", "message": "the model server is down"}),
    )
    assert kinds(failed) == [
        "RUN_STARTED",
        "STEP_STARTED",
        "STEP_FINISHED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_ERROR",
    ]
    assert (failed[-1].code, failed[-1].message) == ("llm_unavailable", "the model server is down")
    cancelled = run(frame("agent_started"), frame("agent_cancelled", by={"id": 1}, partial_text="half"))
    assert cancelled[-1].outcome.type == "cancelled"
    assert [e.delta for e in cancelled if e.type == EventType.TEXT_MESSAGE_CONTENT] == ["half"]


def test_a_run_cancelled_before_it_started_still_opens_with_run_started() -> None:
    events = run(frame("agent_cancelled", by={"id": 1}, partial_text=""))
    assert kinds(events) == ["RUN_STARTED", "RUN_FINISHED"]


def test_nothing_follows_the_last_event() -> None:
    translator = agui.RunTranslator(thread_id="c1", run_id=RUN, live=True)
    translator.feed(frame("agent_started"))
    translator.feed(frame("approval_requested", call_id="call_1", tool="t", arguments={}, reason="r"))
    assert translator.done
    assert translator.feed(frame("agent_delta", text="late")) == []


def body(**fields: Any) -> RunAgentInput:
    return RunAgentInput.model_validate({"threadId": "c1", "runId": "r1", "messages": [], **fields})


def test_resume_answers() -> None:
    answer = agui.resume_answer(body(resume=[{"interruptId": f"{RUN}.call_1", "status": "resolved"}]))
    assert answer == agui.ResumeAnswer(RUN, "call_1", "approve", None)
    edited = {"decision": "approve", "arguments": {"username": "bob"}}
    answer = agui.resume_answer(body(resume=[{"interruptId": f"{RUN}.c", "status": "resolved", "payload": edited}]))
    assert (answer.decision, answer.arguments) == ("approve", {"username": "bob"})
    answer = agui.resume_answer(body(resume=[{"interruptId": f"{RUN}.c", "status": "cancelled"}]))
    assert answer.decision == "reject"
    for wrong in (
        [],
        [{"interruptId": "a.b", "status": "resolved"}] * 2,
        [{"interruptId": "a.b", "status": "resolved", "payload": "yes"}],
        [{"interruptId": "a.b", "status": "resolved", "payload": {"decision": "maybe"}}],
        [{"interruptId": "a.b", "status": "resolved", "payload": {"decision": "reject", "arguments": {}}}],
    ):
        with pytest.raises(agui.InputProblem):
            agui.resume_answer(body(resume=wrong))


def test_the_prompt_is_the_last_users_text() -> None:
    parts = [{"type": "text", "text": "what is "}, {"type": "text", "text": "2 * 2?"}]
    assert agui.user_prompt(body(messages=[{"id": "m1", "role": "user", "content": parts}])) == ("m1", "what is 2 * 2?")
    image = {"type": "image", "source": {"type": "url", "value": "https://example.com/a.png"}}
    for messages in (
        [],
        [{"id": "m1", "role": "assistant", "content": "hi"}],
        [{"id": "m1", "role": "user", "content": [image]}],
        [{"id": "x" * 65, "role": "user", "content": "hi"}],
    ):
        with pytest.raises(agui.InputProblem):
            agui.user_prompt(body(messages=messages))
