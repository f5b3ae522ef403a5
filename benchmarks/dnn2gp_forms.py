"""DNN2GP's function-space (N x N, N = n C) and weight-space (P x P) forms on a digit classifier, timed.

    python benchmarks/dnn2gp_forms.py [--n 300 1000] [--steps 200]

A small CNN (5,050 parameters: two 3x3 convolutions, 2x2 average pooling, a linear readout) is trained on n of
scikit-learn's 8x8 digits with 10 classes, then DNN2GP is fitted in each form and predicts 200 test digits. The
table gives fit + evidence + predict seconds and the largest difference between the forms' predictive covariances
and evidences. The function-space form is skipped where N^2 float64 entries exceed --max-function-space-gb.
"""
import argparse
import time

import torch

from gpytorch_nngp.dnn2gp import DNN2GP
from gpytorch_nngp.models import load_dataset


def cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 8, 8)),
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.Tanh(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Tanh(),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10)).double()


def train(model, x, y, steps: int, delta: float) -> torch.nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
        loss = loss + 0.5 * delta * sum(p.pow(2).sum() for p in model.parameters())
        loss.backward()
        optimizer.step()
    return model


def timed_fit(model, x, y, x_test, mode):
    start = time.perf_counter()
    gp = DNN2GP(model, "classification", prior_precision=1.0, mode=mode).fit(x, y)
    evidence = gp.log_marginal_likelihood().item()
    cov = gp.predict(x_test)[1]
    return time.perf_counter() - start, evidence, cov, gp.form


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--max-function-space-gb", type=float, default=4.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    print(f"{'n':>5s} {'N':>6s} {'P':>6s} {'form':>15s} {'seconds':>8s} {'evidence':>12s} {'max |cov diff|':>14s}")
    for n in args.n:
        x, y, x_test, _ = load_dataset("digits", n, seed=0)
        model = train(cnn(), x, y, args.steps, 1.0)
        params = sum(p.numel() for p in model.parameters())
        rows = {}
        for mode in ("weight_space", "function_space", "auto"):
            if mode == "function_space" and (n * 10) ** 2 * 8 / 2 ** 30 > args.max_function_space_gb:
                print(f"{n:5d} {n * 10:6d} {params:6d} {mode:>15s} {'skipped':>8s}")
                continue
            rows[mode] = timed_fit(model, x, y, x_test[:200], mode)
        reference = rows["weight_space"][2]
        for mode, (seconds, evidence, cov, form) in rows.items():
            label = f"auto: {form}" if mode == "auto" else mode
            diff = (cov - reference).abs().max().item()
            print(f"{n:5d} {n * 10:6d} {params:6d} {label:>15s} {seconds:8.2f} {evidence:12.3f} {diff:14.2e}")


if __name__ == "__main__":
    main()
