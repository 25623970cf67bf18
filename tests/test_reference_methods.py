"""The reference methods ``full``, ``bitfit`` and ``head`` (issue 11): what each trains and counts,
one training step moving exactly that, save/load, what does not apply refused plainly (merge, a
rank, config fields, BitFit without biases, ``head`` without a trainable head), and an end-to-end
``lorabench run`` whose records and report rows read right. The contract suite runs on them in
tests/test_contract.py."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from lorabench.harness.config import RunConfig, TrainConfig
from lorabench.harness.memory import estimate_training_memory
from lorabench.harness.prepared import RunCache
from lorabench.harness.trainer import build_optimizer
from lorabench.models import head_parameter_names, head_parameters
from lorabench.results.store import ResultStore
from lorabench.testing import build_model, logits, make_batch
from lorabench.variants import (
    VARIANTS,
    ConfigError,
    NotMergeableError,
    PeftFormatError,
    ReferenceMethod,
    ReferenceMethodNotApplicable,
    attach,
    export_peft,
    load_adapter,
)

REFERENCE = ("full", "bitfit", "head")


def expected_names(variant: str, model: torch.nn.Module) -> set[str]:
    """What each method should train of the base model, the task head never among it."""
    head = set(head_parameter_names(model))
    names = [n for n, _ in model.named_parameters() if n not in head]
    if variant == "full":
        return set(names)
    if variant == "bitfit":
        return {n for n in names if n.endswith(".bias")}
    return set()


def trained_names(model: torch.nn.Module, adapter) -> set[str]:
    ids = {id(p) for p in adapter.trainable_parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


# -- what trains, and how much -------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("variant", REFERENCE)
def test_each_method_declares_exactly_its_parameters_and_counts_them(variant, family) -> None:
    model = build_model(family)
    adapter = attach(model, variant)
    expected = expected_names(variant, model)
    assert trained_names(model, adapter) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    params = dict(model.named_parameters())
    assert adapter.num_trainable_parameters() == sum(params[n].numel() for n in expected)
    if variant == "full":  # everything but the head, which the harness trains and counts once
        head = sum(p.numel() for p in head_parameters(model))
        total = sum(p.numel() for p in model.parameters())
        assert adapter.num_trainable_parameters() == total - head > 0
    if variant == "bitfit":  # LayerNorm biases too, as in the authors' scripts
        assert any("LayerNorm.bias" in n or ".ln_" in n for n in expected), sorted(expected)
    # No rank anywhere: no layer, no per-matrix rank, no evaluation rank, no config field.
    assert adapter.layers == {} and adapter.ranks() == {} and adapter.eval_ranks() == []
    assert adapter.config.to_dict() == {} and adapter.config.nominal_rank is None
    assert adapter.target_names == () and not adapter.merged


@pytest.mark.parametrize("variant", REFERENCE)
def test_one_training_step_changes_exactly_the_declared_parameters_and_the_head(variant) -> None:
    """As the harness trains: the adapter's parameters and the head in one AdamW."""
    model = build_model("bert")
    adapter = attach(model, variant)
    head = head_parameters(model)
    for p in head:
        p.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(
        adapter.trainable_parameters(), head, TrainConfig(learning_rate=1e-2)
    )
    model.train()
    adapter.on_train_begin(1)
    adapter.before_step(0)
    model(**make_batch()).loss.backward()
    optimizer.step()
    adapter.after_step(0, learning_rate=1e-2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == expected_names(variant, model) | set(head_parameter_names(model))


@pytest.mark.parametrize("variant", REFERENCE)
def test_save_and_load_with_the_head_give_the_same_logits(variant, tmp_path) -> None:
    model = build_model("bert")
    adapter = attach(model, variant)
    with torch.no_grad():  # as if trained: the declared parameters and the head move
        for i, p in enumerate([*adapter.trainable_parameters(), *head_parameters(model)]):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.1)
    expected = logits(model, make_batch())
    head = {n: p for n, p in model.named_parameters() if n in set(head_parameter_names(model))}
    adapter.to_saved(head=head).write(tmp_path / "saved")

    fresh = build_model("bert")
    assert not torch.equal(logits(fresh, make_batch()), expected)
    loaded = load_adapter(fresh, tmp_path / "saved")
    assert loaded.name == variant and isinstance(loaded.variant, ReferenceMethod)
    torch.testing.assert_close(logits(fresh, make_batch()), expected, rtol=0, atol=0)
    assert loaded.size_bytes() == adapter.size_bytes()
    assert trained_names(fresh, loaded) == expected_names(variant, fresh)


def test_a_save_of_another_model_is_refused_before_anything_is_copied(tmp_path) -> None:
    attach(build_model("bert"), "bitfit").save(tmp_path / "bert")
    gpt2 = build_model("gpt2")
    before = {n: p.detach().clone() for n, p in gpt2.named_parameters()}
    with pytest.raises(Exception, match=r"saved for another model.*Load it into the model"):
        load_adapter(gpt2, tmp_path / "bert")
    assert all(torch.equal(p, before[n]) for n, p in gpt2.named_parameters())
    assert not hasattr(gpt2, "lorabench_variant")
    assert not any(p.requires_grad is False for p in gpt2.parameters())  # flags put back


# -- what does not apply, refused plainly --------------------------------------------------------
@pytest.mark.parametrize("variant", REFERENCE)
def test_merge_and_unmerge_are_refused_saying_why(variant) -> None:
    adapter = attach(build_model("bert"), variant)
    name = VARIANTS.get(variant).display_name
    for action in (adapter.merge, adapter.unmerge):
        with pytest.raises(NotMergeableError) as info:
            action()
        message = str(info.value)
        assert f"cannot {action.__name__} {name} ('{variant}')" in message
        assert "trains the model's own parameters in place" in message
        assert "adapter.save" in message


def test_detach_keeps_the_trained_weights_and_restores_the_flags() -> None:
    model = build_model("bert")
    for p in model.get_input_embeddings().parameters():
        p.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    adapter = attach(model, "full")
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(0.5)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert adapter.detach() is model
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters())
    attach(model, "bitfit").detach()  # free to attach again


@pytest.mark.parametrize("variant", REFERENCE)
def test_a_config_field_is_refused_naming_it_and_the_fix(variant) -> None:
    with pytest.raises(ConfigError, match=r"no field\(s\) \['r'\].*no rank.*lora\.r=16"):
        attach(build_model("bert"), variant, r=8)


def test_bitfit_on_a_model_without_biases_is_refused_naming_the_model() -> None:
    model = build_model("llama")
    with pytest.raises(
        ReferenceMethodNotApplicable, match=r"LlamaForSequenceClassification has no bias"
    ):
        attach(model, "bitfit")
    assert all(p.requires_grad for p in model.parameters())  # left as it was
    assert not hasattr(model, "lorabench_variant")


def test_export_to_peft_is_refused_naming_the_variant(tmp_path) -> None:
    adapter = attach(build_model("bert"), "full")
    with pytest.raises(PeftFormatError, match=r"variant 'full' has no PEFT counterpart"):
        export_peft(adapter, tmp_path / "peft")


def test_the_memory_estimate_counts_what_trains() -> None:
    """Full fine-tuning pays AdamW state for every weight; the head alone keeps no backbone
    activations for a backward pass."""
    estimates = {}
    for variant in ("lora", *REFERENCE):
        model = build_model("bert")
        adapter = attach(model, variant, **({"r": 4} if variant == "lora" else {}))
        estimates[variant] = estimate_training_memory(model, adapter, batch_tokens=64)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # Every parameter (the head with the harness's train_head): gradient + two AdamW moments.
    assert estimates["full"].training_state == 3 * parameter_bytes
    assert estimates["head"].training_state < estimates["bitfit"].training_state
    assert estimates["bitfit"].training_state < estimates["full"].training_state
    assert estimates["head"].activations == 0 < estimates["lora"].activations


# -- the harness: recipes, ``head`` without a trainable head --------------------------------------
def test_recipes_are_set_against_loras_learning_rate() -> None:
    scales = {v: VARIANTS.get(v).recipe.learning_rate_scale for v in REFERENCE}
    assert scales == {"full": 0.04, "bitfit": 2.0, "head": 10.0}
    assert all(VARIANTS.get(v).recipe.source for v in REFERENCE)
    for variant in REFERENCE:  # the search space is the learning rate, in a sensible range
        space = VARIANTS.get(variant).search_space()
        assert set(space) == {"train.learning_rate"}
    assert VARIANTS.get("full").search_space()["train.learning_rate"]["high"] <= 1e-4


def test_head_without_a_trainable_head_is_refused_before_anything_runs(
    tiny_model_dir, toy_task
) -> None:
    cache = RunCache()
    cfg = RunConfig(variant="head", task=toy_task, model=str(tiny_model_dir))
    cache.resolve(cfg)  # trains the head: fine
    frozen = dataclasses.replace(cfg, train=TrainConfig(train_head=False))
    with pytest.raises(ConfigError, match=r"'head' trains the task head alone.*train_head: true"):
        cache.resolve(frozen)
    cache.resolve(dataclasses.replace(frozen, variant="full"))  # full trains without it
    planted = RunConfig(variant="head", task="planted-tiny")  # its head is part of the task
    with pytest.raises(ConfigError, match=r"task 'planted-tiny' keeps its head frozen"):
        cache.resolve(planted)


def test_list_variants_marks_the_reference_methods(capsys, cli_main) -> None:
    assert cli_main(["list", "variants"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    for variant in REFERENCE:
        assert "reference method:" in lines[variant]
    assert "reference method" not in lines["lora"]


# -- end to end: lorabench run, the records, the report ------------------------------------------
def test_lorabench_run_with_the_reference_methods_records_and_reports_them(
    tiny_model_dir, toy_task, tmp_path, capsys, cli_main, single_thread
) -> None:
    from lorabench.reports import generate_report
    from lorabench.reports.claims import MISSING, check_claim
    from lorabench.reports.frame import load_report_data, ordered_configs
    from lorabench.variants.claims import CLAIMS

    argv = [
        "run", "--variants", "lora,full,bitfit,head", "--variant-config", "lora.r=8",
        "--tasks", toy_task, "--model", str(tiny_model_dir), "--budget", "steps=3",
        "--lr", "5e-4", "--out", str(tmp_path), "--quiet", "--max-eval-examples", "16",
    ]  # fmt: skip
    assert cli_main(argv) == 0, capsys.readouterr().err
    store = ResultStore(tmp_path / "results.db")
    records = {r.variant: r for r in store.records(status=None)}
    assert set(records) == {"lora", *REFERENCE}
    assert all(r.status == "finished" for r in records.values()), [
        r.error for r in records.values()
    ]

    full, bitfit, head, lora = (records[v] for v in ("full", "bitfit", "head", "lora"))
    head_size = head.trainable_params
    assert head.adapter_params == 0 and head_size > 0
    # Full fine-tuning trains every parameter once: the head is not counted twice.
    assert full.trainable_params == full.total_params == full.adapter_params + head_size
    assert 0 < bitfit.adapter_params < lora.total_params // 10
    assert bitfit.trainable_params == bitfit.adapter_params + head_size
    for r in (full, bitfit, head):
        assert r.rank is None and r.ranks == {} and r.config["resolved_variant_config"] == {}
    # The paper recipes scaled the suite's learning rate (the head follows it when unset).
    rates = {v: records[v].config["train"]["learning_rate"] for v in records}
    assert rates == {"lora": 5e-4, "full": 2e-5, "bitfit": 1e-3, "head": 5e-3}
    # The trained adapter folder reloads what trained, head included.
    saved = tmp_path / "adapters" / full.run_id
    assert (saved / "head.safetensors").is_file()
    fresh = load_adapter(build_model_from(tiny_model_dir), saved)
    assert fresh.name == "full"

    data = load_report_data(tmp_path / "results.db")
    labels = ordered_configs(data.runs)
    reference_rows = ["Full fine-tuning", "BitFit", "Head only"]
    assert labels == ["LoRA r=8", *reference_rows]  # after the adapter variants
    assert not any(re.search(r"\br=", label) for label in labels[1:])
    # The whole report renders them as rows (figures included), full at its share of the model.
    report = generate_report(tmp_path / "results.db", tmp_path / "report")
    table = report.tables["md"].read_text(encoding="utf-8")
    for label in reference_rows:
        assert f"| {label} |" in table
    assert re.search(r"\| Full fine-tuning \| [^|]+ \| [\d.]+K \(9\d\.\d+%\) \|", table), table
    # The claims section pairs LoRA r=8 with the full record for "LoRA ~ full fine-tuning"
    # (one seed: a pair, but too few seeds to decide).
    check = check_claim(data, CLAIMS.get("lora-vs-full"))
    assert check.status != MISSING, check.verdict
    assert check.tests[["subject", "reference"]].values.tolist() == [
        ["LoRA r=8", "Full fine-tuning"]
    ]


def build_model_from(folder) -> torch.nn.Module:
    """The tiny checkpoint of ``folder`` as the runner loads it."""
    from lorabench.models import load_model_and_tokenizer

    return load_model_and_tokenizer(str(folder), num_labels=2, regression=False)[0]
