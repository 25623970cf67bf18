"""Tiny random-initialised transformers for variant tests: no downloads, milliseconds to build.

Each family is built from its transformers config class with hidden size 32 (by default) and 2
layers, and comes with the module patterns an adapter targets on it (GPT-2's ``c_attn`` is a
``Conv1D``, which stores its weight transposed). Dropout is off so training-mode forwards are
deterministic; the same ``seed`` always gives the same weights (a "fresh copy" of the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

VOCAB = 100
SEQ_LEN = 8
NUM_LABELS = 2


@dataclass(frozen=True)
class TinyFamily:
    """A model family: how to build it and which modules to adapt on it."""

    name: str
    build: Callable[[int], nn.Module]  # hidden size -> model
    target_modules: tuple[str, ...]


def _bert(hidden: int) -> nn.Module:
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=NUM_LABELS,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(cfg)


def _roberta(hidden: int) -> nn.Module:
    import transformers

    cfg = transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=SEQ_LEN + 8, num_labels=NUM_LABELS,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1,
        bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    return transformers.RobertaForSequenceClassification(cfg)


def _gpt2(hidden: int) -> nn.Module:
    import transformers

    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=hidden, n_layer=2, n_head=4, n_positions=64,
        num_labels=NUM_LABELS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return transformers.GPT2ForSequenceClassification(cfg)


def _llama(hidden: int) -> nn.Module:
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        num_labels=NUM_LABELS, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return transformers.LlamaForSequenceClassification(cfg)


FAMILIES: dict[str, TinyFamily] = {
    "bert": TinyFamily("bert", _bert, ("query", "value")),
    "roberta": TinyFamily("roberta", _roberta, ("query", "value")),
    "gpt2": TinyFamily("gpt2", _gpt2, ("c_attn",)),  # Conv1D, weight stored (in, out)
    "llama": TinyFamily("llama", _llama, ("q_proj", "v_proj")),
}


def build_model(
    family: str, *, seed: int = 0, dtype: torch.dtype = torch.float64, hidden: int = 32
) -> nn.Module:
    """The tiny model of ``family`` in eval mode; equal seeds give bit-identical weights.

    ``hidden`` (a multiple of 4) changes every layer's shape: a model of "another shape" for
    the checks that load an adapter into the wrong model. float64 by default, so that exact
    comparisons (merge, save/load) test the maths, not float32 rounding.
    """
    torch.manual_seed(seed)
    model = FAMILIES[family].build(hidden).to(dtype)
    return model.eval()


def make_batch(
    *, batch: int = 2, seed: int = 0, with_labels: bool = True
) -> dict[str, torch.Tensor]:
    """Token ids avoiding the special ids 0..2 (so GPT-2/Llama see no padding)."""
    g = torch.Generator().manual_seed(seed)
    out = {
        "input_ids": torch.randint(3, VOCAB, (batch, SEQ_LEN), generator=g),
        "attention_mask": torch.ones(batch, SEQ_LEN, dtype=torch.long),
    }
    if with_labels:
        out["labels"] = torch.randint(0, NUM_LABELS, (batch,), generator=g)
    return out


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The classification logits for ``batch`` (labels left out: no loss computed)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits
