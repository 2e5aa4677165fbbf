"""Builders for the share_hf tests: tiny real models, real PEFT adapters, checkpoints, HF caches."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from share_hf import Checkpoint

BERT = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
LLAMA = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
BERT_PREFIX = "base_model.model.bert.encoder.layer"


def base_model(kind: str = "bert", **overrides):
    """The same random tiny model every call (seeded), built from a config: no download."""
    torch.manual_seed(1234)
    config = copy.deepcopy(BERT if kind == "bert" else LLAMA)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = BertForSequenceClassification(config) if kind == "bert" else LlamaForCausalLM(config)
    return model.eval()


def peft_model(kind: str = "bert", *, seed: int = 0, r: int = 4, alpha: float = 8,
               dtype: torch.dtype = torch.float32, model_overrides: dict | None = None, **lora_kwargs):
    """A real PEFT LoRA model with random non-zero A and B (and a random head for BERT)."""
    base = base_model(kind, **(model_overrides or {}))
    if dtype != torch.float32:
        base = base.to(dtype)
    defaults = ({"target_modules": ["query", "value"], "task_type": "SEQ_CLS"} if kind == "bert"
                else {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "task_type": "CAUSAL_LM"})
    defaults.update(lora_kwargs)
    config = LoraConfig(r=r, lora_alpha=alpha, init_lora_weights=False, **defaults)
    torch.manual_seed(seed)
    model = get_peft_model(base, config, autocast_adapter_dtype=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
            if "modules_to_save" in name:
                p.normal_(0, 0.5)
    return model


def save_adapter(folder: Path, kind: str = "bert", **kwargs) -> Path:
    """Save a real PEFT LoRA adapter (see :func:`peft_model`) with PEFT's own save_pretrained."""
    peft_model(kind, **kwargs).save_pretrained(folder)
    return folder


def input_ids(batch: int = 3, length: int = 10) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(7))


def logits_of(adapter_dir: Path, kind: str = "bert", **model_overrides) -> torch.Tensor:
    model = PeftModel.from_pretrained(base_model(kind, **model_overrides), str(adapter_dir)).eval()
    with torch.inference_mode():
        return model(input_ids=input_ids()).logits.float()


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def rewrite_tensors(folder: Path, edit) -> None:
    """Apply `edit(dict) -> dict` to folder/adapter_model.safetensors, in place."""
    path = folder / "adapter_model.safetensors"
    save_file(edit(read_tensors(path)), str(path), metadata={"format": "pt"})


def edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ------------------------------------------------------------------------------ checkpoints

MODULES = {  # module -> (d_in, d_out)
    "base_model.model.enc.layer.0.q": (32, 16),
    "base_model.model.enc.layer.0.v": (32, 32),
}
K = {"lora_A": 3, "lora_B": 2}


def make_checkpoint(names=("sst2", "cola", "mrpc"), *, ranks=None, dtypes=None, seed: int = 0) -> Checkpoint:
    """A consistent checkpoint with random tensors: lora_A of the first module is centered,
    the first adapter has a classifier head, the others none."""
    g = torch.Generator().manual_seed(seed)
    ranks = ranks or {n: 4 + 2 * i for i, n in enumerate(names)}
    dtypes = dtypes or {n: torch.float32 for n in names}
    groups, components = {}, {}
    for i, (module, (d_in, d_out)) in enumerate(MODULES.items()):
        groups[module] = {"d_in": d_in, "d_out": d_out}
        for side, d in (("lora_A", d_in), ("lora_B", d_out)):
            centered = i == 0 and side == "lora_A"
            groups[module][side] = {"k": K[side], "centered": centered, "rank": 2 * K[side],
                                    "stacked_columns": 4 * len(names), "explained_variance": 0.9}
            components[f"{module}.{side}.basis"] = torch.randn(d, K[side], generator=g)
            if centered:
                components[f"{module}.{side}.mean"] = torch.randn(d, generator=g)
    loadings, heads, metas = {}, {}, {}
    for j, name in enumerate(names):
        r = ranks[name]
        loadings[name] = {f"{m}.{side}": torch.randn(K[side], r, generator=g).to(dtypes[name])
                          for m in MODULES for side in ("lora_A", "lora_B")}
        heads[name] = ({"base_model.model.classifier.weight": torch.randn(3, 32, generator=g).to(dtypes[name]),
                        "base_model.model.classifier.bias": torch.randn(3, generator=g).to(dtypes[name])}
                       if j == 0 else {})
        metas[name] = {
            "peft_config": {"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": ["q", "v"]},
            "source": f"/adapters/{name}",
            "dtype": str(dtypes[name]).removeprefix("torch."),
            "ranks": {m: r for m in MODULES},
            "scales": {m: 8 / r for m in MODULES},
            "original_bytes": 10_000 + j,
            "dw_error": {m: 0.01 for m in MODULES},
        }
    config = {
        "format_version": 1, "library": "lorashare", "library_version": "0.2.0.dev0", "method": "share",
        "base_model_name_or_path": "tiny-bert", "adapters": list(names),
        "options": {"num_components": 3, "variance_threshold": None, "center": True}, "groups": groups, "stats": {"dw_error": {n: 0.01 for n in names}},
    }
    return Checkpoint(config=config, components=components, loadings=loadings, heads=heads, metas=metas)


def assert_same_tensors(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


# ------------------------------------------------------------------------------ HF cache


def populate_hub_cache(cache: Path, repo_id: str, folder: Path, *, revision: str = "main",
                       skip: tuple[str, ...] = ()) -> str:
    """Lay out `folder` as huggingface_hub caches a downloaded model repo: blobs named by their
    sha256, a snapshot folder of relative symlinks per commit, and refs/<revision> -> commit.
    Files whose relative path starts with one of `skip` are left out (a partial download)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        if rel.startswith(skip):
            continue
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit
