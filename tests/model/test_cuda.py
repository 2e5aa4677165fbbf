"""Issue 4: `device="cuda"` / `--device cuda` gives the CPU's checkpoint, and its results come back to the CPU in
the adapters' dtype. Every test here needs a CUDA GPU and skips, saying so, without one; on a machine without
one, `test_scale.py::test_cuda_gives_the_cpu_result` and the `torch_cuda` backend of tests/core skip too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from share_torch import SHAREModel

from .conftest import base_bert, input_ids, logits_of, save_adapter

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

LORASHARE = Path(sys.executable).parent / "lorashare"


@pytest.fixture(scope="module")
def bert_set(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("cuda-bert")
    return [save_adapter(root / f"task{i}", seed=10 + i, r=3 + (i % 3), alpha=4 + 2 * i) for i in range(5)]


@pytest.fixture(scope="module")
def llama_bf16(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("cuda-llama")
    return [save_adapter(root / f"lang{i}", kind="llama", seed=20 + i, r=4, alpha=8, dtype=torch.bfloat16)
            for i in range(4)]


def _close(one: SHAREModel, two: SHAREModel, rtol: float) -> None:
    """Same adapters, same keys, same dtypes, reconstructions equal within `rtol` of each tensor's largest entry."""
    assert one.adapter_names == two.adapter_names
    for name in one.adapter_names:
        a, b = one.reconstruct(name), two.reconstruct(name)
        assert a.keys() == b.keys()
        for key in a:
            assert b[key].device.type == "cpu" and b[key].dtype == a[key].dtype, key
            torch.testing.assert_close(b[key].float(), a[key].float(), rtol=rtol,
                                       atol=rtol * float(a[key].float().abs().max()))


def _all_on_cpu(model: SHAREModel) -> bool:
    ckpt = model._ckpt
    tensors = list(ckpt.components.values()) + [t for lo in ckpt.loadings.values() for t in lo.values()]
    return bool(tensors) and all(t.device.type == "cpu" for t in tensors)


@pytest.mark.parametrize("options", [
    {"num_components": 64},
    {"num_components": 4, "center": True},
    {"num_components": 64, "layer_by_layer": True, "chunk_size": 2},
    {"num_components": 8, "per_adapter": "core", "factor_form": "scaled"},
])
def test_cuda_equals_cpu(bert_set, options):
    cpu = SHAREModel.from_adapters(bert_set, **options)
    gpu = SHAREModel.from_adapters(bert_set, device="cuda", **options)
    assert gpu.device.type == "cuda"
    assert _all_on_cpu(gpu)  # stored results come back to the host
    for module in cpu.modules:
        for side in ("lora_A", "lora_B"):
            assert gpu.num_components(module, side) == cpu.num_components(module, side)
    # k=4 < rank: the random adapters have distinct singular values, so the kept subspace is the same
    _close(cpu, gpu, rtol=1e-4 if options["num_components"] == 64 else 1e-3)
    # at full rank both are float32 rounding (1e-6 on the CPU, 4e-6 on an H100): equal within 1e-5
    assert gpu.stats()["dw_error_mean"] == pytest.approx(cpu.stats()["dw_error_mean"], rel=1e-3, abs=1e-5)


def test_bf16_adapters_on_cuda_come_back_in_bf16(llama_bf16, tmp_path):
    cpu = SHAREModel.from_adapters(llama_bf16, num_components=64)
    gpu = SHAREModel.from_adapters(llama_bf16, num_components=64, device="cuda")
    _close(cpu, gpu, rtol=2e-2)  # one bf16 rounding apart at most
    gpu.reconstruct("lang1", output_dir=tmp_path / "lang1")
    written = load_file(tmp_path / "lang1" / "adapter_model.safetensors")
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    reference = cpu.reconstruction_error("lang1", original_path=llama_bf16[1])
    measured = gpu.reconstruction_error("lang1", original_path=llama_bf16[1])
    assert measured["overall"] == pytest.approx(reference["overall"], rel=0.05, abs=1e-3)


def test_cuda_checkpoint_loads_in_peft_and_gives_the_cpu_logits(bert_set, tmp_path):
    cpu = SHAREModel.from_adapters(bert_set, num_components=64)
    gpu = SHAREModel.from_adapters(bert_set, num_components=64, device="cuda")
    gpu.save_pretrained(tmp_path / "ckpt")
    loaded = SHAREModel.from_pretrained(tmp_path / "ckpt", device="cuda")
    for name, src in zip(cpu.adapter_names, bert_set):
        loaded.reconstruct(name, output_dir=tmp_path / "gpu" / name)
        torch.testing.assert_close(logits_of(tmp_path / "gpu" / name), logits_of(src), rtol=1e-3, atol=1e-4)
    # apply() from a CUDA model into a base model on the CPU, and into one on the GPU
    ids = input_ids()
    expected = logits_of(bert_set[2])
    with torch.inference_mode():
        on_cpu = loaded.apply(base_bert(), cpu.adapter_names[2])(input_ids=ids).logits.float()
        on_gpu = loaded.apply(base_bert().cuda(), cpu.adapter_names[2])(input_ids=ids.cuda()).logits.float().cpu()
    torch.testing.assert_close(on_cpu, expected, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(on_gpu, expected, rtol=1e-3, atol=1e-4)


def test_add_and_remove_on_cuda_equal_cpu(bert_set, tmp_path):
    first, last = bert_set[:4], bert_set[4]
    cpu = SHAREModel.from_adapters(first, num_components=64)
    gpu = SHAREModel.from_adapters(first, num_components=64, device="cuda")
    cpu.add_adapter(last)
    gpu.add_adapter(last)
    _close(cpu, gpu, rtol=1e-4)
    cpu.remove_adapter(cpu.adapter_names[0])
    gpu.remove_adapter(gpu.adapter_names[0])
    _close(cpu, gpu, rtol=1e-4)
    assert _all_on_cpu(gpu)


@pytest.mark.parametrize("options", [{"dtype": "int8", "target_ratio": 3.0}, {"dtype": "mixed", "target_ratio": 3.0}])
def test_quantized_budgets_on_cuda_match_cpu(llama_bf16, options):
    cpu = SHAREModel.from_adapters(llama_bf16, **options)
    gpu = SHAREModel.from_adapters(llama_bf16, device="cuda", **options)
    c, g = cpu.stats(), gpu.stats()
    assert g["dw_error_mean"] == pytest.approx(c["dw_error_mean"], rel=0.05, abs=1e-3)
    assert g["bytes"]["checkpoint"] == pytest.approx(c["bytes"]["checkpoint"], rel=0.05)


def test_cli_device_cuda(bert_set, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(LORASHARE), *args], capture_output=True, text=True, env=env, timeout=600)

    for device in ("cpu", "cuda"):
        done = run("compress", *map(str, bert_set), "-o", str(tmp_path / device), "-k", "64", "--device", device,
                   "--layer-by-layer", "--chunk-size", "2")
        assert done.returncode == 0, done.stderr
    info = {d: json.loads(run("info", str(tmp_path / d), "--json").stdout) for d in ("cpu", "cuda")}
    assert info["cuda"]["adapters"] == info["cpu"]["adapters"]
    assert info["cuda"]["dw_error_max"] < 1e-4
    rec = run("reconstruct", str(tmp_path / "cuda"), "--all", "-o", str(tmp_path / "restored"))
    assert rec.returncode == 0, rec.stderr
    for src in bert_set:
        torch.testing.assert_close(logits_of(tmp_path / "restored" / src.name), logits_of(src), rtol=1e-3, atol=1e-4)
