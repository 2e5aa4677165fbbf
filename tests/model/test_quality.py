"""Issue 6: dW-aware compression: balanced factors, per-adapter cores, refinement, byte/error targets,
leave-one-out. Every reconstruction is checked through PEFT itself."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from peft import PeftModel

from share_torch import InvalidArgumentError, SHAREModel

from .conftest import base_bert, input_ids, logits_of, save_adapter


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> list:
    """Six BERT adapters (ranks 4 and 6, two alphas): more stacked columns than d=48 on each side."""
    root = tmp_path_factory.mktemp("quality")
    return [save_adapter(root / f"a{i}", seed=40 + i, r=4 + 2 * (i % 2), alpha=8 + 4 * (i % 2)) for i in range(6)]


def _errors(share: SHAREModel) -> dict[str, float]:
    return dict(share.config["stats"]["dw_error"])


def _written(share: SHAREModel, path) -> int:
    return sum(share.save_pretrained(path).values())


def _rms(values) -> float:
    values = list(values)
    return math.sqrt(sum(v * v for v in values) / len(values))


@pytest.mark.parametrize("factor_form", ["scaled", "balanced"])
@pytest.mark.parametrize("per_adapter", ["loadings", "core"])
def test_every_form_is_exact_at_full_rank_through_peft(pool, tmp_path, factor_form, per_adapter):
    share = SHAREModel.from_adapters(pool[:3], num_components=64, factor_form=factor_form,
                                     per_adapter=per_adapter, dtype="float32")
    share.save_pretrained(tmp_path / "ckpt")
    back = SHAREModel.from_pretrained(tmp_path / "ckpt")
    assert back.config["format_version"] == 3
    assert back.config["options"]["factor_form"] == factor_form
    for src in pool[:3]:
        back.reconstruct(src.name, output_dir=tmp_path / src.name)
        torch.testing.assert_close(logits_of(tmp_path / src.name), logits_of(src), rtol=1e-4, atol=1e-5)
        assert back.reconstruction_error(src.name, original_path=src)["overall"] < 1e-5


def test_core_gives_the_loadings_reconstruction_for_fewer_bytes(pool, tmp_path):
    """U (U^T B A V) V^T = (U U^T B)(A V V^T): same dW^, k_B k_A numbers instead of r (k_B + k_A)."""
    loads = SHAREModel.from_adapters(pool, num_components=3, per_adapter="loadings", dtype="float32")
    cores = SHAREModel.from_adapters(pool, num_components=3, per_adapter="core", dtype="float32")
    for name in loads.adapter_names:
        assert cores.reconstruction_error(name)["overall"] == pytest.approx(
            loads.reconstruction_error(name)["overall"], rel=1e-4)
    module = cores.modules[0]
    assert cores.config["groups"][module]["per_adapter"] == "core"
    assert tuple(cores._ckpt.loadings["a1"][f"{module}.core"].shape) == (3, 3)
    assert _written(cores, tmp_path / "c") < _written(loads, tmp_path / "l")
    # PEFT loads the rank-r factors made from a core, with the original rank and scaling
    cores.reconstruct("a1", output_dir=tmp_path / "a1")
    out = tmp_path / "a1"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 6 and config["lora_alpha"] == 12
    model = PeftModel.from_pretrained(base_bert(), str(out))
    with torch.inference_mode():
        model(input_ids=input_ids())


def test_auto_picks_the_cheaper_form_per_module(pool):
    small = SHAREModel.from_adapters(pool, num_components=2, per_adapter="auto")   # 2*2 < r (2 + 2)
    large = SHAREModel.from_adapters(pool, num_components=40, per_adapter="auto")  # 40*40 > r (40 + 40)
    assert {g["per_adapter"] for g in small.config["groups"].values()} == {"core"}
    assert {g["per_adapter"] for g in large.config["groups"].values()} == {"loadings"}


def test_balanced_form_does_not_depend_on_the_b_a_split(pool, tmp_path):
    """(B M, M^-1 A) is the same update: the balanced basis, and so the error, must not move."""
    moved = []
    for src in pool[:4]:
        dst = shutil.copytree(src, tmp_path / src.name)
        from safetensors.torch import load_file, save_file
        tensors = load_file(dst / "adapter_model.safetensors")
        for key in [k for k in tensors if "lora_A" in k]:
            a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
            m = torch.diag(torch.linspace(0.2, 5.0, a.shape[0]))
            tensors[key] = torch.linalg.solve(m, a).contiguous()
            tensors[key.replace("lora_A", "lora_B")] = (b @ m).contiguous()
        save_file(tensors, dst / "adapter_model.safetensors")
        moved.append(dst)
    for form, same in (("balanced", True), ("scaled", False)):
        one = _errors(SHAREModel.from_adapters(pool[:4], num_components=4, factor_form=form))
        two = _errors(SHAREModel.from_adapters(moved, num_components=4, factor_form=form))
        close = all(math.isclose(one[n], two[n], rel_tol=1e-3) for n in one)
        assert close is same, (form, one, two)


def test_refinement_never_raises_the_total_error(pool):
    totals = []
    for steps in (0, 1, 2, 4):
        share = SHAREModel.from_adapters(pool, num_components=3, per_adapter="core", refine_steps=steps,
                                         factor_form="balanced", dtype="float64")
        abs_sq = 0.0
        for name in share.adapter_names:
            meta = share._ckpt.metas[name]
            abs_sq += sum((meta["dw_error"][m] * meta["dw_norm"][m]) ** 2 for m in share.modules)
        totals.append(abs_sq)
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in zip(totals, totals[1:])), totals
    assert totals[-1] < totals[0] * 0.99, totals  # and it does lower it here


def test_target_ratio_is_met_as_written_and_the_gain_table_predicts_the_error(pool, tmp_path):
    original = sum(f.stat().st_size for src in pool for f in src.iterdir() if f.is_file())
    previous = None
    for ratio in (1.2, 1.5, 2.0):  # tiny adapters: the JSON metadata alone is about half of the bytes
        share = SHAREModel.from_adapters(pool, target_ratio=ratio, dtype="float64", per_adapter="auto",
                                         refine_steps=0)  # the table predicts the PCA bases' error
        written = _written(share, tmp_path / f"r{ratio}")
        assert written <= original / ratio, (ratio, written, original)
        assert share.stats()["bytes"]["checkpoint"] == written
        allocation = share.config["options"]["allocation"]
        # the exact in-sample gain table: predicted RMS relative error == measured (float64 storage)
        assert _rms(_errors(share).values()) == pytest.approx(allocation["predicted_rms_error"], rel=1e-6)
        refined = SHAREModel.from_adapters(pool, target_ratio=ratio, dtype="float64", per_adapter="auto")
        assert _written(refined, tmp_path / f"refined{ratio}") <= original / ratio
        assert _rms(_errors(refined).values()) <= allocation["predicted_rms_error"] * (1 + 1e-9)
        ks = {(g["lora_B"]["k"], g["lora_A"]["k"]) for g in share.config["groups"].values()}
        error = _rms(_errors(share).values())
        if previous is not None:
            assert error >= previous  # fewer bytes, never less error
        previous = error
    assert len(ks) >= 1


def test_allocation_beats_one_k_everywhere_at_the_same_bytes(tmp_path):
    """Modules of very different difficulty: an adapter set where layer 0 is low-rank and layer 1 is not."""
    pool = [save_adapter(tmp_path / f"m{i}", seed=70 + i, r=6, alpha=6) for i in range(5)]
    from safetensors.torch import load_file, save_file
    shared = torch.randn(48, 2)
    for i, src in enumerate(pool):
        tensors = load_file(src / "adapter_model.safetensors")
        for key in [k for k in tensors if "layer.0." in k and "lora_B" in k]:
            tensors[key] = (shared @ torch.randn(2, 6)) * (1 + i) + 1e-3 * torch.randn(48, 6)
        save_file(tensors, src / "adapter_model.safetensors")
    uniform = SHAREModel.from_adapters(pool, num_components=6, per_adapter="loadings", dtype="float32")
    budget = _written(uniform, tmp_path / "uniform")
    original = uniform.stats()["bytes"]["original"]
    allocated = SHAREModel.from_adapters(pool, target_ratio=original / budget, per_adapter="loadings",
                                         dtype="float32")
    assert _written(allocated, tmp_path / "allocated") <= budget
    assert _rms(_errors(allocated).values()) < 0.9 * _rms(_errors(uniform).values())
    ks = {m: allocated.num_components(m, "lora_B") for m in allocated.modules}
    assert any(k != 6 for k in ks.values()), ks


def test_max_error_holds_for_every_adapter_measured_against_the_originals(pool):
    share = SHAREModel.from_adapters(pool, max_error=0.3, factor_form="balanced", per_adapter="auto")
    for src in pool:
        assert share.reconstruction_error(src.name, original_path=src)["overall"] <= 0.3 + 1e-6
    assert share.config["options"]["allocation"]["achieved_max_error"] <= 0.3
    loose = SHAREModel.from_adapters(pool, max_error=0.6, factor_form="balanced", per_adapter="auto")
    assert loose.stats()["bytes"]["checkpoint"] < share.stats()["bytes"]["checkpoint"]


def test_unreachable_target_ratio_says_what_is_reachable(pool):
    with pytest.raises(InvalidArgumentError, match=r"target_ratio=500 .* even one component .*fix: ask for "
                                                   r"target_ratio <= \d"):
        SHAREModel.from_adapters(pool, target_ratio=500)


def test_leave_one_out_equals_projecting_onto_the_others(pool, tmp_path):
    """The estimate is what add_adapter(update_basis=False) gives an adapter the basis never saw."""
    share = SHAREModel.from_adapters(pool, num_components=3, leave_one_out=True, dtype="float64")
    loo = share.config["stats"]["leave_one_out"]
    assert set(loo) == set(share.adapter_names)
    assert share.stats()["leave_one_out"] == loo
    others = SHAREModel.from_adapters(pool[1:], num_components=3, dtype="float64")
    others.add_adapter(pool[0], update_basis=False)
    assert others.reconstruction_error("a0", original_path=pool[0])["overall"] == pytest.approx(loo["a0"], rel=1e-6)
    in_set = _errors(share)
    assert all(loo[n] >= in_set[n] - 1e-9 for n in loo)  # a basis that never saw it fits it no better
    text = []
    share.summary(print_fn=text.append)
    assert "leave-one-out" in text[0]


@pytest.mark.parametrize("per_adapter", ["core", "loadings"])
def test_updates_keep_the_per_adapter_form(pool, tmp_path, per_adapter):
    share = SHAREModel.from_adapters(pool[:4], num_components=2, per_adapter=per_adapter, factor_form="balanced")
    share.add_adapter(pool[4])
    assert {g["per_adapter"] for g in share.config["groups"].values()} == {per_adapter}
    for src in pool[:5]:
        stored = share.reconstruction_error(src.name)["overall"]
        assert share.reconstruction_error(src.name, original_path=src)["overall"] <= stored * (1 + 1e-4) + 1e-6
    before = {n: {m: _dw(share, n, m) for m in share.modules} for n in share.adapter_names if n != "a2"}
    share.remove_adapter("a2")
    share.save_pretrained(tmp_path / "ckpt")
    back = SHAREModel.from_pretrained(tmp_path / "ckpt")
    assert {g["per_adapter"] for g in back.config["groups"].values()} == {per_adapter}
    for name, products in before.items():  # the others' updates are unchanged by the removal
        for module, ref in products.items():
            torch.testing.assert_close(_dw(back, name, module), ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))


def _dw(share: SHAREModel, name: str, module: str) -> torch.Tensor:
    a, b = share._factors(name, module)
    return b.double() @ a.double()


@pytest.mark.parametrize("kwargs, needle", [
    ({"factor_form": "svd"}, "factor_form must be one of scaled, balanced; found 'svd'"),
    ({"per_adapter": "both"}, "per_adapter must be one of loadings, core, auto; found 'both'"),
    ({"refine_steps": -1}, "refine_steps must be an integer >= 0; found -1"),
    ({"target_ratio": 0}, "target_ratio must be a positive number"),
    ({"target_ratio": float("nan")}, "target_ratio must be a positive number"),
    ({"max_error": 1.5}, r"max_error must be a number in \(0, 1\)"),
    ({"target_ratio": 4, "max_error": 0.1}, "give target_ratio or max_error, not both"),
    ({"center": True, "per_adapter": "core"}, "per_adapter='core' need\\(s\\) uncentered bases.*drop center"),
    ({"center": True, "target_ratio": 3}, "target_ratio need\\(s\\) uncentered bases"),
    ({"leave_one_out": "yes"}, "leave_one_out must be True or False"),
])
def test_bad_quality_options_are_refused_before_any_work(pool, kwargs, needle):
    with pytest.raises(InvalidArgumentError, match=needle):
        SHAREModel.from_adapters(pool[:2], **kwargs)


def test_batched_balancing_equals_share_core_balance():
    """Compression balances all same-rank adapters of a module in one batched call: same factors."""
    import share_core as core
    from share_torch._compress import balance_batch

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 8, 40, generator=g), 0.3 * torch.randn(6, 30, 8, generator=g)
    b[2, :, 5:] = 0.0  # a rank-deficient update
    scales = torch.tensor([2.0, -1.5, 0.5, 1.0, 3.0, 0.25])
    a_bal, b_bal = balance_batch(a, b, scales)
    for i in range(6):
        b_ref, a_ref = core.balance(b[i], a[i], scale=float(scales[i]))
        torch.testing.assert_close(b_bal[i], b_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a_bal[i], a_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_adapter", ["core", "auto"])
def test_untrained_adapters_with_zero_b_compress_in_every_form(tmp_path, per_adapter):
    """PEFT initializes B at zero: a side of rank 0 is stored as loadings (nothing to factor) and comes back exact."""
    from safetensors.torch import load_file, save_file
    pool = [save_adapter(tmp_path / f"z{i}", seed=90 + i) for i in range(3)]
    for src in pool[:2]:
        tensors = load_file(src / "adapter_model.safetensors")
        save_file({k: (torch.zeros_like(v) if "lora_B" in k else v) for k, v in tensors.items()},
                  src / "adapter_model.safetensors")
    share = SHAREModel.from_adapters(pool[:2], num_components=2, per_adapter=per_adapter)
    assert {g["per_adapter"] for g in share.config["groups"].values()} == {"loadings"}
    assert share.stats()["dw_error_max"] == 0.0
    share.save_pretrained(tmp_path / "ckpt")
    SHAREModel.from_pretrained(tmp_path / "ckpt").reconstruct("z0", output_dir=tmp_path / "out")
    assert torch.count_nonzero(logits_of(tmp_path / "out") - logits_of(pool[0])) == 0
    mixed = SHAREModel.from_adapters(pool, target_ratio=1.2, per_adapter=per_adapter)
    assert mixed.stats()["dw_error"]["z0"] == 0.0
