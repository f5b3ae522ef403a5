"""The row-block ("lazy") backend against the dense one: values, products, gradients, GPyTorch integration."""
import gc

import gpytorch
import pytest
import torch

from gpytorch_nngp import NNGPKernel, NTKKernel, activations, backends
from gpytorch_nngp.backends import evaluators, lazy, memory_budget, shared_cache


@pytest.fixture
def small_blocks():
    """Several row blocks even on tiny matrices (2 rows with autograd, 14 without), so the block loops are tested."""
    with memory_budget(block_bytes=16384):
        yield


def _data():
    torch.manual_seed(0)
    x = torch.randn(23, 5, dtype=torch.float64)
    x[3] = x[2]  # duplicate rows: |c| = 1 exactly must survive the blocking
    x[4] = 0.0
    z = torch.randn(9, 5, dtype=torch.float64)
    u, v, w = (torch.randn(n, 2, dtype=torch.float64) for n in (23, 23, 9))
    return x, z, u, v, w


def _everything(cls, act, backend, cache_bytes=None, batch_shape=()):
    x, z, u, v, w = _data()
    k = cls(3, act, backend=backend, batch_shape=torch.Size(batch_shape)).double()
    k.weight_var, k.bias_var = 1.7, 0.2
    xr = x.clone().requires_grad_(True)
    op = k(xr).evaluate_kernel()
    cross = k(xr, z).evaluate_kernel()
    if cache_bytes is not None:
        op.cache_bytes = cross.cache_bytes = cache_bytes
    loss = (u * (op @ v)).sum() + (u * (cross @ w)).sum() + op.diagonal(dim1=-2, dim2=-1).sum()
    grads = torch.autograd.grad(loss, [k.raw_weight_var, k.raw_bias_var, xr])
    return [op.to_dense().detach(), cross.to_dense().detach(), loss.detach(), *grads], op


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel])
@pytest.mark.parametrize("act", ["relu", "erf", activations.Numerical(torch.tanh, name="tanh")], ids=str)
@pytest.mark.parametrize("cache_bytes", [None, 0], ids=["cached", "recomputed"])
def test_lazy_equals_dense(cls, act, cache_bytes, small_blocks):
    dense, _ = _everything(cls, act, "dense")
    lazy_values, op = _everything(cls, act, "lazy", cache_bytes)
    assert isinstance(op, backends.NetworkKernelOperator)
    # Closed forms agree to rounding. The numerical series picks its degree from the points of each block, so
    # blocks may use different degrees: they agree to the series accuracy instead.
    rtol = 1e-6 if isinstance(act, activations.Numerical) else 1e-10
    # Rows 2 and 3 are the same point: off the diagonal their c is 1 only up to how the Gram product is blocked
    # (whole matrix vs row blocks), and the NTK's Fdot depends on theta ~ sqrt(2 (1 - c)), so that one pair agrees
    # to about sqrt(eps): measured 8.5e-10 for the relu NTK, and 8.2e-11 of the largest entry in the gradients it
    # feeds. Everything else agrees to 1e-15.
    pair = (torch.tensor([2, 3]), torch.tensor([3, 2]))
    assert torch.allclose(dense[0][pair], lazy_values[0][pair], rtol=1e-8)
    dense[0][pair] = lazy_values[0][pair] = 0.0
    for a, b in zip(dense[:2], lazy_values[:2]):  # the matrices, entry by entry
        assert torch.allclose(a, b, rtol=rtol, atol=rtol * 1e-2 * a.abs().max().item())
    for a, b in zip(dense[2:], lazy_values[2:]):  # the loss and its gradients, relative to their largest entry
        assert (a - b).abs().max() <= max(rtol, 1e-9) * a.abs().max()


def test_lazy_batch_shape(small_blocks):
    dense, _ = _everything(NNGPKernel, "relu", "dense", batch_shape=torch.Size([2]))
    lazy_values, op = _everything(NNGPKernel, "relu", "lazy", 0, batch_shape=torch.Size([2]))
    assert op.shape == torch.Size([2, 23, 23])
    for a, b in zip(dense, lazy_values):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12 * a.abs().max().item())


def test_lazy_batched_inputs(small_blocks):
    """Inputs with their own batch dimension (..., n, d), symmetric and cross."""
    x, z, *_ = _data()
    xb = torch.stack([x, 0.5 * x])
    out = []
    for backend in ("dense", "lazy"):
        k = NTKKernel(2, "relu", backend=backend).double()
        xr = xb.clone().requires_grad_(True)
        op = k(xr).evaluate_kernel()
        loss = (op @ torch.ones(2, 23, 1, dtype=torch.float64)).sum() + k(xr, z.expand(2, 9, 5)).to_dense().sum()
        out.append((op.to_dense().detach(), *torch.autograd.grad(loss, [k.raw_weight_var, xr])))
    # Rows 2 and 3 are the same point: their off-diagonal c is 1 only up to rounding of the Gram product, which the
    # sqrt(1 - c^2) of the arc-cosine kernel amplifies to ~1e-8.
    for a, b in zip(*out):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8 * a.abs().max().item())


def test_lazy_indexing_matches_dense():
    x, z, *_ = _data()
    k = NTKKernel(2, "relu", backend="lazy").double()
    op = k(x).evaluate_kernel()
    full = op.to_dense()
    # Rows 2 and 3 are the same point: off the diagonal their c is 1 only up to rounding, which the sqrt(1 - c^2)
    # of the arc-cosine kernel turns into ~1e-8 -- hence rtol 1e-7 for entries computed from differently sliced data.
    rows, cols = torch.tensor([0, 3, 5]), torch.tensor([2, 2, 7])
    assert torch.allclose(op[rows, cols], full[rows, cols], rtol=1e-7)
    assert torch.allclose(op[2:9, 1:4].to_dense(), full[2:9, 1:4], rtol=1e-7)
    assert torch.allclose(op.mT.to_dense(), full.mT, rtol=1e-12)


def test_exact_gp_with_cg_matches_dense():
    """Marginal likelihood, its gradient and fast predictive variances through GPyTorch's CG/Lanczos."""
    torch.manual_seed(0)
    x = torch.randn(200, 4, dtype=torch.float64)
    y = torch.sin(x.sum(-1)) + 0.1 * torch.randn(200, dtype=torch.float64)
    xt = torch.randn(30, 4, dtype=torch.float64)

    class GP(gpytorch.models.ExactGP):
        def __init__(self, kernel):
            super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood().double())
            self.mean = gpytorch.means.ConstantMean()
            self.cov = gpytorch.kernels.ScaleKernel(kernel)

        def forward(self, a):
            return gpytorch.distributions.MultivariateNormal(self.mean(a), self.cov(a))

    out = {}
    for backend in ("dense", "lazy"):
        torch.manual_seed(1)
        model = GP(NNGPKernel(3, "relu", backend=backend)).double()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
        with gpytorch.settings.max_cholesky_size(0), gpytorch.settings.cg_tolerance(1e-6), \
                gpytorch.settings.eval_cg_tolerance(1e-6):
            model.train()
            loss = -mll(model(x), y)
            loss.backward()
            model.eval()
            with torch.no_grad(), gpytorch.settings.fast_pred_var():
                pred = model.likelihood(model(xt))
        grad = model.cov.base_kernel.raw_weight_var.grad
        assert torch.isfinite(grad).all()
        out[backend] = (loss.detach(), pred.mean, pred.variance, grad)
    for a, b in zip(out["dense"], out["lazy"]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def test_automatic_choice_and_bad_backend():
    small, big = torch.zeros(10, 3), torch.zeros(backends.DENSE_MAX_ENTRIES // 10 + 1, 3)
    assert backends.resolve_backend("auto", small, small) == "dense"
    assert backends.resolve_backend("auto", small, big) == "lazy"
    assert backends.resolve_backend("dense", small, big) == "dense"
    with pytest.raises(ValueError, match="backend"):
        NNGPKernel(2, backend="gpu-magic")


@pytest.mark.parametrize("cls, act", [(NNGPKernel, "relu"), (NTKKernel, "erf")], ids=["nngp-relu", "ntk-erf"])
def test_equal_but_separate_inputs_get_their_own_gradients(cls, act, small_blocks):
    """k(a, b) with b an equal copy of a: each gets its own gradient (rows vs columns), in both backends, equal to
    the gradients at b = a + 1e-9, where no symmetric shortcut applies. (Kernels differentiable at c = 1: the relu
    NTK is not, its Fdot goes like sqrt(1 - c), so there a nearby point is no reference.)"""
    x, *_ = _data()
    weights = torch.randn(23, 23, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def gradients(backend, shift):
        k = cls(2, act, backend=backend).double()
        a, b = x.clone().requires_grad_(True), (x + shift).requires_grad_(True)
        (k(a, b).to_dense() * weights).sum().backward()
        return a.grad, b.grad

    near = gradients("dense", 1e-9)
    assert not torch.allclose(near[0], near[1])  # the two roles differ (the weights are not symmetric)
    for backend in ("dense", "lazy"):
        for got, reference in zip(gradients(backend, 0.0), near):
            assert (got - reference).abs().max() <= 1e-6 * reference.abs().max()

    # the diagonal k(a_i, b_i) too: each input gets its own half of d k(x, x) / dx
    def diagonal_gradients(shift):
        k = cls(2, act).double()
        a, b = x.clone().requires_grad_(True), (x + shift).requires_grad_(True)
        k(a, b, diag=True).sum().backward()
        return a.grad, b.grad

    for got, reference in zip(diagonal_gradients(0.0), diagonal_gradients(1e-9)):
        assert (got - reference).abs().max() <= 1e-6 * reference.abs().max()


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel])
@pytest.mark.parametrize("act", ["relu", activations.LeakyReLU(0.2), activations.ABReLU(-0.5, 1.5), "abs"], ids=str)
@pytest.mark.parametrize("x1_eq_x2", [True, False], ids=["symmetric", "cross"])
@pytest.mark.parametrize("inputs", [False, True], ids=["variances", "and_inputs"])
def test_forward_mode_variance_gradients_equal_autograd(cls, act, x1_eq_x2, inputs):
    """The lazy backward wrt (weight_var, bias_var) runs in forward mode (no graph), and so do the inputs' gradients
    (wanted when ARD length scales scale the inputs); it equals the block-wise autograd derivative, also with
    duplicate, zero and antiparallel inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    x[3], x[5], x[7] = x[1], 0.0, -x[2]
    y = torch.randn(30, 5, generator=g, dtype=torch.float64)
    if inputs:
        x, y = x.requires_grad_(True), y.requires_grad_(True)
    k = cls(3, act, backend="lazy").double()
    k.weight_var, k.bias_var = 1.7, 0.2
    op = (k(x) if x1_eq_x2 else k(x, y)).evaluate_kernel()
    left = torch.randn(40, 4, generator=g, dtype=torch.float64)
    right = torch.randn(op.shape[-1], 4, generator=g, dtype=torch.float64)
    assert op.evaluator.forward_mode_applies(op._operands(), [a.requires_grad for a in op._args])
    forward_mode = op._bilinear_derivative(left, right)
    op.evaluator.forward_mode_applies = lambda op, wanted: False
    autograd = op._bilinear_derivative(left, right)
    for a, b in zip(forward_mode, autograd):
        assert (a is None) == (b is None)
        if a is not None:  # NTK, duplicate rows: pairs at c ~ 1 agree to about sqrt(eps) (measured 9e-10)
            torch.testing.assert_close(a, b, rtol=1e-8, atol=0)


def _lazy_exact_gp(n, seed):
    """A zero-mean ExactGP with a lazy depth-2 ReLU NNGP on n random 4-D points, and its marginal likelihood."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 4, generator=g), torch.randn(n, generator=g)

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
            self.cov = gpytorch.kernels.ScaleKernel(NNGPKernel(2, "relu", backend="lazy"))

        def forward(self, a):
            return gpytorch.distributions.MultivariateNormal(torch.zeros_like(a[:, 0]), self.cov(a))

    model = GP()
    return model, gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model), x, y


@pytest.fixture
def evaluations(monkeypatch):
    """The row blocks the lazy operators evaluate, as (symmetric, shape, start, stop), in order (no references to
    the operators, which would keep their matrices alive)."""
    record = []
    original = lazy.NetworkKernelOperator._rows

    def counting(self, start, stop, *args, **kwargs):
        record.append((self.x1_eq_x2, tuple(self.shape), start, stop))
        return original(self, start, stop, *args, **kwargs)

    monkeypatch.setattr(lazy.NetworkKernelOperator, "_rows", counting)
    return record


def test_marginal_likelihood_step_evaluates_the_matrix_once(evaluations):
    """linear_operator rebuilds the operator for its backward pass; the rebuilt one reuses the matrix, and the shared
    entry goes away with the step's tensors."""
    gc.collect()  # operators of earlier tests that wait in reference cycles leave their entries with the collector
    model, mll, x, y = _lazy_exact_gp(300, seed=1)
    model.train()
    with gpytorch.settings.max_cholesky_size(0):
        loss = -mll(model(x), y)
        loss.backward()
    # one no-grad evaluation of the 300 x 300 matrix, and none in the backward
    assert [(start, stop) for *_, start, stop in evaluations] == [(0, 300)]
    assert model.cov.base_kernel.raw_weight_var.grad is not None
    del loss
    assert shared_cache.entries() == 0


@pytest.mark.parametrize("cls, act", [(NNGPKernel, "relu"), (NTKKernel, "relu"), (NTKKernel, "erf")],
                         ids=["nngp-relu", "ntk-relu", "ntk-erf"])
def test_symmetric_operator_evaluates_the_upper_triangle(cls, act, small_blocks):
    """k(x, x) evaluates each block of rows from its own diagonal on (about half the entries), and the mirrored
    part stands in for the rest: the matrix, its products and the variance derivative (forward mode for relu,
    autograd for erf) equal the dense kernel's."""
    x, *_ = _data()
    g = torch.Generator().manual_seed(2)
    left, right = (torch.randn(23, 3, generator=g, dtype=torch.float64) for _ in range(2))
    k = cls(3, act, backend="lazy").double()
    k.weight_var, k.bias_var = 1.7, 0.2
    op = k(x).evaluate_kernel()
    evaluated = []
    original = op._rows

    def counting(start, stop, *args, **kwargs):
        block = original(start, stop, *args, **kwargs)
        evaluated.append(block.shape[-2] * block.shape[-1])
        return block

    op._rows = counting
    op.cache_bytes = 0  # products recompute the blocks
    product = op._matmul(right)
    assert evaluated == [14 * 23, 9 * 9]  # 14-row blocks, each from its diagonal on: 403 of 529 entries
    derivative = op._bilinear_derivative(left, right)
    op.cache_bytes = 2 ** 30
    with torch.no_grad():  # the cached matrix
        matrix = op.to_dense()

    reference = cls(3, act, backend="dense").double()
    reference.weight_var, reference.bias_var = 1.7, 0.2
    wv, bv = reference.weight_var.detach().requires_grad_(True), reference.bias_var.detach().requires_grad_(True)
    from gpytorch_nngp.algebra.mlp import fully_connected_recursion, input_grams

    kk, theta = fully_connected_recursion(*input_grams(x, x, True), 3, reference.activation, wv, bv, ntk=k._ntk,
                                          x1_eq_x2=True)
    dense = theta if k._ntk else kk
    expected = torch.autograd.grad((left * (dense @ right)).sum(), [wv, bv])
    dense = dense.detach()
    torch.testing.assert_close(matrix, dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(matrix[14:, :14], matrix[:14, 14:].mT, rtol=0, atol=0)  # mirrored: exact
    torch.testing.assert_close(product, dense @ right, rtol=1e-10, atol=1e-12)
    for got, want in zip(derivative[1:3], expected):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=0)


def test_predictions_after_a_training_step_reuse_its_matrix(evaluations):
    """While the training step's matrix is alive (the user's `loss` keeps its operator), the prediction's training
    matrix (the same points, and new variance tensors of equal values) is that matrix, not a second copy; after a
    change of the variances it is evaluated anew."""
    # above GPyTorch's min_preconditioning_size (2000): the preconditioner, which the step's graph keeps, holds the
    # step's operator
    n = 2100
    model, mll, x, y = _lazy_exact_gp(n, seed=3)
    xt = torch.randn(20, 4, generator=torch.Generator().manual_seed(4))

    def training_matrices():  # evaluations of the n x n training matrix (each starts with the block at row 0)
        return sum(1 for x1_eq_x2, shape, start, _ in evaluations if x1_eq_x2 and shape == (n, n) and start == 0)

    def predict():
        model.eval()
        with torch.no_grad(), gpytorch.settings.fast_pred_var():
            assert torch.isfinite(model(xt).mean).all()
        model.train()

    with gpytorch.settings.max_cholesky_size(0):
        model.train()
        loss = -mll(model(x), y)
        loss.backward()
        assert training_matrices() == 1
        predict()
        assert training_matrices() == 1  # the training step's matrix
        model.cov.base_kernel.weight_var = 1.5
        predict()
        assert training_matrices() == 2  # other variances: evaluated again
    del loss


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel])
def test_entries_by_index(cls, monkeypatch):
    """Entries by index, as GPyTorch's pivoted Cholesky asks for them (15 whole rows at once, broadcast indices):
    through one Gram product of the distinct rows and columns, equal to the matrix, and a point with itself equal
    to the diagonal to the bit (|c| = 1). Scattered pairs go through the paired recursion in chunks of bounded
    memory."""
    x, z, *_ = _data()
    k = cls(3, "relu", backend="lazy").double()
    for op in (k(x).evaluate_kernel(), k(x, z).evaluate_kernel()):
        with torch.no_grad():
            matrix = op.to_dense()
            rows, cols = torch.tensor([[0], [3], [4], [2]]), torch.arange(op.shape[-1]).unsqueeze(0)
            block = op._get_indices(rows, cols)
            assert block.shape == (4, op.shape[-1])
            torch.testing.assert_close(block, matrix[rows, cols], rtol=1e-10, atol=1e-12)
            if op.x1_eq_x2:
                same = torch.tensor([0, 3, 4, 2])
                assert torch.equal(block[torch.arange(4), same], op._diagonal()[same])
            g = torch.Generator().manual_seed(5)
            pairs = (torch.randint(op.shape[-2], (9,), generator=g), torch.randint(op.shape[-1], (9,), generator=g))
            monkeypatch.setattr(evaluators, "PAIR_CHUNK_NUMBERS", 3 * 2 * 5)  # three pairs a chunk
            scattered = op._get_indices(*pairs)
            monkeypatch.undo()
            torch.testing.assert_close(scattered, matrix[pairs], rtol=1e-10, atol=1e-12)


def test_symmetric_cache_keeps_only_the_upper_triangle(small_blocks):
    """A symmetric operator's cached matrix is its upper-triangle blocks (about half the entries); products, the
    dense matrix and the off-diagonal mirror images come from them, equal to the dense backend."""
    x = torch.randn(40, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    op = NNGPKernel(2, "relu", backend="lazy").double()(x).evaluate_kernel()
    rhs = torch.randn(40, 3, dtype=torch.float64)
    with torch.no_grad(), memory_budget(cache_bytes=2 ** 30):
        product = op @ rhs
        cache = op._dense_no_grad()
        assert isinstance(cache, shared_cache.CachedBlocks)
        kept = sum(block.numel() for *_, block in cache)
        assert kept < 0.7 * 40 * 40, f"{kept} entries kept for a 40 x 40 matrix"
        matrix = op.to_dense()
    dense = NNGPKernel(2, "relu", backend="dense").double()(x).to_dense().detach()
    torch.testing.assert_close(matrix, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(product, dense @ rhs, rtol=1e-10, atol=1e-12)


def test_memory_budget_sets_restores_and_checks():
    from gpytorch_nngp.backends import budget

    before = (budget.block_bytes(), budget.tile_bytes(), budget.cache_bytes())
    assert before[2] > 0 and before[1] == 16 * 2 ** 20  # a share of the RAM; CPU tiles stay cache-sized
    with memory_budget(share=0.1, block_bytes=2 ** 20):
        assert budget.block_bytes() == 2 ** 20
        assert budget.cache_bytes() < before[2]
    assert (budget.block_bytes(), budget.tile_bytes()) == before[:2]
    for bad, match in ((dict(share=0.0), "share must be in"), (dict(cache_bytes=-1), "cache_bytes must be"),
                       (dict(block_bytes=1.5), "block_bytes must be")):
        with pytest.raises(ValueError, match=match):
            memory_budget(**bad)
