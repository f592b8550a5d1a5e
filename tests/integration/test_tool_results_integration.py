"""A tool result too long for its event: the `tool_completed` event carries it cut to the bound with
an `href`, and that address gives a member of the conversation the whole result (a viewer too: they
read the answers); anyone else, or a call of another conversation's run, is a 404 as for a random id."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from agents.services import run_claim_next, tool_call_finish, tool_call_start
from agents.tool_results import MAX_TOOL_RESULT_CHARS
from chat.models import Role
from tests.support import factories
from tests.support.ws import access_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("runner", "fast_password_hashing")]


def as_user(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token(user)}")
    return client


def test_a_truncated_result_is_read_whole_at_its_href_by_members_only(make_user: Any) -> None:
    owner, viewer, outsider = make_user(), make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((viewer, Role.VIEWER),), agent_mode="always")
    other = factories.conversation_sync(outsider)
    sent = factories.message_sync(conv, owner, "search everything")
    claimed = run_claim_next(worker_id="results:1")
    assert claimed is not None
    run_id = claimed.run_id
    tool_call_start(run_id=run_id, conversation_id=conv, call_id="call_big", tool="search_history", arguments={})
    result = {"matches": [{"text": f"match {i} " + "w" * 400} for i in range(20)]}

    completed = tool_call_finish(run_id=run_id, conversation_id=conv, call_id="call_big", ok=True, result=result)

    cut = completed.data["result"]
    assert cut["truncated"] is True
    assert len(json.dumps(cut)) <= MAX_TOOL_RESULT_CHARS
    whole = {
        "run_id": run_id,
        "call_id": "call_big",
        "tool": "search_history",
        "ok": True,
        "result": result,
        "duration_ms": completed.data["duration_ms"],
    }
    for member in (owner, viewer):
        answer = as_user(member).get(cut["href"])
        assert answer.status_code == 200, answer.content
        assert answer.json() == whole

    missing = as_user(outsider).get(f"/api/conversations/{conv}/runs/{run_id}/tool-calls/call_nope/result/")
    assert missing.status_code == 404
    for path in (
        cut["href"],  # their conversation: not a member
        f"/api/conversations/{other}/runs/{run_id}/tool-calls/call_big/result/",  # through one's own
        f"/api/conversations/{other}/runs/not-a-run/tool-calls/call_big/result/",
    ):
        refused = as_user(outsider).get(path)
        assert refused.status_code == 404, path
        assert "match 0" not in refused.content.decode()
    unknown_call = as_user(owner).get(f"/api/conversations/{conv}/runs/{run_id}/tool-calls/call_nope/result/")
    assert unknown_call.status_code == 404
    assert sent.run_id == run_id
