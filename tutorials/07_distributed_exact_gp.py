"""Tutorial 7: an exact NNGP GP trained by several processes with torch.distributed (backend="distributed").
=========================================================================================================

Run it with::

    torchrun --standalone --nproc_per_node 2 tutorials/07_distributed_exact_gp.py [--n 20000] [--iters 10]
    python tutorials/07_distributed_exact_gp.py [--procs 2] ...   # the same: starts torchrun itself
    python tutorials/07_distributed_exact_gp.py --quick           # n = 1,000, 4 iterations (the test suite's run)

The model code is an ordinary GPyTorch ExactGP; only the kernel's backend changes. Every rank runs the same script
on the same data, seeded the same way. Each rank evaluates its share of the kernel matrix (an equal part of its
upper triangle); CG and Lanczos run in lockstep on every rank, with one all-reduce per product and one per
gradient. On a cluster, launch one process per GPU (torchrun --nnodes N --nproc_per_node G ...): the script picks
NCCL and the rank's GPU when CUDA is available, gloo on the CPU otherwise.

Data: y = sin(1.5 <x, w>) + 0.1 noise, x ~ N(0, I_8), and 1,000 test points. Rank 0 prints the results and writes
a figure: the loss per iteration, predicted mean +- 2 sd against the truth, and each rank's share of the matrix.
"""
import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

import gpytorch
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from gpytorch_nngp import NNGPKernel  # noqa: E402
from gpytorch_nngp.backends.distributed import triangle_rows  # noqa: E402


def make_data(n, n_test, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_test, d, generator=g)
    w = torch.randn(d, generator=g) / math.sqrt(d)
    y = torch.sin(1.5 * x @ w) + 0.1 * torch.randn(n + n_test, generator=g)
    return x[:n], y[:n], x[n:], y[n:]


class NNGPRegression(gpytorch.models.ExactGP):
    def __init__(self, x, y, backend):
        super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(NNGPKernel(3, "relu", backend=backend))

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def train(n, iters, backend, device="cpu", show=True):
    """Train by Adam on the marginal likelihood and predict the test points; the same code for every backend."""
    torch.manual_seed(0)  # GPyTorch's random probes: the same on every rank
    x, y, x_test, y_test = (t.to(device) for t in make_data(n, 1000))
    model = NNGPRegression(x, y, backend).to(device)
    model.likelihood.noise = 0.05
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    losses = []
    model.train()
    start = time.perf_counter()
    with gpytorch.settings.max_cholesky_size(0), tqdm(range(iters), desc=f"n={n}", disable=not show) as bar:
        for _ in bar:  # CG and Lanczos at every n, so that --quick runs the sharded products too
            optimizer.zero_grad()
            loss = -mll(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        train_seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad(), gpytorch.settings.fast_pred_var():
            pred = model.likelihood(model(x_test))
            mean, std = pred.mean.cpu(), pred.variance.sqrt().cpu()
    y_test = y_test.cpu()
    kernel = model.covar_module.base_kernel
    return {"losses": losses, "train_seconds": train_seconds, "mean": mean, "std": std, "y_test": y_test,
            "rmse": (mean - y_test).pow(2).mean().sqrt().item(), "target_sd": y_test.std().item(),
            "coverage": ((y_test - mean).abs() <= 2 * std).float().mean().item(),
            "weight_var": kernel.weight_var.item(), "bias_var": kernel.bias_var.item(),
            "noise": model.likelihood.noise.item()}


def plot(result, n, shares, path):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(range(1, len(result["losses"]) + 1), result["losses"], marker="o")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("negative marginal log likelihood / n")
    axes[0].set_title(f"training on {len(shares)} processes, n = {n}")
    y, mean, std = result["y_test"], result["mean"], result["std"]
    order = torch.argsort(y)[::10]
    axes[1].errorbar(y[order], mean[order], yerr=2 * std[order], fmt="o", ms=3, alpha=0.6)
    axes[1].plot([y.min(), y.max()], [y.min(), y.max()], "k--", lw=1)
    axes[1].set_xlabel("true y (test)")
    axes[1].set_ylabel("predicted mean +- 2 sd")
    axes[1].set_title(f"RMSE {result['rmse']:.3f}, {100 * result['coverage']:.0f}% inside 2 sd")
    rows = [stop - start for start, stop in shares]
    entries = [sum(n - i for i in range(start, stop)) / 1e6 for start, stop in shares]
    axes[2].bar([f"rank {r}\nrows {a}-{b}" for r, (a, b) in enumerate(shares)], entries)
    axes[2].set_ylabel("kernel entries held (millions)")
    axes[2].set_title(f"equal parts of the upper triangle ({', '.join(map(str, rows))} rows)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--procs", type=int, default=2, help="processes, when this script starts torchrun itself")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--report", default=None, help="rank 0 writes the results here as JSON")
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
    if "RANK" not in os.environ:  # not under torchrun: start it, with one thread per process
        # (sphinx-gallery runs the script without __file__, from the tutorials folder)
        script = os.path.abspath(globals().get("__file__", "07_distributed_exact_gp.py"))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.procs}",
               script, *(sys.argv[1:] if argv is None else argv)]
        return subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), check=True).returncode
    n, iters = (1000, 4) if args.quick else (args.n, args.iters)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    rank, size = dist.get_rank(), dist.get_world_size()
    result = train(n, iters, "distributed", device, show=rank == 0)
    every = [None] * size
    dist.all_gather_object(every, result["losses"])
    if rank == 0:
        shares = [triangle_rows(n, size, r) for r in range(size)]
        os.makedirs(args.out, exist_ok=True)
        figure = os.path.join(args.out, "distributed_exact_gp.png")
        plot(result, n, shares, figure)
        print(f"{size} processes, n={n}: {iters} steps in {result['train_seconds']:.1f} s; test RMSE "
              f"{result['rmse']:.3f} (targets sd {result['target_sd']:.3f}), {100 * result['coverage']:.1f}% within "
              f"2 sd; weight_var {result['weight_var']:.3f}, bias_var {result['bias_var']:.3f}, noise "
              f"{result['noise']:.4f}; figure {figure}")
        if args.report:
            keep = {k: v for k, v in result.items() if not isinstance(v, torch.Tensor)}
            with open(args.report, "w") as f:
                json.dump(dict(keep, n=n, processes=size, losses_by_rank=every, shares=shares, figure=figure), f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    main()  # (torchrun's failure raises through subprocess.run(check=True); sys.exit would end a gallery build)
