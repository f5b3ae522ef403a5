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


# The package reads top-down: each unit imports only from units in earlier layers (or its own), so a reader can
# understand a layer from the ones below it. The torch front end sits above the kernels because it translates torch
# modules into the algebra and picks a kernel class; the kernels' own `from_module` classmethods (GPyTorch-style
# constructors) call it from inside the function, the one upward use, listed here with its reason.
LAYERS = [
    ("_version", "warnings", "_validation", "graphs"),  # leaf utilities: version, messages, checks, graph data
    ("functional",),  # pure tensor math
    ("algebra",),  # the layer algebra
    ("backends",),  # how kernel matrices are evaluated
    ("kernels",),  # the GPyTorch kernels
    ("frontend", "activations"),  # torch modules, their translation; the public activation names
    ("predict", "models", "dnn2gp"),  # what is built on kernels
    ("experiments",),  # the paper's experiments
    ("",),  # the package root, which re-exports
    ("demo",),  # the demo, written as a user writes, against the root
]
UPWARD_IN_FUNCTIONS = {("kernels", "frontend"): "NNGPKernel.from_module and its kin call the translator"}


def _unit(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports_by_depth():
    """(module, imported module, inside a function) for every package import."""
    import ast

    out = []
    modules = _package_imports()
    for module in modules:
        path = os.path.join(ROOT, *module.split("."))
        path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
        is_init = path.endswith("__init__.py")
        tree = ast.parse(open(path).read())
        in_function = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function.update(id(n) for n in ast.walk(node) if n is not node)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = module.split(".") if is_init else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                if target in modules and target != module:
                    out.append((module, target, id(node) in in_function))
    return out


def test_the_package_imports_downward_only():
    """Catches an import that runs up the layers at any depth of a module (the cycle test above missed
    functional -> algebra, which was no cycle)."""
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    units = {_unit(m) for m in _package_imports()}
    assert units <= set(layer), f"units without a layer in LAYERS: {sorted(units - set(layer))}"
    upward = []
    for module, target, in_function in _imports_by_depth():
        a, b = _unit(module), _unit(target)
        if a == b or layer[b] < layer[a] or (in_function and (a, b) in UPWARD_IN_FUNCTIONS):
            continue
        upward.append(f"{module} -> {target}{' (in a function)' if in_function else ''}")
    assert not upward, "imports that run upward: " + "; ".join(upward)


def test_the_layout_page_names_every_module():
    layout = open(os.path.join(ROOT, "docs", "guide", "layout.md")).read()
    missing = []
    for folder, _, files in os.walk(os.path.join(ROOT, "gpytorch_nngp")):
        for name in files:
            if name.endswith(".py") and name != "__init__.py":
                rel = os.path.relpath(os.path.join(folder, name), os.path.join(ROOT, "gpytorch_nngp"))
                if rel.replace(os.sep, "/") not in layout:
                    missing.append(rel)
    assert not missing, f"docs/guide/layout.md does not name {sorted(missing)}"


def test_no_test_module_imports_another():
    """Shared helpers live in tests/helpers (or conftest.py): a test module importing another runs that module's
    collection-time code twice and hides what is shared."""
    import ast

    offenders = []
    tests = os.path.join(ROOT, "tests")
    for name in sorted(os.listdir(tests)):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        for node in ast.walk(ast.parse(open(os.path.join(tests, name)).read())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{name} imports {m}" for m in modules if m.split(".")[0].startswith("test_")]
    assert not offenders, "; ".join(offenders)
