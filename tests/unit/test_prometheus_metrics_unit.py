"""monitoring.metrics on prometheus_client: the legacy counter calls feed the documented families,
the per-frame meter's batches add up to what per-sample calls would have written, and in
multiprocess mode a scrape sums the processes (real child processes sharing a directory)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import Metrics, current_tier
from monitoring.metrics.families import LAG_S
from monitoring.metrics.meter import FrameMeter, LocalHistogram, commit_time
from monitoring.metrics.runs import count_incomplete

ROOT = Path(__file__).resolve().parents[2]


def value(sample: str, /, **labels: str) -> float:
    return REGISTRY.get_sample_value(sample, labels) or 0.0


def test_a_batched_histogram_writes_what_observe_would() -> None:
    registry = CollectorRegistry()
    by_observe = Histogram("by_observe_seconds", "x", buckets=LAG_S, registry=registry)
    batched = Histogram("batched_seconds", "x", buckets=LAG_S, registry=registry)
    local = LocalHistogram(batched)
    samples = [0.0, 0.001, 0.0011, 0.02, 0.5, 7.0, 29.9, 30.0, 31.0, 1e6]
    for s in samples:
        by_observe.observe(s)
        local.observe(s)
    local.apply(*local.take())
    local.apply(*local.take())  # an empty batch adds nothing
    for bound in [*LAG_S, float("inf")]:
        le = "+Inf" if bound == float("inf") else str(bound)
        assert registry.get_sample_value("batched_seconds_bucket", {"le": le}) == registry.get_sample_value(
            "by_observe_seconds_bucket", {"le": le}
        ), le
    assert registry.get_sample_value("batched_seconds_sum") == registry.get_sample_value("by_observe_seconds_sum")
    assert registry.get_sample_value("batched_seconds_count") == len(samples)


def test_the_frame_meter_counts_types_bytes_and_lag_only_when_flushed() -> None:
    meter = FrameMeter()
    now = time.time()
    committed = now - 0.25
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(committed)) + f".{int(committed * 1000) % 1000:03d}Z"
    event = f'{{"type":"message","conversation":"c","seq":1,"ts":"{ts}","data":{{"text":"héllo"}}}}'
    reply = '{"type":"reply","id":"1","ok":true}'
    before = {
        "message": value("chat_frames_sent_total", type="message"),
        "reply": value("chat_frames_sent_total", type="reply"),
        "other": value("chat_frames_sent_total", type="other"),
        "bytes": value("chat_bytes_sent_total"),
        "lag": value("chat_delivery_lag_seconds_count"),
        "lag_sum": value("chat_delivery_lag_seconds_sum"),
        "lag_le_0.5": value("chat_delivery_lag_seconds_bucket", le="0.5"),
        "lag_le_0.1": value("chat_delivery_lag_seconds_bucket", le="0.1"),
    }
    meter.delivered(event, now)
    meter.delivered(event, now)  # the next socket: same text, cached commit time
    meter.frame(reply)
    meter.frame("not json at all")
    meter.frame('{"type":"' + "x" * 100)  # an unterminated type is "other", never a long label
    assert value("chat_frames_sent_total", type="message") == before["message"]  # nothing until flushed
    meter.flush()
    assert value("chat_frames_sent_total", type="message") == before["message"] + 2
    assert value("chat_frames_sent_total", type="reply") == before["reply"] + 1
    assert value("chat_frames_sent_total", type="other") == before["other"] + 2
    utf8 = 2 * len(event.encode()) + len(reply) + len("not json at all") + 109
    assert value("chat_bytes_sent_total") == before["bytes"] + utf8
    assert value("chat_delivery_lag_seconds_count") == before["lag"] + 2
    lag_sum = value("chat_delivery_lag_seconds_sum") - before["lag_sum"]
    assert 0.49 <= lag_sum <= 0.51  # 2 x 0.25 s (ts has millisecond precision)
    assert value("chat_delivery_lag_seconds_bucket", le="0.5") == before["lag_le_0.5"] + 2
    assert value("chat_delivery_lag_seconds_bucket", le="0.1") == before["lag_le_0.1"]


def test_a_reply_is_not_a_delivery_and_a_frame_without_ts_has_no_lag() -> None:
    meter = FrameMeter()
    lag = value("chat_delivery_lag_seconds_count")
    meter.delivered('{"type":"reply","id":"1","ok":true}', time.time())
    meter.delivered('{"type":"message","conversation":"c","seq":1,"data":{}}', time.time())
    meter.flush()
    assert value("chat_delivery_lag_seconds_count") == lag


def test_commit_time_reads_the_frames_own_ts() -> None:
    frame = '{"type":"message","conversation":"c","seq":3,"ts":"2026-01-02T03:04:05.678Z","data":{"ts":"x"}}'
    assert commit_time(frame) == 1767323045.678
    assert commit_time('{"type":"message","ts":"yesterday"}') is None
    assert commit_time('{"type":"message"}') is None


def test_legacy_counters_feed_the_documented_families() -> None:
    m = Metrics()
    disconnects = value("chat_disconnects_total", code="4408")
    replays = value("chat_replays_total", source="log", outcome="ok")
    limited = value("chat_rate_limited_total", **{"class": "typing", "tier": "pro"})
    m.inc("disconnects", code="4408")
    m.inc("replays", source="log")
    token = current_tier.set("pro")
    try:
        m.inc("rate_limited", cls="typing")
    finally:
        current_tier.reset(token)
    m.inc("breaker_transitions", name="unit-dep", state="open")
    m.inc("hub_events", 3)
    assert value("chat_disconnects_total", code="4408") == disconnects + 1
    assert value("chat_replays_total", source="log", outcome="ok") == replays + 1
    assert value("chat_rate_limited_total", **{"class": "typing", "tier": "pro"}) == limited + 1
    assert value("chat_breaker_state", dependency="unit-dep") == 2
    m.inc("breaker_transitions", name="unit-dep", state="half_open")
    assert value("chat_breaker_state", dependency="unit-dep") == 1
    assert value("chat_breaker_transitions_total", name="unit-dep", state="open") >= 1
    assert value("chat_hub_events_total") >= 3
    assert m.counter("hub_events") == 3  # the per-process count the older tests read is still kept


def test_a_counter_with_other_labels_than_its_first_use_is_logged_not_raised() -> None:
    m = Metrics()
    m.inc("unit_mixed_labels", kind="a")
    m.inc("unit_mixed_labels", other="b")  # a programming error: it must not fail the counted work
    assert m.counter("unit_mixed_labels", other="b") == 1
    assert value("chat_unit_mixed_labels_total", kind="a") == 1


def test_an_incomplete_run_counts_once_per_missing_event_name_never_per_call_id() -> None:
    before = {m: value("agent_runs_incomplete_total", missing=m) for m in ("tool_completed", "agent_thinking", "other")}
    count_incomplete(["tool_completed of call 1", "tool_completed of call 2", "agent_thinking", "made-up"])
    assert value("agent_runs_incomplete_total", missing="tool_completed") == before["tool_completed"] + 1
    assert value("agent_runs_incomplete_total", missing="agent_thinking") == before["agent_thinking"] + 1
    assert value("agent_runs_incomplete_total", missing="other") == before["other"] + 1
    assert value("agent_runs_incomplete_total", missing="call") == 0


CHILD = """
import sys, time
from monitoring.metrics import metrics
from monitoring.metrics.families import CONNECTIONS
from monitoring.metrics.meter import meter
from monitoring.metrics.exposition import record_process_stats
metrics.inc("disconnects", code="1000")
CONNECTIONS.set(int(sys.argv[1]))
meter.frame('{"type":"reply","id":"1","ok":true}')
meter.flush()
record_process_stats("server")
print("done", flush=True)
sys.stdin.read()  # stay alive until told
"""

SCRAPE = """
from prometheus_client.multiprocess import mark_process_dead
import os, sys
for pid in sys.argv[1:]:
    mark_process_dead(int(pid))
from monitoring.metrics.exposition import render
sys.stdout.write(render()[0].decode())
"""


def test_multiprocess_mode_sums_processes_and_forgets_dead_ones_gauges(tmp_path: Path) -> None:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(n)], env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for n in (3, 4)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == b"done"

        def scrape(*dead: int) -> dict[str, list[tuple[dict[str, str], float]]]:
            out = subprocess.run(
                [sys.executable, "-c", SCRAPE, *map(str, dead)], env=env, cwd=ROOT, capture_output=True, check=True
            ).stdout.decode()
            return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(out)}

        live = scrape()
        assert ({"code": "1000"}, 2.0) in live["chat_disconnects"]
        assert live["chat_connections"] == [({}, 7.0)]
        assert ({"type": "reply"}, 2.0) in live["chat_frames_sent"]
        pids = {labels["pid"] for labels, _ in live["process_resident_memory_bytes"]}
        assert pids == {str(c.pid) for c in children}
        children[0].stdin.close()  # type: ignore[union-attr]
        children[0].wait(timeout=10)
        after = scrape(children[0].pid)
        assert after["chat_connections"] == [({}, 4.0)]  # the dead process's gauge is gone...
        assert ({"code": "1000"}, 2.0) in after["chat_disconnects"]  # ...its counts are not
        assert {labels["pid"] for labels, _ in after["process_resident_memory_bytes"]} == {str(children[1].pid)}
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
