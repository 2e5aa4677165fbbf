"""stack, center, covariance and the chunked scatter statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import share_core as sc
from core_testing import TOL
from share_core.errors import ShapeError

widths = st.lists(st.integers(0, 4), min_size=1, max_size=4)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 6), ws=widths, seed=st.integers(0, 2**32 - 1))
def test_stack_concatenates_columns_in_order(backend, d, ws, seed):
    rng = np.random.default_rng(seed)
    blocks = [rng.standard_normal((d, w)) for w in ws]
    out = sc.stack([backend.asarray(b) for b in blocks])
    assert tuple(out.shape) == (d, sum(ws))
    assert np.array_equal(backend.to_numpy(out), np.concatenate(blocks, axis=1))


def test_stack_refuses_mismatched_rows_and_names_the_shapes(backend):
    blocks = [backend.asarray(np.zeros((4, 2))), backend.asarray(np.zeros((5, 2)))]
    with pytest.raises(ShapeError, match=r"\(4, 2\).*\(5, 2\)"):
        sc.stack(blocks)
    with pytest.raises(ShapeError, match=r"\(3,\)"):
        sc.stack([backend.asarray(np.zeros(3))])
    with pytest.raises(sc.InvalidArgumentError):
        sc.stack([])


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 6), n=st.integers(1, 8), seed=st.integers(0, 2**32 - 1), shift=st.floats(-5, 5))
def test_center_removes_the_column_mean(backend, dtype, d, n, seed, shift):
    x_np = np.random.default_rng(seed).standard_normal((d, n)) + shift
    xc, mean = sc.center(backend.asarray(x_np, dtype))
    assert np.allclose(backend.to_numpy(mean), x_np.mean(axis=1), atol=1e-5)
    assert np.allclose(backend.to_numpy(xc), x_np - x_np.mean(axis=1, keepdims=True), atol=1e-5)


def _chunks(draw_cuts, n):
    """Split points of range(n) from a sorted list of cut positions."""
    cuts = sorted({min(c, n) for c in draw_cuts})
    return list(zip([0, *cuts], [*cuts, n]))


@settings(max_examples=15, deadline=None)
@given(
    d=st.integers(1, 6),
    n=st.integers(1, 10),
    cuts=st.lists(st.integers(0, 10), max_size=3),
    seed=st.integers(0, 2**32 - 1),
    offset=st.floats(-3, 3),
)
def test_chunked_scatter_equals_one_shot(backend, dtype, d, n, cuts, seed, offset):
    x_np = np.random.default_rng(seed).standard_normal((d, n)) + offset
    x = backend.asarray(x_np, dtype)
    mean = backend.asarray(np.full(d, 0.5), dtype)
    pieces = [x[:, a:b] for a, b in _chunks(cuts, n)]
    for m, m_np in ((None, 0.0), (mean, 0.5)):
        total = sum(backend.to_numpy(sc.covariance(p, mean=m)) for p in pieces)
        one_shot = backend.to_numpy(sc.covariance(x, mean=m))
        expected = (x_np - m_np) @ (x_np - m_np).T
        assert np.allclose(total, one_shot, rtol=1e-5, atol=1e-4)
        assert np.allclose(one_shot, expected, rtol=1e-5, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(
    d=st.integers(1, 6),
    n=st.integers(1, 10),
    cuts=st.lists(st.integers(0, 10), max_size=3),
    seed=st.integers(0, 2**32 - 1),
    offset=st.floats(-3, 3),
    use_shift=st.booleans(),
)
def test_centered_scatter_accumulated_in_chunks_equals_one_shot(backend, dtype, d, n, cuts, seed, offset, use_shift):
    x_np = np.random.default_rng(seed).standard_normal((d, n)) + offset
    x = backend.asarray(x_np, dtype)
    pieces = [x[:, a:b] for a, b in _chunks(cuts, n)]
    shift = x[:, 0] if use_shift else None
    stats = [sc.scatter_stats(p, shift=shift) for p in pieces]
    scatter = sum(s for s, _, _ in stats[1:]) + stats[0][0] if len(stats) > 1 else stats[0][0]
    colsum = sum(c for _, c, _ in stats[1:]) + stats[0][1] if len(stats) > 1 else stats[0][1]
    count = sum(k for _, _, k in stats)
    cov, mean = sc.centered_scatter(scatter, colsum, count, shift=shift)
    xc, mean_one = sc.center(x)
    expected = x_np - x_np.mean(axis=1, keepdims=True)
    assert count == n
    assert np.allclose(backend.to_numpy(mean), backend.to_numpy(mean_one), atol=1e-5)
    assert np.allclose(backend.to_numpy(cov), backend.to_numpy(sc.covariance(x, mean=mean_one)), rtol=1e-4, atol=1e-4)
    assert np.allclose(backend.to_numpy(cov), expected @ expected.T, rtol=1e-4, atol=1e-4)


def test_shift_keeps_the_centered_scatter_accurate_far_from_the_origin(backend):
    """float32 data at 1e4 with spread 1: raw sums lose everything, a shift keeps 1e-5."""
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((3, 50)) + 1e4
    x = backend.asarray(x_np, "float32")
    held = x_np.astype(np.float32).astype(np.float64)
    expected = (held - held.mean(axis=1, keepdims=True)) @ (held - held.mean(axis=1, keepdims=True)).T
    cov, _ = sc.centered_scatter(*sc.scatter_stats(x, shift=x[:, 0]), shift=x[:, 0])
    assert np.abs(backend.to_numpy(cov) - expected).max() / np.abs(expected).max() < TOL["float32"] * 10


def test_scatter_inputs_are_validated(backend):
    x = backend.asarray(np.zeros((3, 4)))
    with pytest.raises(ShapeError, match=r"\(2,\)"):
        sc.covariance(x, mean=backend.asarray(np.zeros(2)))
    with pytest.raises(ShapeError, match=r"\(3, 4\)"):
        sc.centered_scatter(x, backend.asarray(np.zeros(3)), 4)
    with pytest.raises(sc.InvalidArgumentError):
        sc.centered_scatter(backend.asarray(np.zeros((3, 3))), backend.asarray(np.zeros(3)), 0)
    with pytest.raises(ShapeError):
        sc.center(backend.asarray(np.zeros((3, 0))))
