"""GLUE tasks: specs, the TSV layout and its quirks, local Hugging Face copies, the Hub fallback.

Data: the hand-written fixtures in tests/fixtures/glue (see the README there), never real GLUE.
"""

from __future__ import annotations

import argparse
import shutil
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from lorabench.cli import list_cmd
from lorabench.tasks import TASKS, LoadRequest, TaskData, get_task, load_task
from lorabench.tasks.glue import GLUE_TASKS
from lorabench.tasks.sources import DataNotFoundError, TaskDataError
from lorabench.tasks.sources.tsv import MalformedRowsWarning

FIXTURES = Path(__file__).parent / "fixtures" / "glue"

# task -> split -> (text columns' first-row values, labels in file order). Written from the
# fixture files by hand, with the nyu-mll/glue label ids.
EXPECTED: dict[str, dict[str, tuple[dict[str, str], list]]] = {
    "cola": {
        "train": (
            {"sentence": "Our friends won't buy this analysis, let alone the next one we propose."},
            [1, 0, 1, 0],
        ),
        "validation": ({"sentence": "The sailors rode the breeze clear of the rocks."}, [1, 0]),
    },
    "sst2": {
        "train": ({"sentence": "hide new secretions from the parental units "}, [0, 1, 1]),
        "validation": ({"sentence": "it 's a charming and often affecting journey . "}, [1, 0]),
    },
    "mrpc": {
        "train": (
            {
                "sentence1": (
                    'Amrozi accused his brother , whom he called " the witness , '
                    "of distorting evidence ."
                ),
                "sentence2": (
                    'Referring to him as only " the witness " , Amrozi accused his brother .'
                ),
            },
            [1, 0, 1],
        ),
        "validation": (
            {"sentence1": "He said the pie business does n't fit the company 's strategy ."},
            [1, 0],
        ),
    },
    "qqp": {
        "train": (
            {"question1": "How is the life of a math student?"},
            [0, 1, 1],  # the split row (2 malformed lines) is skipped
        ),
        "validation": ({"question2": "Why are hispanics so beautiful?"}, [0, 0, 1]),
    },
    "stsb": {
        "train": (
            {"sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off."},
            [5.0, 3.8, 0.5],
        ),
        "validation": ({"sentence1": "A man with a hard hat is dancing."}, [5.0, 4.75]),
    },
    "mnli": {
        "train": (
            {
                "premise": (
                    "Conceptually cream skimming has two basic dimensions - product and geography."
                )
            },
            [1, 0, 2],
        ),
        "validation_matched": (
            {"hypothesis": "Everyone really likes the newest benefits "},
            [1, 2],
        ),
        # Row 2's label1 says contradiction but its gold_label (last column) says entailment.
        "validation_mismatched": ({"hypothesis": "Your contributions were of no help."}, [2, 0]),
    },
    "qnli": {
        "train": ({"question": "When did the third Digimon series begin?"}, [1, 0]),
        "validation": (
            {
                "sentence": (
                    "As of that day, the new constitution heralding the Second Republic "
                    "came into force."
                )
            },
            [0, 1],
        ),
    },
    "rte": {
        "train": ({"sentence1": "No Weapons of Mass Destruction Found in Iraq Yet."}, [1, 0, 0]),
        "validation": ({"sentence2": "Christopher Reeve had an accident."}, [1, 0]),
    },
    "wnli": {
        "train": ({"sentence2": "The carrot had a hole."}, [1, 1, 0]),
        "validation": ({"sentence2": "The hair has to be cleaned."}, [0, 1]),
    },
}

# The ClassLabel names of nyu-mll/glue, in id order.
HUB_LABEL_NAMES = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "stsb": None,
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
}
HUB_COLUMNS = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
PRIMARY = {"cola": "matthews", "stsb": "pearson"}


def load_fixture(task: str, data_dir: Path = FIXTURES, **limits) -> TaskData:
    # QQP's malformed-row warning is checked in its own test; here it would only be noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRowsWarning)
        return load_task(task, LoadRequest(data_dir=str(data_dir), **limits))


def test_all_nine_glue_tasks_are_registered_with_descriptions():
    assert {s.name for s in GLUE_TASKS} == set(EXPECTED)
    assert set(EXPECTED) <= set(TASKS.list())
    for name in EXPECTED:
        spec = get_task(name)
        assert spec.source == "glue" and spec.version
        assert TASKS.describe(name).startswith("GLUE ")


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_spec_matches_the_hub_copy(task):
    spec = get_task(task)
    assert spec.label_names == HUB_LABEL_NAMES[task]
    assert spec.text_columns == HUB_COLUMNS[task]
    assert spec.label_column == "label"
    assert spec.primary_metric == PRIMARY.get(task, "accuracy")
    assert spec.num_labels == (1 if task == "stsb" else len(HUB_LABEL_NAMES[task]))
    assert spec.options["hub"] == {"path": "nyu-mll/glue", "name": task}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_every_task_loads_from_the_tsv_fixtures(task):
    data = load_fixture(task)
    spec = data.spec
    assert list(data.splits) == [spec.train_split, *spec.eval_splits] == list(EXPECTED[task])
    assert data.source == f"glue-tsv:{FIXTURES / spec.options['folders'][0]}"
    for split, (first_row, labels) in EXPECTED[task].items():
        frame = data.split(split)
        assert list(frame.columns) == [*spec.text_columns, "label"]
        assert frame["label"].tolist() == labels
        assert frame["label"].dtype == ("float64" if task == "stsb" else "int64")
        for column, value in first_row.items():
            assert frame[column].iloc[0] == value


def test_metric_sets():
    assert [m.name for m in get_task("mrpc").metrics] == ["accuracy", "f1"]
    assert [m.name for m in get_task("qqp").metrics] == ["accuracy", "f1"]
    assert [m.name for m in get_task("stsb").metrics] == ["pearson", "spearman"]
    assert get_task("cola").metrics[0].name == "matthews"
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")


def test_mrpc_byte_order_mark_and_unbalanced_quotes():
    frame = load_fixture("mrpc").split("validation")
    # With CSV quoting on, the lone quote would swallow the following rows into one field.
    assert len(frame) == 2
    assert (
        frame["sentence2"].tolist()[0]
        == '" The pie business does not fit our long-term growth strategy .'
    )


def test_cola_has_no_header_so_the_first_row_is_an_example():
    frame = load_fixture("cola").split("train")
    assert len(frame) == 4
    assert frame["sentence"].iloc[3] == 'The more you eat, the more you want " to.'


def test_qqp_malformed_rows_are_skipped_counted_and_warned():
    with pytest.warns(MalformedRowsWarning, match=r"skipped 2 malformed row\(s\)"):
        data = load_task("qqp", LoadRequest(data_dir=str(FIXTURES)))
    assert data.extras["skipped_rows"] == {"train": 2, "validation": 0}
    assert data.split("validation")["question2"].iloc[1] == ""  # an empty question is a real row


def test_stsb_score_is_the_last_of_ten_fields(tmp_path):
    # An eleventh field (a tab inside a sentence) must not move the score: it is read from the end.
    folder = tmp_path / "STS-B"
    shutil.copytree(FIXTURES / "STS-B", folder)
    with (folder / "dev.tsv").open("a", encoding="utf-8") as handle:
        handle.write("2\tmain-news\theadlines\t2013\t0009\tnone\tnone\tA cat\tA\tcat\t2.600\n")
    frame = load_task("stsb", LoadRequest(data_dir=str(tmp_path))).split("validation")
    assert frame["label"].tolist() == [5.0, 4.75, 2.6]


def test_mnli_string_labels_and_both_eval_splits():
    data = load_fixture("mnli")
    assert set(data.splits) == {"train", "validation_matched", "validation_mismatched"}
    assert (
        data.split("validation_mismatched")["premise"].iloc[1]
        == "The answer has nothing to do with their cause."
    )


def test_lower_case_and_hub_config_folder_names_and_the_task_folder_itself(tmp_path):
    shutil.copytree(FIXTURES / "RTE", tmp_path / "rte")
    shutil.copytree(FIXTURES / "SST-2", tmp_path / "sst2")
    assert load_task("rte", LoadRequest(data_dir=str(tmp_path))).split("train")[
        "label"
    ].tolist() == [1, 0, 0]
    assert len(load_task("sst2", LoadRequest(data_dir=str(tmp_path))).split("train")) == 3
    direct = load_task("rte", LoadRequest(data_dir=str(FIXTURES / "RTE")))
    assert direct.split("validation")["label"].tolist() == [1, 0]


def test_example_limits_are_deterministic_nested_and_seed_independent():
    full = load_fixture("cola").split("train")
    a = load_fixture("cola", max_train_examples=2).split("train")
    b = load_task(
        "cola", LoadRequest(data_dir=str(FIXTURES), seed=123, max_train_examples=2)
    ).split("train")
    c = load_fixture("cola", max_train_examples=3).split("train")
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c.head(2))
    assert len(a) == 2 and set(a["sentence"]) <= set(full["sentence"])
    mnli = load_fixture("mnli", max_eval_examples=1)
    assert [len(mnli.split(s)) for s in mnli.splits] == [3, 1, 1]


def test_missing_task_folder_names_what_is_there(tmp_path):
    (tmp_path / "SomethingElse").mkdir()
    with pytest.raises(DataNotFoundError, match=r"no folder 'QQP'.*SomethingElse"):
        load_task("qqp", LoadRequest(data_dir=str(tmp_path)))
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        load_task("qqp", LoadRequest(data_dir=str(tmp_path / "nope")))


def test_missing_split_file_is_named(tmp_path):
    shutil.copytree(FIXTURES / "MNLI", tmp_path / "MNLI")
    (tmp_path / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(
        DataNotFoundError, match=r"dev_mismatched\.tsv not found.*'validation_mismatched'"
    ):
        load_task("mnli", LoadRequest(data_dir=str(tmp_path)))


def test_wrong_task_folder_fails_on_the_header():
    with pytest.raises(TaskDataError, match=r"no column '#1 String'.*right task folder"):
        load_task("mrpc", LoadRequest(data_dir=str(FIXTURES / "RTE")))


def test_unknown_label_value_is_reported(tmp_path):
    folder = tmp_path / "RTE"
    shutil.copytree(FIXTURES / "RTE", folder)
    with (folder / "dev.tsv").open("a", encoding="utf-8") as handle:
        handle.write("2\tA.\tB.\tcontradiction\n")
    with pytest.raises(
        TaskDataError, match=r"'contradiction'.*expected one of \['entailment', 'not_entailment'\]"
    ):
        load_task("rte", LoadRequest(data_dir=str(tmp_path)))


# -- local Hugging Face copies --------------------------------------------------------------------
def _as_datasetdict(task: str, label_names=None):
    datasets = pytest.importorskip("datasets")
    data = load_fixture(task)
    spec = data.spec
    features = {c: datasets.Value("string") for c in spec.text_columns}
    names = label_names or spec.label_names
    features["label"] = (
        datasets.ClassLabel(names=list(names)) if names else datasets.Value("float32")
    )
    return data, datasets.DatasetDict(
        {
            split: datasets.Dataset.from_pandas(
                frame, features=datasets.Features(features), preserve_index=False
            )
            for split, frame in data.splits.items()
        }
    )


def _assert_same_rows(loaded, reference):
    assert list(loaded.splits) == list(reference.splits)
    for split, frame in reference.splits.items():
        pd.testing.assert_frame_equal(loaded.split(split), frame, check_dtype=False)
        assert loaded.split(split)["label"].dtype == frame["label"].dtype


@pytest.mark.parametrize("task", ["rte", "mnli", "stsb"])
def test_save_to_disk_copy(tmp_path, task):
    reference, dataset = _as_datasetdict(task)
    dataset.save_to_disk(str(tmp_path / task))
    loaded = load_task(task, LoadRequest(data_dir=str(tmp_path)))
    assert loaded.source == f"hf-disk:{tmp_path / task}"
    _assert_same_rows(loaded, reference)


@pytest.mark.parametrize("task", ["mrpc", "mnli"])
def test_parquet_copy_in_the_hub_snapshot_layout(tmp_path, task):
    reference, dataset = _as_datasetdict(task)
    for split, part in dataset.items():
        part.to_parquet(str(tmp_path / task / f"{split}-00000-of-00001.parquet"))
    loaded = load_task(task, LoadRequest(data_dir=str(tmp_path)))
    assert loaded.source == f"hf-parquet:{tmp_path / task}"
    _assert_same_rows(loaded, reference)


def test_plain_parquet_files_with_string_labels(tmp_path):
    folder = tmp_path / "rte"
    folder.mkdir()
    pd.DataFrame(
        {
            "sentence1": ["a", "b"],
            "sentence2": ["c", "d"],
            "label": ["entailment", "not_entailment"],
        }
    ).to_parquet(folder / "train.parquet")
    pd.DataFrame({"sentence1": ["e"], "sentence2": ["f"], "label": ["not_entailment"]}).to_parquet(
        folder / "validation.parquet"
    )
    data = load_task("rte", LoadRequest(data_dir=str(tmp_path)))
    assert data.split("train")["label"].tolist() == [0, 1]
    assert data.split("validation")["label"].tolist() == [1]


def test_local_copy_with_another_label_order_is_refused(tmp_path):
    _, dataset = _as_datasetdict("rte", label_names=("not_entailment", "entailment"))
    dataset.save_to_disk(str(tmp_path / "rte"))
    with pytest.raises(TaskDataError, match="label names"):
        load_task("rte", LoadRequest(data_dir=str(tmp_path)))


def test_local_copy_with_other_columns_names_them(tmp_path):
    folder = tmp_path / "sst2"
    folder.mkdir()
    for split in ("train", "validation"):
        pd.DataFrame({"text": ["fine"], "label": [1]}).to_parquet(folder / f"{split}.parquet")
    with pytest.raises(
        TaskDataError,
        match=r"missing column\(s\) \['sentence'\]; the columns present are \['text', 'label'\]",
    ):
        load_task("sst2", LoadRequest(data_dir=str(tmp_path)))


# -- the Hub, unreachable here ---------------------------------------------------------------------
def test_offline_hub_fails_fast_and_says_to_pass_data_dir(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(
        DataNotFoundError, match=r"(?s)nyu-mll/glue/rte.*--data-dir.*DIR/RTE/train\.tsv"
    ):
        load_task("rte")
    assert time.monotonic() - start < 30


def test_unreachable_hub_is_probed_before_datasets_is_asked(monkeypatch):
    datasets = pytest.importorskip("datasets")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("LORABENCH_HUB_TIMEOUT", "2")

    def must_not_be_called(*args, **kwargs):
        raise AssertionError("load_dataset was called although the Hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", must_not_be_called)
    start = time.monotonic()
    with pytest.raises(
        DataNotFoundError, match=r"(?s)127\.0\.0\.1:9 unreachable.*HF_HUB_OFFLINE=1.*--data-dir"
    ):
        load_task("mnli")
    assert time.monotonic() - start < 10


def test_hub_copy_when_datasets_can_load_it(monkeypatch):
    datasets = pytest.importorskip("datasets")
    reference, dataset = _as_datasetdict("mnli")
    calls = []

    def fake_load_dataset(path, name):
        calls.append((path, name))
        return dataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # answered from the cache: no probe
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_task("mnli", LoadRequest(max_train_examples=2))
    assert calls == [("nyu-mll/glue", "mnli")]
    assert loaded.source == "hub:nyu-mll/glue/mnli"
    train = loaded.split("train")
    assert len(train) == 2
    label_of = dict(zip(reference.split("train")["premise"], reference.split("train")["label"]))
    assert train["label"].tolist() == [label_of[p] for p in train["premise"]]
    pd.testing.assert_frame_equal(
        loaded.split("validation_mismatched"),
        reference.split("validation_mismatched"),
        check_dtype=False,
    )


def test_non_positive_example_limit_is_refused():
    with pytest.raises(ValueError, match="must be positive, got 0"):
        load_task("rte", LoadRequest(data_dir=str(FIXTURES), max_train_examples=0))


# -- lorabench list tasks --------------------------------------------------------------------------
def test_list_tasks_prints_each_glue_task_with_its_description(capsys):
    assert list_cmd.run(argparse.Namespace(what="tasks", pattern="*")) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for name in EXPECTED:
        assert TASKS.describe(name) in lines[name]


def test_list_tasks_shows_source_type_and_metrics_with_the_primary_starred(capsys):
    assert list_cmd.run(argparse.Namespace(what="tasks", pattern="*")) == 0
    rows = {
        line.split()[0]: line.split()[:5]
        for line in capsys.readouterr().out.splitlines()
        if line.strip()
    }
    assert rows["cola"][:4] == ["cola", "glue", "2-class", "matthews*,"]
    assert rows["stsb"][:4] == ["stsb", "glue", "regression", "pearson*,"]
    assert rows["mnli"][2] == "3-class"
    assert rows["planted-tiny"][1] == "planted"
