"""NNGP classification on scikit-learn's digits, the NNGP paper's protocol (Lee et al. 2018, section 3).

    python -m gpytorch_nngp.demo [--n-train 1000] [--depth 3] [--weight-var 2.0] [--bias-var 0.2] [--activation relu]

Targets are one-hot vectors shifted to zero mean (-0.1 / 0.9), the 10 outputs share one kernel and are solved
together (one Cholesky factor, ten right-hand sides), and the prediction is the argmax of the posterior mean.
Pixels are scaled to [0, 1]; the noise is 1e-10 times the mean of the kernel diagonal (relative jitter).
"""
from __future__ import annotations

import argparse
import time

from . import NNGPKernel, NTKKernel
from .experiments.arguments import HelpFormatter
from .models import ExactNNGPClassifier, load_dataset


def classify(kernel, x_train, y_train, x_test, jitter: float = 1e-10):
    """Predicted classes: argmax of the posterior mean K_*D (K_DD + s I)^{-1} T (Eq. 4), s = jitter x mean diag K
    raised until the factorization succeeds (models.ExactNNGPClassifier)."""
    model = ExactNNGPClassifier(kernel, num_classes=10, relative_jitter=jitter).fit(x_train, y_train)
    return model.predict(x_test, variance=False)[0].argmax(-1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--n-train", type=int, default=1000, help="training digits (the rest of the 1,797 test)")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers")
    parser.add_argument("--weight-var", type=float, default=2.0, help="weight variance sigma_w^2")
    parser.add_argument("--bias-var", type=float, default=0.2, help="bias variance sigma_b^2")
    parser.add_argument("--activation", default="relu", help="activation name")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    args = parser.parse_args(argv)
    x_tr, y_tr, x_te, y_te = load_dataset("digits", args.n_train, args.seed)
    print(f"digits: {len(x_tr)} train, {len(x_te)} test, {x_tr.shape[1]} features; depth {args.depth} "
          f"{args.activation}, weight_var {args.weight_var}, bias_var {args.bias_var}")
    print(f"{'kernel':6s} {'accuracy':>9s} {'seconds':>8s}")
    results = {}
    for name, cls in (("NNGP", NNGPKernel), ("NTK", NTKKernel)):
        kernel = cls(args.depth, args.activation, weight_var=args.weight_var, bias_var=args.bias_var).double()
        t0 = time.perf_counter()
        pred = classify(kernel, x_tr, y_tr, x_te)
        seconds = time.perf_counter() - t0
        acc = (pred == y_te).double().mean().item()
        results[name] = acc
        print(f"{name:6s} {acc:9.4f} {seconds:8.2f}")
    return results


if __name__ == "__main__":
    main()
