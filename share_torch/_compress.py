"""Orchestration of one compression: which factors are read when, in which chunks, on which device.

The math is share_core's; this module only decides the order of the work so that memory stays bounded:

- ``layer_by_layer=False`` reads every adapter's LoRA factors once, up front (one pass over each file);
- ``layer_by_layer=True`` reads one (module) group of all adapters at a time from the memory-mapped files,
  so peak memory is one group plus the output;
- ``chunk_size=N`` fits each group's basis N adapters at a time and merges the chunks' thin SVDs exactly
  (`share_core.merge_bases`), then projects each chunk on the final basis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import share_core as core
from share_hf.adapters import AdapterSource

SIDES = ("lora_A", "lora_B")

Folded = tuple[torch.Tensor, torch.Tensor]  # (A (r, d_in), B (d_out, r)) with sqrt(scale) folded into each


def columns(folded: Sequence[Folded], side: str) -> list[torch.Tensor]:
    """The stacked columns of one side: A^T (d_in, r) or B (d_out, r) per adapter."""
    return [a.mT if side == "lora_A" else b for a, b in folded]


def fold(a: torch.Tensor, b: torch.Tensor, scale: float, device: torch.device, dtype: torch.dtype) -> Folded:
    """Move one module's factors to the compute device and dtype once, and fold the scale in."""
    b, a = core.fold_scale(b.to(device, dtype), a.to(device, dtype), scale=scale)
    return a, b


@dataclass
class Reader:
    """Reads folded factors of (adapter, module), from a preloaded dict or lazily from the files."""

    device: torch.device
    dtype: torch.dtype
    preloaded: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def for_sources(cls, sources: Sequence[AdapterSource], modules: Sequence[str], *, layer_by_layer: bool,
                    device: torch.device, dtype: torch.dtype, wrap: Callable = iter) -> Reader:
        if layer_by_layer:
            return cls(device, dtype)
        preloaded = {}
        for src in wrap(sources):  # one pass over each adapter file
            for module in modules:
                preloaded[(src.name, module)] = src.load_factors(module)
        return cls(device, dtype, preloaded)

    def __call__(self, src: AdapterSource, module: str) -> Folded:
        key = (src.name, module)
        a, b = self.preloaded[key] if self.preloaded is not None else src.load_factors(module)
        return fold(a, b, src.modules[module].scale, self.device, self.dtype)


def chunks(items: Sequence, size: int | None) -> Iterator[Sequence]:
    size = len(items) if size is None else size
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass
class SideFit:
    basis: torch.Tensor          # (d, k) in compute dtype
    mean: torch.Tensor | None    # (d,)
    energies: torch.Tensor       # (rank,) squared singular values of the (centered) stack
    columns: int                 # stacked columns


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


def fit_sides(parts: Iterator[Sequence[Folded]], *, k: int | None, threshold: float | None,
              center: bool) -> dict[str, SideFit]:
    """Fit both sides' bases of one module over chunks of folded factors (exact merge between chunks)."""
    states: dict[str, tuple | None] = {side: None for side in SIDES}
    for folded in parts:
        for side in SIDES:
            x = core.stack(columns(folded, side))
            u, energies, mean = core.basis(x, center=center)
            states[side] = _merge(states[side], (u, torch.sqrt(energies), mean, int(x.shape[1])))
    fits = {}
    for side, (u, s, mean, n) in states.items():
        energies = s * s
        kk = core.select_k(energies, k=k, variance_threshold=threshold)
        fits[side] = SideFit(u[:, :kk], mean, energies, n)
    return fits


def store(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if x is None else x.to("cpu", dtype).contiguous()


def restore(load: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor | None, device, dtype) -> torch.Tensor:
    """Columns rebuilt from stored (cast) tensors: what a user gets back."""
    return core.reconstruct(load.to(device, dtype), basis.to(device, dtype),
                            mean=None if mean is None else mean.to(device, dtype))


def dw_abs_and_norm(a: torch.Tensor, b: torch.Tensor, a_hat: torch.Tensor, b_hat: torch.Tensor) -> tuple[float, float]:
    """(||B A - B^ A^||_F, ||B A||_F) of folded factors, from r-sized QR products."""
    err, _ = core.dw_error(b, a, b_hat, a_hat)
    norm, _ = core.dw_error(b, a, torch.zeros_like(b[:, :1]), torch.zeros_like(a[:1, :]))
    return float(err), float(norm)


def compress_module(module: str, sources: Sequence[AdapterSource], read: Reader, *, k: int | None,
                    threshold: float | None, center: bool, chunk_size: int | None,
                    store_dtype: torch.dtype) -> ModuleResult:
    """Basis, loadings and dW errors of one module for all adapters."""
    first: list[Sequence[Folded]] = []

    def parts() -> Iterator[Sequence[Folded]]:
        for chunk in chunks(sources, chunk_size):
            folded = [read(src, module) for src in chunk]
            if len(first) == 0 and len(chunk) == len(sources):
                first.append(folded)  # a single chunk: keep it for the projection pass, no second read
            yield folded

    fits = fit_sides(parts(), k=k, threshold=threshold, center=center)
    out = ModuleResult(loadings={s.name: {} for s in sources})
    info = sources[0].modules[module]
    out.group = {"d_in": info.d_in, "d_out": info.d_out}
    stored = {}
    for side, fit in fits.items():
        basis_s, mean_s = store(fit.basis, store_dtype), store(fit.mean, store_dtype)
        out.components[f"{module}.{side}.basis"] = basis_s
        if mean_s is not None:
            out.components[f"{module}.{side}.mean"] = mean_s
        stored[side] = (fit, basis_s, mean_s)
        kk = int(fit.basis.shape[1])
        out.group[side] = {"k": kk, "centered": fit.mean is not None, "rank": int(fit.energies.shape[0]),
                           "stacked_columns": fit.columns,
                           "explained_variance": core.explained_variance(fit.energies, kk)}

    again = iter(first) if first else (
        [read(src, module) for src in chunk] for chunk in chunks(sources, chunk_size))
    done = 0
    for folded in again:
        for (a, b), src in zip(folded, sources[done:done + len(folded)]):
            rebuilt = {}
            for side, (fit, basis_s, mean_s) in stored.items():
                x = columns([(a, b)], side)[0]
                load = store(core.project(x, fit.basis, mean=fit.mean), store_dtype)
                out.loadings[src.name][f"{module}.{side}"] = load
                rebuilt[side] = restore(load, basis_s, mean_s, a.device, a.dtype)
            out.errors[src.name] = dw_abs_and_norm(a, b, rebuilt["lora_A"].mT, rebuilt["lora_B"])
        done += len(folded)
    return out


def ratio(abs_err: float, norm: float) -> float:
    if norm == 0.0:
        return 0.0 if abs_err == 0.0 else math.inf
    return abs_err / norm


def pooled(pairs) -> float:
    """Pool per-module (abs error, norm) pairs into one relative error over the whole adapter."""
    pairs = list(pairs)
    return ratio(math.sqrt(sum(e * e for e, _ in pairs)), math.sqrt(sum(n * n for _, n in pairs)))
