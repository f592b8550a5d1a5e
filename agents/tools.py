"""Tools an agent may call, each registered with a JSON schema of its arguments.

Arguments are validated against the schema before the tool runs; a tool runs with a timeout; its
result is JSON data. Tools that read chat data take the asking user and go through selectors, so
an agent can never show a user something that user could not read.
"""

from __future__ import annotations

import ast
import asyncio
import math
import operator
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jsonschema
from channels.db import database_sync_to_async

from agents.backends.base import ToolOutcome
from chat.selectors import search_messages


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

    def register(self, tool: Tool) -> None:
        jsonschema.Draft202012Validator.check_schema(tool.schema)
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        return [t.openai_spec() for t in self._tools.values()]

    async def call(self, name: str, arguments: Any, ctx: ToolContext) -> ToolOutcome:
        tool = self._tools.get(name)
        if tool is None:
            return ToolOutcome(False, {"error": f"unknown tool {name!r}"})
        try:
            jsonschema.validate(arguments, tool.schema, cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError as exc:
            return ToolOutcome(False, {"error": f"invalid arguments: {exc.message}"})
        try:
            async with asyncio.timeout(tool.timeout_s):  # not wait_for: it can swallow a cancel on 3.11
                result = await tool.fn(ctx, arguments)
        except TimeoutError:
            return ToolOutcome(False, {"error": f"{name} timed out after {tool.timeout_s:g}s"})
        except ToolError as exc:
            return ToolOutcome(False, {"error": str(exc)})
        return ToolOutcome(True, result)


class ToolError(Exception):
    """A tool refused its input (e.g. division by zero); reported to the model, not a crash."""


# --- calculator: arithmetic over an AST whitelist (no eval) --------------------------------------
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Callable[..., Any]] = {"sqrt": math.sqrt, "abs": abs, "round": round}
# Bounds that keep one expression cheap: 10**300 is fine, 9**9**9 is not.
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 1000
MAX_MAGNITUDE = 10**300


def calculate(expression: str) -> int | float:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    normalized = expression.replace("×", "*").replace("÷", "/").replace("^", "**")
    try:
        tree = ast.parse(normalized, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from exc

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ToolError("exponent too large")
            try:
                value = _BINARY[type(node.op)](left, right)
            except ZeroDivisionError as exc:
                raise ToolError("division by zero") from exc
            except OverflowError as exc:
                raise ToolError("result too large") from exc
            if abs(value) > MAX_MAGNITUDE:
                raise ToolError("result too large")
            return value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
            and len(node.args) <= 2
        ):
            try:
                return _FUNCS[node.func.id](*[ev(a) for a in node.args])
            except ValueError as exc:
                raise ToolError(str(exc)) from exc
        raise ToolError(f"unsupported element in expression: {ast.dump(node)[:40]}")

    value = ev(tree)
    if isinstance(value, complex):  # e.g. (-8) ** 0.5
        raise ToolError("the result is not a real number")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


async def _calculator(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"expression": args["expression"], "value": calculate(args["expression"])}


async def _current_time(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"utc": now.isoformat(timespec="seconds").replace("+00:00", "Z"), "weekday": now.strftime("%A")}


async def _search_history(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    if ctx.user_id is None:
        return {"query": args["query"], "matches": []}
    matches = await database_sync_to_async(search_messages)(
        user_id=ctx.user_id, query=args["query"], conversation_id=ctx.conversation_id, limit=args.get("limit", 5)
    )
    return {"query": args["query"], "matches": matches}


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
            "The current date and time in UTC.",
            {"type": "object", "properties": {}, "additionalProperties": False},
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
                    "query": {"type": "string", "minLength": 1, "maxLength": 200},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 20},
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            _search_history,
        )
    )
    return registry
