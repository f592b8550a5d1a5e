"""Keep tokens out of every log line: a filter on each handler that replaces anything shaped like a
JWT, however a URL spells it, and the value of any token-named query parameter, with a marker. The
ASGI server's own lines (uvicorn logs every WebSocket handshake's path *with* its query string, even
with its access log off) pass through it as well as Django's and the app's, and so do tracebacks and
stack traces. daphne writes its access log straight to stdout, past logging: that writer is wrapped.

Why decoding: a server logs a URL's query string as the client sent it (`?t=eyJ…%2E…%2E…`, or every
byte percent-encoded) and its path decoded, so a token can reach a line in any of its percent-encoded
spellings, which a plain pattern does not see. Each run of URL characters that holds a `%` is decoded
to a fixed point and checked; a run still changing after MAX_DECODE_ROUNDS is redacted unread (a
limit never fails open, and a client has no honest reason to encode that deep)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

QUERY_TOKEN_KEYS = {"token", "access", "access_token", "jwt", "auth", "authorization"}
# A JWT wherever it appears: three base64url segments, the first a JSON object ("eyJ" is '{"').
# Used to refuse a token under any query parameter name and to redact tokens from log lines.
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# A run of the characters a token is written with in a URL, percent-escapes included.
_URL_RUN = re.compile(r"[A-Za-z0-9_.%~-]*%[A-Za-z0-9_.%~-]*")
# A query parameter: its separator, its (possibly encoded) name and its value, whatever its shape.
_QUERY_PARAM = re.compile(r"([?&;])([^=&;?\s\"'#]+)=([^&;\s\"'#]*)")
MAX_DECODE_ROUNDS = 8
REDACTED = "[redacted]"


def _decoded(text: str) -> str | None:
    """`text` percent-decoded until it stops changing; None if it is still changing after
    MAX_DECODE_ROUNDS (deliberately nested deeper than any client would)."""
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = unquote(text)
        if decoded == text:
            return text
        text = decoded
    return None


def _redact_run(match: re.Match[str]) -> str:
    decoded = _decoded(match.group())
    return REDACTED if decoded is None or JWT_PATTERN.search(decoded) else match.group()


def _redact_param(match: re.Match[str]) -> str:
    name = _decoded(match.group(2))
    if name is None or name.lower() in QUERY_TOKEN_KEYS:
        return match.group(1) + match.group(2) + "=" + REDACTED
    return match.group()


def redact_tokens(text: str) -> str:
    text = JWT_PATTERN.sub(REDACTED, text)
    if "%" in text:
        text = _URL_RUN.sub(_redact_run, text)
    return _QUERY_PARAM.sub(_redact_param, text) if "=" in text else text


def _redact_arg(value: object) -> object:
    return redact_tokens(value) if isinstance(value, str) else value


_TRACEBACKS = logging.Formatter()


class TokenRedactingFilter(logging.Filter):
    """Replaces tokens in a record's message, string arguments, traceback and stack trace. Arguments
    are redacted one by one, so formatters that unpack them (uvicorn's access formatter) keep working."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: _redact_arg(arg) for key, arg in record.args.items()}
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the handler's business, not ours
            message = None
        if message is not None and redact_tokens(message) != message:
            # Hidden in a non-string message or argument (an exception, a list): flatten the record.
            record.msg, record.args = redact_tokens(message), ()
        self._redact_exception(record)
        if record.stack_info:
            record.stack_info = redact_tokens(record.stack_info)
        return True

    @staticmethod
    def _redact_exception(record: logging.LogRecord) -> None:
        """Formatters print `exc_text` when it is set, so the redacted traceback is what they print.
        When the traceback carried a token the exception itself is dropped from the record too: a
        handler that renders exc_info on its own (an error mailer, a tracker) gets the text only."""
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            redacted = redact_tokens(record.exc_text)
            if redacted != record.exc_text:
                record.exc_text, record.exc_info = redacted, None


_REDACTION = TokenRedactingFilter()


def install_log_redaction() -> None:
    """Put the redacting filter on every handler configured so far (the ASGI server's own, set up
    before it imports the application, and Django's LOGGING ones), and wrap daphne's access log if
    daphne is the server. Idempotent."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if not any(isinstance(f, TokenRedactingFilter) for f in handler.filters):
                handler.addFilter(_REDACTION)
    _redact_daphne_access_log()


def _redact_daphne_access_log() -> None:
    """daphne's access log (`WSCONNECTING /ws/chat/<path>`, `GET <path>?<query>`) is written to a
    stream by daphne.access.AccessLogGenerator, never through logging, so no filter sees it: its one
    writer is wrapped instead. Looked up in sys.modules, not imported: under uvicorn daphne is not
    loaded and there is nothing to wrap."""
    access = sys.modules.get("daphne.access")
    generator: Any = getattr(access, "AccessLogGenerator", None)
    if generator is None or getattr(generator.write_entry, "redacts_tokens", False):
        return
    write_entry = generator.write_entry

    def redacting_write_entry(self: Any, host: Any, date: Any, request: str, *args: Any, **kwargs: Any) -> Any:
        return write_entry(self, host, date, redact_tokens(request), *args, **kwargs)

    redacting_write_entry.redacts_tokens = True  # type: ignore[attr-defined]
    generator.write_entry = redacting_write_entry
