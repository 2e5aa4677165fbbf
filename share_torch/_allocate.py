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

Mixed storage adds a precision per basis column: a new component enters in int4 (half the bytes of
int8) and a later move may promote it to int8. Rounding a basis column p with relative squared error
``delta_p`` (measured on the complete bases, per column and precision) costs about ``delta_p`` times the
energy that column carries, so the table then predicts ``sum_{p, q} M[p, q] (1 - delta_B[p] - delta_A[q])``
over the kept (p, q). With ``delta`` about 2e-2 in int4 and 5e-5 in int8 (the medians over the example
adapters' bases: 1.8e-2 and 5.3e-5), a column is worth promoting only
where it carries far more energy than the next component would add; that is, int8 for the leading
components and int4 for the tail, as rate-distortion theory would have it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

_HEADER_ENTRY = 60  # bytes of one safetensors header entry besides its key: dtype, shape, offsets, quotes
MAX_COMPONENTS = 1024  # per side: the gain table is (q_B, q_A) float64 per module, so it is capped


State = tuple[int, int, int, int]  # (k_B, k_A, int4 columns of B, int4 columns of A)


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
    noise_b: torch.Tensor | None = None  # mixed storage: (2, q_B) relative squared rounding error per basis
    noise_a: torch.Tensor | None = None  # column, row 0 in int8, row 1 in int4 (None: not mixed)

    @property
    def q(self) -> tuple[int, int]:
        return int(self.prefix.shape[0]) - 1, int(self.prefix.shape[1]) - 1

    @property
    def mixed(self) -> bool:
        return self.noise_b is not None

    def captured(self, state: State) -> float:
        """Weighted squared dW captured by the leading (k_B, k_A) components, the last (kb4, ka4) of each side in
        int4 (mixed storage: less each column's rounding error; otherwise exact)."""
        kb, ka, kb4, ka4 = state
        if self.noise_b is None or self.noise_a is None:
            return float(self.prefix[kb, ka])
        db = torch.cat([self.noise_b[0, :kb - kb4], self.noise_b[1, kb - kb4:kb]])
        da = torch.cat([self.noise_a[0, :ka - ka4], self.noise_a[1, ka - ka4:ka]])
        rows = self.prefix[1:kb + 1, ka] - self.prefix[:kb, ka]  # what each kept B column carries
        cols = self.prefix[kb, 1:ka + 1] - self.prefix[kb, :ka]
        return float(self.prefix[kb, ka] - db @ rows - da @ cols)

    @property
    def total(self) -> float:
        return float(self.prefix[-1, -1])

    def nbytes(self, state: State, itemsize: int) -> int:
        """Bytes of this group at (k_B, k_A) (the last (kb4, ka4) basis columns in int4), in the cheaper
        per-adapter form when allowed: tensor payload plus an estimate of each tensor's safetensors header
        entry (two per adapter for loadings, one for a core), so that switching forms is priced right with
        many adapters."""
        kb, ka, kb4, ka4 = state
        entry = len(self.module) + _HEADER_ENTRY
        scale = 4 if itemsize == 1 else 0  # int8 storage: one float32 scale per column of each tensor
        basis = (self.d_out * (kb - kb4) + self.d_in * (ka - ka4)) * itemsize + (kb + ka) * scale
        basis += (self.d_out + 1) // 2 * kb4 + (self.d_in + 1) // 2 * ka4 + _HEADER_ENTRY * ((kb4 > 0) + (ka4 > 0))
        loadings = sum(self.ranks) * ((kb + ka) * itemsize + 2 * scale) + 2 * entry * len(self.ranks)
        if self.centered or self.per_adapter == "loadings" or kb == 0 or ka == 0:
            return basis + loadings
        core = len(self.ranks) * (kb * ka * itemsize + ka * scale + entry)
        return basis + (core if self.per_adapter == "core" else min(core, loadings))


def gain_table(module: str, d_out: int, d_in: int, ranks: Sequence[int], cores_squared: torch.Tensor,
               per_adapter: str, noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> GroupTable:
    """Prefix sums of ``M`` (q_B, q_A): the weighted squared cores summed over adapters; with mixed storage,
    `noise` gives each side's (2, q) relative squared rounding errors per column (int8, int4)."""
    m = cores_squared.to("cpu", torch.float64)
    prefix = torch.zeros(m.shape[0] + 1, m.shape[1] + 1, dtype=torch.float64)
    prefix[1:, 1:] = m.cumsum(0).cumsum(1)
    noise_b, noise_a = (None, None) if noise is None else (x.to("cpu", torch.float64) for x in noise)
    return GroupTable(module, d_out, d_in, list(ranks), prefix, per_adapter, noise_b=noise_b, noise_a=noise_a)


def _start(table: GroupTable, int4: bool) -> State:
    qb, qa = table.q
    kb, ka = min(1, qb), min(1, qa)
    return (kb, ka, kb, ka) if int4 else (kb, ka, 0, 0)  # with int4: a new component enters in int4


def _moves(table: GroupTable, state: State, int4: bool) -> list[State]:
    kb, ka, kb4, ka4 = state
    qb, qa = table.q
    grow = [(nb, na) for nb, na in ((kb + 1, ka), (kb, ka + 1), (kb + 1, ka + 1)) if nb <= qb and na <= qa]
    if not int4:
        return [(nb, na, kb4, ka4) for nb, na in grow]
    moves = [(nb, na, kb4 + nb - kb, ka4 + na - ka) for nb, na in grow]
    if kb4:
        moves.append((kb, ka, kb4 - 1, ka4))  # promote the leading int4 column of B to int8
    if ka4:
        moves.append((kb, ka, kb4, ka4 - 1))
    return moves


def _best_move(table: GroupTable, state: State, itemsize: int, int4: bool,
               room: float = math.inf) -> tuple[float, State, float, int] | None:
    """(-gain per byte, new state, gain, added bytes) of the best next move costing at most `room` bytes, or
    None when none is left."""
    here_bytes, here = table.nbytes(state, itemsize), table.captured(state)
    best = None
    for new in _moves(table, state, int4):
        cost = table.nbytes(new, itemsize) - here_bytes
        if cost > room:
            continue
        gain = table.captured(new) - here
        key = -gain / cost if cost > 0 else -math.inf  # cheaper and better (a group switching to cores)
        if best is None or key < best[0]:
            best = (key, new, gain, cost)
    return best


def allocate(tables: Sequence[GroupTable], *, itemsize: int, num_adapters: int, budget: int | None = None,
             max_error: float | None = None, int4: bool | None = None) -> tuple[dict[str, State], dict[str, float]]:
    """Greedy (k_B, k_A) per module (and, in mixed storage, how many of them in int4) under a byte budget
    (tensor payload) or a predicted error target.

    With `max_error`, the greedy stops once the predicted mean squared relative dW error over adapters
    reaches ``max_error**2`` (the caller checks every adapter's actual error afterwards). In mixed storage the
    greedy runs twice, with int4 columns and with int8 ones only, and the better result is kept (a greedy
    with more choices is not always better); `int4` True or False runs only that one.

    Returns:
        ``{module: (k_B, k_A, int4 columns of B, int4 columns of A)}`` and figures: ``"payload"`` bytes,
        ``"predicted_rms_error"``.
    """
    mixed = bool(tables) and tables[0].mixed
    choices = ((True, False) if mixed else (False,)) if int4 is None else (int4 and mixed,)
    # int8 columns only: the tables as int8 storage has them (no rounding terms), so the same allocation
    plain = [replace(t, noise_b=None, noise_a=None) for t in tables]
    runs = [_greedy(tables if choice else plain, itemsize, num_adapters, budget, max_error, choice)
            for choice in choices]
    if budget is not None:  # (a run's starting point may already be over a budget as small as the int4 floor)
        runs = [r for r in runs if r[1] <= budget] or runs
    if max_error is not None:  # the cheapest run that reaches the target, else the closest
        target = max_error ** 2 * num_adapters
        state, payload, residual = min(runs, key=lambda r: (r[2] > target, r[1] if r[2] <= target else r[2]))
    else:
        state, payload, residual = min(runs, key=lambda r: r[2])
    rms = (max(residual, 0.0) / num_adapters) ** 0.5 if num_adapters else 0.0
    return state, {"payload": payload, "predicted_rms_error": rms}


def _greedy(tables: Sequence[GroupTable], itemsize: int, num_adapters: int, budget: int | None,
            max_error: float | None, int4: bool) -> tuple[dict[str, State], int, float]:
    state = {t.module: _start(t, int4) for t in tables}
    by_name = {t.module: t for t in tables}
    payload = sum(t.nbytes(state[t.module], itemsize) for t in tables)
    residual = sum(t.total - t.captured(state[t.module]) for t in tables)
    target = None if max_error is None else (max_error ** 2) * num_adapters
    heap = []
    for t in tables:
        move = _best_move(t, state[t.module], itemsize, int4)
        if move is not None:
            heapq.heappush(heap, (move[0], t.module, move))
    while heap:
        if target is not None and residual <= target:
            break
        _, module, (_, new, gain, cost) = heapq.heappop(heap)
        if budget is not None and payload + cost > budget:
            # this move no longer fits: the group's best move that does (a cheaper one) may, else it is done
            move = _best_move(by_name[module], state[module], itemsize, int4, room=budget - payload)
            if move is not None:
                heapq.heappush(heap, (move[0], module, move))
            continue
        state[module] = new
        payload += cost
        residual -= gain
        move = _best_move(by_name[module], new, itemsize, int4)
        if move is not None:
            heapq.heappush(heap, (move[0], module, move))
    return state, payload, residual


def full_state(table: GroupTable) -> State:
    """Every component, all in int8 (the most a group can store)."""
    return (*table.q, 0, 0)


def smallest_payload(tables: Sequence[GroupTable], itemsize: int, int4: bool | None = None) -> int:
    """Payload of the allocation's starting point: with int4 columns where the storage is mixed (or as `int4`
    says)."""
    return sum(t.nbytes(_start(t, t.mixed if int4 is None else int4 and t.mixed), itemsize) for t in tables)


def full_payload(tables: Sequence[GroupTable], itemsize: int) -> int:
    return sum(t.nbytes(full_state(t), itemsize) for t in tables)
