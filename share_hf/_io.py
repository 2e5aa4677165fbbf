"""File helpers shared by the adapter and checkpoint code of share_hf.

One place owns each of these so that adapters and checkpoints behave alike:

- :func:`check_name`: names that become folder names (adapter names) stay inside their folder.
- :func:`atomic_directory`: a folder appears whole or not at all, and an existing one is replaced
  only after its successor is complete; write failures (disk full, permission denied, a file
  where a folder is needed) become one :class:`WriteError` naming the path and the fix.
- :func:`read_json`, :func:`read_safetensors_header`, :func:`load_safetensors`,
  :func:`read_safetensors_ranges`, :func:`save_safetensors`: file access whose errors name the file.
- :func:`looks_like_hub_id`, :func:`download_snapshot`: Hub access through ``snapshot_download``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PureWindowsPath

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save, save_file

from share_core.errors import CheckpointExistsError, ShareError, WriteError

logger = logging.getLogger("lorashare")


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

#: torch dtypes -> safetensors dtype codes (the reverse of :data:`SAFETENSORS_DTYPES`).
TORCH_DTYPE_CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of `dtype` (``torch.float32`` -> ``"F32"``), or its torch name for
    dtypes lorashare does not handle (``"complex64"``), which no check accepts."""
    return TORCH_DTYPE_CODES.get(dtype, str(dtype).removeprefix("torch."))


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
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} {name!r} is not valid Unicode text (it holds a lone surrogate)"
    if len(encoded) > 255:
        return f"{what} {name[:40]!r}... is longer than 255 bytes, too long for a folder name"
    return None


def check_name(name: object, *, error: type[ShareError], what: str = "adapter name") -> str:
    """Return `name` if it is a safe folder name (see :func:`name_problem`), else raise `error`."""
    problem = name_problem(name, what=what)
    if problem is not None:
        raise error(f"{problem}; names become folder names. Fix: pass a plain name such as 'sst2'.")
    return name  # type: ignore[return-value]


# ------------------------------------------------------------------------------ atomic folders

#: Temporary folders beside a target are named ``.<target>.tmp-<host>-<pid>-<random>`` while being
#: written, and ``.<target>.old-<host>-<pid>-<random>`` for a replaced checkpoint about to be
#: deleted, so a later save can tell which ones a killed process left behind (see
#: :func:`clean_stale_siblings`). ``<host>`` is 8 hex digits of a hash of the host name.
_SIBLING = re.compile(r"\.(?P<target>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}")

_ERRNO_FIXES = {
    errno.ENOSPC: "free some disk space or write to another disk",
    errno.EDQUOT: "free some space within your disk quota or write elsewhere",
    errno.EACCES: "check the folder's permissions or choose another output path",
    errno.EPERM: "check the folder's permissions or choose another output path",
    errno.EROFS: "the file system is read-only: choose another output path",
    errno.ENOTDIR: "a file is in the way where a folder is needed: choose another output path",
    errno.EEXIST: "a file is in the way where a folder is needed: choose another output path",
    errno.ENAMETOOLONG: "choose a shorter output path or adapter name",
    errno.ENOENT: "the folder disappeared or cannot be created there: choose another output path",
}


def _host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{_host_id()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def write_error(exc: OSError, *, what: str, target: Path) -> WriteError:
    """A :class:`WriteError` for `exc`, raised while writing the `what` at `target`."""
    path = exc.filename if exc.filename is not None else target
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = _ERRNO_FIXES.get(exc.errno, "check the output path, its permissions and the free disk space")
    err = WriteError(f"cannot write the {what} to {target}: {reason} ({path}). Fix: {fix}.")
    err.errno, err.strerror, err.filename = exc.errno, exc.strerror, exc.filename
    return err


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


def check_output_target(target: str | os.PathLike, *, overwrite: bool, marker: str, what: str) -> Path:
    """Check, before any work is done, that :func:`atomic_directory` could write `target`.

    Raises :class:`CheckpointExistsError` as :func:`atomic_directory` would (an existing folder
    without `overwrite`, a file, a foreign non-empty folder), and :class:`WriteError` when a file
    stands where one of its parent folders should be. Returns `target` as an absolute path.
    """
    target = Path(target).absolute()
    _check_replaceable(target, overwrite=overwrite, marker=marker, what=what)
    for parent in target.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise WriteError(
                    f"cannot write the {what} to {target}: {parent} is a file, not a folder. "
                    "Fix: choose another output path."
                )
            break
    return target


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _load_renameat2():
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or ``None`` where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders `a` and `b` in one atomic step; ``False`` where the OS or file system
    cannot (then nothing happened)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _swap_into_place(tmp: Path, target: Path, *, overwrite: bool, marker: str, what: str) -> None:
    """Put the finished `tmp` folder at `target`; an old `target` is deleted only afterwards.

    Where the OS can (Linux ``renameat2(RENAME_EXCHANGE)``) old and new are swapped in one atomic
    step, so there is no moment without a checkpoint at `target`. Elsewhere the old folder is
    renamed aside first (to ``.<target>.old-...``, which the next save puts back if the process
    died in between, see :func:`clean_stale_siblings`) and the new one renamed into place.
    """
    _check_replaceable(target, overwrite=overwrite, marker=marker, what=what)
    if not os.path.lexists(target):
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
    else:
        old = _sibling(target, "old")
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        _fsync_path(target.parent)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process, or nothing we can judge: leave it alone
    return True


def clean_stale_siblings(target: str | os.PathLike) -> list[Path]:
    """Tidy what a killed save left beside `target`, and return what was removed or restored.

    Only folders named like :func:`atomic_directory`'s temporaries for this very `target`, made
    on this host by a process that no longer runs, are touched: a ``.tmp-`` folder (a partial
    write) is deleted; an ``.old-`` folder (a previous checkpoint renamed aside in the instant
    before its successor moved in) is renamed back to `target` if `target` is missing, and
    deleted otherwise. Folders of live processes and of other hosts are never touched.
    """
    target = Path(target).absolute()
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    host, done = _host_id(), []
    stale = []
    for entry in entries:
        match = _SIBLING.fullmatch(entry.name)
        if not match or match["target"] != target.name or match["host"] != host:
            continue
        if entry.is_symlink() or not entry.is_dir() or _pid_alive(int(match["pid"])):
            continue
        stale.append((match["kind"], entry))
    for kind, entry in sorted(stale, key=lambda item: item[0] != "old"):
        if kind == "old" and not os.path.lexists(target):
            try:
                os.rename(entry, target)
            except OSError:
                continue
            logger.warning("restored %s from %s, left by a save that was interrupted while replacing it",
                           target, entry.name)
        else:
            shutil.rmtree(entry, ignore_errors=True)
            if os.path.lexists(entry):
                continue
            logger.warning("removed %s, left beside %s by a save that was interrupted", entry.name, target)
        done.append(entry)
    return done


def replaced_siblings(target: str | os.PathLike) -> list[Path]:
    """``.<target>.old-...`` folders beside `target`: the previous checkpoint, renamed aside by a
    save that was interrupted before its successor moved in (only where ``renameat2`` is missing)."""
    target = Path(target).absolute()
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    return sorted(
        entry for entry in entries
        if (m := _SIBLING.fullmatch(entry.name)) and m["target"] == target.name and m["kind"] == "old"
        and entry.is_dir()
    )


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike, *, overwrite: bool, marker: str, what: str
) -> Iterator[Path]:
    """Write a folder so that it appears whole or not at all.

    Yields an empty hidden folder beside `target` (same parent, so the final rename stays on one
    file system), named ``.<target>.tmp-<host>-<pid>-<random>``. When the ``with`` block ends
    normally every file is flushed to disk and the folder is moved to `target`; an existing
    `target` (allowed only with `overwrite`, and only when it holds `marker` or is empty) is
    deleted only once the new folder is in place (see :func:`_swap_into_place`). If anything
    fails, the temporary folder is removed and `target` is left untouched. Folders left beside
    `target` by an earlier save that was killed are tidied first (:func:`clean_stale_siblings`).

    Args:
        target: The folder to create or replace.
        overwrite: Whether an existing `target` may be replaced.
        marker: A file that marks a folder of this kind (e.g. ``"share_config.json"``); a
            non-empty folder without it is never deleted, even with `overwrite`.
        what: Words for error messages, e.g. ``"checkpoint"``.

    Raises:
        CheckpointExistsError: `target` exists (without `overwrite`), is a file, or is a foreign
            non-empty folder.
        WriteError: The folder cannot be written (disk full, permission denied, a file where a
            parent folder should be, ...); the message names the path and the fix.
    """
    target = Path(target).absolute()
    clean_stale_siblings(target)
    check_output_target(target, overwrite=overwrite, marker=marker, what=what)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _sibling(target, "tmp")
        tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        _swap_into_place(tmp, target, overwrite=overwrite, marker=marker, what=what)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, ShareError):
            raise write_error(exc, what=what, target=target) from exc
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
    except (ValueError, RecursionError) as exc:  # a 5000-digit number, nesting 100000 deep
        raise error(
            f"{context}: {path} cannot be read as JSON ({type(exc).__name__}: {str(exc)[:200]}). "
            "Fix: restore the file from its source or re-create it."
        ) from exc
    if not isinstance(data, dict):
        raise error(f"{context}: {path} must hold a JSON object, found {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------- JSON

_INF_TOKEN = "\u0000lorashare-inf\u0000"


def strict_json(data: object, **dumps_options: object) -> str:
    """`json.dumps` with infinite floats (the relative dW error of an adapter whose dW is zero, where its
    reconstruction is not) written as the number ``1e999``, which the JSON grammar allows and Python,
    JavaScript and jq read back as infinity (or the largest double), instead of Python's bare ``Infinity``,
    which strict parsers refuse. NaN, which lorashare does not write, would still come out as Python's ``NaN``.

    Raises:
        ValueError: a string or key in `data` holds the marker used for infinities.
        TypeError: `data` holds something JSON cannot hold.
    """

    def swap(x: object) -> object:
        if isinstance(x, float) and math.isinf(x):
            return _INF_TOKEN if x > 0 else "-" + _INF_TOKEN
        if isinstance(x, dict):
            return {swap(k) if isinstance(k, str) else k: swap(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [swap(v) for v in x]
        if isinstance(x, str) and _INF_TOKEN in x:
            raise ValueError("a string holds the marker that stands for infinity in lorashare's JSON writer")
        return x

    text = json.dumps(swap(data), **dumps_options)
    token = json.dumps(_INF_TOKEN)
    return text.replace(json.dumps("-" + _INF_TOKEN), "-1e999").replace(token, "1e999")


# ------------------------------------------------------------------------------- safetensors


_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header's bytes


def _header_bytes(fd: int, size: int) -> tuple[int, bytes]:
    """(length the file gives, bytes read) of the JSON header of the safetensors file open as `fd` (`size`
    bytes), with two positioned reads; fewer bytes than the length where the file is cut short.

    Raises:
        ValueError: the file is too short for a header length, or the length does not fit the file (the
            message says which, for the caller's error).
    """
    first = os.pread(fd, 8, 0)
    if len(first) < 8:
        raise ValueError(f"{size} bytes, fewer than the 8 of a header length")
    n = int.from_bytes(first, "little")
    if not 0 < n <= min(size - 8, _MAX_HEADER):
        raise ValueError(f"header length {n} in a file of {size} bytes")
    return n, os.pread(fd, n, 8)


def _prefetch_header(path: Path) -> None:
    """Bring the header of `path` into the page cache with positioned reads, readahead off.

    safetensors reads the header through a memory map of the whole file, and the first page fault on a cold
    file reads the block device's readahead window around it (`read_ahead_kb`: 8 MB on the benchmark
    machine): 8.4 MB read per Llama-7B-shaped adapter opened, 8.4 GB for 1000 of them, for headers of a few
    KB. Once the header's pages are cached, that fault reads nothing from the disk. Best effort: where this
    fails (no such file, no pread), `safe_open` reports whatever is wrong."""
    if not hasattr(os, "pread"):
        return
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        _header_bytes(fd, os.fstat(fd).st_size)
    except (OSError, ValueError):  # (a damaged length reads nothing; safe_open then says what is wrong)
        pass
    finally:
        os.close(fd)


def read_safetensors_header(
    path: Path, *, error: type[ShareError], context: str
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, safetensors dtype code) of every tensor in `path`, without loading data.

    Raises:
        error: The file is missing, truncated or not a safetensors file (the message names it).
    """
    _prefetch_header(path)
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


#: safetensors dtype codes :func:`read_safetensors_ranges` reads (the LoRA factor dtypes), and their torch dtypes.
_RANGE_DTYPES = {code: dtype for code, dtype in SAFETENSORS_DTYPES.items() if dtype.is_floating_point}


def read_safetensors_ranges(
    path: Path, keys: Iterable[str], *, error: type[ShareError], context: str
) -> dict[str, torch.Tensor] | None:
    """Load `keys` from `path` with one positioned read (``pread``) of each tensor's own bytes, readahead off.

    For a few tensors of a large file (one module of each adapter at a time, under ``layer_by_layer``) this
    reads what is asked for and nothing more. A memory map reads the block device's readahead window around
    every page fault instead: on the machine measured (``read_ahead_kb`` 8192), one module of 50 cold
    Llama-7B-shaped adapter files read 541.7 MB through ``safe_open`` for 12.5 MB of factors, and 12.7 MB
    this way (0.86 s against 0.05 s).

    Returns ``None`` where this reader does not apply (a big-endian host, or a dtype other than
    F64/F32/F16/BF16): the caller then uses :func:`load_safetensors`.

    Raises:
        error: The file is missing, or its header or data do not hold what the format says (truncated or corrupt).
    """
    if sys.byteorder != "little" or not hasattr(os, "preadv"):  # safetensors data are little-endian (frombuffer
        return None                                               # reads native order); no pread on Windows

    def bad(what: str) -> ShareError:
        return error(f"{context}: {path} is not a readable safetensors file ({what}); it may be truncated or "
                     "corrupt. Fix: restore or re-download it.")

    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except FileNotFoundError as exc:
        raise error(f"{context}: {path} does not exist") from exc
    except OSError as exc:
        raise error(f"{context}: cannot read tensors from {path} ({exc}). Fix: check the file's permissions.") from exc
    try:
        size = os.fstat(fd).st_size
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: read exactly the ranges asked for
        try:
            n, raw = _header_bytes(fd, size)
        except ValueError as exc:
            raise bad(str(exc)) from None
        try:
            header = json.loads(raw) if len(raw) == n else None
        except (ValueError, RecursionError):
            header = None
        if not isinstance(header, dict):
            raise bad("its header is not a JSON object")
        data_bytes = size - 8 - n
        out = {}
        for key in keys:
            entry = header.get(key)
            if not isinstance(entry, dict) or key == "__metadata__":
                raise bad(f"no tensor {key!r} in its header")
            code = entry.get("dtype")
            if not isinstance(code, str):
                raise bad(f"tensor {key!r} has dtype {code!r}")
            dtype = _RANGE_DTYPES.get(code)
            if dtype is None:
                return None
            shape, offsets = entry.get("shape"), entry.get("data_offsets")
            if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                    and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
                raise bad(f"tensor {key!r} has shape {shape!r} and data_offsets {offsets!r}")
            begin, end = offsets
            numel = math.prod(shape)
            if not 0 <= begin <= end <= data_bytes or end - begin != numel * dtype.itemsize:
                raise bad(f"tensor {key!r} of shape {tuple(shape)} in {entry['dtype']} at bytes [{begin}, {end}) "
                          f"of {data_bytes} data bytes")
            buffer = bytearray(end - begin)
            got = os.preadv(fd, [buffer], 8 + n + begin) if end > begin else 0
            if got != end - begin:
                raise bad(f"tensor {key!r}: read {got} of its {end - begin} bytes")
            out[key] = (torch.frombuffer(buffer, dtype=dtype) if numel else torch.empty(0, dtype=dtype)).reshape(shape)
        return out
    except OSError as exc:
        raise error(f"{context}: cannot read tensors from {path} ({exc}); it may be truncated or "
                    "corrupt. Fix: restore or re-download it.") from exc
    finally:
        os.close(fd)


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
    """Write `tensors` to `path` with the metadata PEFT writes (``{"format": "pt"}``).

    safetensors reports I/O failures (disk full, ...) as its own error; they are raised here as
    :class:`OSError` so that :func:`atomic_directory` turns them into one :class:`WriteError`.
    """
    prepared = prepare_for_save(tensors)
    try:
        save_file(prepared, os.fspath(path), metadata=dict(SAFETENSORS_METADATA))
    except SafetensorError as exc:
        code = errno.ENOSPC if "os error 28" in str(exc) or "No space left" in str(exc) else errno.EIO
        raise OSError(code, f"safetensors could not write the file ({exc})", os.fspath(path)) from exc
    # safetensors creates its files 0600 whatever the umask; give them the mode the JSON beside them gets,
    # so that a checkpoint shared with a team (or served by another user) is readable as a whole
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
