"""open_adapter on real PEFT folders: modules, ranks, PEFT's scales, carried keys, dtype, lazy reads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

from share_hf import LoraModule, adapter_name_from_source, open_adapter

from ._helpers import BERT_PREFIX, peft_model, read_tensors, save_adapter


def peft_scalings(model) -> dict[str, tuple[int, float]]:
    """Module name (as saved) -> (r, scaling) that PEFT itself uses in the forward pass."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.scaling:
            out[name] = (module.r["default"], module.scaling["default"])
    return out


def test_plain_bert_adapter_modules_ranks_shapes_and_head(tmp_path: Path) -> None:
    src = open_adapter(save_adapter(tmp_path / "sst2", r=4, alpha=8))
    expected = [f"{BERT_PREFIX}.{i}.attention.self.{p}" for i in (0, 1) for p in ("query", "value")]
    assert list(src.modules) == expected
    m = src.modules[expected[0]]
    assert m == LoraModule(name=expected[0], rank=4, alpha=8.0, scale=2.0, d_in=32, d_out=32,
                           a_key=expected[0] + ".lora_A.weight", b_key=expected[0] + ".lora_B.weight")
    assert src.carried_keys == ["base_model.model.classifier.bias", "base_model.model.classifier.weight"]
    assert src.name == "sst2" and src.source == str(tmp_path / "sst2") and src.path == tmp_path / "sst2"
    assert src.config["peft_type"] == "LORA" and src.config["r"] == 4
    assert src.dtype == torch.float32
    assert src.file_bytes == sum((tmp_path / "sst2" / f).stat().st_size
                                 for f in ("adapter_config.json", "adapter_model.safetensors"))


@pytest.mark.filterwarnings("ignore:The following alpha_pattern keys did not match")
@pytest.mark.parametrize(
    "lora_kwargs",
    [
        {},
        {"use_rslora": True},
        {"rank_pattern": {"layer.1.attention.self.query": 2}, "alpha_pattern": {"value": 3}},
        {"use_rslora": True, "rank_pattern": {"^bert.encoder.layer.0.attention.self.value": 6, "query": 3},
         "alpha_pattern": {"1.attention.self.value": 5, "query": 12}},
        # both keys match layer 0's query: the first one (in file order) wins; "ery" and "self"
        # match no module, since a key must end the name and start after a dot
        {"rank_pattern": {"layer.0.attention.self.query": 6, "query": 3}, "alpha_pattern": {"ery": 5, "self": 7}},
    ],
    ids=["plain", "rslora", "patterns", "rslora-anchored-patterns", "first-match-wins-and-dot-boundaries"],
)
def test_ranks_and_scales_match_what_peft_uses(tmp_path: Path, lora_kwargs: dict) -> None:
    model = peft_model(r=4, alpha=8, **lora_kwargs)
    model.save_pretrained(tmp_path / "a")
    src = open_adapter(tmp_path / "a")
    want = peft_scalings(model)
    assert sorted(src.modules) == sorted(want)
    for name, (r, scale) in want.items():
        assert src.modules[name].rank == r
        assert src.modules[name].scale == pytest.approx(scale, rel=1e-12)
    if lora_kwargs.get("use_rslora"):
        some = next(iter(src.modules.values()))
        assert some.scale == pytest.approx(some.alpha / math.sqrt(some.rank))


def test_alpha_pattern_sets_the_module_alpha(tmp_path: Path) -> None:
    src = open_adapter(save_adapter(tmp_path / "a", r=4, alpha=8, alpha_pattern={"value": 3}))
    alphas = {name.rsplit(".", 1)[1]: m.alpha for name, m in src.modules.items()}
    assert alphas == {"query": 8.0, "value": 3.0}


def test_llama_modules_have_their_own_in_and_out_sizes(tmp_path: Path) -> None:
    src = open_adapter(save_adapter(tmp_path / "llama", kind="llama", r=2, alpha=4))
    shapes = {name.rsplit(".", 1)[1]: (m.d_in, m.d_out) for name, m in src.modules.items()}
    # 32 hidden, 4 heads of 8, 2 key/value heads -> k_proj and v_proj map 32 -> 16
    assert shapes == {"q_proj": (32, 32), "k_proj": (32, 16), "v_proj": (32, 16), "o_proj": (32, 32)}
    assert len(src.modules) == 8 and src.carried_keys == []


def test_load_factors_and_carried_give_the_saved_tensors(tmp_path: Path) -> None:
    folder = save_adapter(tmp_path / "a", r=4)
    saved = read_tensors(folder / "adapter_model.safetensors")
    src = open_adapter(folder)
    for m in src.modules.values():
        a, b = src.load_factors(m.name)
        assert a.shape == (m.rank, m.d_in) and b.shape == (m.d_out, m.rank)
        assert torch.equal(a, saved[m.a_key]) and torch.equal(b, saved[m.b_key])
        assert b.abs().sum() > 0  # a real, non-zero B
    carried = src.load_carried()
    assert sorted(carried) == src.carried_keys
    for key, value in carried.items():
        assert torch.equal(value, saved[key])
    with pytest.raises(KeyError, match="no LoRA module"):
        src.load_factors("base_model.model.nope")
    every = src.load_all_factors()  # one opening of the file, the same tensors
    assert list(every) == list(src.modules)
    for name, (a, b) in every.items():
        assert torch.equal(a, saved[src.modules[name].a_key]) and torch.equal(b, saved[src.modules[name].b_key])
    some = list(src.modules)[::-1][:2]
    assert list(src.load_all_factors(some)) == some
    with pytest.raises(KeyError, match="no LoRA module 'base_model.model.nope'"):
        src.load_all_factors([some[0], "base_model.model.nope"])


def test_bf16_adapter_keeps_bf16(tmp_path: Path) -> None:
    src = open_adapter(save_adapter(tmp_path / "a", dtype=torch.bfloat16))
    assert src.dtype == torch.bfloat16
    a, b = src.load_factors(next(iter(src.modules)))
    assert a.dtype == b.dtype == torch.bfloat16
    assert all(t.dtype == torch.bfloat16 for t in src.load_carried().values())


def test_open_reads_no_tensor_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = save_adapter(tmp_path / "a")
    import safetensors

    calls = []

    class Spy:
        def __init__(self, *args, **kwargs):
            self._inner = safetensors.safe_open(*args, **kwargs)

        def __enter__(self):
            self._handle = self._inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self._inner.__exit__(*exc)

        def keys(self):
            return self._handle.keys()

        def get_slice(self, key):
            return self._handle.get_slice(key)

        def get_tensor(self, key):
            calls.append(key)
            return self._handle.get_tensor(key)

    import share_hf._io as io

    monkeypatch.setattr(io, "safe_open", Spy)
    src = open_adapter(folder)
    assert calls == []
    src.load_factors(next(iter(src.modules)))  # one module: its byte ranges alone (tests/hf/test_ranges.py)
    assert calls == []
    src.load_all_factors()  # every module: through the memory map, each factor once
    assert sorted(calls) == sorted(k for m in src.modules.values() for k in (m.a_key, m.b_key))


def test_carried_keys_keep_embedding_lora_and_conv_layouts(tmp_path: Path) -> None:
    folder = save_adapter(tmp_path / "a", target_modules=["query", "word_embeddings"])
    extra = {"base_model.model.conv.lora_A.weight": torch.randn(4, 3, 1, 1),
             "base_model.model.conv.lora_B.weight": torch.randn(5, 4, 1, 1),
             "base_model.model.something.unknown": torch.randn(2)}
    tensors = read_tensors(folder / "adapter_model.safetensors") | extra
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    src = open_adapter(folder)
    assert all(name.endswith("query") for name in src.modules) and len(src.modules) == 2
    carried = set(src.carried_keys)
    assert set(extra) <= carried
    assert any("lora_embedding_A" in k for k in carried) and any("lora_embedding_B" in k for k in carried)
    factor_keys = {k for m in src.modules.values() for k in (m.a_key, m.b_key)}
    assert carried | factor_keys == set(tensors) and not carried & factor_keys  # nothing dropped
    assert sorted(src.load_carried()) == sorted(carried)


@pytest.mark.filterwarnings("ignore:.*invalid shape")  # PEFT 0.21 warns about its own 1-D lora_B.bias
def test_lora_bias_is_carried(tmp_path: Path) -> None:
    src = open_adapter(save_adapter(tmp_path / "a", lora_bias=True))
    biases = [k for k in src.carried_keys if k.endswith(".lora_B.bias")]
    assert len(biases) == len(src.modules) == 4


@pytest.mark.parametrize(
    ("source", "name"),
    [("runs/sst2", "sst2"), ("runs/sst2/", "sst2"), ("org/lora-mnli", "lora-mnli"), (Path("a/b/cola"), "cola")],
)
def test_adapter_name_from_source(source, name) -> None:
    assert adapter_name_from_source(source) == name


def test_name_of_dot_is_the_folder_name_and_name_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = save_adapter(tmp_path / "qnli")
    monkeypatch.chdir(folder)
    assert open_adapter(".").name == "qnli"
    assert open_adapter(folder, name="task-7").name == "task-7"
