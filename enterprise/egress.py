"""Where a webhook may be sent: http(s) URLs whose host resolves only to public addresses.

A webhook URL is chosen by a customer, and the server calls it: without this check it could be pointed at the
deployment's own network (the database, the metrics port, a cloud metadata service at 169.254.169.254). The
host is resolved when the endpoint is saved, for a clear 400, and again before every attempt, because DNS
can change in between; the attempt then connects to the address that was checked (`Target.pinned_url`), so a
second lookup cannot swap in another one. settings.WEBHOOKS_ALLOW_PRIVATE lifts the address rule (tests,
a deployment whose receivers are internal on purpose); the URL rules always hold.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

URL_MAX_CHARS = 2000
SCHEMES = ("http", "https")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(ValueError):
    """A URL or address a webhook may not be sent to; the message says why, for the owner."""


def address_refusal(address: IPAddress) -> str | None:
    """Why a webhook may not go to `address` (None: it may). Anything not globally routable is refused;
    the reason names the most telling category."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_refusal(address.ipv4_mapped)  # ::ffff:127.0.0.1 is 127.0.0.1
    for refused, name in (
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_unspecified, "unspecified"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "not publicly routable"),
    ):
        if refused:
            return f"{address} is a {name} address"
    return None


@dataclass(frozen=True)
class Target:
    url: str
    host: str  # as written in the URL, without brackets
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def is_https(self) -> bool:
        return self.url.startswith("https:")

    def pinned_url(self) -> str:
        """The URL with its host replaced by the first checked address (the request's Host header and TLS
        server name stay the original host's: `host_header`, `host`)."""
        parts = urlsplit(self.url)
        address = self.addresses[0]
        literal = f"[{address}]" if address.version == 6 else str(address)
        netloc = f"{literal}:{parts.port}" if parts.port else literal
        return parts._replace(netloc=netloc).geturl()

    def host_header(self) -> str:
        parts = urlsplit(self.url)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{parts.port}" if parts.port else host


def checked_url(url: object) -> SplitResult:
    """The URL's parts if its form is acceptable (scheme, host, length, no credentials); Refused otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise Refused("url: expected an http(s) URL")
    url = url.strip()
    if len(url) > URL_MAX_CHARS:
        raise Refused(f"url: at most {URL_MAX_CHARS} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError as exc:
        raise Refused(f"url: not a valid URL ({exc})") from None
    if parts.scheme.lower() not in SCHEMES:
        raise Refused("url: the scheme must be http or https")
    if not parts.hostname:
        raise Refused("url: a host is required")
    if parts.username is not None or parts.password is not None:
        raise Refused("url: credentials in the URL are not allowed (verify the signature instead)")
    if any(ch.isspace() for ch in url):
        raise Refused("url: spaces are not allowed")
    return parts


def resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address `host` resolves to (an IP literal is itself); Refused if it resolves to none."""
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"url: the host {host!r} does not resolve ({exc})") from None
    addresses: list[IPAddress] = []
    for info in infos:
        # The scope of a link-local IPv6 address (fe80::1%eth0) is no part of the address itself.
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise Refused(f"url: the host {host!r} does not resolve")
    return tuple(addresses)


def target(url: object, *, allow_private: bool) -> Target:
    """Check `url` and resolve its host: Refused if the form is wrong or ANY address is refused (a host with
    one public and one private address could be made to use the private one)."""
    parts = checked_url(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    addresses = resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = address_refusal(address)
            if reason is not None:
                raise Refused(f"url: {host} is refused: {reason} (webhooks go to public addresses only)")
    return Target(url=parts.geturl(), host=host, port=port, addresses=addresses)
