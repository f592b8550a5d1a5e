"""Executes one claimed run: turns a backend's steps into events through the run services.

Order per docs/protocol.md §4: agent_started (emitted by the claim), then thinking / tool_executing /
tool_completed / coalesced agent_delta as the steps come, then exactly one terminal event.

A call to a tool that needs approval (§11) parks the run (agents/approvals.py): approval_requested
is written, the backend's state with it, and this task ends. Once the call is decided a runner
claims the run again and `execute_run` starts with the decided call: tool_executing/tool_completed
with the approved arguments, or an outcome saying why it was not run; then the backend goes on.

The model backend is called through the process's `breaker("llm")` (chat/infra/error_recovery.py): while
the model server is down, runs fail at once with `llm_unavailable` (no connect attempt, no
timeout to wait out) and a message saying the user's message was kept; after the breaker's reset
timeout one run probes the server, and its first step closes the breaker again. Only the
backend's own failures count: a database error during a run never opens the LLM breaker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from agents import approvals, services
from agents.backends.base import (
    AgentInput,
    AnswerChunk,
    Backend,
    BackendError,
    CallTool,
    Resume,
    Step,
    Think,
    ToolOutcome,
    Usage,
)
from agents.models import AgentRun
from agents.services import ClaimedRun, ResumedCall
from agents.tools import ToolContext, ToolRegistry
from chat import selectors
from chat.errors import CircuitOpen, ErrorClass, ServiceError
from chat.infra.breakers import CircuitBreaker, breaker
from chat.infra.error_recovery import classify
from chat.models import AuthorKind
from chat.publishing import run_service
from chat.tiers import all_tiers
from monitoring import tracing
from monitoring.metrics.runs import RunTimer, tier_label

logger = logging.getLogger(__name__)

# What members read in agent_failed when the model server cannot be reached (or is not answering):
# the technical reason goes to the log, not to every member of the conversation.
LLM_UNAVAILABLE_MESSAGE = "The AI backend is unavailable right now; your message was saved. Try again in a moment."
LLM_TIMEOUT_MESSAGE = "The AI backend did not answer in time; your message was saved. Try again in a moment."
_HUMAN_MESSAGES = {"llm_unavailable": LLM_UNAVAILABLE_MESSAGE, "llm_timeout": LLM_TIMEOUT_MESSAGE}


class Emitter:
    """Appends a run's events and rings their doorbells; coalesces answer text into agent_delta
    chunks every AGENT_DELTA_COALESCE_MS instead of a frame per token."""

    def __init__(self, run: ClaimedRun) -> None:
        self.run = run
        self.timer: RunTimer | None = None  # agent_* metrics (set by execute_run)
        self.trace = tracing.NO_RUN  # the leg's root span (set by execute_run)
        self.answer = run.partial_text  # a resumed run's answer goes on from what it streamed
        self._pending = ""
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None

    async def emit(self, type: str, data: dict[str, Any]) -> None:
        await self.flush()
        async with self._lock:
            await run_service(
                services.run_emit,
                run_id=self.run.run_id,
                conversation_id=self.run.conversation_id,
                type=type,
                data=data,
            )
        if self.timer is not None:
            self.timer.event()

    def delta(self, text: str) -> None:
        self.answer += text
        self._pending += text
        if self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(settings.AGENT_DELTA_COALESCE_MS / 1000)
        self._timer = None
        await self._flush_pending()

    async def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._flush_pending()

    def discard(self) -> None:
        """Drop the answer text not flushed yet, and its pending flush."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = ""

    async def _flush_pending(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            text, self._pending = self._pending, ""
            await run_service(
                services.run_emit,
                run_id=self.run.run_id,
                conversation_id=self.run.conversation_id,
                type="agent_delta",
                data={"text": text},
            )
        if self.timer is not None:
            self.timer.token()

    async def tool_start(self, step: CallTool) -> None:
        await self.flush()
        await run_service(
            services.tool_call_start,
            run_id=self.run.run_id,
            conversation_id=self.run.conversation_id,
            call_id=step.call_id,
            tool=step.tool,
            arguments=step.arguments,
        )
        if self.timer is not None:
            self.timer.event()

    async def tool_finish(self, step: CallTool, outcome: ToolOutcome) -> None:
        await run_service(
            services.tool_call_finish,
            run_id=self.run.run_id,
            conversation_id=self.run.conversation_id,
            call_id=step.call_id,
            ok=outcome.ok,
            result=outcome.result,
        )

    async def park(self, step: CallTool, tools: ToolRegistry) -> bool:
        """Ask for approval of `step` and stop here; False if a cancel came first (nothing written)."""
        rule = tools.needs_approval(step.tool)
        assert rule is not None
        await self.flush()
        parked = await run_service(
            approvals.run_park,
            run_id=self.run.run_id,
            conversation_id=self.run.conversation_id,
            call_id=step.call_id,
            tool=step.tool,
            arguments=step.arguments,
            reason=rule.reason(step.arguments),
            approver_role=rule.approver_role,
            ttl_s=settings.AGENT_APPROVAL_TTL_S,
            backend_state=step.state or {},
        )
        return parked is not None

    def ended(self, how: str, code: str = "") -> None:
        if self.timer is not None:
            self.timer.ended(how)
        self.trace.outcome(how, code)


def _run_facts(run_id: str, trace: tuple[str, str] | None) -> tuple[float | None, str | None]:
    """When the run's prompt was queued and its requester's tier: the agent_* metrics' labels and
    their clock's start (the prompt was queued by another process: only the wall clock is shared).
    A run's first traced leg keeps its trace on the row first (`trace`: id and root span)."""
    if trace is not None:
        services.run_trace_note(run_id=run_id, trace_id=trace[0], trace_context=trace[1])
    row = AgentRun.objects.filter(id=run_id).values_list("created_at", "requested_by__tier").first()
    return (row[0].timestamp() if row[0] else None, row[1]) if row else (None, None)


def _load_history(conversation_id: str, before_seq: int, limit: int = 20) -> list[dict[str, str]]:
    """The turns before the triggering message (not the newest ones: with queued runs, later
    messages already exist while an earlier prompt is answered)."""
    rows = selectors.messages_before(conversation_id=conversation_id, before_seq=before_seq, limit=limit)
    return [{"role": "assistant" if kind == AuthorKind.AGENT else "user", "content": text} for kind, text in rows]


async def execute_run(
    run: ClaimedRun, *, backend: Backend, tools: ToolRegistry, stopping: asyncio.Event | None = None
) -> None:
    """Run to its terminal event. Cancellation (task.cancel()) ends it with agent_cancelled, unless
    `stopping` is set: the runner is shutting down and its hand-off ends the run (agents/liveness.py).
    The leg is one span (monitoring/tracing.py), current while it runs: tool calls and model
    rounds are its children."""
    emitter = Emitter(run)
    with tracing.run_span(
        run_id=run.run_id,
        agent=run.agent,
        conversation_id=run.conversation_id,
        traceparent=run.traceparent,
        resumed=run.resume is not None,
        continues=run.trace_context if run.resume is not None else "",
    ) as trace:
        emitter.trace = trace
        if run.resume is not None:
            trace.set("agent.approval.decision", run.resume.decision)
        await _execute(run, emitter, backend, tools, stopping)


async def _execute(
    run: ClaimedRun, emitter: Emitter, backend: Backend, tools: ToolRegistry, stopping: asyncio.Event | None
) -> None:
    usage: dict[str, Any] = {}
    try:
        queued_at, tier = await database_sync_to_async(_run_facts)(run.run_id, emitter.trace.to_store())
        tier = tier_label(tier, all_tiers())
        emitter.trace.set("agent.run.tier", tier)
        emitter.timer = RunTimer(tier=tier, queued_at=queued_at, tools=tools.names(), resumed=run.resume is not None)
        ctx = ToolContext(user_id=run.requested_by_id, conversation_id=run.conversation_id, run_id=run.run_id)
        if run.resume is None:
            history = await database_sync_to_async(_load_history)(run.conversation_id, run.trigger_seq)
            request = AgentInput(run.run_id, run.conversation_id, run.requested_by_id, run.prompt, history)
        else:  # the backend's state holds what it needs of the history
            resumed = await _decided_call(emitter, run.resume, tools, ctx)
            request = AgentInput(run.run_id, run.conversation_id, run.requested_by_id, run.prompt, resume=resumed)
        llm = breaker("llm")
        llm.before_call()  # CircuitOpen: fail now rather than wait out a timeout per run
        steps = backend.steps(request, tools)
        outcome: ToolOutcome | None = None
        first = True
        try:
            while True:
                step = await _next_step(llm, steps, outcome, first)
                first = False
                outcome = None
                if isinstance(step, AnswerChunk):
                    emitter.delta(step.text)
                elif isinstance(step, Think):
                    await emitter.emit("agent_thinking", {"text": step.text})
                elif isinstance(step, CallTool):
                    # A call the tool cannot take is not put to people: it fails as a tool error.
                    if tools.needs_approval(step.tool) and tools.problem(step.tool, step.arguments) is None:
                        if await emitter.park(step, tools):
                            emitter.trace.outcome("waiting_approval")
                            return  # parked: the decision or the expiry resumes the run on a runner
                        raise asyncio.CancelledError  # a cancel was asked for meanwhile
                    await emitter.tool_start(step)
                    called = time.monotonic()
                    with tracing.tool_span(step.tool, step.call_id) as span:
                        outcome = await tools.call(step.tool, step.arguments, ctx)
                        span.tool_outcome(outcome.ok, outcome.result)
                    emitter.timer.tool(step.tool, outcome.ok, time.monotonic() - called)
                    await emitter.tool_finish(step, outcome)
                elif isinstance(step, Usage):
                    usage = {"prompt_tokens": step.prompt_tokens, "completion_tokens": step.completion_tokens}
        except StopAsyncIteration:
            pass
        finally:
            await steps.aclose()
        await emitter.flush()

        async def complete() -> None:
            await run_service(
                services.run_complete,
                run_id=run.run_id,
                conversation_id=run.conversation_id,
                text=emitter.answer,
                usage=usage,
                # The OpenAI-compatible backend names its model; the built-in one is its own ("offline").
                model=str(getattr(backend, "model", backend.name)),
            )

        # Shielded: a cancel landing while the answer commits must not skip its doorbell (the
        # cancel then finds the run completed and writes nothing).
        await asyncio.shield(complete())
        emitter.ended("completed")
    except asyncio.CancelledError:
        if stopping is not None and stopping.is_set():
            emitter.discard()  # unsent answer text: nobody saw it, and a handed-back run starts over
            emitter.trace.outcome("worker_shutdown")
        else:
            await _end(emitter, "cancelled")
        raise
    except CircuitOpen as exc:
        if exc.name == "llm":
            logger.info("run %s not tried: %s", run.run_id, exc)
            await _end(emitter, "failed", "llm_unavailable", LLM_UNAVAILABLE_MESSAGE, retry_after_ms=exc.retry_after_ms)
        else:  # another dependency's breaker (the database's, while emitting): not the model's fault
            logger.warning("run %s stopped: %s", run.run_id, exc)
            await _end(emitter, "failed", "internal", f"the agent stopped: {exc.name} is unavailable")
    except BackendError as exc:
        # Members read the message: for an unreachable or silent server a plain one, the detail
        # (which host, which timeout) goes to the log.
        message = _HUMAN_MESSAGES.get(exc.code, exc.message)
        if classify(exc) is ErrorClass.TRANSIENT:
            logger.warning("run %s: the model server failed (%s): %s", run.run_id, exc.code, exc.message)
            retry_after_ms = breaker("llm").retry_after_ms() or None
            await _end(emitter, "failed", exc.code, message, retry_after_ms=retry_after_ms)
        else:
            # PERMANENT: the server answered and refused (bad key, unknown model) or broke the stream.
            logger.error("run %s: the model server refused (%s): %s", run.run_id, exc.code, exc.message)
            await _end(emitter, "failed", exc.code, message)
    except ServiceError as exc:
        # The run stopped being ours (reaped as lost, or already ended): nothing more to emit.
        logger.warning("run %s ended elsewhere: %s", run.run_id, exc.message)
        emitter.trace.outcome("ended_elsewhere")
    except Exception as exc:
        logger.exception("run %s crashed", run.run_id)
        await _end(emitter, "failed", "internal", f"the agent failed: {type(exc).__name__}")


async def _decided_call(emitter: Emitter, call: ResumedCall, tools: ToolRegistry, ctx: ToolContext) -> Resume:
    """The call the run waited on, as decided: run with the approved arguments (tool_executing and
    tool_completed), or not run at all and the backend told why."""
    if call.decision == "approved":
        step = CallTool(call.call_id, call.tool, call.arguments)
        await emitter.tool_start(step)
        approved = ToolContext(ctx.user_id, ctx.conversation_id, approved_by=call.decided_by_id, run_id=ctx.run_id)
        with tracing.tool_span(call.tool, call.call_id) as span:
            outcome = await tools.call(call.tool, call.arguments, approved)
            span.tool_outcome(outcome.ok, outcome.result)
        await emitter.tool_finish(step, outcome)
    elif call.decision == "rejected":
        who = call.decided_by_username or "a member"
        outcome = ToolOutcome(False, {"error": f"{who} rejected it, so it was not run", "approval": "rejected"})
    else:
        outcome = ToolOutcome(False, {"error": "nobody approved it in time, so it was not run", "approval": "expired"})
    return Resume(call.call_id, call.backend_state, outcome)


async def _next_step(
    llm: CircuitBreaker, steps: AsyncGenerator[Step, ToolOutcome | None], outcome: ToolOutcome | None, first: bool
) -> Step:
    """The backend's next step, with its outcome told to the LLM breaker: the first step proves
    the server reachable (a half-open probe closes the breaker); a BackendError counts if it is
    TRANSIENT; a cancel or another error only frees the probe slot."""
    try:
        step = await steps.asend(outcome)
    except StopAsyncIteration:
        if first:  # an empty answer is still an answer
            llm.record_success()
        raise
    except BackendError as exc:
        llm.record_failure(exc)
        raise
    except BaseException:
        llm.release()
        raise
    if first:
        llm.record_success()
    return step


async def _end(
    emitter: Emitter, how: str, code: str = "", message: str = "", *, retry_after_ms: int | None = None
) -> None:
    run = emitter.run

    # Shielded: the terminal event must be written even while this task is being cancelled.
    async def finish() -> None:
        try:
            await emitter.flush()
        except Exception:
            logger.warning("could not flush the last answer chunk of run %s", run.run_id, exc_info=True)
        if how == "cancelled":
            await run_service(services.run_finish_cancelled, run_id=run.run_id, conversation_id=run.conversation_id)
        else:
            await run_service(
                services.run_fail,
                run_id=run.run_id,
                conversation_id=run.conversation_id,
                code=code,
                message=message,
                retry_after_ms=retry_after_ms,
            )

    await asyncio.shield(finish())
    emitter.ended(how, code)
