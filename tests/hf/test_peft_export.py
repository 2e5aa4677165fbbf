"""write_peft_adapter: folders that PeftModel.from_pretrained loads with no lorashare code."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

import share_hf.checkpoint as checkpoint_module
from share_hf import CheckpointExistsError, InvalidAdapterError, open_adapter, write_peft_adapter

from ._helpers import assert_same_tensors, base_model, logits_of, read_tensors, save_adapter


def copy_through_share_hf(src_dir: Path, out: Path, **kwargs) -> dict[str, torch.Tensor]:
    """Read an adapter with open_adapter and write it back with write_peft_adapter."""
    src = open_adapter(src_dir)
    tensors = dict(src.load_carried())
    for m in src.modules.values():
        tensors[m.a_key], tensors[m.b_key] = src.load_factors(m.name)
    write_peft_adapter(out, config=src.config, tensors=tensors, **kwargs)
    return tensors


def load_cleanly(folder: Path, kind: str = "bert", **model_overrides) -> PeftModel:
    """PeftModel.from_pretrained, failing on any warning about missing or unexpected keys."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base_model(kind, **model_overrides), str(folder))
    key_warnings = [w for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert key_warnings == []
    return model


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("bert", {"r": 4, "alpha": 8}),
        ("bert", {"r": 4, "alpha": 8, "use_rslora": True, "rank_pattern": {"layer.1.attention.self.query": 2},
                  "alpha_pattern": {"value": 3}}),
        ("llama", {"r": 2, "alpha": 4}),
    ],
    ids=["bert", "bert-patterns", "llama"],
)
def test_written_adapter_loads_in_peft_with_the_same_weights_and_logits(tmp_path: Path, kind: str, kwargs) -> None:
    src_dir = save_adapter(tmp_path / "src", kind=kind, **kwargs)
    tensors = copy_through_share_hf(src_dir, tmp_path / "out")
    model = load_cleanly(tmp_path / "out", kind)
    state = get_peft_model_state_dict(model)
    assert sorted(state) == sorted(tensors)  # zero missing, zero unexpected
    for key, value in tensors.items():
        assert torch.equal(state[key], value), key
    torch.testing.assert_close(logits_of(tmp_path / "out", kind), logits_of(src_dir, kind), rtol=0, atol=0)


def test_files_are_as_peft_writes_them(tmp_path: Path) -> None:
    src_dir = save_adapter(tmp_path / "src", modules_to_save=["classifier"])
    copy_through_share_hf(src_dir, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["adapter_config.json", "adapter_model.safetensors"]
    with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    written = (tmp_path / "out" / "adapter_config.json").read_text()
    original = (src_dir / "adapter_config.json").read_text()
    assert json.loads(written) == json.loads(original)
    assert written == original  # sorted keys, indent 2, no trailing newline: byte for byte
    assert_same_tensors(read_tensors(tmp_path / "out" / "adapter_model.safetensors"),
                        read_tensors(src_dir / "adapter_model.safetensors"))


def test_bf16_adapter_stays_bf16_and_loads(tmp_path: Path) -> None:
    src_dir = save_adapter(tmp_path / "src", dtype=torch.bfloat16)
    copy_through_share_hf(src_dir, tmp_path / "out")
    assert {t.dtype for t in read_tensors(tmp_path / "out" / "adapter_model.safetensors").values()} == {torch.bfloat16}
    load_cleanly(tmp_path / "out")


def test_sets_in_the_config_become_sorted_lists(tmp_path: Path) -> None:
    src = open_adapter(save_adapter(tmp_path / "src"))
    config = dict(src.config, target_modules={"value", "query"})
    tensors = {k: v for m in src.modules.values() for k, v in zip((m.a_key, m.b_key), src.load_factors(m.name))}
    write_peft_adapter(tmp_path / "out", config=config, tensors=tensors | src.load_carried())
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["target_modules"] == ["query", "value"]
    load_cleanly(tmp_path / "out")


def test_bad_inputs(tmp_path: Path) -> None:
    t = {"base_model.model.x.lora_A.weight": torch.zeros(2, 2)}
    with pytest.raises(InvalidAdapterError, match="'peft_type'"):
        write_peft_adapter(tmp_path / "a", config={"r": 2}, tensors=t)
    with pytest.raises(InvalidAdapterError, match="non-empty dict"):
        write_peft_adapter(tmp_path / "a", config={"peft_type": "LORA"}, tensors={})
    with pytest.raises(InvalidAdapterError, match="non-empty dict"):
        write_peft_adapter(tmp_path / "a", config={"peft_type": "LORA"}, tensors={"k": [1, 2]})
    with pytest.raises(InvalidAdapterError, match="not JSON-serializable"):
        write_peft_adapter(tmp_path / "a", config={"peft_type": "LORA", "x": object()}, tensors=t)
    assert sorted(os.listdir(tmp_path)) == ["hf-cache"]


def test_overwrite_rules_and_atomicity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src_dir = save_adapter(tmp_path / "src")
    copy_through_share_hf(src_dir, tmp_path / "out")
    before = (tmp_path / "out" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(CheckpointExistsError, match="already exists.*overwrite=True"):
        copy_through_share_hf(src_dir, tmp_path / "out")

    def broken(path, tensors):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(checkpoint_module, "save_safetensors", broken)
    with pytest.raises(OSError, match="injected"):
        copy_through_share_hf(src_dir, tmp_path / "out", overwrite=True)
    monkeypatch.undo()
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["hf-cache", "out", "src"]

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep")
    with pytest.raises(CheckpointExistsError, match="does not look like a PEFT adapter"):
        copy_through_share_hf(src_dir, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep"

    other = save_adapter(tmp_path / "other", seed=9)
    copy_through_share_hf(other, tmp_path / "out", overwrite=True)
    assert_same_tensors(read_tensors(tmp_path / "out" / "adapter_model.safetensors"),
                        read_tensors(other / "adapter_model.safetensors"))
