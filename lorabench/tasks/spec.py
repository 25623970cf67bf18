"""What a task is: data, not code.

A :class:`TaskSpec` says where the examples come from, which columns hold the text and the label,
how labels map to class ids (or that the task is a regression), which metrics to compute and in
which direction they improve, and which one is primary. Loading code lives in
``lorabench.tasks.sources``; metric code in ``lorabench.tasks.metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lorabench.tasks.metrics import get_metric

TaskType = Literal["classification", "regression"]


@dataclass(frozen=True)
class MetricSpec:
    """A task's reference to a metric, with its direction (``higher_is_better`` as in
    lm-evaluation-harness).

    ``higher_is_better`` left out (``None``) is taken from the metric's record
    (:func:`lorabench.tasks.metrics.get_metric`; an unknown name then fails with "did you mean"),
    so after construction it is always a bool. Give it only to override the record or for a
    metric that has none.
    """

    name: str  # a registered metric, e.g. "accuracy", "f1", "matthews"
    higher_is_better: bool | None = None

    def __post_init__(self) -> None:
        if self.higher_is_better is None:
            # Frozen: the one place the field is written, before anyone can read it.
            object.__setattr__(self, "higher_is_better", get_metric(self.name).higher_is_better)


@dataclass(frozen=True)
class TaskSpec:
    """A task as data.

    Attributes:
        name: registry name, lower case ("rte", "mrpc", "planted-r4").
        version: bumped whenever the data, preprocessing or metrics change, recorded in results.
        source: where the examples come from: "glue" (hub, GLUE TSV folder or local HF copy),
            "custom" (CSV/JSONL + YAML spec), "planted" (generated, no download).
        text_columns: one column (single sentence) or two (sentence pair), in canonical names.
        label_column: the canonical label column name.
        task_type: classification or regression.
        label_names: class names in id order (classification); ``None`` for regression.
        metrics: what to compute on evaluation splits.
        primary_metric: the metric a comparison ranks by (a name from ``metrics``; for a task with
            several evaluation splits, the primary split's value is used).
        train_split: name of the training split.
        eval_splits: evaluation split names; the first is primary (MNLI: matched, mismatched).
        options: source-specific settings (hub id and config, TSV file layout, planted-rank
            teacher recipe, custom file paths). Free-form but JSON-serialisable.
        description: one line for ``lorabench list tasks``.
    """

    name: str
    version: str
    source: str
    text_columns: tuple[str, ...]
    label_column: str = "label"
    task_type: TaskType = "classification"
    label_names: tuple[str, ...] | None = None
    metrics: tuple[MetricSpec, ...] = (MetricSpec("accuracy"),)
    primary_metric: str = "accuracy"
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("validation",)
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    description: str = ""

    @property
    def num_labels(self) -> int:
        """Output units of the prediction head (1 for regression)."""
        return 1 if self.task_type == "regression" else len(self.label_names or ())

    def metric(self, name: str) -> MetricSpec:
        """The spec of metric ``name``; a KeyError listing the task's metrics when it has none
        of that name."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(
            f"task {self.name!r} has no metric {name!r}; it has {[m.name for m in self.metrics]}"
        )

    @property
    def higher_is_better(self) -> bool:
        """Direction of the primary metric."""
        return self.metric(self.primary_metric).higher_is_better
