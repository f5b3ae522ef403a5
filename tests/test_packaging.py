"""The package as users install it: a wheel and an sdist that `python -m build` makes, the wheel installed (not
editable) into a clean virtual environment without the optional pykeops (the `keops` extra) running the demo."""
import os
import subprocess
import sys
import tempfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_the_wheel_installed_in_a_clean_environment_runs_the_demo():
    """Built without build isolation (this machine has no index for setuptools), installed without its
    dependencies into a fresh venv that sees the test environment's site-packages through a .pth line (so the
    editable install's finder is not active there) and runs from outside the checkout, so the installed copy is the
    one imported."""
    pytest.importorskip("build", reason="python -m build comes with the dev extra")
    import sysconfig

    with tempfile.TemporaryDirectory() as tmp:
        dist = os.path.join(tmp, "dist")
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT], cwd=tmp)
        wheels = [f for f in os.listdir(dist) if f.endswith(".whl")]
        sdists = [f for f in os.listdir(dist) if f.endswith(".tar.gz")]
        assert len(wheels) == 1 and len(sdists) == 1, os.listdir(dist)
        import gpytorch_nngp

        assert f"-{gpytorch_nngp.__version__}-" in wheels[0]
        names = zipfile.ZipFile(os.path.join(dist, wheels[0])).namelist()
        assert "gpytorch_nngp/py.typed" in names and "gpytorch_nngp/frontend/translate.py" in names
        assert not any(n.startswith(("tests/", "benchmarks/", "tutorials/")) for n in names)
        env = os.path.join(tmp, "venv")
        _run([sys.executable, "-m", "venv", "--without-pip", env])
        python = os.path.join(env, "bin", "python")
        site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
        with open(os.path.join(site, "test_environment.pth"), "w") as f:
            f.write(sysconfig.get_paths()["purelib"] + "\n")
        _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", site,
              os.path.join(dist, wheels[0])])
        # Without the optional pykeops (the keops extra not installed): the package imports, the demo runs, every
        # other backend works, and backend="keops" names the extra.
        code = (
            "import sys; sys.modules['pykeops'] = None; sys.modules['keopscore'] = None\n"
            "import torch, gpytorch_nngp; print(gpytorch_nngp.__file__)\n"
            "from gpytorch_nngp import NNGPKernel\n"
            "from gpytorch_nngp.backends import KEOPS_AVAILABLE\n"
            "assert not KEOPS_AVAILABLE\n"
            "x = torch.randn(30, 3)\n"
            "for backend in ('dense', 'lazy', 'auto'):\n"
            "    with torch.no_grad(): assert NNGPKernel(2, backend=backend)(x).to_dense().shape == (30, 30)\n"
            "try:\n"
            "    NNGPKernel(2, backend='keops')\n"
            "except ImportError as e:\n"
            "    assert 'gpytorch_nngp[keops]' in str(e), e\n"
            "    print('keops refused')\n"
            "from gpytorch_nngp.demo import main; main(['--n-train', '200', '--depth', '1'])\n"
        )
        out = _run([python, "-c", code], cwd=tmp, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout
        assert out.splitlines()[0].startswith(site), out  # the wheel's copy, not the checkout
        assert "keops refused" in out and "NNGP" in out and "NTK" in out
