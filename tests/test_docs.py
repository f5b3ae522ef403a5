"""The documentation site (docs/, Sphinx): every public name has a docstring and an entry in the API reference, and
(marked slow) the whole site builds with warnings as errors, the tutorials run at their quick sizes."""
import importlib
import inspect
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ["gpytorch_nngp", "gpytorch_nngp.kernels", "gpytorch_nngp.activations", "gpytorch_nngp.graphs",
            "gpytorch_nngp.backends", "gpytorch_nngp.models", "gpytorch_nngp.dnn2gp", "gpytorch_nngp.predict",
            "gpytorch_nngp.experiments", "gpytorch_nngp.algebra", "gpytorch_nngp.functional", "gpytorch_nngp.warnings"]


def public_names():
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.ismodule(obj) and not name.startswith("__"):
                yield package, name, obj


def test_every_public_name_has_a_docstring_and_a_reference_entry():
    with open(os.path.join(ROOT, "docs", "api.rst")) as f:
        api = f.read()
    documented = {}  # id of an object -> where api.rst documents it
    current = None
    for line in api.splitlines():
        if line.startswith(".. currentmodule:: "):
            current = line.split()[-1]
        match = re.match(r"\.\. auto(class|function|data):: (\w+)", line)
        if match:
            documented[(current, match.group(2))] = True
    missing, undocumented = [], []
    by_object = {}
    for package, name, obj in public_names():
        if inspect.isclass(obj) or inspect.isfunction(obj):
            by_object.setdefault(id(obj), []).append((package, name))
            if not (obj.__doc__ or "").strip():
                undocumented.append(f"{package}.{name}")
        elif (package, name) not in documented:
            missing.append(f"{package}.{name}")
    for places in by_object.values():
        if not any(place in documented for place in places):
            missing.append(".".join(places[0]))
    assert not missing, f"public names missing from docs/api.rst (run python docs/generate_api.py): {missing}"
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_the_guide_covers_the_readme_sections_and_every_page_is_in_a_toctree():
    guide = os.path.join(ROOT, "docs", "guide")
    with open(os.path.join(ROOT, "docs", "index.md")) as f:
        index = f.read()
    for page in sorted(os.listdir(guide)):
        assert f"guide/{page[:-3]}" in index, f"docs/guide/{page} is in no toctree of docs/index.md"
    for page in ("kernels", "architectures", "graphs", "backends", "classification", "dnn2gp", "botorch",
                 "benchmarks", "from_neural_tangents"):
        assert os.path.exists(os.path.join(guide, f"{page}.md")), page


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path):
    """python -m sphinx -W -b html docs <out>: nitpicky references, every docstring, every tutorial at --quick."""
    pytest.importorskip("sphinx_gallery", reason="the docs extra: pip install -e '.[docs]'")
    import shutil

    # The gallery's generated pages are cached in docs/tutorials: without them every tutorial runs again.
    shutil.rmtree(os.path.join(ROOT, "docs", "tutorials"), ignore_errors=True)
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                             os.path.join(ROOT, "docs"), str(tmp_path / "html")], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "html" / "api.html").exists() and (tmp_path / "html" / "tutorials" / "index.html").exists()
