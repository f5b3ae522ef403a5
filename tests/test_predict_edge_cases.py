"""predict's edge cases, each once a silent wrong answer or a confusing error: float32 Lanczos at infinite time on
a singular or ill-conditioned training kernel, unchecked kernel matrices, t=[] and t=None against math.inf on both
solvers, dtype mismatches, and repeated calls that reuse the Lanczos runs."""
import math

import pytest
import torch

from gpytorch_nngp import NNGPKernel, NTKKernel
from gpytorch_nngp.predict import gp_inference, gradient_descent, gradient_descent_mse, gradient_descent_mse_ensemble

SINGULAR = "not positive definite.*diag_reg > 0"


def duplicated_data(n, dtype=torch.float64, seed=0):
    """n training points with the last a copy of the first (a singular kernel without diag_reg), targets that
    differ on the copies, and test points that start with the two copies."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    x[-1] = x[0]
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    x_test = torch.cat([x[:1], x[-1:], torch.randn(4, 3, generator=gen, dtype=torch.float64)])
    return x.to(dtype), y.to(dtype), x_test.to(dtype)


def kernel(dtype=torch.float64, backend="dense"):
    return NTKKernel(2, "relu", weight_var=1.0, bias_var=0.3, backend=backend).to(dtype)


@pytest.mark.parametrize("n, diag_reg", [(5, 0.0), (50, 0.0), (50, 1e-6), (50, 1e-5), (50, 1e-3), (5, 1e-5)])
def test_float32_infinite_time_is_right_or_refused(n, diag_reg):
    """Against float64 eigh: float32 Lanczos (and eigh) at t = inf either raise the singular-kernel error or agree
    to float32's accuracy at that regularization (about eps / diag_reg), and duplicated inputs get one output. Before
    the guard on the Ritz values, float32 Lanczos returned means off by 3x (n = 5) and 54 % (n = 50, 1e-6)."""
    x, y, x_test = duplicated_data(n)
    exact = gradient_descent_mse_ensemble(kernel(), x, y, diag_reg=max(diag_reg, 1e-12), solver="eigh")(
        t=math.inf, x_test=x_test, get="ntk")
    bound = 50 * torch.finfo(torch.float32).eps / max(diag_reg, 1e-12)
    refused = []
    for solver, backend in (("krylov", "lazy"), ("eigh", "dense")):
        fn = gradient_descent_mse_ensemble(kernel(torch.float32, backend), x.float(), y.float(), diag_reg=diag_reg,
                                           solver=solver)
        try:
            out = fn(t=math.inf, x_test=x_test.float(), get="ntk")
        except ValueError as error:
            assert "not positive definite" in str(error) and "diag_reg > 0" in str(error)
            refused.append(solver)
            continue
        error = ((out.double() - exact).abs().max() / exact.abs().max()).item()
        assert error < bound, (solver, error, bound)
        assert abs(out[0, 0] - out[1, 0]) <= 1e-4 * out.abs().max(), (solver, out[:2])  # the two copies
    if diag_reg in (0.0, 1e-6):  # beyond float32's reach: both refuse
        assert refused == ["krylov", "eigh"], refused
    if diag_reg == 1e-3:
        assert refused == []


def test_kernel_matrices_are_checked_and_named():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    k = a @ a.T + torch.eye(6, dtype=torch.float64)
    y = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    k_td = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    upper, asym, k_tt = k.clone(), k.clone(), torch.eye(3, dtype=torch.float64)
    upper[0, 4] = float("nan")  # once ignored: a finite answer equal to the clean one
    asym[0, 4] += 1.0
    for make in (lambda kk: gp_inference(kk, y, diag_reg=1e-3)(get="ntk", k_test_train=k_td),
                 lambda kk: gradient_descent_mse(kk, y, diag_reg=1e-3)(1.0),
                 lambda kk: gradient_descent(lambda f, t: ((f - t) ** 2).mean(), kk, y)(1.0)):
        with pytest.raises(ValueError, match=r"k_train_train has 1 NaN or infinite entries \(the first at \(0, 4\)\)"):
            make(upper)
        with pytest.raises(ValueError, match="k_train_train is not symmetric"):
            make(asym)
    bad_td, bad_tt = k_td.clone(), k_tt.clone()
    bad_td[1, 1], bad_tt[2, 2] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="k_test_train has 1 NaN"):
        gp_inference(k, y)(get="nngp", k_test_train=bad_td)
    with pytest.raises(ValueError, match="k_test_test has 1 NaN"):
        gp_inference(k, y)(get="nngp", k_test_train=k_td, k_test_test=bad_tt)
    with pytest.raises(ValueError, match=r"k_test_train must have shape \(m, 6\)"):
        gp_inference(k, y)(get="nngp", k_test_train=k_td[:, :4])
    fn = gradient_descent_mse(k, y)
    with pytest.raises(ValueError, match="k_test_train has 1 NaN"):
        fn(1.0, 0.0, torch.zeros(3, 2, dtype=torch.float64), bad_td)
    with pytest.raises(ValueError, match="fx_train_0 contains NaN"):
        fn(1.0, torch.full((6, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="fx_test_0 contains NaN"):
        fn(1.0, 0.0, torch.full((3, 2), float("nan"), dtype=torch.float64), k_td)
    with pytest.raises(ValueError, match="fx_train_0 must broadcast to shape"):
        fn(1.0, torch.zeros(5, 2, dtype=torch.float64))
    # A NaN in the lower triangle once raised "not positive definite ... pass diag_reg > 0" with diag_reg given.
    lower = k.clone()
    lower[4, 0] = float("nan")
    with pytest.raises(ValueError, match="k_train_train has 1 NaN"):
        gp_inference(lower, y, diag_reg=1e-3)(get="ntk", k_test_train=k_td)
    with pytest.raises(ValueError, match="k_train_train is torch.float32 but y_train is torch.float64"):
        gradient_descent_mse(k.float(), y)
    torch.testing.assert_close(gradient_descent_mse(k.numpy(), y)(2.0), gradient_descent_mse(k, y)(2.0))


def test_dtype_mismatches_are_named():
    x, y, x_test = duplicated_data(8)
    with pytest.raises(ValueError, match=r"x_train is torch.float32, y_train is torch.float32, but the kernel "
                                         r"computes in torch.float64"):
        gradient_descent_mse_ensemble(kernel(), x.float(), y.float())
    with pytest.raises(ValueError, match=r"y_train is torch.float32, but the kernel computes in torch.float64"):
        gradient_descent_mse_ensemble(kernel(), x, y.float())
    fn = gradient_descent_mse_ensemble(kernel(), x, y, diag_reg=1e-3)
    with pytest.raises(ValueError, match="x_test is torch.float32 but x_train and y_train are torch.float64"):
        fn(t=1.0, x_test=x_test.float())


@pytest.mark.parametrize("solver, backend", [("eigh", "dense"), ("krylov", "lazy")])
def test_no_time_infinite_time_and_none_agree(solver, backend):
    """t=[] gives empty outputs on both solvers (Lanczos once failed to reshape); t=None and t=math.inf are one
    request: the same numbers, the same refusals (a singular kernel, on the training inputs too)."""
    x, y, x_test = duplicated_data(12)
    singular = gradient_descent_mse_ensemble(kernel(backend=backend), x, y, solver=solver)
    regular = gradient_descent_mse_ensemble(kernel(backend=backend), x, y, diag_reg=1e-3, solver=solver)
    empty = regular(t=[], x_test=x_test, compute_cov=True)
    assert empty.ntk.mean.shape == (0, 6, 1) and empty.nngp.covariance.shape == (0, 6, 6)
    assert regular(t=[], get="ntk").shape == (0, 12, 1)
    for t in (None, math.inf, [math.inf]):
        for x_at in (x_test, None):
            with pytest.raises(ValueError, match=SINGULAR):
                singular(t=t, x_test=x_at, compute_cov=True)
            with pytest.raises(ValueError, match=SINGULAR):
                singular(t=t, x_test=x_at, get="nngp")
    for x_at in (x_test, None):
        none, inf = regular(t=None, x_test=x_at, compute_cov=True), regular(t=math.inf, x_test=x_at, compute_cov=True)
        # (Lanczos forms no n x n covariance on the training inputs at a finite time: means only there.)
        finite_cov = x_at is not None or solver == "eigh"
        listed = regular(t=[2.0, math.inf], x_test=x_at, compute_cov=finite_cov)
        for g in ("nngp", "ntk"):
            for field in ("mean", "covariance"):
                a, b = (getattr(getattr(r, g), field) for r in (none, inf))
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
                if finite_cov:
                    torch.testing.assert_close(getattr(getattr(listed, g), field)[1], a, rtol=1e-7, atol=1e-10)
                elif field == "mean":
                    torch.testing.assert_close(getattr(listed, g)[1], a, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(regular(t=None).ntk, y, rtol=1e-7, atol=1e-9)  # the targets, the kernel regular
    assert regular(t=math.inf, compute_cov=True).ntk.covariance.abs().max() < 1e-8


def test_one_network_no_time_and_infinite_time_agree():
    x, y, _ = duplicated_data(6)
    with torch.no_grad():
        k = kernel()(x).to_dense()
    f0 = torch.randn_like(y)
    k_td = k[:2]
    singular, regular = gradient_descent_mse(k, y), gradient_descent_mse(k, y, diag_reg=1e-3)
    for t in (None, math.inf):
        with pytest.raises(ValueError, match=SINGULAR):
            singular(t, f0)
        with pytest.raises(ValueError, match=SINGULAR):
            singular(t, f0, torch.zeros(2, 1, dtype=torch.float64), k_td)
    a = regular(None, f0, torch.zeros(2, 1, dtype=torch.float64), k_td)
    b = regular(math.inf, f0, torch.zeros(2, 1, dtype=torch.float64), k_td)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    torch.testing.assert_close(a[0], y)
    assert regular([], f0).shape == (0, 6, 1)
    ode = gradient_descent(lambda f, t: 0.5 * ((f - t) ** 2).mean(), k, y)
    assert ode([], f0).shape == (0, 6, 1)


def test_repeated_calls_reuse_the_lanczos_runs():
    """neural-tangents users call predict_fn once per time: later calls reuse the kept Lanczos runs (the run from
    y_train for means, the run from the cross kernels for the same x_test) and give what one call with all the times
    gives; a new x_test starts new runs."""
    gen = torch.Generator().manual_seed(4)
    x, x_test = torch.randn(150, 4, generator=gen, dtype=torch.float64), torch.randn(6, 4, generator=gen,
                                                                                     dtype=torch.float64)
    y = torch.randn(150, 2, generator=gen, dtype=torch.float64)
    k = NTKKernel(2, "relu", backend="lazy").double()
    times = [1.0, 30.0, 1e3, math.inf]
    together = gradient_descent_mse_ensemble(k, x, y, diag_reg=1e-3, solver="krylov")(t=times, x_test=x_test,
                                                                                         compute_cov=True)
    fn = gradient_descent_mse_ensemble(k, x, y, diag_reg=1e-3, solver="krylov")
    fn(t=times[0], x_test=x_test, compute_cov=True)
    solver = fn.solvers["ntk"]
    kept = solver.runs[("cov", False)][0]
    for i, t in enumerate(times):
        one = fn(t=t, x_test=x_test, compute_cov=True)
        assert solver.runs[("cov", False)][0] is kept  # the same run, extended where the new time needs it
        for g in ("nngp", "ntk"):
            for field in ("mean", "covariance"):
                a, b = getattr(getattr(one, g), field), getattr(getattr(together, g), field)[i]
                assert ((a - b).abs().max() / b.abs().max()).item() < 1e-7, (t, g, field)
    steps = kept.steps
    fn(t=5.0, x_test=x_test, compute_cov=True)  # inside the converged range: no new step
    assert kept.steps == steps
    fn(t=5.0, x_test=x_test + 1, compute_cov=True)  # other test points: a new run
    assert solver.runs[("cov", False)][0] is not kept
    means = [fn(t=t, x_test=x_test, get="ntk") for t in times]
    assert ("mean", False) in solver.runs
    for i, m in enumerate(means):
        torch.testing.assert_close(m, together.ntk.mean[i], rtol=1e-7, atol=1e-9)


def test_nngp_only_kernel_and_float32_float64_mix_in_gp_inference():
    x, y, x_test = duplicated_data(7)
    fn = gradient_descent_mse_ensemble(NNGPKernel(2).double(), x, y, diag_reg=1e-3)
    assert fn(t=[1.0, math.inf], x_test=x_test, get="nngp").shape == (2, 6, 1)
    with pytest.raises(ValueError, match=r"k_test_train is torch.float32 but y_train is torch.float64"):
        gp_inference(torch.eye(7, dtype=torch.float64), y)(get="nngp", k_test_train=torch.ones(2, 7))
