"""Tutorial 10: kernels of graph networks for node classification
==============================================================

Zachary's karate club, and contextual stochastic block models from heterophilous to homophilous.

Run it with::

    python tutorials/10_graph_kernels.py [--quick] [--out tutorials/figures]

A graph convolutional network (Kipf and Welling 2017) is an ordinary nn.Sequential here: gpytorch_nngp.Aggregate(A)
sums each node's neighbours with the normalized adjacency A = D^-1/2 (A + I) D^-1/2, and nn.Conv1d(c_in, c_out, 1)
is the dense layer applied at every node. The whole graph is one input of shape (1, d, N). GraphNodeKernel gives
the covariance between the network's outputs at any two nodes in the infinite-width limit (the GNNGP of Niu et al.
2023): a GPyTorch kernel over node indices, for transductive node classification with a GP.

1. The karate club (34 members, 78 friendships): one labelled member per faction, the faction of everyone else
   predicted by the GCN-GP. The figure colours the graph by the prediction.
2. Contextual stochastic block models (two classes, features = class mean + noise, edges a fraction `homophily`
   within a class): GCN-GP (NNGP) and GCN-NTK against a trained two-layer GCN (plain torch) and an RBF GP on the
   features alone, 20 labelled nodes per class, over 10 seeds, accuracy against homophily. The figure also shows the
   node kernel as an image with the nodes sorted by class.

Classification with a GP here is regression on centred one-hot labels (the NNGP paper's protocol), predicting the
class with the largest posterior mean; every kernel gets the same relative noise (5% of its mean variance).
--quick: 300 nodes, 2 seeds, 3 homophily levels (what the tests run).
"""
import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from gpytorch_nngp import Aggregate, GraphNodeKernel  # noqa: E402
from gpytorch_nngp.graphs import contextual_sbm, karate_club, normalized_adjacency  # noqa: E402

NOISE = 0.05  # observation noise, relative to the kernel's mean variance on the training nodes


def gcn_module(adjacency, features: int, hidden: int = 64, classes: int = 2):
    """A two-layer GCN, A relu(A X W0) W1, as the module GraphNodeKernel and training both take."""
    return nn.Sequential(Aggregate(adjacency), nn.Conv1d(features, hidden, 1), nn.ReLU(), Aggregate(adjacency),
                         nn.Conv1d(hidden, classes, 1))


def split(labels, per_class: int, seed: int):
    """Train and test node indices: `per_class` labelled nodes of each class, the rest tested."""
    gen = torch.Generator().manual_seed(seed)
    train = torch.cat([torch.nonzero(labels == c).squeeze(-1)[torch.randperm(int((labels == c).sum()),
                                                                             generator=gen)[:per_class]]
                       for c in range(int(labels.max()) + 1)])
    test = torch.ones(len(labels), dtype=torch.bool)
    test[train] = False
    return train, torch.nonzero(test).squeeze(-1)


def gp_classify(kernel_matrix, labels, train, test):
    """Posterior-mean classification from a kernel over all nodes (N, N): regression on centred one-hot labels."""
    classes = int(labels.max()) + 1
    targets = torch.nn.functional.one_hot(labels[train], classes).double() - 1.0 / classes
    k_tt = kernel_matrix[train][:, train]
    noise = NOISE * k_tt.diagonal().mean()
    weights = torch.linalg.solve(k_tt + noise * torch.eye(len(train), dtype=k_tt.dtype), targets)
    return (kernel_matrix[test][:, train] @ weights).argmax(-1)


def node_kernel(data, ntk: bool):
    a = normalized_adjacency(data.adjacency.double())
    kernel = GraphNodeKernel(gcn_module(a, data.features.shape[1]), data.features.double(), ntk=ntk,
                             weight_var=2.0, bias_var=0.0001).double()
    with torch.no_grad():
        return kernel.node_covariance()


def rbf_matrix(x):
    """An RBF kernel on the features alone, length scale the median distance."""
    distances = torch.cdist(x, x)
    scale = distances[distances > 0].median()
    return torch.exp(-0.5 * (distances / scale) ** 2)


def train_gcn(data, train, epochs: int = 200, seed: int = 0):
    """Kipf and Welling's recipe: hidden 64, dropout 0.5, Adam (lr 0.01, weight decay 5e-4), cross-entropy on the
    labelled nodes; returns the predicted class of every node."""
    torch.manual_seed(seed)
    a = normalized_adjacency(data.adjacency.float())
    x = data.features.float().T.unsqueeze(0)  # (1, d, N)
    net = nn.Sequential(Aggregate(a), nn.Dropout(0.5), nn.Conv1d(x.shape[1], 64, 1), nn.ReLU(), nn.Dropout(0.5),
                        Aggregate(a), nn.Conv1d(64, int(data.labels.max()) + 1, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=5e-4)
    for _ in range(epochs):
        opt.zero_grad()
        logits = net(x)[0].T  # (N, classes)
        nn.functional.cross_entropy(logits[train], data.labels[train]).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return net(x)[0].T.argmax(-1)


def karate(out_dir):
    data = karate_club()
    train = torch.tensor([0, 33])  # the two leaders, one per faction (Mr. Hi and the officer)
    test = torch.tensor([v for v in range(34) if v not in (0, 33)])
    k = node_kernel(data, ntk=False)
    predicted = data.labels.clone()
    predicted[test] = gp_classify(k, data.labels, train, test)
    accuracy = (predicted[test] == data.labels[test]).double().mean().item()

    import networkx as nx

    graph = nx.karate_club_graph()
    position = nx.spring_layout(graph, seed=3)
    fig, ax = plt.subplots(figsize=(6, 5))
    nx.draw_networkx_edges(graph, position, ax=ax, alpha=0.3)
    colours = ["tab:blue" if p == 0 else "tab:orange" for p in predicted.tolist()]
    wrong = [v for v in test.tolist() if predicted[v] != data.labels[v]]
    nx.draw_networkx_nodes(graph, position, ax=ax, node_color=colours, node_size=220,
                           edgecolors=["black" if v in (0, 33) else ("red" if v in wrong else "white")
                                       for v in range(34)], linewidths=2)
    nx.draw_networkx_labels(graph, position, ax=ax, font_size=7)
    ax.set_title(f"Karate club: GCN-GP labelled from the two leaders (black rims)\n{accuracy:.0%} of the others "
                 "right; colour = predicted faction, red rim = wrong", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "graph_karate.png"), dpi=120)
    plt.close(fig)
    return {"accuracy": accuracy, "wrong": wrong}


def homophily_sweep(out_dir, nodes: int, seeds: int, levels, per_class: int = 20):
    methods = ("GCN-GP (NNGP)", "GCN-NTK", "trained GCN", "RBF GP (features only)")
    accuracy = {m: [[] for _ in levels] for m in methods}
    seconds = {m: 0.0 for m in methods}
    image = None
    for li, h in enumerate(levels):
        for seed in range(seeds):
            data = contextual_sbm(nodes, homophily=h, degree=5.0, features=20, signal=1.0, seed=seed)
            train, test = split(data.labels, per_class, seed)
            for m in methods:
                t0 = time.perf_counter()
                if m == "trained GCN":
                    predicted = train_gcn(data, train, seed=seed)[test]
                else:
                    k = rbf_matrix(data.features.double()) if m.startswith("RBF") else node_kernel(data, m == "GCN-NTK")
                    predicted = gp_classify(k, data.labels, train, test)
                    if m == "GCN-GP (NNGP)" and seed == 0 and image is None and h >= 0.75:
                        order = torch.argsort(data.labels, stable=True)
                        scale = k.diagonal().sqrt()
                        image = ((k / scale[:, None] / scale[None, :])[order][:, order], h)
                seconds[m] += time.perf_counter() - t0
                accuracy[m][li].append((predicted == data.labels[test]).double().mean().item())
    mean = {m: [sum(a) / len(a) for a in accuracy[m]] for m in methods}
    std = {m: [torch.tensor(a).std().item() if len(a) > 1 else 0.0 for a in accuracy[m]] for m in methods}

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for m, style in zip(methods, ("o-", "s-", "^--", "x:")):
        axes[0].errorbar(levels, mean[m], yerr=std[m], fmt=style, capsize=3, label=m)
    axes[0].axhline(0.5, color="gray", lw=0.8)
    axes[0].set_xlabel("homophily (fraction of edges within a class)")
    axes[0].set_ylabel(f"test accuracy ({per_class} labels per class)")
    axes[0].set_title(f"Contextual SBM, {nodes} nodes, mean and sd over {seeds} seeds")
    axes[0].legend(fontsize=8)
    if image is not None:
        shown = axes[1].imshow(image[0].float(), cmap="viridis")
        fig.colorbar(shown, ax=axes[1], fraction=0.046)
        axes[1].set_title(f"GCN-GP node kernel as correlations, nodes sorted by class\n(homophily {image[1]}, "
                          "class 0 first)", fontsize=10)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "graph_homophily.png"), dpi=120)
    plt.close(fig)
    return {"levels": list(levels), "mean": mean, "std": std, "seconds": seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="where the figures go (default: tutorials/figures)")
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
    os.makedirs(args.out, exist_ok=True)
    report = {"karate": karate(args.out)}
    print(f"karate club: {report['karate']['accuracy']:.1%} of the 32 unlabelled members placed in their faction")
    if args.quick:
        sweep = homophily_sweep(args.out, nodes=300, seeds=2, levels=(0.1, 0.5, 0.9))
    else:
        sweep = homophily_sweep(args.out, nodes=1000, seeds=10, levels=(0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95))
    report["sweep"] = sweep
    print(f"{'homophily':>10} " + " ".join(f"{m:>23}" for m in sweep["mean"]))
    for i, h in enumerate(sweep["levels"]):
        print(f"{h:>10.2f} " + " ".join(f"{sweep['mean'][m][i]:>15.3f} +- {sweep['std'][m][i]:.3f}"
                                         for m in sweep["mean"]))
    print("seconds in total: " + ", ".join(f"{m} {s:.1f}" for m, s in sweep["seconds"].items()))
    return report


if __name__ == "__main__":
    main()
