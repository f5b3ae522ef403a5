"""Bayesian optimization with network-kernel surrogates against BoTorch's defaults.

    python benchmarks/bayesian_optimization.py [--iterations 30 --seeds 10] [--jobs 2] [--quick] [--out bo.png]

Problems (BoTorch test functions, maximized as their negatives): Branin (2-d), Hartmann6, Ackley-20, Hartmann6
embedded in 30 and in 100 dimensions (its six inputs are six dimensions of the box, chosen per seed; the others do
not matter), and Rosenbrock-20. Ackley's optimum sits at the centre of its box, which the centred normalization below
maps to the origin, a point the network kernels (not translation invariant) single out; so each seed moves it to a
random point of the central half of the box (x -> Ackley(x - offset), same optimal value).
Surrogates, each a SingleTaskGP with Normalize / Standardize transforms (inputs to [-0.5, 0.5]^d for the network
kernels, [0, 1]^d for the default) and hyperparameters fitted by fit_gpytorch_mll at every iteration:
- nngp: NNGPKernel(3, "relu"), weight/bias variances learned. No ScaleKernel: for ReLU the last weight_var already is
  the output scale, and the redundant pair sends L-BFGS wandering (benchmarks/bo_surrogate_fit.py measures it);
- nngp_ard: the same with one length scale per input (ard_num_dims=d, the kernel's default prior and constraint);
- ntk, ntk_ard: NTKKernel(3, "relu"), likewise;
- ibnn: botorch's InfiniteWidthBNNKernel(3), the same NNGP, written as BoTorch's I-BNN tutorial does (no ScaleKernel);
- default: SingleTaskGP's own kernel (RBF with ARD lengthscales and dimension-scaled priors).
Each run starts from 2d + 1 Sobol points (at most 10) and adds one qLogExpectedImprovement point per iteration
(optimize_acqf, 4 restarts, 128 raw samples). The table gives the final simple regret (optimum minus best value
found) as mean +- standard error over seeds, the wall time per iteration and the number of failed steps (model fit
or posterior failed; a random point is evaluated instead); the PNG plots log regret curves. --jobs runs that many
runs at once, one thread each; --results writes (and, on a rerun, reuses) every finished run as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import torch
from botorch.acquisition import qLogExpectedImprovement
from botorch.exceptions import ModelFittingError
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.kernels import InfiniteWidthBNNKernel
from botorch.models.transforms import Normalize, Standardize
from botorch.optim import optimize_acqf
from botorch.test_functions import Ackley, Branin, Hartmann, Rosenbrock
from botorch.test_functions.synthetic import SyntheticTestFunction
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


class EmbeddedHartmann(SyntheticTestFunction):
    """Hartmann6 on six of `dim` inputs in [0, 1]^dim (`active`, chosen per seed); the rest do not matter."""

    _optimal_value = -3.32237  # Hartmann6 minimum (negate=True makes the optimum +3.32237)

    def __init__(self, dim: int, active: torch.Tensor, negate: bool = True):
        self.dim = dim
        self.continuous_inds = list(range(dim))
        self._bounds = [(0.0, 1.0)] * dim
        super().__init__(negate=negate)
        self.register_buffer("active", active)
        self.hartmann = Hartmann(dim=6)

    def _evaluate_true(self, X: torch.Tensor) -> torch.Tensor:
        return self.hartmann.evaluate_true(X[..., self.active])


def embedded_hartmann(dim: int):
    def make(seed: int) -> EmbeddedHartmann:
        generator = torch.Generator().manual_seed(20_000 + seed)
        return EmbeddedHartmann(dim, torch.randperm(dim, generator=generator)[:6].sort().values)

    return make


PROBLEMS = {
    "branin": lambda seed: Branin(negate=True),
    "hartmann6": lambda seed: Hartmann(dim=6, negate=True),
    "ackley20": shifted_ackley,
    "hartmann6_in30": embedded_hartmann(30),
    "hartmann6_in100": embedded_hartmann(100),
    "rosenbrock20": lambda seed: Rosenbrock(dim=20, negate=True),
}
SURROGATES = {  # d -> kernel (None: SingleTaskGP's default)
    "nngp": lambda d: NNGPKernel(3, "relu"),
    "nngp_ard": lambda d: NNGPKernel(3, "relu", ard_num_dims=d),
    "ntk": lambda d: NTKKernel(3, "relu"),
    "ntk_ard": lambda d: NTKKernel(3, "relu", ard_num_dims=d),
    "ibnn": lambda d: InfiniteWidthBNNKernel(3),
    "default": lambda d: None,
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
        model = make_model(x, y, bounds, SURROGATES[surrogate](d))
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


def _run_one(task):
    """One (problem, surrogate, seed) run in a worker with one thread: the regret list and the costs."""
    problem, surrogate, seed, iterations = task
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=NumericalWarning)
    regret, seconds, failed = run(problem, surrogate, seed, iterations)
    return task, {"regret": regret.tolist(), "seconds": seconds, "failed": failed}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--surrogates", nargs="+", choices=list(SURROGATES), default=list(SURROGATES))
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (processes of one thread each)")
    parser.add_argument("--results", default=None, help="JSON file of finished runs (read, then extended)")
    parser.add_argument("--quick", action="store_true", help="3 iterations, 1 seed, Branin only (a smoke run)")
    parser.add_argument("--out", default="bayesian_optimization.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.seeds, args.problems = 3, 1, ["branin"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warnings.filterwarnings("ignore", category=NumericalWarning)  # Cholesky jitter notices; failures are counted
    done = {}
    if args.results and os.path.exists(args.results):
        with open(args.results) as f:
            done = {tuple(json.loads(k)): v for k, v in json.load(f).items()}
    tasks = [(p, s, seed, args.iterations) for p in args.problems for s in args.surrogates for seed in range(args.seeds)
             if (p, s, seed, args.iterations) not in done]

    def save():
        if args.results:
            with open(args.results, "w") as f:
                json.dump({json.dumps(list(k)): v for k, v in done.items()}, f)

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for task, out in pool.map(_run_one, tasks):
                done[task] = out
                save()
    else:
        for task in tasks:
            done[task] = _run_one(task)[1]
            save()

    fig, axes = plt.subplots(2, math.ceil(len(args.problems) / 2), figsize=(5 * math.ceil(len(args.problems) / 2), 7.6),
                             squeeze=False)
    results = {}
    print(f"{'problem':16s} {'surrogate':9s} {'final regret (mean +- se)':>27s} {'s / iteration':>14s} "
          f"{'failed steps':>13s}")
    for ax, problem in zip(axes.flatten(), args.problems):
        for surrogate in args.surrogates:
            runs = [done[(problem, surrogate, seed, args.iterations)] for seed in range(args.seeds)]
            regret = torch.tensor([r["regret"] for r in runs], dtype=torch.float64)  # (seeds, evaluations)
            seconds = sum(r["seconds"] for r in runs) / len(runs)
            failed = sum(r["failed"] for r in runs)
            final = regret[:, -1]
            se = final.std() / math.sqrt(len(final)) if len(final) > 1 else torch.tensor(float("nan"))
            results[(problem, surrogate)] = {"final_regret": final.mean().item(), "se": se.item(),
                                             "seconds_per_iteration": seconds, "failed_steps": failed}
            print(f"{problem:16s} {surrogate:9s} {final.mean().item():15.4f} +- {se.item():8.4f} {seconds:14.2f} "
                  f"{failed:6d} / {args.iterations * args.seeds}", flush=True)
            log_regret = regret.clamp_min(1e-6).log10()
            mean = log_regret.mean(0)
            style = "--" if surrogate.endswith("_ard") else "-"
            ax.plot(range(1, len(mean) + 1), mean, style, label=surrogate)
            if len(runs) > 1:
                half = log_regret.std(0) / math.sqrt(len(runs))
                ax.fill_between(range(1, len(mean) + 1), mean - half, mean + half, alpha=0.15)
        ax.set_title(problem)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("log10 simple regret")
        ax.legend(fontsize=7)
    for ax in axes.flatten()[len(args.problems):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
