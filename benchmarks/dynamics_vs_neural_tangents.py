"""Training dynamics at scale: neural-tangents' gradient_descent_mse_ensemble against gpytorch_nngp.predict.

    python benchmarks/dynamics_vs_neural_tangents.py [--sizes 2000 5000] [--no-krylov] [--ours-only 20000]
        [--nt-python PATH]

Each row runs in a fresh process (time and peak resident memory are its own): depth-3 ReLU network, weight_var 2.0,
bias_var 0.1, d = 32 inputs, k = 2 outputs, 200 test points, diag_reg 1e-4, float64; means and covariances of both
the NNGP-trained and the NTK-trained ensembles at 4 times (10, 100, 1000, 10000 steps) and at infinity (t=None).
Rows: neural-tangents 0.6.5 (JAX on CPU; needs an environment with neural-tangents==0.6.5 and jax[cpu]==0.4.30,
e.g. `python -m venv .venv-nt && .venv-nt/bin/pip install neural-tangents==0.6.5 "jax[cpu]==0.4.30"`), ours with
solver="eigh" (dense kernel; neural-tangents' two calls, finite times then t=None) and ours with solver="krylov"
(lazy kernel evaluated once into a dense matrix per kind, Lanczos; one call with t = [10, ..., 10000, inf]). The
--ours-only sizes get two rows of ours alone: solver="krylov" as above, and its means (no covariance) at 1,000 test
points. The table gives seconds, peak memory
and ours / neural-tangents time, and the largest difference of our means from neural-tangents'.

--loop adds the pattern neural-tangents users write, one call per time (`for t in times: predict_fn(t=t, ...)`,
infinity as t=None), for neural-tangents and both of our solvers; their ratio column is against neural-tangents'
loop. neural-tangents caches its eigendecompositions between calls, ours its decompositions (eigh) or its Lanczos
runs (krylov), so a loop should cost about what one call with every time costs.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

WV, BV, DEPTH, D, OUTPUTS, TESTS, REG = 2.0, 0.1, 3, 32, 2, 200, 1e-4
MEAN_ONLY_TESTS = 1000  # test points of the --ours-only rows (means only)
TIMES = [10.0, 100.0, 1000.0, 10000.0]


def data(n, tests=TESTS):
    rng = np.random.RandomState(0)
    x = rng.randn(n + tests, D)
    y = np.sin(x[:n, :OUTPUTS] * 2) + 0.1 * rng.randn(n, OUTPUTS)
    return x[:n], x[n:], y


def run_nt(n, loop=False):
    import jax

    jax.config.update("jax_enable_x64", True)
    from neural_tangents import predict, stax

    layers = []
    for _ in range(DEPTH):
        layers += [stax.Dense(512, W_std=math.sqrt(WV), b_std=math.sqrt(BV)), stax.Relu()]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=math.sqrt(WV), b_std=math.sqrt(BV)))
    x, x_test, y = data(n)
    start = time.perf_counter()
    fn = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=REG)
    if loop:
        each = [fn(t=t, x_test=x_test, get=("nngp", "ntk"), compute_cov=True) for t in TIMES]
        jax.block_until_ready(each)
        finite_mean = np.stack([np.asarray(e.ntk.mean) for e in each])
    else:
        finite = fn(t=np.array(TIMES), x_test=x_test, get=("nngp", "ntk"), compute_cov=True)
        jax.block_until_ready(finite)
        finite_mean = np.asarray(finite.ntk.mean)
    infinite = fn(t=None, x_test=x_test, get=("nngp", "ntk"), compute_cov=True)
    jax.block_until_ready(infinite)
    seconds = time.perf_counter() - start
    return seconds, {"finite_ntk_mean": finite_mean.tolist(),
                     "infinite_ntk_mean": np.asarray(infinite.ntk.mean).tolist()}


def run_ours(n, kind, loop=False):
    import torch

    from gpytorch_nngp import NTKKernel
    from gpytorch_nngp.predict import gradient_descent_mse_ensemble

    solver = "eigh" if kind == "eigh" else "krylov"
    tests = MEAN_ONLY_TESTS if kind == "krylov-mean" else TESTS
    x, x_test, y = (torch.from_numpy(a) for a in data(n, tests))
    kernel = NTKKernel(DEPTH, "relu", backend="dense" if solver == "eigh" else "lazy").double()
    kernel.weight_var, kernel.bias_var = WV, BV
    start = time.perf_counter()
    fn = gradient_descent_mse_ensemble(kernel, x, y, diag_reg=REG, solver=solver)
    if loop:  # one call per time, infinity last, as in a neural-tangents loop
        each = [fn(t=t, x_test=x_test, get=("nngp", "ntk"), compute_cov=True) for t in TIMES + [None]]
        means = torch.stack([e.ntk.mean for e in each[:-1]]), each[-1].ntk.mean
    elif solver == "eigh":  # as neural-tangents: finite times, then t=None by Cholesky
        finite = fn(t=TIMES, x_test=x_test, get=("nngp", "ntk"), compute_cov=True)
        infinite = fn(t=None, x_test=x_test, get=("nngp", "ntk"), compute_cov=True)
        means = finite.ntk.mean, infinite.ntk.mean
    else:  # every time and infinity from one Lanczos run per kind
        both = fn(t=TIMES + [math.inf], x_test=x_test, get=("nngp", "ntk"), compute_cov=kind == "krylov")
        ntk = both.ntk.mean if kind == "krylov" else both.ntk
        means = ntk[:-1], ntk[-1]
    seconds = time.perf_counter() - start
    steps = max((s.steps_used for s in getattr(fn, "solvers", {}).values()), default=None)
    return seconds, {"finite_ntk_mean": means[0].tolist(), "infinite_ntk_mean": means[1].tolist(),
                     "lanczos_steps": steps}


def row(kind, n):
    base, loop = kind.removesuffix("-loop"), kind.endswith("-loop")
    seconds, extra = run_nt(n, loop) if base == "nt" else run_ours(n, base, loop)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    print(json.dumps({"kind": kind, "n": n, "seconds": seconds, "peak_gb": peak, **extra}))


def spawn(python, kind, n):
    result = subprocess.run([python, os.path.abspath(__file__), "--row", kind, "--n", str(n)], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__)))})
    if result.returncode != 0:
        return {"kind": kind, "n": n, "error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 5000], help="rows with neural-tangents too")
    parser.add_argument("--ours-only", type=int, nargs="*", default=[],
                        help=f"sizes for our Krylov rows alone (with covariances, and means only at {MEAN_ONLY_TESTS} "
                             "test points)")
    parser.add_argument("--no-krylov", action="store_true", help="leave our Krylov row out of the --sizes rows")
    parser.add_argument("--loop", action="store_true", help="add the one-call-per-time rows (see above)")
    parser.add_argument("--nt-python", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), ".venv-nt", "bin", "python"), help="a Python with neural-tangents 0.6.5")
    parser.add_argument("--row", choices=("nt", "eigh", "krylov", "krylov-mean", "nt-loop", "eigh-loop",
                                          "krylov-loop"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        return row(args.row, args.n)
    print(f"depth-{DEPTH} ReLU NTK and NNGP ensembles, d={D}, {TESTS} test points, times {TIMES} and infinity, "
          f"covariances included, float64; {os.cpu_count()} CPUs")
    print(f"{'n':>6s} {'row':>20s} {'seconds':>9s} {'peak GB':>8s} {'x nt time':>9s} {'mean diff':>10s} {'steps':>6s}")
    for n in args.sizes + args.ours_only:
        rows = [] if n in args.ours_only else [spawn(args.nt_python, "nt", n)]
        ours = ("krylov", "krylov-mean") if n in args.ours_only else ("eigh",) if args.no_krylov else ("eigh", "krylov")
        rows += [spawn(sys.executable, kind, n) for kind in ours]
        if args.loop and n not in args.ours_only:
            rows += [spawn(args.nt_python, "nt-loop", n)] + [spawn(sys.executable, f"{kind}-loop", n) for kind in ours]
        references = {r["kind"]: r for r in rows if r["kind"] in ("nt", "nt-loop") and "error" not in r}
        for r in rows:
            if "error" in r:
                print(f"{n:6d} {r['kind']:>20s} failed: {r['error']}")
                continue
            reference = references.get("nt-loop" if r["kind"].endswith("-loop") else "nt")
            ratio = f"{r['seconds'] / reference['seconds']:9.2f}" if reference else f"{'':>9s}"
            diff = ""
            if reference and r is not reference:
                diff = max(float(np.abs(np.array(r[key]) - np.array(reference[key])).max())
                           for key in ("finite_ntk_mean", "infinite_ntk_mean"))
                diff = f"{diff:10.1e}"
            label = {"nt": "neural-tangents", "eigh": "ours, eigh", "krylov": "ours, krylov",
                     "krylov-mean": "ours, krylov, means", "nt-loop": "neural-tangents, loop",
                     "eigh-loop": "ours, eigh, loop", "krylov-loop": "ours, krylov, loop"}[r["kind"]]
            steps = r.get("lanczos_steps") or ""
            print(f"{n:6d} {label:>20s} {r['seconds']:9.2f} {r['peak_gb']:8.2f} {ratio} {diff:>10s} {steps:>6}")


if __name__ == "__main__":
    main()
