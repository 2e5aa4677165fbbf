"""The real `lorashare` command in a subprocess: compress, info, reconstruct, errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import base_bert, logits_of, save_adapter

LORASHARE = Path(sys.executable).parent / "lorashare"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    env.pop("LORASHARE_DEBUG", None)
    return subprocess.run([str(LORASHARE), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture
def adapters(tmp_path: Path) -> list[Path]:
    return [save_adapter(tmp_path / name, seed=i, r=4, alpha=8) for i, name in enumerate(["alpha", "beta", "gamma"])]


def test_compress_info_reconstruct_end_to_end(adapters, tmp_path):
    ckpt = tmp_path / "ckpt"
    done = run("compress", *map(str, adapters), "-o", str(ckpt), "-k", "64")
    assert done.returncode == 0, done.stderr
    assert "3 adapters" in done.stdout and f"saved checkpoint to {ckpt}" in done.stdout
    assert (ckpt / "share_config.json").is_file() and (ckpt / "adapters" / "beta" / "loadings.safetensors").is_file()

    info = run("info", str(ckpt))
    assert info.returncode == 0, info.stderr
    assert "alpha" in info.stdout and "smaller" in info.stdout
    as_json = json.loads(run("info", str(ckpt), "--json").stdout)
    assert as_json["adapters"] == ["alpha", "beta", "gamma"]
    assert as_json["bytes"]["checkpoint"] == sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert as_json["dw_error_max"] < 1e-5

    out = tmp_path / "restored"
    rec = run("reconstruct", str(ckpt), "--all", "-o", str(out))
    assert rec.returncode == 0, rec.stderr
    for src in adapters:
        assert f"{src.name} -> {out / src.name}" in rec.stdout
        torch.testing.assert_close(logits_of(out / src.name), logits_of(src), rtol=1e-4, atol=1e-5)

    one = run("reconstruct", str(ckpt), "--adapter", "beta", "-o", str(tmp_path / "beta_only"))
    assert one.returncode == 0, one.stderr
    assert set(load_file(tmp_path / "beta_only" / "adapter_model.safetensors")) == set(
        load_file(adapters[1] / "adapter_model.safetensors"))


def test_names_auto_k_and_quiet(adapters, tmp_path):
    ckpt = tmp_path / "ckpt"
    done = run("compress", *map(str, adapters), "-o", str(ckpt), "-k", "auto", "--variance", "0.9",
               "--names", "x", "y", "z", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # quiet: no logs, no progress
    config = json.loads((ckpt / "share_config.json").read_text())
    assert config["adapters"] == ["x", "y", "z"]
    assert config["options"]["num_components"] == "auto"


@pytest.mark.parametrize("args, message", [
    (["-k", "0"], "num_components"),
    (["-k", "two"], "positive integer or 'auto'"),
    (["-k", "auto", "--variance", "1.5"], "variance_threshold"),
    (["--names", "only_one"], "--names gives 1 names for 3 adapters"),
    (["--device", "cuda:0"], "CUDA"),
    (["--target-ratio", "1000"], "target_ratio=1000 asks for at most"),
    (["--max-error", "2"], "max_error must be a number in (0, 1)"),
    (["--refine-steps", "-1"], "refine_steps must be an integer >= 0"),
    (["--center", "--per-adapter", "core"], "need(s) uncentered bases"),
])
def test_bad_compress_options_exit_1_with_one_line(adapters, tmp_path, args, message):
    if "cuda:0" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present, so --device cuda is valid here")
    ckpt = tmp_path / "ckpt"
    done = run("compress", *map(str, adapters), "-o", str(ckpt), *args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("lorashare: error:") and message in lines[-1]
    assert "Traceback" not in done.stderr
    assert not ckpt.exists()


def test_quality_options_from_the_shell(adapters, tmp_path):
    """--target-ratio, --factor-form, --per-adapter, --refine-steps and --leave-one-out reach the checkpoint."""
    ckpt = tmp_path / "ckpt"
    done = run("compress", *map(str, adapters), "-o", str(ckpt), "--target-ratio", "1.5", "--factor-form",
               "balanced", "--per-adapter", "auto", "--refine-steps", "1", "--leave-one-out")
    assert done.returncode == 0, done.stderr
    assert "leave-one-out" in done.stdout and "target ratio 1.5" in done.stdout
    config = json.loads((ckpt / "share_config.json").read_text())
    assert config["options"] | {"target_ratio": 1.5, "factor_form": "balanced", "per_adapter": "auto",
                                "refine_steps": 1} == config["options"]
    written = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert written <= config["stats"]["original_bytes"] / 1.5
    assert set(config["stats"]["leave_one_out"]) == {"alpha", "beta", "gamma"}
    out = tmp_path / "restored"
    assert run("reconstruct", str(ckpt), "--all", "-o", str(out)).returncode == 0
    for src in adapters:  # PEFT loads each one onto the base model
        assert logits_of(out / src.name).shape == logits_of(src).shape
    both = run("compress", *map(str, adapters), "-o", str(tmp_path / "x"), "--target-ratio", "2", "--max-error", "0.1")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_existing_output_is_not_clobbered(adapters, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert run("compress", *map(str, adapters), "-o", str(ckpt), "-k", "2").returncode == 0
    before = (ckpt / "share_config.json").read_bytes()
    again = run("compress", *map(str, adapters), "-o", str(ckpt), "-k", "3")
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert (ckpt / "share_config.json").read_bytes() == before
    assert run("compress", *map(str, adapters), "-o", str(ckpt), "-k", "3", "--overwrite").returncode == 0
    assert json.loads((ckpt / "share_config.json").read_text())["options"]["num_components"] == 3


def test_reconstruct_errors(adapters, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert run("compress", *map(str, adapters), "-o", str(ckpt)).returncode == 0
    unknown = run("reconstruct", str(ckpt), "--adapter", "delta", "-o", str(tmp_path / "d"))
    assert unknown.returncode == 1 and "delta" in unknown.stderr and "alpha" in unknown.stderr
    assert not (tmp_path / "d").exists()
    neither = run("reconstruct", str(ckpt), "-o", str(tmp_path / "d"))
    assert neither.returncode == 1 and "--adapter NAME or --all" in neither.stderr
    missing = run("info", str(tmp_path / "no_such_checkpoint"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_usage_errors_exit_2_and_debug_shows_traceback(adapters, tmp_path):
    assert run().returncode == 2
    assert run("compress", str(adapters[0])).returncode == 2  # no -o
    debug = run("--debug", "info", str(tmp_path / "nothing"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert run("--version").stdout.startswith("lorashare ")


def test_add_and_remove_update_a_checkpoint(adapters, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert run("compress", *map(str, adapters[:2]), "-o", str(ckpt), "-k", "64").returncode == 0
    added = run("add", str(ckpt), str(adapters[2]), "-q")
    assert added.returncode == 0, added.stderr
    assert "added gamma (basis updated" in added.stdout and "holds 3 adapters" in added.stdout
    assert json.loads((ckpt / "share_config.json").read_text())["adapters"] == ["alpha", "beta", "gamma"]
    out = tmp_path / "restored_gamma"
    assert run("reconstruct", str(ckpt), "--adapter", "gamma", "-o", str(out)).returncode == 0
    torch.testing.assert_close(logits_of(out), logits_of(adapters[2]), rtol=1e-4, atol=1e-5)

    twice = run("add", str(ckpt), str(adapters[2]))
    assert twice.returncode == 1 and "already holds" in twice.stderr

    elsewhere = tmp_path / "smaller"
    removed = run("remove", str(ckpt), "alpha", "-o", str(elsewhere))
    assert removed.returncode == 0, removed.stderr
    assert json.loads((elsewhere / "share_config.json").read_text())["adapters"] == ["beta", "gamma"]
    assert json.loads((ckpt / "share_config.json").read_text())["adapters"] == ["alpha", "beta", "gamma"]
    gone = run("remove", str(ckpt), "nobody")
    assert gone.returncode == 1 and "nobody" in gone.stderr
