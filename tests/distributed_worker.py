"""One rank of the multi-process tests of backend="distributed"; tests/test_distributed.py starts two of them.

    python tests/distributed_worker.py SCENARIO RANK WORLD_SIZE STORE_FILE OUT_FILE

SCENARIO "agree" writes what the sharded run computes (marginal likelihood, its gradients, a CG solve, input
gradients, predictive mean and variance) for the test to compare with one process; "failures" writes the errors
that different inputs, different seeds and a stopped rank give.
"""
import datetime
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gpytorch  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from gpytorch_nngp import NNGPKernel, NTKKernel  # noqa: E402
from gpytorch_nngp.backends import ProcessGroupSharding  # noqa: E402

KERNELS = ("nngp-relu", "ntk-erf", "cnn-relu")
NOISE = 1.0
CG_TOLERANCE = 1e-5  # linear_operator's CG stalls near a mean residual of 3e-6 on these matrices


def problem(n=101, d=6, n_test=7):
    """Float64 data: n = 101 points (uneven shards over 2 ranks), one duplicated; targets; test points."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[3] = x[2]
    y = torch.sin(x.sum(-1)) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y, torch.randn(n_test, d, generator=g, dtype=torch.float64)


def make_kernel(name, backend):
    if name == "nngp-relu":  # forward-mode variance derivative
        return NNGPKernel(3, "relu", backend=backend)
    if name == "ntk-erf":  # autograd derivative
        return NTKKernel(2, "erf", backend=backend)
    cnn = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 1))
    return NNGPKernel.from_module(cnn, (1, 6), backend=backend)


class GP(gpytorch.models.ExactGP):
    def __init__(self, x, y, kernel):
        super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
        self.mean = gpytorch.means.ConstantMean()
        self.cov = gpytorch.kernels.ScaleKernel(kernel)

    def forward(self, a):
        return gpytorch.distributions.MultivariateNormal(self.mean(a), self.cov(a))


def results(name, backend):
    """Everything a sharded run must reproduce, as a dict of float64 tensors."""
    x, y, xt = problem()
    model = GP(x, y, make_kernel(name, backend)).double()
    model.likelihood.noise = NOISE
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    out = {}
    with gpytorch.settings.max_cholesky_size(0):  # CG and Lanczos at every size
        torch.manual_seed(0)  # the same probes in every run
        model.train()
        loss = -mll(model(x), y)
        loss.backward()
        out["mll"] = loss.detach()
        out["grads"] = torch.cat([p.grad.reshape(-1) for _, p in sorted(model.named_parameters())])
        with torch.no_grad(), gpytorch.settings.cg_tolerance(CG_TOLERANCE):
            op = model.cov(x).evaluate_kernel().add_diagonal(torch.tensor(NOISE, dtype=torch.float64))
            out["solve"] = op.solve(y.unsqueeze(-1)).squeeze(-1)
        xr = x.clone().requires_grad_(True)
        right = torch.cos(torch.arange(x.shape[0] * 2, dtype=torch.float64)).view(-1, 2)
        (right.flip(0) * (model.cov(xr).evaluate_kernel() @ right)).sum().backward()
        out["input_grads"] = xr.grad
        model.eval()
        with torch.no_grad(), gpytorch.settings.eval_cg_tolerance(CG_TOLERANCE):
            pred = model.likelihood(model(xt))
            out["mean"], out["variance"] = pred.mean, pred.variance
    return out


def failures(rank):
    """The errors of three misuses, as strings: different inputs, different seeds, and rank 1 no longer taking part
    (alive for 8 s, so only the 5 s timeout ends rank 0's wait)."""
    sharding = ProcessGroupSharding(timeout=5)
    x, y, _ = problem()
    out = {}
    kernel = NNGPKernel(3, "relu", backend=sharding).double()
    try:
        kernel(x if rank == 0 else x + 1e-3).evaluate_kernel()
        out["data"] = "no error"
    except ValueError as error:
        out["data"] = str(error)
    model = GP(x, y, kernel).double()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    try:
        with gpytorch.settings.max_cholesky_size(0):
            torch.manual_seed(rank)  # a mistake: the ranks draw different probes
            (-mll(model(x), y)).backward()
        out["seed"] = "no error"
    except ValueError as error:
        out["seed"] = str(error)
    if rank == 1:
        time.sleep(8)  # rank 1 stops taking part but stays alive (a hang, were there no timeout), then exits
        return out
    start = time.perf_counter()
    try:
        with gpytorch.settings.max_cholesky_size(0):
            torch.manual_seed(0)
            (-mll(model(x), y)).backward()
        out["stopped"] = "no error"
    except RuntimeError as error:
        out["stopped"] = str(error)
    out["stopped_after_s"] = time.perf_counter() - start
    return out


def main():
    scenario, rank, world, store, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    if scenario == "agree":
        out = {name: results(name, "distributed") for name in KERNELS}
    else:
        out = failures(rank)
    torch.save(out, path)
    if scenario == "agree":
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
