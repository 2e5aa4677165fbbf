"""Where one compression's seconds go: cProfile of `SHAREModel.from_adapters` on a synthetic set, on the CPU or a GPU.

    .venv/bin/python benchmarks/profile_compress.py --scenario llama-8 [--device cuda] [--top 30]

The set is made by benchmarks/synthetic.py into /tmp/lorashare-bench/<scenario> when missing (as compare.py
does). One untimed warm-up compression of the first two adapters comes first (imports, CUDA context, solver
handles), then the profiled one. On a GPU, time shows up where the host waits for the device: a ``.tolist()``,
``float(tensor)`` or copy to the CPU is charged the device work queued before it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402  (the scenarios and the adapter generator)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=sorted(compare.SCENARIOS), default="llama-8")
    p.add_argument("--device", default="cpu")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--layers", type=int, default=None, help="the first LAYERS layers of every adapter only")
    p.add_argument("--layer-by-layer", action="store_true")
    args = p.parse_args(argv)

    import torch

    from share_torch import SHAREModel

    sc = compare.SCENARIOS[args.scenario]
    variant = f"-{args.layers}layers" if args.layers else ""
    data = Path(f"/tmp/lorashare-bench/{args.scenario}{variant}")
    compare.ensure_adapters(sc, data, args.layers, None)
    adapters = compare.adapter_folders(data)
    options = {"num_components": sc["k"], "device": args.device, "layer_by_layer": args.layer_by_layer,
               "show_progress": False}
    SHAREModel.from_adapters(adapters[:2], **options)  # warm-up
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    SHAREModel.from_adapters(adapters, **options)
    profile.disable()
    wall = time.perf_counter() - t0
    print(f"{args.scenario}{variant} on {args.device}: from_adapters {wall:.3f} s under cProfile; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', '(unset)')}")
    for key in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profile, stream=text).strip_dirs().sort_stats(key).print_stats(args.top)
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:20000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
