"""Executes one claimed run: turns a backend's steps into events through the run services.

Order per PROTOCOL §4: agent_started (emitted by the claim), then thinking / tool_executing /
tool_completed / coalesced agent_delta as the steps come, then exactly one terminal event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from agents import services
from agents.backends.base import (
    AgentInput,
    AnswerChunk,
    Backend,
    BackendError,
    CallTool,
    Think,
    ToolOutcome,
    Usage,
)
from agents.services import ClaimedRun
from agents.tools import ToolContext, ToolRegistry
from chat.realtime.bus import publish_events
from chat.services.conversations import ServiceError
from chat.services.events import StoredEvent

logger = logging.getLogger(__name__)


class Emitter:
    """Appends a run's events and rings their doorbells; coalesces answer text into agent_delta
    chunks every AGENT_DELTA_COALESCE_MS (DESIGN lesson 8) instead of a frame per token."""

    def __init__(self, run: ClaimedRun) -> None:
        self.run = run
        self.answer = ""
        self._pending = ""
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None

    async def _publish(self, event: StoredEvent | None) -> None:
        if event is not None:
            await publish_events([event])

    async def emit(self, type: str, data: dict[str, Any]) -> None:
        await self.flush()
        async with self._lock:
            event = await database_sync_to_async(services.run_emit)(
                run_id=self.run.run_id, conversation_id=self.run.conversation_id, type=type, data=data
            )
        await self._publish(event)

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

    async def _flush_pending(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            text, self._pending = self._pending, ""
            event = await database_sync_to_async(services.run_emit)(
                run_id=self.run.run_id,
                conversation_id=self.run.conversation_id,
                type="agent_delta",
                data={"text": text},
            )
        await self._publish(event)

    async def tool_start(self, step: CallTool) -> None:
        await self.flush()
        event = await database_sync_to_async(services.tool_call_start)(
            run_id=self.run.run_id,
            conversation_id=self.run.conversation_id,
            call_id=step.call_id,
            tool=step.tool,
            arguments=step.arguments,
        )
        await self._publish(event)

    async def tool_finish(self, step: CallTool, outcome: ToolOutcome) -> None:
        event = await database_sync_to_async(services.tool_call_finish)(
            run_id=self.run.run_id,
            conversation_id=self.run.conversation_id,
            call_id=step.call_id,
            ok=outcome.ok,
            result=outcome.result,
        )
        await self._publish(event)


def _load_history(conversation_id: str, before_seq: int, limit: int = 20) -> list[dict[str, str]]:
    """The turns before the triggering message (not the newest ones: with queued runs, later
    messages already exist while an earlier prompt is answered)."""
    from chat.models import AuthorKind, Message

    rows = list(
        Message.objects.filter(conversation_id=conversation_id, seq__lt=before_seq)
        .order_by("-seq")
        .values_list("author_kind", "text")[:limit]
    )
    rows.reverse()
    return [{"role": "assistant" if kind == AuthorKind.AGENT else "user", "content": text} for kind, text in rows]


async def execute_run(run: ClaimedRun, *, backend: Backend, tools: ToolRegistry) -> None:
    """Run to its terminal event. Cancellation (task.cancel()) ends it with agent_cancelled."""
    emitter = Emitter(run)
    usage: dict[str, Any] = {}
    try:
        history = await database_sync_to_async(_load_history)(run.conversation_id, run.trigger_seq)
        request = AgentInput(run.run_id, run.conversation_id, run.requested_by_id, run.prompt, history)
        ctx = ToolContext(user_id=run.requested_by_id, conversation_id=run.conversation_id)
        steps = backend.steps(request, tools)
        outcome: ToolOutcome | None = None
        try:
            while True:
                step = await steps.asend(outcome)
                outcome = None
                if isinstance(step, AnswerChunk):
                    emitter.delta(step.text)
                elif isinstance(step, Think):
                    await emitter.emit("agent_thinking", {"text": step.text})
                elif isinstance(step, CallTool):
                    await emitter.tool_start(step)
                    outcome = await tools.call(step.tool, step.arguments, ctx)
                    await emitter.tool_finish(step, outcome)
                elif isinstance(step, Usage):
                    usage = {"prompt_tokens": step.prompt_tokens, "completion_tokens": step.completion_tokens}
        except StopAsyncIteration:
            pass
        finally:
            await steps.aclose()
        await emitter.flush()

        async def complete() -> None:
            event = await database_sync_to_async(services.run_complete)(
                run_id=run.run_id, conversation_id=run.conversation_id, text=emitter.answer, usage=usage
            )
            await publish_events([event])

        # Shielded: a cancel landing while the answer commits must not skip its doorbell (the
        # cancel then finds the run completed and writes nothing).
        await asyncio.shield(complete())
    except asyncio.CancelledError:
        await _end(emitter, "cancelled")
        raise
    except BackendError as exc:
        await _end(emitter, "failed", exc.code, exc.message)
    except ServiceError as exc:
        # The run stopped being ours (reaped as lost, or already ended): nothing more to emit.
        logger.warning("run %s ended elsewhere: %s", run.run_id, exc.message)
    except Exception as exc:
        logger.exception("run %s crashed", run.run_id)
        await _end(emitter, "failed", "internal", f"the agent failed: {type(exc).__name__}")


async def _end(emitter: Emitter, how: str, code: str = "", message: str = "") -> None:
    run = emitter.run

    # Shielded: the terminal event must be written even while this task is being cancelled.
    async def finish() -> None:
        try:
            await emitter.flush()
        except Exception:
            logger.warning("could not flush the last answer chunk of run %s", run.run_id, exc_info=True)
        if how == "cancelled":
            event = await database_sync_to_async(services.run_finish_cancelled)(
                run_id=run.run_id, conversation_id=run.conversation_id
            )
        else:
            event = await database_sync_to_async(services.run_fail)(
                run_id=run.run_id, conversation_id=run.conversation_id, code=code, message=message
            )
        if event is not None:
            await publish_events([event])

    await asyncio.shield(finish())
