"""The calculator tool's arithmetic: an AST whitelist (no eval) where every number is bounded.

No argument may make it slow. Big-integer arithmetic is where a short expression costs seconds or
forever (`round(1, -10**9)` builds 10**(10**9); `9**9**9` has 370 million digits), so the bound is
on the magnitude of every number the evaluation holds, not only on `**`:

- the expression: at most MAX_EXPRESSION_CHARS characters and MAX_DEPTH levels of nesting;
- every literal and every intermediate result: finite and at most MAX_MAGNITUDE in absolute value;
- a power is refused *before* it is computed when its result would pass that bound;
- round's ndigits is a whole number within ±MAX_NDIGITS (it builds 10**ndigits);
- only + - * / // % ** (and ^ for **), unary + and -, and sqrt, abs, round with their own arity.

With those bounds the largest number is about a thousand bits and an evaluation takes microseconds.
It still runs in the sandbox (agents/sandbox.py) in case a bound here is wrong; this module imports
no Django, because the sandbox's worker processes import it without settings.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from agents.sandbox import ToolError

MAX_EXPRESSION_CHARS = 200
MAX_DEPTH = 50
MAX_MAGNITUDE = 10**300
MAX_NDIGITS = 300
_MAX_BITS = math.log2(MAX_MAGNITUDE)  # about 997

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
# How a refused operator or element is named in the error the model reads.
_SYMBOLS: dict[type[ast.AST], str] = {
    ast.LShift: "the operator <<",
    ast.RShift: "the operator >>",
    ast.BitOr: "the operator |",
    ast.BitAnd: "the operator &",
    ast.BitXor: "the operator ^",
    ast.MatMult: "the operator @",
    ast.Invert: "the operator ~",
    ast.Not: "the operator not",
    ast.Compare: "a comparison",
    ast.BoolOp: "and/or",
    ast.IfExp: "a conditional",
    ast.Lambda: "a lambda",
    ast.Attribute: "an attribute",
    ast.Subscript: "an index",
    ast.List: "a list",
    ast.Tuple: "a tuple",
    ast.Set: "a set",
    ast.Dict: "a dict",
}


def calculate(expression: str) -> int | float:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    normalized = expression.replace("×", "*").replace("÷", "/").replace("^", "**")
    try:
        tree = ast.parse(normalized, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:  # ValueError: a NUL byte
        raise ToolError(f"not an arithmetic expression: {expression!r}") from exc
    _check_depth(tree)
    value = _evaluate(tree.body)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _check_depth(tree: ast.AST) -> None:
    """Nesting is bounded before anything is evaluated (the evaluation recurses once per level)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ToolError(f"the expression is too deeply nested (more than {MAX_DEPTH} levels)")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"{_kind_of_constant(node.value)} is not supported in an arithmetic expression")
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise _unsupported(node.op)
        return _bounded(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise _unsupported(node.op)
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError as exc:
            raise ToolError("division by zero") from exc
        except OverflowError as exc:
            raise ToolError("the result is too large") from exc
        return _bounded(value)
    if isinstance(node, ast.Call):
        return _call(node)
    if isinstance(node, ast.Name):
        raise ToolError(f"the name {node.id[:30]!r} is not supported in an arithmetic expression")
    raise _unsupported(node)


def _call(node: ast.Call) -> int | float:
    name = node.func.id if isinstance(node.func, ast.Name) else None
    if name not in ("sqrt", "abs", "round"):
        shown = ast.unparse(node.func)[:30]
        raise ToolError(f"the function {shown!r} is not supported (only sqrt, abs and round)")
    if node.keywords:
        raise ToolError(f"{name} takes no keyword arguments")
    if name == "round":
        if not 1 <= len(node.args) <= 2:
            raise ToolError("round takes 1 or 2 arguments: round(x) or round(x, ndigits)")
    elif len(node.args) != 1:
        raise ToolError(f"{name} takes exactly 1 argument")
    args = [_evaluate(a) for a in node.args]
    try:
        if name == "sqrt":
            return _bounded(math.sqrt(args[0]))
        if name == "abs":
            return _bounded(abs(args[0]))
        if len(args) == 1:
            return _bounded(round(args[0]))
        ndigits = args[1]
        # round(x, -n) builds 10**n: a huge n is a huge number.
        if not isinstance(ndigits, int) or abs(ndigits) > MAX_NDIGITS:
            raise ToolError(f"round's ndigits must be a whole number from -{MAX_NDIGITS} to {MAX_NDIGITS}")
        return _bounded(round(args[0], ndigits))
    except ValueError as exc:  # sqrt of a negative number
        raise ToolError(str(exc)) from exc
    except OverflowError as exc:
        raise ToolError("the result is too large") from exc


def _check_power(base: int | float, exponent: int | float) -> None:
    """Refuse a power whose result would pass MAX_MAGNITUDE before computing it: 2 ** 10**6 is
    cheap to write and costs a million-bit number."""
    if isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > _MAX_BITS:
            raise ToolError("the result is too large")


def _bounded(value: object) -> int | float:
    if isinstance(value, complex):  # e.g. (-8) ** 0.5
        raise ToolError("the result is not a real number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("the result is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the number is too large")
    if abs(value) > MAX_MAGNITUDE:
        raise ToolError("the number is too large")
    return value


def _unsupported(node: ast.AST) -> ToolError:
    what = _SYMBOLS.get(type(node), type(node).__name__.lower())
    return ToolError(f"{what} is not supported in an arithmetic expression")


def _kind_of_constant(value: object) -> str:
    if isinstance(value, str | bytes):
        return "a string"
    if isinstance(value, bool):
        return "True/False"
    if isinstance(value, complex):
        return "an imaginary number"
    return "this constant"
