"""Graph inputs: packing and its errors, the modules, and packed graphs through ExactGP, SVGP and BoTorch."""
import gpytorch
import pytest
import torch
from torch import nn

from gpytorch_nngp import Aggregate, GraphInputs, GraphNetwork, NNGPKernel, NTKKernel
from gpytorch_nngp.backends.tiling import architecture_matrix
from gpytorch_nngp.graphs import adjacency_from_edges, check_adjacency, from_pyg, normalized_adjacency

C, V = 2, 5


def random_graphs(n, seed=0, sizes=None):
    gen = torch.Generator().manual_seed(seed)
    feats, adjs = [], []
    for k in range(n):
        size = V if sizes is None else sizes[k % len(sizes)]
        feats.append(torch.randn(C, size, generator=gen, dtype=torch.float64))
        adjs.append((torch.rand(size, size, generator=gen) < 0.5).double())
    return feats, adjs


def gcn(adjacency=None, width=8):
    return nn.Sequential(nn.Conv1d(C, width, 1), nn.ReLU(), Aggregate(adjacency), nn.Conv1d(width, width, 1),
                         nn.ReLU(), Aggregate(adjacency), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(width, 1))


def packed_kernel(cls=NNGPKernel, max_edges=None, **kwargs):
    packing = GraphInputs(C, V, max_edges=max_edges)
    return cls.from_module(GraphNetwork(gcn(), packing), (packing.dim,), **kwargs).double(), packing


def test_dense_and_edge_list_packs_give_the_same_kernel_and_the_same_network_output():
    feats, adjs = random_graphs(6, sizes=[5, 3, 4])
    dense_k, dense = packed_kernel(NTKKernel)
    edge_k, edges = packed_kernel(NTKKernel, max_edges=25)
    a, b = dense.pack(feats, adjs), edges.pack(feats, [x.to_sparse() for x in adjs])
    with torch.no_grad():
        torch.testing.assert_close(dense_k(a).to_dense(), edge_k(b).to_dense(), rtol=1e-12, atol=1e-12)
    net = gcn().double()
    torch.testing.assert_close(GraphNetwork(net, dense)(a), GraphNetwork(net, edges)(b))
    # the module's per-input aggregation is each graph's own A x
    x, graphs = dense.unpack(a)
    agg = GraphNetwork(Aggregate(), dense)(a)
    torch.testing.assert_close(agg, torch.stack([x[k] @ graphs[k].T for k in range(len(x))]))


def test_per_input_graphs_keep_the_layer_contract():
    """In place equals autograd, diag=True is the matrix diagonal to the bit, tiles equal dense, the lazy operator's
    products, finite gradients wrt node features at duplicate graphs."""
    k, packing = packed_kernel(NTKKernel, max_edges=25, weight_var=1.6, bias_var=0.15)
    feats, adjs = random_graphs(6, seed=1)
    x = packing.pack(feats, adjs)
    x[1] = x[0]
    y = packing.pack(*random_graphs(3, seed=2))
    with torch.no_grad():
        fast, fast_xy, diag = k(x).to_dense(), k(x, y).to_dense(), k(x, diag=True)
        tiled = architecture_matrix(k.network, x, y, k.weight_var, k.bias_var, True,
                                    budget=2 * k.network.entries_per_pair * 8)
    torch.testing.assert_close(tiled, fast_xy, rtol=1e-12, atol=1e-12)
    assert torch.equal(diag, fast.diagonal())
    graph = k(x).to_dense()
    torch.testing.assert_close(fast, graph.detach(), rtol=1e-12, atol=1e-12)
    lazy = NTKKernel.from_module(GraphNetwork(gcn(), packing), (packing.dim,), weight_var=1.6, bias_var=0.15,
                                 backend="lazy").double()
    rhs = torch.randn(len(x), 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(lazy(x) @ rhs, fast @ rhs, rtol=1e-10, atol=1e-10)
    xg = x.clone().requires_grad_(True)
    (k(xg).to_dense().sum() + k(xg, diag=True).sum()).backward()
    assert torch.isfinite(xg.grad).all() and xg.grad[:, :C * V].abs().sum() > 0
    assert (xg.grad[:, C * V:] == 0).all()  # the graph part of a row is not differentiable input


def test_batched_rows_equal_one_batch_at_a_time():
    k, packing = packed_kernel(weight_var=1.6, bias_var=0.15)
    x = torch.stack([packing.pack(*random_graphs(4, seed=s)) for s in range(3)])  # (3, 4, dim)
    y = packing.pack(*random_graphs(2, seed=9))
    with torch.no_grad():
        batched = k(x, y.expand(3, *y.shape)).to_dense()
        for b in range(3):
            torch.testing.assert_close(batched[b], k(x[b], y).to_dense(), rtol=1e-12, atol=1e-12)
        batch_kernel, _ = packed_kernel(weight_var=1.6, bias_var=0.15, batch_shape=torch.Size([2]))
        torch.testing.assert_close(batch_kernel(x[0], y).to_dense()[1], k(x[0], y).to_dense())


def test_packed_graphs_train_an_exact_gp_an_svgp_and_a_botorch_model():
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize

    k, packing = packed_kernel(weight_var=1.6, bias_var=0.15)
    feats, adjs = random_graphs(16, seed=3, sizes=[5, 4])
    x = packing.pack(feats, adjs)
    y = torch.stack([a.sum() for a in adjs]) / 10 + 0.05 * torch.randn(16, dtype=torch.float64)

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
            self.mean, self.cov = gpytorch.means.ConstantMean(), k

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean(z), self.cov(z))

    gp = GP().double()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(gp.likelihood, gp)
    opt = torch.optim.Adam(gp.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = -mll(gp(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    gp.eval()
    with torch.no_grad():
        assert torch.isfinite(gp(x[:3]).variance).all()

    model = SingleTaskGP(x, y.unsqueeze(-1), covar_module=packed_kernel()[0], outcome_transform=Standardize(1))
    post = model.posterior(x[:4].unsqueeze(1))  # BoTorch's b x q x d: 4 batches of one graph
    assert post.mean.shape == (4, 1, 1) and torch.isfinite(post.variance).all()

    class SVGP(gpytorch.models.ApproximateGP):
        def __init__(self):
            dist = gpytorch.variational.CholeskyVariationalDistribution(6)
            strategy = gpytorch.variational.VariationalStrategy(self, x[:6].clone(), dist,
                                                                learn_inducing_locations=False)
            super().__init__(strategy)
            self.mean, self.cov = gpytorch.means.ConstantMean(), packed_kernel()[0]

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean(z), self.cov(z))

    svgp = SVGP().double()
    elbo = gpytorch.mlls.VariationalELBO(gpytorch.likelihoods.GaussianLikelihood().double(), svgp, num_data=16)
    (-elbo(svgp(x), y)).backward()
    assert torch.isfinite(svgp.cov.raw_weight_var.grad).all()


def test_clear_errors():
    packing = GraphInputs(C, V, max_edges=6)
    feats, adjs = random_graphs(2)
    with pytest.raises(ValueError, match="max_edges"):
        packing.pack(feats, adjs)
    with pytest.raises(ValueError, match=r"C=2, V_i <= 4"):
        GraphInputs(C, 4).pack(feats, adjs)
    with pytest.raises(ValueError, match="5 nodes of features but a 4-node adjacency"):
        GraphInputs(C, V).pack(feats, [a[:4, :4] for a in adjs])
    k, dense = packed_kernel()
    rows = dense.pack(feats, adjs)
    with pytest.raises(ValueError, match=r"\(\.\.\., n, 35\)"):
        k(rows[:, :-1])
    bad = rows.clone()
    bad[0, -1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        k(bad)
    bad[0, -1] = -1.0
    with pytest.raises(ValueError, match="negative"):
        k(bad)
    ek, edges = packed_kernel(max_edges=25)
    rows = edges.pack(feats, adjs)
    for value, match in ((7.0, "outside"), (1.5, "integer"), (-1.0, "one end -1")):
        bad = rows.clone()
        bad[0, C * V] = value  # the first edge's source
        with pytest.raises(ValueError, match=match):
            ek(bad)
    for adjacency, match in ((torch.ones(3, 4), "square"), (-torch.ones(3, 3), "negative"),
                             (torch.full((3, 3), float("nan")), "NaN")):
        with pytest.raises(ValueError, match=match):
            Aggregate(adjacency)
    with pytest.raises(ValueError, match="has 5 nodes, the input 4"):
        Aggregate(torch.eye(5))(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="GraphNetwork"):
        NNGPKernel.from_module(gcn(), (C, V))
    with pytest.raises(ValueError, match="GraphNetwork"):
        gcn()(torch.randn(2, C, V))
    with pytest.raises(ValueError, match="adjacency has 5 nodes"):
        NNGPKernel.from_module(gcn(torch.eye(5)), (C, 6))
    with pytest.raises(ValueError, match="outside"):
        adjacency_from_edges(torch.tensor([[0, 5], [1, 2]]), 5)
    with pytest.raises(ValueError, match="does not match"):
        NNGPKernel.from_module(GraphNetwork(gcn(), dense), (C * V,))
    with pytest.raises(ValueError, match="edge_index"):
        adjacency_from_edges(torch.tensor([0, 1]), 3)
    check_adjacency(torch.eye(3).to_sparse())


def test_adjacency_helpers():
    edges = torch.tensor([[0, 1, 1], [1, 2, 2]])  # 0 -> 1, 1 -> 2 twice
    a = adjacency_from_edges(edges, 3, sparse=False)
    assert a[1, 0] == 1 and a[2, 1] == 2 and a.sum() == 3
    sym = adjacency_from_edges(edges, 3, symmetric=True, sparse=False)
    torch.testing.assert_close(sym, sym.T)
    for kind in ("symmetric", "row"):
        dense = normalized_adjacency(sym, kind=kind)
        sparse = normalized_adjacency(sym.to_sparse(), kind=kind)
        assert sparse.layout == torch.sparse_coo
        torch.testing.assert_close(sparse.to_dense(), dense)
    with_loops = sym + torch.eye(3)
    d = with_loops.sum(1)
    torch.testing.assert_close(normalized_adjacency(sym), with_loops / d.sqrt()[:, None] / d.sqrt()[None, :])
    torch.testing.assert_close(normalized_adjacency(sym, kind="row").sum(1), torch.ones(3))


def test_pyg_data():
    pyg = pytest.importorskip("torch_geometric")
    from torch_geometric.datasets import KarateClub

    data = KarateClub()[0]
    x, a = from_pyg(data)
    assert x.shape == (34, 34) and a.shape == (34, 34) and a.layout == torch.sparse_coo
    assert a._nnz() == data.edge_index.shape[1]
    torch.testing.assert_close(a.to_dense(), a.to_dense().T)  # karate club lists both directions
    from torch_geometric.datasets import FakeDataset

    graphs = FakeDataset(num_graphs=5, avg_num_nodes=8, num_channels=3, edge_dim=0)
    packing = GraphInputs(3, max(g.num_nodes for g in graphs), max_edges=max(g.num_edges for g in graphs))
    rows = packing.pack_pyg(graphs)
    kernel = NNGPKernel.from_module(GraphNetwork(nn.Sequential(Aggregate(), nn.Conv1d(3, 8, 1), nn.ReLU(),
                                                               nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                                                               nn.Linear(8, 1)), packing), (packing.dim,))
    with torch.no_grad():
        k = kernel(rows).to_dense()
    assert k.shape == (5, 5) and torch.isfinite(k).all()
    assert pyg is not None
