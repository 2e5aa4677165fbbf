"""The lorashare checkpoint on disk, and plain PEFT adapter folders written from tensors.

Layout (format version 3, or 4 for mixed int8/int4 storage; versions 1 and 2 are read too)::

    checkpoint/
      share_config.json              # format version, method, adapters, k per group, stats, and the
                                     # PEFT config several adapters share
      shared_components.safetensors  # "<module>.lora_A.basis" (d_in, k), "<module>.lora_B.basis"
                                     # (d_out, k), "<module>.lora_{A,B}.mean" when centered
      adapters/<name>/
        loadings.safetensors         # "<module>.lora_A" (k_A, r), "<module>.lora_B" (k_B, r); or, for a
                                     # group with per_adapter "core", "<module>.core" (k_B, k_A)
        classifier_head.safetensors  # carried tensors (heads, ...), only when there are any
        adapter_meta.json            # original PEFT config (null: the shared one), source, dtype, bytes;
                                     # ranks, scales, dW errors and norms per module, as lists in group order

In format 3, "<module>" in the two tensor files is the module's index in the groups of
share_config.json; in formats 1 and 2 its full name. In memory every key is the full name and every
adapter's meta holds its own PEFT config.

With ``options.dtype`` "int8", the two safetensors files of basis and loadings hold their
tensors as I8 plus one F32 tensor "int8_scales" with a scale per column (see :mod:`share_hf._quant`);
in memory they are float32 on that grid. With ``options.dtype`` "mixed" (format 4) a group side's last
``int4`` basis columns (its ``"int4"`` count in share_config.json) are stored apart, packed two numbers per
byte, as ``U8`` tensor "<module>.<side>.basis4" (ceil(d / 2), int4); the leading ones stay in "basis".

Everything is written through one atomic-folder helper: a checkpoint appears whole or not at all,
and an existing one is replaced only after its successor is complete. Reading checks the files
against ``share_config.json`` and reports every problem found in one :class:`CheckpointError`.
"""

from __future__ import annotations

import copy
import glob
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from share_core.errors import (
    CheckpointError,
    InvalidAdapterError,
    InvalidArgumentError,
    ShareError,
    UnknownAdapterError,
)
from share_hf._io import (
    FLOAT_DTYPE_NAMES,
    atomic_directory,
    check_output_target,
    dtype_code,
    download_snapshot,
    load_safetensors,
    looks_like_hub_id,
    name_problem,
    read_json,
    read_safetensors_header,
    replaced_siblings,
    safetensors_nbytes,
    save_safetensors,
    strict_json,
)
from share_hf._quant import INT4_CODE, SCALES_KEY, decode, encode, scales_problems
from share_hf.adapters import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "check_adapter_target",
    "check_checkpoint_target",
    "checkpoint_file_bytes",
    "checkpoint_nbytes",
    "load_checkpoint",
    "push_checkpoint_to_hub",
    "save_checkpoint",
    "write_peft_adapter",
]

# 2: per-group 'per_adapter' (k_B x k_A cores), factor_form 'balanced'
# 3: int8 storage; basis and loadings tensors keyed by group index; per-module figures of adapter_meta.json
#    as lists in group order (objects keyed by the module's full name cost about 6 KB per adapter on
#    roberta-base); a PEFT config several adapters share written once, in share_config.json
# 4: mixed storage: int8 basis columns, then int4 ones ("int4" per group side; "<module>.<side>.basis4")
FORMAT_VERSION = 4
INT8 = "int8"  # options.dtype of int8 storage (format 3)
MIXED = "mixed"  # options.dtype of int8 + int4 storage (format 4)
INT8_FORMAT = 3  # the oldest format that holds int8 storage, and the one every non-mixed checkpoint is written in
MIXED_FORMAT = 4  # the oldest format that holds mixed storage (written only for it)
_PER_MODULE_KEYS = ("ranks", "scales", "dw_error", "dw_norm")  # adapter_meta.json figures per module

CONFIG_FILE = "share_config.json"
COMPONENTS_FILE = "shared_components.safetensors"
ADAPTERS_DIR = "adapters"
LOADINGS_FILE = "loadings.safetensors"
HEAD_FILE = "classifier_head.safetensors"
META_FILE = "adapter_meta.json"
README_FILE = "README.md"

_REQUIRED_KEYS = ("format_version", "method", "adapters", "groups", "options", "stats")
_OPTIONAL_KEYS = ("library", "library_version", "base_model_name_or_path", "peft_config")
_REQUIRED_META_KEYS = ("peft_config", "ranks", "scales", "dtype", "original_bytes", "dw_error")
_SIDES = {"lora_A": "d_in", "lora_B": "d_out"}
_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}

_FIX = "Fix: re-create the checkpoint (lorashare compress ... --overwrite) or restore its files."

#: key -> (shape, safetensors dtype code), from a file header or from tensors in memory.
_Specs = dict[str, tuple[tuple[int, ...], str]]


@dataclass
class Checkpoint:
    """A lorashare checkpoint in memory.

    Attributes:
        config: ``share_config.json``.
        components: ``shared_components.safetensors``: bases and means per (module, side).
        loadings: Adapter name -> ``adapters/<name>/loadings.safetensors``.
        heads: Adapter name -> carried tensors (``classifier_head.safetensors``); ``{}`` when the
            adapter has none, and then no file is written.
        metas: Adapter name -> ``adapters/<name>/adapter_meta.json``.
        path: The folder it was loaded from, if any.

    After ``load_checkpoint(..., adapters=[...])`` the per-adapter dicts hold only the adapters
    asked for, while ``config["adapters"]`` still lists all of them.
    """

    config: dict
    components: dict[str, torch.Tensor]
    loadings: dict[str, dict[str, torch.Tensor]]
    heads: dict[str, dict[str, torch.Tensor]]
    metas: dict[str, dict]
    path: Path | None = None


@dataclass(frozen=True)
class _Side:
    k: int
    centered: bool
    d: int
    form: str = "loadings"  # the group's per-adapter storage: "loadings" or "core"
    int4: int = 0  # trailing basis columns stored in int4 (mixed storage)


def _is_int(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scale(value: object) -> bool:
    """A finite, non-zero number within float range (a LoRA scale, divided by on reconstruction)."""
    if not _is_number(value):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    return math.isfinite(number) and number != 0


def _is_dtype_name(value: object) -> bool:
    """One of "float64", "float32", "float16", "bfloat16" (a JSON list or object is not: it
    cannot even be looked up)."""
    return isinstance(value, str) and value in FLOAT_DTYPE_NAMES


def _is_storage_name(value: object) -> bool:
    """An options.dtype: a float dtype name, "int8" or "mixed"."""
    return _is_dtype_name(value) or value in (INT8, MIXED)


def _is_quantized(config: Mapping) -> bool:
    """int8 or mixed storage: I8 (and U8) tensors plus a scales tensor in each file."""
    options = config.get("options")
    return isinstance(options, dict) and options.get("dtype") in (INT8, MIXED)


def _is_mixed(config: Mapping) -> bool:
    options = config.get("options")
    return isinstance(options, dict) and options.get("dtype") == MIXED


def _is_error(value: object) -> bool:
    """A relative error: a number >= 0 (``Infinity`` allowed, for an all-zero original)."""
    return _is_number(value) and value >= 0


# ------------------------------------------------------------------------------ config checks


def _format_version_problems(config: Mapping) -> list[str]:
    version = config.get("format_version")
    if "format_version" in config and not _is_int(version, 1):
        return [f"{CONFIG_FILE}: format_version must be a positive integer, found {version!r}"]
    return []



def _raise_if_newer(config: Mapping, where: str) -> None:
    """A newer format raises at once: nothing else in it can be trusted to mean the same."""
    version = config.get("format_version")
    if _is_int(version, 1) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} uses checkpoint format {version}, written by a newer lorashare; this version "
            f"reads formats 1 to {FORMAT_VERSION}. Fix: upgrade lorashare (pip install -U lorashare)."
        )


def _adapter_names(config: Mapping) -> tuple[list[str] | None, list[str]]:
    """The adapter list of share_config.json, or None when it is unusable; plus problems."""
    names = config.get("adapters")
    if "adapters" not in config:
        return None, []
    if not isinstance(names, list):
        return None, [f"{CONFIG_FILE}: 'adapters' must be a list of names, found {type(names).__name__}"]
    if not names:
        return None, [f"{CONFIG_FILE}: 'adapters' is empty; a checkpoint holds at least one adapter"]
    problems = [f"{CONFIG_FILE}: {p}" for p in map(name_problem, names) if p is not None]
    counts = Counter(n for n in names if isinstance(n, str))
    problems += [f"{CONFIG_FILE}: adapter {n!r} is listed more than once" for n in sorted(counts) if counts[n] > 1]
    return (None if problems else list(names)), problems


def _parse_group(module: str, group: object) -> tuple[dict[str, _Side], list[str]]:
    """The sides of one group that are well formed, and the problems of the others."""
    where = f"{CONFIG_FILE}: group {module!r}"
    if not isinstance(group, dict):
        return {}, [f"{where} must be an object, found {type(group).__name__}"]
    problems = [
        f"{where}: {dim!r} must be a positive integer, found {group.get(dim)!r}"
        for dim in ("d_in", "d_out")
        if not _is_int(group.get(dim), 1)
    ]
    form = group.get("per_adapter", "loadings")
    if form not in ("loadings", "core"):
        problems.append(f"{where}: per_adapter must be 'loadings' or 'core', found {form!r}")
        form = None
    sides = {}
    for side, dim in _SIDES.items():
        spec = group.get(side)
        if not isinstance(spec, dict):
            problems.append(f"{where} lacks {side!r} (an object with 'k', 'centered', 'rank', 'explained_variance')")
            continue
        bad = []
        if not _is_int(spec.get("k"), 0):
            bad.append(f"{where}: {side}.k must be an integer >= 0, found {spec.get('k')!r}")
        elif _is_int(group.get(dim), 1) and spec["k"] > group[dim]:
            bad.append(f"{where}: {side}.k is {spec['k']}, more than {dim}={group[dim]} components cannot exist")
        if not isinstance(spec.get("centered"), bool):
            bad.append(f"{where}: {side}.centered must be true or false, found {spec.get('centered')!r}")
        int4 = spec.get("int4", 0)
        if not _is_int(int4, 0) or (_is_int(spec.get("k"), 0) and int4 > spec["k"]):
            bad.append(f"{where}: {side}.int4 must be an integer from 0 to k={spec.get('k')!r} (basis columns "
                       f"stored in int4), found {int4!r}")
        problems += bad
        if not _is_int(spec.get("rank"), 0):
            problems.append(f"{where}: {side}.rank must be an integer >= 0, found {spec.get('rank')!r}")
        if "explained_variance" not in spec or not (
            spec["explained_variance"] is None or _is_number(spec["explained_variance"])
        ):
            problems.append(
                f"{where}: {side}.explained_variance must be a number or null (unknown), found "
                f"{spec.get('explained_variance', '(missing)')!r}"
            )
        if "stacked_columns" in spec and not _is_int(spec["stacked_columns"], 0):
            problems.append(
                f"{where}: {side}.stacked_columns must be an integer >= 0, found {spec['stacked_columns']!r}"
            )
        if not bad and _is_int(group.get(dim), 1) and form is not None:
            sides[side] = _Side(k=spec["k"], centered=spec["centered"], d=group[dim], form=form, int4=int4)
    if form == "core" and any(s.centered for s in sides.values()):
        problems.append(f"{where}: per_adapter 'core' cannot have a centered side (cores need uncentered bases)")
        sides = {}
    return sides, problems


def _options_problems(options: object) -> list[str]:
    where = f"{CONFIG_FILE}: options"
    if not isinstance(options, dict):
        return [f"{where} must be an object, found {type(options).__name__}"]
    problems = []
    if "dtype" in options and not _is_storage_name(options["dtype"]):
        problems.append(f"{where}.dtype must be one of {sorted([*FLOAT_DTYPE_NAMES, INT8, MIXED])}, "
                        f"found {options['dtype']!r}")
    k = options.get("num_components")
    if not (k == "auto" or _is_int(k, 1)):
        found = repr(k) if "num_components" in options else "nothing"
        problems.append(f"{where}.num_components must be a positive integer or 'auto', found {found}")
    threshold = options.get("variance_threshold")
    if (threshold is not None or k == "auto") and not (_is_number(threshold) and 0 < threshold <= 1):
        problems.append(
            f"{where}.variance_threshold must be a number in (0, 1]"
            + (" when num_components is 'auto'" if k == "auto" else " or null")
            + f", found {threshold!r}"
        )
    if "center" in options and not isinstance(options["center"], bool):
        problems.append(f"{where}.center must be true or false, found {options['center']!r}")
    if options.get("factor_form", "scaled") not in ("scaled", "balanced"):
        problems.append(f"{where}.factor_form must be 'scaled' or 'balanced', found {options['factor_form']!r}")
    if options.get("per_adapter", "loadings") not in ("loadings", "core", "auto"):
        problems.append(f"{where}.per_adapter must be 'loadings', 'core' or 'auto', found {options['per_adapter']!r}")
    if "refine_steps" in options and not _is_int(options["refine_steps"], 0):
        problems.append(f"{where}.refine_steps must be an integer >= 0, found {options['refine_steps']!r}")
    for key in ("target_ratio", "max_error"):
        if options.get(key) is not None and not (_is_number(options[key]) and options[key] > 0):
            problems.append(f"{where}.{key} must be a positive number or null, found {options[key]!r}")
    return problems


def _stats_problems(stats: object, names: Sequence[str] | None) -> list[str]:
    where = f"{CONFIG_FILE}: stats"
    if not isinstance(stats, dict):
        return [f"{where} must be an object, found {type(stats).__name__}"]
    problems = []
    if "original_bytes" in stats and not _is_int(stats["original_bytes"], 0):
        problems.append(f"{where}.original_bytes must be an integer >= 0, found {stats['original_bytes']!r}")
    errors = stats.get("dw_error")
    if not isinstance(errors, dict):
        return problems + [f"{where}.dw_error must be an object of adapter -> relative error, found {errors!r}"]
    for name in names or []:
        if name not in errors:
            problems.append(f"{where}.dw_error has no entry for adapter {name!r}")
        elif not _is_error(errors[name]):
            problems.append(f"{where}.dw_error[{name!r}] must be a number >= 0, found {errors[name]!r}")
    return problems


def _storage_code(config: Mapping, *, on_disk: bool) -> str | None:
    """The safetensors dtype code options.dtype asks for, when it names a valid dtype. int8 and mixed
    storage is I8 on disk (int4 columns, U8, are checked apart) and float32 (on the grid) in memory."""
    options = config.get("options")
    dtype = options.get("dtype") if isinstance(options, dict) else None
    if dtype in (INT8, MIXED):
        return "I8" if on_disk else "F32"
    return _CODES[dtype] if _is_dtype_name(dtype) else None


def _check_config(config: Mapping) -> tuple[list[str], list[str], list[str] | None, dict | None]:
    """(problems, unknown keys, adapter names or None, parsed groups or None) of a share_config.json.

    Groups are None when 'groups' is missing or not an object: then no tensor can be judged
    against them, and only the problem with 'groups' itself is reported (not one per tensor)."""
    problems = [f"{CONFIG_FILE} lacks the required key {key!r}" for key in _REQUIRED_KEYS if key not in config]
    problems += _format_version_problems(config)
    version = config.get("format_version")
    if _is_quantized(config) and _is_int(version, 1):
        dtype, oldest = (MIXED, MIXED_FORMAT) if _is_mixed(config) else (INT8, INT8_FORMAT)
        if version < oldest:
            problems.append(f"{CONFIG_FILE}: options.dtype {dtype!r} needs format_version {oldest} or later, "
                            f"found {version}")
    unknown = sorted(set(config) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    if "method" in config and config["method"] != "share":
        problems.append(f"{CONFIG_FILE}: method must be 'share', found {config['method']!r}")
    if "library" in config and config["library"] != "lorashare":
        problems.append(f"{CONFIG_FILE}: library must be 'lorashare', found {config['library']!r}")
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        problems.append(f"{CONFIG_FILE}: base_model_name_or_path must be a string or null, found {base!r}")
    if "peft_config" in config and not isinstance(config["peft_config"], dict):
        problems.append(f"{CONFIG_FILE}: peft_config must be an object (the PEFT config adapters share), "
                        f"found {type(config['peft_config']).__name__}")
    names, name_problems = _adapter_names(config)
    problems += name_problems
    if "options" in config:
        problems += _options_problems(config["options"])
    if "stats" in config:
        problems += _stats_problems(config["stats"], names)
    groups = config.get("groups")
    if "groups" not in config:
        return problems, unknown, names, None
    if not isinstance(groups, dict):
        problems.append(f"{CONFIG_FILE}: 'groups' must be an object, found {type(groups).__name__}")
        return problems, unknown, names, None
    if not groups:
        problems.append(f"{CONFIG_FILE}: 'groups' is empty; a checkpoint holds at least one LoRA module")
    parsed: dict[str, dict[str, _Side]] = {}
    for module, group in groups.items():
        parsed[module], group_problems = _parse_group(module, group)
        problems += group_problems
    if not _is_mixed(config):
        problems += [f"{CONFIG_FILE}: group {m!r}: {side}.int4 is {s.int4}, but int4 basis columns exist only "
                     f"in mixed storage (options.dtype {MIXED!r})"
                     for m, sides in parsed.items() for side, s in sides.items() if s.int4]
    return problems, unknown, names, parsed


# ------------------------------------------------------------------------------ shape checks


def _split_key(key: str, suffixes: Sequence[str]) -> tuple[str, str] | None:
    """'<module>.<side><suffix>' -> (module, side) for side in lora_A/lora_B, else None."""
    for suffix in suffixes:
        for side in _SIDES:
            tail = f".{side}{suffix}"
            if key.endswith(tail):
                return key[: -len(tail)], side
    return None


def _shape_problems(
    expected: Mapping[str, tuple[int, ...]],
    found: _Specs,
    *,
    where: str,
    malformed: set[tuple[str, str]],
    suffixes: Sequence[str],
) -> list[str]:
    """Missing keys, wrong shapes, and keys nobody expects (unless their group is malformed:
    that is reported already, and its keys cannot be judged)."""
    problems = []
    for key, shape in expected.items():
        if key not in found:
            problems.append(f"{where} lacks tensor {key!r} (expected shape {list(shape)})")
        elif tuple(found[key][0]) != tuple(shape):
            problems.append(
                f"{where}: tensor {key!r} has shape {list(found[key][0])}, but share_config.json "
                f"and the adapter metadata give {list(shape)}"
            )
    for key in sorted(set(found) - set(expected)):
        if _split_key(key, suffixes) not in malformed:
            problems.append(f"{where} holds tensor {key!r}, which share_config.json does not describe")
    return problems


def _dtype_problems(found: _Specs, *, where: str, want: str | None) -> list[str]:
    """Basis, means and loadings are stored in options.dtype (any float dtype when unset)."""
    wrong: dict[str, list[str]] = {}
    for key, (_, code) in found.items():
        if (code != want) if want else (code not in _CODES.values()):
            wrong.setdefault(code, []).append(key)
    names = {code: name for name, code in _CODES.items()} | {"I8": INT8}
    expected = f"{want} ({names[want]}, the options.dtype of {CONFIG_FILE})" if want else "a floating dtype (F64/F32/F16/BF16)"
    return [
        f"{where}: {len(keys)} tensor(s) stored as {code}, expected {expected} (e.g. {keys[0]!r})"
        for code, keys in sorted(wrong.items())
    ]


def _component_problems(groups: Mapping[str, dict[str, _Side]] | None, found: _Specs, want: str | None) -> list[str]:
    if groups is None:
        return _dtype_problems(found, where=COMPONENTS_FILE, want=want)
    expected = {}
    for module, sides in groups.items():
        for side, s in sides.items():
            expected[f"{module}.{side}.basis"] = (s.d, s.k)
            if s.centered:
                expected[f"{module}.{side}.mean"] = (s.d,)
    malformed = {(m, side) for m, sides in groups.items() for side in _SIDES if side not in sides}
    return _shape_problems(
        expected, found, where=COMPONENTS_FILE, malformed=malformed, suffixes=(".basis", ".mean")
    ) + _dtype_problems(found, where=COMPONENTS_FILE, want=want)


def _meta_problems(
    meta: Mapping, where: str, groups: Mapping[str, object] | None
) -> tuple[list[str], dict[str, int]]:
    """Problems of one adapter_meta.json, and its valid ranks (checked against `groups` unless
    those are unknown)."""
    known = groups is not None
    groups = groups or {}
    problems = [f"{where} lacks the required key {key!r}" for key in _REQUIRED_META_KEYS if key not in meta]
    if "peft_config" in meta:
        peft = meta["peft_config"]
        if not isinstance(peft, dict):
            problems.append(f"{where}: 'peft_config' must be an object (the adapter's adapter_config.json)")
        elif not isinstance(peft.get("peft_type"), str) or peft["peft_type"].upper() != "LORA":
            problems.append(f"{where}: peft_config.peft_type must be 'LORA', found {peft.get('peft_type')!r}")
    if "dtype" in meta and not _is_dtype_name(meta["dtype"]):
        problems.append(
            f"{where}: 'dtype' must be one of {sorted(FLOAT_DTYPE_NAMES)}, found {meta['dtype']!r}"
        )
    if "original_bytes" in meta and not _is_int(meta["original_bytes"], 0):
        problems.append(f"{where}: 'original_bytes' must be an integer >= 0, found {meta['original_bytes']!r}")
    for key in ("ranks", "scales", "dw_error"):
        if key in meta and not isinstance(meta[key], dict):
            problems.append(f"{where}: {key!r} must be a list with one value per group or an object of module -> value")
    ranks = meta.get("ranks") if isinstance(meta.get("ranks"), dict) else {}
    valid = {m: r for m, r in ranks.items() if _is_int(r, 1)}
    problems += [
        f"{where}: rank of {m!r} must be a positive integer, found {r!r}"
        for m, r in ranks.items()
        if m not in valid
    ]
    if isinstance(meta.get("ranks"), dict):
        problems += [f"{where}: no rank for module {m!r}" for m in groups if m not in ranks]
        if known:
            problems += [f"{where}: rank given for {m!r}, which is not a group of {CONFIG_FILE}" for m in ranks if m not in groups]
    scales = meta.get("scales")
    if isinstance(scales, dict):
        for m in groups:
            if m not in scales:
                problems.append(f"{where}: no scale for module {m!r}")
            elif not _is_scale(scales[m]):
                problems.append(f"{where}: scale of {m!r} must be a finite non-zero number, found {scales[m]!r}")
    for key in ("dw_error", "dw_norm"):  # dw_norm (written since 0.2) is optional
        values = meta.get(key)
        if key in meta and not isinstance(values, dict):
            if key == "dw_norm":
                problems.append(f"{where}: 'dw_norm' must be a list with one value per group or an object of module -> value")
            continue
        for m in groups if isinstance(values, dict) else ():
            if m not in values:
                problems.append(f"{where}: no {key} for module {m!r}")
            elif not _is_error(values[m]):
                problems.append(f"{where}: {key} of {m!r} must be a number >= 0, found {values[m]!r}")
    return problems, valid


def _adapter_problems(
    name: str,
    groups: Mapping[str, dict[str, _Side]] | None,
    meta: Mapping | None,
    loadings: _Specs | None,
    heads: _Specs | None,
    want: str | None,
) -> list[str]:
    """Problems of one adapter's meta, loadings and heads against the groups of share_config.json."""
    if meta is None:
        return []
    problems, ranks = _meta_problems(meta, f"{ADAPTERS_DIR}/{name}/{META_FILE}", groups)
    where = f"{ADAPTERS_DIR}/{name}/{LOADINGS_FILE}"
    if groups is None:
        return problems + (_dtype_problems(loadings, where=where, want=want) if loadings else [])
    if heads:
        factor_keys = {f"{m}.{side}.weight" for m in groups for side in _SIDES}
        problems += [
            f"{ADAPTERS_DIR}/{name}/{HEAD_FILE} holds {key!r}, a LoRA factor key that reconstruction "
            "writes itself"
            for key in sorted(set(heads) & factor_keys)
        ]
    if loadings is None:
        return problems
    expected = {}
    for module, sides in groups.items():
        if module not in ranks:
            continue
        if len(sides) == len(_SIDES) and sides["lora_B"].form == "core":
            expected[f"{module}.core"] = (sides["lora_B"].k, sides["lora_A"].k)
        else:
            expected.update({f"{module}.{side}": (s.k, ranks[module]) for side, s in sides.items()})
    malformed = {(m, side) for m, sides in groups.items() for side in _SIDES if side not in sides or m not in ranks}
    return (
        problems
        + _shape_problems(expected, loadings, where=where, malformed=malformed, suffixes=("",))
        + _dtype_problems(loadings, where=where, want=want)
    )


def _problem_report(where: str, problems: Sequence[str]) -> str:
    return (
        f"{where} is damaged or inconsistent ({len(problems)} problem(s)):\n  - "
        + "\n  - ".join(problems)
        + f"\n{_FIX}"
    )


# ------------------------------------------------------------------------------ reading


def _resolve_checkpoint(path_or_id, adapters: Sequence[str] | None, revision, token) -> Path:
    source = os.fspath(path_or_id)
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(
            f"expected a lorashare checkpoint folder, found a file: {source!r}. Fix: pass the "
            f"folder that holds {CONFIG_FILE}."
        )
    aside = replaced_siblings(path)
    if aside:
        raise CheckpointError(
            f"expected a lorashare checkpoint folder at {source!r}, found none, but {aside[-1]} holds the "
            "checkpoint a save was replacing when it was interrupted. Fix: rename that folder back to "
            f"{path.name!r}, or save to {source!r} again (the next save puts it back first)."
        )
    if not looks_like_hub_id(source):
        raise CheckpointError(
            f"expected a lorashare checkpoint folder or a Hub id like org/name, found {source!r}, "
            "which is neither an existing folder nor a Hub id. Fix: check the path."
        )
    if adapters is None:
        per_adapter = [f"{ADAPTERS_DIR}/*"]
    else:
        per_adapter = [f"{ADAPTERS_DIR}/{glob.escape(n)}/*" for n in adapters]
    return download_snapshot(
        source,
        allow_patterns=[CONFIG_FILE, COMPONENTS_FILE, *per_adapter],
        revision=revision,
        token=token,
        error=CheckpointError,
        what="lorashare checkpoint",
    )


def _read_config(folder: Path) -> dict:
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{folder} has no {CONFIG_FILE}, so it is not a lorashare checkpoint (expected "
            f"{CONFIG_FILE}, {COMPONENTS_FILE} and {ADAPTERS_DIR}/<name>/). Fix: pass the folder "
            "written by SHAREModel.save / lorashare compress."
        )
    return read_json(folder / CONFIG_FILE, error=CheckpointError, context=f"checkpoint {folder}")


def _selection(adapters) -> list[str] | None:
    """`adapters` as a list of names (a single name, or any iterable, read once), or None for all of them."""
    if adapters is None:
        return None
    selected = [adapters] if isinstance(adapters, str) else list(adapters)
    if not selected:
        raise InvalidArgumentError(
            "adapters=[] selects no adapter, so nothing could be reconstructed. Fix: pass the names to load, "
            "or adapters=None to load all of them."
        )
    return selected


def _select(names: list[str] | None, adapters: Sequence[str] | None, folder: Path) -> list[str] | None:
    if adapters is None or names is None:
        return names
    if isinstance(adapters, str):
        adapters = [adapters]
    unknown = [a for a in adapters if a not in names]
    if unknown:
        raise UnknownAdapterError(
            f"checkpoint {folder} has no adapter {', '.join(map(repr, unknown))}; it holds "
            f"{len(names)}: {', '.join(names)}. Fix: ask for one of those names."
        )
    return list(dict.fromkeys(adapters))


def _header_or_problem(path: Path, problems: list[str]) -> _Specs | None:
    try:
        return read_safetensors_header(path, error=CheckpointError, context="checkpoint")
    except CheckpointError as exc:
        problems.append(str(exc).removeprefix("checkpoint: "))
        return None


def _unscaled(specs: _Specs | None, where: str, config: Mapping, problems: list[str],
              groups: Mapping[str, dict[str, _Side]] | None = None) -> _Specs | None:
    """A file header as in memory: without its int8 scales tensor (checked here) for int8 storage, with
    format 3's group-index keys named by module, and (mixed storage) each side's int4 basis columns
    (checked here) counted in its basis, as one (d, k) tensor."""
    if specs is None:
        return None
    if _is_quantized(config):
        problems += scales_problems(specs, where)
        specs = {k: v for k, v in specs.items() if k != SCALES_KEY}
    specs = _keys_from_file(specs, _indexed_groups(config))
    if _is_mixed(config) and groups is not None:
        for module, sides in groups.items():
            for side, s in sides.items():
                if s.int4:
                    _merge_int4_spec(specs, f"{module}.{side}.basis", s, where, problems)
    return specs


def _merge_int4_spec(specs: _Specs, key: str, side: _Side, where: str, problems: list[str]) -> None:
    """Fold the header entry of `key`'s int4 columns into its own, when both are as share_config.json says."""
    packed, want = specs.get(key + "4"), ((side.d + 1) // 2, side.int4)
    if packed is None:
        problems.append(f"{where} lacks tensor {key + '4'!r} (its last {side.int4} basis columns in int4, "
                        f"{INT4_CODE} shape {list(want)})")
        return
    bad = [f"has shape {list(packed[0])}, expected {list(want)}"] if tuple(packed[0]) != want else []
    bad += [f"is stored as {packed[1]}, expected {INT4_CODE} (two int4 numbers per byte)"] if packed[1] != INT4_CODE else []
    if bad:
        problems.append(f"{where}: tensor {key + '4'!r} " + " and ".join(bad))
        return
    del specs[key + "4"]
    if key in specs:
        shape, code = specs[key]
        if len(shape) == 2 and shape[0] == side.d:
            specs[key] = ((side.d, shape[1] + side.int4), code)


# Format 3 keys the tensors of shared_components.safetensors and loadings.safetensors by the module's index
# in share_config.json's groups ("12.lora_A.basis" for "<module>.lora_A.basis"): a full module name is
# 60-70 bytes in every safetensors header entry, for every adapter.
_TENSOR_SUFFIXES = (".lora_A.basis", ".lora_B.basis", ".lora_A.basis4", ".lora_B.basis4", ".lora_A.mean", ".lora_B.mean",
                    ".lora_A", ".lora_B", ".core")


def _indexed_groups(config: Mapping) -> list[str] | None:
    """The modules in group order when the files key tensors by group index (format 3), else None."""
    groups = config.get("groups")
    version = config.get("format_version")
    return list(groups) if _is_int(version, 3) and isinstance(groups, dict) else None


def _keys_to_file(tensors: Mapping[str, torch.Tensor], modules: list[str] | None) -> dict[str, torch.Tensor]:
    if modules is None:
        return dict(tensors)
    index = {m: str(i) for i, m in enumerate(modules)}
    out = {}
    for key, value in tensors.items():
        suffix = next((x for x in _TENSOR_SUFFIXES if key.endswith(x) and key[: -len(x)] in index), None)
        out[index[key[: -len(suffix)]] + suffix if suffix else key] = value
    return out


def _keys_from_file(found: Mapping, modules: list[str] | None) -> dict:
    """Tensors or header specs keyed by module name; a key that is not a canonical group index with a known
    suffix (or whose module name is also present) is kept as it is, for the checks to report."""
    if modules is None:
        return dict(found)
    out = {}
    for key, value in found.items():
        head, dot, rest = key.partition(".")
        name = key
        if dot and head.isdigit() and str(int(head)) == head and int(head) < len(modules) and f".{rest}" in _TENSOR_SUFFIXES:
            name = modules[int(head)] + f".{rest}"
        out[key if name in found and name != key else name] = value
    return out


def _int4_columns(config: Mapping) -> dict[str, tuple[int, int]]:
    """basis key -> (d, int4 columns) of every side with int4 columns (mixed storage)."""
    if not _is_mixed(config):
        return {}
    return {f"{module}.{side}.basis": (group[dim], spec["int4"])
            for module, group in config["groups"].items() for side, dim in _SIDES.items()
            if (spec := group[side]).get("int4", 0)}


def _to_file(tensors: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """A basis or loadings file's tensors as written: group-index keys (format 3), int8 with scales (int8),
    trailing int4 basis columns apart and packed (mixed)."""
    tensors = dict(tensors)
    for key, (_, k4) in _int4_columns(config).items():
        if key in tensors:
            basis = tensors[key]
            tensors[key], tensors[key + "4"] = basis[:, :basis.shape[1] - k4], basis[:, basis.shape[1] - k4:]
    keyed = _keys_to_file(tensors, _indexed_groups(config))
    if not _is_quantized(config):
        return keyed
    return encode(keyed, int4=frozenset(k for k in keyed if k.endswith(".basis4")))


def _from_file(tensors: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """The inverse of :func:`_to_file`, on a file checked by :func:`_inspect`."""
    out = _keys_from_file(decode(tensors) if _is_quantized(config) else tensors, _indexed_groups(config))
    for key, (d, _) in _int4_columns(config).items():
        if key + "4" in out:
            out[key] = torch.cat([out[key], out.pop(key + "4")[:d]], dim=1)
    return out


def _meta_from_disk(meta: object, groups: Mapping | None, where: str, problems: list[str],
                    shared: object = None) -> object:
    """adapter_meta.json as in memory: its per-module lists (format 3) as objects keyed by module (objects,
    formats 1 and 2, are kept as they are), and a null peft_config replaced by the one of share_config.json
    (`shared`)."""
    if not isinstance(meta, dict):
        return meta
    out = dict(meta)
    if "peft_config" in meta and meta["peft_config"] is None:
        if isinstance(shared, dict):
            out["peft_config"] = copy.deepcopy(shared)
        else:
            problems.append(f"{where}: peft_config is null (the one in {CONFIG_FILE}), but {CONFIG_FILE} has no "
                            "'peft_config' object")
    modules = list(groups) if groups is not None else None
    for key in _PER_MODULE_KEYS:
        values = meta.get(key)
        if not isinstance(values, list):
            continue
        if modules is None:  # the groups are unusable (reported already): nothing to pair the values with
            out[key] = {}
            continue
        if len(values) != len(modules):
            problems.append(
                f"{where}: {key!r} has {len(values)} entries, expected {len(modules)} (one per group of "
                f"{CONFIG_FILE}, in its order)"
            )
        out[key] = dict(zip(modules, values))
    return out


def _config_on_disk(config: Mapping, metas: Mapping[str, Mapping]) -> dict:
    """share_config.json as written: from format 3 on, with the PEFT config that most adapters have (when at
    least two have it) as 'peft_config', which their adapter_meta.json then point to with null."""
    out = {k: v for k, v in config.items() if k != "peft_config"}
    if not _is_int(config.get("format_version"), 3):
        return dict(config)
    configs = [m.get("peft_config") for m in metas.values() if isinstance(m, Mapping)]
    texts = Counter(json.dumps(c, sort_keys=True) for c in configs if isinstance(c, dict))
    if texts:
        text, count = texts.most_common(1)[0]
        if count >= 2:
            out["peft_config"] = next(c for c in configs if isinstance(c, dict) and json.dumps(c, sort_keys=True) == text)
    return out


def _meta_on_disk(meta: Mapping, config: Mapping) -> dict:
    """adapter_meta.json as written beside share_config.json `config` (as written): from format 3 on,
    per-module figures as lists in the order of the groups, and null for the PEFT config `config` holds; a
    checkpoint of an older format is written in that format's layout, as it is."""
    version = config.get("format_version")
    modules = list(config.get("groups") or {})
    out = dict(meta)
    if not (_is_int(version, 1) and version >= 3):
        return out
    if "peft_config" in config and meta.get("peft_config") == config["peft_config"]:
        out["peft_config"] = None
    for key in _PER_MODULE_KEYS:
        values = meta.get(key)
        if isinstance(values, Mapping) and len(values) == len(modules) and all(m in values for m in modules):
            out[key] = [values[m] for m in modules]
    return out


def _json_or_problem(path: Path, problems: list[str]) -> dict | None:
    if not path.is_file():
        problems.append(f"{path} is missing")
        return None
    try:
        return read_json(path, error=CheckpointError, context="checkpoint")
    except CheckpointError as exc:
        problems.append(str(exc).removeprefix("checkpoint: "))
        return None


def _inspect(folder: Path, adapters: Sequence[str] | None) -> tuple[dict, list[str], dict[str, dict]]:
    """Check a checkpoint folder without loading tensor data.

    Returns:
        ``(config, selected adapter names, metas of those adapters)``.

    Raises:
        CheckpointError: Every problem found, in one message.
        UnknownAdapterError: An adapter in `adapters` is not in the checkpoint.
    """
    config = _read_config(folder)
    _raise_if_newer(config, f"checkpoint {folder}")
    problems, unknown, names, groups = _check_config(config)
    if unknown:
        warnings.warn(
            f"checkpoint {folder}: {CONFIG_FILE} has keys this lorashare does not know "
            f"({', '.join(unknown)}); they are ignored. A newer lorashare may have written them.",
            stacklevel=3,
        )
    if not _is_int(config.get("format_version"), 1):
        groups = None  # how the files key their tensors depends on the version: they cannot be judged
    selected = _select(names, adapters, folder)
    if selected is None:
        raise CheckpointError(_problem_report(f"checkpoint {folder}", problems))
    want = _storage_code(config, on_disk=True)
    components = _unscaled(_header_or_problem(folder / COMPONENTS_FILE, problems), COMPONENTS_FILE, config, problems,
                           groups)
    if components is not None:
        problems += _component_problems(groups, components, want)
    metas = {}
    for name in selected:
        adir = folder / ADAPTERS_DIR / name
        if not adir.is_dir():
            problems.append(f"adapter {name!r} is listed in {CONFIG_FILE} but {ADAPTERS_DIR}/{name}/ is missing")
            continue
        meta = _meta_from_disk(_json_or_problem(adir / META_FILE, problems), groups,
                               f"{ADAPTERS_DIR}/{name}/{META_FILE}", problems, config.get("peft_config"))
        loadings = _unscaled(_header_or_problem(adir / LOADINGS_FILE, problems),
                             f"{ADAPTERS_DIR}/{name}/{LOADINGS_FILE}", config, problems)
        heads = _header_or_problem(adir / HEAD_FILE, problems) if os.path.lexists(adir / HEAD_FILE) else None
        problems += _adapter_problems(name, groups, meta, loadings, heads, want)
        if meta is not None:
            metas[name] = meta
    if adapters is None:
        _warn_stray_adapters(folder, selected)
    if problems:
        raise CheckpointError(_problem_report(f"checkpoint {folder}", problems))
    # the shared PEFT config is a file-level saving: in memory every adapter's meta holds its own
    return {k: v for k, v in config.items() if k != "peft_config"}, selected, metas


def _warn_stray_adapters(folder: Path, names: Sequence[str]) -> None:
    root = folder / ADAPTERS_DIR
    stray = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in names) if root.is_dir() else []
    if stray:
        warnings.warn(
            f"checkpoint {folder}: {ADAPTERS_DIR}/ holds folders not listed in {CONFIG_FILE} "
            f"({', '.join(stray)}); they are ignored.",
            stacklevel=4,
        )


def load_checkpoint(
    path_or_id: str | os.PathLike,
    *,
    adapters: Sequence[str] | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> Checkpoint:
    """Read a lorashare checkpoint from a folder or a Hub repo, checking it against its config.

    Args:
        path_or_id: A checkpoint folder, or a Hub repo id ``org/name`` (only the files needed are
            fetched; the local HF cache is used when ``HF_HUB_OFFLINE=1``).
        adapters: Names of the adapters to read; ``None`` reads all. Other adapters' files are
            neither downloaded nor opened.
        revision: Hub branch, tag or commit (ignored for local folders).
        token: Hub token for private repos (ignored for local folders).

    Returns:
        A :class:`Checkpoint` whose per-adapter dicts hold the selected adapters.

    Raises:
        CheckpointError: Not a checkpoint, unreachable, newer format, or damaged; every problem
            found (missing files or keys, shapes that disagree with the config, corrupt JSON or
            safetensors) is listed in one message.
        UnknownAdapterError: An adapter in `adapters` is not in the checkpoint.

    Example:
        ```python
        ckpt = load_checkpoint("org/glue-share", adapters=["sst2"])
        ckpt.loadings["sst2"]["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A"]
        ```
    """
    adapters = _selection(adapters)
    folder = _resolve_checkpoint(path_or_id, adapters, revision, token)
    config, selected, metas = _inspect(folder, adapters)
    context = f"checkpoint {folder}"
    components = _from_file(load_safetensors(folder / COMPONENTS_FILE, error=CheckpointError, context=context), config)
    loadings, heads = {}, {}
    for name in selected:
        adir = folder / ADAPTERS_DIR / name
        loadings[name] = _from_file(load_safetensors(adir / LOADINGS_FILE, error=CheckpointError, context=context), config)
        has_head = (adir / HEAD_FILE).is_file()
        heads[name] = load_safetensors(adir / HEAD_FILE, error=CheckpointError, context=context) if has_head else {}
    return Checkpoint(config=config, components=components, loadings=loadings, heads=heads, metas=metas, path=folder)


def checkpoint_file_bytes(directory: str | os.PathLike) -> dict[str, int]:
    """Bytes on disk of every file of the checkpoint in `directory`, by relative path.

    Only the files of the layout count (for the adapters listed in ``share_config.json``), so a
    model card or stray file beside them does not.

    Raises:
        CheckpointError: `directory` is not a checkpoint.
    """
    folder = Path(directory)
    config = _read_config(folder)
    names = config.get("adapters") if isinstance(config.get("adapters"), list) else []
    rels = [CONFIG_FILE, COMPONENTS_FILE]
    for name in names:
        if name_problem(name) is None:
            rels += [f"{ADAPTERS_DIR}/{name}/{f}" for f in (LOADINGS_FILE, HEAD_FILE, META_FILE)]
    return {rel: (folder / rel).stat().st_size for rel in rels if (folder / rel).is_file()}


def checkpoint_nbytes(ckpt: Checkpoint) -> dict[str, int]:
    """Bytes each file of `ckpt` takes once written by :func:`save_checkpoint`, by relative path.

    Computed in memory (JSON text and safetensors serialized, nothing written), so it equals
    what :func:`save_checkpoint` returns for the same checkpoint. After a partial load only the
    loaded adapters are counted.
    """
    config = _config_on_disk(ckpt.config, {n: m for n, m in ckpt.metas.items() if n in ckpt.loadings})
    sizes = {
        CONFIG_FILE: len(_json_text(config, CONFIG_FILE, CheckpointError).encode("utf-8")),
        COMPONENTS_FILE: safetensors_nbytes(_to_file(ckpt.components, ckpt.config)),
    }
    for name in ckpt.config.get("adapters", []):
        if name not in ckpt.loadings:
            continue
        prefix = f"{ADAPTERS_DIR}/{name}/"
        sizes[prefix + LOADINGS_FILE] = safetensors_nbytes(_to_file(ckpt.loadings[name], ckpt.config))
        if ckpt.heads.get(name):
            sizes[prefix + HEAD_FILE] = safetensors_nbytes(ckpt.heads[name])
        if name in ckpt.metas:
            text = _json_text(_meta_on_disk(ckpt.metas[name], config), prefix + META_FILE, CheckpointError)
            sizes[prefix + META_FILE] = len(text.encode("utf-8"))
    return sizes


# ------------------------------------------------------------------------------ writing


def _tensor_specs(tensors: object, where: str, problems: list[str]) -> _Specs | None:
    """Key -> (shape, dtype code) of tensors in memory, as :func:`read_safetensors_header` gives
    them for a file."""
    if not isinstance(tensors, Mapping):
        problems.append(f"{where} must be a dict of name -> tensor, found {type(tensors).__name__}")
        return None
    bad = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    problems += [f"{where}: {k!r} is not a str -> torch.Tensor entry" for k in bad]
    return {k: (tuple(v.shape), dtype_code(v.dtype)) for k, v in tensors.items() if k not in bad}


def _checkpoint_problems(ckpt: Checkpoint) -> list[str]:
    """Everything that would make `ckpt` fail to load once written."""
    if not isinstance(ckpt.config, dict):
        return [f"config must be a dict, found {type(ckpt.config).__name__}"]
    problems, _, names, groups = _check_config(ckpt.config)
    found = ckpt.config.get("format_version")
    if not (_is_int(found, 1) and found <= FORMAT_VERSION):
        problems.append(f"{CONFIG_FILE}: format_version must be 1 to {FORMAT_VERSION}, found {found!r}")
    want = _storage_code(ckpt.config, on_disk=False)
    components = _tensor_specs(ckpt.components, COMPONENTS_FILE, problems)
    if components is not None:
        problems += _component_problems(groups, components, want)
    if names is None:
        return problems
    for attr in ("loadings", "metas", "heads"):
        given = getattr(ckpt, attr)
        extra = sorted(set(given) - set(names), key=str)
        problems += [f"{attr}[{n!r}] belongs to no adapter listed in {CONFIG_FILE}" for n in extra]
    for name in names:
        if name not in ckpt.loadings or name not in ckpt.metas:
            problems.append(f"adapter {name!r} is listed in {CONFIG_FILE} but has no loadings or meta")
            continue
        meta = ckpt.metas[name]
        if not isinstance(meta, dict):
            problems.append(f"metas[{name!r}] must be a dict, found {type(meta).__name__}")
            continue
        loadings = _tensor_specs(ckpt.loadings[name], f"{ADAPTERS_DIR}/{name}/{LOADINGS_FILE}", problems)
        heads = _tensor_specs(ckpt.heads.get(name) or {}, f"{ADAPTERS_DIR}/{name}/{HEAD_FILE}", problems)
        problems += _adapter_problems(name, groups, meta, loadings, heads, want)
    return problems


def _json_text(data: object, what: str, error: type[ShareError]) -> str:
    try:
        # compact: with many adapters the metadata is a real share of the bytes (json.tool pretty-prints it)
        return strict_json(data, separators=(",", ":")) + "\n"  # (infinite errors as 1e999: strict JSON)
    except (TypeError, ValueError, RecursionError) as exc:
        raise error(
            f"{what} cannot be written as JSON ({exc}). Fix: keep it to str, numbers, bools, "
            "None, lists and dicts."
        ) from exc


def save_checkpoint(
    ckpt: Checkpoint, directory: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, int]:
    """Write `ckpt` to `directory` atomically.

    Everything is written into a hidden folder beside `directory`, flushed to disk, and renamed
    into place; on any error that folder is removed and `directory` is untouched. With
    `overwrite`, an existing checkpoint is replaced only once the new one is complete.

    Args:
        ckpt: The checkpoint; it is checked first, as :func:`load_checkpoint` would check it.
        directory: The checkpoint folder to create.
        overwrite: Replace an existing checkpoint, or use an existing empty folder. A non-empty
            folder without ``share_config.json`` is never replaced.

    Returns:
        Bytes on disk per written file, by path relative to `directory`.

    Raises:
        CheckpointExistsError: `directory` exists (without `overwrite`), is a file, or is a
            non-empty folder that is not a checkpoint.
        CheckpointError: `ckpt` is inconsistent (every problem listed) or not JSON-serializable.

    Example:
        ```python
        sizes = save_checkpoint(ckpt, "glue-share")
        print(sum(sizes.values()), "bytes")
        ```
    """
    # absolute before the swap: an in-place save from inside the checkpoint (`lorashare add . ...`) moves the
    # working directory's folder aside, after which a relative path no longer names the new checkpoint
    directory = Path(os.path.abspath(os.fspath(directory)))
    problems = _checkpoint_problems(ckpt)
    if problems:
        raise CheckpointError(
            f"refusing to save an inconsistent checkpoint ({len(problems)} problem(s)):\n  - "
            + "\n  - ".join(problems)
        )
    names = ckpt.config["adapters"]
    config = _config_on_disk(ckpt.config, ckpt.metas)
    config_text = _json_text(config, CONFIG_FILE, CheckpointError)
    meta_texts = {n: _json_text(_meta_on_disk(ckpt.metas[n], config), f"{ADAPTERS_DIR}/{n}/{META_FILE}",
                                CheckpointError) for n in names}
    with atomic_directory(directory, overwrite=overwrite, marker=CONFIG_FILE, what="lorashare checkpoint") as tmp:
        (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")
        save_safetensors(tmp / COMPONENTS_FILE, _to_file(ckpt.components, ckpt.config))
        for name in names:
            adir = tmp / ADAPTERS_DIR / name
            adir.mkdir(parents=True)
            save_safetensors(adir / LOADINGS_FILE, _to_file(ckpt.loadings[name], ckpt.config))
            if ckpt.heads.get(name):
                save_safetensors(adir / HEAD_FILE, ckpt.heads[name])
            (adir / META_FILE).write_text(meta_texts[name], encoding="utf-8")
    return checkpoint_file_bytes(directory)


def check_checkpoint_target(directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check up front that :func:`save_checkpoint` may write `directory` (nothing is written).

    Lets a caller refuse a bad output path before a long compression rather than after it.

    Raises:
        CheckpointExistsError: `directory` exists (without `overwrite`), is a file, or is a
            non-empty folder that is not a checkpoint.
        WriteError: A file stands where one of its parent folders should be.
    """
    return check_output_target(directory, overwrite=overwrite, marker=CONFIG_FILE, what="lorashare checkpoint")


def check_adapter_target(directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check up front that :func:`write_peft_adapter` may write `directory` (nothing is written).

    Raises:
        CheckpointExistsError: `directory` exists (without `overwrite`), is a file, or is a
            non-empty folder that is not a PEFT adapter.
        WriteError: A file stands where one of its parent folders should be.
    """
    return check_output_target(directory, overwrite=overwrite, marker=ADAPTER_CONFIG_FILE, what="PEFT adapter")


def write_peft_adapter(
    directory: str | os.PathLike,
    *,
    config: Mapping,
    tensors: Mapping[str, torch.Tensor],
    overwrite: bool = False,
) -> Path:
    """Write a plain PEFT adapter folder that ``PeftModel.from_pretrained`` loads as is.

    Writes ``adapter_config.json`` (sorted keys, indent 2, no trailing newline, sets as lists, as
    PEFT does) and
    ``adapter_model.safetensors`` with metadata ``{"format": "pt"}``, atomically like
    :func:`save_checkpoint`.

    Args:
        directory: The adapter folder to create.
        config: The PEFT config (must name ``peft_type``).
        tensors: Saved keys -> tensors, e.g. ``"base_model.model....query.lora_A.weight"``.
        overwrite: Replace an existing adapter folder.

    Returns:
        The folder written.

    Raises:
        InvalidAdapterError: No tensors, a non-tensor value, or a config without ``peft_type`` or
            not JSON-serializable.
        CheckpointExistsError: `directory` exists (without `overwrite`), is a file, or is a
            non-empty folder that is not a PEFT adapter.
    """
    if not isinstance(config, Mapping) or "peft_type" not in config:
        raise InvalidAdapterError(
            f"cannot write a PEFT adapter to {directory}: the config must be a dict with "
            "'peft_type' (e.g. the source adapter's adapter_config.json)."
        )
    if not tensors or any(not isinstance(v, torch.Tensor) for v in tensors.values()):
        raise InvalidAdapterError(
            f"cannot write a PEFT adapter to {directory}: expected a non-empty dict of "
            "key -> torch.Tensor."
        )
    data = {k: _set_as_list(v) for k, v in config.items()}
    try:
        text = json.dumps(data, indent=2, sort_keys=True)  # byte for byte what PEFT writes
    except (TypeError, ValueError) as exc:
        raise InvalidAdapterError(
            f"cannot write a PEFT adapter to {directory}: the config is not JSON-serializable ({exc})."
        ) from exc
    with atomic_directory(directory, overwrite=overwrite, marker=ADAPTER_CONFIG_FILE, what="PEFT adapter") as tmp:
        (tmp / ADAPTER_CONFIG_FILE).write_text(text, encoding="utf-8")
        save_safetensors(tmp / ADAPTER_WEIGHTS_FILE, tensors)
    return Path(directory)


def _set_as_list(value: object) -> object:
    if not isinstance(value, (set, frozenset)):
        return value
    try:
        return sorted(value)
    except TypeError:
        return list(value)


# ------------------------------------------------------------------------------ Hub


def push_checkpoint_to_hub(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """Upload a checkpoint folder to a Hub model repo (created if needed) in one commit.

    The checkpoint is checked first (as :func:`load_checkpoint` would, without reading tensor
    data). Only the files of the layout (and a ``README.md`` model card, if present) are sent, and
    adapter folders left on the Hub by an earlier push are deleted in the same commit, so the repo
    matches the folder.

    Args:
        directory: A checkpoint folder.
        repo_id: ``org/name`` on the Hub.
        private: Visibility when the repo is created (``None``: the Hub's default).
        token: Hub token with write access (``None``: the saved login).
        commit_message: Defaults to ``"Upload lorashare checkpoint (N adapters)"``.
        revision: Branch to commit to (created from the default branch if missing).

    Returns:
        The URL of the commit.

    Raises:
        CheckpointError: The folder is not a sound checkpoint.
        ShareError: The Hub refused (message says why; the Hub error is chained).
    """
    from huggingface_hub import HfApi

    folder = Path(directory)
    _, names, _ = _inspect(folder, None)
    files = sorted(checkpoint_file_bytes(folder))
    if (folder / README_FILE).is_file():
        files.append(README_FILE)
    api = HfApi(token=token)
    message = commit_message or f"Upload lorashare checkpoint ({len(names)} adapters)"
    try:
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None and not revision.startswith("refs/"):
            api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=message,
            allow_patterns=[glob.escape(f) for f in files],
            delete_patterns=[f"{ADAPTERS_DIR}/*"],
        )
    except (TypeError, AttributeError, NameError):
        raise  # a bug, not the Hub saying no
    except Exception as exc:  # HfHubHTTPError, connection and validation errors of these calls
        raise ShareError(
            f"could not push checkpoint {folder} to the Hub repo {repo_id!r} "
            f"({type(exc).__name__}: {exc}). Fix: check the repo id, your network, and that your "
            "token has write access (`hf auth login` or token=...)."
        ) from exc
    return str(getattr(info, "commit_url", info))
