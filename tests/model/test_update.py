"""Issue 4: add_adapter / remove_adapter work from the checkpoint alone, exactly where they can."""

from __future__ import annotations

import shutil

import pytest
import torch

from share_torch import IncompatibleAdaptersError, InvalidArgumentError, SHAREModel

from .conftest import logits_of, save_adapter


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("pool")
    return [save_adapter(root / f"t{i}", seed=10 + i, r=3 + (i % 2), alpha=6) for i in range(5)]


def _assert_same(one: SHAREModel, two: SHAREModel, names, rtol=1e-4) -> None:
    for name in names:
        a, b = one.reconstruct(name), two.reconstruct(name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=rtol, atol=rtol * float(a[key].abs().max()))


def test_exact_add_without_the_original_files_matches_compressing_all(pool, tmp_path):
    copies = [shutil.copytree(p, tmp_path / p.name) for p in pool[:4]]
    share = SHAREModel.from_adapters(copies, num_components=64)
    share.save_pretrained(tmp_path / "ckpt")
    for folder in copies:  # the originals are gone
        shutil.rmtree(folder)
    share = SHAREModel.from_pretrained(tmp_path / "ckpt")
    assert share.add_adapter(pool[4]) == "t4"
    share.save_pretrained(tmp_path / "ckpt2")
    reloaded = SHAREModel.from_pretrained(tmp_path / "ckpt2")
    everything = SHAREModel.from_adapters(pool, num_components=64)
    assert reloaded.adapter_names == everything.adapter_names
    _assert_same(everything, reloaded, everything.adapter_names)
    group = reloaded.config["groups"][reloaded.modules[0]]["lora_B"]
    assert group["k"] == everything.config["groups"][everything.modules[0]]["lora_B"]["k"]
    assert reloaded.stats()["dw_error_max"] < 1e-5
    reloaded.reconstruct("t4", output_dir=tmp_path / "out")
    torch.testing.assert_close(logits_of(tmp_path / "out"), logits_of(pool[4]), rtol=1e-4, atol=1e-5)


def test_lossy_add_reports_upper_bounds_that_hold(pool):
    share = SHAREModel.from_adapters(pool[:4], num_components=4)
    share.add_adapter(pool[4])
    for src in pool:
        stored = share.reconstruction_error(src.name)["overall"]
        actual = share.reconstruction_error(src.name, original_path=src)["overall"]
        assert actual <= stored * (1 + 1e-4) + 1e-7, (src.name, actual, stored)
    assert all(share._ckpt.metas[n].get("dw_error_is_upper_bound") for n in ("t0", "t1", "t2", "t3"))
    assert share.num_components(share.modules[0], "lora_A") == 4  # the checkpoint's k rule still holds


def test_projection_only_add_keeps_the_basis(pool):
    share = SHAREModel.from_adapters(pool[:4], num_components=4)
    bases = {k: v.clone() for k, v in share._ckpt.components.items()}
    before = {n: share.reconstruct(n) for n in share.adapter_names}
    share.add_adapter(pool[4], name="late", update_basis=False)
    assert all(torch.equal(bases[k], share._ckpt.components[k]) for k in bases)
    for name, tensors in before.items():
        after = share.reconstruct(name)
        assert all(torch.equal(tensors[k], after[k]) for k in tensors)
    projected = share.reconstruction_error("late", original_path=pool[4])["overall"]
    assert share.reconstruction_error("late")["overall"] == pytest.approx(projected, rel=1e-4)
    assert projected > 1e-3  # the old basis cannot hold a new random adapter exactly


@pytest.mark.parametrize("center", [False, True])
def test_remove_keeps_the_others_and_shrinks_storage(pool, center, tmp_path):
    share = SHAREModel.from_adapters(pool, num_components=64, center=center)
    before = share.stats()["bytes"]["checkpoint"]
    k_before = share.num_components(share.modules[0], "lora_B")
    share.remove_adapter("t2")
    assert share.adapter_names == ["t0", "t1", "t3", "t4"]
    assert share.num_components(share.modules[0], "lora_B") < k_before  # t2's own directions are gone
    assert share.stats()["bytes"]["checkpoint"] < before
    without = SHAREModel.from_adapters([p for p in pool if p.name != "t2"], num_components=64, center=center)
    _assert_same(without, share, share.adapter_names)
    share.save_pretrained(tmp_path / "ckpt")
    assert "t2" not in SHAREModel.from_pretrained(tmp_path / "ckpt").adapter_names
    share.summary(print_fn=None)


def test_update_errors_leave_the_model_unchanged(pool, tmp_path):
    share = SHAREModel.from_adapters(pool[:3], num_components=4)
    snapshot = share.stats()
    with pytest.raises(InvalidArgumentError, match="already holds"):
        share.add_adapter(pool[0])
    llama = save_adapter(tmp_path / "llama", kind="llama")
    with pytest.raises(IncompatibleAdaptersError, match="does not fit"):
        share.add_adapter(llama)
    assert share.stats() == snapshot
    share.save_pretrained(tmp_path / "ckpt")
    partial = SHAREModel.from_pretrained(tmp_path / "ckpt", adapters=["t0"])
    with pytest.raises(InvalidArgumentError, match="loaded with adapters"):
        partial.add_adapter(pool[4])
    with pytest.raises(InvalidArgumentError, match="loaded with adapters"):
        partial.remove_adapter("t0")


@pytest.mark.parametrize("k", [64, 4])
@pytest.mark.parametrize("update", ["add", "remove"])
def test_upper_bounds_hold_for_half_precision_adapters(tmp_path, k, update):
    """A bf16 adapter is written back in bf16, and the cast is part of its stored error. After an update that
    moves its reconstruction, the stored figure becomes a bound (error before + float32 drift) that must still
    hold for the files as written, module by module (the cast of the moved factors rounds differently)."""
    pool = [save_adapter(tmp_path / f"h{i}", seed=30 + i, r=4, alpha=8, dtype=torch.bfloat16) for i in range(5)]
    share = SHAREModel.from_adapters(pool[:4] if update == "add" else pool, num_components=k)
    if update == "add":
        share.add_adapter(pool[4])
    else:
        share.remove_adapter("h4")
    for src in pool[:4]:
        stored = share.reconstruction_error(src.name)["per_module"]
        actual = share.reconstruction_error(src.name, original_path=src)["per_module"]
        for module, figures in actual.items():
            assert figures["dw"] <= stored[module]["dw"] * (1 + 1e-4) + 1e-7, (src.name, module, figures,
                                                                                stored[module])
