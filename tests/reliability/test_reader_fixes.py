"""One test per crash or silent mis-load fixed in share_hf's readers (most found by test_fuzz.py or
by reading what SHAREModel consumes). Each input used to end in a non-lorashare exception (or,
worse, in a load that broke later); now it is a clean ShareError naming the file and the value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from share_core.errors import CheckpointError, InvalidAdapterError
from share_hf import load_checkpoint, open_adapter, save_checkpoint

from ..hf._helpers import make_checkpoint
from ._lab import HEAD, Q0, Lab, edit_json, edit_meta, edit_tensors



@pytest.fixture
def adapter(lab: Lab, tmp_path: Path) -> Path:
    return lab.copy("sst2", tmp_path / "sst2")


@pytest.fixture
def ckpt(lab: Lab, tmp_path: Path) -> Path:
    return lab.copy("checkpoint", tmp_path / "ckpt")


# ------------------------------------------------------------------------------ JSON itself


@pytest.mark.parametrize("text, why", [
    ('{"r": ' + "9" * 5000 + "}", "ValueError"),  # int() digit limit: ValueError, not JSONDecodeError
    ("[" * 100_000, "RecursionError"),
])
def test_json_that_python_cannot_parse(adapter: Path, ckpt: Path, text: str, why: str) -> None:
    (adapter / "adapter_config.json").write_text(text)
    with pytest.raises(InvalidAdapterError, match=f"cannot be read as JSON \\({why}"):
        open_adapter(adapter)
    (ckpt / "share_config.json").write_text(text)
    with pytest.raises(CheckpointError, match=f"cannot be read as JSON \\({why}"):
        load_checkpoint(ckpt)


def test_adapter_name_with_a_lone_surrogate(ckpt: Path) -> None:
    """json.loads gives '\\ud800' for "\\ud800"; it cannot become a folder name (UnicodeEncodeError)."""
    edit_json(ckpt / "share_config.json", lambda c: c.update(adapters=["sst2", "\ud800", "mrpc"]))
    with pytest.raises(CheckpointError, match="lone surrogate"):
        load_checkpoint(ckpt)


# ------------------------------------------------------------------------------ adapter_config.json


def test_base_model_that_is_not_a_string(adapter: Path) -> None:
    """A list here made check_compatible fail with TypeError: unhashable type: 'list'."""
    edit_json(adapter / "adapter_config.json", lambda c: c.update(base_model_name_or_path=["a", "b"]))
    with pytest.raises(InvalidAdapterError, match=r"'base_model_name_or_path' .* must be a string, found list"):
        open_adapter(adapter)


@pytest.mark.parametrize("alpha", [0, float("nan"), float("inf"), 10**400, True])
def test_lora_alpha_that_gives_no_usable_scale(adapter: Path, alpha) -> None:
    """alpha 0 gave scale 0 (reconstruction divides by it); NaN/Inf poisoned every factor; an int
    beyond float range raised OverflowError."""
    edit_json(adapter / "adapter_config.json", lambda c: c.update(lora_alpha=alpha))
    with pytest.raises(InvalidAdapterError, match="'lora_alpha' .* must be a finite non-zero number"):
        open_adapter(adapter)


@pytest.mark.parametrize("key, value, wanted", [
    ("alpha_pattern", 0, "a finite non-zero number"),
    ("rank_pattern", 2.5, "a positive integer"),
    ("rank_pattern", 0, "a positive integer"),
])
def test_pattern_values(adapter: Path, key: str, value, wanted: str) -> None:
    edit_json(adapter / "adapter_config.json", lambda c: c.update({key: {"query": value}}))
    with pytest.raises(InvalidAdapterError, match=f"'{key}'\\['query'\\] .* must be {wanted}"):
        open_adapter(adapter)


def test_zero_sized_factors(adapter: Path) -> None:
    edit_tensors(adapter / "adapter_model.safetensors",
                 lambda t: t | {f"{Q0}.lora_A.weight": torch.zeros(4, 0), f"{Q0}.lora_B.weight": torch.zeros(0, 4)})
    with pytest.raises(InvalidAdapterError, match="has a zero-sized dimension"):
        open_adapter(adapter)


def test_nan_in_a_carried_head(adapter: Path) -> None:
    """Heads are carried verbatim into the checkpoint and back: NaN there used to pass unseen."""
    edit_tensors(adapter / "adapter_model.safetensors", lambda t: t | {HEAD: torch.full_like(t[HEAD], float("nan"))})
    src = open_adapter(adapter)
    with pytest.raises(InvalidAdapterError, match=f"'{HEAD}' .* holds {3 * 32} NaN/Inf"):
        src.load_carried()


def test_finite_factors_whose_sum_overflows_are_read(adapter: Path) -> None:
    """The finiteness check sums a tensor first; finite float16 entries whose sum overflows (60000 * 64 > 65504)
    must still be read, through the entry-by-entry fallback, and one bad entry among them still refused."""
    key = f"{Q0}.lora_B.weight"
    big = torch.full_like(open_adapter(adapter).load_all_factors()[Q0][1], 60000.0, dtype=torch.float16)
    assert not torch.isfinite(big.sum())
    half = lambda t: {k: v.to(torch.float16) if ".lora_" in k else v for k, v in t.items()}  # noqa: E731
    edit_tensors(adapter / "adapter_model.safetensors", lambda t: half(t) | {key: big})
    _, b = open_adapter(adapter).load_all_factors()[Q0]
    assert torch.equal(b, big)
    bad = big.clone()
    bad[0, 0] = float("inf")
    edit_tensors(adapter / "adapter_model.safetensors", lambda t: t | {key: bad})
    with pytest.raises(InvalidAdapterError, match=f"'{key}' .* holds 1 NaN/Inf"):
        open_adapter(adapter).load_all_factors()


# ------------------------------------------------------------------------------ share_config.json


def test_dtype_that_is_a_list(ckpt: Path) -> None:
    """Found by fuzzing: options.dtype = [...] raised TypeError (unhashable) in the dtype lookup."""
    edit_json(ckpt / "share_config.json", lambda c: c["options"].update(dtype=["float32"]))
    with pytest.raises(CheckpointError, match=r"options\.dtype must be one of .* found \['float32'\]"):
        load_checkpoint(ckpt)
    edit_json(ckpt / "share_config.json", lambda c: c["options"].update(dtype="float32"))
    edit_json(ckpt / "adapters" / "cola" / "adapter_meta.json", lambda m: m.update(dtype={"x": 1}))
    with pytest.raises(CheckpointError, match=r"cola/adapter_meta\.json: 'dtype' must be one of"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["stats"]["dw_error"].pop("cola"), r"stats\.dw_error has no entry for adapter 'cola'"),
    (lambda c: c["options"].pop("num_components"), r"options\.num_components must be .* found nothing"),
    (lambda c: c["options"].update(num_components="auto", variance_threshold=None),
     r"variance_threshold must be a number in \(0, 1\] when num_components is 'auto'"),
    (lambda c: c["options"].update(factor_form="raw"), r"factor_form must be 'scaled'"),
    (lambda c: c["groups"][Q0]["lora_A"].update(k=33), r"lora_A\.k is 33, more than d_in=32"),
    (lambda c: c["groups"][Q0]["lora_B"].pop("rank"), r"lora_B\.rank must be an integer >= 0, found None"),
    (lambda c: c.update(adapters=[]), r"'adapters' is empty"),
    (lambda c: c.update(groups={}), r"'groups' is empty"),
], ids=["stats-entry", "num_components", "auto-threshold", "factor_form", "k>d", "rank", "no-adapters", "no-groups"])
def test_config_values_the_model_reads(ckpt: Path, edit, message: str) -> None:
    """Each of these loaded before and then broke SHAREModel (KeyError in summary or add_adapter,
    wrong reconstruction for another factor form, a basis wider than its space)."""
    edit_json(ckpt / "share_config.json", edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)


def test_explained_variance_may_be_null(ckpt: Path) -> None:
    """remove_adapter writes null (the removed data's share is unknown): that must load."""
    edit_json(ckpt / "share_config.json", lambda c: c["groups"][Q0]["lora_A"].update(explained_variance=None))
    assert load_checkpoint(ckpt).config["groups"][Q0]["lora_A"]["explained_variance"] is None


# ------------------------------------------------------------------------------ adapter_meta.json and heads


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["scales"].pop(Q0), f"no scale for module '{Q0}'"),
    (lambda m: m["scales"].update({Q0: 0}), f"scale of '{Q0}' must be a finite non-zero number, found 0"),
    (lambda m: m["dw_error"].pop(Q0), f"no dw_error for module '{Q0}'"),
    (lambda m: m["dw_norm"].update({Q0: -1.0}), f"dw_norm of '{Q0}' must be a number >= 0, found -1.0"),
    (lambda m: m["peft_config"].update(peft_type="IA3"), "peft_config.peft_type must be 'LORA', found 'IA3'"),
    (lambda m: m.update(original_bytes="1 KB"), "'original_bytes' must be an integer >= 0"),
], ids=["scale-missing", "scale-zero", "dw_error", "dw_norm", "peft_type", "original_bytes"])
def test_meta_values_the_model_reads(ckpt: Path, edit, message: str) -> None:
    edit_meta(ckpt, "cola", edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)


def test_per_module_list_of_the_wrong_length(ckpt: Path) -> None:
    """Format 3 writes per-module figures as lists in group order: one too few is named, not mis-paired."""
    edit_json(ckpt / "adapters" / "cola" / "adapter_meta.json", lambda m: m["ranks"].pop())
    with pytest.raises(CheckpointError, match=r"cola/adapter_meta\.json: 'ranks' has 3 entries, expected 4 \(one per group"):
        load_checkpoint(ckpt)


def test_head_that_would_overwrite_a_lora_factor(ckpt: Path) -> None:
    """reconstruct_state_dict adds heads after the factors: a head under a factor's key replaced it."""
    edit_tensors(ckpt / "adapters" / "sst2" / "classifier_head.safetensors",
                 lambda t: t | {f"{Q0}.lora_A.weight": torch.zeros(4, 32)})
    with pytest.raises(CheckpointError, match=f"holds '{Q0}.lora_A.weight', a LoRA factor key"):
        load_checkpoint(ckpt)


def test_save_refuses_tensors_in_another_dtype_than_options_dtype(tmp_path: Path) -> None:
    ckpt = make_checkpoint()
    ckpt.config["options"]["dtype"] = "float16"
    with pytest.raises(CheckpointError, match="stored as F32, expected F16") as exc:
        save_checkpoint(ckpt, tmp_path / "ck")
    assert "refusing to save an inconsistent checkpoint" in str(exc.value)
    assert not (tmp_path / "ck").exists()
    assert json.dumps(ckpt.config)  # untouched, still serializable
