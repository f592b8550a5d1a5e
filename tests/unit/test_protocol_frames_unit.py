"""chat.v1 frame parsing (PROTOCOL §2): pure, no I/O."""

from __future__ import annotations

import json

import pytest

from chat.realtime.protocol import CommandError, ProtocolError, parse_frame, reply_error, reply_ok


def test_valid_command_is_split_into_type_id_and_fields() -> None:
    command = parse_frame(json.dumps({"type": "send", "id": "7", "conversation": "c", "text": "hi"}), None)
    assert command.type == "send"
    assert command.id == "7"
    assert command.fields == {"conversation": "c", "text": "hi"}


@pytest.mark.parametrize(
    ("text", "binary", "code"),
    [
        (None, b"\x00", "bad_request"),
        ("nope", None, "bad_request"),
        ("[]", None, "bad_request"),
        ("null", None, "bad_request"),
        ('{"type": ""}', None, "bad_request"),
        ('{"type": "x", "id": ""}', None, "bad_request"),
        ('{"type": "x", "id": 1}', None, "bad_request"),
        ("x" * (64 * 1024 + 1), None, "too_large"),
        ('{"type": "x", "a": "' + "é" * 33_000 + '"}', None, "too_large"),  # > 64 KiB in UTF-8 bytes
        ('{"a":' * 20 + "1" + "}" * 20, None, "bad_request"),
    ],
)
def test_bad_frames_raise_the_documented_code(text: str | None, binary: bytes | None, code: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_frame(text, binary)
    assert exc.value.code == code


def test_missing_type_with_known_id_is_answered_as_a_reply() -> None:
    with pytest.raises(CommandError) as exc:
        parse_frame('{"id": "abc"}', None)
    assert exc.value.command_id == "abc"
    assert json.loads(reply_error("abc", exc.value)) == {
        "type": "reply",
        "id": "abc",
        "ok": False,
        "error": {"code": "bad_request", "message": exc.value.message},
    }


def test_reply_shapes() -> None:
    assert json.loads(reply_ok("1", {"x": 1})) == {"type": "reply", "id": "1", "ok": True, "x": 1}
    err = ProtocolError("rate_limited", "slow down", retry_after_ms=1200)
    assert json.loads(reply_error(None, err)) == {
        "type": "error",
        "error": {"code": "rate_limited", "message": "slow down", "retry_after_ms": 1200},
    }
