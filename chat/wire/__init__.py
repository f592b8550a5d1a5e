"""Typed chat.v1 wire data: one declared msgspec schema for every command's fields, every reply's
result and every frame the server sends (docs/protocol.md §1-§7, docs/protocol.md).

The bottom layer: it imports neither Django nor the rest of `chat`, so anything may import it.

- `commands`: the fields of each client command (`COMMANDS`).
- `replies`: each command's reply result (`REPLIES`) and the error envelopes.
- `events`: durable and ephemeral conversation events, their `data` and whole frames.
- `session`: the `welcome` and `notification` frames.
- `common`: limits the protocol fixes, constrained types, base classes, shared small objects.
"""

from __future__ import annotations

import ast
import re
from typing import Any, TypeVar

import msgspec

from chat.wire.commands import COMMANDS
from chat.wire.common import PATTERN_MEANINGS, PROTOCOL, CommandFields, ServerData
from chat.wire.events import DURABLE_DATA, EPHEMERAL_DATA, EVENT_FRAMES, DurableEvent, EphemeralEvent
from chat.wire.replies import REPLIES, ErrorFrame, ReplyError, ReplyOkHead
from chat.wire.session import SESSION_DATA, SESSION_FRAMES

__all__ = [
    "COMMANDS",
    "EVENT_DATA",
    "FRAMES",
    "PROTOCOL",
    "REPLIES",
    "DurableEvent",
    "EphemeralEvent",
    "FieldError",
    "UnknownCommand",
    "decode_command",
    "decode_event_data",
    "decode_frame",
    "decode_reply",
    "encode",
    "reply_frame",
]

# Every server frame type that has a `data` object → the schema of that `data`.
EVENT_DATA: dict[str, type[ServerData]] = {**DURABLE_DATA, **EPHEMERAL_DATA, **SESSION_DATA}

# Every server frame of a fixed shape, by `type`. A successful reply is not here: its fields depend
# on the command it answers (see decode_reply); a failed one is ReplyError.
FRAMES: dict[str, type[msgspec.Struct]] = {**EVENT_FRAMES, **SESSION_FRAMES, "error": ErrorFrame}

# One encoder for the process: msgspec reuses its internal buffer between calls.
_ENCODER = msgspec.json.Encoder()

S = TypeVar("S", bound=msgspec.Struct)


class UnknownCommand(ValueError):
    pass


class FieldError(msgspec.ValidationError):
    """A value that does not fit its schema. `field` is its dotted path ("" for the whole object)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.field = field
        self.detail = detail


def encode(obj: Any) -> str:
    """A frame (a Struct, or plain JSON data) as compact UTF-8 JSON text."""
    return _ENCODER.encode(obj).decode("utf-8")


def reply_frame(command_id: str, result: msgspec.Struct) -> str:
    """`{"type":"reply","id":…,"ok":true, ...result}`: the result's fields sit in the envelope."""
    head = _ENCODER.encode(ReplyOkHead(id=command_id, ok=True))
    body = _ENCODER.encode(result)
    if body == b"{}":
        return head.decode("utf-8")
    return (head[:-1] + b"," + body[1:]).decode("utf-8")


def decode_command(type: str, fields: dict[str, Any]) -> CommandFields:
    """The validated fields of command `type` (the frame without `type` and `id`)."""
    schema = COMMANDS.get(type)
    if schema is None:
        raise UnknownCommand(f"unknown command {type!r}")
    return _convert(fields, schema)


def decode_event_data(type: str, data: dict[str, Any]) -> ServerData:
    """The `data` of a server frame of `type`, checked against its schema."""
    schema = EVENT_DATA.get(type)
    if schema is None:
        raise ValueError(f"no server frame of type {type!r} carries data")
    return _convert(data, schema)


def decode_frame(frame: dict[str, Any]) -> msgspec.Struct:
    """A whole server frame, except a successful reply (decode_reply: it needs the command)."""
    kind = frame.get("type")
    if kind == "reply":
        if frame.get("ok") is not False:
            raise ValueError("a successful reply is decoded with decode_reply(command, frame)")
        return _convert(frame, ReplyError)
    schema = FRAMES.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ValueError(f"unknown server frame type {kind!r}")
    return _convert(frame, schema)


def decode_reply(command: str, frame: dict[str, Any]) -> ServerData:
    """The result of a successful reply to `command` (a failed one is a ReplyError frame)."""
    schema = REPLIES.get(command)
    if schema is None:
        raise UnknownCommand(f"unknown command {command!r}")
    head = {k: frame[k] for k in ("type", "id", "ok") if k in frame}
    _convert(head, ReplyOkHead)
    return _convert({k: v for k, v in frame.items() if k not in head}, schema)


def _convert(value: Any, schema: type[S]) -> S:
    try:
        return msgspec.convert(value, schema)
    except msgspec.ValidationError as exc:
        raise _field_error(str(exc)) from exc
    except UnicodeEncodeError as exc:  # msgspec matches field names as UTF-8; a lone surrogate has none
        raise FieldError("", "field names must be Unicode text without lone surrogates") from exc


# msgspec's messages end with the value's location, e.g. "Expected `int`, got `str` - at `$.seq`".
_LOCATED = re.compile(r"\A(?P<detail>.*?)(?: - at `\$(?P<path>[^`]*)`)?\Z", re.DOTALL)
_NAMED = re.compile(r"\AObject (?P<what>missing required|contains unknown) field `(?P<name>[^`]+)`\Z")
_REGEX = re.compile(r"Expected `str` matching regex (?P<rx>'(?:[^'\\]|\\.)*')")


def _field_error(message: str) -> FieldError:
    """Rewrite msgspec's message so that it starts with the field it is about, and says what a
    pattern means instead of quoting the regular expression."""
    located = _LOCATED.match(message)
    assert located is not None  # the pattern matches any text
    detail, path = located["detail"], (located["path"] or "").lstrip(".")
    named = _NAMED.match(detail)
    if named is not None:
        path = f"{path}.{named['name']}" if path else named["name"]
        detail = "is required" if named["what"] == "missing required" else "is not a known field"
        return FieldError(path, detail)
    regex = _REGEX.search(detail)
    if regex is not None:
        meaning = PATTERN_MEANINGS.get(ast.literal_eval(regex["rx"]))
        if meaning is not None:
            detail = f"must be {meaning}"
    return FieldError(path, detail[:1].lower() + detail[1:])
