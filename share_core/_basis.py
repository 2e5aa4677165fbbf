"""The shared basis of a stack of columns: one public entry, three exact routes."""

from __future__ import annotations

import math
import operator

from share_core._arguments import InvalidArgumentError, check_matrix, check_real
from share_core._compat import Array, Namespace, array_namespace, as_work, device, linalg_function, work_dtype
from share_core._linalg import check_finite, column_signs, eigh, eigh_leading, frobenius, qr
from share_core._stats import center as center_columns

__all__ = ["basis", "basis_with_route", "gram_fit", "gram_leading", "METHODS"]

METHODS = ("auto", "svd", "gram", "covariance")
_NEEDS = {"auto": ("svd", "eigh", "qr"), "svd": ("svd",), "gram": ("eigh", "qr"), "covariance": ("eigh",)}


def _count_above(values: Array, threshold: Array, xp: Namespace) -> int:
    """Number of entries of a descending 1-D array strictly above `threshold` (one sync)."""
    return int(xp.sum(xp.astype(values > threshold, xp.int32)))


def _svd_route(x: Array, rtol: float, scale: Array, xp: Namespace, keep: int | None = None) -> tuple[Array, Array]:
    """Thin SVD of x (d, n): keep singular values > rtol * max(s_max, scale).

    Returns u (d, min(q, keep)) and the q energies. The sign rule of :func:`svd` is applied
    to the returned columns only (``vh`` is not needed here), which saves a pass over the
    dropped ones.
    """
    u, s, _ = linalg_function(xp, "svd", "basis")(x, full_matrices=False)
    q = _count_above(s, rtol * xp.maximum(s[0], scale), xp)
    u = u[:, : _kept(q, keep)]
    return u * column_signs(u, xp)[None, :], (s * s)[:q]


def _kept(q: int, keep: int | None) -> int:
    """Number of columns to return: all q, or at most `keep`."""
    return q if keep is None else min(q, keep)


def _squaring_dtype(x: Array, accumulate: bool, xp: Namespace):
    """float64 for float32 data when `accumulate` (and the device has float64), else x.dtype."""
    if not accumulate or x.dtype != xp.float32:
        return x.dtype
    try:
        xp.zeros((), dtype=xp.float64, device=device(x))
    except (TypeError, ValueError, RuntimeError):  # e.g. Apple MPS has no float64
        return x.dtype
    return xp.float64


def _floor_binds(rtol: float, size: int, eps: float) -> bool:
    """Whether rounding in a (size, size) squared matrix, not `rtol`, limits the rank decision."""
    return size * eps >= rtol * rtol


def _eig_threshold(w: Array, rtol: float, scale: Array, eps: float, xp: Namespace) -> Array:
    """Eigenvalue threshold (0-d) of the squared routes for descending eigenvalues `w`.

    Two limits, the larger wins: the rank rule on singular values, ``s <= rtol * s_ref`` i.e.
    ``w <= rtol**2 * max(w_max, scale**2)``; and what the eigensolver resolves: an eigenvalue
    of a (size, size) matrix is only known to about ``size * eps * w_max``.
    """
    rank_rule = rtol * rtol * xp.maximum(w[0], scale * scale)
    return xp.maximum(rank_rule, w.shape[0] * eps * w[0])


def _data_scale(x: Array, dtype, xp: Namespace) -> Array:
    """c = max |x| in `dtype` (1 for zero or empty data), found without a copy of x: dividing by it, squaring
    neither underflows nor overflows."""
    big = (xp.maximum(xp.max(x), -xp.min(x)) if x.shape[0] * x.shape[1]
           else xp.zeros((), dtype=x.dtype, device=device(x)))
    return as_work(xp.where(big > 0, big, xp.ones_like(big)), dtype, xp)


def _unit_scaled(x: Array, dtype, xp: Namespace) -> tuple[Array, Array]:
    """x / c in `dtype`, c = :func:`_data_scale`. A widened copy is scaled in place: one (d, n) array made,
    not two (each fresh array of a module's stack is megabytes of pages the OS hands over one by one)."""
    c = _data_scale(x, dtype, xp)
    if x.dtype == dtype:
        return x / c, c  # (x is the caller's: never scaled in place)
    y = xp.astype(x, dtype)
    y /= c
    return y, c


def _gram_eigh(x: Array, dtype, xp: Namespace) -> tuple[Array, Array, Array, Array]:
    """(w, p, c, y): eigenvalues (n,) of the (n, n) Gram matrix of ``y = x / c``, descending and
    clipped, and its eigenvectors (n, n), in `dtype`; ``c = max |x|`` (0-d, 1 for zero data), so
    squaring cannot under/overflow and ``w * c**2`` are the squared singular values of x. The scaled
    stack y (d, n) in `dtype` comes back too: the basis and the refinement form their vectors from it."""
    y, c = _unit_scaled(x, dtype, xp)
    w, p = eigh(y.mT @ y, xp=xp)
    return w, p, c, y


def _gram_basis(
    x: Array, gram: tuple, rtol: float, scale: Array, xp: Namespace, keep: int | None = None
) -> tuple[Array, Array]:
    """u = orth(x p) for the leading eigenvectors p of the Gram matrix (``gram``, from :func:`_gram_eigh`
    of x) that clear the rank rule, and their energies, in the dtype of `x`.

    ``x p / s`` is the textbook formula, but small eigenvalues of x^T x carry an absolute
    error of about ``eps * s_max**2``, so dividing by ``s`` mis-scales the small columns;
    a reduced QR of ``x p`` normalizes them instead.
    """
    w, p, c, y = gram
    q = _count_above(w, _eig_threshold(w, rtol, as_work(scale, w.dtype, xp) / c, xp.finfo(w.dtype).eps, xp), xp)
    kept = _kept(q, keep)
    if kept == 0:
        u = xp.zeros((x.shape[0], 0), dtype=x.dtype, device=device(x))
    else:
        u, _ = qr(y @ p[:, :kept], "basis", xp)
        u = as_work(u * column_signs(u, xp)[None, :], x.dtype, xp)
    return u, as_work(w[:q] * (c * c), x.dtype, xp)


def _gram_route(
    x: Array, rtol: float, scale: Array, xp: Namespace, accumulate: bool = True, keep: int | None = None
) -> tuple[Array, Array]:
    """Eigenvectors V of the (n, n) Gram matrix x^T x, then u = orth(x V)."""
    return _gram_basis(x, _gram_eigh(x, _squaring_dtype(x, accumulate, xp), xp), rtol, scale, xp, keep)


_SCATTER_BLOCK = 2048  # columns of x scaled (and widened) at a time for the scatter
_SCATTER_ROWS = 512  # rows per block of the scatter's lower triangle, for d >= 2 * _SCATTER_ROWS


def _scatter(x: Array, dtype, xp: Namespace) -> tuple[Array, Array]:
    """(y y^T, c) with ``y = x / c`` in `dtype`, ``c = max |x|`` (1 for zero data), as :func:`_unit_scaled`
    gives it, summed over blocks of columns: no copy of the whole (d, n) stack is made (a stack of many
    adapters can be most of the memory in use).

    For d >= 1024 only the lower triangle is multiplied out, 512 rows at a time (row block i against rows
    0 .. its end), and mirrored: 56% of the products at d = 4096. Measured on 2 threads for a 4096 x 16000
    stack (a module side of 1000 Llama-7B-shaped adapters): 4.1-4.5 s -> 2.3-2.8 s, equal bit for bit there
    (each entry is the same dot product)."""
    c = _data_scale(x, dtype, xp)
    d = x.shape[0]
    rows = [(a, min(a + _SCATTER_ROWS, d)) for a in range(0, d, _SCATTER_ROWS)] if d >= 2 * _SCATTER_ROWS else None
    s, parts = None, None
    for start in range(0, x.shape[1], _SCATTER_BLOCK):
        y = as_work(x[:, start:min(start + _SCATTER_BLOCK, x.shape[1])], dtype, xp) / c
        if rows is None:
            s = y @ y.mT if s is None else s + y @ y.mT
            continue
        products = [y[a:b, :] @ y[:b, :].mT for a, b in rows]
        parts = products if parts is None else [p + q for p, q in zip(parts, products)]
        del products
    if parts is not None:
        # each block row: its columns left of the diagonal block, the diagonal block's lower triangle, zeros
        blocks = []
        for a, b in rows:
            p = parts.pop(0)  # (freed block by block)
            blocks.append(xp.concat([p[:, :a], xp.tril(p[:, a:b]),
                                     xp.zeros((b - a, d - b), dtype=p.dtype, device=device(p))], axis=1))
            del p
        lower = xp.concat(blocks, axis=0)
        del blocks
        s = lower + xp.tril(lower, k=-1).mT
    if s is None:
        s = xp.zeros((d, d), dtype=dtype, device=device(x))
    return s, c


def _covariance_route(
    x: Array, rtol: float, scale: Array, xp: Namespace, accumulate: bool = True, keep: int | None = None
) -> tuple[Array, Array]:
    """Eigenvectors of the (d, d) scatter x x^T."""
    scatter, c = _scatter(x, _squaring_dtype(x, accumulate, xp), xp)
    # only `keep` vectors are ever used: LAPACK's restricted route computes only those (every eigenvalue still)
    w, v = eigh(scatter, xp=xp) if keep is None else eigh_leading(scatter, keep, xp=xp)
    q = _count_above(w, _eig_threshold(w, rtol, scale / c, xp.finfo(scatter.dtype).eps, xp), xp)
    return as_work(v[:, : _kept(q, keep)], x.dtype, xp), as_work(w[:q] * (c * c), x.dtype, xp)


_ROUTES = {"svd": _svd_route, "gram": _gram_route, "covariance": _covariance_route}


def _gram_pays(x: Array, keep: int | None, xp: Namespace) -> bool:
    """Whether "auto" takes the Gram route for a wide-enough stack x (d, n), n < d: only the leading
    `keep` <= n / 4 columns are wanted, and the (n, n) Gram matrix can be formed in a wider dtype.

    One (d, n) x (n, d) product, an (n, n) eigh and the QR of `keep` columns then cost about half a
    thin SVD of x (whose QR and back-transformation both run over all n columns). In float64 the
    Gram matrix of float32 data resolves singular values down to about ``sqrt(n * 2**-52) * s_max``,
    far below the rank rule ``max(d, n) * 2**-23 * s_max``, so the rank and the reconstruction stay
    exact; float64 data (no wider type) keep the thin SVD.
    """
    return keep is not None and 4 * keep <= x.shape[1] and _squaring_dtype(x, True, xp) != x.dtype


def _auto(
    x: Array, rtol: float, scale: Array, max_rank: int, xp: Namespace, keep: int | None = None
) -> tuple[Array, Array, str]:
    """Cheapest exact route: thin SVD when n < d (the Gram route in float64 when only a few leading
    components are wanted, see :func:`_gram_pays`), the covariance route when n >= d.

    The (d, d) scatter is first decomposed in the working precision: when every eigenvalue
    clears the rounding floor, the basis is complete (q = d) and reconstruction is exact
    whatever the accuracy of single vectors. The same result is kept when the caller needs
    only the leading `keep` components and it resolves more than `keep` of them: the rank
    then exceeds `keep`, no exactness is owed, and the leading components are as accurate as
    the working precision gives them. Otherwise the small end of the spectrum is below what
    that precision resolves, and the scatter is redone in float64 for float32 data (where the
    rank rule `rtol`, not rounding, then decides). For float64 data there is no wider type: a
    rank-deficient result is redone with the thin SVD.
    """
    d, n = x.shape
    if n < d:
        if _gram_pays(x, keep, xp):
            return (*_gram_basis(x, _gram_eigh(x, _squaring_dtype(x, True, xp), xp), rtol, scale, xp, keep), "gram")
        return (*_svd_route(x, rtol, scale, xp, keep), "svd")
    u, energies = _covariance_route(x, rtol, scale, xp, accumulate=False, keep=keep)
    q = energies.shape[0]
    if q == d or (keep is not None and q > keep):
        return u, energies, "covariance"
    route = "covariance"
    if _squaring_dtype(x, True, xp) != x.dtype:
        u, energies = _covariance_route(x, rtol, scale, xp, accumulate=True, keep=keep)
        route = "covariance (float64)"
    eps = xp.finfo(_squaring_dtype(x, True, xp)).eps
    if energies.shape[0] < max_rank and _floor_binds(rtol, d, eps):
        return (*_svd_route(x, rtol, scale, xp, keep), "covariance->svd")
    return u, energies, route


def _check_options(method: str, rtol: float | None, max_components: int | None) -> tuple[float | None, int | None]:
    """Validate `method`, `rtol` and `max_components`; return rtol as a float (or None) and
    max_components as an int (or None)."""
    if method not in METHODS:
        raise InvalidArgumentError(f"expected method to be one of {METHODS}, found {method!r}")
    if max_components is not None:
        max_components = _check_max_components(max_components)
    if rtol is None:
        return None, max_components
    value = check_real(rtol, "rtol")
    if not 0.0 <= value < 1.0:
        raise InvalidArgumentError(f"expected rtol in [0, 1), found {value}")
    return value, max_components


def _check_max_components(value) -> int:
    """`value` as a Python int >= 1, or InvalidArgumentError saying what to pass."""
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            number = None
        if number is not None and number >= 1:
            return number
    raise InvalidArgumentError(
        f"expected max_components to be an int >= 1 or None, found {type(value).__name__} {value!r}; "
        "pass the number of leading components you will keep (e.g. k), or None for all of them"
    )


def basis(
    x: Array,
    /,
    *,
    center: bool = False,
    method: str = "auto",
    rtol: float | None = None,
    max_components: int | None = None,
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
        Gram matrix, ``u = orth(x v)``. ``"covariance"``: eigendecomposition of the (d, d)
        scatter. ``"auto"``: the thin SVD when ``n < d`` (the Gram route when only
        ``max_components <= n / 4`` leading components are wanted and the Gram matrix can be
        formed in float64 for float32 data, which resolves every singular value the rank rule
        keeps, at about half the cost), the covariance route when ``n >= d``. The Gram and covariance routes square the condition number, so when
        forced they run in float64 for float32 (and half-precision) data; "auto" first tries
        the scatter in the working precision and keeps it when it yields a complete basis
        (q = d) or more than `max_components` components, else redoes it in float64. For
        float64 data the squared routes resolve singular values only down to about
        ``sqrt(size * eps) * s_max``, and "auto" redoes a rank-deficient covariance result
        with the thin SVD.
    rtol : float, optional
        Components with singular value ``<= rtol * s_ref`` are dropped, ``s_ref = s_max``
        (NumPy's ``matrix_rank`` rule). Default ``max(d, n) * eps`` of the working dtype.
        With `center`, ``s_ref = max(s_max, sqrt(n) * ||mean||)``: centering leaves rounding
        residue of order ``eps * sqrt(n) * ||mean||``, which must not count as rank. The Gram
        and covariance routes also drop eigenvalues ``<= size * eps * w_max`` (``size`` of the
        decomposed matrix, ``eps`` of the precision it is decomposed in): rounding noise.
    max_components : int, optional
        The caller keeps only the leading ``max_components`` components (``>= 1``): `u` has
        at most that many columns. With "auto" and ``n >= d`` this also lets the scatter
        decomposed in the working precision stand (no float64 or SVD redo) when it resolves
        more than ``max_components`` components: the rank then exceeds them, so no
        exactness is owed, and the leading ones are as accurate as that precision gives
        them. When it resolves ``max_components`` or fewer, the rank may equal them and the
        redo runs as without this option, so reconstruction stays exact whenever
        ``max_components >= rank``.
    xp : namespace, optional
        Array namespace; inferred from `x` when omitted.

    Returns
    -------
    u : array, shape (d, min(q, max_components))
        Orthonormal columns, ``q`` = numerical rank (``0 <= q <= min(d, n)``; ``q = 0`` for
        all-zero data); all q of them when `max_components` is None. The entry of largest
        magnitude of each column is positive; ``u[:, j]`` belongs to ``energies[j]``.
    energies : array, shape (q,)
        Squared singular values, descending: every component the route resolved, also those
        beyond `max_components`, so that :func:`explained_variance` and :func:`select_k` see
        the whole spectrum. From a Gram or covariance route they carry an absolute error of
        about ``eps * s_max**2`` (relative to the total, negligible for :func:`select_k`).
        When `max_components` let the working-precision scatter stand (see there), ``q``
        counts the components above its rounding floor ``d * eps * w_max``; the ones below
        (at most ``d - q``, each under the floor) are left out of the total.
    mean : array, shape (d,) or None
        The column mean when `center` is true, else ``None``.

    Arrays are float32 for half-precision `x`, otherwise in the dtype of `x`, in its
    namespace and on its device.

    Raises
    ------
    ShapeError
        When `x` is not a non-empty 2-D array.
    InvalidArgumentError
        For an unknown `method`, an `rtol` outside [0, 1), a `max_components` that is not an
        int >= 1, non-floating or non-finite data.
    BackendError
        When the namespace has no ``linalg``.
    """
    u, energies, mean, _ = basis_with_route(
        x, center=center, method=method, rtol=rtol, max_components=max_components, xp=xp
    )
    return u, energies, mean


def basis_with_route(
    x: Array,
    /,
    *,
    center: bool = False,
    method: str = "auto",
    rtol: float | None = None,
    max_components: int | None = None,
    accumulate: bool = True,
    xp: Namespace | None = None,
) -> tuple[Array, Array, Array | None, str]:
    """:func:`basis` plus the route taken: the `method` when forced; for "auto" one of
    "svd", "gram", "covariance", "covariance (float64)", "covariance->svd".

    Private, for the benchmark: it reports the route "auto" took, and ``accumulate=False``
    runs a forced Gram or covariance route in the working precision (float32), to measure
    what squaring the condition number costs there. `max_components` as in :func:`basis`.
    """
    xp = array_namespace(x) if xp is None else xp
    d, n = check_matrix(x, "x", nonempty=True)
    rtol, keep = _check_options(method, rtol, max_components)
    for name in _NEEDS[method]:
        linalg_function(xp, name, "basis")
    x = as_work(x, work_dtype(xp, x), xp)
    check_finite(x, "x", "basis", xp)
    mean, scale = None, xp.zeros((), dtype=x.dtype, device=device(x))
    if center:
        x, mean = center_columns(x, xp=xp)
        scale = frobenius(mean, xp) * math.sqrt(n)
    if rtol is None:
        rtol = max(d, n) * xp.finfo(x.dtype).eps
    if method == "auto":
        u, energies, route = _auto(x, rtol, scale, min(d, n - int(bool(center))), xp, keep)
        return u, energies, mean, route
    if method == "svd":
        return (*_svd_route(x, rtol, scale, xp, keep), mean, method)
    return (*_ROUTES[method](x, rtol, scale, xp, accumulate, keep), mean, method)


def gram_fit(x: Array, /, *, max_components: int, xp: Namespace | None = None) -> tuple[Array, tuple] | None:
    """The energies of :func:`basis` for uncentered `x` (d, n) and `max_components`, plus the ``(w, p, c, y)``
    of its Gram matrix (:func:`_gram_eigh`), when "auto" takes the Gram route; else None. The basis
    itself is left to :func:`gram_leading` (a caller that refines it next never needs it).

    Private: for share_torch, which reuses the factorization in :func:`share_core._refine.refine_stacks`.
    """
    xp = array_namespace(x) if xp is None else xp
    d, n = check_matrix(x, "x", nonempty=True)
    keep = _check_max_components(max_components)
    x = as_work(x, work_dtype(xp, x), xp)
    if not (n < d and _gram_pays(x, keep, xp)):
        return None
    check_finite(x, "x", "basis", xp)
    gram = _gram_eigh(x, _squaring_dtype(x, True, xp), xp)
    w, _, c, _ = gram
    q = _count_above(w, _eig_threshold(w, max(d, n) * xp.finfo(x.dtype).eps, xp.zeros((), dtype=w.dtype, device=device(w)),
                                       xp.finfo(w.dtype).eps, xp), xp)
    return as_work(w[:q] * (c * c), x.dtype, xp), gram


def gram_leading(x: Array, gram: tuple, k: int, /, *, xp: Namespace | None = None) -> Array:
    """The leading `k` columns of the basis whose :func:`gram_fit` gave `gram` (as :func:`basis` returns
    them; `k` at most the number of energies)."""
    xp = array_namespace(x) if xp is None else xp
    x = as_work(x, work_dtype(xp, x), xp)
    zero = xp.zeros((), dtype=x.dtype, device=device(x))
    return _gram_basis(x, gram, max(x.shape) * xp.finfo(x.dtype).eps, zero, xp, k)[0]
