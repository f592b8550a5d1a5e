"""Tools an agent may call, each registered with a JSON schema of its arguments.

Arguments are validated against the schema before the tool runs; a tool runs with a timeout; its
result is JSON data. Tools that read chat data take the asking user and go through selectors, so
an agent can never show a user something that user could not read.

A tool runs on the agent worker's event loop, next to every run the worker holds, so no argument
may make one slow or block the loop (docs/operations.md, "Agent tools"):
- calculator: bounded arithmetic (agents/calculator.py), evaluated in the sandbox's worker
  processes (agents/sandbox.py): bounded memory and CPU, killed after AGENT_TOOL_SANDBOX_TIMEOUT_S;
- current_time: a timezone must be one of the IANA names the system knows (looked up off the loop);
  without one, the asking user's own zone (agents/tools_conversation.py);
- search_history: a query of at most 200 characters without control characters, at most 20
  matches (each a snippet of at most 300 characters), read on its own thread (not the shared
  database thread) under a statement timeout; scope "all" reads only conversations every member of
  this one may read (agents/tools_conversation.py).
Whatever a tool does wrong ends as the tool's error, which the model reads; the run goes on.

A tool that changes something for other people declares `NeedsApproval` (docs/protocol.md §11):
the runtime then parks the run until a member with the approver role decides, and runs the tool
with the approved (possibly edited) arguments, or tells the agent it was not run:
- invite_member: adds a member of the conversation's workspace to the conversation (approver: an
  owner, who becomes the one who added them).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema
from django.conf import settings

from agents.analyst import analyst_tools
from agents.approvals import member_invite
from agents.backends.base import ToolOutcome
from agents.calculator import MAX_EXPRESSION_CHARS, calculate
from agents.conversation_digest import digest_tools
from agents.sandbox import Sandbox, SandboxLimits, ToolError
from agents.tool_context import ToolContext, ToolFn
from agents.tools_conversation import (
    MAX_QUERY_CHARS,
    MAX_SEARCH_RESULTS,
    MAX_TIMEZONE_CHARS,
    SCOPES,
    Clock,
    current_time,
    search_history,
    utc_now,
)
from chat.errors import ServiceError
from chat.publishing import run_service

__all__ = [
    "NeedsApproval",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "calculate",
    "default_registry",
    "shared_registry",
]

logger = logging.getLogger(__name__)

# The longest error text a tool call reports: the model reads it, and so does every member of the
# conversation (it is the tool_completed event's result).
MAX_ERROR_CHARS = 200


@dataclass(frozen=True)
class NeedsApproval:
    """The tool runs only once a member with `approver_role` approves the call. `reason` says to
    people, from the call's arguments, what approving it will do."""

    approver_role: Literal["owner", "member"]
    reason: Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    schema: dict[str, Any]
    fn: ToolFn
    timeout_s: float = 10.0
    approval: NeedsApproval | None = None

    def openai_spec(self) -> dict[str, Any]:
        description = self.description
        if self.approval is not None:
            # The model is told, so it can say that it asked and wait for the outcome instead of
            # promising the change; the result says when a person rejected it.
            description += (
                f" Needs the approval of a conversation {self.approval.approver_role} before it runs;"
                " if nobody approves, the result says it was not run."
            )
        return {
            "type": "function",
            "function": {"name": self.name, "description": description, "parameters": self.schema},
        }


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        # Built once: jsonschema.validate() checks the schema itself again on every call.
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def register(self, tool: Tool) -> None:
        jsonschema.Draft202012Validator.check_schema(tool.schema)
        self._tools[tool.name] = tool
        self._validators[tool.name] = jsonschema.Draft202012Validator(tool.schema)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        return [t.openai_spec() for t in self._tools.values()]

    def needs_approval(self, name: str) -> NeedsApproval | None:
        tool = self._tools.get(name)
        return tool.approval if tool is not None else None

    def problem(self, name: str, arguments: Any) -> str | None:
        """Why `arguments` cannot be given to tool `name` (unknown tool, not its schema), or None."""
        if name not in self._tools:
            return f"unknown tool {name!r}"
        invalid = jsonschema.exceptions.best_match(self._validators[name].iter_errors(arguments))
        return None if invalid is None else f"invalid arguments: {_schema_error(invalid)}"

    async def call(self, name: str, arguments: Any, ctx: ToolContext) -> ToolOutcome:
        problem = self.problem(name, arguments)
        if problem is not None:
            return _failed(problem)
        tool = self._tools[name]
        try:
            async with asyncio.timeout(tool.timeout_s):  # not wait_for: it can swallow a cancel on 3.11
                result = await tool.fn(ctx, arguments)
        except TimeoutError:
            return _failed(f"{name} timed out after {tool.timeout_s:g}s")
        except ToolError as exc:
            return _failed(str(exc))
        except Exception:
            # A bug or an outage under the tool: the model hears that the tool failed and the run goes
            # on; the traceback goes to the log, not to the conversation.
            logger.exception("tool %s failed", name)
            return _failed(f"{name} failed (an internal error)")
        return ToolOutcome(True, result)


def _failed(message: str) -> ToolOutcome:
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return ToolOutcome(False, {"error": message})


def _schema_error(exc: jsonschema.ValidationError) -> str:
    """jsonschema's message quotes the offending value (all 100,000 characters of it); this names
    the field and the rule instead."""
    field = ".".join(str(part) for part in exc.absolute_path) or "the arguments"
    bound = exc.validator_value
    known = sorted(exc.schema.get("properties", {})) if isinstance(exc.schema, dict) else []
    rules = {
        "maxLength": f"{field} is longer than {bound} characters",
        "minLength": f"{field} is shorter than {bound} character(s)",
        "maximum": f"{field} is more than {bound}",
        "minimum": f"{field} is less than {bound}",
        "type": f"{field} must be of type {bound}",
        "pattern": f"{field} must match {bound}",
        "enum": f"{field} must be one of {', '.join(str(v) for v in bound)}" if isinstance(bound, list) else "",
        "additionalProperties": f"{field} may only have the fields {', '.join(known)}",
    }
    return rules.get(str(exc.validator), exc.message)


# --- calculator -----------------------------------------------------------------------------------
_sandbox: Sandbox | None = None
_sandbox_lock = threading.Lock()


def calculator_sandbox() -> Sandbox:
    """The process's calculator sandbox, made on first use (its workers start with their first call).
    One per process, shared by every event loop: its calls wait in its own threads."""
    global _sandbox
    with _sandbox_lock:
        if _sandbox is None:
            _sandbox = Sandbox(
                SandboxLimits(
                    workers=settings.AGENT_TOOL_SANDBOX_WORKERS,
                    timeout_s=settings.AGENT_TOOL_SANDBOX_TIMEOUT_S,
                    memory_bytes=settings.AGENT_TOOL_SANDBOX_MEMORY_MB * 2**20,
                    cpu_s=settings.AGENT_TOOL_SANDBOX_CPU_S,
                    calls_per_worker=settings.AGENT_TOOL_SANDBOX_CALLS_PER_WORKER,
                ),
                name="calculator",
            )
        return _sandbox


async def _calculator(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    value = await calculator_sandbox().run(calculate, args["expression"])
    return {"expression": args["expression"], "value": value}


# --- invite_member (needs an owner's approval) ----------------------------------------------------
MAX_USERNAME_CHARS = 150  # Django's username field
# What Django's username validator allows (a leading @ of a mention is dropped): never a NUL,
# which PostgreSQL cannot compare with, or quotes and spaces, which no username has.
USERNAME_PATTERN = r"^@?[\w.@+-]+$"


async def _invite_member(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    if ctx.approved_by is None:  # the runtime runs it only after an approval; never without one
        raise ToolError("invite_member runs only once an owner approved it")
    username = args["username"].removeprefix("@")
    role = args.get("role", "member")
    try:
        await run_service(
            member_invite,
            conversation_id=ctx.conversation_id,
            approver_id=ctx.approved_by,
            username=username,
            role=role,
        )
    except ServiceError as exc:
        raise ToolError(exc.message) from exc
    return {"added": username, "role": role}


def _invite_reason(args: dict[str, Any]) -> str:
    return f"Add {args.get('username', '?')} to this conversation as {args.get('role', 'member')}."


def default_registry(*, clock: Clock = utc_now) -> ToolRegistry:
    """Every tool; `clock` is what current_time reads (a test gives a fixed one)."""
    registry = ToolRegistry()
    registry.register(
        Tool(
            "calculator",
            "Evaluate an arithmetic expression (+ - * / // % ** sqrt abs round).",
            {
                "type": "object",
                "properties": {"expression": {"type": "string", "minLength": 1, "maxLength": MAX_EXPRESSION_CHARS}},
                "required": ["expression"],
                "additionalProperties": False,
            },
            _calculator,
        )
    )
    registry.register(
        Tool(
            "current_time",
            "The current date and time in UTC and in an IANA timezone (e.g. 'Asia/Tokyo') if one is given,"
            " else in the asking user's own timezone.",
            {
                "type": "object",
                "properties": {"timezone": {"type": "string", "minLength": 1, "maxLength": MAX_TIMEZONE_CHARS}},
                "additionalProperties": False,
            },
            functools.partial(current_time, clock=clock),
        )
    )
    registry.register(
        Tool(
            "search_history",
            "Full-text search (any of the query's words) of this conversation's messages, or with scope 'all'"
            " (enterprise tier) of every conversation all of this conversation's members can read; best match"
            " first, each with a snippet (matched words between « and »), its author, conversation and times"
            " (ISO, and local in the user's timezone).",
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS},
                    "scope": {"type": "string", "enum": list(SCOPES)},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_RESULTS},
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            search_history,
        )
    )
    registry.register(
        Tool(
            "invite_member",
            "Add a member of this conversation's workspace to this conversation, as member or viewer.",
            {
                "type": "object",
                "properties": {
                    "username": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_USERNAME_CHARS,
                        "pattern": USERNAME_PATTERN,
                    },
                    "role": {"enum": ["member", "viewer"]},
                },
                "required": ["username"],
                "additionalProperties": False,
            },
            _invite_member,
            approval=NeedsApproval("owner", _invite_reason),
        )
    )
    # The analyst's tools (agents/analyst.py, agents/conversation_digest.py; their limits are in their docstrings).
    for name, description, schema, fn, timeout_s in analyst_tools(clock) + digest_tools(clock):
        registry.register(Tool(name, description, schema, fn, timeout_s=timeout_s))
    return registry


@functools.cache
def shared_registry() -> ToolRegistry:
    """The process's registry, for code that checks calls without running them (the `approve`
    command validates edited arguments with it): the same tools and schemas the runners use."""
    return default_registry()
