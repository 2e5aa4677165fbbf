"""The one place that imports ``array_api_compat``, plus the dtype and backend helpers.

Everything else in ``share_core`` imports :func:`array_namespace`, :func:`device` and the
helpers from here, so the dependency on ``array_api_compat`` is a single line to audit.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from share_core._arguments import InvalidArgumentError
from share_core.errors import BackendError

__all__ = [
    "Array",
    "Namespace",
    "array_namespace",
    "device",
    "linalg_function",
    "work_dtype",
    "as_work",
    "is_torch",
]

Array = Any
"""Any array-API array (NumPy, PyTorch, array-api-strict, ...)."""

Namespace = Any
"""An array-API namespace, e.g. ``array_api_compat.numpy``."""


def array_namespace(*arrays: Array) -> Namespace:
    """The array-API namespace shared by `arrays` (``None`` entries are ignored).

    Parameters
    ----------
    *arrays : arrays or None
        Arrays of one library (NumPy, PyTorch, array-api-strict, ...).

    Returns
    -------
    namespace
        An array-API compatible namespace, e.g. ``array_api_compat.torch``.

    Raises
    ------
    BackendError
        When the arrays come from different libraries or are not arrays at all.
    """
    present = [a for a in arrays if a is not None]
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as exc:
        kinds = sorted({type(a).__module__ + "." + type(a).__qualname__ for a in present})
        raise BackendError(
            f"expected arrays of one array-API library, found {kinds} ({exc}); "
            "convert them to one library first (e.g. all torch.Tensor or all numpy.ndarray)"
        ) from exc


def device(x: Array) -> Any:
    """The device `x` lives on, as its own library spells it (``"cpu"``, ``torch.device``...)."""
    return array_api_compat.device(x)


def linalg_function(xp: Namespace, name: str, caller: str) -> Any:
    """``xp.linalg.<name>``, or a :class:`BackendError` that says who needs it and what to pass.

    Parameters
    ----------
    xp : namespace
        The array namespace in use.
    name : str
        The ``linalg`` function needed, e.g. ``"eigh"``.
    caller : str
        The public ``share_core`` function that needs it, for the message.
    """
    linalg = getattr(xp, "linalg", None)
    fn = getattr(linalg, name, None) if linalg is not None else None
    if fn is None:
        label = getattr(xp, "__name__", type(xp).__name__)
        raise BackendError(
            f"share_core.{caller} needs xp.linalg.{name} (the array-API linalg extension), "
            f"but the namespace {label!r} has no {'linalg' if linalg is None else 'linalg.' + name}; "
            "pass arrays of a library that implements it (NumPy, PyTorch, array-api-strict) "
            "or pass xp=array_api_compat.array_namespace(x) for such arrays"
        )
    return fn


def work_dtype(xp: Namespace, *arrays: Array) -> Any:
    """The floating dtype `arrays` are computed in: half precision becomes float32.

    float16 and bfloat16 (any real floating dtype narrower than 32 bits) map to
    ``xp.float32``; float32 and float64 stay as they are. Mixed dtypes follow the
    namespace's type promotion first (``xp.result_type``).

    Raises
    ------
    InvalidArgumentError
        When the (promoted) dtype is not a real floating dtype.
    """
    dtypes = [a.dtype for a in arrays]
    dtype = xp.result_type(*dtypes) if len(dtypes) > 1 else dtypes[0]
    if not xp.isdtype(dtype, "real floating"):
        raise InvalidArgumentError(
            f"expected real floating arrays (float16/bfloat16/float32/float64), found dtype {dtype}; "
            "cast the input first, e.g. x.astype(float32) / x.float()"
        )
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def as_work(x: Array, dtype: Any, xp: Namespace) -> Array:
    """`x` in `dtype` (no copy when it already is; the input is never modified)."""
    return x if x.dtype == dtype else xp.astype(x, dtype)


def is_numpy(xp: Namespace) -> bool:
    """Whether `xp` is NumPy's namespace (whose arrays SciPy's LAPACK wrappers take as they are)."""
    return array_api_compat.is_numpy_namespace(xp)


def is_torch(xp: Namespace) -> bool:
    """Whether `xp` is PyTorch's namespace (for the few calls it offers beyond the standard, e.g. an
    R-only QR; callers keep the standard route for every other namespace)."""
    return array_api_compat.is_torch_namespace(xp)
