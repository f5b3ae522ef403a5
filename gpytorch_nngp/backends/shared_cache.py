"""The process-wide cache of evaluated kernel matrices that operators on the same points and variances share.

linear_operator's autograd functions rebuild an operator from its representation (the same tensors) in their
backward pass; the rebuilt one finds the matrix its original evaluated instead of evaluating it again (a sixth of a
marginal-likelihood step at n = 10,000, docs/guide/benchmarks.md). So does any later operator on equal points with
equal variances while that matrix is alive. That matters for an ExactGP's predictions right after a training step:
the step's `loss` keeps its operator alive (linear_operator's backward keeps the preconditioner, which holds it),
and the predictions' operator comes with new variance tensors of equal values. Without the match a 10 GB matrix at n
= 50,000 would be held twice.

An entry keeps its matrix while the tensors of the operator that made it live (the rebuilt operator needs it after
the original is gone), then lets it go with the last operator that holds it. Entries are filed by what an operator
is without reading its values (its class, its tensors' shapes, dtypes and devices, its evaluator, its sharding), so
making an operator never waits for the device; a lookup then matches the points and variances (the same tensors,
or torch.equal to them), and only a candidate entry costs that comparison.
"""
from __future__ import annotations

import weakref

import torch

_ENTRIES: dict = {}  # key -> list of entries


class CachedBlocks(list):
    """Cached blocks (start, stop, col_start, part index, block): a list that can be weakly referenced."""


def _key(op):
    shapes = tuple((tuple(a.shape), a.dtype, a.device) for a in op._args)
    return (type(op), shapes, op.x1_eq_x2, op._kwargs["evaluator"].key(), id(op._kwargs.get("sharding")))


def _same(kept, a) -> bool:
    return kept is not None and (kept is a or torch.equal(kept, a))


def find(op):
    """The matrix (or CachedBlocks) an operator of equal points and variances evaluated, if one is alive, else
    None."""
    for entry in _ENTRIES.get(_key(op), ()):
        dense = entry["strong"] if entry["strong"] is not None else entry["weak"]()
        if dense is not None and all(_same(ref(), a) for ref, a in zip(entry["args"], op._args)):
            return dense
    return None


def keep(op, dense) -> None:
    """Files the matrix `op` evaluated for operators of equal points and variances."""
    key = _key(op)
    entries = _ENTRIES.setdefault(key, [])

    def forget(_ref, key=key):
        left = [e for e in _ENTRIES.get(key, ()) if e["weak"] is not _ref]
        if left:
            _ENTRIES[key] = left
        else:
            _ENTRIES.pop(key, None)

    entry = {"strong": dense, "weak": weakref.ref(dense, forget), "args": [weakref.ref(a) for a in op._args]}

    def release(_ref, entry=entry):  # the maker's tensors are gone: keep the matrix only while operators hold it
        entry["strong"] = None

    entry["lifetime"] = [weakref.ref(a, release) for a in op._args]
    entries.append(entry)


def entries() -> int:
    """The number of matrices filed now (for tests)."""
    return sum(len(v) for v in _ENTRIES.values())
