"""The pure parts of the limits' fail-safe and of client addresses: each process's share of a limit
(chat/infra/limit_windows.py `share`) and who the client is behind trusted proxies
(chat/infra/client_address.py). The servers and Redis that use them are tested in
tests/integration/test_limits_slow_redis_integration.py and test_trusted_proxies_integration.py."""

from __future__ import annotations

from typing import Any

import pytest

from chat.infra import client_address
from chat.infra.handshake_guard import PerAddress
from chat.infra.limit_windows import MemoryLimiter, Window, share


@pytest.mark.parametrize("processes", [1, 2, 3, 7, 25])
@pytest.mark.parametrize("limit", [1, 4, 5, 20, 100])
def test_the_shares_of_all_processes_add_up_to_the_limit(settings: Any, processes: int, limit: int) -> None:
    settings.CHAT_SERVER_PROCESSES = processes
    for key in ("rl:conns:1", "rl:conns:2", "rl:messages:77"):
        shares = []
        for index in range(processes):
            settings.CHAT_SERVER_INDEX = index
            shares.append(share(limit, key))
        assert sum(shares) == limit, (key, shares)
        assert max(shares) - min(shares) <= 1


def test_a_process_without_an_index_takes_the_share_rounded_down(settings: Any) -> None:
    settings.CHAT_SERVER_PROCESSES = 3
    settings.CHAT_SERVER_INDEX = None
    assert share(20, "k") == 6
    assert share(2, "k") == 0  # refusing is the only answer that cannot add up to more than 2
    settings.CHAT_SERVER_PROCESSES = 1
    assert share(2, "k") == 2


def test_the_twin_forgets_idle_keys() -> None:
    now = {"t": 1_000.0}
    twin = MemoryLimiter(lambda: now["t"])
    twin.record([Window("a", 5, 1_000)], 1_000_000)
    twin.hit_sync([Window("b", 5, 120_000)])
    now["t"] += 61  # past the sweep interval: "a" (1 s window) is empty, "b" (2 min window) is not
    twin.hit_sync([Window("c", 5, 1_000)])
    assert set(twin._windows) == {"b", "c"}


def test_no_proxy_is_trusted_by_default(settings: Any) -> None:
    settings.TRUSTED_PROXIES = []
    meta = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6"}
    assert client_address.meta_client_ip(meta) == "127.0.0.1"
    scope = {"client": ("127.0.0.1", 5000), "headers": [(b"x-forwarded-for", b"6.6.6.6")]}
    assert client_address.scope_client_ip(scope) == "127.0.0.1"
    assert client_address.scope_client_ip({"headers": []}) == "unknown"
    assert client_address.uvicorn_proxy_options() == {"proxy_headers": False}


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ("198.51.100.1", "198.51.100.1"),
        ("6.6.6.6, 198.51.100.1", "198.51.100.1"),  # the client's own claim (left) is ignored
        ("198.51.100.1, 10.0.0.5", "198.51.100.1"),  # our proxies (right) are skipped
        ("198.51.100.1:4321, [2001:db8::1]:80", "2001:db8::1"),  # ports are not part of the address
        ("10.0.0.5, 10.0.0.6", "10.0.0.5"),  # every hop ours: the furthest we know of
        ("", "10.0.0.5"),  # no header: the proxy itself
    ],
)
def test_behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client(
    settings: Any, header: str, client: str
) -> None:
    settings.TRUSTED_PROXIES = ["10.0.0.0/24", "127.0.0.1"]
    meta = {"REMOTE_ADDR": "10.0.0.5", "HTTP_X_FORWARDED_FOR": header}
    assert client_address.meta_client_ip(meta) == client
    headers = [(b"x-forwarded-for", header.encode())] if header else []
    assert client_address.scope_client_ip({"client": ("10.0.0.5", 1), "headers": headers}) == client
    # A peer that is not a proxy of ours is the client, whatever it sends.
    assert client_address.meta_client_ip({"REMOTE_ADDR": "192.0.2.9", "HTTP_X_FORWARDED_FOR": header}) == "192.0.2.9"
    assert client_address.uvicorn_proxy_options() == {
        "proxy_headers": True,
        "forwarded_allow_ips": "10.0.0.0/24,127.0.0.1",
    }


def test_a_malformed_proxy_entry_is_refused(settings: Any) -> None:
    settings.TRUSTED_PROXIES = ["10.0.0.0/33"]
    with pytest.raises(ValueError, match="10.0.0.0/33"):
        client_address.trusted_networks()


def test_per_address_counts_are_capped_and_freed() -> None:
    pending = PerAddress("test")
    assert [pending.try_add("a", 2) for _ in range(3)] == [True, True, False]
    assert pending.try_add("b", 2) is True  # per address
    pending.remove("a")
    assert pending.try_add("a", 2) is True
    for _ in range(3):
        pending.remove("a")
    pending.remove(None)
    assert pending.count("a") == 0
    assert pending.total() == 1
