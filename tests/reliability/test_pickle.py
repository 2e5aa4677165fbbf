"""Safe loading: pickle adapters are refused by default and, when the user opts in, read only
through ``torch.load(weights_only=True)``; a pickle that would run code never does."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from share_core.errors import InvalidAdapterError
from share_hf import open_adapter
from share_torch import SHAREModel

from ..hf._helpers import populate_hub_cache, read_tensors
from ._lab import GOOD, Q0, Lab, cli_env, edit_json, run_lorashare



class Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_raw(marker: Path) -> bytes:
    return pickle.dumps({"base_model.model.x.lora_A.weight": Payload(marker)})


def _malicious_torch_save(path: Path, marker: Path) -> None:
    torch.save({"base_model.model.x.lora_A.weight": torch.zeros(2, 2), "evil": Payload(marker)}, path)


def _pickle_only(lab: Lab, dest: Path, blob: bytes | None = None) -> Path:
    folder = lab.copy("sst2_bin", dest)
    if blob is not None:
        (folder / "adapter_model.bin").write_bytes(blob)
    return folder


def test_the_payloads_are_live(tmp_path: Path) -> None:
    """Plain unpickling really runs them, so the tests below would notice if lorashare did."""
    marker = tmp_path / "ran-raw"
    pickle.loads(_malicious_raw(marker))
    assert marker.exists()
    marker2 = tmp_path / "ran-zip"
    _malicious_torch_save(tmp_path / "evil.bin", marker2)
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert marker2.exists()


@pytest.mark.parametrize("form", ["raw pickle", "torch.save zip"])
def test_malicious_pickle_never_runs(lab: Lab, tmp_path: Path, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    folder = _pickle_only(lab, tmp_path / "evil")
    if form == "raw pickle":
        (folder / "adapter_model.bin").write_bytes(_malicious_raw(marker))
    else:
        _malicious_torch_save(folder / "adapter_model.bin", marker)

    # By default the file is not even opened: torch.load and pickle must not be called at all.
    real_load = torch.load

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle was loaded without allow_pickle")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, forbidden)
    with pytest.raises(InvalidAdapterError, match="adapter_model.bin but no adapter_model.safetensors"):
        open_adapter(folder)
    monkeypatch.undo()
    assert not marker.exists()

    # Opted in, only torch.load(weights_only=True) runs, and it refuses the payload.
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(InvalidAdapterError, match=r"torch\.load\(weights_only=True\)") as exc:
        open_adapter(folder, allow_pickle=True)
    assert "'evil'" in str(exc.value) and "Fix:" in str(exc.value)
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    assert not marker.exists()


def test_honest_bin_loads_like_its_safetensors_twin(lab: Lab) -> None:
    """lab's sst2_bin is the sst2 adapter saved by PEFT with safe_serialization=False."""
    pickled = open_adapter(lab.adapters["sst2_bin"], allow_pickle=True)
    safe = open_adapter(lab.adapters["sst2"])
    assert pickled.weights_file.name == "adapter_model.bin"
    assert pickled.modules == safe.modules and pickled.dtype == safe.dtype
    assert pickled.carried_keys == safe.carried_keys
    for module in safe.modules:
        for got, want in zip(pickled.load_factors(module), safe.load_factors(module)):
            assert torch.equal(got, want)
    carried, want = pickled.load_carried(), safe.load_carried()
    assert carried.keys() == want.keys() and all(torch.equal(carried[k], want[k]) for k in want)


def test_safetensors_wins_over_bin_and_no_pickle_is_read(lab: Lab, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    folder = lab.copy("sst2", tmp_path / "both")
    (folder / "adapter_model.bin").write_bytes(_malicious_raw(tmp_path / "pwned"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    src = open_adapter(folder, allow_pickle=True)
    assert src.weights_file.name == "adapter_model.safetensors"
    assert not (tmp_path / "pwned").exists()


def test_bin_is_validated_like_safetensors(lab: Lab, tmp_path: Path) -> None:
    folder = _pickle_only(lab, tmp_path / "rank" / "sst2")
    edit_json(folder / "adapter_config.json", lambda c: c.update(r=8))
    with pytest.raises(InvalidAdapterError, match="tensors have rank 4 but the config gives r=8"):
        open_adapter(folder, allow_pickle=True)

    folder = _pickle_only(lab, tmp_path / "nan" / "sst2")
    state = torch.load(folder / "adapter_model.bin", weights_only=True)
    state[f"{Q0}.lora_A.weight"][0, 0] = float("inf")
    torch.save(state, folder / "adapter_model.bin")
    src = open_adapter(folder, allow_pickle=True)
    with pytest.raises(InvalidAdapterError, match=rf"'{Q0}.lora_A.weight' in .*adapter_model.bin holds 1 NaN/Inf"):
        src.load_factors(Q0)

    folder = _pickle_only(lab, tmp_path / "list" / "sst2")
    torch.save([torch.zeros(2)], folder / "adapter_model.bin")
    with pytest.raises(InvalidAdapterError, match="does not hold a state dict of name -> tensor"):
        open_adapter(folder, allow_pickle=True)

    folder = _pickle_only(lab, tmp_path / "garbage" / "sst2", b"\x80\x04garbage")
    with pytest.raises(InvalidAdapterError, match="cannot be loaded as plain tensors"):
        open_adapter(folder, allow_pickle=True)


def test_hub_pickle_only_adapter_needs_the_opt_in(lab: Lab, hf_cache: Path) -> None:
    populate_hub_cache(hf_cache, "org/old-lora", lab.adapters["sst2_bin"])
    with pytest.raises(InvalidAdapterError, match="allow_pickle=True"):
        open_adapter("org/old-lora")
    src = open_adapter("org/old-lora", allow_pickle=True)
    assert src.weights_file.name == "adapter_model.bin" and len(src.modules) == 4


def test_compress_from_a_bin_equals_compress_from_safetensors(lab: Lab, tmp_path: Path) -> None:
    others = [lab.adapters[n] for n in GOOD[1:]]
    from_bin = SHAREModel.from_adapters([lab.adapters["sst2_bin"], *others], num_components=3, allow_pickle=True)
    from_safe = SHAREModel.from_adapters([lab.adapters["sst2"], *others], num_components=3)
    for name in GOOD:
        got, want = from_bin.reconstruct_state_dict(name), from_safe.reconstruct_state_dict(name)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_cli_allow_pickle_flag(lab: Lab, tmp_path: Path) -> None:
    cache = tmp_path / "cli-cache"
    cache.mkdir()
    out = tmp_path / "ckpt"
    argv = ["compress", str(lab.adapters["sst2_bin"]), *(str(lab.adapters[n]) for n in GOOD[1:]), "-o", str(out),
            "-k", "3", "--per-adapter", "loadings", "--allow-pickle", "-q"]  # as lab.checkpoint was made
    done = run_lorashare(argv, cli_env(cache))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out / "adapters")) == sorted(GOOD)
    got = read_tensors(out / "adapters" / "sst2" / "loadings.safetensors")
    want = read_tensors(lab.checkpoint / "adapters" / "sst2" / "loadings.safetensors")  # from the safetensors twin
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
