"""Tiny random-initialised transformers for variant tests: no downloads, milliseconds to build.

Each family is built from its transformers config class with hidden size 32 (by default) and 2
layers, and comes with the module patterns an adapter targets on it (GPT-2's ``c_attn`` is a
``Conv1D``, which stores its weight transposed). Dropout is off so training-mode forwards are
deterministic; the same ``seed`` always gives the same weights (a "fresh copy" of the model).

:data:`FAMILIES` (BERT, RoBERTa, GPT-2, Llama) is what the variant contract suite checks on;
:data:`MORE_FAMILIES` adds DistilBERT, DeBERTa-v2, BART and GPT-NeoX, whose module names and task
heads differ (``q_lin``, ``query_proj``, encoder-decoder attention, a fused ``query_key_value``;
DistilBERT's ``pre_classifier``, DeBERTa-v2's pooler, BART's ``classification_head``).
:data:`ALL_FAMILIES` holds all eight. :func:`save_tiny_model` writes one with a word-level
tokenizer to a folder that ``lorabench.models.load_model_and_tokenizer`` (and ``--model``) reads
like a pretrained checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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


def _distilbert(hidden: int) -> nn.Module:
    import transformers

    cfg = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=hidden, n_layers=2, n_heads=4, hidden_dim=2 * hidden,
        max_position_embeddings=64, num_labels=NUM_LABELS, dropout=0.0, attention_dropout=0.0,
        seq_classif_dropout=0.0, pad_token_id=0,
    )  # fmt: skip
    return transformers.DistilBertForSequenceClassification(cfg)


def _deberta_v2(hidden: int) -> nn.Module:
    import transformers

    cfg = transformers.DebertaV2Config(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=NUM_LABELS,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pooler_dropout=0.0,
        relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
        max_relative_positions=32, pad_token_id=0,
    )  # fmt: skip
    return transformers.DebertaV2ForSequenceClassification(cfg)


def _bart(hidden: int) -> nn.Module:
    import transformers

    # eos 3 is [SEP] of save_tiny_model's tokenizer: BART classifies from the last eos token.
    cfg = transformers.BartConfig(
        vocab_size=VOCAB, d_model=hidden, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * hidden,
        decoder_ffn_dim=2 * hidden, max_position_embeddings=64, num_labels=NUM_LABELS,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, classifier_dropout=0.0,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3,
        forced_eos_token_id=None,
    )  # fmt: skip
    return transformers.BartForSequenceClassification(cfg)


def _gpt_neox(hidden: int) -> nn.Module:
    import transformers

    cfg = transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=NUM_LABELS,
        hidden_dropout=0.0, attention_dropout=0.0, pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )  # fmt: skip
    return transformers.GPTNeoXForSequenceClassification(cfg)


FAMILIES: dict[str, TinyFamily] = {
    "bert": TinyFamily("bert", _bert, ("query", "value")),
    "roberta": TinyFamily("roberta", _roberta, ("query", "value")),
    "gpt2": TinyFamily("gpt2", _gpt2, ("c_attn",)),  # Conv1D, weight stored (in, out)
    "llama": TinyFamily("llama", _llama, ("q_proj", "v_proj")),
}
MORE_FAMILIES: dict[str, TinyFamily] = {
    "distilbert": TinyFamily("distilbert", _distilbert, ("q_lin", "v_lin")),
    "deberta-v2": TinyFamily("deberta-v2", _deberta_v2, ("query_proj", "value_proj")),
    "bart": TinyFamily("bart", _bart, ("q_proj", "v_proj")),  # encoder, decoder and cross attn
    "gpt_neox": TinyFamily("gpt_neox", _gpt_neox, ("query_key_value",)),  # fused QKV Linear
}
ALL_FAMILIES: dict[str, TinyFamily] = {**FAMILIES, **MORE_FAMILIES}


def build_model(
    family: str, *, seed: int = 0, dtype: torch.dtype = torch.float64, hidden: int = 32
) -> nn.Module:
    """The tiny model of ``family`` in eval mode; equal seeds give bit-identical weights.

    ``hidden`` (a multiple of 4) changes every layer's shape: a model of "another shape" for
    the checks that load an adapter into the wrong model. float64 by default, so that exact
    comparisons (merge, save/load) test the maths, not float32 rounding.
    """
    torch.manual_seed(seed)
    model = ALL_FAMILIES[family].build(hidden).to(dtype)
    return model.eval()


# save_tiny_model's tokenizer: these ids first, so [PAD] is 0 and [SEP] (BART's eos) is 3.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def save_tiny_model(
    family: str,
    folder: str | Path,
    words: Sequence[str],
    *,
    seed: int = 0,
    hidden: int = 32,
    with_head: bool = False,
) -> Path:
    """Writes ``family``'s tiny model and a word-level tokenizer over ``words`` to ``folder``.

    Without ``with_head`` only the backbone is saved (``model.base_model``), as a pretrained
    checkpoint is: loading it for sequence classification initialises the task head anew (and
    for DeBERTa-v2 its pooler), which is what ``load_model_and_tokenizer`` records as the head.
    The tokenizer is a lower-casing WordPiece (BERT) tokenizer whose vocabulary is
    :data:`SPECIAL_TOKENS` then ``words`` (at most ``VOCAB`` in all); every family uses it.
    Weights are float32; equal seeds write equal files.
    """
    import transformers

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vocab = [*SPECIAL_TOKENS, *dict.fromkeys(words)]
    if len(vocab) > VOCAB:
        raise ValueError(f"{len(vocab)} tokens do not fit the tiny models' vocabulary of {VOCAB}")
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(
        vocab_file=str(out / "vocab.txt"), do_lower_case=True
    ).save_pretrained(out)
    model = build_model(family, seed=seed, dtype=torch.float32, hidden=hidden)
    (model if with_head else model.base_model).save_pretrained(out)
    return out


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
