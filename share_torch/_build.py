"""One whole compression: every module's basis and per-adapter parts, with k chosen per module.

`num_components` / `variance_threshold` choose k side by side and module by module (the plain rule).
`target_ratio` and `max_error` instead allocate (k_B, k_A) across modules from exact gain tables
(`_allocate`), build the checkpoint, measure it, and correct the allocation when the measured bytes or
errors miss the target (JSON metadata and storage rounding are only known once built).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from share_core._linalg import LEADING_MIN_SIZE
from share_core.errors import InvalidArgumentError
from share_hf.adapters import AdapterSource

from share_hf._quant import fake_quantize

from ._allocate import (
    MAX_COMPONENTS,
    GroupTable,
    State,
    allocate,
    full_payload,
    full_state,
    gain_table,
    smallest_payload,
)
from ._compress import (
    MIXED,
    SIDES,
    Storage,
    Folds,
    FreedMemory,
    ModuleResult,
    Reader,
    dw_abs_and_norm,
    finish_module,
    fit_sides,
    pooled,
    project_pair,
    refine,
    select,
    storage_itemsize,
)
from ._parallel import folded_bytes, module_workers, ordered_map

logger = logging.getLogger("lorashare")


@dataclass
class Plan:
    """How to compress: the options of `SHAREModel.from_adapters` that shape the work."""

    k: int | None
    threshold: float | None
    center: bool
    chunk_size: int | None
    store_dtype: Storage
    per_adapter: str = "loadings"
    refine_steps: int = 0
    target_ratio: float | None = None
    max_error: float | None = None


@dataclass
class Built:
    results: dict[str, ModuleResult] = field(default_factory=dict)
    allocation: dict[str, Any] = field(default_factory=dict)


def dw_norm_squared(a: torch.Tensor, b: torch.Tensor) -> float:
    """||B A||_F^2 from r x r Gram matrices (exact up to rounding; only used as a weight)."""
    return float(torch.sum((b.mT @ b) * (a @ a.mT)))


def _module_results(modules: Sequence[str], sources: Sequence[AdapterSource], read: Reader, plan: Plan,
                    fits_of: Callable[[str, Folds], dict], kk_of: Callable[[str, dict], dict[str, int]],
                    wrap: Callable, int4_of: Callable[[str], dict[str, int]] | None = None) -> dict[str, ModuleResult]:
    freed = FreedMemory()

    def one(module: str) -> ModuleResult:
        folds = Folds(module, sources, read, plan.chunk_size)
        fits = fits_of(module, folds)
        result = finish_module(module, sources, folds, fits, kk_of(module, fits), per_adapter=plan.per_adapter,
                               refine_steps=plan.refine_steps, store_dtype=plan.store_dtype,
                               int4=None if int4_of is None else int4_of(module))
        if read.preloaded is None:  # layer_by_layer: peak memory is the modules in flight plus the output
            del folds, fits
            freed.finished(_module_bytes(module, sources, read))
        return result

    restricted = max((sum(s.modules[m].rank for s in sources) for m in modules), default=0) >= LEADING_MIN_SIZE
    results = dict(ordered_map(one, modules, _workers(modules, sources, read), wrap, hold_blas=restricted))
    freed.flush()
    return results


def _module_bytes(module: str, sources: Sequence[AdapterSource], read: Reader) -> int:
    """Bytes of one module's folded factors (every adapter's A and B) in the compute dtype."""
    info = sources[0].modules[module]
    return folded_bytes([s.modules[module].rank for s in sources], info.d_in, info.d_out, read.dtype)


def _workers(modules: Sequence[str], sources: Sequence[AdapterSource], read: Reader) -> int:
    """Modules to work on at once (`share_torch._parallel.module_workers`), sized by the largest module."""
    largest = max((_module_bytes(m, sources, read) for m in modules), default=0)
    return module_workers(read.device, largest, len(modules))


def compress_all(modules: Sequence[str], sources: Sequence[AdapterSource], read: Reader, plan: Plan, *,
                 wrap: Callable, measure: Callable[[dict[str, ModuleResult]], int]) -> Built:
    """Every module compressed; `measure(results)` gives the bytes of the checkpoint they would make."""
    if plan.target_ratio is None and plan.max_error is None:
        one_chunk = plan.chunk_size is None or plan.chunk_size >= len(sources)
        leading = plan.k if one_chunk else None  # only the leading k are kept: no exactness owed beyond them
        results = _module_results(
            modules, sources, read, plan,
            lambda m, folds: fit_sides(folds.parts(), center=plan.center, max_components=leading),
            lambda m, fits: select(fits, k=plan.k, threshold=plan.threshold), wrap)
        return Built(results)
    return _allocated(modules, sources, read, plan, wrap=wrap, measure=measure)


def _tables(modules, sources, read, plan, wrap) -> tuple[dict[str, dict], list[GroupTable]]:
    """Full bases of every module and their gain tables (two reads of each module's factors)."""
    norms = {src.name: 0.0 for src in sources}
    for module in wrap(modules, "measuring adapters"):
        for chunk, folded in Folds(module, sources, read, plan.chunk_size):
            for src, (a, b) in zip(chunk, folded):
                norms[src.name] += dw_norm_squared(a, b)
    weights = {n: (1.0 / v if v > 0 else 0.0) for n, v in norms.items()}

    def one(module: str) -> tuple[dict, GroupTable]:
        folds = Folds(module, sources, read, plan.chunk_size)
        fits = fit_sides(folds.parts(), center=False)
        u = fits["lora_B"].basis[:, :MAX_COMPONENTS]
        v = fits["lora_A"].basis[:, :MAX_COMPONENTS]
        m = torch.zeros(u.shape[1], v.shape[1], dtype=torch.float64, device=u.device)
        for chunk, folded in folds:
            for src, (a, b) in zip(chunk, folded):
                c = (u.mT @ b) @ (a @ v)
                m += weights[src.name] * (c.to(torch.float64) ** 2)
        info = sources[0].modules[module]
        noise = (rounding_noise(u), rounding_noise(v)) if plan.store_dtype == MIXED else None
        return fits, gain_table(module, info.d_out, info.d_in, [s.modules[module].rank for s in sources], m,
                                plan.per_adapter, noise)

    fits_by_module, tables = {}, []
    for module, (fits, table) in ordered_map(one, modules, _workers(modules, sources, read),
                                             lambda items: wrap(items, "fitting bases")):
        fits_by_module[module] = fits
        tables.append(table)
    return fits_by_module, tables


def rounding_noise(basis: torch.Tensor) -> torch.Tensor:
    """(2, k): each column's relative squared rounding error in int8 (row 0) and int4 (row 1)."""
    x = basis.to("cpu", torch.float32)
    norms = torch.sum(x * x, dim=0).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.stack([torch.sum((x - fake_quantize(x, bits)) ** 2, dim=0) / norms for bits in (8, 4)])


def _allocated(modules, sources, read, plan: Plan, *, wrap, measure) -> Built:
    fits_by_module, tables = _tables(modules, sources, read, plan, wrap)
    itemsize = storage_itemsize(plan.store_dtype)
    n = len(sources)
    original = sum(s.file_bytes for s in sources)

    def build(state: dict[str, State], how: Plan = plan) -> dict[str, ModuleResult]:
        return _module_results(modules, sources, read, how, lambda m, folds: fits_by_module[m],
                               lambda m, fits: {"lora_B": state[m][0], "lora_A": state[m][1]},
                               lambda items: wrap(items, "projecting"),
                               lambda m: {"lora_B": state[m][2], "lora_A": state[m][3]})

    if plan.target_ratio is not None:
        budget_total = int(original / plan.target_ratio)
        search = replace(plan, refine_steps=0)  # bytes do not depend on refinement: search without it
        floor, ceiling = smallest_payload(tables, itemsize), full_payload(tables, itemsize)
        state, _ = allocate(tables, itemsize=itemsize, num_adapters=n, budget=floor)
        smallest = measure(build(state, search))  # one component everywhere: measures what JSON and headers cost
        if smallest > budget_total and plan.store_dtype == MIXED:
            # int4 columns bring their own tensors and JSON: where those cost more than they save (small d), the
            # int8 start is the smaller checkpoint
            state, _ = allocate(tables, itemsize=itemsize, num_adapters=n,
                                budget=smallest_payload(tables, itemsize, int4=False), int4=False)
            smallest = min(smallest, measure(build(state, search)))
        if smallest > budget_total:
            raise InvalidArgumentError(
                f"target_ratio={plan.target_ratio:g} asks for at most {budget_total:,} bytes, but even one "
                f"component per module and side makes a {smallest:,}-byte checkpoint "
                f"({original / smallest:.2f}x smaller than the {original:,} bytes of the adapters); "
                f"fix: ask for target_ratio <= {original / smallest:.2f}"
                + (", or store in a smaller dtype (dtype='bfloat16' or 'int8')" if itemsize > 2 else
                   ", or store in int8 (dtype='int8')" if itemsize == 2 else
                   ", or let basis columns go to int4 (dtype='mixed')" if plan.store_dtype != MIXED else ""))
        overhead = smallest - floor

        def meet(int4: bool | None) -> tuple[dict[str, ModuleResult], dict]:
            room = overhead
            for attempt in range(6):
                state, figures = allocate(tables, itemsize=itemsize, num_adapters=n, budget=budget_total - room,
                                          int4=int4)
                results = build(state, search)
                written = measure(results)
                if written <= budget_total:
                    break
                # JSON and headers grew with the allocation: leave more room, more each time, so it converges
                room += (written - budget_total) * 2 ** attempt + 64
            else:
                raise InvalidArgumentError(
                    f"could not meet target_ratio={plan.target_ratio:g}: the last try wrote {written:,} bytes "
                    f"against a budget of {budget_total:,}; fix: ask for a slightly smaller target_ratio")
            if plan.refine_steps:
                refined = build(state)
                if measure(refined) <= budget_total:  # its JSON figures may print a few bytes longer
                    results = refined
                else:
                    logger.info("refined bases would overshoot target_ratio=%g by their JSON figures: kept the PCA "
                                "bases", plan.target_ratio)
            if figures["payload"] >= ceiling:
                logger.info("target_ratio=%g leaves room for every component: the compression is exact",
                            plan.target_ratio)
            return results, figures

        if plan.store_dtype == MIXED:
            # the tables predict before refinement, which can favour int8 columns (more room to refine): build
            # both allocations and keep the one whose measured errors are lower
            # either may be unable to meet the budget (int8 alone reaches less far; int4's own overhead can cost
            # more than it saves where d is small): keep those that meet it
            tries, failure = [], None
            for int4 in (True, False):
                try:
                    tries.append(meet(int4))
                except InvalidArgumentError as exc:
                    failure = exc
            if not tries:
                raise failure
            results, figures = min(tries, key=lambda t: _mean(_adapter_errors(t[0])))
        else:
            results, figures = meet(None)
        return Built(results, {"target_ratio": plan.target_ratio, "budget_bytes": budget_total,
                               "predicted_rms_error": figures["predicted_rms_error"]})

    target = plan.max_error
    for attempt in range(_MAX_ERROR_TRIES + 1):
        if attempt < _MAX_ERROR_TRIES:
            state, figures = allocate(tables, itemsize=itemsize, num_adapters=n, max_error=target)
        else:  # the predictions kept missing (rounding they do not model): every component, the most there is
            state = {t.module: full_state(t) for t in tables}
            figures = {"predicted_rms_error": 0.0}
        results = build(state)
        worst = max(_adapter_errors(results).values())
        if worst <= plan.max_error:
            break
        at_full = all(state[t.module] == full_state(t) for t in tables)
        if at_full:
            logger.warning("max_error=%g is not reachable in %s storage: with every component kept the worst "
                           "adapter's dW error is %.3g (storage rounding); store in float32 to go lower",
                           plan.max_error, str(plan.store_dtype).removeprefix("torch."), worst)
            break
        target = target * min(0.9, plan.max_error / worst) ** (1 + attempt // 2)  # smaller steps first
    return Built(results, {"max_error": plan.max_error, "predicted_rms_error": figures["predicted_rms_error"],
                           "achieved_max_error": worst})


#: Allocations tried for `max_error`, each for a smaller predicted error, before keeping every component.
_MAX_ERROR_TRIES = 8


def _mean(errors: dict[str, float]) -> float:
    return sum(errors.values()) / len(errors)


def _adapter_errors(results: dict[str, ModuleResult]) -> dict[str, float]:
    names = next(iter(results.values())).errors.keys()
    return {name: pooled(r.errors[name] for r in results.values()) for name in names}


def leave_one_out(modules: Sequence[str], sources: Sequence[AdapterSource], read: Reader, groups: dict[str, dict],
                  plan: Plan, wrap: Callable) -> dict[str, float]:
    """Each adapter's dW error when projected on bases fitted without it (same k, form and refinement).

    An estimate of how well a new adapter like these would be represented by `add_adapter(...,
    update_basis=False)`; compare it with the in-set errors to decide between projecting and refitting.
    """
    def one(module: str) -> list[tuple[float, float]]:
        folded = [f for _, part in Folds(module, sources, read, None) for f in part]
        kk = {side: int(groups[module][side]["k"]) for side in SIDES}
        out = []
        for i in range(len(sources)):
            rest = folded[:i] + folded[i + 1:]
            fits = fit_sides(iter([rest]), center=plan.center)
            bases = {side: fits[side].basis[:, :kk[side]] for side in SIDES}
            if plan.refine_steps and not plan.center:
                bases["lora_B"], bases["lora_A"] = refine(_Fixed(rest), bases["lora_B"], bases["lora_A"],
                                                          plan.refine_steps)
            a, b = folded[i]
            a_hat, b_hat = project_pair(a, b, bases, {side: fits[side].mean for side in SIDES})
            out.append(dw_abs_and_norm(a, b, a_hat, b_hat))
        return out

    pairs: dict[str, list[tuple[float, float]]] = {s.name: [] for s in sources}
    for _, per_adapter in ordered_map(one, modules, _workers(modules, sources, read),
                                      lambda items: wrap(items, "leave-one-out")):
        for src, pair in zip(sources, per_adapter):
            pairs[src.name].append(pair)
    return {name: pooled(p) for name, p in pairs.items()}


class _Fixed:
    """A `Folds` stand-in over factors already in memory."""

    def __init__(self, folded):
        self.folded = folded

    one_chunk = True

    def parts(self):
        return iter([self.folded])


__all__ = ["Plan", "Built", "compress_all", "leave_one_out"]
