"""Loadings on a basis, reconstruction, and the whole per-(module, side) compression step."""

from __future__ import annotations

from typing import Sequence

from share_core._arguments import check_matrix, check_vector
from share_core._basis import basis as compute_basis
from share_core._compat import Array, Namespace, array_namespace, as_work, device, work_dtype
from share_core._select import check_k_choice, select_k
from share_core._stats import stack
from share_core.errors import ShapeError

__all__ = ["project", "reconstruct", "compress_side"]


def project(x: Array, basis: Array, /, *, mean: Array | None = None, xp: Namespace | None = None) -> Array:
    """Loadings of the columns of `x` on an orthonormal `basis`: ``basis.mT @ (x - mean)``.

    Parameters
    ----------
    x : array, shape (d, n)
        Columns to project. Not modified.
    basis : array, shape (d, k)
        Orthonormal columns (e.g. from :func:`basis`).
    mean : array, shape (d,), optional
        Subtracted from every column first (the mean returned with a centered basis).
    xp : namespace, optional

    Returns
    -------
    loadings : array, shape (k, n)
        float32 when every input is half precision, otherwise the promoted dtype.

    Raises
    ------
    ShapeError
        When the row counts of `x`, `basis` and `mean` differ.
    """
    xp = array_namespace(x, basis, mean) if xp is None else xp
    d, _ = check_matrix(x, "x")
    db, _ = check_matrix(basis, "basis")
    if db != d:
        raise ShapeError(f"expected basis with d={d} rows to match x of shape {tuple(x.shape)}, found shape {tuple(basis.shape)}")
    dtype = work_dtype(xp, *[a for a in (x, basis, mean) if a is not None])
    x = as_work(x, dtype, xp)
    if mean is not None:
        check_vector(mean, "mean", d, "x", x.shape)
        x = x - as_work(mean, dtype, xp)[:, None]
    return as_work(basis, dtype, xp).mT @ x


def reconstruct(
    loadings: Array, basis: Array, /, *, mean: Array | None = None, xp: Namespace | None = None
) -> Array:
    """Columns rebuilt from their loadings: ``basis @ loadings + mean``.

    Parameters
    ----------
    loadings : array, shape (k, n)
    basis : array, shape (d, k)
    mean : array, shape (d,), optional
        Added back to every column.
    xp : namespace, optional

    Returns
    -------
    x_hat : array, shape (d, n)
        float32 when every input is half precision, otherwise the promoted dtype.

    Raises
    ------
    ShapeError
        When ``basis.shape[1] != loadings.shape[0]`` or `mean` does not have d entries.
    """
    xp = array_namespace(loadings, basis, mean) if xp is None else xp
    k, _ = check_matrix(loadings, "loadings")
    d, kb = check_matrix(basis, "basis")
    if kb != k:
        raise ShapeError(
            f"expected basis (d, k) and loadings (k, n) with the same k, "
            f"found shapes {tuple(basis.shape)} and {tuple(loadings.shape)}"
        )
    dtype = work_dtype(xp, *[a for a in (loadings, basis, mean) if a is not None])
    x_hat = as_work(basis, dtype, xp) @ as_work(loadings, dtype, xp)
    if mean is None:
        return x_hat
    check_vector(mean, "mean", d, "basis", basis.shape)
    return x_hat + as_work(mean, dtype, xp)[:, None]


def _split_columns(x: Array, widths: Sequence[int]) -> list[Array]:
    """Column blocks of `x` (k, sum widths) with the given widths."""
    blocks, start = [], 0
    for width in widths:
        blocks.append(x[:, start : start + width])
        start += width
    return blocks


def compress_side(
    columns: Sequence[Array],
    /,
    *,
    k: int | None = None,
    variance_threshold: float | None = None,
    center: bool = False,
    method: str = "auto",
    xp: Namespace | None = None,
) -> tuple[Array, Array | None, list[Array], Array]:
    """Shared basis and per-adapter loadings for one side of one module.

    Stacks the adapters' column blocks (``B_i``, or ``A_i.mT``), computes the basis
    (:func:`basis`), keeps ``kk`` components (:func:`select_k`, on the same centered or
    uncentered data) and projects each adapter's block. ``reconstruct(loadings[i], basis,
    mean=mean)`` gives block ``i`` back, exactly once ``kk`` reaches the rank.

    Parameters
    ----------
    columns : sequence of arrays, shapes (d, r_i)
        One block per adapter; widths may differ. Not modified.
    k : int, optional
        Components to keep, ``>= 1``; capped at the numerical rank.
    variance_threshold : float, optional
        In (0, 1]: keep the fewest components holding this energy fraction. Exactly one of
        `k` and `variance_threshold` must be given.
    center : bool, default False
        Center the stacked columns; the mean is returned and must be added back.
    method : {"auto", "svd", "gram", "covariance"}, default "auto"
        Route of :func:`basis`.
    xp : namespace, optional

    Returns
    -------
    basis : array, shape (d, kk)
        Orthonormal, ``kk >= 1``. When the (centered) data are all zero (rank 0), ``kk = 1``
        and the basis is the first unit vector ``e_1``, with zero loadings: reconstruction is
        still exact and no zero-width array reaches the checkpoint.
    mean : array, shape (d,) or None
        Column mean when `center` is true.
    loadings : list of arrays, shapes (kk, r_i)
        One per input block, in order.
    energies : array, shape (max(q, 1),)
        The spectrum of the stacked data (squared singular values, descending) up to its
        rank ``q``; ``energies[:kk]`` belong to the basis columns. A single zero when q = 0.

    All arrays are float32 for half-precision input, otherwise the promoted input dtype.
    """
    check_k_choice(k, variance_threshold)
    columns = list(columns)
    x = stack(columns, xp=xp)
    xp = array_namespace(x) if xp is None else xp
    u, energies, mean = compute_basis(x, center=center, method=method, xp=xp)
    kk = select_k(energies, k=k, variance_threshold=variance_threshold)
    if kk == 0:
        u = xp.eye(x.shape[0], 1, dtype=u.dtype, device=device(u))
        energies = xp.zeros((1,), dtype=u.dtype, device=device(u))
    else:
        u = u[:, :kk]
    loadings = project(x, u, mean=mean, xp=xp)
    return u, mean, _split_columns(loadings, [c.shape[1] for c in columns]), energies
