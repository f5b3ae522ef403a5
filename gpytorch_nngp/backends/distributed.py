"""Row sharding of the kernel operators: over the ranks of a torch.distributed process group, or over devices.

An exact GP's kernel matrix splits by rows. Rank r of p owns a contiguous range of rows and never holds more than
its share of the matrix (kept while it fits the operator's cache, else recomputed block by block):

- a symmetric K(x, x) is evaluated as its upper triangle, each row from the diagonal on, and the rows are split so
  that every rank holds 1/p of the triangle (about n^2 / (2 p) entries). A product K V with an (n, t) right-hand
  side is each rank's blocks times V, plus their mirror images times V, summed over the ranks by one all-reduce;
- a rectangular K(x*, x) splits its rows evenly (n m / p entries a rank); a product is the local rows' product and
  one all-gather;
- the derivative of sum(U^T K V) wrt the kernel's tensors is the local rows' derivative and one all-reduce;
- the diagonal and single entries (pivoted Cholesky) are O(n) and computed on every rank without communication.

CG, Lanczos and the preconditioner then run unchanged and in lockstep on every rank: every rank passes the same
inputs, so the iterates are the same everywhere. That is checked, not assumed: the kernel compares fingerprints of
its inputs across ranks when it is called, and every gathered product carries a fingerprint of its right-hand side
(different random probes, for instance from unequal seeds, are caught there). Every collective waits at most
`timeout` seconds, so a rank that failed or stopped gives an error on the others instead of a hang.

`DeviceSharding` splits the rows over several devices inside one process (several GPUs without torch.distributed):
each device computes its rows' blocks, and the pieces are concatenated on the device of the right-hand side.
"""
from __future__ import annotations

import datetime
import math
from typing import List, Optional, Sequence, Tuple

import torch

Part = Tuple[int, int, Optional[torch.device]]


def even_rows(n: int, parts: int, index: int) -> Tuple[int, int]:
    """Rows [start, stop) of part `index` of `parts` (sizes differ by at most one; any n, also n < parts)."""
    return index * n // parts, (index + 1) * n // parts


def triangle_rows(n: int, parts: int, index: int) -> Tuple[int, int]:
    """Rows [start, stop) of part `index` of `parts` of an n x n upper triangle (row i holds n - i entries), cut
    where the entries above the cut first reach index / parts of all n (n + 1) / 2."""

    def cut(k):
        if k >= parts:
            return n
        target = k * n * (n + 1) / (2 * parts)
        # entries in rows [0, a): a n - a (a - 1) / 2; the smallest a reaching the target, from the quadratic
        a = int(max(0.0, (2 * n + 1 - math.sqrt(max((2 * n + 1) ** 2 - 8 * target, 0.0))) / 2))
        while a > 0 and (a - 1) * n - (a - 1) * (a - 2) / 2 >= target:
            a -= 1
        while a < n and a * n - a * (a - 1) / 2 < target:
            a += 1
        return a

    return cut(index), cut(index + 1)


def fingerprint(tensor: Optional[torch.Tensor]) -> torch.Tensor:
    """Four float64 numbers that differ, in practice, between tensors of different shape or values: the size, the
    sum, the sum of squares and a sum weighted by cos(position). (4,), on the tensor's device."""
    if tensor is None:
        return torch.zeros(4, dtype=torch.float64)
    t = tensor.detach().reshape(-1).to(torch.float64)
    weights = torch.arange(t.numel(), dtype=torch.float64, device=t.device).mul_(0.7548776662).cos_()
    return torch.stack([torch.tensor(float(t.numel()), dtype=torch.float64, device=t.device), t.sum(),
                        t.square().sum(), t.dot(weights)])


class RowSharding:
    """How a kernel operator's rows are split. Subclasses: ProcessGroupSharding, DeviceSharding."""

    def parts(self, n: int, triangle: bool = False) -> List[Part]:
        """The row ranges [start, stop) this process computes, each with its device (None: the inputs' device);
        triangle: rows of a symmetric matrix's upper triangle, cut into parts of equal area."""
        raise NotImplementedError

    def gather(self, pieces: List[torch.Tensor], n: int, check: torch.Tensor) -> torch.Tensor:
        """The full (..., n, t) result from this process's pieces (one per part, (..., stop - start, t)); `check`
        is the right-hand side, which every rank must share."""
        raise NotImplementedError

    def reduce_sum(self, partials: List[torch.Tensor], check: torch.Tensor) -> torch.Tensor:
        """The sum of the (..., n, t) partial results over this process's parts and over the processes, on the
        device of `check` (the right-hand side, which every rank must share)."""
        raise NotImplementedError

    def all_reduce(self, tensors: List[Optional[torch.Tensor]], check: Sequence[torch.Tensor]
                   ) -> List[Optional[torch.Tensor]]:
        """Each tensor summed over the processes (None stays None); `check`: tensors every rank must share."""
        raise NotImplementedError

    def check_same(self, **named: Optional[torch.Tensor]) -> None:
        """Raise ValueError, on every rank, if any of the named tensors differs between ranks."""


class DeviceSharding(RowSharding):
    """Rows split over `devices` inside one process, e.g. DeviceSharding(["cuda:0", "cuda:1"]): equal parts of the
    upper triangle of a symmetric matrix, even rows of a rectangular one.

    Each device holds a copy of the inputs and its share of the matrix; products are summed or concatenated on the
    right-hand side's device, and gradients flow back through the copies.
    """

    def __init__(self, devices: Sequence):
        if isinstance(devices, (str, torch.device)) or not len(devices):
            raise ValueError(f"devices must be a non-empty list of devices, e.g. ['cuda:0', 'cuda:1'], got {devices!r}")
        self.devices = [torch.device(d) for d in devices]

    def parts(self, n: int, triangle: bool = False) -> List[Part]:
        rows = triangle_rows if triangle else even_rows
        return [(*rows(n, len(self.devices), i), d) for i, d in enumerate(self.devices)]

    def gather(self, pieces, n, check):
        return torch.cat([p.to(check.device) for p in pieces], dim=-2)

    def reduce_sum(self, partials, check):
        out = partials[0].to(check.device)
        for p in partials[1:]:
            out = out + p.to(check.device)
        return out

    def all_reduce(self, tensors, check):
        return list(tensors)

    def __repr__(self):
        return f"DeviceSharding({[str(d) for d in self.devices]})"


class ProcessGroupSharding(RowSharding):
    """Rows split over the ranks of a torch.distributed process group (the default group unless given): equal
    parts of the upper triangle of a symmetric matrix, even rows of a rectangular one.

    Args:
        group: the process group, or None for the default one (torch.distributed.init_process_group; torchrun sets
            up its environment). Gloo on CPU, NCCL on GPU.
        timeout: seconds any collective may wait before it raises (a rank failed, stopped, or took another path).
    """

    def __init__(self, group=None, timeout: float = 300.0):
        if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.group, self.timeout = group, float(timeout)

    # -- the group ---------------------------------------------------------------------------------------------
    def _dist(self):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "backend='distributed' needs an initialized torch.distributed process group: launch with torchrun "
                "and call torch.distributed.init_process_group('gloo' or 'nccl') before evaluating the kernel, or "
                "use backend='lazy' in a single process")
        return dist

    def rank_and_size(self) -> Tuple[int, int]:
        dist = self._dist()
        return dist.get_rank(self.group), dist.get_world_size(self.group)

    def _wire(self, t: torch.Tensor) -> torch.Tensor:
        """Where a collective's buffer must live: CPU for gloo, a GPU for NCCL (the current one for CPU tensors)."""
        dist = self._dist()
        if dist.get_backend(self.group) == "gloo":
            return t.cpu()
        if t.device.type == "cpu" and torch.cuda.is_available():
            return t.to(torch.device("cuda", torch.cuda.current_device()))
        return t

    def _wait(self, work, what: str) -> None:
        rank, size = self.rank_and_size()
        try:
            work.wait(timeout=datetime.timedelta(seconds=self.timeout))
        except RuntimeError as error:
            raise RuntimeError(
                f"rank {rank} of {size}: {what} did not complete ({error}; each collective waits at most "
                f"{self.timeout:g} s). Another rank failed, stopped, or evaluated the kernel on other data or in "
                "another order; every rank must run the same model code on the same inputs") from error

    def _all_gather(self, flat: torch.Tensor, what: str) -> List[torch.Tensor]:
        dist = self._dist()
        _, size = self.rank_and_size()
        flat = self._wire(flat.contiguous())
        out = [torch.empty_like(flat) for _ in range(size)]
        self._wait(dist.all_gather(out, flat, group=self.group, async_op=True), what)
        return out

    def _agree(self, what: str, tensors: Sequence[Optional[torch.Tensor]], names: Sequence[str]) -> None:
        prints = torch.stack([fingerprint(t).cpu() for t in tensors])
        gathered = self._all_gather(prints, what)
        for other in gathered:
            differs = (other != self._wire(prints)).any(dim=-1)
            if differs.any():
                bad = [name for name, d in zip(names, differs.tolist()) if d]
                raise ValueError(
                    f"ranks passed different {', '.join(bad)} to {what}: with backend='distributed' every rank "
                    "must evaluate the kernel on the same inputs and variances, in the same order (and seed torch "
                    "identically on every rank, torch.manual_seed, so that GPyTorch's random probes agree)")

    # -- RowSharding -------------------------------------------------------------------------------------------
    def parts(self, n: int, triangle: bool = False) -> List[Part]:
        rank, size = self.rank_and_size()
        return [(*(triangle_rows if triangle else even_rows)(n, size, rank), None)]

    def gather(self, pieces, n, check):
        (piece,) = pieces
        rank, size = self.rank_and_size()
        rows = -(-n // size)  # the largest share: every rank sends as many numbers
        batch, t = piece.shape[:-2], piece.shape[-1]
        padded = piece.new_zeros(*batch, rows, t)
        padded[..., :piece.shape[-2], :] = piece
        flat = torch.cat([padded.reshape(-1), fingerprint(check).to(piece)])
        gathered = self._all_gather(flat, "a kernel product (all-gather)")
        mine = self._wire(flat[-4:])
        shares = []
        for r, other in enumerate(gathered):
            if not torch.equal(other[-4:], mine):
                raise ValueError(
                    f"rank {rank} of {size}: rank {r} multiplied the kernel with a different right-hand side. With "
                    "backend='distributed' every rank must run the same computation in lockstep; seed torch "
                    "identically on every rank (torch.manual_seed) so that GPyTorch's random probes agree")
            start, stop = even_rows(n, size, r)
            shares.append(other[:-4].view(*batch, rows, t)[..., :stop - start, :])
        return torch.cat(shares, dim=-2).to(piece.device)

    def reduce_sum(self, partials, check):
        dist = self._dist()
        (partial,) = partials
        self._agree("a kernel product (all-reduce)", [check], ["right-hand sides"])
        flat = self._wire(partial.contiguous())
        self._wait(dist.all_reduce(flat, group=self.group, async_op=True), "a kernel product (all-reduce)")
        return flat.to(check.device)

    def all_reduce(self, tensors, check):
        dist = self._dist()
        self._agree("a kernel gradient (all-reduce)", list(check), [f"gradient weights {i}" for i in range(len(check))])
        present = [t for t in tensors if t is not None]
        if not present:
            return list(tensors)
        flat = self._wire(torch.cat([t.reshape(-1) for t in present]))
        self._wait(dist.all_reduce(flat, group=self.group, async_op=True), "a kernel gradient (all-reduce)")
        flat = flat.to(present[0].device)
        out, offset = [], 0
        for t in tensors:
            if t is None:
                out.append(None)
                continue
            out.append(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
            offset += t.numel()
        return out

    def check_same(self, **named):
        self._agree("the kernel", list(named.values()), list(named))

    def __repr__(self):
        return f"ProcessGroupSharding(timeout={self.timeout:g})"


def make_sharding(backend) -> Optional[RowSharding]:
    """The RowSharding a kernel's `backend` asks for: "distributed" is the default process group; a RowSharding is
    itself; anything else None."""
    if isinstance(backend, RowSharding):
        return backend
    if backend == "distributed":
        return ProcessGroupSharding()
    return None
