"""PEFT LoRA adapter folders: open, validate, describe, and read them lazily.

An adapter folder is what ``PeftModel.save_pretrained`` writes: ``adapter_config.json`` and
``adapter_model.safetensors``. :func:`open_adapter` reads the config and the safetensors header
only (no tensor data), checks everything that can be checked up front, and returns an
:class:`AdapterSource` that loads factors on demand.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from share_core.errors import (
    AdapterNotFoundError,
    IncompatibleAdaptersError,
    InvalidAdapterError,
    UnsupportedAdapterError,
)
from share_hf._io import (
    SAFETENSORS_DTYPES,
    dtype_code,
    check_name,
    download_snapshot,
    load_safetensors,
    looks_like_hub_id,
    read_json,
    read_safetensors_header,
    read_safetensors_ranges,
)

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "AdapterSource",
    "LoraModule",
    "adapter_name_from_source",
    "check_compatible",
    "open_adapter",
]

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
_PICKLE_WEIGHTS_FILE = "adapter_model.bin"

#: Prefix PEFT puts before the base model's own module names in saved keys.
_PEFT_PREFIX = "base_model.model."
_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"
_FLOAT_CODES = ("F64", "F32", "F16", "BF16")

#: PEFT's LoraConfig defaults, used when a config leaves r / lora_alpha out (as PEFT does).
_DEFAULT_R = 8
_DEFAULT_ALPHA = 8


@dataclass(frozen=True)
class LoraModule:
    """One LoRA-adapted linear module of an adapter, as stored in its safetensors file.

    Attributes:
        name: Module path as in the file, without ``.lora_A.weight``, e.g.
            ``"base_model.model.bert.encoder.layer.0.attention.self.query"``.
        rank: ``r`` of this module, from the tensor shapes (checked against the config).
        alpha: Effective ``lora_alpha`` of this module (``alpha_pattern`` applied).
        scale: PEFT's scaling for this module: ``alpha / rank``, or ``alpha / sqrt(rank)`` with
            ``use_rslora``.
        d_in: Input features; ``lora_A`` is ``(rank, d_in)``.
        d_out: Output features; ``lora_B`` is ``(d_out, rank)``.
        a_key: ``"<name>.lora_A.weight"``.
        b_key: ``"<name>.lora_B.weight"``.
    """

    name: str
    rank: int
    alpha: float
    scale: float
    d_in: int
    d_out: int
    a_key: str
    b_key: str


@dataclass
class AdapterSource:
    """An opened and validated PEFT LoRA adapter; tensors are read only when asked for.

    Attributes:
        name: The adapter's name (a safe folder name).
        source: What the user passed (path or Hub id), as a string.
        path: Local folder holding the files (the snapshot folder for Hub ids).
        config: ``adapter_config.json``, verbatim.
        modules: Every 2-D LoRA module, sorted by name.
        carried_keys: Every other tensor key (classifier heads / ``modules_to_save``, embedding
            or conv LoRA, LoRA biases, anything unknown), sorted. They are carried, never dropped.
        dtype: The dtype of the LoRA factors.
        file_bytes: Bytes on disk of ``adapter_config.json`` + ``adapter_model.safetensors``.

    Example:
        ```python
        src = open_adapter("adapters/sst2")
        a, b = src.load_factors(next(iter(src.modules)))
        ```
    """

    name: str
    source: str
    path: Path
    config: dict
    modules: dict[str, LoraModule]
    carried_keys: list[str]
    dtype: torch.dtype
    file_bytes: int
    #: Tensors already in memory, for an ``adapter_model.bin`` opened with ``allow_pickle=True``
    #: (read once through ``torch.load(weights_only=True)``); ``None`` for safetensors.
    preloaded: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def weights_file(self) -> Path:
        """The weights file read: ``adapter_model.safetensors`` (or ``adapter_model.bin`` when
        opened with ``allow_pickle=True`` and there is no safetensors file)."""
        return self.path / (_PICKLE_WEIGHTS_FILE if self.preloaded is not None else ADAPTER_WEIGHTS_FILE)

    def _context(self) -> str:
        return f"adapter {self.name!r} ({self.source})"

    def _load(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.preloaded is not None:
            return {key: self.preloaded[key] for key in keys}
        if 2 * len(keys) < 2 * len(self.modules) + len(self.carried_keys):
            # fewer than half of the file's tensors (one module under layer_by_layer): read their bytes alone,
            # not a memory map's readahead around each of them
            exact = read_safetensors_ranges(self.weights_file, keys, error=InvalidAdapterError,
                                            context=self._context())
            if exact is not None:
                return exact
        return load_safetensors(self.weights_file, keys, error=InvalidAdapterError, context=self._context())

    def _check_finite(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            # a finite sum proves every entry finite, at a fraction of an element-wise test's cost; only a
            # non-finite sum (a bad entry, or finite entries whose sum overflows) is checked entry by entry
            if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())) or bool(
                    torch.isfinite(tensor).all()):
                continue
            bad = int((~torch.isfinite(tensor)).sum())
            raise InvalidAdapterError(
                f"{self._context()}: tensor {key!r} in {self.weights_file} holds {bad} NaN/Inf "
                "values, so it cannot be compressed. Fix: retrain or repair that adapter, or "
                "leave it out."
            )

    def load_factors(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Read one module's LoRA factors from disk, in their stored dtype.

        Args:
            module: A key of :attr:`modules`.

        Returns:
            ``(A, B)`` with ``A`` of shape ``(rank, d_in)`` and ``B`` of shape ``(d_out, rank)``.

        Raises:
            KeyError: `module` is not one of this adapter's LoRA modules.
            InvalidAdapterError: The file cannot be read, or a factor holds NaN or Inf.
        """
        return self.load_all_factors([module])[module]

    def load_all_factors(self, modules: Sequence[str] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`load_factors` of several modules (default: all) from one opening of the file.

        Returns:
            Module -> ``(A, B)``, in the order asked for.

        Raises:
            KeyError: A module is not one of this adapter's LoRA modules.
            InvalidAdapterError: The file cannot be read, or a factor holds NaN or Inf.
        """
        wanted = list(self.modules) if modules is None else list(modules)
        unknown = [m for m in wanted if m not in self.modules]
        if unknown:
            raise KeyError(
                f"{self._context()} has no LoRA module {unknown[0]!r}; it has {len(self.modules)} "
                f"modules, e.g. {next(iter(self.modules))!r}"
            )
        keys = [k for m in wanted for k in (self.modules[m].a_key, self.modules[m].b_key)]
        tensors = self._load(keys)
        self._check_finite(tensors)
        return {m: (tensors[self.modules[m].a_key], tensors[self.modules[m].b_key]) for m in wanted}

    def load_carried(self) -> dict[str, torch.Tensor]:
        """Every carried tensor (see :attr:`carried_keys`), in its stored dtype.

        Raises:
            InvalidAdapterError: The file cannot be read, or a floating tensor holds NaN or Inf.
        """
        if not self.carried_keys:
            return {}
        tensors = self._load(self.carried_keys)
        self._check_finite(tensors)
        return tensors


def adapter_name_from_source(path_or_id: str | os.PathLike) -> str:
    """Default adapter name: the folder's basename, or the ``name`` part of a Hub id ``org/name``.

    Example:
        ```python
        adapter_name_from_source("runs/sst2/")  # "sst2"
        adapter_name_from_source("org/lora-mnli")  # "lora-mnli"
        ```
    """
    path = Path(os.fspath(path_or_id))
    name = path.name
    if name in ("", ".", ".."):
        name = path.resolve().name
    return name


def _resolve_folder(source: str, revision: str | None, token: str | None, allow_pickle: bool = False) -> Path:
    """The local folder holding the adapter files for `source` (downloading Hub ids)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise InvalidAdapterError(
            f"expected a PEFT adapter folder, found a file: {source!r}. Fix: pass the folder "
            f"that holds {ADAPTER_CONFIG_FILE} and {ADAPTER_WEIGHTS_FILE}."
        )
    if looks_like_hub_id(source):
        return download_snapshot(
            source,
            allow_patterns=[ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]
            + ([_PICKLE_WEIGHTS_FILE] if allow_pickle else []),
            revision=revision,
            token=token,
            error=AdapterNotFoundError,
            what="PEFT adapter",
        )
    raise AdapterNotFoundError(
        f"expected a PEFT adapter folder or a Hub id like org/name, found {source!r}, which is "
        "neither an existing folder nor a Hub id. Fix: check the path (it is relative to "
        f"{Path.cwd()}) or pass a Hub repo id."
    )


def _check_config(config: dict, context: str, config_path: Path) -> None:
    """Refuse configs lorashare cannot compress: not LoRA, DoRA, malformed r/alpha/patterns."""
    peft_type = config.get("peft_type")
    if peft_type is None:
        raise InvalidAdapterError(
            f"{context}: {config_path} has no 'peft_type', so it is not a PEFT adapter config. "
            "Fix: pass a folder written by PeftModel.save_pretrained."
        )
    if str(peft_type).upper() != "LORA":
        raise UnsupportedAdapterError(
            f"{context}: lorashare compresses LoRA adapters only, found peft_type={peft_type!r} "
            f"in {config_path}. Fix: leave this adapter out."
        )
    if config.get("use_dora"):
        raise UnsupportedAdapterError(
            f"{context}: {config_path} has use_dora=true; lorashare does not compress DoRA "
            "adapters yet (their magnitude vectors do not fit a shared LoRA basis). "
            "Fix: leave this adapter out or use a plain LoRA version of it."
        )
    r = config.get("r", _DEFAULT_R)
    alpha = config.get("lora_alpha", _DEFAULT_ALPHA)
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise InvalidAdapterError(
            f"{context}: 'r' in {config_path} must be a positive integer, found {r!r}. {_CONFIG_FIX}"
        )
    if not _is_scale_number(alpha):
        raise InvalidAdapterError(
            f"{context}: 'lora_alpha' in {config_path} must be a finite non-zero number, found "
            f"{alpha!r}. {_CONFIG_FIX}"
        )
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise InvalidAdapterError(
            f"{context}: 'base_model_name_or_path' in {config_path} must be a string, found "
            f"{type(base).__name__} {base!r}. {_CONFIG_FIX}"
        )
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(key)
        if pattern is None:
            continue
        if not isinstance(pattern, dict):
            raise InvalidAdapterError(
                f"{context}: '{key}' in {config_path} must be an object, found {type(pattern).__name__}"
            )
        for pkey, value in pattern.items():
            try:
                re.compile(pkey)
            except re.error as exc:
                raise InvalidAdapterError(
                    f"{context}: '{key}' key {pkey!r} in {config_path} is not a valid regular "
                    f"expression ({exc})"
                ) from exc
            ok = (_is_int(value, 1) if key == "rank_pattern" else _is_scale_number(value))
            if not ok:
                wanted = "a positive integer" if key == "rank_pattern" else "a finite non-zero number"
                raise InvalidAdapterError(
                    f"{context}: '{key}'[{pkey!r}] in {config_path} must be {wanted}, found "
                    f"{value!r}. {_CONFIG_FIX}"
                )


_CONFIG_FIX = (
    "Fix: restore adapter_config.json as PeftModel.save_pretrained wrote it, or correct that value."
)


def _is_int(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_scale_number(value: object) -> bool:
    """A finite, non-zero int or float (not a bool): what lora_alpha must be for dW != 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return False
    return math.isfinite(number) and number != 0


def _pattern_value(patterns: Mapping[str, float] | None, module_key: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern rule: the first pattern key (in file order) that
    matches the end of `module_key` on a ``.`` boundary, i.e. `module_key` fully matches
    ``(.*\\.)?(<key>)``; `default` when none does."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module_key):
            return value
    return default


def _module_key(name: str) -> str:
    """The name PEFT matches patterns against: the base model's own module path."""
    return name.removeprefix(_PEFT_PREFIX)


def _parse_modules(
    header: Mapping[str, tuple[tuple[int, ...], str]],
    config: dict,
    context: str,
    weights_path: Path,
) -> tuple[dict[str, LoraModule], list[str], torch.dtype]:
    """Split the safetensors header into LoRA modules and carried keys; check ranks and dtype."""
    a_names = {k[: -len(_A_SUFFIX)]: k for k in header if k.endswith(_A_SUFFIX)}
    b_names = {k[: -len(_B_SUFFIX)]: k for k in header if k.endswith(_B_SUFFIX)}
    problems = [
        f"{a_names[n]!r} has no matching {n + _B_SUFFIX!r}" for n in sorted(a_names.keys() - b_names.keys())
    ] + [
        f"{b_names[n]!r} has no matching {n + _A_SUFFIX!r}" for n in sorted(b_names.keys() - a_names.keys())
    ]
    r_default = config.get("r", _DEFAULT_R)
    alpha_default = config.get("lora_alpha", _DEFAULT_ALPHA)
    modules: dict[str, LoraModule] = {}
    for name in sorted(a_names.keys() & b_names.keys()):
        (a_shape, _), (b_shape, _) = header[a_names[name]], header[b_names[name]]
        if len(a_shape) != 2 or len(b_shape) != 2:
            continue  # conv LoRA and other layouts: carried verbatim
        if 0 in a_shape or 0 in b_shape:
            problems.append(
                f"{name}: lora_A {list(a_shape)} or lora_B {list(b_shape)} has a zero-sized dimension"
            )
            continue
        if a_shape[0] != b_shape[1]:
            problems.append(
                f"{name}: lora_A {list(a_shape)} has rank {a_shape[0]} but lora_B {list(b_shape)} "
                f"has rank {b_shape[1]}"
            )
            continue
        expected = _pattern_value(config.get("rank_pattern"), _module_key(name), r_default)
        if a_shape[0] != expected:
            problems.append(
                f"{name}: the tensors have rank {a_shape[0]} but the config gives r={expected} "
                "(from 'r' / 'rank_pattern')"
            )
            continue
        rank = a_shape[0]
        alpha = float(_pattern_value(config.get("alpha_pattern"), _module_key(name), alpha_default))
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        modules[name] = LoraModule(
            name=name, rank=rank, alpha=alpha, scale=scale, d_in=a_shape[1], d_out=b_shape[0],
            a_key=a_names[name], b_key=b_names[name],
        )
    if problems:
        raise InvalidAdapterError(
            f"{context}: {weights_path} does not match a PEFT LoRA adapter:\n  - "
            + "\n  - ".join(problems)
            + "\nFix: re-save the adapter with PeftModel.save_pretrained, or correct "
            f"{ADAPTER_CONFIG_FILE}."
        )
    if not modules:
        raise UnsupportedAdapterError(
            f"{context}: {weights_path} holds no 2-D lora_A/lora_B weight pairs (only "
            f"{len(header)} other tensors), so there is nothing to share. Fix: leave this adapter out."
        )
    return modules, _carried_keys(header, modules), _factor_dtype(header, modules, context, weights_path)


def _carried_keys(header: Mapping[str, object], modules: Mapping[str, LoraModule]) -> list[str]:
    factor_keys = {k for m in modules.values() for k in (m.a_key, m.b_key)}
    return sorted(k for k in header if k not in factor_keys)


def _factor_dtype(
    header: Mapping[str, tuple[tuple[int, ...], str]],
    modules: Mapping[str, LoraModule],
    context: str,
    weights_path: Path,
) -> torch.dtype:
    """The one floating dtype every LoRA factor is stored in."""
    codes: dict[str, list[str]] = {}
    for m in modules.values():
        for key in (m.a_key, m.b_key):
            codes.setdefault(header[key][1], []).append(key)
    if len(codes) > 1:
        found = "; ".join(f"{code}: {len(keys)} tensors, e.g. {keys[0]!r}" for code, keys in sorted(codes.items()))
        raise InvalidAdapterError(
            f"{context}: the LoRA factors in {weights_path} do not share one dtype ({found}). "
            "Fix: cast the adapter to one dtype and save it again."
        )
    code = next(iter(codes))
    if code not in _FLOAT_CODES:
        raise InvalidAdapterError(
            f"{context}: the LoRA factors in {weights_path} are stored as {code}; lorashare "
            f"needs floating point ({', '.join(_FLOAT_CODES)}). Fix: dequantize the adapter first."
        )
    return SAFETENSORS_DTYPES[code]


def _weights_path(folder: Path, context: str, allow_pickle: bool) -> Path:
    weights = folder / ADAPTER_WEIGHTS_FILE
    if weights.is_file():
        return weights
    pickled = folder / _PICKLE_WEIGHTS_FILE
    if pickled.is_file():
        if allow_pickle:
            return pickled
        raise InvalidAdapterError(
            f"{context}: {folder} has {_PICKLE_WEIGHTS_FILE} but no {ADAPTER_WEIGHTS_FILE}; "
            "lorashare does not load pickle files (loading one can run code) unless told to. "
            "Fix: convert it once, e.g. `safetensors.torch.save_file(torch.load("
            f"bin_path, weights_only=True), '{ADAPTER_WEIGHTS_FILE}', metadata={{'format': 'pt'}})` "
            "or `PeftModel.from_pretrained(base, folder).save_pretrained(folder)`; or, if you "
            "trust the file, pass allow_pickle=True (--allow-pickle), which loads it with "
            "torch.load(weights_only=True)."
        )
    raise InvalidAdapterError(
        f"{context}: {folder} has no {ADAPTER_WEIGHTS_FILE}. Fix: pass a folder written by "
        "PeftModel.save_pretrained (safetensors serialization)."
    )


def _load_pickled(path: Path, context: str) -> dict[str, torch.Tensor]:
    """A ``adapter_model.bin`` state dict, through ``torch.load(weights_only=True)`` only.

    ``weights_only=True`` restricts unpickling to tensors and plain containers: a file that asks
    for anything else (``os.system``, any class outside torch's allow-list) is refused before
    any of it runs.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (forbidden global), RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise InvalidAdapterError(
            f"{context}: {path} cannot be loaded as plain tensors with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {first}); it is corrupt, or it holds objects other than tensors "
            "and may run code when unpickled. Fix: get a safetensors version of this adapter."
        ) from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and v.layout == torch.strided
        and not v.is_quantized
        for k, v in state.items()
    ):
        raise InvalidAdapterError(
            f"{context}: {path} does not hold a state dict of name -> tensor (found "
            f"{type(state).__name__}). Fix: save the adapter with PeftModel.save_pretrained."
        )
    # Own, dense, contiguous CPU copies: what a safetensors load would give.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def open_adapter(
    path_or_id: str | os.PathLike,
    *,
    name: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    allow_pickle: bool = False,
) -> AdapterSource:
    """Open and validate a PEFT LoRA adapter folder or Hub repo, without loading its tensors.

    Args:
        path_or_id: A local folder with ``adapter_config.json`` and ``adapter_model.safetensors``,
            or a Hub repo id ``org/name`` (only those two files are fetched; the local HF cache
            is used when ``HF_HUB_OFFLINE=1``). A local folder wins over a Hub id.
        name: The adapter's name; defaults to :func:`adapter_name_from_source`.
        revision: Hub branch, tag or commit (ignored for local folders).
        token: Hub token for private repos (ignored for local folders).
        allow_pickle: Read an ``adapter_model.bin`` when there is no safetensors file (default:
            refuse it). Only ``torch.load(path, map_location="cpu", weights_only=True)`` is used,
            which refuses anything but tensors and plain containers; the tensors are read once,
            at open, and checked exactly like safetensors weights. A safetensors file always wins.

    Returns:
        An :class:`AdapterSource`.

    Raises:
        AdapterNotFoundError: Neither a folder nor a reachable Hub repo.
        InvalidAdapterError: Missing or corrupt files, mismatched factors or ranks, mixed dtypes,
            a pickle-only adapter (unless `allow_pickle`), or an unsafe name.
        UnsupportedAdapterError: Not LoRA, DoRA, or no 2-D LoRA modules at all.

    Example:
        ```python
        src = open_adapter("org/lora-sst2", name="sst2")
        print(src.name, len(src.modules), src.dtype)
        ```
    """
    source = os.fspath(path_or_id)
    name = adapter_name_from_source(source) if name is None else name
    check_name(name, error=InvalidAdapterError)
    folder = _resolve_folder(source, revision, token, allow_pickle)
    context = f"adapter {name!r} ({source})"
    config_path = folder / ADAPTER_CONFIG_FILE
    if not config_path.is_file():
        raise InvalidAdapterError(
            f"{context}: {folder} has no {ADAPTER_CONFIG_FILE}, so it is not a PEFT adapter "
            "folder. Fix: pass the folder written by PeftModel.save_pretrained."
        )
    config = read_json(config_path, error=InvalidAdapterError, context=context)
    _check_config(config, context, config_path)
    weights = _weights_path(folder, context, allow_pickle)
    preloaded = None
    if weights.name == _PICKLE_WEIGHTS_FILE:
        preloaded = _load_pickled(weights, context)
        header = {k: (tuple(v.shape), dtype_code(v.dtype)) for k, v in preloaded.items()}
    else:
        header = read_safetensors_header(weights, error=InvalidAdapterError, context=context)
    modules, carried, dtype = _parse_modules(header, config, context, weights)
    return AdapterSource(
        name=name,
        source=source,
        path=folder,
        config=config,
        modules=modules,
        carried_keys=carried,
        dtype=dtype,
        file_bytes=config_path.stat().st_size + weights.stat().st_size,
        preloaded=preloaded,
    )


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_compatible(adapters: Sequence[AdapterSource]) -> None:
    """Check that `adapters` can share one basis per module; report every difference at once.

    Mixed ranks and different ``lora_alpha`` are allowed. Required: at least two adapters,
    distinct names, the same ``base_model_name_or_path`` (where both set it), and the same LoRA
    modules with the same ``(d_in, d_out)``.

    Raises:
        IncompatibleAdaptersError: One error listing every difference and what each adapter has.
    """
    adapters = list(adapters)
    if len(adapters) < 2:
        raise IncompatibleAdaptersError(
            f"SHARE needs at least 2 adapters to share a basis, got {len(adapters)}. "
            "Fix: pass two or more adapters trained on the same base model."
        )
    problems = _name_problems(adapters) + _base_model_problems(adapters)
    problems += _module_set_problems(adapters) + _shape_problems(adapters)
    if problems:
        raise IncompatibleAdaptersError(
            f"these {len(adapters)} adapters cannot share a basis ({len(problems)} "
            "difference(s)):\n  - " + "\n  - ".join(problems)
            + "\nFix: compress only adapters trained with the same base model and target modules."
        )


def _name_problems(adapters: Sequence[AdapterSource]) -> list[str]:
    counts = Counter(a.name for a in adapters)
    return [
        f"adapter name {name!r} is used {n} times (sources: "
        + ", ".join(a.source for a in adapters if a.name == name)
        + "); pass distinct names"
        for name, n in counts.items()
        if n > 1
    ]


def _base_model_problems(adapters: Sequence[AdapterSource]) -> list[str]:
    bases = {a.name: a.config.get("base_model_name_or_path") for a in adapters}
    if len({b for b in bases.values() if b}) <= 1:
        return []
    return ["different base models: " + "; ".join(f"{n!r}: {b!r}" for n, b in bases.items())]


def _module_set_problems(adapters: Sequence[AdapterSource]) -> list[str]:
    everything = sorted(set().union(*(a.modules.keys() for a in adapters)))
    problems = []
    for a in adapters:
        missing = [m for m in everything if m not in a.modules]
        if missing:
            problems.append(
                f"adapter {a.name!r} lacks {len(missing)} of the {len(everything)} LoRA modules "
                f"the others have: {_listing(missing)}"
            )
    return problems


def _shape_problems(adapters: Sequence[AdapterSource]) -> list[str]:
    common = set.intersection(*(set(a.modules) for a in adapters))
    problems = []
    for module in sorted(common):
        shapes = {a.name: (a.modules[module].d_in, a.modules[module].d_out) for a in adapters}
        if len(set(shapes.values())) > 1:
            problems.append(
                f"module {module!r} has different (d_in, d_out): "
                + "; ".join(f"{n!r}: {s}" for n, s in shapes.items())
            )
    return problems
