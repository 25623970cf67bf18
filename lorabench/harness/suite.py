"""A benchmark suite: which variants, tasks and seeds to run under one shared budget.

Written as YAML (``lorabench run --config suite.yaml``), shipped as presets
(``lorabench run --preset quick``), or built from command-line flags. Every setting is checked
when the suite is loaded, before anything runs; errors name the key, the bad value and the fix.

.. code-block:: yaml

    name: glue-small
    model: null                 # the packaged all-MiniLM-L6-v2; or a folder / hub name
    data_dir: /data/glue        # GLUE TSV folders (null: the Hugging Face Hub)
    tasks: [rte, mrpc]
    variants:                   # a name, or {name: {config overrides}}; a name may repeat
      - lora
      - lora: {r: 16}
      - adalora: {r: 12, target_r: 8}
    seeds: 3                    # a count (0, 1, 2) or a list [0, 5, 7]
    budget: steps=500           # or tokens=..., seconds=..., flops=...; every run gets the same
    train: {learning_rate: 5e-4, batch_size: 32, max_length: 128, eval_every: 100}
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
from typing import Any

from lorabench.harness.config import (
    DEFAULT_BUDGET,
    BenchmarkConfigError,
    Budget,
    RunConfig,
    TrainConfig,
    build_variant_config,
)

PRESET_PACKAGE = "lorabench.presets"


class SuiteConfigError(BenchmarkConfigError):
    """A bad suite setting; the message names where it is, the key, the value and the fix."""


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

    def train_config(self, suite_train: TrainConfig) -> TrainConfig:
        """The suite's training settings with this entry's own on top."""
        if not self.train:
            return dataclasses.replace(suite_train)
        return TrainConfig.from_dict({**suite_train.to_dict(), **self.train})


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

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, where: str = "suite") -> SuiteConfig:
        """Builds and validates a suite from plain data (parsed YAML)."""
        if not isinstance(data, dict):
            raise SuiteConfigError(
                f"{where}: a suite must be a mapping of settings, got {type(data).__name__}"
            )
        known = [f.name for f in dataclasses.fields(cls)]
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
        suite = cls(
            variants=parse_variants(data["variants"], where=where),
            tasks=_string_list(data["tasks"], "tasks", where),
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
        # A task is its name: 'tri.yaml', './tri.yaml' and its absolute path are one task.
        self.tasks = list(names.values())
        if len(set(self.seeds)) != len(self.seeds):
            raise SuiteConfigError(f"{where}: seeds {self.seeds} repeat a seed; each seed once")
        self.train.validate()
        for entry in self.variants:
            try:
                entry.train_config(self.train).validate()
            except BenchmarkConfigError as exc:
                raise SuiteConfigError(f"{where}: variant {entry.label}: {exc}") from None

    def check_inputs(self) -> None:
        """Checks what the suite reads from this machine before anything trains: the data folder
        exists and the model resolves (for the default model: the packaged copy is installed).

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

    # -- using ------------------------------------------------------------------------------
    def run_configs(self) -> list[RunConfig]:
        """One :class:`RunConfig` per variant config x task x seed (seeds innermost)."""
        return [
            RunConfig(
                variant=entry.variant,
                task=task,
                seed=seed,
                variant_config=dict(entry.config),
                model=self.model,
                budget=self.budget,
                train=entry.train_config(self.train),
                data_dir=self.data_dir,
                tag=self.tag,
            )
            for entry in self.variants
            for task in self.tasks
            for seed in self.seeds
        ]

    @property
    def results_location(self) -> str:
        """Where records go: ``results`` if set, else ``OUT/results.db``."""
        return self.results or str(Path(self.out) / "results.db")

    def to_dict(self) -> dict[str, Any]:
        """The suite in its YAML layout (seeds as a list, the budget as ``KIND=N``);
        :meth:`from_dict` reads it back."""
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "data_dir": self.data_dir,
            "tasks": list(self.tasks),
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
        elif val is not None and (isinstance(val, bool) or not isinstance(val, int | float)):
            raise SuiteConfigError(f"{where}: train.{key}={val!r} must be a number")
    try:
        return TrainConfig.from_dict(data)
    except BenchmarkConfigError as exc:
        raise SuiteConfigError(f"{where}: {exc}") from None
