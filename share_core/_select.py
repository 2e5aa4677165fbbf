"""Choosing how many components to keep."""

from __future__ import annotations

import operator

from share_core._arguments import InvalidArgumentError, check_positive_int, check_real
from share_core._compat import Array, array_namespace
from share_core.errors import ShapeError

__all__ = ["select_k", "explained_variance"]


def _check_energies(energies: Array) -> int:
    """Length of a 1-D energies array, or ShapeError."""
    shape = tuple(energies.shape)
    if len(shape) != 1:
        raise ShapeError(f"expected energies of shape (q,), found shape {shape}")
    return shape[0]


def _check_threshold(variance_threshold: float) -> float:
    """`variance_threshold` as a float in (0, 1], or InvalidArgumentError."""
    value = check_real(variance_threshold, "variance_threshold")
    if not 0.0 < value <= 1.0:
        raise InvalidArgumentError(f"expected variance_threshold in (0, 1], found {value}")
    return value


def check_k_choice(k: int | None, variance_threshold: float | None) -> None:
    """InvalidArgumentError unless exactly one of `k`, `variance_threshold` is given and valid."""
    if (k is None) == (variance_threshold is None):
        raise InvalidArgumentError(
            "expected exactly one of k or variance_threshold, found "
            f"k={k!r}, variance_threshold={variance_threshold!r}"
        )
    if k is not None:
        check_positive_int(k, "k")
    else:
        _check_threshold(variance_threshold)


def select_k(energies: Array, /, *, k: int | None = None, variance_threshold: float | None = None) -> int:
    """Number of components to keep: a fixed `k`, or enough to reach a variance fraction.

    Parameters
    ----------
    energies : array, shape (q,)
        Descending, non-negative component energies (squared singular values), e.g. from
        :func:`basis`; ``q`` is the numerical rank.
    k : int, optional
        Fixed number of components, ``>= 1``; capped at ``q`` (never more than the rank).
    variance_threshold : float, optional
        In (0, 1]: the smallest ``k`` whose leading energies hold at least this fraction of
        the total. When the total is zero, 1 (capped at ``q``).

    Returns
    -------
    int
        In ``[1, q]``, or 0 when ``q == 0`` (nothing to keep).

    Raises
    ------
    InvalidArgumentError
        Unless exactly one of `k` and `variance_threshold` is given, `k` is an int >= 1
        and `variance_threshold` a real number in (0, 1].
    ShapeError
        When `energies` is not 1-D.
    """
    check_k_choice(k, variance_threshold)
    q = _check_energies(energies)
    if k is not None:
        return min(operator.index(k), q)
    if q == 0:
        return 0
    xp = array_namespace(energies)
    threshold = _check_threshold(variance_threshold)
    total = xp.sum(energies)
    if not bool(total > 0):
        return 1
    fractions = xp.cumulative_sum(energies) / total
    short = int(xp.sum(xp.astype(fractions < threshold, xp.int32)))
    return min(short + 1, q)


def explained_variance(energies: Array, k: int, /) -> float:
    """Fraction of the total energy held by the first `k` components.

    Parameters
    ----------
    energies : array, shape (q,)
        Descending, non-negative component energies.
    k : int
        Number of leading components, ``>= 0``; values above ``q`` count as ``q``.

    Returns
    -------
    float
        ``sum(energies[:k]) / sum(energies)`` in [0, 1]. When the total energy is zero the
        data are reproduced exactly by any k, and the result is 1.0.

    Raises
    ------
    InvalidArgumentError
        When `k` is not an int >= 0.
    ShapeError
        When `energies` is not 1-D.
    """
    q = _check_energies(energies)
    if isinstance(k, bool):
        raise InvalidArgumentError(f"expected k to be an int >= 0, found bool {k!r}")
    try:
        kk = operator.index(k)
    except TypeError:
        raise InvalidArgumentError(f"expected k to be an int >= 0, found {k!r}") from None
    if kk < 0:
        raise InvalidArgumentError(f"expected k to be an int >= 0, found {kk}")
    xp = array_namespace(energies)
    total = float(xp.sum(energies))
    if total <= 0.0:
        return 1.0
    return min(float(xp.sum(energies[: min(kk, q)])) / total, 1.0)
