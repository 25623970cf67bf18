"""Device, precision and gradient accumulation: what a run computes in, where, and per step.

bf16 (and, where torch's CPU autocast has it, fp16) trains on the CPU with the adapter, the head
and AdamW's state in float32; precision and grad_accum join a run's identity only away from their
defaults (every id stored before them is unchanged); an unavailable device is refused before any
work; N micro-batches of b give the update one batch of N x b gives; the CUDA accounting paths
(synchronised timers, peak allocated memory) are exercised with torch.cuda monkeypatched.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
import pytest
import torch

import lorabench.harness.trainer as trainer_module
from lorabench.harness.batches import BatchPlan
from lorabench.harness.config import BenchmarkConfigError, Budget, RunConfig, TrainConfig
from lorabench.harness.meter import (
    CUDA_MEMORY_KIND,
    BudgetBelowOneBatch,
    PeakMemory,
    Stopwatch,
    plan_steps,
)
from lorabench.harness.prepared import (
    DeviceUnavailable,
    check_precision,
    prepare_run,
    resolve_device,
)
from lorabench.harness.runner import RunCache, execute_run
from lorabench.harness.suite import SuiteConfig, SuiteConfigError
from lorabench.harness.trainer import Trainer
from lorabench.results.labels import LATER_TRAIN_DEFAULTS, row_labels
from lorabench.results.records import RunRecord
from lorabench.variants import VARIANTS
from lorabench.variants.lora import LoRA

pytestmark = pytest.mark.usefixtures("single_thread")

# Computed with the code before precision and grad_accum existed (commit 974dc86): the ids of
# every stored fp32, grad_accum-1 run must stay what they were.
DEFAULT_IDS = ("9b100ad3463b7e55", "886fe1fc3da995b9", "9b23afbd2786f1ba")
VARIED_IDS = ("79287b4a78221797", "371d8dac49566ced", "23ba4984ddb76dd2")


def varied_config(**train) -> RunConfig:
    return RunConfig(
        "lora",
        "rte",
        seed=3,
        data_fingerprint="a" * 16,
        model_fingerprint="m",
        train=TrainConfig(batch_size=8, learning_rate=1e-3, **train),
        budget=Budget("tokens", 5000),
    )


def ids(cfg: RunConfig) -> tuple[str, str, str]:
    return cfg.run_id, cfg.experiment_id, cfg.settings_id


# -- identity ---------------------------------------------------------------------------------
def test_existing_run_ids_are_unchanged():
    assert ids(RunConfig("lora", "rte")) == DEFAULT_IDS
    assert ids(varied_config()) == VARIED_IDS
    # Restating the new defaults keeps them too.
    restated = RunConfig("lora", "rte", train=TrainConfig(precision="fp32", grad_accum=1))
    assert ids(restated) == DEFAULT_IDS
    assert ids(varied_config(precision="fp32", grad_accum=1)) == VARIED_IDS


def test_precision_and_grad_accum_are_identity_away_from_their_defaults():
    runs = [
        varied_config(precision="bf16"),
        varied_config(precision="fp16"),
        varied_config(grad_accum=2),
        varied_config(precision="bf16", grad_accum=2),
    ]
    every = {cfg.run_id for cfg in runs} | {VARIED_IDS[0]}
    assert len(every) == len(runs) + 1
    # The device is where a run computes, not what: it is no field of the run at all.
    assert "device" not in RunConfig("lora", "rte").settings()


def test_the_label_defaults_are_the_train_defaults():
    defaults = TrainConfig()
    assert {k: getattr(defaults, k) for k in LATER_TRAIN_DEFAULTS} == LATER_TRAIN_DEFAULTS


@pytest.mark.parametrize(
    ("setting", "value", "fragment"),
    [
        ("precision", "fp8", "train.precision='fp8' is unknown; use one of fp32, bf16, fp16"),
        ("grad_accum", 0, "train.grad_accum=0 must be a positive integer"),
        ("grad_accum", 1.5, "train.grad_accum=1.5 must be a positive integer"),
    ],
)
def test_bad_precision_or_grad_accum_is_refused(setting, value, fragment):
    with pytest.raises(BenchmarkConfigError, match=fragment.replace("(", r"\(")):
        TrainConfig.from_dict({setting: value})


# -- devices ----------------------------------------------------------------------------------
def test_unavailable_devices_are_refused_naming_the_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(
            DeviceUnavailable, match=r"not available on this machine; available: cpu"
        ):
            resolve_device(name)
    with pytest.raises(BenchmarkConfigError, match=r"device 'gpu' is not a device name; use cpu"):
        resolve_device("gpu")
    # One GPU: cuda and cuda:0 are it, cuda:1 is past the last.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(DeviceUnavailable, match=r"'cuda:1' .* available: cpu, cuda:0"):
        resolve_device("cuda:1")


def test_suite_device_key_is_checked_as_a_name_and_kept_out_of_identity():
    base = {"variants": ["lora"], "tasks": ["rte"]}
    suite = SuiteConfig.from_dict({**base, "device": "cuda:1"})
    assert suite.device == "cuda:1" and SuiteConfig.from_dict(suite.to_dict()).device == "cuda:1"
    plain = SuiteConfig.from_dict(base)
    assert "device" not in plain.to_dict()
    assert [c.run_id for c in suite.run_configs()] == [c.run_id for c in plain.run_configs()]
    with pytest.raises(SuiteConfigError, match=r"suite: device 'tpu' is not a device name"):
        SuiteConfig.from_dict({**base, "device": "tpu"})


def test_run_with_an_unavailable_device_stops_before_any_work(
    cli_main, capsys, tmp_path, monkeypatch, tiny_model_dir, toy_task
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    args = ["run", "--variants", "lora", "--tasks", toy_task, "--model", str(tiny_model_dir)]
    code = cli_main([*args, "--budget", "steps=1", "--out", str(out), "--device", "cuda:0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "device 'cuda:0' is not available on this machine; available: cpu" in err
    assert not out.exists()  # nothing created, nothing trained


def test_precision_a_device_cannot_run_is_refused(monkeypatch):
    check_precision("bf16", torch.device("cpu"))  # CPU autocast has bf16 in every torch we run
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: False, raising=False)
    with pytest.raises(BenchmarkConfigError, match=r"train.precision='fp16' cannot run on device"):
        check_precision("fp16", torch.device("cpu"))
    check_precision("fp32", torch.device("cpu"))  # float32 needs nothing


# -- precision on the CPU ---------------------------------------------------------------------
def tiny_cfg(model_dir, task, **train) -> RunConfig:
    settings = {"batch_size": 8, "learning_rate": 5e-3, "max_train_examples": 48, **train}
    return RunConfig(
        "lora",
        task,
        variant_config={"r": 4, "dropout": 0.0},
        model=str(model_dir),
        budget=Budget("steps", 3),
        train=TrainConfig(**settings),
    )


@pytest.fixture(scope="module")
def cache():
    return RunCache()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_trains_with_float32_parameters_and_state(
    precision, tiny_model_dir, toy_task, cache, monkeypatch
):
    try:
        check_precision(precision, torch.device("cpu"))
    except BenchmarkConfigError as exc:  # an older torch: refused clearly (tested above)
        pytest.skip(str(exc))
    cfg = cache.resolve(tiny_cfg(tiny_model_dir, toy_task, precision=precision))
    prepared = prepare_run(cfg, cache, device="cpu")
    optimizers: list[torch.optim.Optimizer] = []
    real_build = trainer_module.build_optimizer

    def capture(*args, **kwargs):
        optimizers.append(real_build(*args, **kwargs))
        return optimizers[-1]

    monkeypatch.setattr(trainer_module, "build_optimizer", capture)
    computed: set[torch.dtype] = set()
    frozen = next(
        m
        for m in prepared.model.modules()
        if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad
    )
    frozen.register_forward_hook(lambda _m, _i, out: computed.add(out.dtype))
    trainer = Trainer(prepared, progress=False)
    result = trainer.fit()
    assert result.status == "finished", result.error
    # The frozen layers computed in the half type: autocast was on.
    assert computed == {torch.bfloat16 if precision == "bf16" else torch.float16}
    assert all(p.dtype == torch.float32 for p in trainer.params)
    state = optimizers[-1].state
    assert state and all(
        v.dtype == torch.float32
        for s in state.values()
        for k, v in s.items()
        if k in ("exp_avg", "exp_avg_sq")
    )
    losses = [p.loss for p in result.curve if p.loss is not None]
    assert losses and all(math.isfinite(v) for v in losses)
    assert result.score is not None and math.isfinite(result.score)
    assert result.spend.steps == 3 and result.spend.skipped_steps <= 3


def test_bf16_run_records_its_precision_and_is_labelled(tiny_model_dir, toy_task, cache):
    fp32 = execute_run(tiny_cfg(tiny_model_dir, toy_task), progress=False, cache=cache)
    bf16 = execute_run(
        tiny_cfg(tiny_model_dir, toy_task, precision="bf16"), progress=False, cache=cache
    )
    assert fp32.status == bf16.status == "finished", bf16.error
    assert fp32.run_id != bf16.run_id and fp32.config["device"] == "cpu"
    assert bf16.config["train"]["precision"] == "bf16"
    assert [p.loss for p in fp32.curve] != [p.loss for p in bf16.curve]  # computed differently
    plain, half = (label.config for label in row_labels([fp32, bf16]))
    assert half == plain + " bf16" and "fp32" not in plain and "(" not in half


def record(train: dict, seed: int = 0) -> RunRecord:
    return RunRecord(
        run_id=f"r{seed}{len(train)}",
        status="finished",
        variant="lora",
        task="rte",
        model="m",
        seed=seed,
        config={"variant_config": {"r": 8}, "train": train},
        rank=8,
        budget={"kind": "steps", "limit": 10},
    )


def test_records_before_precision_share_a_row_with_new_fp32_records():
    old = record({"learning_rate": 5e-4})  # written before precision and grad_accum existed
    new = record({"learning_rate": 5e-4, "precision": "fp32", "grad_accum": 1}, seed=1)
    accum = record({"learning_rate": 5e-4, "precision": "fp32", "grad_accum": 2}, seed=2)
    labels = [label.config for label in row_labels([old, new, accum])]
    assert labels[0] == labels[1] != labels[2] and "grad_accum=2" in labels[2]


# -- gradient accumulation --------------------------------------------------------------------
class Counting(LoRA):
    """LoRA that counts its hooks per optimiser step."""

    name = "counting"
    calls: ClassVar[list[tuple[str, int]]] = []

    def before_step(self, step: int) -> None:
        self.calls.append(("before_step", step))
        self._step = step

    def regularization_loss(self):
        self.calls.append(("regularization_loss", self._step))
        return None

    def after_step(self, step: int, **kwargs) -> None:
        self.calls.append(("after_step", step))


class PairedPlan(BatchPlan):
    """Batches of 2b: step s is micro-batches 2s and 2s+1 of ``micro`` (a plan of b) together,
    so one batch of 2b and two accumulated micro-batches of b see the same examples."""

    def __init__(self, micro: BatchPlan) -> None:
        super().__init__(micro.split, micro.batch_size * 2, seed=micro.seed)
        self.micro = micro

    def indices(self, step: int) -> np.ndarray:
        return np.concatenate([self.micro.indices(2 * step), self.micro.indices(2 * step + 1)])


def float64_trainer(cfg: RunConfig, cache: RunCache) -> Trainer:
    prepared = prepare_run(cache.resolve(cfg), cache, device="cpu")
    # float64 and no dropout: the two ways of computing one update agree to rounding.
    prepared.model.double().eval()
    return Trainer(prepared, progress=False)


def test_two_micro_batches_update_as_one_batch_of_twice_the_size(tiny_model_dir, toy_task, cache):
    accumulated = float64_trainer(
        tiny_cfg(tiny_model_dir, toy_task, batch_size=4, grad_accum=2, warmup_ratio=0.0), cache
    )
    whole = float64_trainer(tiny_cfg(tiny_model_dir, toy_task, warmup_ratio=0.0), cache)
    whole.plan = PairedPlan(accumulated.plan)
    for trainer in (accumulated, whole):
        trainer._train(2)
    assert accumulated.spend.tokens == whole.spend.tokens
    moved = False
    for a, b, start in zip(accumulated.params, whole.params, float64_trainer(
        tiny_cfg(tiny_model_dir, toy_task), cache
    ).params):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        moved = moved or not torch.allclose(a, start.double())
    assert moved  # the parameters did change: the comparison is not of two untouched copies


def test_grad_accum_counts_steps_tokens_and_hooks_exactly(tiny_model_dir, toy_task, cache):
    VARIANTS.add(Counting, name="counting", overwrite=True)
    Counting.calls.clear()
    try:
        cfg = dataclasses.replace(
            tiny_cfg(tiny_model_dir, toy_task, batch_size=4, grad_accum=3), variant="counting"
        )
        prepared = prepare_run(cache.resolve(cfg), cache, device="cpu")
        trainer = Trainer(prepared, progress=False)
        result = trainer.fit()
    finally:
        VARIANTS.unregister("counting")
    assert result.status == "finished", result.error
    spend = result.spend
    assert spend.steps == spend.planned_steps == 3
    plan = trainer.plan  # micro-batches of 4: three per optimiser step
    assert spend.tokens == sum(plan.tokens(m) for m in range(9))
    assert spend.padded_tokens == sum(plan.padded_tokens(m) for m in range(9))
    hooks = [c for c in Counting.calls if c[0] != "regularization_loss"]
    assert hooks == [(h, s) for s in range(3) for h in ("before_step", "after_step")]
    regularised = [s for name, s in Counting.calls if name == "regularization_loss"]
    assert regularised == [0, 1, 2]  # once per optimiser step, not per micro-batch


def test_token_budget_plans_whole_optimiser_steps(tiny_model_dir, toy_task, cache):
    cfg = cache.resolve(tiny_cfg(tiny_model_dir, toy_task, batch_size=4))
    micro = BatchPlan(cache.train_split(cfg), 4, seed=0)
    cumulative = np.cumsum([micro.tokens(m) for m in range(40)])
    limit = int(cumulative[10]) + 1  # 11 micro-batches fit, the 12th does not
    budget = Budget("tokens", limit)
    assert plan_steps(budget, micro, flops_per_padded_token=1.0) == 11
    assert plan_steps(budget, micro, flops_per_padded_token=1.0, grad_accum=2) == 5
    assert plan_steps(budget, micro, flops_per_padded_token=1.0, grad_accum=4) == 2
    # Between one micro-batch and one optimiser step: refused, naming the least valid limit.
    small = Budget("tokens", int(cumulative[1]))
    with pytest.raises(BudgetBelowOneBatch, match=r"smaller than one optimiser step") as caught:
        plan_steps(small, micro, flops_per_padded_token=1.0, grad_accum=3)
    assert caught.value.smallest == int(cumulative[2])


# -- GPU accounting without a GPU -------------------------------------------------------------
def test_stopwatch_synchronises_cuda_before_reading_the_clock(monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    import lorabench.harness.meter as meter

    clock = iter([10.0, 12.5])

    def perf_counter() -> float:
        events.append("clock")
        return next(clock)

    monkeypatch.setattr(meter.time, "perf_counter", perf_counter)
    watch = Stopwatch(torch.device("cuda"))
    with watch:
        events.append("work")
    assert events == ["sync", "clock", "work", "sync", "clock"]
    assert watch.last == watch.seconds == 2.5


def test_peak_memory_on_cuda_is_peak_allocated_above_the_start(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    monkeypatch.setattr(
        torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset")
    )
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 4500)
    with PeakMemory(torch.device("cuda:0")) as memory:
        pass
    assert calls == ["sync", "reset"]  # the peak is reset after pending work finished
    assert memory.kind == CUDA_MEMORY_KIND
    assert (memory.baseline, memory.absolute_peak, memory.peak) == (1000, 4500, 3500)


def test_fp16_is_refused_for_a_variant_that_reads_gradients_inside_backward():
    from lorabench.harness.config import BenchmarkConfigError
    from lorabench.harness.prepared import check_variant_precision

    with pytest.raises(BenchmarkConfigError, match=r"increlora.*fp16.*bf16 or fp32"):
        check_variant_precision("increlora", "fp16")
    check_variant_precision("increlora", "bf16")  # no scaler: fine
    check_variant_precision("lora", "fp16")
