"""Helpers of the share_core tests: backends, data generators, tolerances."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import array_api_compat
import array_api_strict
import numpy as np
import torch
from hypothesis import strategies as st

TOL = {"float32": 1e-5, "float64": 1e-10}
"""Relative error allowed where the contract says 'exact'."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """An array library as the tests see it."""

    name: str
    make: Callable[[np.ndarray, str], Any]
    unavailable: Callable[[], str] = lambda: ""

    @property
    def xp(self):
        return array_api_compat.array_namespace(self.asarray(np.zeros(1)))

    def asarray(self, x: np.ndarray, dtype: str = "float64"):
        """A fresh array of this backend holding `x` in `dtype` (a NumPy dtype name)."""
        return self.make(np.asarray(x), dtype)

    def to_numpy(self, x) -> np.ndarray:
        """A float64 NumPy copy of a backend array (for comparisons only)."""
        return to_numpy(x)

    def device(self):
        return array_api_compat.device(self.asarray(np.zeros(1)))


def to_numpy(x) -> np.ndarray:
    """float64 NumPy copy of any backend's array."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    if type(x).__module__.startswith("array_api_strict"):
        return np.array(np.from_dlpack(x), dtype=np.float64)
    return np.array(x, dtype=np.float64)


def _numpy_readonly(x: np.ndarray, dtype: str) -> np.ndarray:
    out = np.array(x, dtype=dtype)
    out.flags.writeable = False
    return out


TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def _torch_on(device: str) -> Callable[[np.ndarray, str], Any]:
    return lambda x, dtype: torch.asarray(np.array(x, dtype=np.float64), device=device).to(TORCH_DTYPES[dtype])


BACKENDS = [
    Backend("numpy", lambda x, dtype: np.array(x, dtype=dtype)),
    Backend("numpy_readonly", _numpy_readonly),
    Backend(
        "array_api_strict",
        lambda x, dtype: array_api_strict.asarray(np.array(x, dtype=dtype)),
    ),
    Backend("torch", _torch_on("cpu")),
    Backend(
        "torch_cuda",
        _torch_on("cuda"),
        lambda: "" if torch.cuda.is_available() else "no CUDA device on this machine",
    ),
]
BY_NAME = {b.name: b for b in BACKENDS}


def orthonormal(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    """(d, k) matrix with orthonormal columns (k <= d)."""
    q, _ = np.linalg.qr(rng.standard_normal((d, max(k, 1))))
    return q[:, :k]


def low_rank(rng: np.random.Generator, d: int, n: int, singular_values) -> np.ndarray:
    """(d, n) float64 matrix whose nonzero singular values are exactly `singular_values`."""
    s = np.asarray(singular_values, dtype=np.float64)
    return orthonormal(rng, d, s.size) @ np.diag(s) @ orthonormal(rng, n, s.size).T


@st.composite
def matrices(draw, max_d: int = 8, max_n: int = 10, min_rank: int = 0, offset: bool = False):
    """(x, rank): a (d, n) float64 matrix of known rank, singular values in [0.1, 1].

    With `offset`, a column-constant vector is added (then `rank` describes x minus it).
    """
    d = draw(st.integers(1, max_d))
    n = draw(st.integers(1, max_n))
    rank = draw(st.integers(min(min_rank, d, n), min(d, n)))
    svals = draw(st.lists(st.floats(0.1, 1.0), min_size=rank, max_size=rank))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = low_rank(rng, d, n, sorted(svals, reverse=True))
    if offset:
        x = x + draw(st.floats(-3.0, 3.0)) * rng.standard_normal((d, 1))
    return x, rank


def projector(u: np.ndarray) -> np.ndarray:
    """U U^T in float64."""
    return u @ u.T


def rel(x: np.ndarray, y: np.ndarray) -> float:
    """||x - y||_F / ||x||_F (0 when both vanish)."""
    den = np.linalg.norm(x)
    num = np.linalg.norm(x - y)
    return float(num / den) if den > 0 else float(num)


def condition(x_np, center):
    """s_max / s_min over the singular values of the (centered) data that basis's rank rule
    keeps, ``s > max(d, n) * eps * max(s_max, sqrt(n) ||mean||)`` (1 for zero data).

    A tiny singular value (an offset of 1e-9 makes one) counts: the thin SVD keeps it while
    the float64 squared routes, as documented, resolve only down to about 1e-8 * s_max.
    """
    d, n = x_np.shape
    mean = x_np.mean(axis=1, keepdims=True)
    y = x_np - mean if center else x_np
    s = np.linalg.svd(y, compute_uv=False)
    s_ref = max(s[0], np.sqrt(n) * np.linalg.norm(mean) if center else 0.0, 1e-300)
    s = s[s > max(d, n) * np.finfo(np.float64).eps * s_ref]
    return s[0] / s[-1] if s.size else 1.0
