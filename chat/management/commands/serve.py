"""`manage.py serve`: the production layout on one machine — N ASGI server processes, the agent
worker and the notifications worker (Web Push, email digests), supervised together (Ctrl-C stops
all). Used by `make run`, the e2e tests and the benchmarks, so they all measure what a deployment runs.

The ASGI server is uvicorn with the sans-I/O websockets implementation by default: measured on
this 2-core machine with tests/benchmarks/fanout.py it costs about half of daphne's CPU per
delivered frame (tests/benchmarks/README.md). `--server daphne` runs daphne instead.

One URL, every core: by default every server process listens on --port itself (SO_REUSEPORT) and
the kernel spreads connections over them; `--processes` defaults to one per CPU when the agents run in
their own worker and events travel through Redis. `--ports separate` puts them on consecutive ports
instead (the tests use it to reach one process in particular). Each uvicorn process is configured by
chatsite/uvicorn_server.py (our protocol classes, trusted proxies, and a SIGTERM that lets sockets
write what they have queued before closing with 1012). Each server process is told how many there
are and which one it is (CHAT_SERVER_PROCESSES, CHAT_SERVER_INDEX), so that while Redis cannot be
asked each allows only its share of a limit (chat/infra/rate_limiter.py).

Metrics: every child records into one PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess
mode), so /metrics on any server process sums all of them and the worker. The operator's directory
when the variable is set, else a new temporary one (removed on exit); its files are removed at
start (counts from an earlier run must not be added to this one's), and a child that exits is
marked dead so its live gauges (connections, breaker states, process_*) stop counting.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from prometheus_client.multiprocess import mark_process_dead

from chat.infra import client_address


def server_argv(server: str, host: str, port: int, *, reuse_port: bool = False) -> list[str]:
    if server == "uvicorn":
        # Configured in chatsite/uvicorn_server.py (its command line cannot share a port or drain on SIGTERM).
        return [
            sys.executable,
            "-m",
            "chatsite.uvicorn_server",
            "--host",
            host,
            "--port",
            str(port),
            *(["--reuse-port"] if reuse_port else []),
        ]
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "chatsite.asgi:application"]
    raise CommandError(f"unknown server {server!r}")


def metrics_directory() -> tuple[str, bool]:
    """(PROMETHEUS_MULTIPROC_DIR for the children, whether serve created it). An operator's
    directory is kept but emptied of the client's files (*.db); otherwise a new temporary one."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not configured:
        return tempfile.mkdtemp(prefix="chat-metrics-"), True
    path = Path(configured)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return str(path), False


def default_processes() -> int:
    """One server process per CPU when the processes can share the work (the agents run in their own
    worker and the sockets' events travel through Redis); otherwise one (the embedded layout's in-memory
    channel layer and in-process agents are per process)."""
    layer = str(settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", ""))
    if settings.AGENT_RUNNER == "worker" and "redis" in layer.lower():
        return max(1, os.cpu_count() or 1)
    return 1


class Command(BaseCommand):
    help = "Run the ASGI server process(es), the agent worker and the notifications worker together."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help="server processes (default: one per CPU with the agent worker and Redis, else 1)",
        )
        parser.add_argument(
            "--ports",
            choices=["shared", "separate"],
            default="shared",
            help="shared: every process on --port (SO_REUSEPORT); separate: consecutive ports from --port",
        )
        parser.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
        parser.add_argument("--no-worker", action="store_true", help="do not start the agent worker")
        parser.add_argument(
            "--no-notifications", action="store_true", help="do not start the notifications worker (push, email)"
        )
        parser.add_argument("--no-webhooks", action="store_true", help="do not start the webhooks worker")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            client_address.trusted_networks()
        except ValueError as exc:
            raise CommandError(f"TRUSTED_PROXIES: {exc}") from None
        processes = options["processes"] if options["processes"] is not None else default_processes()
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        if settings.AGENT_RUNNER == "inprocess" and processes > 1:
            raise CommandError("AGENT_RUNNER=inprocess with several processes would run agents in each")
        shared = options["ports"] == "shared"
        if shared and processes > 1 and options["server"] != "uvicorn":
            raise CommandError("only uvicorn processes share one port: use --ports separate with daphne")
        ports = [options["port"] + (0 if shared else i) for i in range(processes)]
        argvs: list[list[str]] = [
            server_argv(options["server"], options["host"], port, reuse_port=shared) for port in ports
        ]
        metrics_dir, own_metrics_dir = metrics_directory()
        common = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
        # Per child: how many server processes share the limits, and which one this is.
        envs = [dict(common, CHAT_SERVER_PROCESSES=str(processes), CHAT_SERVER_INDEX=str(i)) for i in range(processes)]
        if settings.AGENT_RUNNER == "worker" and not options["no_worker"]:
            argvs.append([sys.executable, "manage.py", "runworker", "agent-runs"])
            envs.append(dict(common, CHAT_SERVER_PROCESSES=str(processes)))
        if not options["no_notifications"]:  # Web Push, email digests, agent_finished: off the request path
            argvs.append([sys.executable, "manage.py", "notifications_worker"])
            envs.append(dict(common, CHAT_SERVER_PROCESSES=str(processes)))
        if not options["no_webhooks"]:  # enterprise webhooks: slow receivers wait in a process of their own
            argvs.append([sys.executable, "manage.py", "webhooks_worker"])
            envs.append(dict(common, CHAT_SERVER_PROCESSES=str(processes)))
        procs: list[subprocess.Popen[bytes]] = [
            subprocess.Popen(argv, env=env) for argv, env in zip(argvs, envs, strict=True)
        ]
        restarts = [0] * len(procs)
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
            if own_metrics_dir:
                shutil.rmtree(metrics_dir, ignore_errors=True)
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(
            f"serving on {options['host']} port(s) {', '.join(str(p) for p in sorted(set(ports)))} with "
            f"{processes} {options['server']} process(es)"
            f"; agent runner: {settings.AGENT_RUNNER}"
        )
        self.stdout.flush()
        while not stopping:
            for i, proc in enumerate(procs):
                if proc.poll() is not None and not stopping:
                    # A crashed server or worker is replaced, not left dead: clients reconnect and
                    # resume, and a new worker's reaper fails the runs the dead one held.
                    restarts[i] += 1
                    mark_process_dead(proc.pid, metrics_dir)
                    delay = min(10.0, 0.5 * 2 ** min(restarts[i], 5))
                    self.stderr.write(
                        f"process {' '.join(argvs[i][1:4])} exited with {proc.returncode}; restarting in {delay:.1f}s"
                    )
                    time.sleep(delay)
                    procs[i] = subprocess.Popen(argvs[i], env=envs[i])
            time.sleep(0.2)
