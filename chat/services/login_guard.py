"""The login guard: failed password logins and forged refresh tokens are counted per key in PostgreSQL,
and a key that fails too often is locked, longer each time (docs/operations.md "Login attempts").

Keys (settings.CHAT_LOGIN_GUARD has each scope's numbers):
- user_ip: one username from one address. The fast lock; only the guessing address pays for it.
- user: one username from any address, against a slow guess spread over many addresses. Its threshold
  is higher and its longest lock shorter: anyone can lock an account's *password* logins this way, so a
  stranger needs many tries to do it and the lock they cause does not last. The account's sessions and
  tokens keep working (refresh is not refused by it), and staff can clear a lock in the admin.
- ip: any username from one address (password spraying).
- token_ip: forged or malformed refresh tokens from one address.

Every attempt is counted before the password is checked (`admit`) and given back if it passed
(`record`), so parallel guesses cannot all slip in under the limit while the first ones are still
being hashed. The record lives in the database every login needs anyway: when it cannot be read the
login fails, it never goes unguarded.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import ImproperlyConfigured, PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from chat.infra.rate_limiter import client_ip
from chat.models import LoginLockout, User

Scope = LoginLockout.Scope
Key = tuple[str, str, str]  # (scope, username, address)

# The request attribute a refusal is left on, for the page or endpoint to answer it (429, Retry-After).
REFUSAL_ATTR = "login_refusal"


@dataclass(frozen=True)
class Rule:
    failures: int
    window: timedelta
    first_lock_s: float
    longest_lock_s: float

    def lock_for(self, lockouts_before: int) -> timedelta:
        """The first lock, doubled for each earlier lock of the key, never beyond the longest."""
        return timedelta(seconds=min(self.first_lock_s * 2 ** min(lockouts_before, 32), self.longest_lock_s))


def rule(scope: str) -> Rule:
    raw = settings.CHAT_LOGIN_GUARD.get(scope)
    shape = f"CHAT_LOGIN_GUARD[{scope!r}] = {raw!r}: need [failures >= 1, window s > 0, 0 < first lock s <= longest]"
    try:
        failures, window_s, first_s, longest_s = (float(x) for x in raw or ())
    except (TypeError, ValueError):
        raise ImproperlyConfigured(shape) from None
    if failures < 1 or failures != int(failures) or window_s <= 0 or not 0 < first_s <= longest_s:
        raise ImproperlyConfigured(shape)
    return Rule(int(failures), timedelta(seconds=window_s), first_s, longest_s)


@dataclass(frozen=True)
class Refusal:
    retry_after_s: int
    scope: str  # a LoginLockout scope, or "window" for the per-address rate of the endpoint

    @property
    def message(self) -> str:
        if self.scope in (Scope.USER_IP, Scope.USER):
            return f"Too many failed login attempts for this account; try again in {self.retry_after_s} s."
        if self.scope == "window":
            return f"Too many login attempts from your address; try again in {self.retry_after_s} s."
        return f"Too many failed login attempts from your address; try again in {self.retry_after_s} s."


def refusal_for(wait: timedelta | float, scope: str) -> Refusal:
    seconds = wait.total_seconds() if isinstance(wait, timedelta) else wait
    return Refusal(max(1, math.ceil(seconds)), scope)


@dataclass(frozen=True)
class Attempt:
    keys: tuple[Key, ...]


def address(ip: str) -> str:
    """The address a key counts: an IPv6 client holds a whole /64, so that is what one address is."""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def password_keys(username: str, ip: str) -> tuple[Key, ...]:
    # Casefolded: "Alice" and "alice" share a count, so case games buy a guesser nothing.
    name, where = username.casefold()[:150], address(ip)
    return ((Scope.USER_IP, name, where), (Scope.USER, name, ""), (Scope.IP, "", where))


def token_keys(ip: str) -> tuple[Key, ...]:
    return ((Scope.TOKEN_IP, "", address(ip)),)


def _rows(keys: tuple[Key, ...], now: datetime, *, create: bool) -> list[LoginLockout]:
    """The keys' rows, locked for this transaction, always in one order (no deadlock between two
    attempts sharing keys)."""
    ordered = sorted(set(keys))
    if create:
        LoginLockout.objects.bulk_create(
            [LoginLockout(scope=s, username=u, ip=a, window_started_at=now, updated_at=now) for s, u, a in ordered],
            ignore_conflicts=True,
        )
    match = Q()
    for s, u, a in ordered:
        match |= Q(scope=s, username=u, ip=a)
    return list(LoginLockout.objects.select_for_update().filter(match).order_by("scope", "username", "ip"))


def admit(keys: tuple[Key, ...]) -> Attempt | Refusal:
    """Count one attempt on every key, or refuse it (counting nothing) while any key is locked or
    its budget is taken by attempts still being checked."""
    now = timezone.now()
    with transaction.atomic():
        rows = _rows(keys, now, create=True)
        locked = [(row.locked_until - now, row.scope) for row in rows if row.locked_until and row.locked_until > now]
        if locked:
            return refusal_for(*max(locked))
        for row in rows:
            if now - row.window_started_at >= rule(row.scope).window:
                row.failures, row.window_started_at = 0, now
        busy = [row.scope for row in rows if row.failures >= rule(row.scope).failures]
        if busy:
            return refusal_for(1, busy[0])  # the attempts in flight decide within a second
        for row in rows:
            row.failures += 1
            row.updated_at = now
            row.save(update_fields=["failures", "window_started_at", "updated_at"])
    return Attempt(keys)


def record(attempt: Attempt, *, failed: bool) -> Refusal | None:
    """The attempt's outcome. A failure stays counted, and the one that reaches a key's limit locks
    it (returned, so the answer can already say so); anything else gives its count back, and a
    success from an address ends that address's count for the username."""
    now = timezone.now()
    locks: list[tuple[timedelta, str]] = []
    with transaction.atomic():
        for row in _rows(attempt.keys, now, create=False):
            if failed:
                limits = rule(row.scope)
                if row.failures >= limits.failures and not (row.locked_until and row.locked_until > now):
                    wait = limits.lock_for(row.lockouts)
                    row.locked_until, row.lockouts = now + wait, row.lockouts + 1
                    row.failures, row.window_started_at = 0, now
                    locks.append((wait, row.scope))
                row.updated_at = now
                row.save()
            elif row.scope == Scope.USER_IP:
                row.delete()
            else:
                row.failures = max(0, row.failures - 1)
                if row.failures == 0 and row.lockouts == 0 and row.locked_until is None:
                    row.delete()  # nothing left to remember
                else:
                    row.save(update_fields=["failures"])
        if failed:
            _forget_stale(now)
    return refusal_for(*max(locks)) if locks else None


def _forget_stale(now: datetime) -> None:
    """Keys quiet for CHAT_LOGIN_GUARD_FORGET_S start over (their lock no longer doubles), and the
    table only holds what someone is doing now."""
    cutoff = now - timedelta(seconds=settings.CHAT_LOGIN_GUARD_FORGET_S)
    LoginLockout.objects.filter(updated_at__lt=cutoff).exclude(locked_until__gt=now).delete()


def clear(*, ids: list[int]) -> int:
    """Staff clear keys (the admin action): their failures, lock and doubling are forgotten."""
    deleted, _ = LoginLockout.objects.filter(id__in=ids).delete()
    return deleted


# --- requests --------------------------------------------------------------------------------------


def refuse(request: Any, refusal: Refusal) -> None:
    setattr(request, REFUSAL_ATTR, refusal)


def refusal_of(request: Any) -> Refusal | None:
    refusal = getattr(request, REFUSAL_ATTR, None)
    return refusal if isinstance(refusal, Refusal) else None


def refusal_error(request: Any) -> ValidationError | None:
    """The login form's error when the guard refused (instead of "wrong username or password")."""
    refusal = refusal_of(request)
    return ValidationError(refusal.message, code="locked") if refusal else None


class GuardedModelBackend(ModelBackend):
    """Django's username/password backend behind the guard. Every password check made for a request
    (the login page, the admin's login, the token endpoint) passes here; a locked key is refused before
    the password is looked at, so the right password does not open a locked account either.

    Settings list Django's own ModelBackend after this one, only so sessions opened under its name stay
    valid (Django checks a session's backend against the list). It must never check a password itself:
    this backend ends every password check it makes with a user or PermissionDenied, which stops
    Django's authenticate() from asking the next backend."""

    def authenticate(
        self, request: Any, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> User | None:
        if username is None:
            username = kwargs.get(User.USERNAME_FIELD)
        if username is None or password is None:
            return None  # not a password check
        if request is None:
            # Server-side callers (a shell, the test client's login) have no address and guess nothing.
            return self._checked(super().authenticate(request, username=username, password=password, **kwargs))
        if refusal_of(request) is not None:
            raise PermissionDenied  # the page already refused it (its per-address window)
        admission = admit(password_keys(str(username), client_ip(request.META)))
        if isinstance(admission, Refusal):
            refuse(request, admission)
            raise PermissionDenied
        user = None
        try:
            user = super().authenticate(request, username=username, password=password, **kwargs)
        finally:
            lock = record(admission, failed=user is None)
        if lock is not None:
            refuse(request, lock)
        return self._checked(user)

    @staticmethod
    def _checked(user: Any) -> User:
        if user is None:
            raise PermissionDenied  # a wrong password: no other backend gets another look
        return user  # type: ignore[no-any-return]
