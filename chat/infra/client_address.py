"""Who the client is: the address every per-IP limit counts against.

The TCP peer is the client unless the peer is one of settings.TRUSTED_PROXIES (IPs or CIDRs; default
none). Only then is X-Forwarded-For read, from the right: each proxy appends the address it got the
request from, so the rightmost hop that is not one of our proxies is the first address nobody we
trust could have written; everything left of it is whatever the client chose to send. A client that
sets the header itself, on loopback or anywhere, counts against its own address.

`manage.py serve` hands the same list to uvicorn (`--forwarded-allow-ips`, or `--no-proxy-headers`
when empty), so uvicorn's `scope["client"]`, its log lines and this module agree. Applying the rule
twice is harmless: once uvicorn has resolved the client, the resolved address is not a trusted proxy
and is returned as it is. Daphne is never asked to read the header; this module does it for both.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Any

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def trusted_networks() -> tuple[Network, ...]:
    """settings.TRUSTED_PROXIES parsed (a malformed entry raises at the first request, naming it)."""
    return _networks(tuple(settings.TRUSTED_PROXIES))


def _host(hop: str) -> str:
    """A hop without its port: proxies write "1.2.3.4", "1.2.3.4:5678", "::1" or "[::1]:5678"."""
    hop = hop.strip()
    if hop.startswith("["):
        return hop[1 : hop.find("]")] if "]" in hop else hop
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


def is_trusted_proxy(address: str) -> bool:
    networks = trusted_networks()
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(_host(address))
    except ValueError:
        return False
    return any(ip in network for network in networks)


def forwarded_client(peer: str, forwarded_for: Iterable[str]) -> str:
    """The client behind `peer`, given the X-Forwarded-For header value(s) as received."""
    if not peer or not is_trusted_proxy(peer):
        return peer
    hops = [_host(hop) for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted_proxy(hop):
            return hop
    # Every hop is one of ours (or there is none): the leftmost is the furthest we know of.
    return hops[0] if hops else peer


def meta_client_ip(meta: dict[str, Any]) -> str:
    """The client of a Django request (request.META)."""
    peer = str(meta.get("REMOTE_ADDR") or "")
    header = meta.get("HTTP_X_FORWARDED_FOR")
    return forwarded_client(peer, [str(header)] if header else []) or "unknown"


def scope_client_ip(scope: dict[str, Any]) -> str:
    """The client of an ASGI connection (HTTP or WebSocket scope)."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    if not peer or not is_trusted_proxy(peer):
        return peer or "unknown"
    values = [value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"x-forwarded-for"]
    return forwarded_client(peer, values) or "unknown"


def uvicorn_proxy_options() -> dict[str, Any]:
    """uvicorn's Config options for the same trust (its default trusts 127.0.0.1)."""
    if not settings.TRUSTED_PROXIES:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(settings.TRUSTED_PROXIES)}
