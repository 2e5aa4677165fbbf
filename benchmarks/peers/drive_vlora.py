"""Driver for vlora-dev==1.0.0 (PyPI, package ``vlora``), run with benchmarks/peers/.venv: see _protocol.py.

vlora's API, as its ``vlora compress`` / ``vlora export`` commands use it: ``load_adapter(dir)`` ->
``LoRAWeights``; ``SharedSubspace.from_adapters(adapters, task_ids=, num_components=)`` flattens each
adapter's ``lora_A`` (and ``lora_B``) of one module into ONE vector of r*d numbers, centers the N vectors and
keeps the top ``min(k, N)`` right singular vectors (one k for all layers); ``.save(dir)`` writes
``subspace.safetensors`` (components, singular values and means per module) plus one
``task_<name>.safetensors`` of k loadings per module and side; ``SharedSubspace.load(dir).reconstruct(name)``
and ``save_adapter(weights, dir)`` export a PEFT folder. ``vlora export`` writes ``lora_alpha = r`` unless
``--alpha`` is given, so the driver passes the original ``lora_alpha``, base model and target modules, as
``vlora export --alpha --base-model --target-modules`` does. Tensors keep the adapters' dtype; its SVD has
no bfloat16 kernel on CPU, so ``--cast-float32`` casts the loaded factors to float32 first (not part of vlora).
"""

import json
import os
from pathlib import Path

from _protocol import Clock, parse

import torch
from vlora import SharedSubspace, load_adapter, save_adapter

args = parse()
clock = Clock()
if args.command == "compress":
    adapters = [load_adapter(p) for p in args.adapters]
    if args.cast_float32:
        for w in adapters:
            w.lora_a = {k: v.float() for k, v in w.lora_a.items()}
            w.lora_b = {k: v.float() for k, v in w.lora_b.items()}
    sub = SharedSubspace.from_adapters(adapters, task_ids=[Path(p).name for p in args.adapters],
                                       num_components=args.k)
    clock.mark("build")
    sub.save(args.out)
    clock.mark("save")
    clock.emit(k_meaning="basis vectors of flattened r*d factors per (module, side), min(k, N), one k for all",
               num_components=sub.num_components)
else:
    sub = SharedSubspace.load(args.checkpoint)
    clock.mark("load")
    like = json.loads((Path(args.like) / "adapter_config.json").read_text()) if args.like else {}
    for name in args.names:
        w = sub.reconstruct(name)
        for key in ("lora_alpha", "base_model_name_or_path", "target_modules"):
            if key in like:
                w.metadata[key] = like[key]
        save_adapter(w, os.path.join(args.out_dir, name))
    clock.mark("reconstruct")
    clock.emit()
