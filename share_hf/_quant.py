"""int8 (and int4) storage of a checkpoint's basis, means, loadings and cores.

Each tensor is stored as int8 with one float32 scale per column (one per tensor for a 1-D mean):
``x ~= q * scale`` with ``q = round(x / scale)`` in [-127, 127] and ``scale = max |column| / 127``.
A column's rounding error is at most ``scale / 2`` per entry, about 0.5% of its largest entry.

In memory a checkpoint in int8 storage holds float32 tensors whose values already lie on that grid
(:func:`fake_quantize`), so every error lorashare reports is the error of what is written. On disk
each safetensors file holds its tensors as ``I8`` under their own keys plus one float32 tensor
:data:`SCALES_KEY` with all their scales, in the sorted order of the keys, so the scales cost one
header entry per file rather than one per tensor.

Mixed storage (``dtype="mixed"``) also keeps some basis columns in int4: levels -7..7 with the same
per-column scale rule (``max |column| / 7``), about 7% of the largest entry at worst per entry. An int4
tensor (d, k) is written as ``U8`` (ceil(d / 2), k): rows 2i and 2i+1 share a byte, row 2i in the low
nibble, each stored as ``q + 8``; an odd last row is paired with a zero. :func:`decode` gives it back as
(2 ceil(d / 2), k); the caller, who knows d, drops the padding row.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["INT4_CODE", "SCALES_KEY", "decode", "encode", "fake_quantize", "scale_count", "scales_problems"]

#: The key of the float32 tensor that holds every scale of a file.
SCALES_KEY = "int8_scales"

_LEVELS = {8: 127, 4: 7}  # symmetric: -L..L, so that q and -q are both representable

#: The safetensors dtype code of a packed int4 tensor.
INT4_CODE = "U8"


def scale_count(shape: tuple[int, ...]) -> int:
    """Scales a tensor of `shape` carries: one per column of a 2-D tensor, one for any other."""
    return int(shape[-1]) if len(shape) == 2 else 1


def _scales(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    x = x.to(torch.float32)
    if x.ndim == 2:
        peak = x.abs().amax(dim=0) if x.shape[0] else torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
    else:
        peak = x.abs().amax().reshape(1) if x.numel() else torch.zeros(1, dtype=torch.float32, device=x.device)
    scale = peak / _LEVELS[bits]
    return torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero column stays exactly zero


def _quantize(x: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> torch.Tensor:
    q = torch.round(x.to(torch.float32) / (scale if x.ndim == 2 else scale.reshape(())))
    return q.clamp_(-_LEVELS[bits], _LEVELS[bits]).to(torch.int8)


def fake_quantize(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """`x` rounded to its int8 (or int4) grid, as float32: what :func:`decode` gives back for it, to float32
    rounding."""
    scale = _scales(x, bits)
    return _dequantize(_quantize(x, scale, bits), scale)


def _pack(q: torch.Tensor) -> torch.Tensor:
    """int8 values in -7..7, (d, k) -> uint8 (ceil(d / 2), k), two rows per byte."""
    if q.shape[0] % 2:
        q = torch.cat([q, torch.zeros(1, q.shape[1], dtype=q.dtype)])
    nibbles = (q.to(torch.int16) + 8).to(torch.uint8)
    return nibbles[0::2] | (nibbles[1::2] << 4)


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_pack`: (rows, k) uint8 -> (2 rows, k) int8 values (padding row included)."""
    low = (packed & 15).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=1).reshape(2 * packed.shape[0], packed.shape[1])


def _dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32) * (scale if q.ndim == 2 else scale.reshape(()))


def encode(tensors: Mapping[str, torch.Tensor], int4: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Float tensors -> the int8 tensors (packed int4 ones for the 2-D keys in `int4`) and the one scales
    tensor written to a file."""
    if SCALES_KEY in tensors:
        raise ValueError(f"{SCALES_KEY!r} is reserved for int8 scales and cannot name a tensor")
    out: dict[str, torch.Tensor] = {}
    scales = []
    for key in sorted(tensors):
        x = tensors[key].to("cpu")
        bits = 4 if key in int4 else 8
        if bits == 4 and x.ndim != 2:
            raise ValueError(f"int4 storage packs 2-D tensors only; {key!r} has shape {list(x.shape)}")
        scale = _scales(x, bits)
        q = _quantize(x, scale, bits)
        out[key] = (_pack(q) if bits == 4 else q).contiguous()
        scales.append(scale)
    out[SCALES_KEY] = torch.cat(scales) if scales else torch.zeros(0, dtype=torch.float32)
    return out


def decode(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a file written by :func:`encode`, back as float32 (checked by
    :func:`scales_problems` before); a packed int4 tensor comes back with its padding row, if any."""
    scales = tensors[SCALES_KEY].to(torch.float32)
    out, at = {}, 0
    for key in sorted(k for k in tensors if k != SCALES_KEY):
        q = tensors[key]
        n = scale_count(tuple(q.shape))
        if q.dtype == torch.uint8:
            q = _unpack(q)
        out[key] = _dequantize(q, scales[at:at + n])
        at += n
    return out


def scales_problems(specs: Mapping[str, tuple[tuple[int, ...], str]], where: str) -> list[str]:
    """What is wrong with the scales tensor of a file's header (key -> (shape, dtype code))."""
    if SCALES_KEY not in specs:
        return [f"{where} lacks tensor {SCALES_KEY!r}, the float32 scales of its int8 and int4 tensors"]
    shape, code = specs[SCALES_KEY]
    want = sum(scale_count(tuple(s)) for k, (s, _) in specs.items() if k != SCALES_KEY)
    problems = []
    if code != "F32":
        problems.append(f"{where}: tensor {SCALES_KEY!r} is stored as {code}, expected F32")
    if tuple(shape) != (want,):
        problems.append(
            f"{where}: tensor {SCALES_KEY!r} has shape {list(shape)}, expected [{want}] (one scale per "
            "column of each int8 or int4 tensor, one per 1-D tensor)"
        )
    return problems
