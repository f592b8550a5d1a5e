"""Who is calling a tool, from where: the one value every tool function receives.

Its own module because both tool modules take it (agents/tools.py registers the tools of
agents/tools_conversation.py), and neither should import the other for a type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolContext:
    user_id: int | None
    conversation_id: str
    # Who approved this call, for a tool that needs approval (None for every other tool).
    approved_by: int | None = None
    # The run calling: its trigger message is the question, never one of search_history's answers.
    run_id: str | None = None


ToolFn = Callable[[ToolContext, dict[str, Any]], Awaitable[Any]]
