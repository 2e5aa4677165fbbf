"""File helpers shared by the adapter and checkpoint code of share_hf.

One place owns each of these so that adapters and checkpoints behave alike:

- :func:`check_name`: names that become folder names (adapter names) stay inside their folder.
- :func:`atomic_directory`: a folder appears whole or not at all, and an existing one is replaced
  only after its successor is complete.
- :func:`read_json`, :func:`read_safetensors_header`, :func:`load_safetensors`,
  :func:`save_safetensors`: file access whose errors name the file.
- :func:`looks_like_hub_id`, :func:`download_snapshot`: Hub access through ``snapshot_download``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PureWindowsPath

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save, save_file

from share_core.errors import CheckpointExistsError, ShareError

#: Metadata PEFT (and transformers) write into every safetensors file.
SAFETENSORS_METADATA = {"format": "pt"}

#: safetensors dtype codes -> torch dtypes (those lorashare can meet in adapters and checkpoints).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

#: Floating dtypes lorashare reads and writes LoRA factors in, by the name torch gives them.
FLOAT_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling stored in adapter_meta.json)."""
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------- names


def name_problem(name: object, *, what: str = "adapter name") -> str | None:
    """Why `name` cannot be used as a folder name inside another folder, or ``None`` if it can.

    Adapter names become ``adapters/<name>/`` in a checkpoint and output folders on export, so a
    name must be one plain path component: not empty, not ``.`` or ``..``, no ``/`` or ``\\``, not
    absolute or drive-relative, no NUL byte, at most 255 bytes.
    """
    if not isinstance(name, str):
        return f"{what} must be a string, found {type(name).__name__} {name!r}"
    if not name or name.strip() != name:
        return f"{what} {name!r} is empty or has leading/trailing whitespace"
    if name in (".", ".."):
        return f"{what} {name!r} would point outside its folder"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return f"{what} {name!r} contains a path separator and would escape its folder"
    if os.path.isabs(name) or PureWindowsPath(name).drive:
        return f"{what} {name!r} is an absolute path"
    if "\x00" in name:
        return f"{what} {name!r} contains a NUL byte"
    if len(name.encode("utf-8")) > 255:
        return f"{what} {name[:40]!r}... is longer than 255 bytes, too long for a folder name"
    return None


def check_name(name: object, *, error: type[ShareError], what: str = "adapter name") -> str:
    """Return `name` if it is a safe folder name (see :func:`name_problem`), else raise `error`."""
    problem = name_problem(name, what=what)
    if problem is not None:
        raise error(f"{problem}; names become folder names. Fix: pass a plain name such as 'sst2'.")
    return name  # type: ignore[return-value]


# ------------------------------------------------------------------------------ atomic folders


def _fsync_path(path: Path) -> None:
    """Flush one file or folder to disk (folders only where the OS allows opening them)."""
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` (deepest first), then `root` itself."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for entry in filenames:
            _fsync_path(Path(dirpath) / entry)
        _fsync_path(Path(dirpath))


def _check_replaceable(target: Path, *, overwrite: bool, marker: str, what: str) -> None:
    """Raise :class:`CheckpointExistsError` unless `target` may be created or replaced."""
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise CheckpointExistsError(
            f"cannot write the {what} to {target}: a file (not a folder) is there. "
            "Fix: choose another output path or remove that file."
        )
    if not overwrite:
        raise CheckpointExistsError(
            f"cannot write the {what} to {target}: that folder already exists. "
            "Fix: pass overwrite=True (--overwrite on the command line) or choose another path."
        )
    if not (target / marker).is_file() and any(target.iterdir()):
        raise CheckpointExistsError(
            f"refusing to overwrite {target}: it is not empty and has no {marker}, so it does not "
            f"look like a {what} and lorashare will not delete it. Fix: choose another output path."
        )


def _swap_into_place(tmp: Path, target: Path, *, overwrite: bool, marker: str, what: str) -> None:
    """Rename the finished `tmp` folder to `target`; an old `target` is deleted only afterwards."""
    _check_replaceable(target, overwrite=overwrite, marker=marker, what=what)
    old: Path | None = None
    if os.path.lexists(target):
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    with contextlib.suppress(OSError):
        _fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike, *, overwrite: bool, marker: str, what: str
) -> Iterator[Path]:
    """Write a folder so that it appears whole or not at all.

    Yields an empty hidden folder beside `target` (same parent, so the final rename stays on one
    file system). When the ``with`` block ends normally every file is flushed to disk and the
    folder is renamed to `target`; an existing `target` (allowed only with `overwrite`, and only
    when it holds `marker` or is empty) is renamed aside first and deleted after the new folder is
    in place. If anything fails, the temporary folder is removed and `target` is left untouched.

    Args:
        target: The folder to create or replace.
        overwrite: Whether an existing `target` may be replaced.
        marker: A file that marks a folder of this kind (e.g. ``"share_config.json"``); a
            non-empty folder without it is never deleted, even with `overwrite`.
        what: Words for error messages, e.g. ``"checkpoint"``.

    Raises:
        CheckpointExistsError: `target` exists (without `overwrite`), is a file, or is a foreign
            non-empty folder.
    """
    target = Path(target).absolute()
    _check_replaceable(target, overwrite=overwrite, marker=marker, what=what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        _swap_into_place(tmp, target, overwrite=overwrite, marker=marker, what=what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------- JSON


def read_json(path: Path, *, error: type[ShareError], context: str) -> dict:
    """Read a JSON object from `path`; any problem raises `error` naming the file.

    Args:
        path: The file to read.
        error: The lorashare error class to raise.
        context: Who the file belongs to, e.g. ``"adapter 'sst2'"``, for the message.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise error(f"{context}: {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{context}: cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"{context}: {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}). Fix: restore the file from its source or re-create it."
        ) from exc
    if not isinstance(data, dict):
        raise error(f"{context}: {path} must hold a JSON object, found {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------- safetensors


def read_safetensors_header(
    path: Path, *, error: type[ShareError], context: str
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, safetensors dtype code) of every tensor in `path`, without loading data.

    Raises:
        error: The file is missing, truncated or not a safetensors file (the message names it).
    """
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            header = {}
            for key in handle.keys():
                sl = handle.get_slice(key)
                header[key] = (tuple(int(d) for d in sl.get_shape()), str(sl.get_dtype()))
    except FileNotFoundError as exc:
        raise error(f"{context}: {path} does not exist") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(
            f"{context}: {path} is not a readable safetensors file ({exc}); it may be truncated "
            "or corrupt. Fix: restore or re-download it."
        ) from exc
    return header


def load_safetensors(
    path: Path,
    keys: Iterable[str] | None = None,
    *,
    error: type[ShareError],
    context: str,
) -> dict[str, torch.Tensor]:
    """Load `keys` (all when ``None``) from `path` through a memory map, in their stored dtype."""
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            wanted = list(handle.keys()) if keys is None else list(keys)
            return {key: handle.get_tensor(key) for key in wanted}
    except FileNotFoundError as exc:
        raise error(f"{context}: {path} does not exist") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(
            f"{context}: cannot read tensors from {path} ({exc}); it may be truncated or "
            "corrupt. Fix: restore or re-download it."
        ) from exc


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


def prepare_for_save(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors that own their memory, ready for safetensors.

    safetensors refuses tensors that share memory (views, slices of one buffer); those are
    cloned here so callers may hand over slices of a bigger tensor.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[str, int]] = set()
    for key, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        owns_storage = (
            t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        )
        if not owns_storage or (t.numel() > 0 and _storage_key(t) in seen):
            t = t.clone()
        if t.numel() > 0:
            seen.add(_storage_key(t))
        out[key] = t
    return out


def save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write `tensors` to `path` with the metadata PEFT writes (``{"format": "pt"}``)."""
    save_file(prepare_for_save(tensors), os.fspath(path), metadata=dict(SAFETENSORS_METADATA))


def safetensors_nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Exact size of the file :func:`save_safetensors` would write for `tensors` (serialized in memory)."""
    return len(save(prepare_for_save(tensors), metadata=dict(SAFETENSORS_METADATA)))


# -------------------------------------------------------------------------------------- Hub


def looks_like_hub_id(text: str) -> bool:
    """Whether `text` has the shape of a Hub repo id ``org/name`` (no lookup is made)."""
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text


def download_snapshot(
    repo_id: str,
    *,
    allow_patterns: list[str],
    revision: str | None,
    token: str | None,
    error: type[ShareError],
    what: str,
) -> Path:
    """Fetch only `allow_patterns` of a Hub model repo (or find them in the local HF cache).

    Honors ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` like every Hugging Face library.

    Raises:
        error: The repo, revision or files cannot be had (the message says why and what to do).
    """
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id, allow_patterns=allow_patterns, revision=revision, token=token
        )
    except (TypeError, AttributeError, NameError):
        raise  # a bug, not a missing repo
    except Exception as exc:  # any other failure of the one Hub call means "cannot be had"
        rev = f" at revision {revision!r}" if revision else ""
        raise error(
            f"expected a local {what} folder or a Hub repo id like org/name, found {repo_id!r}: "
            f"no such local folder, and the Hub repo{rev} could not be fetched "
            f"({type(exc).__name__}: {exc}). Fix: check the path or repo id, log in "
            "(`hf auth login`) for private repos, or download it first if you are offline "
            "(HF_HUB_OFFLINE=1 only uses the local Hugging Face cache)."
        ) from exc
    return Path(folder)
