"""Which local account an SSO identity logs in as (docs/operations.md "Single sign-on").

An identity is matched by its verified e-mail address only, case-insensitively. Two local accounts with that
address are ambiguous and refused (picking one could hand someone else's account over); a staff or superuser
account is refused unless OIDC_ALLOW_STAFF_LOGIN is on, so an identity provider cannot mint staff logins.
With no account, one is created, and joins the workspace of its e-mail domain (OIDC_WORKSPACE_DOMAINS).

Two first logins of one address at once must create one account, not two: the match-or-create runs under a
transaction-scoped PostgreSQL advisory lock on the address, so the second waits and then finds the first's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, connection, transaction

from chat.models import Role, User, Workspace, WorkspaceMember
from chat.services.conversations import personal_workspace_for

# Advisory-lock namespace (the first key of pg_advisory_xact_lock(int, int)) so our locks never meet another
# feature's: "SSO" in ASCII.
LOCK_NAMESPACE = 0x53534F
# Usernames are how people mention each other (`@name`), so they are made of word characters.
USERNAME_BASE_MAX = 30
USERNAME_ATTEMPTS = 20


class SsoRefused(Exception):
    """An SSO login refused; `reason` is a short code for the audit log and the logs (never a token)."""

    def __init__(self, reason: str, email: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.email = email


@dataclass(frozen=True)
class Matched:
    user: User
    created: bool
    workspace_id: str | None  # the domain's workspace (OIDC_WORKSPACE_DOMAINS), whether or not it was joined


def domain_workspace_id(email: str) -> str | None:
    """The workspace configured for the address's domain, if any."""
    domain = email.rpartition("@")[2].lower()
    return settings.OIDC_WORKSPACE_DOMAINS.get(domain)


def match_or_create(email: str) -> Matched:
    """The one active, non-staff local account with this (verified) address, or a new one; SsoRefused with
    `ambiguous_email`, `staff_account` or `inactive_account` otherwise."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [LOCK_NAMESPACE, email.lower()])
        found = list(User.objects.filter(email__iexact=email).order_by("id")[:2])
        workspace_id = domain_workspace_id(email)
        if len(found) > 1:
            raise SsoRefused("ambiguous_email", email)
        if found:
            user = found[0]
            if (user.is_staff or user.is_superuser) and not settings.OIDC_ALLOW_STAFF_LOGIN:
                raise SsoRefused("staff_account", email)
            if not user.is_active:
                raise SsoRefused("inactive_account", email)
            return Matched(user, False, workspace_id)
        user = _create(email)
        personal_workspace_for(user=user)
        if workspace_id is not None and Workspace.objects.filter(id=workspace_id).exists():
            WorkspaceMember.objects.get_or_create(workspace_id=workspace_id, user=user, defaults={"role": Role.MEMBER})
        return Matched(user, True, workspace_id)


def _create(email: str) -> User:
    """A new account with no usable password (it logs in through SSO only) and a username made from the
    address's local part, numbered when taken. Another address with the same local part may be creating the
    same name at this moment (its lock is another one): the unique constraint decides, and we try the next."""
    base = re.sub(r"\W", "_", email.partition("@")[0], flags=re.ASCII).strip("_")[:USERNAME_BASE_MAX] or "user"
    number = 1
    for _ in range(USERNAME_ATTEMPTS):
        while User.objects.filter(username__iexact=_numbered(base, number)).exists():
            number += 1
        user = User(username=_numbered(base, number), email=email)
        user.set_unusable_password()
        try:
            with transaction.atomic():
                user.save()
        except IntegrityError:
            number += 1
            continue
        return user
    raise SsoRefused("username_unavailable", email)


def _numbered(base: str, number: int) -> str:
    return base if number == 1 else f"{base}{number}"
