"""Real parts for the reliability tests: tiny PEFT adapters and a checkpoint, built once, copied
for each bad input; the real ``lorashare`` command; and checks shared by the test files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..hf._helpers import peft_model, read_tensors, save_adapter

LORASHARE = Path(sys.executable).parent / "lorashare"
GOOD = ("sst2", "cola", "mrpc")
PREFIX = "base_model.model.bert.encoder.layer"
Q0 = f"{PREFIX}.0.attention.self.query"
V1 = f"{PREFIX}.1.attention.self.value"
HEAD = "base_model.model.classifier.weight"


@dataclass(frozen=True)
class Lab:
    """Pristine inputs; tests copy them (:meth:`copy`) and never change these."""

    root: Path
    adapters: dict[str, Path]  # the three good adapters, plus "query_only" and "sst2_bin"
    checkpoint: Path  # the three good adapters compressed with SHAREModel, k=3

    def copy(self, what: str, dest: Path) -> Path:
        src = self.checkpoint if what == "checkpoint" else self.adapters[what]
        shutil.copytree(src, dest)
        return dest


def build_lab(root: Path) -> Lab:
    """Adapters saved by PEFT itself on a tiny random BERT, and a checkpoint of three of them."""
    from share_torch import SHAREModel

    adapters = {name: save_adapter(root / "adapters" / name, seed=i, r=4, alpha=8) for i, name in enumerate(GOOD)}
    adapters["query_only"] = save_adapter(root / "adapters" / "query_only", seed=7, r=4, target_modules=["query"])
    # The same adapter as sst2 (same seed), saved as a pickle by PEFT: an honest adapter_model.bin.
    bin_dir = root / "adapters" / "bin" / "sst2"
    peft_model("bert", seed=0, r=4, alpha=8).save_pretrained(bin_dir, safe_serialization=False)
    adapters["sst2_bin"] = bin_dir
    ckpt = root / "checkpoint"
    # loadings form: the integrity cases edit '<module>.lora_A' loadings by name
    SHAREModel.from_adapters([adapters[n] for n in GOOD], num_components=3, per_adapter="loadings").save_pretrained(ckpt)
    return Lab(root=root, adapters=adapters, checkpoint=ckpt)


# ------------------------------------------------------------------------------ file surgery


def edit_json(path: Path, edit) -> None:
    """Apply ``edit(dict)``, which changes the dict in place (its return value is ignored), to a JSON file."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def edit_meta(ckpt: Path, adapter: str, edit) -> None:
    """Apply ``edit(dict)`` to an adapter's adapter_meta.json seen as in memory: per-module figures (lists in
    group order on disk, format 3) as objects keyed by module. Written back as lists where every module still
    has a value, and as objects (which readers also accept) where the edit removed one."""
    config = json.loads((ckpt / "share_config.json").read_text())
    modules, shared = list(config["groups"]), config.get("peft_config")
    path = ckpt / "adapters" / adapter / "adapter_meta.json"
    meta = json.loads(path.read_text())
    keys = [k for k in ("ranks", "scales", "dw_error", "dw_norm") if isinstance(meta.get(k), list)]
    for key in keys:
        meta[key] = dict(zip(modules, meta[key]))
    pointed = meta.get("peft_config", "missing") is None  # format 3: null means share_config.json's
    if pointed:
        meta["peft_config"] = json.loads(json.dumps(shared))
    edit(meta)
    for key in keys:
        if isinstance(meta.get(key), dict) and set(meta[key]) == set(modules):
            meta[key] = [meta[key][m] for m in modules]
    if pointed and meta.get("peft_config") == shared:
        meta["peft_config"] = None
    path.write_text(json.dumps(meta))


def edit_checkpoint_tensors(ckpt: Path, rel: str, edit) -> None:
    """Apply ``edit(dict) -> dict`` to a checkpoint's basis or loadings file seen with module-name keys: format 3
    writes "<group index>.<suffix>" (index in share_config.json's groups), and the edited file is written back
    so, with any key the edit added under a module name translated as well."""
    modules = list(json.loads((ckpt / "share_config.json").read_text())["groups"])
    index = {m: str(i) for i, m in enumerate(modules)}

    def named(key: str) -> str:
        head, _, rest = key.partition(".")
        return f"{modules[int(head)]}.{rest}" if head.isdigit() else key

    def indexed(key: str) -> str:
        for module, i in index.items():
            if key.startswith(module + "."):
                return i + key[len(module):]
        return key

    edit_tensors(ckpt / rel, lambda t: {indexed(k): v for k, v in edit({named(k): v for k, v in t.items()}).items()})


def edit_tensors(path: Path, edit) -> None:
    """Apply ``edit(dict) -> dict`` to a safetensors file, in place."""
    from safetensors.torch import save_file

    save_file(edit(read_tensors(path)), str(path), metadata={"format": "pt"})


# ------------------------------------------------------------------------------ checks


def snapshot(path: Path) -> dict[str, str] | None:
    """Relative path -> sha256 of every file under `path` (``None`` when nothing is there), to
    prove a command left an output path exactly as it found it."""
    if not os.path.lexists(path):
        return None
    if not path.is_dir():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in sorted(path.rglob("*"))
    } | {".": "<dir>"}


def temp_siblings(path: Path) -> list[str]:
    """Hidden work folders lorashare left beside `path` (``.<name>.tmp-...`` / ``.<name>.old-...``)."""
    if not path.parent.is_dir():
        return []
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.") and
                  re.search(r"\.(tmp|old)-", p.name))


def cli_env(cache: Path) -> dict[str, str]:
    """Environment for a ``lorashare`` subprocess: offline, with an empty private HF cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONWARNINGS": "ignore"}
    env.pop("LORASHARE_DEBUG", None)
    return env


def run_lorashare(argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed ``lorashare`` script, as a user runs it."""
    return subprocess.run([str(LORASHARE), *argv], capture_output=True, text=True, env=env, timeout=timeout)


_LOG_LINE = re.compile(r"(INFO|WARNING|DEBUG): |lorashare: warning: ")


def error_line(code: int, stderr: str) -> str:
    """Check a refused command: exit 1, no traceback, exactly one ``lorashare: error:`` line and it
    is the last line of stderr (anything before it is a log line); return that line."""
    assert code == 1, f"exit code {code}, stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("lorashare: error:")]
    assert len(errors) == 1 and lines and lines[-1] == errors[0], stderr
    assert all(_LOG_LINE.match(line) for line in lines[:-1]), stderr
    return errors[0]
