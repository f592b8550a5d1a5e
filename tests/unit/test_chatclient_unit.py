"""The Python client package (clients/python, `chatclient`): it installs and imports without Django,
and its reconnection logic: backoff with full jitter and a cap, duplicate suppression on resume, and
resubscription positions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from chatclient import Backoff, ChatClient

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "python"

# Run in a fresh interpreter: this test process has Django loaded already. `None` in sys.modules makes
# any `import django` (or of the server's `chat` app) raise ImportError, so the import below succeeds
# only if nothing in the package reaches for them, directly or through a dependency.
WITHOUT_DJANGO = """
import sys
sys.modules["django"] = None
sys.modules["chat"] = None
import chatclient
from chatclient import Backoff, ChatClient
client = ChatClient("ws://127.0.0.1:1/ws/chat/", token="t", backoff=Backoff(rng=lambda: 1.0))
assert client.backoff.next_delay() == 0.5
client.handle_frame({"type": "message", "conversation": "c", "seq": 1, "data": {}})
assert client.streams["c"].last_seq == 1
loaded = [name for name, mod in sys.modules.items() if mod is not None and name.split(".")[0] in ("django", "chat")]
assert not loaded, loaded
print(chatclient.__file__)
"""


def test_the_package_imports_and_works_without_django(tmp_path: Path) -> None:
    # cwd elsewhere than the repository: the package must come from the installed distribution.
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_DJANGO], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(PACKAGE / "chatclient")


def test_the_package_depends_only_on_websockets() -> None:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert project["name"] == "chatclient"
    assert [dep.split(">")[0].split("<")[0].split("=")[0].strip() for dep in project["dependencies"]] == ["websockets"]


def test_backoff_is_full_jitter_exponential_with_a_cap_and_resets() -> None:
    upper = Backoff(base_s=0.5, cap_s=15.0, rng=lambda: 1.0)
    assert [upper.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    upper.reset()
    assert upper.next_delay() == 0.5
    lower = Backoff(rng=lambda: 0.0)
    assert {lower.next_delay() for _ in range(5)} == {0.0}
    half = Backoff(base_s=1.0, cap_s=100.0, rng=lambda: 0.5)
    assert [half.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]


def event(conv: str, seq: int) -> dict[str, Any]:
    return {"type": "message", "conversation": conv, "seq": seq, "data": {"n": seq}}


def test_events_already_seen_are_ignored_after_a_resume() -> None:
    seen: list[int] = []
    client = ChatClient("ws://unused", token="t", on_event=lambda f: seen.append(f["seq"]))
    for seq in (1, 2, 3):
        client.handle_frame(event("c", seq))
    # The server replays from since_seq=3, but a frame in flight at the drop arrives again first.
    for seq in (3, 2, 4, 5):
        client.handle_frame(event("c", seq))
    assert seen == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in client.events("c")] == [1, 2, 3, 4, 5]
    assert client.duplicates_ignored == 2
    assert client.streams["c"].last_seq == 5


def test_conversations_are_tracked_independently_and_other_frames_are_kept() -> None:
    client = ChatClient("ws://unused", token="t")
    client.handle_frame(event("a", 7))
    client.handle_frame(event("b", 1))
    client.handle_frame({"type": "typing", "conversation": "a", "data": {"state": "start"}})
    client.handle_frame({"type": "notification", "seq": 1, "data": {}})
    assert client.streams["a"].last_seq == 7
    assert client.streams["b"].last_seq == 1
    assert [f["type"] for f in client.frames] == ["typing", "notification"]


async def test_a_reply_resolves_its_pending_command() -> None:
    client = ChatClient("ws://unused", token="t")
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    client._pending["k1"] = future
    client.handle_frame({"type": "reply", "id": "k1", "ok": True, "head_seq": 4})
    assert (await future)["head_seq"] == 4
    assert client._pending == {}
