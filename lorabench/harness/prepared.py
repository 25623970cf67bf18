"""A run made ready to train: the shared cache of one process, and the prepared-run object.

:class:`RunCache` keeps what the runs of one suite (or the trials of one search) share: loaded
task data and its fingerprint, tokenised splits and the loaded base models. It also *resolves* a
run (:meth:`RunCache.resolve`): the run's identity needs the data it reads.

:func:`prepare_run` turns a resolved run into a :class:`PreparedRun`: a fresh copy of the model
with its task head drawn for the seed (or a generated task's frozen head loaded), the variant
attached, and the tokenised splits. The runner trains it (``Trainer(prepared)``); the search's
probe measures one step of it. Everything a run needs is on this one object.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lorabench.harness.batches import TokenizedSplit, tokenize_split
from lorabench.harness.config import BenchmarkConfigError, RunConfig
from lorabench.models import head_parameter_names, reset_head
from lorabench.tasks.data import LoadRequest, TaskData
from lorabench.tasks.spec import TaskSpec
from lorabench.variants.adapter import Adapter
from lorabench.variants.base import ConfigError, VariantConfig

# Sources whose rows never depend on the seed: their loaded data is shared by every seed.
SEED_INDEPENDENT_SOURCES = frozenset({"glue", "custom"})


# The device names ``--device`` and a suite's ``device:`` accept (cuda:N picks one GPU).
DEVICE_CHOICES = "cpu, cuda, cuda:N or mps"


class DeviceUnavailable(BenchmarkConfigError):
    """The device asked for cannot be used here; the message lists the ones that can."""


def available_devices() -> list[str]:
    """The devices this process can compute on: ``cpu``, each ``cuda:N``, and ``mps``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def check_device_name(name: str) -> str:
    """``name`` when it is a device name lorabench accepts (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``), whether or not this machine has it; raises :class:`BenchmarkConfigError`
    otherwise."""
    kind, _, index = str(name).partition(":")
    plain = kind in ("cpu", "mps") and not index
    gpu = kind == "cuda" and (not index or index.isdigit())
    if plain or gpu:
        return str(name)
    raise BenchmarkConfigError(f"device {name!r} is not a device name; use {DEVICE_CHOICES}")


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device a run computes on: ``name`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``) checked
    against this machine, else (None) ``LORABENCH_DEVICE`` if set, else CUDA when available,
    else CPU.

    Raises :class:`DeviceUnavailable`, naming the devices that are available, for one this
    machine lacks (no CUDA build or GPU, a GPU index past the last, no MPS), so that a suite
    stops before any work rather than at its first run.
    """
    if name is None:
        # Kept for scripts that set it; --device and a suite's device: are the documented way.
        name = os.environ.get("LORABENCH_DEVICE") or None
        if name is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(check_device_name(str(name)))
    available = available_devices()
    if device.type == "cuda":
        usable = torch.cuda.is_available() and (
            device.index is None or device.index < torch.cuda.device_count()
        )
    else:
        usable = device.type in available
    if not usable:
        raise DeviceUnavailable(
            f"device {str(device)!r} is not available on this machine; available: "
            f"{', '.join(available)} (use --device {available[-1]}, or leave --device out "
            "for CUDA when present, else the CPU)"
        )
    return device


def default_device() -> torch.device:
    """``LORABENCH_DEVICE`` if set, else CUDA when available, else CPU (see
    :func:`resolve_device`)."""
    return resolve_device(None)


def check_variant_precision(variant: str, precision: str) -> None:
    """Raises :class:`BenchmarkConfigError` when ``variant`` cannot train in ``precision``: fp16
    for a variant that reads gradients inside backward, before the gradient scaler unscales
    them (``Variant.loss_scaling_safe``)."""
    from lorabench.variants import VARIANTS

    if precision == "fp16" and not getattr(VARIANTS.get(variant), "loss_scaling_safe", True):
        raise BenchmarkConfigError(
            f"variant {variant!r} cannot train with precision fp16: it records gradient "
            "statistics during backward, before fp16's gradient scaler unscales them (they "
            "would carry the loss scale and overflow); use --precision bf16 or fp32 for it"
        )


def check_precision(precision: str, device: torch.device) -> None:
    """Raises :class:`BenchmarkConfigError` when ``device`` cannot run ``precision`` (autocast
    to that dtype unsupported there, or fp16's gradient scaler missing), before any work."""
    if precision == "fp32":
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    problem = None
    try:
        is_available = getattr(torch.amp, "is_autocast_available", None)
        if is_available is not None and not is_available(device.type):
            problem = "torch has no autocast for this device type"
        else:
            # An unsupported dtype is not an error in torch: autocast warns and turns itself
            # off, which would silently train in float32 under a bf16/fp16 label.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with torch.autocast(device.type, dtype=dtype):
                    pass
            disabled = [w for w in caught if "autocast" in str(w.message).lower()]
            if disabled:
                problem = str(disabled[0].message).splitlines()[0]
            if precision == "fp16":
                torch.amp.GradScaler(device.type)
    except (RuntimeError, AttributeError, TypeError) as exc:  # older torch: no CPU fp16 or scaler
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if problem:
        raise BenchmarkConfigError(
            f"train.precision={precision!r} cannot run on device {str(device)!r} with torch "
            f"{torch.__version__} ({problem}); use precision fp32"
            + (" or bf16" if precision == "fp16" else "")
            + ", or another device"
        )


@dataclass
class RunCache:
    """What the runs of one suite share: loaded tasks, tokenised splits, loaded base models.

    Models are cached as loaded (on CPU) and handed out as deep copies, so no run sees another's
    training. Generated tasks (planted-rank) depend on the seed and are cached per seed.
    """

    tasks: dict[tuple, TaskData] = field(default_factory=dict)
    tokenized: dict[tuple, tuple[TokenizedSplit, dict[str, TokenizedSplit]]] = field(
        default_factory=dict
    )
    models: dict[tuple, tuple[nn.Module, Any]] = field(default_factory=dict)
    fingerprints: dict[tuple, str] = field(default_factory=dict)

    def resolve(self, cfg: RunConfig) -> RunConfig:
        """The run ``cfg`` describes, as it will happen: the task's registered name (a custom
        task's YAML ``name``, whichever path spelling led to it) and version, the fingerprint of
        the data it reads (loaded once per suite and kept for the runs) and of the model's
        files. Its :attr:`~RunConfig.run_id` is the run's identity.

        Raises what loading raises (a missing data folder, a bad custom task, an unknown
        variant field): these are known before any run trains.
        """
        from lorabench.models import model_fingerprint
        from lorabench.tasks import get_task

        cfg.resolved_variant_config()  # validates the overrides once, naming a bad field
        spec = get_task(cfg.task)
        cfg = dataclasses.replace(cfg, task=spec.name, task_version=spec.version)
        self.check_head_trains(cfg, spec)
        return dataclasses.replace(
            cfg,
            data_fingerprint=self.data_fingerprint(spec, cfg),
            model_fingerprint=model_fingerprint(cfg.model),
        )

    def check_head_trains(self, cfg: RunConfig, spec: TaskSpec) -> None:
        """Refuses a run of a variant that trains only the task head (``head``, a linear probe)
        when the head would not train: ``train.train_head`` false, or a task whose head is part
        of the task (generated tasks keep it frozen; the task is loaded to know). Nothing would
        train, so the suite stops before any run does."""
        from lorabench.variants import VARIANTS

        if not VARIANTS.get(cfg.variant).trains_head_only:
            return
        if not cfg.train.train_head:
            raise ConfigError(
                f"variant {cfg.variant!r} trains the task head alone, but train.train_head is "
                "false: nothing would train. Set train.train_head: true (the default) for it, "
                f"or leave {cfg.variant!r} out of this suite"
            )
        _, data = self.task(spec, cfg)
        if data.extras.get("freeze_head", False):
            raise ConfigError(
                f"variant {cfg.variant!r} trains the task head alone, but task {spec.name!r} "
                "keeps its head frozen (the head is part of the generated task): nothing would "
                f"train. Run {cfg.variant!r} on a task whose head trains (a GLUE or custom task)"
            )

    def _request(self, spec: TaskSpec, cfg: RunConfig) -> tuple[tuple, LoadRequest]:
        seed = None if spec.source in SEED_INDEPENDENT_SOURCES else cfg.seed
        limits = (cfg.train.max_train_examples, cfg.train.max_eval_examples)
        key = (spec.name, spec.version, cfg.data_dir, cfg.model, seed, *limits)
        request = LoadRequest(
            data_dir=cfg.data_dir,
            model=cfg.model,
            seed=cfg.seed,
            max_train_examples=cfg.train.max_train_examples,
            max_eval_examples=cfg.train.max_eval_examples,
        )
        return key, request

    def task(self, spec: TaskSpec, cfg: RunConfig) -> tuple[tuple, TaskData]:
        """The task data ``cfg`` reads, loaded once per process."""
        from lorabench.tasks import load_task

        key, request = self._request(spec, cfg)
        if key not in self.tasks:
            self.tasks[key] = load_task(spec, request)
        return key, self.tasks[key]

    def data_fingerprint(self, spec: TaskSpec, cfg: RunConfig) -> str:
        """The fingerprint of the data ``cfg`` reads: from memory, from the on-disk memo when
        the files are unchanged (no loading), else by loading and hashing the data (once)."""
        from lorabench.tasks.fingerprint import (
            data_fingerprint,
            known_fingerprint,
            remember_fingerprint,
        )

        key, request = self._request(spec, cfg)
        if key not in self.fingerprints:
            known = known_fingerprint(spec, request)
            if known is None:
                _, data = self.task(spec, cfg)
                known = data_fingerprint(data)
                remember_fingerprint(spec, request, known)
            self.fingerprints[key] = known
        return self.fingerprints[key]

    def model(self, name: str | None, spec: TaskSpec) -> tuple[nn.Module, Any]:
        """A fresh copy of the base model with a head for ``spec``, and its tokenizer."""
        base, tokenizer = self._loaded(name, spec)
        return copy.deepcopy(base), tokenizer

    def tokenizer(self, name: str | None, spec: TaskSpec) -> Any:
        """The tokenizer of model ``name`` (the model is loaded and kept, not copied)."""
        return self._loaded(name, spec)[1]

    def _loaded(self, name: str | None, spec: TaskSpec) -> tuple[nn.Module, Any]:
        from lorabench.models import load_model_and_tokenizer

        key = (name, spec.num_labels, spec.task_type)
        if key not in self.models:
            self.models[key] = load_model_and_tokenizer(
                name, num_labels=spec.num_labels, regression=spec.task_type == "regression"
            )
        return self.models[key]

    def train_split(self, cfg: RunConfig) -> TokenizedSplit:
        """Run ``cfg``'s training split, tokenised for its model (loaded once per process)."""
        from lorabench.tasks import get_task

        spec = get_task(cfg.task)
        task_key, data = self.task(spec, cfg)
        tokenizer = self.tokenizer(cfg.model, spec)
        return self.splits(task_key, data, tokenizer, cfg.train.max_length)[0]

    def splits(
        self, task_key: tuple, data: TaskData, tokenizer: Any, max_length: int
    ) -> tuple[TokenizedSplit, dict[str, TokenizedSplit]]:
        """The task's training split and each eval split, tokenised with ``tokenizer`` and
        truncated to ``max_length`` tokens; done once per task, tokenizer and length."""
        key = (*task_key, getattr(tokenizer, "name_or_path", id(tokenizer)), max_length)
        if key not in self.tokenized:
            spec = data.spec
            train = tokenize_split(data.split(spec.train_split), spec, tokenizer, max_length)
            evals = {
                name: tokenize_split(data.split(name), spec, tokenizer, max_length)
                for name in spec.eval_splits
            }
            self.tokenized[key] = (train, evals)
        return self.tokenized[key]


def _load_head_state(model: nn.Module, head_state: Mapping[str, torch.Tensor], task: str) -> None:
    """Loads a generated task's head (keys as in the model's state_dict), failing loudly."""
    own = model.state_dict()
    unknown = sorted(set(head_state) - set(own))
    if unknown:
        raise KeyError(
            f"task {task!r} provides head tensors {unknown} that the model does not have (it has "
            f"e.g. {head_parameter_names(model)}); generate the "
            "task for this model"
        )
    model.load_state_dict(dict(head_state), strict=False)


@dataclass
class PreparedRun:
    """One resolved run, loaded and ready to train."""

    cfg: RunConfig  # resolved: cfg.run_id is the run's identity
    spec: TaskSpec
    data: TaskData
    variant_config: VariantConfig  # the variant's config after its defaults, validated
    model: nn.Module  # a private copy of the base model, on ``device``, head drawn for the seed
    tokenizer: Any
    train_split: TokenizedSplit
    eval_splits: dict[str, TokenizedSplit]
    device: torch.device
    train_head: bool  # False for generated tasks whose head is part of the task (frozen)
    adapter: Adapter | None = None  # attached by prepare_run unless attach=False

    @property
    def pad_id(self) -> int:
        """The tokenizer's padding token id (0 when it has none)."""
        return int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)

    @property
    def progress_desc(self) -> str:
        """``variant/task/seed N``: the run's label on its progress bar."""
        return f"{self.cfg.variant}/{self.cfg.task}/seed {self.cfg.seed}"


def prepare_run(
    cfg: RunConfig,
    cache: RunCache,
    *,
    device: torch.device | str | None = None,
    attach: bool = True,
) -> PreparedRun:
    """Loads everything ``cfg`` needs (through ``cache``) and returns it ready to train.

    ``cfg`` is resolved first when it is not yet. ``attach=False`` leaves the model bare (a
    probe that attaches its own way).
    """
    from lorabench.harness.trainer import seed_everything
    from lorabench.tasks import get_task
    from lorabench.variants import VARIANTS
    from lorabench.variants.adapter import attach as attach_variant

    if not cfg.resolved:
        cfg = cache.resolve(cfg)
    device = torch.device(device) if device is not None else default_device()
    spec = get_task(cfg.task)
    variant_cls = VARIANTS.get(cfg.variant)
    variant_config = cfg.variant_config_object()
    task_key, data = cache.task(spec, cfg)
    model, tokenizer = cache.model(cfg.model, spec)
    seed_everything(cfg.seed)
    reset_head(model, cfg.seed)
    if data.extras.get("head_state"):
        _load_head_state(model, data.extras["head_state"], spec.name)
    train_head = bool(cfg.train.train_head) and not data.extras.get("freeze_head", False)
    cache.check_head_trains(cfg, spec)  # a resolved run skipped resolve(): check here too
    model.to(device)
    adapter = attach_variant(model, variant_cls, variant_config) if attach else None
    train_split, eval_splits = cache.splits(task_key, data, tokenizer, cfg.train.max_length)
    return PreparedRun(
        cfg=cfg, spec=spec, data=data, variant_config=variant_config, model=model,
        tokenizer=tokenizer, train_split=train_split, eval_splits=eval_splits, device=device,
        train_head=train_head, adapter=adapter,
    )  # fmt: skip
