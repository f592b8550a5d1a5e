"""Tools an agent may call, each registered with a JSON schema of its arguments.

Arguments are validated against the schema before the tool runs; a tool runs with a timeout; its
result is JSON data. Tools that read chat data take the asking user and go through selectors, so
an agent can never show a user something that user could not read.

A tool runs on the agent worker's event loop, next to every run the worker holds, so no argument
may make one slow or block the loop (docs/operations.md, "Agent tools"):
- calculator: bounded arithmetic (agents/calculator.py), evaluated in the sandbox's worker
  processes (agents/sandbox.py): bounded memory and CPU, killed after AGENT_TOOL_SANDBOX_TIMEOUT_S;
- current_time: a timezone must be one of the IANA names the system knows (looked up off the loop);
- search_history: a query of at most 200 characters without control characters, at most 20
  matches, read on its own thread (not the shared database thread) under a statement timeout.
Whatever a tool does wrong ends as the tool's error, which the model reads; the run goes on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import unicodedata
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jsonschema
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import OperationalError, connection, transaction

from agents.backends.base import ToolOutcome
from agents.calculator import MAX_EXPRESSION_CHARS, calculate
from agents.sandbox import Sandbox, SandboxLimits, ToolError
from chat.selectors import search_messages

__all__ = ["Tool", "ToolContext", "ToolError", "ToolRegistry", "calculate", "default_registry"]

logger = logging.getLogger(__name__)

# The longest error text a tool call reports: the model reads it, and so does every member of the
# conversation (it is the tool_completed event's result).
MAX_ERROR_CHARS = 200
MAX_QUERY_CHARS = 200
MAX_SEARCH_RESULTS = 20
MAX_TIMEZONE_CHARS = 64


@dataclass(frozen=True)
class ToolContext:
    user_id: int | None
    conversation_id: str


ToolFn = Callable[[ToolContext, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    schema: dict[str, Any]
    fn: ToolFn
    timeout_s: float = 10.0

    def openai_spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.schema},
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

    async def call(self, name: str, arguments: Any, ctx: ToolContext) -> ToolOutcome:
        tool = self._tools.get(name)
        if tool is None:
            return _failed(f"unknown tool {name!r}")
        invalid = jsonschema.exceptions.best_match(self._validators[name].iter_errors(arguments))
        if invalid is not None:
            return _failed(f"invalid arguments: {_schema_error(invalid)}")
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
    rules = {
        "maxLength": f"{field} is longer than {bound} characters",
        "minLength": f"{field} is shorter than {bound} character(s)",
        "maximum": f"{field} is more than {bound}",
        "minimum": f"{field} is less than {bound}",
        "type": f"{field} must be of type {bound}",
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


# --- current_time ---------------------------------------------------------------------------------
@functools.cache
def _known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())  # reads the tz database: ~70 ms, once


def _zone(name: str) -> zoneinfo.ZoneInfo:
    # Only names the tz database lists: never a path (ZoneInfo("../..") would look one up).
    if name not in _known_timezones():
        raise ToolError(f"unknown timezone {name!r}: use an IANA name such as 'Europe/Paris'")
    return zoneinfo.ZoneInfo(name)


async def _current_time(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    now = datetime.now(UTC)
    result = {"utc": now.isoformat(timespec="seconds").replace("+00:00", "Z"), "weekday": now.strftime("%A")}
    name = args.get("timezone")
    if name is not None:
        local = now.astimezone(await asyncio.to_thread(_zone, name))  # file reads, off the loop
        result |= {
            "timezone": name,
            "local": local.isoformat(timespec="seconds"),
            "local_weekday": local.strftime("%A"),
        }
    return result


# --- search_history -------------------------------------------------------------------------------
def _search(*, user_id: int, query: str, conversation_id: str, limit: int) -> list[dict[str, Any]]:
    """The search under its own statement timeout, shorter than the tool's: a slow LIKE scan over a
    huge conversation is cancelled by PostgreSQL instead of holding a connection for 30 s."""
    timeout_ms = settings.AGENT_TOOL_SEARCH_TIMEOUT_MS
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(timeout_ms)])
            return search_messages(user_id=user_id, query=query, conversation_id=conversation_id, limit=limit)
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "57014":  # query_canceled: the timeout
            raise ToolError(f"the search took longer than {timeout_ms} ms and was stopped") from exc
        raise


async def _search_history(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    query = args["query"]
    if any(unicodedata.category(c) == "Cc" for c in query):  # PostgreSQL refuses NUL in text
        raise ToolError("the query may not contain control characters")
    if ctx.user_id is None:
        return {"query": query, "matches": []}
    # thread_sensitive=False: its own thread, not the one thread every run's event writes share.
    matches = await database_sync_to_async(_search, thread_sensitive=False)(
        user_id=ctx.user_id, query=query, conversation_id=ctx.conversation_id, limit=args.get("limit", 5)
    )
    return {"query": query, "matches": matches}


def default_registry() -> ToolRegistry:
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
            "The current date and time in UTC, and in an IANA timezone (e.g. 'Asia/Tokyo') if one is given.",
            {
                "type": "object",
                "properties": {"timezone": {"type": "string", "minLength": 1, "maxLength": MAX_TIMEZONE_CHARS}},
                "additionalProperties": False,
            },
            _current_time,
        )
    )
    registry.register(
        Tool(
            "search_history",
            "Search this conversation's messages that the asking user may read.",
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_RESULTS},
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            _search_history,
        )
    )
    return registry
