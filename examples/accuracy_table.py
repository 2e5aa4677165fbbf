"""Accuracy against bytes on the real example adapters: lorashare at several k, and lorashare 0.1.3.

For every k (and "auto"), compresses the example adapters, restores each one, and measures its held-out
accuracy on the whole test split, next to the original adapter and the head-only floor. With
`--peer-python` (the venv made by benchmarks/peers/setup.sh), lorashare==0.1.3 is run on the same adapters at
the same k, in its own process, and its reconstructions are measured the same way.

    .venv/bin/python examples/accuracy_table.py [--ks 2 4 8 16 32 auto] [--peer-python benchmarks/peers/.venv/bin/python]

Prints a markdown table; `--json FILE` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from share_torch import SHAREModel  # noqa: E402
from tasks import ADAPTERS_DIR, TASKS, evaluate, load_base_model, load_floor_model, load_task, load_tokenizer  # noqa: E402

PEER_DRIVER = HERE.parent / "benchmarks" / "peers" / "drive_lorashare013.py"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def accuracies(load_model, tokenizer) -> dict[str, float]:
    """Held-out accuracy per task of the model `load_model(task, num_labels)` returns."""
    out = {}
    for task in TASKS:
        texts, labels, names = load_task(task, "test")
        out[task] = evaluate(load_model(task, len(names)), tokenizer, texts, labels)
    return out


def ours(k, adapters, tokenizer) -> tuple[dict[str, float], int, str]:
    share = SHAREModel.from_adapters(adapters, num_components=k, show_progress=False)
    stats = share.stats()
    ks = f"{stats['k_min']}-{stats['k_max']}" if stats["k_min"] != stats["k_max"] else str(stats["k_min"])
    acc = accuracies(lambda task, n: share.apply(load_base_model(n), task), tokenizer)
    return acc, stats["bytes"]["checkpoint"], ks


def peer(python: str, k: int, adapters, tokenizer, work: Path) -> tuple[dict[str, float], int]:
    ckpt, restored = work / f"peer_k{k}", work / f"peer_k{k}_restored"
    run = [os.path.abspath(python), str(PEER_DRIVER)]  # abspath, not resolve(): keep the venv's symlink
    subprocess.run([*run, "compress", str(ckpt), "-k", str(k), *map(str, adapters.values())],
                   check=True, capture_output=True, cwd=PEER_DRIVER.parent)
    subprocess.run([*run, "reconstruct", str(ckpt), str(restored), *adapters],
                   check=True, capture_output=True, cwd=PEER_DRIVER.parent)
    acc = accuracies(lambda task, n: PeftModel.from_pretrained(load_base_model(n), str(restored / task)), tokenizer)
    return acc, folder_bytes(ckpt)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", nargs="+", default=["2", "4", "8", "16", "32", "auto"])
    parser.add_argument("--peer-python", default=None, help="python of a venv with lorashare==0.1.3")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(0)

    tokenizer = load_tokenizer()
    adapters = {task: ADAPTERS_DIR / task for task in TASKS}
    original_bytes = sum((p / f).stat().st_size for p in adapters.values()
                         for f in ("adapter_config.json", "adapter_model.safetensors"))
    rows = [("original adapters", "-", accuracies(
        lambda task, n: PeftModel.from_pretrained(load_base_model(n), str(adapters[task])), tokenizer),
        original_bytes)]
    floor = accuracies(lambda task, n: load_floor_model(task), tokenizer)
    rows.append(("head-only floor", "-", floor, None))
    with tempfile.TemporaryDirectory(prefix="lorashare-acc-") as tmp:
        for k in args.ks:
            kk = k if k == "auto" else int(k)
            acc, nbytes, ks = ours(kk, adapters, tokenizer)
            rows.append((f"lorashare k={k}", ks, acc, nbytes))
            if args.peer_python and k != "auto":
                acc, nbytes = peer(args.peer_python, int(k), adapters, tokenizer, Path(tmp))
                rows.append((f"lorashare 0.1.3 k={k}", k, acc, nbytes))

    original = rows[0][2]
    header = ("| method | k per group | " + " | ".join(TASKS) + " | gain kept (mean) | bytes | smaller |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, ks, acc, nbytes in rows:
        gains = [(acc[t] - floor[t]) / (original[t] - floor[t]) for t in TASKS]
        kept = f"{100 * sum(gains) / len(gains):.1f}%" if name != "head-only floor" else "0%"
        size = f"{nbytes:,}" if nbytes else "-"
        ratio = f"{original_bytes / nbytes:.2f}x" if nbytes else "-"
        lines.append(f"| {name} | {ks} | " + " | ".join(f"{acc[t]:.3f}" for t in TASKS) + f" | {kept} | {size} | {ratio} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"tasks": TASKS, "rows": [
            {"method": n, "k": ks, "accuracy": a, "bytes": b} for n, ks, a, b in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
