"""Notification preferences (docs/protocol.md §9): the kinds and their defaults, the settings a user
reads and changes through `GET`/`PATCH /api/me/notification-settings/`, and the routing decision
every new notification goes through.

Everything a client sends is validated whole before anything is stored: an unknown kind or field, a
value of the wrong type, a time that is not `HH:MM`, a time zone the tz database does not know or a
conversation the caller is not a member of is a `bad_request` naming the field, and nothing changes.
"""

from __future__ import annotations

import re
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import cache
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from chat.errors import ServiceError
from chat.models import ConversationMember, ConversationNotificationLevel, NotificationSettings
from chat.wire.frames import rfc3339

Level = ConversationNotificationLevel.Level

# Each kind's priority. `urgent` ones are never held by quiet hours or `muted_until`.
PRIORITIES: dict[str, str] = {
    "mention": "normal",
    "agent_finished": "normal",
    "approval_requested": "urgent",  # a run is waiting on a person, and the request expires
    "added_to_conversation": "normal",
    "role_changed": "low",
    "test": "urgent",  # the settings page's "test push": it must show even during quiet hours
    "webhook_disabled": "normal",  # to a workspace's owners: its webhook endpoint stopped after days of failures
}
CHANNELS = ("in_app", "push", "email")
# The channels each kind starts with; a user's settings store only what differs.
DEFAULTS: dict[str, dict[str, bool]] = {
    "mention": {"in_app": True, "push": True, "email": True},
    "agent_finished": {"in_app": True, "push": True, "email": False},
    "approval_requested": {"in_app": True, "push": True, "email": True},
    "added_to_conversation": {"in_app": True, "push": False, "email": True},
    "role_changed": {"in_app": True, "push": False, "email": False},
    "webhook_disabled": {"in_app": True, "push": False, "email": True},
}
# Not a setting: the test push always goes to push (and shows in the list, so a user sees it worked).
FIXED: dict[str, dict[str, bool]] = {"test": {"in_app": True, "push": True, "email": False}}
# What a conversation at `mentions` still lets through: being addressed, and being asked to decide.
MENTIONS_LEVEL_KINDS = frozenset({"mention", "approval_requested"})
# Limits on one PATCH (docs/protocol.md §9): a body with more conversations is refused, not cut.
MAX_CONVERSATIONS_PER_PATCH = 500
MAX_MUTE = timedelta(days=366)
HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def bad(message: str) -> ServiceError:
    return ServiceError("bad_request", message)


# --- routing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    push: bool
    email: bool


def routes_for(*, user_ids: list[int], kind: str, conversation_id: str | None) -> dict[int, Route | None]:
    """For each user: None when the notification must not be created at all (the conversation is at
    `none`, or at `mentions` and the kind is not one of those, or in_app is off for the kind), else
    the channels it goes to besides in-app. Two queries whatever the number of users."""
    if kind not in PRIORITIES:
        raise ValueError(f"unknown notification kind {kind!r}")
    levels: dict[int, str] = {}
    if conversation_id is not None:
        levels = dict(
            ConversationNotificationLevel.objects.filter(
                conversation_id=conversation_id, user_id__in=user_ids
            ).values_list("user_id", "level")
        )
    overrides = dict(NotificationSettings.objects.filter(user_id__in=user_ids).values_list("user_id", "kinds"))
    routes: dict[int, Route | None] = {}
    for user_id in user_ids:
        level = levels.get(user_id, Level.ALL)
        channels = FIXED.get(kind) or {**DEFAULTS[kind], **(overrides.get(user_id) or {}).get(kind, {})}
        if level == Level.NONE or (level == Level.MENTIONS and kind not in MENTIONS_LEVEL_KINDS):
            routes[user_id] = None
        elif not channels["in_app"]:
            routes[user_id] = None
        else:
            routes[user_id] = Route(push=channels["push"], email=channels["email"])
    return routes


# --- quiet hours and muting -----------------------------------------------------------------------------


def held_until(row: NotificationSettings | None, now: datetime) -> datetime | None:
    """When push and email may go out again if `now` falls in the user's quiet hours (in their own
    time zone, spanning midnight when start > end) or before `muted_until`; None when not held.
    Callers never ask this for an `urgent` notification."""
    if row is None:
        return None
    until = row.muted_until if row.muted_until is not None and row.muted_until > now else None
    if row.quiet_start is not None and row.quiet_end is not None and row.quiet_timezone:
        quiet_end = _quiet_end(row.quiet_start, row.quiet_end, zoneinfo.ZoneInfo(row.quiet_timezone), now)
        if quiet_end is not None:
            until = max(until, quiet_end) if until is not None else quiet_end
    return until


def _quiet_end(start: time, end: time, zone: zoneinfo.ZoneInfo, now: datetime) -> datetime | None:
    local = now.astimezone(zone)
    t = local.time().replace(tzinfo=None)
    if start < end:
        inside = start <= t < end
    else:  # spans midnight: 22:00-07:00 is 22:00..24:00 and 00:00..07:00
        inside = t >= start or t < end
    if not inside:
        return None
    day = local.date() if t < end else local.date() + timedelta(days=1)
    # fold/gaps: a wall time skipped or repeated by a DST change resolves as zoneinfo does (fold=0).
    return datetime.combine(day, end, tzinfo=zone).astimezone(UTC)


# --- reading and changing the settings ---------------------------------------------------------------------


def settings_get(*, user_id: int) -> dict[str, Any]:
    """The caller's settings as docs/protocol.md §9 shows them: every kind with its effective
    channels, the conversations set to other than `all` (the caller's current ones only)."""
    row = NotificationSettings.objects.filter(user_id=user_id).first()
    overrides = row.kinds if row is not None else {}
    kinds = {kind: {**channels, **overrides.get(kind, {})} for kind, channels in DEFAULTS.items()}
    levels = ConversationNotificationLevel.objects.filter(
        user_id=user_id, conversation__memberships__user_id=user_id
    ).values_list("conversation_id", "level")
    quiet = None
    if row is not None and row.quiet_start is not None and row.quiet_end is not None:
        quiet = {
            "start": row.quiet_start.strftime("%H:%M"),
            "end": row.quiet_end.strftime("%H:%M"),
            "timezone": row.quiet_timezone,
        }
    muted = row.muted_until if row is not None else None
    return {
        "kinds": kinds,
        "conversations": {str(conv): level for conv, level in sorted(levels, key=lambda r: str(r[0]))},
        "quiet_hours": quiet,
        "muted_until": rfc3339(muted) if muted is not None else None,
    }


@transaction.atomic
def settings_update(*, user_id: int, body: object, now: datetime | None = None) -> dict[str, Any]:
    """Apply a PATCH: only the keys present change; `kinds` merge channel by channel, `conversations`
    level by level (`all` removes the conversation's row). Validated whole first, so a bad value
    anywhere changes nothing."""
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    unknown = set(body) - {"kinds", "conversations", "quiet_hours", "muted_until"}
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    kinds = _valid_kinds(body["kinds"]) if "kinds" in body else None
    levels = _valid_levels(user_id, body["conversations"]) if "conversations" in body else None
    quiet = _valid_quiet(body["quiet_hours"]) if "quiet_hours" in body else None
    muted = _valid_muted(body["muted_until"], now or timezone.now()) if "muted_until" in body else None
    row, _ = NotificationSettings.objects.select_for_update().get_or_create(user_id=user_id)
    if kinds is not None:
        merged = {kind: dict(row.kinds.get(kind, {})) for kind in DEFAULTS}
        for kind, channels in kinds.items():
            merged[kind].update(channels)
        # Stored: only what differs from the defaults, so a changed default reaches everyone else.
        row.kinds = {
            kind: diff
            for kind, channels in merged.items()
            if (diff := {c: v for c, v in channels.items() if DEFAULTS[kind][c] != v})
        }
    if "quiet_hours" in body:
        row.quiet_start, row.quiet_end, row.quiet_timezone = quiet or (None, None, "")
    if "muted_until" in body:
        row.muted_until = muted
    row.save()
    if levels is not None:
        for conversation_id, level in levels.items():
            if level == Level.ALL:
                ConversationNotificationLevel.objects.filter(user_id=user_id, conversation_id=conversation_id).delete()
            else:
                ConversationNotificationLevel.objects.update_or_create(
                    user_id=user_id, conversation_id=conversation_id, defaults={"level": level}
                )
    return settings_get(user_id=user_id)


def _valid_kinds(value: object) -> dict[str, dict[str, bool]]:
    if not isinstance(value, dict):
        raise bad("kinds: expected an object of kind → channels")
    out: dict[str, dict[str, bool]] = {}
    for kind, channels in value.items():
        if kind not in DEFAULTS:
            raise bad(f"kinds: unknown kind {str(kind)[:64]!r} (known: {', '.join(DEFAULTS)})")
        if not isinstance(channels, dict):
            raise bad(f"kinds.{kind}: expected an object with in_app, push, email")
        for channel, on in channels.items():
            if channel not in CHANNELS:
                raise bad(f"kinds.{kind}: unknown channel {str(channel)[:64]!r} (known: {', '.join(CHANNELS)})")
            if not isinstance(on, bool):
                raise bad(f"kinds.{kind}.{channel}: expected true or false")
        out[kind] = dict(channels)
    return out


def _valid_levels(user_id: int, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise bad('conversations: expected an object of conversation id → "all", "mentions" or "none"')
    if len(value) > MAX_CONVERSATIONS_PER_PATCH:
        raise bad(f"conversations: at most {MAX_CONVERSATIONS_PER_PATCH} per request")
    for level in value.values():
        if level not in Level.values:
            raise bad('conversations: each level must be "all", "mentions" or "none"')
    # The caller's memberships decide, by the ids as stored: an id of a conversation that does not
    # exist and one of someone else's answer alike, and any spelling of a uuid is taken.
    mine = {
        str(c) for c in ConversationMember.objects.filter(user_id=user_id).values_list("conversation_id", flat=True)
    }
    out: dict[str, str] = {}
    for raw, level in value.items():
        canonical = _uuid_or_none(raw)
        if canonical is None or canonical not in mine:
            raise bad("conversations: an id that is not one of your conversations")
        out[canonical] = level
    return out


def _uuid_or_none(raw: object) -> str | None:
    try:
        return str(uuid.UUID(str(raw)))
    except ValueError:
        return None


def _valid_quiet(value: object) -> tuple[time, time, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"start", "end", "timezone"}:
        raise bad('quiet_hours: expected null or {"start": "HH:MM", "end": "HH:MM", "timezone": "<IANA name>"}')
    times = []
    for key in ("start", "end"):
        match = HHMM.match(value[key]) if isinstance(value[key], str) else None
        if match is None:
            raise bad(f"quiet_hours.{key}: expected a 24-hour time HH:MM (00:00 to 23:59)")
        times.append(time(int(match[1]), int(match[2])))
    if times[0] == times[1]:
        raise bad("quiet_hours: start and end must differ (an empty window; use muted_until to mute)")
    zone = value["timezone"]
    if not isinstance(zone, str) or zone not in _zones():
        raise bad("quiet_hours.timezone: not a time zone of the IANA database (e.g. Europe/Paris)")
    return times[0], times[1], zone


def _valid_muted(value: object, now: datetime) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = parse_datetime(value) if isinstance(value, str) else None
    except ValueError:  # well-formed but impossible, like month 13
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise bad("muted_until: expected null or an RFC 3339 time with its offset")
    if parsed - now > MAX_MUTE:
        raise bad(f"muted_until: at most {MAX_MUTE.days} days ahead")
    return parsed
