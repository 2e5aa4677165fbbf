"""Integrity: ``SHAREModel.from_pretrained`` checks a checkpoint against its config (groups,
shapes, dtypes, adapters listed) and reports every problem at once; a config edited by hand loads
with a warning when it only has keys this version does not know."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from share_core.errors import CheckpointError
from share_torch import SHAREModel
from share_torch.cli import main as lorashare_main

from ._lab import GOOD, Q0, V1, Lab, edit_checkpoint_tensors, edit_json, edit_meta, edit_tensors, error_line



def test_every_problem_is_reported_at_once(lab: Lab, tmp_path: Path, capsys) -> None:
    ckpt = lab.copy("checkpoint", tmp_path / "ckpt")
    edit_checkpoint_tensors(ckpt, "shared_components.safetensors",  # one basis in the wrong dtype, one gone
                 lambda t: {k: (v.double() if k == f"{Q0}.lora_A.basis" else v) for k, v in t.items()
                            if k != f"{V1}.lora_B.basis"})
    edit_checkpoint_tensors(ckpt, "adapters/cola/loadings.safetensors",  # a loading of the wrong shape
                 lambda t: t | {f"{V1}.lora_A": torch.zeros(3, 7)})
    edit_meta(ckpt, "mrpc", lambda m: m["scales"].update({V1: "two"}))
    edit_json(ckpt / "share_config.json", lambda c: c["groups"][Q0]["lora_B"].update(centered="no"))
    shutil.rmtree(ckpt / "adapters" / "sst2")

    with pytest.raises(CheckpointError) as exc:
        SHAREModel.from_pretrained(ckpt)
    message = str(exc.value)
    expected = [
        f"group '{Q0}': lora_B.centered must be true or false, found 'no'",
        f"shared_components.safetensors lacks tensor '{V1}.lora_B.basis' (expected shape [32, 3])",
        "shared_components.safetensors: 1 tensor(s) stored as F64, expected F32 (float32, the options.dtype of "
        f"share_config.json) (e.g. '{Q0}.lora_A.basis')",
        "adapter 'sst2' is listed in share_config.json but adapters/sst2/ is missing",
        f"adapters/cola/loadings.safetensors: tensor '{V1}.lora_A' has shape [3, 7], but share_config.json and "
        "the adapter metadata give [3, 4]",
        f"adapters/mrpc/adapter_meta.json: scale of '{V1}' must be a finite non-zero number, found 'two'",
    ]
    for problem in expected:
        assert problem in message, problem
    assert f"({len(expected)} problem(s))" in message and message.rstrip().endswith("or restore its files.")

    # The command line says the same, on one line.
    line = error_line(lorashare_main(["info", str(ckpt)]), capsys.readouterr().err)
    assert all(problem in line for problem in expected) and f"({len(expected)} problem(s))" in line


def test_dtypes_are_checked_against_options_dtype(lab: Lab, tmp_path: Path) -> None:
    ckpt = lab.copy("checkpoint", tmp_path / "ckpt")
    edit_json(ckpt / "share_config.json", lambda c: c["options"].update(dtype="bfloat16"))
    with pytest.raises(CheckpointError) as exc:
        SHAREModel.from_pretrained(ckpt)
    assert "shared_components.safetensors: 8 tensor(s) stored as F32, expected BF16 (bfloat16" in str(exc.value)
    for name in GOOD:
        assert f"adapters/{name}/loadings.safetensors: 8 tensor(s) stored as F32, expected BF16" in str(exc.value)


def test_unknown_keys_from_a_newer_version_load_with_a_warning(lab: Lab, tmp_path: Path, capsys) -> None:
    ckpt = lab.copy("checkpoint", tmp_path / "ckpt")
    edit_json(ckpt / "share_config.json", lambda c: c.update(quantization={"bits": 4}, created_by="lorashare 9"))
    with pytest.warns(UserWarning, match=r"keys this lorashare does not know \(created_by, quantization\)"):
        share = SHAREModel.from_pretrained(ckpt)
    reference = SHAREModel.from_pretrained(lab.checkpoint)
    for name in GOOD:
        got, want = share.reconstruct_state_dict(name), reference.reconstruct_state_dict(name)
        assert all(torch.equal(got[k], want[k]) for k in want)

    assert lorashare_main(["info", str(ckpt), "-q"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lorashare: warning: checkpoint ") and "quantization" in err


@pytest.mark.parametrize("key", ["format_version", "method", "adapters", "groups", "options", "stats"])
def test_missing_required_config_keys_are_errors(lab: Lab, tmp_path: Path, key: str) -> None:
    ckpt = lab.copy("checkpoint", tmp_path / "ckpt")
    edit_json(ckpt / "share_config.json", lambda c: c.pop(key))
    with pytest.raises(CheckpointError, match=f"share_config.json lacks the required key '{key}'") as exc:
        SHAREModel.from_pretrained(ckpt)
    assert "(1 problem(s))" in str(exc.value)  # not one more per tensor that can no longer be judged


@pytest.mark.parametrize("key", ["peft_config", "ranks", "scales", "dtype", "original_bytes", "dw_error"])
def test_missing_required_meta_keys_are_errors(lab: Lab, tmp_path: Path, key: str) -> None:
    ckpt = lab.copy("checkpoint", tmp_path / "ckpt")
    edit_json(ckpt / "adapters" / "cola" / "adapter_meta.json", lambda m: m.pop(key))
    with pytest.raises(CheckpointError, match=f"adapters/cola/adapter_meta.json lacks the required key '{key}'"):
        SHAREModel.from_pretrained(ckpt)


def test_a_clean_checkpoint_loads_without_warnings(lab: Lab) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        share = SHAREModel.from_pretrained(lab.checkpoint)
    assert share.adapter_names == list(GOOD)
    assert json.loads((lab.checkpoint / "share_config.json").read_text())["options"]["dtype"] == "float32"
