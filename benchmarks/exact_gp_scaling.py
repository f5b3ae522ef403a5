"""Exact GPs with the network kernels at scale: time and peak memory of a marginal-likelihood step and predictions.

    python benchmarks/exact_gp_scaling.py                 # all tables (the 50k rows take several minutes on 2 cores)
    python benchmarks/exact_gp_scaling.py --quick         # small sizes only
    python benchmarks/exact_gp_scaling.py --table vs-rbf  # one table: vs-rbf | fifty-k | growth | cg-vs-cholesky

Every measurement runs in a fresh subprocess, so "peak RSS" is that run's own peak resident memory.
Settings: GPyTorch defaults (CG/Lanczos above max_cholesky_size=800), float32 unless stated, synthetic data
y = sin(3 <x, w>) + noise, x ~ N(0, I_d) -- the generator is `make_data` below.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def make_data(n, d, n_test=0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_test, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64) / d ** 0.5
    y = torch.sin(3 * x @ w) + 0.1 * torch.randn(n + n_test, generator=g, dtype=torch.float64)
    x, y = x.to(dtype), y.to(dtype)
    return x[:n], y[:n], x[n:], y[n:]


def run_case(spec):
    """One measurement (runs inside the subprocess): returns a dict of timings and checks."""
    import gpytorch

    from gpytorch_nngp import NNGPKernel, NTKKernel

    dtype = torch.float64 if spec.get("float64") else torch.float32
    x, y, xt, _ = make_data(spec["n"], spec["d"], spec.get("n_test", 0), dtype)
    if spec.get("uniform"):  # inputs uniform in [-1, 1]^d (the same targets' recipe), GPyTorch's default noise
        g = torch.Generator().manual_seed(1)
        x = torch.rand(x.shape, generator=g, dtype=torch.float64).mul(2).sub(1).to(dtype)

    def kernel():
        if spec["kernel"] == "rbf":
            return gpytorch.kernels.RBFKernel()
        cls = NTKKernel if spec["kernel"] == "ntk" else NNGPKernel
        return cls(spec.get("depth", 3), "relu", weight_var=2.0, bias_var=0.1, backend=spec.get("backend", "auto"))

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
            self.mean = gpytorch.means.ConstantMean()
            self.cov = gpytorch.kernels.ScaleKernel(kernel())

        def forward(self, a):
            return gpytorch.distributions.MultivariateNormal(self.mean(a), self.cov(a))

    model = GP().to(dtype)
    if not spec.get("uniform"):
        model.likelihood.noise = 0.05
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    out = {}
    model.train()
    t0 = time.perf_counter()
    loss = -mll(model(x), y)
    loss.backward()
    out["mll_step_s"] = time.perf_counter() - t0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    out["finite_grads"] = bool(all(torch.isfinite(g).all() for g in grads))
    if spec.get("n_test"):
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad(), gpytorch.settings.fast_pred_var():
            pred = model.likelihood(model(xt))
            mean, var = pred.mean, pred.variance
        out["predict_s"] = time.perf_counter() - t0
        out["finite_predictions"] = bool(torch.isfinite(mean).all() and torch.isfinite(var).all())
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return out


def cg_vs_cholesky(n=5000, d=32):
    """Posterior mean at 200 test points by CG (GPyTorch's default path) and by a dense Cholesky solve (float64)."""
    import gpytorch
    from linear_operator import to_linear_operator

    from gpytorch_nngp import NNGPKernel

    x, y, xt, _ = make_data(n, d, 200, torch.float64)
    k = NNGPKernel(3, "relu", weight_var=2.0, bias_var=0.1, backend="lazy").double()
    noise = 0.05
    with torch.no_grad():
        kxx = k(x).to_dense() + noise * torch.eye(n, dtype=torch.float64)
        kxt = k(xt, x).to_dense()
        exact = kxt @ torch.cholesky_solve(y.unsqueeze(-1), torch.linalg.cholesky(kxx)).squeeze(-1)
        op = to_linear_operator(k(x).evaluate_kernel()).add_diagonal(torch.tensor(noise, dtype=torch.float64))
        with gpytorch.settings.max_cholesky_size(0), gpytorch.settings.cg_tolerance(1e-6), \
                gpytorch.settings.max_cg_iterations(2000):
            cg = kxt @ op.solve(y.unsqueeze(-1)).squeeze(-1)
    return {"n": n, "relative_error": ((cg - exact).norm() / exact.norm()).item()}


def measure(spec):
    """Run run_case(spec) in a fresh interpreter; returns its dict (or the error)."""
    code = (f"import json, sys; sys.path.insert(0, {HERE!r}); import exact_gp_scaling as b; "
            "print('RESULT' + json.dumps(b.run_case(json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    return {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:120]}


def fmt(v, spec="8.2f"):
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def table_vs_rbf(n, uniform=False):
    data = "x uniform in [-1, 1]^32, default noise" if uniform else "x ~ N(0, I), noise 0.05"
    print(f"\nOne MLL step (forward + backward), n={n}, d=32, float32, GPyTorch CG defaults, {data}")
    print(f"{'kernel':28s} {'seconds':>8s} {'peak GB':>8s}")
    rows = {}
    for label, spec in (("RBFKernel (GPyTorch)", {"kernel": "rbf"}), ("NNGPKernel depth 3 (auto)", {"kernel": "nngp"}),
                        ("NTKKernel depth 3 (auto)", {"kernel": "ntk"})):
        r = measure(dict(spec, n=n, d=32, uniform=uniform))
        rows[label] = r
        print(f"{label:28s} {fmt(r.get('mll_step_s'))} {fmt(r.get('peak_rss_gb'))} {r.get('error', '')}")
    base = rows["RBFKernel (GPyTorch)"].get("mll_step_s")
    for label in ("NNGPKernel depth 3 (auto)", "NTKKernel depth 3 (auto)"):
        t = rows[label].get("mll_step_s")
        if base and t:
            print(f"{label}: {t / base:.2f}x RBF")


def table_fifty_k(n, d_values):
    print(f"\nn={n}: one MLL step + predictive mean and variance (fast_pred_var) at 1000 test points, float32")
    print(f"{'d':>4s} {'kernel':6s} {'MLL step (s)':>13s} {'predict (s)':>12s} {'peak GB':>8s} {'finite':>7s}")
    for d in d_values:
        for kind in ("nngp",):
            r = measure({"kernel": kind, "n": n, "d": d, "n_test": 1000})
            finite = r.get("finite_grads") and r.get("finite_predictions")
            print(f"{d:4d} {kind:6s} {fmt(r.get('mll_step_s'), '13.1f')} {fmt(r.get('predict_s'), '12.1f')} "
                  f"{fmt(r.get('peak_rss_gb'))} {str(finite):>7s} {r.get('error', '')}")


def table_growth(sizes):
    print("\nGrowth with n: one MLL step of a depth-3 NNGP, d=32, float32 (dense = autograd through the whole matrix)")
    print(f"{'n':>7s} {'dense (s)':>10s} {'dense GB':>9s} {'lazy (s)':>9s} {'lazy GB':>8s}")
    for n in sizes:
        row = []
        for backend in ("dense", "lazy"):
            # dense beyond 12k would need > 20 GB of autograd intermediates on this machine
            r = measure({"kernel": "nngp", "n": n, "d": 32, "backend": backend}) if backend == "lazy" or n <= 12000 \
                else {"error": "skipped"}
            row += [r.get("mll_step_s", r.get("error")), r.get("peak_rss_gb", "-")]
        print(f"{n:7d} {fmt(row[0], '10.2f')} {fmt(row[1], '9.2f')} {fmt(row[2], '9.2f')} {fmt(row[3], '8.2f')}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes -> seconds)")
    parser.add_argument("--table", choices=("vs-rbf", "fifty-k", "growth", "cg-vs-cholesky"), default=None)
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    tables = [args.table] if args.table else ["vs-rbf", "cg-vs-cholesky", "growth", "fifty-k"]
    for name in tables:
        if name == "vs-rbf":
            table_vs_rbf(2000 if args.quick else 10000)
            table_vs_rbf(2000 if args.quick else 10000, uniform=True)
        elif name == "cg-vs-cholesky":
            r = cg_vs_cholesky(1000 if args.quick else 5000)
            print(f"\nPosterior mean, CG vs Cholesky (float64, n={r['n']}): relative error {r['relative_error']:.1e}")
        elif name == "growth":
            table_growth([1000, 2000] if args.quick else [1000, 2000, 5000, 10000, 20000])
        elif name == "fifty-k":
            table_fifty_k(3000 if args.quick else 50000, [32] if args.quick else [32, 784])


if __name__ == "__main__":
    main()
