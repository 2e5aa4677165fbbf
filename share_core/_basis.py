"""The shared basis of a stack of columns: one public entry, three exact routes."""

from __future__ import annotations

from share_core._arguments import InvalidArgumentError, check_matrix, check_real
from share_core._compat import Array, Namespace, array_namespace, as_work, linalg_function, work_dtype
from share_core._linalg import check_finite, column_signs, eigh, svd
from share_core._stats import center as center_columns

__all__ = ["basis", "METHODS"]

METHODS = ("auto", "svd", "gram", "covariance")


def _count_above(values: Array, threshold: Array, xp: Namespace) -> int:
    """Number of entries of a descending 1-D array strictly above `threshold` (one sync)."""
    return int(xp.sum(xp.astype(values > threshold, xp.int32)))


def _svd_route(x: Array, rtol: float, xp: Namespace) -> tuple[Array, Array]:
    """Thin SVD of x (d, n): keep singular values > rtol * s_max."""
    u, s, _ = svd(x, "basis", xp)
    q = _count_above(s, rtol * s[0], xp)
    return u[:, :q], (s * s)[:q]


def _eig_floor(rtol: float, size: int, eps: float) -> float:
    """Relative eigenvalue threshold of the squared routes.

    An eigenvalue of a (size, size) Gram or covariance matrix is only known to about
    ``size * eps * w_max``; smaller ones are rounding noise, so the threshold on
    ``w = s**2`` is ``max(rtol**2, size * eps)`` times the largest eigenvalue.
    """
    return max(rtol * rtol, size * eps)


def _gram_route(x: Array, rtol: float, xp: Namespace) -> tuple[Array, Array]:
    """Eigenvectors V of the (n, n) Gram matrix x^T x, then u = x V / s."""
    w, v = eigh(x.mT @ x, xp=xp)
    floor = _eig_floor(rtol, x.shape[1], xp.finfo(x.dtype).eps)
    q = _count_above(w, floor * w[0], xp)
    w = w[:q]
    u = (x @ v[:, :q]) / xp.sqrt(w)[None, :]
    return u * column_signs(u, xp)[None, :], w


def _covariance_route(x: Array, rtol: float, xp: Namespace) -> tuple[Array, Array]:
    """Eigenvectors of the (d, d) scatter x x^T."""
    w, v = eigh(x @ x.mT, xp=xp)
    floor = _eig_floor(rtol, x.shape[0], xp.finfo(x.dtype).eps)
    q = _count_above(w, floor * w[0], xp)
    return v[:, :q], w[:q]


_ROUTES = {"svd": _svd_route, "gram": _gram_route, "covariance": _covariance_route}
_NEEDS = {"auto": ("svd", "eigh"), "svd": ("svd",), "gram": ("eigh",), "covariance": ("eigh",)}


def _auto(x: Array, rtol: float, max_rank: int, xp: Namespace) -> tuple[Array, Array]:
    """Cheapest exact route: thin SVD when n < d; covariance when n >= d, unless rank-deficient.

    The covariance route is exact when it finds the full rank (its basis then spans
    everything). When it finds fewer components than `max_rank`, the dropped directions may
    hold singular values it cannot resolve (below ~sqrt(d * eps) * s_max), so the thin SVD
    decides instead.
    """
    d, n = x.shape
    if n < d:
        return _svd_route(x, rtol, xp)
    u, energies = _covariance_route(x, rtol, xp)
    if u.shape[1] < max_rank:
        return _svd_route(x, rtol, xp)
    return u, energies


def _check_options(method: str, rtol: float | None) -> float | None:
    """Validate `method` and `rtol`; return rtol as a float (or None)."""
    if method not in METHODS:
        raise InvalidArgumentError(f"expected method to be one of {METHODS}, found {method!r}")
    if rtol is None:
        return None
    value = check_real(rtol, "rtol")
    if not 0.0 <= value < 1.0:
        raise InvalidArgumentError(f"expected rtol in [0, 1), found {value}")
    return value


def basis(
    x: Array,
    /,
    *,
    center: bool = False,
    method: str = "auto",
    rtol: float | None = None,
    xp: Namespace | None = None,
) -> tuple[Array, Array, Array | None]:
    """Orthonormal basis of the column space of `x`: every component up to its numerical rank.

    Parameters
    ----------
    x : array, shape (d, n)
        Stacked columns (see :func:`stack`), ``d, n >= 1``, finite. Not modified.
    center : bool, default False
        Subtract the column mean first and return it; reconstruction must add it back.
    method : {"auto", "svd", "gram", "covariance"}, default "auto"
        ``"svd"``: thin SVD of the (d, n) data. ``"gram"``: eigendecomposition of the (n, n)
        Gram matrix, ``u = x v / s``. ``"covariance"``: eigendecomposition of the (d, d)
        scatter. ``"auto"``: thin SVD when ``n < d``; the covariance route when ``n >= d``
        and it finds the full rank ``min(d, n - center)``, the thin SVD otherwise. The Gram
        and covariance routes square the condition number, so they only resolve singular
        values down to about ``sqrt(size * eps) * s_max``; "auto" uses them only where that
        cannot lose a component.
    rtol : float, optional
        Components with singular value ``<= rtol * s_max`` are dropped. Default
        ``max(d, n) * eps`` of the working dtype (NumPy's ``matrix_rank`` rule). The Gram and
        covariance routes threshold eigenvalues at ``max(rtol**2, size * eps) * w_max``.
    xp : namespace, optional
        Array namespace; inferred from `x` when omitted.

    Returns
    -------
    u : array, shape (d, q)
        Orthonormal columns, ``q`` = numerical rank (``0 <= q <= min(d, n)``; ``q = 0`` for
        all-zero data). The entry of largest magnitude of each column is positive.
    energies : array, shape (q,)
        Squared singular values, descending.
    mean : array, shape (d,) or None
        The column mean when `center` is true, else ``None``.

    Arrays are float32 for half-precision `x`, otherwise in the dtype of `x`, in its
    namespace and on its device.

    Raises
    ------
    ShapeError
        When `x` is not a non-empty 2-D array.
    InvalidArgumentError
        For an unknown `method`, an `rtol` outside [0, 1), non-floating or non-finite data.
    BackendError
        When the namespace has no ``linalg``.
    """
    xp = array_namespace(x) if xp is None else xp
    d, n = check_matrix(x, "x", nonempty=True)
    rtol = _check_options(method, rtol)
    for name in _NEEDS[method]:
        linalg_function(xp, name, "basis")
    x = as_work(x, work_dtype(xp, x), xp)
    check_finite(x, "x", "basis", xp)
    mean = None
    if center:
        x, mean = center_columns(x, xp=xp)
    if rtol is None:
        rtol = max(d, n) * xp.finfo(x.dtype).eps
    if method == "auto":
        u, energies = _auto(x, rtol, min(d, n - int(bool(center))), xp)
    else:
        u, energies = _ROUTES[method](x, rtol, xp)
    return u, energies, mean
