"""How a tool's result travels. Whole in the database (ToolCall.result, up to MAX_STORED_RESULT_CHARS),
bounded in the `tool_completed` event every member of the conversation receives: a result whose JSON
encoding is longer than MAX_TOOL_RESULT_CHARS becomes `{"truncated": true, "preview", "size", "href"}`,
itself at most that long, whose `href` fetches the whole result over REST (docs/protocol.md §4).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

# Tool results travel inside events; keep them bounded: a screenful, enough for five search hits.
MAX_TOOL_RESULT_CHARS = 4000
# What is kept of one result (a runaway tool must not fill the database); the tools' own limits keep
# real results far below it.
MAX_STORED_RESULT_CHARS = 1_000_000


def result_href(*, conversation_id: str, run_id: str, call_id: str) -> str:
    """Where a member fetches a call's whole result (chat/api_messages.py ToolCallResult)."""
    return f"/api/conversations/{conversation_id}/runs/{run_id}/tool-calls/{quote(call_id, safe='')}/result/"


def encode_result(result: Any) -> str:
    """A result's JSON encoding (non-JSON values by their text), as its bounds are measured."""
    return json.dumps(result, default=str)


def bound_result(
    result: Any, *, limit: int = MAX_TOOL_RESULT_CHARS, href: str | None = None, encoded: str | None = None
) -> Any:
    """`result` itself if its JSON encoding is at most `limit` characters, else the truncated form, whose
    own encoding is at most `limit`: `preview` is the start of the result's encoding, `size` that
    encoding's full length, `href` where to read it whole. `encoded`: `encode_result(result)`, when the
    caller bounds one result twice (stored and broadcast) and a large result should be encoded once."""
    if encoded is None:
        encoded = encode_result(result)
    if len(encoded) <= limit:
        return result
    cut: dict[str, Any] = {"truncated": True, "preview": "", "size": len(encoded)}
    if href is not None:
        cut["href"] = href

    def fits(length: int) -> bool:
        return len(json.dumps({**cut, "preview": encoded[:length]})) <= limit

    # The preview is JSON text inside a JSON string: its quotes and backslashes are escaped once more,
    # so how much fits depends on what it holds. The longest that fits, by bisection.
    low, high = 0, min(len(encoded), limit)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    cut["preview"] = encoded[:low]
    return cut
