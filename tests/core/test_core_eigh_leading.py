"""eigh_leading: every eigenvalue and only the leading eigenvectors, as eigh gives them, through LAPACK's
restricted tridiagonal route on the CPU (SciPy) and the full eigh elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

import share_core._linalg as linalg
from share_core._linalg import LEADING_MIN_SIZE, eigh, eigh_leading
from share_core.errors import InvalidArgumentError, ShapeError


def _scatter(rng: np.random.Generator, d: int, n: int, rank: int | None = None) -> np.ndarray:
    """A PSD scatter with a decaying spectrum (and exact zeros past `rank`)."""
    rank = min(d, n) if rank is None else rank
    x = rng.standard_normal((d, rank)) @ np.diag(np.logspace(0, -3, rank)) @ rng.standard_normal((rank, n))
    return x @ x.T


@pytest.fixture
def restricted_calls(monkeypatch) -> list[int]:
    """The sizes of the matrices that took the restricted route, with SciPy's BLAS thread count seen inside."""
    calls: list[int] = []
    real = linalg._restricted

    def spying(a, k, lapack, tridiagonal):
        calls.append((a.shape[0], _blas_threads()))
        return real(a, k, lapack, tridiagonal)

    monkeypatch.setattr(linalg, "_restricted", spying)
    return calls


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in ThreadpoolController().select(user_api="blas").info()}


@pytest.mark.parametrize("d,k", [(LEADING_MIN_SIZE, 8), (300, 32), (300, 75)])
def test_leading_pairs_equal_the_full_decomposition(backend, dtype, restricted_calls, d, k):
    s_np = _scatter(np.random.default_rng(d + k), d, 2 * d)
    w_full, v_full = (backend.to_numpy(t) for t in eigh(backend.asarray(s_np, dtype)))
    w, v = eigh_leading(backend.asarray(s_np, dtype), k)
    assert str(w.dtype).endswith(dtype) and str(v.dtype).endswith(dtype)
    w, v = backend.to_numpy(w), backend.to_numpy(v)
    assert w.shape == (d,) and v.shape == (d, k)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(w, w_full, rtol=0, atol=tol * w_full[0])  # every eigenvalue, descending
    assert np.all(np.diff(w) <= 0) and np.all(w >= 0)
    np.testing.assert_allclose(v.T @ v, np.eye(k), atol=10 * tol)
    # each vector is the full decomposition's (the spectrum has no repeated values), with the same sign rule
    np.testing.assert_allclose(v, v_full[:, :k], atol=1e3 * tol)
    largest = v[np.argmax(np.abs(v), axis=0), np.arange(k)]
    assert np.all(largest > 0)
    s64 = s_np.astype(np.float64)
    assert np.linalg.norm(s64 @ v - v * w[:k]) <= 10 * tol * np.linalg.norm(s64)
    on_cpu = backend.name in ("numpy", "numpy_readonly", "torch")
    assert [size for size, _ in restricted_calls] == ([d] if on_cpu and 4 * k <= d else [])


def test_rank_deficient_scatter_keeps_exact_zeros_clipped(restricted_calls):
    s = _scatter(np.random.default_rng(3), 400, 40)  # rank 40 of 400
    w, v = eigh_leading(s, 32)
    assert restricted_calls and w.shape == (400,) and v.shape == (400, 32)
    assert np.all(w >= 0) and np.all(w[40:] <= 1e-12 * w[0])
    np.testing.assert_allclose(w[:40], eigh(s)[0][:40], rtol=1e-10)


def test_blas_runs_on_one_thread_inside_and_is_restored_after(restricted_calls):
    before = _blas_threads()
    eigh_leading(_scatter(np.random.default_rng(0), 300, 300), 16)
    assert restricted_calls[0][1] == {1}
    assert _blas_threads() == before


def test_small_or_wide_requests_take_the_full_decomposition(restricted_calls):
    rng = np.random.default_rng(1)
    small = _scatter(rng, LEADING_MIN_SIZE - 1, 300)
    w, v = eigh_leading(small, 8)
    w_full, v_full = eigh(small)
    np.testing.assert_array_equal(w, w_full)
    np.testing.assert_array_equal(v, v_full[:, :8])
    wide = _scatter(rng, 300, 300)
    assert eigh_leading(wide, 76)[1].shape == (300, 76)  # 4 k > d
    assert eigh_leading(wide, 1000)[1].shape == (300, 300)  # k past d: all of them
    assert restricted_calls == []


def test_refusals_match_eigh():
    s = _scatter(np.random.default_rng(2), 300, 300)
    s[3, 4] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN or infinity"):
        eigh_leading(s, 8)
    with pytest.raises(ShapeError, match=r"\(300, 299\)"):
        eigh_leading(np.zeros((300, 299)), 8)


def test_other_threads_get_the_full_decomposition(restricted_calls):
    """SciPy's BLAS thread count cannot be held from other threads (and concurrent callers share its pool), so
    only the main thread takes the restricted route: elsewhere the answer is eigh's, the same every time."""
    import threading

    s = _scatter(np.random.default_rng(4), 300, 300)
    found = {}
    worker = threading.Thread(target=lambda: found.update(result=eigh_leading(s, 16)))
    worker.start()
    worker.join()
    w_full, v_full = eigh(s)
    np.testing.assert_array_equal(found["result"][0], w_full)
    np.testing.assert_array_equal(found["result"][1], v_full[:, :16])
    assert restricted_calls == []
    eigh_leading(s, 16)
    assert len(restricted_calls) == 1


def test_refinement_half_steps_take_the_restricted_route_and_agree_with_the_full_one(monkeypatch, restricted_calls):
    """refine_bases' half-steps decompose an (n, n) matrix of which they keep k vectors: with n = N r = 320 >= 256
    and 4 k <= n, the restricted route; the refined bases must be the full eigh's."""
    import share_core as sc

    rng = np.random.default_rng(7)
    n_items, r, d, k = 40, 8, 400, 16
    shared = rng.standard_normal((6, d))
    a = np.stack([rng.standard_normal((r, 6)) @ shared + 0.3 * rng.standard_normal((r, d)) for _ in range(n_items)])
    b = 0.3 * rng.standard_normal((n_items, d, r))
    u0 = np.linalg.qr(rng.standard_normal((d, k)))[0]
    v0 = np.linalg.qr(rng.standard_normal((d, k)))[0]
    u, v = sc.refine_bases(b, a, u0, v0, steps=2)
    assert len(restricted_calls) == 4  # two half-steps per step, each of a 320 x 320 matrix
    assert {size for size, _ in restricted_calls} == {n_items * r}
    monkeypatch.setattr(linalg, "_scipy_lapack", lambda: None)
    u_full, v_full = sc.refine_bases(b, a, u0, v0, steps=2)
    np.testing.assert_allclose(u @ u.T, u_full @ u_full.T, atol=1e-9)
    np.testing.assert_allclose(v @ v.T, v_full @ v_full.T, atol=1e-9)
    np.testing.assert_allclose(np.abs(u), np.abs(u_full), atol=1e-9)
