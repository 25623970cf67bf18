"""Planted-rank teacher-student tasks on a tiny random BERT (and GPT-2) saved to a temp folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers

from lorabench.models import load_model_and_tokenizer
from lorabench.tasks import TASKS, LoadRequest, list_tasks, load_task
from lorabench.tasks import planted as P
from lorabench.tasks.planted import source as planted_source
from lorabench.variants.base import ConfigError

WORDS = [
    "apple", "river", "stone", "cloud", "green", "quick", "table", "light", "dream", "house",
    "music", "paper", "smile", "train", "water", "night", "plant", "story", "bread", "chair",
    "field", "glass", "horse", "money", "ocean", "piano", "queen", "radio", "sugar", "tiger",
    "uncle", "voice", "whale", "youth", "zebra", "amber", "brick", "candy", "daisy", "eagle",
]  # fmt: skip
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PIECES = ["##s", "##ing", ",", ".", "!", "a"]  # word pieces, punctuation, one letter: never sampled


def _save_tokenizer(folder: Path) -> None:
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS + PIECES) + "\n")
    transformers.BertTokenizerFast(vocab=str(vocab)).save_pretrained(folder)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("tiny-bert")
    _save_tokenizer(folder)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(SPECIALS + WORDS + PIECES), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


SPEC = P.planted_spec(
    "planted-test", ranks={"query": 2, "value": [1, 3]}, scale=4.0, num_train=200,
    num_validation=100, min_words=3, max_words=8,
)  # fmt: skip
LAYER = "bert.encoder.layer.{}.attention.self.{}"


def _load(model: str, seed: int = 0, spec=SPEC, **kw):
    return load_task(spec, LoadRequest(model=model, seed=seed, **kw))


def _logits(model, tokenizer, frame: pd.DataFrame) -> torch.Tensor:
    return P.predict_logits(model, tokenizer, list(frame["sentence"]), batch_size=7)


def test_builtin_tasks_are_registered_with_valid_recipes(bert_dir: str) -> None:
    assert {"planted-tiny", "planted-uniform", "planted-mixed"} <= set(list_tasks("planted*"))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(bert_dir)
    for name in list_tasks("planted*"):
        spec = TASKS.get(name)
        assert spec.source == "planted" and spec.num_labels == 2
        recipe = P.PlantedRecipe.from_options(spec.options)
        ranks = P.resolve_ranks(model, recipe.ranks)  # every recipe fits a 2-layer model too
        assert set(ranks) == {LAYER.format(i, m) for i in range(2) for m in ("query", "value")}
    mixed = P.resolve_ranks(model, TASKS.get("planted-mixed").options["ranks"])
    # The 6-entry lists are stretched over 2 layers: entries 0 and 3.
    assert [mixed[LAYER.format(i, "query")] for i in range(2)] == [8, 1]
    assert [mixed[LAYER.format(i, "value")] for i in range(2)] == [0, 2]


def test_rows_labels_and_extras(bert_dir: str) -> None:
    data = _load(bert_dir)
    train, val = data.split("train"), data.split("validation")
    assert list(train.columns) == ["sentence", "label"] and len(train) == 200 and len(val) == 100
    assert train["label"].dtype == "int64" and set(train["label"]) == {0, 1}
    words = set(" ".join(train["sentence"]).split())
    assert words <= set(WORDS)  # no specials, word pieces, punctuation or one-letter tokens
    assert all(3 <= len(s.split()) <= 8 for s in train["sentence"])
    # Balanced: the bias splits all generated inputs at the median margin.
    assert 0.35 < pd.concat([train, val])["label"].mean() < 0.65
    assert data.extras["freeze_head"] is True
    assert set(data.extras["head_state"]) == {"classifier.weight", "classifier.bias"}
    assert data.extras["true_ranks"] == {
        LAYER.format(0, "query"): 2, LAYER.format(1, "query"): 2,
        LAYER.format(0, "value"): 1, LAYER.format(1, "value"): 3,
    }  # fmt: skip
    assert data.extras["teacher"]["planted_rank_total"] == 8


def test_teacher_gets_every_label_and_base_model_gets_the_recorded_floor(bert_dir: str) -> None:
    data = _load(bert_dir)
    request = LoadRequest(model=bert_dir, seed=0)
    teacher = P.build_teacher(SPEC, request)
    teacher.model.load_state_dict(data.extras["head_state"], strict=False)
    base, tokenizer = load_model_and_tokenizer(bert_dir, num_labels=2)
    base.load_state_dict(data.extras["head_state"], strict=False)
    for split in ("train", "validation"):
        frame = data.split(split)
        labels = torch.tensor(frame["label"].to_numpy())
        assert torch.equal(_logits(teacher.model, tokenizer, frame).argmax(1), labels)
        floor = (_logits(base, tokenizer, frame).argmax(1) == labels).double().mean().item()
        assert floor == pytest.approx(data.extras["floor"][split])
        assert floor < 0.9  # the update changes the labels: the head alone cannot fit them


def test_planted_deltas_have_exactly_the_planted_rank(bert_dir: str) -> None:
    teacher = P.build_teacher(SPEC, LoadRequest(model=bert_dir, seed=3))
    base, _ = load_model_and_tokenizer(bert_dir, num_labels=2)
    for name, rank in teacher.true_ranks.items():
        diff = teacher.model.get_submodule(name).weight - base.get_submodule(name).weight
        assert torch.linalg.matrix_rank(diff.double(), rtol=1e-4).item() == rank
        assert torch.linalg.matrix_rank(teacher.deltas[name].double(), rtol=1e-5).item() == rank
        # Every planted direction is scale * the spectral norm of the original weight.
        sv = torch.linalg.svdvals(teacher.deltas[name].double())[:rank]
        top = torch.linalg.matrix_norm(base.get_submodule(name).weight.detach().double(), ord=2)
        assert torch.allclose(sv, (SPEC.options["scale"] * top).expand(rank), rtol=1e-5)
    untouched = "bert.encoder.layer.0.attention.self.key"
    assert torch.equal(
        teacher.model.get_submodule(untouched).weight, base.get_submodule(untouched).weight
    )


def test_rank_zero_is_recorded_and_leaves_the_matrix_untouched(bert_dir: str) -> None:
    spec = P.planted_spec("planted-zero", ranks={"query": [0, 2]}, num_train=20, num_validation=10)
    teacher = P.build_teacher(spec, LoadRequest(model=bert_dir))
    assert teacher.true_ranks == {LAYER.format(0, "query"): 0, LAYER.format(1, "query"): 2}
    assert not teacher.deltas[LAYER.format(0, "query")].any()


def test_same_seed_same_task_other_seed_other_task(
    bert_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _load(bert_dir, seed=1)
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "elsewhere"))  # regenerate from scratch
    again = _load(bert_dir, seed=1)
    assert again.extras["cache_file"] != first.extras["cache_file"]
    for split in ("train", "validation"):
        pd.testing.assert_frame_equal(first.split(split), again.split(split))
    assert first.extras["true_ranks"] == again.extras["true_ranks"]
    for k, v in first.extras["head_state"].items():
        assert torch.equal(v, again.extras["head_state"][k])

    other = _load(bert_dir, seed=2)
    assert not first.split("train")["sentence"].equals(other.split("train")["sentence"])
    assert not torch.equal(
        first.extras["head_state"]["classifier.weight"],
        other.extras["head_state"]["classifier.weight"],
    )


def test_cache_is_reused_and_rebuilt_when_corrupt(
    bert_dir: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _load(bert_dir)
    path = Path(first.extras["cache_file"])
    assert path.parent == cache / "planted" and path.is_file()
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left no temporary behind

    calls = []
    real = P.generate_planted
    # load_planted looks generate_planted up in its own module, so patch it there.
    monkeypatch.setattr(planted_source, "generate_planted", lambda *a: calls.append(a) or real(*a))
    again = _load(bert_dir)
    assert calls == []  # read from the cache
    pd.testing.assert_frame_equal(first.split("train"), again.split("train"))

    _load(bert_dir, seed=5)  # another seed is another entry
    assert len(calls) == 1 and len(list(path.parent.glob("*.pt"))) == 2

    path.write_bytes(b"not a torch file")
    rebuilt = _load(bert_dir)
    assert len(calls) == 2
    pd.testing.assert_frame_equal(first.split("train"), rebuilt.split("train"))


def test_a_copied_model_reuses_the_cache_entry(
    bert_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _load(bert_dir)
    # shutil.copy, not copy2: the copy has new modification times, only the content is the same.
    copy = shutil.copytree(bert_dir, tmp_path / "copied-bert", copy_function=shutil.copy)
    monkeypatch.setattr(planted_source, "generate_planted", lambda *a: pytest.fail("regenerated"))
    again = _load(str(copy))
    assert again.extras["cache_file"] == first.extras["cache_file"]
    pd.testing.assert_frame_equal(first.split("train"), again.split("train"))


def test_example_limits_take_a_fixed_subset(bert_dir: str) -> None:
    full = _load(bert_dir)
    small = _load(bert_dir, max_train_examples=50, max_eval_examples=20)
    assert len(small.split("train")) == 50 and len(small.split("validation")) == 20
    assert set(small.split("train")["sentence"]) <= set(full.split("train")["sentence"])


def test_bad_recipes_fail_with_the_fix(bert_dir: str) -> None:
    request = LoadRequest(model=bert_dir)
    too_big = P.planted_spec("planted-big", ranks={"query": 33}, num_train=8, num_validation=8)
    with pytest.raises(P.PlantedRecipeError, match=r"rank 33 .*exceeds .* maximum rank .* 32"):
        load_task(too_big, request)
    with pytest.raises(ConfigError, match=r"matches no module.*Did you mean 'query'"):
        load_task(P.planted_spec("planted-typo", ranks={"quer": 2}), request)
    with pytest.raises(P.PlantedRecipeError, match="selected by both 'query' and"):
        load_task(P.planted_spec("planted-both", ranks={"query": 2, "*.self.*": 1}), request)
    with pytest.raises(P.PlantedRecipeError, match=r"unknown key\(s\) \['rank'\]"):
        P.planted_spec("planted-key", rank={"query": 2})
    with pytest.raises(P.PlantedRecipeError, match="must be an int >= 0"):
        P.planted_spec("planted-neg", ranks={"query": -1})
    with pytest.raises(P.PlantedRecipeError, match="max_words"):
        P.planted_spec("planted-len", ranks={"query": 1}, min_words=5, max_words=2)


def test_head_without_bias_is_centred(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    _save_tokenizer(folder)  # a WordPiece tokenizer is fine: the model only sees ids
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=len(SPECIALS + WORDS + PIECES), n_embd=32, n_layer=2, n_head=4, n_positions=64,
    )  # fmt: skip
    transformers.GPT2ForSequenceClassification(cfg).save_pretrained(folder)
    spec = P.planted_spec(
        "planted-gpt2", ranks={"c_attn": 2}, num_train=200, num_validation=50, min_words=3,
        max_words=8,
    )  # fmt: skip
    data = load_task(spec, LoadRequest(model=str(folder)))
    assert set(data.extras["head_state"]) == {"score.weight"}
    assert data.extras["true_ranks"] == {f"transformer.h.{i}.attn.c_attn": 2 for i in range(2)}
    assert 0.2 < data.split("train")["label"].mean() < 0.8  # approximately balanced without a bias
