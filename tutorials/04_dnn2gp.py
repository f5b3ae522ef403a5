"""Tutorial 4: a trained network as a Gaussian process (DNN2GP, Khan et al. 2019).
===============================================================================

Run it with::

    python tutorials/04_dnn2gp.py [--quick] [--out tutorials/figures]

1. Snelson-style 1-D regression (a wiggly function observed on two intervals with a gap): train an MLP with
   weight decay, turn it into a GP with DNN2GP (linearized Laplace, finite NTK kernel J J^T / delta), and plot
   its uncertainty next to an infinite-width NNGP and an RBF GP fitted by marginal likelihood.
2. Choosing the prior precision delta: train one network per delta, and plot the DNN2GP log evidence next to
   the test error (the paper's model-selection figure). The marginal-likelihood optimizer then tunes delta and
   sigma for the chosen network with its weights fixed.
3. Transfer (Maddox et al. 2021): the finite NTK of the network trained on task A as the kernel of an ExactGP
   fitted to a few points of a related task B.
4. A small MNIST classifier (mnist5k, 400 training images; 8x8 digits with --quick): DNN2GP with the softmax's
   full GGN blocks; the kernel matrix of test digits sorted by class and the predicted class probabilities as
   images.

--quick runs a reduced size (the test suite's run).
"""
import argparse
import os

import gpytorch
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from gpytorch_nngp import NNGPKernel  # noqa: E402
from gpytorch_nngp.dnn2gp import DNN2GP, FiniteNTKKernel  # noqa: E402
from gpytorch_nngp.models import load_dataset  # noqa: E402


def snelson_like(n, seed):
    """A Snelson-style toy: y = sin(3x) + 0.3 x + noise 0.15 on [-2.5, -0.5] and [0.8, 2.5] (a gap in between)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.rand(n // 2, generator=g) * 2 - 2.5, torch.rand(n - n // 2, generator=g) * 1.7 + 0.8])
    y = torch.sin(3 * x) + 0.3 * x + 0.15 * torch.randn(n, generator=g)
    return x.double().unsqueeze(-1), y.double()


def mlp(d_in, d_out, width, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d_in, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                               torch.nn.Tanh(), torch.nn.Linear(width, d_out)).double()


def train(model, x, y, delta, sigma, steps, classification=False):
    """MAP training: the negative log joint sum_i loss_i + delta / 2 |theta|^2, full batch, Adam."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        if classification:
            data_term = torch.nn.functional.cross_entropy(out, y, reduction="sum")
        else:
            data_term = 0.5 * (out.squeeze(-1) - y).pow(2).sum() / sigma ** 2
        loss = data_term + 0.5 * delta * sum(p.pow(2).sum() for p in model.parameters())
        loss.backward()
        optimizer.step()
    return model


class GP(gpytorch.models.ExactGP):
    def __init__(self, x, y, kernel):
        super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = kernel

    def forward(self, z):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))


def fit_gp(x, y, kernel, iters):
    gp = GP(x, y, kernel).double()
    gp.train()
    optimizer = torch.optim.Adam(gp.parameters(), lr=0.05)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(gp.likelihood, gp)
    for _ in range(iters):
        optimizer.zero_grad()
        (-mll(gp(x), y)).backward()
        optimizer.step()
    gp.eval()
    return gp


def gp_band(gp, x_plot):
    with torch.no_grad():
        pred = gp.likelihood(gp(x_plot))
    return pred.mean, pred.variance.sqrt()


def regression(args, report):
    x, y = snelson_like(60 if args.quick else 200, seed=0)
    x_plot = torch.linspace(-3.5, 3.5, 200, dtype=torch.float64).unsqueeze(-1)
    delta, sigma = 1.0, 0.15
    model = train(mlp(1, 1, 50), x, y, delta, sigma, args.steps)
    dnn2gp = DNN2GP(model, "regression", prior_precision=delta, sigma_noise=sigma).fit(x, y)
    mean, cov = dnn2gp.predict(x_plot)
    bands = {"DNN2GP (trained MLP)": (mean[:, 0], (cov[:, 0, 0] + sigma ** 2).sqrt())}
    with_bias = lambda z: torch.cat([z, torch.ones_like(z)], -1)  # noqa: E731  NNGP: angle and norm both matter
    nngp = fit_gp(with_bias(x), y, gpytorch.kernels.ScaleKernel(NNGPKernel(3, "relu")), args.gp_iters)
    bands["NNGP (depth 3, ReLU)"] = gp_band(nngp, with_bias(x_plot))
    rbf = fit_gp(x, y, gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()), args.gp_iters)
    bands["RBF"] = gp_band(rbf, x_plot)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
    for ax, (name, (m, s)) in zip(axes, bands.items()):
        ax.fill_between(x_plot[:, 0], m - 2 * s, m + 2 * s, alpha=0.3)
        ax.plot(x_plot[:, 0], m, lw=2)
        ax.plot(x[:, 0], y, "k.", ms=4)
        ax.set_title(name)
        ax.set_xlabel("x")
    axes[0].set_ylabel("y, mean +- 2 sd")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "dnn2gp_regression.png"), dpi=110)
    plt.close(fig)
    in_gap = (x_plot[:, 0] > -0.4) & (x_plot[:, 0] < 0.7)
    band = bands["DNN2GP (trained MLP)"][1]
    report["dnn2gp_sd_gap_over_data"] = (band[in_gap].mean() / band[~in_gap & (x_plot[:, 0].abs() < 2.5)].mean()).item()
    print(f"DNN2GP predictive sd in the gap / on the data: {report['dnn2gp_sd_gap_over_data']:.2f}")
    return x, y, model


def evidence_against_delta(args, report, x, y):
    x_test, y_test = snelson_like(400, seed=1)
    sigma = 0.15
    deltas = [0.01, 0.3, 30.0] if args.quick else [0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300]
    evidence, test_mse = [], []
    for delta in deltas:
        model = train(mlp(1, 1, 50), x, y, delta, sigma, args.steps)
        gp = DNN2GP(model, "regression", prior_precision=delta, sigma_noise=sigma).fit(x, y)
        evidence.append(gp.log_marginal_likelihood().item())
        with torch.no_grad():
            test_mse.append((model(x_test).squeeze(-1) - y_test).pow(2).mean().item())
    best = max(range(len(deltas)), key=evidence.__getitem__)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.semilogx(deltas, evidence, "o-", color="C0")
    ax.set_xlabel("prior precision delta (weight decay)")
    ax.set_ylabel("DNN2GP log evidence", color="C0")
    twin = ax.twinx()
    twin.semilogx(deltas, test_mse, "s--", color="C1")
    twin.set_ylabel("test MSE of the network", color="C1")
    ax.axvline(deltas[best], color="k", lw=1)
    ax.set_title("model selection by the DNN2GP evidence")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "dnn2gp_evidence_vs_delta.png"), dpi=110)
    plt.close(fig)
    report["deltas"], report["evidence"], report["test_mse"] = deltas, evidence, test_mse
    print("delta   " + " ".join(f"{d:9.3g}" for d in deltas))
    print("evidence" + " ".join(f"{e:9.1f}" for e in evidence))
    print("test MSE" + " ".join(f"{m:9.4f}" for m in test_mse))
    chosen = train(mlp(1, 1, 50), x, y, deltas[best], sigma, args.steps)
    tuned = DNN2GP(chosen, "regression", prior_precision=deltas[best], sigma_noise=sigma).fit(x, y)
    report["tuned"] = tuned.optimize_marginal_likelihood()
    print(f"evidence-tuned at the chosen network: delta {report['tuned']['prior_precision']:.3g}, sigma "
          f"{report['tuned']['sigma_noise']:.3g} (log evidence {report['tuned']['log_marginal_likelihood'][0]:.1f}"
          f" -> {report['tuned']['log_marginal_likelihood'][1]:.1f})")


def transfer(args, report, model_a):
    """Task B: the task-A function shifted and rescaled, 12 observations; the GP keeps the task-A features."""
    g = torch.Generator().manual_seed(2)
    x_b = (torch.rand(12, 1, generator=g, dtype=torch.float64) * 5 - 2.5)
    f_b = lambda z: 1.3 * torch.sin(3 * z[:, 0]) + 0.3 * z[:, 0] - 0.5  # noqa: E731
    y_b = f_b(x_b) + 0.05 * torch.randn(12, generator=g, dtype=torch.float64)
    x_test = torch.linspace(-2.5, 2.5, 200, dtype=torch.float64).unsqueeze(-1)
    errors = {}
    for name, kernel in (("finite NTK of the task-A network", FiniteNTKKernel(model_a)),
                         ("RBF", gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()))):
        gp = fit_gp(x_b, y_b, kernel, args.gp_iters)
        with torch.no_grad():
            errors[name] = (gp(x_test).mean - f_b(x_test)).pow(2).mean().sqrt().item()
    report["transfer_rmse"] = errors
    print("task B from 12 points, test RMSE: " + ", ".join(f"{k} {v:.3f}" for k, v in errors.items()))


def classification(args, report):
    x, y, x_test, y_test = load_dataset(args.dataset, args.n_train, seed=0)
    delta = 1.0
    model = train(mlp(x.shape[1], 10, 32), x, y, delta, 1.0, args.steps, classification=True)
    gp = DNN2GP(model, "classification", prior_precision=delta).fit(x, y)
    shown = torch.argsort(y_test[:200], stable=True)
    xs, ys = x_test[:200][shown], y_test[:200][shown]
    probs = gp.predict_proba(xs, samples=128)
    report["classifier_accuracy"] = (probs.argmax(-1) == ys).double().mean().item()
    # The finite NTK between test digits, summed over the 10 output blocks (trace of J_i J_j^T), as correlations.
    jac = gp.network.jacobian(xs).flatten(1)
    gram = jac @ jac.T
    corr = gram / gram.diagonal().sqrt().outer(gram.diagonal().sqrt())
    same = ys.unsqueeze(0) == ys.unsqueeze(1)
    report["kernel_within_over_between"] = (corr[same].mean() / corr[~same].mean()).item()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    image = axes[0].imshow(corr, cmap="viridis")
    axes[0].set_title("finite NTK of test digits (sorted by class)")
    fig.colorbar(image, ax=axes[0])
    axes[1].imshow(probs, aspect="auto", cmap="Greys", interpolation="nearest")
    axes[1].set_title("DNN2GP predictive class probabilities")
    axes[1].set_xlabel("class")
    axes[1].set_ylabel("test digit (sorted by class)")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "dnn2gp_digits_kernel.png"), dpi=110)
    plt.close(fig)
    print(f"digit classifier: test accuracy {report['classifier_accuracy']:.3f}; kernel correlation within a "
          f"class / between classes {report['kernel_within_over_between']:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced size (the test suite's run)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
    args.steps, args.gp_iters = (500, 30) if args.quick else (3000, 100)
    args.dataset, args.n_train = ("digits", 200) if args.quick else ("mnist5k", 400)
    os.makedirs(args.out, exist_ok=True)
    report = {}
    x, y, model = regression(args, report)
    evidence_against_delta(args, report, x, y)
    transfer(args, report, model)
    classification(args, report)
    print(f"figures written to {args.out}")
    return report


if __name__ == "__main__":
    main()
