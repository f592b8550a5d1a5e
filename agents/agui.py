"""Our durable run events as AG-UI events (docs/protocol.md "AG-UI"), with the `ag-ui-protocol` types.

One translator serves both the live stream (`POST /api/ag-ui/`) and the export of a finished run
(`GET /api/runs/{id}/ag-ui/`): both feed it the same stored events in seq order, so a run exported
after it ended reads exactly as it was streamed. It is pure (no I/O): the callers read the events.

Ids: AG-UI's `runId` is our run id and `threadId` our conversation id. Tool call ids are
`<run id>.<call id>` because our call ids ("call_1") are unique per run only and AG-UI wants them
unique in the thread; text message ids are `<run id>.m<n>`, one per stretch of answer text between
tool calls. Timestamps are the stored events' times in milliseconds since the epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from ag_ui.core import (
    PROTOCOL_VERSION,
    BaseEvent,
    CustomEvent,
    Interrupt,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunFinishedSuccessOutcome,
    RunStartedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)

# A thinking step's name is its text, cut to this many characters (frontends show step names).
STEP_NAME_MAX_CHARS = 200
# The interrupt reason of a tool call waiting for a person's approval (docs/protocol.md §11).
APPROVAL_REASON = "tool_approval"


class InputProblem(ValueError):
    """A RunAgentInput this endpoint cannot run: the message says what to change."""


def user_prompt(body: RunAgentInput) -> tuple[str, str]:
    """(message id, text) of the input's last message, which must be the user's: its id is the
    send's idempotency key (`client_msg_id`), so a retried request starts nothing twice. Earlier
    messages are the caller's view of the thread; the stored conversation is what the agent reads."""
    if not body.messages:
        raise InputProblem("messages: at least one message is needed; the last one is sent")
    last = body.messages[-1]
    if last.role != "user":
        raise InputProblem(f"messages: the last message must have role 'user', not {last.role!r}")
    content: Any = last.content
    if isinstance(content, str):
        text = content
    else:
        kinds = {part.type for part in content}
        if kinds - {"text"}:
            raise InputProblem(f"messages: only text parts can be sent, not {sorted(kinds - {'text'})}")
        text = "".join(part.text for part in content)
    if not 1 <= len(last.id) <= 64:
        raise InputProblem("messages: the last message's id must be 1-64 characters (it is the idempotency key)")
    return last.id, text


@dataclass(frozen=True)
class ResumeAnswer:
    """A person's answer to an approval interrupt, as the socket's `approve` command takes it."""

    run_id: str
    call_id: str
    decision: Literal["approve", "reject"]
    arguments: dict[str, Any] | None


def resume_answer(body: RunAgentInput) -> ResumeAnswer:
    """The input's one `resume` entry as an approval decision: `status` "cancelled" rejects; "resolved"
    decides by `payload.decision` ("approve", the default, or "reject"), with optional edited
    `payload.arguments` (approve only). The interrupt id is the one the stream gave: <run id>.<call id>."""
    entries = body.resume or []
    if len(entries) != 1:
        raise InputProblem("resume: answer exactly one interrupt per request (a run waits on one call at a time)")
    entry = entries[0]
    run_id, _, call_id = entry.interrupt_id.partition(".")
    payload = entry.payload if entry.payload is not None else {}
    if not isinstance(payload, dict):
        raise InputProblem("resume: payload must be an object {decision, arguments}")
    asked = "reject" if entry.status == "cancelled" else payload.get("decision", "approve")
    if asked not in ("approve", "reject"):
        raise InputProblem("resume: payload.decision must be 'approve' or 'reject'")
    decision: Literal["approve", "reject"] = "approve" if asked == "approve" else "reject"
    arguments = payload.get("arguments")
    if arguments is not None and (not isinstance(arguments, dict) or decision != "approve"):
        raise InputProblem("resume: payload.arguments must be an object, and only go with decision 'approve'")
    return ResumeAnswer(run_id, call_id, decision, arguments)


def _json(value: Any) -> str:
    """Keys sorted: the log (PostgreSQL jsonb) and the hot buffer keep an object's keys in different
    orders, and a run must read the same from either."""
    return json.dumps(value, sort_keys=True)


def _millis(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def _usage(usage: dict[str, Any] | None) -> list[TokenUsage] | None:
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    total = (prompt or 0) + (completion or 0) if prompt is not None or completion is not None else None
    return [TokenUsage(input_tokens=prompt, output_tokens=completion, total_tokens=total)]


class RunTranslator:
    """Feed it one run's durable events (frames: type, seq, ts, data) in seq order; it answers the
    AG-UI events each one makes. `live`: a run waiting for approval ends the stream with an
    interrupt (the live case); otherwise (an export) the approval shows as CUSTOM events and the
    run goes on. `done` once the run's last AG-UI event (RUN_FINISHED or RUN_ERROR) was made."""

    def __init__(self, *, thread_id: str, run_id: str, live: bool) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self.live = live
        self.done = False
        self._started = False
        self._step: str | None = None  # the open thinking step's name
        self._message: str | None = None  # the open text message's id
        self._messages = 0
        self._streamed = ""  # the answer text sent so far, across text messages

    def feed(self, frame: dict[str, Any]) -> list[BaseEvent]:
        if self.done:
            return []
        kind, data, ts = frame["type"], frame.get("data") or {}, _millis(frame["ts"])
        out: list[BaseEvent] = []
        if not self._started:
            self._started = True
            # agent_started opens every run; a run cancelled before it started has none.
            out.append(
                RunStartedEvent(
                    thread_id=self.thread_id, run_id=self.run_id, protocol_version=PROTOCOL_VERSION, timestamp=ts
                )
            )
        if kind == "agent_started":
            return out
        if kind != "agent_delta":
            self._close_step(out, ts)
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(out, data, ts)
        return out

    def _close_step(self, out: list[BaseEvent], ts: int) -> None:
        if self._step is not None:
            out.append(StepFinishedEvent(step_name=self._step, timestamp=ts))
            self._step = None

    def _close_text(self, out: list[BaseEvent], ts: int) -> None:
        if self._message is not None:
            out.append(TextMessageEndEvent(message_id=self._message, timestamp=ts))
            self._message = None

    def _text(self, out: list[BaseEvent], text: str, ts: int) -> None:
        if not text:
            return
        if self._message is None:
            self._messages += 1
            self._message = f"{self.run_id}.m{self._messages}"
            out.append(TextMessageStartEvent(message_id=self._message, role="assistant", timestamp=ts))
        out.append(TextMessageContentEvent(message_id=self._message, delta=text, timestamp=ts))
        self._streamed += text

    def _rest_of(self, whole: str) -> str:
        """What of the whole answer was not streamed yet (all of it when its deltas were compacted)."""
        return whole[len(self._streamed) :] if whole.startswith(self._streamed) else ""

    def _tool_call_id(self, call_id: str) -> str:
        return f"{self.run_id}.{call_id}"

    # -- one handler per event type of docs/protocol.md §4 and §11 --------------------------------------
    def _on_agent_thinking(self, out: list[BaseEvent], data: dict[str, Any], ts: int) -> None:
        # The step lasts until the run's next event: that is when the thought turned into something.
        self._step = str(data.get("text") or "thinking")[:STEP_NAME_MAX_CHARS]
        out.append(StepStartedEvent(step_name=self._step, timestamp=ts))

    def _on_agent_delta(self, out: list[BaseEvent], data: dict[str, Any], ts: int) -> None:
        self._close_step(out, ts)
        self._text(out, str(data.get("text") or ""), ts)

    def _on_tool_executing(self, out: list[BaseEvent], data: dict[str, Any], ts: int) -> None:
        self._close_text(out, ts)  # text after the call is a new message
        call = self._tool_call_id(str(data["call_id"]))
        out.append(ToolCallStartEvent(tool_call_id=call, tool_call_name=str(data["tool"]), timestamp=ts))
        out.append(ToolCallArgsEvent(tool_call_id=call, delta=_json(data.get("arguments") or {}), timestamp=ts))
        out.append(ToolCallEndEvent(tool_call_id=call, timestamp=ts))

    def _on_tool_completed(self, out: list[BaseEvent], data: dict[str, Any], ts: int) -> None:
        call = self._tool_call_id(str(data["call_id"]))
        out.append(
            ToolCallResultEvent(
                message_id=f"{call}.result",
                tool_call_id=call,
                content=_json(data.get("result")),
                role="tool",
                timestamp=ts,
                metadata={"ok": bool(data.get("ok")), "duration_ms": data.get("duration_ms")},
            )
        )

    def _on_approval_requested(self, out: list[BaseEvent], data: dict[str, Any], ts: int) -> None:
        out.append(CustomEvent(name="approval_requested", value=data, timestamp=ts))
        if not self.live:
            return
        self._close_text(out, ts)
        interrupt = Interrupt(
            id=self._tool_call_id(str(data["call_id"])),
            reason=APPROVAL_REASON,
            message=str(data.get("reason") or ""),
            tool_call_id=self._tool_call_id(str(data["call_id"])),
            expires_at=data.get("expires_at"),
            metadata={
                "call_id": data["call_id"],
                "tool": data.get("tool"),
                "arguments": data.get("arguments"),
                "approver_role": data.get("approver_role"),
            },
        )
        self._finish(out, RunFinishedEvent, ts, outcome=RunFinishedInterruptOutcome(interrupts=[interrupt]))

    def _on_approval_resolved(self, out: list[BaseEvent], data: dict[str, Any], ts: int) -> None:
        out.append(CustomEvent(name="approval_resolved", value=data, timestamp=ts))

    def _on_agent_completed(self, out: list[BaseEvent], data: dict[str, Any], ts: int) -> None:
        self._text(out, self._rest_of(str(data.get("text") or "")), ts)
        self._close_text(out, ts)
        self._finish(
            out,
            RunFinishedEvent,
            ts,
            outcome=RunFinishedSuccessOutcome(),
            result={"message_id": data.get("message_id")},
            usage=_usage(data.get("usage")),
        )

    def _on_agent_failed(self, out: list[BaseEvent], data: dict[str, Any], ts: int) -> None:
        self._close_text(out, ts)
        error = data.get("error") or {}
        self._finish(
            out, RunErrorEvent, ts, message=str(error.get("message") or "the run failed"), code=error.get("code")
        )

    def _on_agent_cancelled(self, out: list[BaseEvent], data: dict[str, Any], ts: int) -> None:
        self._text(out, self._rest_of(str(data.get("partial_text") or "")), ts)
        self._close_text(out, ts)
        self._finish(out, RunFinishedEvent, ts, outcome=RunFinishedCancelledOutcome(), metadata={"by": data.get("by")})

    def _finish(self, out: list[BaseEvent], kind: type[BaseEvent], ts: int, **fields: Any) -> None:
        if kind is RunFinishedEvent:
            fields.update(thread_id=self.thread_id, run_id=self.run_id)
        out.append(kind(timestamp=ts, **{k: v for k, v in fields.items() if v is not None}))
        self.done = True


def translate(*, thread_id: str, run_id: str, frames: list[dict[str, Any]], live: bool = False) -> list[BaseEvent]:
    """A whole run's events at once (the export)."""
    translator = RunTranslator(thread_id=thread_id, run_id=run_id, live=live)
    return [event for frame in frames for event in translator.feed(frame)]


def stream_error(*, message: str, code: str) -> RunErrorEvent:
    """The stream itself broke (the run goes on): the client's last event."""
    return RunErrorEvent(message=message, code=code)
