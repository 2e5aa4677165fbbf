"""Checkpoint save/load: round trip, byte counts, partial loads, integrity errors, atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import share_hf._io as io
import share_hf.checkpoint as checkpoint_module
from share_hf import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointExistsError,
    UnknownAdapterError,
    checkpoint_file_bytes,
    checkpoint_nbytes,
    load_checkpoint,
    save_checkpoint,
    write_peft_adapter,
)

from ._helpers import MODULES, assert_same_tensors, make_checkpoint, read_tensors

Q, V = list(MODULES)


def assert_same_checkpoint(got, want) -> None:
    assert got.config == want.config
    assert_same_tensors(got.components, want.components)
    assert sorted(got.loadings) == sorted(want.loadings)
    for name in want.loadings:
        assert_same_tensors(got.loadings[name], want.loadings[name])
        assert_same_tensors(got.heads[name], want.heads.get(name, {}))
        assert got.metas[name] == want.metas[name]


def test_round_trip_keeps_tensors_dtypes_and_json(tmp_path: Path) -> None:
    ckpt = make_checkpoint(dtypes={"sst2": torch.bfloat16, "cola": torch.float16, "mrpc": torch.float32})
    save_checkpoint(ckpt, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")
    assert_same_checkpoint(loaded, ckpt)
    assert loaded.path == tmp_path / "ck"
    assert loaded.loadings["sst2"][f"{Q}.lora_A"].dtype == torch.bfloat16
    assert loaded.heads["sst2"]["base_model.model.classifier.weight"].dtype == torch.bfloat16


def test_layout_on_disk(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    files = sorted(p.relative_to(tmp_path / "ck").as_posix() for p in (tmp_path / "ck").rglob("*") if p.is_file())
    assert files == [
        "adapters/cola/adapter_meta.json", "adapters/cola/loadings.safetensors",
        "adapters/mrpc/adapter_meta.json", "adapters/mrpc/loadings.safetensors",
        "adapters/sst2/adapter_meta.json", "adapters/sst2/classifier_head.safetensors",
        "adapters/sst2/loadings.safetensors",
        "share_config.json", "shared_components.safetensors",
    ]  # no head file where an adapter has no carried tensors
    with safe_open(str(tmp_path / "ck" / "shared_components.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted([f"{Q}.lora_A.basis", f"{Q}.lora_A.mean", f"{Q}.lora_B.basis",
                                           f"{V}.lora_A.basis", f"{V}.lora_B.basis"])
    # make_checkpoint() is a format-1 checkpoint: still valid, written and read as it is
    assert json.loads((tmp_path / "ck" / "share_config.json").read_text())["format_version"] == 1 < FORMAT_VERSION


def test_byte_counts_agree_with_the_files(tmp_path: Path) -> None:
    ckpt = make_checkpoint()
    predicted = checkpoint_nbytes(ckpt)
    written = save_checkpoint(ckpt, tmp_path / "ck")
    on_disk = {p.relative_to(tmp_path / "ck").as_posix(): p.stat().st_size
               for p in (tmp_path / "ck").rglob("*") if p.is_file()}
    assert written == on_disk == predicted == checkpoint_file_bytes(tmp_path / "ck")
    (tmp_path / "ck" / "README.md").write_text("model card")
    assert checkpoint_file_bytes(tmp_path / "ck") == on_disk  # only the layout counts


def test_partial_load_reads_only_the_asked_adapters(tmp_path: Path) -> None:
    ckpt = make_checkpoint()
    save_checkpoint(ckpt, tmp_path / "ck")
    shutil.rmtree(tmp_path / "ck" / "adapters" / "sst2")
    (tmp_path / "ck" / "adapters" / "mrpc" / "loadings.safetensors").write_bytes(b"garbage")
    part = load_checkpoint(tmp_path / "ck", adapters=["cola"])
    assert list(part.loadings) == list(part.metas) == list(part.heads) == ["cola"]
    assert_same_tensors(part.loadings["cola"], ckpt.loadings["cola"])
    assert part.config["adapters"] == ["sst2", "cola", "mrpc"]
    with pytest.raises(CheckpointError) as exc:  # the full load sees both damages
        load_checkpoint(tmp_path / "ck")
    assert "'sst2' is listed in share_config.json but adapters/sst2/ is missing" in str(exc.value)
    assert "mrpc/loadings.safetensors is not a readable safetensors file" in str(exc.value)


def test_unknown_adapter_lists_what_exists(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    with pytest.raises(UnknownAdapterError, match=r"no adapter 'qqp'; it holds 3: sst2, cola, mrpc") as exc:
        load_checkpoint(tmp_path / "ck", adapters=["cola", "qqp"])
    assert isinstance(exc.value, KeyError)


def test_several_integrity_problems_in_one_error(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    ck = tmp_path / "ck"
    comps = read_tensors(ck / "shared_components.safetensors")
    del comps[f"{V}.lora_B.basis"]  # a group without its basis
    comps[f"{Q}.lora_B.basis"] = torch.zeros(16, 5)  # wrong k
    comps["stray.lora_A.basis"] = torch.zeros(2, 2)
    save_file(comps, str(ck / "shared_components.safetensors"))
    meta = json.loads((ck / "adapters/cola/adapter_meta.json").read_text())
    meta["ranks"][Q] = 7  # loadings are (k, 6): now disagree
    (ck / "adapters/cola/adapter_meta.json").write_text(json.dumps(meta))
    (ck / "adapters/mrpc/adapter_meta.json").unlink()
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(ck)
    msg = str(exc.value)
    assert "(6 problem(s))" in msg
    assert f"shared_components.safetensors lacks tensor '{V}.lora_B.basis' (expected shape [32, 2])" in msg
    assert f"'{Q}.lora_B.basis' has shape [16, 5], but share_config.json and the adapter metadata give [16, 2]" in msg
    assert "holds tensor 'stray.lora_A.basis', which share_config.json does not describe" in msg
    assert f"adapters/cola/loadings.safetensors: tensor '{Q}.lora_A' has shape [3, 6]" in msg
    assert f"'{Q}.lora_B' has shape [2, 6]" in msg
    assert "mrpc/adapter_meta.json is missing" in msg
    assert "Fix:" in msg


def test_missing_and_malformed_config_keys_are_listed(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    path = tmp_path / "ck" / "share_config.json"
    config = json.loads(path.read_text())
    del config["method"]
    config["groups"][Q]["lora_A"]["k"] = "three"
    del config["groups"][V]["lora_B"]
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "ck")
    msg = str(exc.value)
    assert "share_config.json lacks the required key 'method'" in msg
    assert f"group '{Q}': lora_A.k must be an integer >= 0, found 'three'" in msg
    assert f"group '{V}' lacks 'lora_B'" in msg
    assert "(3 problem(s))" in msg  # tensors of the malformed groups are not reported twice


def test_unknown_config_key_warns_and_still_loads(tmp_path: Path) -> None:
    ckpt = make_checkpoint()
    save_checkpoint(ckpt, tmp_path / "ck")
    path = tmp_path / "ck" / "share_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"created_by_future": 1}))
    with pytest.warns(UserWarning, match="keys this lorashare does not know.*created_by_future"):
        loaded = load_checkpoint(tmp_path / "ck")
    assert_same_tensors(loaded.components, ckpt.components)


def test_stray_adapter_folder_warns(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    (tmp_path / "ck" / "adapters" / "old").mkdir()
    with pytest.warns(UserWarning, match=r"not listed in share_config.json \(old\)"):
        load_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 99])
def test_newer_format_version(tmp_path: Path, version: int) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    path = tmp_path / "ck" / "share_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"format_version": version}))
    with pytest.raises(CheckpointError, match=f"format {version}, written by a newer lorashare.*upgrade"):
        load_checkpoint(tmp_path / "ck")


def test_bad_format_version_and_method(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    path = tmp_path / "ck" / "share_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"format_version": "1", "method": "ties"}))
    with pytest.raises(CheckpointError, match=r"format_version must be a positive integer, found '1'(.|\n)*method must be 'share'"):
        load_checkpoint(tmp_path / "ck")


def test_corrupt_json_is_named(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    (tmp_path / "ck" / "share_config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"share_config\.json is not valid JSON"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(make_checkpoint(), tmp_path / "ck2")
    (tmp_path / "ck2" / "adapters" / "cola" / "adapter_meta.json").write_text("[1,")
    with pytest.raises(CheckpointError, match=r"cola/adapter_meta\.json is not valid JSON"):
        load_checkpoint(tmp_path / "ck2")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no share_config.json, so it is not a lorashare checkpoint"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="neither an existing folder nor a Hub id"):
        load_checkpoint(tmp_path / "missing" / "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="found a file"):
        load_checkpoint(tmp_path / "file")


# ------------------------------------------------------------------------------ saving


def test_save_refuses_an_inconsistent_checkpoint_and_writes_nothing(tmp_path: Path) -> None:
    ckpt = make_checkpoint()
    ckpt.loadings["cola"][f"{Q}.lora_A"] = torch.zeros(4, 6)
    del ckpt.metas["mrpc"]
    with pytest.raises(CheckpointError) as exc:
        save_checkpoint(ckpt, tmp_path / "ck")
    assert "refusing to save an inconsistent checkpoint (2 problem(s))" in str(exc.value)
    assert "'mrpc' is listed in share_config.json but has no loadings or meta" in str(exc.value)
    assert os.listdir(tmp_path) == ["hf-cache"]


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/abs"])
def test_save_refuses_names_that_escape_the_folder(tmp_path: Path, name: str) -> None:
    ckpt = make_checkpoint(names=("ok", name))
    with pytest.raises(CheckpointError, match="would escape|outside|absolute|path separator"):
        save_checkpoint(ckpt, tmp_path / "out" / "ck")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()


def test_existing_target_needs_overwrite(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(seed=1), tmp_path / "ck")
    with pytest.raises(CheckpointExistsError, match=r"already exists.*overwrite=True \(--overwrite"):
        save_checkpoint(make_checkpoint(seed=2), tmp_path / "ck")
    assert_same_checkpoint(load_checkpoint(tmp_path / "ck"), make_checkpoint(seed=1))


def test_overwrite_replaces_the_whole_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(names=("a", "b", "c")), tmp_path / "ck")
    new = make_checkpoint(names=("x", "y"), seed=3)
    save_checkpoint(new, tmp_path / "ck", overwrite=True)
    assert sorted(os.listdir(tmp_path / "ck" / "adapters")) == ["x", "y"]  # no stale adapters
    assert_same_checkpoint(load_checkpoint(tmp_path / "ck"), new)
    assert sorted(os.listdir(tmp_path)) == ["ck", "hf-cache"]  # nothing left beside it


def test_target_that_is_a_file_or_a_foreign_folder_is_kept(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(CheckpointExistsError, match="a file"):
            save_checkpoint(make_checkpoint(), tmp_path / "file", overwrite=overwrite)
    assert (tmp_path / "file").read_text() == "precious"
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(CheckpointExistsError, match="does not look like a lorashare checkpoint"):
        save_checkpoint(make_checkpoint(), tmp_path / "home", overwrite=True)
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"


def test_empty_existing_folder_may_be_overwritten(tmp_path: Path) -> None:
    (tmp_path / "ck").mkdir()
    with pytest.raises(CheckpointExistsError):
        save_checkpoint(make_checkpoint(), tmp_path / "ck")
    save_checkpoint(make_checkpoint(), tmp_path / "ck", overwrite=True)
    assert (tmp_path / "ck" / "share_config.json").is_file()


def _fail_on_nth_save(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    calls = []
    real = checkpoint_module.save_safetensors

    def flaky(path, tensors):
        calls.append(path)
        if len(calls) == n:
            raise OSError("disk full (injected)")
        real(path, tensors)

    monkeypatch.setattr(checkpoint_module, "save_safetensors", flaky)


def test_failure_mid_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_on_nth_save(monkeypatch, 3)
    with pytest.raises(OSError, match="injected"):
        save_checkpoint(make_checkpoint(), tmp_path / "ck")
    assert sorted(os.listdir(tmp_path)) == ["hf-cache"]  # no target, no hidden temp folder


def test_failure_mid_overwrite_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = make_checkpoint(seed=1)
    save_checkpoint(old, tmp_path / "ck")
    _fail_on_nth_save(monkeypatch, 4)
    with pytest.raises(OSError, match="injected"):
        save_checkpoint(make_checkpoint(seed=2), tmp_path / "ck", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ck", "hf-cache"]
    assert_same_checkpoint(load_checkpoint(tmp_path / "ck"), old)


def test_failure_while_swapping_puts_the_old_checkpoint_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = make_checkpoint(seed=1)
    save_checkpoint(old, tmp_path / "ck")
    real_rename = os.rename
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)  # the two-rename path (no renameat2)

    def rename(src, dst):
        if ".tmp-" in os.fspath(src):  # the new folder moving into place
            raise OSError("rename failed (injected)")
        real_rename(src, dst)

    monkeypatch.setattr(io.os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        save_checkpoint(make_checkpoint(seed=2), tmp_path / "ck", overwrite=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ck", "hf-cache"]
    assert_same_checkpoint(load_checkpoint(tmp_path / "ck"), old)


def test_keyboard_interrupt_mid_save_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(path, tensors):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(make_checkpoint(), tmp_path / "ck")
    assert sorted(os.listdir(tmp_path)) == ["hf-cache"]


def test_views_and_shared_tensors_are_saved(tmp_path: Path) -> None:
    ckpt = make_checkpoint()
    shared = torch.randn(3, 6)
    whole = torch.randn(6, 4)
    ckpt.loadings["cola"][f"{Q}.lora_A"] = shared  # one tensor under two keys
    ckpt.loadings["cola"][f"{V}.lora_A"] = shared
    ckpt.loadings["cola"][f"{Q}.lora_B"] = whole.T[:2]  # a non-contiguous view
    ckpt.loadings["cola"][f"{V}.lora_B"] = whole.T[1:3]  # overlapping the first
    save_checkpoint(ckpt, tmp_path / "ck")
    got = load_checkpoint(tmp_path / "ck", adapters=["cola"]).loadings["cola"]
    assert_same_tensors(got, ckpt.loadings["cola"])


def test_warnings_are_not_raised_for_a_clean_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(), tmp_path / "ck")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_tensor_files_get_the_same_mode_as_the_json_beside_them(tmp_path: Path, umask: int) -> None:
    """safetensors creates its files 0600 whatever the umask: a checkpoint written for a team would have
    readable JSON and unreadable tensors. Every file now gets 0666 minus the umask."""
    old = os.umask(umask)
    try:
        save_checkpoint(make_checkpoint(), tmp_path / "ck")
        write_peft_adapter(tmp_path / "peft", config={"peft_type": "LORA"},
                           tensors={"x.lora_A.weight": torch.zeros(2, 3)})
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "ck").rglob("*") if p.is_file()] + list((tmp_path / "peft").iterdir())
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o666 & ~umask}, modes
