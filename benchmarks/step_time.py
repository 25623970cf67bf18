"""Time and peak memory of one training step: lorabench's variants against PEFT and the floor.

One step is forward, backward and the optimiser (AdamW over the adapter's parameters, with the
variant's per-step hooks and regulariser, as the harness runs it) on all-MiniLM-L6-v2, batch
32 x 64 tokens, query and value adapted. For each variant three configurations are timed:

* ours: ``lorabench.variants.attach(model, name, ...)``;
* PEFT: the same configuration in Hugging Face PEFT (LoRA r8, DoRA r8, VeRA r256, AdaLoRA
  init_r 12 -> target_r 8; DyLoRA has no PEFT equivalent, so PEFT LoRA at DyLoRA's r_max).
  SoRA and IncreLoRA have no PEFT implementation at all: only ours is timed, the PEFT columns
  read "–" and the verdict "no PEFT implementation";
* the floor: the frozen model with gradients flowing through every layer (the embedding output
  requires grad, so backward runs through all six layers as it does for any adapter); there is
  nothing to optimise, so its step is forward and backward.

Timing: every configuration is built once in this process and the steps are interleaved
(round-robin, the order rotated each repeat) so that load on a shared machine hits all of them
alike. Times are medians over repeats; a ratio is the median over repeats of the two times
taken in the same repeat (paired), which cancels load that drifts during the run. Absolute
times from different runs or machines are not comparable; the ratios are the result. Besides
ours/PEFT and ours/floor, every variant gets ours/LoRA: its step time over our LoRA's (r 8, the
same model, batch and targets; ``lora`` must be among ``--variants``), the comparison that
counts for the variants PEFT lacks.

The hooks run as the harness' trainer runs them: ``on_train_begin(total_steps)`` once, then per
step ``before_step(i)``, loss + ``regularization_loss()``, backward, ``optimizer.step()``,
``after_step(i, learning_rate=lr)``. ``total_steps`` is the steps this script takes plus a
margin for every variant except IncreLoRA, which is told ``INCRELORA_TOTAL_STEPS`` (10,000): its
schedule, sized to the run, then puts the first growth round after step 1,000, so every step
timed here is in the growth phase (importance hooks on every backward pass and an importance
update after every step, rank 1 of the cap 8 active) and none is a growth round; the script
stops if IncreLoRA's growth has ended (its hooks would then be off) during a timed step.

Peak memory, "step memory": the peak during one step minus what is held just before it (model,
adapter, optimiser state after warm-up), so it is activations kept for backward, gradients and
temporaries. On CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. On
CPU, torch has no allocator statistics and tracemalloc does not see its allocations, so each
configuration is measured in a fresh subprocess from the kernel's peak resident set size:
``/proc/self/clear_refs`` resets the high-water mark (VmHWM) to the current RSS before the step
and VmHWM is read after it. glibc's mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) in that
subprocess so every tensor above 128 KiB is its own mapping and is returned to the kernel when
freed; RSS then follows torch's live tensors instead of allocator caching. Where clear_refs is
unavailable (not Linux), a 1 ms psutil RSS sampler is the fallback. The median of three steps is
reported. RSS readings carry some hundred KiB of noise (small allocations on glibc's heap), so on
CPU a memory difference under ``CPU_MEMORY_SLACK`` (1 MiB) does not count as a miss; CUDA readings
are exact and get no slack.

    HF_HUB_OFFLINE=1 python benchmarks/step_time.py --repeats 20 --json step_time.json
    python benchmarks/step_time.py --variants lora,dora --repeats 5 --device cpu
    python benchmarks/step_time.py --threads 1 --variants lora,sora,increlora --no-memory
    python benchmarks/step_time.py --precision bf16 --random roberta-base --device cuda
    python benchmarks/step_time.py --precision bf16 --against-precision fp32 --no-memory

Precision (``--precision bf16|fp16``, default fp32): every configuration's forward pass (ours,
PEFT's and the floor's) runs under ``torch.autocast`` to that type, with the parameters and
AdamW's state in float32, as ``lorabench run --precision`` trains; the backward and the
optimiser run outside it. ``--random roberta-base`` times a randomly initialised model of
RoBERTa-base's size (12 layers, hidden 768; nothing is downloaded) instead of the packaged
MiniLM: the size at which a GPU's step time means something (``benchmarks/gpu_check.sh``).
``--against-precision fp32`` also builds every configuration at fp32 and interleaves them all in
one run, printing each configuration's bf16/fp32 step-time ratio, paired per repeat.

Targets (from the issue): every variant at most PEFT's time (ratio <= 1.00) and memory; LoRA and
DyLoRA within 1.05x of the floor; DoRA within 1.15x.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

ALL_VARIANTS = ("lora", "dora", "vera", "adalora", "dylora", "sora", "increlora")
TARGETS = ["query", "value"]
# Ours: keyword arguments for lorabench's attach (keys a variant's config lacks are dropped).
OUR_CONFIGS: dict[str, dict[str, Any]] = {
    "lora": {"r": 8, "alpha": 8},
    "dora": {"r": 8, "alpha": 8},
    "vera": {"r": 256},
    "adalora": {"r": 12, "target_r": 8, "tinit": 0, "tfinal": 0, "deltaT": 1},
    "dylora": {"r": 8, "alpha": 8},
    "sora": {"r": 8, "alpha": 16},
    # r is IncreLoRA's cap; it starts at rank init_r and grows to an average of target_rank.
    "increlora": {"r": 8, "init_r": 1, "target_rank": 2},
}
# The PEFT configuration each variant is timed against (see peft_config); absent: PEFT has none.
PEFT_EQUIVALENTS = {
    "lora": "lora",
    "dora": "dora",
    "vera": "vera",
    "adalora": "adalora",
    "dylora": "LoRA r8 (r_max)",
}
NO_PEFT = "–"  # the PEFT columns of a variant PEFT does not implement
# IncreLoRA's total_steps for on_train_begin: its growth schedule sized to this run puts the
# first round after step 1,000, far beyond the steps timed, so they all run its importance hooks.
INCRELORA_TOTAL_STEPS = 10_000
FLOOR_TARGETS = {"lora": 1.05, "dylora": 1.05, "dora": 1.15}
MMAP_THRESHOLD = 128 * 1024  # bytes; see the module docstring
MEMORY_STEPS = 3
CPU_MEMORY_SLACK = 2**20  # bytes: RSS noise floor, see the module docstring


@dataclass(frozen=True)
class Setup:
    """One timed configuration: ``kind`` is "ours", "peft" or "floor"; ``precision`` overrides
    ``--precision`` (the configurations of ``--against-precision``)."""

    label: str
    kind: str
    variant: str | None
    precision: str | None = None


@dataclass
class Options:
    model: str | None
    device: str
    batch_size: int
    seq_len: int
    total_steps: int
    learning_rate: float = 1e-4
    precision: str = "fp32"  # fp32, or bf16/fp16: the forward under torch.autocast
    random_model: str | None = None  # "roberta-base": a random model of that size


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
RANDOM_MODELS = ("roberta-base",)


def autocast(opts: Options) -> Any:
    """The forward pass's autocast context for ``opts.precision`` (off for fp32)."""
    dtype = PRECISION_DTYPES.get(opts.precision)
    kind = torch.device(opts.device).type
    return torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None)


# -- building ------------------------------------------------------------------------------------


def load_base_model(opts: Options) -> nn.Module:
    """all-MiniLM-L6-v2 (or ``--model``) with a 2-label head, the same weights every time."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from lorabench.models import resolve_model

    hf_logging.set_verbosity_error()  # the "newly initialised head" warning is expected
    torch.manual_seed(0)
    if opts.random_model == "roberta-base":
        from transformers import RobertaConfig, RobertaForSequenceClassification

        # RobertaConfig's defaults are roberta-base's shape: 12 layers, hidden 768, 12 heads.
        model = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
        return model.to(opts.device).train()
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(opts.model), num_labels=2
    )
    return model.to(opts.device).train()  # train mode: dropout on, as in real training


def make_batch(model: nn.Module, opts: Options) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batch = {
        # ids from the upper part of the vocabulary: no padding or special tokens
        "input_ids": torch.randint(
            vocab // 10, vocab, (opts.batch_size, opts.seq_len), generator=g
        ),
        "attention_mask": torch.ones(opts.batch_size, opts.seq_len, dtype=torch.long),
        "labels": torch.randint(0, 2, (opts.batch_size,), generator=g),
    }
    return {k: v.to(opts.device) for k, v in batch.items()}


def our_config(variant: str) -> dict[str, Any]:
    from lorabench.variants import get_variant

    fields = get_variant(variant).config_class.field_names()
    return {k: v for k, v in OUR_CONFIGS[variant].items() if k in fields} | {
        "target_modules": TARGETS
    }


def peft_config(variant: str, total_steps: int) -> Any:
    import peft

    if variant in ("lora", "dylora"):  # DyLoRA: PEFT LoRA at its r_max
        return peft.LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS)
    if variant == "dora":
        return peft.LoraConfig(
            r=8, lora_alpha=8, lora_dropout=0.0, use_dora=True, target_modules=TARGETS
        )
    if variant == "vera":
        return peft.VeraConfig(r=256, target_modules=TARGETS)
    if variant == "adalora":
        return peft.AdaLoraConfig(
            init_r=12,
            target_r=8,
            tinit=0,
            tfinal=0,
            deltaT=1,
            total_step=total_steps,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=TARGETS,
        )
    raise ValueError(f"no PEFT configuration for variant {variant!r}")


def build_step(setup: Setup, opts: Options) -> Callable[[int], None]:
    """Builds ``setup`` on a fresh model and returns its ``step(i)``."""
    if setup.precision is not None:
        opts = dataclasses.replace(opts, precision=setup.precision)
    model = load_base_model(opts)
    batch = make_batch(model, opts)

    if setup.kind == "floor":
        for p in model.parameters():
            p.requires_grad_(False)
        # Gradients flow from the loss down through every layer, as they do for any adapter.
        model.get_input_embeddings().register_forward_hook(
            lambda _m, _i, out: out.requires_grad_(True)
        )

        def floor_step(_: int) -> None:
            with autocast(opts):
                loss = model(**batch).loss
            loss.backward()

        return floor_step

    if setup.kind == "ours":
        from lorabench.variants import attach

        adapter = attach(model, setup.variant, **our_config(setup.variant))
        lr = opts.learning_rate
        optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=lr)
        is_increlora = setup.variant == "increlora"
        adapter.on_train_begin(INCRELORA_TOTAL_STEPS if is_increlora else opts.total_steps)

        def our_step(i: int) -> None:
            # As lorabench's trainer drives the hooks (no clipping or scheduler: lr is constant).
            adapter.before_step(i)
            with autocast(opts):
                loss = model(**batch).loss
            reg = adapter.regularization_loss()
            (loss if reg is None else loss + reg).backward()
            optimizer.step()
            adapter.after_step(i, learning_rate=lr)
            optimizer.zero_grad(set_to_none=True)
            if is_increlora and not adapter.variant.tracking:
                raise RuntimeError(
                    f"IncreLoRA's growth ended at step {i}: later steps would be timed without "
                    "its importance hooks; raise INCRELORA_TOTAL_STEPS"
                )

        return our_step

    import peft

    peft_model = peft.get_peft_model(model, peft_config(setup.variant, opts.total_steps))
    optimizer = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad], lr=opts.learning_rate
    )
    is_adalora = setup.variant == "adalora"

    def peft_step(i: int) -> None:
        with autocast(opts):  # AdaLoRA adds its orthogonality term to this loss
            loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        if is_adalora:  # PEFT's rank allocator, called by hand after the optimiser step
            peft_model.base_model.update_and_allocate(i)
        optimizer.zero_grad(set_to_none=True)

    return peft_step


def plan(variants: list[str]) -> tuple[list[Setup], list[str]]:
    """The setups to time, and a message for each variant or comparison left out."""
    from lorabench.variants import list_variants

    registered = set(list_variants())
    try:
        import peft  # noqa: F401

        have_peft = True
    except ImportError:
        have_peft = False
    setups = [Setup("floor", "floor", None)]
    skipped: list[str] = []
    if not have_peft:
        skipped.append("peft is not installed: PEFT columns left out (pip install peft)")
    for v in variants:
        if v not in registered:
            skipped.append(f"{v}: not registered in lorabench.variants yet, skipped")
            continue
        setups.append(Setup(f"ours:{v}", "ours", v))
        if have_peft and v in PEFT_EQUIVALENTS:
            setups.append(Setup(f"peft:{v}", "peft", v))
    if "lora" not in variants:
        skipped.append("lora is not among --variants: the ours/LoRA column is left out")
    return setups, skipped


# -- timing ----------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    setups: list[Setup], opts: Options, repeats: int, warmup: int
) -> dict[str, list[float]]:
    steps = {}
    for s in setups:
        print(f"building {s.label} ...", file=sys.stderr, flush=True)
        steps[s.label] = build_step(s, opts)
    for i in range(warmup):
        for s in setups:
            steps[s.label](i)
    times: dict[str, list[float]] = {s.label: [] for s in setups}
    for rep in range(repeats):
        shift = rep % len(setups)  # rotate the order so no setup always follows the same one
        for s in setups[shift:] + setups[:shift]:
            gc.collect()
            sync(opts.device)
            t0 = time.perf_counter()
            steps[s.label](warmup + rep)
            sync(opts.device)
            times[s.label].append((time.perf_counter() - t0) * 1e3)
        print(f"repeat {rep + 1}/{repeats} done", file=sys.stderr, flush=True)
    return times


# -- memory ----------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


def _cpu_step_peak_bytes(step: Callable[[], None]) -> int:
    if _can_reset_hwm():
        before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current RSS
        step()
        return (_status_kib("VmHWM") - before) * 1024
    import psutil  # fallback: sample RSS every millisecond

    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    step()
    done.set()
    thread.join()
    return max(peak[0], proc.memory_info().rss) - before


def measure_memory_here(setup: Setup, opts: Options, warmup: int) -> int:
    """Median step memory of ``setup`` in this process (bytes)."""
    step = build_step(setup, opts)
    for i in range(warmup):
        step(i)
    peaks = []
    for k in range(MEMORY_STEPS):
        gc.collect()
        i = warmup + k
        if opts.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step(i)
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated() - before)
        else:
            peaks.append(_cpu_step_peak_bytes(lambda i=i: step(i)))
    return int(statistics.median(peaks))


def measure_memory(setups: list[Setup], opts: Options, warmup: int) -> dict[str, int]:
    """Each setup in a fresh subprocess, so no setup's allocations colour another's reading."""
    out: dict[str, int] = {}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD), HF_HUB_OFFLINE="1")
    for s in setups:
        print(f"memory {s.label} ...", file=sys.stderr, flush=True)
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--memory-probe",
            s.label,
            "--device",
            opts.device,
            "--batch-size",
            str(opts.batch_size),
            "--seq-len",
            str(opts.seq_len),
            "--warmup",
            str(warmup),
            "--total-steps",
            str(opts.total_steps),
            "--threads",
            str(torch.get_num_threads()),
            "--precision",
            opts.precision,
        ]
        cmd += ["--model", opts.model] if opts.model else []
        cmd += ["--random", opts.random_model] if opts.random_model else []
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory probe for {s.label} failed:\n{proc.stderr[-3000:]}")
        out[s.label] = int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])
    return out


# -- report ----------------------------------------------------------------------------------------


def paired_ratio(times: dict[str, list[float]], label: str, reference: str) -> float | None:
    """Median over repeats of ``label``'s time over ``reference``'s in the same repeat."""
    if reference not in times:
        return None
    return statistics.median(a / b for a, b in zip(times[label], times[reference]))


def summarise(
    setups: list[Setup],
    times: dict[str, list[float]],
    memory: dict[str, int],
    *,
    memory_slack: int = 0,
) -> list[dict[str, Any]]:
    med = {k: statistics.median(v) for k, v in times.items()}
    floor_ms, floor_mem = med["floor"], memory.get("floor")
    rows = []
    for s in setups:
        if s.kind != "ours":
            continue
        peft_label = f"peft:{s.variant}"
        row: dict[str, Any] = {
            "variant": s.variant,
            "peft_equivalent": PEFT_EQUIVALENTS.get(s.variant),
            "ours_ms": med[s.label],
            "peft_ms": med.get(peft_label),
            "floor_ms": floor_ms,
            "time_vs_peft": paired_ratio(times, s.label, peft_label),
            "time_vs_floor": paired_ratio(times, s.label, "floor"),
            "time_vs_lora": paired_ratio(times, s.label, "ours:lora"),
            "floor_target": FLOOR_TARGETS.get(s.variant),
            "ours_mib": memory[s.label] / 2**20 if s.label in memory else None,
            "peft_mib": memory[peft_label] / 2**20 if peft_label in memory else None,
            "floor_mib": floor_mem / 2**20 if floor_mem is not None else None,
        }
        row["mem_vs_peft"] = (
            memory[s.label] / memory[peft_label]
            if s.label in memory and memory.get(peft_label)
            else None
        )
        row["mem_vs_floor"] = (
            memory[s.label] / floor_mem if s.label in memory and floor_mem else None
        )
        misses = []
        if row["time_vs_peft"] is not None and row["time_vs_peft"] > 1.0:
            misses.append("time>PEFT")
        if row["mem_vs_peft"] is not None and memory[s.label] > memory[peft_label] + memory_slack:
            misses.append("mem>PEFT")
        if row["floor_target"] is not None and row["time_vs_floor"] > row["floor_target"]:
            misses.append(f"time>{row['floor_target']:.2f}x floor")
        if misses:
            row["verdict"] = "MISS " + ", ".join(misses)
        elif row["peft_equivalent"] is None:
            row["verdict"] = "no PEFT implementation"
        else:
            row["verdict"] = "ok"
        rows.append(row)
    return rows


def precision_ratios(
    setups: list[Setup], times: dict[str, list[float]], opts: Options, against: str
) -> list[dict[str, Any]]:
    """Per configuration: its median step time at ``--precision`` and at ``against`` (timed
    interleaved in one run), and the paired ratio of the two."""
    rows = []
    for s in setups:
        other = f"{s.label}@{against}"
        rows.append(
            {
                "config": s.label,
                f"{opts.precision}_ms": statistics.median(times[s.label]),
                f"{against}_ms": statistics.median(times[other]),
                "ratio": paired_ratio(times, s.label, other),
            }
        )
    return rows


def precision_markdown(rows: list[dict[str, Any]], precision: str, against: str) -> str:
    lines = [
        f"| config | {precision} ms | {against} ms | {precision}/{against} |",
        "|:---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r[f'{precision}_ms']:.1f} | {r[f'{against}_ms']:.1f} "
            f"| {_fmt(r['ratio'], '.2f')} |"
        )
    return "\n".join(lines)


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown(rows: list[dict[str, Any]], floor_ms: float, floor_mib: float | None) -> str:
    lines = [
        f"floor (frozen model, gradients through every layer): {floor_ms:.1f} ms, "
        f"step memory {_fmt(floor_mib, '.1f')} MiB",
        "",
        "| variant | PEFT equivalent | ours ms | PEFT ms | ours/PEFT | ours/floor (target) "
        "| ours/LoRA | ours MiB | PEFT MiB "
        "| mem ours/PEFT | mem ours/floor | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        target = f" (<= {r['floor_target']:.2f})" if r["floor_target"] else ""
        na = NO_PEFT if r["peft_equivalent"] is None else "-"  # by design, or not measured
        lines.append(
            f"| {r['variant']} | {r['peft_equivalent'] or 'none'} | {r['ours_ms']:.1f} "
            f"| {_fmt(r['peft_ms'], '.1f', na)} "
            f"| {_fmt(r['time_vs_peft'], '.3f', na)} | {r['time_vs_floor']:.3f}{target} "
            f"| {_fmt(r['time_vs_lora'], '.3f')} "
            f"| {_fmt(r['ours_mib'], '.1f')} "
            f"| {_fmt(r['peft_mib'], '.1f', na)} | {_fmt(r['mem_vs_peft'], '.3f', na)} "
            f"| {_fmt(r['mem_vs_floor'], '.3f')} "
            f"| {r['verdict']} |"
        )
    return "\n".join(lines)


def environment(opts: Options, repeats: int, warmup: int) -> dict[str, Any]:
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    try:
        git = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
                cwd=os.path.dirname(os.path.abspath(__file__)),
            ).stdout.strip()
            or None
        )
    except OSError:
        git = None
    return {
        "device": opts.device,
        "precision": opts.precision,
        "device_name": torch.cuda.get_device_name()
        if opts.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "python": platform.python_version(),
        "git": git,
        "model": (
            f"random {opts.random_model}"
            if opts.random_model
            else opts.model or "all-MiniLM-L6-v2 (packaged)"
        ),
        "batch_size": opts.batch_size,
        "seq_len": opts.seq_len,
        "repeats": repeats,
        "warmup": warmup,
        "memory_method": "cuda.max_memory_allocated"
        if opts.device.startswith("cuda")
        else "VmHWM after clear_refs, fresh subprocess",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- entry point -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--repeats", type=int, default=20, help="timed steps per configuration (median reported)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration first")
    p.add_argument(
        "--variants", default=",".join(ALL_VARIANTS), help="comma-separated registry names"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", metavar="OUT", help="write raw times, memory and environment here")
    p.add_argument(
        "--model", default=None, help="model path or hub name (default: packaged all-MiniLM-L6-v2)"
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="forward pass under torch.autocast to this type (parameters stay float32)",
    )
    p.add_argument(
        "--against-precision",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        metavar="P",
        help="also time every configuration at precision P, interleaved in the same run, and "
        "print each one's --precision / P step-time ratio (paired per repeat)",
    )
    p.add_argument(
        "--random",
        choices=RANDOM_MODELS,
        default=None,
        help="a randomly initialised model of this size instead of --model (no download)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--no-memory", action="store_true", help="time only")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (torch.set_num_threads; default: torch's own choice)",
    )
    p.add_argument("--total-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--memory-probe", default=None, help=argparse.SUPPRESS
    )  # internal: one setup's memory
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error(f"--repeats={args.repeats} must be >= 1 and --warmup={args.warmup} >= 0")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads={args.threads} must be >= 1")
    unknown = sorted(set(args.variants.split(",")) - set(ALL_VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {','.join(ALL_VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # AdaLoRA's budget schedule needs the step count; every configuration sees the same one.
    total_steps = args.total_steps or (args.warmup + args.repeats + MEMORY_STEPS + 10)
    opts = Options(
        args.model,
        args.device,
        args.batch_size,
        args.seq_len,
        total_steps,
        precision=args.precision,
        random_model=args.random,
    )

    if args.memory_probe:
        kind, _, variant = args.memory_probe.partition(":")
        setup = Setup(args.memory_probe, kind, variant or None)
        print(
            json.dumps(
                {"label": setup.label, "peak_bytes": measure_memory_here(setup, opts, args.warmup)}
            )
        )
        return 0

    setups, skipped = plan([v for v in args.variants.split(",") if v])
    for message in skipped:
        print(f"note: {message}", file=sys.stderr)
    against = args.against_precision
    others = (
        []
        if against is None
        else [
            dataclasses.replace(s, label=f"{s.label}@{against}", precision=against) for s in setups
        ]
    )
    times = time_interleaved(setups + others, opts, args.repeats, args.warmup)
    memory = {} if args.no_memory else measure_memory(setups, opts, args.warmup)

    slack = 0 if opts.device.startswith("cuda") else CPU_MEMORY_SLACK
    rows = summarise(setups, times, memory, memory_slack=slack)
    floor_mib = memory["floor"] / 2**20 if "floor" in memory else None
    print(markdown(rows, statistics.median(times["floor"]), floor_mib))
    precision_rows = [] if against is None else precision_ratios(setups, times, opts, against)
    if precision_rows:
        print()
        print(precision_markdown(precision_rows, opts.precision, against))
    for message in skipped:
        print(f"\nnote: {message}")
    if args.json:
        payload = {
            "environment": environment(opts, args.repeats, args.warmup),
            "times_ms": times,
            "step_memory_bytes": memory,
            "rows": rows,
            "precision_ratios": precision_rows,
            "skipped": skipped,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
