"""Log redaction's edges: how deep a percent-encoding is decoded, which runs and parameters are
redacted, and what the filter leaves of each kind of record."""

from __future__ import annotations

from chat.infra import log_redaction


def test_decoding_stops_after_eight_rounds() -> None:
    assert log_redaction.MAX_DECODE_ROUNDS == 8
