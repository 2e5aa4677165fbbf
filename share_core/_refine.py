"""Alternating refinement of one module's two bases towards the lowest total dW error, in r-sized space.

Per module, with stacked factors ``Bs = [B_1 | ... | B_N]`` (d_out, n) and ``As = [A_1^T | ... | A_N^T]``
(d_in, n), ``n = N r``: given V, the best U of width k_B spans the top left singular vectors of
``X_U = [B_1 (A_1 V) | ... | B_N (A_N V)] = Bs M``, ``M = blockdiag(A_i V)`` (n, N k_A). With the Gram
matrix ``Bs^T Bs = R^T R`` (``R = W^1/2 P^T`` from its eigendecomposition), ``X_U X_U^T = Q (R M)(R M)^T Q^T``
for an orthonormal Q, so those vectors are ``X_U z_j / s_j`` with ``(s_j^2, y_j)`` the eigenpairs of the
(n, n) matrix ``T = (R M)(R M)^T`` and ``z_j = (R M)^T y_j / s_j``: ``u_j ~ Bs (M (R M)^T y_j)``. The
(d, N k) matrix ``X_U`` and its SVD are never formed. Likewise V from ``X_V = As blockdiag(B_i^T U)``.

Those vectors are orthonormalized in r-sized space where rounding allows (:func:`_half_step`): then only one
(d, n) x (n, k) product per side, at the end, touches the long dimension; otherwise each half-step forms its
vectors and takes their (d, k) QR.
"""

from __future__ import annotations

from share_core._arguments import InvalidArgumentError, check_positive_int
from share_core._basis import _count_above, _eig_threshold, _gram_eigh, _squaring_dtype
from share_core._compat import Array, Namespace, array_namespace, as_work, device, linalg_function, work_dtype
from share_core._linalg import check_finite, column_signs, eigh_leading, qr
from share_core.errors import ShapeError

__all__ = ["refine_bases"]


def _check(b: Array, a: Array, u: Array, v: Array) -> tuple[int, int, int, int]:
    """(N, d_out, r, d_in) of stacks b (N, d_out, r), a (N, r, d_in) and bases u (d_out, k_B), v (d_in, k_A)."""
    shapes = [tuple(t.shape) for t in (b, a, u, v)]
    if [len(s) for s in shapes] != [3, 3, 2, 2]:
        raise ShapeError(f"expected b (N, d_out, r), a (N, r, d_in), u (d_out, k_B), v (d_in, k_A), found shapes {shapes}")
    (n_items, d_out, r), (n_a, r_a, d_in) = shapes[0], shapes[1]
    if (n_a, r_a) != (n_items, r) or shapes[2][0] != d_out or shapes[3][0] != d_in or n_items < 1 or r < 1:
        raise ShapeError(f"expected b (N, d_out, r), a (N, r, d_in), u (d_out, k_B), v (d_in, k_A) with one N >= 1, "
                         f"r >= 1, d_out and d_in, found shapes {shapes}")
    return n_items, d_out, r, d_in


def stacked_columns(b: Array, a: Array, xp: Namespace) -> tuple[Array, Array]:
    """``Bs`` (d_out, N r) and ``As`` (d_in, N r) of stacks b (N, d_out, r) and a (N, r, d_in):
    column block i is ``b[i]`` and ``a[i].mT``, as :func:`share_core.stack` lays them out."""
    n_items, d_out, r = b.shape
    d_in = a.shape[2]
    bs = xp.reshape(xp.permute_dims(b, (1, 0, 2)), (d_out, n_items * r))
    as_ = xp.reshape(xp.permute_dims(a, (2, 0, 1)), (d_in, n_items * r))
    return bs, as_


def _root(w: Array, p: Array, xp: Namespace) -> Array:
    """R (n, n) with ``R^T R = P diag(w) P^T`` (eigenvalues already clipped at zero)."""
    return xp.sqrt(w)[:, None] * p.mT


def _half_coef(root: Array, loads: Array, n_items: int, k: int, d: int, eps: float, xp: Namespace) -> Array:
    """Coefficients (n, <= k) of the top-k left singular vectors of ``y blockdiag(loads_i)``: vector j is
    ``y @ coef[:, j]``, for the (d, n) stack y whose Gram root is `root` (``y^T y = root^T root``).

    `loads` (n, k_o) is the other side's stack projected on its basis (block i: ``A_i V`` or ``B_i^T U``);
    `eps` is the working precision's, for the rank rule ``s > max(d, N k_o) * eps * s_max`` of
    :func:`share_core.basis`.
    """
    n = root.shape[0]
    r, k_other = n // n_items, loads.shape[1]
    m = xp.reshape(loads, (n_items, r, k_other))                                    # block i: other_i^T basis
    g = m @ m.mT                                                                    # (N, r, r): M M^T by block
    rb = xp.permute_dims(xp.reshape(root, (n, n_items, r)), (1, 0, 2))             # (N, n, r): R by block
    w, vecs = eigh_leading(xp.reshape(xp.permute_dims(rb @ g, (1, 0, 2)), (n, n)) @ root.mT, k, xp=xp)  # R M M^T R^T
    rtol = max(d, n_items * k_other) * eps
    q = _count_above(w, _eig_threshold(w, rtol, xp.zeros((), dtype=w.dtype, device=device(w)),
                                       xp.finfo(w.dtype).eps, xp), xp)
    kept = min(q, k)
    return xp.reshape(g @ (rb.mT @ vecs[:, :kept]), (n, kept)) / w[:kept]         # M (R M)^T y_j / s_j^2


#: Smallest |diagonal entry| of the r-sized triangular factor (:func:`_half_step`) whose inverse is applied to
#: the coefficients. The columns it factors are orthonormal in exact arithmetic, so each entry is 1 up to
#: rounding; one far from 1 means rounding has made them dependent.
DIAGONAL_FLOOR = 0.9


def _half_step(y: Array, root: Array, loads: Array, n_items: int, k: int, eps: float, eps_gram: float | None,
               xp: Namespace) -> tuple[Array | None, Array | None, Array]:
    """One half-step: the orthonormal basis ``u`` (d, <= k) of the top-k left singular vectors of
    ``y blockdiag(loads_i)`` (see :func:`_half_coef`), as ``(x, u, y^T u)``, exactly one of x and u not None.

    With ``eps_gram`` (the Gram matrix computed in a wider dtype than the data, whose unit roundoff it is),
    ``u = y @ x`` is left unformed where that is safe: the coefficient columns are orthonormalized in r-sized
    space through the QR of ``root @ coef = Q T`` (``(y c)^T (y c) = (root c)^T (root c)`` up to the Gram's
    error E), so ``x = coef T^-1`` and ``y^T u = root^T Q``, and the (d, n) x (n, k) product and (d, k) QR of
    the half-step are left to one product at the end. Then ``u^T u - I = x^T E x``, with
    ``|E| <= n eps_gram tr(y^T y)``: the route is taken only when that bound times the largest ``|x_j|^2`` is
    below the data's `eps`, and T's diagonal is above :data:`DIAGONAL_FLOOR`. Otherwise (and without a wider
    Gram, e.g. float64 data, where E is as coarse as the data) u is formed and orthonormalized by its own QR.
    """
    d, n = y.shape
    coef = _half_coef(root, loads, n_items, k, d, eps, xp)
    solve = getattr(getattr(xp, "linalg", None), "solve", None)
    if coef.shape[1] == 0:
        return coef, None, coef
    if solve is not None and eps_gram is not None:
        q2, t = qr(root @ coef, "refine_bases", xp)
        diag = xp.sum(t * xp.eye(t.shape[0], dtype=t.dtype, device=device(t)), axis=1)
        if bool(xp.all(xp.abs(diag) >= DIAGONAL_FLOOR)):
            x = solve(t.mT, coef.mT).mT
            bound = n * eps_gram * xp.sum(root * root) * xp.max(xp.sum(x * x, axis=0))  # tr(y^T y) = |root|_F^2
            if float(bound) <= eps:
                return x, None, root.mT @ q2
    u = _oriented(y @ coef, xp)
    return None, u, y.mT @ u


def _formed(y: Array, x: Array | None, u: Array | None, xp: Namespace) -> Array:
    """The basis of a :func:`_half_step` result, formed where it was left as coefficients, signed."""
    if u is not None:
        return u
    if x.shape[1] == 0:
        return xp.zeros((y.shape[0], 0), dtype=y.dtype, device=device(y))
    u = y @ x
    return u * column_signs(u, xp)[None, :]


def _oriented(x: Array, xp: Namespace) -> Array:
    """Orthonormal columns spanning the leading columns of x (d, k) in turn (reduced QR), with the sign rule."""
    u, _ = qr(x, "refine_bases", xp)
    return u * column_signs(u, xp)[None, :]


def refine_stacks(bs: Array, as_: Array, v: Array | int, n_items: int, k_b: int, steps: int, xp: Namespace,
                  gram_b: tuple | None = None, gram_a: tuple | None = None) -> tuple[Array, Array]:
    """:func:`refine_bases` on the stacked columns ``Bs`` (d_out, n), ``As`` (d_in, n) of `n_items` equal
    blocks, to a U of at most `k_b` columns, reusing the ``(w, p, c, y)`` of their Gram matrices
    (``share_core._basis.gram_fit``) when the caller already has them. `v` is the starting V, or an int
    k_A to start from the leading k_A components of ``As`` given by `gram_a` (never formed: ``As^T V`` is
    ``p_k w_k^1/2`` there)."""
    dtype = work_dtype(xp, bs, as_) if isinstance(v, int) else work_dtype(xp, bs, as_, v)
    eps = float(xp.finfo(dtype).eps)
    wide = _squaring_dtype(as_work(bs, dtype, xp), True, xp)
    sides = []
    for x, gram in ((bs, gram_b), (as_, gram_a)):
        w, p, _, y = _gram_eigh(as_work(x, dtype, xp), wide, xp) if gram is None else gram
        sides.append((y, _root(w, p, xp), w, p))
    (yb, root_b, _, _), (ya, root_a, w_a, p_a) = sides
    eps_gram = float(xp.finfo(ya.dtype).eps) / 2 if ya.dtype != dtype else None  # (wider Gram: r-sized route)
    u = v_step = None  # the last half-steps' (x, u, y^T u)
    width_a = v if isinstance(v, int) else v.shape[1]
    for step in range(steps):
        if step == 0:
            loads_a = (p_a[:, :v] * xp.sqrt(w_a[:v])[None, :] if isinstance(v, int)
                       else ya.mT @ as_work(v, ya.dtype, xp))
        else:
            loads_a = v_step[2]
        if loads_a.shape[1] == 0:
            break
        u = _half_step(yb, root_b, loads_a, n_items, k_b, eps, eps_gram, xp)
        if u[2].shape[1] == 0:
            break
        v_step = _half_step(ya, root_a, u[2], n_items, width_a, eps, eps_gram, xp)
    if v_step is not None:
        v = _formed(ya, *v_step[:2], xp)
    elif isinstance(v, int):  # stopped before its first V (no directions left): the starting V, formed
        v = _oriented(ya @ p_a[:, :v], xp) if v else xp.zeros((ya.shape[0], 0), dtype=ya.dtype, device=device(ya))
    u = xp.zeros((yb.shape[0], 0), dtype=yb.dtype, device=device(yb)) if u is None else _formed(yb, *u[:2], xp)
    return as_work(u, dtype, xp), as_work(v, dtype, xp)


def refine_bases(b: Array, a: Array, u: Array, v: Array, /, *, steps: int = 1,
                 xp: Namespace | None = None) -> tuple[Array, Array]:
    """Alternating refinement of a module's bases (U, V) lowering ``sum_i ||dW_i - U U^T dW_i V V^T||_F^2``.

    Each step replaces U by the top-k_B left singular vectors of ``[dW_1 V | ... | dW_N V]`` (the best U
    of its width given V), then V likewise from ``[dW_1^T U | ... | dW_N^T U]``; each half-step solves its
    subproblem exactly, so the total error never increases. The work is r-sized (see the module notes):
    an (n, n) Gram matrix per side, formed in float64 for float32 data, and per half-step an (n, n)
    eigendecomposition; the long dimension is touched by one (d, n) x (n, k) product per side at the end
    where the half-steps can be orthonormalized in r-sized space (float32 data, their Gram in float64, and
    rounding small enough), else by one such product and a (d, k) QR per half-step, ``n = N r``. Cheapest
    when ``n < d``; exact for any shapes.

    Parameters
    ----------
    b : array, shape (N, d_out, r)
    a : array, shape (N, r, d_in)
        Folded factors, ``dW_i = b[i] @ a[i]`` (mixed ranks: zero-pad to the largest; zero columns of
        b and zero rows of a change nothing).
    u : array, shape (d_out, k_B)
    v : array, shape (d_in, k_A)
        Orthonormal starting bases (e.g. the leading columns of :func:`basis` of each side), k >= 1.
    steps : int, default 1
        Alternating steps, ``>= 1``.
    xp : namespace, optional

    Returns
    -------
    u : array, shape (d_out, <= k_B)
    v : array, shape (d_in, <= k_A)
        Orthonormal; a width shrinks where the data have fewer directions than asked (singular values
        ``<= max(d, N k) * eps * s_max``, :func:`basis`'s rank rule). Columns ordered by singular value,
        the entry of largest magnitude of each positive. float32 for half-precision input, otherwise the
        promoted dtype.

    Raises
    ------
    ShapeError
        When the shapes do not fit together.
    InvalidArgumentError
        For non-finite or non-floating input, or `steps` < 1.
    BackendError
        When the namespace has no ``linalg.eigh`` or ``linalg.qr``.
    """
    xp = array_namespace(b, a, u, v) if xp is None else xp
    n_items, _, _, _ = _check(b, a, u, v)
    steps = check_positive_int(steps, "steps")
    for name in ("eigh", "qr"):
        linalg_function(xp, name, "refine_bases")
    dtype = work_dtype(xp, b, a, u, v)
    b, a = as_work(b, dtype, xp), as_work(a, dtype, xp)
    for x, name in ((b, "b"), (a, "a")):
        check_finite(x, name, "refine_bases", xp)
    if u.shape[1] == 0 or v.shape[1] == 0:
        raise InvalidArgumentError(f"refine_bases: expected u and v with at least one column, found shapes "
                                   f"{tuple(u.shape)} and {tuple(v.shape)}")
    bs, as_ = stacked_columns(b, a, xp)
    return refine_stacks(bs, as_, as_work(v, dtype, xp), n_items, u.shape[1], steps, xp)
