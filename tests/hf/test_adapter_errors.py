"""Every bad adapter input gives one clear lorashare error naming the adapter, the file and the fix."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from share_hf import (
    AdapterNotFoundError,
    InvalidAdapterError,
    ShareError,
    UnsupportedAdapterError,
    open_adapter,
)

from ._helpers import BERT_PREFIX, edit_config, rewrite_tensors, save_adapter

Q0 = f"{BERT_PREFIX}.0.attention.self.query"
V1 = f"{BERT_PREFIX}.1.attention.self.value"


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    return save_adapter(tmp_path / "sst2", r=4, alpha=8)


def test_missing_local_folder_that_is_no_hub_id(tmp_path: Path) -> None:
    with pytest.raises(AdapterNotFoundError, match="expected a PEFT adapter folder or a Hub id like org/name") as exc:
        open_adapter(tmp_path / "nope" / "deeper")
    assert "nope" in str(exc.value) and "Fix:" in str(exc.value)
    assert isinstance(exc.value, FileNotFoundError) and isinstance(exc.value, ShareError)


def test_a_file_instead_of_a_folder(adapter: Path) -> None:
    with pytest.raises(InvalidAdapterError, match="found a file"):
        open_adapter(adapter / "adapter_model.safetensors", name="x")


def test_folder_without_adapter_config(adapter: Path) -> None:
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(InvalidAdapterError, match=r"adapter 'sst2'.*no adapter_config\.json.*Fix"):
        open_adapter(adapter)


def test_adapter_config_that_is_not_json(adapter: Path) -> None:
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", ')
    with pytest.raises(InvalidAdapterError, match=r"adapter_config\.json is not valid JSON") as exc:
        open_adapter(adapter)
    assert "'sst2'" in str(exc.value)
    assert isinstance(exc.value.__cause__, json.JSONDecodeError)


def test_config_without_peft_type(adapter: Path) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    del config["peft_type"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidAdapterError, match="no 'peft_type'"):
        open_adapter(adapter)


def test_not_lora_is_unsupported(adapter: Path) -> None:
    edit_config(adapter, peft_type="IA3")
    with pytest.raises(UnsupportedAdapterError, match="LoRA adapters only, found peft_type='IA3'"):
        open_adapter(adapter)


def test_real_dora_adapter_is_refused(tmp_path: Path) -> None:
    folder = save_adapter(tmp_path / "dora", use_dora=True)
    with pytest.raises(UnsupportedAdapterError, match="use_dora=true; lorashare does not compress DoRA") as exc:
        open_adapter(folder)
    assert "'dora'" in str(exc.value)


def test_pickle_only_adapter_is_refused_without_unpickling(adapter: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(b"not even a pickle")

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(InvalidAdapterError, match="adapter_model.bin but no adapter_model.safetensors") as exc:
        open_adapter(adapter)
    assert "does not load pickle files" in str(exc.value) and "save_pretrained" in str(exc.value)
    assert "allow_pickle=True (--allow-pickle)" in str(exc.value)


def test_no_weights_at_all(adapter: Path) -> None:
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidAdapterError, match="has no adapter_model.safetensors"):
        open_adapter(adapter)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors_is_named(adapter: Path, damage: str) -> None:
    path = adapter / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[:-64], "garbage": b"\x00" * 9 + b"junk", "empty": b""}[damage])
    with pytest.raises(InvalidAdapterError, match="not a readable safetensors file") as exc:
        open_adapter(adapter)
    assert str(path) in str(exc.value) and "'sst2'" in str(exc.value)
    assert exc.value.__cause__ is not None


def test_lora_a_without_b_and_b_without_a_are_all_listed(adapter: Path) -> None:
    rewrite_tensors(adapter, lambda t: {k: v for k, v in t.items()
                                        if k not in (f"{Q0}.lora_B.weight", f"{V1}.lora_A.weight")})
    with pytest.raises(InvalidAdapterError) as exc:
        open_adapter(adapter)
    msg = str(exc.value)
    assert f"'{Q0}.lora_A.weight' has no matching '{Q0}.lora_B.weight'" in msg
    assert f"'{V1}.lora_B.weight' has no matching '{V1}.lora_A.weight'" in msg


def test_rank_in_tensors_differs_from_config_r(adapter: Path) -> None:
    edit_config(adapter, r=8)
    with pytest.raises(InvalidAdapterError, match=r"tensors have rank 4 but the config gives r=8"):
        open_adapter(adapter)


def test_rank_in_tensors_differs_from_rank_pattern(adapter: Path) -> None:
    edit_config(adapter, rank_pattern={"layer.1.attention.self.value": 2})
    with pytest.raises(InvalidAdapterError) as exc:
        open_adapter(adapter)
    assert f"{V1}: the tensors have rank 4 but the config gives r=2" in str(exc.value)
    assert Q0 not in str(exc.value)  # only the module the pattern hits


def test_a_and_b_rank_mismatch(adapter: Path) -> None:
    rewrite_tensors(adapter, lambda t: t | {f"{Q0}.lora_B.weight": torch.randn(32, 3)})
    with pytest.raises(InvalidAdapterError, match=r"lora_A \[4, 32\] has rank 4 but lora_B \[32, 3\] has rank 3"):
        open_adapter(adapter)


def test_mixed_factor_dtypes(adapter: Path) -> None:
    rewrite_tensors(adapter, lambda t: t | {f"{Q0}.lora_A.weight": t[f"{Q0}.lora_A.weight"].half()})
    with pytest.raises(InvalidAdapterError, match="do not share one dtype") as exc:
        open_adapter(adapter)
    assert "F16: 1 tensors" in str(exc.value) and "F32: 7 tensors" in str(exc.value)


def test_integer_factors(adapter: Path) -> None:
    rewrite_tensors(adapter, lambda t: {k: (v.to(torch.int8) if "lora_" in k else v) for k, v in t.items()})
    with pytest.raises(InvalidAdapterError, match="stored as I8"):
        open_adapter(adapter)


def test_only_embedding_lora_is_unsupported(tmp_path: Path) -> None:
    folder = save_adapter(tmp_path / "emb", target_modules=["word_embeddings"])
    with pytest.raises(UnsupportedAdapterError, match="no 2-D lora_A/lora_B weight pairs"):
        open_adapter(folder)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_factor_is_caught_when_loaded(adapter: Path, bad: float) -> None:
    def poison(t):
        b = t[f"{V1}.lora_B.weight"].clone()
        b[3, 1] = bad
        return t | {f"{V1}.lora_B.weight": b}

    rewrite_tensors(adapter, poison)
    src = open_adapter(adapter)  # header only: fine
    src.load_factors(Q0)  # other modules still load
    with pytest.raises(InvalidAdapterError, match="holds 1 NaN/Inf") as exc:
        src.load_factors(V1)
    assert f"'{V1}.lora_B.weight'" in str(exc.value) and "'sst2'" in str(exc.value)


@pytest.mark.parametrize("name", ["a/b", "..", ".", "a\\b", "/abs", "", " pad", "C:evil", "x\x00y", "n" * 256])
def test_unsafe_adapter_names_are_refused(adapter: Path, name: str) -> None:
    with pytest.raises(InvalidAdapterError, match="names become folder names"):
        open_adapter(adapter, name=name)


def test_non_numeric_pattern_and_bad_regex(adapter: Path) -> None:
    edit_config(adapter, alpha_pattern={"query": "big"})
    with pytest.raises(InvalidAdapterError, match=r"'alpha_pattern'\['query'\].*must be a finite non-zero number"):
        open_adapter(adapter)
    edit_config(adapter, alpha_pattern={"(query": 3})
    with pytest.raises(InvalidAdapterError, match="not a valid regular expression"):
        open_adapter(adapter)
