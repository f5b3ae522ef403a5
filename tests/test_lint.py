"""Style stays checked: ruff (configured in pyproject.toml) over the package, tests, tutorials and benchmarks."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_finds_nothing():
    pytest.importorskip("ruff", reason="ruff comes with the dev extra: pip install -e '.[dev]'")
    command = [sys.executable, "-m", "ruff"] if shutil.which("ruff") is None else ["ruff"]
    result = subprocess.run([*command, "check", "--no-cache", "--output-format", "concise", ROOT], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _package_imports():
    """module -> the package modules it imports (at any depth of its body, functions included)."""
    import ast

    package = os.path.join(ROOT, "gpytorch_nngp")
    graph = {}
    for folder, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            is_init = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_init else parts)
            targets = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = module.split(".") if is_init else module.split(".")[:-1]
                        base = base[: len(base) - node.level + 1]
                        prefix = ".".join(base + ([node.module] if node.module else []))
                    else:
                        prefix = node.module or ""
                    if prefix.startswith("gpytorch_nngp"):
                        targets.add(prefix)
                        targets.update(f"{prefix}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    targets.update(a.name for a in node.names if a.name.startswith("gpytorch_nngp"))
            graph[module] = targets
    return {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}


def test_no_import_cycles_between_modules():
    """Modules below a package import each other in one direction only (package __init__ files re-export and are left
    out): a cycle means two modules that cannot be understood, or changed, one without the other."""
    graph = {m: {t for t in ts if not _is_package(t)} for m, ts in _package_imports().items() if not _is_package(m)}
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _is_package(module):
    return os.path.isdir(os.path.join(ROOT, *module.split(".")))
