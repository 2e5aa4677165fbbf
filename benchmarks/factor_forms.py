"""Which factors to stack: each adapter's own B/A ("scaled") or its dW re-factored ("balanced"), with and
without refinement, at equal k (equal bytes), on the synthetic sets and the real example adapters.

    .venv/bin/python benchmarks/factor_forms.py                      # roberta-6, llama-8 (1 layer), real
    .venv/bin/python benchmarks/factor_forms.py --sets real --ks 2,4,8
    .venv/bin/python benchmarks/factor_forms.py --sets real,llama-8-1layers --ks 8,32 --steps 0,1,2,4

Prints one markdown table: mean dW relative error per adapter (as `stats()` reports it, measured on what is
stored) for each form at each k, and the compress time of each (in process, one run: only a rough guide).
The synthetic sets come from benchmarks/synthetic.py (compare.py writes them on first use).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = {
    "roberta-6": ("/tmp/lorashare-bench/roberta-6/adapter_*", [2, 4, 8]),
    "llama-8-1layers": ("/tmp/lorashare-bench/llama-8-1layers/adapter_*", [4, 8, 16]),
    "real": (f"{ROOT}/examples/adapters/*/", [2, 4, 8]),
}
FORMS = {
    "scaled": {"factor_form": "scaled"},
    "balanced": {"factor_form": "balanced"},
    "scaled + refine 2": {"factor_form": "scaled", "refine_steps": 2},
    "balanced + refine 2": {"factor_form": "balanced", "refine_steps": 2},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    parser.add_argument("--ks", default=None, help="override the k values of every set")
    parser.add_argument("--steps", default=None,
                        help="instead of the four forms: the default (balanced) form at these refine_steps, e.g. 0,1,2,4")
    args = parser.parse_args()
    forms = FORMS if args.steps is None else {
        f"refine {n}": {"factor_form": "balanced", "refine_steps": int(n)} for n in args.steps.split(",")}
    from share_torch import SHAREModel

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| set | k | " + " | ".join(forms) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in forms) + " |")
    for name in args.sets.split(","):
        pattern, ks = SETS[name]
        paths = sorted(p.rstrip("/") for p in glob.glob(pattern))
        if len(paths) < 2:
            print(f"| {name} | - | missing: run benchmarks/compare.py --scenario ... first |", file=sys.stderr)
            continue
        for k in [int(x) for x in args.ks.split(",")] if args.ks else ks:
            cells = []
            for options in forms.values():
                started = time.perf_counter()
                share = SHAREModel.from_adapters(paths, num_components=k, show_progress=False, **options)
                cells.append(f"{share.stats()['dw_error_mean']:.4f} ({time.perf_counter() - started:.1f} s)")
            print(f"| {name} | {k} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
