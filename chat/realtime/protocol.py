"""chat.v1 frame parsing and validation (docs/protocol.md §2-§3). Pure functions, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec
from django.conf import settings

from chat.errors import CommandError, ProtocolError
from chat.wire import FieldError, decode_command
from chat.wire.common import CommandFields
from chat.wire.frames import encode

__all__ = ["PROTOCOL", "Command", "command_fields", "encode", "parse_frame", "reply_error", "reply_ok"]

PROTOCOL = "chat.v1"
MAX_ID_CHARS = 64
# JSON nesting deeper than this is refused before anything looks at it; no command needs more than 3.
MAX_DEPTH = 16

_DECODER = msgspec.json.Decoder()
_SCAN_STRING = json.decoder.scanstring  # type: ignore[attr-defined]
_WHITESPACE = " \t\n\r"


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
    payload = _decode(text)
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


def _decode(text: str) -> Any:
    """msgspec first (3x faster than json). It refuses what json accepts and the protocol answers
    field by field (a lone surrogate escape in `text` is a `bad_request` reply, not an unreadable
    frame), so a frame msgspec refuses gets a second reading by json. Nesting too deep for either
    parser still gets its reply when the top-level `id` can be read."""
    try:
        return _DECODER.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeError):
        pass
    try:
        return json.loads(text)
    except RecursionError as exc:
        command_id = top_level_id(text)
        if isinstance(command_id, str) and _valid_id(command_id):
            raise CommandError(command_id, "bad_request", "frame is nested too deeply") from exc
        raise ProtocolError("bad_request", "frame is nested too deeply") from exc
    except ValueError as exc:
        raise ProtocolError("bad_request", "frame is not valid JSON") from exc


def _skip_ws(text: str, at: int) -> int:
    while at < len(text) and text[at] in _WHITESPACE:
        at += 1
    return at


def top_level_id(text: str) -> object:
    """The string value of the top-level object's "id" key (the last one, as json keeps it), read
    without building the object: a scan that tracks depth and skips strings, so any nesting below
    the top level costs one pass and no recursion. None when there is none or the text is not an
    object."""
    at = _skip_ws(text, 0)
    if at >= len(text) or text[at] != "{":
        return None
    depth, expect_key, found, at = 1, True, None, at + 1
    while at < len(text):
        char = text[at]
        if char == '"':
            try:
                value, at = _SCAN_STRING(text, at + 1)
            except ValueError:
                return None
            if depth == 1 and expect_key:
                colon = _skip_ws(text, at)
                if colon >= len(text) or text[colon] != ":":
                    return None
                at, expect_key = _skip_ws(text, colon + 1), False
                if value == "id" and at < len(text) and text[at] == '"':
                    try:
                        found, at = _SCAN_STRING(text, at + 1)
                    except ValueError:
                        return None
            continue
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                break
        elif char == "," and depth == 1:
            expect_key = True
        at += 1
    return found


def command_fields(kind: str, fields: dict[str, Any]) -> CommandFields:
    """A command's fields checked against its wire schema (chat/wire/commands.py), as its Struct.
    A value that does not fit is the client's `bad_request`, naming the field."""
    try:
        return decode_command(kind, fields)
    except FieldError as exc:
        field = exc.field or "frame"
        if exc.detail.startswith(("is ", "must ")):
            raise ProtocolError("bad_request", f"{field} {exc.detail}") from exc
        raise ProtocolError("bad_request", f"{field}: {exc.detail}") from exc


def reply_ok(command_id: str, result: dict[str, Any]) -> str:
    return encode({"type": "reply", "id": command_id, "ok": True, **result})


def reply_error(command_id: str | None, error: ProtocolError) -> str:
    if command_id is None:
        return encode({"type": "error", "error": error.as_dict()})
    return encode({"type": "reply", "id": command_id, "ok": False, "error": error.as_dict()})
