"""The priority lane: which queued agent run a runner claims next (docs/protocol.md §12).

Order. Each conversation offers its oldest queued run (its head: runs of one conversation start in the
order they were queued, one at a time, as before) unless a run of it is in progress. Heads are claimed by
their *due* time, `created_at + AGENT_PRIORITY_MAX_WAIT_S[tier]`, the tier being the requester's (now,
not when the run was queued; an unknown tier, or no requester, counts as free), oldest `created_at` first
on a tie. With the defaults (enterprise 0 s, pro 10 s, free 60 s) an enterprise run goes before the pro
and free runs queued up to 10 and 60 seconds before it: enterprise before pro before free.

Bound (ageing). Due times are fixed when a run is queued, and every tier's max wait is >= 0, so a run
queued at t with max wait W is claimed before every run queued after t + W, whatever its tier. Once it
has waited W it is in a plain first-come queue: it waits only for the runs due before it (already queued
then) and for its own conversation's run in progress. A free run's wait under any steady enterprise load
is thus at most W_free plus the time to drain what was queued before t + W_free; it cannot starve.

Reserved capacity. AGENT_RESERVED_SLOTS keeps a runner's last free slots for a tier and the tiers above
it: a run is claimed into a slot only if more slots are free than are reserved for the tiers above its
own (`claimable_tiers`). The claim re-checks the head's tier under the conversation's lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Case, DateTimeField, DurationField, Exists, ExpressionWrapper, F, OuterRef, Value, When

from agents.models import AgentRun, RunStatus
from chat.models import Tier, User

# Highest first: the order reservations are counted in (the tiers above a tier may use its slots).
RANKED_TIERS = (Tier.ENTERPRISE.value, Tier.PRO.value, Tier.FREE.value)
# Conversations looked at per claim: more than a runner's free slots, so a few heads that lost their
# race (claimed by another runner meanwhile) do not end a claim round early.
CANDIDATES = 50


def max_wait(tier: str) -> timedelta:
    """The longest a run of `tier` is passed over by runs queued after it (unknown tiers: free's)."""
    waits: dict[str, float] = settings.AGENT_PRIORITY_MAX_WAIT_S
    return timedelta(seconds=float(waits.get(tier, waits.get(Tier.FREE.value, 0.0))))


def lane(tier: str | None) -> str:
    """The tier a run is queued as: its requester's, or free for an unknown tier or no requester."""
    return tier if tier in RANKED_TIERS else Tier.FREE.value


def claim_order(*, busy: Any, tiers: Collection[str] | None = None) -> list[uuid.UUID]:
    """The conversations to try, in the order their head runs are due. `busy`: a subquery of the
    conversation ids with a run in progress. `tiers`: only heads of these tiers (None: any)."""
    earlier = AgentRun.objects.filter(
        conversation_id=OuterRef("conversation_id"), status=RunStatus.QUEUED, created_at__lt=OuterRef("created_at")
    )
    tier_of = Case(
        *[When(requested_by__tier=tier, then=Value(tier)) for tier in RANKED_TIERS], default=Value(Tier.FREE.value)
    )
    wait_of = Case(
        *[When(requested_by__tier=tier, then=Value(max_wait(tier))) for tier in RANKED_TIERS],
        default=Value(max_wait(Tier.FREE.value)),
        output_field=DurationField(),
    )
    heads = (
        AgentRun.objects.filter(status=RunStatus.QUEUED)
        .exclude(conversation_id__in=busy)
        .exclude(Exists(earlier))
        .annotate(lane=tier_of, due=ExpressionWrapper(F("created_at") + wait_of, output_field=DateTimeField()))
    )
    if tiers is not None:
        heads = heads.filter(lane__in=list(tiers))
    ordered = heads.order_by("due", "created_at").values_list("conversation_id", flat=True)[:CANDIDATES]
    return list(dict.fromkeys(ordered))  # two heads queued at the same instant: the conversation once


def may_take(requested_by_id: int | None, tiers: Collection[str] | None) -> bool:
    """Whether a run of this requester may be claimed into a slot open to `tiers` (None: any)."""
    if tiers is None:
        return True
    if requested_by_id is None:
        return Tier.FREE.value in tiers
    tier = User.objects.filter(id=requested_by_id).values_list("tier", flat=True).first()
    return lane(tier) in tiers


def claimable_tiers(free_slots: int) -> frozenset[str] | None:
    """The tiers whose runs may take one of a runner's `free_slots` (None: any tier's). A tier may
    while more slots are free than AGENT_RESERVED_SLOTS keeps for the tiers above it."""
    reserved: dict[str, int] = settings.AGENT_RESERVED_SLOTS
    allowed = frozenset(
        tier
        for rank, tier in enumerate(RANKED_TIERS)
        if free_slots > sum(int(reserved.get(above, 0)) for above in RANKED_TIERS[:rank])
    )
    return None if len(allowed) == len(RANKED_TIERS) else allowed
