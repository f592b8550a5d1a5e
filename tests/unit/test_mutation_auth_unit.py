"""Handshake checks without a server: which Origins pass, which query strings carry a token, what the
log redaction leaves, and what the middleware puts in the scope for each way in."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models import F
from django.test import Client as HttpClient
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.tokens import AccessToken

from chat.errors import AuthFailed
from chat.infra import log_redaction
from chat.infra.log_redaction import REDACTED, TokenRedactingFilter, redact_tokens
from chat.models import User
from chat.realtime import auth
from chat.realtime.auth import (
    ChatAuthMiddleware,
    Identity,
    RevocableJWTAuthentication,
    identity_from_token,
    origin_allowed,
    query_carries_token,
    revoked_close_code,
)
from tests.support.ws import access_token

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
    assert isinstance(record.args, tuple)
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


async def _receive() -> Any:
    return {}


async def _send(message: Any) -> None:
    return None


async def _scope_after(headers: list[tuple[bytes, bytes]], query: bytes | None = b"", kind: str = "websocket") -> Any:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> str:
        assert (receive, send) == (_receive, _send)  # the server's own callables, never wrapped
        seen.update(scope)
        return "app result"

    middleware = ChatAuthMiddleware(app)
    scope: dict[str, Any] = {"type": kind, "headers": headers}
    if query is not None:
        scope["query_string"] = query
    result = await middleware(scope, _receive, _send)
    assert result == "app result"
    return seen


async def test_a_scope_without_a_query_string_carries_no_token() -> None:
    seen = await _scope_after([], query=None)
    assert (seen["identity"], seen["auth_error"], seen["origin_ok"]) == (None, None, True)


async def test_middleware_leaves_http_scopes_alone() -> None:
    seen = await _scope_after([], kind="http")
    assert "identity" not in seen
    assert "origin_ok" not in seen


async def test_middleware_refuses_query_tokens_and_checks_the_origin() -> None:
    seen = await _scope_after([(b"origin", b"http://evillocalhost:8000")], query=b"token=x")
    assert seen["origin_ok"] is False
    assert seen["identity"] is None
    assert seen["auth_error"] == (
        "tokens in the query string are refused; use the Authorization header or an auth frame"
    )


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


# --- who the token or the session belongs to (the database decides) -------------------------------


def _user(make_user: Any, **fields: Any) -> Any:
    user = make_user(tier="pro")
    if fields:
        User.objects.filter(id=user.id).update(**fields)
        user.refresh_from_db()
    return user


@pytest.mark.django_db
def test_a_good_token_names_its_user_and_keeps_its_claims(make_user: Any) -> None:
    user = _user(make_user)
    raw = access_token(user)
    identity = identity_from_token(raw)
    payload = AccessToken(raw).payload  # type: ignore[arg-type]
    assert identity == Identity(user.id, user.username, "pro", "jwt", int(payload["exp"]))
    assert isinstance(identity.expires_at, int)
    assert identity.claims == payload
    assert revoked_close_code(identity) is None


@pytest.mark.django_db
def test_a_token_of_an_inactive_or_revoked_user_is_refused(make_user: Any) -> None:
    user = _user(make_user)
    raw = access_token(user)
    User.objects.filter(id=user.id).update(token_version=F("token_version") + 1)
    with pytest.raises(AuthFailed, match=r"^unknown or inactive user, or revoked token$"):
        identity_from_token(raw)
    with pytest.raises(AuthFailed, match=r"^invalid or expired token$"):
        identity_from_token(raw[:-2])


@pytest.mark.django_db
def test_an_open_sockets_identity_is_closed_4401_when_revoked_and_4403_when_deactivated(make_user: Any) -> None:
    user = _user(make_user)
    identity = identity_from_token(access_token(user))
    session = Identity(user.id, user.username, "pro", "session", None)
    User.objects.filter(id=user.id).update(token_version=F("token_version") + 1)
    assert revoked_close_code(identity) == 4401
    assert revoked_close_code(session) is None  # a session has no token to revoke
    User.objects.filter(id=user.id).update(is_active=False)
    assert revoked_close_code(identity) == 4403
    assert revoked_close_code(session) == 4403


def test_a_revocation_check_that_cannot_reach_the_database_lets_the_socket_be(monkeypatch: Any) -> None:
    def down(**_: Any) -> bool:
        raise OperationalError("connection refused")

    monkeypatch.setattr(auth.selectors, "user_is_active", down)
    assert revoked_close_code(Identity(1, "u", "free", "jwt", 1, {"user_id": 1})) is None
    monkeypatch.setattr(auth.selectors, "user_is_active", lambda **_: (_ for _ in ()).throw(InterfaceError("closed")))
    assert revoked_close_code(Identity(1, "u", "free", "jwt", 1, {"user_id": 1})) is None


@pytest.mark.django_db
def test_rest_bearer_authentication_asks_the_same_holder_question(make_user: Any) -> None:
    user = _user(make_user)
    token = AccessToken(access_token(user))  # type: ignore[arg-type]
    assert RevocableJWTAuthentication().get_user(token) == user
    User.objects.filter(id=user.id).update(is_active=False)
    with pytest.raises(AuthenticationFailed) as refused:
        RevocableJWTAuthentication().get_user(token)
    assert refused.value.detail == "unknown or inactive user, or revoked token"
    assert refused.value.get_codes() == "token_not_valid"


@pytest.mark.parametrize(
    "query",
    [
        f"t={JWT.replace('.', '%2E')}".encode(),  # a JWT percent-encoded in the query
        b"x=" + JWT.encode().replace(b".", b"%2e"),
        b"Authorization=x",
        b"a=1&Jwt=2",
    ],
)
def test_an_encoded_token_or_any_spelling_of_a_token_key_is_recognised(query: bytes) -> None:
    assert query_carries_token(query) is True


def test_a_query_string_is_read_as_latin_1() -> None:
    assert query_carries_token(b"\xff=\xfe") is False
    assert query_carries_token("tök=1".encode("latin-1")) is False


def test_the_first_header_of_a_name_counts() -> None:
    scope = {"headers": [(b"x", b"1"), (b"origin", b"http://a\xe9"), (b"origin", b"http://b")]}
    assert auth._header(scope, b"origin") == "http://a\xe9"
    assert auth._header(scope, b"cookie") is None
    assert auth._header({}, b"origin") is None


def _session_cookie(user: Any) -> bytes:
    client = HttpClient()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


@pytest.mark.django_db(transaction=True)
async def test_a_session_cookie_names_its_active_user(make_user: Any) -> None:
    user = await database_sync_to_async(_user)(make_user)
    cookie = await database_sync_to_async(_session_cookie)(user)
    seen = await _scope_after([(b"cookie", b"other=1; " + cookie)])
    assert seen["identity"] == Identity(user.id, user.username, "pro", "session", None)
    assert seen["auth_error"] is None
    await User.objects.filter(id=user.id).aupdate(is_active=False)
    assert (await _scope_after([(b"cookie", cookie)]))["identity"] is None
    assert (await _scope_after([(b"cookie", f"{settings.SESSION_COOKIE_NAME}=".encode())]))["identity"] is None


@pytest.mark.django_db(transaction=True)
async def test_a_bearer_token_in_any_case_with_spaces_names_its_user(make_user: Any) -> None:
    user = await database_sync_to_async(_user)(make_user)
    raw = await database_sync_to_async(access_token)(user)
    seen = await _scope_after([(b"authorization", f"BEARER   {raw}  ".encode())])
    assert seen["identity"].user_id == user.id
    assert seen["identity"].method == "jwt"
    assert seen["auth_error"] is None
    assert "auth_unavailable" not in seen


async def test_a_handshake_the_database_cannot_answer_is_unavailable_not_refused(
    monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def down(raw: str) -> Identity:
        raise OperationalError("connection refused")

    monkeypatch.setattr(auth, "identity_from_token", down)
    caplog.set_level(logging.WARNING, logger="chat.realtime.auth")
    original = {"type": "websocket", "headers": [(b"authorization", b"Bearer x")], "query_string": b""}
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)

    await ChatAuthMiddleware(app)(original, None, None)
    assert (seen["identity"], seen["auth_error"], seen["auth_unavailable"]) == (None, None, True)
    assert [r.getMessage() for r in caplog.records] == [
        "handshake: cannot authenticate, database unavailable (OperationalError)"
    ]
    assert set(original) == {"type", "headers", "query_string"}  # the server's scope is not changed
