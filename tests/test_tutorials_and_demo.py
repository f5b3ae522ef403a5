"""Tutorials and the README demo run (at reduced size) so they never rot."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path):
    spec = importlib.util.spec_from_file_location("tutorial", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_regression(tmp_path):
    module = _load(os.path.join(ROOT, "tutorials", "01_nngp_ntk_regression.py"))
    report = module.main(["--quick", "--out", str(tmp_path)])
    for name in ("NNGP", "NTK"):
        assert report[name]["loss_last"] < report[name]["loss_first"]
    assert (tmp_path / "regression_posterior.png").stat().st_size > 10_000
    assert (tmp_path / "prior_samples_by_depth.png").stat().st_size > 10_000


def test_tutorial_exact_gp_large_n(tmp_path):
    """The 50k tutorial at n=1,500 with the row-block backend forced (auto would pick dense at that size)."""
    module = _load(os.path.join(ROOT, "tutorials", "02_exact_nngp_50k.py"))
    report = module.main(["--quick", "--backend", "lazy", "--out", str(tmp_path)])
    assert report["losses"][-1] < report["losses"][0]
    assert report["rmse"] < 0.85 * report["target_sd"] and report["coverage"] > 0.8  # better than the mean, calibrated
    assert (tmp_path / "exact_nngp_large_n.png").stat().st_size > 10_000


def test_demo_digits_accuracy():
    from gpytorch_nngp import demo

    results = demo.main(["--n-train", "300"])
    assert results["NNGP"] > 0.9 and results["NTK"] > 0.9
