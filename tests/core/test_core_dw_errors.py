"""dw_errors: the batched dW error agrees with dw_error item by item, zero norms included."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import share_core as sc
from core_testing import BY_NAME
from share_core.errors import ShapeError

scales = st.floats(-4.0, 4.0).filter(lambda s: abs(s) > 1e-3)


@st.composite
def stacks(draw, max_n=4, max_dim=8, max_r=5):
    """(b, a, b_hat, a_hat) float64 stacks; ranks may exceed d_out or d_in, items may be zero."""
    n, d_out, d_in = draw(st.integers(1, max_n)), draw(st.integers(1, max_dim)), draw(st.integers(1, max_dim))
    r, r_hat = draw(st.integers(0, max_r)), draw(st.integers(0, max_r))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b, a = rng.standard_normal((n, d_out, r)), rng.standard_normal((n, r, d_in))
    b_hat = rng.standard_normal((n, d_out, r_hat))
    a_hat = rng.standard_normal((n, r_hat, d_in))
    near = draw(st.lists(st.sampled_from(["random", "close", "zero_ref", "zero_both"]), min_size=n, max_size=n))
    for i, kind in enumerate(near):
        if kind == "close" and r_hat >= r:  # dW^ within 1e-3 of dW: the cancelling case
            b_hat[i] = 0.0
            b_hat[i, :, :r] = b[i] + 1e-3 * rng.standard_normal((d_out, r))
            a_hat[i, :r] = a[i]
        if kind in ("zero_ref", "zero_both"):
            b[i] = 0.0
        if kind == "zero_both":
            b_hat[i] = 0.0
    return b, a, b_hat, a_hat


def _each(backend, arrays, dtype, scale, scale_hat):
    """dw_error per item, as float64 NumPy (abs_err, rel_err) of shape (N,)."""
    results = [
        sc.dw_error(*(backend.asarray(t[i], dtype) for t in arrays), scale=scale, scale_hat=scale_hat)
        for i in range(arrays[0].shape[0])
    ]
    return tuple(np.array([float(res[j]) for res in results]) for j in (0, 1))


def _tolerance(arrays, dtype, scale, scale_hat):
    """Absolute rounding floor of ||dW - dW^||_F per item: eps * (||s b|| ||a|| + ||s' b^|| ||a^||)."""
    b, a, b_hat, a_hat = arrays
    s_hat = scale if scale_hat is None else scale_hat
    sizes = abs(scale) * np.linalg.norm(b, axis=(1, 2)) * np.linalg.norm(a, axis=(1, 2))
    sizes = sizes + abs(s_hat) * np.linalg.norm(b_hat, axis=(1, 2)) * np.linalg.norm(a_hat, axis=(1, 2))
    return 50 * np.finfo(dtype).eps * sizes


@settings(max_examples=25, deadline=None)
@given(arrays=stacks(), scale=scales, scale_hat=st.one_of(st.none(), scales))
def test_dw_errors_equals_dw_error_item_by_item(backend, dtype, arrays, scale, scale_hat):
    abs_err, rel_err = sc.dw_errors(*(backend.asarray(t, dtype) for t in arrays), scale=scale, scale_hat=scale_hat)
    n = arrays[0].shape[0]
    assert tuple(abs_err.shape) == tuple(rel_err.shape) == (n,)
    assert array_api_compat.array_namespace(abs_err, rel_err) is backend.xp
    want_abs, want_rel = _each(backend, arrays, dtype, scale, scale_hat)
    got_abs, got_rel = backend.to_numpy(abs_err), backend.to_numpy(rel_err)
    floor = _tolerance(arrays, dtype, scale, scale_hat)
    assert np.all(np.abs(got_abs - want_abs) <= 1e-5 * want_abs + floor), (got_abs, want_abs)
    # the zero-norm rule, exactly: 0 when both updates vanish, inf when only dW does
    assert np.array_equal(np.isinf(got_rel), np.isinf(want_rel)), (got_rel, want_rel)
    assert np.array_equal(got_rel == 0, want_rel == 0), (got_rel, want_rel)
    finite = np.isfinite(want_rel) & (want_rel > 0)
    ref_norm = want_abs[finite] / want_rel[finite]
    assert np.all(np.abs(got_rel[finite] - want_rel[finite]) <= 1e-5 * want_rel[finite] + floor[finite] / ref_norm)


def test_dw_errors_resolves_tiny_differences(backend):
    """dW^ = dW (1 + 1e-7) in every item, whichever side the QR is taken on."""
    rng = np.random.default_rng(3)
    for d_out, d_in in ((64, 48), (48, 64)):
        b, a = rng.standard_normal((3, d_out, 8)), rng.standard_normal((3, 8, d_in))
        _, rel_err = sc.dw_errors(*(backend.asarray(t) for t in (b, a, b * (1 + 1e-7), a)))
        assert np.all(np.abs(backend.to_numpy(rel_err) - 1e-7) < 1e-10)


def test_dw_errors_zero_rules_in_one_batch(backend):
    """Item 0: dW = dW^ = 0; item 1: only dW = 0; item 2: an ordinary pair (PEFT's zero B init)."""
    b = np.stack([np.zeros((5, 2)), np.zeros((5, 2)), np.ones((5, 2))])
    b_hat = np.stack([np.zeros((5, 2)), np.ones((5, 2)), 0.5 * np.ones((5, 2))])
    a = np.ones((3, 2, 3))
    abs_err, rel_err = sc.dw_errors(*(backend.asarray(t) for t in (b, a, b_hat, a)))
    abs_np, rel_np = backend.to_numpy(abs_err), backend.to_numpy(rel_err)
    dense = np.linalg.norm(np.ones((5, 3)) * 2)  # ||1_(5x2) 1_(2x3)||_F
    assert abs_np[0] == 0.0 and rel_np[0] == 0.0
    assert np.isclose(abs_np[1], dense) and rel_np[1] == np.inf
    assert np.isclose(abs_np[2], 0.5 * dense) and np.isclose(rel_np[2], 0.5)


def test_dw_errors_of_empty_stacks_and_zero_ranks(backend):
    b, a = backend.asarray(np.ones((2, 4, 0))), backend.asarray(np.ones((2, 0, 3)))
    abs_err, rel_err = sc.dw_errors(b, a, b, a)
    assert np.all(backend.to_numpy(abs_err) == 0) and np.all(backend.to_numpy(rel_err) == 0)
    none = backend.asarray(np.ones((0, 4, 2))), backend.asarray(np.ones((0, 2, 3)))
    abs_err, rel_err = sc.dw_errors(*none, *none)
    assert tuple(abs_err.shape) == tuple(rel_err.shape) == (0,)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # NumPy's first, unscaled try
@pytest.mark.parametrize("magnitude", [1e25, 1e-25])
def test_dw_errors_neither_overflows_nor_underflows_in_float32(backend, magnitude):
    """Entries whose squares leave float32's range: the norms are still right."""
    rng = np.random.default_rng(4)
    b, a = rng.standard_normal((2, 6, 3)), rng.standard_normal((2, 3, 7))
    b_hat = b * 0.5
    abs_err, rel_err = sc.dw_errors(*(backend.asarray(t, "float32") for t in (b * magnitude, a, b_hat * magnitude, a)))
    dense = np.linalg.norm(b @ a, axis=(1, 2))
    assert np.allclose(backend.to_numpy(abs_err), 0.5 * dense * magnitude, rtol=1e-5)
    assert np.allclose(backend.to_numpy(rel_err), 0.5, rtol=1e-5)


@pytest.mark.parametrize("name", ["numpy", "torch"])
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_dw_errors_computes_half_precision_in_float32(name, half):
    if name == "numpy" and half == "bfloat16":
        pytest.skip("NumPy has no bfloat16")
    backend = BY_NAME[name]
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(s) for s in ((3, 16, 4), (3, 4, 12), (3, 16, 6), (3, 6, 12))]
    halves = [backend.asarray(t, half) for t in arrays]
    abs_err, rel_err = sc.dw_errors(*halves, scale=2.0)
    assert abs_err.dtype == rel_err.dtype == backend.xp.float32
    for i in range(3):
        want_abs, want_rel = sc.dw_error(*(t[i] for t in halves), scale=2.0)
        assert want_abs.dtype == abs_err.dtype
        assert np.isclose(float(abs_err[i]), float(want_abs), rtol=1e-5)
        assert np.isclose(float(rel_err[i]), float(want_rel), rtol=1e-5)


def test_dw_errors_promotes_mixed_dtypes_like_dw_error():
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal(s) for s in ((2, 5, 2), (2, 2, 4), (2, 5, 3), (2, 3, 4))]
    mixed = [torch.asarray(t, dtype=torch.float32 if i % 2 else torch.float64) for i, t in enumerate(arrays)]
    abs_err, _ = sc.dw_errors(*mixed)
    assert abs_err.dtype == sc.dw_error(*(t[0] for t in mixed))[0].dtype == torch.float64


def test_dw_errors_refuses_bad_shapes_and_scales(backend):
    b, a = backend.asarray(np.ones((2, 5, 2))), backend.asarray(np.ones((2, 2, 3)))
    with pytest.raises(ShapeError, match=r"3-D stack, found shape \(5, 2\)"):
        sc.dw_errors(backend.asarray(np.ones((5, 2))), a, b, a)
    with pytest.raises(ShapeError, match=r"\(3, 5, 2\)"):
        sc.dw_errors(b, a, backend.asarray(np.ones((3, 5, 2))), a)  # another N
    with pytest.raises(ShapeError, match=r"\(2, 3, 3\)"):
        sc.dw_errors(b, backend.asarray(np.ones((2, 3, 3))), b, a)  # r of b and a differ
    with pytest.raises(ShapeError, match=r"\(2, 4, 2\)"):
        sc.dw_errors(b, a, backend.asarray(np.ones((2, 4, 2))), a)  # another d_out
    with pytest.raises(sc.InvalidArgumentError):
        sc.dw_errors(b, a, b, a, scale_hat=float("nan"))


def test_dw_errors_leaves_its_inputs_untouched():
    """The read-only NumPy backend raises on any in-place write."""
    backend = BY_NAME["numpy_readonly"]
    rng = np.random.default_rng(7)
    arrays = [backend.asarray(rng.standard_normal(s)) for s in ((2, 5, 2), (2, 2, 4), (2, 5, 3), (2, 3, 4))]
    before = [np.array(t) for t in arrays]
    sc.dw_errors(*arrays, scale=3.0, scale_hat=-1.0)
    assert all(np.array_equal(t, b) for t, b in zip(arrays, before))
