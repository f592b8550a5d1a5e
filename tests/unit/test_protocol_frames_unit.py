"""chat.v1 frame parsing (docs/protocol.md §2): pure, no I/O."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from chat.errors import CommandError, ProtocolError
from chat.realtime.protocol import command_fields, parse_frame, reply_error, reply_ok, top_level_id
from chat.wire.common import MAX_CLIENT_MSG_ID_CHARS


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


# --- hostile input: binary, NUL, lone surrogates, deep nesting --------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xfe\xfd", b"\xc3\x28", b"\xed\xa0\x80", b'{"type": "ping", "id": "1"}', bytes(range(256))],
)
def test_binary_frames_are_bad_request_answered_with_an_error_frame(data: bytes) -> None:
    # Even a binary frame holding valid JSON with an id: the contract is text frames only, and the
    # server does not decode binary to look for an id.
    with pytest.raises(ProtocolError) as exc:
        parse_frame(None, data)
    assert exc.value.code == "bad_request"
    assert not isinstance(exc.value, CommandError)


# Strings a client can put in a JSON frame that PostgreSQL or psycopg cannot store: NUL, and lone
# surrogates, which JSON escapes decode to (a raw one cannot be sent as UTF-8, the escape can).
UNSTORABLE_ESCAPES = ["\\u0000", "a\\u0000b", "\\ud800", "x\\udfff", "\\udc00\\ud800", "ok\\ud83d", "\\ude00tail"]


# A valid value for every field of `send` and `auth`, so that only the field under test decides.
VALID = {"conversation": "c", "client_msg_id": "m", "text": "hi", "token": "t"}


def fields_of(command: str, fields: dict[str, object]) -> object:
    """The command's fields through its wire schema, the one check the consumer applies."""
    return command_fields(command, {**VALID, **fields})


@pytest.mark.parametrize("escaped", UNSTORABLE_ESCAPES)
@pytest.mark.parametrize(("command", "field"), [("send", "text"), ("send", "client_msg_id"), ("auth", "token")])
def test_string_fields_refuse_nul_and_lone_surrogates_decoded_from_json(escaped: str, command: str, field: str) -> None:
    parsed = parse_frame('{"type": "' + command + '", "id": "1", "' + field + '": "' + escaped + '"}', None)
    value = parsed.fields[field]
    assert "\x00" in value or any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)  # the decoded form reached us
    with pytest.raises(ProtocolError) as exc:
        fields_of(command, parsed.fields)
    assert exc.value.code == "bad_request"
    assert field in exc.value.message


@pytest.mark.parametrize(
    "value", ["plain", "😀", "\\ud83d\\ude00", "مرحبا \\u202e", "   x   ", "\\u00e9\\u4e2d", "tab\\tnew\\nline"]
)
def test_string_fields_accept_real_unicode_including_escaped_pairs(value: str) -> None:
    command = parse_frame('{"type": "send", "text": "' + value + '"}', None)
    text = fields_of("send", command.fields).text  # type: ignore[attr-defined]
    assert text.encode("utf-8")  # storable and sendable as is


def test_id_with_lone_surrogate_is_refused_with_an_error_frame_not_echoed() -> None:
    # The reply would echo the id, and a frame holding a lone surrogate cannot be written as UTF-8
    # (uvicorn's writer would fail and close the socket 1011).
    with pytest.raises(ProtocolError) as exc:
        parse_frame('{"type": "ping", "id": "a\\ud800"}', None)
    assert not isinstance(exc.value, CommandError)
    assert exc.value.code == "bad_request"
    reply_error(None, exc.value).encode("utf-8")


def test_id_with_nul_is_valid_and_its_reply_is_utf8() -> None:
    command = parse_frame('{"type": "ping", "id": "a\\u0000b"}', None)
    assert command.id == "a\x00b"
    reply = reply_ok(command.id, {})
    assert json.loads(reply.encode("utf-8"))["id"] == "a\x00b"


def test_deep_frame_with_valid_id_is_answered_with_a_reply() -> None:
    frame = '{"type": "ping", "id": "deep", "a": ' + "[" * 40 + "]" * 40 + "}"
    with pytest.raises(CommandError) as exc:
        parse_frame(frame, None)
    assert exc.value.command_id == "deep"
    assert exc.value.code == "bad_request"


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 10_000 + "]" * 10_000,
        '{"a":' * 10_000 + "1" + "}" * 10_000,  # 60,001 characters: under the frame limit
        "[" * 30_000,  # never closed
        '{"id": "\\ud800", "a": ' + "[" * 10_000 + "]" * 10_000 + "}",  # an id no reply could carry
    ],
)
def test_ten_thousand_levels_of_nesting_is_bad_request_not_recursion_error(frame: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_frame(frame, None)
    assert exc.value.code == "bad_request"
    assert not isinstance(exc.value, CommandError)  # no readable id: an `error` frame


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "ping", "id": "x", "a": ' + "[" * 10_000 + "]" * 10_000 + "}",
        '{"a": ' + "[" * 10_000 + "]" * 10_000 + ', "id": "x", "type": "ping"}',  # the id after the depth
        '{"a": {"id": "inner", "b": ' + "[" * 10_000 + "]" * 10_000 + '}, "id": "x"}',
        '{"id": "first", "s": "[{\\"]", "id": "x", "a": ' + '{"b":' * 9_000 + "1" + "}" * 9_000 + "}",
    ],
)
def test_ten_thousand_levels_of_nesting_with_an_id_gets_a_reply(frame: str) -> None:
    """docs/protocol.md §2: a frame nested too deeply whose `id` is valid gets a `reply` — even when
    it is too deep for any JSON parser, so the id is read by a scan of the top level."""
    with pytest.raises(CommandError) as exc:
        parse_frame(frame, None)
    assert (exc.value.command_id, exc.value.code) == ("x", "bad_request")
    assert exc.value.message == "frame is nested too deeply"


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('{"id": "a"}', "a"),
        ('  {"x": [1, {"id": "no"}], "id" : "b\\u00e9"}', "b\u00e9"),
        ('{"id": "a", "id": "b"}', "b"),  # json keeps the last
        ('{"s": "} ] , \\" {", "id": "c"}', "c"),  # brackets and quotes inside strings
        ('{"id": 5}', None),
        ('{"x": "id", "y": 1}', None),  # "id" as a value, not a key
        ('["id", "a"]', None),
        ('{"id": "unterminated', None),
        ('{"id" "a"}', None),
        ("", None),
    ],
)
def test_top_level_id_reads_only_the_top_level_key(text: str, found: object) -> None:
    assert top_level_id(text) == found


def test_frame_limit_is_exact_in_characters_and_in_utf8_bytes() -> None:
    limit = 64 * 1024
    skeleton = '{"type":"ping","pad":""}'
    at_limit = skeleton[:-2] + "x" * (limit - len(skeleton)) + '"}'
    assert len(at_limit) == limit
    assert parse_frame(at_limit, None).type == "ping"
    with pytest.raises(ProtocolError) as exc:
        parse_frame(at_limit[:-2] + 'x"}', None)
    assert exc.value.code == "too_large"
    # 2-byte characters: under the limit in characters, over it in bytes.
    two_byte = skeleton[:-2] + "é" * ((limit - len(skeleton)) // 2 + 1) + '"}'
    assert len(two_byte) < limit < len(two_byte.encode("utf-8"))
    with pytest.raises(ProtocolError) as exc:
        parse_frame(two_byte, None)
    assert exc.value.code == "too_large"


# --- properties: whatever arrives, parsing ends in a Command or a ProtocolError, and what is sent
# back is always UTF-8 ---------------------------------------------------------------------------

# Any code point, with the hostile ones drawn often rather than once in a million. (Built from
# single characters: st.text() quietly leaves surrogates out of a one_of alphabet.)
HOSTILE_CHARS = st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\u202e", "\ufeff", "😀"])
ANY_TEXT = st.lists(st.characters(exclude_categories=()) | HOSTILE_CHARS, max_size=30).map("".join)
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | ANY_TEXT
)
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4)
)
FIELD_NAMES = st.sampled_from(["type", "id", "conversation", "text", "client_msg_id", "since_seq", "token", "x"])


COMMAND_LIKE = st.fixed_dictionaries(
    {"type": st.sampled_from(["ping", "send", ""]) | ANY_TEXT, "id": ANY_TEXT},
    optional={"text": JSON_VALUES, "client_msg_id": JSON_VALUES, "a": JSON_VALUES},
)


def _encodable(frame: str) -> None:
    frame.encode("utf-8")  # strict: what a WebSocket server must be able to write


@hyp_settings(max_examples=400, deadline=None, database=None)
@given(
    text=st.lists(st.characters(exclude_categories=()) | HOSTILE_CHARS, max_size=200).map("".join)
    | st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=6).map(json.dumps)
    | st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=6).map(lambda d: json.dumps(d, ensure_ascii=False))
    | COMMAND_LIKE.map(json.dumps)
)
def test_any_text_frame_parses_or_raises_protocol_error_with_utf8_answer(text: str) -> None:
    try:
        command = parse_frame(text, None)
    except CommandError as exc:  # answered with a reply when the id is known, else an error frame
        _encodable(reply_error(exc.command_id, exc))
        return
    except ProtocolError as exc:
        _encodable(reply_error(None, exc))
        return
    assert isinstance(command.type, str)
    assert command.type
    if command.id is not None:
        _encodable(reply_ok(command.id, {}))
        _encodable(reply_error(command.id, ProtocolError("bad_request", "x")))


@hyp_settings(max_examples=400, deadline=None, database=None)
@given(value=JSON_VALUES | ANY_TEXT)
def test_a_string_field_decodes_to_storable_text_or_is_refused(value: object) -> None:
    try:
        text = fields_of("send", {"client_msg_id": value}).client_msg_id  # type: ignore[attr-defined]
    except ProtocolError as exc:
        code = exc.code
        assert code in ("bad_request", "too_large")
        return
    assert isinstance(text, str)
    assert 0 < len(text) <= MAX_CLIENT_MSG_ID_CHARS
    assert "\x00" not in text
    text.encode("utf-8")
