"""Choosing (k_B, k_A) per module to meet a byte budget or an error target, not one k everywhere.

For one module, with complete bases U (d_out, q_B) and V (d_in, q_A) of the stacked columns, every
adapter's update is ``dW_i = U C_i V^T`` with ``C_i = (U^T B_i)(A_i V)``; keeping the leading k_B and
k_A components leaves the error ``||dW_i||^2 - sum_{p<k_B, q<k_A} C_i[p, q]^2``. Weighting adapter i by
``1 / ||dW_i||^2`` (its squared norm over all modules) makes the sum over modules and adapters the sum
of squared relative dW errors, which is what the summary reports. So one matrix per module,
``M = sum_i w_i C_i**2``, and its 2-D prefix sums give the error of any (k_B, k_A) exactly (in
exact arithmetic, before storage rounding and without refinement).

The allocation is greedy on error removed per byte added: moves of +1 on one side or on both (the
first components of one side help little while the other side is narrow, so a joint move is
offered too).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_HEADER_ENTRY = 60  # bytes of one safetensors header entry besides its key: dtype, shape, offsets, quotes
MAX_COMPONENTS = 1024  # per side: the gain table is (q_B, q_A) float64 per module, so it is capped


@dataclass
class GroupTable:
    """What the allocation knows of one module."""

    module: str
    d_out: int
    d_in: int
    ranks: Sequence[int]         # LoRA rank of each adapter in this module
    prefix: torch.Tensor         # (q_B + 1, q_A + 1) float64: prefix[i, j] = sum of M[:i, :j]
    per_adapter: str             # "loadings" | "core" | "auto"
    centered: bool = False

    @property
    def q(self) -> tuple[int, int]:
        return int(self.prefix.shape[0]) - 1, int(self.prefix.shape[1]) - 1

    def captured(self, kb: int, ka: int) -> float:
        return float(self.prefix[kb, ka])

    @property
    def total(self) -> float:
        return float(self.prefix[-1, -1])

    def nbytes(self, kb: int, ka: int, itemsize: int) -> int:
        """Bytes of this group at (k_B, k_A), in the cheaper per-adapter form when allowed: tensor payload
        plus an estimate of each tensor's safetensors header entry (two per adapter for loadings, one for a
        core), so that switching forms is priced right with many adapters."""
        entry = len(self.module) + _HEADER_ENTRY
        scale = 4 if itemsize == 1 else 0  # int8 storage: one float32 scale per column of each tensor
        basis = (self.d_out * kb + self.d_in * ka) * itemsize + (kb + ka) * scale
        loadings = sum(self.ranks) * ((kb + ka) * itemsize + 2 * scale) + 2 * entry * len(self.ranks)
        if self.centered or self.per_adapter == "loadings" or kb == 0 or ka == 0:
            return basis + loadings
        core = len(self.ranks) * (kb * ka * itemsize + ka * scale + entry)
        return basis + (core if self.per_adapter == "core" else min(core, loadings))


def gain_table(module: str, d_out: int, d_in: int, ranks: Sequence[int], cores_squared: torch.Tensor,
               per_adapter: str) -> GroupTable:
    """Prefix sums of ``M`` (q_B, q_A): the weighted squared cores summed over adapters."""
    m = cores_squared.to("cpu", torch.float64)
    prefix = torch.zeros(m.shape[0] + 1, m.shape[1] + 1, dtype=torch.float64)
    prefix[1:, 1:] = m.cumsum(0).cumsum(1)
    return GroupTable(module, d_out, d_in, list(ranks), prefix, per_adapter)


def _start(table: GroupTable) -> tuple[int, int]:
    qb, qa = table.q
    return min(1, qb), min(1, qa)


def _best_move(table: GroupTable, kb: int, ka: int, itemsize: int) -> tuple[float, int, int, float, int] | None:
    """(-gain per byte, new kb, new ka, gain, added bytes) of the best next move, or None at full rank."""
    qb, qa = table.q
    here_bytes, here = table.nbytes(kb, ka, itemsize), table.captured(kb, ka)
    best = None
    for nb, na in ((kb + 1, ka), (kb, ka + 1), (kb + 1, ka + 1)):
        if nb > qb or na > qa:
            continue
        gain = table.captured(nb, na) - here
        cost = table.nbytes(nb, na, itemsize) - here_bytes
        key = -gain / cost if cost > 0 else -math.inf  # cheaper and better (a group switching to cores)
        if best is None or key < best[0]:
            best = (key, nb, na, gain, cost)
    return best


def allocate(tables: Sequence[GroupTable], *, itemsize: int, num_adapters: int, budget: int | None = None,
             max_error: float | None = None) -> tuple[dict[str, tuple[int, int]], dict[str, float]]:
    """Greedy (k_B, k_A) per module under a byte budget (tensor payload) or a predicted error target.

    With `max_error`, the greedy stops once the predicted mean squared relative dW error over adapters
    reaches ``max_error**2`` (the caller checks every adapter's actual error afterwards).

    Returns:
        ``{module: (k_B, k_A)}`` and figures: ``"payload"`` bytes, ``"predicted_rms_error"``.
    """
    state = {t.module: _start(t) for t in tables}
    by_name = {t.module: t for t in tables}
    payload = sum(t.nbytes(*state[t.module], itemsize) for t in tables)
    residual = sum(t.total - t.captured(*state[t.module]) for t in tables)
    target = None if max_error is None else (max_error ** 2) * num_adapters
    heap = []
    for t in tables:
        move = _best_move(t, *state[t.module], itemsize)
        if move is not None:
            heapq.heappush(heap, (move[0], t.module, move))
    while heap:
        if target is not None and residual <= target:
            break
        _, module, (_, nb, na, gain, cost) = heapq.heappop(heap)
        if budget is not None and payload + cost > budget:
            continue  # this group's next step does not fit; others (cheaper) may
        state[module] = (nb, na)
        payload += cost
        residual -= gain
        move = _best_move(by_name[module], nb, na, itemsize)
        if move is not None:
            heapq.heappush(heap, (move[0], module, move))
    rms = (max(residual, 0.0) / num_adapters) ** 0.5 if num_adapters else 0.0
    return state, {"payload": payload, "predicted_rms_error": rms}


def smallest_payload(tables: Sequence[GroupTable], itemsize: int) -> int:
    return sum(t.nbytes(*_start(t), itemsize) for t in tables)


def full_payload(tables: Sequence[GroupTable], itemsize: int) -> int:
    return sum(t.nbytes(*t.q, itemsize) for t in tables)
