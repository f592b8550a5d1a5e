"""Loaded first (`-p tests.support.worker_env` in pytest's addopts), before Django reads its settings.

Under pytest-xdist (`make test` runs two workers) every worker is a test process of its own with its own
test database (pytest-django suffixes it `_gw0`, `_gw1`), and so it needs its own Redis keys too: the
rate-limit windows, buffers, presence and channel groups all live under CHANNEL_PREFIX, and the suite
clears its own `rl:` keys between tests. Two workers sharing one prefix would clear each other's windows
and see each other's user ids (both databases count from the same sequence start) in one keyspace.
Outside xdist this does nothing.
"""

from __future__ import annotations

import os

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker:
    os.environ["CHANNEL_PREFIX"] = os.environ.get("CHANNEL_PREFIX", "chattest") + _worker
