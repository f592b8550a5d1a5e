"""monitoring/tracing.py without the database: the traceparent `send` may carry (the wire schema and
the send check), the helpers with tracing off (shared do-nothing handles, nothing to store), turning
OTLP export on from the environment, and the model-round spans of both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agents.backends.base import AgentInput, BackendError, CallTool, ToolOutcome
from agents.backends.offline import OfflineBackend
from agents.backends.openai import OpenAIBackend
from agents.tools import ToolContext, default_registry
from chat import wire
from chat.errors import ServiceError
from chat.services.messages import message_check
from monitoring import tracing
from tests.support.fake_llm import FakeLLM, answer, http_error, tool_call

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CONV = "7d1e1c3a-7a55-4a34-9b5e-2f1f0c1f6a10"


# --- the traceparent of `send` ----------------------------------------------------------------------


def test_send_takes_an_optional_w3c_traceparent() -> None:
    fields = {"conversation": CONV, "client_msg_id": "k", "text": "hi"}
    assert wire.decode_command("send", fields).traceparent is None  # type: ignore[attr-defined]
    assert wire.decode_command("send", {**fields, "traceparent": GOOD}).traceparent == GOOD  # type: ignore[attr-defined]
    # Encoded without the field when it was not given: a client's frame is unchanged.
    assert "traceparent" not in wire.encode(wire.decode_command("send", fields))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        GOOD + "\n",
        GOOD + "-extra",
    ],
)
def test_send_refuses_a_malformed_traceparent_saying_what_is_expected(bad: str) -> None:
    with pytest.raises(wire.FieldError) as exc:
        wire.decode_command("send", {"conversation": CONV, "client_msg_id": "k", "text": "hi", "traceparent": bad})
    assert exc.value.field == "traceparent"
    assert str(exc.value).startswith("traceparent: must be a W3C traceparent: 00-<32 hex trace id>")


def test_the_send_check_refuses_a_malformed_traceparent_before_reading_anything() -> None:
    # Callers other than the socket (REST, the admin, scripts) reach the service without the schema.
    with pytest.raises(ServiceError) as exc:
        message_check(
            conversation_id=CONV,
            author_id=1,
            username="u",
            can_write=True,
            agent="assistant",
            client_msg_id="k",
            text="hi",
            traceparent="00-not-a-trace",
        )
    assert exc.value.code == "bad_request"
    assert "traceparent" in exc.value.message


def test_parent_context_reads_a_valid_traceparent_only() -> None:
    context = tracing.parent_context(GOOD)
    assert context is not None
    remote = trace.get_current_span(context).get_span_context()
    assert (f"{remote.trace_id:032x}", f"{remote.span_id:016x}", remote.is_remote) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        True,
    )
    assert tracing.parent_context("") is None
    assert tracing.parent_context("00-xyz") is None


# --- off and on -------------------------------------------------------------------------------------


def test_with_tracing_off_every_helper_hands_out_a_shared_do_nothing_handle(tracing_off: None) -> None:
    assert not tracing.enabled()
    with tracing.run_span(run_id="r", agent="a", conversation_id="c", traceparent=GOOD) as run:
        assert run is tracing.NO_RUN
        assert run.to_store() is None
        run.set("agent.run.tier", "free")
        run.outcome("failed", "internal")
        with tracing.tool_span("calculator", "call_1") as tool:
            assert tool is tracing.NO_STEP
            tool.tool_outcome(False, {"error": "x"})
        with tracing.llm_round("offline", "offline-rules", 1) as llm:
            assert llm is tracing.NO_STEP
            llm.round_end(finish_reason="stop", usage=(1, 2))


def test_an_otlp_endpoint_in_the_environment_turns_export_on(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = tracing.use_provider(None)
    try:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
        assert tracing.configure_from_env() is False
        assert not tracing.enabled()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        assert tracing.configure_from_env() is False
        monkeypatch.delenv("OTEL_SDK_DISABLED")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "chat-test")
        assert tracing.configure_from_env() is True
        provider = tracing._State.provider
        assert tracing.enabled()
        assert provider.resource.attributes["service.name"] == "chat-test"
        [processor] = provider._active_span_processor._span_processors
        assert type(processor).__name__ == "BatchSpanProcessor"  # export never blocks the event loop
        provider.shutdown()
    finally:
        tracing.use_provider(previous)


def test_a_crash_the_runtime_did_not_name_marks_the_run_span_as_an_error(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.run_span(run_id="r", agent="a", conversation_id="c"):
        raise RuntimeError("boom")
    [root] = spans.get_finished_spans()
    assert (root.attributes or {})["agent.run.outcome"] == "error"
    assert root.status.status_code is StatusCode.ERROR


# --- model rounds -----------------------------------------------------------------------------------


async def drive(backend: Any, prompt: str) -> None:
    """The backend's steps to the end inside a run span, like the runtime: tools answered by the registry."""
    registry = default_registry()
    with tracing.run_span(run_id="r", agent="a", conversation_id="c") as run:
        run.outcome("completed")
        steps = backend.steps(AgentInput("r", "c", None, prompt, []), registry)
        outcome: ToolOutcome | None = None
        try:
            while True:
                step = await asyncio.wait_for(steps.asend(outcome), timeout=10)
                outcome = None
                if isinstance(step, CallTool):
                    outcome = await registry.call(step.tool, step.arguments, ToolContext(None, "c"))
        except StopAsyncIteration:
            pass
        finally:
            await steps.aclose()


def rounds(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    finished = exporter.get_finished_spans()
    [root] = [s for s in finished if s.name.startswith("invoke_agent")]
    root_id = root.get_span_context().span_id  # type: ignore[union-attr]
    children = [s for s in finished if s.parent is not None and s.parent.span_id == root_id]
    return root, sorted(children, key=lambda s: s.start_time or 0)


async def test_the_offline_agent_has_a_round_before_and_after_its_tool_call(spans: InMemorySpanExporter) -> None:
    await drive(OfflineBackend(), "what is 6 * 7?")
    _, children = rounds(spans)
    assert [(s.name, (s.attributes or {})["agent.llm.round"]) for s in children] == [
        ("chat offline-rules", 1),
        ("chat offline-rules", 2),
    ]
    assert [(s.attributes or {})["gen_ai.response.finish_reasons"] for s in children] == [("tool_calls",), ("stop",)]


async def test_each_completion_of_the_model_server_is_a_round_with_its_usage(spans: InMemorySpanExporter) -> None:
    with FakeLLM() as fake:
        fake.script(tool_call("calculator", {"expression": "6*7"}), answer("It is 42.", usage=(30, 4)))
        await drive(OpenAIBackend(base_url=fake.base_url, model="fake-model", timeout_s=10.0), "what is 6*7?")
    _, children = rounds(spans)
    assert [s.name for s in children] == ["chat fake-model", "chat fake-model"]
    first, second = (dict(s.attributes or {}) for s in children)
    assert (first["agent.llm.round"], second["agent.llm.round"]) == (1, 2)
    assert first["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert (first["gen_ai.usage.input_tokens"], first["gen_ai.usage.output_tokens"]) == (20, 9)
    assert (second["gen_ai.usage.input_tokens"], second["gen_ai.usage.output_tokens"]) == (30, 4)
    assert (first["gen_ai.provider.name"], first["server.address"]) == ("openai", "127.0.0.1")


async def test_a_failed_completion_is_an_error_round(spans: InMemorySpanExporter) -> None:
    with FakeLLM() as fake:
        fake.script(http_error(500))
        with pytest.raises(BackendError):
            await drive(OpenAIBackend(base_url=fake.base_url, model="fake-model", timeout_s=10.0), "hi")
    _, [failed] = rounds(spans)
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "llm_error"
