"""Is a planted task learnable in the quick preset's budget? Floor vs trained accuracy, wall time.

Generates the task (timed; cached afterwards), then trains a plain LoRA on the real packaged
model with the teacher's frozen head, AdamW, constant learning rate, and reports validation
accuracy of the base model with the head (the floor), after training, and the time taken.

    HF_HUB_OFFLINE=1 python benchmarks/planted_check.py --task planted-tiny --steps 150

This is a stand-alone check of the task's difficulty, not the benchmark's training loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import torch

from lorabench.models import load_model_and_tokenizer
from lorabench.tasks import LoadRequest, get_task, load_task
from lorabench.variants import attach


def accuracy(model: torch.nn.Module, enc: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
    model.eval()
    hits = 0
    with torch.inference_mode():
        for start in range(0, len(labels), 256):
            batch = {k: v[start : start + 256] for k, v in enc.items()}
            hits += int((model(**batch).logits.argmax(1) == labels[start : start + 256]).sum())
    return hits / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="planted-tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a recipe key, e.g. --set num_train=4096 --set scale=1.5",
    )
    parser.add_argument(
        "--fresh-cache", action="store_true", help="generate into a new temporary cache"
    )
    args = parser.parse_args()
    if args.fresh_cache:
        os.environ["LORABENCH_CACHE"] = tempfile.mkdtemp(prefix="lorabench-planted-")

    spec = get_task(args.task)
    if args.set:
        options = dict(spec.options)
        for item in args.set:
            key, _, value = item.partition("=")
            options[key] = json.loads(value)
        spec = dataclasses.replace(spec, options=options)
    t0 = time.perf_counter()
    data = load_task(spec, LoadRequest(seed=args.seed))
    t_gen = time.perf_counter() - t0
    train, val = data.split("train"), data.split("validation")
    print(
        f"{args.task}: {len(train)} train / {len(val)} validation, "
        f"generated/loaded in {t_gen:.1f} s; "
        f"label balance {train['label'].mean():.3f}; floor {data.extras['floor']}"
    )
    print("true ranks:", data.extras["true_ranks"])

    torch.manual_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(None, num_labels=data.spec.num_labels)
    model.load_state_dict(data.extras["head_state"], strict=False)
    column = data.spec.text_columns[0]

    def encode(frame):
        enc = tokenizer(list(frame[column]), padding=True, truncation=True, return_tensors="pt")
        return dict(enc), torch.tensor(frame["label"].to_numpy())

    train_enc, train_y = encode(train)
    val_enc, val_y = encode(val)
    print(
        f"tokens per input: {train_enc['input_ids'].shape[1]} (padded max); "
        f"floor recomputed {accuracy(model, val_enc, val_y):.3f}"
    )

    adapter = attach(model, "lora", r=args.r, alpha=args.alpha, target_modules=["query", "value"])
    optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        model.train()
        idx = torch.randint(len(train_y), (args.batch,), generator=g)
        batch = {k: v[idx] for k, v in train_enc.items()}
        keep = int(
            batch["attention_mask"].sum(1).max()
        )  # trim the padding this batch does not need
        batch = {k: v[:, :keep] for k, v in batch.items()}
        loss = model(**batch, labels=train_y[idx]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == args.steps:
            print(
                f"step {step}: loss {loss.item():.3f}, "
                f"validation accuracy {accuracy(model, val_enc, val_y):.3f}, "
                f"{time.perf_counter() - t0:.0f} s"
            )
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
