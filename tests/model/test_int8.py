"""int8 storage (format 3): one byte per number plus a float32 scale per column, checked through PEFT and
the files as written."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from share_hf import CheckpointError
from share_hf._quant import SCALES_KEY, decode, encode, fake_quantize, scale_count
from share_torch import SHAREModel

from .conftest import logits_of, save_adapter
from .test_cli import run


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("int8")
    return [save_adapter(root / f"q{i}", seed=70 + i, r=4 + 2 * (i % 2), alpha=8) for i in range(5)]


def _mean_error(share: SHAREModel) -> float:
    errors = share.config["stats"]["dw_error"]
    return sum(errors.values()) / len(errors)


def test_the_grid_round_trips_and_bounds_the_rounding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 7, generator=g, dtype=torch.float64)
    x[:, 3] = 0.0  # an all-zero column stays exactly zero
    fq = fake_quantize(x)
    assert fq.dtype == torch.float32 and torch.equal(fq[:, 3], torch.zeros(200))
    peak = x.abs().amax(dim=0)
    assert bool(((fq.double() - x).abs() <= peak / 127 / 2 * (1 + 1e-5) + 1e-12).all())  # half a step per entry
    tensors = {"b": fq, "a": torch.randn(5, generator=g), "empty": torch.zeros(0, 4)}
    stored = encode(tensors)
    assert {k: v.dtype for k, v in stored.items()} == {
        "a": torch.int8, "b": torch.int8, "empty": torch.int8, SCALES_KEY: torch.float32}
    assert stored[SCALES_KEY].shape == (sum(scale_count(tuple(t.shape)) for t in tensors.values()),)
    back = decode(stored)
    torch.testing.assert_close(back["b"], fq, rtol=1e-6, atol=0)  # the grid is a fixed point, to float32 rounding
    torch.testing.assert_close(back["a"], fake_quantize(tensors["a"]), rtol=1e-6, atol=0)
    assert back["empty"].shape == (0, 4)
    with pytest.raises(ValueError, match=SCALES_KEY):
        encode({SCALES_KEY: fq})


@pytest.mark.parametrize("per_adapter", ["loadings", "core"])
def test_int8_checkpoint_is_written_as_int8_and_loads_through_peft(pool, tmp_path, per_adapter):
    f32 = SHAREModel.from_adapters(pool, num_components=6, per_adapter=per_adapter, dtype="float32")
    i8 = SHAREModel.from_adapters(pool, num_components=6, per_adapter=per_adapter, dtype="int8")
    assert i8.config["format_version"] == 3 == f32.config["format_version"]
    assert i8.config["options"]["dtype"] == "int8"
    # rounding to int8 costs little next to the truncation itself
    assert _mean_error(f32) <= _mean_error(i8) <= _mean_error(f32) + 0.02
    sizes = i8.save_pretrained(tmp_path / "i8")
    f32_sizes = f32.save_pretrained(tmp_path / "f32")
    assert sum(sizes.values()) == i8.stats()["bytes"]["checkpoint"]
    # tensors a quarter of float32's plus a scale per column; JSON, heads and headers are the same
    basis = "shared_components.safetensors"
    assert sizes[basis] < 0.4 * f32_sizes[basis]
    for rel in ("shared_components.safetensors", "adapters/q1/loadings.safetensors"):
        with safe_open(str(tmp_path / "i8" / rel), "pt") as f:
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes.pop(SCALES_KEY) == "F32"
        assert set(dtypes.values()) == {"I8"}, (rel, dtypes)
    back = SHAREModel.from_pretrained(tmp_path / "i8")
    for src in pool:
        out = tmp_path / f"r-{src.name}"
        back.reconstruct(src.name, output_dir=out)
        measured = back.reconstruction_error(src.name, original_path=src)["overall"]
        # the errors reported at compression are those of what was written and read back
        assert measured == pytest.approx(i8.config["stats"]["dw_error"][src.name], rel=1e-4, abs=1e-6)
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["r"] in (4, 6) and load_file(out / "adapter_model.safetensors")[
            next(iter(load_file(out / "adapter_model.safetensors")))].dtype == torch.float32
        logits = logits_of(out)
        assert torch.isfinite(logits).all()
        f32.reconstruct(src.name, output_dir=tmp_path / f"f-{src.name}")
        torch.testing.assert_close(logits, logits_of(tmp_path / f"f-{src.name}"), rtol=0.05, atol=0.05)


def test_int8_at_full_rank_is_within_rounding(pool):
    share = SHAREModel.from_adapters(pool[:3], num_components=64, dtype="int8")
    assert 0 < max(share.config["stats"]["dw_error"].values()) < 0.02


def test_target_ratio_in_int8_meets_the_budget_with_less_error_than_bfloat16(pool, tmp_path):
    original = sum(p.stat().st_size for a in pool for p in a.iterdir() if p.is_file())
    i8 = SHAREModel.from_adapters(pool, target_ratio=1.8, dtype="int8")
    bf16 = SHAREModel.from_adapters(pool, target_ratio=1.8, dtype="bfloat16")
    written = sum(i8.save_pretrained(tmp_path / "ckpt").values())
    assert written <= original / 1.8
    assert _mean_error(i8) < _mean_error(bf16)


def test_updates_keep_int8_storage(pool, tmp_path):
    share = SHAREModel.from_adapters(pool[:3], num_components=4, dtype="int8")
    share.add_adapter(pool[3])
    share.add_adapter(pool[4], name="late", update_basis=False)
    share.remove_adapter("q1")
    share.save_pretrained(tmp_path / "ckpt")
    back = SHAREModel.from_pretrained(tmp_path / "ckpt")
    assert back.config["format_version"] == 3 and back.adapter_names == ["q0", "q2", "q3", "late"]
    for name, src in (("q0", pool[0]), ("q3", pool[3]), ("late", pool[4])):
        actual = back.reconstruction_error(name, original_path=src)["overall"]
        stored = back.reconstruction_error(name)["overall"]
        assert math.isfinite(actual) and actual <= stored * (1 + 1e-3) + 1e-6, (name, actual, stored)


def _damage(path, change) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop(SCALES_KEY), "lacks tensor 'int8_scales'"),
    (lambda t: t.__setitem__(SCALES_KEY, t[SCALES_KEY][:-1]), "one scale per column"),
    (lambda t: t.__setitem__(SCALES_KEY, t[SCALES_KEY].half()), "stored as F16, expected F32"),
])
def test_damaged_int8_files_are_refused_with_what_is_wrong(pool, tmp_path, change, message):
    SHAREModel.from_adapters(pool[:3], num_components=4, dtype="int8").save_pretrained(tmp_path / "ckpt")
    _damage(tmp_path / "ckpt" / "adapters" / "q1" / "loadings.safetensors", change)
    with pytest.raises(CheckpointError, match=message):
        SHAREModel.from_pretrained(tmp_path / "ckpt")


def test_float_tensors_in_an_int8_checkpoint_and_int8_under_format_2_are_refused(pool, tmp_path):
    SHAREModel.from_adapters(pool[:3], num_components=4, dtype="int8").save_pretrained(tmp_path / "ckpt")
    _damage(tmp_path / "ckpt" / "shared_components.safetensors",
            lambda t: t.update({k: v.float() for k, v in t.items() if k != SCALES_KEY}))
    with pytest.raises(CheckpointError, match=r"stored as F32, expected I8 \(int8"):
        SHAREModel.from_pretrained(tmp_path / "ckpt")
    SHAREModel.from_adapters(pool[:3], num_components=4, dtype="int8").save_pretrained(tmp_path / "c2")
    config = json.loads((tmp_path / "c2" / "share_config.json").read_text())
    config["format_version"] = 2
    (tmp_path / "c2" / "share_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="needs format_version 3"):
        SHAREModel.from_pretrained(tmp_path / "c2")


def test_cli_compresses_to_int8(pool, tmp_path):
    done = run("compress", *map(str, pool[:3]), "-o", str(tmp_path / "ckpt"), "-k", "4", "--dtype", "int8")
    assert done.returncode == 0, done.stderr
    assert "storage int8" in done.stderr
    info = run("info", str(tmp_path / "ckpt"))
    assert info.returncode == 0 and "dtype=int8" in info.stdout, info.stdout
    back = run("reconstruct", str(tmp_path / "ckpt"), "--adapter", "q0", "-o", str(tmp_path / "q0"))
    assert back.returncode == 0, back.stderr
    assert torch.isfinite(logits_of(tmp_path / "q0")).all()
