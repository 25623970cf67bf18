"""``lorabench search``: Optuna search per variant x task under an equal spend budget."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lorabench.cli.common import add_list_argument, add_threads_argument, set_threads, threads_error

HELP = "search hyper-parameters (rank, alpha, lr, ...) per variant and task under a spend budget"
DESCRIPTION = """Search each variant's hyper-parameters on each task with Optuna, one study per
variant x task. A study stops when the total spend of its trials (pruned and failed ones included)
reaches --budget, so a slower variant gets fewer trials. The best configuration is then re-run on
--confirm-seeds fresh seeds; those runs are what reports compare.

examples:
  lorabench search --variants lora,dora --tasks rte --budget seconds=1800 --trial-budget steps=200
  lorabench search --variants lora --tasks rte --budget steps=5000 --sampler random --pruner none
  lorabench search --variants lora,vera --tasks mrpc --budget steps=4000 --multi-objective
  lorabench search --config search.yaml                 # everything below can live in YAML too

several workers, one study and one shared budget:
  lorabench search ... --workers 4 --threads 4   # 4 processes here, 1 thread each; confirms once
  lorabench search ... --executor ray --address auto --device cuda \
      --storage postgresql://user@host/db        # a worker per GPU of the cluster
  lorabench search ... --storage journal:search.journal          # processes started by hand
  lorabench search ... --storage postgresql://user@host/db --study rank-rte   # on every machine
  (started by hand: give them --confirm-seeds 0, then, after them, run the same command once
  with --confirm-seeds 3 to confirm the best)

Before any trial trains, every study is checked: its search space, a budget that covers at least
one trial (estimated from the task's batches when --budget and --trial-budget differ in unit), the
storage and the results database, and, when joining a study, the same settings (budget included).

Re-running a command continues its studies. Ctrl-C stops cleanly; the interrupted trial is
recorded as failed and its spend stays counted.

Outputs, in the results database: the run record of every trial (role "trial", its study, trial
number and seed) and confirmation run (role "confirm"); per study a summary with the best rank,
score vs rank of every trial, parameter importances and the Pareto front, read with
lorabench.search.summary.load_search_summaries(PATH). --show-space prints the spaces searched.

YAML config (keys as the long options, plus per-variant search spaces and fixed settings):
  budget: seconds=1800
  trial_budget: steps=200
  train: {learning_rate: 5e-4, eval_every: 50, max_train_examples: 2000}
  variant_config: {lora: {target_modules: [query, value]}}
  space:
    lora:
      r: {type: categorical, choices: [2, 4, 8, 16]}
      dropout: null                 # not searched: the default applies
      alpha: 16                     # fixed
      train.learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}"""

DEFAULT_RESULTS = "runs/results.db"
_YAML_KEYS = {
    "variants",
    "tasks",
    "budget",
    "trial_budget",
    "train",
    "model",
    "data_dir",
    "variant_config",
    "space",
    "sampler",
    "pruner",
    "multi_objective",
    "recipes",
    "seed",
    "confirm_seeds",
    "storage",
    "study",
    "results",
    "heartbeat_interval",
    "grace_period",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of ``lorabench search`` to ``parser``; they default to None so that a YAML
    ``--config`` value shows through (the defaults live in :class:`SearchConfig`)."""
    from lorabench.search.loop import DEFAULT_TRIAL_BUDGET

    add_list_argument(
        parser, "--variants", help="variant names, e.g. lora,dora (see 'lorabench list variants')"
    )
    add_list_argument(
        parser, "--tasks", help="task names, e.g. rte,mrpc (see 'lorabench list tasks')"
    )
    parser.add_argument(
        "--budget", help="total spend of each study: steps=N, tokens=N, seconds=N or flops=N"
    )
    parser.add_argument(
        "--trial-budget",
        dest="trial_budget",
        help=f"training budget of one trial (default {DEFAULT_TRIAL_BUDGET})",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML file with any of the settings below and search-space overrides",
    )
    parser.add_argument(
        "--model", help="model name or path (default: the packaged all-MiniLM-L6-v2)"
    )
    parser.add_argument(
        "--data-dir", dest="data_dir", help="folder with the task data (e.g. GLUE TSVs)"
    )
    parser.add_argument("--sampler", choices=["tpe", "random", "grid"], help="default tpe (seeded)")
    parser.add_argument(
        "--pruner", choices=["hyperband", "sha", "median", "none"], help="default hyperband"
    )
    parser.add_argument(
        "--recipes",
        choices=["paper", "none"],
        help=(
            "paper (default): each trial applies its variant's paper recipe (VeRA's 10x learning "
            "rate, ...) under the values fixed or sampled; none: the settings as written"
        ),
    )
    parser.add_argument(
        "--multi-objective",
        dest="multi_objective",
        action="store_true",
        default=None,
        help=(
            "maximise the score and minimise trainable parameters; "
            "report the Pareto front (no pruning)"
        ),
    )
    parser.add_argument(
        "--seed", type=int, help="training seed of every trial and the sampler's seed (default 0)"
    )
    parser.add_argument(
        "--confirm-seeds",
        dest="confirm_seeds",
        type=int,
        help="fresh seeds the best config is re-run on (default 3)",
    )
    parser.add_argument(
        "--results", help=f"results database, path or URL (default {DEFAULT_RESULTS})"
    )
    parser.add_argument(
        "--storage",
        help=(
            "Optuna storage: a SQLite path, journal:PATH, or a database URL "
            "(default: the results database)"
        ),
    )
    parser.add_argument(
        "--study",
        help="study name prefix; studies are named PREFIX/VARIANT/TASK (default lorabench)",
    )
    parser.add_argument(
        "--heartbeat",
        dest="heartbeat_interval",
        type=int,
        help=(
            "seconds between trial heartbeats (database storages); a worker silent for 3 beats "
            "has its trial failed (default 60)"
        ),
    )
    add_threads_argument(parser)
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help=(
            "run each study's trials in N processes on this machine, sharing its budget "
            "(default 1: this process); the --threads (default: this machine's cores) are "
            "divided between them, at least 1 each, and the best is confirmed once, after them"
        ),
    )
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help=(
            "where the trials compute: cpu, cuda, cuda:N or mps (default: CUDA when present, "
            "else the CPU); with --workers, cuda spreads the workers over the GPUs, and with "
            "--executor ray each worker gets a GPU of its own"
        ),
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        help=(
            "where the workers run: local (the default: this process, or --workers processes "
            'here) or ray (actors on a Ray cluster; pip install "lorabench[ray]"): each reserves '
            "--threads CPUs (default 1), or a GPU with --device cuda, --workers defaults to as "
            "many as the cluster holds, and every node must reach --storage and --results (a "
            "database server, or files on a shared file system)"
        ),
    )
    parser.add_argument(
        "--address",
        metavar="ADDRESS",
        help=(
            "the Ray cluster for --executor ray: auto (the cluster this machine joined with "
            "'ray start'), HOST:6379 or ray://HOST:10001; default: RAY_ADDRESS or a cluster "
            "started here, else a new Ray instance on this machine"
        ),
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final summary")
    parser.add_argument(
        "--show-space",
        dest="show_space",
        action="store_true",
        help=(
            "print each variant's search space (declared by the variant, with the YAML overrides) "
            "and exit"
        ),
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``lorabench search`` (or, with ``--show-space``, prints the spaces); returns the exit
    code (0 done, 1 a study stopped on a config or results error, 2 a bad setting, space,
    storage or database, found before any trial trains)."""
    import optuna

    from lorabench.harness.config import BenchmarkConfigError
    from lorabench.harness.prepared import RunCache
    from lorabench.harness.runner import executor_error
    from lorabench.results.store import ResultStore, ResultStoreError
    from lorabench.search.loop import prepare_search, run_search
    from lorabench.search.parallel import check_shareable, run_search_workers, workers_problem
    from lorabench.search.storage import check_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if threads_error(args.threads):
        print(f"error: {threads_error(args.threads)}", file=sys.stderr)
        return 2
    # A Namespace built by hand may lack the newer options.
    executor = getattr(args, "executor", None) or "local"
    address = getattr(args, "address", None)
    device = getattr(args, "device", None)
    workers = getattr(args, "workers", None)
    problem = executor_error(executor, address) or (
        None if workers is None else workers_problem(workers)
    )
    if problem is None and device is not None and executor == "local":
        problem = _device_problem(device)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if executor == "local":
        workers = workers or 1
    # Before the budget probes, so their timings see the threads the trials will use.
    set_threads(args.threads)
    if args.show_space:
        try:
            print(_spaces_text(_settings(args, need_budget=False)))
        except (BenchmarkConfigError, KeyError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    cache = RunCache()  # task data and base models, loaded once for every study and trial
    try:
        settings = _settings(args)
        configs = _search_configs(settings)
        # Every check (spaces, budgets, storages, study settings) before the first trial trains;
        # the storage's form first, before the results database is created beside it.
        check_storage(str(settings["storage"]))
        if executor == "ray" or workers > 1:
            check_shareable(str(settings["storage"]), str(settings["results"]))
        store = ResultStore(settings["results"])
        prepared = [prepare_search(cfg, cache=cache) for cfg in configs]
    except (BenchmarkConfigError, ResultStoreError, KeyError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    common = dict(results=settings["results"], store=store, progress=not args.quiet)
    if executor == "ray":
        from lorabench.harness.ray_pool import RayExecutorError
        from lorabench.search.ray_search import run_search_ray

        try:
            outcomes = run_search_ray(
                prepared,
                workers=workers,
                address=address,
                threads=args.threads,
                device=device,
                **common,
            )
        except RayExecutorError as exc:  # found before any trial trains
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (BenchmarkConfigError, ResultStoreError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        _print_summary(outcomes, settings["results"])
        return 0
    if workers > 1:
        try:
            outcomes = run_search_workers(
                prepared, workers=workers, threads=args.threads, device=device, **common
            )
        except (BenchmarkConfigError, ResultStoreError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        _print_summary(outcomes, settings["results"])
        return 0
    outcomes = []
    for p in prepared:
        try:
            outcomes.append(run_search(p, device=device, **common))
        except (BenchmarkConfigError, ResultStoreError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    _print_summary(outcomes, settings["results"])
    return 0


def _device_problem(device: str) -> str | None:
    """Why ``--device`` cannot compute here (naming the devices that can); None when it can."""
    from lorabench.harness.config import BenchmarkConfigError
    from lorabench.harness.prepared import resolve_device

    try:
        resolve_device(device)
    except BenchmarkConfigError as exc:
        return str(exc)
    return None


def _settings(args: argparse.Namespace, *, need_budget: bool = True) -> dict[str, Any]:
    """YAML settings overridden by command-line options."""
    from lorabench.harness.config import BenchmarkConfigError

    settings: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        from lorabench.harness.suite import read_yaml_text, yaml_problem

        if not args.config.is_file():
            raise BenchmarkConfigError(f"--config {args.config}: no such file")
        try:
            loaded = yaml.safe_load(read_yaml_text(args.config, "--config")) or {}
        except yaml.YAMLError as exc:
            raise BenchmarkConfigError(
                f"--config {args.config}: not valid YAML: {yaml_problem(exc)}"
            ) from None
        if not isinstance(loaded, dict):
            raise BenchmarkConfigError(f"--config {args.config}: must be a mapping of settings")
        unknown = sorted(set(loaded) - _YAML_KEYS)
        if unknown:
            raise BenchmarkConfigError(
                f"--config {args.config}: unknown key(s) {unknown}; valid: {sorted(_YAML_KEYS)}"
            )
        settings.update(loaded)
    # A config's spaces may name every variant it lists; --variants may then run some of them.
    config_variants = settings.get("variants")
    for key in (
        "variants",
        "tasks",
        "budget",
        "trial_budget",
        "model",
        "data_dir",
        "sampler",
        "pruner",
        "multi_objective",
        "recipes",
        "seed",
        "confirm_seeds",
        "results",
        "storage",
        "study",
        "heartbeat_interval",
    ):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    settings["config_variants"] = _names(config_variants) or []
    for key in ("variants", "tasks") if need_budget else ("variants",):
        value = _names(settings.get(key))
        if not value:
            raise BenchmarkConfigError(
                f"no {key} given: use --{key} a,b (or '{key}:' in the YAML config)"
            )
        settings[key] = list(value)
    if settings.get("budget") is None and need_budget:
        raise BenchmarkConfigError(
            "no search budget: give --budget seconds=1800 (or steps=, tokens=, flops=)"
        )
    # One file holds run records, summaries and (by default) the studies; a database URL given
    # as storage also receives the records, so workers on several machines share everything.
    storage = settings.get("storage")
    if settings.get("results") is None:
        is_database = (
            storage is not None and "://" in str(storage) and not str(storage).startswith("sqlite")
        )
        settings["results"] = storage if is_database else DEFAULT_RESULTS
    if storage is None:
        settings["storage"] = settings["results"]
    return settings


def _names(value: Any) -> Any:
    """A list of names from ``a,b`` (YAML may give a string); any other value as it is."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _search_configs(settings: dict[str, Any]) -> list:
    from lorabench.harness.config import BenchmarkConfigError, Budget, TrainConfig
    from lorabench.search.loop import DEFAULT_TRIAL_BUDGET, SearchConfig

    spaces = settings.get("space") or {}
    fixed = settings.get("variant_config") or {}
    for name, mapping in (("space", spaces), ("variant_config", fixed)):
        if not isinstance(mapping, dict):
            raise BenchmarkConfigError(
                f"{name} must map a variant name to its settings, got {mapping!r}"
            )
        known = set(settings["variants"]) | set(settings.get("config_variants") or [])
        stray = sorted(set(mapping) - known)
        if stray:
            raise BenchmarkConfigError(
                f"{name} names variant(s) {stray} not in --variants {settings['variants']}"
                + (
                    f" nor in the config's variants {settings['config_variants']}"
                    if settings.get("config_variants")
                    else ""
                )
            )
    train = TrainConfig.from_dict(settings.get("train") or {})
    optional = {
        key: settings[key]
        for key in (
            "model",
            "data_dir",
            "sampler",
            "pruner",
            "multi_objective",
            "recipes",
            "seed",
            "confirm_seeds",
            "study",
            "heartbeat_interval",
            "grace_period",
        )
        if settings.get(key) is not None
    }
    configs = []
    for variant in settings["variants"]:
        for task in settings["tasks"]:
            configs.append(
                SearchConfig(
                    variant=variant,
                    task=task,
                    budget=Budget.parse(settings["budget"]),
                    trial_budget=Budget.parse(settings.get("trial_budget") or DEFAULT_TRIAL_BUDGET),
                    train=TrainConfig.from_dict(train.to_dict()),
                    variant_config=dict(fixed.get(variant) or {}),
                    space=dict(spaces.get(variant) or {}),
                    storage=str(settings["storage"]),
                    **optional,
                )
            )
    return configs


def _spaces_text(settings: dict[str, Any]) -> str:
    """Each variant's merged, validated search space as YAML (what a search would sample)."""
    import yaml

    from lorabench.harness.config import BenchmarkConfigError
    from lorabench.search.loop import variant_search_space

    spaces = settings.get("space") or {}
    if not isinstance(spaces, dict):
        raise BenchmarkConfigError(f"space must map a variant name to its settings, got {spaces!r}")
    out = {
        variant: variant_search_space(variant, spaces.get(variant)).to_dict()
        for variant in settings["variants"]
    }
    return yaml.safe_dump(out, sort_keys=False, default_flow_style=None).rstrip()


def _print_summary(outcomes: list, results: str) -> None:
    print(
        f"{'study':<32} {'trials':>6} {'spent':>12} {'best score':>10} {'rank':>5}  "
        "confirm (mean over seeds)"
    )
    for o in outcomes:
        s = o.summary
        best = s.get("best") or {}
        score = best.get("score")
        confirm = s.get("confirm") or {}
        confirmed = "-"
        if confirm.get("mean") is not None:
            confirmed = f"{confirm['mean']:.4f} over {len(confirm['runs'])} seeds"
        shown_score = "-" if score is None else f"{score:.4f}"
        print(
            f"{o.study:<32} {s['n_trials']:>6} {s['spent']:>8.4g} {s['budget']['kind']:<3} "
            f"{shown_score:>10} {s.get('best_rank') or '-':>5}  {confirmed}"
        )
        if s.get("pareto_front"):
            front = ", ".join(
                f"{row['trainable_params']}:{row['score']:.4f}" for row in s["pareto_front"]
            )
            print(f"  Pareto front (trainable params: score): {front}")
    print(f"results and search summaries: {results}")
