"""Log redaction's edges: exactly how deep a percent-encoding is decoded, the parameter branch for a
name nested too deep, what the filter leaves of each kind of record, and daphne's wrapped writer."""

from __future__ import annotations

import logging
import sys
import types
from typing import Any
from urllib.parse import quote

import pytest

from chat.infra import log_redaction
from chat.infra.log_redaction import REDACTED, TokenRedactingFilter, redact_tokens

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoxfQ.c2lnbmF0dXJl"


def encoded(text: str, times: int) -> str:
    for _ in range(times):
        text = quote(text, safe="")
    return text


def test_a_run_is_decoded_through_seven_encodings_and_refused_at_eight() -> None:
    assert log_redaction.MAX_DECODE_ROUNDS == 8
    kept = encoded("a b", 7)  # seven decodings and one more to see it stopped changing: 8 rounds
    assert redact_tokens(f"GET /?q={kept} 200") == f"GET /?q={kept} 200"
    assert redact_tokens(f"/p/{kept}/x") == f"/p/{kept}/x"
    deep = encoded("a b", 8)
    assert redact_tokens(f"GET /?q={deep} 200") == f"GET /?q={REDACTED} 200"
    assert redact_tokens(f"/p/{deep}/x") == f"/p/{REDACTED}/x"


def test_decoding_returns_the_fixed_point_or_nothing() -> None:
    assert log_redaction._decoded("plain") == "plain"
    assert log_redaction._decoded("a%2520b") == "a b"
    assert log_redaction._decoded(encoded("a b", 7)) == "a b"
    assert log_redaction._decoded(encoded("a b", 8)) is None


def test_a_token_encoded_seven_times_is_found() -> None:
    line = f"GET /?t={encoded(JWT, 7)} 101"
    assert redact_tokens(line) == f"GET /?t={REDACTED} 101"


def test_a_parameter_name_nested_too_deep_is_redacted_keeping_how_it_was_sent() -> None:
    # redact_tokens already replaces such a name's run; the parameter rule must not trust it either.
    name = encoded("%74oken", 8)
    assert log_redaction._QUERY_PARAM.sub(log_redaction._redact_param, f"/p?{name}=v&b=1") == (
        f"/p?{name}={REDACTED}&b=1"
    )
    assert log_redaction._QUERY_PARAM.sub(log_redaction._redact_param, "/p;AUTH=v#f") == f"/p;AUTH={REDACTED}#f"
    assert log_redaction._QUERY_PARAM.sub(log_redaction._redact_param, "/p?auths=v") == "/p?auths=v"


@pytest.mark.parametrize("key", sorted(log_redaction.QUERY_TOKEN_KEYS))
def test_every_token_key_is_redacted(key: str) -> None:
    assert redact_tokens(f"/ws/?{key.upper()}=s3cret") == f"/ws/?{key.upper()}={REDACTED}"


def test_a_line_without_percent_or_equals_skips_those_passes() -> None:
    assert redact_tokens("a plain line") == "a plain line"
    assert redact_tokens(f"see {JWT} here") == f"see {REDACTED} here"
    assert redact_tokens("100%") == "100%"
    assert redact_tokens("x=1") == "x=1"


def _record(msg: Any, args: Any = None, exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord("x", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_non_string_arguments_are_passed_through_untouched() -> None:
    marker = object()
    record = _record("%s %s %s", ("/?token=a", 5, marker))
    TokenRedactingFilter().filter(record)
    assert record.args == (f"/?token={REDACTED}", 5, marker)
    assert record.args[2] is marker


def test_a_record_without_arguments_keeps_none() -> None:
    record = _record("plain message")
    assert TokenRedactingFilter().filter(record) is True
    assert (record.msg, record.args) == ("plain message", None)


def test_a_clean_record_is_not_flattened() -> None:
    record = _record("%s items", ([1, 2],))
    TokenRedactingFilter().filter(record)
    assert record.msg == "%s items"
    assert record.args == ([1, 2],)


def test_a_non_string_message_carrying_a_token_is_flattened() -> None:
    record = _record(ValueError(f"bad /?jwt={JWT}"))
    TokenRedactingFilter().filter(record)
    assert record.msg == f"bad /?jwt={REDACTED}"
    assert record.args == ()


def test_a_precomputed_traceback_without_a_token_is_kept_with_its_exception() -> None:
    try:
        raise RuntimeError("plain")
    except RuntimeError:
        info = sys.exc_info()
    record = _record("failed", exc_info=info)
    record.exc_text = "Traceback: plain"
    TokenRedactingFilter().filter(record)
    assert (record.exc_text, record.exc_info) == ("Traceback: plain", info)


def test_a_precomputed_traceback_with_a_token_is_redacted_and_the_exception_dropped() -> None:
    try:
        raise RuntimeError("x")
    except RuntimeError:
        info = sys.exc_info()
    record = _record("failed", exc_info=info)
    record.exc_text = f"Traceback: /?token={JWT}"
    TokenRedactingFilter().filter(record)
    assert (record.exc_text, record.exc_info) == (f"Traceback: /?token={REDACTED}", None)


def test_an_empty_exc_info_gets_no_traceback_text() -> None:
    record = _record("failed", exc_info=(None, None, None))
    TokenRedactingFilter().filter(record)
    assert record.exc_text is None
    assert record.exc_info == (None, None, None)


def test_a_traceback_is_formatted_once_and_kept_when_clean() -> None:
    try:
        raise KeyError("clean")
    except KeyError:
        info = sys.exc_info()
    record = _record("failed", exc_info=info)
    TokenRedactingFilter().filter(record)
    assert record.exc_text is not None
    assert record.exc_text.startswith("Traceback (most recent call last):")
    assert record.exc_text.endswith("KeyError: 'clean'")
    assert record.exc_info is info


def test_stack_info_without_a_token_is_kept() -> None:
    record = _record("m")
    record.stack_info = "Stack (most recent call last): clean"
    TokenRedactingFilter().filter(record)
    assert record.stack_info == "Stack (most recent call last): clean"


def test_install_puts_the_filter_on_named_loggers_handlers_once(monkeypatch: pytest.MonkeyPatch) -> None:
    root_handler, named_handler = logging.NullHandler(), logging.NullHandler()
    other = logging.Filter("other")
    named_handler.addFilter(other)
    root, named = logging.getLogger(), logging.getLogger("mutation-redaction-install")
    root.addHandler(root_handler)
    named.addHandler(named_handler)
    try:
        log_redaction.install_log_redaction()
        log_redaction.install_log_redaction()
        assert root_handler.filters == [log_redaction._REDACTION]
        assert named_handler.filters == [other, log_redaction._REDACTION]
    finally:
        root.removeHandler(root_handler)
        named.removeHandler(named_handler)


def test_daphnes_writer_is_wrapped_once_and_passes_everything_else_through(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    class AccessLogGenerator:
        def write_entry(self, host: Any, date: Any, request: str, *args: Any, **kwargs: Any) -> str:
            calls.append((self, host, date, request, args, kwargs))
            return "written"

    module = types.ModuleType("daphne.access")
    module.AccessLogGenerator = AccessLogGenerator  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "daphne.access", module)
    log_redaction._redact_daphne_access_log()
    wrapped = AccessLogGenerator.write_entry
    assert wrapped.redacts_tokens is True  # type: ignore[attr-defined]
    log_redaction._redact_daphne_access_log()
    assert AccessLogGenerator.write_entry is wrapped  # not wrapped twice
    gen = AccessLogGenerator()
    assert gen.write_entry("h", "d", f"GET /?t={JWT}", 101, size=3) == "written"
    assert calls == [(gen, "h", "d", f"GET /?t={REDACTED}", (101,), {"size": 3})]


def test_without_daphne_there_is_nothing_to_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "daphne.access", raising=False)
    log_redaction._redact_daphne_access_log()  # no error, nothing imported
    assert "daphne.access" not in sys.modules
    empty = types.ModuleType("daphne.access")
    monkeypatch.setitem(sys.modules, "daphne.access", empty)
    log_redaction._redact_daphne_access_log()  # a module without the generator: nothing to do
