"""SHAREModel end to end on real PEFT adapters of tiny BERT and Llama models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from share_torch import (
    CheckpointExistsError,
    IncompatibleAdaptersError,
    InvalidArgumentError,
    SHAREModel,
    ShareError,
    UnknownAdapterError,
)

from .conftest import base_bert, base_llama, input_ids, logits_of, save_adapter


def dense_dw_error(original: Path, restored: Path) -> float:
    """Pooled ||dW - dW^||_F / ||dW||_F over all modules, computed densely from the two PEFT folders."""
    cfg = json.loads((original / "adapter_config.json").read_text())
    cfg_r = json.loads((restored / "adapter_config.json").read_text())
    assert cfg == cfg_r
    scale = cfg["lora_alpha"] / cfg["r"]
    w0, w1 = load_file(original / "adapter_model.safetensors"), load_file(restored / "adapter_model.safetensors")
    num = den = 0.0
    for key in w0:
        if key.endswith("lora_A.weight"):
            kb = key.replace("lora_A", "lora_B")
            dw = scale * w0[kb].double() @ w0[key].double()
            dw_hat = scale * w1[kb].double() @ w1[key].double()
            num += float(torch.linalg.norm(dw - dw_hat)) ** 2
            den += float(torch.linalg.norm(dw)) ** 2
    return math.sqrt(num / den)


def test_full_rank_round_trip_gives_the_same_logits(bert_adapters, tmp_path):
    share = SHAREModel.from_adapters(bert_adapters, num_components=32)
    for src in bert_adapters:
        out = tmp_path / "restored" / src.name
        share.reconstruct(src.name, output_dir=out)
        expected, got = logits_of(src), logits_of(out)
        # float32 factors; the basis is exact up to rounding, so logits agree to ~1e-6 relative
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert share.reconstruction_error(src.name)["overall"] < 1e-5


def test_llama_shaped_round_trip_at_full_rank(tmp_path):
    adapters = [save_adapter(tmp_path / f"llama{i}", kind="llama", seed=i, r=4, alpha=8) for i in range(3)]
    share = SHAREModel.from_adapters(adapters, num_components=64)
    assert len(share.modules) == 2 * 4  # 2 layers x q/k/v/o
    out = tmp_path / "restored"
    share.reconstruct("llama1", output_dir=out)
    torch.testing.assert_close(logits_of(out, "llama"), logits_of(adapters[1], "llama"), rtol=1e-4, atol=1e-5)


def test_lower_k_reports_the_error_measured_independently(bert_adapters, tmp_path):
    share = SHAREModel.from_adapters(bert_adapters, num_components=3)
    assert {share.num_components(m, s) for m in share.modules for s in ("lora_A", "lora_B")} == {3}
    for src in bert_adapters:
        out = tmp_path / "restored" / src.name
        share.reconstruct(src.name, output_dir=out)
        measured = dense_dw_error(src, out)
        assert measured > 1e-3  # k=3 < rank: something is lost
        assert share.reconstruction_error(src.name)["overall"] == pytest.approx(measured, rel=1e-4)
        fresh = share.reconstruction_error(src.name, original_path=src)
        assert fresh["overall"] == pytest.approx(measured, rel=1e-4)
        # the default balanced form gives dW back in another B/A split: only dW errors are comparable
        assert set(fresh["per_module"][share.modules[0]]) == {"dw"}
    scaled = SHAREModel.from_adapters(bert_adapters, num_components=3, factor_form="scaled")
    fresh = scaled.reconstruction_error(bert_adapters[0].name, original_path=bert_adapters[0])
    assert set(fresh["per_module"][scaled.modules[0]]) == {"dw", "lora_A", "lora_B"}


def test_error_does_not_increase_with_k(bert_adapters):
    errors = [SHAREModel.from_adapters(bert_adapters, num_components=k).summary(print_fn=None)["dw_error_mean"]
              for k in (1, 2, 4, 8, 14)]
    assert all(b <= a + 1e-7 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5 < errors[0]


def test_auto_k_meets_the_variance_threshold_per_group(bert_adapters):
    share = SHAREModel.from_adapters(bert_adapters, num_components="auto", variance_threshold=0.8)
    for group in share.config["groups"].values():
        for side in ("lora_A", "lora_B"):
            assert group[side]["explained_variance"] >= 0.8
            assert 1 <= group[side]["k"] <= group[side]["rank"]


def test_peft_loads_every_reconstruction_with_no_missing_or_unexpected_keys(bert_adapters, tmp_path):
    share = SHAREModel.from_adapters(bert_adapters, num_components=2)
    for src in bert_adapters:
        out = tmp_path / "restored" / src.name
        share.reconstruct(src.name, output_dir=out)
        original_keys = set(load_file(src / "adapter_model.safetensors"))
        assert set(load_file(out / "adapter_model.safetensors")) == original_keys
        model = PeftModel.from_pretrained(base_bert(), str(out))
        result = model.load_adapter(str(out), adapter_name="again")
        assert not result.unexpected_keys and not result.missing_keys
        # the same scaling as the original adapter
        original = PeftModel.from_pretrained(base_bert(), str(src))
        q = "base_model.model.bert.encoder.layer.0.attention.self.query"
        assert model.get_submodule(q).scaling["default"] == original.get_submodule(q).scaling["default"]


def test_config_alpha_heads_and_dtype_are_preserved(tmp_path):
    adapters = [save_adapter(tmp_path / f"bf{i}", seed=i, r=4, alpha=4 * (i + 1), dtype=torch.bfloat16)
                for i in range(3)]
    share = SHAREModel.from_adapters(adapters)
    assert share.config["options"]["dtype"] == "bfloat16"
    for src in adapters:
        out = tmp_path / "out" / src.name
        share.reconstruct(src.name, output_dir=out)
        assert json.loads((out / "adapter_config.json").read_text()) == json.loads(
            (src / "adapter_config.json").read_text())
        got, want = load_file(out / "adapter_model.safetensors"), load_file(src / "adapter_model.safetensors")
        assert all(t.dtype == torch.bfloat16 for t in got.values())
        head = "base_model.model.classifier.weight"
        assert torch.equal(got[head], want[head])  # heads come back bit for bit
        for key in want:  # bf16 storage: dW errors at bf16 resolution, not more (the balanced default gives
            if "lora_A" in key:  # dW back in another B/A split, so compare products)
                b_key = key.replace("lora_A", "lora_B")
                dw_got, dw_want = (t[b_key].float() @ t[key].float() for t in (got, want))
                assert torch.linalg.norm(dw_got - dw_want) / torch.linalg.norm(dw_want) < 2e-2


def test_rslora_and_rank_pattern_use_peft_scaling(tmp_path):
    adapters = [
        save_adapter(tmp_path / "rs", seed=1, r=4, alpha=8, use_rslora=True),
        save_adapter(tmp_path / "pat", seed=2, r=4, alpha=8, rank_pattern={"value": 6}, alpha_pattern={"value": 3}),
        save_adapter(tmp_path / "plain", seed=3, r=2, alpha=2),
    ]
    share = SHAREModel.from_adapters(adapters, num_components=64)
    for src in adapters:
        out = tmp_path / "out" / src.name
        share.reconstruct(src.name, output_dir=out)
        torch.testing.assert_close(logits_of(out), logits_of(src), rtol=1e-4, atol=1e-5)


def test_apply_loads_several_adapters_and_switches(bert_adapters, tmp_path):
    share = SHAREModel.from_adapters(bert_adapters, num_components=32)
    model = share.apply(base_bert(), ["sst2", "cola"])
    assert isinstance(model, PeftModel)
    ids = input_ids()
    with torch.inference_mode():
        first = model(input_ids=ids).logits
        model.set_adapter("cola")
        second = model(input_ids=ids).logits
    torch.testing.assert_close(first, logits_of(bert_adapters[0]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, logits_of(bert_adapters[1]), rtol=1e-4, atol=1e-5)
    model = share.apply(model, "mrpc")  # adding to an existing PeftModel
    with torch.inference_mode():
        third = model(input_ids=ids).logits
    torch.testing.assert_close(third, logits_of(bert_adapters[2]), rtol=1e-4, atol=1e-5)


def test_save_load_round_trip_and_bytes_as_written(bert_adapters, tmp_path):
    share = SHAREModel.from_adapters(bert_adapters, num_components=2)
    ckpt = tmp_path / "ckpt"
    written = share.save_pretrained(ckpt)
    on_disk = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert sum(written.values()) == on_disk
    stats = share.stats()
    assert stats["bytes"]["checkpoint"] == on_disk  # counted before writing, equal to what was written
    assert stats["bytes"]["original"] == sum(
        (a / f).stat().st_size for a in bert_adapters for f in ("adapter_config.json", "adapter_model.safetensors"))
    loaded = SHAREModel.from_pretrained(ckpt)
    assert loaded.adapter_names == ["sst2", "cola", "mrpc"]
    assert loaded.stats() == stats
    for name in loaded.adapter_names:
        a, b = share.reconstruct(name), loaded.reconstruct(name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointExistsError):
        share.save_pretrained(ckpt)
    share.save_pretrained(ckpt, overwrite=True)


def test_partial_load_reads_only_the_asked_adapter(bert_adapters, tmp_path):
    ckpt = tmp_path / "ckpt"
    SHAREModel.from_adapters(bert_adapters, num_components=64).save_pretrained(ckpt)
    for other in ("sst2", "mrpc"):  # the others' files are not even there
        for f in (ckpt / "adapters" / other).iterdir():
            f.unlink()
        (ckpt / "adapters" / other).rmdir()
    share = SHAREModel.from_pretrained(ckpt, adapters=["cola"])
    assert share.adapter_names == ["cola"]
    share.reconstruct("cola", output_dir=tmp_path / "restored_cola")
    torch.testing.assert_close(logits_of(tmp_path / "restored_cola"), logits_of(bert_adapters[1]), rtol=1e-4, atol=1e-5)
    with pytest.raises(UnknownAdapterError, match="sst2"):
        share.reconstruct("sst2")


def test_centering_is_exact_at_full_rank(bert_adapters, tmp_path):
    share = SHAREModel.from_adapters(bert_adapters, num_components=64, center=True)
    group = share.config["groups"][share.modules[0]]
    assert group["lora_A"]["centered"] and group["lora_B"]["centered"]
    share.save_pretrained(tmp_path / "ckpt")
    loaded = SHAREModel.from_pretrained(tmp_path / "ckpt")
    loaded.reconstruct("cola", output_dir=tmp_path / "restored_cola")
    torch.testing.assert_close(logits_of(tmp_path / "restored_cola"), logits_of(bert_adapters[1]), rtol=1e-4, atol=1e-5)


def test_bad_options_and_inputs_raise_share_errors(bert_adapters, tmp_path):
    for k in (0, -3, 2.5, True, "many"):
        with pytest.raises(InvalidArgumentError, match="num_components"):
            SHAREModel.from_adapters(bert_adapters, num_components=k)
    for threshold in (0.0, 1.5, -1):
        with pytest.raises(InvalidArgumentError, match="variance_threshold"):
            SHAREModel.from_adapters(bert_adapters, num_components="auto", variance_threshold=threshold)
    twin = save_adapter(tmp_path / "elsewhere" / "sst2", seed=9)
    with pytest.raises(InvalidArgumentError, match="sst2"):
        SHAREModel.from_adapters([bert_adapters[0], twin])
    with pytest.raises(IncompatibleAdaptersError):
        SHAREModel.from_adapters(bert_adapters[:1])
    llama = save_adapter(tmp_path / "llama", kind="llama")
    with pytest.raises(IncompatibleAdaptersError):
        SHAREModel.from_adapters([bert_adapters[0], llama])
    share = SHAREModel.from_adapters(bert_adapters, num_components=2)
    with pytest.raises(UnknownAdapterError, match="sst2, cola, mrpc"):
        share.reconstruct("nope")
    with pytest.raises(ShareError):
        share.apply(base_llama(), "sst2")


def test_dict_input_names_adapters(bert_adapters):
    share = SHAREModel.from_adapters({"a": bert_adapters[0], "b": bert_adapters[1]}, num_components=2)
    assert share.adapter_names == ["a", "b"]
