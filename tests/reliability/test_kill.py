"""Atomic writes under SIGKILL: a ``lorashare compress --overwrite`` killed while it writes over an
existing checkpoint leaves the old checkpoint whole, nothing partial under the target's name, and
work folders beside it that the next save recognizes and tidies.

The child is a real ``share_torch.cli.main`` run with real argv. To catch it mid-write it is
slowed down from inside (``_kill_child.py`` wraps share_hf's file writer to pause after each file
and report progress to a file); the parent waits for the reported stage and sends SIGKILL. Nothing
in lorashare itself has a test hook.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from share_core.errors import CheckpointError, CheckpointExistsError
from share_hf import load_checkpoint
from share_torch import SHAREModel

from ._lab import GOOD, Lab, cli_env, snapshot, temp_siblings

CHILD = Path(__file__).with_name("_kill_child.py")
REPO = Path(__file__).resolve().parents[2]
SIBLING = re.compile(r"\.ckpt\.(tmp|old)-[0-9a-f]{8}-(\d+)-[0-9a-f]{12}")



def _kill_during(mode: str, lab: Lab, tmp_path: Path, *, wait_for: str, count: int = 1) -> tuple[Path, dict, int]:
    """Copy lab's checkpoint (k=3) to tmp_path/ckpt, start ``compress -k 5 --overwrite`` onto it in
    a child, SIGKILL the child once `wait_for` appeared `count` times in its progress file."""
    target = lab.copy("checkpoint", tmp_path / "ckpt")
    before = snapshot(target)
    progress = tmp_path / "progress.log"
    progress.touch()
    cache = tmp_path / "child-cache"
    cache.mkdir()
    argv = ["compress", *(str(lab.adapters[n]) for n in GOOD), "-o", str(target), "-k", "5", "--overwrite", "-q"]
    child = subprocess.Popen([sys.executable, str(CHILD), mode, str(progress), *argv], cwd=REPO, env=cli_env(cache),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while progress.read_text().count(wait_for) < count:
            if child.poll() is not None:
                pytest.fail(f"the child ended before {wait_for!r} (exit {child.returncode}):\n{child.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {wait_for!r} from the child in time; progress:\n{progress.read_text()}")
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    return target, before, child.pid


def _siblings(target: Path) -> dict[str, int]:
    """Work folders beside `target`: name -> pid of the process that made it."""
    out = {}
    for name in temp_siblings(target):
        match = SIBLING.fullmatch(name)
        assert match, f"unrecognizable work folder {name}"
        out[name] = int(match[2])
    return out


def _k(target: Path) -> int:
    return json.loads((target / "share_config.json").read_text())["options"]["num_components"]


def test_killed_mid_write_keeps_the_old_checkpoint(lab: Lab, tmp_path: Path) -> None:
    target, before, pid = _kill_during("mid-write", lab, tmp_path, wait_for="wrote ", count=2)
    # The old checkpoint, byte for byte, and it loads.
    assert snapshot(target) == before
    assert _k(target) == 3 and SHAREModel.from_pretrained(target).adapter_names == list(GOOD)
    # Nothing else under the target's name; the partial write sits in a recognizable work folder.
    siblings = _siblings(target)
    assert [n.split("-")[0] for n in siblings] == [".ckpt.tmp"] and set(siblings.values()) == {pid}
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt", *siblings, "progress.log", "child-cache", "hf-cache"])
    partial = tmp_path / next(iter(siblings))
    assert (partial / "share_config.json").is_file()  # it really was caught mid-way
    assert not all((partial / "adapters" / n / "loadings.safetensors").is_file() for n in GOOD)

    # The next save tidies the dead child's work folder and writes the new checkpoint.
    SHAREModel.from_adapters([lab.adapters[n] for n in GOOD], num_components=5).save_pretrained(target, overwrite=True)
    assert _siblings(target) == {}
    assert _k(target) == 5 and SHAREModel.from_pretrained(target).adapter_names == list(GOOD)


def test_killed_after_the_atomic_exchange_has_the_new_checkpoint(lab: Lab, tmp_path: Path) -> None:
    from share_hf import _io

    if _io._renameat2 is None:
        pytest.skip("this OS has no renameat2(RENAME_EXCHANGE)")
    target, before, pid = _kill_during("after-exchange", lab, tmp_path, wait_for="exchanged")
    assert _k(target) == 5 and SHAREModel.from_pretrained(target).adapter_names == list(GOOD)
    siblings = _siblings(target)
    assert list(siblings.values()) == [pid]
    assert snapshot(tmp_path / next(iter(siblings))) == before  # the old one, not yet deleted
    SHAREModel.from_pretrained(target).save_pretrained(target, overwrite=True)
    assert _siblings(target) == {}


def test_killed_between_the_two_renames_is_recovered(lab: Lab, tmp_path: Path) -> None:
    """Where renameat2 is missing, the old checkpoint is renamed aside before the new one moves in;
    a kill in between leaves no folder at the target, and the next save puts the old one back."""
    target, before, pid = _kill_during("mid-swap-fallback", lab, tmp_path, wait_for="renamed aside")
    assert not target.exists()
    siblings = _siblings(target)
    assert sorted(n.split("-")[0] for n in siblings) == [".ckpt.old", ".ckpt.tmp"]
    with pytest.raises(CheckpointError, match=r"holds the checkpoint a save was replacing when it was interrupted"):
        load_checkpoint(target)
    # Any save to the same path first restores it: here one without overwrite, which then refuses.
    with pytest.raises(CheckpointExistsError, match="already exists"):
        SHAREModel.from_pretrained(tmp_path / next(n for n in siblings if ".old-" in n)).save_pretrained(target)
    assert snapshot(target) == before and _siblings(target) == {}
    assert SHAREModel.from_pretrained(target).adapter_names == list(GOOD)
