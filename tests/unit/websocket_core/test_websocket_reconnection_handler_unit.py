"""The server's side of reconnection (chat/realtime/reconnection_handler.py): where a resumed
subscription's stream starts, and that the missed events come from the hot buffer when it holds
all of them and from the log otherwise — exactly the missed range, oldest first, nothing twice.
(The Python client's backoff and resume are tested in tests/unit/test_chatclient_unit.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async

from chat.infra.message_buffer import conversation_stream, get_buffer
from chat.realtime.reconnection_handler import Resume, load_events, log_heads, resume_from
from chat.services.conversations import conversation_create
from chat.services.messages import message_send
from monitoring.metrics import metrics


@pytest.mark.parametrize(
    ("head", "since", "limit", "expected"),
    [
        (10, None, 500, Resume(10, None)),  # a fresh subscribe: live from the head, nothing replayed
        (10, 4, 500, Resume(4, True)),  # six missed: all replayed
        (10, 10, 500, Resume(10, True)),  # nothing missed
        (10, 0, 10, Resume(0, True)),  # exactly the limit is still recovered
        (11, 0, 10, Resume(11, False)),  # one more than the limit: reload history instead
        (5, 9, 500, Resume(5, True)),  # a cursor ahead of the head starts at the head
        (0, 0, 0, Resume(0, True)),
    ],
)
def test_resume_from(head: int, since: int | None, limit: int, expected: Resume) -> None:
    assert resume_from(head_seq=head, since_seq=since, replay_limit=limit) == expected


async def _conversation_with_messages(make_user: Any, count: int) -> str:
    user = await sync_to_async(make_user)()
    created = await sync_to_async(conversation_create)(creator=user, title="resume", agent="")
    conversation_id = str(created.conversation.id)
    for i in range(count):
        await sync_to_async(message_send)(
            conversation_id=conversation_id,
            author_id=user.id,
            username=user.username,
            client_msg_id=f"k{i}",
            text=f"missed {i}",
            can_write=True,
        )
    return conversation_id


@pytest.mark.django_db(transaction=True)
async def test_missed_events_come_from_the_buffer_when_it_has_them(make_user: Any) -> None:
    conversation_id = await _conversation_with_messages(make_user, 6)
    # The service published each message after commit: the buffer holds all six.
    before = metrics.counter("replays", source="buffer")
    rows = await load_events(conversation_id, 2, 6)
    assert [seq for seq, _ in rows] == [3, 4, 5, 6]
    assert all(f'"seq":{seq}' in frame and f"missed {seq - 1}" in frame for seq, frame in rows)
    assert metrics.counter("replays", source="buffer") == before + 1


@pytest.mark.django_db(transaction=True)
async def test_missed_events_come_from_the_log_when_the_buffer_lost_them(make_user: Any) -> None:
    conversation_id = await _conversation_with_messages(make_user, 5)
    buffer: Any = get_buffer()
    await buffer._redis().delete(buffer.key(conversation_stream(conversation_id)))
    before = metrics.counter("replays", source="log")
    rows = await load_events(conversation_id, 0, 5)
    assert [seq for seq, _ in rows] == [1, 2, 3, 4, 5]
    assert metrics.counter("replays", source="log") == before + 1


@pytest.mark.django_db(transaction=True)
async def test_log_heads_in_the_order_asked(make_user: Any) -> None:
    first = await _conversation_with_messages(make_user, 3)
    second = await _conversation_with_messages(make_user, 1)
    gone = "00000000-0000-0000-0000-000000000000"
    assert await log_heads([second, gone, first]) == [1, 0, 3]
