"""Compression algorithms compared on this product's own server frames (docs/operations.md "Compression").

Generates the frames the server sends, shaped as chat/wire encodes them (compact JSON, `type` first)
with deterministic pseudo-English text: message events, agent_delta chunks, agent_completed with
long markdown answers, tool_completed with JSON results, and history replies. For each algorithm:
the compression ratio (all frames, and the frames at or above the threshold that would be
compressed), compress and decompress microseconds per frame (best of --repeat), and the memory one
compressor / decompressor context holds (RSS growth over 200 live contexts that have each handled a
frame: the cost per socket of a per-socket scheme like permessage-deflate). Prints a table and
writes tests/benchmarks/results/compression.json.

    .venv/bin/python tests/benchmarks/compression.py [--frames-per-kind 40] [--repeat 3]

zstd comes from the `zstandard` package and brotli from `brotli` (dev dependencies); an algorithm
whose package is missing is reported as such, not silently dropped.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import random
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results" / "compression.json"
THRESHOLD = 512  # settings.CHAT_COMPRESSION_MIN_BYTES's default
CONTEXTS = 200

WORDS = (
    "the a of to and in is it that for on with as this was be by are not or at from have but an they which one you "
    "were all we when there can more if no out so what up about into than them could only other new some time "
    "these two may then do first any my now such like our over even most made after also did many before must "
    "through back where much your way well down should because each just those people how too little state good "
    "very make world still own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take three conversation "
    "agent model token stream socket replay deadline budget latency query index database cluster deploy config "
    "function return value error retry backoff request response server client schema migration transaction"
).split()


def sentence(rng: random.Random, lo: int = 6, hi: int = 18) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + rng.choice(".....?!")


def prose(rng: random.Random, chars: int) -> str:
    parts: list[str] = []
    size = 0
    while size < chars:
        s = sentence(rng)
        parts.append(s)
        size += len(s) + 1
    return " ".join(parts)


def markdown_answer(rng: random.Random, chars: int) -> str:
    blocks: list[str] = []
    size = 0
    while size < chars:
        kind = rng.random()
        if kind < 0.15:
            block = "## " + sentence(rng, 3, 6)
        elif kind < 0.35:
            block = "\n".join(f"- {sentence(rng, 4, 10)}" for _ in range(rng.randint(2, 5)))
        elif kind < 0.5:
            lines = [f"    {rng.choice(WORDS)}_{i} = {rng.choice(WORDS)}({rng.randint(0, 999)})" for i in range(8)]
            block = "```python\ndef " + rng.choice(WORDS) + "():\n" + "\n".join(lines) + "\n```"
        else:
            block = prose(rng, rng.randint(200, 600))
        blocks.append(block)
        size += len(block) + 2
    return "\n\n".join(blocks)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Frames:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.conversation = str(uuid.UUID(int=self.rng.getrandbits(128)))
        self.seq = 1000

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128)))

    def event(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        return {
            "type": kind,
            "conversation": self.conversation,
            "seq": self.seq,
            "ts": f"2026-05-01T12:{self.seq % 60:02d}:{self.rng.randint(0, 59):02d}.{self.rng.randint(0, 999999):06d}Z",
            "data": data,
        }

    def message(self) -> dict[str, Any]:
        author = {"id": self.rng.randint(1, 500), "username": f"user{self.rng.randint(1, 500)}"}
        text = prose(self.rng, self.rng.choice([40, 80, 200, 400, 900]))
        return self.event(
            "message", {"message_id": self.uid(), "client_msg_id": self.uid(), "author": author, "text": text}
        )

    def agent_delta(self) -> dict[str, Any]:
        chunk = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(2, 12)))
        return {
            "type": "agent_delta",
            "conversation": self.conversation,
            "data": {"run_id": self.uid(), "message_id": self.uid(), "index": self.rng.randint(0, 900), "text": chunk},
        }

    def agent_completed(self) -> dict[str, Any]:
        text = markdown_answer(self.rng, self.rng.choice([1500, 4000, 8000, 12000]))
        usage = {"input_tokens": self.rng.randint(100, 9000), "output_tokens": len(text) // 4}
        return self.event(
            "agent_completed", {"run_id": self.uid(), "message_id": self.uid(), "text": text, "usage": usage}
        )

    def tool_completed(self) -> dict[str, Any]:
        rows = [
            {"id": self.rng.randint(1, 10**6), "name": self.rng.choice(WORDS), "score": round(self.rng.random(), 4),
             "tags": [self.rng.choice(WORDS) for _ in range(3)], "summary": sentence(self.rng)}
            for _ in range(self.rng.choice([5, 20, 60]))
        ]  # fmt: skip
        return self.event(
            "tool_completed",
            {"run_id": self.uid(), "call_id": self.uid(), "tool": "search", "ok": True, "result": {"rows": rows}},
        )

    def history_reply(self) -> dict[str, Any]:
        events = [self.message() for _ in range(self.rng.choice([10, 30, 50]))]
        return {"type": "reply", "id": f"r{self.rng.randint(1, 999)}", "ok": True, "events": events, "has_more": True}

    def all(self, per_kind: int) -> dict[str, list[bytes]]:
        makers: dict[str, Callable[[], dict[str, Any]]] = {
            "message": self.message,
            "agent_delta": self.agent_delta,
            "agent_completed": self.agent_completed,
            "tool_completed": self.tool_completed,
            "history_reply": self.history_reply,
        }
        return {kind: [compact(make()).encode() for _ in range(per_kind)] for kind, make in makers.items()}


@dataclass
class Codec:
    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]
    context: Callable[[], Any]  # a long-lived per-socket context, used once so its buffers exist
    browser: str  # what a browser can inflate natively


def codecs() -> tuple[list[Codec], list[str]]:
    def zlib_ctx(level: int, wbits: int) -> Callable[[], Any]:
        def make() -> Any:
            c = zlib.compressobj(level, zlib.DEFLATED, wbits)
            d = zlib.decompressobj(wbits)
            d.decompress(c.compress(b"x" * 2048) + c.flush(zlib.Z_SYNC_FLUSH))
            return c, d

        return make

    found = [
        Codec(f"zlib-{lvl}", functools.partial(zlib.compress, level=lvl), zlib.decompress, zlib_ctx(lvl, 15), "deflate")
        for lvl in (1, 6, 9)
    ]
    found.append(
        Codec(
            "deflate-raw-6",
            lambda b: zlib.compress(b, 6, wbits=-15),
            lambda b: zlib.decompress(b, wbits=-15),
            zlib_ctx(6, -15),
            "deflate-raw",
        )
    )
    missing: list[str] = []
    try:
        import zstandard  # optional: a dev dependency, measured when installed

        for level in (3, 19):
            zc, zd = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()

            def zctx(level: int = level) -> Any:
                c, d = zstandard.ZstdCompressor(level=level).compressobj(), zstandard.ZstdDecompressor().decompressobj()
                d.decompress(c.compress(b"x" * 2048) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
                return c, d

            found.append(Codec(f"zstd-{level}", zc.compress, zd.decompress, zctx, "none"))
    except ImportError:
        missing.append("zstd (pip install zstandard)")
    try:
        import brotli  # optional: a dev dependency, measured when installed

        for quality in (4, 11):

            def bctx(quality: int = quality) -> Any:
                c, d = brotli.Compressor(quality=quality), brotli.Decompressor()
                d.process(c.process(b"x" * 2048) + c.flush())
                return c, d

            found.append(
                Codec(
                    f"brotli-{quality}",
                    functools.partial(brotli.compress, quality=quality),
                    brotli.decompress,
                    bctx,
                    "none",
                )
            )
    except ImportError:
        missing.append("brotli (pip install brotli)")
    return found, missing


def best_us(fn: Callable[[], Any], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def context_bytes(make: Callable[[], Any]) -> int:
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    held = [make() for _ in range(CONTEXTS)]
    after = process.memory_info().rss
    del held
    return max(0, (after - before) // CONTEXTS)


def measure(codec: Codec, frames: dict[str, list[bytes]], repeat: int) -> dict[str, Any]:
    everything = [f for fs in frames.values() for f in fs]
    large = [f for f in everything if len(f) >= THRESHOLD]
    packed = [codec.compress(f) for f in everything]
    assert all(codec.decompress(p) == f for p, f in zip(packed, everything, strict=True))
    packed_large = [codec.compress(f) for f in large]
    by_kind = {
        kind: round(sum(len(f) for f in fs) / sum(len(codec.compress(f)) for f in fs), 2) for kind, fs in frames.items()
    }
    return {
        "codec": codec.name,
        "browser_native": codec.browser,
        "ratio_all": round(sum(map(len, everything)) / sum(map(len, packed)), 2),
        "ratio_at_threshold": round(sum(map(len, large)) / sum(map(len, packed_large)), 2),
        "ratio_by_kind": by_kind,
        "compress_us": round(best_us(lambda: [codec.compress(f) for f in large], len(large), repeat), 1),
        "decompress_us": round(best_us(lambda: [codec.decompress(p) for p in packed_large], len(large), repeat), 1),
        "context_bytes": context_bytes(codec.context),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--frames-per-kind", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    frames = Frames(args.seed).all(args.frames_per_kind)
    sizes = {kind: sorted(len(f) for f in fs) for kind, fs in frames.items()}
    everything = [f for fs in frames.values() for f in fs]
    found, missing = codecs()
    rows = [measure(codec, frames, args.repeat) for codec in found]
    print(f"{len(everything)} frames, {sum(map(len, everything))} bytes; threshold {THRESHOLD} bytes:")
    for kind, s in sizes.items():
        at = sum(1 for n in s if n >= THRESHOLD)
        print(f"  {kind:16} median {s[len(s) // 2]:6} B, max {s[-1]:6} B, {at}/{len(s)} at or above the threshold")
    header = f"{'codec':14} {'ratio':>6} {'ratio≥thr':>9} {'comp µs':>8} {'decomp µs':>9} {'ctx KiB':>8}  browser"
    print(header)
    for r in rows:
        print(
            f"{r['codec']:14} {r['ratio_all']:6} {r['ratio_at_threshold']:9} {r['compress_us']:8} "
            f"{r['decompress_us']:9} {r['context_bytes'] / 1024:8.0f}  {r['browser_native']}"
        )
    print("ratio by frame kind: " + "; ".join(f"{r['codec']}: {r['ratio_by_kind']}" for r in rows))
    for name in missing:
        print(f"not measured: {name}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "threshold": THRESHOLD,
        "frames": {k: {"count": len(v), "median": v[len(v) // 2], "max": v[-1]} for k, v in sizes.items()},
        "codecs": rows,
        "missing": missing,
        "python": sys.version.split()[0],
    }
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Codec", "Frames", "asdict", "codecs", "main", "measure"]
