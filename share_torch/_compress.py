"""Orchestration of one compression: which factors are read when, in which chunks, on which device.

The math is share_core's; this module only decides the order of the work so that memory stays bounded:

- ``layer_by_layer=False`` reads every adapter's LoRA factors once, up front (one pass over each file);
- ``layer_by_layer=True`` reads one (module) group of all adapters at a time, each factor by its own byte
  range of its file (``share_hf._io.read_safetensors_ranges``), so peak memory is one group plus the output;
- ``chunk_size=N`` fits each group's basis N adapters at a time and merges the chunks' thin SVDs exactly
  (`share_core.merge_bases`), then projects each chunk on the final basis.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import share_core as core
from share_core._basis import gram_fit, gram_leading
from share_core._core_form import factor_core
from share_core._factors import dw_errors_and_norms, fold_factors
from share_core._linalg import qr, r_factor  # (scaled first on GPUs, whose QRs square entries unscaled)
from share_core._refine import refine_stacks, stacked_columns
from share_core.errors import InvalidArgumentError
from share_hf.adapters import AdapterSource
from share_hf._quant import fake_quantize

SIDES = ("lora_A", "lora_B")

#: Adapters per batched LAPACK call (balancing, dW errors): enough to amortize the call, few enough that the
#: temporaries stay small next to the data (1000 Llama-7B-shaped adapters of one module are 0.5 GB in float32).
BLOCK = 64

#: Storage "dtype" of mixed int8 + int4 storage: each group side's leading basis columns in int8, the rest in
#: int4 (as many as the allocation chose); means, loadings and cores in int8.
MIXED = "mixed"

Storage = torch.dtype | str  # a torch dtype, or MIXED


def storage_itemsize(storage: Storage) -> int:
    """Bytes per stored number (int8 for mixed storage: its int4 columns are priced by the allocation)."""
    return 1 if storage == MIXED else torch.empty((), dtype=storage).element_size()


def int4_after(k_before: int, int4_before: int, k: int) -> int:
    """A side's int4 columns once its basis of `k_before` columns (the last `int4_before` in int4) has `k`:
    its int8 columns stay int8 (as many as still exist)."""
    return k - min(k_before - int4_before, k) if int4_before else 0

Folded = tuple[torch.Tensor, torch.Tensor]  # (A (r, d_in), B (d_out, r)) with sqrt(scale) folded into each


def columns(folded: Sequence[Folded], side: str) -> list[torch.Tensor]:
    """The stacked columns of one side: A^T (d_in, r) or B (d_out, r) per adapter."""
    return [a.mT if side == "lora_A" else b for a, b in folded]


FACTOR_FORMS = ("scaled", "balanced")
PER_ADAPTER_FORMS = ("loadings", "core", "auto")


def fold(a: torch.Tensor, b: torch.Tensor, scale: float, device: torch.device, dtype: torch.dtype,
         factor_form: str = "scaled") -> Folded:
    """Move one module's factors to the compute device and dtype once, and fold the scale in.

    ``"scaled"`` keeps PEFT's own B/A split (sqrt(scale) on each side); ``"balanced"`` re-factors
    ``scale * B A`` as ``(U S^1/2, S^1/2 V^T)`` with r-sized work, so the stacked columns no longer
    depend on the arbitrary split between B and A.
    """
    a, b = a.to(device, dtype), b.to(device, dtype)
    if factor_form == "balanced":
        b, a = core.balance(b, a, scale=scale)
    else:
        b, a = core.fold_scale(b, a, scale=scale)
    return a, b


@dataclass
class Reader:
    """Reads folded factors of (adapter, module), from a preloaded dict or lazily from the files."""

    device: torch.device
    dtype: torch.dtype
    preloaded: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] | None = None
    factor_form: str = "scaled"

    @classmethod
    def for_sources(cls, sources: Sequence[AdapterSource], modules: Sequence[str], *, layer_by_layer: bool,
                    device: torch.device, dtype: torch.dtype, wrap: Callable = iter,
                    factor_form: str = "scaled") -> Reader:
        if layer_by_layer:
            return cls(device, dtype, None, factor_form)
        preloaded = {}
        for src in wrap(sources):  # one opening of each adapter file
            for module, factors in src.load_all_factors(modules).items():
                preloaded[(src.name, module)] = factors
        return cls(device, dtype, preloaded, factor_form)

    def many(self, sources: Sequence[AdapterSource], module: str) -> list[Folded]:
        """Folded factors of one module for several adapters; balanced in batches of equal rank. Read from
        the files (`layer_by_layer`), they are read BLOCK adapters at a time, so that the files' own copies of
        the factors never all sit in memory beside the folded ones."""
        if self.preloaded is None and len(sources) > BLOCK:
            return [f for part in chunks(sources, BLOCK) for f in self.many(part, module)]
        raw = [self.preloaded[(src.name, module)] if self.preloaded is not None else src.load_factors(module)
               for src in sources]
        scales = [src.modules[module].scale for src in sources]
        if self.factor_form != "balanced":
            return [fold(a, b, s, self.device, self.dtype, self.factor_form) for (a, b), s in zip(raw, scales)]
        out: list[Folded | None] = [None] * len(raw)
        by_rank: dict[int, list[int]] = {}
        for i, (a, _) in enumerate(raw):
            by_rank.setdefault(int(a.shape[0]), []).append(i)
        for r, same in by_rank.items():
            a, b = raw[same[0]]
            if len(same) == 1 or r > min(int(a.shape[1]), int(b.shape[0])):
                for i in same:
                    out[i] = fold(*raw[i], scales[i], self.device, self.dtype, "balanced")
                continue
            for idx in chunks(same, BLOCK):  # bounded temporaries (QR factors, products) whatever the count
                a = torch.stack([raw[i][0] for i in idx]).to(self.device, self.dtype)
                b = torch.stack([raw[i][1] for i in idx]).to(self.device, self.dtype)
                s = torch.tensor([scales[i] for i in idx], dtype=self.dtype, device=self.device)
                a_bal, b_bal = balance_batch(a, b, s)
                for j, i in enumerate(idx):
                    out[i] = (a_bal[j], b_bal[j])
        return out


def balance_batch(a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`share_core.balance` of N same-rank pairs at once: a (N, r, d_in), b (N, d_out, r), r <= d_in, d_out.

    The same r-sized work (two reduced QRs, one r x r SVD per pair) as batched LAPACK calls, and the same
    sign rule (the entry of largest magnitude of each column of B' is positive)."""
    if not bool(torch.isfinite(a.sum() + b.sum())) and not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        # (a finite sum proves every entry finite; only a non-finite one is checked entry by entry)
        raise InvalidArgumentError("a LoRA factor holds NaN or infinity; the adapter weights are corrupt")
    xp = core.array_namespace(b)
    qb, rb = qr(b, "balance", xp)
    qa, ra = qr(a.mT, "balance", xp)
    uk, sk, vhk = torch.linalg.svd((rb @ ra.mT) * scales[:, None, None])
    root = torch.sqrt(sk)
    b_bal = (qb @ uk) * root[:, None, :]
    a_bal = root[:, :, None] * (vhk @ qa.mT)
    picked = torch.gather(b_bal, 1, b_bal.abs().argmax(dim=1, keepdim=True))  # (N, 1, r)
    signs = torch.where(picked < 0, -1.0, 1.0).to(b_bal.dtype)
    return a_bal * signs.mT, b_bal * signs


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the C heap's freed pages back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    One module of many adapters allocates hundreds of MB in pieces of a few hundred KB (one per adapter and
    side) and frees them again; glibc keeps such freed pieces, and the small tensors kept for the output
    (loadings) pin the pages between them. Measured on 1000 Llama-7B-shaped adapters under `layer_by_layer`,
    the resident memory after each module grew by about 90 MB per module without this, and by the output's
    few MB with it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


#: Bytes of modules (their folded factors in the compute dtype) finished between two calls of
#: :func:`release_freed_memory` under `layer_by_layer`.
TRIM_EVERY_BYTES = 256 * 2**20


class FreedMemory:
    """:func:`release_freed_memory` once every :data:`TRIM_EVERY_BYTES` of finished modules (thread-safe).

    A trim after every module costs more than it saves where modules are small: the next module's temporaries
    fault their pages back in one by one. Measured on 8 Llama-7B-shaped adapters under `layer_by_layer` (4 MB of
    folded factors per module, 2 module threads): 2.0-2.4 million page faults and 5.5-6.3 s of system time with a
    trim after each of the 128 modules, 0.57-0.67 million and 1.6-1.7 s with none. A module of 1000 such
    adapters (512 MB) is still followed by a trim, so the bound on resident memory is unchanged there."""

    def __init__(self, every: int | None = None):
        self.every = TRIM_EVERY_BYTES if every is None else every
        self._pending = 0
        self._lock = threading.Lock()

    def finished(self, module_bytes: int) -> None:
        with self._lock:
            self._pending += module_bytes
            if self._pending < self.every:
                return
            self._pending = 0
        release_freed_memory()

    def flush(self) -> None:
        """A last trim when modules finished since the previous one (the end of the run)."""
        with self._lock:
            if not self._pending:
                return
            self._pending = 0
        release_freed_memory()


def chunks(items: Sequence, size: int | None) -> Iterator[Sequence]:
    size = len(items) if size is None else size
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass
class SideFit:
    basis: torch.Tensor | None   # (d, q) in compute dtype: every component up to the rank (or k); None: see gram
    mean: torch.Tensor | None    # (d,)
    energies: torch.Tensor       # (rank,) squared singular values of the (centered) stack
    columns: int                 # stacked columns
    gram: tuple | None = None    # (w, p, c, y) of the stack's Gram matrix (y: the stack scaled, widened), when the
                                 # basis comes from it ...
    stack: torch.Tensor | None = None  # ... and the (d, n) stack (to form the basis only if asked; projected again)

    def leading(self, k: int) -> torch.Tensor:
        """The leading k basis columns (d, k)."""
        if self.basis is not None:
            return self.basis[:, :k]
        return gram_leading(self.stack, self.gram, k)


@dataclass
class ModuleResult:
    components: dict[str, torch.Tensor] = field(default_factory=dict)   # "<module>.<side>.basis|mean"
    loadings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    group: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, tuple[float, float]] = field(default_factory=dict)  # adapter -> (abs dW error, ||dW||)


def _merge(state: tuple | None, part: tuple) -> tuple:
    if state is None:
        return part
    u1, s1, m1, n1 = state
    u2, s2, m2, n2 = part
    if m1 is None:
        return (*core.merge_bases(u1, s1, u2, s2)[:2], None, n1 + n2)
    return core.merge_bases(u1, s1, u2, s2, mean1=m1, n1=n1, mean2=m2, n2=n2)


def _fold_in(state: tuple | None, x: torch.Tensor, *, center: bool, max_components: int | None) -> tuple:
    """Merge one chunk's stacked columns into the running (u, s, mean, n) of a side."""
    u, energies, mean = core.basis(x, center=center, max_components=max_components)
    return _merge(state, (u, torch.sqrt(energies), mean, int(x.shape[1])))


def _side_fit(state: tuple) -> SideFit:
    u, s, mean, n = state
    return SideFit(u, mean, s * s, n)


def _fit_stack(blocks: Iterator[list[torch.Tensor]], *, center: bool, max_components: int | None = None) -> SideFit:
    """Basis of column blocks arriving in chunks (exact merge of each chunk's thin SVD); `max_components` only
    with a single chunk."""
    state = None
    for cols in blocks:
        state = _fold_in(state, core.stack(cols), center=center, max_components=max_components)
    return _side_fit(state)


def fit_sides(parts: Iterator[Sequence[Folded]], *, center: bool,
              max_components: int | None = None) -> dict[str, SideFit]:
    """Both sides' bases of one module over chunks of folded factors: every component up to the rank, or
    only the leading `max_components` (one chunk only: merging chunks needs their whole spectra)."""
    states: dict[str, tuple | None] = {side: None for side in SIDES}
    fits: dict[str, SideFit] = {}
    for folded in parts:
        for side in SIDES:
            x = core.stack(columns(folded, side))
            gram = gram_fit(x, max_components=max_components) if max_components is not None and not center else None
            if gram is not None:  # one chunk, Gram route: the basis is formed only if asked for (refine does not)
                energies, factors = gram
                fits[side] = SideFit(None, None, torch.square(torch.sqrt(energies)), int(x.shape[1]), factors, x)
            else:
                states[side] = _fold_in(states[side], x, center=center, max_components=max_components)
    return {side: fits[side] if side in fits else _side_fit(state) for side, state in states.items()}


def select(fits: dict[str, SideFit], *, k: int | None, threshold: float | None) -> dict[str, int]:
    """Components kept per side by the plain rule: k (capped at the rank) or the variance threshold."""
    return {side: core.select_k(fit.energies, k=k, variance_threshold=threshold) for side, fit in fits.items()}


def store(x: torch.Tensor | None, dtype: Storage, int4_columns: int = 0) -> torch.Tensor | None:
    """`x` as stored: cast to `dtype`, or for int8 (and mixed) storage rounded to its int8 grid (kept as
    float32), its last `int4_columns` columns to their int4 grid."""
    if x is None:
        return None
    if dtype == torch.int8 or dtype == MIXED:
        x = x.to("cpu")
        if int4_columns:
            k8 = int(x.shape[1]) - int4_columns
            return torch.cat([fake_quantize(x[:, :k8]), fake_quantize(x[:, k8:], bits=4)], dim=1).contiguous()
        return fake_quantize(x).contiguous()
    return x.to("cpu", dtype).contiguous()


def restore(load: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor | None, device, dtype) -> torch.Tensor:
    """Columns rebuilt from stored (cast) tensors: what a user gets back."""
    return core.reconstruct(load.to(device, dtype), basis.to(device, dtype),
                            mean=None if mean is None else mean.to(device, dtype))


def core_loadings(core_matrix: torch.Tensor, rank: int, device, dtype) -> dict[str, torch.Tensor]:
    """Per-side loadings (k_B, r), (k_A, r) of a stored (k_B, k_A) core, factored back to rank r."""
    lb, la = factor_core(core_matrix.to(device, dtype), rank=rank)
    return {"lora_B": lb, "lora_A": la}


def as_written(a: torch.Tensor, b: torch.Tensor, scale: float, dtype: torch.dtype) -> Folded:
    """Folded factors (A^, B^) as a reconstructed adapter of `dtype` holds them: scale unfolded, cast to `dtype`
    (as `SHAREModel.reconstruct` writes them), folded again. For float16 / bfloat16 adapters that cast is part
    of the error: the factors come back in another B/A split than the original's (balanced form), so they do
    not fall on the original's grid, and rounding them costs about 2e-3 of dW in bfloat16."""
    if not _rounds_to(dtype, a.dtype):
        return a, b
    b_out, a_out = core.fold_scale(b, a, scale=1.0 / scale)
    b_back, a_back = core.fold_scale(b_out.to(dtype).to(b.dtype), a_out.to(dtype).to(a.dtype), scale=scale)
    return a_back, b_back


def _rounds_to(dtype: torch.dtype, compute: torch.dtype) -> bool:
    """Whether factors computed in `compute` are rounded when written as an adapter of `dtype` (half precision)."""
    return dtype in (torch.float16, torch.bfloat16) and dtype != compute


def _block_as_written(rows: dict[str, torch.Tensor], spans: Sequence[tuple[int, int]], scales: Sequence[float],
                      dtype: torch.dtype) -> None:
    """:func:`as_written` of a block's rebuilt factors given as rows (B^ transposed (n, d_out), A^ (n, d_in);
    adapter i in rows ``spans[i]``), all of one adapter dtype, at once and IN PLACE: the same products by the same
    float32 factors, row by row, so the same bits as adapter by adapter, in a few passes over the block instead of
    six small arrays per adapter."""
    b = rows["lora_B"]
    if not _rounds_to(dtype, b.dtype):
        return

    def per_row(values: list[float]) -> torch.Tensor:
        return torch.tensor([v for (start, end), v in zip(spans, values) for _ in range(end - start)], dtype=b.dtype,
                            device=b.device)[:, None]

    unfold = [fold_factors(1.0 / s) for s in scales]  # as written: the scale unfolded, rounded, folded again
    fold_back = [fold_factors(s) for s in scales]
    for j, x in enumerate((rows["lora_B"], rows["lora_A"])):  # (fold_factors gives B's number, then A's)
        x.mul_(per_row([f[j] for f in unfold]))
        x.copy_(x.to(dtype))
        x.mul_(per_row([f[j] for f in fold_back]))


def block_dw_errors(folded: Sequence[Folded], rebuilt: dict[str, torch.Tensor], spans: Sequence[tuple[int, int]],
                    scales: Sequence[float], dtypes: Sequence[torch.dtype]) -> list[tuple[float, float]]:
    """(||dW - dW^||_F, ||dW||_F) of a block of adapters of one module: their folded factors against the rebuilt
    ones as :func:`restore` gives them (B^ (d_out, n) and A^ transposed (d_in, n), adapter i in columns
    ``spans[i]``) and as the adapters' dtypes hold them (:func:`as_written`, with the scales).

    Where every adapter has one rank and one dtype and the spans tile the columns in order, the rebuilt columns
    are transposed once into rows (one blocked copy per side, so that each adapter's factor is contiguous for the
    error QR's input: read in place from the (d, n) columns it is strided by n, which for N = 1000 adapters' blocks
    of 64 is one page per element) and rounded there for the block at once; the same bits as pair by pair.
    Otherwise pair by pair."""
    widths = {end - start for start, end in spans}
    tiled = (spans[0][0] == 0 and all(end == start for (_, end), (start, _) in zip(spans, spans[1:]))
             and all(int(x.shape[1]) == spans[-1][1] for x in rebuilt.values()))
    if len(widths) != 1 or len(set(dtypes)) != 1 or not tiled:
        pairs = [as_written(rebuilt["lora_A"][:, start:end].mT, rebuilt["lora_B"][:, start:end], scale, dtype)
                 for (start, end), scale, dtype in zip(spans, scales, dtypes)]
        return batched_dw_errors(folded, pairs)
    r, n_items = widths.pop(), len(spans)
    rows = {side: x.mT.contiguous() for side, x in rebuilt.items()}
    _block_as_written(rows, spans, scales, dtypes[0])
    a, b = _stacked(folded)
    a_hat = rows["lora_A"].reshape(n_items, r, -1)
    b_hat = rows["lora_B"].reshape(n_items, r, -1).mT
    abs_err, norms = dw_errors_and_norms(b, a, b_hat, a_hat)
    return list(zip(abs_err.tolist(), norms.tolist()))


def dw_abs_and_norm(a: torch.Tensor, b: torch.Tensor, a_hat: torch.Tensor, b_hat: torch.Tensor) -> tuple[float, float]:
    """(||B A - B^ A^||_F, ||B A||_F) of folded factors: one pair through :func:`batched_dw_errors`."""
    return batched_dw_errors([(a, b)], [(a_hat, b_hat)])[0]


def project_pair(a: torch.Tensor, b: torch.Tensor, bases: dict[str, torch.Tensor],
                 means: dict[str, torch.Tensor | None]) -> Folded:
    """(A^, B^) of one adapter on the given bases, unrounded: ``B^ = U U^T B``, ``A^T = V V^T A^T`` (+ means)."""
    rebuilt = {}
    for side in SIDES:
        x = columns([(a, b)], side)[0]
        rebuilt[side] = core.reconstruct(core.project(x, bases[side], mean=means[side]), bases[side],
                                         mean=means[side])
    return rebuilt["lora_A"].mT, rebuilt["lora_B"]


def _stacked(pairs: Sequence[Folded]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, r, d_in) and (N, d_out, r) stacks of folded pairs, zero-padded to the largest rank (the
    products, and so the errors, are unchanged by zero columns of B and zero rows of A)."""
    r = max(int(a.shape[0]) for a, _ in pairs)
    if all(int(a.shape[0]) == r for a, _ in pairs):  # one rank: nothing to pad
        return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])
    a_stack = torch.stack([torch.nn.functional.pad(a, (0, 0, 0, r - a.shape[0])) for a, _ in pairs])
    b_stack = torch.stack([torch.nn.functional.pad(b, (0, r - b.shape[1])) for _, b in pairs])
    return a_stack, b_stack


def batched_dw_errors(pairs: Sequence[Folded], approx: Sequence[Folded]) -> list[tuple[float, float]]:
    """(||dW - dW^||_F, ||dW||_F) of many folded pairs of one module at once (`share_core.dw_errors`)."""
    out: list[tuple[float, float]] = []
    for part, part_hat in zip(chunks(pairs, BLOCK), chunks(approx, BLOCK)):  # bounded temporaries (QR factors)
        a, b = _stacked(part)
        a_hat, b_hat = _stacked(part_hat)
        abs_err, norms = dw_errors_and_norms(b, a, b_hat, a_hat)  # ||dW|| from the same QR as the error
        out += zip(abs_err.tolist(), norms.tolist())
    return out


def form_for(per_adapter: str, kb: int, ka: int, ranks: Sequence[int], centered: bool) -> str:
    """The per-adapter storage of one group: "core" ((k_B, k_A) per adapter) or "loadings" (r (k_B + k_A))."""
    if centered or per_adapter == "loadings" or kb == 0 or ka == 0:  # an all-zero side: nothing to store
        return "loadings"
    if per_adapter == "core":
        return "core"
    return "core" if len(ranks) * kb * ka < sum(ranks) * (kb + ka) else "loadings"


class Folds:
    """The folded factors of one module, chunk by chunk: kept in memory when there is one chunk, else re-read."""

    def __init__(self, module: str, sources: Sequence[AdapterSource], read: Reader, chunk_size: int | None):
        self.module, self.sources, self.read, self.chunk_size = module, sources, read, chunk_size
        self._kept: list[Folded] | None = None

    def __iter__(self) -> Iterator[tuple[Sequence[AdapterSource], list[Folded]]]:
        if self._kept is not None:
            yield self.sources, self._kept
            return
        for chunk in chunks(self.sources, self.chunk_size):
            folded = self.read.many(chunk, self.module)
            if len(chunk) == len(self.sources):
                self._kept = folded
            yield chunk, folded

    def parts(self) -> Iterator[list[Folded]]:
        return (folded for _, folded in self)

    @property
    def one_chunk(self) -> bool:
        return self.chunk_size is None or self.chunk_size >= len(self.sources)


def _refine_in_memory(folded: Sequence[Folded], u: torch.Tensor, v: torch.Tensor,
                      steps: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`share_core._refine.refine_stacks` (r-sized work, no (d, N k) SVDs) on one chunk of float32 factors with
    fewer stacked columns than either dimension; None where that route does not apply."""
    ranks = [int(a.shape[0]) for a, _ in folded]
    n, d_out, d_in = sum(ranks), int(folded[0][1].shape[0]), int(folded[0][0].shape[1])
    if u.dtype != torch.float32 or n >= min(d_out, d_in):
        return None
    xp = core.array_namespace(u)
    if len(set(ranks)) == 1:
        return refine_stacks(core.stack(columns(folded, "lora_B")), core.stack(columns(folded, "lora_A")), v,
                             len(folded), int(u.shape[1]), steps, xp)
    a, b = _stacked(folded)  # mixed ranks: zero-padded to the largest
    bs, as_ = stacked_columns(b, a, xp)
    return refine_stacks(bs, as_, v, len(folded), int(u.shape[1]), steps, xp)


def refine(folds: Folds, u: torch.Tensor, v: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternating refinement of (U, V) lowering sum_i ||dW_i - U U^T dW_i V V^T||_F^2 (never raising it).

    Given V, the best U of its width spans the top left singular vectors of ``[dW_1 V | ... | dW_N V]``
    (columns ``B_i (A_i V)``); given U, likewise V from ``[dW_i^T U]``. Each half-step solves its
    subproblem exactly, so the total error cannot increase.

    Where the refined data have fewer directions than k, k shrinks (the missing directions would only
    ever get zero loadings).
    """
    one_chunk = folds.one_chunk
    if steps and u.shape[1] and v.shape[1] and one_chunk:
        fast = _refine_in_memory(next(iter(folds.parts())), u, v, steps)
        if fast is not None:
            return fast
    for _ in range(steps):
        if u.shape[1] and v.shape[1]:
            u = _fit_stack((_narrowed(folded, v, left=True) for folded in folds.parts()), center=False,
                           max_components=u.shape[1] if one_chunk else None).basis[:, :u.shape[1]]
            v = _fit_stack((_narrowed(folded, u, left=False) for folded in folds.parts()), center=False,
                           max_components=v.shape[1] if one_chunk else None).basis[:, :v.shape[1]]
    return u, v


def _narrowed(folded: Sequence[Folded], other: torch.Tensor, *, left: bool) -> list[torch.Tensor]:
    """:func:`_narrow` of every adapter's half-step columns: ``B_i (A_i V)`` (`left`, other = V) or
    ``A_i^T (B_i^T U)``. Adapters of one rank go BLOCK at a time through one batched product and QR: one
    call per block instead of one per adapter (on a GPU, each call is a launch and a wait)."""
    ys = [b if left else a.mT for a, b in folded]
    xs = [a if left else b.mT for a, b in folded]
    if len({tuple(x.shape) for x in xs}) != 1:
        return [_narrow(y, x @ other) for y, x in zip(ys, xs)]
    out: list[torch.Tensor] = []
    for y_part, x_part in zip(chunks(ys, BLOCK), chunks(xs, BLOCK)):
        y, m = torch.stack(list(y_part)), torch.stack(list(x_part)) @ other
        out += (y @ m if m.shape[2] <= m.shape[1] else y @ r_factor(m.mT, "refine", core.array_namespace(m)).mT
                ).unbind(0)
    return out


def _narrow(y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Columns with the left singular vectors and values of ``y @ m`` ((d, r) @ (r, k)), in min(r, k) columns:
    with ``m^T = Q R``, ``(y m)(y m)^T = (y R^T)(y R^T)^T``. A refinement half-step stacks these instead of
    the (d, k) products, so its scatter (where there are more stacked columns than rows) costs r/k as much."""
    if m.shape[1] <= m.shape[0]:
        return y @ m
    return y @ r_factor(m.mT, "refine", core.array_namespace(m)).mT


def _blocks(folds: Folds) -> Iterator[tuple[Sequence[AdapterSource], list[Folded]]]:
    """(sources, folded factors) of `folds`, BLOCK adapters at a time."""
    for chunk, folded in folds:
        yield from zip(chunks(chunk, BLOCK), chunks(folded, BLOCK))


def finish_module(module: str, sources: Sequence[AdapterSource], folds: Folds, fits: dict[str, SideFit],
                  kk: dict[str, int], *, per_adapter: str, refine_steps: int, store_dtype: Storage,
                  int4: dict[str, int] | None = None) -> ModuleResult:
    """Truncate (and optionally refine) one module's bases, project every adapter, store, measure dW errors.

    With mixed storage, `int4` gives each side's basis columns stored in int4 (the last ones). The fits' Gram
    factors are dropped once the bases are made (``fits[side].gram = None``): fits are used once."""
    out = ModuleResult(loadings={s.name: {} for s in sources})
    info = sources[0].modules[module]
    centered = fits["lora_A"].mean is not None
    form = form_for(per_adapter, kk["lora_B"], kk["lora_A"], [s.modules[module].rank for s in sources], centered)
    complete = all(kk[side] >= int(fits[side].energies.shape[0]) for side in SIDES)  # exact already
    same_rank = len({s.modules[module].rank for s in sources}) == 1
    if refine_steps and not centered and not complete and same_rank and all(fits[side].gram is not None
                                                                            for side in SIDES):
        # straight from the Gram factors the bases were fitted with: the PCA bases themselves are never formed
        bases = dict(zip(("lora_B", "lora_A"), refine_stacks(
            fits["lora_B"].stack, fits["lora_A"].stack, kk["lora_A"], len(sources), kk["lora_B"], refine_steps,
            core.array_namespace(fits["lora_B"].stack), fits["lora_B"].gram, fits["lora_A"].gram)))
    else:
        bases = {side: fits[side].leading(kk[side]) for side in SIDES}
        if refine_steps and not centered and not complete:
            bases["lora_B"], bases["lora_A"] = refine(folds, bases["lora_B"], bases["lora_A"], refine_steps)
    for side in SIDES:  # spent: the Gram factors' widened stacks are not held through the projections and errors
        fits[side].gram = None
    out.group = {"d_in": info.d_in, "d_out": info.d_out, "per_adapter": form}
    stored = {}
    for side in SIDES:
        fit = fits[side]
        k4 = 0
        if store_dtype == MIXED:  # refinement may have shrunk k: the int8 columns stay int8
            k4 = int4_after(kk[side], (int4 or {}).get(side, 0), int(bases[side].shape[1]))
        basis_s, mean_s = store(bases[side], store_dtype, k4), store(fit.mean, store_dtype)
        out.components[f"{module}.{side}.basis"] = basis_s
        if mean_s is not None:
            out.components[f"{module}.{side}.mean"] = mean_s
        stored[side] = (basis_s, mean_s)
        out.group[side] = {"k": int(bases[side].shape[1]), "centered": centered, "rank": int(fit.energies.shape[0]),
                           "stacked_columns": fit.columns}
        if k4:  # (mixed storage; absent means none)
            out.group[side]["int4"] = k4
    captured = {side: 0.0 for side in SIDES}
    on_device: dict[str, tuple] = {}  # the stored bases on the compute device, moved once (not per adapter)
    for chunk, folded in _blocks(folds):  # BLOCK adapters at a time, each step one product per side for them all
        a0 = folded[0][0]
        ends = list(itertools.accumulate(int(a.shape[0]) for a, _ in folded))
        spans = list(zip([0, *ends[:-1]], ends))  # adapter i's columns of the block's stacks
        whole = len(chunk) == len(sources)  # the one block of one chunk: the fit's own stack where it kept it
        loads = {side: core.project(fits[side].stack if whole and fits[side].stack is not None
                                    else core.stack(columns(folded, side)), bases[side], mean=fits[side].mean)
                 for side in SIDES}
        for side in SIDES:
            captured[side] += float(torch.sum(loads[side] * loads[side]))
        kept: dict[str, list[torch.Tensor]] = {side: [] for side in SIDES}
        for (start, end), src in zip(spans, chunk):
            mine = {side: loads[side][:, start:end] for side in SIDES}
            if form == "core":
                c = store(mine["lora_B"] @ mine["lora_A"].mT, store_dtype)
                out.loadings[src.name][f"{module}.core"] = c
                for side, load in core_loadings(c, src.modules[module].rank, a0.device, a0.dtype).items():
                    kept[side].append(load)
            else:
                for side in SIDES:
                    out.loadings[src.name][f"{module}.{side}"] = store(mine[side], store_dtype)
                    kept[side].append(out.loadings[src.name][f"{module}.{side}"])
        for side in SIDES:
            if side not in on_device:
                on_device[side] = tuple(None if t is None else t.to(a0.device, a0.dtype) for t in stored[side])
        rebuilt = {side: restore(torch.cat(kept[side], dim=1), *on_device[side], a0.device, a0.dtype)
                   for side in SIDES}
        errors = block_dw_errors(folded, rebuilt, spans, [src.modules[module].scale for src in chunk],
                                 [src.dtype for src in chunk])
        for src, pair in zip(chunk, errors):
            out.errors[src.name] = pair
    for side in SIDES:
        total = float(torch.sum(fits[side].energies))
        out.group[side]["explained_variance"] = min(1.0, captured[side] / total) if total > 0 else 1.0
    return out


def ratio(abs_err: float, norm: float) -> float:
    if norm == 0.0:
        return 0.0 if abs_err == 0.0 else math.inf
    return abs_err / norm


def pooled(pairs) -> float:
    """Pool per-module (abs error, norm) pairs into one relative error over the whole adapter."""
    pairs = list(pairs)
    return ratio(math.sqrt(sum(e * e for e, _ in pairs)), math.sqrt(sum(n * n for _, n in pairs)))
