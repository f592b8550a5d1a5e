"""`manage.py serve`: the production layout on one machine — N ASGI server processes and the
agent worker, supervised together (Ctrl-C stops all). Used by `make run`, the e2e tests and the
benchmarks, so they all measure what a deployment runs.

The ASGI server is uvicorn with the sans-I/O websockets implementation by default: measured on
this 2-core machine it costs ~5x less CPU per delivered frame than daphne (DESIGN "facts",
docs/operations.md). `--server daphne` runs daphne instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


def server_argv(server: str, host: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "chatsite.asgi:application", "--host", host, "--port", str(port),
                "--ws", "websockets-sansio", "--no-access-log", "--lifespan", "off",
                "--ws-max-size", str(settings.CHAT_MAX_FRAME_BYTES + 1024)]
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "chatsite.asgi:application"]
    raise CommandError(f"unknown server {server!r}")


class Command(BaseCommand):
    help = "Run the ASGI server process(es) and the agent worker together."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--processes", type=int, default=1,
                            help="server processes, on consecutive ports from --port")
        parser.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
        parser.add_argument("--no-worker", action="store_true", help="do not start the agent worker")

    def handle(self, *args: Any, **options: Any) -> None:
        env = dict(os.environ)
        procs: list[subprocess.Popen[bytes]] = []
        for i in range(options["processes"]):
            argv = server_argv(options["server"], options["host"], options["port"] + i)
            procs.append(subprocess.Popen(argv, env=env))
        if settings.AGENT_RUNNER == "worker" and not options["no_worker"]:
            procs.append(subprocess.Popen([sys.executable, "manage.py", "runworker", "agent-runs"], env=env))
        elif settings.AGENT_RUNNER == "inprocess" and options["processes"] > 1:
            raise CommandError("AGENT_RUNNER=inprocess with several processes would run agents in each")

        def stop(*_: Any) -> None:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        ports = ", ".join(str(options["port"] + i) for i in range(options["processes"]))
        self.stdout.write(f"serving on {options['host']} port(s) {ports} with {options['server']}"
                          f"; agent runner: {settings.AGENT_RUNNER}")
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    self.stderr.write(f"process {proc.args!r} exited with {proc.returncode}; stopping")
                    stop()
            time.sleep(0.5)
