"""Reconnect storm: N clients drop at once, the conversation moves on by B events, and all
N reconnect at once with `since_seq`. Measures how long until every client has exactly the missed
events, and where the replays were served from (the hot buffer vs the PostgreSQL log), read from the
servers' own counters. Starts the stack as the README does; everything on 127.0.0.1.

    .venv/bin/python tests/benchmarks/reconnect_storm.py                 # 1,000 clients, 20 behind
    .venv/bin/python tests/benchmarks/reconnect_storm.py --clients 200 --behind 50 --processes 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from chatclient import Backoff, ChatClient  # noqa: E402

from tests.benchmarks.fanout import (  # noqa: E402
    RESULTS_DIR,
    counters_delta,
    create_conversation,
    create_users,
    scrape_metrics,
    staff_client,
    token_for,
)
from tests.support.limits import LOAD_TEST_ENV  # noqa: E402
from tests.support.servers import running_stack  # noqa: E402

# Every wait is bounded so a broken server fails the run instead of hanging it.
PHASE_TIMEOUT_S = 300.0
# Sockets opened at once during setup (not during the storm, which opens all of them together).
SETUP_CONCURRENCY = 100


async def bounded_gather(coros: list[Any], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(LOAD_TEST_ENV)
    with running_stack(processes=args.processes, env_overrides=env) as stack:
        names = [f"storm{i}" for i in range(args.clients)]
        tokens = create_users(stack, names, via_api=False, quiet=True)
        conversation = create_conversation(stack, names)
        import httpx

        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            writer_token = token_for(http, "alice", "demo-password")
        urls = [stack.ws_url(i % args.processes) for i in range(args.clients)]
        clients = [
            ChatClient(urls[i], token=tokens[name], backoff=Backoff(base_s=0.5, cap_s=5.0))
            for i, name in enumerate(names)
        ]
        writer = ChatClient(stack.ws_url(), token=writer_token)

        async with asyncio.timeout(PHASE_TIMEOUT_S):
            await writer.start()
            await bounded_gather([c.start() for c in clients], SETUP_CONCURRENCY)
            await bounded_gather([c.subscribe(conversation) for c in clients], SETUP_CONCURRENCY)
            head = clients[0].streams[conversation].last_seq or 0
            await asyncio.gather(*(c.close() for c in clients))
            for i in range(args.behind):
                await writer.send(conversation, f"while you were away {i}", client_msg_id=f"away{i}")
            target = head + args.behind

            http_staff = staff_client(stack)
            before = scrape_metrics(stack, http_staff)
            done = [asyncio.Event() for _ in names]

            def watcher(i: int) -> Any:
                def on_event(frame: dict[str, Any]) -> None:
                    if frame.get("seq") == target:
                        done[i].set()

                return on_event

            returning = [
                ChatClient(urls[i], token=tokens[name], backoff=Backoff(base_s=0.5, cap_s=5.0), on_event=watcher(i))
                for i, name in enumerate(names)
            ]
            started = time.monotonic()

            async def come_back(i: int, client: ChatClient) -> float:
                await client.start()
                await client.subscribe(conversation, since_seq=head)
                await done[i].wait()  # bounded by the phase timeout above
                return time.monotonic() - started

            durations = sorted(await asyncio.gather(*(come_back(i, c) for i, c in enumerate(returning))))
            elapsed = time.monotonic() - started
            after = scrape_metrics(stack, http_staff)
        counters = counters_delta(before, after)
        complete = sum(
            1 for c in returning if [e["seq"] for e in c.events(conversation)] == list(range(head + 1, target + 1))
        )
        await asyncio.gather(*(c.close() for c in returning), writer.close())
    replays = counters.get("replays", {})
    return {
        "clients": args.clients,
        "processes": args.processes,
        "behind": args.behind,
        "all_recovered_s": round(elapsed, 3),
        "client_recovered_s": {
            "p50": round(durations[len(durations) // 2], 3),
            "p99": round(durations[int(len(durations) * 0.99) - 1], 3),
            "max": round(durations[-1], 3),
        },
        "clients_with_exact_missed_events": complete,
        "replays_from_buffer": replays.get("source=buffer", 0),
        "replays_from_log": replays.get("source=log", 0),
        "hub_gap_reads": counters.get("hub_gap_reads", 0),
        "server_counters": counters,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--behind", type=int, default=20)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = asyncio.run(storm(args))
    for key, value in report.items():
        if key != "server_counters":
            print(f"{key:34} {value}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = args.json or RESULTS_DIR / f"reconnect-storm-{args.clients}c-{args.behind}b-{int(time.time())}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"report written to {path}")
    ok = report["clients_with_exact_missed_events"] == args.clients and report["replays_from_log"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
