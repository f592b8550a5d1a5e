"""The compression handler (chat/realtime/compression_handler.py): message compression, integrity
validation, algorithm comparison; large message handling, concurrent compression operations."""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

import pytest

from chat.realtime import compression_handler as ch
from chat.realtime.broadcast_manager import Hub
from chat.realtime.outbox import Outbox
from chat.realtime.protocol import PROTOCOL
from tests.benchmarks import compression as bench


def text_frame(chars: int, kind: str = "agent_completed") -> str:
    return json.dumps({"type": kind, "conversation": "c", "seq": 1, "data": {"text": "answer é " * (chars // 9)}})


def test_round_trip_is_the_exact_json_text() -> None:
    text = text_frame(5000)
    data = ch.Frame(text).deflated()
    assert data[:1] == b"\x78"  # the zlib format (RFC 1950), not raw deflate
    assert zlib.decompress(data).decode() == text
    assert ch.inflate(data, 1 << 20) == text


def test_threshold_counts_utf8_bytes() -> None:
    ascii_text = "x" * 511
    assert ch.compressed_form(ascii_text, 512) is None
    assert ch.compressed_form(ascii_text + "x", 512) is not None
    # 256 characters of two UTF-8 bytes each are 512 bytes: compressed.
    assert ch.compressed_form("é" * 256, 512) is not None
    assert ch.compressed_form("é" * 255, 512) is None


def test_negotiation_prefers_deflate_and_falls_back(settings: Any) -> None:
    settings.CHAT_COMPRESSION = True
    assert ch.negotiate(["chat.v1.deflate", PROTOCOL]) == ch.DEFLATE_PROTOCOL
    assert ch.negotiate([PROTOCOL, "chat.v1.deflate"]) == ch.DEFLATE_PROTOCOL
    assert ch.negotiate([PROTOCOL]) == PROTOCOL
    assert ch.negotiate(["chat.v2"]) is None
    settings.CHAT_COMPRESSION = False
    assert ch.negotiate(["chat.v1.deflate", PROTOCOL]) == PROTOCOL
    assert ch.negotiate(["chat.v1.deflate"]) is None
    assert ch.min_bytes(PROTOCOL) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:-1],  # truncated
        lambda d: d[:10] + bytes([d[10] ^ 0x55]) + d[11:],  # a flipped byte in the data
        lambda d: d[:-2] + bytes([d[-2] ^ 1]) + d[-1:],  # the adler32 checksum
        lambda d: d + b"\x00",  # trailing bytes
        lambda d: b"\x00\x01" + d[2:],  # not a zlib header
    ],
)
def test_corrupted_frames_are_detected(damage: Any) -> None:
    data = ch.Frame(text_frame(4000)).deflated()
    with pytest.raises(ch.CorruptFrame):
        ch.inflate(damage(data), 1 << 20)


def test_corrupted_utf8_is_detected() -> None:
    with pytest.raises(ch.CorruptFrame):
        ch.inflate(zlib.compress(b'{"type":"\xff"}'), 1000)


def test_decompression_bomb_is_bounded() -> None:
    bomb = zlib.compress(b" " * (64 * 1024 * 1024), 9)  # 64 MiB of spaces in ~64 KiB
    assert len(bomb) < 100_000
    with pytest.raises(ch.CorruptFrame, match="more than"):
        ch.inflate(bomb, 2 * 1024 * 1024)
    assert ch.inflate(zlib.compress(b" " * 1000), 1000) == " " * 1000  # exactly the bound is fine


def test_large_messages_compress_and_round_trip() -> None:
    text = text_frame(2_000_000)
    data = ch.compressed_form(ch.Frame(text), 512)
    assert data is not None
    assert len(data) < len(text.encode()) / 20
    assert ch.inflate(data, 4 * len(text)) == text


class Sock:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.binary: list[bytes] = []

    async def send_text(self, text: str) -> None:
        self.text.append(text)

    async def send_bytes(self, data: bytes) -> None:
        self.binary.append(data)


def outbox(hub: Hub, sock: Sock, min_bytes: int | None) -> Outbox:
    return Outbox(
        hub=hub,
        send_text=sock.send_text,
        send_bytes=sock.send_bytes,
        compress_min_bytes=min_bytes,
        maxsize=100,
        user_id=1,
        session_id="s",
        on_overflow=lambda: None,
        on_user_message=lambda m: None,
    )


async def test_a_broadcast_to_many_sockets_compresses_once() -> None:
    hub = Hub(layer=object())
    socks = [Sock() for _ in range(50)]
    plain = Sock()
    boxes = [outbox(hub, s, 512) for s in socks] + [outbox(hub, plain, None)]
    for box in boxes:
        hub.conversations.setdefault("c", set()).add(box)
        box.start_stream("c", from_seq=0, up_to_seq=0)
    big, small = text_frame(20_000), text_frame(100, kind="message")
    before = ch.stats.compressions
    hub.dispatch({"type": "conv.event", "conversation": "c", "seq": 1, "frame": big})
    hub.dispatch({"type": "conv.event", "conversation": "c", "seq": 2, "frame": small})
    hub.dispatch({"type": "conv.ephemeral", "conversation": "c", "frame": big.replace("agent_completed", "x")})
    # Every writer runs at once, as the sockets' tasks do in production; a few loop turns let each
    # write what is queued (nothing waits on time).
    writers = [asyncio.create_task(box.run()) for box in boxes]
    for _ in range(50):
        await asyncio.sleep(0)
    for w in writers:
        w.cancel()
    assert all(box.sent_frames == 3 for box in boxes)
    assert ch.stats.compressions - before == 2  # the big event and the big ephemeral frame, once each
    assert all(s.binary[0] is socks[0].binary[0] for s in socks)  # the very same bytes object
    assert ch.inflate(socks[0].binary[0], 1 << 20) == big
    assert all(s.text == [small] for s in socks)
    assert plain.binary == []  # chat.v1 alone: text, always
    assert plain.text[0] == big


async def test_concurrent_tasks_share_one_compression_per_frame() -> None:
    frames = [ch.Frame(text_frame(3000 + i)) for i in range(20)]
    before = ch.stats.compressions

    async def sender() -> list[bytes]:
        out = []
        for frame in frames:
            await asyncio.sleep(0)
            data = ch.compressed_form(frame, 512)
            assert data is not None
            out.append(data)
        return out

    results = await asyncio.gather(*(sender() for _ in range(100)))
    assert ch.stats.compressions - before == len(frames)
    assert all(r == results[0] for r in results)


def test_algorithm_comparison_sanity() -> None:
    frames = bench.Frames(seed=1).all(per_kind=4)
    codecs, _missing = bench.codecs()
    by_name = {c.name: bench.measure(c, frames, repeat=1) for c in codecs if c.name in ("zlib-1", "zlib-6", "zlib-9")}
    # Real compression of our frames, better at higher levels, every frame round-trips (measure asserts it).
    assert by_name["zlib-6"]["ratio_at_threshold"] > 1.5
    assert by_name["zlib-1"]["ratio_all"] <= by_name["zlib-6"]["ratio_all"] <= by_name["zlib-9"]["ratio_all"]
    # Deltas are small frames: they stay text under the default threshold.
    assert all(len(f) < 512 for f in frames["agent_delta"])
    assert all(len(f) >= 512 for f in frames["agent_completed"])
