"""Write failures (disk full, permission denied, a file in the way) become one WriteError naming the
path and the fix, leave nothing behind, and reach the command line as one line; stale work folders
of killed saves are tidied by the next save, and nobody else's are touched."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import share_hf._io as io
from share_core.errors import ShareError
from share_hf import WriteError, load_checkpoint, save_checkpoint, write_peft_adapter
from share_torch import SHAREModel
from share_torch.cli import main as lorashare_main
from share_torch.cli import one_line

from ..hf._helpers import make_checkpoint
from ._lab import GOOD, Lab, error_line, snapshot, temp_siblings



def _disk_full_in_safetensors(monkeypatch: pytest.MonkeyPatch, after: int = 1) -> None:
    """safetensors reports ENOSPC as its own error, with the OS message inside."""
    calls = []
    real = io.save_file

    def save_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > after:
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                  'message: "No space left on device" })  (os error 28)')
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(io, "save_file", save_file)


def test_disk_full_in_safetensors_is_a_write_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _disk_full_in_safetensors(monkeypatch)
    with pytest.raises(WriteError) as exc:
        save_checkpoint(make_checkpoint(), tmp_path / "ck")
    message = str(exc.value)
    assert f"cannot write the lorashare checkpoint to {tmp_path / 'ck'}" in message
    assert "No space left" in message and "Fix: free some disk space" in message
    assert exc.value.errno == errno.ENOSPC
    assert isinstance(exc.value, OSError) and isinstance(exc.value, ShareError)
    assert sorted(os.listdir(tmp_path)) == ["hf-cache"]  # no target, no work folder


def test_disk_full_in_json_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(make_checkpoint(seed=1), tmp_path / "ck")
    before = snapshot(tmp_path / "ck")
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "adapter_meta.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(WriteError, match=r"No space left on device \(.*adapter_meta\.json\)\. Fix: free"):
        save_checkpoint(make_checkpoint(seed=2), tmp_path / "ck", overwrite=True)
    monkeypatch.undo()
    assert snapshot(tmp_path / "ck") == before and temp_siblings(tmp_path / "ck") == []


def test_permission_denied_through_the_python_api(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root ignores chmod, so permission denied is injected where the folder is created."""
    share = SHAREModel.from_pretrained(lab.checkpoint)
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if ".tmp-" in self.name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(WriteError, match=r"Permission denied .*Fix: check the folder's permissions"):
        share.save_pretrained(tmp_path / "ck")
    with pytest.raises(WriteError, match=r"cannot write the PEFT adapter to .*Permission denied"):
        share.reconstruct("cola", output_dir=tmp_path / "cola")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["hf-cache"]


def test_a_file_where_a_parent_folder_should_be(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("precious")
    for write in (lambda out: save_checkpoint(make_checkpoint(), out),
                  lambda out: write_peft_adapter(out, config={"peft_type": "LORA"}, tensors={"w": torch.zeros(2, 2)})):
        with pytest.raises(WriteError, match=r"blocker is a file, not a folder\. Fix: choose another output path"):
            write(tmp_path / "blocker" / "deeper" / "out")
    assert (tmp_path / "blocker").read_text() == "precious"


def test_read_only_system_folder_on_the_command_line(lab: Lab, tmp_path: Path, capsys) -> None:
    """/sys refuses new folders even to root: a real EPERM/EROFS from the OS, through cli.main."""
    if not Path("/sys").is_dir():
        pytest.skip("no /sys here")
    out = Path("/sys") / f"lorashare-test-{os.getpid()}"
    try:
        out.mkdir()
    except OSError:
        pass
    else:
        out.rmdir()
        pytest.skip("/sys is writable here")
    code = lorashare_main(["reconstruct", str(lab.checkpoint), "--adapter", "cola", "-o", str(out), "-q"])
    line = error_line(code, capsys.readouterr().err)
    assert f"cannot write the PEFT adapter to {out}" in line and "Fix:" in line
    assert not out.exists()


def test_an_unwrapped_oserror_is_one_line(lab: Lab, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", "/dev/sdz")

    monkeypatch.setattr(SHAREModel, "summary", broken)
    code = lorashare_main(["info", str(lab.checkpoint)])
    line = error_line(code, capsys.readouterr().err)
    assert "Input/output error" in line and "/dev/sdz" in line and "fix: check the path" in line


def test_unexpected_errors_stay_one_line(lab: Lab, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, *args, **kwargs):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(SHAREModel, "summary", broken)
    code = lorashare_main(["info", str(lab.checkpoint)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("lorashare: unexpected error: RuntimeError: first line second line")


def test_problem_lists_are_joined_into_one_line() -> None:
    text = "checkpoint x is damaged (2 problem(s)):\n  - a is missing\n  - b has shape [1]\nFix: restore it."
    assert one_line(text) == "checkpoint x is damaged (2 problem(s)): a is missing; b has shape [1]. Fix: restore it."


def test_warnings_are_one_line_each(lab: Lab, tmp_path: Path, capsys) -> None:
    ckpt = lab.copy("checkpoint", tmp_path / "ckpt")
    (ckpt / "adapters" / "leftover").mkdir()
    assert lorashare_main(["info", str(ckpt), "--json", "-q"]) == 0
    err = capsys.readouterr().err
    assert err == ("lorashare: warning: checkpoint " + str(ckpt) + ": adapters/ holds folders not listed in "
                   "share_config.json (leftover); they are ignored.\n")


# ------------------------------------------------------------------------------ stale work folders


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_save_tidies_only_dead_work_folders_of_this_host(tmp_path: Path) -> None:
    target = tmp_path / "ck"
    save_checkpoint(make_checkpoint(seed=1), target)
    host, dead, alive = io._host_id(), _dead_pid(), os.getpid()
    names = {
        "dead": f".ck.tmp-{host}-{dead}-{'a' * 12}",
        "dead_old": f".ck.old-{host}-{dead}-{'b' * 12}",
        "alive": f".ck.tmp-{host}-{alive}-{'c' * 12}",
        "other_host": f".ck.tmp-{'0' * 8 if host != '0' * 8 else '1' * 8}-{dead}-{'d' * 12}",
        "other_target": f".ck2.tmp-{host}-{dead}-{'e' * 12}",
        "lookalike": f".ck.tmp-{host}-{dead}-notrandom",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "partial.safetensors").write_bytes(b"x")
    (tmp_path / f".ck.tmp-{host}-{dead}-{'f' * 12}").write_text("a file, not a work folder")

    new = make_checkpoint(seed=2)
    save_checkpoint(new, target, overwrite=True)
    left = set(os.listdir(tmp_path))
    assert names["dead"] not in left and names["dead_old"] not in left  # target exists: old copy deleted
    assert {names[k] for k in ("alive", "other_host", "other_target", "lookalike")} <= left
    assert f".ck.tmp-{host}-{dead}-{'f' * 12}" in left
    assert load_checkpoint(target).config == new.config


def test_stale_old_folder_is_restored_when_the_target_is_missing(tmp_path: Path) -> None:
    save_checkpoint(make_checkpoint(seed=1), tmp_path / "elsewhere")
    aside = tmp_path / f".ck.old-{io._host_id()}-{_dead_pid()}-{'a' * 12}"
    os.rename(tmp_path / "elsewhere", aside)
    before = snapshot(aside)
    restored = io.clean_stale_siblings(tmp_path / "ck")
    assert restored == [aside] and snapshot(tmp_path / "ck") == before and not aside.exists()


def test_write_error_keeps_errno_and_filename() -> None:
    err = io.write_error(OSError(errno.EROFS, "Read-only file system", "/ro/x"), what="checkpoint", target=Path("/ro"))
    assert (err.errno, err.filename) == (errno.EROFS, "/ro/x")
    assert str(err) == ("cannot write the checkpoint to /ro: Read-only file system (/ro/x). "
                        "Fix: the file system is read-only: choose another output path.")


def test_good_saves_leave_no_work_folders(lab: Lab, tmp_path: Path) -> None:
    share = SHAREModel.from_pretrained(lab.checkpoint)
    share.save_pretrained(tmp_path / "ckpt")
    share.save_pretrained(tmp_path / "ckpt", overwrite=True)
    for name in GOOD:
        share.reconstruct(name, output_dir=tmp_path / "out" / name)
        share.reconstruct(name, output_dir=tmp_path / "out" / name, overwrite=True)
    assert temp_siblings(tmp_path / "ckpt") == []
    assert sorted(os.listdir(tmp_path / "out")) == sorted(GOOD)
