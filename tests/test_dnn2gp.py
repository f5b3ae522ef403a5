"""DNN2GP and the finite NTK kernel against an independent weight-space Laplace-GGN computation (float64)."""
import math

import gpytorch
import pytest
import torch
from helpers.jacobians import autograd_jacobian

from gpytorch_nngp.dnn2gp import DNN2GP, FiniteNTKKernel, FiniteNTKOperator, LinearizedNetwork
from gpytorch_nngp.dnn2gp.laplace import softmax_ggn_root


def mlp(d_in, outputs, width=8, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d_in, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                               torch.nn.Tanh(), torch.nn.Linear(width, outputs)).double()





def weight_space_laplace(model, x, y, x_test, delta, sigma, classification):
    """Predictive covariance J* A^-1 J*^T and the Laplace evidence with the P x P posterior precision
    A = sum_i J_i^T Lambda_i J_i + delta I."""
    jac, jac_test = autograd_jacobian(model, x), autograd_jacobian(model, x_test)
    with torch.no_grad():
        f = model(x)
    if classification:
        p = torch.softmax(f, -1)
        curvature = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
        log_lik = torch.log_softmax(f, -1).gather(-1, y.unsqueeze(-1)).sum()
    else:
        curvature = torch.eye(f.shape[1], dtype=f.dtype).expand(f.shape[0], -1, -1) / sigma ** 2
        log_lik = (-0.5 * (y.reshape(f.shape) - f) ** 2 / sigma ** 2 - 0.5 * math.log(2 * math.pi * sigma ** 2)).sum()
    p_count = jac.shape[-1]
    precision = torch.einsum("ncp,ncd,ndq->pq", jac, curvature, jac) + delta * torch.eye(p_count, dtype=jac.dtype)
    cov = torch.einsum("mcp,pq,mdq->mcd", jac_test, torch.linalg.inv(precision), jac_test)
    theta_sq = sum(p.detach().pow(2).sum() for p in model.parameters())
    evidence = log_lik - 0.5 * delta * theta_sq + 0.5 * p_count * math.log(delta) - 0.5 * torch.logdet(precision)
    return cov, evidence.item()


def data(classification, n=30, outputs=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x_test = torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, outputs, (n,), generator=g) if classification else \
        torch.randn(n, outputs, generator=g, dtype=torch.float64)
    return x, y, x_test


@pytest.mark.parametrize("mode", ["function_space", "weight_space", "operator"])
@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_matches_weight_space_laplace_ggn(likelihood, mode):
    classification = likelihood == "classification"
    x, y, x_test = data(classification)
    model = mlp(3, 3)
    delta, sigma = 0.7, 0.3
    cov_ref, evidence_ref = weight_space_laplace(model, x, y, x_test, delta, sigma, classification)
    gp = DNN2GP(model, likelihood, prior_precision=delta, sigma_noise=sigma, mode=mode).fit(x, y)
    assert gp.form == mode
    mean, cov = gp.predict(x_test)
    with torch.no_grad():
        assert torch.allclose(mean, model(x_test), rtol=0, atol=1e-12)
    assert cov.shape == (7, 3, 3)
    assert (cov - cov_ref).abs().max() <= 1e-6 * cov_ref.abs().max()
    evidence = gp.log_marginal_likelihood().item()
    if mode != "operator":
        assert abs(evidence - evidence_ref) <= 1e-6 * abs(evidence_ref)
    else:  # a 16-probe estimate of log det: 0.30 % (regression) and 0.97 % (classification) off here, 2 % bound;
        # the estimator itself is checked exactly in test_operator_logdet_is_the_exact_hutchinson_estimate
        assert abs(evidence - evidence_ref) <= 0.02 * abs(evidence_ref)


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_operator_logdet_is_the_exact_hutchinson_estimate(likelihood):
    """Stochastic Lanczos quadrature with enough steps equals, for the same Rademacher probes, the exact
    Hutchinson estimate mean_z z^T log(I + M0 / scale) z from the dense M0 (the function-space form's)."""
    classification = likelihood == "classification"
    x, y, _ = data(classification)
    model = mlp(3, 3)
    operator = DNN2GP(model, likelihood, mode="operator", num_probes=8, lanczos_iterations=90, seed=3).fit(x, y)
    dense = DNN2GP(model, likelihood, mode="function_space").fit(x, y)
    m0 = dense._posterior.jl @ dense._posterior.jl.mT  # (N, N)
    size = m0.shape[0]
    probes = (torch.randint(0, 2, (size, 8), generator=torch.Generator().manual_seed(3)) * 2 - 1).double()
    for scale in (0.05, 1.0, 30.0):
        values, vectors = torch.linalg.eigh(m0)
        log_matrix = (vectors * torch.log1p(values.clamp_min(0) / scale)) @ vectors.T
        exact = (probes * (log_matrix @ probes)).sum(0).mean()
        estimate = operator._posterior.logdet(torch.tensor(scale, dtype=torch.float64))
        assert estimate.item() == pytest.approx(exact.item(), rel=1e-9)


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_function_and_weight_space_forms_agree(likelihood):
    """The N x N and P x P decompositions give the same evidence (at several delta, sigma) and covariances, and
    "explicit"/"auto" pick the smaller side."""
    classification = likelihood == "classification"
    x, y, x_test = data(classification, n=60)
    model = mlp(3, 3, width=4)  # P = 55 < N = 180: weight space is the cheaper form
    fits = {mode: DNN2GP(model, likelihood, 0.7, 0.3, mode=mode).fit(x, y)
            for mode in ("function_space", "weight_space", "explicit", "auto")}
    assert fits["explicit"].form == fits["auto"].form == "weight_space"
    reference = fits["function_space"]
    for mode in ("weight_space", "auto"):
        for delta, sigma in ((0.7, 0.3), (5.0, 1.3), (0.01, 0.05)):
            a = reference.log_marginal_likelihood(delta, sigma).item()
            b = fits[mode].log_marginal_likelihood(delta, sigma).item()
            assert b == pytest.approx(a, rel=1e-10)
        ref_cov, cov = reference.predict(x_test)[1], fits[mode].predict(x_test)[1]
        assert (cov - ref_cov).abs().max() <= 1e-9 * ref_cov.abs().max()
    small = DNN2GP(mlp(3, 3, width=16), likelihood, mode="explicit").fit(x[:10], y[:10])  # N = 30 < P = 403
    assert small.form == "function_space"


def test_operator_evidence_converges_with_more_probes():
    x, y, _ = data(True)
    model = mlp(3, 3)
    _, evidence_ref = weight_space_laplace(model, x, y, x[:1], 0.7, 1.0, True)
    errors = [abs(DNN2GP(model, "classification", 0.7, mode="operator", num_probes=probes,
                         lanczos_iterations=40).fit(x, y).log_marginal_likelihood().item() - evidence_ref)
              for probes in (4, 256)]
    assert errors[1] < 0.01 * abs(evidence_ref) and errors[1] < errors[0] + 1e-3


def test_full_softmax_block_is_used():
    """Variances with Lambda = diag(p) - p p^T differ from those with its diagonal only (laplace-torch's
    FunctionalLaplace), which come out too small."""
    x, y, x_test = data(True)
    model = mlp(3, 3)
    _, cov = DNN2GP(model, "classification", prior_precision=0.5).fit(x, y).predict(x_test)
    p = torch.softmax(model(x), -1).detach()
    root = softmax_ggn_root(p)
    assert torch.allclose(root @ root.mT, torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2), atol=1e-14)
    jac, jac_test = autograd_jacobian(model, x), autograd_jacobian(model, x_test)
    diag_only = torch.einsum("ncp,nc,ncq->pq", jac, p * (1 - p), jac) + 0.5 * torch.eye(jac.shape[-1],
                                                                                           dtype=jac.dtype)
    cov_diag = torch.einsum("mcp,pq,mdq->mcd", jac_test, torch.linalg.inv(diag_only), jac_test)
    assert (cov.diagonal(dim1=-2, dim2=-1) > cov_diag.diagonal(dim1=-2, dim2=-1)).all()


def map_regression_network(x, y, delta, sigma):
    """A small MLP at its maximum a posteriori weights for the Gaussian model: L-BFGS, then Newton steps with
    the exact Hessian until the gradient is at rounding level."""
    model = mlp(x.shape[1], 1, width=6, seed=3)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(flat):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = flat[start:start + shape.numel()].reshape(shape)
            start += shape.numel()
        out = torch.func.functional_call(model, params, (x,)).squeeze(-1)
        return 0.5 * (out - y).pow(2).sum() / sigma ** 2 + 0.5 * delta * flat.pow(2).sum()

    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).requires_grad_(True)
    optimizer = torch.optim.LBFGS([flat], max_iter=1000, tolerance_grad=1e-7, tolerance_change=0,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = loss(flat)
        value.backward()
        return value

    optimizer.step(closure)
    flat = flat.detach()
    for _ in range(10):  # Newton with Levenberg damping: accept a step only if the loss goes down
        grad, hessian, damping = torch.func.grad(loss)(flat), torch.func.hessian(loss)(flat), 0.0
        while True:
            step = torch.linalg.solve(hessian + damping * torch.eye(len(flat), dtype=flat.dtype), grad)
            if loss(flat - step) <= loss(flat):
                break
            damping = max(2 * damping, 1e-6)
        flat = flat - step
    assert torch.func.grad(loss)(flat).abs().max() < 1e-9
    torch.nn.utils.vector_to_parameters(flat, model.parameters())
    return model


def test_evidence_is_the_gp_evidence_of_the_pseudo_targets_at_the_map():
    """At a MAP, the Laplace-GGN evidence is the exact marginal likelihood of a GP with the finite NTK kernel
    J J^T / delta and noise sigma^2 on the pseudo-targets (Khan et al. 2019), here through a GPyTorch ExactGP."""
    torch.manual_seed(0)
    x = torch.rand(25, 1, dtype=torch.float64) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(25, dtype=torch.float64)
    delta, sigma = 2.0, 0.3
    model = map_regression_network(x, y, delta, sigma)
    dnn2gp = DNN2GP(model, "regression", prior_precision=delta, sigma_noise=sigma).fit(x, y)
    targets = dnn2gp.pseudo_targets()[:, 0]

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            likelihood = gpytorch.likelihoods.FixedNoiseGaussianLikelihood(torch.full_like(targets, sigma ** 2))
            super().__init__(x, targets, likelihood)
            self.covar_module = FiniteNTKKernel(model, prior_precision=delta)

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(torch.zeros_like(z[:, 0]), self.covar_module(z))

    gp = GP()
    gp.train()
    with gpytorch.settings.max_cholesky_size(10_000):
        gp_evidence = gpytorch.mlls.ExactMarginalLogLikelihood(gp.likelihood, gp)(gp(x), targets).item() * len(y)
    assert gp_evidence == pytest.approx(dnn2gp.log_marginal_likelihood().item(), rel=1e-6)


def test_marginal_likelihood_optimization_finds_the_maximum():
    x, y, _ = data(False, outputs=1)
    model = mlp(3, 1)
    gp = DNN2GP(model, "regression", prior_precision=10.0, sigma_noise=2.0).fit(x, y[:, 0])
    result = gp.optimize_marginal_likelihood()
    before, after = result["log_marginal_likelihood"]
    assert after > before
    delta, sigma = result["prior_precision"], result["sigma_noise"]
    for factor in (0.9, 1.1):  # a maximum in both directions, checked with the independent weight-space formula
        assert weight_space_laplace(model, x, y, x[:1], delta * factor, sigma, False)[1] < after
        assert weight_space_laplace(model, x, y, x[:1], delta, sigma * factor, False)[1] < after
    assert weight_space_laplace(model, x, y, x[:1], delta, sigma, False)[1] == pytest.approx(after, rel=1e-8)


def test_fit_accepts_a_dataloader():
    x, y, x_test = data(True)
    model = mlp(3, 3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    a = DNN2GP(model, "classification").fit(loader)
    b = DNN2GP(model, "classification").fit(x, y)
    assert torch.allclose(a.predict(x_test)[1], b.predict(x_test)[1], atol=1e-12)
    probs = a.predict_proba(x_test, samples=64)
    assert probs.shape == (7, 3) and torch.allclose(probs.sum(-1), torch.ones(7, dtype=probs.dtype))


def test_operator_mode_never_builds_training_jacobians(monkeypatch):
    x, y, x_test = data(False)
    model = mlp(3, 3)
    reference = DNN2GP(model, "regression", 0.7, 0.3, mode="explicit").fit(x, y).predict(x_test)[1]
    calls = []
    real = LinearizedNetwork.jacobian

    def guarded(self, z):
        calls.append(z.shape[0])
        return real(self, z)

    monkeypatch.setattr(LinearizedNetwork, "jacobian", guarded)
    gp = DNN2GP(model, "regression", 0.7, 0.3, mode="operator").fit(x, y)
    gp.log_marginal_likelihood()
    assert calls == []  # fit and evidence: products only
    cov = gp.predict(x_test)[1]
    assert max(calls) <= 7  # prediction: Jacobians of a few test points, never of the training set
    assert (cov - reference).abs().max() <= 1e-7 * reference.abs().max()


@pytest.mark.parametrize("mode", ["explicit", "operator"])
def test_finite_ntk_kernel(mode):
    """The kernel J J^T / delta as dense values, in an ExactGP, and with a learnable delta."""
    x, _, x_test = data(False)
    model = mlp(3, 1)
    kernel = FiniteNTKKernel(model, prior_precision=2.0, mode=mode)
    jac, jac_test = autograd_jacobian(model, x)[:, 0], autograd_jacobian(model, x_test)[:, 0]
    k = kernel(x_test, x).to_dense()
    assert torch.allclose(k, jac_test @ jac.T / 2.0, rtol=1e-10, atol=1e-12)
    assert torch.allclose(kernel(x, diag=True), (jac ** 2).sum(-1) / 2.0, rtol=1e-10)
    if mode == "operator":
        assert isinstance(kernel.forward(x, x).base_linear_op, FiniteNTKOperator)
        op = FiniteNTKOperator(x, x, network=kernel.network)
        v = torch.randn(x.shape[0], 2, dtype=torch.float64)
        assert torch.allclose(op @ v, jac @ (jac.T @ v), rtol=1e-10)
    y = torch.sin(x.sum(-1))

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = kernel

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))

    gp = GP()
    gp.train()
    loss = -gpytorch.mlls.ExactMarginalLogLikelihood(gp.likelihood, gp)(gp(x), y)
    loss.backward()
    assert kernel.raw_prior_precision.grad is not None and torch.isfinite(kernel.raw_prior_precision.grad).all()
    assert all(p.grad is None for p in model.parameters())  # the network's weights are not GP parameters
    gp.eval()
    with torch.no_grad():
        pred = gp(x_test)
    assert torch.isfinite(pred.mean).all() and (pred.variance > 0).all()


def test_errors_name_the_argument():
    model = mlp(3, 3)
    x, y, _ = data(False)
    with pytest.raises(ValueError, match="likelihood"):
        DNN2GP(model, "poisson")
    with pytest.raises(ValueError, match="prior_precision must be finite and > 0 .it is a precision"):
        DNN2GP(model, prior_precision=-1.0)
    with pytest.raises(ValueError, match="sigma_noise must be finite and > 0 .it is a standard deviation"):
        DNN2GP(model, sigma_noise=0.0)
    with pytest.raises(ValueError, match="one output per class.*2 outputs"):
        DNN2GP(mlp(3, 1), "classification").fit(x, torch.randint(0, 2, (30,)))
    with pytest.raises(ValueError, match="num_probes"):
        DNN2GP(model, num_probes=0)
    with pytest.raises(ValueError, match="mode"):
        DNN2GP(model, mode="fast")
    with pytest.raises(ValueError, match="y must have shape"):
        DNN2GP(model).fit(x, y[:, :2])
    with pytest.raises(ValueError, match="class labels"):
        DNN2GP(model, "classification").fit(x, torch.full((30,), 5))
    with pytest.raises(ValueError, match="integer class labels"):
        DNN2GP(model, "classification").fit(x, y)
    with pytest.raises(TypeError, match="dtype"):
        DNN2GP(model).fit(x.float(), y)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        DNN2GP(model).fit(bad, y)
    with pytest.raises(RuntimeError, match="fit"):
        DNN2GP(model).predict(x)
    with pytest.raises(ValueError, match="output"):
        FiniteNTKKernel(model)(x).to_dense()
    with pytest.raises(TypeError, match="torch.nn.Module"):
        FiniteNTKKernel(lambda z: z)
    with pytest.raises(ValueError, match="prior_precision"):
        FiniteNTKKernel(model, output=0, prior_precision=float("nan"))


def test_nystrom_preconditioned_cg():
    """The randomized Nystrom approximation is exact for a low-rank PSD matrix, and as a preconditioner it cuts
    the CG steps on an ill-conditioned I + M / scale with a decaying spectrum."""
    from gpytorch_nngp.dnn2gp.solvers import conjugate_gradients, nystrom_approximation, nystrom_preconditioner

    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    spectrum = 1e4 * 0.8 ** torch.arange(300, dtype=torch.float64)
    m = (q * spectrum) @ q.T
    low_rank = (q[:, :10] * spectrum[:10]) @ q[:, :10].T
    u, lam = nystrom_approximation(lambda v: low_rank @ v, 300, 20, torch.float64, "cpu", g)
    assert torch.allclose((u * lam) @ u.T, low_rank, atol=1e-8 * spectrum[0])
    rhs = torch.randn(300, 3, generator=g, dtype=torch.float64)
    system = lambda v: v + m @ v / 0.01  # noqa: E731
    exact = torch.linalg.solve(torch.eye(300, dtype=torch.float64) + m / 0.01, rhs)
    plain, plain_info = conjugate_gradients(system, rhs, 1e-10, 2000)
    u, lam = nystrom_approximation(lambda v: m @ v, 300, 40, torch.float64, "cpu", g)
    pre, pre_info = conjugate_gradients(system, rhs, 1e-10, 2000, nystrom_preconditioner(u, lam, 0.01))
    for x in (plain, pre):
        assert torch.allclose(x, exact, rtol=1e-7, atol=1e-9)
    assert pre_info["iterations"] < plain_info["iterations"] / 2
