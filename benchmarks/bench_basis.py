"""Benchmark: share_core.basis against a d x d covariance + full torch.linalg.eigh.

The earlier tool formed the (d, d) covariance of the stacked LoRA columns and ran a full
``torch.linalg.eigh`` on it for every layer, whatever the number of columns n. share_core's
``basis`` (method="auto") takes the thin SVD when n < d and the covariance route when
n >= d (falling back to the SVD when the covariance cannot certify the rank).

Two tables, printed as markdown:

1. Timings on torch CPU float32, best of 3 (time.perf_counter), for d in {768, 4096} and
   n in {16, 64, 256, 1024, 4096} on random low-rank-plus-noise data, with the route "auto"
   took and how far apart the two signal subspaces are (sine of the largest principal angle
   between the top-k_sig eigenvectors of the old tool and share_core's basis).
2. Accuracy of the routes on float32 data for n < d: rank found, orthonormality error and
   full-rank reconstruction error, on data with a prescribed condition number, for the thin
   SVD and for the Gram and covariance routes with their scatter formed in float32 (what
   squaring the condition number costs) and in float64 (what share_core does).

3. (``--speed``) The compression hot spots, old call against new call, interleaved in one
   run (ratios of medians; absolute times move with the machine's load):
   ``basis(x)`` against ``basis(x, max_components=32)`` for (d, n) = (768, 800) and
   (4096, 128) float32, with the forced thin SVD and Gram routes for n < d; and, for one
   Llama-7B module (N = 8 adapters, d = 4096, r = r_hat = 16), ``dw_error`` twice per adapter
   (error, then ||dW|| against zero factors, as the compression step called it) against one
   ``dw_errors`` call on the stacks.

Usage::

    python benchmarks/bench_basis.py            # full grid (several minutes on 2 CPU cores)
    python benchmarks/bench_basis.py --quick    # d = 768 only, n <= 1024, best of 1
    python benchmarks/bench_basis.py --speed    # table 3 only (about a minute unloaded)
    python benchmarks/bench_basis.py --speed --threads 1 --repeats 21  # steadier on a busy machine
"""

from __future__ import annotations

import argparse
import time

import torch

import share_core as sc
from share_core._basis import basis_with_route

SIGNAL_RANK = 8
NOISE = 1e-3
ROUTES = [
    ("svd (float32)", "svd", True),
    ("gram, float32 scatter", "gram", False),
    ("gram, float64 scatter", "gram", True),
    ("covariance, float32 scatter", "covariance", False),
    ("covariance, float64 scatter", "covariance", True),
]


def low_rank_plus_noise(d: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(d, n) float32: rank-8 signal (singular values 1 .. 0.05, times sqrt(n)) plus noise 1e-3."""
    k = min(SIGNAL_RANK, d, n)
    left, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    s = torch.logspace(0, -1.3, k, dtype=torch.float64) * n**0.5
    noise = NOISE * torch.randn(d, n, generator=gen, dtype=torch.float64)
    return ((left * s) @ right.mT + noise).to(torch.float32)


LONG_S = 20.0


def best_of(fn, repeats: int) -> tuple[float, int, object]:
    """Smallest wall time of up to `repeats` calls, the number of calls, and the last result.

    A call that takes longer than LONG_S seconds is not repeated (the table marks it).
    """
    best, out, runs = float("inf"), None, 0
    while runs < repeats:
        start = time.perf_counter()
        out = fn()
        best, runs = min(best, time.perf_counter() - start), runs + 1
        if best > LONG_S:
            break
    return best, runs, out


def old_tool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the earlier tool did: (d, d) covariance, full eigh, descending."""
    w, v = torch.linalg.eigh(x @ x.mT)
    return w.flip(0), v.flip(1)


def max_angle_sine(u: torch.Tensor, v: torch.Tensor) -> float:
    """sin of the largest principal angle between span(u) and span(v): ||(I - u u^T) v||_2.

    (Not sqrt(1 - cos**2), which cannot resolve angles below sqrt(eps) of float32 vectors.)
    """
    u, v = u.double(), v.double()
    return float(torch.linalg.matrix_norm(v - u @ (u.mT @ v), ord=2))


def _cell(seconds: float, runs: int, repeats: int) -> str:
    """A timing cell; '(1 run)' when a long call was not repeated."""
    return f"{seconds:.4f}" + ("" if runs == repeats else f" ({runs} run)")


def timing_table(dims, ns, repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    print("| d | n | route (auto) | rank kept | t_share (s) | t_dxd_eigh (s) | speedup | sin angle top-8 |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for d in dims:
        for n in ns:
            x = low_rank_plus_noise(d, n, gen)
            t_share, runs_share, (u, _, _, route) = best_of(lambda: basis_with_route(x), repeats)
            t_old, runs_old, (_, v) = best_of(lambda: old_tool(x), repeats)
            k = min(SIGNAL_RANK, u.shape[1])
            sine = max_angle_sine(u[:, :k], v[:, :k])
            print(
                f"| {d} | {n} | {route} | {u.shape[1]} | {_cell(t_share, runs_share, repeats)} | "
                f"{_cell(t_old, runs_old, repeats)} | {t_old / t_share:.2f}x | {sine:.1e} |",
                flush=True,
            )


def accuracy_table(d: int, ns, kappas) -> None:
    gen = torch.Generator().manual_seed(1)
    print("| d | n | kappa | route | rank found | max abs(U^T U - I) | rel. error at full rank |")
    print("|---:|---:|---:|---|---:|---:|---:|")
    for n in ns:
        for kappa in kappas:
            left, _ = torch.linalg.qr(torch.randn(d, n, generator=gen, dtype=torch.float64))
            right, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
            s = torch.logspace(0, -torch.log10(torch.tensor(float(kappa))).item(), n, dtype=torch.float64)
            x = ((left * s) @ right.mT).to(torch.float32)
            held = x.double()
            for label, method, accumulate in ROUTES:
                u = basis_with_route(x, method=method, accumulate=accumulate)[0].double()
                ortho = float((u.mT @ u - torch.eye(u.shape[1], dtype=torch.float64)).abs().max())
                err = float(torch.linalg.norm(held - u @ (u.mT @ held)) / torch.linalg.norm(held))
                print(f"| {d} | {n} | {kappa:.0e} | {label} | {u.shape[1]} / {n} | {ortho:.1e} | {err:.1e} |", flush=True)


def decaying(d: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(d, n) float32 with singular values 1 .. 1e-4, geometrically spaced (a trained adapter
    set's spectrum decays; its tail lies below what a float32 scatter resolves)."""
    m = min(d, n)
    left, _ = torch.linalg.qr(torch.randn(d, m, generator=gen, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(n, m, generator=gen, dtype=torch.float64))
    return ((left * torch.logspace(0, -4, m, dtype=torch.float64)) @ right.mT).to(torch.float32)


def interleaved(fns: dict, repeats: int) -> dict:
    """Median and min wall time of each callable, calls interleaved round by round."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (sorted(t)[len(t) // 2], min(t)) for name, t in times.items()}


def _rows(case: str, results: dict, base: str, notes: dict) -> None:
    for name, (median, best) in results.items():
        print(f"| {case} | {name} | {median * 1e3:.1f} | {best * 1e3:.1f} | "
              f"{results[base][0] / median:.2f}x | {notes.get(name, '')} |", flush=True)


def speed_table(repeats: int, k: int = 32) -> None:
    """basis without/with max_components, and dw_error x2 per item against dw_errors."""
    gen = torch.Generator().manual_seed(2)
    print("| case | call | median (ms) | min (ms) | speedup vs first row (medians) | notes |")
    print("|---|---|---:|---:|---:|---|")
    for d, n in ((768, 800), (4096, 128)):
        x = decaying(d, n, gen)
        fns = {"basis(x)": lambda: basis_with_route(x),
               f"basis(x, max_components={k})": lambda: basis_with_route(x, max_components=k)}
        if n < d:
            fns["basis(x, method='svd')"] = lambda: basis_with_route(x, method="svd")
            fns["basis(x, method='gram')"] = lambda: basis_with_route(x, method="gram")
        notes = {}
        for name, fn in fns.items():
            u, energies, _, route = fn()
            notes[name] = f"route {route}, u {tuple(u.shape)}, {energies.shape[0]} energies"
        _rows(f"basis d={d} n={n} float32", interleaved(fns, repeats), "basis(x)", notes)
    n_items, d, r = 8, 4096, 16
    b = torch.randn(n_items, d, r, generator=gen) * 0.02
    a = torch.randn(n_items, r, d, generator=gen) * 0.02
    b_hat = b + 1e-3 * torch.randn(n_items, d, r, generator=gen) * 0.02
    a_hat = a + 1e-3 * torch.randn(n_items, r, d, generator=gen) * 0.02

    def per_item():  # what share_torch's compression step did: error, then ||dW|| against zeros
        out = []
        for i in range(n_items):
            err, _ = sc.dw_error(b[i], a[i], b_hat[i], a_hat[i])
            norm, _ = sc.dw_error(b[i], a[i], torch.zeros_like(b[i][:, :1]), torch.zeros_like(a[i][:1, :]))
            out.append((float(err), float(norm)))
        return out

    def batched():
        err, rel = sc.dw_errors(b, a, b_hat, a_hat)
        return list(zip(err.tolist(), rel.tolist()))

    old, new = per_item(), batched()
    worst = max(abs(e_new / (e_old / norm) - 1) for (e_old, norm), (_, e_new) in zip(old, new))
    fns = {"dw_error x2 per item": per_item, "dw_errors batched": batched}
    notes = {"dw_errors batched": f"max rel. difference of rel_err vs dw_error {worst:.1e}"}
    _rows(f"dW error N={n_items} d={d} r=r_hat={r} float32", interleaved(fns, repeats), "dw_error x2 per item", notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="d = 768 only, n <= 1024, best of 1")
    parser.add_argument("--speed", action="store_true", help="only the old-vs-new call table (table 3)")
    parser.add_argument("--repeats", type=int, default=11, help="rounds of the --speed table (default 11)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU")
    if args.speed:
        speed_table(args.repeats)
        return
    print("t_share: share_core.basis(x) (auto route); t_dxd_eigh: x @ x.T + torch.linalg.eigh;")
    print("sin angle: between the top-8 vectors of the two (the rank-8 signal); rank kept: share's q.\n")
    if args.quick:
        timing_table([768], [16, 64, 256, 1024], repeats=1)
    else:
        timing_table([768, 4096], [16, 64, 256, 1024, 4096], repeats=3)
    print()
    accuracy_table(768, [64] if args.quick else [64, 256], [1e1, 1e2, 1e3, 1e4])


if __name__ == "__main__":
    main()
