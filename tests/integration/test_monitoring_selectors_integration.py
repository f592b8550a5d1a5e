"""monitoring/selectors.py against the real PostgreSQL: /metrics' event counts are the log's rows
by type, counted from the log itself."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from agents.services import run_claim_next, run_complete, run_emit
from chat.models import Event
from monitoring.selectors import event_counts
from tests.support.factories import conversation_sync, message_sync

pytestmark = [pytest.mark.django_db]


def test_event_counts_are_the_logs_rows_by_type(make_user: Any) -> None:
    owner = make_user()
    before = Counter(event_counts())

    plain = conversation_sync(owner, agent="")
    message_sync(plain, owner, "one")
    message_sync(plain, owner, "two")
    assert event_counts() == dict(before + Counter({"message": 2}))

    with_agent = conversation_sync(owner)
    run_id = message_sync(with_agent, owner, "three").run_id
    claimed = run_claim_next(worker_id="selector-test")
    assert claimed is not None
    assert claimed.run_id == run_id
    for chunk in ("a", "b"):
        run_emit(run_id=run_id, conversation_id=with_agent, type="agent_delta", data={"text": chunk})
    run_complete(run_id=run_id, conversation_id=with_agent, text="ab", usage={})
    grown = before + Counter({"message": 3, "agent_started": 1, "agent_delta": 2, "agent_completed": 1})
    assert event_counts() == dict(grown)

    # A finished run's deltas compacted out of the log no longer count (and a type with no rows
    # left is absent, not zero).
    Event.objects.filter(run_id=run_id, type="agent_delta").delete()
    assert event_counts() == dict(grown - Counter({"agent_delta": 2}))
