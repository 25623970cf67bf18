"""``lorabench run``: a suite of runs (variants x tasks x seeds) under one shared budget."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lorabench.cli.common import (
    LIST_FORMS,
    add_list_argument,
    add_threads_argument,
    out_dir_error,
    set_threads,
    threads_error,
)

HELP = "run a benchmark suite: variants x tasks x seeds under one compute budget"
_DESCRIPTION = """Train and evaluate adapter variants on tasks, every run under the same compute
budget, and store one record per run in a results database (resumable: finished runs are
skipped when the same command runs again). Ends with a comparison table.

The suite comes from a preset (--preset), a YAML file (--config) or flags; flags given with a
preset or a file override its settings.

examples:
  lorabench run --preset quick                 # offline, a few minutes on a laptop CPU
  lorabench run --variants lora,dora,adalora --tasks rte,mrpc --seeds 3 \\
      --budget steps=500 --data-dir /data/glue --out runs/
  lorabench run --config suite.yaml --seeds 0,5,7 --budget seconds=600
  lorabench run --preset quick --variant-config lora.r=16 --variant-config adalora.target_r=2
  lorabench run --preset quick --train vera.learning_rate=1e-2   # one variant's own recipe
  lorabench run --preset quick --recipes none    # no paper recipes: the suite's settings alone
  lorabench run --config suite.yaml --results postgresql://user@host/lorabench
  lorabench run --config suite.yaml --dry-run  # list the runs, train nothing

budgets (shared by every run): steps=N (optimiser steps), tokens=N (non-padding training
tokens), seconds=N (training wall-clock), flops=N (training FLOPs, e.g. flops=2e15).
seeds: a count (--seeds 3 means 0,1,2) or a list (--seeds 0,5,7; only seed 7: --seeds 7,).
presets:
{presets}
threads: on a machine shared with other jobs, --threads 1 is often several times faster than
torch's default of one thread per core (its threads spin while waiting for each other).
workers: --workers N trains N runs at once in separate processes, sharing --threads; several
commands on one results database never train a run twice (each claims its runs there).
--executor ray trains them on a Ray cluster instead (--address auto: the cluster this machine
joined with 'ray start'); this command still stores every record.

stopping: Ctrl-C or SIGTERM stops after saying how many runs are finished; every finished run
is stored as it ends, so re-running the same command resumes with the others.

exit codes: 0 every run finished, 1 some run failed (its error is stored), 2 a bad flag, suite
file, input, budget or results database (found before anything trains), 130 stopped by Ctrl-C,
143 stopped by SIGTERM."""


def _preset_lines() -> str:
    """One help line per shipped preset, read from the preset files (so a new one is listed)."""
    from lorabench.harness.suite import preset_descriptions

    presets = preset_descriptions()
    width = max((len(n) for n in presets), default=0)
    return "\n".join(f"  {name:<{width}}  {text}".rstrip() for name, text in presets.items())


DESCRIPTION = _DESCRIPTION.replace("{presets}", _preset_lines())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of ``lorabench run`` to ``parser``, in three groups (what to run, the
    training recipe, output); the help shows the defaults of :class:`TrainConfig`."""
    from lorabench.harness.config import DEFAULT_BUDGET, PRECISIONS, TrainConfig
    from lorabench.harness.prepared import DEVICE_CHOICES
    from lorabench.harness.suite import RECIPE_CHOICES, list_presets

    source = parser.add_argument_group("what to run")
    source.add_argument(
        "--preset",
        metavar="NAME",
        help=f"a suite shipped with lorabench: {', '.join(list_presets())} (described above)",
    )
    source.add_argument(
        "--config",
        metavar="YAML",
        help="a suite file (see docs: name, variants, tasks, seeds, budget, train, ...)",
    )
    add_list_argument(
        source, "--variants", help="variant names, e.g. lora,dora,adalora,vera,dylora"
    )
    add_list_argument(
        source,
        "--tasks",
        help="task names (lorabench list tasks) or custom task YAML paths, e.g. rte,mrpc",
    )
    # Not a CommaList: one number is a count here, so the text is kept for parse_seeds.
    source.add_argument(
        "--seeds",
        metavar="N|LIST",
        nargs="+",
        action="extend",
        help=f"a count (3 -> 0,1,2) or a list (0,5,7; only seed 7: 7,); default 1 ({LIST_FORMS})",
    )
    source.add_argument(
        "--budget",
        metavar="KIND=N",
        help=f"steps=500 | tokens=1e6 | seconds=600 | flops=2e15 (default {DEFAULT_BUDGET})",
    )
    source.add_argument(
        "--variant-config",
        metavar="VARIANT.FIELD=VALUE",
        action="append",
        default=[],
        help=(
            "override a variant setting for this suite, e.g. lora.r=16 "
            "(repeatable; '*.dropout=0.1' for all)"
        ),
    )
    source.add_argument(
        "--train",
        metavar="VARIANT.SETTING=VALUE",
        action="append",
        default=[],
        help=(
            "a training setting for one variant's runs only, over the suite's, e.g. "
            "vera.learning_rate=1e-2 (repeatable; settings as in train: of a suite file)"
        ),
    )
    source.add_argument(
        "--recipes",
        choices=list(RECIPE_CHOICES),
        help=(
            "paper (the default): each variant trains with its paper's recipe relative to "
            "LoRA's (VeRA's larger learning rate, AdaLoRA's schedule, DyLoRA's alpha; "
            "'lorabench list variants' shows them) under the settings given here; none: every "
            "variant with the suite's settings as written"
        ),
    )
    source.add_argument(
        "--model",
        metavar="PATH|NAME",
        help="model folder or hub name (default: packaged all-MiniLM-L6-v2)",
    )
    source.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the task data (GLUE TSV folders, local HF copies)",
    )

    defaults = TrainConfig()  # help shows the defaults where they are written
    train = parser.add_argument_group("training recipe (shared by every run)")
    train.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        help=f"adapter learning rate (default {defaults.learning_rate:g})",
    )
    train.add_argument(
        "--head-lr", type=float, metavar="LR", help="learning rate of the task head (default: --lr)"
    )
    train.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help=f"training batch size (default {defaults.batch_size})",
    )
    train.add_argument(
        "--max-length",
        type=int,
        metavar="N",
        help=f"truncate inputs to N tokens (default {defaults.max_length})",
    )
    train.add_argument(
        "--eval-every",
        type=int,
        metavar="STEPS",
        help="evaluate every STEPS steps (default: only at the end)",
    )
    train.add_argument(
        "--max-train-examples", type=int, metavar="N", help="use the first N training examples"
    )
    train.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32 (the default), or bf16/fp16: the forward pass under autocast while the "
        "adapter, head and optimiser state stay float32 (fp16 with a gradient scaler); part of "
        "each run's identity",
    )
    train.add_argument(
        "--grad-accum",
        type=int,
        metavar="N",
        help="N micro-batches of --batch-size per optimiser step (default 1); budgets count "
        "optimiser steps and every micro-batch's tokens",
    )
    train.add_argument(
        "--max-eval-examples",
        type=int,
        metavar="N",
        help="evaluate on the first N examples of each eval split",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        metavar="DIR",
        help="output folder: results.db, adapters/<run_id>/ and logs/<run_id>.csv (default runs/)",
    )
    add_list_argument(
        output,
        "--log",
        metavar="KINDS",
        help="training logs, a row per step: csv (the default; OUT/logs/<run_id>.csv), "
        "tensorboard (OUT/tensorboard/<run_id>/; pip install tensorboard), none, or both: "
        "csv,tensorboard",
    )
    output.add_argument(
        "--results",
        metavar="URL|PATH",
        help="results database: a path or any SQLAlchemy URL (default OUT/results.db)",
    )
    output.add_argument(
        "--tag", help="a free label stored with every record (filter reports with it)"
    )
    output.add_argument(
        "--no-adapters",
        action="store_true",
        help="do not keep trained adapters under OUT/adapters/",
    )
    output.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs the suite would do (and which are finished), then stop",
    )
    output.add_argument(
        "--quiet", action="store_true", help="no progress bars; print only the summary table"
    )
    add_threads_argument(output)
    output.add_argument(
        "--device",
        metavar="DEVICE",
        help=f"where the runs compute: {DEVICE_CHOICES} (default: CUDA when present, else the "
        "CPU); not part of a run's identity; an unavailable one is refused before any work",
    )
    output.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help=(
            "train N runs at once, each in its own process (default 1): the --threads (default: "
            "all cores) are divided between them, or on CUDA one worker per GPU (round-robin: "
            "several per GPU when N is larger). On a CPU, --workers 2 --threads 1 often beats "
            "--workers 1 --threads 2"
        ),
    )
    output.add_argument(
        "--executor",
        choices=("local", "ray"),
        help=(
            "where the runs train: local (the default: this process, or --workers processes "
            'on this machine) or ray (actors on a Ray cluster; pip install "lorabench[ray]"). '
            "With ray, each run reserves --threads CPUs (default 1), or one GPU with "
            "--device cuda, and --workers defaults to as many runs as the cluster holds at once; "
            "this command still stores every record"
        ),
    )
    output.add_argument(
        "--address",
        metavar="ADDRESS",
        help=(
            "the Ray cluster for --executor ray: auto (the cluster this machine joined with "
            "'ray start'), HOST:6379 (its head node) or ray://HOST:10001 (Ray Client). Default: "
            "RAY_ADDRESS or a cluster started here with 'ray start', else a new Ray instance on "
            "this machine. Every node needs lorabench and the model, data and --out folders at "
            "the same paths"
        ),
    )


_TRAIN_FLAGS = {
    "lr": "learning_rate",
    "head_lr": "head_learning_rate",
    "batch_size": "batch_size",
    "max_length": "max_length",
    "eval_every": "eval_every",
    "max_train_examples": "max_train_examples",
    "max_eval_examples": "max_eval_examples",
    "precision": "precision",
    "grad_accum": "grad_accum",
}


def build_suite(args: argparse.Namespace):
    """The :class:`SuiteConfig` the arguments describe (preset/file first, flags on top)."""
    from lorabench.harness.suite import (
        SuiteConfig,
        SuiteConfigError,
        apply_overrides,
        apply_train_overrides,
    )

    if args.preset and args.config:
        raise SuiteConfigError("give --preset or --config, not both")
    base: dict = {}
    if args.preset or args.config:
        loaded = (
            SuiteConfig.preset(args.preset) if args.preset else SuiteConfig.from_yaml(args.config)
        )
        base = loaded.to_dict()
    elif not (args.variants and args.tasks):
        raise SuiteConfigError(
            "nothing to run: give --preset quick, --config suite.yaml, "
            "or both --variants and --tasks (e.g. --variants lora,dora --tasks rte)"
        )
    flags = {
        "variants": args.variants,
        "tasks": args.tasks,
        "seeds": seeds_text(args.seeds),
        "budget": args.budget,
        "model": args.model,
        "data_dir": args.data_dir,
        "out": args.out,
        "results": args.results,
        "tag": args.tag,
        "log": args.log,
        # getattr: a Namespace built by hand (tests, scripts) may not have it.
        "recipes": getattr(args, "recipes", None),
        "device": getattr(args, "device", None),
    }
    data = {**base, **{k: v for k, v in flags.items() if v is not None}}
    train = dict(data.get("train") or {})
    for flag, key in _TRAIN_FLAGS.items():
        # getattr: a Namespace built by hand (tests, scripts) may lack the newer flags.
        value = getattr(args, flag, None)
        if value is not None:
            train[key] = value
    data["train"] = train
    if base:
        given_train = {key for flag, key in _TRAIN_FLAGS.items() if getattr(args, flag, None)}
        data["tasks"] = _tasks_with_flags(
            base.get("tasks") or [], data["tasks"], budget=args.budget, train_keys=given_train
        )
    where = f"--preset {args.preset}" if args.preset else (args.config or "command line")
    suite = SuiteConfig.from_dict(data, where=where)
    if args.variant_config:
        apply_overrides(suite.variants, args.variant_config)
        suite.validate(where="--variant-config")
    if args.train:
        apply_train_overrides(suite.variants, args.train)
        suite.validate(where="--train")
    return suite


def _tasks_with_flags(
    base_tasks: list, tasks: Any, *, budget: str | None, train_keys: set[str]
) -> list:
    """The suite's task entries after the command line: ``--tasks`` picks tasks keeping the
    settings the preset or file gave them, and ``--budget`` or a training flag (``--lr``...)
    wins over a task's own value as it does over the suite's (flags are explicit)."""
    own = {
        name: dict(settings or {})
        for entry in base_tasks
        if isinstance(entry, dict)
        for name, settings in entry.items()
    }
    entries = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [next(iter(e)) if isinstance(e, dict) and len(e) == 1 else e for e in entries]
    out: list = []
    for name in names:
        settings = dict(own.get(name) or {}) if isinstance(name, str) else None
        if not settings:
            out.append(name)
            continue
        if budget is not None:
            settings.pop("budget", None)
        task_train = {k: v for k, v in (settings.get("train") or {}).items() if k not in train_keys}
        settings = {**settings, "train": task_train} if task_train else settings
        if not task_train:
            settings.pop("train", None)
        out.append({name: settings} if settings else name)
    return out


def device_error(suite) -> str | None:
    """Why ``suite`` cannot run on this machine (an unavailable ``device``, or a precision that
    device cannot compute in), naming what is available; None when it can."""
    from lorabench.harness.config import BenchmarkConfigError
    from lorabench.harness.prepared import (
        check_precision,
        check_variant_precision,
        resolve_device,
    )

    try:
        device = resolve_device(suite.device)
        precisions = {suite.train.precision}
        for task in suite.tasks:
            base = suite.task_train(task)
            precisions.add(base.precision)
            precisions.update(e.train_config(base).precision for e in suite.variants)
        for precision in sorted(precisions):
            check_precision(precision, device)
        for task in suite.tasks:
            for entry in suite.variants:
                precision = suite.run_config(entry, task, 0).train.precision
                check_variant_precision(entry.variant, precision)
    except BenchmarkConfigError as exc:
        return str(exc)
    return None


def seeds_text(seeds: list[str] | str | None) -> str | None:
    """``--seeds`` as :func:`~lorabench.harness.suite.parse_seeds` reads it: one token as given
    (``3`` is a count, ``0,5,7`` or ``7,`` a list), several tokens (``--seeds 0 5 7``, a repeated
    flag) joined into a list."""
    if seeds is None or isinstance(seeds, str):
        return seeds
    return seeds[0] if len(seeds) == 1 else ",".join(seeds)


def _stored_finished_ids(location: str) -> set[str]:
    """The finished runs of an existing results database (empty when there is none yet or it
    cannot be read: the store opened below reports that), read without creating anything."""
    from lorabench.results.store import ResultStore, ResultStoreError

    try:
        with ResultStore(location, create=False) as store:
            return store.finished_ids()
    except ResultStoreError:
        return set()


def run(args: argparse.Namespace) -> int:
    """Runs ``lorabench run`` (or, with ``--dry-run``, lists its runs and whether each is
    finished); returns the exit code (0 done, 1 some run failed, 2 a bad flag, suite, input,
    budget or results database, found before anything trains). Ctrl-C and SIGTERM propagate as
    :class:`~lorabench.harness.runner.SuiteInterrupted` (the entry point turns them into 130
    and 143)."""
    from lorabench.harness.suite import SuiteConfigError

    try:
        suite = build_suite(args)
    except SuiteConfigError as exc:
        print(f"lorabench run: {exc}", file=sys.stderr)
        return 2
    if threads_error(args.threads):
        print(f"lorabench run: {threads_error(args.threads)}", file=sys.stderr)
        return 2
    from lorabench.harness.workers import workers_error

    workers = getattr(args, "workers", None)  # a Namespace built by hand may not have it
    if workers_error(workers):
        print(f"lorabench run: {workers_error(workers)}", file=sys.stderr)
        return 2
    from lorabench.harness.runner import executor_error

    executor = getattr(args, "executor", None) or "local"
    address = getattr(args, "address", None)
    problem = executor_error(executor, address)  # Ray missing: said before any work
    if problem:
        print(f"lorabench run: {problem}", file=sys.stderr)
        return 2
    # OUT holds the default results database and the adapters; a file there would otherwise
    # end in a FileExistsError traceback when the store or the first adapter is written.
    if suite.results is None or not args.no_adapters:
        problem = out_dir_error(suite.out)
        if problem:
            print(f"lorabench run: {problem}", file=sys.stderr)
            return 2
    if not args.dry_run:
        # Before the store is created: a rejected command leaves nothing behind.
        try:
            suite.check_inputs()
        except SuiteConfigError as exc:
            print(f"lorabench run: {exc}", file=sys.stderr)
            return 2
        problem = device_error(suite)
        if problem:
            print(f"lorabench run: {problem}", file=sys.stderr)
            return 2

    from lorabench.harness.runner import (
        RunCache,
        SuiteInputError,
        data_changes,
        resolve_suite,
        run_suite,
    )
    from lorabench.results.store import ResultStore, ResultStoreError

    # Every run resolved and checked against its model's shapes before the store is created: a
    # rejected suite leaves nothing behind and names all its problems at once. Resolving reads
    # each task's data at most once (to fingerprint it); nothing trains.
    cache = RunCache()  # shared with run_suite below: nothing is resolved or loaded twice
    try:
        configs = resolve_suite(suite, cache, finished=_stored_finished_ids(suite.results_location))
    except SuiteInputError as exc:
        print(f"lorabench run: {exc}", file=sys.stderr)
        return 2
    try:
        store = ResultStore(suite.results_location)
    except ResultStoreError as exc:
        print(f"lorabench run: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        finished = store.finished_ids()
        print(
            f"suite {suite.name or '(unnamed)'}: {len(configs)} runs, budget {suite.budget_text}, "
            f"results {store.name}"
        )
        for line in data_changes([c for c in configs if c.run_id not in finished], store):
            print(line)
        for cfg in configs:
            state = "finished" if cfg.run_id in finished else "to run"
            overrides = ",".join(f"{k}={v}" for k, v in sorted(cfg.variant_config.items()))
            print(
                f"  {cfg.run_id}  {cfg.variant}{f'({overrides})' if overrides else ''}  "
                f"{cfg.task}  "
                f"seed {cfg.seed}  data {cfg.data_fingerprint[:8]}  [{state}]"
            )
        return 0
    set_threads(args.threads)
    progress = not args.quiet
    try:
        records = run_suite(
            suite,
            store,
            progress=progress,
            keep_adapters=not args.no_adapters,
            stream=sys.stdout,
            cache=cache,
            configs=configs,
            workers=workers,
            threads=args.threads,
            executor=executor,
            address=address,
        )
    except SuiteInputError as exc:
        print(f"lorabench run: {exc}", file=sys.stderr)
        return 2
    print(f"results: {store.name}")
    failed = [r for r in records if r.status == "failed"]
    if failed:
        print(
            f"{len(failed)} run(s) failed; their errors are in the results database",
            file=sys.stderr,
        )
        return 1
    return 0
