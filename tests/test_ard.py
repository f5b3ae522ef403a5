"""Per-input relevance (ARD) for the network kernels: the kernel of x / lengthscale on every path, gradients wrt the
length scales (forward mode on the lazy backend), Monte Carlo of networks with per-input first-layer variances,
BoTorch batches, defaults and errors."""
import math

import gpytorch
import pytest
import torch
from helpers.monte_carlo import assert_mean_converged
from torch import nn
from torch.func import jacrev

from gpytorch_nngp import Aggregate, GraphInputs, GraphNetwork, GraphNodeKernel, NNGPKernel, NTKKernel
from gpytorch_nngp.graphs import normalized_adjacency

SCALES = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)


def points(n=12, d=4, seed=0):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[1], x[2] = x[0], 0.0
    return x


def with_scales(kernel, scales=SCALES):
    kernel = kernel.double()
    kernel.raw_lengthscale.data = kernel.raw_lengthscale_constraint.inverse_transform(scales.view(1, -1))
    return kernel


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel], ids=["nngp", "ntk"])
@pytest.mark.parametrize("backend", ["dense", "lazy"])
def test_fully_connected_ard_is_the_kernel_of_scaled_inputs(cls, backend):
    x, y = points(), points(7, seed=1)
    ard = with_scales(cls(3, "relu", ard_num_dims=4, backend=backend))
    plain = cls(3, "relu", backend=backend).double()
    scale = ard.lengthscale.detach()
    with torch.no_grad():
        torch.testing.assert_close(ard(x).to_dense(), plain(x / scale).to_dense(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ard(x, y).to_dense(), plain(x / scale, y / scale).to_dense(), rtol=1e-12,
                                   atol=1e-12)
        torch.testing.assert_close(ard(x, diag=True), plain(x / scale, diag=True), rtol=1e-12, atol=1e-12)


def test_without_ard_nothing_changes_and_the_defaults():
    k = NNGPKernel(2)
    assert k.lengthscale is None and not any("lengthscale" in n for n, _ in k.named_parameters())
    ard = NNGPKernel(2, ard_num_dims=3)
    torch.testing.assert_close(ard.lengthscale, torch.ones(1, 3), rtol=1e-6, atol=0)  # starts as the plain kernel
    assert ard.lengthscale.shape == (1, 3)
    priors = {name: prior for name, _, prior, _, _ in ard.named_priors()}
    assert isinstance(priors["lengthscale_prior"], gpytorch.priors.LogNormalPrior)
    assert isinstance(ard.raw_lengthscale_constraint, gpytorch.constraints.GreaterThan)
    assert not any(True for _ in NNGPKernel(2, ard_num_dims=3, lengthscale_prior=None).named_priors())
    batched = NTKKernel(2, ard_num_dims=3, batch_shape=torch.Size([2]))
    assert batched.lengthscale.shape == (2, 1, 3)
    assert batched(torch.randn(5, 3)).to_dense().shape == (2, 5, 5)


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel], ids=["nngp", "ntk"])
def test_length_scale_gradients_forward_mode_equal_dense_autograd(cls):
    """The lazy operator's backward (forward mode, the inputs' gradients from the same pass) against autograd
    through the dense kernel: the gradients wrt the length scales and the variances agree."""
    x = points(30)
    rhs = torch.randn(30, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = []
    for backend in ("lazy", "dense"):
        k = with_scales(cls(3, "relu", ard_num_dims=4, backend=backend))
        (rhs * (k(x) @ rhs)).sum().backward()
        grads.append(torch.cat([k.raw_lengthscale.grad.flatten(), k.raw_weight_var.grad.flatten(),
                                k.raw_bias_var.grad.flatten()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-10)


def test_architecture_kernels_have_one_length_scale_per_channel():
    cnn = nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                        nn.Linear(8, 1))
    scales = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    ard = with_scales(NTKKernel.from_module(cnn, (3, 5), ard_num_dims=3), scales)
    assert ard.ard_num_dims is None and ard.lengthscale.shape == (1, 3)  # GPyTorch checks ard_num_dims on columns
    plain = NTKKernel.from_module(cnn, (3, 5)).double()
    x = torch.randn(6, 15, dtype=torch.float64)
    scaled = (x.view(6, 3, 5) / ard.lengthscale.detach().view(3, 1)).reshape(6, 15)
    with torch.no_grad():
        torch.testing.assert_close(ard(x).to_dense(), plain(scaled).to_dense(), rtol=1e-12, atol=1e-12)
    # packed graphs: the node features' channels, not the graph
    packing = GraphInputs(3, 4)
    body = nn.Sequential(Aggregate(), nn.Conv1d(3, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(8, 1))
    graphs = [(torch.rand(4, 4) < 0.5).double() for _ in range(5)]
    features = torch.randn(5, 3, 4, dtype=torch.float64)
    ard = with_scales(NNGPKernel.from_module(GraphNetwork(body, packing), (packing.dim,), ard_num_dims=3), scales)
    plain = NNGPKernel.from_module(GraphNetwork(body, packing), (packing.dim,)).double()
    with torch.no_grad():
        torch.testing.assert_close(ard(packing.pack(features, graphs)).to_dense(),
                                   plain(packing.pack(features / ard.lengthscale.detach().view(3, 1), graphs)
                                         ).to_dense(), rtol=1e-12, atol=1e-12)
    # the nodes of one graph: one length scale per node feature
    adjacency = normalized_adjacency((torch.rand(6, 6) < 0.4).double())
    gcn = nn.Sequential(Aggregate(adjacency), nn.Conv1d(3, 8, 1), nn.ReLU(), nn.Conv1d(8, 1, 1))
    feats = torch.randn(6, 3, dtype=torch.float64)
    nodes = torch.arange(6.0, dtype=torch.float64).unsqueeze(-1)
    ard = with_scales(GraphNodeKernel(gcn, feats, ard_num_dims=3), scales)
    with torch.no_grad():
        torch.testing.assert_close(ard(nodes).to_dense(), GraphNodeKernel(gcn, feats / ard.lengthscale.detach(
        )).double()(nodes).to_dense(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel], ids=["nngp", "ntk"])
def test_wide_networks_with_per_input_first_layer_variances_converge(cls):
    """Monte Carlo: first-layer weights N(0, weight_var / (d l_i^2)) for input i, width 1024, depth 2 ReLU; the
    NNGP from the readout's input, the NTK from the Jacobian (NTK parametrization)."""
    x, wv, bv, width = points(8)[[0, 3, 4, 5, 6, 7]], 1.6, 0.2, 1024
    kernel = with_scales(cls(2, "relu", ard_num_dims=4, weight_var=wv, bias_var=bv))
    scale = kernel.lengthscale.detach()[0]
    gen = torch.Generator().manual_seed(5)

    def forward(p, x, readout=True):
        h = x @ (p["w0"] * math.sqrt(wv / 4) / scale).T + math.sqrt(bv) * p["b0"]  # per-input variances
        h = torch.relu(h) @ p["w1"].T * math.sqrt(wv / width) + math.sqrt(bv) * p["b1"]
        h = torch.relu(h)
        if not readout:
            return h
        return (h @ p["w2"].T * math.sqrt(wv / width) + math.sqrt(bv) * p["b2"]).squeeze(-1)

    samples = []
    for _ in range(24 if cls is NNGPKernel else 6):
        p = {"w0": torch.randn(width, 4), "b0": torch.randn(width), "w1": torch.randn(width, width),
             "b1": torch.randn(width), "w2": torch.randn(1, width), "b2": torch.randn(1)}
        p = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in p.items()}
        if cls is NNGPKernel:
            h = forward(p, x, readout=False)
            samples.append(wv * h @ h.T / width + bv)
        else:
            flat = torch.cat([j.reshape(len(x), -1) for j in jacrev(forward)(p, x).values()], 1)
            samples.append(flat @ flat.T)
    samples = torch.stack(samples)
    with torch.no_grad():
        ref = kernel(x).to_dense()
    assert_mean_converged(samples, ref, 0.01)


def test_botorch_batches_and_active_dims():
    from botorch.models import SingleTaskGP

    x = torch.rand(15, 3, dtype=torch.float64) * 2 - 1
    y = (x[:, :1] * 2).sin()
    model = SingleTaskGP(x, y, covar_module=NNGPKernel(2, ard_num_dims=3).double())
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    mll(model(x), y.squeeze(-1)).backward()
    assert torch.isfinite(model.covar_module.raw_lengthscale.grad).all()
    post = model.posterior(torch.rand(4, 2, 3, dtype=torch.float64))  # b x q x d
    assert post.mean.shape == (4, 2, 1)
    k = with_scales(NNGPKernel(2, ard_num_dims=2, active_dims=[0, 2]), SCALES[:2])
    plain = NNGPKernel(2).double()
    with torch.no_grad():
        torch.testing.assert_close(k(x).to_dense(), plain(x[:, [0, 2]] / k.lengthscale).to_dense())


def test_ard_errors():
    with pytest.raises(ValueError, match="ard_num_dims"):
        NNGPKernel(2, lengthscale_prior=gpytorch.priors.GammaPrior(2.0, 1.0))
    with pytest.raises(ValueError, match="positive int"):
        NNGPKernel(2, ard_num_dims=0)
    with pytest.raises((ValueError, RuntimeError), match="ard_num_dims"):
        NNGPKernel(2, ard_num_dims=3)(torch.randn(4, 5)).to_dense()
    cnn = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3, 1))
    with pytest.raises(ValueError, match="one length scale per input channel"):
        NNGPKernel.from_module(cnn, (3, 5), ard_num_dims=15)
