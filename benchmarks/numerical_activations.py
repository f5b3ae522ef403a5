"""Cost and accuracy of the numerical (Hermite/Mehler series) activations against closed forms.

    python benchmarks/numerical_activations.py [--n 2000] [--d 64] [--warnings]

Table 1: seconds for a depth-3 NNGP/NTK n x n kernel (float32, no grad): closed-form ReLU, ReLU passed as a
callable (numerical path), tanh and softplus (numerical), and the ratio against the closed form.
Table 2: max relative error of E[phi(u) phi(v)] for the ReLU series against its closed form near |c| = 1, with and
without the parity tail correction, for several series degrees (the measurement behind the method choice).
With --warnings, instead: for 8 functions at variances 1-1e5, the error of F and Fdot against a reference with
160,001 nodes and degree 2048, and whether AccuracyWarning fired (the calibration of its two thresholds).
"""
import argparse
import time
import warnings

import torch

from gpytorch_nngp import NNGPKernel, NTKKernel, activations
from gpytorch_nngp.functional.hermite import geometric_tail, hermite_coefficients, pair_tail
from gpytorch_nngp.warnings import AccuracyWarning


def timed(kernel, x, repeats=2):
    with torch.no_grad():
        kernel(x).to_dense()
        t0 = time.perf_counter()
        for _ in range(repeats):
            kernel(x).to_dense()
    return (time.perf_counter() - t0) / repeats


def cost_table(n, d):
    x = torch.rand(n, d)
    cases = [("relu (closed form)", "relu"), ("relu (numerical)", activations.Numerical(torch.relu, name="relu")),
             ("tanh (numerical)", "tanh"), ("softplus (numerical)", "softplus")]
    print(f"\nDepth-3 kernel, n={n}, d={d}, float32, {torch.get_num_threads()} threads")
    print(f"{'activation':22s} {'NNGP (s)':>9s} {'x closed':>9s} {'NTK (s)':>9s} {'x closed':>9s}")
    base = {}
    for label, act in cases:
        row = []
        for cls in (NNGPKernel, NTKKernel):
            t = timed(cls(3, act), x)
            base.setdefault(cls, t)
            row += [t, t / base[cls]]
        print(f"{label:22s} {row[0]:9.3f} {row[1]:9.1f} {row[2]:9.3f} {row[3]:9.1f}")


def accuracy_table():
    """Error of the series for steep functions at large variance, by degree: no tail, the two-term parity tail
    used before (tail mass put at degrees K+1, K+2), and the geometric parity tail now used."""
    cs = torch.tensor([0.0, 0.5, 0.9, 0.99, 0.999], dtype=torch.float64)
    print("\nerf at variance v: max error over c in {0, .5, .9, .99, .999}, relative to the largest value")
    print(f"{'map':5s} {'v':>4s} {'K':>5s} {'no tail':>9s} {'point tail':>11s} {'geometric':>10s}")
    for v in (36.0, 100.0):
        var = torch.tensor([v], dtype=torch.float64)
        k12 = cs * v
        exact_f, exact_fdot = activations.Erf().dual(k12, var.expand(5), var.expand(5), ntk=True)
        act = activations.Numerical(torch.erf, max_degree=1024)
        phi, dphi = act._samples(var, ntk=True)
        for label, samples, exact in (("NNGP", phi, exact_f), ("NTK", dphi, exact_fdot)):
            coeffs, energies = hermite_coefficients(samples, act.num_nodes, 1024)
            for degree in (128, 256, 512):
                kept = coeffs[..., : degree + 1]
                plain = (kept ** 2 * cs[:, None] ** torch.arange(degree + 1)).sum(-1)
                t, q, powers = geometric_tail(coeffs, energies, degree)
                point = plain + sum(t[..., p] ** 2 / (1 - q[..., p] ** 2) * cs ** powers[p] for p in range(2))
                geometric = plain + pair_tail(cs, (t, q, powers), (t, q, powers))
                err = [((y - exact).abs().max() / exact.abs().max()).item() for y in (plain, point, geometric)]
                print(f"{label:5s} {v:4.0f} {degree:5d} {err[0]:9.1e} {err[1]:11.1e} {err[2]:10.1e}")


def warning_table():
    """Does AccuracyWarning fire where the numerical dual is off, and only there?"""
    fns = {"tanh": torch.tanh, "erf": torch.erf, "sigmoid": torch.sigmoid, "silu": torch.nn.functional.silu,
           "elu": torch.nn.functional.elu, "softplus": torch.nn.functional.softplus,
           "relu6": torch.nn.functional.relu6, "hardtanh": torch.nn.functional.hardtanh}
    cs = torch.tensor([1.0, 0.999, 0.99, 0.9, 0.5, -0.5], dtype=torch.float64)
    print("\nmax error over c in {1, .999, .99, .9, .5, -.5}, relative to the largest value (float64)")
    print(f"{'activation':10s} {'variance':>9s} {'F error':>9s} {'Fdot error':>11s}  warned")
    missed = false_alarms = 0
    for name, fn in fns.items():
        for var in (1.0, 10.0, 100.0, 1e3, 1e4, 1e5):
            v = torch.full((len(cs),), var, dtype=torch.float64)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                f, fdot = activations.Numerical(fn).dual(cs * var, v, v, ntk=True)
            warned = any(issubclass(w.category, AccuracyWarning) for w in caught)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref_f, ref_fdot = activations.Numerical(fn, num_nodes=160001, max_degree=2048).dual(
                    cs * var, v, v, ntk=True)
            errors = [((a - b).abs().max() / b.abs().max()).item() for a, b in ((f, ref_f), (fdot, ref_fdot))]
            missed += max(errors) > 2e-3 and not warned
            false_alarms += max(errors) < 1e-4 and warned
            print(f"{name:10s} {var:9.0e} {errors[0]:9.1e} {errors[1]:11.1e}  {'yes' if warned else ''}")
    print(f"off by more than 2e-3 without a warning: {missed}; warned while within 1e-4: {false_alarms}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--warnings", action="store_true", help="only the AccuracyWarning calibration table")
    args = parser.parse_args()
    if args.warnings:
        warning_table()
        return
    cost_table(args.n, args.d)
    accuracy_table()


if __name__ == "__main__":
    main()
