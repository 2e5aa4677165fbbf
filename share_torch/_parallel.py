"""Modules compressed side by side on the CPU: one thread per module, each with one torch thread.

One module's work is hundreds of small LAPACK and BLAS calls (a 128 x 128 ``eigh``, a 4096 x 32 QR, batched
16-column QRs...) that one core runs about as fast as two: they are latency-bound, not flop-bound. Running
whole modules in parallel threads, each of whose torch operations is single-threaded, keeps every core busy
instead (figures in docs/benchmarks.md). Two module threads that each keep torch's default thread count
oversubscribe the cores (their OpenMP teams spin against each other: 35 s instead of 7 s for 8 Llama-7B-shaped
adapters on 2 cores), which is why each worker sets its own torch thread count to one.

PyTorch releases the GIL inside its operators, so threads (not processes) suffice, and the factors already in
memory are shared rather than copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

from share_core._linalg import restricted_route_for_threads

from ._compress import storage_itemsize

T = TypeVar("T")
R = TypeVar("R")

#: Bytes of folded factors (in the compute dtype) that the modules in flight may hold together. A module's
#: working memory is a few times its folded factors (stacks, float64 Gram copies, rebuilt factors), so this
#: keeps the parallel path's extra memory in the hundreds of MB; modules larger than this (1000 Llama-7B-shaped
#: adapters hold 0.5 GB per module) run one at a time with every torch thread, as before.
IN_FLIGHT_BYTES = 256 * 2**20


def module_workers(device: torch.device, module_bytes: int, num_modules: int, threads: int | None = None) -> int:
    """How many modules to compress at once: one per torch thread on the CPU (``torch.get_num_threads()``,
    which users lower with ``torch.set_num_threads`` or ``OMP_NUM_THREADS``), no more than the modules, and
    no more than fit :data:`IN_FLIGHT_BYTES`; 1 (the plain loop) on other devices, whose kernels are queued
    on one stream anyway."""
    if torch.device(device).type != "cpu":
        return 1
    threads = torch.get_num_threads() if threads is None else threads
    fit = IN_FLIGHT_BYTES // max(int(module_bytes), 1)
    return max(1, min(threads, num_modules, fit))


def _one_thread() -> None:
    torch.set_num_threads(1)


def ordered_map(fn: Callable[[T], R], items: Sequence[T], workers: int,
                wrap: Callable[[Iterable], Iterable] = iter, hold_blas: bool = False) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in the order of `items`, computed by `workers` threads whose torch operations are
    single-threaded (with ``workers == 1``: in this thread, as a plain loop). `wrap` wraps the items as they are
    yielded (a progress bar advances as results arrive).

    On an error (or Ctrl-C) in any item, the items not yet started are cancelled, the running ones finish,
    and the error is raised; torch's thread count is restored whatever happens. With `hold_blas`, the main thread
    holds SciPy's BLAS at one thread while the workers run, so that they may take LAPACK's restricted
    eigensolver (``share_core._linalg.restricted_route_for_threads``; it imports SciPy, about 0.25 s the first
    time, so callers ask for it only where such eigensolves can occur)."""
    if workers <= 1:
        for item in wrap(items):
            yield item, fn(item)
        return
    threads = torch.get_num_threads()
    with restricted_route_for_threads() if hold_blas else contextlib.nullcontext():  # one BLAS thread each
        pool = ThreadPoolExecutor(max_workers=workers, initializer=_one_thread, thread_name_prefix="lorashare")
        try:
            futures: list[Future] = [pool.submit(fn, item) for item in items]
            for item, future in wrap(list(zip(items, futures))):
                yield item, future.result()
        finally:
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            finally:  # (also after a second Ctrl-C during the wait)
                torch.set_num_threads(threads)  # the workers' set_num_threads(1) also lowered the process-wide count


def folded_bytes(ranks: Iterable[int], d_in: int, d_out: int, dtype: torch.dtype) -> int:
    """Bytes of one module's folded factors (A and B of every adapter) in `dtype`."""
    return sum(ranks) * (d_in + d_out) * storage_itemsize(dtype)


__all__ = ["IN_FLIGHT_BYTES", "module_workers", "ordered_map", "folded_bytes"]
