"""basis, project, reconstruct: the exactness contract on every backend and every route."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import share_core as sc
from core_testing import BY_NAME, TOL, condition, low_rank, matrices, orthonormal, projector, rel, to_numpy
from share_core._basis import basis_with_route

ROUTES = ["auto", "svd", "gram", "covariance"]


def _roundtrip(backend, x_np, dtype, *, center=False, method="auto", k=None):
    """basis of x, then reconstruct x from its first k components; numpy results."""
    x = backend.asarray(x_np, dtype)
    u, energies, mean = sc.basis(x, center=center, method=method)
    u = u[:, :k] if k is not None else u
    x_hat = sc.reconstruct(sc.project(x, u, mean=mean), u, mean=mean)
    return backend.to_numpy(u), backend.to_numpy(energies), backend.to_numpy(x_hat)


def _held(x_np, dtype):
    """The data exactly as a `dtype` array holds them, in float64."""
    return x_np.astype(dtype).astype(np.float64)


@pytest.mark.parametrize("method", ROUTES)
@settings(max_examples=15, deadline=None)
@given(data=matrices())
def test_basis_is_orthonormal_and_its_projector_idempotent(backend, dtype, method, data):
    x_np, _ = data
    u, energies, _ = _roundtrip(backend, x_np, dtype, method=method)
    q = u.shape[1]
    assert np.allclose(u.T @ u, np.eye(q), atol=100 * TOL[dtype])
    p = projector(u)
    assert np.allclose(p, p.T, atol=100 * TOL[dtype])
    assert np.allclose(p @ p, p, atol=100 * TOL[dtype])
    assert np.all(np.diff(energies) <= 1e-6 * max(energies.max(initial=0), 1)), energies
    assert np.all(energies > 0)


@pytest.mark.parametrize("method", ROUTES)
@settings(max_examples=15, deadline=None)
@given(data=matrices())
def test_reconstruction_is_exact_at_the_rank_without_centering(backend, dtype, method, data):
    x_np, rank = data
    u, energies, x_hat = _roundtrip(backend, x_np, dtype, method=method)
    assert u.shape[1] == rank == energies.shape[0]
    if rank:
        assert rel(_held(x_np, dtype), x_hat) < TOL[dtype]
        assert np.allclose(np.sqrt(energies), np.linalg.svd(x_np, compute_uv=False)[:rank], rtol=1e-4)


@pytest.mark.parametrize("method", ROUTES)
@settings(max_examples=15, deadline=None)
@given(data=matrices(offset=True))
def test_reconstruction_is_exact_at_the_rank_with_centering(backend, dtype, method, data):
    x_np, rank = data
    u, _, x_hat = _roundtrip(backend, x_np, dtype, center=True, method=method)
    centered_rank = np.linalg.matrix_rank(x_np - x_np.mean(axis=1, keepdims=True), tol=1e-6)
    assert u.shape[1] == centered_rank <= rank
    assert rel(_held(x_np, dtype), x_hat) < TOL[dtype]


@settings(max_examples=15, deadline=None)
@given(data=matrices(min_rank=1), center=st.booleans())
def test_error_never_increases_with_k(backend, dtype, data, center):
    x_np, _ = data
    x = backend.asarray(x_np, dtype)
    u, _, mean = sc.basis(x, center=center)
    errors = []
    for k in range(u.shape[1] + 1):
        loadings = sc.project(x, u[:, :k], mean=mean)
        errors.append(float(sc.relative_error(x, sc.reconstruct(loadings, u[:, :k], mean=mean))))
    assert all(b <= a + TOL[dtype] for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < TOL[dtype]


@settings(max_examples=15, deadline=None)
@given(data=matrices(offset=True), center=st.booleans())
def test_every_route_spans_the_same_subspace(backend, dtype, data, center):
    """On well-conditioned data; the squared routes lose accuracy as eps * kappa**2 (see basis)."""
    x_np, _ = data
    assume(condition(x_np, center) <= 10)
    x = backend.asarray(x_np, dtype)
    projectors = {m: projector(backend.to_numpy(sc.basis(x, center=center, method=m)[0])) for m in ROUTES}
    for method in ROUTES[1:]:
        assert np.allclose(projectors[method], projectors["auto"], atol=1e-4 if dtype == "float32" else 1e-9), method


@settings(max_examples=15, deadline=None)
@given(data=matrices(offset=True), center=st.booleans())
def test_numpy_and_torch_give_the_same_projector(dtype, data, center):
    """Where the subspace is determined to the tolerance (its error grows as eps * kappa)."""
    x_np, _ = data
    assume(condition(x_np, center) <= 100)
    results = []
    for name in ("numpy", "torch"):
        backend = BY_NAME[name]
        u, energies, _ = sc.basis(backend.asarray(x_np, dtype), center=center)
        results.append((projector(backend.to_numpy(u)), backend.to_numpy(energies)))
    (p_np, e_np), (p_t, e_t) = results
    assert p_np.shape == p_t.shape
    assert np.allclose(p_np, p_t, atol=1e-4 if dtype == "float32" else 1e-9)
    # a scatter's eigenvalues carry an absolute error of about eps * s_max**2
    assert np.allclose(e_np, e_t, rtol=1e-4, atol=TOL[dtype] * e_np.max(initial=0.0))


@pytest.mark.parametrize("method", ROUTES)
def test_signs_are_deterministic(backend, method):
    x_np = low_rank(np.random.default_rng(3), 7, 5, [1.0, 0.7, 0.4, 0.2])
    u = backend.to_numpy(sc.basis(backend.asarray(x_np), method=method)[0])
    flipped = backend.to_numpy(sc.basis(backend.asarray(-x_np), method=method)[0])
    largest = u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])]
    assert np.all(largest > 0)
    assert np.allclose(u, flipped, atol=1e-10)


def test_float32_covariance_route_resolves_the_spectrum_by_accumulating_in_float64(backend):
    """float32, n >= d, singular values down to 1e-4: below what a float32 scatter resolves."""
    x_np = low_rank(np.random.default_rng(0), 6, 40, [1.0, 0.5, 1e-2, 1e-3, 1e-4])
    x = backend.asarray(x_np, "float32")
    u, _, x_hat = _roundtrip(backend, x_np, "float32")
    assert u.shape[1] == 5
    assert rel(_held(x_np, "float32"), x_hat) < TOL["float32"]
    assert basis_with_route(x)[3] == "covariance (float64)"
    assert basis_with_route(x, method="covariance", accumulate=False)[0].shape[1] < 5  # float32 alone


def test_auto_redoes_a_rank_deficient_float64_covariance_with_the_svd(backend):
    """float64 has no wider type: singular values of 1e-9 are below what its scatter resolves."""
    x_np = low_rank(np.random.default_rng(0), 6, 40, [1.0, 0.5, 1e-5, 1e-9])
    x = backend.asarray(x_np, "float64")
    u, _, x_hat = _roundtrip(backend, x_np, "float64")
    assert u.shape[1] == 4
    assert rel(x_np, x_hat) < TOL["float64"]
    assert basis_with_route(x)[3] == "covariance->svd"
    assert sc.basis(x, method="covariance")[0].shape[1] < 4


def test_auto_takes_the_covariance_route_for_wide_full_rank_data(backend, dtype):
    x = backend.asarray(np.random.default_rng(1).standard_normal((6, 40)), dtype)
    assert basis_with_route(x)[3] == "covariance"  # complete basis in the working precision
    assert basis_with_route(x[:, :5])[3] == "svd"


def test_rtol_drops_small_singular_values(backend, dtype):
    rng = np.random.default_rng(2)
    x_np = low_rank(rng, 8, 6, [1.0, 0.5, 1e-3])
    for method in ("svd", "auto"):
        assert sc.basis(backend.asarray(x_np, dtype), method=method)[0].shape[1] == 3
        assert sc.basis(backend.asarray(x_np, dtype), method=method, rtol=1e-2)[0].shape[1] == 2


@pytest.mark.parametrize("method", ROUTES)
@pytest.mark.parametrize("center", [False, True])
def test_zero_data_has_rank_zero(backend, method, center):
    u, energies, mean = sc.basis(backend.asarray(np.zeros((5, 3))), method=method, center=center)
    assert tuple(u.shape) == (5, 0) and tuple(energies.shape) == (0,)
    assert (mean is not None) == center


def test_project_and_reconstruct_follow_their_formulas(backend, dtype):
    rng = np.random.default_rng(4)
    x_np, u_np, m_np = rng.standard_normal((6, 4)), orthonormal(rng, 6, 3), rng.standard_normal(6)
    x, u, m = (backend.asarray(a, dtype) for a in (x_np, u_np, m_np))
    loadings = sc.project(x, u, mean=m)
    assert np.allclose(backend.to_numpy(loadings), u_np.T @ (x_np - m_np[:, None]), atol=1e-5)
    assert np.allclose(backend.to_numpy(sc.reconstruct(loadings, u, mean=m)), u_np @ u_np.T @ (x_np - m_np[:, None]) + m_np[:, None], atol=1e-5)
    assert np.allclose(backend.to_numpy(sc.project(x, u)), u_np.T @ x_np, atol=1e-5)


def test_torch_half_precision_is_computed_in_float32():
    rng = np.random.default_rng(5)
    x_np = low_rank(rng, 16, 6, [1.0, 0.8, 0.5, 0.3])
    for half in (torch.float16, torch.bfloat16):
        x = torch.asarray(x_np).to(half)
        exact = x.to(torch.float64)  # the half-precision data, held exactly
        u, energies, mean = sc.basis(x, center=True)
        assert u.dtype == energies.dtype == mean.dtype == torch.float32
        u64, e64, _ = sc.basis(exact, center=True)
        assert u.shape == u64.shape
        # the 4 signal directions are well separated from the rounding noise of the half data
        lead, lead64 = u[:, :4].double().numpy(), u64[:, :4].numpy()
        assert np.allclose(projector(lead), projector(lead64), atol=1e-5)
        assert np.allclose(energies.double().numpy(), e64.numpy(), rtol=1e-4, atol=1e-6)
        x_hat = sc.reconstruct(sc.project(x, u, mean=mean), u, mean=mean)
        assert x_hat.dtype == torch.float32 and rel(exact.numpy(), x_hat.double().numpy()) < TOL["float32"]


@pytest.mark.parametrize("backend", [BY_NAME["numpy"], BY_NAME["array_api_strict"], BY_NAME["torch"]],
                         ids=lambda b: b.name)
def test_the_scatter_is_summed_over_column_blocks_without_a_copy_of_the_stack(backend):
    # more columns than one block (2048), the largest magnitude negative: the sum over blocks is x x^T / c^2
    from share_core._basis import _SCATTER_BLOCK, _scatter

    g = np.random.default_rng(3)
    x_np = g.standard_normal((6, 2 * _SCATTER_BLOCK + 17)).astype(np.float32)
    x_np[2, 5] = -40.0
    x = backend.make(x_np, "float32")
    xp = sc.array_namespace(x)
    for dtype in ("float32", "float64"):
        s, c = _scatter(x, getattr(xp, dtype), xp)
        s, c = to_numpy(s), float(to_numpy(c))
        assert c == 40.0
        want = x_np.astype(np.float64) @ x_np.T.astype(np.float64)
        np.testing.assert_allclose(s * c * c, want, rtol=1e-5 if dtype == "float32" else 1e-12)
    # the covariance route on it gives the squared singular values
    u, energies, _ = sc.basis(x, method="covariance")
    np.testing.assert_allclose(to_numpy(energies), np.linalg.svd(x_np.astype(np.float64), compute_uv=False) ** 2,
                               rtol=1e-4)


def test_scatter_of_a_tall_stack_is_its_lower_triangle_mirrored(backend, dtype):
    """For d >= 1024 the scatter multiplies out only its lower triangle, 512 rows at a time, across column
    blocks: it must equal the plain product and be exactly symmetric (d not a multiple of 512, n across the
    2048-column blocks)."""
    from share_core._basis import _scatter

    rng = np.random.default_rng(5)
    x_np = low_rank(rng, 1100, 2500, np.logspace(0, -2, 40)) + 1e-3 * rng.standard_normal((1100, 2500))
    s, c = _scatter(backend.asarray(x_np, dtype), backend.asarray(x_np, dtype).dtype, backend.xp)
    s, c = to_numpy(s), float(to_numpy(c))
    y = x_np / c
    expected = y @ y.T
    assert s.shape == (1100, 1100)
    np.testing.assert_array_equal(s, s.T)
    assert np.abs(s - expected).max() <= (1e-5 if dtype == "float32" else 1e-12) * np.abs(expected).max()


def test_covariance_route_of_a_tall_stack_is_exact_at_the_rank(backend, dtype):
    rng = np.random.default_rng(6)
    x_np = low_rank(rng, 1100, 1300, np.logspace(0, -1, 30))
    u, energies, _, route = basis_with_route(backend.asarray(x_np, dtype), method="covariance")
    u = to_numpy(u)
    assert u.shape == (1100, 30) and route == "covariance"
    assert rel(u @ (u.T @ x_np), x_np) < (1e-4 if dtype == "float32" else 1e-10)
