"""A benchmark suite: which variants, tasks and seeds to run under one shared budget.

Written as YAML (``lorabench run --config suite.yaml``), shipped as presets
(``lorabench run --preset quick``), or built from command-line flags. Every setting is checked
when the suite is loaded, before anything runs; errors name the key, the bad value and the fix.

.. code-block:: yaml

    name: glue-small
    model: null                 # the packaged all-MiniLM-L6-v2; or a folder / hub name
    data_dir: /data/glue        # GLUE TSV folders (null: the Hugging Face Hub)
    tasks:                      # a name, or {name: {train: {...}, budget: ...}}: its own settings
      - rte
      - mrpc: {train: {learning_rate: 4e-4, batch_size: 16}, budget: steps=6900}
    variants:                   # a name, or {name: {config overrides}}; a name may repeat
      - lora
      - lora: {r: 16}
      - adalora: {r: 12, target_r: 8}
    seeds: 3                    # a count (0, 1, 2) or a list [0, 5, 7]
    budget: steps=500           # or tokens=..., seconds=..., flops=...; every run gets the same
    train: {learning_rate: 5e-4, batch_size: 32, max_length: 128, eval_every: 100}
                                # also precision: bf16 (fp32, bf16, fp16), grad_accum: 2
    device: cuda:0              # cpu, cuda, cuda:N, mps (default: CUDA when present, else CPU)
    recipes: paper              # each variant's paper recipe under what is set here (or: none)
    tag: ""
    out: runs                   # adapters go to OUT/adapters/<run_id>/
    results: null               # default OUT/results.db; or any SQLAlchemy URL
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorabench.harness.config import (
    DEFAULT_BUDGET,
    BenchmarkConfigError,
    Budget,
    RunConfig,
    TrainConfig,
    build_variant_config,
)
from lorabench.results.store import RESULTS_FILE

if TYPE_CHECKING:
    from lorabench.variants.recipe import Recipe

PRESET_PACKAGE = "lorabench.presets"
# ``recipes:``: "paper" applies each variant's declared paper recipe (Variant.recipe) under the
# settings the user gives; "none" runs every variant with the suite's settings as written.
RECIPE_CHOICES: tuple[str, ...] = ("paper", "none")
DEFAULT_RECIPES = "paper"


class SuiteConfigError(BenchmarkConfigError):
    """A bad suite setting; the message names where it is, the key, the value and the fix."""


# The keys a task entry of ``tasks:`` may set ({mrpc: {train: {...}, budget: steps=6900}}).
TASK_SETTING_KEYS: tuple[str, ...] = ("train", "budget")


@dataclass
class TaskSettings:
    """One task's own settings in a suite (``tasks: [{mrpc: {train: {...}, budget: ...}}]``),
    as the papers train each task with its own recipe (the LoRA paper's learning rate, epochs
    and batch differ per GLUE task).

    ``train`` goes over the suite's ``train:`` for every run on the task, and under a variant
    entry's own ``train:``; the variant's paper recipe scales the resulting learning rate (a
    recipe is relative to LoRA's rate, and a task's rate is LoRA's rate for that task).
    ``budget``, when set, replaces the suite's budget for the task's runs.
    """

    train: dict[str, Any] = field(default_factory=dict)
    budget: Budget | None = None

    @property
    def empty(self) -> bool:
        """Whether it sets nothing (the task then resolves exactly as a plain name does)."""
        return not self.train and self.budget is None

    def to_dict(self) -> dict[str, Any]:
        """The settings in their YAML layout (only the keys set); :func:`parse_tasks` reads it."""
        return {
            **({"train": dict(self.train)} if self.train else {}),
            **({"budget": str(self.budget)} if self.budget is not None else {}),
        }


@dataclass
class VariantEntry:
    """One variant configuration of a suite: a registered name, overrides of its defaults and
    its own training settings over the suite's (``{vera: {r: 256, train: {learning_rate:
    1e-2}}}``: a recipe per variant, as the papers train each method)."""

    variant: str
    config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The name alone, or with its overrides sorted by key: ``lora(alpha=32,r=16)``, then
        its own training settings: ``vera(r=256,train.learning_rate=0.01)``."""
        items = [f"{k}={self.config[k]}" for k in sorted(self.config)]
        items += [f"train.{k}={self.train[k]}" for k in sorted(self.train)]
        return f"{self.variant}({','.join(items)})" if items else self.variant

    def train_config(self, suite_train: TrainConfig, recipe: Recipe | None = None) -> TrainConfig:
        """The suite's training settings, with the variant's paper ``recipe`` applied to them
        (its learning-rate factor; None: not applied), and this entry's own settings on top: an
        entry's ``train: {learning_rate: ...}`` (or ``--train VARIANT.learning_rate=``) is used
        as given, never scaled."""
        base = suite_train.to_dict()
        if recipe is not None and recipe.learning_rate_scale != 1.0:
            base["learning_rate"] = recipe.scaled_learning_rate(suite_train.learning_rate)
            if recipe.scales_head and suite_train.head_learning_rate is not None:
                base["head_learning_rate"] = recipe.scaled_learning_rate(
                    suite_train.head_learning_rate
                )
        if not self.train and base == suite_train.to_dict():
            return dataclasses.replace(suite_train)
        return TrainConfig.from_dict({**base, **self.train})

    def variant_config(self, recipe: Recipe | None = None) -> dict[str, Any]:
        """This entry's variant overrides with the paper ``recipe``'s config values under them
        (None: the overrides alone): a field the entry sets keeps its value."""
        if recipe is None or not recipe.config:
            return dict(self.config)
        from lorabench.variants import VARIANTS

        config_class = VARIANTS.get(self.variant).config_class
        return {**recipe.config_overrides(config_class, self.config), **self.config}


@dataclass
class SuiteConfig:
    """Variants x tasks x seeds under one budget and one training recipe."""

    variants: list[VariantEntry]
    tasks: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: Budget = DEFAULT_BUDGET
    train: TrainConfig = field(default_factory=TrainConfig)
    model: str | None = None
    data_dir: str | None = None
    tag: str = ""
    out: str = "runs"
    results: str | None = None
    name: str = ""
    description: str = ""
    # Training logs (lorabench.harness.logs.parse_log: csv, tensorboard, none); None: the default,
    # csv. Not part of any run's identity.
    log: tuple[str, ...] | None = None
    # "paper": each variant's paper recipe under the settings above; "none": the settings alone.
    # Each run records the values it resolved to, so this is identity through them.
    recipes: str = DEFAULT_RECIPES
    # Where every run computes (cpu, cuda, cuda:N, mps); None: CUDA when available, else the
    # CPU. Not part of any run's identity (the same run computes the same maths anywhere);
    # each record stores it in config["device"].
    device: str | None = None
    # {task: its own settings}, written inside ``tasks:`` (not a key of its own); a task without
    # an entry here (every task of a plain list) runs with the suite's settings alone.
    task_settings: dict[str, TaskSettings] = field(default_factory=dict)

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, where: str = "suite") -> SuiteConfig:
        """Builds and validates a suite from plain data (parsed YAML)."""
        if not isinstance(data, dict):
            raise SuiteConfigError(
                f"{where}: a suite must be a mapping of settings, got {type(data).__name__}"
            )
        known = [f.name for f in dataclasses.fields(cls) if f.name != "task_settings"]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise SuiteConfigError(
                    f"{where}: unknown key {key!r}.{hint} Valid keys: {', '.join(known)}."
                )
        for required in ("variants", "tasks"):
            if not data.get(required):
                raise SuiteConfigError(
                    f"{where}: {required!r} is missing or empty; "
                    f"e.g. {required}: {'[lora, dora]' if required == 'variants' else '[rte]'}"
                )
        tasks, task_settings = parse_tasks(data["tasks"], where=where)
        suite = cls(
            variants=parse_variants(data["variants"], where=where),
            tasks=tasks,
            task_settings=task_settings,
            seeds=parse_seeds(data.get("seeds", 1), where=where),
            budget=_budget(data.get("budget", DEFAULT_BUDGET), where),
            train=_train(data.get("train") or {}, where),
            model=_optional_str(data, "model", where),
            data_dir=_optional_str(data, "data_dir", where),
            tag=_optional_str(data, "tag", where) or "",
            out=_optional_str(data, "out", where) or "runs",
            results=_optional_str(data, "results", where),
            name=_optional_str(data, "name", where) or "",
            description=_optional_str(data, "description", where) or "",
            log=_log(data.get("log"), where),
            recipes=_recipes(data.get("recipes", DEFAULT_RECIPES), where),
            device=_device(data.get("device"), where),
        )
        suite.validate(where=where)
        return suite

    @classmethod
    def from_yaml(cls, path: str | Path) -> SuiteConfig:
        """Reads a suite YAML file."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise SuiteConfigError(f"suite file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(read_yaml_text(path, "suite file"))
        except yaml.YAMLError as exc:
            raise SuiteConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def preset(cls, name: str) -> SuiteConfig:
        """A suite shipped with lorabench (``lorabench/presets/NAME.yaml``)."""
        available = list_presets()
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SuiteConfigError(
                f"unknown preset {name!r}.{hint} Presets: {', '.join(available)}."
            )
        import yaml

        text = resources.files(PRESET_PACKAGE).joinpath(f"{name}.yaml").read_text()
        return cls.from_dict(yaml.safe_load(text), where=f"preset {name!r}")

    def validate(self, *, where: str = "suite") -> None:
        """Checks every name against the registries and every variant config against its class."""
        from lorabench.registry import UnknownNameError
        from lorabench.tasks import get_task
        from lorabench.variants.base import ConfigError

        for i, entry in enumerate(self.variants):
            try:
                build_variant_config(entry.variant, entry.config)
            except UnknownNameError as exc:
                raise SuiteConfigError(f"{where}: variants[{i}]: {exc}") from None
            except (ConfigError, TypeError, ValueError) as exc:
                raise SuiteConfigError(f"{where}: variants[{i}] ({entry.variant}): {exc}") from None
        names: dict[str, str] = {}
        for i, task in enumerate(self.tasks):
            try:
                spec = get_task(task)
            except (UnknownNameError, ValueError, OSError) as exc:
                # A custom task's YAML path: missing file, bad spec or columns (TaskDataError is a
                # ValueError, DataNotFoundError an OSError); the message names file, key and value.
                raise SuiteConfigError(f"{where}: tasks[{i}]: {exc}") from None
            first = names.setdefault(spec.name, task)
            if first != task and get_task(first).options.get("spec_file") != spec.options.get(
                "spec_file"
            ):
                raise SuiteConfigError(
                    f"{where}: tasks[{i}]: {task!r} and {first!r} are two tasks named "
                    f"{spec.name!r}; a task is its name, so rename one in its YAML"
                )
            if first != task and task in self.task_settings:
                # Its settings would be dropped with the second spelling: say so, not guess.
                raise SuiteConfigError(
                    f"{where}: tasks[{i}]: {task!r} is {first!r} again, with its own settings; "
                    "list the task once and give its settings there"
                )
        # A task is its name: 'tri.yaml', './tri.yaml' and its absolute path are one task.
        self.tasks = list(names.values())
        for task in self.task_settings:
            if task not in self.tasks:
                raise SuiteConfigError(
                    f"{where}: task_settings has {task!r}, which is not one of the suite's "
                    f"tasks ({', '.join(self.tasks)}); give settings only for a listed task"
                )
            try:
                self.task_train(task).validate()
            except BenchmarkConfigError as exc:
                raise SuiteConfigError(f"{where}: task {task}: {exc}") from None
        if len(set(self.seeds)) != len(self.seeds):
            raise SuiteConfigError(f"{where}: seeds {self.seeds} repeat a seed; each seed once")
        self.train.validate()
        for entry in self.variants:
            try:
                entry.train_config(self.train).validate()
            except BenchmarkConfigError as exc:
                raise SuiteConfigError(f"{where}: variant {entry.label}: {exc}") from None
        if self.recipes not in RECIPE_CHOICES:
            raise SuiteConfigError(
                f"{where}: recipes={self.recipes!r} must be one of {', '.join(RECIPE_CHOICES)}"
            )
        for entry in self.variants:
            recipe = self.recipe_of(entry)
            if recipe is None or recipe.is_identity:
                continue
            # The paper recipe under the entry's settings must still make a valid run; say so
            # by name rather than fail when the run starts. Each task with its own settings is a
            # different base for the recipe (a scaled rate can leave the valid range on one).
            for task in [None, *self.task_settings]:
                base = self.train if task is None else self.task_train(task)
                on = "" if task is None else f" on task {task}"
                try:
                    entry.train_config(base, recipe).validate()
                    build_variant_config(entry.variant, entry.variant_config(recipe))
                except (BenchmarkConfigError, ConfigError, TypeError, ValueError) as exc:
                    raise SuiteConfigError(
                        f"{where}: variant {entry.label} with its paper recipe "
                        f"({recipe.summary()}){on}: {exc}; set the value in the entry, or "
                        "recipes: none"
                    ) from None

    def check_inputs(self) -> None:
        """Checks what the suite reads from this machine before anything trains: the data folder
        exists, the model resolves (for the default model: the packaged copy is installed) and
        the package of a ``log`` kind (tensorboard) is installed.

        Without this, every run of a suite would fail the same way, one by one, and be stored
        as failed; with it, the command stops at once with the fix (e.g. the pip command).
        """
        from lorabench.models import ModelNotFoundError, check_model_available

        if self.data_dir is not None and not Path(self.data_dir).expanduser().is_dir():
            raise SuiteConfigError(
                f"data_dir={self.data_dir!r} is not a folder; "
                "give the folder holding the task data "
                "(GLUE TSV layout DIR/RTE/train.tsv, or local Hugging Face copies), "
                "or leave it unset for the Hugging Face Hub"
            )
        try:
            check_model_available(self.model)
        except ModelNotFoundError as exc:
            raise SuiteConfigError(f"model={self.model!r}: {exc}") from None
        from lorabench.harness.logs import LogSettingError, require_log_backends

        try:
            require_log_backends(self.log_kinds)  # tensorboard installed, if asked for
        except LogSettingError as exc:
            raise SuiteConfigError(str(exc)) from None

    # -- using ------------------------------------------------------------------------------
    def recipe_of(self, entry: VariantEntry) -> Recipe | None:
        """The paper recipe the suite applies to ``entry``'s runs: its variant's
        :attr:`~lorabench.variants.base.Variant.recipe` with ``recipes: paper``, None with
        ``recipes: none`` (or for a variant not installed here, which fails elsewhere by name)."""
        if self.recipes == "none":
            return None
        from lorabench.registry import UnknownNameError
        from lorabench.variants import VARIANTS

        try:
            return VARIANTS.get(entry.variant).recipe
        except UnknownNameError:
            return None

    def task_train(self, task: str) -> TrainConfig:
        """The training settings of ``task``'s runs before any variant's: the suite's ``train:``
        with the task's own ``train:`` over it (the suite's own object for a plain task)."""
        settings = self.task_settings.get(task)
        if settings is None or not settings.train:
            return self.train
        return TrainConfig.from_dict({**self.train.to_dict(), **settings.train})

    @property
    def budget_text(self) -> str:
        """The budget as a header line says it: the suite's, or ``per task`` with each task's
        own when tasks set their own (``per task: mrpc steps=6900, rte steps=6240``)."""
        budgets = {task: self.task_budget(task) for task in self.tasks}
        if all(b == self.budget for b in budgets.values()):
            return str(self.budget)
        return "per task: " + ", ".join(f"{t} {b}" for t, b in budgets.items())

    def task_budget(self, task: str) -> Budget:
        """The budget of ``task``'s runs: the task's own, else the suite's."""
        settings = self.task_settings.get(task)
        return settings.budget if settings is not None and settings.budget else self.budget

    def run_config(self, entry: VariantEntry, task: str, seed: int = 0) -> RunConfig:
        """The run of ``entry`` on ``task`` with ``seed``: the one place a suite entry becomes a
        :class:`RunConfig`, the paper recipe applied under the entry's own settings (so the run
        records, and its id hashes, the values it trains with).

        Training settings resolve suite ``train:`` < the task's ``train:`` < the variant's paper
        recipe (its learning-rate factor, applied to the task's rate) < the variant entry's
        ``train:`` (used as given). A plain task (no settings of its own) resolves as before
        task settings existed, so its run ids do not change."""
        recipe = self.recipe_of(entry)
        return RunConfig(
            variant=entry.variant,
            task=task,
            seed=seed,
            variant_config=entry.variant_config(recipe),
            model=self.model,
            budget=self.task_budget(task),
            train=entry.train_config(self.task_train(task), recipe),
            data_dir=self.data_dir,
            tag=self.tag,
        )

    def run_configs(self) -> list[RunConfig]:
        """One :class:`RunConfig` per variant config x task x seed (seeds innermost)."""
        return [
            self.run_config(entry, task, seed)
            for entry in self.variants
            for task in self.tasks
            for seed in self.seeds
        ]

    @property
    def log_kinds(self) -> tuple[str, ...]:
        """The training logs its runs write (``log``, or the default, csv, when unset)."""
        from lorabench.harness.logs import DEFAULT_LOG

        return DEFAULT_LOG if self.log is None else tuple(self.log)

    @property
    def results_location(self) -> str:
        """Where records go: ``results`` if set, else ``OUT/results.db``."""
        return self.results or str(Path(self.out) / RESULTS_FILE)

    def to_dict(self) -> dict[str, Any]:
        """The suite in its YAML layout (seeds as a list, the budget as ``KIND=N``);
        :meth:`from_dict` reads it back."""
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "data_dir": self.data_dir,
            # A task with settings as {task: {...}}; a plain one as its name, as before.
            "tasks": [
                {t: self.task_settings[t].to_dict()}
                if t in self.task_settings and not self.task_settings[t].empty
                else t
                for t in self.tasks
            ],
            "variants": [
                {e.variant: {**e.config, **({"train": dict(e.train)} if e.train else {})}}
                if e.config or e.train
                else e.variant
                for e in self.variants
            ],
            "seeds": list(self.seeds),
            "budget": str(self.budget),
            "train": self.train.to_dict(),
            "tag": self.tag,
            "out": self.out,
            "results": self.results,
            # Only when set: suites (and baselines) without it keep their layout.
            **({"log": ",".join(self.log) or "none"} if self.log is not None else {}),
            **({"recipes": self.recipes} if self.recipes != DEFAULT_RECIPES else {}),
            **({"device": self.device} if self.device is not None else {}),
        }


def list_presets() -> list[str]:
    """Names of the presets shipped in ``lorabench/presets``."""
    return sorted(
        p.name[: -len(".yaml")]
        for p in resources.files(PRESET_PACKAGE).iterdir()
        if p.name.endswith(".yaml")
    )


def preset_descriptions() -> dict[str, str]:
    """``{preset name: its one-line description}`` (for ``--help``); never raises, so a broken
    preset file cannot break the help text (loading that preset reports the error)."""
    import yaml

    out: dict[str, str] = {}
    for name in list_presets():
        try:
            data = yaml.safe_load(
                resources.files(PRESET_PACKAGE).joinpath(f"{name}.yaml").read_text()
            )
            out[name] = str(data.get("description") or "") if isinstance(data, dict) else ""
        except (OSError, yaml.YAMLError):
            out[name] = ""
    return out


# -- parsing helpers ------------------------------------------------------------------------------
def read_yaml_text(path: Path, what: str) -> str:
    """The text of a YAML file, failing with one line that names the file and the fix when it
    cannot be read or is not UTF-8 text (binary garbage, a Latin-1 file): YAML is UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SuiteConfigError(
            f"{what} {str(path)!r} cannot be read ({exc.strerror or exc})"
        ) from None
    if b"\x00" in data:
        raise SuiteConfigError(
            f"{what} {str(path)!r} is binary, not a YAML text file; give the right .yaml file"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteConfigError(
            f"{what} {str(path)!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8, or check that it is the right .yaml file"
        ) from None


def yaml_problem(exc: Exception) -> str:
    """A YAML error on one line: its problem and where (PyYAML spreads it over several lines
    and quotes the source, which for a garbled file is garbage too)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _recipes(value: Any, where: str) -> str:
    """The ``recipes`` key: ``paper`` (the default) or ``none``."""
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in RECIPE_CHOICES:
        raise SuiteConfigError(
            f"{where}: recipes={value!r} must be one of {', '.join(RECIPE_CHOICES)} (paper: "
            "each variant's paper recipe under the suite's settings; none: the settings alone)"
        )
    return text


def _device(value: Any, where: str) -> str | None:
    """A suite's ``device:`` checked as a name (cpu, cuda, cuda:N, mps); whether this machine
    has it is checked when the suite runs (:func:`~lorabench.harness.prepared.resolve_device`),
    so a suite written for a GPU machine still parses (and dry-runs) elsewhere."""
    from lorabench.harness.prepared import check_device_name

    if value is None:
        return None
    try:
        return check_device_name(str(value))
    except BenchmarkConfigError as exc:
        raise SuiteConfigError(f"{where}: {exc}") from None


def _log(value: Any, where: str) -> tuple[str, ...] | None:
    """The ``log`` key: csv, tensorboard, none, or a comma string or list of them (None: unset)."""
    from lorabench.harness.logs import LogSettingError, parse_log

    if value is None:
        return None
    try:
        return parse_log(value)
    except LogSettingError as exc:
        raise SuiteConfigError(f"{where}: {exc}") from None


def parse_variants(value: Any, *, where: str = "suite") -> list[VariantEntry]:
    """``[lora, {dora: {r: 16}}]`` (or a comma-separated string ``"lora,dora"``) to entries."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value:
        raise SuiteConfigError(
            f"{where}: variants={value!r} must be a non-empty list, e.g. [lora, dora]"
        )
    entries = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            entries.append(VariantEntry(item.strip().lower()))
        elif isinstance(item, dict) and len(item) == 1:
            ((name, config),) = item.items()
            if config is None:
                config = {}
            if not isinstance(name, str) or not isinstance(config, dict):
                raise SuiteConfigError(
                    f"{where}: variants[{i}]={item!r} must map a variant name to its overrides, "
                    "e.g. {lora: {r: 16}}"
                )
            config = dict(config)
            train = config.pop("train", None) or {}
            own = train_overrides(train, f"{where}: variants[{i}] ({name})")
            entries.append(VariantEntry(name.strip().lower(), config, own))
        else:
            raise SuiteConfigError(
                f"{where}: variants[{i}]={item!r} must be a name (lora) "
                "or one name with overrides ({lora: {r: 16}})"
            )
    return entries


def parse_tasks(value: Any, *, where: str = "suite") -> tuple[list[str], dict[str, TaskSettings]]:
    """``[rte, {mrpc: {train: {learning_rate: 4e-4}, budget: steps=6900}}]`` (or a comma
    string ``"rte,mrpc"``) to the task names and ``{task: its own settings}`` (only tasks that
    set something are in it)."""
    if isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        return _string_list(value, "tasks", where), {}
    if not isinstance(value, list) or not value:
        raise SuiteConfigError(
            f"{where}: tasks={value!r} must be a non-empty list of names, e.g. [rte, mrpc]"
        )
    names: list[str] = []
    settings: dict[str, TaskSettings] = {}
    for i, item in enumerate(value):
        if isinstance(item, str) and item:
            names.append(item)
            continue
        if not (isinstance(item, dict) and len(item) == 1):
            raise SuiteConfigError(
                f"{where}: tasks[{i}]={item!r} must be a name (rte) or one name with its "
                "settings ({mrpc: {train: {learning_rate: 4e-4}, budget: steps=6900}})"
            )
        ((name, given),) = item.items()
        given = {} if given is None else given
        if not isinstance(name, str) or not name or not isinstance(given, dict):
            raise SuiteConfigError(
                f"{where}: tasks[{i}]={item!r} must map a task name to its settings, "
                "e.g. {mrpc: {train: {batch_size: 16}}}"
            )
        for key in given:
            if key not in TASK_SETTING_KEYS:
                raise SuiteConfigError(
                    f"{where}: tasks[{i}] ({name}): unknown key {key!r}; a task sets only "
                    f"{', '.join(TASK_SETTING_KEYS)} (e.g. {{{name}: {{budget: steps=500}}}})"
                )
        own = TaskSettings(
            train=train_overrides(given.get("train") or {}, f"{where}: tasks[{i}] ({name})"),
            budget=(
                _budget(given["budget"], f"{where}: tasks[{i}] ({name})")
                if given.get("budget") is not None
                else None
            ),
        )
        if name in settings or name in names:
            raise SuiteConfigError(
                f"{where}: tasks[{i}]: {name!r} is listed twice; list it once with its settings"
            )
        names.append(name)
        if not own.empty:
            settings[name] = own
    return names, settings


def parse_seeds(value: Any, *, where: str = "suite") -> list[int]:
    """A count (``3`` means seeds 0, 1, 2), a list ``[0, 5, 7]`` or a string ``"0,5,7"``.

    A single number is a count; write ``"7,"`` (or ``[7]``) for only seed 7.
    """
    if isinstance(value, str):
        text = value.strip()
        if "," in text:
            try:
                return [int(s) for s in text.split(",") if s.strip()]
            except ValueError:
                raise SuiteConfigError(
                    f"{where}: seeds={value!r} must be integers, e.g. 0,5,7"
                ) from None
        try:
            value = int(text)
        except ValueError:
            raise SuiteConfigError(
                f"{where}: seeds={value!r} must be a count (3) or a list (0,5,7)"
            ) from None
    if isinstance(value, bool):
        raise SuiteConfigError(f"{where}: seeds={value!r} must be a count (3) or a list (0,5,7)")
    if isinstance(value, int):
        if value < 1:
            raise SuiteConfigError(
                f"{where}: seeds={value} must be a count >= 1 (3 means seeds 0, 1, 2)"
            )
        return list(range(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    ):
        return list(value)
    raise SuiteConfigError(
        f"{where}: seeds={value!r} must be a count (3) "
        "or a list of non-negative integers ([0, 5, 7])"
    )


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"lora.r=16"`` to ``("lora", "r", 16)``; the value is read as YAML (numbers, lists)."""
    import yaml

    key, sep, raw = text.partition("=")
    variant, dot, name = key.strip().partition(".")
    if not sep or not dot or not variant or not name:
        raise SuiteConfigError(
            f"variant override {text!r} must look like VARIANT.FIELD=VALUE, "
            "e.g. lora.r=16 or adalora.target_r=4"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return variant.lower(), name, value


def apply_overrides(
    entries: list[VariantEntry], overrides: list[str], *, where: str = "--variant-config"
) -> None:
    """Sets ``VARIANT.FIELD=VALUE`` on every entry of that variant (``*.FIELD`` on all)."""
    for text in overrides:
        matched, name, value = _override_targets(entries, text, where)
        for entry in matched:
            entry.config[name] = value
            _canonical_overrides(entry, name)


def apply_train_overrides(
    entries: list[VariantEntry], overrides: list[str], *, where: str = "--train"
) -> None:
    """Sets ``VARIANT.SETTING=VALUE`` in the training settings of every entry of that variant
    (``*.SETTING`` on all), over the suite's ``train:``."""
    for text in overrides:
        matched, name, value = _override_targets(entries, text, where)
        for entry in matched:
            entry.train = train_overrides({**entry.train, name: value}, f"{where} {text!r}")


def _override_targets(
    entries: list[VariantEntry], text: str, where: str
) -> tuple[list[VariantEntry], str, Any]:
    """The entries ``VARIANT.NAME=VALUE`` applies to (every one for ``*``), NAME and VALUE;
    fails naming the variant when the suite has none of that name."""
    variant, name, value = parse_override(text)
    matched = [e for e in entries if variant in ("*", e.variant)]
    if not matched:
        raise SuiteConfigError(
            f"{where} {text!r}: no variant {variant!r} in this suite "
            f"(it has {', '.join(e.variant for e in entries)})"
        )
    return matched, name, value


def train_overrides(value: Any, where: str) -> dict[str, Any]:
    """Training settings given for one variant (a mapping of ``TrainConfig`` fields), checked
    and converted as the suite's ``train:`` is (``"5e-4"`` -> 0.0005)."""
    if not value:
        return {}
    checked = _train(value, where)
    return {key: getattr(checked, key) for key in value}


def _canonical_overrides(entry: VariantEntry, given: str) -> None:
    """The entry's overrides under their current field names: a legacy name (AdaLoRA's
    ``init_r``) in a preset, replaced by the field given on the command line (``r``), is one
    setting, not two that disagree. The value given last wins."""
    from lorabench.registry import UnknownNameError
    from lorabench.variants import VARIANTS

    try:
        config_class = VARIANTS.get(entry.variant).config_class
    except UnknownNameError:
        return  # reported by validate(), naming the variant
    aliases = config_class.legacy_aliases
    field = aliases.get(given, given)
    names = {field, *(alias for alias, target in aliases.items() if target == field)}
    value = entry.config[given]
    for name in names - {given}:
        entry.config.pop(name, None)
    entry.config.pop(given)
    entry.config[field] = value


def _string_list(value: Any, key: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SuiteConfigError(
            f"{where}: {key}={value!r} must be a non-empty list of names, e.g. [rte, mrpc]"
        )
    return list(value)


def _optional_str(data: dict[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise SuiteConfigError(f"{where}: {key}={value!r} must be a string (or null)")


def _budget(value: Any, where: str) -> Budget:
    try:
        return Budget.parse(value)
    except BenchmarkConfigError as exc:
        raise SuiteConfigError(f"{where}: {exc}") from None


def _train(value: Any, where: str) -> TrainConfig:
    if not isinstance(value, dict):
        raise SuiteConfigError(
            f"{where}: train={value!r} must be a mapping, "
            "e.g. {learning_rate: 5e-4, batch_size: 32}"
        )
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in value:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SuiteConfigError(
                f"{where}: unknown training setting train.{key}.{hint} Valid: {', '.join(known)}."
            )
    types = {
        "learning_rate": float,
        "head_learning_rate": float,
        "weight_decay": float,
        "warmup_ratio": float,
        "max_grad_norm": float,
    }
    data = dict(value)
    for key, kind in types.items():
        # YAML reads 5e-4 (no dot) as a string; accept numeric strings for float settings.
        if isinstance(data.get(key), str):
            try:
                data[key] = kind(data[key])
            except ValueError:
                raise SuiteConfigError(
                    f"{where}: train.{key}={value[key]!r} must be a number"
                ) from None
    for key, val in data.items():
        if key == "train_head":
            if not isinstance(val, bool):
                raise SuiteConfigError(f"{where}: train.train_head={val!r} must be true or false")
        elif key == "precision":  # a name (fp32, bf16, fp16); TrainConfig names the valid ones
            continue
        elif val is not None and (isinstance(val, bool) or not isinstance(val, int | float)):
            raise SuiteConfigError(f"{where}: train.{key}={val!r} must be a number")
    try:
        return TrainConfig.from_dict(data)
    except BenchmarkConfigError as exc:
        raise SuiteConfigError(f"{where}: {exc}") from None
