"""check_compatible: what may differ (ranks, alphas, heads) and what may not, all reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from share_hf import IncompatibleAdaptersError, check_compatible, open_adapter

from ._helpers import edit_config, save_adapter


def test_mixed_ranks_alphas_and_heads_are_compatible(tmp_path: Path) -> None:
    a = open_adapter(save_adapter(tmp_path / "a", seed=1, r=4, alpha=8))
    b = open_adapter(save_adapter(tmp_path / "b", seed=2, r=6, alpha=32, use_rslora=True))
    c = open_adapter(save_adapter(tmp_path / "c", seed=3, r=2, alpha=2, modules_to_save=None, task_type=None))
    check_compatible([a, b, c])  # no error


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_adapters(tmp_path: Path, count: int) -> None:
    adapters = [open_adapter(save_adapter(tmp_path / "a"))][:count]
    with pytest.raises(IncompatibleAdaptersError, match=f"at least 2 adapters to share a basis, got {count}"):
        check_compatible(adapters)


def test_duplicate_names(tmp_path: Path) -> None:
    a = open_adapter(save_adapter(tmp_path / "x" / "task"))
    b = open_adapter(save_adapter(tmp_path / "y" / "task", seed=1))
    with pytest.raises(IncompatibleAdaptersError, match="adapter name 'task' is used 2 times") as exc:
        check_compatible([a, b])
    assert str(tmp_path / "x" / "task") in str(exc.value) and str(tmp_path / "y" / "task") in str(exc.value)


def test_base_model_differs_only_when_both_set(tmp_path: Path) -> None:
    a = save_adapter(tmp_path / "a")
    b = save_adapter(tmp_path / "b", seed=1)
    c = save_adapter(tmp_path / "c", seed=2)
    edit_config(a, base_model_name_or_path="org/bert-tiny")
    edit_config(b, base_model_name_or_path="org/roberta-tiny")
    check_compatible([open_adapter(a), open_adapter(c)])  # c does not say: allowed
    with pytest.raises(IncompatibleAdaptersError, match="different base models") as exc:
        check_compatible([open_adapter(a), open_adapter(b), open_adapter(c)])
    assert "'a': 'org/bert-tiny'" in str(exc.value) and "'b': 'org/roberta-tiny'" in str(exc.value)


def test_every_difference_in_one_error(tmp_path: Path) -> None:
    a = save_adapter(tmp_path / "a")
    edit_config(a, base_model_name_or_path="org/bert-tiny")
    b = save_adapter(tmp_path / "b", target_modules=["query"])  # lacks the value modules
    edit_config(b, base_model_name_or_path="org/other")
    wide = save_adapter(tmp_path / "wide", model_overrides={"hidden_size": 48, "intermediate_size": 96})
    with pytest.raises(IncompatibleAdaptersError) as exc:
        check_compatible([open_adapter(a), open_adapter(b), open_adapter(wide)])
    msg = str(exc.value)
    assert "(4 difference(s))" in msg  # base model, missing modules, 2 query shapes
    assert "different base models" in msg
    assert "adapter 'b' lacks 2 of the 4 LoRA modules" in msg and "layer.0.attention.self.value" in msg
    assert "module 'base_model.model.bert.encoder.layer.0.attention.self.query' has different (d_in, d_out): " \
           "'a': (32, 32); 'b': (32, 32); 'wide': (48, 48)" in msg
    assert "Fix:" in msg
