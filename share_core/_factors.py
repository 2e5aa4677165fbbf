"""LoRA factor pairs: folding the scale, the balanced gauge, and errors measured on dW."""

from __future__ import annotations

import math

from share_core._arguments import check_matrix, check_real
from share_core._compat import Array, Namespace, array_namespace, as_work, device, linalg_function, work_dtype
from share_core._linalg import column_signs, frobenius, qr, r_factor, svd
from share_core.errors import ShapeError

__all__ = ["fold_scale", "balance", "dw_error", "dw_errors", "relative_error"]


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
    on_b, on_a = fold_factors(check_real(scale, "scale"))
    dtype = work_dtype(xp, b, a)
    return as_work(b, dtype, xp) * on_b, as_work(a, dtype, xp) * on_a


def fold_factors(scale: float) -> tuple[float, float]:
    """The numbers :func:`fold_scale` multiplies b and a by: ``(sqrt|s| * sign(s), sqrt|s|)``. Private: for
    callers that fold many pairs' scales at once, by the same rule."""
    root = math.sqrt(abs(scale))
    return math.copysign(root, scale), root


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


def _check_stacks(b: Array, a: Array, b_hat: Array, a_hat: Array) -> tuple[int, int, int, int]:
    """(n, d_out, r, d_in) of stacked pairs and their approximations, or ShapeError."""
    shapes = [tuple(t.shape) for t in (b, a, b_hat, a_hat)]
    names = ("b (N, d_out, r)", "a (N, r, d_in)", "b_hat (N, d_out, r_hat)", "a_hat (N, r_hat, d_in)")
    for name, shape in zip(names, shapes):
        if len(shape) != 3:
            raise ShapeError(f"expected {name} as a 3-D stack, found shape {shape}; stack the items first")
    (n, d_out, r), (n_a, r_a, d_in), (n_bh, d_out_h, r_h), (n_ah, r_ah, d_in_h) = shapes
    if len({n, n_a, n_bh, n_ah}) != 1 or (r, r_h, d_out, d_in) != (r_a, r_ah, d_out_h, d_in_h):
        raise ShapeError(
            f"expected b (N, d_out, r), a (N, r, d_in), b_hat (N, d_out, r_hat), a_hat (N, r_hat, d_in) "
            f"with one N, d_out, d_in and matching ranks, found shapes {shapes}"
        )
    return n, d_out, r, d_in


def _stacked_norms(x: Array, xp: Namespace) -> Array:
    """Frobenius norm of each (p, q) item of a stack x (N, p, q): an array of shape (N,).

    One fused ``vector_norm`` pass; the items whose plain sum of squares may have overflowed
    or lost digits to underflow (norm not finite, or below ``sqrt(tiny * p * q / eps)``, zero
    included) are redone scaled by their max |x|, as :func:`frobenius` does (one sync). NumPy
    warns about the overflow of that first try; the result is still the scaled one.
    """
    size = x.shape[1] * x.shape[2]
    if size == 0:
        return xp.zeros((x.shape[0],), dtype=x.dtype, device=device(x))
    norms = xp.linalg.vector_norm(x, axis=(1, 2))
    info = xp.finfo(x.dtype)
    unsafe = ~(xp.isfinite(norms) & (norms >= math.sqrt(info.smallest_normal * size / info.eps)))
    if not bool(xp.any(unsafe)):
        return norms
    big = xp.max(xp.abs(x), axis=(1, 2))
    safe = xp.where(big > 0, big, xp.ones_like(big))
    scaled = xp.sqrt(xp.sum((x / safe[:, None, None]) ** 2, axis=(1, 2))) * big
    return xp.where(unsafe, scaled, norms)


def _stacked_r(xt: Array, xp: Namespace) -> Array:
    """R factors (N, min(d, m), m) of the items of a stack given transposed, xt (N, m, d).

    Taking ``xt.mT`` hands each (d, m) item to the QR in column-major layout, which LAPACK
    backends then factor without a transposing copy.
    """
    return r_factor(xt.mT, "dw_errors", xp)


def dw_errors(
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
    """:func:`dw_error` of N pairs at once, from one batched QR per pair.

    ``dW - dW^ = [b | b^] D [a; a^]`` with ``D = diag(s, ..., s, -s', ..., -s')``. One reduced
    QR ``[b | b^] = Q R`` per item (a batched ``xp.linalg.qr``) gives
    ``||dW - dW^||_F = ||R D [a; a^]||_F``, and, since the first r columns are
    ``b = Q R[:, :r]`` with R upper triangular, also ``||dW||_F = ||s R[:r, :r] a||_F`` from the
    same factor (for any r, ``r > d_out`` included: then ``R[:r, :r]`` has all d_out rows). When
    ``d_in < d_out`` the QR is taken on the ``[a; a^]^T`` side instead. One QR of
    (r + r_hat) columns per item, against four for each :func:`dw_error` call; both norms are
    as accurate as the dense products, and no (d_out, d_in) matrix is formed.

    Parameters
    ----------
    b : array, shape (N, d_out, r)
    a : array, shape (N, r, d_in)
        The reference factors, ``dW_i = scale * b[i] @ a[i]``.
    b_hat : array, shape (N, d_out, r_hat)
    a_hat : array, shape (N, r_hat, d_in)
        The approximations, ``dW^_i = scale_hat * b_hat[i] @ a_hat[i]``; ``r_hat`` may differ
        from r.
    scale : float, default 1.0
    scale_hat : float, optional
        Defaults to `scale`.
    xp : namespace, optional

    Returns
    -------
    abs_err : array, shape (N,)
        ``||dW_i - dW^_i||_F``.
    rel_err : array, shape (N,)
        ``abs_err[i] / ||dW_i||_F``, with :func:`dw_error`'s rule for zero norms: 0.0 when
        dW_i and dW^_i are both zero, ``inf`` when only dW_i is. Never raises on zero norms.

    Both are float32 for half-precision input, otherwise the promoted dtype. Item i equals
    ``dw_error(b[i], a[i], b_hat[i], a_hat[i], scale=scale, scale_hat=scale_hat)`` up to
    rounding.

    Raises
    ------
    ShapeError
        When the inputs are not 3-D stacks with one N, one (d_out, d_in) and matching ranks.
    InvalidArgumentError
        For non-finite scales or non-floating input.
    BackendError
        When the namespace has no ``linalg.qr`` or ``linalg.vector_norm``.
    """
    abs_err, norm = dw_errors_and_norms(b, a, b_hat, a_hat, scale=scale, scale_hat=scale_hat, xp=xp)
    return abs_err, _ratio(abs_err, norm, array_namespace(abs_err) if xp is None else xp)


def dw_errors_and_norms(b: Array, a: Array, b_hat: Array, a_hat: Array, /, *, scale: float = 1.0,
                        scale_hat: float | None = None, xp: Namespace | None = None) -> tuple[Array, Array]:
    """``(||dW_i - dW^_i||_F, ||dW_i||_F)`` (N,) each, as :func:`dw_errors` computes them (one QR per item
    for both). Private: for callers that pool absolute errors and norms."""
    xp = array_namespace(b, a, b_hat, a_hat) if xp is None else xp
    n, d_out, r, d_in = _check_stacks(b, a, b_hat, a_hat)
    for name in ("qr", "vector_norm"):
        linalg_function(xp, name, "dw_errors")
    s = check_real(scale, "scale")
    s_hat = s if scale_hat is None else check_real(scale_hat, "scale_hat")
    dtype = work_dtype(xp, b, a, b_hat, a_hat)
    b, a, b_hat, a_hat = (as_work(t, dtype, xp) for t in (b, a, b_hat, a_hat))
    if n == 0:
        empty = xp.zeros((0,), dtype=dtype, device=device(b))
        return empty, empty
    signs = xp.concat([xp.full((r,), s, dtype=dtype, device=device(b)),
                       xp.full((a_hat.shape[1],), -s_hat, dtype=dtype, device=device(b))])
    if d_out <= d_in:  # QR of [b | b^] (each item stored column by column, as LAPACK wants it)
        rq = _stacked_r(xp.concat([b.mT, b_hat.mT], axis=1), xp)
        other, lead = xp.concat([a, a_hat], axis=1), a
    else:  # QR of [a; a^]^T
        rq = _stacked_r(xp.concat([a, a_hat], axis=1), xp)
        other, lead = xp.concat([b.mT, b_hat.mT], axis=1), b.mT
    diff = (rq * signs[None, None, :]) @ other  # ||diff_i||_F = ||dW_i - dW^_i||_F
    rows = min(r, rq.shape[1])  # [b | b^] = Q R, so b = Q R[:, :r]; R is upper triangular
    ref = (rq[:, :rows, :r] * s) @ lead
    return _stacked_norms(diff, xp), _stacked_norms(ref, xp)


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
