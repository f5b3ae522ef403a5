"""Graph kernels: whole graphs against neural-tangents' Aggregate (dense and sparse), and node-level kernels at scale.

    python benchmarks/graph_kernels.py [--graphs 300] [--nodes-exact 20000] [--nodes-low-rank 200000] [--quick]

Whole graphs (molecule-like: 300 random undirected graphs of 12 to 24 nodes, padded to 24, about 2.5 edges per node,
8 features per node): the NNGP and NTK training matrices of a GCN (aggregate, per-node dense, ReLU, twice, then an
aggregation, global average pooling and a dense readout; weight_var 2, bias_var 0.1, float32), as this library's
kernel on packed rows (dense adjacencies and edge lists) and as neural-tangents' stax.Aggregate (DENSE and SPARSE
implementations, jit, the whole matrix in one call), each in its own subprocess reporting wall time and peak
resident memory. neural-tangents runs under --nt-python (default .venv-nt/bin/python: neural-tangents==0.6.5,
jax[cpu]==0.4.30); its compilation is in its first call, reported separately.

Nodes of one graph (a random sparse graph, average degree 5, 16 features, the same two-layer GCN ending at the
nodes, symmetric normalized adjacency): the exact NNGP between all nodes at --nodes-exact nodes, the low-rank form
(500 landmarks) at --nodes-low-rank nodes, and the low-rank error against the exact kernel at 5,000 nodes for 100 to
2,000 landmarks; neural-tangents' node-by-node covariance of one input at 2,000 nodes (dense pattern) beside ours.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

WEIGHT_VAR, BIAS_VAR = 2.0, 0.1
NODES, CHANNELS, MAX_EDGES = 24, 8, 160


def whole_graphs(n: int, seed: int = 0):
    """Features (n, C, V) and integer adjacencies (n, V, V) of random undirected graphs of 12..24 nodes."""
    rng = np.random.RandomState(seed)
    x = np.zeros((n, CHANNELS, NODES), dtype=np.float32)
    a = np.zeros((n, NODES, NODES), dtype=np.float32)
    for k in range(n):
        size = rng.randint(12, NODES + 1)
        x[k, :, :size] = rng.randn(CHANNELS, size)
        for _ in range(int(1.25 * size)):
            i, j = rng.randint(size, size=2)
            if i != j:
                a[k, i, j] = a[k, j, i] = 1.0
        a[k, :size, :size] += np.eye(size, dtype=np.float32)  # self-loops
    return x, a


OURS_GRAPHS = r"""
import json, resource, sys, time
import numpy as np, torch
from torch import nn
from gpytorch_nngp import Aggregate, GraphInputs, GraphNetwork, NNGPKernel, NTKKernel
data = np.load(sys.argv[1]); sparse = sys.argv[2] == "sparse"; wv, bv = float(sys.argv[3]), float(sys.argv[4])
x, a = torch.from_numpy(data["x"]), torch.from_numpy(data["a"])
c, v = x.shape[1], x.shape[2]
packing = GraphInputs(c, v, max_edges=int(sys.argv[5]) if sparse else None)
rows = packing.pack(x, [g.to_sparse() for g in a] if sparse else a)
net = nn.Sequential(Aggregate(), nn.Conv1d(c, 8, 1), nn.ReLU(), Aggregate(), nn.Conv1d(8, 8, 1), nn.ReLU(),
                    Aggregate(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 1))
out = {"threads": torch.get_num_threads()}
for kind, cls in (("nngp", NNGPKernel), ("ntk", NTKKernel)):
    kernel = cls.from_module(GraphNetwork(net, packing), (packing.dim,), weight_var=wv, bias_var=bv)
    with torch.no_grad():
        t0 = time.perf_counter()
        kernel(rows[:4]).to_dense()  # the first call (torch's lazy initialization), as neural-tangents' compilation
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        k = kernel(rows).to_dense()
    out[kind] = {"time": time.perf_counter() - t0, "first": first, "sample": k[:4, :4].tolist()}
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""

NT_GRAPHS = r"""
import json, math, resource, sys, time
import numpy as np, jax, jax.numpy as jnp
from neural_tangents import stax
data = np.load(sys.argv[1]); sparse = sys.argv[2] == "sparse"; wv, bv = float(sys.argv[3]), float(sys.argv[4])
max_edges = int(sys.argv[5])
x = np.transpose(data["x"], (0, 2, 1))  # (n, V, C) channel last
a = data["a"]
if sparse:  # unit edges (source, target), -1 padded
    pattern = np.full((len(a), max_edges, 2), -1, dtype=np.int32)
    for k, g in enumerate(a):
        t, s = np.nonzero(g)
        pattern[k, :len(t), 0], pattern[k, :len(t), 1] = s, t
else:
    pattern = np.transpose(a, (0, 2, 1))  # neural-tangents' P[i, j]: an edge i -> j
W, b = math.sqrt(wv), math.sqrt(bv)
impl = "SPARSE" if sparse else "DENSE"
agg = lambda: stax.Aggregate(aggregate_axis=1, batch_axis=0, channel_axis=-1, implementation=impl)
_, _, kernel_fn = stax.serial(agg(), stax.Conv(1, (1,), W_std=W, b_std=b), stax.Relu(), agg(),
                              stax.Conv(1, (1,), W_std=W, b_std=b), stax.Relu(), agg(), stax.GlobalAvgPool(),
                              stax.Dense(1, W_std=W, b_std=b))
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
out = {"jax": jax.__version__}
for kind in ("nngp", "ntk"):
    t0 = time.perf_counter()
    k = np.asarray(kernel_fn(x, None, kind, pattern=(pattern, pattern)))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    k = np.asarray(kernel_fn(x, None, kind, pattern=(pattern, pattern)))
    out[kind] = {"time": time.perf_counter() - t0, "first": first, "sample": k[:4, :4].tolist()}
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""

OURS_NODES = r"""
import json, resource, sys, time
import torch
from torch import nn
from gpytorch_nngp import Aggregate, GraphNodeKernel
from gpytorch_nngp.graphs import adjacency_from_edges, normalized_adjacency
nodes, mode, landmarks = int(sys.argv[1]), sys.argv[2], [int(m) for m in sys.argv[3].split(",") if m]
gen = torch.Generator().manual_seed(0)
edges = torch.randint(0, nodes, (2, int(2.5 * nodes)), generator=gen)
edges = edges[:, edges[0] != edges[1]]
a = normalized_adjacency(adjacency_from_edges(edges, nodes, symmetric=True))
x = torch.randn(nodes, 16, generator=gen)
net = lambda g: nn.Sequential(Aggregate(g), nn.Conv1d(16, 8, 1), nn.ReLU(), Aggregate(g), nn.Conv1d(8, 1, 1))
out = {"nodes": nodes, "edges": int(a._nnz())}
if mode == "nt-compare":  # the dense pattern neural-tangents gets, and our sparse one
    import numpy as np
    np.save(sys.argv[4], {"x": x.numpy(), "a": a.to_dense().numpy()}, allow_pickle=True)
if mode in ("exact", "nt-compare"):
    kernel = GraphNodeKernel(net(a), x, weight_var=2.0, bias_var=0.1)
    t0 = time.perf_counter()
    with torch.no_grad():
        k = kernel.node_covariance()
    out["exact"] = {"time": time.perf_counter() - t0, "sample": k[0, :4].tolist()}
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if mode == "low_rank":
    for m in landmarks:
        kernel = GraphNodeKernel(net(a), x, weight_var=2.0, bias_var=0.1, landmarks=m)
        t0 = time.perf_counter()
        with torch.no_grad():
            q = kernel.node_factor()
        out[f"low_rank_{m}"] = {"time": time.perf_counter() - t0, "rank": q.shape[-1]}
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if mode == "error":
    with torch.no_grad():
        exact = GraphNodeKernel(net(a), x, weight_var=2.0, bias_var=0.1).node_covariance().double()
        for m in landmarks:
            q = GraphNodeKernel(net(a), x, weight_var=2.0, bias_var=0.1, landmarks=m).node_factor().double()
            approx = q @ q.T
            out[f"error_{m}"] = {"frobenius": (torch.linalg.norm(approx - exact) / torch.linalg.norm(exact)).item(),
                                 "diagonal": ((approx.diagonal() - exact.diagonal()).abs().max()
                                              / exact.diagonal().abs().max()).item()}
print(json.dumps(out))
"""

NT_NODES = r"""
import json, math, resource, sys, time
import numpy as np, jax
from neural_tangents import stax
data = np.load(sys.argv[1], allow_pickle=True).item()
x, a = data["x"][None], np.asarray(data["a"]).T[None]  # one input (1, N, C); pattern P[i, j] = A[j, i]
W, b = math.sqrt(2.0), math.sqrt(0.1)
agg = lambda: stax.Aggregate(aggregate_axis=1, batch_axis=0, channel_axis=-1)
_, _, kernel_fn = stax.serial(agg(), stax.Conv(1, (1,), W_std=W, b_std=b), stax.Relu(), agg(),
                              stax.Conv(1, (1,), W_std=W, b_std=b))
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
t0 = time.perf_counter()
k = np.asarray(kernel_fn(x, None, "nngp", pattern=(a, a)))
first = time.perf_counter() - t0
t0 = time.perf_counter()
k = np.asarray(kernel_fn(x, None, "nngp", pattern=(a, a)))
out = {"exact": {"time": time.perf_counter() - t0, "first": first, "sample": k[0, 0, 0, :4].tolist()}}
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run(command):
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def script(tmp, name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_nt = os.path.join(here, "..", ".venv-nt", "bin", "python")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=int, default=300)
    parser.add_argument("--graphs-sparse", type=int, default=60,
                        help="graphs for the edge-list comparison (neural-tangents' SPARSE Aggregate holds E^2 numbers "
                             "per pair of graphs: 300 graphs exhaust 23 GB)")
    parser.add_argument("--nodes-exact", type=int, default=20000)
    parser.add_argument("--nodes-low-rank", type=int, default=200000)
    parser.add_argument("--nodes-nt", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--nt-python", default=default_nt if os.path.exists(default_nt) else sys.executable)
    args = parser.parse_args()
    if args.quick:
        args.graphs, args.graphs_sparse, args.nodes_exact, args.nodes_low_rank, args.nodes_nt = 40, 20, 1000, 5000, 300
    print(f"{platform.machine()}, {os.cpu_count()} cores, float32")
    with tempfile.TemporaryDirectory() as tmp:
        ours, nt = script(tmp, "ours.py", OURS_GRAPHS), script(tmp, "nt.py", NT_GRAPHS)
        print(f"\nWhole graphs of 12-{NODES} nodes: the n x n training matrix of a 3-aggregation GCN")
        print(f"{'pack':>7} {'n':>5} {'side':>16} {'NNGP (s)':>9} {'NTK (s)':>9} {'peak MB':>8}  first call (s)")
        for pack, count in (("dense", args.graphs), ("sparse", args.graphs_sparse)):
            x, a = whole_graphs(count)
            data = os.path.join(tmp, f"graphs_{pack}.npz")
            np.savez(data, x=x, a=a)
            argv = [data, pack, str(WEIGHT_VAR), str(BIAS_VAR), str(MAX_EDGES)]
            mine, err = run([sys.executable, ours, *argv])
            theirs, nt_err = run([args.nt_python, nt, *argv])
            if mine is None:
                raise SystemExit(f"our side failed: {err}")
            print(f"{pack:>7} {count:>5} {'gpytorch_nngp':>16} {mine['nngp']['time']:9.3f} {mine['ntk']['time']:9.3f} "
                  f"{mine['peak_mb']:8.0f}  {mine['nngp']['first']:.2f} / {mine['ntk']['first']:.2f}")
            if theirs is None:
                print(f"{pack:>7} {count:>5} {'neural-tangents':>16} failed: {nt_err}")
                continue
            print(f"{pack:>7} {count:>5} {'neural-tangents':>16} {theirs['nngp']['time']:9.3f} "
                  f"{theirs['ntk']['time']:9.3f} {theirs['peak_mb']:8.0f}  "
                  f"{theirs['nngp']['first']:.2f} / {theirs['ntk']['first']:.2f}")
            want = np.array(theirs["ntk"]["sample"])
            gap = np.abs(np.array(mine["ntk"]["sample"]) - want).max() / np.abs(want).max()
            print(f"{'':>7} {'':>5} {'ratio':>16} {mine['nngp']['time'] / theirs['nngp']['time']:8.2f}x "
                  f"{mine['ntk']['time'] / theirs['ntk']['time']:8.2f}x {mine['peak_mb'] / theirs['peak_mb']:7.2f}x"
                  f"  (4 x 4 NTK corner: relative difference {gap:.1e}, float32)")

        nodes = script(tmp, "nodes.py", OURS_NODES)
        nt_nodes = script(tmp, "nt_nodes.py", NT_NODES)
        print("\nNodes of one graph (average degree 5, 16 features, two-layer GCN, NNGP)")
        print(f"{'nodes':>8} {'edges':>9} {'form':>24} {'seconds':>9} {'peak MB':>8}")
        dump = os.path.join(tmp, "nodes.npy")
        mine, err = run([sys.executable, nodes, str(args.nodes_nt), "nt-compare", "", dump])
        theirs, nt_err = run([args.nt_python, nt_nodes, dump])
        print(f"{args.nodes_nt:>8} {mine['edges']:>9} {'exact (ours, sparse A)':>24} {mine['exact']['time']:9.3f} "
              f"{mine['peak_mb']:8.0f}")
        if theirs is not None:
            print(f"{'':>8} {'':>9} {'neural-tangents (dense)':>24} {theirs['exact']['time']:9.3f} "
                  f"{theirs['peak_mb']:8.0f}   first call {theirs['exact']['first']:.2f} s; max |difference| "
                  f"{np.abs(np.array(mine['exact']['sample']) - np.array(theirs['exact']['sample'])).max():.1e}")
        else:
            print(f"{'':>8} {'':>9} {'neural-tangents':>24} failed: {nt_err}")
        mine, err = run([sys.executable, nodes, str(args.nodes_exact), "exact", ""])
        if mine is None:
            print(f"{args.nodes_exact:>8} exact failed: {err}")
        else:
            print(f"{args.nodes_exact:>8} {mine['edges']:>9} {'exact':>24} {mine['exact']['time']:9.3f} "
                  f"{mine['peak_mb']:8.0f}")
        mine, err = run([sys.executable, nodes, str(args.nodes_low_rank), "low_rank", "500"])
        if mine is None:
            print(f"{args.nodes_low_rank:>8} low rank failed: {err}")
        else:
            r = mine["low_rank_500"]
            print(f"{args.nodes_low_rank:>8} {mine['edges']:>9} {'low rank, 500 landmarks':>24} {r['time']:9.3f} "
                  f"{mine['peak_mb']:8.0f}   (rank {r['rank']})")
        size = 1000 if args.quick else 5000
        marks = "50,200,1000" if args.quick else "100,500,2000"
        mine, err = run([sys.executable, nodes, str(size), "error", marks])
        print(f"\nLow-rank error against the exact kernel at {size} nodes (relative Frobenius; largest diagonal "
              "error relative to the largest variance)")
        for m in marks.split(","):
            e = mine[f"error_{m}"]
            print(f"{m:>6} landmarks: {e['frobenius']:.2e}  diagonal {e['diagonal']:.2e}")


if __name__ == "__main__":
    main()
