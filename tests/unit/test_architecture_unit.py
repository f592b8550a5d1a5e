"""The shape of the house, checked: layers that point one way (import-linter's contracts in
.importlinter), one publish road, modules of a walkable size, and no hidden imports."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("chatsite", "chat", "agents", "monitoring", "enterprise")
# A module longer than this is two modules (migrations are generated, not walked).
MAX_MODULE_LINES = 400
# The channel layer's sending calls: only the bus makes them.
SENDING_CALLS = frozenset({"group_send", "send_nowait"})


def modules() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(tree: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, node
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node


def test_import_contracts_hold() -> None:
    """lint-imports exits 0 only when every contract in .importlinter is kept."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--config", str(ROOT / ".importlinter")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_import_contracts_catch_a_violation(tmp_path: Path) -> None:
    """The contracts are not vacuous: a model importing a service breaks the layers contract."""
    config = (ROOT / ".importlinter").read_text()
    shadow = tmp_path / "house"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, shadow / package, ignore=shutil.ignore_patterns("__pycache__", "static"))
    models = shadow / "chat" / "models.py"
    models.write_text(models.read_text() + "\nfrom chat.services import messages  # a floor looking up\n")
    (shadow / ".importlinter").write_text(config)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--config", str(shadow / ".importlinter")],
        cwd=shadow,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(shadow), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    assert "chat.models is not allowed to import chat.services" in result.stdout.replace("\n", "")


def test_only_the_bus_sends_on_the_channel_layer() -> None:
    senders = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in SENDING_CALLS:
                senders.add(dotted(path))
    assert senders == {"chat.infra.bus"}


def test_only_the_publish_road_uses_the_bus() -> None:
    # imported_modules names `from chat.infra import bus` as chat.infra.bus too.
    importers = {
        dotted(path)
        for path in modules()
        for name, _ in imported_modules(ast.parse(path.read_text()))
        if name == "chat.infra.bus" or name.startswith("chat.infra.bus.")
    }
    assert importers == {"chat.publishing"}


def test_modules_stay_walkable() -> None:
    long = {dotted(p): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_imports_inside_functions_say_why() -> None:
    """An import hidden in a function is a dependency nobody sees at the top: allowed only with a
    comment (on its line or the line above) saying why it cannot be at the top."""
    hidden = []
    for path in modules():
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom) and not _explained(lines, inner.lineno):
                    hidden.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert hidden == []


def _explained(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line, or above the block of imports it belongs to."""
    if "#" in lines[lineno - 1]:
        return True
    above = lineno - 2
    while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


@pytest.mark.parametrize(
    "seed_component",
    [
        "chat/infra/message_buffer.py",
        "chat/infra/rate_limiter.py",
        "monitoring/event_monitor.py",
        "chat/realtime/reconnection_handler.py",
        "chat/realtime/broadcast_manager.py",
        "chat/infra/error_recovery.py",
    ],
)
def test_each_seed_component_has_its_module_and_test(seed_component: str) -> None:
    assert (ROOT / seed_component).is_file()
    name = Path(seed_component).stem
    assert (ROOT / "tests" / "unit" / "websocket_core" / f"test_websocket_{name}_unit.py").is_file()
