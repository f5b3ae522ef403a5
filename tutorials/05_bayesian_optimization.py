"""Tutorial 5: Bayesian optimization with an NNGP surrogate in BoTorch.
====================================================================

Run it with::

    python tutorials/05_bayesian_optimization.py [--quick] [--out tutorials/figures]

A 1-D function with several local maxima is maximized by a BO loop: at each step a SingleTaskGP with
NNGPKernel(3, "relu") (inputs normalized to [-0.5, 0.5], outputs standardized, hyperparameters fitted by
fit_gpytorch_mll) proposes the maximizer of qLogExpectedImprovement. No ScaleKernel: for ReLU the kernel's
weight_var already is its output scale (see benchmarks/bo_surrogate_fit.py). The objective is noiseless, so the
model is told so (train_Yvar = 1e-4): with the noise left to the marginal likelihood, four points of a wiggly 1-D
function are explained as noise and the loop searches blindly. The figure shows the surrogate and the
acquisition function at three stages of the loop, and the best value found against the number of evaluations.

Part 2, per-input relevance (ARD): Branin hidden in 10 dimensions (inputs 2 and 7 matter, the other eight do not),
30 Sobol points, NNGPKernel(3, "relu", ard_num_dims=10): the fitted length scales as a bar chart, beside BoTorch's
default kernel's. The relevant inputs get the shortest length scales (the largest first-layer weight variances).
Needs botorch (pip install 'gpytorch_nngp[bo]'); gpytorch_nngp itself does not import it.
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from botorch.acquisition import qLogExpectedImprovement  # noqa: E402
from botorch.fit import fit_gpytorch_mll  # noqa: E402
from botorch.models import SingleTaskGP  # noqa: E402
from botorch.models.transforms import Normalize, Standardize  # noqa: E402
from botorch.optim import optimize_acqf  # noqa: E402
from botorch.test_functions import Branin  # noqa: E402
from botorch.utils.sampling import draw_sobol_samples  # noqa: E402
from gpytorch.mlls import ExactMarginalLogLikelihood  # noqa: E402

from gpytorch_nngp import NNGPKernel  # noqa: E402

BOUNDS = torch.tensor([[-2.0], [3.0]], dtype=torch.float64)


def objective(x):
    """Several local maxima on [-2, 3]; the global one is near x = 2.6."""
    x = x[..., 0]
    return torch.sin(3 * x) + 0.3 * x


def fit_surrogate(x, y):
    model = SingleTaskGP(x, y, train_Yvar=torch.full_like(y, 1e-4), covar_module=NNGPKernel(3, "relu").double(),
                         input_transform=Normalize(1, bounds=BOUNDS, center=0.0), outcome_transform=Standardize(1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


RELEVANT = (2, 7)  # the inputs of the embedded Branin


def embedded_branin(x):
    """Branin (negated, to maximize) on inputs 2 and 7 of x in [0, 1]^10."""
    branin = Branin()
    low, high = branin.bounds.to(x)
    return -branin.evaluate_true(low + (high - low) * x[..., list(RELEVANT)])


def relevance(out_dir, points: int = 30, dims: int = 10):
    """Fits the ARD NNGP and BoTorch's default to an embedded Branin; draws both sets of length scales."""
    bounds = torch.stack([torch.zeros(dims), torch.ones(dims)]).to(torch.float64)
    x = draw_sobol_samples(bounds, n=points, q=1, seed=0).squeeze(1)
    y = embedded_branin(x).unsqueeze(-1)
    scales = {}
    for name, kernel, center in (("NNGP, ard_num_dims=10", NNGPKernel(3, "relu", ard_num_dims=dims).double(), 0.0),
                                 ("BoTorch default (RBF, ARD)", None, 0.5)):
        kwargs = {} if kernel is None else {"covar_module": kernel}
        model = SingleTaskGP(x, y, input_transform=Normalize(dims, bounds=bounds, center=center),
                             outcome_transform=Standardize(1), **kwargs)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        scales[name] = model.covar_module.lengthscale.detach().flatten()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, (name, lengthscale) in zip(axes, scales.items()):
        colours = ["C3" if i in RELEVANT else "C0" for i in range(dims)]
        ax.bar(range(dims), lengthscale, color=colours)
        ax.set_yscale("log")
        ax.set_xticks(range(dims))
        ax.set_xlabel("input (red: the two Branin uses)")
        ax.set_ylabel("fitted length scale")
        ax.set_title(name)
    fig.suptitle(f"Per-input relevance: Branin hidden in {dims} dimensions, {points} points")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "bayesian_optimization_ard.png"), dpi=110)
    plt.close(fig)
    nngp = scales["NNGP, ard_num_dims=10"]
    shortest = sorted(torch.argsort(nngp)[:len(RELEVANT)].tolist())
    return {"lengthscales": {k: v.tolist() for k, v in scales.items()}, "shortest": shortest,
            "separation": (nngp[[i for i in range(dims) if i not in RELEVANT]].min()
                           / nngp[list(RELEVANT)].max()).item()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (the test suite's run)")
    parser.add_argument("--out", default=None, help="where the figures go (default: tutorials/figures)")
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
    iterations = 6 if args.quick else 12
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    x = torch.tensor([[-1.6], [-0.5], [0.4], [1.3]], dtype=torch.float64)
    y = objective(x).unsqueeze(-1)
    grid = torch.linspace(-2, 3, 300, dtype=torch.float64).unsqueeze(-1)
    shown = {0, iterations // 2, iterations - 1}
    fig, axes = plt.subplots(2, 4, figsize=(16, 6), gridspec_kw={"height_ratios": [2, 1]})
    column = 0
    for step in range(iterations):
        model = fit_surrogate(x, y)
        acqf = qLogExpectedImprovement(model, best_f=y.max())
        candidate, _ = optimize_acqf(acqf, bounds=BOUNDS, q=1, num_restarts=4, raw_samples=64)
        if step in shown:
            with torch.no_grad():
                posterior = model.posterior(grid)
                mean, sd = posterior.mean[:, 0], posterior.variance[:, 0].sqrt()
                acquisition = acqf(grid.unsqueeze(1))
            top, bottom = axes[0, column], axes[1, column]
            top.plot(grid[:, 0], objective(grid), "k--", lw=1, label="objective")
            top.plot(grid[:, 0], mean, label="NNGP posterior mean")
            top.fill_between(grid[:, 0], mean - 2 * sd, mean + 2 * sd, alpha=0.25)
            top.plot(x[:, 0], y[:, 0], "ko", ms=4, label="evaluations")
            top.axvline(candidate.item(), color="C3", lw=1)
            top.set_title(f"step {step + 1}: {len(x)} evaluations")
            bottom.plot(grid[:, 0], acquisition, color="C3")
            bottom.set_ylabel("log EI")
            column += 1
        x = torch.cat([x, candidate])
        y = torch.cat([y, objective(candidate).unsqueeze(-1)])
    axes[0, 0].legend(fontsize=8)
    best = y[:, 0].cummax(0).values
    optimum = objective(grid).max().item()
    axes[0, 3].plot(range(1, len(best) + 1), best, "o-")
    axes[0, 3].axhline(optimum, color="k", lw=1, label="optimum")
    axes[0, 3].set_xlabel("evaluations")
    axes[0, 3].set_title("best value found")
    axes[0, 3].legend()
    axes[1, 3].axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "bayesian_optimization_nngp.png"), dpi=110)
    plt.close(fig)
    print(f"best value {best[-1].item():.4f} at x = {x[y[:, 0].argmax(), 0].item():.3f} (optimum {optimum:.4f})")
    ard = relevance(args.out)
    print(f"ARD: the shortest NNGP length scales are inputs {ard['shortest']} (relevant: {list(RELEVANT)}); the "
          f"irrelevant inputs' are at least {ard['separation']:.1f}x longer")
    return {"best": best[-1].item(), "optimum": optimum, "best_x": x[y[:, 0].argmax(), 0].item(), "ard": ard}


if __name__ == "__main__":
    main()
