"""Mutation testing of the core, one module at a time (`make mutation`).

mutmut 3 reads its configuration from pyproject.toml's [tool.mutmut] table: which modules it may
mutate and which fast tests it runs. It first runs those tests once to learn which test covers which
function, then each mutant runs only the tests that covered the function it changed. This driver
runs mutmut once per module (a glob of that module's mutant names), so each module's numbers are
fresh even when mutmut has cached earlier results, then prints

    module | mutants | killed | survived | timeout | score

and writes the same rows to tests/benchmarks/results/mutation.json.

score = (killed + timeout) / mutants. A mutant no selected test reaches ("no tests") counts against
the score like a survivor: nothing would notice that change.

Usage: python tests/mutation/run_mutation.py [module.py ...]   (default: every module below)
The environment must name the services the tests use (the Makefile's target sets it). Every mutmut
run is niced and uses one worker: the machine is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "benchmarks" / "results" / "mutation.json"
MUTMUT = ROOT / ".venv" / "bin" / "mutmut"

# In priority order; each must also be listed in [tool.mutmut] only_mutate.
MODULES = [
    "chat/infra/message_buffer.py",
    "chat/infra/rate_limiter.py",
    "chat/realtime/throttle.py",
    "chat/infra/error_recovery.py",
    "chat/infra/breakers.py",
    "chat/realtime/outbox.py",
    "chat/realtime/auth.py",
    "chat/infra/log_redaction.py",
    "chat/services/messages.py",
    "chat/services/conversations.py",
    "chat/selectors.py",
    "agents/services.py",
    "agents/runtime.py",
]

# mutmut's exit codes per mutant (mutmut/stats.py), folded into the table's columns.
KILLED = {1, 3}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {36, -24, 24, 152, 255}
SKIPPED = {34, 37}


def dotted(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def tally(module: str) -> dict[str, object]:
    """Counts from the .meta file mutmut keeps next to the mutated copy."""
    meta = ROOT / "mutants" / (module + ".meta")
    codes = list(json.loads(meta.read_text())["exit_code_by_key"].values()) if meta.exists() else []
    killed = sum(c in KILLED for c in codes)
    survived = sum(c in SURVIVED for c in codes)
    no_tests = sum(c in NO_TESTS for c in codes)
    timeout = sum(c in TIMEOUT for c in codes)
    skipped = sum(c in SKIPPED for c in codes)
    total = len(codes) - skipped
    other = total - killed - survived - no_tests - timeout  # not checked, suspicious, crashed
    score = round(100 * (killed + timeout) / total, 1) if total else None
    return {
        "module": module,
        "mutants": total,
        "killed": killed,
        "survived": survived + no_tests + other,
        "no_tests": no_tests,
        "timeout": timeout,
        "score": score,
    }


def run_module(module: str, log_dir: Path) -> tuple[int, float]:
    log = log_dir / f"mutation-{dotted(module)}.log"
    cmd = ["nice", "-n", "19", str(MUTMUT), "run", "--max-children", "1", f"{dotted(module)}.*"]
    started = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return rc, time.monotonic() - started


def drop_test_database() -> None:
    """The tests run with --reuse-db (see [tool.mutmut]); the database this run created goes now."""
    name = os.environ.get("TEST_DATABASE_NAME")
    url = os.environ.get("DATABASE_URL")
    if not name or not url or not name.startswith("test_chat_mut_"):
        return  # only ever the mutation run's own database
    import psycopg

    with psycopg.connect(url, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def write_results(rows: list[dict[str, object]], seconds: float) -> None:
    RESULTS.write_text(json.dumps({"modules": rows, "seconds": round(seconds)}, indent=2) + "\n")


def main(argv: list[str]) -> int:
    modules = argv or MODULES
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        print(f"not in scope: {unknown}; choose from {MODULES}", file=sys.stderr)
        return 2
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.monotonic()
    try:
        for module in modules:
            rc, took = run_module(module, RESULTS.parent)
            row = tally(module) | {"mutmut_exit": rc, "seconds": round(took)}
            rows.append(row)
            print(f"{module}: {row['killed']}/{row['mutants']} killed in {took:.0f}s (mutmut exit {rc})", flush=True)
            # Written after every module: an interrupted run still leaves the modules it finished.
            write_results(rows, time.monotonic() - started)
    finally:
        drop_test_database()
    header = ("module", "mutants", "killed", "survived", "timeout", "score")
    print(" | ".join(header))
    for row in rows:
        score = "n/a" if row["score"] is None else f"{row['score']} %"
        print(" | ".join(str(row[h]) for h in header[:-1]) + f" | {score}")
    write_results(rows, time.monotonic() - started)
    print(f"written {RESULTS.relative_to(ROOT)}")
    return 0 if all(r["mutmut_exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
