"""eigh: the one owner of eigendecomposition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import share_core as sc
from share_core.errors import ShapeError


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 8), n=st.integers(1, 10), seed=st.integers(0, 2**32 - 1))
def test_eigh_of_a_scatter_is_descending_nonnegative_and_exact(backend, dtype, d, n, seed):
    x_np = np.random.default_rng(seed).standard_normal((d, n))
    s_np = x_np @ x_np.T
    w, v = sc.eigh(backend.asarray(s_np, dtype))
    w, v = backend.to_numpy(w), backend.to_numpy(v)
    assert w.shape == (d,) and v.shape == (d, d)
    assert np.all(np.diff(w) <= 0) and np.all(w >= 0)
    assert np.allclose(v.T @ v, np.eye(d), atol=1e-5)
    assert np.allclose(v @ np.diag(w) @ v.T, s_np, atol=1e-4 * max(1.0, np.abs(s_np).max()))
    largest = v[np.argmax(np.abs(v), axis=0), np.arange(d)]
    assert np.all(largest > 0)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_eigh_symmetrizes_and_clips_negative_eigenvalues(backend, d, seed):
    rng = np.random.default_rng(seed)
    sym = rng.standard_normal((d, d))
    sym = sym + sym.T
    skew = rng.standard_normal((d, d))
    skew = skew - skew.T
    w, v = sc.eigh(backend.asarray(sym + skew))
    expected = np.sort(np.clip(np.linalg.eigvalsh(sym), 0, None))[::-1]
    assert np.allclose(backend.to_numpy(w), expected, atol=1e-10)
    w_sym, v_sym = sc.eigh(backend.asarray(sym))
    assert np.allclose(backend.to_numpy(w), backend.to_numpy(w_sym), atol=1e-12)


def test_eigh_refuses_a_non_square_matrix(backend):
    with pytest.raises(ShapeError, match=r"\(3, 4\)"):
        sc.eigh(backend.asarray(np.zeros((3, 4))))
    with pytest.raises(ShapeError):
        sc.eigh(backend.asarray(np.zeros(3)))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_eigh_of_half_precision_runs_in_float32(half):
    x = torch.asarray(np.random.default_rng(1).standard_normal((5, 7))).to(half)
    s = x @ x.mT
    w, v = sc.eigh(s)
    assert w.dtype == v.dtype == torch.float32
    w64 = torch.linalg.eigvalsh(s.double()).flip(0)
    assert torch.allclose(w.double(), w64, rtol=1e-5, atol=1e-4)
