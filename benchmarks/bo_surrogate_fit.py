"""How the network-kernel surrogates fit: with or without a ScaleKernel, against BoTorch's kernels.

    python benchmarks/bo_surrogate_fit.py [--seeds 4] [--quick]

For ReLU (any positively homogeneous activation) and bias_var = 0, the NNGP and NTK of depth L satisfy
s * K(weight_var) = K(s^(1/(L+1)) weight_var): the output scale of a ScaleKernel around them is redundant with
weight_var, and nearly so for small bias_var. This script measures what that
costs fit_gpytorch_mll (L-BFGS-B on the exact marginal likelihood, BoTorch's default) and whether the extra
parameter buys a better surrogate. For each problem of benchmarks/bayesian_optimization.py it draws n Sobol points
(Branin 20, Hartmann6 30, shifted Ackley-20 40, Hartmann6 in 30 and 100 dimensions 60 and 100, Rosenbrock-20
40), fits each surrogate as the BO benchmark does (SingleTaskGP, Normalize
and Standardize transforms), and reports, averaged over seeds:
- the fit's wall time and its number of kernel evaluations;
- the test negative log predictive density per point and the RMSE over the test standard deviation, on 500 uniform
  test points of the box (lower is better for both).
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from bayesian_optimization import PROBLEMS, EmbeddedHartmann, make_model
from botorch.fit import fit_gpytorch_mll
from botorch.models.kernels import InfiniteWidthBNNKernel
from botorch.utils.sampling import draw_sobol_samples
from gpytorch.kernels import ScaleKernel
from gpytorch.mlls import ExactMarginalLogLikelihood

from gpytorch_nngp import NNGPKernel, NTKKernel

SURROGATES = {  # d -> kernel (None: SingleTaskGP's default)
    "NNGP": lambda d: NNGPKernel(3, "relu"),
    "NNGP ARD": lambda d: NNGPKernel(3, "relu", ard_num_dims=d),
    "Scale(NNGP)": lambda d: ScaleKernel(NNGPKernel(3, "relu")),
    "NTK": lambda d: NTKKernel(3, "relu"),
    "NTK ARD": lambda d: NTKKernel(3, "relu", ard_num_dims=d),
    "Scale(NTK)": lambda d: ScaleKernel(NTKKernel(3, "relu")),
    "IBNN": lambda d: InfiniteWidthBNNKernel(3),
    "Scale(IBNN)": lambda d: ScaleKernel(InfiniteWidthBNNKernel(3)),
    "default (RBF ARD)": lambda d: None,
}
POINTS = {"branin": 20, "hartmann6": 30, "ackley20": 40, "hartmann6_in30": 60, "hartmann6_in100": 100,
          "rosenbrock20": 40}


def fit_once(problem_name: str, surrogate: str, seed: int, n_test: int = 500):
    """Returns (fit seconds, kernel evaluations, test NLPD per point, test RMSE / test std)."""
    torch.manual_seed(seed)
    problem = PROBLEMS[problem_name](seed).to(torch.float64)
    bounds = problem.bounds
    d = bounds.shape[-1]
    x = draw_sobol_samples(bounds, n=POINTS[problem_name], q=1, seed=seed).squeeze(1)
    y = problem(x).unsqueeze(-1)
    x_test = bounds[0] + (bounds[1] - bounds[0]) * torch.rand(n_test, d, dtype=torch.float64)
    y_test = problem(x_test)
    model = make_model(x, y, bounds, SURROGATES[surrogate](d))
    calls = 0
    forward = model.covar_module.forward

    def counted(*args, **kw):
        nonlocal calls
        calls += 1
        return forward(*args, **kw)

    model.covar_module.forward = counted
    start = time.perf_counter()
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    seconds = time.perf_counter() - start
    del model.covar_module.forward
    model.eval()
    with torch.no_grad():
        posterior = model.posterior(x_test, observation_noise=True)
        mean, var = posterior.mean.squeeze(-1), posterior.variance.squeeze(-1)
        nlpd = (0.5 * torch.log(2 * math.pi * var) + 0.5 * (y_test - mean) ** 2 / var).mean()
        nrmse = (y_test - mean).pow(2).mean().sqrt() / y_test.std()
    return seconds, calls, nlpd.item(), nrmse.item()


def relevance(sizes=((12, 40), (20, 60), (30, 80))):
    """Whether ARD finds the six inputs of Hartmann6 hidden in D dimensions from n Sobol points: how many of the six
    shortest fitted length scales belong to active inputs, for the ARD NNGP and the default RBF."""
    print(f"{'D':>3} {'n':>4} {'active inputs':>28} {'NNGP ARD found':>15} {'default found':>14}")
    for dim, n in sizes:
        active = torch.randperm(dim, generator=torch.Generator().manual_seed(1))[:6].sort().values
        problem = EmbeddedHartmann(dim, active)
        bounds = problem.bounds.to(torch.float64)
        x = draw_sobol_samples(bounds, n=n, q=1, seed=0).squeeze(1)
        y = problem(x).unsqueeze(-1)
        found = []
        for kernel in (NNGPKernel(3, "relu", ard_num_dims=dim), None):
            model = make_model(x, y, bounds, kernel)
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
            shortest = set(torch.argsort(model.covar_module.lengthscale.detach().flatten())[:6].tolist())
            found.append(len(shortest & set(active.tolist())))
        print(f"{dim:>3} {n:>4} {str(active.tolist()):>28} {found[0]:>13}/6 {found[1]:>12}/6")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--problems", nargs="+", choices=list(POINTS), default=list(POINTS))
    parser.add_argument("--surrogates", nargs="+", choices=list(SURROGATES), default=list(SURROGATES))
    parser.add_argument("--quick", action="store_true", help="1 seed, Branin only (a smoke run)")
    parser.add_argument("--relevance", action="store_true",
                        help="only: does ARD find Hartmann6's inputs hidden in 12, 20 and 30 dimensions?")
    args = parser.parse_args(argv)
    if args.relevance:
        return relevance()
    if args.quick:
        args.seeds, args.problems = 1, ["branin"]
    print(f"{'problem':16s} {'surrogate':22s} {'fit s':>7s} {'evals':>6s} {'test NLPD':>10s} {'RMSE/std':>9s}")
    results = {}
    for problem in args.problems:
        for surrogate in args.surrogates:
            rows = torch.tensor([fit_once(problem, surrogate, seed) for seed in range(args.seeds)]).mean(0).tolist()
            results[(problem, surrogate)] = rows
            print(f"{problem:16s} {surrogate:22s} {rows[0]:7.2f} {rows[1]:6.0f} {rows[2]:10.3f} {rows[3]:9.3f}",
                  flush=True)
    return results


if __name__ == "__main__":
    main()
