"""Log redaction without a server: every spelling of a token a URL can carry, tracebacks and stack
traces, and daphne's access log (written straight to a stream, not through logging). The real servers'
output is checked in tests/integration/test_log_redaction_servers_integration.py."""

from __future__ import annotations

import io
import logging
from urllib.parse import quote, unquote

import pytest
from daphne.access import AccessLogGenerator

from chat.infra import log_redaction
from chat.infra.log_redaction import REDACTED, TokenRedactingFilter, redact_tokens

HEADER = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
JWT = f"{HEADER}.eyJ1c2VyX2lkIjoxfQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
SIGNATURE = JWT.rsplit(".", 1)[1]
EVERY_BYTE = "".join(f"%{b:02X}" for b in JWT.encode())

SPELLINGS = {
    "plain": JWT,
    "dots %2E": JWT.replace(".", "%2E"),
    "dots %2e": JWT.replace(".", "%2e"),
    "first letter %65": "%65" + JWT[1:],
    "every byte": EVERY_BYTE,
    "every byte, lower hex": EVERY_BYTE.lower(),
    "dots double-encoded": JWT.replace(".", "%252E"),
    "every byte double-encoded": EVERY_BYTE.replace("%", "%25"),
    "every byte triple-encoded": EVERY_BYTE.replace("%", "%2525"),
}


def assert_clean(text: str) -> None:
    for _ in range(6):  # the text and each of its percent-decodings
        assert SIGNATURE not in text, text
        text = unquote(text)


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
@pytest.mark.parametrize(
    "where",
    [
        "GET /ws/chat/?t={} 101",
        "GET /ws/chat/?after=1&q={}&x=2",
        "GET /ws/chat/{}/ 404",
        "No route found for path 'ws/chat/{}/'.",
        "WSCONNECTING /c/{}",
        "{}",
    ],
)
def test_every_spelling_of_a_token_is_redacted_wherever_it_sits(spelling: str, where: str) -> None:
    line = where.format(SPELLINGS[spelling])
    redacted = redact_tokens(line)
    assert_clean(redacted)
    assert REDACTED in redacted
    # Only the token goes: the rest of the line is kept for whoever reads the log.
    prefix, _, suffix = where.partition("{}")
    assert redacted == prefix + REDACTED + suffix


@pytest.mark.parametrize("key", ["token", "Token", "%74oken", "%2574oken", "access%5Ftoken", "JWT"])
def test_a_token_named_parameter_is_redacted_whatever_its_value_and_however_its_name_is_spelled(key: str) -> None:
    assert redact_tokens(f"GET /ws/chat/?a=1&{key}=opaque-secret&b=2") == f"GET /ws/chat/?a=1&{key}={REDACTED}&b=2"


@pytest.mark.parametrize(
    "line",
    [
        "GET /ws/chat/?after=5&conversation=abc%20def",
        "GET /api/conversations/%E2%9C%93/ 404",
        "eyJ is how a JSON object starts in base64",
        "100% of 3.5.7 eyJ.x",  # looks almost like one, but has no payload or signature characters
    ],
)
def test_ordinary_lines_are_left_alone(line: str) -> None:
    assert redact_tokens(line) == line


def test_a_run_nested_deeper_than_the_decoding_limit_is_redacted_rather_than_trusted() -> None:
    deep = "x" + quote("%", safe="")
    for _ in range(log_redaction.MAX_DECODE_ROUNDS + 2):
        deep = deep.replace("%", "%25")
    assert redact_tokens(f"GET /?q={deep} 200") == f"GET /?q={REDACTED} 200"


def _handler_output(log: logging.Logger) -> io.StringIO:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(TokenRedactingFilter())
    log.addHandler(handler)
    log.propagate = False
    return out


def test_a_traceback_carrying_a_token_is_redacted_and_handed_on_only_as_text() -> None:
    log = logging.getLogger(f"redaction-test-traceback-{id(object())}")
    out = _handler_output(log)
    try:
        raise ValueError(f"No route found for path 'ws/chat/{JWT}/'.")
    except ValueError:
        log.exception("Exception in ASGI application")
    text = out.getvalue()
    assert "Traceback (most recent call last)" in text
    assert "ValueError: No route found for path 'ws/chat/[redacted]/'." in text
    assert_clean(text)


def test_a_traceback_without_a_token_keeps_its_exception_for_other_handlers() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, None)
    try:
        raise RuntimeError("nothing secret")
    except RuntimeError as exc:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    assert TokenRedactingFilter().filter(record) is True
    assert record.exc_info is not None  # a crash detector further on still sees the exception
    assert "RuntimeError: nothing secret" in (record.exc_text or "")


def test_an_exception_passed_as_the_message_argument_is_redacted() -> None:
    # daphne: logger.error("Exception inside application: %s", exception, exc_info=exception)
    exc = ValueError(f"No route found for path 'ws/chat/{JWT.replace('.', '%2E')}/'.")
    record = logging.LogRecord(
        "daphne.server", logging.ERROR, __file__, 1, "Exception inside application: %s", (exc,), None
    )
    record.exc_info = (type(exc), exc, None)
    TokenRedactingFilter().filter(record)
    assert_clean(logging.Formatter().format(record))


def test_stack_info_is_redacted() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "here", None, None, sinfo=f"Stack:\n  f('{JWT}')")
    TokenRedactingFilter().filter(record)
    assert_clean(logging.Formatter().format(record))


def test_daphnes_access_log_is_redacted_once_redaction_is_installed() -> None:
    log_redaction.install_log_redaction()
    log_redaction.install_log_redaction()  # idempotent: one wrapper, not two
    stream = io.StringIO()
    access = AccessLogGenerator(stream)
    access(
        "http",
        "complete",
        {"path": f"/api/?q={SPELLINGS['dots %2E']}", "status": 200, "method": "GET", "client": "c", "size": 1},
    )
    access("websocket", "connecting", {"path": f"/ws/chat/{JWT}/", "client": "c"})
    text = stream.getvalue()
    assert text.count(REDACTED) == 2
    assert_clean(text)
