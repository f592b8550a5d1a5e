"""Wire codec micro-benchmark: what encoding frames and decoding commands costs with the stdlib
`json` module (what the server does today) and with msgspec (chat.wire's schemas).

Encodes a typical `message` event frame and an `agent_delta` frame with
  json.dumps(separators=(",", ":"), ensure_ascii=False)   str, as the server sends it today
  the same json.JSONEncoder, made once and reused         json.dumps builds one per call
  msgspec.json.encode(dict)                               bytes; "+str": decoded to str
  chat.wire's Encoder on the frame's Struct               bytes; "+str": chat.wire.encode
and the same with the frame built first (a dict literal vs the Structs), since switching would
replace the dict the services build, not just the encoder call.

Decodes a `send` command frame with
  json.loads + the hand checks of chat/realtime/protocol.py (parse_frame + req_str), copied here
      so that the benchmark needs no Django settings
  json.loads + chat.wire.decode_command                   the schema behind today's parser
  msgspec.json.decode + chat.wire.decode_command
  one typed msgspec decode of the whole frame into a Struct

Every variant is first checked to produce the same result as the stdlib one. Prints µs/op (the
best of --repeat runs, in CPU time) and writes a JSON report to
tests/benchmarks/results/wire_codec.json (git-ignored) or --json PATH. Single-threaded; ~15 s.

    .venv/bin/python tests/benchmarks/wire_codec.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from chat import wire  # noqa: E402
from chat.wire import commands as wc  # noqa: E402
from chat.wire import events  # noqa: E402
from chat.wire.common import CommandId  # noqa: E402

CONV, RUN, MSG = (str(uuid.UUID(int=n)) for n in (1, 2, 3))
TS = "2026-11-24T10:15:30.123Z"
TEXT = "Could you check the build from this morning? The deploy to staging failed twice — logs are in #ops."
DELTA = "The build failed because the "


def message_dict() -> dict[str, Any]:
    # As chat/services/messages.py and StoredEvent.frame() build it.
    return {
        "type": "message",
        "conversation": CONV,
        "seq": 4812,
        "ts": TS,
        "data": {
            "id": MSG,
            "client_msg_id": "c-1764584130123-7",
            "author": {"id": 42, "username": "alice", "kind": "user"},
            "text": TEXT,
            "created_at": TS,
            "run_id": None,
        },
    }


def message_struct() -> events.MessageEvent:
    return events.MessageEvent(
        conversation=CONV,
        seq=4812,
        ts=TS,
        data=events.MessageData(
            id=MSG,
            client_msg_id="c-1764584130123-7",
            author=events.Author(id=42, username="alice", kind="user"),
            text=TEXT,
            created_at=TS,
            run_id=None,
        ),
    )


def delta_dict() -> dict[str, Any]:
    return {"type": "agent_delta", "conversation": CONV, "seq": 4815, "ts": TS, "data": {"run_id": RUN, "text": DELTA}}


def delta_struct() -> events.AgentDeltaEvent:
    return events.AgentDeltaEvent(
        conversation=CONV, seq=4815, ts=TS, data=events.AgentDeltaData(run_id=RUN, text=DELTA)
    )


# --- today's hand checks (chat/realtime/protocol.py: parse_frame, req_str), without Django --------
MAX_FRAME = 64 * 1024
MAX_DEPTH = 16


class Refused(Exception):
    pass


def _utf8(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _depth(value: Any, limit: int) -> int:
    stack, deepest = [(value, 1)], 0
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


def _req_str(fields: dict[str, Any], name: str, max_len: int) -> str:
    value = fields.get(name)
    if not isinstance(value, str):
        raise Refused(f"{name} must be a string")
    if "\x00" in value or not _utf8(value):
        raise Refused(f"{name} must be Unicode text without NUL characters or lone surrogates")
    if not value:
        raise Refused(f"{name} must not be empty")
    if len(value) > max_len:
        raise Refused(f"{name} must be at most {max_len} characters")
    return value


def _parse_frame(text: str) -> tuple[str, str | None, dict[str, Any]]:
    if len(text) > MAX_FRAME or len(text.encode("utf-8", "surrogatepass")) > MAX_FRAME:
        raise Refused("too large")
    payload = json.loads(text)
    if not isinstance(payload, dict):
        raise Refused("frame must be a JSON object")
    command_id = payload.get("id")
    if command_id is not None and not (isinstance(command_id, str) and 0 < len(command_id) <= 64 and _utf8(command_id)):
        raise Refused("bad id")
    if _depth(payload, MAX_DEPTH) > MAX_DEPTH:
        raise Refused("frame is nested too deeply")
    kind = payload.get("type")
    if not isinstance(kind, str) or not kind:
        raise Refused("type must be a non-empty string")
    return kind, command_id, {k: v for k, v in payload.items() if k not in ("type", "id")}


def decode_by_hand(text: str) -> tuple[str, str, str]:
    _kind, _id, fields = _parse_frame(text)
    client_msg_id = _req_str(fields, "client_msg_id", 64)
    body = _req_str(fields, "text", 16_000)
    if "conversation" not in fields:
        raise Refused("conversation is required")
    return fields["conversation"], client_msg_id, body


class SendFrame(wc.Send, tag_field="type", tag="send"):
    """The whole `send` frame, for a one-pass typed decode."""

    id: CommandId | None = None


SEND_FRAME = json.dumps(
    {"type": "send", "id": "42", "conversation": CONV, "client_msg_id": "c-1764584130123-7", "text": TEXT},
    ensure_ascii=False,
)
_typed = msgspec.json.Decoder(SendFrame)
_untyped = msgspec.json.Decoder()


def decode_json_wire(text: str) -> tuple[str, str, str]:
    fields = json.loads(text)
    send = wire.decode_command("send", {k: v for k, v in fields.items() if k not in ("type", "id")})
    assert isinstance(send, wc.Send)
    return send.conversation, send.client_msg_id, send.text


def decode_msgspec_wire(text: str) -> tuple[str, str, str]:
    fields = _untyped.decode(text)
    send = wire.decode_command("send", {k: v for k, v in fields.items() if k not in ("type", "id")})
    assert isinstance(send, wc.Send)
    return send.conversation, send.client_msg_id, send.text


def decode_typed(text: str) -> tuple[str, str, str]:
    send = _typed.decode(text)
    return send.conversation, send.client_msg_id, send.text


# --- harness ---------------------------------------------------------------------------------------


def measure(variants: dict[str, Callable[[], object]], repeat: int, budget_s: float) -> dict[str, float]:
    """µs per call of each variant: the best of `repeat` runs of about `budget_s` each.

    CPU time of this process, not wall time, and the variants take turns run by run: the machine is
    shared, and a run that lost the CPU to another process would otherwise count the wait."""
    timers = {label: timeit.Timer(fn, timer=time.process_time) for label, fn in variants.items()}
    numbers = {}
    for label, timer in timers.items():
        elapsed = timer.timeit(number=200)  # calibrate: how many calls fill one run of `budget_s`
        numbers[label] = max(1, int(200 * budget_s / max(elapsed, 1e-9)))
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(repeat):
        for label, timer in timers.items():
            best[label] = min(best[label], timer.timeit(number=numbers[label]) / numbers[label])
    return {label: seconds * 1e6 for label, seconds in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--budget", type=float, default=0.02, help="CPU seconds per timing run")
    parser.add_argument("--json", type=Path, default=ROOT / "tests" / "benchmarks" / "results" / "wire_codec.json")
    args = parser.parse_args()

    dumps = json.dumps
    encoder = msgspec.json.Encoder()
    stdlib = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    cases: dict[str, dict[str, Callable[[], object]]] = {}
    for name, make_dict, make_struct in (
        ("message", message_dict, message_struct),
        ("agent_delta", delta_dict, delta_struct),
    ):
        d, s = make_dict(), make_struct()
        expected = dumps(d, separators=(",", ":"), ensure_ascii=False)
        # Same text from every encoder, or the comparison means nothing.
        assert encoder.encode(d).decode() == expected == wire.encode(s) == stdlib.encode(d), name
        cases[f"encode {name}"] = {
            "json.dumps(dict)": lambda d=d: dumps(d, separators=(",", ":"), ensure_ascii=False),
            "json.JSONEncoder reused": lambda d=d: stdlib.encode(d),
            "msgspec encode(dict)": lambda d=d: encoder.encode(d),
            "msgspec encode(dict)+str": lambda d=d: encoder.encode(d).decode(),
            "msgspec encode(Struct)": lambda s=s: encoder.encode(s),
            "msgspec encode(Struct)+str": lambda s=s: wire.encode(s),
            "build dict + json.dumps": lambda f=make_dict: dumps(f(), separators=(",", ":"), ensure_ascii=False),
            "build Struct + encode+str": lambda f=make_struct: wire.encode(f()),
        }
    expected_send = decode_by_hand(SEND_FRAME)
    for decode in (decode_json_wire, decode_msgspec_wire, decode_typed):
        assert decode(SEND_FRAME) == expected_send, decode.__name__
    cases["decode send"] = {
        "json.loads + hand checks": lambda: decode_by_hand(SEND_FRAME),
        "json.loads + decode_command": lambda: decode_json_wire(SEND_FRAME),
        "msgspec decode + decode_command": lambda: decode_msgspec_wire(SEND_FRAME),
        "msgspec typed decode (one pass)": lambda: decode_typed(SEND_FRAME),
    }

    results: dict[str, dict[str, float]] = {}
    for case, variants in cases.items():
        print(f"\n{case}")
        timings = measure(variants, args.repeat, args.budget)
        baseline = next(iter(timings.values()))
        results[case] = {label: round(us, 3) for label, us in timings.items()}
        for label, us in timings.items():
            print(f"  {label:<34} {us:8.3f} µs/op   x{baseline / us:5.2f} vs the first line")
    report = {
        "python": platform.python_version(),
        "msgspec": msgspec.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "timing": f"best of {args.repeat} runs of ~{args.budget}s CPU time each (time.process_time)",
        "frame_bytes": {
            "message": len(wire.encode(message_struct()).encode()),
            "agent_delta": len(wire.encode(delta_struct()).encode()),
            "send": len(SEND_FRAME.encode()),
        },
        "us_per_op": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nreport: {args.json} (tests/benchmarks/results/ is git-ignored)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
