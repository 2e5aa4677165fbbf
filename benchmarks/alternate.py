"""Alternating A/B timing of `SHAREModel.from_adapters`: this checkout against another one, in turn, each run a fresh
process, so that a drift in the machine's load hits both sides alike.

    git worktree add /tmp/before <commit>      # or: git clone . /tmp/before && git -C /tmp/before checkout <commit>
    .venv/bin/python benchmarks/alternate.py --other /tmp/before --scenario roberta-100 --scenario llama-8 --rounds 3

Each process imports share_* from its side (the other one through PYTHONPATH, which comes before this
checkout's editable install), compresses the first two adapters untimed (imports, thread pools), then times one
`from_adapters` of the whole set at the scenario's k with default options, files warm. Prints one line per run
and the median per side; the adapter sets are benchmarks/synthetic.py's, as compare.py makes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402  (the scenarios and the adapter generator)

CHILD = """
import glob, json, sys, time
import share_core
from share_torch import SHAREModel
paths = sorted(glob.glob(sys.argv[1] + "/*/"))
k = int(sys.argv[2])
SHAREModel.from_adapters(paths[:2], num_components=k, show_progress=False)
t = time.perf_counter()
m = SHAREModel.from_adapters(paths, num_components=k, show_progress=False)
seconds = time.perf_counter() - t
errors = m.stats()["dw_error"]
print(json.dumps({"s": seconds, "mean_dw_error": sum(errors.values()) / len(errors), "share_core": share_core.__file__}))
"""


def run(side: str, folder: Path, k: int, other: Path) -> dict:
    env = dict(os.environ)
    if side == "other":
        env["PYTHONPATH"] = str(other)
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(k)], capture_output=True, text=True,
                         env=env, check=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--other", required=True, type=Path, help="the other checkout (its share_* packages)")
    p.add_argument("--scenario", action="append", choices=sorted(compare.SCENARIOS), required=True)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if not (args.other / "share_core" / "__init__.py").is_file():
        raise SystemExit(f"--other {args.other}: expected a lorashare checkout with share_core/ in it")
    for name in args.scenario:
        sc = compare.SCENARIOS[name]
        folder = Path(f"/tmp/lorashare-bench/{name}")
        compare.ensure_adapters(sc, folder, None, None)
        times: dict[str, list[float]] = {"other": [], "this": []}
        for i in range(args.rounds):
            for side in ("other", "this"):
                r = run(side, folder, sc["k"], args.other)
                times[side].append(r["s"])
                print(f"{name} round {i + 1} {side:5s} {r['s']:7.2f} s  mean dW error {r['mean_dw_error']:.6f}  "
                      f"({Path(r['share_core']).parent.parent})", flush=True)
        before, after = statistics.median(times["other"]), statistics.median(times["this"])
        print(f"{name}: median {before:.2f} s ({args.other}) -> {after:.2f} s (this checkout), "
              f"{before / after:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
