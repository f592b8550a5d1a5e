"""chat.wire: the declared schemas against docs/protocol.md, against what the server code builds,
and against bad input. Pure: no database, no Redis, no socket.

How the examples of docs/protocol.md are read (every candidate ends in exactly one bucket; a new
snippet nobody classified fails the test instead of being skipped):

1. A fenced ```json block is one frame; it must parse as JSON and is validated whole.
2. An inline code span that starts with `{` and parses as JSON with a string `type` is a frame:
   a server frame (it has `data` or `error`, or its type is only a server frame's) is validated
   whole with decode_frame; otherwise it is a command, and its fields go through decode_command.
3. An inline span that starts with `{` but is not JSON is the doc's shorthand (`{"id","username"}`
   lists field names; `…` and `N` are placeholders; `"a"|"b"` lists alternatives). It must be listed
   in SHORTHAND with the schema it describes: its field names must be exactly the schema's, at
   every level, and every concrete value must fit its field. Or it is listed in NOT_WIRE with the
   reason it describes no socket data.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from chat import wire
from chat.wire import commands as wc
from chat.wire import common, events, message_events, replies, session

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

# Shorthand objects of the doc → the schema they describe.
SHORTHAND: dict[str, type[msgspec.Struct]] = {
    (
        '{"run_id","agent","status":"queued"|"running"|"waiting_approval","text","seq",'
        '"watchers":[{"id","username"}],"approval"}'
    ): replies.ActiveRun,
    '{"id","username"}': events.CancelledBy,  # agent_cancelled.data.by
    '{"run_id","call_id","decision":"approve"|"reject","arguments"}': wc.Approve,
    '{"run_id","call_id","tool","arguments","reason","approver_role","expires_at"}': events.ApprovalRequestedData,
    '{"run_id","call_id","decision","by","arguments"}': events.ApprovalResolvedData,
    '{"truncated": true, "preview": "…", "size": N, "href": "…"}': events.TruncatedResult,
    '{"user":{"id","username"},"state","expires_ms":6000}': events.TypingData,
    '{"joined":[{"id","username"}],"left":[…]}': events.PresenceData,
    '{"user":{"id","username"},"seq"}': events.ReadData,
}
# Shorthand that is not socket data, with the reason.
NOT_WIRE: dict[str, str] = {
    '{"username", "role": "member"|"viewer"}': "invite_member's arguments (agents/tools.py), inside approval events",
    '{"error":{"code","message"}}': "the REST error body (§7); chat.wire declares socket frames only",
    '{"seq","ts","data","read"}': "an item of the REST notification list (§9)",
    '{"up_to_seq": N}': "the REST body of POST /api/me/notifications/read/ (§9)",
    '{"endpoint"}': "the REST body of DELETE /api/me/push-subscriptions/ (§9)",
    '{"agent_mode": "auto" | "always" | "mention" | "off"}': "the REST body of PATCH /api/conversations/{id}/ (§8)",
    '{"author":{"id","username","kind"},"preview","created_at"}': "a REST list item's last_message (§10)",
}
# The real counts today; lower ones mean the extraction stopped finding examples.
MIN_FRAMES = 3
MIN_CHECKED = 9

# Frame types only the server sends (typing, read and presence are also command names).
SERVER_ONLY = set(wire.FRAMES) - set(wire.COMMANDS) | {"reply"}


# --- reading the doc --------------------------------------------------------------------------------


def doc_snippets() -> tuple[list[tuple[str, str]], list[str]]:
    """(fence language, body) of every fenced block, and every inline span that starts with `{`."""
    text = DOC.read_text(encoding="utf-8")
    fences = re.findall(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    spans = [s for s in re.findall(r"`([^`\n]+)`", prose) if s.lstrip().startswith("{")]
    return fences, spans


def check_frame(frame: dict[str, Any]) -> None:
    kind = frame["type"]
    if kind in SERVER_ONLY or "data" in frame or "error" in frame:
        wire.decode_frame(frame)
        return
    if "id" in frame:
        msgspec.convert(frame["id"], common.CommandId)
    wire.decode_command(kind, {k: v for k, v in frame.items() if k not in ("type", "id")})


def test_every_example_of_the_doc_fits_its_schema() -> None:
    fences, spans = doc_snippets()
    frames = checked = 0
    for language, body in fences:
        assert language == "json", f"a ```{language} block in docs/protocol.md: classify it in this test"
        check_frame(json.loads(body))
        frames += 1
    for span in spans:
        try:
            value = json.loads(span)
        except ValueError:
            if span in NOT_WIRE:
                continue
            assert span in SHORTHAND, f"unclassified shorthand in docs/protocol.md: {span} (add it to SHORTHAND)"
            check_skeleton(parse_shorthand(span), SHORTHAND[span], span)
            checked += 1
            continue
        assert isinstance(value, dict), span
        assert isinstance(value.get("type"), str), f"JSON object without a type in docs/protocol.md: {span}"
        check_frame(value)
        frames += 1
    checked += frames
    assert frames >= MIN_FRAMES, f"only {frames} JSON frames found in docs/protocol.md"
    assert checked >= MIN_CHECKED, f"only {checked} examples checked in docs/protocol.md"
    # Every listed snippet is still in the doc: a stale entry would hide a rewritten example.
    assert set(SHORTHAND) | set(NOT_WIRE) <= set(spans)


# --- the doc's shorthand ----------------------------------------------------------------------------

PLACEHOLDER = object()


class OneOf(list[Any]):
    """`"a"|"b"`: any of these values."""


def parse_shorthand(text: str) -> Any:
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,|]|[^\s{}\[\]:,|"]+', text)
    value, rest = _value(tokens)
    assert not rest, f"trailing {rest} in {text}"
    return value


def _value(tokens: list[str]) -> tuple[Any, list[str]]:
    head, rest = tokens[0], tokens[1:]
    if head == "{":
        out: dict[str, Any] = {}
        while rest[0] != "}":
            key, rest = json.loads(rest[0]), rest[1:]
            out[key] = PLACEHOLDER  # a bare name: the field, without a value
            if rest[0] == ":":
                out[key], rest = _value(rest[1:])
            if rest[0] == ",":
                rest = rest[1:]
        return out, rest[1:]
    if head == "[":
        items: list[Any] = []
        while rest[0] != "]":
            item, rest = _value(rest)
            items.append(item)
            if rest[0] == ",":
                rest = rest[1:]
        return items, rest[1:]
    if head.startswith('"'):
        choices = [json.loads(head)]
        while rest and rest[0] == "|":
            choices.append(json.loads(rest[1]))
            rest = rest[2:]
        return (choices[0] if len(choices) == 1 else OneOf(choices)), rest
    try:
        return json.loads(head), rest
    except ValueError:
        return PLACEHOLDER, rest  # `…`, `N`: some value


def _struct_in(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct a field's type holds (through Annotated, `| None` and list)."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    for arg in typing.get_args(tp):
        found = _struct_in(arg)
        if found is not None:
            return found
    return None


def check_skeleton(skeleton: Any, tp: Any, where: str) -> None:
    if skeleton is PLACEHOLDER:
        return
    if isinstance(skeleton, OneOf):
        for choice in skeleton:
            check_skeleton(choice, tp, where)
        return
    if isinstance(skeleton, list):
        (item_type,) = [a for a in typing.get_args(tp) if typing.get_origin(a) is list] or [tp]
        for item in skeleton:
            check_skeleton(item, typing.get_args(item_type)[0], where)
        return
    if isinstance(skeleton, dict):
        struct = _struct_in(tp)
        assert struct is not None, f"{where}: an object where the schema has {tp}"
        fields = {f.encode_name: f.type for f in msgspec.structs.fields(struct)}
        assert set(skeleton) == set(fields), (
            f"{where}: doc lists {sorted(skeleton)}, {struct.__name__} {sorted(fields)}"
        )
        for name, sub in skeleton.items():
            check_skeleton(sub, fields[name], f"{where} .{name}")
        return
    msgspec.convert(skeleton, tp)  # a concrete value must fit


# --- the command table of §3 -----------------------------------------------------------------------


def _split_top(text: str, separators: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if depth == 0 and char in separators:
            parts.append(current)
            current = ""
            continue
        if char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
        current += char
    return [*parts, current]


def _names(cell: str, separators: str) -> dict[str, Any]:
    """`a`, `b` {`c`,`d`}: {"a": None, "b": {"c": None, "d": None}}. Prose segments are skipped."""
    out: dict[str, Any] = {}
    for segment in _split_top(cell.strip(), separators):
        match = re.match(r"\s*`(\w+)`\s*(.*)", segment, re.DOTALL)
        if match is None:
            continue
        nested = re.match(r"\[?\{(.*)\}\]?", match[2].strip(), re.DOTALL)
        out[match[1]] = _names(nested[1], ",") if nested else None
    return out


def command_table() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## 3. Commands", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`(\w+)`", cells[0]) if len(cells) >= 3 else None
        if match:
            rows[match[1]] = (_names(cells[1], ";"), _names(cells[2], ",;"))
    return rows


def _compare(doc: dict[str, Any], schema: type[msgspec.Struct], where: str) -> None:
    fields = {f.encode_name: f.type for f in msgspec.structs.fields(schema)}
    assert set(doc) == set(fields), f"{where}: doc lists {sorted(doc)}, {schema.__name__} {sorted(fields)}"
    for name, sub in doc.items():
        if sub is not None:
            nested = _struct_in(fields[name])
            assert nested is not None, f"{where}.{name}"
            _compare(sub, nested, f"{where}.{name}")


def test_command_table_names_the_schemas_fields() -> None:
    table = command_table()
    assert set(table) == set(wire.COMMANDS)
    for command, (fields, result) in table.items():
        _compare(fields, wire.COMMANDS[command], f"{command} fields")
        _compare(result, wire.REPLIES[command], f"{command} reply")


# --- round trips --------------------------------------------------------------------------------------

CONV, RUN, MSG = (str(uuid.uuid4()) for _ in range(3))
TS = "2026-11-24T00:00:00.123Z"
ALICE = common.UserRef(id=1, username="alice")


def _durable(cls: type[Any], seq: int, data: Any) -> Any:
    return cls(conversation=CONV, seq=seq, ts=TS, data=data)


DURABLE = [
    _durable(
        events.MessageEvent,
        1,
        events.MessageData(
            id=MSG,
            client_msg_id="k1",
            author=events.Author(id=1, username="alice", kind="user"),
            text="héllo \u2028 \x01",
            created_at=TS,
            run_id=None,
        ),
    ),
    _durable(
        events.AgentStartedEvent, 2, events.AgentStartedData(run_id=RUN, agent="a", trigger_message_id=MSG, queued_ms=3)
    ),
    _durable(events.AgentThinkingEvent, 3, events.AgentThinkingData(run_id=RUN, text="hmm")),
    _durable(
        events.ToolExecutingEvent,
        4,
        events.ToolExecutingData(run_id=RUN, call_id="c1", tool="calc", arguments={"expression": "1+1"}),
    ),
    _durable(
        events.ToolCompletedEvent,
        5,
        events.ToolCompletedData(run_id=RUN, call_id="c1", tool="calc", ok=True, result={"value": 2}, duration_ms=4),
    ),
    _durable(
        events.ApprovalRequestedEvent,
        5,
        events.ApprovalRequestedData(
            run_id=RUN,
            call_id="c2",
            tool="invite_member",
            arguments={"username": "bob"},
            reason="Add bob to this conversation as member.",
            approver_role="owner",
            expires_at=TS,
        ),
    ),
    _durable(
        events.ApprovalResolvedEvent,
        5,
        events.ApprovalResolvedData(
            run_id=RUN, call_id="c2", decision="approved", by=ALICE, arguments={"username": "bob", "role": "viewer"}
        ),
    ),
    _durable(
        events.ApprovalResolvedEvent,
        5,
        events.ApprovalResolvedData(run_id=RUN, call_id="c3", decision="expired", by=None, arguments={}),
    ),
    _durable(events.AgentDeltaEvent, 6, events.AgentDeltaData(run_id=RUN, text="It is ")),
    _durable(
        events.AgentCompletedEvent,
        7,
        events.AgentCompletedData(
            run_id=RUN, message_id=MSG, text="It is 2", duration_ms=9, usage=events.Usage(prompt_tokens=3)
        ),
    ),
    _durable(
        events.AgentFailedEvent,
        8,
        events.AgentFailedData(
            run_id=RUN, error=events.RunError(code="llm_unavailable", message="down", retry_after_ms=5)
        ),
    ),
    _durable(
        events.AgentCancelledEvent,
        9,
        events.AgentCancelledData(run_id=RUN, by=events.CancelledBy(id=None, username=None), partial_text=""),
    ),
    _durable(
        events.ConversationUpdatedEvent,
        10,
        events.ConversationUpdatedData(title="Plans", visibility="open", by=ALICE),
    ),
    _durable(events.MemberJoinedEvent, 11, events.MemberJoinedData(user=ALICE, role="member", by=ALICE)),
    _durable(events.MemberRoleChangedEvent, 12, events.MemberRoleChangedData(user=ALICE, role="viewer", by=None)),
    _durable(events.MemberLeftEvent, 13, events.MemberLeftData(user=ALICE, by=ALICE)),
]
# (extension) A message's edit and deletion, a deleted message's scrubbed event, a regenerated run's start.
DURABLE += [
    _durable(
        message_events.MessageEditedEvent,
        14,
        message_events.MessageEditedData(message_id=MSG, text="héllo again", edited_at=TS, by=ALICE),
    ),
    _durable(
        message_events.MessageDeletedEvent,
        15,
        message_events.MessageDeletedData(message_id=MSG, deleted_at=TS, by=ALICE),
    ),
    _durable(
        events.MessageEvent,
        16,
        events.MessageData(
            id=MSG,
            client_msg_id="k2",
            author=events.Author(id=1, username="alice", kind="user"),
            text="",
            created_at=TS,
            run_id=None,
            deleted=True,
        ),
    ),
    _durable(
        events.AgentStartedEvent,
        17,
        events.AgentStartedData(run_id=RUN, agent="a", trigger_message_id=MSG, queued_ms=0, regenerates=RUN),
    ),
]
RATE = session.Rate(limit=30, window_ms=60_000)
LIMITS = session.Limits(
    tier="free",
    connections=5,
    rates=session.Rates(messages=RATE, agent_runs=RATE, typing=RATE, commands=RATE),
    max_frame_bytes=65536,
    max_text_chars=8000,
    max_subscriptions=50,
    replay_limit=500,
    history_page_max=100,
    outbound_queue=2000,
    buffer_max_events=500,
    buffer_max_age_ms=900_000,
    history_retention_days=None,
)
OTHER_FRAMES = [
    events.TypingEvent(conversation=CONV, data=events.TypingData(user=ALICE, state="start", expires_ms=6000)),
    events.ReadEvent(conversation=CONV, data=events.ReadData(user=ALICE, seq=4)),
    events.PresenceEvent(conversation=CONV, data=events.PresenceData(joined=[ALICE], left=[])),
    events.DraftEvent(conversation=CONV, data=events.DraftData(text="half a thought", updated_at=TS)),
    session.WelcomeFrame(
        data=session.WelcomeData(
            session_id="9f00",
            protocol="chat.v1",
            user=session.WelcomeUser(id=1, username="alice", tier="gold"),
            server_time=TS,
            heartbeat_ms=25_000,
            typing_ttl_ms=6000,
            limits=LIMITS,
        )
    ),
    session.NotificationFrame(
        seq=1,
        ts=TS,
        data=session.NotificationData(
            id=RUN,
            kind="role_changed",
            priority="low",
            conversation=CONV,
            seq=None,
            actor=ALICE,
            preview="You are now viewer in t",
            created_at=TS,
            title="t",
            role="viewer",
            by=2,
        ),
    ),
    session.NotificationFrame(
        seq=2,
        ts=TS,
        data=session.NotificationData(
            id=RUN,
            kind="mention",
            priority="normal",
            conversation=CONV,
            seq=7,
            actor=ALICE,
            preview="@bob can you look?",
            created_at=TS,
        ),
    ),
    session.NotificationsReadFrame(data=session.NotificationsReadData(up_to_seq=2, unread=0)),
    replies.ErrorFrame(error=common.ErrorBody(code="not_found", message="conversation not found")),
]
COMMAND_SAMPLES: list[msgspec.Struct] = [
    wc.Subscribe(conversation=CONV, since_seq=0),
    wc.Unsubscribe(conversation=CONV),
    wc.Send(conversation=CONV, client_msg_id="k1", text="hi"),
    wc.History(conversation=CONV, before_seq=10, limit=100, unit="messages"),
    wc.Typing(conversation=CONV, state="stop"),
    wc.Read(conversation=CONV, seq=0),
    wc.Draft(conversation=CONV, text=""),
    wc.Cancel(run_id=RUN),
    wc.Approve(run_id=RUN, call_id="call_1", decision="approve", arguments={"username": "bob", "role": "viewer"}),
    wc.Edit(conversation=CONV, message_id=MSG, text="fixed"),
    wc.Delete(conversation=CONV, message_id=MSG),
    wc.Feedback(conversation=CONV, message_id=MSG, rating="down", comment="wrong year"),
    wc.Regenerate(conversation=CONV, run_id=RUN),
    wc.Presence(conversation=CONV),
    wc.SyncNotifications(since_seq=3),
    wc.Auth(token="eyJ.x.y"),
    wc.Ping(),
]
REPLY_SAMPLES: dict[str, msgspec.Struct] = {
    "subscribe": replies.SubscribeReply(
        conversation=CONV,
        head_seq=9,
        active_runs=[replies.ActiveRun(run_id=RUN, agent="a", status="running", text="It", seq=6, watchers=[ALICE])],
        last_read_seq=7,
        recovered=True,
        draft=replies.SavedDraft(text="half a thought", updated_at=TS),
    ),
    "unsubscribe": replies.UnsubscribeReply(conversation=CONV),
    "send": replies.SendReply(conversation=CONV, message=replies.MessageRef(id=MSG, seq=1), duplicate=True, run_id=RUN),
    "history": replies.HistoryReply(conversation=CONV, events=DURABLE, has_more=True, next_before_seq=1),
    "typing": replies.EmptyReply(),
    "read": replies.EmptyReply(),
    "draft": replies.DraftReply(conversation=CONV, updated_at=TS),
    "cancel": replies.CancelReply(run_id=RUN, status="cancelling"),
    "approve": replies.ApproveReply(run_id=RUN, call_id="call_1", decision="reject"),
    "edit": replies.EditReply(message_id=MSG, seq=14, edited_at=TS),
    "delete": replies.DeleteReply(message_id=MSG, seq=15),
    "feedback": replies.FeedbackReply(message_id=MSG, rating=None),
    "regenerate": replies.RegenerateReply(run_id=RUN),
    "presence": replies.PresenceReply(
        conversation=CONV, members=[replies.Member(user=ALICE, online=False, last_seen=TS, last_read_seq=3)]
    ),
    "sync_notifications": replies.SyncNotificationsReply(head_seq=0, until_seq=0, has_more=False),
    "auth": replies.AuthReply(expires_at=TS),
    "ping": replies.PingReply(server_time=TS),
}


def test_samples_cover_every_schema() -> None:
    assert {type(c) for c in COMMAND_SAMPLES} == set(wire.COMMANDS.values())
    assert set(REPLY_SAMPLES) == set(wire.REPLIES)
    assert {type(f) for f in DURABLE + OTHER_FRAMES} == set(wire.FRAMES.values())


@pytest.mark.parametrize("frame", DURABLE + OTHER_FRAMES, ids=lambda f: type(f).__name__)
def test_frames_round_trip(frame: msgspec.Struct) -> None:
    text = wire.encode(frame)
    assert wire.decode_frame(json.loads(text)) == frame
    assert msgspec.json.decode(text, type=type(frame)) == frame
    data = getattr(frame, "data", None)
    if data is not None:
        assert wire.decode_event_data(json.loads(text)["type"], json.loads(text)["data"]) == data


@pytest.mark.parametrize("fields", COMMAND_SAMPLES, ids=lambda c: type(c).__name__)
def test_commands_round_trip(fields: msgspec.Struct) -> None:
    name = next(k for k, v in wire.COMMANDS.items() if v is type(fields))
    assert wire.decode_command(name, json.loads(wire.encode(fields))) == fields


@pytest.mark.parametrize("command", sorted(REPLY_SAMPLES))
def test_replies_round_trip(command: str) -> None:
    frame = json.loads(wire.reply_frame("r-1", REPLY_SAMPLES[command]))
    assert (frame["type"], frame["id"], frame["ok"]) == ("reply", "r-1", True)
    assert wire.decode_reply(command, frame) == REPLY_SAMPLES[command]


def test_history_events_decode_to_their_own_classes() -> None:
    frame = json.loads(wire.reply_frame("h", REPLY_SAMPLES["history"]))
    result = wire.decode_reply("history", frame)
    assert isinstance(result, replies.HistoryReply)
    assert [type(e) for e in result.events] == [type(e) for e in DURABLE]


def test_optional_fields_are_left_out_not_null() -> None:
    assert json.loads(wire.encode(wc.Subscribe(conversation=CONV))) == {"conversation": CONV}
    reply = replies.SendReply(conversation=CONV, message=replies.MessageRef(id=MSG, seq=1), duplicate=False)
    assert "run_id" not in json.loads(wire.encode(reply))
    assert json.loads(wire.encode(events.Usage())) == {}
    # ...while a field that is always sent stays, even when null.
    assert json.loads(wire.encode(DURABLE[0]))["data"]["run_id"] is None


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "fields", "field"),
    [
        ("subscribe", {"conversation": CONV, "since_seq": "3"}, "since_seq"),
        ("subscribe", {"conversation": CONV, "since_seq": True}, "since_seq"),
        ("subscribe", {"conversation": CONV, "since_seq": -1}, "since_seq"),
        ("subscribe", {"since_seq": 1}, "conversation"),
        ("send", {"conversation": CONV, "text": "hi"}, "client_msg_id"),
        ("send", {"conversation": CONV, "client_msg_id": "k" * 65, "text": "hi"}, "client_msg_id"),
        ("send", {"conversation": CONV, "client_msg_id": "k", "text": ""}, "text"),
        ("send", {"conversation": CONV, "client_msg_id": "k", "text": "a\x00b"}, "text"),
        ("send", {"conversation": CONV, "client_msg_id": "\ud800", "text": "hi"}, "client_msg_id"),
        ("send", {"conversation": 5, "client_msg_id": "k", "text": "hi"}, "conversation"),
        ("history", {"conversation": CONV, "limit": 101}, "limit"),
        ("history", {"conversation": CONV, "before_seq": 0}, "before_seq"),
        ("history", {"conversation": CONV, "limit": 2.0}, "limit"),
        ("typing", {"conversation": CONV, "state": "typing"}, "state"),
        ("read", {"conversation": CONV, "seq": None}, "seq"),
        ("cancel", {}, "run_id"),
        ("sync_notifications", {}, "since_seq"),
        ("auth", {"token": "x" * 4097}, "token"),
    ],
)
def test_bad_command_fields_are_refused_naming_the_field(command: str, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(wire.FieldError) as exc:
        wire.decode_command(command, fields)
    assert exc.value.field == field
    assert str(exc.value).startswith(f"{field}: ")
    assert isinstance(exc.value, ValueError)


def test_pattern_refusals_say_what_is_expected_not_the_regex() -> None:
    with pytest.raises(wire.FieldError, match=r"^text: must be Unicode text without NUL characters"):
        wire.decode_command("send", {"conversation": CONV, "client_msg_id": "k", "text": "\x00"})


def test_unknown_command_is_refused() -> None:
    with pytest.raises(wire.UnknownCommand, match="'shout'"):
        wire.decode_command("shout", {})


def test_commands_ignore_fields_they_do_not_know() -> None:
    # The protocol does not refuse unknown command fields, and the server has always ignored them.
    assert wire.decode_command("ping", {"nonce": 1}) == wc.Ping()


def test_absent_and_null_optional_command_fields_mean_the_same() -> None:
    assert wire.decode_command("subscribe", {"conversation": CONV, "since_seq": None}) == wc.Subscribe(
        conversation=CONV
    )
    page = wire.decode_command("history", {"conversation": CONV, "limit": None})
    assert isinstance(page, wc.History)
    assert page.page_size == common.HISTORY_PAGE_DEFAULT


@pytest.mark.parametrize(
    ("kind", "mutate", "field"),
    [
        ("message", lambda d: d.update(mentions=["2"]), "mentions[0]"),
        ("message", lambda d: d["author"].update(kind="bot"), "author.kind"),
        ("message", lambda d: d.pop("run_id"), "run_id"),
        ("message", lambda d: d.update(created_at="2026-11-24 00:00:00"), "created_at"),
        ("agent_failed", lambda d: d["error"].update(code="oops"), "error.code"),
        ("typing", lambda d: d["user"].update(id="1"), "user.id"),
        ("presence", lambda d: d["joined"][0].pop("username"), "joined[0].username"),
    ],
)
def test_server_data_refuses_undeclared_or_wrong_fields(kind: str, mutate: Any, field: str) -> None:
    frame = next(f for f in DURABLE + OTHER_FRAMES if json.loads(wire.encode(f))["type"] == kind)
    data = json.loads(wire.encode(frame))["data"]
    mutate(data)
    with pytest.raises(wire.FieldError) as exc:
        wire.decode_event_data(kind, data)
    assert exc.value.field == field, str(exc.value)


def test_reply_envelopes_are_checked() -> None:
    with pytest.raises(wire.FieldError) as exc:
        wire.decode_frame({"type": "reply", "id": "x" * 65, "ok": False, "error": {"code": "internal", "message": ""}})
    assert exc.value.field == "id"
    with pytest.raises(wire.FieldError) as exc:
        wire.decode_frame({"type": "error", "error": {"code": "teapot", "message": ""}})
    assert exc.value.field == "error.code"
    with pytest.raises(wire.FieldError):
        wire.decode_reply("ping", {"type": "reply", "id": "1", "ok": False, "server_time": TS})


# --- the schemas against the code that builds the frames today ---------------------------------


def test_constants_agree_with_the_server() -> None:
    from django.conf import settings

    from chat.realtime import protocol

    assert common.PROTOCOL == protocol.PROTOCOL
    assert common.MAX_ID_CHARS == protocol.MAX_ID_CHARS
    assert common.HISTORY_PAGE_MAX == settings.CHAT_HISTORY_MAX


def test_structs_encode_to_the_same_text_as_the_dict_encoder() -> None:
    """Field order and escaping match chat.realtime.protocol.encode, so switching a frame to its
    Struct changes no byte on the wire."""
    from chat.realtime import protocol

    for frame in DURABLE + OTHER_FRAMES:
        assert wire.encode(frame) == protocol.encode(msgspec.to_builtins(frame))
    for command, result in REPLY_SAMPLES.items():
        assert wire.reply_frame("7", result) == protocol.reply_ok("7", msgspec.to_builtins(result)), command


def test_message_event_as_the_service_builds_it() -> None:
    from datetime import UTC, datetime

    from chat.models import Message
    from chat.realtime import protocol
    from chat.services.messages import message_event_data
    from chat.wire.frames import StoredEvent

    message = Message(id=uuid.UUID(MSG), author_id=1, client_msg_id="k1", text="héllo", created_at=datetime.now(UTC))
    data = message_event_data(message, username="alice")
    stored = StoredEvent(CONV, 1, "message", TS, data)
    frame = wire.decode_frame(stored.frame())
    assert isinstance(frame, events.MessageEvent)
    assert wire.encode(frame) == stored.encoded() == protocol.encode(stored.frame())


def test_welcome_limits_as_the_tier_table_builds_them() -> None:
    from chat.tiers import all_tiers

    for name, limits in all_tiers().items():
        decoded = msgspec.convert(limits.as_welcome(), session.Limits)
        assert decoded.tier == name


def test_errors_and_replies_as_the_protocol_module_builds_them() -> None:
    from chat.realtime import protocol

    ProtocolError = protocol.ProtocolError
    error = ProtocolError("rate_limited", "too many messages; retry in 5 ms", retry_after_ms=5)
    assert isinstance(wire.decode_frame(json.loads(protocol.reply_error(None, error))), replies.ErrorFrame)
    assert isinstance(wire.decode_frame(json.loads(protocol.reply_error("1", error))), replies.ReplyError)
    plain = ProtocolError("not_found", "conversation not found")
    assert "retry_after_ms" not in json.loads(protocol.reply_error(None, plain))["error"]
    assert wire.decode_frame(json.loads(protocol.reply_error(None, plain))) == replies.ErrorFrame(
        error=common.ErrorBody(code="not_found", message="conversation not found")
    )


def test_a_large_tool_result_becomes_the_truncated_shape() -> None:
    from agents.tool_results import bound_result

    small = {"value": 2}
    assert bound_result(small) is small
    msgspec.convert(bound_result({"rows": ["x" * 100] * 100}), events.TruncatedResult)
    cut = msgspec.convert(bound_result({"rows": ["x" * 100] * 100}, href="/api/x/"), events.TruncatedResult)
    assert cut.href == "/api/x/"


# --- the layer rule -------------------------------------------------------------------------------


def test_wire_imports_without_django_or_the_rest_of_chat() -> None:
    script = (
        "import sys, chat.wire\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'django'"
        " or (m.startswith('chat.') and not m.startswith('chat.wire')))\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    root = str(DOC.parents[1])
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
