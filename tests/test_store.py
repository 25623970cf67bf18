"""The results database: idempotent writes, finished runs never lost, filters, several writers,
clear errors on foreign or corrupt files, and the environment stamp."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest
import sqlalchemy as sa

from lorabench.results.provenance import collect_environment
from lorabench.results.records import CurvePoint, RunRecord
from lorabench.results.store import ResultStore, ResultStoreError, load_curves, load_results


def make_record(
    run_id: str,
    *,
    status: str = "finished",
    variant: str = "lora",
    task: str = "rte",
    seed: int = 0,
    score: float | None = 0.5,
    tag: str = "",
) -> RunRecord:
    return RunRecord(
        run_id=run_id, status=status, variant=variant, task=task, model="tiny-bert", seed=seed,
        config={"variant": variant, "variant_config": {"r": 8}}, tag=tag,
        metrics={} if score is None else {"accuracy": score, "f1": score / 2},
        primary_metric="accuracy",
        score=score, rank=8, budget={"kind": "steps", "limit": 10},
        spent={"steps": 10, "train_seconds": 1.5, "peak_memory_bytes": 1000},
        trainable_params=120, adapter_params=100, total_params=10_000,
        curve=[
            CurvePoint(step=5, loss=0.7),
            CurvePoint(step=10, loss=0.6, metrics={"accuracy": score or 0.0}),
        ],
        ranks={"layer.0.query": 8},
        rank_scores={4: {"accuracy": 0.4}} if variant == "dylora" else None,
        started_at=f"2026-01-01T00:00:0{seed}", finished_at=f"2026-01-01T00:01:0{seed}",
    )  # fmt: skip


def test_add_get_roundtrip_and_parent_dirs(tmp_path):
    store = ResultStore(tmp_path / "deep" / "dir" / "results.db")
    record = make_record("a", variant="dylora")
    assert store.add(record)
    got = store.get("a")
    assert got == record  # dataclass equality: every field, curve points and int rank_scores keys
    assert store.get("missing") is None
    assert (tmp_path / "deep" / "dir" / "results.db").is_file()


def test_replace_rules_finished_is_never_lost(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    assert store.add(make_record("a", status="failed", score=None))
    assert store.finished_ids() == set()
    assert store.add(make_record("a", score=0.6))  # finished replaces failed
    assert not store.add(
        make_record("a", status="failed", score=None)
    )  # failed never replaces finished
    assert not store.add(make_record("a", status="pruned", score=0.1))
    assert store.get("a").status == "finished" and store.get("a").score == 0.6
    assert store.add(make_record("a", score=0.7))  # a finished re-run replaces
    assert store.get("a").score == 0.7
    assert len(store.records(status=None)) == 1  # never duplicated
    assert store.finished_ids() == {"a"}


def test_filters_and_dataframe(tmp_path):
    path = tmp_path / "r.db"
    store = ResultStore(path)
    for i, (variant, task, seed) in enumerate(
        [
            ("lora", "rte", 0),
            ("lora", "rte", 1),
            ("dora", "rte", 0),
            ("lora", "mrpc", 0),
            ("vera", "mrpc", 2),
        ]
    ):
        store.add(
            make_record(
                f"r{i}", variant=variant, task=task, seed=seed, tag="quick" if i < 2 else ""
            )
        )
    store.add(make_record("f", status="failed", score=None))
    assert {r.run_id for r in store.records()} == {"r0", "r1", "r2", "r3", "r4"}
    assert {r.run_id for r in store.records(tasks=["rte"], variants="lora")} == {"r0", "r1"}
    assert {r.run_id for r in store.records(seeds=[2])} == {"r4"}
    assert {r.run_id for r in store.records(tag="quick")} == {"r0", "r1"}
    assert {r.run_id for r in store.records(status="failed")} == {"f"}
    assert len(store.records(status=None)) == 6

    frame = load_results(path, tasks=["mrpc"])
    assert sorted(frame["run_id"]) == ["r3", "r4"]
    assert frame["accuracy"].tolist() == [0.5, 0.5]
    assert frame["train_seconds"].tolist() == [1.5, 1.5]
    assert frame["budget_limit"].tolist() == [10, 10]
    assert frame["r"].tolist() == [8, 8] and frame["final_rank_total"].tolist() == [8, 8]
    curves = load_curves(path, tasks=["mrpc"])
    assert curves.loc[curves["run_id"] == "r3", "accuracy"].tolist()[1] == 0.5

    empty = load_results(path, tasks=["nope"])
    assert empty.empty and "run_id" in empty.columns


def test_unparseable_record_is_skipped_with_warning(tmp_path):
    path = tmp_path / "r.db"
    store = ResultStore(path)
    store.add(make_record("good"))
    store.add(make_record("bad", seed=1))
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET record = '{not json' WHERE run_id = 'bad'"))
    with pytest.warns(UserWarning, match="run bad"):
        records = store.records()
    assert [r.run_id for r in records] == ["good"]


def test_a_database_another_process_is_creating_opens_once_its_tables_exist(tmp_path, monkeypatch):
    # Two drivers creating one new file at the same instant: one sees 'runs' before the meta
    # table exists. It must wait for the other creator, not call the file foreign.
    from lorabench.results import store as store_module

    path = tmp_path / "racing.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    store_module.RUNS.create(engine)  # the other creator got this far
    waits = []

    def other_creator_finishes(seconds: float) -> None:
        waits.append(seconds)
        store_module._metadata.create_all(engine, checkfirst=True)

    monkeypatch.setattr(store_module.time, "sleep", other_creator_finishes)
    store = ResultStore(path)
    assert len(waits) == 1
    assert store.records() == []
    store.close()
    engine.dispose()


def test_corrupt_and_foreign_files_give_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(ResultStoreError, match=r"corrupt\.db.*(not a lorabench|corrupt)"):
        ResultStore(corrupt)

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
    with pytest.raises(ResultStoreError, match=r"foreign\.db.*did not create"):
        ResultStore(foreign)

    newer = tmp_path / "newer.db"
    ResultStore(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE lorabench_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(ResultStoreError, match="upgrade lorabench"):
        ResultStore(newer)

    with pytest.raises(ResultStoreError, match=r"no results database at .*missing\.db"):
        load_results(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()  # readers never create files


def test_other_tables_in_the_same_database_are_fine(tmp_path):
    # Searches keep Optuna studies and summaries in the same file; a reader sees no runs yet.
    path = tmp_path / "shared.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE search_summaries (study TEXT PRIMARY KEY, summary TEXT)")
    assert load_results(path).empty
    store = ResultStore(path)
    store.add(make_record("a"))
    assert store.finished_ids() == {"a"}


def test_sqlite_uses_wal(tmp_path):
    path = tmp_path / "r.db"
    ResultStore(path).add(make_record("a"))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert (
            conn.execute("SELECT value FROM lorabench_meta WHERE key='schema_version'").fetchone()[
                0
            ]
            == "1"
        )


def _writer(path: str, worker: int, count: int) -> None:
    store = ResultStore(path)
    for i in range(count):
        # Both workers write the shared ids too: one row each in the end, none lost.
        store.add(make_record(f"w{worker}-{i}", seed=worker))
        store.add(
            make_record(f"shared-{i}", seed=i % 10, status="finished" if worker == 0 else "failed")
        )


def test_several_processes_write_one_file(tmp_path):
    path = str(tmp_path / "r.db")
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(path, w, 25)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    store = ResultStore(path)
    ids = [r.run_id for r in store.records(status=None)]
    assert len(ids) == len(set(ids)) == 75
    # Whatever the interleaving, each shared run ended finished (worker 0's record cannot be lost).
    assert all(store.get(f"shared-{i}").status == "finished" for i in range(25))


def test_collect_environment_is_cached_and_complete():
    env = collect_environment()
    for key in (
        "python",
        "platform",
        "packages",
        "git_commit",
        "git_dirty",
        "device",
        "hostname",
        "torch_threads",
    ):
        assert key in env
    assert env["packages"]["torch"] and env["packages"]["lorabench"]
    assert env["device"]["kind"] in ("cpu", "cuda") and env["device"]["name"]
    env["python"] = "changed"  # callers get a copy, the cache stays intact
    assert collect_environment()["python"] != "changed"
