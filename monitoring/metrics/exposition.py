"""What /metrics and the staff dashboard read: one registry per scrape, the same numbers for both.

Multiprocess mode (PROMETHEUS_MULTIPROC_DIR set): a fresh registry over the directory's files, as
prometheus_client documents, so a scrape of any server process sums every server process and the
agent worker. Otherwise (embedded mode, tests): the process's default registry, with the client's
default process, platform and GC collectors.

process_* in multiprocess mode: the client's process collector only sees the process that answers
the scrape, so each process copies its own figures (the same collector's) into `liveall` gauges of
the same names every few seconds: one series per live process, labelled with its pid and role
(server or worker); a dead process's series go when `manage.py serve` marks it dead.
`process_cpu_seconds_total` is then typed gauge (per pid it only grows, so rate() still applies).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector

from monitoring.metrics.families import MULTIPROC_DIR
from monitoring.metrics.meter import meter

# The text format every Prometheus version reads (2.x expects 0.0.4; our names need nothing newer).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Only these families go to the dashboard's JSON (the rest of /metrics is for Prometheus).
DASHBOARD_PREFIXES = ("chat_", "agent_", "process_")

_PROCESS_GAUGES = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
)
_process_gauges: dict[str, Gauge] = {}


def scrape_registry() -> CollectorRegistry:
    if MULTIPROC_DIR is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=MULTIPROC_DIR)
    return registry


def render() -> tuple[bytes, str]:
    """The Prometheus text of every process (this one's batched frame counts flushed first)."""
    meter.flush()
    return generate_latest(scrape_registry()), CONTENT_TYPE


def record_process_stats(role: str) -> None:
    """Copy this process's process_* figures into its multiprocess gauges (no-op otherwise: the
    default registry's collector reports this process itself)."""
    if MULTIPROC_DIR is None:
        return
    if not _process_gauges:
        for name in _PROCESS_GAUGES:
            _process_gauges[name] = Gauge(
                name,
                f"{name} of each live process (multiprocess mode).",
                ["role"],
                registry=None,
                multiprocess_mode="liveall",
            )
    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            gauge = _process_gauges.get(sample.name)
            if gauge is not None:
                gauge.labels(role).set(sample.value)


def summary() -> dict[str, Any]:
    """The dashboard's families from the scrape registry, per family: its type and its samples as
    {label string: value}; a histogram's as {label string: {"buckets": [[le, cumulative], ...],
    "count": n, "sum": s}}. Label strings are "k=v,k=v" in label order ("" for none)."""
    meter.flush()
    out: dict[str, Any] = {}
    for family in scrape_registry().collect():
        if not family.name.startswith(DASHBOARD_PREFIXES):
            continue
        series: dict[str, Any] = {}
        for sample in family.samples:
            if family.type == "histogram":
                labels = {k: v for k, v in sample.labels.items() if k != "le"}
                entry = series.setdefault(_key(labels), {"buckets": [], "count": 0.0, "sum": 0.0})
                if sample.name.endswith("_bucket"):
                    entry["buckets"].append([_le(sample.labels["le"]), sample.value])
                elif sample.name.endswith("_count"):
                    entry["count"] = sample.value
                elif sample.name.endswith("_sum"):
                    entry["sum"] = sample.value
            elif sample.name.endswith("_created"):
                continue
            else:
                series[_key(sample.labels)] = series.get(_key(sample.labels), 0.0) + sample.value
        for entry in series.values():
            if isinstance(entry, dict):
                entry["buckets"].sort(key=lambda b: b[0] if b[0] is not None else float("inf"))
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = {"type": family.type, "series": series}
    return out


def _key(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _le(raw: str) -> float | None:
    """A bucket bound; None stands for +Inf (JSON has no infinity)."""
    value = float(raw)
    return None if value == float("inf") else value
