"""Re-evaluate the committed adapters and head-only floors, offline, against results.json.

Each adapter is loaded the standard way (``PeftModel.from_pretrained`` on a
fresh MiniLM) and each floor with ``tasks.load_floor_model``; their held-out
accuracies must equal the ones ``train_adapters.py`` recorded.  Needs no
training, no data packages and no network; about a minute or two on 2 cores.

Usage::

    python examples/check_adapters.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import tasks  # noqa: E402


def main() -> int:
    from peft import PeftModel

    torch.set_num_threads(2)
    recorded = json.loads((tasks.ADAPTERS_DIR / "results.json").read_text())["tasks"]
    tok = tasks.load_tokenizer()
    ok = True
    print(f"{'task':<20} {'adapter':>8} {'floor':>8}  (recorded adapter / floor)")
    for name in tasks.TASKS:
        texts, labels, names = tasks.load_task(name, "test")
        model = PeftModel.from_pretrained(tasks.load_base_model(len(names)),
                                          str(tasks.ADAPTERS_DIR / name)).eval()
        acc = tasks.evaluate(model, tok, texts, labels)
        floor = tasks.evaluate(tasks.load_floor_model(name), tok, texts, labels)
        rec = recorded[name]
        same = (round(acc, 4) == rec["adapter_accuracy"]
                and round(floor, 4) == rec["head_only_floor_accuracy"])
        ok &= same
        print(f"{name:<20} {acc:>8.4f} {floor:>8.4f}  ({rec['adapter_accuracy']:.4f} / "
              f"{rec['head_only_floor_accuracy']:.4f}){'' if same else '  MISMATCH'}")
    print("all match results.json" if ok else "MISMATCH against results.json")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
