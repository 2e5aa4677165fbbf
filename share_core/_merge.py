"""Exact merging of thin SVDs: the basis of a union of column sets from the bases of its parts.

If ``X1 = U1 diag(s1) V1^T`` and ``X2 = U2 diag(s2) V2^T`` (thin, up to numerical rank), then
``[X1 | X2] [X1 | X2]^T = M M^T`` with ``M = [U1 diag(s1) | U2 diag(s2)]``: the left singular vectors
and values of the union are those of the small matrix M. With centering, the scatter of the union about
its own mean adds one column, ``sqrt(n1 n2 / n) (m1 - m2)`` (Chan et al.'s pairwise update, as in
incremental PCA). Nothing is approximated: the result equals the one-shot basis up to rounding.
"""

from __future__ import annotations

import math

from share_core._arguments import InvalidArgumentError, check_matrix
from share_core._compat import Array, Namespace, array_namespace, as_work, work_dtype
from share_core._linalg import check_finite, svd
from share_core.errors import ShapeError

__all__ = ["merge_bases"]


def _check_part(u: Array, s: Array, mean: Array | None, n: int | None, which: str, centered: bool) -> int:
    d, q = check_matrix(u, f"u{which}")
    if tuple(s.shape) != (q,):
        raise ShapeError(f"merge_bases: expected s{which} of shape ({q},) to match u{which} {tuple(u.shape)}, "
                         f"found {tuple(s.shape)}")
    if centered:
        if mean is None or n is None:
            raise InvalidArgumentError(f"merge_bases: centered merging needs mean{which} and n{which}; "
                                       f"pass both for both parts, or neither")
        if tuple(mean.shape) != (d,):
            raise ShapeError(f"merge_bases: expected mean{which} of shape ({d},), found {tuple(mean.shape)}")
        if isinstance(n, bool) or int(n) != n or n <= 0:
            raise InvalidArgumentError(f"merge_bases: n{which} must be a positive column count, found {n!r}")
    return d


def merge_bases(
    u1: Array,
    s1: Array,
    u2: Array,
    s2: Array,
    /,
    *,
    mean1: Array | None = None,
    n1: int | None = None,
    mean2: Array | None = None,
    n2: int | None = None,
    rtol: float | None = None,
    xp: Namespace | None = None,
) -> tuple[Array, Array, Array | None, int | None]:
    """Basis of the union of two column sets, from the thin SVDs of each.

    Parameters
    ----------
    u1, u2 : array, shape (d, q1), (d, q2)
        Orthonormal left singular vectors of each part (all components up to its rank).
    s1, s2 : array, shape (q1,), (q2,)
        Their singular values (square roots of `basis`'s energies).
    mean1, mean2 : array, shape (d,), optional
        Column means of each part, when the parts were centered; then `n1` and `n2` (column counts)
        are required too, and the result is the basis of the union centered on its own mean.
    n1, n2 : int, optional
    rtol : float, optional
        Singular values ``<= rtol * s_max`` are dropped (default ``max(d, q) * eps``, as in `basis`).
    xp : namespace, optional

    Returns
    -------
    u : array, shape (d, q)
        Orthonormal, ``q <= q1 + q2 (+ 1)`` the numerical rank of the union; deterministic signs.
    s : array, shape (q,)
        Singular values of the (centered) union, descending.
    mean : array, shape (d,) or None
        Mean of the union (centered merging only).
    n : int or None
        Column count of the union (centered merging only).
    """
    xp = array_namespace(u1, s1, u2, s2) if xp is None else xp
    centered = mean1 is not None or mean2 is not None
    d = _check_part(u1, s1, mean1, n1, "1", centered)
    if _check_part(u2, s2, mean2, n2, "2", centered) != d:
        raise ShapeError(f"merge_bases: u1 {tuple(u1.shape)} and u2 {tuple(u2.shape)} have different row counts")
    dtype = work_dtype(xp, u1, s1, u2, s2)
    parts = [as_work(u1, dtype, xp) * as_work(s1, dtype, xp)[None, :],
             as_work(u2, dtype, xp) * as_work(s2, dtype, xp)[None, :]]
    mean = n = None
    if centered:
        n = int(n1) + int(n2)
        m1, m2 = as_work(mean1, dtype, xp), as_work(mean2, dtype, xp)
        mean = (m1 * (n1 / n)) + (m2 * (n2 / n))
        parts.append(xp.expand_dims((m1 - m2) * math.sqrt(n1 * n2 / n), axis=1))
    m = xp.concat(parts, axis=1)
    check_finite(m, "the merged factors", "merge_bases", xp)
    u, s, _ = svd(m, "merge_bases", xp)
    tol = (max(m.shape) * xp.finfo(dtype).eps) if rtol is None else float(rtol)
    keep = int(xp.sum(xp.astype(s > tol * s[0], xp.int32))) if s.shape[0] else 0
    keep = max(keep, 1)
    return u[:, :keep], s[:keep], mean, n
