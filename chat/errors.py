"""Every error of our own, in one place at the bottom of the house, each saying what kind of
failure it is (`error_class`), so error recovery can classify it without importing the layers
that raise it.

The four classes and their one strategy each are described in `chat.infra.error_recovery`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorClass(StrEnum):
    CLIENT = "client"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    BUG = "bug"


class ClassifiedError(Exception):
    """An exception that knows its class (the default: the client asked for something it cannot have)."""

    def error_class(self) -> ErrorClass:
        return ErrorClass.CLIENT


# Codes (docs/protocol.md §2) that are not the client's fault: `unavailable` says "retry", `internal` is a bug.
_TRANSIENT_CODES = frozenset({"unavailable"})
_BUG_CODES = frozenset({"internal"})


class CodedError(ClassifiedError):
    """A refusal with a docs/protocol.md §2 error `code` and a message for the client."""

    def __init__(self, code: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms

    def error_class(self) -> ErrorClass:
        if self.code in _TRANSIENT_CODES:
            return ErrorClass.TRANSIENT
        if self.code in _BUG_CODES:
            return ErrorClass.BUG
        return ErrorClass.CLIENT

    def as_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after_ms is not None:
            err["retry_after_ms"] = self.retry_after_ms
        return err


class ServiceError(CodedError):
    """A refused write (raised by a service)."""


class ProtocolError(CodedError):
    """A frame or command the protocol refuses (answered with an error frame or reply)."""


class CommandError(ProtocolError):
    """A ProtocolError for a frame whose `id` is known, so it is answered with a reply."""

    def __init__(self, command_id: str | None, code: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(code, message, retry_after_ms)
        self.command_id = command_id


class NotFound(ClassifiedError):
    """The object does not exist or the caller may not see it (deliberately indistinguishable)."""


class AuthFailed(ClassifiedError):
    """A credential was refused: retrying the same one fails the same way."""

    def error_class(self) -> ErrorClass:
        return ErrorClass.PERMANENT


class CircuitOpen(ClassifiedError):
    """A call was refused without being tried: the breaker `name` is open (TRANSIENT)."""

    def __init__(self, name: str, retry_after_ms: int) -> None:
        super().__init__(f"{name} is unavailable (circuit open); retry in {retry_after_ms} ms")
        self.name = name
        self.retry_after_ms = retry_after_ms

    def error_class(self) -> ErrorClass:
        return ErrorClass.TRANSIENT
