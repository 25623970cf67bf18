"""From task rows to padded batches: tokenisation, length bucketing, a seeded batch order.

Tokenisation happens once per (task, tokenizer, max_length) and is cached by the runner across
variants and seeds. Batches are padded only to their own longest example (dynamic padding), and
examples of similar length are grouped (length bucketing) so little compute goes to padding:

* each epoch the example indices are shuffled with a generator seeded by ``(seed, epoch)``;
* the shuffled list is cut into "mega-batches" of ``bucket_batches`` batches, each sorted by
  length and cut into batches (as fairseq's and HF's ``group_by_length`` samplers do);
* the batches are shuffled again so that long and short batches alternate unpredictably.

The same seed therefore always gives the same batches in the same order, which is what lets a
token budget be turned into an exact number of optimiser steps before training starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lorabench.tasks.spec import TaskSpec

# Batches per sorted mega-batch: enough to group lengths well, few enough to stay random.
DEFAULT_BUCKET_BATCHES = 32


@dataclass
class TokenizedSplit:
    """One split, tokenised without padding: ``input_ids[i]`` is example i's id array."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None  # BERT-style segment ids; None for models without
    labels: np.ndarray  # int64 class ids, or float32 for regression
    lengths: np.ndarray  # tokens per example (no padding)

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_split(
    frame: pd.DataFrame, spec: TaskSpec, tokenizer, max_length: int
) -> TokenizedSplit:
    """Tokenises the spec's text column(s) of ``frame`` (pairs when there are two), truncated to
    ``max_length`` tokens and not padded."""
    missing = [c for c in (*spec.text_columns, spec.label_column) if c not in frame.columns]
    if missing:
        raise KeyError(
            f"task {spec.name!r}: rows lack column(s) {missing}; they have {list(frame.columns)}"
        )
    if len(spec.text_columns) not in (1, 2):
        raise ValueError(
            f"task {spec.name!r} has {len(spec.text_columns)} text columns; tokenisation supports "
            "one (single sentence) or two (sentence pair)"
        )
    texts = [frame[c].astype(str).tolist() for c in spec.text_columns]
    encoded = tokenizer(
        *texts,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
    )
    input_ids = [np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"]]
    token_types = None
    if "token_type_ids" in encoded:
        token_types = [np.asarray(t, dtype=np.int64) for t in encoded["token_type_ids"]]
    label_dtype = np.float32 if spec.task_type == "regression" else np.int64
    labels = frame[spec.label_column].to_numpy().astype(label_dtype)
    lengths = np.fromiter((len(ids) for ids in input_ids), dtype=np.int64, count=len(input_ids))
    return TokenizedSplit(input_ids, token_types, labels, lengths)


def collate(split: TokenizedSplit, indices: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """The examples ``indices`` padded to their longest one: ids, attention mask, labels."""
    width = int(split.lengths[indices].max())
    ids = np.full((len(indices), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    types = (
        np.zeros((len(indices), width), dtype=np.int64)
        if split.token_type_ids is not None
        else None
    )
    for row, i in enumerate(indices):
        n = int(split.lengths[i])
        ids[row, :n] = split.input_ids[i]
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = split.token_type_ids[i]  # type: ignore[index]
    batch = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(split.labels[indices]),
    }
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


def epoch_batches(
    lengths: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    bucket_batches: int = DEFAULT_BUCKET_BATCHES,
) -> list[np.ndarray]:
    """One epoch of length-bucketed batches (index arrays), determined by ``(seed, epoch)``.

    Every example appears exactly once; the last batch of a mega-batch may be smaller.
    """
    if len(lengths) == 0:
        raise ValueError("cannot make batches from an empty training split")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = batch_size * bucket_batches
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        mega = order[start : start + chunk]
        # Stable sort: ties keep the shuffled order, so the result depends on the seed only.
        mega = mega[np.argsort(lengths[mega], kind="stable")]
        batches.extend(mega[i : i + batch_size] for i in range(0, len(mega), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class BatchPlan:
    """The training batches in order, epoch after epoch, with their token counts.

    Indexing by optimiser step is deterministic and lazy (epochs are generated on demand), so the
    runner can look ahead to compute how many steps a token or FLOP budget allows.
    """

    def __init__(
        self,
        split: TokenizedSplit,
        batch_size: int,
        *,
        seed: int,
        bucket_batches: int = DEFAULT_BUCKET_BATCHES,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.bucket_batches = bucket_batches
        self._batches: list[np.ndarray] = []
        self._epoch_of: list[int] = []
        self._epochs = 0

    def _extend(self) -> None:
        epoch = self._epochs
        new = epoch_batches(
            self.split.lengths,
            self.batch_size,
            seed=self.seed,
            epoch=epoch,
            bucket_batches=self.bucket_batches,
        )
        self._batches.extend(new)
        self._epoch_of.extend([epoch] * len(new))
        self._epochs += 1

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch (the same every epoch: mega-batch boundaries do not move)."""
        n, chunk = len(self.split), self.batch_size * self.bucket_batches
        full, rest = divmod(n, chunk)
        return full * -(-chunk // self.batch_size) + -(-rest // self.batch_size)

    def indices(self, step: int) -> np.ndarray:
        """The example indices of optimiser step ``step`` (0-based)."""
        while step >= len(self._batches):
            self._extend()
        return self._batches[step]

    def epoch(self, step: int) -> int:
        """The epoch (0-based) that optimiser step ``step``'s batch belongs to."""
        self.indices(step)
        return self._epoch_of[step]

    def tokens(self, step: int) -> int:
        """Non-padding tokens of step ``step``'s batch."""
        return int(self.split.lengths[self.indices(step)].sum())

    def padded_tokens(self, step: int) -> int:
        """Tokens including padding (batch size x longest example): what the model computes on."""
        idx = self.indices(step)
        return int(len(idx) * self.split.lengths[idx].max())

    def batch(self, step: int, pad_id: int) -> dict[str, torch.Tensor]:
        """Step ``step``'s batch as model inputs, padded with ``pad_id`` to its longest example
        (see :func:`collate`)."""
        return collate(self.split, self.indices(step), pad_id)

    def steps_within(
        self,
        limit: float,
        cost: str = "tokens",
        *,
        per_padded_token: float = 1.0,
        max_steps: int = 10_000_000,
    ) -> int:
        """The most steps whose cumulative cost stays within ``limit``.

        ``cost="tokens"`` sums non-padding tokens; ``cost="padded"`` sums padded tokens times
        ``per_padded_token`` (FLOPs per padded token for a FLOP budget).
        """
        total = 0.0
        step = 0
        while step < max_steps:
            c = (
                self.tokens(step)
                if cost == "tokens"
                else self.padded_tokens(step) * per_padded_token
            )
            if total + c > limit:
                break
            total += c
            step += 1
        return step


def eval_batches(split: TokenizedSplit, batch_size: int) -> list[np.ndarray]:
    """Evaluation batches sorted by length (least padding); order does not affect metrics."""
    order = np.argsort(split.lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def iterate_eval(
    split: TokenizedSplit, batch_size: int, pad_id: int
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(indices, padded batch) pairs covering ``split`` once."""
    for idx in eval_batches(split, batch_size):
        yield idx, collate(split, idx, pad_id)
