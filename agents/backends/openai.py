"""An agent backend that talks to any OpenAI-compatible chat-completions server (OpenAI, Ollama,
vLLM, llama.cpp) over streaming HTTP.

One run is a loop: stream a completion, passing answer text on as it arrives and collecting the
tool calls the model asks for; run those tools through the runtime (`CallTool` / `asend`); append
their results to the conversation; ask again; until the model answers without calling a tool.
Every network or protocol failure becomes a `BackendError` whose code the run fails with.

Tools come from the registry, which is the one place that says which of them need approval: their
spec tells the model so (agents/tools.py), and a call to one carries this backend's state (the
messages so far, the round's remaining calls, usage) so that the run can resume from it after the
decision, on any worker (`AgentInput.resume`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from django.conf import settings

from agents.backends.base import (
    AgentInput,
    AnswerChunk,
    BackendError,
    CallTool,
    Step,
    Think,
    ToolOutcome,
    Usage,
)
from agents.tools import ToolRegistry
from monitoring import tracing

# A model that keeps calling tools is looping; eight rounds is far more than any of our tools need.
MAX_TOOL_ROUNDS = 8
# The database keeps call ids in a 64-character column, unique per run.
MAX_CALL_ID_CHARS = 64
# Error text from the server shown in agent_failed: enough to say what went wrong, no more.
MAX_SERVER_ERROR_CHARS = 300

DEFAULT_SYSTEM_PROMPT = (
    "You are the assistant in a group chat. Answer briefly and plainly. Use the calculator for any "
    "arithmetic, current_time for the date or time, and search_history for what was said earlier "
    "in this conversation; base your answer on what the tools return. A tool that needs approval "
    "runs only once a person approves it; if its result says it was not run, say so and go on."
)


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout_s: float = 60.0,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.system_prompt = system_prompt

    @classmethod
    def from_settings(cls) -> OpenAIBackend:
        return cls(
            base_url=settings.AGENT_LLM_BASE_URL,
            model=settings.AGENT_LLM_MODEL,
            api_key=settings.AGENT_LLM_API_KEY,
            timeout_s=settings.AGENT_LLM_TIMEOUT_S,
        )

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(url={self.url!r}, model={self.model!r}, key={'set' if self._api_key else 'none'})"

    async def steps(self, request: AgentInput, tools: ToolRegistry) -> AsyncGenerator[Step, ToolOutcome | None]:
        specs = tools.specs()
        run = _RunState.start(self.system_prompt, request)
        # One client per run: its connection is reused for every round of the run. httpx's read
        # timeout applies to each socket read, i.e. to the gap between two chunks of the stream.
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s), headers=self._headers()) as client:
            for completion_no in range(run.next_round, MAX_TOOL_ROUNDS + 1):
                # The calls of the previous completion (after a pause: the rest of its round).
                while run.pending:
                    call = run.pending.pop(0)
                    if call.problem is not None:
                        # Told to the model, which can correct itself in the next round.
                        result: Any = {"error": f"not run: {call.problem}. Correct the call and try again."}
                    else:
                        state = run.snapshot(completion_no - 1) if tools.needs_approval(call.name) else None
                        outcome = yield CallTool(call.call_id, call.name, call.arguments, state=state)
                        result = outcome.result if outcome is not None else {"error": "the tool returned nothing"}
                    run.tool_result(call.call_id, result)
                turn = _Turn()
                # One span per completion (1-based), never current: see monitoring.tracing.llm_round.
                with tracing.llm_round(self.name, self.model, completion_no + 1, httpx.URL(self.url).host) as span:
                    # aclosing: if the run stops mid-answer, the response is closed before the client is.
                    async with aclosing(self._stream(client, run.messages, specs, turn)) as stream:
                        async for text in stream:
                            yield AnswerChunk(text)
                    span.round_end(finish_reason=turn.finish_reason, usage=turn.usage)
                if turn.usage is not None:
                    run.usage_reported = True
                    run.prompt_tokens += turn.usage[0]
                    run.completion_tokens += turn.usage[1]
                if not turn.calls:
                    break
                if completion_no == MAX_TOOL_ROUNDS:
                    raise BackendError("llm_error", f"the model kept calling tools after {MAX_TOOL_ROUNDS} rounds")

                calls = [call.finish(run.used_call_ids) for call in turn.ordered_calls()]
                yield Think(_describe(calls))
                run.messages.append(
                    {
                        "role": "assistant",
                        "content": turn.content or None,
                        "tool_calls": [
                            {
                                "id": c.call_id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.raw_arguments},
                            }
                            for c in calls
                        ],
                    }
                )
                run.pending = calls
        if run.usage_reported:
            yield Usage(prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _stream(
        self, client: httpx.AsyncClient, messages: list[dict[str, Any]], specs: list[dict[str, Any]], turn: _Turn
    ) -> AsyncGenerator[str, None]:
        """One streamed completion: yields content as it arrives, records tool calls and usage in `turn`."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if specs:
            body["tools"] = specs
        try:
            async with client.stream("POST", self.url, json=body) as response:
                if response.status_code >= 400:
                    raise BackendError("llm_error", await self._status_message(response), status=response.status_code)
                async for line in response.aiter_lines():
                    data = _sse_data(line)
                    if data is None:
                        continue
                    turn.saw_data = True
                    if data == "[DONE]":
                        turn.done = True
                        break
                    for text in turn.absorb(_parse_chunk(data)):
                        yield text
        except BackendError as exc:
            # Server-supplied error text is shown to every member: never with the key in it.
            raise BackendError(exc.code, self._redact(exc.message), status=exc.status) from exc
        except httpx.TimeoutException as exc:
            raise BackendError(
                "llm_timeout", f"the model server did not answer within {self.timeout_s:g}s ({type(exc).__name__})"
            ) from exc
        except httpx.ConnectError as exc:
            raise BackendError("llm_unavailable", f"cannot reach the model server at {self._where()}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # Reset connections, truncated chunked bodies, bad URLs: the answer cannot be trusted.
            raise BackendError("llm_error", f"the connection to the model server failed: {type(exc).__name__}") from exc
        if not turn.saw_data:
            raise BackendError("llm_error", "the model server did not send an event stream")
        if not turn.done and turn.finish_reason is None:
            raise BackendError("llm_error", "the model's answer stream ended before it was complete")

    async def _status_message(self, response: httpx.Response) -> str:
        detail = ""
        try:
            raw = await response.aread()
            payload = json.loads(raw)
            error = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(error, dict):
                detail = str(error.get("message") or "")
            elif isinstance(error, str):
                detail = error
        except (httpx.HTTPError, ValueError):
            pass  # the status alone says enough
        detail = detail[:MAX_SERVER_ERROR_CHARS]
        message = f"the model server answered HTTP {response.status_code}"
        return f"{message}: {detail}" if detail else message

    def _redact(self, text: str) -> str:
        # Some servers echo the key they rejected; the message ends up in every member's event log.
        return text.replace(self._api_key, "[redacted]") if self._api_key else text

    def _where(self) -> str:
        url = httpx.URL(self.url)
        return f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")


@dataclass
class _RunState:
    """Where a run is: the conversation with the model, the calls of the round not yet run, the
    call ids used, the usage so far. All JSON, so a run paused for approval resumes from it."""

    messages: list[dict[str, Any]]
    pending: list[_Call] = field(default_factory=list)
    next_round: int = 0
    used_call_ids: set[str] = field(default_factory=set)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_reported: bool = False

    @classmethod
    def start(cls, system_prompt: str | None, request: AgentInput) -> _RunState:
        if request.resume is None:
            messages: list[dict[str, Any]] = []
            if system_prompt:
                messages.append({"role": "system", "content": system_prompt})
            messages.extend({"role": turn["role"], "content": turn["content"]} for turn in request.history)
            messages.append({"role": "user", "content": request.prompt})
            return cls(messages)
        state = request.resume.state
        run = cls(
            messages=list(state["messages"]),
            pending=[_Call(**call) for call in state["pending"]],
            next_round=int(state["round"]) + 1,
            used_call_ids=set(state["used_call_ids"]),
            prompt_tokens=int(state["prompt_tokens"]),
            completion_tokens=int(state["completion_tokens"]),
            usage_reported=bool(state["usage_reported"]),
        )
        run.tool_result(request.resume.call_id, request.resume.outcome.result)
        return run

    def snapshot(self, round_no: int) -> dict[str, Any]:
        """The state to go on from after the call just taken off `pending` (of round `round_no`)."""
        return {
            "messages": self.messages,
            "pending": [asdict(call) for call in self.pending],
            "round": round_no,
            "used_call_ids": sorted(self.used_call_ids),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usage_reported": self.usage_reported,
        }

    def tool_result(self, call_id: str, result: Any) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": json.dumps(result, default=str)})


@dataclass
class _PendingCall:
    index: int
    call_id: str = ""
    name: str = ""
    raw_arguments: str = ""

    def finish(self, used_call_ids: set[str]) -> _Call:
        call_id = self.call_id
        # Ids must be unique within the run (the database says so), and some servers reuse "call_0".
        if not call_id or call_id in used_call_ids or len(call_id) > MAX_CALL_ID_CHARS:
            call_id = f"call_{uuid.uuid4().hex[:24]}"
        used_call_ids.add(call_id)
        arguments: dict[str, Any] = {}
        problem: str | None = None
        if not self.name:
            problem = "the call named no function"
        # Empty arguments are how several servers spell a call without parameters: it means {}.
        elif self.raw_arguments.strip():
            try:
                parsed = json.loads(self.raw_arguments)
            except ValueError:
                problem = "its arguments were not valid JSON"
            else:
                if isinstance(parsed, dict):
                    arguments = parsed
                else:
                    problem = "its arguments were not a JSON object"
        return _Call(call_id, self.name, self.raw_arguments or "{}", arguments, problem)


@dataclass(frozen=True)
class _Call:
    call_id: str
    name: str
    raw_arguments: str
    arguments: dict[str, Any]
    problem: str | None  # why the call cannot run; the model is told instead


@dataclass
class _Turn:
    """What one streamed completion said: its text, tool calls (assembled by index), usage, end."""

    content: str = ""
    pending: dict[int, _PendingCall] = field(default_factory=dict)
    usage: tuple[int, int] | None = None
    finish_reason: str | None = None
    saw_data: bool = False
    done: bool = False

    @property
    def calls(self) -> bool:
        return bool(self.pending)

    def ordered_calls(self) -> list[_PendingCall]:
        return [self.pending[i] for i in sorted(self.pending)]

    def absorb(self, chunk: dict[str, Any]) -> list[str]:
        if "error" in chunk and not chunk.get("choices"):
            error = chunk["error"]
            detail = error.get("message") if isinstance(error, dict) else error
            raise BackendError(
                "llm_error", f"the model server reported an error: {str(detail)[:MAX_SERVER_ERROR_CHARS]}"
            )
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = (_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))
        texts: list[str] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # we ask for one choice; ignore any others
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise BackendError("llm_error", "the model server sent a malformed chunk")
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.content += content
                texts.append(content)
            for position, tool_delta in enumerate(delta.get("tool_calls") or []):
                self._absorb_tool_delta(position, tool_delta)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return texts

    def _absorb_tool_delta(self, position: int, tool_delta: Any) -> None:
        if not isinstance(tool_delta, dict):
            raise BackendError("llm_error", "the model server sent a malformed tool call")
        # Servers that send each call whole in one chunk sometimes leave out `index`.
        index = tool_delta.get("index")
        index = index if isinstance(index, int) else position
        call = self.pending.setdefault(index, _PendingCall(index))
        if tool_delta.get("id") and not call.call_id:
            call.call_id = str(tool_delta["id"])
        function = tool_delta.get("function") or {}
        if isinstance(function, dict):
            if function.get("name") and not call.name:
                call.name = str(function["name"])
            if isinstance(function.get("arguments"), str):
                call.raw_arguments += function["arguments"]


def _describe(calls: list[_Call]) -> str:
    parts = []
    for call in calls:
        if call.problem is None:
            parts.append(f"The model asked to call {call.name} with {json.dumps(call.arguments)}.")
        else:
            parts.append(
                f"The model asked to call {call.name or 'a tool'}, but {call.problem}; asking it to try again."
            )
    return " ".join(parts)


def _sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for comments, other fields and blank lines."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise BackendError("llm_error", "the model server sent a chunk that is not valid JSON") from exc
    if not isinstance(chunk, dict):
        raise BackendError("llm_error", "the model server sent a chunk that is not a JSON object")
    return chunk


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
