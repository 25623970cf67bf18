"""A results database written by release 0.1 still loads, reports and regresses.

``fixtures/release_0_1`` was written by lorabench at commit 99ef524 (before run ids hashed the
resolved run): ``lorabench regress --update-baseline --config suite.yaml`` over the five
variants on RTE (the tiny GLUE fixture) and a custom task, two seeds, 6 steps each. Its records
have no data or model fingerprint and name the custom task by its path (``reviews.yaml``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lorabench.harness.runner import run_config_of
from lorabench.results.records import RunRecord
from lorabench.results.store import ResultStore, load_results

RELEASE = Path(__file__).parent / "fixtures" / "release_0_1"


def copy_release(tmp_path: Path) -> Path:
    """A writable copy: SQLite may touch the file, and the repo's copy must stay as committed."""
    folder = tmp_path / "release_0_1"
    shutil.copytree(RELEASE, folder)
    return folder


def test_release_database_loads(tmp_path):
    folder = copy_release(tmp_path)
    store = ResultStore(folder / "results.db", create=False)
    records = store.records()
    assert len(records) == 20 and all(r.status == "finished" for r in records)
    assert {r.variant for r in records} == {"lora", "dora", "adalora", "vera", "dylora"}
    assert {r.task for r in records} == {"rte", "reviews.yaml"}
    assert all(r.schema_version == 1 and r.data_fingerprint == "" for r in records)
    frame = load_results(folder / "results.db")
    assert len(frame) == 20 and frame["final_score"].notna().all()
    # Their configs still parse (AdaLoRA's were written with init_r) and resolve the variant.
    for record in records:
        cfg = run_config_of(record)
        assert cfg.resolved_variant_config()["r"] == record.rank
    adalora = next(r for r in records if r.variant == "adalora")
    assert run_config_of(adalora).resolved_variant_config()["target_r"] == 4
    assert RunRecord.from_json(adalora.to_json()).run_id == adalora.run_id


def test_release_database_reports(tmp_path):
    from lorabench.reports import generate_report

    folder = copy_release(tmp_path)
    report = generate_report(folder / "results.db", tmp_path / "report")
    assert report.runs == 20 and report.html.is_file()
    table = (tmp_path / "report" / "results.md").read_text()
    for name in ("LoRA", "DoRA", "AdaLoRA", "VeRA", "DyLoRA"):
        assert name in table
    assert "RTE" in table
    # Only RTE rows: the report's filter still works on old records.
    rte = generate_report(folder / "results.db", tmp_path / "rte", tasks=["rte"])
    assert rte.runs == 10


def test_release_database_regresses_against_its_baseline(tmp_path, monkeypatch, cli_main, capsys):
    folder = copy_release(tmp_path)
    monkeypatch.chdir(folder)  # the baseline's suite names its custom task relative to here
    argv = ["regress", "--baseline", "baseline.json", "--results", "results.db"]
    assert cli_main([*argv, "--out", str(tmp_path / "regress"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "10 variant x task compared" in out
    assert (tmp_path / "regress" / "junit.xml").is_file()
