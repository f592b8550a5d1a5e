"""What rides the channel layer, typed: the doorbells and their addresses (groups and the agent
worker's channel). Senders (the bus) and receivers (the broadcast manager, the agent worker) share
these names; only the bus sends."""

from __future__ import annotations

from typing import Literal, NotRequired, Protocol, TypedDict

# The channel the agent worker listens on for run doorbells.
AGENT_RUNS_CHANNEL = "agent-runs"


class EventDoorbell(TypedDict):
    """A durable event committed: `frame` rides along when small, else receivers read the buffer/log."""

    type: Literal["conv.event"]
    conversation: str
    seq: int
    frame: NotRequired[str]


class EphemeralDoorbell(TypedDict):
    """Typing, read or presence: the frame itself, not to be echoed to `exclude_session`."""

    type: Literal["conv.ephemeral"]
    conversation: str
    frame: str
    exclude_session: str | None


UserAction = Literal["close", "revoke", "role", "notification", "frame"]


class UserMessage(TypedDict):
    """What every socket of one user must hear: close (with `code`), revoke or role (with
    `conversation`, and `role`), a stored notification's `frame`, or a `frame` for the user's own
    sockets subscribed to `conversation` but `exclude_session` (a draft saved on another device)."""

    action: UserAction
    code: NotRequired[int]
    # A close for a revocation (password change, log out everywhere, deactivation, deletion): each socket
    # closes only if its own identity no longer stands. Delivery is not ordered with new logins, so the
    # close can reach a socket opened after the change with a token of the new state.
    recheck: NotRequired[bool]
    conversation: NotRequired[str]
    role: NotRequired[str]
    frame: NotRequired[str]
    exclude_session: NotRequired[str]


class UserDoorbell(UserMessage):
    type: Literal["user.event"]
    user: int


class RunDoorbell(TypedDict):
    """For the agent worker: look at the queue (run.wake), or stop `run_id` (run.cancel)."""

    type: Literal["run.wake", "run.cancel"]
    run_id: NotRequired[str]


class LocalRunner(Protocol):
    def wake(self) -> None: ...

    def cancel(self, run_id: str) -> bool: ...


def conversation_group(conversation_id: str) -> str:
    return f"conv.{conversation_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"
