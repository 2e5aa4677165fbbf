"""Reading a few tensors of an adapter file by their own byte ranges (``read_safetensors_ranges``).

Under ``layer_by_layer`` every module of every adapter is read on its own. Through a memory map each read
pulled in the block device's readahead window (8 MB here) around each factor, tens of times the bytes of the
factors themselves from files not in the page cache; the ranges reader reads the factors' bytes alone. These
tests hold it to what safetensors itself reads, and to clear errors for files that do not hold what their
header says.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import share_hf.adapters as adapters_module
from share_core.errors import InvalidAdapterError
from share_hf import open_adapter
from share_hf._io import load_safetensors, read_safetensors_ranges

from ._helpers import read_tensors, save_adapter


def ranges(path: Path, keys) -> dict[str, torch.Tensor] | None:
    return read_safetensors_ranges(path, keys, error=InvalidAdapterError, context="adapter 'x'")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_one_module_reads_what_safetensors_reads(tmp_path: Path, dtype: torch.dtype) -> None:
    """A real PEFT adapter: each module's factors read alone equal the memory-mapped read, bit for bit, with
    dtype and shape; reading one module goes through the ranges reader, reading all of them does not."""
    src = open_adapter(save_adapter(tmp_path / "a", r=4, dtype=dtype))
    on_disk = read_tensors(src.weights_file)
    assert src.dtype == dtype and len(src.modules) == 4
    for module, info in src.modules.items():
        a, b = src.load_factors(module)
        for got, key in ((a, info.a_key), (b, info.b_key)):
            assert got.dtype == dtype and got.shape == on_disk[key].shape
            assert torch.equal(got, on_disk[key])
    every = src.load_all_factors()
    assert all(torch.equal(every[m][0], src.load_factors(m)[0]) for m in src.modules)


def test_which_reader_serves_which_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One module (2 of the file's 10 tensors) is read by byte ranges; every module, by the memory map."""
    src = open_adapter(save_adapter(tmp_path / "a"))
    calls = []
    real = adapters_module.read_safetensors_ranges
    monkeypatch.setattr(adapters_module, "read_safetensors_ranges",
                        lambda *a, **k: calls.append(list(a[1])) or real(*a, **k))
    module = next(iter(src.modules))
    src.load_factors(module)
    assert calls == [[src.modules[module].a_key, src.modules[module].b_key]]
    src.load_all_factors()
    assert len(calls) == 1


def test_dtypes_shapes_and_what_it_leaves_to_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    tensors = {"f64": torch.randn(3, 5, dtype=torch.float64), "f32": torch.randn(7), "bf16": torch.randn(2, 3, 4).bfloat16(),
               "f16": torch.randn(4, 2).half(), "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5),
               "int": torch.arange(6, dtype=torch.int8)}
    save_file(tensors, str(path))
    got = ranges(path, ["f64", "f32", "bf16", "f16", "empty", "scalar"])
    assert list(got) == ["f64", "f32", "bf16", "f16", "empty", "scalar"]
    for key, t in got.items():
        assert t.dtype == tensors[key].dtype and t.shape == tensors[key].shape and torch.equal(t, tensors[key])
    got["f32"] += 1  # the tensors own writable memory, not a view of the file
    assert torch.equal(load_safetensors(path, ["f32"], error=InvalidAdapterError, context="c")["f32"], tensors["f32"])
    assert ranges(path, ["f32", "int"]) is None  # not a factor dtype: left to safetensors


def write_raw(path: Path, header: dict | bytes, data: bytes, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize("case, needle", [
    ("truncated", r"tensor 'b' of shape \(4,\) in F32 at bytes \[16, 32\) of 24 data bytes"),
    ("short", r"fewer than the 8 of a header length"),
    ("length", r"header length 999999 in a file of"),
    ("not json", r"its header is not a JSON object"),
    ("missing", r"no tensor 'zzz' in its header"),
    ("offsets", r"tensor 'a' of shape \(2, 2\) in F32 at bytes \[0, 12\)"),
    ("beyond", r"tensor 'a' of shape \(2, 2\) in F32 at bytes \[24, 40\) of 32 data bytes"),
    ("shape", r"tensor 'a' has shape \[2, -2\]"),
    ("dtype", r"tensor 'a' has dtype \['F32'\]"),
])
def test_files_that_do_not_hold_what_their_header_says(tmp_path: Path, case: str, needle: str) -> None:
    path = tmp_path / "bad.safetensors"
    good = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}
    data = torch.arange(8, dtype=torch.float32).numpy().tobytes()
    keys = ["a", "b"]
    if case == "truncated":
        write_raw(path, good, data[:24])
    elif case == "short":
        path.write_bytes(b"\x01\x02")
    elif case == "length":
        write_raw(path, good, data, length=999999)
    elif case == "not json":
        write_raw(path, b"[1, 2", data)
    elif case == "missing":
        write_raw(path, good, data)
        keys = ["a", "zzz"]
    elif case == "offsets":
        write_raw(path, good | {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, data)
    elif case == "beyond":
        write_raw(path, good | {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [24, 40]}}, data)
    elif case == "shape":
        write_raw(path, good | {"a": {"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 16]}}, data)
    elif case == "dtype":
        write_raw(path, good | {"a": {"dtype": ["F32"], "shape": [2, 2], "data_offsets": [0, 16]}}, data)
    with pytest.raises(InvalidAdapterError, match=needle) as info:
        ranges(path, keys)
    assert str(path) in str(info.value) and "Fix: restore or re-download it." in str(info.value)


def test_a_good_raw_file_reads_back(tmp_path: Path) -> None:
    """The hand-written layout of the error cases, intact, reads what was written (the cases fail for their
    one fault, not for the layout)."""
    data = torch.arange(8, dtype=torch.float32)
    path = write_raw(tmp_path / "ok.safetensors",
                     {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                      "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}, data.numpy().tobytes())
    got = ranges(path, ["b", "a"])
    assert torch.equal(got["a"], data[:4].reshape(2, 2)) and torch.equal(got["b"], data[4:])


def test_an_adapter_file_cut_short_after_opening(tmp_path: Path) -> None:
    """The file changed under an opened adapter: the module read fails naming adapter, file and fix."""
    src = open_adapter(save_adapter(tmp_path / "sst2"))
    data = src.weights_file.read_bytes()
    src.weights_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidAdapterError, match=r"adapter 'sst2' .*adapter_model\.safetensors is not a readable "
                                                  r"safetensors file .*Fix: restore or re-download it\."):
        for module in src.modules:
            src.load_factors(module)
    src.weights_file.unlink()
    with pytest.raises(InvalidAdapterError, match=r"adapter_model\.safetensors does not exist"):
        src.load_factors(next(iter(src.modules)))


def _read_bytes() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("read_bytes"))


def _evict(path: Path) -> None:
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's per-process I/O counters")
def test_reading_a_header_reads_the_header_not_the_readahead_window(tmp_path: Path) -> None:
    """Opening an adapter reads its header only: through safetensors' memory map alone, the first page fault
    on a cold file read the block device's readahead window (8 MB here; 8.4 GB for 1000 Llama-shaped
    adapters). Measured with /proc/self/io after evicting the file from the page cache."""
    from share_hf._io import read_safetensors_header

    path = tmp_path / "big.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({f"layer{i}.weight": torch.randn(512, 1024, generator=g) for i in range(16)}, str(path))  # 32 MB
    size = path.stat().st_size
    _evict(path)
    before = _read_bytes()
    path.read_bytes()  # control: this filesystem counts reads from its device, and eviction works
    if _read_bytes() - before < size // 2:
        pytest.skip(f"reads from {tmp_path} are not counted in /proc/self/io (tmpfs?), so nothing can be measured")
    _evict(path)
    before = _read_bytes()
    header = read_safetensors_header(path, error=InvalidAdapterError, context="adapter 'x'")
    read = _read_bytes() - before
    assert len(header) == 16 and header["layer3.weight"] == ((512, 1024), "F32")
    assert read <= 64 * 1024, f"reading the header of a {size}-byte file read {read} bytes from the disk"
