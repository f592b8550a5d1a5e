"""A server process going down (SIGTERM: a deploy, `serve` stopping) closes its sockets with 1012 ("service
restart") only after each has written the frames it had queued, so nothing a client was about to receive is
dropped on the way out; the client resumes on another process from the last seq it holds (docs/protocol.md
§2). chatsite/uvicorn_server.py calls this once the process stopped accepting, before uvicorn closes what is
left."""

from __future__ import annotations

import asyncio

from chat.realtime.broadcast_manager import current_hub
from chat.realtime.outbox import Outbox


async def drain_sockets(*, code: int, timeout_s: float) -> int:
    """Ask every authenticated socket of this process to write what it has queued and close with `code`;
    wait for that for at most `timeout_s`. Returns how many had not closed by then (uvicorn closes those).
    A socket that never authenticated has nothing queued: uvicorn closes it. An AG-UI stream listening
    here ends at the same message."""
    hub = current_hub()
    if hub is None:
        return 0
    message = {"action": "close", "code": code, "drain": True}
    sinks = {sink for sinks in hub.users.values() for sink in sinks}
    for sink in sinks:
        sink.deliver_user(message)
    outboxes = [sink for sink in sinks if isinstance(sink, Outbox)]
    if not outboxes:
        return 0
    waits = [asyncio.create_task(outbox.drained.wait()) for outbox in outboxes]
    _, pending = await asyncio.wait(waits, timeout=timeout_s)
    for task in pending:
        task.cancel()
    return len(pending)
