"""Tiny random-initialised transformers for tests: the ones plugin authors get.

The families (BERT, RoBERTa, GPT-2, Llama; hidden size 32, 2 layers, dropout off, the same
``seed`` always giving the same weights) live in :mod:`lorabench.testing.models`, so the repo's
tests and a third-party variant's tests build exactly the same models.
"""

from lorabench.testing.models import (
    FAMILIES,
    NUM_LABELS,
    SEQ_LEN,
    VOCAB,
    TinyFamily,
    build_model,
    logits,
    make_batch,
)

__all__ = [
    "FAMILIES",
    "NUM_LABELS",
    "SEQ_LEN",
    "VOCAB",
    "TinyFamily",
    "build_model",
    "logits",
    "make_batch",
]
