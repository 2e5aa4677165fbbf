"""basis(max_components=...): the leading columns only, the whole spectrum, exactness kept."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import share_core as sc
from core_testing import TOL, condition, low_rank, matrices, projector, rel
from share_core._basis import basis_with_route

ROUTES = ["auto", "svd", "gram", "covariance"]


@pytest.mark.parametrize("method", ROUTES)
@settings(max_examples=15, deadline=None)
@given(data=matrices(offset=True), center=st.booleans(), m=st.integers(1, 12))
def test_max_components_returns_the_leading_columns_and_every_energy(backend, dtype, method, data, center, m):
    """Where no float32 shortcut applies, the result is the full one, cut after m columns."""
    x = backend.asarray(data[0], dtype)
    u_all, e_all, mean_all, route_all = basis_with_route(x, center=center, method=method)
    u, energies, mean, route = basis_with_route(x, center=center, method=method, max_components=m)
    if route == "gram" and route_all != "gram":  # auto's Gram shortcut: only m <= n / 4 leading columns
        assert method == "auto" and dtype == "float32" and 4 * m <= x.shape[1]
        e, e_ref = backend.to_numpy(energies), backend.to_numpy(e_all)
        common = min(e.shape[0], e_ref.shape[0])  # the rank decision may differ at the rounding floor
        assert np.allclose(e[:common], e_ref[:common], rtol=1e-4, atol=1e-5 * (e_ref[0] if e_ref.size else 0.0))
        u_np = backend.to_numpy(u)
        assert u_np.shape == (x.shape[0], min(e.shape[0], m))
        assert np.allclose(u_np.T @ u_np, np.eye(u_np.shape[1]), atol=1e-5)
        return
    if route != route_all:  # auto kept a working-precision scatter that resolved more than m
        assert (method, route) == ("auto", "covariance") and energies.shape[0] > m
        assert tuple(u.shape) == (x.shape[0], m)
        return
    q = e_all.shape[0]
    assert tuple(u.shape) == (x.shape[0], min(q, m))
    assert np.array_equal(backend.to_numpy(energies), backend.to_numpy(e_all))
    assert np.allclose(backend.to_numpy(u), backend.to_numpy(u_all)[:, : min(q, m)], atol=1e-12)
    assert (mean is None) == (mean_all is None)


@pytest.mark.parametrize("method", ROUTES)
@settings(max_examples=15, deadline=None)
@given(draw=st.data(), center=st.booleans(), extra=st.integers(0, 3))
def test_reconstruction_stays_exact_when_max_components_reaches_the_rank(backend, dtype, method, draw, center, extra):
    # an offset only with centering, as in test_core_basis (a rank-0 matrix plus a 1e-45
    # offset is subnormal in float32, and no route reconstructs that exactly)
    x_np, _ = draw.draw(matrices(offset=center))
    if method in ("gram", "covariance"):  # forced squared routes resolve s down to ~1e-8 s_max only
        assume(condition(x_np, center) <= 1e3)
    x = backend.asarray(x_np, dtype)
    q = sc.basis(x, center=center, method=method)[1].shape[0]
    u, energies, mean = sc.basis(x, center=center, method=method, max_components=max(q, 1) + extra)
    assert u.shape[1] == energies.shape[0] == q
    x_hat = sc.reconstruct(sc.project(x, u, mean=mean), u, mean=mean)
    assert rel(x_np.astype(dtype).astype(np.float64), backend.to_numpy(x_hat)) < TOL[dtype]


def test_a_float32_scatter_that_resolves_more_than_asked_is_not_redone(backend):
    """float32, n >= d: singular values 1 .. 1e-4; float32 resolves 4 of the 5 components."""
    x_np = low_rank(np.random.default_rng(0), 6, 40, [1.0, 0.5, 1e-2, 1e-3, 1e-4])
    x = backend.asarray(x_np, "float32")
    held = x_np.astype("float32").astype(np.float64)
    exact = np.linalg.svd(held)[0]
    for m in (1, 2, 3):
        u, energies, _, route = basis_with_route(x, max_components=m)
        assert route == "covariance" and u.shape[1] == m and energies.shape[0] == 4
        # what a user sees: the error at k = m is the optimal (Eckart-Young) one
        u_np = backend.to_numpy(u)
        best = rel(held, projector(exact[:, :m]) @ held)
        assert rel(held, projector(u_np) @ held) <= best * (1 + 1e-3) + TOL["float32"]
        assert np.allclose(u_np.T @ u_np, np.eye(m), atol=1e-5)
        assert sc.explained_variance(energies, m) == pytest.approx(
            sc.explained_variance(sc.basis(x)[1], m), rel=1e-6
        )
    for m in (4, 5, 9):  # the rank may be m: redone in float64, exact at full rank
        u, energies, _, route = basis_with_route(x, max_components=m)
        assert route == "covariance (float64)" and u.shape[1] == min(m, 5) and energies.shape[0] == 5


def test_a_complete_float32_basis_is_kept_whatever_max_components(backend):
    x = backend.asarray(np.random.default_rng(1).standard_normal((6, 40)), "float32")
    for m in (1, 6, 10):
        u, energies, _, route = basis_with_route(x, max_components=m)
        assert route == "covariance" and u.shape[1] == min(m, 6) and energies.shape[0] == 6


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3", np.float64(2.0)])
def test_max_components_must_be_a_positive_int(backend, bad):
    x = backend.asarray(np.ones((4, 3)))
    message = r"expected max_components to be an int >= 1 or None, found .*; pass"
    with pytest.raises(sc.InvalidArgumentError, match=message):
        sc.basis(x, max_components=bad)


def test_max_components_accepts_integer_like_values(backend):
    x = backend.asarray(np.random.default_rng(2).standard_normal((5, 4)))
    assert sc.basis(x, max_components=np.int64(2))[0].shape[1] == 2
