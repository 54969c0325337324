"""Every import in the package points down the layers, and no import closes a circle.

Imports are read from the source (module level, inside functions, and under
``TYPE_CHECKING`` alike), so a lazy import cannot hide an upward edge. The
layers are the README's Layout section, lowest first (a test holds the two
together); a module may import its own layer or a lower one. A new module must
be placed in a layer here.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

PACKAGE = "continuum_celery"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE

#: Lowest first. ``journal.*`` stands for every module of the journal package.
LAYERS: list[list[str]] = [
    ["errors", "serialization", "events", "states", "ids"],
    ["config", "telemetry", "tracing", "metrics"],
    ["hashing", "runtime", "versioning", "activities", "workflows", "activity_context"],
    ["replay", "futures", "saga", "context", "snapshots"],
    ["journal.*"],
    ["leases", "redis_guard", "wakeups", "wakeup_pump", "notify", "routing", "cache", "publisher", "dispatch"]
    + ["canvas"],
    ["supervisor", "executor", "stepper", "client"],
    ["tasks", "lifecycle", "wiring", "installer"],
    ["celeryconfig", "app", "embedded", "durable"],
    ["<root>"],
    ["examples.*"],
    ["cli_format", "worker_probe", "doctor", "pruning", "replay_check", "testing", "demo"],
    ["cli_context", "cli_runs", "cli_versions", "cli"],
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] == "migrations":
            continue  # Alembic scripts, loaded by Alembic, never imported by the package
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name or "<root>"] = path
    return found


def _layer_of(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            if entry == module or (entry.endswith(".*") and (module + ".").startswith(entry[:-1])):
                return index
    raise AssertionError(f"module {PACKAGE}.{module} is in no layer: add it to LAYERS in {__file__}")


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``module`` imports (``<root>`` for names taken from ``__init__``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if module == "<root>":
        package = ""
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                if not (node.module or "").startswith(PACKAGE):
                    continue
                source = (node.module or "")[len(PACKAGE) + 1 :]
            targets = [(source, alias.name) for alias in node.names]
        else:
            continue
        for source, name in targets:
            if name is None:
                if not source.startswith(PACKAGE):
                    continue
                source = source[len(PACKAGE) + 1 :]
            sub = f"{source}.{name}" if source and name else name or ""
            if name is not None and sub in modules:
                edges.add(sub)  # ``from pkg import submodule``
            elif (source or "<root>") in modules:
                edges.add(source or "<root>")
    edges.discard(module)
    return edges


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_import_points_down_the_layers() -> None:
    upward = [
        f"{PACKAGE}.{module} (layer {_layer_of(module)}) imports {PACKAGE}.{target} (layer {_layer_of(target)})"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if _layer_of(target) > _layer_of(module)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            cycle = visit(target, path + [module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .client import RunHandle\n"
        "def f():\n    from .installer import Continuum\n    from . import telemetry\n"
    )
    path = tmp_path / "definitions.py"
    path.write_text(source)
    modules = {"client": path, "installer": path, "telemetry": path, "definitions": path}
    assert _imports("definitions", path, modules) == {"client", "installer", "telemetry"}


def test_the_readme_layout_lists_every_module_in_layer_order() -> None:
    block = (ROOT.parent / "README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    listed: list[str] = []
    for line in block.splitlines():
        if match := re.match(r"^  (\w+)\.py\b", line):
            listed.append(match.group(1))
            listed += [m for m in re.findall(r"\b(cli_\w+)\b", line) if m != match.group(1)]  # cli.py's siblings
    named = {m for layer in LAYERS for m in layer if not m.endswith(".*") and m != "<root>"}
    only_readme, only_layers = sorted(set(listed) - named), sorted(named - set(listed))
    assert not only_readme and not only_layers, f"README only: {only_readme}; LAYERS only: {only_layers}"
    layers = [_layer_of(m) for m in listed]
    assert layers == sorted(layers), "the README lists modules out of layer order: " + ", ".join(
        f"{m} ({n})" for m, n in zip(listed, layers, strict=True)
    )
    # The journal's modules are named one by one, or by a pattern such as ``sql*.py``.
    patterns = re.findall(r"\b([\w*]+)\.py\b", block.split("journal/", 1)[1].split("# 6.", 1)[0])
    unnamed = [
        p.stem
        for p in sorted((ROOT / "journal").glob("*.py"))
        if p.stem != "__init__" and not any(fnmatch.fnmatch(p.stem, pattern) for pattern in patterns)
    ]
    assert not unnamed, f"the README's journal/ line names none of {unnamed}"
