"""Stack settings for load and fault tests that measure delivery, not admission: every tier's
rates and connection limit lifted far above what the test generates, and the per-IP login limit
too (hundreds of clients log in from 127.0.0.1). Limits themselves are tested in
tests/unit/websocket_core/test_websocket_rate_limiter_unit.py and tests/e2e/test_rate_limits_e2e.py."""

from __future__ import annotations

import json

_UNLIMITED = {
    "connections": 100_000,
    "rates": {name: [10_000_000, 60] for name in ("messages", "agent_runs", "typing", "commands")},
}
LOAD_TEST_ENV: dict[str, str] = {
    "CHAT_TIERS_JSON": json.dumps({tier: _UNLIMITED for tier in ("free", "pro", "enterprise")}),
    "CHAT_LOGIN_RATE_LIMIT": "1000000",
}
