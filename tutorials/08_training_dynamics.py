"""Tutorial 8: what gradient descent does to wide networks (gpytorch_nngp.predict).
================================================================================

Run it with::

    python tutorials/08_training_dynamics.py [--quick] [--out tutorials/figures]

1. The figure of the seeds (Lee et al. 2019): on a 1-D regression with 128 training points, the NNGP posterior
   (Bayesian inference), the infinite ensemble of tanh networks of depth 3 trained by gradient descent on all layers
   (the NTK ensemble) at several times and at infinity, and an ensemble of finite tanh networks (width 256, NTK
   parametrization) actually trained by full-batch gradient descent: their mean and spread follow the NTK ensemble.
2. Train and test loss against time: the infinite ensemble's expected losses (mean and variance) against the
   trained networks' average losses.
3. mnist5k, 1,000 training images: test accuracy against time for the NNGP-trained (readout only) and the
   NTK-trained (all layers) ensembles, against the NNGP posterior (Bayesian inference against gradient descent).

--quick runs a reduced size (used by the test suite).
"""
import argparse
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from gpytorch_nngp import NTKKernel  # noqa: E402
from gpytorch_nngp.predict import gradient_descent_mse_ensemble, max_learning_rate  # noqa: E402

WV, BV, DEPTH = 1.5, 0.05, 3


def kernel():
    k = NTKKernel(DEPTH, "tanh").double()
    k.weight_var, k.bias_var = WV, BV
    return k


def train_finite_ensemble(x, y, x_test, members, width, lr, checkpoints):
    """Members of a depth-3 tanh network in the NTK parametrization, trained together by full-batch gradient descent
    on the MSE loss averaged over the outputs (neural-tangents' convention).

    Returns {step: (outputs on x (E, n), outputs on x_test (E, m))}.
    """
    gen = torch.Generator().manual_seed(0)
    sizes = [x.shape[1]] + [width] * DEPTH + [1]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params += [torch.randn(members, fan_out, fan_in, generator=gen, dtype=torch.float64).requires_grad_(True),
                   torch.randn(members, fan_out, generator=gen, dtype=torch.float64).requires_grad_(True)]

    def forward(inputs):
        h = inputs.expand(members, *inputs.shape)
        for layer in range(DEPTH + 1):
            w, b = params[2 * layer], params[2 * layer + 1]
            h = h @ w.mT * math.sqrt(WV / w.shape[-1]) + math.sqrt(BV) * b[:, None]
            if layer < DEPTH:
                h = torch.tanh(h)
        return h[..., 0]

    out, step = {}, 0
    for target in sorted(checkpoints):
        while step < target:
            loss = 0.5 * ((forward(x) - y[:, 0]) ** 2).sum() / y.numel()  # members' losses add: separate gradients
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g
            step += 1
        with torch.no_grad():
            out[target] = (forward(x), forward(x_test))
    return out


def regression_figure(args):
    torch.manual_seed(0)
    n, members, width = (32, 8, 64) if args.quick else (128, 64, 256)
    x = torch.rand(n, 1, dtype=torch.float64) * 4 - 2
    y = torch.sin(2.5 * x) + 0.1 * torch.randn(n, 1, dtype=torch.float64)
    x_test = torch.linspace(-3, 3, 150, dtype=torch.float64).unsqueeze(-1)
    k = kernel()
    with torch.no_grad():
        lr = 0.5 * max_learning_rate(k(x).to_dense(), y.numel())
    times = [10, 100] if args.quick else [10, 100, 1000]
    predict_fn = gradient_descent_mse_ensemble(k, x, y, learning_rate=lr, diag_reg=1e-6)
    ntk = predict_fn(t=times, x_test=x_test, get="ntk", compute_cov=True)
    ntk_inf = predict_fn(t=None, x_test=x_test, get="ntk", compute_cov=True)
    nngp_inf = predict_fn(t=None, x_test=x_test, get="nngp", compute_cov=True)
    trained = train_finite_ensemble(x, y, x_test, members, width, lr, times)

    fig, axes = plt.subplots(1, len(times) + 1, figsize=(16, 3.8), sharey=True)
    grid = x_test[:, 0]

    def band(ax, mean, cov, label, color):
        sd = cov.diagonal().clamp_min(0).sqrt()
        ax.plot(grid, mean[:, 0], color=color, label=label)
        ax.fill_between(grid, mean[:, 0] - 2 * sd, mean[:, 0] + 2 * sd, color=color, alpha=0.2)

    agreement = {}
    for ax, (i, t) in zip(axes, enumerate(times)):
        band(ax, ntk.mean[i], ntk.covariance[i], f"NTK ensemble, t = {t}", "C0")
        finite = trained[t][1]
        ax.plot(grid, finite.mean(0), "--", color="C3", label=f"{members} trained networks (mean)")
        ax.fill_between(grid, finite.mean(0) - 2 * finite.std(0), finite.mean(0) + 2 * finite.std(0), color="C3",
                        alpha=0.12)
        ax.plot(x[:, 0], y[:, 0], "k.", ms=3)
        ax.set_title(f"t = {t} steps")
        ax.legend(fontsize=7, loc="lower left")
        agreement[t] = ((finite.mean(0) - ntk.mean[i][:, 0]).abs().mean()
                        / ntk.mean[i][:, 0].abs().mean().clamp_min(1e-12)).item()
    band(axes[-1], ntk_inf.mean, ntk_inf.covariance, "NTK ensemble, t = inf", "C0")
    band(axes[-1], nngp_inf.mean, nngp_inf.covariance, "NNGP posterior", "C2")
    axes[-1].plot(x[:, 0], y[:, 0], "k.", ms=3)
    axes[-1].set_title("infinite time vs Bayesian inference")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"depth-{DEPTH} tanh networks, {n} training points, learning rate {lr:.3g}")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "dynamics_ensemble.png"), dpi=110)
    plt.close(fig)

    # Expected train and test losses of the ensemble: E[(f - y)^2] = (mean - y)^2 + variance, per output.
    y_test = torch.sin(2.5 * x_test)
    steps = torch.logspace(0, 4, 9 if args.quick else 25, dtype=torch.float64)
    train = predict_fn(t=steps, x_test=x, get="ntk", compute_cov=True)  # the training inputs as test points
    test = predict_fn(t=steps, x_test=x_test, get="ntk", compute_cov=True)

    def expected(pred, target):
        return 0.5 * (((pred.mean - target) ** 2).mean((-2, -1)) + pred.covariance.diagonal(dim1=-2, dim2=-1).mean(-1))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(steps, expected(train, y), label="train, infinite ensemble")
    ax.loglog(steps, expected(test, y_test), label="test, infinite ensemble")
    for t in times:
        f_train, f_test = trained[t]
        ax.plot(t, (0.5 * (f_train - y[:, 0]) ** 2).mean().item(), "o", color="C0")
        ax.plot(t, (0.5 * (f_test - y_test[:, 0]) ** 2).mean().item(), "s", color="C1")
    ax.set_xlabel("gradient-descent steps")
    ax.set_ylabel("loss (1/2 squared error, averaged)")
    ax.set_title("markers: the trained finite networks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "dynamics_losses.png"), dpi=110)
    plt.close(fig)
    final_train = expected(train, y)
    return {"learning_rate": lr, "mean_gap": agreement, "train_loss_first": final_train[0].item(),
            "train_loss_last": final_train[-1].item()}


def mnist_accuracy(args):
    from gpytorch_nngp.models import load_dataset, shifted_one_hot

    n = 200 if args.quick else 1000
    x, y, x_test, y_test = load_dataset("digits" if args.quick else "mnist5k", n, seed=0)
    x_test, y_test = x_test[:500], y_test[:500]
    targets = shifted_one_hot(y, 10)
    k = NTKKernel(3, "relu").double()
    k.weight_var, k.bias_var = 2.0, 0.2
    steps = torch.logspace(0, 6, 13, dtype=torch.float64)
    with torch.no_grad():
        lr = 0.5 * max_learning_rate(k(x).to_dense(), targets.numel())
    predict_fn = gradient_descent_mse_ensemble(k, x, targets, learning_rate=lr, diag_reg=1e-4)
    means = predict_fn(t=steps, x_test=x_test)
    accuracy = {g: [(m.argmax(-1) == y_test).double().mean().item() for m in getattr(means, g)]
                for g in ("nngp", "ntk")}
    posterior = predict_fn(t=None, x_test=x_test, get="nngp")
    bayes = (posterior.argmax(-1) == y_test).double().mean().item()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(steps, accuracy["nngp"], label="readout trained (NNGP ensemble)")
    ax.semilogx(steps, accuracy["ntk"], label="all layers trained (NTK ensemble)")
    ax.axhline(bayes, color="k", ls=":", label="NNGP posterior (Bayesian)")
    ax.set_xlabel("gradient-descent steps")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{'digits' if args.quick else 'mnist5k'}, {n} training images, depth-3 ReLU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "dynamics_accuracy.png"), dpi=110)
    plt.close(fig)
    return {"accuracy": accuracy, "bayes": bayes}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced size (the test suite)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
    os.makedirs(args.out, exist_ok=True)
    report = {"regression": regression_figure(args), "classification": mnist_accuracy(args)}
    print(report)
    return report


if __name__ == "__main__":
    main()
