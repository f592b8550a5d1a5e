"""What an agent backend is: an async generator of steps (think, call a tool, stream answer text)
that receives each tool's outcome back through `asend`. The runtime turns steps into events."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Think:
    text: str


@dataclass(frozen=True)
class CallTool:
    call_id: str
    tool: str
    arguments: dict[str, Any]


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
class AgentInput:
    run_id: str
    conversation_id: str
    user_id: int | None
    prompt: str
    # Earlier turns, oldest first: {"role": "user" | "assistant", "content": str}
    history: list[dict[str, str]] = field(default_factory=list)


class BackendError(Exception):
    """The model backend failed (unreachable, bad answer). The run fails with `code`. `status` is
    the model server's HTTP status when it answered with one (it tells a 503 from a 401)."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class Backend(Protocol):
    name: str

    def steps(self, request: AgentInput, tools: Any) -> AsyncGenerator[Step, ToolOutcome | None]: ...
