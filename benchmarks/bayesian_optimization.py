"""Bayesian optimization with network-kernel surrogates against BoTorch's defaults.

    python benchmarks/bayesian_optimization.py [--iterations 30 --seeds 5] [--quick] [--out bo.png]

Problems (BoTorch test functions, maximized as their negatives): Branin (2-d), Hartmann6, Ackley-20.
Surrogates, each a SingleTaskGP with Normalize / Standardize transforms (inputs to [-0.5, 0.5]^d for the network
kernels, [0, 1]^d for the default) and hyperparameters fitted by fit_gpytorch_mll at every iteration:
- nngp: ScaleKernel(NNGPKernel(3, "relu")), weight/bias variances learned;
- ntk: ScaleKernel(NTKKernel(3, "relu"));
- ibnn: ScaleKernel(botorch's InfiniteWidthBNNKernel(3)), the same NNGP written by BoTorch;
- default: SingleTaskGP's own kernel (RBF with ARD lengthscales and dimension-scaled priors).
Each run starts from 2d + 1 Sobol points (at most 10) and adds one qLogExpectedImprovement point per iteration
(optimize_acqf, 4 restarts, 128 raw samples). The table gives the final simple regret (optimum minus best value
found) as mean +- standard error over seeds, and the wall time per iteration; the PNG plots log regret curves.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from botorch.acquisition import qLogExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.kernels import InfiniteWidthBNNKernel
from botorch.models.transforms import Normalize, Standardize
from botorch.optim import optimize_acqf
from botorch.test_functions import Ackley, Branin, Hartmann
from botorch.utils.sampling import draw_sobol_samples
from gpytorch.kernels import ScaleKernel
from gpytorch.mlls import ExactMarginalLogLikelihood

from gpytorch_nngp import NNGPKernel, NTKKernel

PROBLEMS = {
    "branin": lambda: Branin(negate=True),
    "hartmann6": lambda: Hartmann(dim=6, negate=True),
    "ackley20": lambda: Ackley(dim=20, negate=True),
}
SURROGATES = {
    "nngp": lambda: ScaleKernel(NNGPKernel(3, "relu")),
    "ntk": lambda: ScaleKernel(NTKKernel(3, "relu")),
    "ibnn": lambda: ScaleKernel(InfiniteWidthBNNKernel(3)),
    "default": lambda: None,
}


def run(problem_name, surrogate, seed, iterations):
    """One BO run: returns (simple regret after each evaluation, seconds per iteration)."""
    torch.manual_seed(seed)
    problem = PROBLEMS[problem_name]().to(torch.float64)
    bounds = problem.bounds.to(torch.float64)
    d = bounds.shape[-1]
    x = draw_sobol_samples(bounds, n=min(2 * d + 1, 10), q=1, seed=seed).squeeze(1)
    y = problem(x).unsqueeze(-1)
    start = time.perf_counter()
    for _ in range(iterations):
        kernel = SURROGATES[surrogate]()
        kwargs = {} if kernel is None else {"covar_module": kernel.to(torch.float64)}
        # Inputs centred on the origin ([-0.5, 0.5]^d): the network kernels depend on angles between inputs, which
        # span little of the positive orthant that [0, 1]^d occupies. (The default kernel is translation-invariant.)
        center = 0.5 if kernel is None else 0.0  # BoTorch's default model expects [0, 1]^d
        model = SingleTaskGP(x, y, input_transform=Normalize(d, bounds=bounds, center=center),
                             outcome_transform=Standardize(1), **kwargs)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        acqf = qLogExpectedImprovement(model, best_f=y.max())
        candidate, _ = optimize_acqf(acqf, bounds=bounds, q=1, num_restarts=4, raw_samples=128)
        x = torch.cat([x, candidate])
        y = torch.cat([y, problem(candidate).unsqueeze(-1)])
    seconds = (time.perf_counter() - start) / max(iterations, 1)
    regret = problem.optimal_value - y.squeeze(-1).cummax(0).values
    return regret, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--surrogates", nargs="+", choices=list(SURROGATES), default=list(SURROGATES))
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 iterations, 1 seed, Branin only (a smoke run)")
    parser.add_argument("--out", default="bayesian_optimization.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.seeds, args.problems = 3, 1, ["branin"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.problems), figsize=(5 * len(args.problems), 3.8), squeeze=False)
    results = {}
    print(f"{'problem':10s} {'surrogate':9s} {'final regret (mean +- se)':>27s} {'s / iteration':>14s}")
    for ax, problem in zip(axes[0], args.problems):
        for surrogate in args.surrogates:
            runs = [run(problem, surrogate, seed, args.iterations) for seed in range(args.seeds)]
            regret = torch.stack([r for r, _ in runs])  # (seeds, evaluations)
            seconds = sum(s for _, s in runs) / len(runs)
            final = regret[:, -1]
            se = final.std() / math.sqrt(len(final)) if len(final) > 1 else torch.tensor(float("nan"))
            results[(problem, surrogate)] = {"final_regret": final.mean().item(), "se": se.item(),
                                             "seconds_per_iteration": seconds}
            print(f"{problem:10s} {surrogate:9s} {final.mean().item():15.4f} +- {se.item():8.4f} {seconds:14.2f}")
            log_regret = regret.clamp_min(1e-6).log10()
            mean = log_regret.mean(0)
            ax.plot(range(1, len(mean) + 1), mean, label=surrogate)
            if len(runs) > 1:
                half = log_regret.std(0) / math.sqrt(len(runs))
                ax.fill_between(range(1, len(mean) + 1), mean - half, mean + half, alpha=0.2)
        ax.set_title(problem)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("log10 simple regret")
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
