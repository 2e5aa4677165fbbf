"""What every driver in this folder shares: the command line, the clock and the one JSON line it prints.

A driver is run by ``benchmarks/compare.py`` as its own process (lorashare in the project's .venv, the peers
in ``benchmarks/peers/.venv``), so imports, memory and threads of one tool never touch another's. Two commands:

    driver.py compress OUT -k K ADAPTER_DIR... [--layer-by-layer] [--chunk-size N] [--device cuda]
    driver.py reconstruct CKPT OUT_DIR NAME... [--like ADAPTER_DIR]

Each prints one line ``BENCH_JSON {...}`` on stdout: the seconds of each step, timed with
``time.perf_counter`` after every import is done, and ``ru_maxrss`` of the process (MB) after the imports and
at the end. compare.py also reads the peak RSS of the whole process from ``os.wait4``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress")
    c.add_argument("out")
    c.add_argument("adapters", nargs="+")
    c.add_argument("-k", type=int, required=True)
    c.add_argument("--layer-by-layer", action="store_true")
    c.add_argument("--chunk-size", type=int, default=None)
    c.add_argument("--cast-float32", action="store_true", help="vlora-dev only: cast factors to float32 first")
    c.add_argument("--device", default="cpu", help="lorashare only: where its linear algebra runs")
    r = sub.add_parser("reconstruct")
    r.add_argument("checkpoint")
    r.add_argument("out_dir")
    r.add_argument("names", nargs="+")
    r.add_argument("--like", help="an original adapter folder whose adapter_config.json gives alpha, base model "
                                  "and target modules to tools whose export needs them passed (vlora-dev)")
    return p.parse_args(argv)


class Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.rss_after_imports = maxrss_mb()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[name] = now - self.t0
        self.t0 = now

    def emit(self, **extra) -> None:
        out = {"seconds": self.marks, "rss_after_imports_mb": self.rss_after_imports, "maxrss_mb": maxrss_mb()}
        out.update(extra)
        print("BENCH_JSON " + json.dumps(out), flush=True)
        sys.stdout.flush()
