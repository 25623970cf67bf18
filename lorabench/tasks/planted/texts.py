"""The inputs of a planted task: random sequences of whole words, and a model's logits on them.

Words come from the model's own vocabulary (no special tokens, no ``##`` word pieces, letters
only), so the ordinary tokenisation pipeline reads them and each word is about one token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lorabench.tasks.planted.recipe import PlantedRecipeError

TEXT_COLUMN = "sentence"  # the column generated rows keep their text in
LABEL_BATCH = 128  # inputs per labelling forward pass


def word_list(tokenizer: Any) -> list[str]:
    """Whole words of the tokenizer's vocabulary: letters only, no specials, no word pieces.

    Each token id is decoded (so BPE's leading-space marker becomes a space) and kept if what
    remains is alphabetic; the list is sorted so it does not depend on dict order.
    """
    special = set(tokenizer.all_special_ids)
    words = set()
    for token, idx in tokenizer.get_vocab().items():
        if idx in special or token.startswith("##"):
            continue
        text = tokenizer.decode([idx]).strip()
        if len(text) >= 2 and text.isalpha():
            words.add(text)
    if len(words) < 10:
        raise PlantedRecipeError(
            f"the tokenizer's vocabulary has only {len(words)} whole words; "
            "planted tasks need >= 10"
        )
    return sorted(words)


def generate_texts(
    words: list[str], n: int, min_words: int, max_words: int, generator: torch.Generator
) -> list[str]:
    """``n`` space-joined random word sequences with uniformly random lengths."""
    lengths = torch.randint(min_words, max_words + 1, (n,), generator=generator).tolist()
    picks = torch.randint(len(words), (sum(lengths),), generator=generator).tolist()
    texts, start = [], 0
    for length in lengths:
        texts.append(" ".join(words[i] for i in picks[start : start + length]))
        start += length
    return texts


def predict_logits(
    model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int = LABEL_BATCH
) -> torch.Tensor:
    """Logits for ``texts`` in input order (eval mode, no grad; batches of similar length)."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding per batch
    out = torch.empty(len(texts), model.config.num_labels, dtype=torch.float32)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, return_tensors="pt"
            )
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
            out[idx] = logits.float().cpu()
    return out
