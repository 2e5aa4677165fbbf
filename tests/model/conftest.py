"""Real parts for the share_torch tests: tiny transformers models from configs and PEFT adapters saved by PEFT."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

torch.set_num_threads(2)

BERT = BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=96, max_position_embeddings=64, num_labels=3)
LLAMA = LlamaConfig(vocab_size=120, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def base_bert(num_labels: int = 3) -> BertForSequenceClassification:
    """The same random BERT every call (seeded), so adapters and their reconstructions share a base."""
    torch.manual_seed(1234)
    config = copy.deepcopy(BERT)
    config.num_labels = num_labels
    return BertForSequenceClassification(config).eval()


def base_llama() -> LlamaForCausalLM:
    torch.manual_seed(4321)
    return LlamaForCausalLM(copy.deepcopy(LLAMA)).eval()


def save_adapter(folder: Path, *, kind: str = "bert", seed: int = 0, r: int = 4, alpha: float = 8,
                 dtype: torch.dtype = torch.float32, **lora_kwargs) -> Path:
    """Create a real PEFT LoRA (random non-zero A and B) on a tiny model and save it with PEFT."""
    base = base_bert() if kind == "bert" else base_llama()
    defaults = ({"target_modules": ["query", "value"], "task_type": "SEQ_CLS"} if kind == "bert"
                else {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "task_type": "CAUSAL_LM"})
    defaults.update(lora_kwargs)
    config = LoraConfig(r=r, lora_alpha=alpha, init_lora_weights=False, **defaults)
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    with torch.no_grad():  # a trained-looking adapter: B smaller than A, heads differing per adapter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
            if "modules_to_save" in name:
                p.normal_(0, 0.5)
    model = model.to(dtype)
    model.save_pretrained(folder)
    return folder


def input_ids(seed: int = 0, batch: int = 4, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 120, (batch, length), generator=g)


def logits_of(adapter_dir: Path, kind: str = "bert", ids: torch.Tensor | None = None) -> torch.Tensor:
    base = base_bert() if kind == "bert" else base_llama()
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.inference_mode():
        return model(input_ids=input_ids() if ids is None else ids).logits.float()


@pytest.fixture
def bert_adapters(tmp_path: Path) -> list[Path]:
    """Three BERT adapters: mixed ranks (4, 4, 6) and different alphas, each with its own classifier head."""
    return [
        save_adapter(tmp_path / "sst2", seed=1, r=4, alpha=8),
        save_adapter(tmp_path / "cola", seed=2, r=4, alpha=16),
        save_adapter(tmp_path / "mrpc", seed=3, r=6, alpha=6),
    ]
