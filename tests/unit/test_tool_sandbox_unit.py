"""The sandbox the calculator runs in (agents/sandbox.py), against real worker processes: what it
does when a call computes too long, needs too much memory, burns its CPU allowance or breaks, and
that the event loop keeps ticking meanwhile. The calculator's input checks should make all of this
unreachable from the tool; here the sandbox is handed the slow calls directly (builtins, which a
spawned worker can import: `sum(range(10**12))` computes for minutes in C, with no memory)."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agents.backends.base import ToolOutcome
from agents.calculator import calculate
from agents.sandbox import Sandbox, SandboxLimits, ToolError
from agents.tools import Tool, ToolContext, ToolRegistry

pytestmark = [pytest.mark.timeout(60)]

LOOP_LAG_BOUND_S = 0.1
FOREVER = range(10**12)  # sum() of it: minutes of CPU in one C call, no memory


class LoopWatch:
    TICK_S = 0.005

    def __init__(self) -> None:
        self.worst_lag_s = 0.0

    async def beat(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.TICK_S)
            self.worst_lag_s = max(self.worst_lag_s, time.monotonic() - before - self.TICK_S)


@asynccontextmanager
async def watched_loop() -> AsyncIterator[LoopWatch]:
    watch = LoopWatch()
    task = asyncio.create_task(watch.beat())
    try:
        await asyncio.sleep(0)
        yield watch
    finally:
        task.cancel()


@pytest.fixture
def sandboxes() -> Iterator[list[Sandbox]]:
    made: list[Sandbox] = []
    yield made
    for sandbox in made:
        sandbox.close()


def sandbox(made: list[Sandbox], **limits: Any) -> Sandbox:
    made.append(Sandbox(SandboxLimits(**limits), name="probe"))
    return made[-1]


async def test_a_call_is_evaluated_in_a_worker_and_a_warm_call_is_quick(sandboxes: list[Sandbox]) -> None:
    box = sandbox(sandboxes, workers=1)
    assert await box.run(calculate, "17 * 23") == 391  # starts the worker
    started = time.monotonic()
    for _ in range(20):
        assert await box.run(calculate, "2 ** 10") == 1024
    assert (time.monotonic() - started) / 20 < 0.05
    assert box.started == 1


async def test_a_call_past_the_time_limit_kills_its_worker_and_the_next_call_gets_a_new_one(
    sandboxes: list[Sandbox],
) -> None:
    box = sandbox(sandboxes, workers=1, timeout_s=0.5)
    await box.run(calculate, "1")
    async with watched_loop() as watch:
        started = time.monotonic()
        with pytest.raises(ToolError, match=r"probe took longer than 0.5s and was stopped"):
            await box.run(sum, FOREVER)
        took = time.monotonic() - started
    assert 0.5 <= took < 3.0
    assert watch.worst_lag_s < LOOP_LAG_BOUND_S
    assert await box.run(calculate, "1 + 1") == 2
    assert box.started == 2


async def test_a_stuck_call_does_not_hold_up_a_call_on_another_worker(sandboxes: list[Sandbox]) -> None:
    box = sandbox(sandboxes, workers=2, timeout_s=1.0)
    stuck = asyncio.create_task(box.run(sum, FOREVER))
    assert await box.run(calculate, "6 * 7") == 42
    assert not stuck.done()
    with pytest.raises(ToolError, match="took longer"):
        await stuck


async def test_running_out_of_memory_is_a_clear_error_and_the_worker_serves_on(sandboxes: list[Sandbox]) -> None:
    box = sandbox(sandboxes, workers=1, memory_bytes=256 * 2**20)
    with pytest.raises(ToolError, match="probe failed: it needed more memory than it may use"):
        await box.run(bytearray, 2**30)
    assert await box.run(calculate, "3 * 3") == 9
    assert box.started == 1


async def test_a_worker_past_its_cpu_allowance_is_ended_by_the_kernel(sandboxes: list[Sandbox]) -> None:
    # The wall-clock limit is far away: only RLIMIT_CPU can end this call (as it would a worker
    # whose parent died while it spun).
    box = sandbox(sandboxes, workers=1, timeout_s=30.0, cpu_s=1)
    started = time.monotonic()
    with pytest.raises(ToolError, match="CPU time"):
        await box.run(sum, FOREVER)
    assert time.monotonic() - started < 10.0
    assert await box.run(calculate, "1 + 2") == 3


async def test_a_worker_is_replaced_after_its_calls(sandboxes: list[Sandbox]) -> None:
    box = sandbox(sandboxes, workers=1, calls_per_worker=2)
    for _ in range(3):
        assert await box.run(calculate, "1") == 1
    assert box.started == 2


async def test_refusals_and_bugs_come_back_as_tool_errors(sandboxes: list[Sandbox]) -> None:
    box = sandbox(sandboxes, workers=1)
    with pytest.raises(ToolError, match="^division by zero$"):
        await box.run(calculate, "1 / 0")
    with pytest.raises(ToolError, match=r"^probe failed: TypeError$"):
        await box.run(calculate, 5)
    assert box.started == 1


def test_limits_never_fail_open() -> None:
    for field in ("workers", "timeout_s", "memory_bytes", "cpu_s", "calls_per_worker", "start_timeout_s"):
        with pytest.raises(ValueError, match=field):
            SandboxLimits(**{field: 0})


async def test_a_sandbox_timeout_ends_the_tool_call_as_its_error(sandboxes: list[Sandbox]) -> None:
    box = sandbox(sandboxes, workers=1, timeout_s=0.3)

    async def slow(ctx: ToolContext, args: dict[str, Any]) -> Any:
        return await box.run(sum, FOREVER)

    registry = ToolRegistry()
    registry.register(Tool("slow", "computes forever", {"type": "object"}, slow))
    outcome = await registry.call("slow", {}, ToolContext(user_id=None, conversation_id="c"))
    assert outcome == ToolOutcome(False, {"error": "probe took longer than 0.3s and was stopped"})


async def test_a_worker_has_its_limits_and_none_of_the_parents_secrets(
    sandboxes: list[Sandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_LLM_API_KEY", "sk-must-not-leak")
    box = sandbox(sandboxes, workers=1, memory_bytes=300 * 2**20, cpu_s=7)
    assert await box.run(resource.getrlimit, resource.RLIMIT_AS) == (300 * 2**20, 300 * 2**20)
    assert await box.run(resource.getrlimit, resource.RLIMIT_CPU) == (7, 8)
    assert await box.run(resource.getrlimit, resource.RLIMIT_CORE) == (0, 0)
    assert await box.run(os.getenv, "AGENT_LLM_API_KEY") is None
    assert await box.run(os.getenv, "DATABASE_URL") is None


def test_a_worker_does_not_run_the_parents_main_module_again(tmp_path: Path) -> None:
    # multiprocessing's spawn would import this unguarded script again in every worker (and each
    # of those would start workers of its own).
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import asyncio\n"
        "from agents.calculator import calculate\n"
        "from agents.sandbox import Sandbox\n"
        "print('main module ran', flush=True)\n"
        "print(asyncio.run(Sandbox(name='script').run(calculate, '6 * 7')))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "main module ran\n42\n"
