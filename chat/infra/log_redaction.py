"""Keep tokens out of every log line: a filter on each handler that replaces anything shaped like a
JWT, and the value of any token-named query parameter, with a marker. The ASGI server's own lines
(uvicorn logs every WebSocket handshake's path *with* its query string, even with its access log off)
pass through it as well as Django's and the app's."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

QUERY_TOKEN_KEYS = {"token", "access", "access_token", "jwt", "auth", "authorization"}
# A JWT wherever it appears: three base64url segments, the first a JSON object ("eyJ" is '{"').
# Used to refuse a token under any query parameter name and to redact tokens from log lines.
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# The value of a token-named query parameter, whatever its shape (it may not be a JWT).
_QUERY_TOKEN_VALUE = re.compile(r"([?&;](?:" + "|".join(sorted(QUERY_TOKEN_KEYS)) + r")=)[^&;\s\"']*", re.IGNORECASE)
REDACTED = "[redacted]"


def redact_tokens(text: str) -> str:
    return _QUERY_TOKEN_VALUE.sub(lambda m: m.group(1) + REDACTED, JWT_PATTERN.sub(REDACTED, text))


def _redact_arg(value: object) -> object:
    return redact_tokens(value) if isinstance(value, str) else value


class TokenRedactingFilter(logging.Filter):
    """Replaces tokens in a record's message and string arguments. Arguments are redacted one by
    one, so formatters that unpack them (uvicorn's access formatter) keep working."""

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
            return True
        if JWT_PATTERN.search(message):  # hidden in a non-string argument: flatten the record
            record.msg, record.args = redact_tokens(message), ()
        return True


_REDACTION = TokenRedactingFilter()


def install_log_redaction() -> None:
    """Put the redacting filter on every handler configured so far (the ASGI server's own, set up
    before it imports the application, and Django's LOGGING ones). Idempotent."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if _REDACTION not in handler.filters:
                handler.addFilter(_REDACTION)
