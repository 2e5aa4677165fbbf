"""Stacking, centering and scatter matrices (no ``linalg`` needed)."""

from __future__ import annotations

from typing import Sequence

from share_core._arguments import InvalidArgumentError, check_matrix, check_positive_int, check_vector
from share_core._compat import Array, Namespace, array_namespace, as_work, work_dtype
from share_core.errors import ShapeError

__all__ = ["stack", "center", "covariance", "scatter_stats", "centered_scatter"]


def stack(arrays: Sequence[Array], /, *, xp: Namespace | None = None) -> Array:
    """Concatenate column blocks side by side: ``[X_1 | X_2 | ... | X_N]``.

    For the B side of a LoRA module pass ``[B_1, ..., B_N]``; for the A side pass
    ``[A_1.mT, ..., A_N.mT]``. Blocks may have different widths (mixed LoRA ranks).

    Parameters
    ----------
    arrays : sequence of arrays, shapes (d, r_i)
        At least one block; every block has the same number of rows `d`. Not modified.
    xp : namespace, optional
        Array namespace; inferred from `arrays` when omitted.

    Returns
    -------
    x : array, shape (d, sum(r_i))
        In the promoted dtype of the blocks (no upcast: stacking computes nothing).

    Raises
    ------
    ShapeError
        When a block is not 2-D or the row counts differ (the message lists every shape).
    InvalidArgumentError
        When `arrays` is empty.
    """
    blocks = list(arrays)
    if not blocks:
        raise InvalidArgumentError("stack expects at least one (d, r) array, found an empty sequence")
    xp = array_namespace(*blocks) if xp is None else xp
    for i, block in enumerate(blocks):
        check_matrix(block, f"arrays[{i}]")
    shapes = [tuple(block.shape) for block in blocks]
    if len({shape[0] for shape in shapes}) != 1:
        raise ShapeError(f"stack expects blocks with the same number of rows d, found shapes {shapes}")
    return xp.concat(blocks, axis=1)


def center(x: Array, /, *, xp: Namespace | None = None) -> tuple[Array, Array]:
    """Subtract the column mean: ``xc = x - mean[:, None]``.

    Parameters
    ----------
    x : array, shape (d, n)
        Data with ``n >= 1`` columns. Not modified.
    xp : namespace, optional

    Returns
    -------
    xc : array, shape (d, n)
        Centered data; its columns sum to zero (up to rounding).
    mean : array, shape (d,)
        The mean of the columns of `x`.

    Both are float32 for half-precision input, otherwise in the dtype of `x`.
    """
    xp = array_namespace(x) if xp is None else xp
    check_matrix(x, "x", nonempty=True)
    x = as_work(x, work_dtype(xp, x), xp)
    mean = xp.mean(x, axis=1)
    return x - mean[:, None], mean


def covariance(x: Array, /, *, mean: Array | None = None, xp: Namespace | None = None) -> Array:
    """Unnormalized scatter ``(x - mean) @ (x - mean).mT`` (no division by n).

    Because nothing is divided, scatters of column chunks add up:
    ``covariance(x1) + covariance(x2) == covariance(stack([x1, x2]))`` (and likewise for one
    fixed `mean`). For a scatter centered on the mean of all chunks, accumulate
    :func:`scatter_stats` and finish with :func:`centered_scatter`.

    Parameters
    ----------
    x : array, shape (d, n)
        Data columns. Not modified.
    mean : array, shape (d,), optional
        Subtracted from every column first; ``None`` means no centering.
    xp : namespace, optional

    Returns
    -------
    scatter : array, shape (d, d)
        Symmetric positive semi-definite; float32 for half-precision input, otherwise the
        promoted dtype of `x` and `mean`.
    """
    xp = array_namespace(x, mean) if xp is None else xp
    d, _ = check_matrix(x, "x")
    dtype = work_dtype(xp, x) if mean is None else work_dtype(xp, x, mean)
    x = as_work(x, dtype, xp)
    if mean is not None:
        check_vector(mean, "mean", d, "x", x.shape)
        x = x - as_work(mean, dtype, xp)[:, None]
    return x @ x.mT


def scatter_stats(
    x: Array, /, *, shift: Array | None = None, xp: Namespace | None = None
) -> tuple[Array, Array, int]:
    """Additive statistics of a chunk of columns, for an exact centered scatter in pieces.

    Statistics of chunks of the same data add element-wise (``scatter_a + scatter_b``,
    ``colsum_a + colsum_b``, ``n_a + n_b``); :func:`centered_scatter` turns the totals into
    the scatter around the overall mean, equal to ``covariance(x, mean=mean)`` of all columns
    at once.

    Parameters
    ----------
    x : array, shape (d, n)
        One chunk of columns. Not modified.
    shift : array, shape (d,), optional
        A reference point subtracted before summing (use the same one for every chunk, e.g.
        the mean of the first chunk). It removes the cancellation of
        ``scatter - colsum colsum^T / n`` when the data sit far from the origin.
    xp : namespace, optional

    Returns
    -------
    scatter : array, shape (d, d)
        ``(x - shift) @ (x - shift).mT``.
    colsum : array, shape (d,)
        ``sum over columns of (x - shift)``.
    n : int
        Number of columns.

    Arrays are float32 for half-precision input, otherwise the promoted dtype.
    """
    xp = array_namespace(x, shift) if xp is None else xp
    scatter = covariance(x, mean=shift, xp=xp)
    dtype = scatter.dtype
    shifted = as_work(x, dtype, xp)
    if shift is not None:
        shifted = shifted - as_work(shift, dtype, xp)[:, None]
    return scatter, xp.sum(shifted, axis=1), x.shape[1]


def centered_scatter(
    scatter: Array, colsum: Array, n: int, /, *, shift: Array | None = None, xp: Namespace | None = None
) -> tuple[Array, Array]:
    """Scatter around the mean from accumulated :func:`scatter_stats` totals.

    Parameters
    ----------
    scatter : array, shape (d, d)
        Sum of the chunks' ``scatter``.
    colsum : array, shape (d,)
        Sum of the chunks' ``colsum``.
    n : int
        Total number of columns, ``>= 1``.
    shift : array, shape (d,), optional
        The same `shift` every chunk was computed with.
    xp : namespace, optional

    Returns
    -------
    cov : array, shape (d, d)
        ``sum_j (x_j - mean)(x_j - mean)^T``: exactly symmetric, unnormalized, same dtype as
        `scatter` (float32 for half precision).
    mean : array, shape (d,)
        The mean of all columns.
    """
    xp = array_namespace(scatter, colsum, shift) if xp is None else xp
    d, d2 = check_matrix(scatter, "scatter")
    if d != d2:
        raise ShapeError(f"expected a square scatter (d, d), found shape {(d, d2)}")
    check_vector(colsum, "colsum", d, "scatter", scatter.shape)
    count = check_positive_int(n, "n")
    dtype = work_dtype(xp, scatter, colsum)
    scatter, colsum = as_work(scatter, dtype, xp), as_work(colsum, dtype, xp)
    cov = scatter - (colsum[:, None] * colsum[None, :]) / count
    mean = colsum / count
    if shift is not None:
        check_vector(shift, "shift", d, "scatter", scatter.shape)
        mean = mean + as_work(shift, dtype, xp)
    return cov, mean
