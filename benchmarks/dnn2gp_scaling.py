"""DNN2GP at scale: finite-NTK products through Jacobian-vector products against explicit Jacobians, and a
posterior variance by conjugate gradients.

    python benchmarks/dnn2gp_scaling.py [--n 10000 --width 1000 --depth 2 --d 64] [--quick]

The network is an MLP with `depth` hidden layers of `width` units (about 1.07M parameters at the defaults), one
output, float32. Each row runs in a fresh process, so "peak MB" is that process's peak resident memory above
its baseline after the model and data exist (on CUDA: torch.cuda.max_memory_allocated). Rows:

- operator K v: FiniteNTKOperator @ v for one vector and for 11 (GPyTorch's CG with 10 probe vectors), one VJP
  and one JVP per product, memory O(P + n x width), never the n x P Jacobian;
- explicit K v: build J (n x P) with torch.func and multiply J (J^T v), at the n that fit, and the memory J would
  need at the full n;
- posterior variance: DNN2GP in operator mode (delta 1, sigma 0.3), the variance at --test-points test points by
  CG (tolerance 1e-3, at most --cg-iterations steps, the achieved residual printed), and the log evidence by
  stochastic Lanczos quadrature (4 probes, 16 steps).
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import torch


def make_problem(n, d, width, depth, device, seed=0):
    torch.manual_seed(seed)
    layers, fan_in = [], d
    for _ in range(depth):
        layers += [torch.nn.Linear(fan_in, width), torch.nn.Tanh()]
        fan_in = width
    layers.append(torch.nn.Linear(fan_in, 1))
    model = torch.nn.Sequential(*layers).to(device)
    x = torch.randn(n, d, device=device)
    y = torch.sin(x[:, :3].sum(-1))
    return model, x, y


def _peak_mb(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _row(kind, n, d, width, depth, device, columns, cg_iterations=100):
    from gpytorch_nngp.dnn2gp import DNN2GP, FiniteNTKOperator, LinearizedNetwork

    model, x, y = make_problem(n, d, width, depth, device)
    net = LinearizedNetwork(model, chunk_size=2048)
    v = torch.randn(n, columns, device=device)
    # Warm-up on 8 points (library loading, first-call allocations), then the baseline.
    FiniteNTKOperator(x[:8], x[:8], network=net) @ v[:8]
    net.jacobian(x[:8])
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2 ** 20 if device == "cuda" else _peak_mb(device)
    out = {}
    if kind == "operator":
        op = FiniteNTKOperator(x, x, network=net)
        start = time.perf_counter()
        op @ v
        _sync(device)
        out["seconds"] = time.perf_counter() - start
    elif kind == "explicit":
        start = time.perf_counter()
        jac = net.jacobian(x)[:, 0]
        _sync(device)
        out["build_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        jac @ (jac.T @ v)
        _sync(device)
        out["seconds"] = time.perf_counter() - start
    else:
        gp = DNN2GP(model, "regression", prior_precision=1.0, sigma_noise=0.3, mode="operator", chunk_size=2048,
                    num_probes=4, lanczos_iterations=16, cg_tolerance=1e-3, max_cg_iterations=cg_iterations)
        start = time.perf_counter()
        gp.fit(x, y)
        evidence = gp.log_marginal_likelihood().item()
        _sync(device)
        out["fit_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        _, cov = gp.predict(x[:columns] + 0.1)
        _sync(device)
        out["seconds"] = time.perf_counter() - start
        out["variance"] = cov[:, 0, 0].tolist()
        out["cg"] = gp.cg_info
        out["log_evidence"] = evidence
    out["peak_mb"] = _peak_mb(device) - base
    out["num_params"] = net.num_params
    return out


def run_row(*args):
    """One measurement in a fresh process, so peak memory is that of the measurement alone. The worker exits on
    its own (a terminated worker can leave pykeops' on-disk cache truncated, which breaks `import gpytorch`)."""
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(_row, *args).result()
    print(f"  {args[0]} n={args[1]} columns={args[-1]}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--explicit-n", type=int, nargs="+", default=[250, 500, 1000],
                        help="sizes at which the explicit Jacobian is built (it needs n x P x 4 bytes)")
    parser.add_argument("--test-points", type=int, default=2, help="test points for the CG posterior variance")
    parser.add_argument("--cg-iterations", type=int, default=100, help="CG budget for the posterior variance")
    parser.add_argument("--quick", action="store_true", help="a small network and n (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.width, args.explicit_n = 600, 64, [200, 400]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    rows = []
    for columns in (1, 11):
        r = run_row("operator", args.n, args.d, args.width, args.depth, device, columns)
        rows.append((f"operator K v, {columns} col", args.n, r["seconds"], r["peak_mb"], ""))
    p = r["num_params"]
    for n in args.explicit_n:
        r = run_row("explicit", n, args.d, args.width, args.depth, device, 1)
        rows.append(("explicit J (J^T v), 1 col", n, r["seconds"], r["peak_mb"],
                     f"J built in {r['build_seconds']:.1f} s"))
        r = run_row("operator", n, args.d, args.width, args.depth, device, 1)
        rows.append(("operator K v, 1 col", n, r["seconds"], r["peak_mb"], ""))
    rows.append(("explicit J at full n (needed)", args.n, float("nan"), args.n * p * 4 / 2 ** 20, "n x P float32"))
    r = run_row("variance", args.n, args.d, args.width, args.depth, device, args.test_points, args.cg_iterations)
    rows.append(("DNN2GP fit + SLQ evidence", args.n, r["fit_seconds"], r["peak_mb"],
                 f"log evidence {r['log_evidence']:.1f} (4 probes x 16 Lanczos steps)"))
    rows.append((f"posterior variance, {args.test_points} pts, CG", args.n, r["seconds"], r["peak_mb"],
                 "var " + ", ".join(f"{v:.3g}" for v in r["variance"])
                 + f"; {r['cg']['iterations']} CG steps, relative residual {r['cg']['relative_residual']:.1e}"))
    print(f"MLP {args.d}-{'-'.join([str(args.width)] * args.depth)}-1: P = {p:,} parameters")
    print(f"{'row':32s} {'n':>7s} {'seconds':>9s} {'peak MB':>9s}  note")
    for name, n, seconds, mb, note in rows:
        print(f"{name:32s} {n:7d} {seconds:9.2f} {mb:9.0f}  {note}")
    return rows


if __name__ == "__main__":
    main()
