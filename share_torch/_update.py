"""Incremental updates of a compressed collection: add one adapter, remove one, without the original files.

What a checkpoint represents of adapter i, per (module, side), is ``X^_i = U L_i + m``. Both updates work
on that representation alone, so the original adapter files may be gone:

- **add (exact update)**: the represented old data has the thin SVD ``(U W, S)`` where ``L = W S V^T``;
  merging it with the new adapter's own SVD (`share_core.merge_bases`) gives the exact basis of old and new
  together (a side with k = 0 adds only its mean, if any); k is chosen again by the caller (`num_components`
  or the variance threshold; an allocated checkpoint keeps each group's k) and every old loading is rotated
  into the new basis, ``L'_i = U'^T (U L_i + m - m')``.
- **add (projection only)**: the basis stays; the new adapter gets ``U^T (X_new - m)``.
- **remove**: the remaining loadings ``L_rest`` span at most k directions of U. Where they span fewer,
  re-fitting on them (``L_rest = W S V^T``, ``U' = U W``, ``L'_i = W^T (L_i - l)``, ``m' = m + U l``) keeps
  every remaining reconstruction unchanged while dropping the directions only the removed adapter used;
  where they still span all k, nothing can be dropped and the side stays as stored.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from share_hf.checkpoint import Checkpoint

import share_core as core

from ._compress import dw_abs_and_norm


def copy_checkpoint(ckpt: Checkpoint) -> Checkpoint:
    """A copy an update can change freely: tensors are shared (never modified in place), dicts are new."""
    return Checkpoint(config=copy.deepcopy(ckpt.config), components=dict(ckpt.components),
                      loadings={n: dict(v) for n, v in ckpt.loadings.items()}, heads=dict(ckpt.heads),
                      metas=copy.deepcopy(ckpt.metas), path=ckpt.path)


def _represented(loadings: Sequence[torch.Tensor], basis: torch.Tensor, mean: torch.Tensor | None):
    """Thin SVD parts (u, s, mean, n) of the data a checkpoint represents for one (module, side).

    A side with k = 0 represents no columns beyond its mean: its part is an empty (d, 0) basis.
    """
    n = sum(int(x.shape[1]) for x in loadings)
    if int(basis.shape[1]) == 0:
        return basis, basis.new_zeros(0), mean, n
    w, energies, _ = core.basis(core.stack(list(loadings)))
    return basis @ w, torch.sqrt(energies), mean, n


def added_side(old_loads: dict[str, torch.Tensor], basis: torch.Tensor, mean: torch.Tensor | None,
               x_new: torch.Tensor, *, k: int | None, threshold: float | None, update: bool):
    """New (basis, mean, loadings for old and new, energies or None) of one side after adding `x_new`.

    All tensors in the compute dtype on one device; `old_loads` maps adapter name -> (k, r).
    """
    if not update:
        return basis, mean, {**old_loads, None: core.project(x_new, basis, mean=mean)}, None
    old = _represented(list(old_loads.values()), basis, mean)
    u_new, e_new, m_new = core.basis(x_new, center=mean is not None)
    part = (u_new, torch.sqrt(e_new), m_new, int(x_new.shape[1]))
    if mean is None:
        u, s = core.merge_bases(old[0], old[1], part[0], part[1])[:2]
        merged_mean = None
    else:
        u, s, merged_mean, _ = core.merge_bases(old[0], old[1], part[0], part[1], mean1=old[2], n1=old[3],
                                           mean2=part[2], n2=part[3])
    energies = s * s
    kk = core.select_k(energies, k=k, variance_threshold=threshold)
    new_basis = u[:, :kk]
    loads = {name: core.project(core.reconstruct(load, basis, mean=mean), new_basis, mean=merged_mean)
             for name, load in old_loads.items()}
    loads[None] = core.project(x_new, new_basis, mean=merged_mean)
    return new_basis, merged_mean, loads, energies


def removed_side(rest: dict[str, torch.Tensor], basis: torch.Tensor, mean: torch.Tensor | None):
    """New (basis, mean, loadings) of one side once an adapter is gone: exact for every remaining one.

    None where the remaining loadings still span all k columns of the basis (k does not shrink): then
    nothing can be dropped, and the side is best kept exactly as stored.
    """
    if int(basis.shape[1]) == 0:  # nothing stored on this side
        return None
    w, _, shift = core.basis(core.stack(list(rest.values())), center=mean is not None)
    if int(w.shape[1]) == int(basis.shape[1]):
        return None
    new_mean = None if mean is None else mean + basis @ shift
    return basis @ w, new_mean, {name: core.project(load, w, mean=shift) for name, load in rest.items()}


def drift(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """||dW^ before - dW^ after||_F of one module, from the folded factors of both reconstructions."""
    return dw_abs_and_norm(before["lora_A"].mT, before["lora_B"], after["lora_A"].mT, after["lora_B"])[0]


__all__ = ["added_side", "removed_side", "drift", "copy_checkpoint"]
