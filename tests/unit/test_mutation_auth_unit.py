"""Handshake checks without a server: which Origins pass, which query strings carry a token, what the
log redaction leaves, and what the middleware puts in the scope for each way in."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from chat.infra import log_redaction
from chat.infra.log_redaction import REDACTED, TokenRedactingFilter, redact_tokens
from chat.realtime.auth import ChatAuthMiddleware, origin_allowed, query_carries_token

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoxfQ.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "origin",
    [None, "http://localhost:8000", "https://localhost", "http://127.0.0.1:9000", "http://testserver"],
)
def test_our_hosts_on_any_port_and_no_origin_are_allowed(origin: str | None) -> None:
    assert origin_allowed(origin) is True


@pytest.mark.parametrize(
    "origin",
    [
        "http://evillocalhost:8000",  # merely ends with an allowed host
        "http://localhost.evil.com",
        "https://example.com",
        "ftp://localhost",  # not a web scheme
        "http://",  # no host at all
        "null",
        "",
    ],
)
def test_other_origins_are_refused(origin: str) -> None:
    assert origin_allowed(origin) is False


def test_listed_full_origins_are_allowed_verbatim(settings: Any) -> None:
    settings.CHAT_ALLOWED_ORIGINS = ["https://app.example.com", "chrome-extension://abc"]
    assert origin_allowed("https://app.example.com") is True
    assert origin_allowed("chrome-extension://abc") is True  # listed, whatever its scheme
    assert origin_allowed("https://other.example.com") is False


@pytest.mark.parametrize(
    "query",
    [b"token=abc", b"x=1&ACCESS=abc", b"access_token=x", b"jwt=1", b"auth=1", b"authorization=1", f"t={JWT}".encode()],
)
def test_query_strings_carrying_a_token_are_recognised(query: bytes) -> None:
    assert query_carries_token(query) is True


@pytest.mark.parametrize("query", [b"", b"conversation=1&after=3", b"tokens=1", b"t=eyJnotajwt"])
def test_ordinary_query_strings_pass(query: bytes) -> None:
    assert query_carries_token(query) is False


def test_redaction_hides_jwts_and_token_parameters_only() -> None:
    assert redact_tokens(f"GET /ws/chat/?t={JWT} 101") == f"GET /ws/chat/?t={REDACTED} 101"
    assert redact_tokens("GET /ws/chat/?x=1&Token=secret&y=2") == f"GET /ws/chat/?x=1&Token={REDACTED}&y=2"
    assert redact_tokens("GET /ws/chat/?after=5") == "GET /ws/chat/?after=5"


def _record(msg: Any, args: Any) -> logging.LogRecord:
    return logging.LogRecord("x", logging.INFO, __file__, 1, msg, args, None)


def test_filter_redacts_message_tuple_and_mapping_arguments() -> None:
    flt = TokenRedactingFilter()
    record = _record("%s %s %d", (f"?token={JWT}", "ok", 3))
    assert flt.filter(record) is True
    assert record.getMessage() == f"?token={REDACTED} ok 3"
    assert record.args[1:] == ("ok", 3)  # untouched arguments stay as they were
    mapped = _record("%(path)s %(n)s", ({"path": f"/ws/?jwt={JWT}", "n": 1},))
    flt.filter(mapped)
    assert mapped.args == {"path": f"/ws/?jwt={REDACTED}", "n": 1}
    inline = _record(f"path /?access={JWT}", None)
    flt.filter(inline)
    assert inline.msg == f"path /?access={REDACTED}"


def test_filter_flattens_a_token_hidden_in_a_non_string_argument() -> None:
    record = _record("%s", ([f"/ws/?t={JWT}"],))
    assert TokenRedactingFilter().filter(record) is True
    assert JWT not in record.getMessage()
    assert record.args == ()


def test_filter_keeps_malformed_records() -> None:
    record = _record("%s %s", ("only one",))
    assert TokenRedactingFilter().filter(record) is True


def test_install_log_redaction_is_idempotent() -> None:
    handler = logging.NullHandler()
    logger = logging.getLogger("mutation-auth-test")
    logger.addHandler(handler)
    try:
        log_redaction.install_log_redaction()
        log_redaction.install_log_redaction()
        assert handler.filters.count(log_redaction._REDACTION) == 1
    finally:
        logger.removeHandler(handler)


async def _scope_after(headers: list[tuple[bytes, bytes]], query: bytes = b"", kind: str = "websocket") -> Any:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> str:
        seen.update(scope)
        return "app result"

    middleware = ChatAuthMiddleware(app)
    result = await middleware({"type": kind, "headers": headers, "query_string": query}, None, None)
    assert result == "app result"
    return seen


async def test_middleware_leaves_http_scopes_alone() -> None:
    seen = await _scope_after([], kind="http")
    assert "identity" not in seen
    assert "origin_ok" not in seen


async def test_middleware_refuses_query_tokens_and_checks_the_origin() -> None:
    seen = await _scope_after([(b"origin", b"http://evillocalhost:8000")], query=b"token=x")
    assert seen["origin_ok"] is False
    assert seen["identity"] is None
    assert "query string" in seen["auth_error"]


async def test_middleware_wants_a_bearer_scheme() -> None:
    seen = await _scope_after([(b"origin", b"http://localhost:8000"), (b"authorization", b"Basic abc")])
    assert seen["origin_ok"] is True
    assert seen["auth_error"] == "Authorization must be 'Bearer <access token>'"
    seen = await _scope_after([(b"authorization", b"Bearer   ")])
    assert seen["auth_error"] == "Authorization must be 'Bearer <access token>'"


# The token is checked in database_sync_to_async, whose worker thread first closes that thread's
# stale connections: a connection an earlier test left on the reused thread would be touched, so
# the test is allowed the database it never queries (it failed in some orders without this).
@pytest.mark.django_db
async def test_middleware_reports_an_invalid_token() -> None:
    seen = await _scope_after([(b"authorization", b"bearer not-a-token")])
    assert seen["identity"] is None
    assert seen["auth_error"] == "invalid or expired token"


async def test_middleware_without_credentials_is_anonymous() -> None:
    seen = await _scope_after([(b"cookie", b"other=1")])
    assert seen["identity"] is None
    assert seen["auth_error"] is None
