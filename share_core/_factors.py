"""LoRA factor pairs: folding the scale, the balanced gauge, and errors measured on dW."""

from __future__ import annotations

import math

from share_core._arguments import check_matrix, check_real
from share_core._compat import Array, Namespace, array_namespace, as_work, device, work_dtype
from share_core._linalg import column_signs, frobenius, qr, svd
from share_core.errors import ShapeError

__all__ = ["fold_scale", "balance", "dw_error", "relative_error"]


def _check_pair(b: Array, a: Array, names: tuple[str, str] = ("b", "a")) -> tuple[int, int, int]:
    """(d_out, r, d_in) of a LoRA pair b (d_out, r), a (r, d_in), or ShapeError."""
    d_out, r = check_matrix(b, names[0])
    r_a, d_in = check_matrix(a, names[1])
    if r != r_a:
        raise ShapeError(
            f"expected {names[0]} (d_out, r) and {names[1]} (r, d_in) with the same r, "
            f"found shapes {tuple(b.shape)} and {tuple(a.shape)}"
        )
    return d_out, r, d_in


def _ratio(num: Array, den: Array, xp: Namespace) -> Array:
    """num / den for 0-d norms; 0 when both are 0, inf when only den is 0 (never raises)."""
    safe = xp.where(den > 0, den, xp.ones_like(den))
    inf = xp.full_like(num, math.inf)
    return xp.where(den > 0, num / safe, xp.where(num > 0, inf, xp.zeros_like(num)))


def fold_scale(b: Array, a: Array, /, *, scale: float, xp: Namespace | None = None) -> tuple[Array, Array]:
    """Fold a LoRA scale into both factors: ``(b * sqrt|s| * sign(s), a * sqrt|s|)``.

    The product is unchanged: ``b' @ a' == scale * b @ a``.

    Parameters
    ----------
    b : array, shape (d_out, r)
    a : array, shape (r, d_in)
    scale : float
        LoRA scale ``s`` (e.g. ``lora_alpha / r``), a finite Python real number; a negative
        scale puts its sign on `b`.
    xp : namespace, optional

    Returns
    -------
    b_scaled : array, shape (d_out, r)
    a_scaled : array, shape (r, d_in)
        float32 for half-precision input, otherwise the promoted dtype of `b` and `a`.
    """
    xp = array_namespace(b, a) if xp is None else xp
    _check_pair(b, a)
    s = check_real(scale, "scale")
    dtype = work_dtype(xp, b, a)
    root = math.sqrt(abs(s))
    return as_work(b, dtype, xp) * math.copysign(root, s), as_work(a, dtype, xp) * root


def balance(b: Array, a: Array, /, *, scale: float, xp: Namespace | None = None) -> tuple[Array, Array]:
    """Re-factor ``scale * b @ a`` in balanced form ``U S^1/2, S^1/2 V^T`` with r-sized work only.

    With ``b = Qb Rb`` and ``a.mT = Qa Ra`` (reduced QR) the product is
    ``Qb (s Rb Ra^T) Qa^T``; the SVD of the small middle factor ``Uk S Vk^T`` gives
    ``b' = Qb Uk S^1/2`` and ``a' = S^1/2 Vk^T Qa^T``. The (d_out, d_in) product is never formed.

    Parameters
    ----------
    b : array, shape (d_out, r)
    a : array, shape (r, d_in)
    scale : float
        LoRA scale folded into the result (a Python real number, any sign; required so that
        a forgotten ``lora_alpha / r`` cannot pass silently).
    xp : namespace, optional

    Returns
    -------
    b_bal : array, shape (d_out, r)
    a_bal : array, shape (r, d_in)
        ``b_bal @ a_bal == scale * b @ a`` and ``b_bal.mT @ b_bal == a_bal @ a_bal.mT ==
        diag(S)`` with S the singular values of the product, descending. The entry of largest
        magnitude of each column of `b_bal` is positive. When ``r > min(d_out, d_in)`` or the
        product is rank-deficient, the trailing columns/rows are zero. float32 for
        half-precision input, otherwise the promoted dtype.
    """
    xp = array_namespace(b, a) if xp is None else xp
    _, r, _ = _check_pair(b, a)
    s = check_real(scale, "scale")
    dtype = work_dtype(xp, b, a)
    qb, rb = qr(as_work(b, dtype, xp), "balance", xp)
    qa, ra = qr(as_work(a, dtype, xp).mT, "balance", xp)
    uk, sk, vhk = svd((rb @ ra.mT) * s, "balance", xp)
    root = xp.sqrt(sk)
    b_bal = (qb @ uk) * root[None, :]
    a_bal = root[:, None] * (vhk @ qa.mT)
    signs = column_signs(b_bal, xp)
    b_bal, a_bal = b_bal * signs[None, :], a_bal * signs[:, None]
    return _pad_rank(b_bal, a_bal, r, xp)


def _pad_rank(b: Array, a: Array, r: int, xp: Namespace) -> tuple[Array, Array]:
    """Zero-pad b (d_out, m) and a (m, d_in) to rank r >= m."""
    m = b.shape[1]
    if m == r:
        return b, a
    dev = device(b)
    b = xp.concat([b, xp.zeros((b.shape[0], r - m), dtype=b.dtype, device=dev)], axis=1)
    a = xp.concat([a, xp.zeros((r - m, a.shape[1]), dtype=a.dtype, device=dev)], axis=0)
    return b, a


def _product_norm(b: Array, a: Array, xp: Namespace) -> Array:
    """||b @ a||_F (0-d) from the R factors of b and a.mT: ||Rb Ra^T||_F."""
    _, rb = qr(b, "dw_error", xp)
    _, ra = qr(a.mT, "dw_error", xp)
    return frobenius(rb @ ra.mT, xp)


def dw_error(
    b: Array,
    a: Array,
    b_hat: Array,
    a_hat: Array,
    /,
    *,
    scale: float = 1.0,
    scale_hat: float | None = None,
    xp: Namespace | None = None,
) -> tuple[Array, Array]:
    """Error of an approximate LoRA update, measured on dW without forming a (d_out, d_in) matrix.

    ``dW - dW^ = [s b | -s' b^] @ [a; a^] = Bc @ Ac``; with ``Bc = Qb Rb`` and
    ``Ac.mT = Qa Ra`` its Frobenius norm is ``||Rb Ra^T||_F``, a product of
    (r + r')-sized matrices. This stays accurate when dW^ is close to dW, where trace
    formulas on Gram matrices cancel catastrophically.

    Parameters
    ----------
    b : array, shape (d_out, r)
    a : array, shape (r, d_in)
        The reference factors, ``dW = scale * b @ a``.
    b_hat : array, shape (d_out, r_hat)
    a_hat : array, shape (r_hat, d_in)
        The approximation, ``dW^ = scale_hat * b_hat @ a_hat``; ``r_hat`` may differ from r.
    scale : float, default 1.0
    scale_hat : float, optional
        Defaults to `scale`.
    xp : namespace, optional

    Returns
    -------
    abs_err : array, shape ()
        ``||dW - dW^||_F``.
    rel_err : array, shape ()
        ``abs_err / ||dW||_F``. When ``||dW||_F == 0`` (e.g. PEFT's zero-initialized B): 0.0
        if dW^ is zero too, ``inf`` otherwise. Never raises on zero norms.

    Both 0-d arrays are float32 for half-precision input, otherwise the promoted dtype.
    """
    xp = array_namespace(b, a, b_hat, a_hat) if xp is None else xp
    d_out, _, d_in = _check_pair(b, a)
    d_out_hat, _, d_in_hat = _check_pair(b_hat, a_hat, ("b_hat", "a_hat"))
    if (d_out, d_in) != (d_out_hat, d_in_hat):
        raise ShapeError(
            f"expected the approximation to have dW of shape {(d_out, d_in)}, found b_hat "
            f"{tuple(b_hat.shape)} and a_hat {tuple(a_hat.shape)} (dW {(d_out_hat, d_in_hat)})"
        )
    s = check_real(scale, "scale")
    s_hat = s if scale_hat is None else check_real(scale_hat, "scale_hat")
    dtype = work_dtype(xp, b, a, b_hat, a_hat)
    b, a, b_hat, a_hat = (as_work(t, dtype, xp) for t in (b, a, b_hat, a_hat))
    b_cat = xp.concat([b * s, b_hat * (-s_hat)], axis=1)
    a_cat = xp.concat([a, a_hat], axis=0)
    abs_err = xp.asarray(_product_norm(b_cat, a_cat, xp))  # asarray: NumPy reductions give scalars
    ref = _product_norm(b * s, a, xp)
    return abs_err, xp.asarray(_ratio(abs_err, ref, xp))


def relative_error(x: Array, x_hat: Array, /, *, xp: Namespace | None = None) -> Array:
    """Frobenius relative error ``||x - x_hat||_F / ||x||_F`` as a 0-d array.

    Parameters
    ----------
    x : array, any shape
        Reference.
    x_hat : array, same shape as `x`
    xp : namespace, optional

    Returns
    -------
    rel_err : array, shape ()
        float32 for half-precision input, otherwise the promoted dtype. 0.0 when both are
        zero, ``inf`` when only `x` is zero.

    Raises
    ------
    ShapeError
        When the shapes differ.
    """
    xp = array_namespace(x, x_hat) if xp is None else xp
    if tuple(x.shape) != tuple(x_hat.shape):
        raise ShapeError(f"expected x and x_hat of the same shape, found {tuple(x.shape)} and {tuple(x_hat.shape)}")
    dtype = work_dtype(xp, x, x_hat)
    x, x_hat = as_work(x, dtype, xp), as_work(x_hat, dtype, xp)
    return xp.asarray(_ratio(frobenius(x - x_hat, xp), frobenius(x, xp), xp))
