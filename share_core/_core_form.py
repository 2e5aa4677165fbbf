"""The per-adapter core form: one small (k_B, k_A) matrix per adapter and module instead of loadings.

With orthonormal bases ``U`` (d_out, k_B) and ``V`` (d_in, k_A), the least-squares approximation of
``dW = B A`` in ``span(U) x span(V)`` is ``U (U^T dW V) V^T``; its core ``C = U^T dW V = (U^T B)(A V)``
is the product of the two loadings (uncentered), so storing ``C`` gives the same dW^ as storing both
loadings, for ``k_B k_A`` numbers instead of ``r (k_B + k_A)``. PEFT wants rank-r factors back:
:func:`factor_core` splits ``C`` into balanced factors of rank r.
"""

from __future__ import annotations

from share_core._arguments import InvalidArgumentError, check_matrix
from share_core._compat import Array, Namespace, array_namespace, as_work, device, work_dtype
from share_core._linalg import column_signs, svd

__all__ = ["factor_core"]


def factor_core(core: Array, /, *, rank: int, xp: Namespace | None = None) -> tuple[Array, Array]:
    """Split a core into rank-`rank` loadings: ``core ~ lb @ la.mT`` with balanced factors.

    From the SVD ``core = P S Q^T``: ``lb = P_r S_r^1/2``, ``la = Q_r S_r^1/2`` with the leading
    ``rank`` singular triplets (the best rank-`rank` approximation; exact when the core's rank is at
    most `rank`, as for ``C = L_B L_A^T`` with r-column loadings). When ``min(k_B, k_A) < rank`` the
    trailing columns are zero, so the result always has exactly `rank` columns.

    Parameters
    ----------
    core : array, shape (k_B, k_A)
    rank : int
        The adapter's LoRA rank r, ``>= 1``.
    xp : namespace, optional

    Returns
    -------
    lb : array, shape (k_B, rank)
        Loadings of the B side: ``B^ = U @ lb``.
    la : array, shape (k_A, rank)
        Loadings of the A side: ``A^ = (V @ la).mT``.
        float32 for half-precision input, otherwise the dtype of `core`. The entry of largest
        magnitude of each column of `lb` is positive.
    """
    xp = array_namespace(core) if xp is None else xp
    kb, ka = check_matrix(core, "core")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InvalidArgumentError(f"expected rank to be a positive integer, found {rank!r}")
    core = as_work(core, work_dtype(xp, core), xp)
    p, s, qh = svd(core, "factor_core", xp)
    m = min(rank, int(s.shape[0]))
    root = xp.sqrt(s[:m])
    lb = p[:, :m] * root[None, :]
    la = qh[:m, :].mT * root[None, :]
    signs = column_signs(lb, xp)
    lb, la = lb * signs[None, :], la * signs[None, :]
    if m < rank:
        dev = device(core)
        lb = xp.concat([lb, xp.zeros((kb, rank - m), dtype=lb.dtype, device=dev)], axis=1)
        la = xp.concat([la, xp.zeros((ka, rank - m), dtype=la.dtype, device=dev)], axis=1)
    return lb, la
