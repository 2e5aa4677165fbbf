"""share_core: the stateless array-API math of lorashare (SHARE, arXiv 2602.06043).

Every function takes arrays of any array-API library (NumPy, PyTorch on CPU or CUDA,
array-api-strict, ...) and returns arrays of the same namespace and device. Arrays are
positional-only, options keyword-only, ``xp=None`` last. Inputs are never modified.

Dtypes: half-precision input (float16, bfloat16) is computed and returned in float32;
float32 and float64 are returned as they came (mixed inputs follow type promotion first).
``stack`` computes nothing and keeps the promoted input dtype. Inside ``basis``, the Gram and
covariance routes form and decompose their squared matrix in float64 for float32 data (the
squared matrix doubles the digits needed), and cast the results back to float32.

Notation, per target module and adapter i: ``A_i`` is (r_i, d_in), ``B_i`` is (d_out, r_i),
the update is ``dW_i = s_i * B_i @ A_i``. The B side stacks ``[B_1 | ... | B_N]`` (d_out, sum r),
the A side ``[A_1^T | ... | A_N^T]`` (d_in, sum r).

This package imports only the standard library and ``array_api_compat``.
"""

from share_core._arguments import InvalidArgumentError
from share_core._basis import basis
from share_core._compat import array_namespace
from share_core._factors import balance, dw_error, dw_errors, fold_scale, relative_error
from share_core._linalg import eigh
from share_core._merge import merge_bases
from share_core._projection import compress_side, project, reconstruct
from share_core._refine import refine_bases
from share_core._select import explained_variance, select_k
from share_core._stats import center, centered_scatter, covariance, scatter_stats, stack

__all__ = [
    "array_namespace",
    "stack",
    "center",
    "covariance",
    "scatter_stats",
    "centered_scatter",
    "eigh",
    "basis",
    "merge_bases",
    "select_k",
    "explained_variance",
    "project",
    "reconstruct",
    "compress_side",
    "refine_bases",
    "fold_scale",
    "balance",
    "dw_error",
    "dw_errors",
    "relative_error",
    "InvalidArgumentError",
]
