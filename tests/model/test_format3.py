"""Checkpoint format 3's byte savings: tensors keyed by group index, per-module figures as lists, and one PEFT
config for the adapters that share it; all invisible in memory and to PEFT."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from share_hf import CheckpointError
from share_torch import SHAREModel

from .conftest import save_adapter


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("format3")
    same = [save_adapter(root / f"s{i}", seed=90 + i, r=4, alpha=8) for i in range(3)]
    return same + [save_adapter(root / "odd", seed=99, r=4, alpha=16)]  # another lora_alpha: its own config


def test_files_are_compact_and_memory_and_peft_see_no_difference(pool, tmp_path):
    share = SHAREModel.from_adapters(pool, num_components=3)
    sizes = share.save_pretrained(tmp_path / "ckpt")
    ckpt = tmp_path / "ckpt"
    config = json.loads((ckpt / "share_config.json").read_text())
    modules = list(config["groups"])
    with safe_open(str(ckpt / "shared_components.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(f"{i}.{side}.basis" for i in range(len(modules)) for side in ("lora_A", "lora_B"))
    metas = {a.name: json.loads((ckpt / "adapters" / a.name / "adapter_meta.json").read_text()) for a in pool}
    shared = json.loads((pool[0] / "adapter_config.json").read_text())
    assert config["peft_config"] == shared
    assert [m["peft_config"] for m in metas.values()][:3] == [None, None, None]
    assert metas["odd"]["peft_config"]["lora_alpha"] == 16
    assert isinstance(metas["s1"]["ranks"], list) and len(metas["s1"]["dw_error"]) == len(modules)
    back = SHAREModel.from_pretrained(ckpt)
    assert "peft_config" not in back.config  # a file-level saving only
    for a in pool:
        assert back._ckpt.metas[a.name] == share._ckpt.metas[a.name]
        back.reconstruct(a.name, output_dir=tmp_path / "out" / a.name)
        assert json.loads((tmp_path / "out" / a.name / "adapter_config.json").read_text()) == json.loads(
            (a / "adapter_config.json").read_text())
    assert sum(sizes.values()) == share.stats()["bytes"]["checkpoint"]
    # the same after removing the adapters that shared it: nothing is shared, every meta holds its own
    back.remove_adapter("s0")
    back.remove_adapter("s1")
    back.save_pretrained(tmp_path / "two")
    assert "peft_config" not in json.loads((tmp_path / "two" / "share_config.json").read_text())
    assert json.loads((tmp_path / "two" / "adapters" / "s2" / "adapter_meta.json").read_text())["peft_config"] == shared


def test_a_null_peft_config_needs_the_shared_one(pool, tmp_path):
    SHAREModel.from_adapters(pool, num_components=3).save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "share_config.json"
    config = json.loads(path.read_text())
    del config["peft_config"]
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"s0/adapter_meta\.json: peft_config is null \(the one in share_config"):
        SHAREModel.from_pretrained(tmp_path / "ckpt")
