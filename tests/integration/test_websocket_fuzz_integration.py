"""Hostile input (docs/protocol.md §2, §6.3, §6.5): property-based fuzzing of a live ChatConsumer.

One attacker socket gets thousands of generated frames — commands with the right field names and
wrong values, arbitrary JSON, raw non-JSON text, binary frames, 10,000-level nesting, frames at
and over the size limit, thousands of keys, floods of tiny frames — over the real ASGI app with the
real PostgreSQL and Redis, while a victim keeps chatting in a conversation of their own. For every
frame the test checks the answer docs/protocol.md §2 promises, and afterwards that the database holds
exactly what the accepted `send`s wrote and nothing else.

Hypothesis cannot drive a coroutine itself, so the test opens the sockets once on its event loop,
runs the hypothesis engine in a worker thread, and each generated example is sent over the
already-open sockets by a coroutine scheduled back onto the loop (`run_coroutine_threadsafe`).
Frames are answered in order per socket, so every example ends with a `ping` carrying a fresh id:
its reply marks "everything before has been answered", which is how a frame without an id is seen
to have got nothing. The seed is printed and can be replayed with FUZZ_SEED=<seed>.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from rest_framework_simplejwt.tokens import AccessToken

import chat.consumers
from agents.models import AgentRun
from chat.models import ConversationMember, Event, Message, Notification
from tests.support import factories
from tests.support.ws import Client, access_token, connected

pytestmark = [pytest.mark.django_db(transaction=True)]

# docs/protocol.md §2: the only error codes a client may ever see.
PROTOCOL_CODES = {
    "bad_request",
    "unknown_command",
    "not_found",
    "forbidden",
    "rate_limited",
    "too_large",
    "conflict",
    "unavailable",
    "internal",
}
# In the contract, but a bug here: `internal` is an unhandled error, and PostgreSQL and Redis are up
# for the whole run, so `unavailable` would mean a dependency failed because of what a client sent.
CODES_THAT_ARE_BUGS = {"internal", "unavailable"}
BAD_FRAME_CODES = {"bad_request", "unknown_command", "too_large"}
MAX_ID_CHARS = 64

# hypothesis examples: most are one frame followed by a ping, a few are floods. `make test` runs 1,200 (about
# 15 s); `make fuzz` the full 3,000 (FUZZ_EXAMPLES=3000), and any length with FUZZ_EXAMPLES=N.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 1_200)
# The property must have been checked on at least this many single frames: two in three examples are.
FRAMES_PER_RUN = EXAMPLES * 2 // 3
VICTIM_EVERY = 100  # the victim sends a message after every this many fuzz frames
ANSWER_TIMEOUT_S = 20.0  # a frame that is not answered in this long is a hang, not slowness


# --- what docs/protocol.md §2 says a frame must get ---------------------------------------------


@dataclass(frozen=True)
class Expect:
    kind: str  # "reply": exactly one reply with `id`; "error": one error frame; "maybe": nothing or one error
    id: str | None = None
    codes: frozenset[str] = frozenset()  # for "error": the codes docs/protocol.md §2 allows for this frame


def frame_limit() -> int:
    return int(django_settings.CHAT_MAX_FRAME_BYTES)


def utf8_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def deep_loads(text: str) -> Any:
    """json.loads without the recursion limit: a frame nested 30,000 levels deep is still one JSON
    object whose top-level `id` the protocol promises to answer. The oracle parses it whole, in a
    thread with a stack big enough for the C parser, instead of trusting the server's own scan."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def parse() -> None:
        try:
            result.append(json.loads(text))
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    old_stack, old_limit = threading.stack_size(512 * 1024 * 1024), sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 4 * len(text) + 1000))
    try:
        worker = threading.Thread(target=parse)
        worker.start()
        worker.join()
    finally:
        threading.stack_size(old_stack)
        sys.setrecursionlimit(old_limit)
    if errors:
        raise errors[0]
    return result[0]


def expectation(text: str | None, data: bytes | None) -> Expect:
    """The answer docs/protocol.md §2 promises, decided from the frame alone."""
    if data is not None:
        return Expect("error", codes=frozenset({"bad_request"}))
    assert text is not None
    limit = frame_limit()
    if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
        return Expect("error", codes=frozenset({"too_large"}))
    try:
        payload = json.loads(text)
    except RecursionError:
        try:
            payload = deep_loads(text)
        except ValueError:
            return Expect("error", codes=frozenset({"bad_request"}))
    except ValueError:
        return Expect("error", codes=frozenset({"bad_request"}))
    if not isinstance(payload, dict):
        return Expect("error", codes=frozenset({"bad_request"}))
    command_id = payload.get("id")
    if command_id is None:
        return Expect("maybe")
    # An id is a 1-64 character string of Unicode text: one with a lone surrogate could not be
    # echoed in a UTF-8 reply, so it is invalid, and an invalid id gets an error frame.
    if isinstance(command_id, str) and 0 < len(command_id) <= MAX_ID_CHARS and utf8_text(command_id):
        return Expect("reply", id=command_id)
    return Expect("error", codes=frozenset({"bad_request"}))


class Frame:
    """One client frame: text or binary. (Not a dataclass: hypothesis would print a 64 KiB frame in
    full; this repr is cut short.)"""

    def __init__(self, text: str | None = None, data: bytes | None = None) -> None:
        self.text = text
        self.data = data

    @property
    def payload(self) -> dict[str, Any] | None:
        if self.text is None or len(self.text) > frame_limit():
            return None
        try:
            value = json.loads(self.text)
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None

    def __repr__(self) -> str:  # hypothesis prints the falsifying example: keep 64 KiB frames readable
        body = repr(self.text if self.text is not None else self.data)
        return f"Frame({body[:300]}{'...' if len(body) > 300 else ''} len={len(body)})"


# --- strategies ---------------------------------------------------------------------------------

ABSENT = object()


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Pick a strategy by weight (st.one_of gives each distinct strategy one equal share)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


HOSTILE_CHARS = st.sampled_from(
    ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\u202e", "\u200f", "\ufeff", "\u200b", "😀", "👨\u200d👩\u200d👧"]
)
# Built from single characters: st.text() quietly leaves surrogates out of a one_of alphabet.
HOSTILE_TEXT = st.lists(st.characters(exclude_categories=()) | HOSTILE_CHARS, max_size=40).map("".join)
EDGE_STRINGS = st.sampled_from(
    [
        "",
        " ",
        " \t\n\r ",
        "\u3000\u2003",  # Unicode whitespace only
        "\x00",
        "a\x00b",
        "\ud800",
        "\udfff",
        "x\ud83d",
        "\ude00x",
        "\u202eevil.exe",
        "مرحبا بالعالم",
        "שלום עולם",
        "👨\u200d👩\u200d👧\u200d👦",
        "😀" * 20,
        "\u200b",
        "\ufeff",
        "null",
        "true",
        "0",
        "-1",
        "1e999",
        "NaN",
        "{}",
        "[]",
        "<script>alert(1)</script>",
        "' OR 1=1 --",
        "%s%n%x",
        "../../etc/passwd",
        "x" * 64,
        "x" * 65,
    ]
)
STRINGS = st.one_of(EDGE_STRINGS, HOSTILE_TEXT, st.text(max_size=20))
INTS = st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from(
    [0, 1, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**100]
)
FLOATS = st.floats() | st.sampled_from([0.5, -0.0, 1.0, 1e308, float("inf"), float("nan")])
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, STRINGS)
JSON_ANY = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(STRINGS, inner, max_size=4), max_leaves=12
)
SMALL_INTS = st.integers(min_value=0, max_value=60)  # in range: the command goes on to the database
INT_LIKE = weighted((3, SMALL_INTS), (1, INTS), (1, SCALARS), (1, JSON_ANY))
VALID_IDS = st.text(min_size=1, max_size=MAX_ID_CHARS)
IDS = weighted(
    (2, st.just(ABSENT)),
    (4, VALID_IDS),
    (1, st.sampled_from(["", "x" * 64, "x" * 65, "a\x00b", "\ud800", "ok\udfff", "\u202e", " "])),
    (1, HOSTILE_TEXT),
    (1, JSON_ANY),
)
COMMANDS = (
    "subscribe",
    "unsubscribe",
    "send",
    "history",
    "typing",
    "read",
    "cancel",
    "presence",
    "sync_notifications",
    "auth",
    "ping",
)
TINY_FRAMES = [
    Frame('{"type":"ping"}'),
    Frame('{"type":"ping","id":"f"}'),
    Frame('{"type":"ping","id":"g"}'),
    Frame("x"),
    Frame("{}"),
    Frame("[]"),
    Frame("1"),
    Frame('{"type":"nope"}'),
    Frame('{"type":"nope","id":"n"}'),
    Frame('{"id":7}'),
    Frame(data=b"\x00"),
    Frame(data=b"\xff"),
]


@dataclass
class World:
    """The real objects the strategies point at."""

    own: str  # the attacker owns it (no agent): the only conversation where a send may succeed
    viewer: str  # the attacker is a viewer there (it has an agent and one finished run)
    victim: str  # the victim's; the attacker is no member
    other: str  # a bystander's; the attacker is no member
    run_id: str  # the finished run in `viewer`
    tokens: list[str]  # the attacker's valid token, the victim's, an expired one, a broken one


def uuid_forms(conv: str) -> list[str]:
    # Every spelling uuid.UUID() accepts names the same conversation.
    return [conv, conv.upper(), conv.replace("-", ""), "{" + conv + "}", "urn:uuid:" + conv]


def strategies(world: World) -> st.SearchStrategy[list[Frame]]:
    real_convs = st.sampled_from(
        [*uuid_forms(world.own), *uuid_forms(world.viewer), *uuid_forms(world.victim), world.other]
    )
    convs = weighted((6, real_convs), (1, st.uuids().map(str)), (1, STRINGS), (1, JSON_ANY))
    cmids = st.one_of(st.sampled_from(["m1", "m2", "m3", "dup"]), st.text(min_size=1, max_size=64), STRINGS, JSON_ANY)
    big_texts = st.sampled_from(["x" * 16_000, "x" * 16_001, "é" * 16_000, " " * 5_000 + "y", "z" * 40_000])
    texts = weighted((2, STRINGS), (2, st.text(max_size=200)), (1, big_texts), (1, JSON_ANY))
    fields: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "subscribe": {"conversation": convs, "since_seq": INT_LIKE},
        "unsubscribe": {"conversation": convs},
        "send": {"conversation": convs, "client_msg_id": cmids, "text": texts},
        "history": {"conversation": convs, "before_seq": INT_LIKE, "limit": INT_LIKE},
        "typing": {
            "conversation": convs,
            "state": weighted((3, st.sampled_from(["start", "stop"])), (1, STRINGS), (1, JSON_ANY)),
        },
        "read": {"conversation": convs, "seq": INT_LIKE},
        "cancel": {
            "run_id": st.one_of(
                st.sampled_from([world.run_id, world.run_id.upper()]), st.uuids().map(str), STRINGS, JSON_ANY
            )
        },
        "presence": {"conversation": convs},
        "sync_notifications": {"since_seq": INT_LIKE},
        "auth": {"token": st.one_of(st.sampled_from(world.tokens), STRINGS, JSON_ANY)},
        "ping": {},
    }

    def encode(draw: st.DrawFn, payload: dict[str, Any]) -> Frame:
        # ensure_ascii=True is what most clients send (lone surrogates travel as "\\ud800" escapes);
        # raw characters exercise the in-process path too.
        return Frame(json.dumps(payload, ensure_ascii=draw(st.booleans()), allow_nan=True))

    def with_id(draw: st.DrawFn, payload: dict[str, Any]) -> dict[str, Any]:
        command_id = draw(IDS)
        if command_id is not ABSENT:
            payload["id"] = command_id
        return payload

    @st.composite
    def command(draw: st.DrawFn) -> list[Frame]:
        """(a) a command with the right field names and fuzzed values, some fields left out."""
        kind = draw(weighted((6, st.sampled_from(COMMANDS)), (1, STRINGS), (1, JSON_ANY)))
        payload: dict[str, Any] = draw(st.dictionaries(STRINGS, JSON_ANY, max_size=2))  # junk keys
        if draw(st.integers(0, 19)):  # now and then no type at all
            payload["type"] = kind
        for name, values in fields.get(kind, {}).items() if isinstance(kind, str) else ():
            if draw(st.integers(0, 9)):
                payload[name] = draw(values)
        return [encode(draw, with_id(draw, payload))]

    @st.composite
    def valid_send(draw: st.DrawFn) -> list[Frame]:
        """A send that can succeed: the attacker's conversation in any spelling, unicode texts."""
        payload = {
            "type": "send",
            "conversation": draw(st.sampled_from(uuid_forms(world.own))),
            "client_msg_id": draw(cmids),
            "text": draw(st.one_of(STRINGS, st.text(min_size=1, max_size=300))),
        }
        return [encode(draw, with_id(draw, payload))]

    @st.composite
    def big(draw: st.DrawFn) -> list[Frame]:
        """(e) deep nesting, frames around the size limit, many keys, numbers too long to parse."""
        shape = draw(st.sampled_from(["deep", "size", "keys", "digits"]))
        command_id = draw(st.sampled_from([None, "big-1", "\ud800"]))
        head = '{"type":"ping",' + (json.dumps({"id": command_id})[1:-1] + "," if command_id else "")
        if shape == "deep":
            # Depths well away from Python's recursion limit (~1000), where where exactly json
            # gives up depends on the caller's stack; 10,000 must be a bad_request, not a crash.
            depth = draw(st.sampled_from([17, 40, 200, 5_000, 10_000]))
            opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
            nested = opener * depth + "0" + closer * depth if opener != "[" else opener * depth + closer * depth
            bare = draw(st.booleans())
            return [Frame(nested if bare else head + '"a":' + nested + "}")]
        if shape == "size":
            limit = frame_limit()
            target = draw(st.sampled_from([limit - 1, limit, limit + 1, limit + 1024, 2 * limit]))
            char = draw(st.sampled_from(["x", "é", "😀"]))
            prefix = draw(
                st.sampled_from(
                    [
                        head + '"pad":"',
                        '{"type":"send","id":"s","conversation":"' + world.own + '","client_msg_id":"big","text":"',
                    ]
                )
            )
            count = max(0, (target - len(prefix) - 2) // len(char.encode("utf-8")))
            return [Frame(prefix + char * count + '"}')]
        if shape == "keys":
            count = draw(st.sampled_from([100, 1_000, 4_000, 10_000]))
            return [Frame(head + ",".join(f'"k{i}":{i}' for i in range(count)) + "}")]
        digits = draw(st.sampled_from([300, 4_300, 5_000]))
        return [Frame('{"type":"read","id":"d","conversation":"' + world.own + '","seq":' + "9" * digits + "}")]

    raw_text = st.one_of(
        st.text(max_size=100),
        HOSTILE_TEXT,
        st.sampled_from(
            [
                "",
                "{",
                '{"type":',
                "{'type': 'ping'}",
                '{"type":"ping"} trailing',
                '\ufeff{"type":"ping","id":"bom"}',
                "NaN",
                "undefined",
                '{"type":"ping","id":"x",}',
                "\x00",
            ]
        ),
    ).map(lambda text: [Frame(text)])
    binary = st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b'{"type":"ping","id":"bin"}']),
    ).map(lambda data: [Frame(data=data)])
    any_json = JSON_ANY.map(lambda value: [Frame(json.dumps(value, allow_nan=True))])
    flood = st.lists(st.sampled_from(TINY_FRAMES), min_size=5, max_size=30)  # (f), sent without waiting

    return weighted(
        (10, command()), (2, valid_send()), (1, any_json), (1, raw_text), (1, binary), (1, big()), (1, flood)
    )


# --- the live side ----------------------------------------------------------------------------------


class ErrorLog(logging.Handler):
    """ERROR records of the server's loggers: an unhandled exception is logged with exc_info."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def crashes(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}\n{self.format(r)}" for r in self.records if r.exc_info]


@dataclass
class Stats:
    frames: int = 0
    single: int = 0  # frames sent alone, each followed by its ping
    examples: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    ok_replies: Counter[str] = field(default_factory=Counter)


class Wire:
    """A socket's frames, read strictly: every text frame must be writable as UTF-8 by a real server
    (the in-process communicator would pass a lone surrogate that uvicorn cannot send)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def send(self, frame: Frame) -> None:
        # The raw ASGI message: the communicator's send_to() refuses an empty frame, a client can not.
        if frame.data is not None:
            await self.client.comm.send_input({"type": "websocket.receive", "bytes": frame.data})
        else:
            await self.client.comm.send_input({"type": "websocket.receive", "text": frame.text})

    async def read(self, timeout: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        try:
            raw = await self.client.comm.receive_output(timeout)
        except TimeoutError:
            raise AssertionError(f"no frame within {timeout}s; last frames: {self.client.frames[-5:]}") from None
        if raw["type"] == "websocket.close":
            frame: dict[str, Any] = {"type": "__close__", "code": raw.get("code")}
        else:
            text = raw.get("text")
            assert isinstance(text, str), f"the server sent a non-text frame: {raw!r}"
            frame = json.loads(text)
            if not utf8_text(text):  # checked by the caller, once the exchange is read to its end
                frame[NOT_UTF8] = text[:200]
        self.client.frames.append(frame)
        return frame


NOT_UTF8 = "__not_utf8__"


def assert_utf8(got: dict[str, Any]) -> None:
    assert NOT_UTF8 not in got, f"the server sent a frame that is not valid UTF-8: {got[NOT_UTF8]!r}"


def check_error_shape(error: Any) -> str:
    assert isinstance(error, dict), error
    code = error.get("code")
    assert code in PROTOCOL_CODES, f"error code outside docs/protocol.md §2: {error}"
    assert code not in CODES_THAT_ARE_BUGS, f"server bug answered as {code}: {error}"
    assert isinstance(error.get("message"), str), error
    return str(code)


def normal_uuid(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


class VictimProbe:
    """A second user chatting in their own conversation: every frame they get must be their own
    doing, in order, with the right seq."""

    def __init__(self, wire: Wire, conversation: str, user_id: int, head_seq: int) -> None:
        self.wire = wire
        self.conversation = conversation
        self.user_id = user_id
        self.seq = head_seq
        self.checked = head_seq
        self.sent = 0
        self.texts: dict[int, str] = {}
        self.marker = uuid.uuid4().hex[:10]  # in every victim text: must never reach anyone else

    async def round(self) -> None:
        """Send one message; exactly its reply and its event must arrive, with the next seq."""
        self.sent += 1
        self.seq += 1
        seq = self.seq
        text = f"victim-{self.marker}-{seq}"
        self.texts[seq] = text
        command_id = f"v{seq}"
        await self.wire.send(
            Frame(
                json.dumps(
                    {
                        "type": "send",
                        "id": command_id,
                        "conversation": self.conversation,
                        "client_msg_id": command_id,
                        "text": text,
                    }
                )
            )
        )
        replied = delivered = False
        while not (replied and delivered):
            got = await self.wire.read()
            if got["type"] == "reply" and got["id"] == command_id:
                assert got["ok"] is True, got
                assert got["message"]["seq"] == seq, got
                assert got["duplicate"] is False, got
                replied = True
            else:
                delivered |= self.check(got) == seq

    def check(self, got: dict[str, Any]) -> int | None:
        """Only the victim's own conversation, only the victim's own doing; returns a message seq."""
        assert_utf8(got)
        assert got.get("conversation") == self.conversation, f"the victim got a frame caused by someone else: {got}"
        if got["type"] == "presence":
            people = got["data"]["joined"] + got["data"]["left"]
            assert all(p["id"] == self.user_id for p in people), got
            return None
        assert got["type"] == "message", f"the victim got an unexpected frame: {got}"
        assert got["data"]["author"]["id"] == self.user_id, got
        # In order, no gap, no repeat: each event is the one after the last one checked.
        assert got["seq"] == self.checked + 1, f"victim event out of order: {got} after seq {self.checked}"
        assert got["data"]["text"] == self.texts.get(got["seq"]), got
        self.checked = int(got["seq"])
        return self.checked

    async def drain(self) -> None:
        """Everything the victim was sent has been checked, and their socket still answers."""
        await self.wire.send(Frame('{"type":"ping","id":"victim-last"}'))
        while True:
            got = await self.wire.read()
            if got["type"] == "reply" and got["id"] == "victim-last":
                assert got["ok"] is True, got
                assert self.checked == self.seq, f"the victim's events stopped at seq {self.checked} of {self.seq}"
                return
            self.check(got)


class Fuzz:
    """Sends examples over the attacker's socket and checks every answer; keeps the victim honest."""

    def __init__(self, world: World, attacker: Wire, victim: VictimProbe) -> None:
        self.world = world
        self.attacker = attacker
        self.victim = victim
        self.stats = Stats()
        self.pings = 0
        # (conversation, client_msg_id) -> (stored text, message id if a reply told it) of every
        # send the server accepted: exactly these rows may exist afterwards.
        self.accepted: dict[tuple[str, str], tuple[str, str | None]] = {}
        self.accepted_replies = 0  # ok `send` replies with duplicate false
        self.broken: str | None = None
        self.allowed = {world.own, world.viewer}
        self.secret = [world.victim, world.other, victim.marker]

    # -- the attacker ------------------------------------------------------------------------------

    async def exchange(self, frames: list[Frame]) -> None:
        # A socket that hung or closed stays unusable: fail at once instead of waiting out a
        # timeout for every example hypothesis tries while shrinking.
        assert self.broken is None, f"the attacker's socket is unusable since: {self.broken}"
        try:
            received = await self.answers_to(frames)
        except AssertionError as exc:
            self.broken = f"{exc} (frames {frames!r})"
            raise
        *before_ping, ping_reply = received
        if not ping_reply["ok"]:
            assert check_error_shape(ping_reply["error"]) == "rate_limited", ping_reply
        for got in before_ping:
            self.check_isolation(got)
        self.match(frames, [got for got in before_ping if got["type"] in ("reply", "error")])
        self.stats.frames += len(frames)
        self.stats.single += len(frames) == 1
        self.stats.examples += 1
        if self.stats.frames // VICTIM_EVERY > self.victim.sent:
            await self.victim.round()

    async def answers_to(self, frames: list[Frame]) -> list[dict[str, Any]]:
        """Send the frames and a ping; everything received up to the ping's reply, which is last.
        (Read in full before any check, so a failed example leaves the socket in step.)"""
        for frame in frames:
            await self.attacker.send(frame)
        self.pings += 1
        ping_id = f"~ping~{self.pings}~{uuid.uuid4().hex[:8]}"
        await self.attacker.send(Frame(json.dumps({"type": "ping", "id": ping_id})))
        received: list[dict[str, Any]] = []
        while not received or not (received[-1]["type"] == "reply" and received[-1].get("id") == ping_id):
            got = await self.attacker.read()
            assert got["type"] != "__close__", f"attacker socket closed {got['code']}"
            received.append(got)
        return received

    def check_isolation(self, got: dict[str, Any]) -> None:
        assert_utf8(got)
        if got["type"] in ("reply", "error", "notification"):
            pass
        elif "conversation" in got:
            assert got["conversation"] in self.allowed, f"attacker got a frame of a foreign conversation: {got}"
        else:
            raise AssertionError(f"unexpected frame on the attacker's socket: {got}")
        dumped = json.dumps(got)
        for secret in self.secret:
            assert secret not in dumped, f"attacker saw {secret!r}: {got}"

    def match(self, frames: list[Frame], answers: list[dict[str, Any]]) -> None:
        """Answers come in frame order: each frame with a valid id has its reply exactly where it
        stands; between two such replies come as many error frames as the frames in between must
        get (invalid ones) and at most as many as they may get (those without an id)."""
        position = 0
        must: list[Frame] = []
        may: list[Frame] = []

        def errors_until_reply() -> list[dict[str, Any]]:
            nonlocal position
            start = position
            while position < len(answers) and answers[position]["type"] == "error":
                position += 1
            return answers[start:position]

        def settle(errors: list[dict[str, Any]]) -> None:
            assert len(must) <= len(errors) <= len(must) + len(may), (
                f"{len(errors)} error frames for {len(must)} frames that must get one and {len(may)} that may: "
                f"{errors} for {must + may}"
            )
            codes = [check_error_shape(e["error"]) for e in errors]
            self.stats.codes.update(codes)
            if len(frames) == 1 and must:  # one frame: the error is its own, so its code is known
                assert codes[0] in expectation(must[0].text, must[0].data).codes, (codes, must[0])
            if len(frames) == 1 and may and not errors:
                self.accept_silent(may[0])
            must.clear()
            may.clear()

        for frame in frames:
            expect = expectation(frame.text, frame.data)
            if expect.kind == "error":
                must.append(frame)
            elif expect.kind == "maybe":
                may.append(frame)
            else:
                settle(errors_until_reply())
                assert position < len(answers), f"no reply for id {expect.id!r} of {frame!r}; answers: {answers}"
                reply = answers[position]
                position += 1
                assert reply["type"] == "reply", reply
                assert reply["id"] == expect.id, f"expected the reply to {expect.id!r}, got {reply} for {frame!r}"
                self.check_reply(frame, reply)
        settle(errors_until_reply())
        assert position == len(answers), f"answers nobody asked for: {answers[position:]} after {frames!r}"

    def check_reply(self, frame: Frame, reply: dict[str, Any]) -> None:
        assert isinstance(reply.get("ok"), bool), reply
        if not reply["ok"]:
            self.stats.codes[check_error_shape(reply.get("error"))] += 1
            return
        payload = frame.payload
        assert payload is not None
        kind = payload.get("type")
        self.stats.ok_replies[str(kind)] += 1
        if "conversation" in reply:
            assert reply["conversation"] in self.allowed, reply
        if kind != "send":
            return
        conversation = normal_uuid(payload.get("conversation"))
        assert conversation == self.world.own, f"a send succeeded outside the attacker's own conversation: {reply}"
        key = (conversation, payload["client_msg_id"])
        message_id = reply["message"]["id"]
        if key in self.accepted:
            first_text, first_id = self.accepted[key]
            assert reply["duplicate"] is True, f"a repeated client_msg_id stored a second message: {reply}"
            assert first_id in (None, message_id), reply
            self.accepted[key] = (first_text, message_id)
        else:
            assert reply["duplicate"] is False, f"a new client_msg_id answered as a duplicate: {reply}"
            self.accepted[key] = (payload["text"].strip(), message_id)
            self.accepted_replies += 1

    def accept_silent(self, frame: Frame) -> None:
        """A frame without id that got nothing succeeded; if it was a send, it stored a message."""
        payload = frame.payload
        assert payload is not None
        kind = payload.get("type")
        self.stats.ok_replies[f"{kind} (no id)"] += 1
        if kind != "send":
            return
        conversation = normal_uuid(payload.get("conversation"))
        assert conversation == self.world.own, f"a send without id succeeded outside the own conversation: {frame}"
        key = (conversation, payload["client_msg_id"])
        if key not in self.accepted:
            self.accepted[key] = (payload["text"].strip(), None)


# --- fixtures and helpers -------------------------------------------------------------------------


def open_the_gates(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The abuse close and the rate limits would end the fuzzing early; lift them. Works with the
    module constants of chat/consumers.py and with the settings that replace them."""
    huge = 10**9
    settings.CHAT_ABUSE_LIMIT = huge
    settings.CHAT_RATE_HAMMER_LIMIT = huge
    monkeypatch.setattr(chat.consumers, "ABUSE_LIMIT", huge, raising=False)
    tiers = getattr(settings, "CHAT_TIERS", None)
    if isinstance(tiers, dict):
        lifted = copy.deepcopy(tiers)
        for raw in lifted.values():
            for name, rate in raw.get("rates", {}).items():
                raw["rates"][name] = [huge, rate[1]]
        settings.CHAT_TIERS = lifted


def abuse_limit() -> int:
    limit = getattr(django_settings, "CHAT_ABUSE_LIMIT", None)
    return int(limit if limit is not None else chat.consumers.ABUSE_LIMIT)


def expired_token(user: Any) -> str:
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=-timedelta(seconds=5))
    return str(token)


@dataclass(frozen=True)
class Snapshot:
    messages: int
    members: frozenset[tuple[str, int, str, int]]
    notifications: int
    runs: int
    events: dict[str, list[tuple[int, str]]]


def snapshot(convs: list[str]) -> Snapshot:
    return Snapshot(
        messages=Message.objects.count(),
        members=frozenset(
            (str(c), u, r, s)
            for c, u, r, s in ConversationMember.objects.values_list(
                "conversation_id", "user_id", "role", "last_read_seq"
            )
        ),
        notifications=Notification.objects.count(),
        runs=AgentRun.objects.count(),
        events={
            conv: list(Event.objects.filter(conversation_id=conv).order_by("seq").values_list("seq", "type"))
            for conv in convs
        },
    )


async def connected_wire(user: Any) -> Wire:
    return Wire(await connected(user, timeout=ANSWER_TIMEOUT_S))


async def finished_run(make_user: Any, owner: Any, attacker: Any) -> tuple[str, str]:
    """A conversation with an agent where the attacker is a viewer, and a run that has ended."""
    conv = await factories.conversation(owner, members=((attacker, "viewer"),), agent_mode="always")
    client, _, _ = await Client.connect(owner)
    await client.recv()
    await client.command("subscribe", conversation=conv)
    sent = await client.command("send", conversation=conv, client_msg_id="b1", text="hello agent")
    assert sent["ok"] is True, sent
    await client.seen_or_until(lambda f: f.get("type") == "agent_completed", timeout=30)
    await client.close()
    return conv, sent["run_id"]


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    loggers = [logging.getLogger(name) for name in ("chat", "agents", "monitoring")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


# --- the property ----------------------------------------------------------------------------------


@pytest.mark.timeout(300)  # 3,000 hypothesis examples, CPU-bound: grows with the machine's load
async def test_fuzzed_frames_are_answered_per_protocol_and_harm_nobody(
    make_user: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, error_log: ErrorLog
) -> None:
    open_the_gates(settings, monkeypatch)
    attacker_user = await database_sync_to_async(make_user)(tier="enterprise")
    victim_user = await database_sync_to_async(make_user)()
    bystander = await database_sync_to_async(make_user)()
    own = await factories.conversation(attacker_user, agent="")
    viewer, run_id = await finished_run(make_user, bystander, attacker_user)
    victim_conv = await factories.conversation(victim_user, agent="")
    other = await factories.conversation(bystander, agent="")
    tokens = [
        await database_sync_to_async(access_token)(attacker_user),
        await database_sync_to_async(access_token)(victim_user),
        await database_sync_to_async(expired_token)(attacker_user),
        (await database_sync_to_async(access_token)(attacker_user))[:-4] + "AAAA",
    ]
    world = World(own=own, viewer=viewer, victim=victim_conv, other=other, run_id=run_id, tokens=tokens)
    convs = [own, viewer, victim_conv, other]
    before = await database_sync_to_async(snapshot)(convs)

    victim = await connected_wire(victim_user)
    subscribed = await victim.client.command("subscribe", conversation=victim_conv)
    assert subscribed["ok"] is True
    attacker = await connected_wire(attacker_user)
    probe = VictimProbe(victim, victim_conv, victim_user.id, subscribed["head_seq"])
    fuzz = Fuzz(world, attacker, probe)

    loop = asyncio.get_running_loop()
    fuzz_seed = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fuzz seed {fuzz_seed}: replay with FUZZ_SEED={fuzz_seed}")

    @seed(fuzz_seed)
    @hyp_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # no .hypothesis/ in the work tree; the seed above replays a run
        derandomize=False,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(frames=strategies(world))
    def one_example(frames: list[Frame]) -> None:
        asyncio.run_coroutine_threadsafe(fuzz.exchange(frames), loop).result(timeout=120)

    started = time.monotonic()
    try:
        await asyncio.to_thread(one_example)
    except BaseException:
        print(f"fuzz seed {fuzz_seed} failed: replay with FUZZ_SEED={fuzz_seed}")
        raise
    await probe.round()
    await probe.drain()
    elapsed = time.monotonic() - started
    print(
        f"{fuzz.stats.frames} frames ({fuzz.stats.single} one by one) in {fuzz.stats.examples} examples, {elapsed:.1f}s"
    )
    print(f"error codes: {dict(fuzz.stats.codes)}\nsuccesses: {dict(fuzz.stats.ok_replies)}")

    # Counted without the floods: each of these frames had its answer checked on its own.
    assert fuzz.stats.single >= FRAMES_PER_RUN, fuzz.stats
    assert error_log.crashes() == [], error_log.crashes()
    # The fuzz reached the interesting places, or it proved nothing.
    assert {"bad_request", "not_found", "unknown_command", "too_large", "forbidden"} <= set(fuzz.stats.codes)
    assert fuzz.accepted_replies >= 10, fuzz.accepted
    # Nothing written that should not be.
    after = await database_sync_to_async(snapshot)(convs)
    stored = await database_sync_to_async(
        lambda: {
            (str(conv), cmid): text
            for conv, cmid, text in Message.objects.filter(author_id=attacker_user.id).values_list(
                "conversation_id", "client_msg_id", "text"
            )
        }
    )()
    assert stored == {key: text for key, (text, _) in fuzz.accepted.items()}
    assert after.messages == before.messages + len(fuzz.accepted) + probe.sent
    assert after.events[own] == [(seq, "message") for seq in range(1, len(fuzz.accepted) + 1)]
    assert after.events[viewer] == before.events[viewer]
    assert after.events[other] == before.events[other] == []
    victim_head = subscribed["head_seq"]
    assert after.events[victim_conv] == [(seq, "message") for seq in range(1, victim_head + probe.sent + 1)]
    assert after.notifications == before.notifications
    assert after.runs == before.runs
    # Memberships and roles unchanged; only the attacker's own read markers may have moved (a
    # viewer may read too).
    assert {m[:3] for m in after.members} == {m[:3] for m in before.members}
    assert {m[:2] for m in after.members ^ before.members} <= {(own, attacker_user.id), (viewer, attacker_user.id)}


# --- protection: abuse close, floods ----------------------------------------------------------------


async def test_bad_frame_flood_is_answered_then_closed_4400_and_victim_unaffected(
    make_user: Any, error_log: ErrorLog
) -> None:
    attacker_user = await database_sync_to_async(make_user)()
    victim_user = await database_sync_to_async(make_user)()
    victim_conv = await factories.conversation(victim_user, agent="")
    victim = await connected_wire(victim_user)
    subscribed = await victim.client.command("subscribe", conversation=victim_conv)
    assert subscribed["ok"] is True
    probe = VictimProbe(victim, victim_conv, victim_user.id, subscribed["head_seq"])
    attacker = await connected_wire(attacker_user)
    limit = abuse_limit()
    bad = [
        Frame("garbage"),
        Frame(data=b"\xff\xfe"),
        Frame("[" * 10_000 + "]" * 10_000),
        Frame('{"type":"launch","id":"l"}'),
        Frame('{"type":"ping","id":5}'),
        Frame("x" * (frame_limit() + 1)),
    ]
    for i in range(limit + 20):  # sent without waiting, as a flood arrives
        await attacker.send(bad[i % len(bad)])

    answered = 0
    while True:
        got = await attacker.read()
        if got["type"] == "__close__":
            assert got["code"] == 4400, got
            break
        error = got["error"]
        assert error["code"] in BAD_FRAME_CODES, got
        answered += 1
    # Every bad frame up to the limit is answered; the one over it may be answered before the close.
    assert limit <= answered <= limit + 1, answered
    # The victim's socket goes on as if nothing happened, and got nothing of the attacker's.
    for _ in range(3):
        await probe.round()
    await probe.drain()
    assert error_log.crashes() == []


async def test_flood_of_tiny_valid_frames_is_all_answered_in_order(make_user: Any, error_log: ErrorLog) -> None:
    user = await database_sync_to_async(make_user)(tier="enterprise")
    wire = await connected_wire(user)
    expected: list[str] = []
    for i in range(500):
        expected.append(f"p{i}")
        await wire.send(Frame(json.dumps({"type": "ping", "id": f"p{i}"})))
        await wire.send(Frame('{"type":"ping"}'))  # no id and fine: answered with nothing
        if i % 100 == 99:  # now and then a frame just under the size limit
            expected.append(f"big{i}")
            await wire.send(Frame(json.dumps({"type": "ping", "id": f"big{i}", "pad": "y" * 60_000})))
    got_ids: list[str] = []
    while len(got_ids) < len(expected):
        got = await wire.read()
        assert got["type"] == "reply", got
        assert got["ok"] is True, got
        got_ids.append(got["id"])
    assert got_ids == expected
    assert (await wire.client.command("ping"))["ok"] is True
    assert error_log.crashes() == []


# --- what the fuzzing found (regressions, each the minimal frame) ----------------------------------


@pytest.mark.parametrize(
    ("field", "escaped"),
    [("text", "\\u0000"), ("text", "hi\\ud800"), ("client_msg_id", "a\\u0000"), ("client_msg_id", "\\udfff")],
)
async def test_nul_or_lone_surrogate_in_a_stored_field_is_bad_request_and_stores_nothing(
    make_user: Any, error_log: ErrorLog, field: str, escaped: str
) -> None:
    # Before: PostgreSQL refused the NUL (DataError) and psycopg could not encode the surrogate
    # (UnicodeEncodeError), both answered `internal` and logged as a crash.
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user, agent="")
    wire = await connected_wire(user)
    fields = {"text": "hello", "client_msg_id": "m1"}
    frame = json.dumps({"type": "send", "id": "s1", "conversation": conv, **fields})
    frame = frame.replace(json.dumps(fields[field]), '"' + escaped + '"')  # the escape, as a client sends it
    await wire.send(Frame(frame))
    reply = await wire.read()
    assert reply["id"] == "s1"
    assert reply["ok"] is False
    assert reply["error"]["code"] == "bad_request"
    assert field in reply["error"]["message"]
    assert await database_sync_to_async(Message.objects.filter(conversation_id=conv).count)() == 0
    assert (await wire.client.command("ping"))["ok"] is True
    assert error_log.crashes() == []


async def test_id_with_lone_surrogate_gets_an_error_frame_that_is_utf8(make_user: Any, error_log: ErrorLog) -> None:
    # Before: the reply echoed the id, and a frame holding a lone surrogate cannot be written as
    # UTF-8 (under uvicorn the socket's writer failed and the socket was closed 1011).
    user = await database_sync_to_async(make_user)()
    wire = await connected_wire(user)
    await wire.send(Frame('{"type":"ping","id":"\\ud800"}'))
    got = await wire.read()
    assert_utf8(got)
    assert got["type"] == "error"
    assert got["error"]["code"] == "bad_request"
    assert (await wire.client.command("ping"))["ok"] is True
    assert error_log.crashes() == []
