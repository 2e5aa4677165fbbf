"""fold_scale, balance, dw_error, relative_error: LoRA pairs judged on dW = s B A."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import share_core as sc
from share_core.errors import ShapeError

scales = st.floats(-4.0, 4.0).filter(lambda s: abs(s) > 1e-3)


@st.composite
def lora_pair(draw, max_dim=8, max_r=5):
    """(b (d_out, r), a (r, d_in)) float64 with entries from bounded normals."""
    d_out, d_in, r = draw(st.integers(1, max_dim)), draw(st.integers(1, max_dim)), draw(st.integers(1, max_r))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.standard_normal((d_out, r)), rng.standard_normal((r, d_in))


@settings(max_examples=20, deadline=None)
@given(pair=lora_pair(), scale=scales)
def test_fold_scale_keeps_the_update(backend, dtype, pair, scale):
    b_np, a_np = pair
    b, a = sc.fold_scale(backend.asarray(b_np, dtype), backend.asarray(a_np, dtype), scale=scale)
    dense = backend.to_numpy(b) @ backend.to_numpy(a)
    assert np.allclose(dense, scale * b_np @ a_np, rtol=1e-5, atol=1e-5 * max(1, abs(scale)) * 10)
    assert np.allclose(np.abs(backend.to_numpy(a)), np.sqrt(abs(scale)) * np.abs(a_np), rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(pair=lora_pair(), scale=scales, rank_drop=st.booleans())
def test_balance_keeps_the_update_and_is_balanced(backend, dtype, pair, scale, rank_drop):
    b_np, a_np = pair
    if rank_drop:
        b_np = b_np.copy()
        b_np[:, -1] = 0.0  # PEFT-style untrained column
    b, a = sc.balance(backend.asarray(b_np, dtype), backend.asarray(a_np, dtype), scale=scale)
    b, a = backend.to_numpy(b), backend.to_numpy(a)
    assert b.shape == b_np.shape and a.shape == a_np.shape
    dense = scale * b_np @ a_np
    tol = 1e-5 if dtype == "float32" else 1e-10
    assert np.abs(b @ a - dense).max() <= tol * 10 * max(1.0, np.abs(dense).max())
    gram_b, gram_a = b.T @ b, a @ a.T
    assert np.allclose(gram_b, gram_a, atol=tol * 10 * max(1.0, np.abs(gram_b).max()))
    off_diagonal = gram_b - np.diag(np.diag(gram_b))
    assert np.abs(off_diagonal).max() <= tol * 10 * max(1.0, np.abs(gram_b).max())
    singular = np.linalg.svd(dense, compute_uv=False)
    m = min(b.shape[1], singular.size)
    assert np.allclose(np.diag(gram_b)[:m], singular[:m], atol=tol * 10 * max(1.0, singular.max()))


def test_balance_of_a_zero_update_is_zero(backend):
    b, a = sc.balance(backend.asarray(np.zeros((6, 4))), backend.asarray(np.ones((4, 5))), scale=2.0)
    assert tuple(b.shape) == (6, 4) and tuple(a.shape) == (4, 5)
    assert np.all(backend.to_numpy(b) == 0) and np.all(backend.to_numpy(a) == 0)


@settings(max_examples=20, deadline=None)
@given(pair=lora_pair(), r_hat=st.integers(1, 5), scale=scales, scale_hat=st.one_of(st.none(), scales), seed=st.integers(0, 999))
def test_dw_error_equals_the_dense_computation(backend, dtype, pair, r_hat, scale, scale_hat, seed):
    b_np, a_np = pair
    rng = np.random.default_rng(seed)
    bh_np, ah_np = rng.standard_normal((b_np.shape[0], r_hat)), rng.standard_normal((r_hat, a_np.shape[1]))
    abs_err, rel_err = sc.dw_error(
        *(backend.asarray(t, dtype) for t in (b_np, a_np, bh_np, ah_np)), scale=scale, scale_hat=scale_hat
    )
    s_hat = scale if scale_hat is None else scale_hat
    dense = scale * b_np @ a_np
    diff = np.linalg.norm(dense - s_hat * bh_np @ ah_np)
    assert tuple(abs_err.shape) == tuple(rel_err.shape) == ()
    floor = 20 * np.finfo(dtype).eps  # rounding of the inputs themselves, relative to ||dW||
    assert np.isclose(float(abs_err), diff, rtol=1e-4, atol=floor * np.linalg.norm(dense))
    assert np.isclose(float(rel_err), diff / np.linalg.norm(dense), rtol=1e-4, atol=floor)


def test_dw_error_resolves_tiny_differences(backend):
    """dW^ = dW (1 + 1e-7): the QR route sees 1e-7; trace formulas would drown it in 1e-8 noise."""
    rng = np.random.default_rng(3)
    b_np, a_np = rng.standard_normal((64, 8)), rng.standard_normal((8, 48))
    _, rel_err = sc.dw_error(*(backend.asarray(t) for t in (b_np, a_np, b_np * (1 + 1e-7), a_np)))
    assert abs(float(rel_err) - 1e-7) < 1e-10


def test_dw_error_with_zero_updates_does_not_raise(backend):
    z_b, a = backend.asarray(np.zeros((5, 2))), backend.asarray(np.ones((2, 3)))
    b = backend.asarray(np.ones((5, 2)))
    abs0, rel0 = sc.dw_error(z_b, a, z_b, a)
    assert float(abs0) == 0.0 and float(rel0) == 0.0
    abs1, rel1 = sc.dw_error(z_b, a, b, a)
    assert float(abs1) > 0 and float(rel1) == float("inf")


def test_dw_error_refuses_mismatched_shapes(backend):
    b, a = backend.asarray(np.ones((5, 2))), backend.asarray(np.ones((2, 3)))
    with pytest.raises(ShapeError, match=r"\(5, 2\).*\(3, 3\)"):
        sc.dw_error(b, backend.asarray(np.ones((3, 3))), b, a)
    with pytest.raises(ShapeError, match=r"\(4, 2\)"):
        sc.dw_error(b, a, backend.asarray(np.ones((4, 2))), a)
    with pytest.raises(sc.InvalidArgumentError):
        sc.dw_error(b, a, b, a, scale=float("inf"))
    with pytest.raises(sc.InvalidArgumentError):
        sc.fold_scale(b, a, scale=None)


@settings(max_examples=20, deadline=None)
@given(shape=st.tuples(st.integers(1, 5), st.integers(1, 5)), seed=st.integers(0, 2**32 - 1), noise=st.floats(0.0, 1.0))
def test_relative_error_is_the_frobenius_ratio(backend, dtype, shape, seed, noise):
    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal(shape)
    y_np = x_np + noise * rng.standard_normal(shape)
    got = sc.relative_error(backend.asarray(x_np, dtype), backend.asarray(y_np, dtype))
    assert tuple(got.shape) == ()
    assert np.isclose(float(got), np.linalg.norm(x_np - y_np) / np.linalg.norm(x_np), rtol=1e-4, atol=1e-6)


def test_relative_error_edge_cases(backend):
    zero, one = backend.asarray(np.zeros((2, 2))), backend.asarray(np.ones((2, 2)))
    assert float(sc.relative_error(zero, zero)) == 0.0
    assert float(sc.relative_error(zero, one)) == float("inf")
    big = backend.asarray(np.full((2, 2), 1e200))
    assert float(sc.relative_error(big, zero)) == 1.0  # no overflow in the squares
    with pytest.raises(ShapeError, match=r"\(2, 2\).*\(4,\)"):
        sc.relative_error(zero, backend.asarray(np.zeros(4)))


@pytest.mark.parametrize("magnitude", [None, 1e25, 1e-25, 1e-40])
@pytest.mark.parametrize("name", ["array_api_strict", "torch"])
def test_qr_scaling_keeps_r_at_the_ends_of_float32(name, magnitude, monkeypatch):
    """QRs off LAPACK (GPUs; array_api_strict here) scale each item by a power of two first, because GPU QRs
    square entries unscaled. R must come out as LAPACK's, down into the subnormals and up to an entry at the
    float32 maximum (`None`), whose log2 rounds up to 128 in float32: the scale must not become 2**128 = inf."""
    import array_api_strict
    import torch

    from share_core import _linalg

    if name == "torch":  # CPU torch takes the scaled path as a GPU would
        monkeypatch.setattr(_linalg, "_lapack_backed", lambda x, xp: False)
    if magnitude is None:  # one entry at the maximum, the rest small: R is representable
        x = np.array([[[3.4028235e38, 1.0], [1.0, 2.0], [0.5, 0.25]]], dtype=np.float32)
        magnitude = 3.4028235e38
    else:
        base = np.random.default_rng(7).standard_normal((3, 6, 4))
        x = (base / np.abs(base).max(axis=(1, 2), keepdims=True) * magnitude).astype(np.float32)
    expected = np.linalg.qr(x.astype(np.float64))[1]
    arr = array_api_strict.asarray(x) if name == "array_api_strict" else torch.asarray(x)
    xp = sc.array_namespace(arr)
    for r in (_linalg.qr(arr, "test", xp)[1], _linalg.r_factor(arr, "test", xp)):
        got = np.asarray(r.numpy() if name == "torch" else np.from_dlpack(r), dtype=np.float64)
        assert np.all(np.isfinite(got))
        # R is unique up to the sign of each row
        assert np.allclose(np.abs(got), np.abs(expected), rtol=1e-4, atol=1e-5 * magnitude)
