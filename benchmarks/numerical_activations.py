"""Cost and accuracy of the numerical (Hermite/Mehler series) activations against closed forms.

    python benchmarks/numerical_activations.py [--n 2000] [--d 64]

Table 1: seconds for a depth-3 NNGP/NTK n x n kernel (float32, no grad): closed-form ReLU, ReLU passed as a
callable (numerical path), tanh and softplus (numerical), and the ratio against the closed form.
Table 2: max relative error of E[phi(u) phi(v)] for the ReLU series against its closed form near |c| = 1, with and
without the parity tail correction, for several series degrees (the measurement behind the method choice).
"""
import argparse
import math
import time

import torch

from gpytorch_nngp import NNGPKernel, NTKKernel, activations
from gpytorch_nngp.functional.hermite import hermite_coefficients, pair_polynomial, with_tail


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
    act = activations.Numerical(torch.relu, max_degree=256)
    var = torch.tensor([1.0], dtype=torch.float64)
    phi, _ = act._samples(var, ntk=False)
    coeffs, energies = hermite_coefficients(phi, act.num_nodes, 256)
    cs = torch.tensor([0.9, 0.99, 0.999, 1.0], dtype=torch.float64)
    theta = torch.acos(cs)
    exact = (torch.sin(theta) + (math.pi - theta) * cs) / (2 * math.pi)
    print("\nReLU series vs closed form, relative error at c = 0.9 / 0.99 / 0.999 / 1.0")
    print(f"{'degree':>6s}  {'plain series':>40s}  {'with parity tail':>40s}")
    for degree in (32, 64, 128):
        plain = (coeffs[..., : degree + 1] ** 2 * cs[:, None] ** torch.arange(degree + 1)).sum(-1)
        a = with_tail(coeffs, energies, degree)
        tail = pair_polynomial(cs[:, None], a[None, :], a[None, :])[:, 0]
        fmt = lambda v: " ".join(f"{e:.1e}" for e in ((v - exact).abs() / exact).tolist())  # noqa: E731
        print(f"{degree:6d}  {fmt(plain):>40s}  {fmt(tail):>40s}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=64)
    args = parser.parse_args()
    cost_table(args.n, args.d)
    accuracy_table()


if __name__ == "__main__":
    main()
