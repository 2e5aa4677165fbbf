"""Synthetic PEFT LoRA adapter sets with the structure of trained ones, for the benchmarks.

Each adapter is a real PEFT folder: ``adapter_config.json`` with the keys PEFT 0.21 writes, and
``adapter_model.safetensors`` with PEFT's key names, written directly with safetensors (no model is
instantiated). Two shapes:

- ``roberta-base``: 12 layers, d = 768, ``query`` / ``value``, r = 8, lora_alpha = 16, float32, keys
  ``base_model.model.roberta.encoder.layer.{i}.attention.self.{query,value}.lora_{A,B}.weight``
  1,187,565 bytes an adapter. No classifier head is written, so that every tool is compared on LoRA factors
  only; task_type is therefore null (PEFT's SEQ_CLS adapters always carry the head, and PEFT refuses to load
  one without it), and ``PeftModel.from_pretrained`` loads the folder onto a RobertaForSequenceClassification
  (``--check-peft`` does that on a small random model with the same dimensions).
- ``llama-7b``: 32 layers, hidden 4096, ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``, r = 16,
  lora_alpha = 32, bfloat16, keys ``base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight``
  (task_type CAUSAL_LM). One adapter is 33,590,172 bytes (safetensors + config); 1000 of them 33.6 GB.

Structure, per module and side (what makes a shared basis worth having, as the SHARE paper observes):

- a shared subspace of dimension ``subspace`` (default 12): an orthonormal ``d x s`` matrix ``U`` drawn
  once per (module, side) from the set's seed;
- adapter i's factor is ``coefficients_i @ U^T`` (A side; ``U @ coefficients_i`` on the B side) with
  Gaussian coefficients whose scales decay over the s directions, plus per-adapter isotropic Gaussian
  noise carrying ``noise`` (default 0.15) of the factor's energy;
- A has the norm of PEFT's Kaiming-uniform initialisation (entries of size about ``1/sqrt(3 d_in)``), and
  B is ``b_ratio`` (default 30) times smaller than A in Frobenius norm, as in trained LoRAs where B starts
  at zero and stays small.

Everything is drawn from ``torch.Generator`` seeded by (seed, module, side) for the subspaces and
(seed, adapter) for the adapters, so a set is identical on every run and adapter i does not depend on
how many adapters are generated.

Usage::

    python benchmarks/synthetic.py --shape roberta-base -n 6 -o /tmp/lorashare-bench/roberta-6
    python benchmarks/synthetic.py --shape llama-7b -n 1000 -o /tmp/lorashare-bench/llama-1000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class Shape:
    name: str
    base_model: str
    task_type: str | None
    layers: int
    hidden: int
    modules: tuple[str, ...]
    key: str                  # format with layer=, module=
    rank: int
    alpha: int
    dtype: torch.dtype


SHAPES = {
    "roberta-base": Shape(
        "roberta-base", "FacebookAI/roberta-base", None, 12, 768, ("query", "value"),
        "base_model.model.roberta.encoder.layer.{layer}.attention.self.{module}", 8, 16, torch.float32),
    "llama-7b": Shape(
        "llama-7b", "meta-llama/Llama-2-7b-hf", "CAUSAL_LM", 32, 4096, ("q_proj", "k_proj", "v_proj", "o_proj"),
        "base_model.model.model.layers.{layer}.self_attn.{module}", 16, 32, torch.bfloat16),
}


def peft_config(shape: Shape) -> dict:
    """adapter_config.json exactly as PEFT 0.21.2's LoraConfig.save_pretrained writes it (keys sorted)."""
    return {
        "alora_invocation_tokens": None,
        "alpha_pattern": {},
        "arrow_config": None,
        "auto_mapping": None,
        "base_model_name_or_path": shape.base_model,
        "bias": "none",
        "corda_config": None,
        "ensure_weight_tying": False,
        "eva_config": None,
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "kasa_config": None,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": shape.alpha,
        "lora_bias": False,
        "lora_dropout": 0.05,
        "lora_ga_config": None,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "monteclora_config": None,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "qalora_group_size": 16,
        "r": shape.rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(shape.modules),
        "target_parameters": None,
        "task_type": shape.task_type,
        "trainable_token_indices": None,
        "use_bdlora": None,
        "use_dora": False,
        "use_qalora": False,
        "use_rslora": False,
        "velora_config": None,
    }


def module_names(shape: Shape) -> list[str]:
    return [shape.key.format(layer=i, module=m) for i in range(shape.layers) for m in shape.modules]


def _generator(*parts: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(zlib.crc32("/".join(map(str, parts)).encode()))
    return g


class Subspaces:
    """The shared orthonormal bases, one per (module, side), drawn once per set."""

    def __init__(self, shape: Shape, seed: int, subspace: int) -> None:
        self.shape, self.seed, self.s = shape, seed, subspace
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    def __call__(self, module: str, side: str) -> torch.Tensor:
        key = (module, side)
        if key not in self._cache:
            g = _generator(self.seed, "subspace", module, side)
            q, _ = torch.linalg.qr(torch.randn(self.shape.hidden, self.s, generator=g))
            self._cache[key] = q.contiguous()
        return self._cache[key]


def adapter_tensors(shape: Shape, spaces: Subspaces, index: int, *, noise: float, b_ratio: float) -> dict:
    """One adapter's state dict (PEFT keys, the shape's dtype)."""
    r, d, s = shape.rank, shape.hidden, spaces.s
    g = _generator(spaces.seed, "adapter", index)
    decay = torch.logspace(0, -1, s)  # coefficient scales over the shared directions: 1 .. 0.1
    a_norm = math.sqrt(r / 3.0)       # Frobenius norm of a Kaiming-uniform(a=sqrt(5)) A: entries ~ U(+-1/sqrt(d))
    b_norm = a_norm / b_ratio
    out = {}
    for module in module_names(shape):
        for side, norm in (("lora_A", a_norm), ("lora_B", b_norm)):
            u = spaces(module, side)                                     # (d, s)
            signal = (torch.randn(r, s, generator=g) * decay) @ u.T      # (r, d), in the shared span
            rand = torch.randn(r, d, generator=g)
            signal *= math.sqrt(1.0 - noise) / signal.norm()
            rand *= math.sqrt(noise) / rand.norm()
            x = (signal + rand) * norm
            out[f"{module}.{side}.weight"] = (x if side == "lora_A" else x.T).to(shape.dtype).contiguous()
    return out


def write_adapter(folder: Path, shape: Shape, tensors: dict) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(peft_config(shape), indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return sum(f.stat().st_size for f in folder.iterdir())


def generate(shape_name: str, n: int, out: str | os.PathLike, *, seed: int = 0, subspace: int = 12,
             noise: float = 0.15, b_ratio: float = 30.0, start: int = 0, layers: int | None = None,
             hidden: int | None = None, quiet: bool = False, workers: int = 1, _summary: bool = True) -> dict:
    """Write adapters ``adapter_{start:04d}`` .. into `out`; returns a summary (bytes, seconds).

    `layers` keeps only the first that many layers of the shape; their tensors are the same as in the full
    set (modules are drawn in layer order from each adapter's own generator). `hidden` replaces the hidden
    size (a proxy set: same modules, ranks and so the same number and size of loadings, smaller factors).
    `workers` > 1 writes contiguous ranges of adapters in that many processes: each adapter comes from its
    own generator, so the files are the same as with one.
    """
    if workers > 1 and n > 1:
        import concurrent.futures
        import multiprocessing

        t0 = time.perf_counter()
        step = -(-n // workers)
        ranges = [(i, min(step, start + n - i)) for i in range(start, start + n, step)]
        kw = {"seed": seed, "subspace": subspace, "noise": noise, "b_ratio": b_ratio, "layers": layers,
              "hidden": hidden, "quiet": True, "_summary": False}  # only the whole set's generated.json
        with concurrent.futures.ProcessPoolExecutor(len(ranges), mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_generate_part, [(shape_name, m, str(out), i, kw) for i, m in ranges]))
        summary = {**parts[0], "n": n, "start": start, "bytes": sum(p["bytes"] for p in parts),
                   "seconds": time.perf_counter() - t0, "workers": len(ranges)}
        (Path(out) / "generated.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    shape = SHAPES[shape_name]
    if layers is not None:
        shape = dataclasses.replace(shape, layers=layers)
    if hidden is not None:
        shape = dataclasses.replace(shape, hidden=hidden)
    # One thread: the work is thousands of small ops, for which torch's OpenMP threads cost more than they
    # bring on a busy 2-core machine (measured: 0.17 s per Llama-shaped adapter with 1 thread, 0.85 s with 2).
    # The caller's thread count comes back afterwards: compare.py times its compute floor in this process.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    total = 0
    try:
        spaces = Subspaces(shape, seed, subspace)
        for i in range(start, start + n):
            total += write_adapter(out / f"adapter_{i:04d}", shape,
                                   adapter_tensors(shape, spaces, i, noise=noise, b_ratio=b_ratio))
            if not quiet and (i - start + 1) % max(1, n // 20) == 0:
                el = time.perf_counter() - t0
                print(f"  {i - start + 1}/{n} adapters, {total / 1e9:.2f} GB, {el:.1f} s", file=sys.stderr)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    summary = {"shape": shape_name, "n": n, "start": start, "seed": seed, "subspace": subspace, "noise": noise,
               "b_ratio": b_ratio, "layers": shape.layers, "hidden": shape.hidden, "bytes": total, "seconds": seconds, "folder": str(out)}
    if _summary:
        (out / "generated.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _generate_part(job: tuple) -> dict:
    shape_name, n, out, start, kw = job
    return generate(shape_name, n, out, start=start, **kw)


def adapter_folders(folder: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if (p / "adapter_config.json").is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("-n", type=int, required=True, help="number of adapters")
    p.add_argument("-o", "--out", required=True, help="folder to write adapter_0000, adapter_0001, ... into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subspace", type=int, default=12, help="dimension of the shared subspace per module/side")
    p.add_argument("--noise", type=float, default=0.15, help="share of each factor's energy that is per-adapter noise")
    p.add_argument("--b-ratio", type=float, default=30.0, help="||A||_F / ||B||_F")
    p.add_argument("--start", type=int, default=0, help="index of the first adapter (to extend a set)")
    p.add_argument("--layers", type=int, default=None, help="keep only the first LAYERS layers (a subset)")
    p.add_argument("--hidden", type=int, default=None, help="replace the hidden size (a small proxy set)")
    p.add_argument("--workers", type=int, default=1, help="processes writing adapters side by side (same files)")
    p.add_argument("--check", action="store_true", help="open every folder with share_hf.open_adapter afterwards")
    p.add_argument("--check-peft", action="store_true",
                   help="roberta-base only: load the first adapter with PEFT onto a small random "
                        "RobertaForSequenceClassification of the same dimensions and compare every tensor")
    args = p.parse_args(argv)
    s = generate(args.shape, args.n, args.out, seed=args.seed, subspace=args.subspace, noise=args.noise,
                 b_ratio=args.b_ratio, start=args.start, layers=args.layers, hidden=args.hidden, workers=args.workers)
    print(json.dumps(s))
    if args.check:
        from share_hf import open_adapter
        for folder in adapter_folders(args.out):
            src = open_adapter(folder)
            assert len(src.modules) == len(SHAPES[args.shape].modules) * s["layers"], folder
        print(f"share_hf.open_adapter opened all {len(adapter_folders(args.out))} folders", file=sys.stderr)
    if args.check_peft:
        check_with_peft(adapter_folders(args.out)[0], SHAPES[args.shape])
    return 0


def check_with_peft(folder: Path, shape: Shape) -> None:
    """Load one roberta-base-shaped adapter with PEFT and check that every tensor arrives unchanged."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import RobertaConfig, RobertaForSequenceClassification

    if shape.name != "roberta-base":
        raise SystemExit("--check-peft is only for roberta-base shapes (a Llama-7B-sized model is not cheap)")
    config = RobertaConfig(vocab_size=64, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                           num_attention_heads=12, intermediate_size=64, max_position_embeddings=40, num_labels=2)
    model = PeftModel.from_pretrained(RobertaForSequenceClassification(config), str(folder))
    params = dict(model.named_parameters())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    bad = [k for k, v in tensors.items()
           if not torch.equal(params[k.replace(".weight", ".default.weight")].detach(), v)]
    if bad:
        raise SystemExit(f"PEFT loaded {folder} with {len(bad)} tensors changed, e.g. {bad[0]}")
    print(f"PEFT loaded {folder.name}: all {len(tensors)} tensors equal", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
