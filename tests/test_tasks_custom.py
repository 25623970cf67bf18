"""Custom tasks: CSV/JSONL files described by a YAML spec (fixtures in tests/fixtures/custom)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from lorabench.tasks import TASKS, LoadRequest, get_task, load_task, register_custom_task
from lorabench.tasks.sources import DataNotFoundError, TaskDataError

FIXTURES = Path(__file__).parent / "fixtures" / "custom"


@pytest.fixture(autouse=True)
def _forget_registered_tasks():
    before = set(TASKS.list())
    yield
    for name in set(TASKS.list()) - before:
        TASKS.unregister(name)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the custom fixtures that a test may change."""
    shutil.copytree(FIXTURES, tmp_path / "custom")
    return tmp_path / "custom"


def write_spec(folder: Path, **fields) -> Path:
    spec = {
        "name": "tmp-task",
        "train": "reviews_train.csv",
        "validation": "reviews_dev.jsonl",
        "text_columns": ["text"],
        "label_column": "sentiment",
        **fields,
    }
    spec = {k: v for k, v in spec.items() if v is not None}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_csv_train_and_jsonl_validation_classification():
    spec = register_custom_task(FIXTURES / "reviews.yaml")
    assert spec.name == "fixture-reviews" and spec.source == "custom" and spec.version == "2"
    assert spec.label_names == ("negative", "positive")  # inferred, sorted
    assert [m.name for m in spec.metrics] == ["accuracy", "f1"] and spec.primary_metric == "f1"
    assert TASKS.describe("fixture-reviews") == "Tiny product reviews (test fixture)"

    data = load_task("fixture-reviews")
    train, dev = data.split("train"), data.split("validation")
    assert list(train.columns) == ["text", "sentiment"]
    assert train["sentiment"].tolist() == [1, 0, 0, 1, 1]
    assert train["text"].tolist()[2:4] == [
        "NA",
        'Five stars, would buy "again"',
    ]  # "NA" is text, "" is unquoted
    assert dev["sentiment"].tolist() == [0, 1, 1]
    assert dev["text"].iloc[0] == "Terrible, returned it"


def test_jsonl_regression_pair_task_with_default_metrics():
    spec = register_custom_task(FIXTURES / "similarity.yaml")
    assert spec.task_type == "regression" and spec.num_labels == 1 and spec.label_names is None
    assert [m.name for m in spec.metrics] == [
        "pearson",
        "spearman",
    ] and spec.primary_metric == "pearson"
    data = load_task(spec)
    assert list(data.split("train").columns) == ["left", "right", "score"]
    assert data.split("train")["score"].tolist() == [4.8, 0.2, 4.0]
    assert data.split("train")["score"].dtype == "float64"


def test_load_task_accepts_the_yaml_path():
    data = load_task(str(FIXTURES / "similarity.yaml"), LoadRequest(max_train_examples=2))
    assert data.spec.name == "fixture-similarity" and len(data.split("train")) == 2
    assert get_task("fixture-similarity") is not None


def test_given_label_names_fix_the_ids(workdir):
    spec = register_custom_task(write_spec(workdir, label_names=["positive", "negative"]))
    assert load_task(spec).split("validation")["sentiment"].tolist() == [1, 0, 0]


def test_numeric_labels_are_inferred_in_numeric_order(workdir):
    (workdir / "num.csv").write_text("text,label\na,10\nb,2\nc,3\nd,2\n", encoding="utf-8")
    path = write_spec(
        workdir,
        train="num.csv",
        validation="num.csv",
        label_column="label",
        metrics=["accuracy", "f1_macro"],
    )
    spec = register_custom_task(path)
    assert spec.label_names == ("2", "3", "10")
    assert load_task(spec).split("train")["label"].tolist() == [2, 0, 1, 0]


def test_several_evaluation_splits(workdir):
    spec = register_custom_task(
        write_spec(workdir, validation={"dev": "reviews_dev.jsonl", "test": "reviews_train.csv"})
    )
    assert spec.eval_splits == ("dev", "test")
    assert set(load_task(spec).splits) == {"train", "dev", "test"}


def test_missing_column_names_it_and_the_columns_present(workdir):
    with pytest.raises(
        TaskDataError,
        match=(
            r"missing column\(s\) \['review'\]; "
            r"the columns present are \['id', 'text', 'sentiment'\]"
        ),
    ):
        register_custom_task(write_spec(workdir, text_columns=["review"]))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"label_column": None}, "missing required key 'label_column'"),
        ({"colour": "blue"}, r"unknown key\(s\) \['colour'\]"),
        ({"type": "ranking"}, "type must be 'classification' or 'regression'"),
        ({"metrics": ["accuracy", "bleu"]}, "unknown metric 'bleu'"),
        ({"metrics": ["pearson"]}, "does not apply to a classification task"),
        ({"primary_metric": "f1"}, r"primary_metric 'f1' is not among metrics \['accuracy'\]"),
        ({"name": "Bad Name!"}, "must be letters, digits"),
        ({"text_columns": ["text", "id", "sentiment"]}, "one column or a pair"),
        ({"train": "reviews.xlsx"}, "does not exist"),
        ({"type": "regression"}, "not numbers"),
    ],
)
def test_bad_specs_fail_clearly(workdir, fields, message):
    with pytest.raises((TaskDataError, DataNotFoundError), match=message):
        register_custom_task(write_spec(workdir, **fields))


def test_unsupported_file_format(workdir):
    (workdir / "train.parquet").write_bytes(b"")
    with pytest.raises(TaskDataError, match=r"unsupported format '\.parquet'"):
        register_custom_task(write_spec(workdir, train="train.parquet"))


def test_label_only_in_validation_fails_at_registration(workdir):
    with (workdir / "reviews_dev.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"id": 9, "text": "meh", "sentiment": "neutral"}\n')
    with pytest.raises(
        TaskDataError, match=r"'neutral'.*expected one of \['negative', 'positive'\]"
    ):
        register_custom_task(write_spec(workdir))


def test_binary_f1_on_three_classes_is_refused(workdir):
    (workdir / "three.csv").write_text("text,label\na,x\nb,y\nc,z\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match="use 'f1_macro'"):
        register_custom_task(
            write_spec(
                workdir,
                train="three.csv",
                validation="three.csv",
                label_column="label",
                metrics=["f1"],
            )
        )


def test_a_custom_task_cannot_silently_replace_a_glue_task(workdir):
    with pytest.raises(ValueError, match="clashes with the registered task"):
        register_custom_task(write_spec(workdir, name="rte"))
    assert get_task("rte").source == "glue"
    register_custom_task(write_spec(workdir, name="tmp-again"))
    register_custom_task(workdir / "task.yaml")  # the same file again: fine


def test_spec_that_is_not_valid_yaml_names_the_file(workdir):
    path = workdir / "broken.yaml"
    path.write_text("name: x\ntext_columns: [text\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"broken\.yaml: not valid YAML"):
        register_custom_task(path)
