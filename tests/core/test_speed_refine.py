"""The r-sized routes added for speed give what the plain SVD routes give.

`refine_bases` (alternating refinement from Gram matrices, no (d, N k) SVD) against the half-steps done
with NumPy SVDs in float64; `basis`'s Gram shortcut for a few leading components against the thin SVD.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import share_core as sc
from core_testing import orthonormal, projector
from share_core._basis import basis_with_route

ATOL = {"float32": 2e-4, "float64": 1e-8}


def _module(seed: int, n_items: int = 5, r: int = 4, d_out: int = 40, d_in: int = 36, k_b: int = 3, k_a: int = 2,
            noise: float = 0.05):
    """Folded pairs b (N, d_out, r), a (N, r, d_in) around shared (k_b, k_a)-dim subspaces, plus the
    float64 SVD bases (U of the B stack, V of the A stack) the refinement starts from."""
    rng = np.random.default_rng(seed)
    u0, v0 = orthonormal(rng, d_out, k_b), orthonormal(rng, d_in, k_a)
    b = np.stack([u0 @ rng.standard_normal((k_b, r)) * 3 + noise * rng.standard_normal((d_out, r))
                  for _ in range(n_items)])
    a = np.stack([rng.standard_normal((r, k_a)) @ v0.T * 2 + noise * rng.standard_normal((r, d_in))
                  for _ in range(n_items)])
    u = np.linalg.svd(np.concatenate(list(b), axis=1), full_matrices=False)[0][:, :k_b]
    v = np.linalg.svd(np.concatenate([x.T for x in a], axis=1), full_matrices=False)[0][:, :k_a]
    return b, a, u, v


def _reference(b, a, u, v, steps):
    """The alternating half-steps as written down: top left singular vectors of [dW_i V] and [dW_i^T U]."""
    k_b, k_a = u.shape[1], v.shape[1]
    for _ in range(steps):
        u = np.linalg.svd(np.concatenate([bi @ (ai @ v) for bi, ai in zip(b, a)], axis=1))[0][:, :k_b]
        v = np.linalg.svd(np.concatenate([ai.T @ (bi.T @ u) for bi, ai in zip(b, a)], axis=1))[0][:, :k_a]
    return u, v


def _total_error(b, a, u, v) -> float:
    return sum(np.linalg.norm(bi @ ai - u @ (u.T @ bi @ ai @ v) @ v.T) ** 2 for bi, ai in zip(b, a))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 3))
def test_refine_bases_spans_what_the_svd_half_steps_span(backend, dtype, seed, steps):
    b, a, u, v = _module(seed)
    ref_u, ref_v = _reference(b, a, u, v, steps)
    got_u, got_v = sc.refine_bases(*(backend.asarray(t, dtype) for t in (b, a, u, v)), steps=steps)
    assert type(got_u) is type(backend.asarray(u, dtype)) and str(got_u.dtype).endswith(dtype)
    got_u, got_v = backend.to_numpy(got_u), backend.to_numpy(got_v)
    assert got_u.shape == ref_u.shape and got_v.shape == ref_v.shape
    assert np.allclose(projector(got_u), projector(ref_u), atol=ATOL[dtype])
    assert np.allclose(projector(got_v), projector(ref_v), atol=ATOL[dtype])
    assert np.allclose(got_u.T @ got_u, np.eye(u.shape[1]), atol=ATOL[dtype])
    assert np.allclose(got_v.T @ got_v, np.eye(v.shape[1]), atol=ATOL[dtype])
    assert np.all(got_u[np.argmax(np.abs(got_u), axis=0), range(got_u.shape[1])] > 0)  # sign rule


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_refinement_never_raises_the_total_error(backend, seed):
    b, a, u, v = _module(seed, noise=0.8)  # weak structure: the steps have work to do
    errors = [_total_error(b, a, u, v)]
    for steps in (1, 2, 4):
        got = sc.refine_bases(*(backend.asarray(t) for t in (b, a, u, v)), steps=steps)
        errors.append(_total_error(b, a, *(backend.to_numpy(t) for t in got)))
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in zip(errors, errors[1:])), errors


def test_zero_padded_ranks_change_nothing(backend):
    b, a, u, v = _module(7)
    padded_b = np.concatenate([b, np.zeros(b.shape[:2] + (2,))], axis=2)
    padded_a = np.concatenate([a, np.zeros((a.shape[0], 2, a.shape[2]))], axis=1)
    plain = sc.refine_bases(*(backend.asarray(t) for t in (b, a, u, v)))
    padded = sc.refine_bases(*(backend.asarray(t) for t in (padded_b, padded_a, u, v)))
    for x, y in zip(plain, padded):
        assert np.allclose(projector(backend.to_numpy(x)), projector(backend.to_numpy(y)), atol=1e-9)


def test_a_width_shrinks_to_the_directions_the_data_have(backend):
    b, a, u, v = _module(3, k_b=2, k_a=2, noise=0.0)  # every dW_i lies in a 2 x 2 subspace
    wide_u = np.linalg.svd(np.concatenate(list(b), axis=1))[0][:, :4]
    got_u, got_v = sc.refine_bases(*(backend.asarray(t) for t in (b, a, wide_u, v)))
    assert got_u.shape[1] == 2 and got_v.shape[1] == 2
    dw = sum(bi @ ai for bi, ai in zip(b, a))
    assert _total_error(b, a, backend.to_numpy(got_u), backend.to_numpy(got_v)) <= 1e-18 * np.linalg.norm(dw) ** 2


def test_refine_bases_checks_its_arguments(backend):
    b, a, u, v = (backend.asarray(t) for t in _module(1))
    with pytest.raises(sc.errors.ShapeError, match=r"expected b \(N, d_out, r\), a \(N, r, d_in\)"):
        sc.refine_bases(a, b, u, v)
    with pytest.raises(sc.InvalidArgumentError, match="steps"):
        sc.refine_bases(b, a, u, v, steps=0)


@pytest.mark.parametrize("k", [1, 4, 10])
def test_the_gram_shortcut_gives_the_svd_basis(backend, k):
    """auto with a few leading components (k <= n / 4) of float32 data: the Gram route in float64."""
    rng = np.random.default_rng(k)
    x_np = rng.standard_normal((300, 40)) * np.geomspace(1.0, 1e-3, 40)
    x = backend.asarray(x_np, "float32")
    u, energies, _, route = basis_with_route(x, max_components=k)
    u_svd, e_svd, _, _ = basis_with_route(x, method="svd", max_components=k)
    assert route == "gram"
    assert u.shape == u_svd.shape and energies.shape == e_svd.shape
    assert np.allclose(backend.to_numpy(energies), backend.to_numpy(e_svd), rtol=1e-4, atol=1e-6)
    assert np.allclose(projector(backend.to_numpy(u)), projector(backend.to_numpy(u_svd)), atol=1e-4)
    assert np.allclose(backend.to_numpy(u), backend.to_numpy(u_svd), atol=1e-4)  # same signs too


def test_the_gram_routes_leave_the_callers_stack_as_it_was(backend, dtype):
    """The Gram's widened copy is scaled in place (one (d, n) array instead of two); the caller's stack, which
    is that copy's source (and is the scaled array itself when no wider type exists), stays untouched,
    through the basis, `gram_fit` / `gram_leading` and the refinement that reuses the scaled stack."""
    from share_core._basis import gram_fit, gram_leading
    from share_core._refine import refine_stacks, stacked_columns

    b, a, _, _ = _module(11, n_items=4, r=3, d_out=60, d_in=50, k_b=3, k_a=2)
    b_x, a_x = backend.asarray(b * 7.0, dtype), backend.asarray(a * 7.0, dtype)
    xp = sc.array_namespace(b_x)
    bs, as_ = stacked_columns(b_x, a_x, xp)
    before = [backend.to_numpy(t).copy() for t in (bs, as_)]
    u, _, _, route = basis_with_route(bs, max_components=2)
    assert route == ("gram" if dtype == "float32" else "svd")
    fits = [gram_fit(x, max_components=2) for x in (bs, as_)]
    if dtype == "float32":  # gram_fit applies (a wider Gram exists): its basis and the refinement reuse it
        assert all(fit is not None for fit in fits)
        assert np.allclose(projector(backend.to_numpy(gram_leading(bs, fits[0][1], 2))),
                           projector(backend.to_numpy(u)), atol=1e-5)
        refine_stacks(bs, as_, 2, 4, 3, 1, xp, fits[0][1], fits[1][1])
    refine_stacks(bs, as_, 2, 4, 3, 1, xp)
    for got, want in zip((bs, as_), before):
        assert np.array_equal(backend.to_numpy(got), want)


def test_dw_norms_come_from_the_error_qr(backend, dtype):
    """The private pooled-error helper: ||dW - dW^|| and ||dW|| of each item, as dense products give them
    (torch takes an R-only QR there)."""
    from share_core._factors import dw_errors_and_norms

    rng = np.random.default_rng(5)
    b, a = rng.standard_normal((3, 30, 4)), rng.standard_normal((3, 4, 25))
    b_hat, a_hat = b + 0.1 * rng.standard_normal(b.shape), a[:, :, :]
    abs_err, norms = dw_errors_and_norms(*(backend.asarray(t, dtype) for t in (b, a, b_hat, a_hat)), scale=2.0)
    dense = np.stack([bi @ ai for bi, ai in zip(b, a)]) * 2.0
    dense_hat = np.stack([bi @ ai for bi, ai in zip(b_hat, a_hat)]) * 2.0
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert np.allclose(backend.to_numpy(norms), np.linalg.norm(dense, axis=(1, 2)), rtol=tol)
    assert np.allclose(backend.to_numpy(abs_err), np.linalg.norm(dense - dense_hat, axis=(1, 2)), rtol=tol * 10)


def _count_d_sized_qrs(monkeypatch):
    """Counts the (d, k) QRs of refinement half-steps (``_oriented``) in share_core._refine."""
    from share_core import _refine

    calls = []
    real = _refine._oriented

    def counted(x, xp):
        calls.append(tuple(x.shape))
        return real(x, xp)

    monkeypatch.setattr(_refine, "_oriented", counted)
    return calls


@pytest.mark.parametrize("steps", [1, 3])
def test_half_steps_orthonormalize_in_r_sized_space_where_the_gram_is_wider_than_the_data(backend, dtype,
                                                                                         monkeypatch, steps):
    """float32 data (Gram in float64): no (d, k) QR in the half-steps, the coefficients are orthonormalized
    through the (n, k) QR of the Gram root and the basis formed once at the end. float64 data (Gram as coarse as
    the data): a (d, k) QR per half-step. Either way, what the explicit half-steps give."""
    calls = _count_d_sized_qrs(monkeypatch)
    b, a, u, v = _module(11, n_items=6, r=3, d_out=50, d_in=44, k_b=3, k_a=3, noise=0.3)
    ref_u, ref_v = _reference(b, a, u, v, steps)
    got_u, got_v = (backend.to_numpy(t) for t in sc.refine_bases(*(backend.asarray(t, dtype) for t in (b, a, u, v)),
                                                                 steps=steps))
    assert len(calls) == (0 if dtype == "float32" else 2 * steps)
    for got, ref in ((got_u, ref_u), (got_v, ref_v)):
        assert np.allclose(projector(got), projector(ref), atol=ATOL[dtype])
        assert np.allclose(got.T @ got, np.eye(ref.shape[1]), atol=ATOL[dtype] / 10)
        assert np.all(got[np.argmax(np.abs(got), axis=0), range(got.shape[1])] > 0)


def _wide_spectrum(seed: int, n_items: int = 8, r: int = 4, d: int = 64, spread: float = 8.0):
    """Stacks whose singular values fall geometrically over `spread` decades, as (b, a, u, v) for refine_bases
    with k = n: the half-steps keep directions whose coefficients are large, where the Gram's rounding shows."""
    rng = np.random.default_rng(seed)
    n = n_items * r

    def stack():
        q, _ = np.linalg.qr(rng.standard_normal((d, n)))
        p, _ = np.linalg.qr(rng.standard_normal((n, n)))
        return (q * np.logspace(0, -spread, n)) @ p.T

    bs, as_ = stack(), stack()
    b = bs.reshape(d, n_items, r).transpose(1, 0, 2)
    a = as_.reshape(d, n_items, r).transpose(1, 2, 0)
    u, v = (np.linalg.qr(rng.standard_normal((d, n)))[0] for _ in range(2))
    return b, a, u, v


@pytest.mark.parametrize("spread", [5.0, 8.0])
def test_refined_bases_stay_orthonormal_over_a_wide_spectrum(backend, dtype, spread):
    """The r-sized orthonormalization is taken only where its rounding bound allows (with a float64 Gram of float64
    data it would have left U^T U - I at 1e-3): the bases are orthonormal to the data's precision."""
    for seed in range(3):
        got = sc.refine_bases(*(backend.asarray(t, dtype) for t in _wide_spectrum(seed, spread=spread)), steps=2)
        for basis in (backend.to_numpy(t).astype(np.float64) for t in got):
            defect = np.abs(basis.T @ basis - np.eye(basis.shape[1])).max()
            assert defect < (1e-6 if dtype == "float32" else 1e-13), (seed, defect)


def test_half_steps_fall_back_to_the_long_qr_when_the_small_factor_is_not_safely_invertible(backend, monkeypatch):
    """With the floor on the small factor's diagonal out of reach, every half-step of float32 data forms its basis
    and takes its (d, k) QR, and the result is the same bases (to rounding) as the r-sized route's."""
    from share_core import _refine

    b, a, u, v = (backend.asarray(t, "float32") for t in _module(12, noise=0.3))
    fast_u, fast_v = (backend.to_numpy(t) for t in sc.refine_bases(b, a, u, v, steps=2))
    calls = _count_d_sized_qrs(monkeypatch)
    monkeypatch.setattr(_refine, "DIAGONAL_FLOOR", 2.0)
    slow_u, slow_v = (backend.to_numpy(t) for t in sc.refine_bases(b, a, u, v, steps=2))
    assert len(calls) == 4  # two half-steps per step
    assert np.allclose(fast_u, slow_u, atol=1e-5) and np.allclose(fast_v, slow_v, atol=1e-5)
