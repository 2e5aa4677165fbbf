"""int8 storage of a checkpoint's basis, means, loadings and cores.

Each tensor is stored as int8 with one float32 scale per column (one per tensor for a 1-D mean):
``x ~= q * scale`` with ``q = round(x / scale)`` in [-127, 127] and ``scale = max |column| / 127``.
A column's rounding error is at most ``scale / 2`` per entry, about 0.5% of its largest entry.

In memory a checkpoint in int8 storage holds float32 tensors whose values already lie on that grid
(:func:`fake_quantize`), so every error lorashare reports is the error of what is written. On disk
each safetensors file holds its tensors as ``I8`` under their own keys plus one float32 tensor
:data:`SCALES_KEY` with all their scales, in the sorted order of the keys, so the scales cost one
header entry per file rather than one per tensor.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["SCALES_KEY", "decode", "encode", "fake_quantize", "scale_count", "scales_problems"]

#: The key of the float32 tensor that holds every scale of a file.
SCALES_KEY = "int8_scales"

_LEVELS = 127  # symmetric: -127..127, so that q and -q are both representable


def scale_count(shape: tuple[int, ...]) -> int:
    """Scales a tensor of `shape` carries: one per column of a 2-D tensor, one for any other."""
    return int(shape[-1]) if len(shape) == 2 else 1


def _scales(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float32)
    if x.ndim == 2:
        peak = x.abs().amax(dim=0) if x.shape[0] else torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
    else:
        peak = x.abs().amax().reshape(1) if x.numel() else torch.zeros(1, dtype=torch.float32, device=x.device)
    scale = peak / _LEVELS
    return torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero column stays exactly zero


def _quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    q = torch.round(x.to(torch.float32) / (scale if x.ndim == 2 else scale.reshape(())))
    return q.clamp_(-_LEVELS, _LEVELS).to(torch.int8)


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """`x` rounded to its int8 grid, as float32: what :func:`decode` gives back for it, to float32 rounding."""
    scale = _scales(x)
    return _dequantize(_quantize(x, scale), scale)


def _dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32) * (scale if q.ndim == 2 else scale.reshape(()))


def encode(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float tensors -> the int8 tensors and the one scales tensor written to a file."""
    if SCALES_KEY in tensors:
        raise ValueError(f"{SCALES_KEY!r} is reserved for int8 scales and cannot name a tensor")
    out: dict[str, torch.Tensor] = {}
    scales = []
    for key in sorted(tensors):
        x = tensors[key].to("cpu")
        scale = _scales(x)
        out[key] = _quantize(x, scale).contiguous()
        scales.append(scale)
    out[SCALES_KEY] = torch.cat(scales) if scales else torch.zeros(0, dtype=torch.float32)
    return out


def decode(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a file written by :func:`encode`, back as float32 (checked by
    :func:`scales_problems` before)."""
    scales = tensors[SCALES_KEY].to(torch.float32)
    out, at = {}, 0
    for key in sorted(k for k in tensors if k != SCALES_KEY):
        q = tensors[key]
        n = scale_count(tuple(q.shape))
        out[key] = _dequantize(q, scales[at:at + n])
        at += n
    return out


def scales_problems(specs: Mapping[str, tuple[tuple[int, ...], str]], where: str) -> list[str]:
    """What is wrong with the scales tensor of a file's header (key -> (shape, dtype code))."""
    if SCALES_KEY not in specs:
        return [f"{where} lacks tensor {SCALES_KEY!r}, the float32 scales of its int8 tensors"]
    shape, code = specs[SCALES_KEY]
    want = sum(scale_count(tuple(s)) for k, (s, _) in specs.items() if k != SCALES_KEY)
    problems = []
    if code != "F32":
        problems.append(f"{where}: tensor {SCALES_KEY!r} is stored as {code}, expected F32")
    if tuple(shape) != (want,):
        problems.append(
            f"{where}: tensor {SCALES_KEY!r} has shape {list(shape)}, expected [{want}] (one scale per "
            "column of each int8 tensor, one per 1-D tensor)"
        )
    return problems
