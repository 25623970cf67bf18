"""One run, and a suite of runs: from a :class:`RunConfig` to a stored :class:`RunRecord`.

:func:`execute_run` loads the task and a fresh copy of the model, attaches the variant, trains
under the budget (:class:`~lorabench.harness.trainer.Trainer`) and returns the record. It never
raises for a failed run: the record says ``"failed"`` with the error and the tail of the traceback.
KeyboardInterrupt is the exception: it propagates so a suite stops at once.

:func:`run_suite` runs variants x tasks x seeds, skipping run_ids the store already has finished,
storing each record as soon as its run ends, and printing a comparison table at the end. Task data,
tokenised splits and the loaded base model are kept across the suite's runs (:class:`RunCache`):
each run gets a ``copy.deepcopy`` of the base model, faster than ``from_pretrained``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from lorabench.harness.config import BenchmarkConfigError, RunConfig
from lorabench.harness.logs import LogSettingError, LogSettings, progress_bars, require_log_backends
from lorabench.harness.meter import PeakMemory
from lorabench.harness.prepared import (
    RunCache,
    check_precision,
    check_variant_precision,
    default_device,
    prepare_run,
    resolve_device,
)
from lorabench.harness.trainer import OnEval, RunPruned, Trainer, error_text
from lorabench.interrupts import Interrupted, is_default_handler, signal_name
from lorabench.models import head_parameter_names, head_parameters
from lorabench.results.provenance import collect_environment
from lorabench.results.records import RunRecord

if TYPE_CHECKING:
    from lorabench.harness.suite import SuiteConfig

__all__ = [
    "EXECUTORS",
    "RunCache",
    "RunPruned",
    "SuiteInputError",
    "SuiteInterrupted",
    "check_budgets",
    "data_changes",
    "default_device",
    "error_message",
    "execute_run",
    "executor_error",
    "format_summary",
    "resolve_suite",
    "run_config_of",
    "run_line",
    "run_suite",
    "summary_table",
]

# What a record's ``config`` holds beyond ``RunConfig.to_dict()`` (resolved at run time).
RECORD_EXTRA_CONFIG_KEYS = (
    "device",
    "resolved_variant_config",
    "data_source",
    "adapted_modules",
    "adapted_module_count",
)


class RecordStore(Protocol):
    """What :func:`run_suite` needs from :class:`lorabench.results.store.ResultStore`."""

    def add(self, record: RunRecord) -> Any: ...
    def get(self, run_id: str) -> RunRecord | None: ...
    def finished_ids(self) -> set[str]: ...


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _adapter_bytes(adapter: Any, model: nn.Module, head_trained: bool, out_dir: Path | None) -> int:
    """Saves the adapter and the task head beside it, and returns the adapter file's size.

    The head goes with the adapter whether it trained or not (``head_trained``): an untrained
    head (a planted task's, or one drawn from the run's seed) is still part of what the run
    computed, and a fresh base model would draw another one on loading or export.
    """
    from safetensors.torch import save_file

    from lorabench.variants.adapter import HEAD_FILE, WEIGHTS_FILE

    def save(target: Path) -> int:
        adapter.save(target)
        if head_trained or out_dir is not None:
            wanted = set(head_parameter_names(model))
            head = {
                name: p.detach().cpu().contiguous()
                for name, p in model.named_parameters()
                if name in wanted
            }
            if head:
                save_file(head, str(target / HEAD_FILE))
        return (target / WEIGHTS_FILE).stat().st_size

    if out_dir is not None:
        return save(out_dir)
    with tempfile.TemporaryDirectory(prefix="lorabench-adapter-") as tmp:
        return save(Path(tmp))


def execute_run(
    cfg: RunConfig,
    *,
    on_eval: OnEval | None = None,
    progress: bool = True,
    cache: RunCache | None = None,
    adapter_root: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    log: LogSettings | None = None,
) -> RunRecord:
    """Trains and evaluates one configuration and returns its record (never raises for a failed
    run; KeyboardInterrupt propagates).

    Args:
        cfg: the run.
        on_eval: called as ``on_eval(step, metrics, score)`` after every evaluation; raising
            :class:`RunPruned` stops the run with status ``"pruned"`` (spend so far recorded).
        progress: show a tqdm bar of the run's steps.
        cache: shared task data and models (a suite passes one; default: a fresh cache).
        adapter_root: keep the trained adapter in ``adapter_root/<run_id>/`` (default: saved to a
            temporary folder only to measure its size).
        device: where the run computes (``cpu``, ``cuda``, ``cuda:N``, ``mps``; see
            :func:`~lorabench.harness.prepared.resolve_device`); default ``LORABENCH_DEVICE``,
            else CUDA if available, else CPU. Recorded in ``config["device"]``, not part of the
            run's identity: the same run computes the same maths on any device.
        log: the training logs to write (:class:`~lorabench.harness.logs.LogSettings`: a CSV
            ``OUT/logs/<run_id>.csv``, TensorBoard events); default none. Not part of the run's
            identity.
    """
    from lorabench.models import model_name
    from lorabench.variants import VARIANTS

    cache = cache or RunCache()
    resolve_error: Exception | None = None
    wanted = device
    try:
        device = resolve_device(device)
    except BenchmarkConfigError as exc:  # a failed record naming the available devices
        resolve_error = exc
    device_text = str(device if device is not None else wanted)
    if not cfg.resolved:
        try:
            cfg = cache.resolve(cfg)
        except Exception as exc:  # stored as a failed run below, like any other failure
            resolve_error = exc
    record = RunRecord(
        run_id=_run_id(cfg),
        status="failed",
        variant=cfg.variant,
        task=cfg.task,
        model=model_name(cfg.model),
        seed=cfg.seed,
        config={**cfg.to_dict(), "device": device_text},
        tag=cfg.tag,
        budget=cfg.budget.to_dict(),
        data_fingerprint=cfg.data_fingerprint,
        model_fingerprint=cfg.model_fingerprint,
        environment=collect_environment(),
        started_at=_now(),
    )
    try:
        if resolve_error is not None:
            raise resolve_error
        assert isinstance(device, torch.device)  # resolved above, else raised just now
        check_precision(cfg.train.precision, device)
        check_variant_precision(cfg.variant, cfg.train.precision)
        prepared = prepare_run(cfg, cache, device=device)
        spec, variant_cfg, data = prepared.spec, prepared.variant_config, prepared.data
        record.variant_version = VARIANTS.get(cfg.variant).version
        record.task_version = spec.version
        record.primary_metric = spec.primary_metric
        record.higher_is_better = spec.higher_is_better
        record.rank = variant_cfg.nominal_rank
        record.config["resolved_variant_config"] = variant_cfg.to_dict()
        record.config["data_source"] = data.source
        if data.extras.get("true_ranks") is not None:
            record.true_ranks = {k: int(v) for k, v in data.extras["true_ranks"].items()}
        model, adapter, train_head = prepared.model, prepared.adapter, prepared.train_head
        logs = log.open(cfg.run_id) if log is not None else None
        trainer = Trainer(prepared, on_eval=on_eval, progress=progress, logger=logs)
        head_params = head_parameters(model) if train_head else []
        record.adapter_params = adapter.num_trainable_parameters()
        record.trainable_params = record.adapter_params + sum(p.numel() for p in head_params)
        record.total_params = sum(p.numel() for p in model.parameters())

        try:
            with PeakMemory(device) as memory:
                result = trainer.fit()
        finally:
            if logs is not None:
                logs.close()
        spent = result.spend.to_dict()
        spent.update(
            peak_memory_bytes=memory.peak,
            memory_kind=memory.kind,
            memory_baseline_bytes=memory.baseline,
        )
        record.spent = spent
        record.status = result.status  # type: ignore[assignment]
        record.error = result.error
        record.metrics = result.metrics
        record.score = result.score
        record.curve = result.curve
        record.rank_scores = result.rank_scores
        record.ranks = {k: int(v) for k, v in adapter.ranks().items()}
        # What "auto" (or a preset) chose on this model: the patterns and how many modules.
        record.config["adapted_modules"] = list(adapter.target_patterns)
        record.config["adapted_module_count"] = len(adapter.target_names)
        if result.status != "failed":
            out_dir = Path(adapter_root) / cfg.run_id if adapter_root is not None else None
            record.adapter_bytes = _adapter_bytes(adapter, model, train_head, out_dir)
    except Exception as exc:
        record.status = "failed"
        record.error = error_text(exc)
    record.finished_at = _now()
    return record


def _run_id(cfg: RunConfig) -> str:
    """``cfg.run_id``, or for a config too broken to resolve (an unknown variant field), a hash
    of it as given, so that its failed record can still be stored and shown."""
    from lorabench.results.records import config_hash

    try:
        return cfg.run_id
    except Exception:
        return config_hash(cfg.to_dict())


def run_config_of(record: RunRecord) -> RunConfig:
    """The :class:`RunConfig` that produced ``record`` (to re-run or vary it); for a record
    written by this release its ``run_id`` equals the record's."""
    data = {k: v for k, v in record.config.items() if k not in RECORD_EXTRA_CONFIG_KEYS}
    return RunConfig.from_dict(data)


class SuiteInputError(ValueError):
    """A run of a suite cannot be resolved (its data or model cannot be read); nothing trained."""


def resolve_suite(
    suite: SuiteConfig, cache: RunCache, *, finished: Collection[str] = ()
) -> list[RunConfig]:
    """Every run of ``suite``, resolved (see :meth:`RunCache.resolve`), in suite order.

    Every run is resolved and attached to its model's shapes on the meta device
    (:func:`lorabench.harness.checks.shape_problems`: a rank larger than a layer, missing target
    modules, an AdaLoRA schedule longer than a steps budget) before any trains; runs not in
    ``finished`` (run ids already stored) also get the memory check, which reads their training
    data, so a resumed suite reads nothing for the runs it skips. Raises
    :class:`SuiteInputError` listing every problem, each naming the run and the fix.
    """
    from lorabench.harness.checks import shape_problems

    resolved, problems = [], []
    for cfg in suite.run_configs():
        try:
            resolved.append(cache.resolve(cfg))
        except Exception as exc:  # every run's problem, reported together below
            problem = f"{cfg.variant}/{cfg.task}/seed {cfg.seed}: {error_message(error_text(exc))}"
            if problem not in problems:
                problems.append(problem)
    try:  # an unavailable device: refused before any run trains, naming the available ones
        device = resolve_device(suite.device)
    except BenchmarkConfigError as exc:
        raise SuiteInputError(str(exc)) from None
    if not problems:
        problems = shape_problems(
            resolved, batch_tokens=functools.partial(_largest_batch, cache=cache, skip=finished),
            device=device,
        )  # fmt: skip
    if problems:
        if len(problems) == 1:
            raise SuiteInputError(problems[0])
        raise SuiteInputError(
            f"{len(problems)} problems, nothing trained:\n" + "\n".join(f"  {p}" for p in problems)
        )
    return resolved


def _largest_batch(cfg: RunConfig, cache: RunCache, skip: Collection[str] = ()) -> int | None:
    """Tokens in run ``cfg``'s largest training batch: batch size x its longest example (a
    batch is padded to its longest); None when the data cannot be read here (the run will say
    why) or the run is in ``skip`` (finished: it will not train)."""
    if cfg.run_id in skip:
        return None
    try:
        lengths = cache.train_split(cfg).lengths
    except Exception:
        return None
    return int(cfg.train.batch_size) * int(lengths.max()) if len(lengths) else None


def check_budgets(configs: list[RunConfig], cache: RunCache) -> None:
    """Plans the steps of every run with a ``tokens`` or ``flops`` budget before any run trains,
    so that a budget below one batch or implying absurdly many steps stops the suite at once.

    Raises :class:`SuiteInputError` naming the run, the budget and the fix; for a budget below
    one batch, the least valid limit over all the runs (seeds draw different first batches).
    A ``flops`` budget is converted with the FLOPs per padded token of one forward and backward
    pass (no update) of each distinct model, task and variant config, as the run itself measures
    them. A ``seconds`` budget needs the measured time of a step: each run checks it before its
    first optimiser step (and fails with the same message).
    """
    from lorabench.harness.batches import BatchPlan
    from lorabench.harness.meter import BudgetBelowOneBatch, plan_steps

    too_small: list[tuple[RunConfig, BudgetBelowOneBatch]] = []
    flops_per_token: dict[str, float] = {}
    for cfg in configs:
        if cfg.budget.kind not in ("tokens", "flops"):
            continue
        try:
            train = cache.train_split(cfg)
            per_token = 0.0
            if cfg.budget.kind == "flops":
                # Seeds share it (their first batches differ a little in length: the run's own
                # check, with its own batch, has the last word).
                probe_key = f"{cfg.settings_id}|{cfg.data_fingerprint}"
                if probe_key not in flops_per_token:
                    flops_per_token[probe_key] = _flops_per_padded_token(cfg, cache)
                per_token = flops_per_token[probe_key]
                if per_token <= 0:
                    continue  # nothing counted: the run says so itself
            plan_steps(
                cfg.budget,
                BatchPlan(train, cfg.train.batch_size, seed=cfg.seed),
                flops_per_padded_token=per_token,
                grad_accum=cfg.train.grad_accum,
            )
        except BudgetBelowOneBatch as exc:
            too_small.append((cfg, exc))
        except BenchmarkConfigError as exc:
            raise SuiteInputError(f"{cfg.variant}/{cfg.task}/seed {cfg.seed}: {exc}") from None
        # Anything else (a tokenizer that fails on this data, say) is the run's own failure,
        # recorded when it runs, as before.
        except Exception:
            continue
    if too_small:
        cfg, worst = max(too_small, key=lambda item: item[1].smallest)
        more = f" ({len(too_small)} runs are below one batch)" if len(too_small) > 1 else ""
        raise SuiteInputError(f"{cfg.variant}/{cfg.task}/seed {cfg.seed}: {worst}{more}")


def _flops_per_padded_token(cfg: RunConfig, cache: RunCache) -> float:
    """What run ``cfg`` will measure as its FLOPs per padded token (its probe, run now on a
    private copy of the model; nothing trains)."""
    prepared = prepare_run(cfg, cache)
    try:
        return Trainer(prepared, progress=False).probe_flops()
    finally:
        del prepared


class SuiteInterrupted(Interrupted):
    """Ctrl-C (SIGINT) or SIGTERM stopped a suite. The finished runs are stored;
    :attr:`message` says how many and how to resume; :attr:`exit_code` is 128 + the signal
    number (130 for Ctrl-C, 143 for SIGTERM), as shells report a process a signal ended."""


class _StopSignals:
    """While a suite runs: SIGTERM (and Ctrl-C, when Python's default handler has it) raise
    :class:`SuiteInterrupted`, except inside :meth:`deferred`, where the signal waits until the
    block ends (a record being stored is stored whole, then the suite stops).

    Installs nothing outside the main thread (Python allows signal handlers only there) or when
    a caller has set its own handlers; restores the previous handlers on exit.
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._deferring = False
        self._pending: int | None = None

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        wanted = [signal.SIGINT, *([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])]
        for signum in wanted:
            # The command line's own SIGTERM handler counts as a default: the suite's replaces it
            # (and defers the signal while a record is stored).
            if is_default_handler(signum, signal.getsignal(signum)):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self._deferring:
            self._pending = signum
            return
        raise SuiteInterrupted(signum=signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise SuiteInterrupted(signum=signum)


def _interrupted_message(
    signum: int, finished_before: int, new: dict[str, RunRecord], total: int, where: str
) -> str:
    """What a stopped suite says: how many runs are finished and stored, and how to resume."""
    name = signal_name(signum)
    done_now = sum(1 for r in new.values() if r.status == "finished")
    stored = f", {done_now} of them by this command" if finished_before else ""
    return (
        f"interrupted ({name}): finished runs are saved ({finished_before + done_now} of "
        f"{total} runs of this suite, in {where}{stored}); re-run the same command to resume "
        "with the others."
    )


def data_changes(configs: list[RunConfig], store: Any) -> list[str]:
    """One line per task whose data differs from finished runs with the same settings.

    Those stored runs stay (and reports keep them apart: their data fingerprint differs); the
    new runs train on the data as it is now.
    """
    todo = {cfg.settings_id: cfg for cfg in configs}
    if not todo or not hasattr(store, "records"):
        return []
    changed: dict[tuple[str, str, str], int] = {}
    for record in store.records(tasks=sorted({cfg.task for cfg in configs})):
        if not record.data_fingerprint:
            continue  # written before data was fingerprinted: unknown, not "changed"
        try:
            settings_id = run_config_of(record).settings_id
        except Exception:
            continue
        cfg = todo.get(settings_id)
        if cfg is not None and record.data_fingerprint != cfg.data_fingerprint:
            key = (cfg.task, record.data_fingerprint, cfg.data_fingerprint)
            changed[key] = changed.get(key, 0) + 1
    return [
        f"{task}: the data differs from {n} finished run(s) with the same settings "
        f"(data {old[:8]} -> {new[:8]}); training on the current data, the old runs are kept apart"
        for (task, old, new), n in changed.items()
    ]


def run_suite(
    suite: SuiteConfig,
    store: RecordStore,
    *,
    progress: bool = True,
    keep_adapters: bool = True,
    stream: Any = None,
    cache: RunCache | None = None,
    configs: list[RunConfig] | None = None,
    workers: int | None = None,
    threads: int | None = None,
    worker_setup: Callable[[], None] | None = None,
    executor: str = "local",
    address: str | None = None,
) -> list[RunRecord]:
    """Runs every (variant, task, seed) of ``suite`` not already finished in ``store``.

    ``configs`` and ``cache``: the suite as :func:`resolve_suite` returned it and the cache it
    used, when the caller resolved (and checked) it already; default: resolved here.

    Each record is stored as soon as its run ends, so an interrupted suite keeps its finished
    runs and a re-run resumes. Failed runs are stored and the suite goes on. Prints a
    comparison table at the end to ``stream`` (default stdout; ``None`` with progress off: quiet).
    Progress: bars on a terminal; elsewhere (piped, CI) one plain line per run to ``stream``.
    Each run writes the training logs of ``suite.log`` (default a CSV, ``OUT/logs/<run_id>.csv``;
    :mod:`lorabench.harness.logs`); a missing tensorboard package stops the suite before any run.

    Ctrl-C and SIGTERM (in the main thread) raise :class:`SuiteInterrupted`, a
    KeyboardInterrupt whose message says how many runs are finished and stored; a signal that
    arrives while a record is being stored waits until it is stored. A ``tokens`` budget is
    checked for every run before the first trains (:func:`check_budgets`).

    ``workers`` > 1 trains that many runs at once, each in its own process
    (:mod:`lorabench.harness.workers`), with ``threads`` CPU threads in total divided between
    them (default: the machine's cores), or one worker per GPU; this process stores the records.
    ``worker_setup``: a picklable top-level function each worker calls first, to register
    plugins registered in code here (see :class:`~lorabench.harness.workers.WorkerPool`).

    ``executor="ray"`` trains the runs on a Ray cluster instead, one actor per run at a time
    (:mod:`lorabench.harness.ray_pool`): ``address`` is the cluster (None: a local instance,
    ``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:10001"``; see
    :func:`~lorabench.harness.ray_pool.connect`), ``workers`` the runs at once (default: as
    many as the cluster holds), ``threads`` each run's CPU threads (default 1). This process
    still stores every record. Ray missing, unreachable or too small raises
    :class:`SuiteInputError` before any run trains.

    A store with claims (:class:`~lorabench.results.store.ResultStore`) is shared safely with
    other drivers: each run is claimed before it trains (:mod:`lorabench.results.claims`), a run
    another live driver claimed is skipped and counted in a line at the end.

    Returns the records of every run of the suite, the ones found finished in the store included,
    in suite order.
    """
    from lorabench.harness.workers import workers_error

    if workers_error(workers):
        raise SuiteInputError(workers_error(workers))
    problem = executor_error(executor, address)
    if problem:
        raise SuiteInputError(problem)
    out = sys.stdout if stream is None and progress else stream
    parallel = None
    if executor == "ray" or (workers or 1) > 1:  # on Ray even one worker: the runs go there
        parallel = _Parallel(workers, threads, worker_setup, executor, address)
    with _StopSignals() as stop:
        return _run_suite(
            suite, store, stop, progress, keep_adapters, out, cache, configs, parallel
        )


EXECUTORS = ("local", "ray")


def executor_error(executor: str, address: str | None = None) -> str | None:
    """Why ``executor`` and ``address`` cannot run a suite (an unknown executor, an address
    without Ray, Ray not installed), naming the fix; None when they can."""
    if executor not in EXECUTORS:
        return f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}"
    if address is not None and executor != "ray":
        return (
            f"--address {address} is the address of a Ray cluster: add --executor ray "
            "(or drop --address)"
        )
    if executor == "ray":
        from lorabench.harness.ray_pool import ray_error

        return ray_error()
    return None


@dataclasses.dataclass(frozen=True)
class _Parallel:
    """How a suite runs in worker processes or on Ray (``run_suite``'s arguments; ``workers``
    None: as many as the Ray cluster holds)."""

    workers: int | None
    threads: int | None
    setup: Callable[[], None] | None
    executor: str = "local"
    address: str | None = None


def _claim_keeper(store: RecordStore) -> Any:
    """A :class:`~lorabench.results.claims.ClaimKeeper` on ``store``, or None for a store
    without claims (a test double, the regression guard's wrapper)."""
    from lorabench.results.claims import ClaimKeeper

    if all(hasattr(store, name) for name in ("claim", "renew_claims", "release_claims")):
        return ClaimKeeper(store)  # type: ignore[arg-type]
    return None


def _take(
    cfg: RunConfig, claims: Any, store: RecordStore, before: Mapping[str, Any] | None = None
) -> bool:
    """Whether this driver trains ``cfg`` now: it claimed it, and no other driver stored it
    since the suite started (finished, or failed: a run another driver tried during this suite
    is not tried again here; one that failed before it is retried, as a resumed suite does).
    ``before``: each run's stored ``finished_at`` when the suite started (absent: no record).
    A claim is dropped when its run is stored."""
    if claims is None:
        return True
    if not claims.claim(cfg.run_id):
        return False
    stored = store.get(cfg.run_id)
    if stored is not None and (
        stored.status == "finished"
        or (before is not None and stored.finished_at != before.get(cfg.run_id))
    ):
        claims.release(cfg.run_id)
        return False
    return True


def _stored_before(todo: list[RunConfig], store: RecordStore, claims: Any) -> dict[str, Any]:
    """``{run_id: finished_at}`` of the runs of ``todo`` already stored (failed ones) when the
    suite starts: a record that differs later was stored by another driver meanwhile."""
    if claims is None:
        return {}
    out: dict[str, Any] = {}
    for cfg in todo:
        stored = store.get(cfg.run_id)
        if stored is not None:
            out[cfg.run_id] = stored.finished_at
    return out


def _warn_if_lost(claims: Any, cfg: RunConfig, out: Any) -> None:
    """Says so when this driver's claim on ``cfg`` was taken over while it trained (it stalled
    past its lease): another driver may have trained the run too. The record is stored either
    way (the store keeps one record per run id, a finished one over a failed one)."""
    if claims is None or out is None or cfg.run_id not in getattr(claims, "lost", ()):
        return
    print(
        f"warning: the claim on run {cfg.run_id} ({cfg.variant}/{cfg.task}/seed {cfg.seed}) "
        "expired while it trained and another driver took it over, so it may have trained "
        "twice; lengthen LORABENCH_CLAIM_LEASE_S if this driver can stall (a suspended "
        "process, an unreachable database, clocks set apart)",
        file=out,
    )


def _run_suite(
    suite: SuiteConfig,
    store: RecordStore,
    stop: _StopSignals,
    progress: bool,
    keep_adapters: bool,
    out: Any,
    cache: RunCache | None,
    configs: list[RunConfig] | None,
    parallel: _Parallel | None = None,
) -> list[RunRecord]:
    from tqdm import tqdm

    from lorabench.results.claims import left_to_others

    cache = cache or RunCache()
    finished = store.finished_ids()
    if configs is None:
        configs = resolve_suite(suite, cache, finished=finished)
    todo = [c for c in configs if c.run_id not in finished]
    log = LogSettings(suite.log_kinds, Path(suite.out))
    try:
        require_log_backends(log.kinds)  # a missing tensorboard: stop before anything trains
    except LogSettingError as exc:
        raise SuiteInputError(str(exc)) from None
    check_budgets(todo, cache)  # before any run trains: one budget for all, one message
    if out is not None:
        skipped = len(configs) - len(todo)
        print(
            f"suite {suite.name or '(unnamed)'}: {len(configs)} runs "
            f"({len(suite.variants)} variant configs x {len(suite.tasks)} tasks "
            f"x {len(suite.seeds)} seeds), "
            f"budget {suite.budget_text}"
            + (f"; {skipped} already finished, skipped" if skipped else ""),
            file=out,
        )
        for line in data_changes(todo, store):
            print(line, file=out)
        if todo and log.kinds:
            print(f"training logs: {log.describe()}", file=out)
    adapter_root = Path(suite.out) / "adapters" if keep_adapters else None
    new: dict[str, RunRecord] = {}
    # Bars on a terminal; elsewhere (piped, CI) their redraws are escape sequences and noise, so
    # one plain line per run instead.
    bars = progress and progress_bars()
    lines = progress and not bars and out is not None
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not bars, dynamic_ncols=True)
    claims = _claim_keeper(store)
    # Records another driver stores from now on are its runs, not to redo here.
    since = _stored_before(todo, store, claims)
    if claims is not None:
        claims.start()  # renews this driver's claims while its runs train
    try:
        if parallel is not None:
            _run_parallel(
                todo,
                parallel,
                store,
                stop,
                claims,
                new,
                bar,
                lines,
                out,
                adapter_root,
                log,
                getattr(suite, "device", None),
                since,
            )
        for index, cfg in enumerate(todo if parallel is None else [], 1):
            if not _take(cfg, claims, store, since):
                continue
            bar.set_postfix_str(f"{cfg.variant}/{cfg.task}/seed {cfg.seed}")
            started = time.perf_counter()
            record = execute_run(
                cfg, progress=bars, cache=cache, adapter_root=adapter_root, log=log,
                device=suite.device,
            )  # fmt: skip
            _warn_if_lost(claims, cfg, out)
            with stop.deferred():  # a signal now waits until the record is stored whole
                store.add(record)
                new[cfg.run_id] = record
            if claims is not None:
                claims.release(cfg.run_id)
            bar.update(1)
            if lines:
                line = run_line(record, index, len(todo), time.perf_counter() - started)
                print(line, file=out, flush=True)
            if record.status == "failed" and out is not None:
                bar.write(
                    f"run {cfg.run_id} ({cfg.variant}/{cfg.task}/seed {cfg.seed}) failed: "
                    f"{error_message(record.error)}",
                    file=out,
                )
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM: every record stored so far stays; say how many, and how to resume.
        signum = getattr(exc, "signum", signal.SIGINT)
        where = getattr(store, "name", "the results database")
        message = _interrupted_message(signum, len(configs) - len(todo), new, len(configs), where)
        raise SuiteInterrupted(message, signum=signum) from None
    finally:
        bar.close()
        if claims is not None:
            claims.stop()  # this driver's unfinished runs are free for the next one at once
    records: list[RunRecord] = []
    for cfg in configs:
        record = new.get(cfg.run_id) or store.get(cfg.run_id)
        if record is not None:
            records.append(record)
    if out is not None:
        print(format_summary(records), file=out)
        others = left_to_others(claims.skipped) if claims is not None else None
        if others:
            print(others, file=out)
    return records


# A worker process that dies mid-run (killed, out of memory) has its run retried once in a fresh
# worker: a one-off kill should not cost a result, a run that kills its worker every time should
# not stall the suite.
WORKER_DEATH_RETRIES = 1


def _run_parallel(
    todo: list[RunConfig],
    parallel: _Parallel,
    store: RecordStore,
    stop: _StopSignals,
    claims: Any,
    new: dict[str, RunRecord],
    bar: Any,
    lines: bool,
    out: Any,
    adapter_root: Path | None,
    log: LogSettings,
    suite_device: str | None = None,
    since: Mapping[str, Any] | None = None,
) -> None:
    """Trains ``todo`` in worker processes, or Ray actors, storing each record here as it
    comes back (into ``new`` too); a run is claimed when it is handed to a worker, released when
    stored. ``suite_device``: the suite's device (default ``LORABENCH_DEVICE``, else CUDA when
    present, else CPU), spread over the workers by
    :func:`~lorabench.harness.workers.plan_workers` (on Ray: one GPU per actor)."""
    from collections import deque

    from lorabench.harness.workers import WorkerPool, plan_workers, worker_setup_for

    if not todo:
        return  # nothing to train: no worker started, no Ray instance either
    device = str(suite_device) if suite_device else str(default_device())
    # A custom task (a YAML file) is registered here only: the workers get its spec too.
    setup = worker_setup_for((cfg.task for cfg in todo), parallel.setup)
    pool: Any
    if parallel.executor == "ray":
        from lorabench.harness.ray_pool import RayExecutorError, open_ray_pool

        try:
            pool = open_ray_pool(
                parallel.address, parallel.workers, parallel.threads, device,
                setup=setup, adapter_root=adapter_root, log=log,
            )  # fmt: skip
        except RayExecutorError as exc:  # before any run trains
            raise SuiteInputError(str(exc)) from None
        slots = pool.slots
    else:
        slots = plan_workers(parallel.workers or 1, parallel.threads, device)
        pool = WorkerPool(slots, setup=setup, adapter_root=adapter_root, log=log)
    queue = deque(todo)
    by_id = {cfg.run_id: cfg for cfg in todo}
    deaths: dict[str, int] = {}
    started: dict[str, tuple[float, str]] = {}  # run_id -> (perf_counter, ISO time)
    done = 0
    if out is not None and todo:
        where = ", ".join(
            f"{s.index + 1}: {s.threads} thread{'s' if s.threads > 1 else ''}"
            + (f" on {s.device}" if s.device and s.device != "cpu" else "")
            for s in slots
        )
        kind = "Ray workers" if parallel.executor == "ray" else "workers"
        print(f"{len(slots)} {kind} ({where})", file=out, flush=True)

    def next_run() -> RunConfig | None:
        while queue:
            cfg = queue.popleft()
            if _take(cfg, claims, store, since):
                return cfg
        return None

    with pool:
        while True:
            for slot in pool.idle():
                cfg = next_run()
                if cfg is None:
                    break
                started[cfg.run_id] = (time.perf_counter(), _now())
                pool.submit(slot, cfg.run_id, cfg.to_dict())
                if lines:
                    print(
                        f"[start] {_config_label(cfg)} {cfg.task} seed {cfg.seed} "
                        f"(worker {slot + 1})",
                        file=out,
                        flush=True,
                    )
            active = pool.busy()
            if not active:
                break
            bar.set_postfix_str(
                " | ".join(
                    f"{by_id[job].variant}/{by_id[job].task}/seed {by_id[job].seed}"
                    for job in active.values()
                )
            )
            for event in pool.wait(timeout=5.0):
                cfg = by_id[event.job]
                if event.kind == "died" and deaths.get(cfg.run_id, 0) < WORKER_DEATH_RETRIES:
                    deaths[cfg.run_id] = deaths.get(cfg.run_id, 0) + 1
                    queue.appendleft(cfg)  # still claimed by this driver: next to go
                    if out is not None:
                        bar.write(
                            f"worker {event.slot + 1} died ({event.payload}) while training "
                            f"{cfg.run_id} ({cfg.variant}/{cfg.task}/seed {cfg.seed}); "
                            "retrying it once in a new worker",
                            file=out,
                        )
                    continue
                began, began_at = started.pop(cfg.run_id)
                if event.kind == "record":
                    record = RunRecord.from_json(event.payload)
                elif event.kind == "died":
                    record = _failed_record(
                        cfg,
                        f"the worker process training this run died twice ({event.payload}), "
                        "perhaps killed for memory; run it with fewer --workers or a smaller "
                        "--batch-size",
                        device,
                        began_at,
                    )
                else:
                    record = _failed_record(cfg, event.payload, device, began_at)
                _warn_if_lost(claims, cfg, out)
                with stop.deferred():  # a signal now waits until the record is stored whole
                    store.add(record)
                    new[cfg.run_id] = record
                if claims is not None:
                    claims.release(cfg.run_id)
                done += 1
                bar.update(1)
                if lines:
                    seconds = time.perf_counter() - began
                    print(run_line(record, done, len(todo), seconds), file=out, flush=True)
                if record.status == "failed" and out is not None:
                    bar.write(
                        f"run {cfg.run_id} ({cfg.variant}/{cfg.task}/seed {cfg.seed}) failed: "
                        f"{error_message(record.error)}",
                        file=out,
                    )


def _failed_record(cfg: RunConfig, error: str, device: str, started_at: str) -> RunRecord:
    """The record of a run that ended without its own record (its worker died)."""
    from lorabench.models import model_name

    return RunRecord(
        run_id=cfg.run_id,
        status="failed",
        variant=cfg.variant,
        task=cfg.task,
        model=model_name(cfg.model),
        seed=cfg.seed,
        config={**cfg.to_dict(), "device": device},
        tag=cfg.tag,
        budget=cfg.budget.to_dict(),
        data_fingerprint=cfg.data_fingerprint,
        model_fingerprint=cfg.model_fingerprint,
        environment=collect_environment(),
        started_at=started_at,
        finished_at=_now(),
        error=error,
    )


def _config_label(cfg: RunConfig) -> str:
    """A run's variant with its overrides, as :func:`run_line` shows it: ``lora(r=2)``."""
    overrides = cfg.variant_config or {}
    if not overrides:
        return cfg.variant
    return f"{cfg.variant}(" + ",".join(f"{k}={overrides[k]}" for k in sorted(overrides)) + ")"


def error_message(error: str | None) -> str:
    """A failed record's error without its traceback: every line of the message, since the fix
    is often on a later line (the pip command of a missing model, the --data-dir advice)."""
    if not error:
        return ""
    return error.split("\nTraceback (most recent call last", 1)[0].strip()


def run_line(record: RunRecord, index: int, total: int, seconds: float) -> str:
    """A finished run on one plain line (the progress of a suite outside a terminal):
    ``[2/8] lora(r=2) rte seed 0: accuracy 0.6532 (41.2 s)``."""
    head = f"[{index}/{total}] {_variant_label(record)} {record.task} seed {record.seed}"
    if record.status == "finished" and record.score is not None:
        outcome = f"{record.primary_metric or 'score'} {record.score:.4f}"
    else:
        outcome = record.status
    return f"{head}: {outcome} ({seconds:.1f} s)"


def _variant_label(record: RunRecord) -> str:
    overrides = record.config.get("variant_config") or {}
    if not overrides:
        return record.variant
    return f"{record.variant}(" + ",".join(f"{k}={overrides[k]}" for k in sorted(overrides)) + ")"


def summary_table(records: list[RunRecord]):
    """One row per (variant config, task): score mean and std over seeds, runs, failures,
    trainable parameters and mean training seconds."""
    import pandas as pd

    rows = [
        {
            "variant": _variant_label(r),
            "task": r.task,
            "metric": r.primary_metric,
            "score": r.score if r.status == "finished" else None,
            "finished": r.status == "finished",
            "trainable_params": r.trainable_params,
            "train_seconds": (r.spent or {}).get("train_seconds"),
        }
        for r in records
    ]
    columns = [
        "variant",
        "task",
        "metric",
        "score_mean",
        "score_std",
        "seeds",
        "failed",
        "trainable_params",
        "train_seconds",
    ]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["variant", "task"], sort=False)
    table = grouped.agg(
        metric=("metric", "first"),
        score_mean=("score", "mean"),
        score_std=("score", "std"),
        seeds=("finished", "sum"),
        failed=("finished", lambda s: int((~s).sum())),
        trainable_params=("trainable_params", "max"),
        train_seconds=("train_seconds", "mean"),
    ).reset_index()
    return table[columns]


def format_summary(records: list[RunRecord]) -> str:
    """The summary table as text: ``score`` is mean ± std over seeds (std blank for one seed)."""
    table = summary_table(records)
    if table.empty:
        return "no runs to summarise"

    def score(row) -> str:
        if row.score_mean != row.score_mean:  # NaN: no finished run
            return "-"
        std = "" if row.score_std != row.score_std else f" ± {row.score_std:.4f}"
        return f"{row.score_mean:.4f}{std}"

    shown = table.assign(
        score=table.apply(score, axis=1),
        trainable_params=table.trainable_params.map(lambda n: f"{int(n):,}"),
        train_seconds=table.train_seconds.map(lambda s: "-" if s != s else f"{s:.1f}"),
    )[
        [
            "variant",
            "task",
            "metric",
            "score",
            "seeds",
            "failed",
            "trainable_params",
            "train_seconds",
        ]
    ]
    return shown.to_string(index=False)
