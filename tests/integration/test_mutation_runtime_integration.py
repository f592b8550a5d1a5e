"""agents.runtime's exact behaviour against the real database: which events a run writes, in which
order, with which codes and messages, what the backend is given, and what the LLM breaker is told
at each step. The backend is a script (the model server is not what is tested here); the services,
the event log and the breaker are the real ones."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from channels.db import database_sync_to_async

from agents import runtime
from agents.backends.base import AgentInput, AnswerChunk, BackendError, CallTool, Step, Think, ToolOutcome, Usage
from agents.models import AgentRun, Approval, RunStatus
from agents.services import ClaimedRun, ResumedCall, run_claim_next, run_fail, run_request_cancel
from agents.tools import NeedsApproval, Tool, ToolContext, ToolRegistry
from chat.errors import CircuitOpen
from chat.infra import breakers
from chat.infra.breakers import CircuitBreaker, breaker
from chat.selectors import events_after
from tests.support import factories
from tests.support.waiting import eventually

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("runner", "fast_password_hashing")]

ECHO_SCHEMA = {
    "type": "object",
    "properties": {"x": {"type": "integer"}},
    "required": ["x"],
    "additionalProperties": False,
}


async def _echo(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"got": args, "approved_by": ctx.approved_by, "user": ctx.user_id}


def registry(*, approval: bool = False) -> ToolRegistry:
    tools = ToolRegistry()
    tools.register(Tool("echo", "Echo.", ECHO_SCHEMA, _echo))
    if approval:
        rule = NeedsApproval("owner", lambda args: f"Echo {args.get('x')} for everyone.")
        tools.register(Tool("guarded", "Echo, once approved.", ECHO_SCHEMA, _echo, approval=rule))
    return tools


class Script:
    """A backend that yields its script's steps (an exception in the script is raised there) and
    records what it was asked and every outcome it was sent back."""

    name = "script"

    def __init__(self, *script: Any) -> None:
        self.script = script
        self.requests: list[AgentInput] = []
        self.sent: list[ToolOutcome | None] = []
        self.closed = False

    async def steps(self, request: AgentInput, tools: Any) -> AsyncGenerator[Step, ToolOutcome | None]:
        self.requests.append(request)
        try:
            for item in self.script:
                if isinstance(item, BaseException):
                    raise item
                if callable(item):
                    await item()
                    continue
                self.sent.append((yield item))
        finally:
            self.closed = True


async def claim(make_user: Any, text: str = "hi") -> tuple[ClaimedRun, Any]:
    owner = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner)
    sent = await factories.message(conv, owner, text)
    run = await database_sync_to_async(run_claim_next)(worker_id="test:1")
    assert run is not None
    assert run.run_id == str(sent.run_id)
    return run, owner


async def run_events(run: ClaimedRun) -> list[tuple[str, dict[str, Any]]]:
    events = await database_sync_to_async(events_after)(conversation_id=run.conversation_id, after_seq=0)
    return [(e.type, dict(e.data)) for e in events if e.data.get("run_id") == run.run_id]


def without_run_id(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(t, {k: v for k, v in d.items() if k != "run_id"}) for t, d in events]


async def row(run: ClaimedRun) -> AgentRun:
    return await AgentRun.objects.aget(id=run.run_id)


# --- _load_history ---------------------------------------------------------------------------------


def test_history_is_the_twenty_messages_before_the_trigger_oldest_first(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    seqs = [factories.message_sync(conv, owner, f"m{i}").seq for i in range(23)]
    history = runtime._load_history(conv, seqs[22])
    assert history == [{"role": "user", "content": f"m{i}"} for i in range(2, 22)]
    assert runtime._load_history(conv, seqs[3], limit=2) == [
        {"role": "user", "content": "m1"},
        {"role": "user", "content": "m2"},
    ]


async def test_an_answer_is_history_for_the_next_run_with_the_assistant_role(make_user: Any) -> None:
    first, owner = await claim(make_user, "q1")
    await runtime.execute_run(first, backend=Script(AnswerChunk("a1")), tools=registry())
    sent = await factories.message(first.conversation_id, owner, "q2")
    second = await database_sync_to_async(run_claim_next)(worker_id="test:1")
    assert second is not None
    assert second.run_id == str(sent.run_id)
    backend = Script(AnswerChunk("a2"))
    await runtime.execute_run(second, backend=backend, tools=registry())
    (request,) = backend.requests
    assert request == AgentInput(
        second.run_id,
        second.conversation_id,
        owner.id,
        "q2",
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
    )


# --- a run that completes --------------------------------------------------------------------------


async def test_thinking_coalesced_answer_and_usage_then_one_completion(make_user: Any) -> None:
    run, owner = await claim(make_user)
    backend = Script(Think("pondering"), AnswerChunk("Hel"), AnswerChunk("lo"), Usage(3, 4))
    await runtime.execute_run(run, backend=backend, tools=registry())
    events = without_run_id(await run_events(run))
    assert [t for t, _ in events] == ["agent_started", "agent_thinking", "agent_delta", "agent_completed"]
    assert events[1][1] == {"text": "pondering"}
    assert events[2][1] == {"text": "Hello"}
    completed = events[3][1]
    assert (completed["text"], completed["usage"]) == ("Hello", {"prompt_tokens": 3, "completion_tokens": 4})
    done = await row(run)
    assert (done.status, done.partial_text, done.usage) == (RunStatus.COMPLETED, "Hello", completed["usage"])
    assert backend.sent == [None, None, None, None]
    assert backend.closed
    assert breaker("llm").state == "closed"


async def test_answer_text_is_flushed_in_chunks_once_the_coalescing_window_passes(
    make_user: Any, settings: Any
) -> None:
    settings.AGENT_DELTA_COALESCE_MS = 1
    run, _ = await claim(make_user)

    async def first_chunk_written() -> None:
        await eventually(
            lambda: _deltas(run), 10, "the first chunk written on its own once the window passed", interval=0.005
        )

    backend = Script(AnswerChunk("one "), first_chunk_written, AnswerChunk("two"))
    await runtime.execute_run(run, backend=backend, tools=registry())
    events = without_run_id(await run_events(run))
    assert [d["text"] for t, d in events if t == "agent_delta"] == ["one ", "two"]
    assert events[-1][0] == "agent_completed"
    assert events[-1][1]["text"] == "one two"


async def _deltas(run: ClaimedRun) -> Any:
    return any(t == "agent_delta" for t, _ in await run_events(run))


async def test_an_empty_answer_completes_and_closes_a_probing_breaker(make_user: Any) -> None:
    run, _ = await claim(make_user)
    probing = CircuitBreaker("llm", failure_threshold=1, reset_timeout_s=0.0)
    probing.record_failure()
    breakers._registry["llm"] = probing
    await runtime.execute_run(run, backend=Script(), tools=registry())
    events = without_run_id(await run_events(run))
    assert [t for t, _ in events] == ["agent_started", "agent_completed"]
    assert probing.state == "closed"


async def test_the_first_step_closes_a_probing_breaker(make_user: Any) -> None:
    run, _ = await claim(make_user)
    probing = CircuitBreaker("llm", failure_threshold=1, reset_timeout_s=0.0)
    probing.record_failure()
    breakers._registry["llm"] = probing

    async def still_probing() -> None:
        assert probing.state == "closed"  # closed by the first step, before the run ends

    await runtime.execute_run(run, backend=Script(AnswerChunk("x"), still_probing), tools=registry())
    assert [t for t, _ in await run_events(run)][-1] == "agent_completed"


# --- tools -----------------------------------------------------------------------------------------


async def test_a_tool_call_runs_and_its_outcome_goes_back_to_the_backend(make_user: Any) -> None:
    run, owner = await claim(make_user)
    backend = Script(CallTool("c1", "echo", {"x": 1}), AnswerChunk("done"))
    await runtime.execute_run(run, backend=backend, tools=registry())
    events = without_run_id(await run_events(run))
    assert [t for t, _ in events] == [
        "agent_started",
        "tool_executing",
        "tool_completed",
        "agent_delta",
        "agent_completed",
    ]
    assert events[1][1] == {"call_id": "c1", "tool": "echo", "arguments": {"x": 1}}
    result = {"got": {"x": 1}, "approved_by": None, "user": owner.id}
    assert {k: v for k, v in events[2][1].items() if k != "duration_ms"} == {
        "call_id": "c1",
        "tool": "echo",
        "ok": True,
        "result": result,
    }
    assert backend.sent == [ToolOutcome(True, result), None]


async def test_a_tool_call_that_needs_approval_parks_the_run(make_user: Any, settings: Any) -> None:
    settings.AGENT_APPROVAL_TTL_S = 120
    run, _ = await claim(make_user)
    backend = Script(AnswerChunk("let me ask"), CallTool("c1", "guarded", {"x": 2}, state={"k": "v"}))
    await runtime.execute_run(run, backend=backend, tools=registry(approval=True))
    events = without_run_id(await run_events(run))
    assert [t for t, _ in events] == ["agent_started", "agent_delta", "approval_requested"]
    requested = events[2][1]
    assert {k: v for k, v in requested.items() if k != "expires_at"} == {
        "call_id": "c1",
        "tool": "guarded",
        "arguments": {"x": 2},
        "reason": "Echo 2 for everyone.",
        "approver_role": "owner",
    }
    assert (await row(run)).status == RunStatus.WAITING_APPROVAL
    approval = await Approval.objects.aget(run_id=uuid.UUID(run.run_id))
    assert approval.backend_state == {"k": "v"}
    assert round((approval.expires_at - approval.requested_at).total_seconds()) == 120


async def test_a_call_that_needs_approval_but_is_invalid_fails_as_a_tool_error_without_asking(
    make_user: Any,
) -> None:
    run, _ = await claim(make_user)
    backend = Script(CallTool("c1", "guarded", {"x": "not a number"}), AnswerChunk("ok"))
    await runtime.execute_run(run, backend=backend, tools=registry(approval=True))
    types = [t for t, _ in await run_events(run)]
    assert types == ["agent_started", "tool_executing", "tool_completed", "agent_delta", "agent_completed"]
    assert backend.sent[0] is not None
    assert backend.sent[0].ok is False


async def test_a_cancel_asked_for_before_the_park_ends_the_run_cancelled(make_user: Any) -> None:
    run, owner = await claim(make_user)

    async def cancel_now() -> None:
        await database_sync_to_async(run_request_cancel)(
            run_id=run.run_id, by_user_id=owner.id, by_username=owner.username
        )

    backend = Script(cancel_now, CallTool("c1", "guarded", {"x": 2}))
    with pytest.raises(asyncio.CancelledError):
        await runtime.execute_run(run, backend=backend, tools=registry(approval=True))
    types = [t for t, _ in await run_events(run)]
    assert types == ["agent_started", "agent_cancelled"]
    assert await Approval.objects.filter(run_id=uuid.UUID(run.run_id)).aexists() is False


async def _parked(make_user: Any) -> tuple[ClaimedRun, Any]:
    run, owner = await claim(make_user)
    backend = Script(CallTool("c1", "guarded", {"x": 2}))
    await runtime.execute_run(run, backend=backend, tools=registry(approval=True))
    return run, owner


@pytest.mark.parametrize(
    ("decision", "who", "error"),
    [
        ("rejected", "bob", "bob rejected it, so it was not run"),
        ("rejected", "", "a member rejected it, so it was not run"),
        ("expired", "", "nobody approved it in time, so it was not run"),
    ],
)
async def test_a_call_not_approved_is_not_run_and_the_backend_is_told_why(
    make_user: Any, decision: str, who: str, error: str
) -> None:
    run, _ = await claim(make_user)
    call = ResumedCall("c1", "guarded", decision, {"x": 2}, None, who, {"k": "v"})
    resumed = await runtime._decided_call(runtime.Emitter(run), call, registry(approval=True), ToolContext(1, "c"))
    assert resumed == runtime.Resume("c1", {"k": "v"}, ToolOutcome(False, {"error": error, "approval": decision}))
    assert [t for t, _ in await run_events(run)] == ["agent_started"]  # nothing run, nothing written


async def test_an_approved_call_runs_with_the_approvers_id(make_user: Any) -> None:
    run, owner = await claim(make_user)
    call = ResumedCall("c1", "guarded", "approved", {"x": 5}, owner.id, owner.username, {"k": "v"})
    ctx = ToolContext(owner.id, run.conversation_id)
    resumed = await runtime._decided_call(runtime.Emitter(run), call, registry(approval=True), ctx)
    result = {"got": {"x": 5}, "approved_by": owner.id, "user": owner.id}
    assert resumed == runtime.Resume("c1", {"k": "v"}, ToolOutcome(True, result))
    events = without_run_id(await run_events(run))
    assert [t for t, _ in events] == ["agent_started", "tool_executing", "tool_completed"]
    assert events[1][1] == {"call_id": "c1", "tool": "guarded", "arguments": {"x": 5}}


# --- failures --------------------------------------------------------------------------------------


async def failure(run: ClaimedRun) -> dict[str, Any]:
    events = await run_events(run)
    assert [t for t, _ in events][-1] == "agent_failed"
    assert [t for t, _ in events].count("agent_failed") == 1
    return dict(events[-1][1]["error"])


async def test_an_unreachable_model_server_fails_the_run_with_a_plain_message(
    make_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agents.runtime")
    run, _ = await claim(make_user)
    backend = Script(BackendError("llm_unavailable", "connect to 10.0.0.1:8000 refused"))
    await runtime.execute_run(run, backend=backend, tools=registry())
    assert await failure(run) == {"code": "llm_unavailable", "message": runtime.LLM_UNAVAILABLE_MESSAGE}
    assert "the model server failed (llm_unavailable): connect to 10.0.0.1:8000 refused" in caplog.text
    assert breaker("llm").snapshot()["failures"] == 1
    assert backend.closed


async def test_a_silent_model_server_says_so_and_an_opened_breaker_says_when_to_retry(
    make_user: Any, settings: Any
) -> None:
    settings.CHAT_BREAKER_LLM_FAILURES = 1
    settings.CHAT_BREAKER_LLM_RESET_S = 7
    breakers.reset_breakers()
    run, _ = await claim(make_user)
    await runtime.execute_run(run, backend=Script(BackendError("llm_timeout", "no answer in 60s")), tools=registry())
    error = await failure(run)
    assert (error["code"], error["message"]) == ("llm_timeout", runtime.LLM_TIMEOUT_MESSAGE)
    assert 6000 < error["retry_after_ms"] <= 7000
    assert breaker("llm").state == "open"


async def test_a_refusing_model_server_fails_with_its_own_message_and_never_opens_the_breaker(
    make_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agents.runtime")
    run, _ = await claim(make_user)
    backend = Script(AnswerChunk("par"), BackendError("llm_refused", "bad key", status=401))
    await runtime.execute_run(run, backend=backend, tools=registry())
    assert await failure(run) == {"code": "llm_refused", "message": "bad key"}
    assert "the model server refused (llm_refused): bad key" in caplog.text
    assert breaker("llm").snapshot()["failures"] == 0
    types = [t for t, _ in await run_events(run)]
    assert types == ["agent_started", "agent_delta", "agent_failed"]  # what streamed is kept


async def test_an_open_llm_breaker_fails_the_run_at_once_without_calling_the_backend(
    make_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agents.runtime")
    run, _ = await claim(make_user)
    opened = CircuitBreaker("llm", failure_threshold=1, reset_timeout_s=30.0)
    opened.record_failure()
    breakers._registry["llm"] = opened
    backend = Script(AnswerChunk("never"))
    await runtime.execute_run(run, backend=backend, tools=registry())
    error = await failure(run)
    assert (error["code"], error["message"]) == ("llm_unavailable", runtime.LLM_UNAVAILABLE_MESSAGE)
    assert 29000 < error["retry_after_ms"] <= 30000
    assert backend.requests == []
    assert f"run {run.run_id} not tried" in caplog.text


async def test_another_dependencys_breaker_is_not_the_models_fault(make_user: Any) -> None:
    run, _ = await claim(make_user)
    await runtime.execute_run(run, backend=Script(CircuitOpen("postgres", 1000)), tools=registry())
    assert await failure(run) == {"code": "internal", "message": "the agent stopped: postgres is unavailable"}
    assert breaker("llm").snapshot()["failures"] == 0


async def test_a_crash_fails_the_run_naming_only_the_exception_class(
    make_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    run, _ = await claim(make_user)
    probing = CircuitBreaker("llm", failure_threshold=1, reset_timeout_s=0.0)
    probing.record_failure()
    breakers._registry["llm"] = probing
    await runtime.execute_run(run, backend=Script(ValueError("secret detail")), tools=registry())
    assert await failure(run) == {"code": "internal", "message": "the agent failed: ValueError"}
    assert f"run {run.run_id} crashed" in caplog.text
    # Not the model's failure: the probe slot is freed, the breaker neither opened nor closed.
    assert (probing.state, probing.retry_after_ms()) == ("half_open", 0)


async def test_a_run_ended_elsewhere_writes_nothing_more(make_user: Any, caplog: pytest.LogCaptureFixture) -> None:
    run, _ = await claim(make_user)

    async def reaped() -> None:
        await database_sync_to_async(run_fail)(
            run_id=run.run_id, conversation_id=run.conversation_id, code="lost", message="reaped"
        )

    await runtime.execute_run(run, backend=Script(reaped, Think("too late")), tools=registry())
    assert [t for t, _ in await run_events(run)] == ["agent_started", "agent_failed"]
    assert f"run {run.run_id} ended elsewhere" in caplog.text


async def test_a_cancelled_run_keeps_what_it_streamed_and_ends_cancelled(make_user: Any) -> None:
    run, _ = await claim(make_user)
    hold = asyncio.Event()
    backend = Script(AnswerChunk("partial"), hold.wait)
    task = asyncio.create_task(runtime.execute_run(run, backend=backend, tools=registry()))
    await eventually(lambda: backend.sent == [None], 10, "the first chunk taken")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    events = without_run_id(await run_events(run))
    assert [t for t, _ in events] == ["agent_started", "agent_delta", "agent_cancelled"]
    assert events[1][1] == {"text": "partial"}
    assert events[2][1]["partial_text"] == "partial"
    assert (await row(run)).status == RunStatus.CANCELLED
    assert backend.closed
