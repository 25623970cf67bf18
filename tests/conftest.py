"""Shared fixtures: a tiny saved model with a tiny tokenizer, and a tiny in-memory task.

``tiny_model_dir`` is a folder ``load_model_and_tokenizer`` reads like any real checkpoint: a
word-level BERT tokenizer over ~60 words and a random-initialised 2-layer BERT (hidden 32), so a
training step takes milliseconds and nothing is downloaded.

``toy_task`` registers ``toy-sentiment``: short word sequences labelled 1 when they contain a
"positive" word, served from memory through a source registered for the test session.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

POSITIVE = ["good", "great", "fine", "nice", "happy"]
NEUTRAL = [
    "the",
    "a",
    "cat",
    "dog",
    "house",
    "tree",
    "car",
    "road",
    "sky",
    "sun",
    "moon",
    "river",
    "stone",
    "table",
    "chair",
    "book",
    "paper",
    "green",
    "blue",
    "red",
    "small",
    "big",
    "old",
    "new",
    "runs",
    "sits",
    "walks",
    "sees",
    "has",
    "is",
    "was",
    "on",
    "in",
    "under",
    "over",
    "near",
    "far",
    "and",
    "or",
    "but",
    "with",
    "without",
    "every",
    "some",
    "many",
    "few",
    "day",
    "night",
    "city",
    "field",
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOY_TASK = "toy-sentiment"
TOY_SOURCE = "toy-memory"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny BERT sequence classifier and its word-level tokenizer."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + POSITIVE + NEUTRAL) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(SPECIAL) + len(POSITIVE) + len(NEUTRAL),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def toy_rows(n: int, seed: int) -> pd.DataFrame:
    """``n`` sentences of 3-12 words; label 1 when one of the words is positive."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(NEUTRAL, k=rng.randint(3, 12))
        label = rng.random() < 0.5
        if label:
            words[rng.randrange(len(words))] = rng.choice(POSITIVE)
        rows.append({"sentence": " ".join(words), "label": int(label)})
    return pd.DataFrame(rows)


def register_toy_task() -> str:
    """Registers the in-memory task ``toy-sentiment`` (200 train, 64 validation examples) and its
    source; returns its name. Also the ``worker_setup`` of spawned workers and Ray actors, which
    start without what the test process registered in code."""
    from lorabench.tasks import TASKS, TaskData, TaskSpec, register_source

    def load(spec: TaskSpec, request) -> TaskData:
        train = toy_rows(200, 1)
        validation = toy_rows(64, 2)
        if request.max_train_examples:
            train = train.head(request.max_train_examples)
        if request.max_eval_examples:
            validation = validation.head(request.max_eval_examples)
        return TaskData(spec, {"train": train, "validation": validation}, source=TOY_SOURCE)

    register_source(TOY_SOURCE)(load)
    spec = TaskSpec(
        name=TOY_TASK,
        version="1",
        source=TOY_SOURCE,
        text_columns=("sentence",),
        label_names=("negative", "positive"),
        description="toy sentiment (tests)",
    )
    TASKS.add(spec, overwrite=True)
    return TOY_TASK


def toy_suite(model_dir, task, out, variants, seeds=(0, 1), steps=3):
    """A small suite of ``variants`` on ``task`` with the tiny model: ``steps`` steps of 16, 32
    evaluation examples, into ``out``; validated."""
    from lorabench.harness.config import Budget, TrainConfig
    from lorabench.harness.suite import SuiteConfig

    suite = SuiteConfig(
        variants=variants,
        tasks=[task],
        seeds=list(seeds),
        budget=Budget.parse(f"steps={steps}"),
        train=TrainConfig(batch_size=16, learning_rate=5e-3, max_eval_examples=32),
        model=str(model_dir),
        out=str(out),
        name="test",
    )
    suite.validate()
    return suite


@pytest.fixture(scope="session")
def toy_task() -> Iterator[str]:
    """The in-memory task ``toy-sentiment``, registered for the session."""
    from lorabench.tasks import TASKS
    from lorabench.tasks.data import SOURCES

    yield register_toy_task()
    TASKS.unregister(TOY_TASK)
    SOURCES.pop(TOY_SOURCE, None)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray instance of 2 CPUs for the module; yields its address. Its workers find this
    folder (``conftest``, the test modules) through PYTHONPATH, as spawned local workers find it
    through sys.path, and run at the tests' priority: Ray starts them at nice 15, where beside
    other tests (``-n 2``) or jobs they get a few percent of a core. ``ray.init`` sets a SIGTERM
    handler of its own: the previous one is put back, since later tests in this process expect
    it."""
    import os
    import signal

    ray = pytest.importorskip("ray")
    tests = Path(__file__).resolve().parent
    niceness = "RAY_worker_niceness"  # Ray's setting, read from the environment (lower case)
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", niceness)}
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(tests), str(tests.parent), saved["PYTHONPATH"]) if p
    )
    os.environ[niceness] = "0"
    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 2**20,
    )
    signal.signal(signal.SIGTERM, sigterm)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One torch thread: tiny models gain nothing from more, and a shared CPU loses a lot."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch):
    """``lorabench.cli.main.main``, routing only subcommands whose module exists (others are
    written in parallel; the entry point must not depend on them to test ``run``)."""
    import importlib.util

    from lorabench.cli import main as cli

    present = {
        name: mod for name, mod in cli.COMMANDS.items() if importlib.util.find_spec(mod) is not None
    }
    monkeypatch.setattr(cli, "COMMANDS", present)
    return cli.main
