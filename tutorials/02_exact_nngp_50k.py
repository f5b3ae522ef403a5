"""Tutorial 2: an exact NNGP Gaussian process on 50,000 points with GPyTorch's CG/Lanczos machinery.
=================================================================================================

Run it with::

    python tutorials/02_exact_nngp_50k.py [--n 50000] [--iters 8] [--quick] [--out tutorials/figures]

An ordinary `gpytorch.models.ExactGP` with `ScaleKernel(NNGPKernel(3, "relu"))`. Nothing special is needed in the
model: above 2,900 x 2,900 entries the kernel returns its row-block operator (backend="auto" -> "lazy"), which
GPyTorch multiplies in conjugate gradients and Lanczos. Its gradients wrt weight_var and bias_var are computed one
block of rows at a time, so memory stays near one copy of the matrix (10 GB in float32 at n = 50,000; a dense
autograd graph would need hundreds of GB). On a 2-core CPU each training step at n = 50,000 takes minutes; on a
GPU seconds.

Data: y = sin(1.5 <x, w>) + 0.1 noise, x ~ N(0, I_32), the norm of w about 1, and 1,000 test points. Figures:
the negative marginal log likelihood per iteration, and predicted mean +- 2 sd against the truth on test points.
--quick: n = 1,500 and 4 iterations (the test suite runs that with --backend lazy).
"""
import argparse
import math
import os
import time

import gpytorch
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from gpytorch_nngp import NNGPKernel  # noqa: E402


def make_data(n, n_test, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_test, d, generator=g)
    w = torch.randn(d, generator=g) / math.sqrt(d)
    y = torch.sin(1.5 * x @ w) + 0.1 * torch.randn(n + n_test, generator=g)
    return x[:n], y[:n], x[n:], y[n:]


class NNGPRegression(gpytorch.models.ExactGP):
    def __init__(self, x, y, backend="auto"):
        super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
        self.mean_module = gpytorch.means.ConstantMean()
        kernel = NNGPKernel(3, "relu", weight_var=2.0, bias_var=0.1, backend=backend)
        self.covar_module = gpytorch.kernels.ScaleKernel(kernel)

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--backend", default="auto", choices=("auto", "dense", "lazy"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="where the figures go (default: tutorials/figures)")
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
    n, iters = (1500, 4) if args.quick else (args.n, args.iters)
    os.makedirs(args.out, exist_ok=True)

    x, y, x_test, y_test = make_data(n, 1000)
    model = NNGPRegression(x, y, args.backend)
    model.likelihood.noise = 0.05
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)

    model.train()
    losses = []
    start = time.perf_counter()
    with tqdm(range(iters), desc=f"exact NNGP, n={n}") as bar:
        for _ in bar:
            optimizer.zero_grad()
            loss = -mll(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", noise=f"{model.likelihood.noise.item():.3f}")
    train_seconds = time.perf_counter() - start

    model.eval()
    start = time.perf_counter()
    with torch.no_grad(), gpytorch.settings.fast_pred_var():
        pred = model.likelihood(model(x_test))
        mean, std = pred.mean, pred.variance.sqrt()
    predict_seconds = time.perf_counter() - start
    rmse = (mean - y_test).pow(2).mean().sqrt().item()
    inside = ((y_test - mean).abs() <= 2 * std).float().mean().item()
    kernel = model.covar_module.base_kernel
    print(f"n={n}: {iters} training steps in {train_seconds:.1f} s, predictions for 1000 points in "
          f"{predict_seconds:.1f} s")
    print(f"test RMSE {rmse:.3f} (targets: sd {y_test.std().item():.3f}, noise sd 0.1); "
          f"{100 * inside:.1f}% of test targets within 2 sd")
    print(f"learned weight_var {kernel.weight_var.item():.3f}, bias_var {kernel.bias_var.item():.3f}, "
          f"noise {model.likelihood.noise.item():.4f}")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(range(1, iters + 1), losses, marker="o")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("negative marginal log likelihood / n")
    axes[0].set_title(f"training, n = {n}")
    order = torch.argsort(y_test)[::10]
    axes[1].errorbar(y_test[order], mean[order], yerr=2 * std[order], fmt="o", ms=3, alpha=0.6)
    lims = [y_test.min().item(), y_test.max().item()]
    axes[1].plot(lims, lims, "k--", lw=1)
    axes[1].set_xlabel("true y (test)")
    axes[1].set_ylabel("predicted mean +- 2 sd")
    axes[1].set_title(f"RMSE {rmse:.3f}, {100 * inside:.0f}% inside 2 sd")
    fig.tight_layout()
    path = os.path.join(args.out, "exact_nngp_large_n.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"losses": losses, "rmse": rmse, "target_sd": y_test.std().item(), "coverage": inside, "figure": path}


if __name__ == "__main__":
    main()
