"""X-Forwarded-For is believed only from the proxies named in TRUSTED_PROXIES (default: none).

Real servers started by `manage.py serve` (uvicorn), real HTTP requests from loopback, and the
per-IP limit of the token endpoint (CHAT_LOGIN_RATE) as the witness of which address a request was
counted against. Before, uvicorn's own default trusted the header from 127.0.0.1, so a client on the
same host (or any client, behind a proxy that passes the header through) picked its own address.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.servers import ROOT, Stack, free_port, running_stack

pytestmark = [pytest.mark.e2e]

PER_IP = 3


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(env_overrides={"CHAT_LOGIN_RATE_LIMIT": str(PER_IP), "TRUSTED_PROXIES": ""}) as s:
        yield s


@pytest.fixture(scope="module")
def behind_proxy(stack: Stack) -> str:
    """A second server on the same database that trusts 127.0.0.1 as its proxy: its base URL."""
    port = free_port()
    env = dict(stack.env, TRUSTED_PROXIES="127.0.0.1", CHANNEL_PREFIX=f"tp{uuid.uuid4().hex[:8]}")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--no-worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    stack.extra.append(proc)  # stopped with the stack
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, "the second server exited"
        assert time.monotonic() < deadline, "the second server did not answer /readyz in 60 s"
        time.sleep(0.2)  # (as tests/support/servers.py waits for a stack: there is no loop to await in)
    return url


def token_request(base_url: str, forwarded_for: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    body = {"username": "alice", "password": "demo-password"}
    return httpx.post(f"{base_url}/api/auth/token/", json=body, headers=headers, timeout=10).status_code


def test_a_loopback_client_setting_the_header_counts_against_its_own_address(stack: Stack) -> None:
    statuses = [token_request(stack.base_url, f"203.0.113.{i}") for i in range(PER_IP + 1)]
    assert statuses == [200] * PER_IP + [429], statuses
    assert token_request(stack.base_url, None) == 429  # the same address: the peer's


def test_behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client(behind_proxy: str) -> None:
    # What the client wrote (left) changes; what our proxy appended (rightmost) does not: one client.
    statuses = [token_request(behind_proxy, f"10.9.9.{i}, 198.51.100.1") for i in range(PER_IP + 1)]
    assert statuses == [200] * PER_IP + [429], statuses
    # Another client behind the same proxy has its own budget; hops that are our proxy are skipped.
    assert token_request(behind_proxy, "198.51.100.2, 127.0.0.1") == 200
    # And the proxy's own requests (no header) count against the proxy.
    assert token_request(behind_proxy, None) == 200
