"""Jacobians by plain autograd, independent of the library's torch.func Jacobians."""
import torch


def autograd_jacobian(model, x, create_graph=False):
    """(n, C, P) by one backward pass per output: no torch.func, so independent of the library's Jacobians.
    create_graph=True keeps it differentiable in x."""
    params = list(model.parameters())
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i:i + 1])[0]
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], params, retain_graph=True, create_graph=create_graph)
            rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows).reshape(x.shape[0], -1, rows[0].numel())
