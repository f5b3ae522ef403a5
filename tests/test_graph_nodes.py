"""GraphNodeKernel: Monte Carlo of a wide GCN's node outputs, the low-rank form's error, training, and errors."""
import gpytorch
import pytest
import torch
from helpers.monte_carlo import BV, WV, assert_mean_converged, draw
from torch import nn

from gpytorch_nngp import Aggregate, GraphNodeKernel
from gpytorch_nngp.graphs import adjacency_from_edges, normalized_adjacency


def graph(nodes=30, seed=0, degree=3):
    gen = torch.Generator().manual_seed(seed)
    sources = torch.randint(0, nodes, (nodes * degree,), generator=gen)
    targets = torch.randint(0, nodes, (nodes * degree,), generator=gen)
    keep = sources != targets
    a = adjacency_from_edges(torch.stack([sources[keep], targets[keep]]), nodes, symmetric=True)
    return normalized_adjacency(a).double(), torch.randn(nodes, 4, generator=gen, dtype=torch.float64)


def gcn(adjacency, d=4, width=8, out=1):
    return nn.Sequential(Aggregate(adjacency), nn.Conv1d(d, width, 1), nn.ReLU(), Aggregate(adjacency),
                         nn.Conv1d(width, width, 1), nn.ReLU(), Aggregate(adjacency), nn.Conv1d(width, out, 1))


def test_node_kernel_is_the_limit_of_a_wide_gcn():
    """The NNGP between nodes: the covariance of a wide GCN's node outputs over prior draws (the readout's exact
    covariance given its input, as in test_monte_carlo_cnn.py)."""
    a, x = graph(12)
    module = gcn(a, width=256).double()
    gen = torch.Generator().manual_seed(1)
    samples = []
    for _ in range(24):
        draw(module, gen)
        with torch.no_grad():
            h = module[:-1](x.T.unsqueeze(0))[0]  # (width, N): the readout's input at every node
        samples.append(WV * h.T @ h / h.shape[0] + BV)
    samples = torch.stack(samples)
    with torch.no_grad():
        ref = GraphNodeKernel(module, x, weight_var=WV, bias_var=BV).double()(
            torch.arange(12.0, dtype=torch.float64).unsqueeze(-1)).to_dense()
    assert_mean_converged(samples, ref, 0.02)


@pytest.mark.parametrize("ntk", [False, True], ids=["nngp", "ntk"])
def test_low_rank_error_shrinks_with_landmarks(ntk):
    a, x = graph(80, seed=2)
    module = gcn(a)
    nodes = torch.arange(80.0, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        exact = GraphNodeKernel(module, x, ntk=ntk).double()(nodes).to_dense()
        errors = []
        for m in (10, 40, 80):
            approx = GraphNodeKernel(module, x, ntk=ntk, landmarks=m).double()(nodes).to_dense()
            errors.append((torch.linalg.norm(approx - exact) / torch.linalg.norm(exact)).item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-8 and errors[1] < 0.1, errors


def test_variances_train_by_marginal_likelihood_and_the_matrix_is_cached():
    a, x = graph(40, seed=3)
    kernel = GraphNodeKernel(gcn(a), x, ntk=True).double()
    train = torch.arange(0, 40, 2, dtype=torch.float64).unsqueeze(-1)
    y = x[::2, 0] + 0.1 * torch.randn(20, dtype=torch.float64)

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(train, y, gpytorch.likelihoods.GaussianLikelihood())
            self.mean, self.cov = gpytorch.means.ConstantMean(), kernel

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean(z), self.cov(z))

    gp = GP().double()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(gp.likelihood, gp)
    opt = torch.optim.Adam(gp.parameters(), lr=0.05)
    first = None
    for _ in range(6):
        opt.zero_grad()
        loss = -mll(gp(train), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first
    gp.eval()
    test = torch.arange(1, 40, 2, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        pred = gp(test)
        assert torch.isfinite(pred.variance).all()
        cached = kernel._cache[2]
        gp(test)
        assert kernel._cache[2] is cached  # no second N x N evaluation at fixed variances


def test_node_kernel_errors():
    a, x = graph(10)
    kernel = GraphNodeKernel(gcn(a), x).double()
    for bad, match in ((torch.tensor([[10.0]]), "outside"), (torch.tensor([[1.5]]), "integer"),
                       (torch.ones(3, 2), r"\(\.\.\., n, 1\)")):
        with pytest.raises(ValueError, match=match):
            kernel(bad).to_dense()
    with pytest.raises(ValueError, match="features"):
        GraphNodeKernel(gcn(a), x[:, 0])
    with pytest.raises(ValueError, match="adjacency has 10 nodes"):
        GraphNodeKernel(gcn(a), x[:9])
    with pytest.raises(ValueError, match="landmarks"):
        GraphNodeKernel(gcn(a), x, landmarks=11)
    pooled = nn.Sequential(nn.Conv1d(4, 8, 1), nn.ReLU(), Aggregate(a), nn.AvgPool1d(2), nn.Conv1d(8, 1, 1))
    with pytest.raises(ValueError, match="low-rank"):
        GraphNodeKernel(pooled, x, landmarks=4)(torch.zeros(1, 1)).to_dense()
