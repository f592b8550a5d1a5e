"""What an agent backend is: an async generator of steps (think, call a tool, stream answer text)
that receives each tool's outcome back through `asend`. The runtime turns steps into events.

A tool call that needs a person's approval pauses the run for minutes, longer than a worker may
live, so the generator is not kept: the runtime stores the `state` the backend attached to that
`CallTool` (JSON: what it needs to go on) and, once the call is decided, starts the backend again
with `AgentInput.resume` (that state and the call's outcome). The backend continues from there as
if `asend` had returned the outcome."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

from chat.errors import ClassifiedError, ErrorClass

# BackendError codes (agents/backends/openai.py): the model server could not be reached in time.
_LLM_TRANSIENT_CODES = frozenset({"llm_unavailable", "llm_timeout"})
# HTTP statuses from the model server that say "not now" rather than "never".
_TRANSIENT_HTTP = frozenset({408, 429})


@dataclass(frozen=True)
class Think:
    text: str


@dataclass(frozen=True)
class CallTool:
    call_id: str
    tool: str
    arguments: dict[str, Any]
    # For a tool that needs approval: what the backend needs to continue after this call (JSON).
    state: dict[str, Any] | None = None


@dataclass(frozen=True)
class AnswerChunk:
    text: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


Step = Think | CallTool | AnswerChunk | Usage


@dataclass(frozen=True)
class ToolOutcome:
    ok: bool
    result: Any


@dataclass(frozen=True)
class Resume:
    """Go on after the call `call_id` that paused the run: `state` is what the backend attached to
    it, `outcome` what the call gave (the tool's result, or why it was not run)."""

    call_id: str
    state: dict[str, Any]
    outcome: ToolOutcome


@dataclass(frozen=True)
class AgentInput:
    run_id: str
    conversation_id: str
    user_id: int | None
    prompt: str
    # Earlier turns, oldest first: {"role": "user" | "assistant", "content": str}
    history: list[dict[str, str]] = field(default_factory=list)
    resume: Resume | None = None


class BackendError(ClassifiedError):
    """The model backend failed (unreachable, bad answer). The run fails with `code`. `status` is
    the model server's HTTP status when it answered with one (it tells a 503 from a 401)."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def error_class(self) -> ErrorClass:
        if self.code in _LLM_TRANSIENT_CODES:
            return ErrorClass.TRANSIENT
        if self.status is not None and (self.status >= 500 or self.status in _TRANSIENT_HTTP):
            return ErrorClass.TRANSIENT
        # A 4xx (bad key, unknown model, request refused) or a broken answer stream.
        return ErrorClass.PERMANENT


class Backend(Protocol):
    name: str

    def steps(self, request: AgentInput, tools: Any) -> AsyncGenerator[Step, ToolOutcome | None]: ...
