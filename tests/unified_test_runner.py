"""Run the test suite, or a slice of it, against the real PostgreSQL and Redis.

    python tests/unified_test_runner.py --category unit --pattern websocket_core
    python tests/unified_test_runner.py --categories unit,integration,e2e --pattern websocket_core --real-services
    python tests/unified_test_runner.py --list --category e2e
    python tests/unified_test_runner.py --category integration -- -x -k reconnect   # after --: pytest's own

Plain standard library on purpose: it must start under any `python`, then hands over to the project's
virtualenv (made by `make install`), where pytest and Django live.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import struct
import sys
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
CATEGORIES = ("unit", "integration", "e2e")
# pytest's own codes: 4 is what the suite's conftest exits with when a service is missing, 5 means
# nothing was collected.
SERVICE_MISSING = 4
NOTHING_SELECTED = 5
# PostgreSQL's SSLRequest: any PostgreSQL answers it with one byte, before any authentication.
PG_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def use_project_python() -> None:
    """Re-exec under .venv/bin/python unless this interpreter can already run the suite."""
    if all(importlib.util.find_spec(name) for name in ("django", "pytest", "pytest_django")):
        return
    if not VENV_PYTHON.exists():
        sys.exit(f"{VENV_PYTHON} does not exist: run `make install` first (it creates the virtualenv).")
    # Compare prefixes, not resolved executables: the venv's python is a symlink to the base one.
    if Path(sys.prefix).resolve() == VENV_PYTHON.parents[1].resolve():
        sys.exit(f"{VENV_PYTHON} cannot import django/pytest: run `make install` first.")
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), __file__, *sys.argv[1:]])


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    # Everything after `--` belongs to pytest, untouched (argparse would try to read its options).
    ours, pytest_args = (argv[: argv.index("--")], list(argv[argv.index("--") + 1 :])) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        prog="python tests/unified_test_runner.py",
        description="Run tests/unit, tests/integration and tests/e2e (or some of them) with pytest against "
        "the real PostgreSQL and Redis, with the environment `make test` sets. There is no mock mode.",
        epilog="Arguments after `--` are passed to pytest. As in `make test`, tests marked chaos are deselected "
        "(`make chaos` runs them; so does `-- -m chaos`). The exit code is pytest's.",
    )
    parser.add_argument(
        "--category",
        "--categories",
        dest="categories",
        action="extend",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        metavar="NAMES",
        help=f"comma-separated, from {', '.join(CATEGORIES)}; repeatable (default: all three)",
    )
    parser.add_argument(
        "--pattern",
        help="only test files whose path under tests/ contains PATTERN or matches it as a glob "
        "(e.g. websocket_core, 'test_*_e2e.py')",
    )
    parser.add_argument(
        "--real-services",
        action="store_true",
        help="accepted for clarity: real PostgreSQL and Redis are the default and the only mode (no mocks)",
    )
    parser.add_argument("--list", action="store_true", help="print the selected test files and exit")
    args = parser.parse_args(ours)
    args.categories = args.categories or list(CATEGORIES)
    unknown = sorted(set(args.categories) - set(CATEGORIES))
    if unknown:
        parser.error(f"unknown category {', '.join(unknown)} (choose from {', '.join(CATEGORIES)})")
    # Always in the same order, fastest feedback first, whatever order they were named in.
    args.categories = [name for name in CATEGORIES if name in args.categories]
    return args, pytest_args


def select(categories: Sequence[str], pattern: str | None) -> list[Path]:
    selected = []
    for category in categories:
        for path in sorted((TESTS / category).rglob("*.py")):
            if not (path.name.startswith("test_") or path.name.endswith("_test.py")):
                continue  # pytest's default file patterns: anything else is not collected anyway
            relative = path.relative_to(TESTS).as_posix()
            if pattern is None or pattern in relative or fnmatch(relative, pattern) or fnmatch(path.name, pattern):
                selected.append(path)
    return selected


def run_environment(categories: Sequence[str]) -> dict[str, str]:
    """The Makefile's TEST_ENV: a test database and channel prefix of this run's own, so runs sharing
    the machine's PostgreSQL and Redis do not collide. Whatever the caller set wins."""
    env = dict(os.environ)
    run = str(os.getpid())
    env.setdefault("DB_POOL_MIN", "0")
    env.setdefault("TEST_DATABASE_NAME", f"test_chat_{run}")
    env.setdefault("CHANNEL_PREFIX", f"chattest{run}")
    env.setdefault("DATABASE_URL", f"postgres://postgres@{env.get('PGHOST', '127.0.0.1')}:5432/chat")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    if "e2e" in categories:
        # The e2e stacks create their own databases and prefixes: point them at the same servers.
        env.setdefault("PG_ADMIN_URL", urlsplit(env["DATABASE_URL"])._replace(path="/postgres").geturl())
        env.setdefault("E2E_REDIS_URL", env["REDIS_URL"])
    return env


def unreachable(service: str, url: str, variable: str) -> str | None:
    """None if the service answers at url, else a one-line reason. A plain socket check, so that a
    missing server is reported before pytest (and Django) even start; tests/conftest.py then checks
    again with the real client libraries (authentication included)."""
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("postgres", "postgresql", "redis"):
        return None  # a local socket or TLS: left to the conftest's check with the real clients
    port = parts.port or (6379 if service == "Redis" else 5432)
    probe, expected = (b"PING\r\n", (b"+", b"-")) if service == "Redis" else (PG_SSL_REQUEST, (b"S", b"N"))
    try:
        with socket.create_connection((parts.hostname, port), timeout=3) as sock:
            sock.sendall(probe)
            answer = sock.recv(1)
    except OSError as exc:
        reason = exc.strerror or str(exc) or exc.__class__.__name__
    else:
        if answer.startswith(expected):
            return None
        reason = f"what listens there is not {service}: it answered {answer!r}"
    return f"{service} at {parts.hostname}:{port} is not reachable ({reason}): start it or point {variable} at it."


def main(argv: Sequence[str]) -> int:
    args, pytest_args = parse_args(argv)
    files = select(args.categories, args.pattern)
    if not files:
        where = ", ".join(f"tests/{name}" for name in args.categories)
        print(f"No test file under {where} matches --pattern {args.pattern!r}: nothing to run.", file=sys.stderr)
        return NOTHING_SELECTED
    relative = [path.relative_to(ROOT).as_posix() for path in files]
    if args.list:
        print("\n".join(relative))
        return 0

    env = run_environment(args.categories)
    wanted = [("PostgreSQL", "DATABASE_URL"), ("Redis", "REDIS_URL")]
    if "e2e" in args.categories:
        wanted += [("PostgreSQL", "PG_ADMIN_URL"), ("Redis", "E2E_REDIS_URL")]
    services: dict[tuple[str, str], tuple[str, str]] = {}
    for name, variable in wanted:  # each server once, under the first variable that names it
        services.setdefault((name, urlsplit(env[variable]).netloc), (env[variable], variable))
    problems = [p for (name, _), (url, variable) in services.items() if (p := unreachable(name, url, variable))]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return SERVICE_MISSING

    # Like `make test`: the chaos run is deselected. A `-m` of the caller's, after it, wins.
    command = [sys.executable, "-m", "pytest", "-m", "not chaos", *relative, *pytest_args]
    print(
        f"{len(files)} test files ({', '.join(args.categories)}); test database {env['TEST_DATABASE_NAME']}, "
        f"channel prefix {env['CHANNEL_PREFIX']}",
        flush=True,
    )
    os.chdir(ROOT)  # pyproject.toml's pytest settings and the relative paths are the repository root's
    # Replace this process: pytest's exit code becomes ours, and Ctrl-C reaches pytest alone.
    os.execve(sys.executable, command, env)
    return 0  # not reached


if __name__ == "__main__":
    use_project_python()
    sys.exit(main(sys.argv[1:]))
