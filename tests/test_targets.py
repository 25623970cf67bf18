"""Which modules an adapter adapts by default, the presets, and what the task head is.

``target_modules="auto"`` (the default) picks the attention query and value projections by the
model's ``model_type``; the table is checked against transformers' module names (models built
on the meta device: no memory, no download) and against PEFT's own table. The task head is what
the task adds to the model: the modules outside the backbone and whatever transformers newly
initialises when it loads the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lorabench.models import (
    NEW_PARAMETERS_ATTR,
    head_parameter_names,
    load_model_and_tokenizer,
    new_parameter_names,
    reset_head,
)
from lorabench.testing.models import ALL_FAMILIES, build_model, save_tiny_model
from lorabench.variants import attach, load_adapter, make_config
from lorabench.variants.base import ConfigError
from lorabench.variants.targets import (
    ALL_LINEAR,
    ATTENTION,
    DEFAULT_TARGETS,
    attention_layer_names,
    find_targets,
    linear_layer_names,
    resolve_targets,
)

pytestmark = pytest.mark.usefixtures("single_thread")

VARIANTS = ("lora", "dora", "adalora", "vera", "dylora")
WORDS = ["good", "great", "fine", "nice", "happy", "the", "a", "cat", "dog", "house", "sky"]
# Where we depart from PEFT's table on purpose: the LoRA paper adapts query and value only.
PEFT_DEPARTURES = {"phi": ("q_proj", "v_proj")}  # PEFT adds the MLP's fc1, fc2


def meta_model(model_type: str) -> nn.Module | None:
    """``model_type``'s sequence classifier with one layer, on the meta device (None when
    transformers has no sequence classifier for it)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.for_model(model_type)
    except ValueError:
        return None
    for key in (
        "num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers",
        "n_layers", "num_decoder_layers",
    ):  # fmt: skip
        if isinstance(getattr(config, key, None), int):
            with contextlib.suppress(Exception):  # a config that derives it from another field
                setattr(config, key, 1)
    try:
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(config)
    except Exception:  # no sequence classifier, or a config that will not build one layer
        return None


@pytest.mark.parametrize("model_type", sorted(DEFAULT_TARGETS))
def test_auto_picks_attention_query_and_value_for_every_known_model_type(model_type):
    model = meta_model(model_type)
    if model is None:
        pytest.skip(f"transformers builds no sequence classifier for {model_type}")
    resolved = resolve_targets(model, "auto")
    assert resolved.patterns == DEFAULT_TARGETS[model_type]
    assert resolved.names
    # Every pattern of the table finds a layer, and every chosen layer is attention, not head.
    for pattern in DEFAULT_TARGETS[model_type]:
        assert find_targets(model, [pattern])
    assert set(resolved.names) <= set(attention_layer_names(model))
    assert not set(resolved.names) & {n.rsplit(".", 1)[0] for n in head_parameter_names(model)}


def test_table_agrees_with_peft():
    constants = pytest.importorskip("peft.utils.constants")
    peft = constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    shared = sorted(set(peft) & set(DEFAULT_TARGETS))
    assert len(shared) >= 25
    for model_type in shared:
        expected = PEFT_DEPARTURES.get(model_type, tuple(peft[model_type]))
        assert DEFAULT_TARGETS[model_type] == expected, model_type


def test_issue_families_are_in_the_table():
    for model_type in (
        "bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert", "deberta",
        "deberta-v2", "mpnet", "gpt2", "gpt_neox", "gptj", "opt", "bloom", "llama", "mistral",
        "qwen2", "gemma", "phi", "bart", "t5",
    ):  # fmt: skip
        assert model_type in DEFAULT_TARGETS
    assert DEFAULT_TARGETS["distilbert"] == ("q_lin", "v_lin")
    assert DEFAULT_TARGETS["deberta-v2"] == ("query_proj", "value_proj")
    assert DEFAULT_TARGETS["gpt2"] == ("c_attn",)
    assert DEFAULT_TARGETS["gpt_neox"] == ("query_key_value",)


def test_default_is_auto_serialisable_and_restating_it_changes_nothing():
    for variant in VARIANTS:
        config = make_config(variant)
        assert config.target_modules == "auto"
        data = config.to_dict()
        assert json.loads(json.dumps(data)) == data and data["target_modules"] == "auto"
        assert make_config(variant, {"target_modules": "auto"}).to_dict() == data
        assert make_config(variant, data).to_dict() == data


@pytest.mark.parametrize("family", sorted(ALL_FAMILIES))
def test_auto_equals_the_family_patterns_on_every_tiny_family(family):
    model = build_model(family)
    adapter = attach(model, "lora", r=2)
    expected = list(find_targets(build_model(family), list(ALL_FAMILIES[family].target_modules)))
    assert list(adapter.target_names) == expected == list(adapter.layers)
    assert adapter.target_patterns == ALL_FAMILIES[family].target_modules


def test_bert_auto_is_exactly_query_and_value_of_every_layer():
    model = build_model("bert")
    names = resolve_targets(model, "auto").names
    assert names == tuple(
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")
    )


def test_packaged_model_default_targets_and_head_are_unchanged():
    """The default model must adapt and train exactly what it did before (CI baseline)."""
    from lorabench.models import ModelNotFoundError, packaged_model_path

    try:
        packaged_model_path()
    except ModelNotFoundError:
        pytest.skip("the packaged all-MiniLM-L6-v2 is not installed")
    model, _ = load_model_and_tokenizer(None, num_labels=2)
    assert new_parameter_names(model) == ("classifier.weight", "classifier.bias")
    assert head_parameter_names(model) == ["classifier.weight", "classifier.bias"]
    adapter = attach(model, "lora")
    assert adapter.target_names == tuple(
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")
    )


@pytest.mark.parametrize("family", sorted(ALL_FAMILIES))
def test_presets_select_attention_and_all_linear_never_the_head(family):
    model = build_model(family)
    head_modules = {n.rsplit(".", 1)[0] for n in head_parameter_names(model)}
    auto = set(resolve_targets(model, "auto").names)
    attention = resolve_targets(model, ATTENTION).names
    everything = resolve_targets(model, ALL_LINEAR).names
    assert auto < set(attention) < set(everything)
    assert not set(everything) & head_modules
    assert set(everything) == set(linear_layer_names(model))
    assert all("attn" in n.lower() or "attention" in n.lower() for n in attention)
    # Both presets attach and train like any pattern list.
    adapter = attach(model, "lora", r=2, target_modules=ALL_LINEAR)
    assert adapter.target_names == everything
    assert adapter.config.to_dict()["target_modules"] == ALL_LINEAR


def test_attention_preset_covers_every_projection():
    names = {n.rsplit(".", 1)[-1] for n in resolve_targets(build_model("llama"), ATTENTION).names}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj"}
    names = {n.rsplit(".", 1)[-1] for n in resolve_targets(build_model("bart"), ATTENTION).names}
    assert names == {"q_proj", "k_proj", "v_proj", "out_proj"}  # self- and cross-attention
    bart = resolve_targets(build_model("bart"), ATTENTION).names
    assert any(".encoder_attn." in n for n in bart)


def test_explicit_patterns_work_as_before():
    model = build_model("bert")
    adapter = attach(model, "lora", r=2, target_modules=["re:.*layer\\.0\\..*(query|value)"])
    assert adapter.target_names == (
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.self.value",
    )
    assert adapter.target_patterns == ("re:.*layer\\.0\\..*(query|value)",)
    adapter = attach(build_model("bert"), "lora", r=2, target_modules="*.attention.self.key")
    assert len(adapter.target_names) == 2
    with pytest.raises(ConfigError, match="matches no module"):
        attach(build_model("llama"), "lora", target_modules=["query", "value"])


class Mystery(nn.Module):
    """A model of a type the table does not know, with a head."""

    base_model_prefix = "body"

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="mystery", initializer_range=0.02)
        self.body = nn.ModuleDict(
            {"attn": nn.ModuleDict({"wq": nn.Linear(8, 8), "wv": nn.Linear(8, 8)})}
        )
        self.body["mlp"] = nn.Linear(8, 8)
        self.cls_head = nn.Linear(8, 2)


def test_unknown_model_type_lists_linear_layers_and_the_flag():
    with pytest.raises(ConfigError) as info:
        attach(Mystery(), "lora")
    message = str(info.value)
    assert "'mystery'" in message
    assert "--variant-config '*.target_modules=[wq,wv]'" in message
    for leaf in ("wq", "wv", "mlp"):
        assert leaf in message
    assert "cls_head" not in message  # never the head
    assert "all-linear" in message and "attention" in message
    # The presets work on it.
    assert attach(Mystery(), "lora", target_modules=ATTENTION).target_names == (
        "body.attn.wq",
        "body.attn.wv",
    )
    assert attach(Mystery(), "lora", target_modules=ALL_LINEAR).target_names == (
        "body.attn.wq",
        "body.attn.wv",
        "body.mlp",
    )


def test_unknown_model_type_suggests_a_known_pair_when_it_has_one():
    model = build_model("llama")
    model.config.model_type = "llama-fork"
    with pytest.raises(ConfigError, match=r"target_modules=\[q_proj,v_proj\]'"):
        attach(model, "lora")


# -- the task head --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    return {f: str(save_tiny_model(f, root / f, WORDS)) for f in ALL_FAMILIES}


EXPECTED_HEAD = {
    "bert": ["classifier.weight", "classifier.bias"],
    "roberta": [
        "classifier.dense.weight", "classifier.dense.bias",
        "classifier.out_proj.weight", "classifier.out_proj.bias",
    ],
    "gpt2": ["score.weight"],
    "llama": ["score.weight"],
    "distilbert": [
        "pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias",
    ],
    "deberta-v2": [
        "pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias",
    ],
    "bart": [
        "classification_head.dense.weight", "classification_head.dense.bias",
        "classification_head.out_proj.weight", "classification_head.out_proj.bias",
    ],
    "gpt_neox": ["score.weight"],
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(ALL_FAMILIES))
def test_head_is_what_loading_initialises(family, saved):
    model, _ = load_model_and_tokenizer(saved[family], num_labels=2)
    assert list(new_parameter_names(model)) == EXPECTED_HEAD[family]
    assert head_parameter_names(model) == EXPECTED_HEAD[family]
    import copy

    assert head_parameter_names(copy.deepcopy(model)) == EXPECTED_HEAD[family]  # copies keep it


def test_head_inside_the_backbone_counts_and_mismatched_sizes_too(saved, tmp_path):
    # A checkpoint without its pooler: the BERT pooler is new, so it is head (inside ``bert``).
    model, _ = load_model_and_tokenizer(saved["bert"], num_labels=2)
    state = {k: v for k, v in model.state_dict().items() if ".pooler." not in k}
    model.save_pretrained(tmp_path / "no-pooler", state_dict=state)
    for src in Path(saved["bert"]).glob("*"):
        if "token" in src.name or src.name == "vocab.txt":
            shutil.copy(src, tmp_path / "no-pooler" / src.name)
    again, _ = load_model_and_tokenizer(str(tmp_path / "no-pooler"), num_labels=2)
    assert head_parameter_names(again) == [
        "bert.pooler.dense.weight", "bert.pooler.dense.bias",
        "classifier.weight", "classifier.bias",
    ]  # fmt: skip
    # A checkpoint with a head of another size: re-drawn (mismatched), and still the head.
    model.save_pretrained(tmp_path / "two-labels")
    three, _ = load_model_and_tokenizer(str(tmp_path / "two-labels"), num_labels=3)
    assert set(new_parameter_names(three)) == {"classifier.weight", "classifier.bias"}
    assert head_parameter_names(three) == ["classifier.weight", "classifier.bias"]


def test_model_not_loaded_through_lorabench_falls_back_to_the_structural_head():
    model = build_model("distilbert")
    assert new_parameter_names(model) is None
    assert head_parameter_names(model) == EXPECTED_HEAD["distilbert"]
    assert head_parameter_names(build_model("deberta-v2")) == EXPECTED_HEAD["deberta-v2"]


def old_reset_head(model: nn.Module, seed: int) -> None:
    """The previous release's reset_head (linear layers of the top-level head modules)."""
    from lorabench.models import head_module_names

    std = float(model.config.initializer_range)
    generator = torch.Generator().manual_seed(seed)
    for name in head_module_names(model):
        for module in getattr(model, name).modules():
            if isinstance(module, nn.Linear):
                with torch.no_grad():
                    module.weight.copy_(
                        (torch.randn(module.weight.shape, generator=generator) * std).to(
                            module.weight
                        )
                    )
                    if module.bias is not None:
                        module.bias.zero_()


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_reset_head_draws_what_it_drew_before(family):
    new, old = build_model(family), build_model(family)
    reset_head(new, 7)
    old_reset_head(old, 7)
    for (name, a), (_, b) in zip(new.named_parameters(), old.named_parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("family", sorted(ALL_FAMILIES))
def test_reset_head_redraws_every_head_parameter_from_the_seed(family, saved):
    model, _ = load_model_and_tokenizer(saved[family], num_labels=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reset_head(model, 3)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    head = set(head_parameter_names(model))
    for name in before:
        if name not in head:
            assert torch.equal(before[name], after[name]), name  # the backbone is untouched
    for name in head:
        if after[name].dim() >= 2:
            assert not torch.equal(before[name], after[name]), name
        else:
            assert torch.count_nonzero(after[name]) == 0, name  # biases: zero
    reset_head(model, 3)
    assert all(torch.equal(after[n], p) for n, p in model.named_parameters())


def test_reset_head_sets_norms_to_one_and_zero():
    model = build_model("bert")
    extra = ("bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias")
    setattr(model, NEW_PARAMETERS_ATTR, extra)
    with torch.no_grad():
        for name in extra:
            model.get_parameter(name).uniform_(2, 3)
    reset_head(model, 0)
    assert torch.all(model.get_parameter(extra[0]) == 1)
    assert torch.all(model.get_parameter(extra[1]) == 0)


@pytest.mark.parametrize("family", ["distilbert", "bart"])
def test_adapter_load_restores_a_saved_head(family, saved, tmp_path):
    from safetensors.torch import save_file

    from lorabench.variants.adapter import HEAD_FILE

    model, tok = load_model_and_tokenizer(saved[family], num_labels=2)
    reset_head(model, 1)
    adapter = attach(model, "lora", r=2)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.normal_()
    adapter.save(tmp_path)
    head = {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if n in head_parameter_names(model)
    }
    save_file(head, str(tmp_path / HEAD_FILE))
    batch = tok(["good cat", "the dog sky"], padding=True, return_tensors="pt")
    expected = model(**batch).logits
    fresh, _ = load_model_and_tokenizer(saved[family], num_labels=2)
    reset_head(fresh, 2)  # another head: loading must replace it
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(**batch).logits, expected, rtol=0, atol=0)
    # A head of another size is refused, naming the tensor.
    other, _ = load_model_and_tokenizer(saved[family], num_labels=3)
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter(other, tmp_path)
