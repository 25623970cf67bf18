"""The nine GLUE tasks as data, and the ``"glue"`` source that finds whichever copy the user has.

Canonical columns, label ids and split names are those of the Hugging Face copy ``nyu-mll/glue``
(e.g. MNLI ``premise``/``hypothesis``, entailment=0 neutral=1 contradiction=2; RTE and QNLI
entailment=0 not_entailment=1; WNLI not_entailment=0 entailment=1), so every source yields the
same frames. Evaluation is on the dev sets (GLUE test labels are hidden), named ``validation``
(MNLI: ``validation_matched`` first, then ``validation_mismatched``).

Metrics follow the GLUE paper; the primary metric follows the convention of the LoRA, VeRA and
AdaLoRA papers whose numbers the project compares against (docs: shared/guide/anchors.md):
Matthews correlation for CoLA, Pearson for STS-B, accuracy for everything else, MRPC and QQP
included (F1 is computed and stored beside it).

Where the data comes from (``LoadRequest.data_dir``):

* a folder in the original GLUE TSV layout, ``DIR/<TASK>/{train,dev}.tsv`` with the official task
  folder names (``CoLA``, ``SST-2``, ``STS-B``...; any case, or the Hub config name ``sst2``);
* or a local Hugging Face copy in ``DIR/<config>/`` (``save_to_disk`` folder or parquet files);
* ``DIR`` may also be the task folder itself;
* no ``data_dir``: the Hub through ``datasets``, failing within seconds when it is unreachable.

Rows of a TSV file with missing fields (a few in QQP) are skipped with a warning; the counts per
split are in ``TaskData.extras["skipped_rows"]`` when there are any.

Bump a task's ``version`` when its preprocessing, label map or metrics change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lorabench.tasks import TASKS
from lorabench.tasks.data import LoadRequest, TaskData, register_source
from lorabench.tasks.sources.common import DataNotFoundError, finalize
from lorabench.tasks.sources.hf_local import has_parquet, is_save_to_disk, read_hf_local
from lorabench.tasks.sources.hub import read_hub
from lorabench.tasks.sources.tsv import read_glue_tsv_folder
from lorabench.tasks.spec import MetricSpec, TaskSpec

HUB_DATASET = "nyu-mll/glue"
_DEV = {"train": "train.tsv", "validation": "dev.tsv"}
_ACC = (MetricSpec("accuracy"),)
_ACC_F1 = (MetricSpec("accuracy"), MetricSpec("f1"))


def _glue(
    name: str,
    folder: str,
    *,
    text: dict[str, str | int],
    label: str | int,
    label_names: tuple[str, ...] | None,
    metrics: tuple[MetricSpec, ...],
    primary: str,
    description: str,
    header: bool = True,
    files: dict[str, str] = _DEV,
    version: str = "1",
) -> TaskSpec:
    """One GLUE TaskSpec; ``text`` maps canonical text columns to TSV header names/positions."""
    eval_splits = tuple(s for s in files if s != "train")
    options: dict[str, Any] = {
        "hub": {"path": HUB_DATASET, "name": name},
        "folders": [folder, folder.lower(), name],
        "tsv": {"header": header, "columns": {**text, "label": label}, "files": dict(files)},
    }
    return TaskSpec(
        name=name,
        version=version,
        source="glue",
        text_columns=tuple(text),
        label_column="label",
        task_type="regression" if label_names is None else "classification",
        label_names=label_names,
        metrics=metrics,
        primary_metric=primary,
        eval_splits=eval_splits,
        options=options,
        description=description,
    )


GLUE_TASKS: tuple[TaskSpec, ...] = (
    _glue(
        "cola",
        "CoLA",
        # No header row in train/dev: source, label, original label (* or empty), sentence.
        header=False,
        text={"sentence": 3},
        label=1,
        label_names=("unacceptable", "acceptable"),
        metrics=(MetricSpec("matthews"), MetricSpec("accuracy")),
        primary="matthews",
        description="GLUE CoLA: is the sentence grammatical? (8.5k train; Matthews corr.)",
    ),
    _glue(
        "sst2",
        "SST-2",
        text={"sentence": "sentence"},
        label="label",
        label_names=("negative", "positive"),
        metrics=_ACC,
        primary="accuracy",
        description="GLUE SST-2: movie-review sentence sentiment (67k train; accuracy)",
    ),
    _glue(
        "mrpc",
        "MRPC",
        text={"sentence1": "#1 String", "sentence2": "#2 String"},
        label="Quality",
        label_names=("not_equivalent", "equivalent"),
        metrics=_ACC_F1,
        primary="accuracy",
        description="GLUE MRPC: are two news sentences paraphrases? (3.7k train; accuracy, F1)",
    ),
    _glue(
        "qqp",
        "QQP",
        text={"question1": "question1", "question2": "question2"},
        label="is_duplicate",
        label_names=("not_duplicate", "duplicate"),
        metrics=_ACC_F1,
        primary="accuracy",
        description="GLUE QQP: are two Quora questions duplicates? (364k train; accuracy, F1)",
    ),
    _glue(
        "stsb",
        "STS-B",
        # Ten fields; the score is the last one (the official readers index it from the end).
        text={"sentence1": "sentence1", "sentence2": "sentence2"},
        label=-1,
        label_names=None,
        metrics=(MetricSpec("pearson"), MetricSpec("spearman")),
        primary="pearson",
        description=(
            "GLUE STS-B: sentence-pair similarity score 0-5, regression "
            "(5.7k train; Pearson, Spearman)"
        ),
    ),
    _glue(
        "mnli",
        "MNLI",
        text={"premise": "sentence1", "hypothesis": "sentence2"},
        label="gold_label",
        label_names=("entailment", "neutral", "contradiction"),
        metrics=_ACC,
        primary="accuracy",
        files={
            "train": "train.tsv",
            "validation_matched": "dev_matched.tsv",
            "validation_mismatched": "dev_mismatched.tsv",
        },
        description=(
            "GLUE MNLI: 3-way entailment, matched and mismatched genres (393k train; accuracy)"
        ),
    ),
    _glue(
        "qnli",
        "QNLI",
        text={"question": "question", "sentence": "sentence"},
        label="label",
        label_names=("entailment", "not_entailment"),
        metrics=_ACC,
        primary="accuracy",
        description="GLUE QNLI: does the sentence answer the question? (105k train; accuracy)",
    ),
    _glue(
        "rte",
        "RTE",
        text={"sentence1": "sentence1", "sentence2": "sentence2"},
        label="label",
        label_names=("entailment", "not_entailment"),
        metrics=_ACC,
        primary="accuracy",
        description="GLUE RTE: textual entailment, two classes (2.5k train; accuracy)",
    ),
    _glue(
        "wnli",
        "WNLI",
        text={"sentence1": "sentence1", "sentence2": "sentence2"},
        label="label",
        label_names=("not_entailment", "entailment"),
        metrics=_ACC,
        primary="accuracy",
        description="GLUE WNLI: Winograd pronoun entailment (635 train; accuracy; adversarial dev)",
    ),
)

for _spec in GLUE_TASKS:
    TASKS.add(_spec, overwrite=True)  # overwrite: re-importing (importlib.reload) is harmless


def find_task_folder(data_dir: Path, spec: TaskSpec) -> Path:
    """``data_dir``'s sub-folder for ``spec`` (official name, any case, or Hub config name), or
    ``data_dir`` itself when it already is a task folder."""
    if not data_dir.is_dir():
        raise DataNotFoundError(f"--data-dir {str(data_dir)!r} is not a folder")
    wanted = {f.lower() for f in spec.options["folders"]}
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and child.name.lower() in wanted:
            return child
    if (
        _tsv_train_file(data_dir, spec).is_file()
        or is_save_to_disk(data_dir)
        or has_parquet(data_dir)
    ):
        return data_dir
    present = sorted(p.name for p in data_dir.iterdir())
    raise DataNotFoundError(
        f"task {spec.name!r}: no folder {spec.options['folders'][0]!r} (or "
        f"{' / '.join(repr(f) for f in spec.options['folders'][1:])}) in {data_dir}; it holds "
        f"{present}. Expected the GLUE TSV layout DIR/{spec.options['folders'][0]}/train.tsv, or a "
        f"Hugging Face copy in DIR/{spec.options['hub']['name']}/ (save_to_disk or parquet)"
    )


def _tsv_train_file(folder: Path, spec: TaskSpec) -> Path:
    return folder / spec.options["tsv"]["files"][spec.train_split]


def glue_files(spec: TaskSpec, request: LoadRequest) -> list[Path] | None:
    """The files a load from ``--data-dir`` reads (every file of the task's folder); ``None``
    for the Hub."""
    if request.data_dir is None:
        return None
    folder = find_task_folder(Path(request.data_dir).expanduser(), spec)
    return sorted(p for p in folder.rglob("*") if p.is_file())


@register_source("glue", files=glue_files)
def load_glue(spec: TaskSpec, request: LoadRequest) -> TaskData:
    """Loads a GLUE task from the TSV layout, a local Hugging Face copy, or the Hub (in that order
    of preference: a given ``data_dir`` is never second-guessed by a download)."""
    skipped: dict[str, int] = {}
    splits: dict[str, pd.DataFrame]
    if request.data_dir is None:
        splits, source = read_hub(spec)
    else:
        folder = find_task_folder(Path(request.data_dir).expanduser(), spec)
        if any(folder.glob("*.tsv")):  # TSV files, even incomplete: report the missing one
            splits, skipped = read_glue_tsv_folder(spec, folder)
            source = f"glue-tsv:{folder}"
        else:
            splits, source = read_hf_local(spec, folder)
    extras = {"skipped_rows": skipped} if any(skipped.values()) else {}
    return finalize(spec, splits, request, source, extras)
