"""Fuzzing the readers: random and mutated configs, metadata and safetensors headers.

Every input below is fed to what reads it (``open_adapter`` + ``load_factors`` / ``load_carried``
for adapters, ``load_checkpoint`` for checkpoints); the only acceptable outcomes are a
:class:`ShareError` or a load that works. A checkpoint that loads is then used the way
``SHAREModel`` uses one (summary figures, every adapter reconstructed), so "loads" means "usable",
not merely "returned".

Example counts are bounded and ``deadline=None`` (a shared CI machine has no stable timing); with
the environment variable ``CI`` set, the derandomized profile of conftest.py makes runs repeatable.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from share_core.errors import ShareError
from share_hf import load_checkpoint, open_adapter
from share_torch import SHAREModel

from ._lab import Lab

FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])



# ------------------------------------------------------------------------------ strategies

_scalars = (
    st.none() | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, -1, 2**63, 10**400, 4.0, 0.5])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["LORA", "lora", "IA3", "auto", "float32", "bfloat16", "int8", "share", "..", "../x", "/abs",
                      "a/b", "", "scaled", "(", ".*", "query", "\ud800"])
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def _paths(node, prefix=()):
    """Every path into a JSON tree (the root included)."""
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _paths(child, (*prefix, i))


def _get(node, path):
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated(draw, doc, max_mutations: int = 3):
    """`doc` with 1..max_mutations random edits: replace a value, delete or rename a key, add a key,
    nudge a number, or drop an element of a list."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = sorted(_paths(doc), key=repr)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "rename", "add", "nudge"]))
        if not path:  # the root itself
            if action == "replace":
                return draw(json_values)
            action = "add"
        parent = _get(doc, path[:-1]) if path else doc
        key = path[-1] if path else None
        target = _get(doc, path)
        if action == "replace":
            parent[key] = draw(json_values)
        elif action == "delete":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = parent.pop(key)
        elif action == "add" and isinstance(target, dict):
            target[draw(st.text(max_size=10) | st.sampled_from(["k", "rank", "dtype", "future"]))] = draw(json_values)
        elif action == "nudge" and isinstance(target, (int, float)) and not isinstance(target, bool):
            parent[key] = draw(st.sampled_from([-target, target + 1, target - 1, target * 2, 0, float("nan")]))
        else:
            parent[key] = draw(json_values)
    return doc


def _dump(doc) -> str:
    return json.dumps(doc, allow_nan=True)


# ------------------------------------------------------------------------------ what reads them


def _exercise_adapter(folder: Path, *, allow_pickle: bool = False) -> None:
    """Open an adapter and read every tensor; a clean load must give a usable adapter."""
    try:
        src = open_adapter(folder, name="fuzzed", allow_pickle=allow_pickle)
        factors = {m: src.load_factors(m) for m in src.modules}
        carried = src.load_carried()
    except ShareError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("loaded")
    assert src.modules and src.dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    for module, (a, b) in factors.items():
        info = src.modules[module]
        assert a.shape == (info.rank, info.d_in) and b.shape == (info.d_out, info.rank)
        assert math.isfinite(info.scale) and info.scale != 0
        assert bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())
    assert set(carried) == set(src.carried_keys)


def _exercise_checkpoint(folder: Path) -> None:
    """Load a checkpoint; a clean load must then work for SHAREModel: summary and every adapter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown keys and stray folders warn; that is allowed
        try:
            ckpt = load_checkpoint(folder)
        except ShareError as exc:
            event(f"refused: {type(exc).__name__}")
            return
    event("loaded")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part = load_checkpoint(folder, adapters=[ckpt.config["adapters"][-1]])  # what loaded whole loads in part
    assert list(part.metas) == [ckpt.config["adapters"][-1]]
    share = SHAREModel(ckpt)
    share.summary(print_fn=None)
    for name in share.adapter_names:
        tensors = share.reconstruct_state_dict(name)
        assert tensors and all(isinstance(t, torch.Tensor) for t in tensors.values())
        share.reconstruction_error(name)


def _workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="lorashare-fuzz-")


# ------------------------------------------------------------------------------ adapter_config.json


@FUZZ
@given(data=st.data())
def test_mutated_adapter_config(lab: Lab, data) -> None:
    config = json.loads((lab.adapters["sst2"] / "adapter_config.json").read_text())
    config["rank_pattern"] = {"layer.1.attention.self.value": 4}
    config["alpha_pattern"] = {"query": 16}
    doc = data.draw(mutated(config))
    with _workdir() as tmp:
        folder = lab.copy("sst2", Path(tmp) / "sst2")
        (folder / "adapter_config.json").write_text(_dump(doc))
        _exercise_adapter(folder)


@FUZZ
@given(text=st.text(max_size=200) | st.sampled_from(["[" * 5000, "1" * 5000, '{"r": ' + "9" * 5000 + "}",
                                                      '{"peft_type": "LORA", "r": NaN}', "\x00\x00", "\ufeff{}"]))
def test_random_adapter_config_text(lab: Lab, text: str) -> None:
    with _workdir() as tmp:
        folder = lab.copy("sst2", Path(tmp) / "sst2")
        (folder / "adapter_config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
        _exercise_adapter(folder)


# ------------------------------------------------------------------------------ safetensors headers

_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "U16", "U32",
           "U64", "C64", "F4", "", "f32", "XX"]


def _split(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _join(header: dict, body: bytes, *, length: int | None = None, pad: bool = True) -> bytes:
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


@st.composite
def mutated_safetensors(draw, blob: bytes) -> bytes:
    """A safetensors file damaged in its 8-byte length prefix, its JSON header (offsets, dtypes,
    shapes, keys, metadata) or its size."""
    header, body = _split(blob)
    kind = draw(st.sampled_from(["field", "entry", "metadata", "prefix", "truncate", "byte", "append"]))
    keys = sorted(k for k in header if k != "__metadata__")
    if kind == "field":
        key = draw(st.sampled_from(keys))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        if field == "dtype":
            value = draw(st.sampled_from(_DTYPES) | json_values)
        else:
            number = st.sampled_from([0, 1, 2, 3, 4, 32, -1, 2**31, 2**63, 2**64 - 1, 2**64, 1.5]) | st.integers(0, 4096)
            value = draw(st.lists(number, max_size=4) | json_values)
        if draw(st.booleans()):
            header[key][field] = value
        else:
            del header[key][field]
        return _join(header, body)
    if kind == "entry":
        key = draw(st.sampled_from(keys))
        action = draw(st.sampled_from(["delete", "rename", "duplicate", "replace"]))
        if action == "delete":
            del header[key]
        elif action == "rename":
            header[draw(st.text(max_size=40) | st.sampled_from([k + ".x" for k in keys]))] = header.pop(key)
        elif action == "duplicate":
            header[key + "_copy"] = dict(header[key])
        else:
            header[key] = draw(json_values)
        return _join(header, body)
    if kind == "metadata":
        header["__metadata__"] = draw(json_values)
        return _join(header, body)
    if kind == "prefix":
        raw = json.dumps(header).encode()
        length = draw(st.sampled_from([0, 1, 7, len(raw) - 1, len(raw) + 1, len(blob), 2**31, 2**63, 2**64 - 1])
                      | st.integers(0, 2**64 - 1))
        return _join(header, body, length=length, pad=False)
    if kind == "truncate":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    if kind == "byte":
        i = draw(st.integers(0, len(blob) - 1))
        return blob[:i] + bytes([draw(st.integers(0, 255))]) + blob[i + 1:]
    return blob + draw(st.binary(min_size=1, max_size=64))


@FUZZ
@given(data=st.data())
def test_mutated_adapter_safetensors(lab: Lab, data) -> None:
    blob = (lab.adapters["sst2"] / "adapter_model.safetensors").read_bytes()
    damaged = data.draw(mutated_safetensors(blob))
    with _workdir() as tmp:
        folder = lab.copy("sst2", Path(tmp) / "sst2")
        (folder / "adapter_model.safetensors").write_bytes(damaged)
        _exercise_adapter(folder)


@FUZZ
@given(data=st.data(), which=st.sampled_from(["shared_components.safetensors", "adapters/cola/loadings.safetensors",
                                              "adapters/sst2/classifier_head.safetensors"]))
def test_mutated_checkpoint_safetensors(lab: Lab, data, which: str) -> None:
    blob = (lab.checkpoint / which).read_bytes()
    damaged = data.draw(mutated_safetensors(blob))
    with _workdir() as tmp:
        folder = lab.copy("checkpoint", Path(tmp) / "ckpt")
        (folder / which).write_bytes(damaged)
        _exercise_checkpoint(folder)


@FUZZ
@given(blob=st.binary(max_size=300))
def test_random_bytes_as_safetensors(lab: Lab, blob: bytes) -> None:
    with _workdir() as tmp:
        folder = lab.copy("sst2", Path(tmp) / "sst2")
        (folder / "adapter_model.safetensors").write_bytes(blob)
        _exercise_adapter(folder)


# ------------------------------------------------------------------------------ checkpoint JSON


@FUZZ
@given(data=st.data())
def test_mutated_share_config(lab: Lab, data) -> None:
    config = json.loads((lab.checkpoint / "share_config.json").read_text())
    doc = data.draw(mutated(config))
    with _workdir() as tmp:
        folder = lab.copy("checkpoint", Path(tmp) / "ckpt")
        (folder / "share_config.json").write_text(_dump(doc))
        _exercise_checkpoint(folder)


@FUZZ
@given(data=st.data(), name=st.sampled_from(["sst2", "cola"]))
def test_mutated_adapter_meta(lab: Lab, data, name: str) -> None:
    meta = json.loads((lab.checkpoint / "adapters" / name / "adapter_meta.json").read_text())
    doc = data.draw(mutated(meta))
    with _workdir() as tmp:
        folder = lab.copy("checkpoint", Path(tmp) / "ckpt")
        (folder / "adapters" / name / "adapter_meta.json").write_text(_dump(doc))
        _exercise_checkpoint(folder)


@FUZZ
@given(text=st.text(max_size=200) | st.sampled_from(["[" * 5000, "9" * 5000, "null", "[]", '{"adapters": 1}']),
       which=st.sampled_from(["share_config.json", "adapters/mrpc/adapter_meta.json"]))
def test_random_checkpoint_json_text(lab: Lab, text: str, which: str) -> None:
    with _workdir() as tmp:
        folder = lab.copy("checkpoint", Path(tmp) / "ckpt")
        (folder / which).write_text(text, encoding="utf-8", errors="surrogatepass")
        _exercise_checkpoint(folder)


@FUZZ
@given(data=st.data())
def test_mutated_checkpoint_layout(lab: Lab, data) -> None:
    """Files and folders deleted, swapped between adapters, or replaced by folders/empty files."""
    files = ["share_config.json", "shared_components.safetensors", "adapters/sst2/loadings.safetensors",
             "adapters/sst2/adapter_meta.json", "adapters/sst2/classifier_head.safetensors",
             "adapters/cola/loadings.safetensors", "adapters/cola/adapter_meta.json", "adapters/mrpc"]
    with _workdir() as tmp:
        folder = lab.copy("checkpoint", Path(tmp) / "ckpt")
        for _ in range(data.draw(st.integers(1, 3))):
            rel = data.draw(st.sampled_from(files))
            path = folder / rel
            action = data.draw(st.sampled_from(["delete", "empty", "folder", "swap"]))
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            if action == "empty":
                path.write_bytes(b"")
            elif action == "folder":
                path.mkdir()
            elif action == "swap":
                other = lab.checkpoint / data.draw(st.sampled_from(files))
                if other.is_file():
                    path.write_bytes(other.read_bytes())
        _exercise_checkpoint(folder)


# ------------------------------------------------------------------------------ pickles (opted in)


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_mutated_pickle_with_allow_pickle(lab: Lab, data) -> None:
    """A damaged adapter_model.bin read with allow_pickle=True: torch.load(weights_only=True) may
    fail in many ways; every one must come out as InvalidAdapterError."""
    blob = (lab.adapters["sst2_bin"] / "adapter_model.bin").read_bytes()
    kind = data.draw(st.sampled_from(["truncate", "byte", "random"]))
    if kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "byte":
        i = data.draw(st.integers(0, len(blob) - 1))
        blob = blob[:i] + bytes([data.draw(st.integers(0, 255))]) + blob[i + 1:]
    else:
        blob = data.draw(st.binary(max_size=200))
    with _workdir() as tmp:
        folder = lab.copy("sst2_bin", Path(tmp) / "sst2")
        (folder / "adapter_model.bin").write_bytes(blob)
        _exercise_adapter(folder, allow_pickle=True)
