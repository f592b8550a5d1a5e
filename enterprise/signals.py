"""The audit log's taps on changes that no service of ours makes (docs/operations.md "Audit log"):
staff logins (Django's user_logged_in), tier changes (a user saved with another tier: the admin's form,
the shell) and every admin action (Django's admin LogEntry, copied). Connected in EnterpriseConfig.ready().
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.signals import user_logged_in
from django.db.models.signals import post_save, pre_save
from django.http import HttpRequest

from chat.infra.client_address import meta_client_ip
from chat.models import User
from enterprise.audit import audit_record

ADMIN_ACTIONS = {ADDITION: "admin.added", CHANGE: "admin.changed", DELETION: "admin.deleted"}


def staff_logged_in(sender: Any, request: HttpRequest | None, user: User, **kwargs: Any) -> None:
    """A staff member logged in (site or admin login page): who, and from which address."""
    if not user.is_staff:
        return
    ip = meta_client_ip(request.META) if request is not None else None
    audit_record("staff.login", user, target=user.username, data={"superuser": user.is_superuser}, ip=ip)


def tier_remembered(sender: Any, instance: User, update_fields: Any = None, **kwargs: Any) -> None:
    """Before a user is saved: their stored tier, to compare with after the save. A save that names
    its fields without `tier` (last_login on every login) is not a tier change and costs no read."""
    if instance.pk is None or (update_fields is not None and "tier" not in update_fields):
        return
    instance.__dict__["_audit_tier_before"] = User.objects.filter(pk=instance.pk).values_list("tier", flat=True).first()


def tier_changed(sender: Any, instance: User, created: bool, **kwargs: Any) -> None:
    """After a user is saved: an entry when their tier changed. The actor is not known here; a change
    made in the admin is also recorded as the admin action, with who made it."""
    before = instance.__dict__.pop("_audit_tier_before", None)
    if created or before is None or before == instance.tier:
        return
    audit_record(
        "user.tier_changed",
        None,
        target=instance.username,
        data={"user_id": instance.pk, "from": before, "to": instance.tier},
    )


def admin_action(sender: Any, instance: LogEntry, created: bool, **kwargs: Any) -> None:
    """Every change staff make in the admin, copied from its own log (which the admin writes in the
    change's transaction)."""
    if not created:
        return
    content_type = instance.content_type
    object_id = "" if instance.object_id is None else str(instance.object_id)  # the object's pk, maybe a UUID
    model = f"{content_type.app_label}.{content_type.model}" if content_type is not None else ""
    audit_record(
        ADMIN_ACTIONS.get(instance.action_flag, "admin.action"),
        instance.user_id,
        target=f"{model}:{object_id} {instance.object_repr}"[:200],
        data={"model": model, "object_id": object_id, "change": instance.get_change_message()},
    )


def connect() -> None:
    user_logged_in.connect(staff_logged_in, dispatch_uid="enterprise.audit.staff_login")
    pre_save.connect(tier_remembered, sender=User, dispatch_uid="enterprise.audit.tier_before")
    post_save.connect(tier_changed, sender=User, dispatch_uid="enterprise.audit.tier_after")
    post_save.connect(admin_action, sender=LogEntry, dispatch_uid="enterprise.audit.admin_action")
