"""The owners of the decompositions: :func:`eigh` (public) and :func:`svd` / :func:`qr`.

Every eigendecomposition in ``share_core`` goes through :func:`eigh` and every SVD through
:func:`svd`, so symmetrization, half-precision upcasting, ordering, clipping and the sign
convention live in one place each.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading

from share_core._arguments import InvalidArgumentError, check_matrix
from share_core._compat import (Array, Namespace, array_namespace, as_work, device, is_numpy, is_torch, linalg_function,
                                work_dtype)
from share_core.errors import ShapeError

__all__ = ["eigh", "eigh_leading", "svd", "qr", "r_factor", "column_signs", "check_finite", "frobenius"]


def frobenius(x: Array, xp: Namespace) -> Array:
    """Frobenius norm (0-d array) of any-shape `x`, scaled by max |x| so squares cannot under/overflow."""
    if math.prod(x.shape) == 0:
        return xp.zeros((), dtype=x.dtype, device=device(x))
    big = xp.max(xp.abs(x))
    safe = xp.where(big > 0, big, xp.ones_like(big))
    return xp.sqrt(xp.sum((x / safe) ** 2)) * big


def column_signs(u: Array, xp: Namespace) -> Array:
    """Signs (+1/-1, shape ``(k,)``) that make the largest-magnitude entry of each column positive.

    This is scikit-learn's ``svd_flip`` rule. Ties go to the first (lowest-row) entry.

    Parameters
    ----------
    u : array, shape (d, k)
        Columns to orient.
    xp : namespace

    Returns
    -------
    signs : array, shape (k,)
        Same dtype and device as `u`; multiply ``u * signs`` to orient the columns.
    """
    k = u.shape[1]
    where_max = xp.argmax(xp.abs(u), axis=0)  # row of each column's pick: entry (row, j) is row * k + j row-major
    picked = xp.take(xp.reshape(u, (-1,)), where_max * k + xp.arange(k, dtype=where_max.dtype, device=device(u)))
    ones = xp.ones_like(picked)
    return xp.where(picked < 0, -ones, ones)


def check_finite(x: Array, name: str, caller: str, xp: Namespace) -> None:
    """InvalidArgumentError when `x` holds NaN or infinity (one device sync).

    A finite sum proves every entry finite (a NaN or an infinity in any entry makes the sum NaN or
    infinite), at a fraction of the cost of an element-wise test; only a non-finite sum (bad data, or
    finite entries whose sum overflows) is checked entry by entry.
    """
    if bool(xp.isfinite(xp.sum(x))):
        return
    if not bool(xp.all(xp.isfinite(x))):
        raise InvalidArgumentError(
            f"share_core.{caller}: {name} of shape {tuple(x.shape)} contains NaN or infinity; "
            "the adapter weights are corrupt or overflowed, check them before compressing"
        )


def eigh(s: Array, /, *, xp: Namespace | None = None) -> tuple[Array, Array]:
    """Eigendecomposition of a symmetric matrix, descending, clipped at zero, signs fixed.

    The input is symmetrized as ``(s + s.mT) / 2`` first, so a scatter matrix that is
    symmetric only up to rounding is handled consistently.

    Parameters
    ----------
    s : array, shape (d, d)
        Symmetric (e.g. covariance or Gram) matrix. Not modified.
    xp : namespace, optional
        Array namespace; inferred from `s` when omitted.

    Returns
    -------
    w : array, shape (d,)
        Eigenvalues in descending order; negative values (rounding noise of a positive
        semi-definite matrix) are clipped to zero.
    v : array, shape (d, d)
        Orthonormal eigenvectors as columns, ``v[:, j]`` belonging to ``w[j]``. The entry of
        largest magnitude in each column is positive.

    Both outputs are float32 for float16/bfloat16 input and keep float32/float64 otherwise,
    in the namespace and on the device of `s`.

    Raises
    ------
    ShapeError
        When `s` is not square.
    InvalidArgumentError
        When `s` is not floating or holds NaN or infinity.
    BackendError
        When the namespace has no ``linalg.eigh``.
    """
    xp = array_namespace(s) if xp is None else xp
    d, d2 = check_matrix(s, "s")
    if d != d2:
        raise ShapeError(f"eigh expects a square matrix (d, d), found shape {(d, d2)}")
    decompose = linalg_function(xp, "eigh", "eigh")
    s = as_work(s, work_dtype(xp, s), xp)
    check_finite(s, "s", "eigh", xp)
    w, v = decompose((s + s.mT) / 2)
    w = xp.flip(w, axis=0)
    v = xp.flip(v, axis=1)
    w = xp.where(w > 0, w, xp.zeros_like(w))
    return w, v * column_signs(v, xp)[None, :]


#: Smallest matrix (d) for which :func:`eigh_leading` takes LAPACK's restricted route (measured on one core,
#: float64, k = 32: d = 128 2.2 ms against 1.7 ms for torch.linalg.eigh, d = 256 6.7 ms against 8.2 ms).
LEADING_MIN_SIZE = 256


@functools.cache
def _scipy_lapack():
    """SciPy's LAPACK wrappers, its tridiagonal eigensolver and a threadpoolctl controller of the BLAS libraries
    loaded once SciPy is (its own OpenBLAS included); None when SciPy or threadpoolctl is not installed."""
    try:
        from scipy.linalg import eigh_tridiagonal, lapack
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return lapack, eigh_tridiagonal, ThreadpoolController().select(user_api="blas")


@contextlib.contextmanager
def _one_blas_thread(blas):
    """SciPy's BLAS held at one thread inside; yields whether that took effect (read back from the libraries).

    Left at its default, SciPy's OpenBLAS starts a thread per core beside torch's OpenMP threads, and the two
    pools spin against each other: compressing 100 roberta-base-shaped adapters took 9 s instead of 5 s on 2
    cores. Its thread count also changes the rounding of the reduction, so one count is needed for
    reproducible results."""
    with blas.limit(limits=1):
        yield _held_at_one(blas)


def _held_at_one(blas) -> bool:
    """Whether threadpoolctl reads every BLAS library it found back at one thread (False when it found none:
    then nothing is held)."""
    found = blas.info()
    return bool(found) and all(lib["num_threads"] == 1 for lib in found)


#: Open holds of :func:`restricted_route_for_threads` and the threadpoolctl limiter of the first one: while the
#: count is above 0, SciPy's BLAS is held at one thread for the whole process, and every thread may take
#: :func:`eigh_leading`'s restricted route.
_threads_held = 0
_threads_limiter = None
_threads_held_lock = threading.Lock()


@contextlib.contextmanager
def restricted_route_for_threads():
    """Open :func:`eigh_leading`'s restricted route to every thread while inside; yields whether it is open.

    Entered from the main thread, it holds the BLAS libraries threadpoolctl finds (SciPy's and NumPy's
    OpenBLAS; torch's own BLAS is left alone) at one thread for the whole process (threadpoolctl's limit takes
    effect only when set from the main thread, and then for every thread), so that each restricted eigensolve
    runs alone in the thread that calls it. Measured with two threads at once on 768 x 768 float64 matrices:
    with the hold, every result bit for bit the main thread's alone; without it, none. Holds nest and may close
    in any order: the first sets the limit, the last lifts it. Yields False (and changes nothing) outside the
    main thread, without SciPy or threadpoolctl, or where the hold cannot be read back. share_torch enters it
    around its module threads.
    """
    global _threads_held, _threads_limiter
    found = _scipy_lapack() if threading.current_thread() is threading.main_thread() else None
    if found is None:
        yield False
        return
    blas = found[2]
    with _threads_held_lock:
        if _threads_held == 0:
            limiter = blas.limit(limits=1)
            if not _held_at_one(blas):
                limiter.restore_original_limits()
                limiter = None
            _threads_limiter = limiter
        held = _threads_limiter is not None
        if held:
            _threads_held += 1
    if not held:
        yield False
        return
    try:
        yield True
    finally:
        with _threads_held_lock:
            _threads_held -= 1
            if _threads_held == 0:
                _threads_limiter.restore_original_limits()
                _threads_limiter = None


def _on_host(s: Array, xp: Namespace) -> bool:
    """Whether `s` is a NumPy array or a PyTorch CPU tensor (whose memory NumPy can share)."""
    return s.device.type == "cpu" if is_torch(xp) else is_numpy(xp)


def _host_array(s: Array, xp: Namespace):
    """`s` (on the host, :func:`_on_host`) as a NumPy array sharing its memory."""
    return s.detach().numpy() if is_torch(xp) else s


def eigh_leading(s: Array, k: int, /, *, xp: Namespace | None = None) -> tuple[Array, Array]:
    """Every eigenvalue of a symmetric matrix and only its `k` leading eigenvectors, as :func:`eigh` gives them.

    Returns ``w`` (d,) descending and clipped at zero, and ``v`` (d, k) orthonormal, ``v[:, j]`` belonging to
    ``w[j]``, the entry of largest magnitude of each column positive: :func:`eigh`'s ``(w, v[:, :k])`` up to
    rounding.

    For NumPy arrays and PyTorch CPU tensors (float32 / float64, ``4 k <= d``, ``d >=``
    :data:`LEADING_MIN_SIZE`) with SciPy installed, LAPACK computes only the wanted vectors: one reduction to
    tridiagonal form (``?sytrd``, the bulk of the work), every eigenvalue of the tridiagonal matrix
    (``?sterf``), its k leading eigenvectors by bisection and inverse iteration (``?stebz`` / ``?stein``),
    and their back-transformation by the reduction's reflectors (``?ormqr``). That is the route of LAPACK's
    own ``?syevr`` with the vectors restricted, not an iterative approximation: the accuracy of a full
    decomposition, for a quarter to a fifth of its time at d = 4096, k = 32 (measured on one core: float32
    2.2 s against 8.9 s for ``torch.linalg.eigh``, float64 4.0 s against 20 s). Elsewhere (GPUs, other
    namespaces, no SciPy or threadpoolctl, k near d) the full :func:`eigh`, sliced.

    The restricted route runs with SciPy's BLAS held at one thread (:func:`_one_blas_thread`): in the main
    thread, which holds it for the call, and in other threads only while the main thread holds it for them
    (:func:`restricted_route_for_threads`, as share_torch does around its module threads); other threads get
    the full :func:`eigh` otherwise. Measured: threadpoolctl's limit read back 1 in the main thread but had no
    effect when set from other threads, and two threads calling SciPy's LAPACK at once with its BLAS free gave
    results that changed from run to run (OpenBLAS shares its thread pool between callers).
    """
    xp = array_namespace(s) if xp is None else xp
    d, d2 = check_matrix(s, "s")
    if d != d2:
        raise ShapeError(f"eigh_leading expects a square matrix (d, d), found shape {(d, d2)}")
    k = min(int(k), d)
    dtype = work_dtype(xp, s)
    lapack = None
    main = threading.current_thread() is threading.main_thread()
    if (1 <= k and 4 * k <= d and d >= LEADING_MIN_SIZE and dtype in (xp.float32, xp.float64)
            and (main or _threads_held > 0) and _on_host(s, xp)):
        lapack = _scipy_lapack()
    if lapack is not None:
        lapack, tridiagonal, blas = lapack
        s = as_work(s, dtype, xp)
        check_finite(s, "s", "eigh", xp)
        host = _host_array((s + s.mT) / 2, xp)
        # (another thread must not touch the limit: it would not take, and its restore could lift the hold)
        with _one_blas_thread(blas) if main else contextlib.nullcontext(True) as single:
            found = _restricted(host, k, lapack, tridiagonal) if single else None
        if found is not None:
            w, v = (xp.asarray(t) for t in found)  # (torch shares the NumPy arrays' memory)
            w = xp.where(w > 0, w, xp.zeros_like(w))
            return w, v * column_signs(v, xp)[None, :]
    w, v = eigh(s, xp=xp)
    return w, v[:, :k]


def _restricted(a, k: int, lapack, eigh_tridiagonal):
    """(all eigenvalues descending, k leading eigenvectors) of the symmetric NumPy matrix `a` (overwritten)
    through LAPACK's tridiagonal route; None when LAPACK reports a failure (the caller then decomposes fully)."""
    from scipy.linalg import LinAlgError

    n = a.shape[0]
    prefix = "d" if a.dtype.itemsize == 8 else "s"  # float64 or float32 (the caller's check)
    sytrd, sterf, ormqr = (getattr(lapack, prefix + name) for name in ("sytrd", "sterf", "ormqr"))
    # `a` is symmetric, so its transpose (Fortran-ordered: no copy) is the same matrix
    c, diag, off, tau, info = sytrd(a.T, lower=1, lwork=64 * n, overwrite_a=1)
    if info != 0:
        return None
    w, info = sterf(diag.copy(), off.copy())
    if info != 0:
        return None
    try:
        _, z = eigh_tridiagonal(diag, off, select="i", select_range=(n - k, n - 1), lapack_driver="stebz",
                                check_finite=False)
    except LinAlgError:
        return None
    # Q = diag(1, Q') with Q' the orthogonal factor whose reflectors sytrd left below c's subdiagonal (LAPACK's
    # own ?ormtr does exactly this for lower storage)
    v = z.copy()
    v[1:], _, info = ormqr("L", "N", c[1:, :n - 1], tau, z[1:].copy(order="F"), 64 * k, overwrite_c=1)
    if info != 0:
        return None
    return w[::-1].copy(), v[:, ::-1].copy()  # descending, C-ordered


def svd(x: Array, caller: str, xp: Namespace) -> tuple[Array, Array, Array]:
    """Thin SVD ``x = u @ diag(s) @ vh`` with the sign rule applied to `u` (and `vh` to match).

    Parameters
    ----------
    x : array, shape (d, n)
        Already in its working dtype (callers upcast half precision).
    caller : str
        Public function name for the :class:`BackendError` message.
    xp : namespace

    Returns
    -------
    u : array, shape (d, m)
        ``m = min(d, n)``; the largest-magnitude entry of each column is positive.
    s : array, shape (m,)
        Singular values, descending.
    vh : array, shape (m, n)
    """
    decompose = linalg_function(xp, "svd", caller)
    u, s, vh = decompose(x, full_matrices=False)
    signs = column_signs(u, xp)
    return u * signs[None, :], s, vh * signs[:, None]


def _lapack_backed(x: Array, xp: Namespace) -> bool:
    """True where QR runs in LAPACK's geqrf (NumPy, PyTorch on the CPU), whose Householder norms are scaled."""
    if is_torch(xp):
        return x.device.type == "cpu"
    return type(x).__module__.split(".")[0] == "numpy"


def _power_of_two_scales(x: Array, xp: Namespace) -> Array | None:
    """Per item of `x` (..., d, n), the power of two nearest below max |x| (1 for an all-zero item), shaped
    (..., 1, 1); None where the QR needs none (:func:`_lapack_backed`).

    GPU QRs (cuSOLVER, MAGMA) square the entries unscaled: float32 items near 1e20 overflow and near 1e-20
    underflow to a wrong R (seen on an H100: relative dW errors of 0.69 and 1.97 for an exact 0.5). Dividing
    by a power of two is exact, so R of the scaled item times the scale is R of the item up to the
    decomposition's own rounding."""
    if _lapack_backed(x, xp) or math.prod(x.shape) == 0:
        return None
    big = xp.max(xp.abs(x), axis=(-2, -1), keepdims=True)
    exponent = xp.floor(xp.log2(xp.where(big > 0, big, xp.ones_like(big))))
    top = float(math.floor(math.log2(xp.finfo(x.dtype).max)))  # log2 rounds up to 128 near float32's max
    exponent = xp.where(exponent > top, xp.full_like(exponent, top), exponent)
    return xp.where(big > 0, 2.0 ** exponent, xp.ones_like(big))


def qr(x: Array, caller: str, xp: Namespace) -> tuple[Array, Array]:
    """Reduced QR of `x` (d, n): ``q`` (d, m) orthonormal, ``r`` (m, n), ``m = min(d, n)``; on GPUs the
    input is first scaled by a power of two (:func:`_power_of_two_scales`)."""
    decompose = linalg_function(xp, "qr", caller)
    p = _power_of_two_scales(x, xp)
    if p is None:
        return decompose(x, mode="reduced")
    q, r = decompose(x / p, mode="reduced")
    return q, r * p


def r_factor(x: Array, caller: str, xp: Namespace) -> Array:
    """R (..., m, n) of the reduced QR of `x` (..., d, n), ``m = min(d, n)``, without forming Q where the
    namespace can skip it (PyTorch's ``mode="r"``, about half the work of a tall QR); the standard
    reduced QR elsewhere. R is the same either way (LAPACK's geqrf). Scaled on GPUs as :func:`qr` is."""
    decompose = linalg_function(xp, "qr", caller)
    p = _power_of_two_scales(x, xp)
    y = x if p is None else x / p
    r = decompose(y, mode="r")[1] if is_torch(xp) else decompose(y, mode="reduced")[1]
    return r if p is None else r * p
