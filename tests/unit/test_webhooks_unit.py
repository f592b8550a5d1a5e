"""Webhooks without a database: the retry schedule, the address rule and URL forms, the pinned request
target, and signatures that standardwebhooks verifies (docs/operations.md "Webhooks")."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from enterprise.delivery import MAX_ATTEMPTS, RETRY_SCHEDULE, retry_delay, signature
from enterprise.egress import Refused, Target, address_refusal, checked_url, target
from enterprise.webhook_endpoints import new_secret


def test_the_retry_schedule_is_the_standard_one() -> None:
    assert [retry_delay(n) for n in range(1, MAX_ATTEMPTS)] == [
        timedelta(seconds=5),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=5),
        timedelta(hours=10),
        timedelta(hours=10),
    ]
    assert MAX_ATTEMPTS == 8
    assert retry_delay(MAX_ATTEMPTS) is None  # the eighth failure is final
    assert retry_delay(0) == timedelta(0)
    assert sum(RETRY_SCHEDULE, timedelta()) == timedelta(hours=27, minutes=35, seconds=5)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not publicly routable"),  # carrier-grade NAT
    ],
)
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None
    assert reason in refusal


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


def test_any_refused_address_of_a_literal_refuses_the_url() -> None:
    with pytest.raises(Refused, match="loopback"):
        target("http://[::1]:9000/x", allow_private=False)
    assert target("http://[::1]:9000/x", allow_private=True).addresses == (ipaddress.ip_address("::1"),)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "expected an http(s) URL"),
        (None, "expected an http(s) URL"),
        ("file:///etc/passwd", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("http://", "a host is required"),
        ("http://user@93.184.215.14/", "credentials"),
        ("http://93.184.215.14:0x50/", "not a valid URL"),
        ("http://93.184.215.14/a b", "spaces"),
        ("http://93.184.215.14/" + "x" * 2000, "at most 2000"),
    ],
)
def test_url_forms_are_checked(url: object, message: str) -> None:
    with pytest.raises(Refused, match=re.escape(message)):
        checked_url(url)


def test_the_request_goes_to_the_checked_address_under_the_hosts_name() -> None:
    v4 = Target("https://hooks.example.com:8443/in?x=1", "hooks.example.com", 8443, (ipaddress.ip_address("1.2.3.4"),))
    assert v4.pinned_url() == "https://1.2.3.4:8443/in?x=1"
    assert v4.host_header() == "hooks.example.com:8443"
    v6 = Target("http://hooks.example.com/in", "hooks.example.com", 80, (ipaddress.ip_address("2001:db8::1"),))
    assert v6.pinned_url() == "http://[2001:db8::1]/in"
    assert v6.host_header() == "hooks.example.com"


def test_signatures_verify_with_each_secret() -> None:
    old, new = new_secret(), new_secret()
    assert old.startswith("whsec_")
    assert old != new
    now = datetime.now(UTC)
    body = '{"type":"message.created","timestamp":"2026-01-01T00:00:00.000Z","data":{}}'
    header = signature(secrets=[new, old], message_id="msg_1", timestamp=now, body=body)
    assert len(header.split(" ")) == 2
    assert all(part.startswith("v1,") for part in header.split(" "))
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": header}
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers)["type"] == "message.created"
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(new).verify(body.replace("created", "deleted"), headers)
