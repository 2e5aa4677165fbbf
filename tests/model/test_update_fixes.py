"""add / remove on checkpoints they used to break or silently change: groups with k = 0, projection-only adds,
removals where no k shrinks, leave-one-out figures and allocation figures after updates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from share_core.errors import InvalidArgumentError
from share_torch import SHAREModel

from .conftest import logits_of, save_adapter
from .test_cli import run
from .test_mixed import wide_pool  # noqa: F401  (a fixture)

ZEROED = "layer.0.attention.self.query"


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("fixes")
    return [save_adapter(root / f"u{i}", seed=40 + i, r=4, alpha=8) for i in range(5)]


@pytest.fixture(scope="module")
def zeroed(pool, tmp_path_factory) -> Path:
    """A copy of u1 whose lora_B of one module is zero (a module training never touched): its dW there is 0."""
    folder = Path(shutil.copytree(pool[1], tmp_path_factory.mktemp("zeroed") / "z1"))
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    hits = [k for k in tensors if ZEROED in k and "lora_B" in k]
    assert hits
    for key in hits:
        tensors[key] = torch.zeros_like(tensors[key])
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


def _module(share: SHAREModel) -> str:
    return next(m for m in share.modules if m.endswith(ZEROED))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def test_remove_leaving_a_zero_module_keeps_it_reconstructible(pool, zeroed, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert run("compress", str(pool[0]), str(zeroed), "-o", str(ckpt), "-k", "8", "-q").returncode == 0
    config = json.loads((ckpt / "share_config.json").read_text())
    module = next(m for m in config["groups"] if m.endswith(ZEROED))
    assert config["groups"][module]["per_adapter"] == "core"  # the case that broke: a core group that empties
    removed = run("remove", str(ckpt), "u0", "-q")
    assert removed.returncode == 0, removed.stderr
    group = json.loads((ckpt / "share_config.json").read_text())["groups"][module]
    assert group["lora_B"]["k"] == 0 and group["per_adapter"] == "loadings"  # as compression would store it
    out = tmp_path / "z1_back"
    done = run("reconstruct", str(ckpt), "--adapter", "z1", "-o", str(out))
    assert done.returncode == 0, done.stderr
    torch.testing.assert_close(logits_of(out), logits_of(zeroed), rtol=1e-4, atol=1e-5)
    added = run("add", str(ckpt), str(pool[2]), "-q")
    assert added.returncode == 0, added.stderr
    assert run("reconstruct", str(ckpt), "--all", "-o", str(tmp_path / "all")).returncode == 0
    torch.testing.assert_close(logits_of(tmp_path / "all" / "u2"), logits_of(pool[2]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits_of(tmp_path / "all" / "z1"), logits_of(zeroed), rtol=1e-4, atol=1e-5)


def test_exact_add_on_a_group_with_k_zero_cli(pool, zeroed, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert run("compress", str(pool[0]), str(zeroed), "-o", str(ckpt), "-k", "8", "--per-adapter", "loadings",
               "-q").returncode == 0
    assert run("remove", str(ckpt), "u0", "-q").returncode == 0
    added = run("add", str(ckpt), str(pool[2]))  # the exact basis update, the default
    assert added.returncode == 0, added.stderr
    assert "added u2 (basis updated" in added.stdout
    out = tmp_path / "u2_back"
    assert run("reconstruct", str(ckpt), "--adapter", "u2", "-o", str(out)).returncode == 0
    torch.testing.assert_close(logits_of(out), logits_of(pool[2]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("center", [False, True])
def test_exact_add_on_a_group_with_k_zero_takes_the_new_basis(pool, zeroed, center):
    share = SHAREModel.from_adapters([pool[0], zeroed], num_components=8, per_adapter="loadings", center=center)
    share.remove_adapter("u0")
    module = _module(share)
    assert share.num_components(module, "lora_B") == 0
    share.add_adapter(pool[2])
    assert share.num_components(module, "lora_B") > 0
    everything = SHAREModel.from_adapters([zeroed, pool[2]], num_components=8, per_adapter="loadings",
                                          center=center)
    for name in ("z1", "u2"):  # both at full rank: exact, as compressing the two at once
        a, b = everything.reconstruct(name), share.reconstruct(name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-4 * float(a[key].abs().max()) + 1e-7)
    # centered, z1's all-zero module has a relative error of inf (rounding over a zero norm) from compression on;
    # the adapter's pooled error after the updates must stay a number (it became NaN: inf * 0 in the bound)
    assert share.stats()["dw_error_max"] < 1e-4


@pytest.mark.parametrize("per_adapter", ["loadings", "core"])
def test_projection_only_add_keeps_the_others_errors(pool, tmp_path, per_adapter):
    share = SHAREModel.from_adapters(pool[:3], num_components=3, dtype="int8", per_adapter=per_adapter)
    share.save_pretrained(tmp_path / "before")
    errors = dict(share.config["stats"]["dw_error"])
    metas = {n: json.loads(json.dumps(share._ckpt.metas[n])) for n in share.adapter_names}
    share.add_adapter(pool[3], update_basis=False)
    share.save_pretrained(tmp_path / "after")
    for name in ("u0", "u1", "u2"):
        assert share.config["stats"]["dw_error"][name] == errors[name]
        assert share._ckpt.metas[name] == metas[name]
        assert "dw_error_is_upper_bound" not in share._ckpt.metas[name]
    before, after = _files(tmp_path / "before"), _files(tmp_path / "after")
    assert {k: v for k, v in after.items() if "u3" not in k} == before
    assert 0 < share.config["stats"]["dw_error"]["u3"] < 1


@pytest.mark.parametrize("dtype, per_adapter", [("int8", "loadings"), ("int8", "core"), ("float32", "auto")])
def test_remove_keeps_sides_that_do_not_shrink_bit_for_bit(pool, tmp_path, dtype, per_adapter):
    share = SHAREModel.from_adapters(pool[:4], num_components=4, dtype=dtype, per_adapter=per_adapter)
    share.save_pretrained(tmp_path / "before")
    errors = dict(share.config["stats"]["dw_error"])
    metas = {n: json.loads(json.dumps(share._ckpt.metas[n])) for n in share.adapter_names}
    ks = {(m, s): share.num_components(m, s) for m in share.modules for s in ("lora_A", "lora_B")}
    share.remove_adapter("u0")
    assert {(m, s): share.num_components(m, s) for m in share.modules for s in ("lora_A", "lora_B")} == ks
    share.save_pretrained(tmp_path / "after")
    before, after = _files(tmp_path / "before"), _files(tmp_path / "after")
    assert after == {k: v for k, v in before.items() if "u0" not in k}  # basis and the others, bit for bit
    for name in ("u1", "u2", "u3"):
        assert share.config["stats"]["dw_error"][name] == errors[name]
        assert share._ckpt.metas[name] == metas[name]
    assert SHAREModel.from_pretrained(tmp_path / "after").adapter_names == ["u1", "u2", "u3"]


def test_mixed_remove_without_a_shrinking_side_changes_no_other_adapter(wide_pool, tmp_path):  # noqa: F811
    share = SHAREModel.from_adapters(wide_pool[:5], max_error=0.2, dtype="mixed")
    assert any(g[s].get("int4", 0) for g in share.config["groups"].values() for s in ("lora_A", "lora_B"))
    true = {n: share.reconstruction_error(n, original_path=p)["overall"] for n, p in zip(share.adapter_names,
                                                                                          wide_pool)}
    stored = dict(share.config["stats"]["dw_error"])
    ks = {(m, s): share.num_components(m, s) for m in share.modules for s in ("lora_A", "lora_B")}
    share.remove_adapter("w0")
    assert {(m, s): share.num_components(m, s) for m in share.modules for s in ("lora_A", "lora_B")} == ks
    for name, src in zip(share.adapter_names, wide_pool[1:5]):
        assert share.reconstruction_error(name, original_path=src)["overall"] == true[name]
        assert share.config["stats"]["dw_error"][name] == stored[name]


def test_remove_refits_only_the_sides_that_shrink(pool, zeroed):
    share = SHAREModel.from_adapters([pool[0], zeroed, pool[2]], num_components=8, per_adapter="loadings")
    module = _module(share)
    assert share.num_components(module, "lora_B") == 8  # u0 and u2 there (z1's dW is 0), 8 elsewhere too
    kept = {k: v.clone() for k, v in share._ckpt.components.items() if not k.startswith(module)}
    loads = {n: {k: v.clone() for k, v in share._ckpt.loadings[n].items() if not k.startswith(module)}
             for n in ("z1", "u2")}
    errors = {n: dict(share._ckpt.metas[n]["dw_error"]) for n in ("z1", "u2")}
    share.remove_adapter("u0")
    assert share.num_components(module, "lora_B") == share.num_components(module, "lora_A") == 4  # u2's alone
    assert all(share.num_components(m, s) == 8 for m in share.modules if m != module for s in ("lora_A", "lora_B"))
    for key, tensor in kept.items():  # the sides that kept their k: stored tensors untouched
        assert torch.equal(share._ckpt.components[key], tensor), key
    for name, tensors in loads.items():
        for key, tensor in tensors.items():
            assert torch.equal(share._ckpt.loadings[name][key], tensor), (name, key)
        for m, err in errors[name].items():
            if m != module:
                assert share._ckpt.metas[name]["dw_error"][m] == err
    a, b = share._factors("u2", module)
    src = SHAREModel.from_adapters([pool[2], pool[3]], num_components=8, per_adapter="loadings")
    a0, b0 = src._factors("u2", module)
    torch.testing.assert_close(b @ a, b0 @ a0, rtol=1e-4, atol=1e-6)


def test_info_after_add_and_remove_on_a_leave_one_out_checkpoint(pool, tmp_path):
    ckpt = tmp_path / "lo"
    assert run("compress", *map(str, pool[:3]), "-o", str(ckpt), "-k", "2", "--leave-one-out", "-q").returncode == 0
    assert run("add", str(ckpt), str(pool[3]), "-q").returncode == 0
    info = run("info", str(ckpt))
    assert info.returncode == 0, info.stderr
    row = next(line for line in info.stdout.splitlines() if line.startswith("u3 "))
    assert row.split()[-1] == "n/a" and "added after compression" in info.stdout
    assert run("info", str(ckpt), "--json").returncode == 0
    assert run("remove", str(ckpt), "u0", "-q").returncode == 0
    stats = json.loads((ckpt / "share_config.json").read_text())["stats"]
    assert set(stats["leave_one_out"]) == {"u1", "u2"}
    text = []
    SHAREModel.from_pretrained(ckpt).summary(print_fn=text.append)
    assert "u0" not in text[0]


def test_summary_does_not_claim_a_stale_achieved_error(pool, tmp_path):
    share = SHAREModel.from_adapters(pool[:3], max_error=0.5)
    achieved = share.config["options"]["allocation"]["achieved_max_error"]
    text = []
    share.summary(print_fn=text.append)
    assert f"(achieved {achieved:.3g})" in text[0]
    share.add_adapter(pool[3], update_basis=False)  # a new random adapter fits the old basis badly
    now = share.stats()["dw_error_max"]
    assert now > 0.5
    text = []
    share.summary(print_fn=text.append)
    assert f"(achieved {achieved:.3g})" not in text[0]
    assert f"achieved {achieved:.3g} at compression" in text[0] and f"{now:.3g} now" in text[0]


@pytest.mark.parametrize("command", ["add", "remove"])
def test_in_place_update_run_from_inside_the_checkpoint(pool, tmp_path, command):
    """`lorashare add . ADAPTER` / `remove . NAME` from inside the checkpoint: the swap moves the working
    directory's folder aside, and the command used to re-read the relative path afterwards and fail (exit 1)
    although the new checkpoint was written, so a retry then failed again on the name."""
    ckpt = tmp_path / "ckpt"
    assert run("compress", *map(str, pool[:3]), "-o", str(ckpt), "-k", "8", "-q").returncode == 0
    args = ("add", ".", str(pool[3])) if command == "add" else ("remove", ".", "u0")
    done = run(*args, "-q", cwd=ckpt)
    assert done.returncode == 0, done.stderr
    names = SHAREModel.from_pretrained(ckpt).adapter_names
    assert names == (["u0", "u1", "u2", "u3"] if command == "add" else ["u1", "u2"])


def test_partial_loading_takes_any_iterable_and_refuses_an_empty_selection(pool, tmp_path):
    ckpt = tmp_path / "ckpt"
    SHAREModel.from_adapters(pool[:3], num_components=4).save_pretrained(ckpt)
    assert SHAREModel.from_pretrained(ckpt, adapters=(n for n in ["u2", "u0"])).adapter_names == ["u0", "u2"]
    with pytest.raises(InvalidArgumentError, match=r"adapters=\[\] selects no adapter.*Fix: pass the names"):
        SHAREModel.from_pretrained(ckpt, adapters=[])


def test_partial_load_says_its_bytes_are_the_loaded_adapters_alone(pool, tmp_path):
    """stats()["bytes"] of a partial load describe a checkpoint of the loaded adapters alone (not the folder's
    files): the summary said nothing of it, so they read as the checkpoint's own figures."""
    ckpt = tmp_path / "ckpt"
    full = SHAREModel.from_adapters(pool[:3], num_components=4)
    written = sum(full.save_pretrained(ckpt).values())
    assert full.stats()["bytes"]["checkpoint"] == written and not full.stats()["bytes"]["loaded_adapters_only"]
    part = SHAREModel.from_pretrained(ckpt, adapters=["u1"])
    b = part.stats()["bytes"]
    assert b["loaded_adapters_only"] and b["adapters_in_checkpoint"] == 3 and b["checkpoint"] < written
    lines = []
    part.summary(print_fn=lines.append)
    assert "these are the 1 loaded adapters' figures (of 3 in the checkpoint)" in lines[0]
