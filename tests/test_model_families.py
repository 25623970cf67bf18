"""Eight model families end to end: default targets, every variant trains, the head is kept.

Each family's tiny model is saved as a pretrained checkpoint is (the backbone only, with a
word-level tokenizer: ``lorabench.testing.models.save_tiny_model``) and run through
``lorabench run`` (and ``execute_run``) on the in-memory ``toy-sentiment`` task with no
``target_modules`` given, so the adapted modules come from the ``"auto"`` table and the head
from what loading initialised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import NEUTRAL, POSITIVE
from safetensors.torch import load_file

from lorabench.harness.config import Budget, RunConfig, TrainConfig
from lorabench.harness.runner import execute_run
from lorabench.models import (
    head_parameter_names,
    head_parameters,
    load_model_and_tokenizer,
    reset_head,
)
from lorabench.results.store import ResultStore
from lorabench.testing.models import ALL_FAMILIES, save_tiny_model
from lorabench.variants import load_adapter
from lorabench.variants.adapter import CONFIG_FILE, HEAD_FILE

pytestmark = pytest.mark.usefixtures("single_thread")

VARIANTS = ("lora", "dora", "adalora", "vera", "dylora", "sora", "increlora")
TESTS = Path(__file__).parent
# family -> (what "auto" adapts, last component; the head's parameters)
EXPECTED = {
    "bert": (("query", "value"), ["classifier.weight", "classifier.bias"]),
    "roberta": (("query", "value"), [
        "classifier.dense.weight", "classifier.dense.bias",
        "classifier.out_proj.weight", "classifier.out_proj.bias",
    ]),
    "gpt2": (("c_attn",), ["score.weight"]),
    "llama": (("q_proj", "v_proj"), ["score.weight"]),
    "distilbert": (("q_lin", "v_lin"), [
        "pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias",
    ]),
    "deberta-v2": (("query_proj", "value_proj"), [
        "pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias",
    ]),
    "bart": (("q_proj", "v_proj"), [
        "classification_head.dense.weight", "classification_head.dense.bias",
        "classification_head.out_proj.weight", "classification_head.out_proj.bias",
    ]),
    "gpt_neox": (("query_key_value",), ["score.weight"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: save_tiny_model(f, root / f, POSITIVE + NEUTRAL) for f in ALL_FAMILIES}


def run_cfg(model_dir: Path, task: str, variant: str, seed: int = 0) -> RunConfig:
    """A few steps with a head learning rate high enough to move the head visibly."""
    return RunConfig(
        variant,
        task,
        seed=seed,
        model=str(model_dir),
        budget=Budget.parse("steps=4"),
        train=TrainConfig(
            batch_size=8, learning_rate=5e-3, eval_every=2, max_train_examples=32,
            max_eval_examples=16, max_length=24,
        ),
    )  # fmt: skip


def test_expected_covers_every_family():
    assert set(EXPECTED) == set(ALL_FAMILIES) and len(ALL_FAMILIES) == 8


@pytest.mark.parametrize("family", sorted(ALL_FAMILIES))
def test_every_variant_trains_on_the_family_with_default_targets(
    family, family_dirs, toy_task, tmp_path, cli_main, capsys
):
    """``lorabench run`` of every built-in variant on the family's folder, no target modules
    given: each finishes, adapts what "auto" picks, and saves the head beside its adapter."""
    leaves, head = EXPECTED[family]
    model, _ = load_model_and_tokenizer(str(family_dirs[family]), num_labels=2)
    head_size = sum(p.numel() for n, p in model.named_parameters() if n in set(head))
    assert head_parameter_names(model) == head
    out = tmp_path / "out"
    argv = ["run", "--variants", ",".join(VARIANTS), "--tasks", toy_task]
    argv += ["--model", str(family_dirs[family]), "--budget", "steps=8", "--out", str(out)]
    argv += ["--lr", "5e-3", "--batch-size", "8", "--eval-every", "2", "--max-length", "24"]
    argv += ["--max-train-examples", "32", "--max-eval-examples", "16", "--quiet"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    records = {r.variant: r for r in ResultStore(out / "results.db").records(status=None)}
    assert sorted(records) == sorted(VARIANTS)
    for variant, record in records.items():
        assert record.status == "finished", (variant, record.error)
        assert record.config["resolved_variant_config"]["target_modules"] == "auto"
        assert {name.rsplit(".", 1)[-1] for name in record.ranks} == set(leaves), variant
        assert record.trainable_params == record.adapter_params + head_size, variant
        assert 0.0 <= record.metrics["accuracy"] <= 1.0
        saved = load_file(str(out / "adapters" / record.run_id / HEAD_FILE))
        assert sorted(saved) == sorted(head), variant


@pytest.mark.parametrize("family", ["deberta-v2", "bart", "gpt_neox"])
def test_the_trained_head_is_saved_and_restored_with_the_adapter(
    family, family_dirs, toy_task, tmp_path
):
    record = execute_run(
        run_cfg(family_dirs[family], toy_task, "lora"), progress=False, adapter_root=tmp_path
    )
    assert record.status == "finished", record.error
    folder = tmp_path / record.run_id
    saved = load_file(str(folder / HEAD_FILE))
    untrained, _ = load_model_and_tokenizer(str(family_dirs[family]), num_labels=2)
    reset_head(untrained, 0)  # the head the run started from (seed 0)
    start = dict(untrained.named_parameters())
    assert any(not torch.equal(saved[n], start[n].detach()) for n in saved)  # it trained
    fresh, _ = load_model_and_tokenizer(str(family_dirs[family]), num_labels=2)
    reset_head(fresh, 5)  # another head, which loading must replace
    adapter = load_adapter(fresh, folder)
    params = dict(fresh.named_parameters())
    for name, tensor in saved.items():
        assert torch.equal(params[name].detach(), tensor), name
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert sorted(adapter.target_names) == sorted(meta["layers"])  # the file's keys are sorted
    assert tuple(meta["target_patterns"]) == adapter.target_patterns == EXPECTED[family][0]


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path.insert(0, {tests!r})
    from conftest import toy_rows
    from lorabench.harness.config import Budget, RunConfig, TrainConfig
    from lorabench.harness.runner import RunCache, execute_run
    from lorabench.tasks import TASKS, TaskData, TaskSpec, register_source

    torch.set_num_threads(1)

    @register_source("toy-memory")
    def load(spec, request):
        train, validation = toy_rows(200, 1).head(32), toy_rows(64, 2).head(16)
        return TaskData(spec, {{"train": train, "validation": validation}}, source="toy-memory")

    TASKS.add(TaskSpec(name="toy-sentiment", version="1", source="toy-memory",
                       text_columns=("sentence",), label_names=("negative", "positive")),
              overwrite=True)
    out = {{}}
    for family, folder in {dirs!r}.items():
        for variant in ("adalora", "dylora"):
            cfg = RunConfig(variant, "toy-sentiment", seed=3, model=folder,
                            budget=Budget.parse("steps=4"),
                            train=TrainConfig(batch_size=8, learning_rate=5e-3, eval_every=2,
                                              max_train_examples=32, max_eval_examples=16,
                                              max_length=24))
            record = execute_run(cfg, progress=False, cache=RunCache())
            assert record.status == "finished", record.error
            out[family + "/" + variant] = {{
                "run_id": record.run_id, "metrics": record.metrics,
                "curve": [[p.step, p.loss, p.metrics] for p in record.curve],  # not seconds
                "ranks": record.ranks, "rank_scores": record.rank_scores,
            }}
    print("RESULT" + json.dumps(out, sort_keys=True, default=repr))
    """
)


def test_same_run_in_two_fresh_processes_gives_identical_numbers(family_dirs):
    dirs = {f: str(family_dirs[f]) for f in ("deberta-v2", "bart")}
    script = SCRIPT.format(tests=str(TESTS), dirs=dirs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORABENCH_DEVICE": "cpu"}
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
        outputs.append(json.loads(line[len("RESULT") :]))
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 4 and all(r["metrics"] for r in outputs[0].values())


HEAD_SCRIPT = textwrap.dedent(
    """
    import hashlib, json
    from lorabench.models import head_parameters, load_model_and_tokenizer, reset_head

    out = {{}}
    for family, folder in {dirs!r}.items():
        model, _ = load_model_and_tokenizer(folder, num_labels=3)
        reset_head(model, 11)
        digest = hashlib.sha256()
        for p in head_parameters(model):
            digest.update(p.detach().contiguous().numpy().tobytes())
        out[family] = digest.hexdigest()
    print("RESULT" + json.dumps(out))
    """
)


def test_reset_head_gives_the_same_head_in_a_fresh_process_for_every_family(family_dirs):
    import hashlib

    dirs = {f: str(d) for f, d in family_dirs.items()}
    done = subprocess.run(
        [sys.executable, "-c", HEAD_SCRIPT.format(dirs=dirs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    theirs = json.loads(line[len("RESULT") :])
    for family, folder in dirs.items():
        model, _ = load_model_and_tokenizer(folder, num_labels=3)
        reset_head(model, 11)
        digest = hashlib.sha256()
        for p in head_parameters(model):
            digest.update(p.detach().contiguous().numpy().tobytes())
        assert theirs[family] == digest.hexdigest(), family
