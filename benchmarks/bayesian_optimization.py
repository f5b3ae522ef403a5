"""Bayesian optimization with network-kernel surrogates against BoTorch's defaults.

    python benchmarks/bayesian_optimization.py [--iterations 30 --seeds 5] [--quick] [--out bo.png]

Problems (BoTorch test functions, maximized as their negatives): Branin (2-d), Hartmann6, Ackley-20. Ackley's
optimum sits at the centre of its box, which the centred normalization below maps to the origin, a point the network
kernels (not translation invariant) single out; so each seed moves it to a random point of the central half of the
box (x -> Ackley(x - offset), same optimal value).
Surrogates, each a SingleTaskGP with Normalize / Standardize transforms (inputs to [-0.5, 0.5]^d for the network
kernels, [0, 1]^d for the default) and hyperparameters fitted by fit_gpytorch_mll at every iteration:
- nngp: NNGPKernel(3, "relu"), weight/bias variances learned. No ScaleKernel: for ReLU the last weight_var already is
  the output scale, and the redundant pair sends L-BFGS wandering (benchmarks/bo_surrogate_fit.py measures it);
- ntk: NTKKernel(3, "relu"), likewise;
- ibnn: botorch's InfiniteWidthBNNKernel(3), the same NNGP, written as BoTorch's I-BNN tutorial does (no ScaleKernel);
- default: SingleTaskGP's own kernel (RBF with ARD lengthscales and dimension-scaled priors).
Each run starts from 2d + 1 Sobol points (at most 10) and adds one qLogExpectedImprovement point per iteration
(optimize_acqf, 4 restarts, 128 raw samples). The table gives the final simple regret (optimum minus best value
found) as mean +- standard error over seeds, the wall time per iteration and the number of failed steps (model fit
or posterior failed; a random point is evaluated instead); the PNG plots log regret curves.
"""
from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
from botorch.acquisition import qLogExpectedImprovement
from botorch.exceptions import ModelFittingError
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.kernels import InfiniteWidthBNNKernel
from botorch.models.transforms import Normalize, Standardize
from botorch.optim import optimize_acqf
from botorch.test_functions import Ackley, Branin, Hartmann
from botorch.utils.sampling import draw_sobol_samples
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.utils.warnings import NumericalWarning
from linear_operator.utils.errors import NotPSDError

from gpytorch_nngp import NNGPKernel, NTKKernel


class ShiftedAckley(Ackley):
    """Ackley with its optimum moved from the centre of the box to `offset` (d,)."""

    def __init__(self, offset: torch.Tensor, **kwargs):
        super().__init__(dim=offset.numel(), **kwargs)
        self.register_buffer("offset", offset.to(self.bounds))
        self.optimizers = self.offset.unsqueeze(0)

    def evaluate_true(self, X: torch.Tensor) -> torch.Tensor:
        # Ackley's formula at X - offset (BoTorch's own would reject the shifted points as out of bounds).
        z = X - self.offset
        return (-self.a * torch.exp(-self.b * z.pow(2).mean(-1).sqrt()) - torch.exp(torch.cos(self.c * z).mean(-1))
                + self.a + math.e)


def shifted_ackley(seed: int, dim: int = 20) -> ShiftedAckley:
    half_width = 32.768 / 2  # the optimum lands in the central half of Ackley's box [-32.768, 32.768]^d
    generator = torch.Generator().manual_seed(10_000 + seed)
    offset = (2 * torch.rand(dim, generator=generator, dtype=torch.float64) - 1) * half_width
    return ShiftedAckley(offset, negate=True)


PROBLEMS = {
    "branin": lambda seed: Branin(negate=True),
    "hartmann6": lambda seed: Hartmann(dim=6, negate=True),
    "ackley20": shifted_ackley,
}
SURROGATES = {
    "nngp": lambda: NNGPKernel(3, "relu"),
    "ntk": lambda: NTKKernel(3, "relu"),
    "ibnn": lambda: InfiniteWidthBNNKernel(3),
    "default": lambda: None,
}


def make_model(x, y, bounds, kernel=None) -> SingleTaskGP:
    """The benchmark's surrogate: x (n, d), y (n, 1), bounds (2, d); kernel None for SingleTaskGP's default."""
    kwargs = {} if kernel is None else {"covar_module": kernel.to(torch.float64)}
    # Inputs centred on the origin ([-0.5, 0.5]^d): the network kernels depend on angles between inputs, which
    # span little of the positive orthant that [0, 1]^d occupies. (The default kernel is translation-invariant.)
    center = 0.5 if kernel is None else 0.0  # BoTorch's default model expects [0, 1]^d
    return SingleTaskGP(x, y, input_transform=Normalize(x.shape[-1], bounds=bounds, center=center),
                        outcome_transform=Standardize(1), **kwargs)


def run(problem_name, surrogate, seed, iterations):
    """One BO run: returns (simple regret after each evaluation, seconds per iteration, failed steps).

    A step whose model cannot be fitted or whose posterior is not positive definite (it happens to BoTorch's
    InfiniteWidthBNNKernel once points cluster) evaluates a uniformly random point instead and counts as failed.
    """
    torch.manual_seed(seed)
    problem = PROBLEMS[problem_name](seed).to(torch.float64)
    bounds = problem.bounds.to(torch.float64)
    d = bounds.shape[-1]
    x = draw_sobol_samples(bounds, n=min(2 * d + 1, 10), q=1, seed=seed).squeeze(1)
    y = problem(x).unsqueeze(-1)
    start = time.perf_counter()
    failed = 0
    for _ in range(iterations):
        model = make_model(x, y, bounds, SURROGATES[surrogate]())
        try:
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
            acqf = qLogExpectedImprovement(model, best_f=y.max())
            candidate, _ = optimize_acqf(acqf, bounds=bounds, q=1, num_restarts=4, raw_samples=128)
        except (ModelFittingError, NotPSDError):
            failed += 1
            candidate = bounds[0] + (bounds[1] - bounds[0]) * torch.rand(1, d, dtype=bounds.dtype)
        x = torch.cat([x, candidate])
        y = torch.cat([y, problem(candidate).unsqueeze(-1)])
    seconds = (time.perf_counter() - start) / max(iterations, 1)
    regret = problem.optimal_value - y.squeeze(-1).cummax(0).values
    return regret, seconds, failed


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

    warnings.filterwarnings("ignore", category=NumericalWarning)  # Cholesky jitter notices; failures are counted

    fig, axes = plt.subplots(1, len(args.problems), figsize=(5 * len(args.problems), 3.8), squeeze=False)
    results = {}
    print(f"{'problem':10s} {'surrogate':9s} {'final regret (mean +- se)':>27s} {'s / iteration':>14s} "
          f"{'failed steps':>13s}")
    for ax, problem in zip(axes[0], args.problems):
        for surrogate in args.surrogates:
            runs = [run(problem, surrogate, seed, args.iterations) for seed in range(args.seeds)]
            regret = torch.stack([r for r, _, _ in runs])  # (seeds, evaluations)
            seconds = sum(s for _, s, _ in runs) / len(runs)
            failed = sum(f for _, _, f in runs)
            final = regret[:, -1]
            se = final.std() / math.sqrt(len(final)) if len(final) > 1 else torch.tensor(float("nan"))
            results[(problem, surrogate)] = {"final_regret": final.mean().item(), "se": se.item(),
                                             "seconds_per_iteration": seconds, "failed_steps": failed}
            print(f"{problem:10s} {surrogate:9s} {final.mean().item():15.4f} +- {se.item():8.4f} {seconds:14.2f} "
                  f"{failed:6d} / {args.iterations * args.seeds}", flush=True)
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
