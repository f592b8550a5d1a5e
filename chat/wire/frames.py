"""Durable events in their wire shape, and the wire's time format. No Django, no I/O: the bus,
the services, the selectors and the consumer all share these."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from chat.models import Event


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class StoredEvent:
    """A committed (or about to be committed) durable event, in its wire shape."""

    conversation_id: str
    seq: int
    type: str
    ts: str
    data: dict[str, Any]
    _encoded: list[str] = field(default_factory=list, compare=False, repr=False)

    def frame(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "conversation": self.conversation_id,
            "seq": self.seq,
            "ts": self.ts,
            "data": self.data,
        }

    def encoded(self) -> str:
        """The frame as JSON text, encoded once however many sockets receive it."""
        if not self._encoded:
            self._encoded.append(encode(self.frame()))
        return self._encoded[0]

    @classmethod
    def from_row(cls, row: Event) -> StoredEvent:
        return cls(str(row.conversation_id), row.seq, row.type, rfc3339(row.created_at), row.data)


# One encoder for the process: msgspec encodes a frame about 8x faster than json.dumps (measured
# by tests/benchmarks/wire_codec.py), and a broadcast encodes every event once for all receivers.
_encoder = msgspec.json.Encoder()


def encode(frame: dict[str, Any]) -> str:
    """A frame as compact JSON text (UTF-8 kept as is: fewer bytes than escaping it)."""
    return _encoder.encode(frame).decode()


def notification_frame(seq: int, created_at: datetime, data: dict[str, Any]) -> str:
    """A stored notification as its user event frame (docs/protocol.md §2)."""
    return encode({"type": "notification", "seq": seq, "ts": rfc3339(created_at), "data": data})
