"""One table of bad inputs, each refused the same way through the Python API and the CLI.

Every case builds its own damaged copy of real PEFT adapters (saved by PEFT on a tiny BERT) or of
a real checkpoint (written by ``SHAREModel``), then:

- **Python**: the ``SHAREModel`` call raises the expected :class:`ShareError` subclass, whose
  message names the thing at fault and the fix (the case's needles);
- **CLI**: the same input through ``share_torch.cli.main`` with real argv (all cases, batched in
  one subprocess by ``_cli_driver.py``) and through the installed ``lorashare`` script (a subset,
  one subprocess each) exits 1 with exactly one ``lorashare: error:`` line on stderr, last, holding
  the same needles, and no traceback;
- in both, the output path is left exactly as it was (absent stays absent, an existing checkpoint
  keeps every byte) and no temporary folder is left beside it.

The table is also the list in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from share_core.errors import (
    AdapterNotFoundError,
    CheckpointError,
    CheckpointExistsError,
    IncompatibleAdaptersError,
    InvalidAdapterError,
    InvalidArgumentError,
    ShareError,
    UnknownAdapterError,
    UnsupportedAdapterError,
)
from share_hf import WriteError
from share_hf.checkpoint import FORMAT_VERSION
from share_torch import SHAREModel

from ._lab import (
    GOOD,
    HEAD,
    Q0,
    V1,
    Lab,
    cli_env,
    edit_json,
    edit_meta,
    edit_tensors,
    error_line,
    run_lorashare,
    snapshot,
    temp_siblings,
)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Case:
    """One bad input: the Python call that must raise, the argv that must exit 1, and the output
    path both must leave as it was."""

    error: type[ShareError]
    needles: tuple[str, ...]
    python: Callable[[], object]
    argv: list[str]
    output: Path
    before: dict | None = field(default=None)


# ------------------------------------------------------------------------------ builders


def _compress(lab: Lab, d: Path, adapters: list[Path | str], *, error, needles, k=3, py: dict | None = None,
              cli: tuple[str, ...] = (), out: Path | None = None, overwrite: bool = False,
              py_adapters=None) -> Case:
    """A compress case: ``SHAREModel.from_adapters(...).save_pretrained(out)`` and
    ``lorashare compress ... -o out``."""
    out = out if out is not None else d / "out"
    kwargs = {"num_components": k, **(py or {})}
    sources = py_adapters if py_adapters is not None else [str(a) for a in adapters]

    def python():
        SHAREModel.from_adapters(sources, **kwargs).save_pretrained(out, overwrite=overwrite)

    argv = ["compress", *map(str, adapters), "-o", str(out), *(("-k", str(k)) if k is not None else ()), *cli]
    if overwrite:
        argv.append("--overwrite")
    return Case(error=error, needles=needles, python=python, argv=argv, output=out)


def _good(lab: Lab, *names: str) -> list[Path]:
    return [lab.adapters[n] for n in names]


def _damaged(lab: Lab, d: Path, name: str = "mrpc") -> tuple[list[Path], Path]:
    """sst2 and cola as they are, plus a copy of `name` to damage."""
    bad = lab.copy(name, d / name)
    return [*_good(lab, *(n for n in GOOD if n != name)), bad], bad


def missing_folder(lab, d):
    return _compress(lab, d, [*_good(lab, "sst2", "cola"), d / "no_such_adapter"], error=AdapterNotFoundError,
                     needles=("no_such_adapter", "neither an existing folder nor a Hub id", "Fix:"))


def folder_without_adapter_config(lab, d):
    adapters, bad = _damaged(lab, d)
    (bad / "adapter_config.json").unlink()
    return _compress(lab, d, adapters, error=InvalidAdapterError,
                     needles=("'mrpc'", "no adapter_config.json", "Fix:"))


def adapter_config_not_json(lab, d):
    adapters, bad = _damaged(lab, d)
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", ')
    return _compress(lab, d, adapters, error=InvalidAdapterError,
                     needles=("'mrpc'", "adapter_config.json is not valid JSON", "Fix:"))


def not_lora(lab, d):
    adapters, bad = _damaged(lab, d)
    edit_json(bad / "adapter_config.json", lambda c: c.update(peft_type="IA3"))
    return _compress(lab, d, adapters, error=UnsupportedAdapterError,
                     needles=("'mrpc'", "LoRA adapters only", "'IA3'", "Fix:"))


def dora(lab, d):
    adapters, bad = _damaged(lab, d)
    edit_json(bad / "adapter_config.json", lambda c: c.update(use_dora=True))
    return _compress(lab, d, adapters, error=UnsupportedAdapterError, needles=("'mrpc'", "DoRA", "Fix:"))


def lora_alpha_zero(lab, d):
    adapters, bad = _damaged(lab, d)
    edit_json(bad / "adapter_config.json", lambda c: c.update(lora_alpha=0))
    return _compress(lab, d, adapters, error=InvalidAdapterError,
                     needles=("'mrpc'", "'lora_alpha'", "finite non-zero number", "Fix:"))


def truncated_safetensors(lab, d):
    adapters, bad = _damaged(lab, d)
    path = bad / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    return _compress(lab, d, adapters, error=InvalidAdapterError,
                     needles=("'mrpc'", "adapter_model.safetensors", "truncated or corrupt", "Fix:"))


def corrupt_safetensors(lab, d):
    adapters, bad = _damaged(lab, d)
    (bad / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + b"{not a header}")
    return _compress(lab, d, adapters, error=InvalidAdapterError,
                     needles=("'mrpc'", "not a readable safetensors file", "Fix:"))


def rank_disagrees_with_config(lab, d):
    adapters, bad = _damaged(lab, d)
    edit_json(bad / "adapter_config.json", lambda c: c.update(r=8))
    return _compress(lab, d, adapters, error=InvalidAdapterError,
                     needles=("'mrpc'", "tensors have rank 4 but the config gives r=8", "Fix:"))


def missing_lora_b(lab, d):
    adapters, bad = _damaged(lab, d)
    edit_tensors(bad / "adapter_model.safetensors", lambda t: {k: v for k, v in t.items()
                                                               if k != f"{V1}.lora_B.weight"})
    return _compress(lab, d, adapters, error=InvalidAdapterError,
                     needles=("'mrpc'", f"'{V1}.lora_A.weight' has no matching", "Fix:"))


def factor_shapes_disagree(lab, d):
    adapters, bad = _damaged(lab, d)
    edit_tensors(bad / "adapter_model.safetensors", lambda t: t | {f"{Q0}.lora_B.weight": torch.randn(32, 3)})
    return _compress(lab, d, adapters, error=InvalidAdapterError,
                     needles=("'mrpc'", "has rank 4 but lora_B [32, 3] has rank 3", "Fix:"))


def integer_factors(lab, d):
    adapters, bad = _damaged(lab, d)
    edit_tensors(bad / "adapter_model.safetensors",
                 lambda t: {k: v.to(torch.int8) if ".lora_" in k else v for k, v in t.items()})
    return _compress(lab, d, adapters, error=InvalidAdapterError,
                     needles=("'mrpc'", "stored as I8", "Fix: dequantize"))


def different_base_models(lab, d):
    a, b = lab.copy("cola", d / "cola"), lab.copy("mrpc", d / "mrpc")
    edit_json(a / "adapter_config.json", lambda c: c.update(base_model_name_or_path="org/bert-tiny"))
    edit_json(b / "adapter_config.json", lambda c: c.update(base_model_name_or_path="org/llama-tiny"))
    return _compress(lab, d, [lab.adapters["sst2"], a, b], error=IncompatibleAdaptersError,
                     needles=("different base models", "'org/bert-tiny'", "'org/llama-tiny'", "Fix:"))


def different_target_modules(lab, d):
    return _compress(lab, d, _good(lab, "sst2", "cola", "query_only"), error=IncompatibleAdaptersError,
                     needles=("'query_only' lacks 2 of the 4 LoRA modules", "value", "Fix:"))


def different_shapes(lab, d):
    adapters, bad = _damaged(lab, d)
    edit_tensors(bad / "adapter_model.safetensors", lambda t: t | {f"{Q0}.lora_A.weight": torch.randn(4, 40)})
    return _compress(lab, d, adapters, error=IncompatibleAdaptersError,
                     needles=(f"module '{Q0}' has different (d_in, d_out)", "'mrpc': (40, 32)", "Fix:"))


def nan_in_a_factor(lab, d):
    adapters, bad = _damaged(lab, d)

    def poison(t):
        b = t[f"{V1}.lora_B.weight"].clone()
        b[2, 1] = float("nan")
        return t | {f"{V1}.lora_B.weight": b}

    edit_tensors(bad / "adapter_model.safetensors", poison)
    return _compress(lab, d, adapters, error=InvalidAdapterError,
                     needles=("'mrpc'", f"'{V1}.lora_B.weight'", "1 NaN/Inf", "Fix:"))


def inf_in_a_head(lab, d):
    adapters, bad = _damaged(lab, d)

    def poison(t):
        head = t[HEAD].clone()
        head[0, :3] = float("inf")
        return t | {HEAD: head}

    edit_tensors(bad / "adapter_model.safetensors", poison)
    return _compress(lab, d, adapters, error=InvalidAdapterError,
                     needles=("'mrpc'", f"'{HEAD}'", "3 NaN/Inf", "Fix:"))


def one_adapter(lab, d):
    return _compress(lab, d, _good(lab, "sst2"), error=IncompatibleAdaptersError,
                     needles=("at least 2 adapters", "got 1", "Fix:"))


def duplicate_names(lab, d):
    twin = lab.copy("cola", d / "elsewhere" / "sst2")  # another folder with the same basename
    return _compress(lab, d, [*_good(lab, "sst2", "mrpc"), twin], error=InvalidArgumentError,
                     needles=("'sst2'", "must be unique", "--names"))


def k_zero(lab, d):
    return _compress(lab, d, _good(lab, *GOOD), k=0, error=InvalidArgumentError,
                     needles=("positive integer or 'auto'", "found 0", "-k 32"))


def k_negative(lab, d):
    return _compress(lab, d, _good(lab, *GOOD), k=-2, error=InvalidArgumentError,
                     needles=("positive integer or 'auto'", "found -2", "-k 32"))


def k_not_an_integer(lab, d):
    case = _compress(lab, d, _good(lab, *GOOD), k=None, py={"num_components": 2.5}, cli=("-k", "2.5"),
                     error=InvalidArgumentError, needles=("positive integer or 'auto'", "2.5", "-k 32"))
    return case


def threshold_above_one(lab, d):
    return _compress(lab, d, _good(lab, *GOOD), k=None, py={"num_components": "auto", "variance_threshold": 1.5},
                     cli=("-k", "auto", "--variance", "1.5"), error=InvalidArgumentError,
                     needles=("variance_threshold", "(0, 1]", "1.5", "e.g. 0.95"))


def threshold_zero(lab, d):
    return _compress(lab, d, _good(lab, *GOOD), k=None, py={"num_components": "auto", "variance_threshold": 0.0},
                     cli=("-k", "auto", "--variance", "0"), error=InvalidArgumentError,
                     needles=("variance_threshold", "(0, 1]", "found 0", "e.g. 0.95"))


def chunk_size_zero(lab, d):
    return _compress(lab, d, _good(lab, *GOOD), py={"chunk_size": 0}, cli=("--chunk-size", "0"),
                     error=InvalidArgumentError, needles=("chunk_size must be a positive integer", "found 0"))


def cuda_without_gpu(lab, d):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present, so --device cuda is valid here")
    return _compress(lab, d, _good(lab, *GOOD), py={"device": "cuda"}, cli=("--device", "cuda"),
                     error=InvalidArgumentError, needles=("'cuda'", "no CUDA GPU", "device='cpu'"))


def output_is_a_file(lab, d):
    (d / "out.txt").write_text("precious")
    return _compress(lab, d, _good(lab, *GOOD), out=d / "out.txt", overwrite=True, error=CheckpointExistsError,
                     needles=("out.txt", "a file", "choose another"))


def output_parent_is_a_file(lab, d):
    (d / "blocker").write_text("precious")
    return _compress(lab, d, _good(lab, *GOOD), out=d / "blocker" / "ckpt", error=WriteError,
                     needles=(f"{d / 'blocker'} is a file, not a folder", "Fix: choose another output path"))


def output_is_an_existing_checkpoint(lab, d):
    out = lab.copy("checkpoint", d / "ckpt")
    return _compress(lab, d, _good(lab, *GOOD), out=out, error=CheckpointExistsError,
                     needles=("ckpt", "already exists", "overwrite"))


def output_is_a_foreign_folder(lab, d):
    (d / "thesis").mkdir()
    (d / "thesis" / "chapter1.tex").write_text("precious")
    return _compress(lab, d, _good(lab, *GOOD), out=d / "thesis", overwrite=True, error=CheckpointExistsError,
                     needles=("thesis", "does not look like a lorashare checkpoint", "Fix: choose another"))


def output_not_writable(lab, d):
    if not Path("/sys").is_dir() or _can_mkdir("/sys"):
        pytest.skip("needs /sys, where not even root may create folders")
    out = Path("/sys") / f"lorashare-reliability-{os.getpid()}"
    return _compress(lab, d, _good(lab, *GOOD), out=out, error=WriteError,
                     needles=(f"cannot write the lorashare checkpoint to {out}", "Fix:"))


def _can_mkdir(parent: str) -> bool:
    probe = Path(parent) / f".lorashare-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    probe.rmdir()
    return True


def name_escapes_with_dots(lab, d):
    names = {"../evil": lab.adapters["sst2"], "cola": lab.adapters["cola"], "mrpc": lab.adapters["mrpc"]}
    return _compress(lab, d, _good(lab, *GOOD), cli=("--names", *names), py_adapters=names,
                     error=InvalidAdapterError, needles=("'../evil'", "would escape", "names become folder names"))


def name_is_an_absolute_path(lab, d):
    evil = str(d / "abs-evil")
    names = {evil: lab.adapters["sst2"], "cola": lab.adapters["cola"], "mrpc": lab.adapters["mrpc"]}
    return _compress(lab, d, _good(lab, *GOOD), cli=("--names", *names), py_adapters=names,
                     error=InvalidAdapterError, needles=(repr(evil), "would escape", "names become folder names"))


def pickle_only_adapter(lab, d):
    bad = lab.copy("sst2_bin", d / "bin" / "sst2")
    return _compress(lab, d, [bad, *_good(lab, "cola", "mrpc")], error=InvalidAdapterError,
                     needles=("'sst2'", "adapter_model.bin but no adapter_model.safetensors",
                              "allow_pickle=True (--allow-pickle)", "Fix: convert"))


def unreachable_hub_id(lab, d):
    return _compress(lab, d, [*_good(lab, "sst2", "cola"), "lorashare-test/not-cached"], error=AdapterNotFoundError,
                     needles=("'lorashare-test/not-cached'", "could not be fetched", "HF_HUB_OFFLINE"))


def zero_adapters_by_mapping(lab, d):
    """An empty dict through Python; the CLI's nearest equivalent is one adapter (zero is a usage
    error there, exit 2, tested apart)."""
    case = _compress(lab, d, _good(lab, "sst2"), py_adapters={}, error=IncompatibleAdaptersError,
                     needles=("at least 2 adapters", "Fix:"))
    return case


# -- checkpoints


def _from_checkpoint(ckpt: Path | str, d: Path, *, error, needles, adapter: str = "cola",
                     out: Path | None = None, overwrite: bool = False, all_adapters: bool = False) -> Case:
    """``SHAREModel.from_pretrained(ckpt).reconstruct(adapter, output_dir=out)`` and
    ``lorashare reconstruct ckpt --adapter NAME -o out`` (``--all`` with `all_adapters`)."""
    out = out if out is not None else d / "restored"

    def python():
        share = SHAREModel.from_pretrained(ckpt)
        share.reconstruct(adapter, output_dir=out, overwrite=overwrite)

    argv = ["reconstruct", str(ckpt), *(["--all"] if all_adapters else ["--adapter", adapter]), "-o", str(out)]
    if overwrite:
        argv.append("--overwrite")
    return Case(error=error, needles=needles, python=python, argv=argv, output=out)


def _damaged_checkpoint(lab: Lab, d: Path) -> Path:
    return lab.copy("checkpoint", d / "ckpt")


def checkpoint_missing(lab, d):
    return _from_checkpoint(d / "no_such_checkpoint", d, error=CheckpointError,
                            needles=("no_such_checkpoint", "neither an existing folder nor a Hub id", "Fix:"))


def checkpoint_folder_without_config(lab, d):
    (d / "empty").mkdir()
    return _from_checkpoint(d / "empty", d, error=CheckpointError,
                            needles=("has no share_config.json", "not a lorashare checkpoint", "Fix:"))


def checkpoint_missing_components(lab, d):
    ckpt = _damaged_checkpoint(lab, d)
    (ckpt / "shared_components.safetensors").unlink()
    return _from_checkpoint(ckpt, d, error=CheckpointError,
                            needles=("shared_components.safetensors does not exist", "Fix: re-create"))


def checkpoint_corrupt_loadings(lab, d):
    ckpt = _damaged_checkpoint(lab, d)
    path = ckpt / "adapters" / "cola" / "loadings.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    return _from_checkpoint(ckpt, d, error=CheckpointError,
                            needles=("adapters/cola/loadings.safetensors", "truncated or corrupt", "Fix:"))


def checkpoint_config_not_json(lab, d):
    ckpt = _damaged_checkpoint(lab, d)
    (ckpt / "share_config.json").write_text('{"format_version": 1,')
    return _from_checkpoint(ckpt, d, error=CheckpointError,
                            needles=("share_config.json is not valid JSON", "Fix:"))


def checkpoint_config_lacks_a_required_key(lab, d):
    ckpt = _damaged_checkpoint(lab, d)
    edit_json(ckpt / "share_config.json", lambda c: c.pop("groups"))
    return _from_checkpoint(ckpt, d, error=CheckpointError,
                            needles=("share_config.json lacks the required key 'groups'", "Fix:"))


def checkpoint_newer_format(lab, d):
    ckpt = _damaged_checkpoint(lab, d)
    edit_json(ckpt / "share_config.json", lambda c: c.update(format_version=FORMAT_VERSION + 1))
    return _from_checkpoint(ckpt, d, error=CheckpointError,
                            needles=(f"format {FORMAT_VERSION + 1}, written by a newer lorashare", "Fix: upgrade lorashare"))


def checkpoint_name_escapes(lab, d):
    ckpt = _damaged_checkpoint(lab, d)
    edit_json(ckpt / "share_config.json", lambda c: c.update(adapters=["sst2", "../../evil", "mrpc"]))
    return _from_checkpoint(ckpt, d, error=CheckpointError,
                            needles=("'../../evil'", "would escape", "Fix:"))


def checkpoint_dtype_disagrees(lab, d):
    ckpt = _damaged_checkpoint(lab, d)
    edit_tensors(ckpt / "adapters" / "cola" / "loadings.safetensors", lambda t: {k: v.half() for k, v in t.items()})
    return _from_checkpoint(ckpt, d, error=CheckpointError,
                            needles=("adapters/cola/loadings.safetensors", "stored as F16",
                                     "expected F32 (float32, the options.dtype of share_config.json)", "Fix:"))


def checkpoint_rank_disagrees(lab, d):
    ckpt = _damaged_checkpoint(lab, d)
    edit_meta(ckpt, "cola", lambda m: m["ranks"].update({Q0: 5}))
    return _from_checkpoint(ckpt, d, error=CheckpointError,
                            needles=(f"'{Q0}.lora_A' has shape [3, 4]", "give [3, 5]", "Fix:"))


def checkpoint_scale_zero(lab, d):
    ckpt = _damaged_checkpoint(lab, d)
    edit_meta(ckpt, "cola", lambda m: m["scales"].update({Q0: 0}))
    return _from_checkpoint(ckpt, d, error=CheckpointError,
                            needles=(f"scale of '{Q0}' must be a finite non-zero number, found 0", "Fix:"))


def checkpoint_unreachable_hub_id(lab, d):
    return _from_checkpoint("lorashare-test/no-checkpoint", d, error=CheckpointError,
                            needles=("'lorashare-test/no-checkpoint'", "HF_HUB_OFFLINE"))


def unknown_adapter(lab, d):
    return _from_checkpoint(lab.checkpoint, d, adapter="qqp", error=UnknownAdapterError,
                            needles=("'qqp'", "sst2, cola, mrpc"))


def reconstruct_into_a_file(lab, d):
    (d / "restored.txt").write_text("precious")
    return _from_checkpoint(lab.checkpoint, d, out=d / "restored.txt", overwrite=True, error=CheckpointExistsError,
                            needles=("restored.txt", "a file", "choose another"))


def reconstruct_over_an_existing_adapter(lab, d):
    out = lab.copy("cola", d / "restored")
    return _from_checkpoint(lab.checkpoint, d, out=out, error=CheckpointExistsError,
                            needles=("restored", "already exist", "overwrite"))


CASES: dict[str, Callable[[Lab, Path], Case]] = {f.__name__: f for f in [
    missing_folder, folder_without_adapter_config, adapter_config_not_json, not_lora, dora, lora_alpha_zero,
    truncated_safetensors, corrupt_safetensors, rank_disagrees_with_config, missing_lora_b, factor_shapes_disagree,
    integer_factors, different_base_models, different_target_modules, different_shapes, nan_in_a_factor,
    inf_in_a_head, one_adapter, zero_adapters_by_mapping, duplicate_names, k_zero, k_negative, k_not_an_integer,
    threshold_above_one, threshold_zero, chunk_size_zero, cuda_without_gpu, output_is_a_file, output_parent_is_a_file,
    output_is_an_existing_checkpoint, output_is_a_foreign_folder, output_not_writable, name_escapes_with_dots,
    name_is_an_absolute_path, pickle_only_adapter, unreachable_hub_id,
    checkpoint_missing, checkpoint_folder_without_config, checkpoint_missing_components,
    checkpoint_corrupt_loadings, checkpoint_config_not_json, checkpoint_config_lacks_a_required_key,
    checkpoint_newer_format, checkpoint_name_escapes, checkpoint_dtype_disagrees, checkpoint_rank_disagrees,
    checkpoint_scale_zero, checkpoint_unreachable_hub_id, unknown_adapter, reconstruct_into_a_file,
    reconstruct_over_an_existing_adapter,
]}

#: Cases also run through the installed `lorashare` script, one subprocess each.
SCRIPT_CASES = [
    "missing_folder", "not_lora", "nan_in_a_factor", "k_zero", "output_is_a_file",
    "output_is_an_existing_checkpoint", "checkpoint_dtype_disagrees", "unknown_adapter",
]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 25 and set(SCRIPT_CASES) <= set(CASES) and len(SCRIPT_CASES) >= 6


# ------------------------------------------------------------------------------ fixtures



def _build(lab: Lab, root: Path, case_id: str) -> Case | str:
    d = root / case_id
    d.mkdir(parents=True)
    try:
        case = CASES[case_id](lab, d)
    except pytest.skip.Exception as exc:
        return f"skip: {exc.msg}"
    case.before = snapshot(case.output)
    return case


def _cases(lab: Lab, root: Path, ids) -> dict[str, Case | str]:
    return {case_id: _build(lab, root, case_id) for case_id in ids}


def _untouched(case: Case) -> None:
    assert snapshot(case.output) == case.before, f"{case.output} was changed"
    assert temp_siblings(case.output) == [], f"work folders left beside {case.output}"


def _offline_env(tmp: Path) -> dict[str, str]:
    cache = tmp / "hf-cache-cli"
    cache.mkdir(exist_ok=True)
    return cli_env(cache)


@pytest.fixture(scope="module")
def driver_results(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """Every case through ``share_torch.cli.main`` in one subprocess (see _cli_driver.py)."""
    root = tmp_path_factory.mktemp("cli-cases")
    cases = _cases(lab, root, CASES)
    runnable = {cid: c.argv for cid, c in cases.items() if isinstance(c, Case)}
    (root / "cases.json").write_text(json.dumps(runnable))
    done = subprocess.run(
        [sys.executable, "-m", "tests.reliability._cli_driver", str(root / "cases.json"), str(root / "results.json")],
        cwd=REPO, env=_offline_env(root), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return cases, json.loads((root / "results.json").read_text())


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("case_id", list(CASES))
def test_python_api_refuses(case_id: str, lab: Lab, tmp_path: Path) -> None:
    case = _build(lab, tmp_path / "case", case_id)
    if isinstance(case, str):
        pytest.skip(case)
    with pytest.raises(case.error) as exc:
        case.python()
    assert isinstance(exc.value, ShareError)
    message = str(exc.value)
    for needle in case.needles:
        assert needle in message, f"{needle!r} not in: {message}"
    _untouched(case)


@pytest.mark.parametrize("case_id", list(CASES))
def test_cli_refuses_with_one_line(case_id: str, driver_results) -> None:
    cases, results = driver_results
    case = cases[case_id]
    if isinstance(case, str):
        pytest.skip(case)
    result = results[case_id]
    line = error_line(result["code"], result["stderr"])
    for needle in case.needles:
        assert needle in line, f"{needle!r} not in: {line}"
    assert "saved checkpoint" not in result["stdout"]
    _untouched(case)


@pytest.mark.parametrize("case_id", SCRIPT_CASES)
def test_installed_lorashare_script_refuses(case_id: str, lab: Lab, tmp_path: Path) -> None:
    case = _build(lab, tmp_path / "case", case_id)
    if isinstance(case, str):
        pytest.skip(case)
    done = run_lorashare(case.argv, _offline_env(tmp_path))
    line = error_line(done.returncode, done.stderr)
    for needle in case.needles:
        assert needle in line, f"{needle!r} not in: {line}"
    _untouched(case)


def test_zero_adapters_is_a_usage_error_on_the_command_line(lab: Lab, tmp_path: Path) -> None:
    done = run_lorashare(["compress", "-o", str(tmp_path / "out")], _offline_env(tmp_path))
    assert done.returncode == 2 and "ADAPTER" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(lab: Lab, tmp_path: Path) -> None:
    case = _build(lab, tmp_path / "case", "not_lora")
    done = run_lorashare(["--debug", *case.argv], _offline_env(tmp_path))
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "UnsupportedAdapterError" in done.stderr
    _untouched(case)
