"""chat.v1 frame parsing and validation (docs/protocol.md §2-§3). Pure functions, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from chat.errors import CommandError, ProtocolError
from chat.wire.frames import encode

__all__ = ["PROTOCOL", "Command", "encode", "parse_frame", "reply_error", "reply_ok"]

PROTOCOL = "chat.v1"
MAX_ID_CHARS = 64
# JSON nesting deeper than this is refused before anything looks at it; no command needs more than 3.
MAX_DEPTH = 16




@dataclass(frozen=True)
class Command:
    type: str
    id: str | None
    fields: dict[str, Any]


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def is_utf8_text(value: str) -> bool:
    """Whether `value` has a UTF-8 form. A JSON escape like "\\ud800" decodes to a lone surrogate,
    which has none: psycopg cannot send it and a WebSocket server cannot write a frame echoing it."""
    if value.isascii():  # the common case; ASCII has no surrogates
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_storable_text(value: str) -> bool:
    """Whether a client string may go to storage: UTF-8 text without NUL (PostgreSQL text cannot hold it)."""
    return "\x00" not in value and is_utf8_text(value)


def _valid_id(value: object) -> bool:
    # The id is echoed in the reply, so it must survive the reply's UTF-8 encoding (a NUL is fine:
    # JSON escapes it).
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and is_utf8_text(value)


def parse_frame(text: str | None, binary: bytes | None) -> Command:
    """Turn one client frame into a Command. A bad frame raises CommandError when its `id` could be
    read (it is answered with a reply) and a plain ProtocolError otherwise (an `error` frame)."""
    if binary is not None:
        raise ProtocolError("bad_request", "binary frames are not accepted; send UTF-8 JSON text")
    if text is None:
        raise ProtocolError("bad_request", "empty frame")
    if (
        len(text) > settings.CHAT_MAX_FRAME_BYTES
        or len(text.encode("utf-8", "surrogatepass")) > settings.CHAT_MAX_FRAME_BYTES
    ):
        raise ProtocolError("too_large", f"frame exceeds {settings.CHAT_MAX_FRAME_BYTES} bytes")
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_request", "frame is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise ProtocolError("bad_request", "frame must be a JSON object")
    command_id = payload.get("id")
    if command_id is not None and not _valid_id(command_id):
        raise ProtocolError("bad_request", f"id must be a string of 1-{MAX_ID_CHARS} characters of Unicode text")
    # The id is read first so that every parsed frame with a valid id gets its reply (docs/protocol.md §2).
    if _depth(payload, MAX_DEPTH) > MAX_DEPTH:
        raise CommandError(command_id, "bad_request", "frame is nested too deeply")
    kind = payload.get("type")
    if not isinstance(kind, str) or not kind:
        raise CommandError(command_id, "bad_request", "type must be a non-empty string")
    fields = {k: v for k, v in payload.items() if k not in ("type", "id")}
    return Command(kind, command_id, fields)




# --- field readers: each raises ProtocolError("bad_request") with a message naming the field ----


def req_str(fields: dict[str, Any], name: str, *, max_len: int, allow_empty: bool = False) -> str:
    """A required string field. Every string a command stores or passes on is read here, so this is
    where NUL and lone surrogates are refused: past this point they would fail in PostgreSQL or in
    psycopg's encoder and surface as `internal` instead of the client's `bad_request`."""
    value = fields.get(name)
    if not isinstance(value, str):
        raise ProtocolError("bad_request", f"{name} must be a string")
    if not is_storable_text(value):
        raise ProtocolError("bad_request", f"{name} must be Unicode text without NUL characters or lone surrogates")
    if not allow_empty and not value:
        raise ProtocolError("bad_request", f"{name} must not be empty")
    if len(value) > max_len:
        raise ProtocolError(
            "too_large" if name == "text" else "bad_request", f"{name} must be at most {max_len} characters"
        )
    return value


def opt_int(fields: dict[str, Any], name: str, *, minimum: int = 0, maximum: int | None = None) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError("bad_request", f"{name} must be an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ProtocolError("bad_request", f"{name} must be {bound}")
    return value


def req_int(fields: dict[str, Any], name: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    value = opt_int(fields, name, minimum=minimum, maximum=maximum)
    if value is None:
        raise ProtocolError("bad_request", f"{name} is required")
    return value


def reply_ok(command_id: str, result: dict[str, Any]) -> str:
    return encode({"type": "reply", "id": command_id, "ok": True, **result})


def reply_error(command_id: str | None, error: ProtocolError) -> str:
    if command_id is None:
        return encode({"type": "error", "error": error.as_dict()})
    return encode({"type": "reply", "id": command_id, "ok": False, "error": error.as_dict()})
