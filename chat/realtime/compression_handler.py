"""The `chat.v1.deflate` extension (docs/protocol.md §2): server frames compressed once per broadcast.

A client that offers the subprotocol `chat.v1.deflate` (before `chat.v1`) gets, while
settings.CHAT_COMPRESSION is on, every server frame whose UTF-8 JSON is at least
CHAT_COMPRESSION_MIN_BYTES long as a BINARY frame holding the zlib-format (RFC 1950) compression of
exactly that JSON; smaller frames stay text. The zlib format rather than raw deflate: its adler32
trailer lets a client tell a corrupted frame from a good one, and browsers inflate it natively
(`new DecompressionStream('deflate')`). Why deflate at LEVEL and not zstd or brotli:
docs/operations.md "Compression" (tests/benchmarks/compression.py measures them on our own frames).

Why not uvicorn's permessage-deflate: it keeps a compressor per socket (~256 KiB of zlib state with
its default window, for as long as the socket lives) and compresses each frame once per receiver.
Here a frame the hub fans out is one `Frame` (a str, so everything that handles frame text still
does) whose compressed form is computed by the first socket that needs it and reused by every other
one: compression costs once per broadcast, not once per receiver, and holds no per-socket memory.
Every socket writer runs on the process's one event loop and `deflate` does not await, so "at most
once per frame" needs no lock.

Client frames stay text JSON (a binary client frame is `bad_request`), so the server never inflates
anything a client sent; `inflate` bounds what it inflates for the clients' sake (and the tests').
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

from django.conf import settings

from chat.realtime.protocol import PROTOCOL
from monitoring.metrics import metrics

DEFLATE_PROTOCOL = "chat.v1.deflate"
# zlib level 6 (its default): on our frames as small as level 9's output at three quarters of its cost,
# and 6 % smaller than level 1's for about twice its ~0.2 ms (docs/operations.md "Compression"). Paid once
# per broadcast, while the bytes saved are saved once per receiver.
LEVEL = 6
# Sends of compressed frames are counted here and moved into the metrics in batches of this many:
# a metrics.inc per frame per socket would cost as much as the meter saves (monitoring/metrics/meter.py).
_SENT_BATCH = 64


class CorruptFrame(ValueError):
    """A compressed frame that does not inflate to the JSON it claims (bad data, bad checksum,
    truncated, trailing bytes, too large, not UTF-8)."""


@dataclass
class Stats:
    """This process's compression work: `compressions` counts deflate calls (one per frame that
    any socket sent compressed), `frames_sent` and `bytes_saved` count per socket write."""

    compressions: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    frames_sent: int = 0
    bytes_saved: int = 0
    _unflushed_frames: int = 0
    _unflushed_saved: int = 0

    def flush(self) -> None:
        if self._unflushed_frames:
            metrics.inc("compressed_frames_sent", self._unflushed_frames)
            metrics.inc("compression_bytes_saved", self._unflushed_saved)
            self._unflushed_frames = self._unflushed_saved = 0


stats = Stats()


def negotiate(offered: Sequence[str]) -> str | None:
    """The subprotocol to accept from the client's offer, or None to refuse the handshake."""
    if DEFLATE_PROTOCOL in offered and settings.CHAT_COMPRESSION:
        return DEFLATE_PROTOCOL
    if PROTOCOL in offered:
        return PROTOCOL
    return None


def min_bytes(protocol: str | None) -> int | None:
    """The smallest frame a socket speaking `protocol` gets compressed; None: it gets only text."""
    return settings.CHAT_COMPRESSION_MIN_BYTES if protocol == DEFLATE_PROTOCOL else None


def deflate(data: bytes) -> bytes:
    compressed = zlib.compress(data, LEVEL)
    stats.compressions += 1
    stats.bytes_in += len(data)
    stats.bytes_out += len(compressed)
    metrics.inc("frames_compressed")
    return compressed


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())  # isascii is O(1): CPython stores the flag


class Frame(str):
    """One encoded server frame, shared by every socket it is delivered to, with its compressed form
    computed at most once (by the first socket that sends it compressed) and kept for the others."""

    _deflated: bytes | None = None

    def deflated(self) -> bytes:
        data = self._deflated
        if data is None:
            data = self._deflated = deflate(self.encode())
        return data


@overload
def shared(text: str) -> str: ...
@overload
def shared(text: None) -> None: ...
def shared(text: str | None) -> str | None:
    """`text` as a Frame: the hub wraps each frame it fans out once, so its receivers share one compression."""
    if text is None or isinstance(text, Frame):
        return text
    return Frame(text)


def compressed_form(text: str, min_bytes: int) -> bytes | None:
    """What a compressing socket sends for `text`: its zlib compression when it is at least
    `min_bytes` of UTF-8, else None (sent as text). A plain str (a reply, a replay read from the log
    for this socket alone) is compressed for this send; a Frame reuses its one compression."""
    size = utf8_size(text)
    if size < min_bytes:
        return None
    data = text.deflated() if isinstance(text, Frame) else deflate(text.encode())
    stats.frames_sent += 1
    stats.bytes_saved += size - len(data)
    stats._unflushed_frames += 1
    stats._unflushed_saved += size - len(data)
    if stats._unflushed_frames >= _SENT_BATCH:
        stats.flush()
    return data


def inflate(data: bytes, max_bytes: int) -> str:
    """The JSON text of one compressed frame, refusing more than `max_bytes` of output (a small frame
    may inflate ~1000-fold) and anything corrupted: zlib checks the header and the adler32 trailer."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise CorruptFrame(f"not a zlib stream: {exc}") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise CorruptFrame(f"inflates to more than {max_bytes} bytes")
    if not inflater.eof or inflater.unused_data:
        raise CorruptFrame("truncated or followed by other data")
    try:
        return out.decode()
    except UnicodeDecodeError:
        raise CorruptFrame("not UTF-8") from None
