"""Namespace, device and dtype of every output; inputs untouched; backend errors."""

from __future__ import annotations

import types

import array_api_compat
import array_api_strict
import numpy as np
import pytest
import torch

import share_core as sc
from core_testing import BY_NAME
from share_core.errors import BackendError


def _data(rng):
    return {
        "x": rng.standard_normal((6, 4)),
        "x2": rng.standard_normal((6, 3)),
        "b": rng.standard_normal((6, 3)),
        "a": rng.standard_normal((3, 5)),
        "s": (lambda m: m @ m.T)(rng.standard_normal((6, 6))),
        "mean": rng.standard_normal(6),
        "u": np.linalg.qr(rng.standard_normal((6, 2)))[0],
        "e": np.array([3.0, 2.0, 1.0]),
    }


def _calls(t):
    """Every public array-returning function on the arrays `t`; yields (name, outputs)."""
    yield "stack", [sc.stack([t["x"], t["x2"]])]
    yield "center", list(sc.center(t["x"]))
    yield "covariance", [sc.covariance(t["x"], mean=t["mean"])]
    scatter, colsum, _ = sc.scatter_stats(t["x"], shift=t["mean"])
    yield "scatter_stats", [scatter, colsum]
    yield "centered_scatter", list(sc.centered_scatter(scatter, colsum, 4, shift=t["mean"]))
    yield "eigh", list(sc.eigh(t["s"]))
    for method in ("auto", "svd", "gram", "covariance"):
        yield f"basis[{method}]", list(sc.basis(t["x"], center=True, method=method))
    yield "project", [sc.project(t["x"], t["u"], mean=t["mean"])]
    yield "reconstruct", [sc.reconstruct(t["x"][:2, :], t["u"], mean=t["mean"])]
    basis, mean, loadings, energies = sc.compress_side([t["x"], t["x2"]], k=3, center=True)
    yield "compress_side", [basis, mean, *loadings, energies]
    yield "fold_scale", list(sc.fold_scale(t["b"], t["a"], scale=2.0))
    yield "balance", list(sc.balance(t["b"], t["a"], scale=2.0))
    yield "dw_error", list(sc.dw_error(t["b"], t["a"], t["b"], t["a"] * 0.5, scale=2.0))
    yield "relative_error", [sc.relative_error(t["x"], t["x"] * 0.9)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_outputs_keep_namespace_device_and_dtype_and_inputs_are_untouched(backend, dtype):
    raw = _data(np.random.default_rng(0))
    arrays = {k: backend.asarray(v, dtype) for k, v in raw.items()}
    before = {k: backend.to_numpy(v) for k, v in arrays.items()}
    xp, dev = backend.xp, backend.device()
    for name, outputs in _calls(arrays):
        for out in outputs:
            assert array_api_compat.array_namespace(out) is xp, name
            assert array_api_compat.device(out) == dev, name
            assert out.dtype == getattr(xp, dtype), name
    for k, v in arrays.items():
        assert np.array_equal(backend.to_numpy(v), before[k]), f"{k} was modified"


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_inputs_give_float32_outputs(backend_name, half):
    backend = BY_NAME[backend_name]
    if half == "bfloat16" and backend_name == "numpy":
        pytest.skip("NumPy has no bfloat16")
    arrays = {k: backend.asarray(v, half) for k, v in _data(np.random.default_rng(1)).items()}
    for name, outputs in _calls(arrays):
        if name == "stack":  # stacking computes nothing: it keeps the input dtype
            assert all(o.dtype == arrays["x"].dtype for o in outputs)
            continue
        for out in outputs:
            assert out.dtype == backend.xp.float32, (name, out.dtype)


def test_half_precision_is_as_accurate_as_float32_on_the_same_values():
    """bfloat16 data computed in float32 agree with float64 on the same (rounded) values."""
    raw = _data(np.random.default_rng(2))
    half = {k: torch.asarray(v).to(torch.bfloat16) for k, v in raw.items()}
    exact = {k: v.double() for k, v in half.items()}
    _, rel_half = sc.dw_error(half["b"], half["a"], half["b"], half["a"] * 0.5)
    _, rel_exact = sc.dw_error(exact["b"], exact["a"], exact["b"], exact["a"] * 0.5)
    assert abs(float(rel_half) - float(rel_exact)) < 1e-6
    cov_half = sc.covariance(half["x"], mean=half["mean"]).double()
    cov_exact = sc.covariance(exact["x"], mean=exact["mean"])
    assert torch.allclose(cov_half, cov_exact, rtol=1e-6, atol=1e-5)


class _NoLinalg(types.SimpleNamespace):
    """array-api-strict without the linalg extension (a namespace that never had one)."""

    def __getattr__(self, name):
        if name == "linalg":
            raise AttributeError(name)
        return getattr(array_api_strict, name)


NO_LINALG = _NoLinalg(__name__="no_linalg")


@pytest.mark.parametrize(
    "name, call",
    [
        ("eigh", lambda x, s: sc.eigh(s, xp=NO_LINALG)),
        ("basis", lambda x, s: sc.basis(x, xp=NO_LINALG)),
        ("basis", lambda x, s: sc.basis(x, method="gram", xp=NO_LINALG)),
        ("basis", lambda x, s: sc.compress_side([x], k=1, xp=NO_LINALG)),
        ("balance", lambda x, s: sc.balance(x, x.mT, scale=1.0, xp=NO_LINALG)),
        ("dw_error", lambda x, s: sc.dw_error(x, x.mT, x, x.mT, xp=NO_LINALG)),
    ],
)
def test_a_namespace_without_linalg_gets_a_backend_error(name, call):
    x = array_api_strict.asarray(np.random.default_rng(0).standard_normal((4, 3)))
    with pytest.raises(BackendError, match=rf"share_core\.{name} needs xp\.linalg\..*no_linalg.*pass") as info:
        call(x, x @ x.mT)
    assert isinstance(info.value, TypeError)


def test_linalg_free_functions_work_without_linalg():
    x_np = np.random.default_rng(0).standard_normal((4, 3))
    x = array_api_strict.asarray(x_np)
    u = array_api_strict.asarray(np.eye(4, 2))
    assert np.allclose(np.from_dlpack(sc.covariance(x, xp=NO_LINALG)), x_np @ x_np.T)
    assert np.allclose(np.from_dlpack(sc.reconstruct(sc.project(x, u, xp=NO_LINALG), u, xp=NO_LINALG)), np.eye(4, 2) @ x_np[:2, :])
    assert float(sc.relative_error(x, x, xp=NO_LINALG)) == 0.0


def test_mixed_libraries_and_bad_dtypes_are_refused():
    with pytest.raises(BackendError, match="one array-API library"):
        sc.project(np.ones((3, 2)), torch.ones(3, 1))
    with pytest.raises(sc.InvalidArgumentError, match="real floating"):
        sc.basis(np.ones((3, 2), dtype=np.int64))
    with pytest.raises(sc.InvalidArgumentError, match="NaN or infinity"):
        sc.basis(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(sc.InvalidArgumentError, match="method"):
        sc.basis(np.ones((3, 2)), method="lanczos")
    with pytest.raises(sc.InvalidArgumentError, match="rtol"):
        sc.basis(np.ones((3, 2)), rtol=2.0)
