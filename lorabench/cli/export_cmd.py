"""``lorabench export``: a trained adapter in another library's format (Hugging Face PEFT)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "export a trained adapter (a folder or a run id) as a Hugging Face PEFT adapter"
DESCRIPTION = """Write a lorabench adapter as a PEFT adapter folder (adapter_config.json +
adapter_model.safetensors) that peft.PeftModel.from_pretrained(base_model, OUT) loads, giving the
same outputs. The trained task head goes with it as PEFT's modules_to_save.

ADAPTER_DIR|RUN_ID is an adapter folder (a suite keeps each run's in OUT/adapters/<run_id>/,
or adapter.save(...) wrote it), or a run id (or a unique prefix of one) looked up in the
adapters/ folder of --results.

Types: LoRA and rsLoRA (PEFT LoRA), DoRA (LoRA with use_dora), VeRA, AdaLoRA (with its pruned
rank pattern) and DyLoRA at one rank (--rank; default the rank it was saved with) as a plain PEFT
LoRA. Variants without a PEFT type (SoRA, IncreLoRA) are refused. lorabench reads PEFT folders
back with lorabench.variants.load_adapter(model, folder).

examples:
  lorabench export runs/adapters/3f2a9c1e0b7d4a55 --out exported/lora-rte
  lorabench export 3f2a9c1e --results runs --out exported/best
  lorabench export 3f2a9c1e --results runs/results.db --rank 4 --out exported/dylora-r4"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of ``lorabench export`` to ``parser``."""
    parser.add_argument(
        "source", metavar="ADAPTER_DIR|RUN_ID", help="an adapter folder, or a run id (or prefix)"
    )
    parser.add_argument(
        "--format",
        choices=("peft",),
        default="peft",
        help="the format to write: 'peft', a Hugging Face PEFT adapter folder (default)",
    )
    parser.add_argument("--out", required=True, help="folder to write the exported adapter into")
    parser.add_argument(
        "--rank",
        type=int,
        metavar="N",
        help="export a nested-rank adapter (DyLoRA) at rank N (default: the rank it was saved "
        "with); other variants keep their own ranks",
    )
    parser.add_argument(
        "--results",
        default="runs",
        metavar="RESULTS_DB_OR_OUTPUT_DIR",
        help="where a RUN_ID is looked up: a suite's output folder (holding adapters/ and "
        "results.db) or its results database file (adapters/ beside it); default runs",
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``lorabench export``; returns the exit code (0 written, 2 when the source cannot be
    found or exported)."""
    from lorabench.cli.common import out_dir_error

    problem = out_dir_error(args.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        folder, model_name = _find_source(args.source, args.results)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from lorabench.variants import ConfigError, PeftFormatError, export_peft

    try:
        out = export_peft(folder, args.out, rank=args.rank, base_model_name_or_path=model_name)
    except (PeftFormatError, ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_summary(out, folder))
    return 0


def _find_source(source: str, results: str) -> tuple[Path, str | None]:
    """The adapter folder ``source`` names, and the base model its run used when the results
    database knows it (for PEFT's ``base_model_name_or_path``)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path, None
    if "://" in results:
        raise LookupError(
            f"{source!r} is not a folder; to find a run id, give --results the suite's output "
            "folder (the one holding adapters/), not a database URL"
        )
    where = Path(results).expanduser()
    database = where if where.is_file() else where / "results.db"
    root = (where.parent if where.is_file() else where) / "adapters"
    if not root.is_dir():
        raise LookupError(
            f"{source!r} is neither an adapter folder nor a run id under {root} (no such "
            "folder); give the adapter folder, or --results OUT of the suite that trained it "
            "(runs keep their adapters unless --no-adapters)"
        )
    exact = root / source
    if exact.is_dir():
        found = [exact]
    else:
        found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(source))
    if len(found) != 1:
        kind = "no run id" if not found else f"{len(found)} run ids"
        shown = ", ".join(p.name for p in found[:5])
        raise LookupError(
            f"{kind} under {root} start with {source!r}{f' ({shown})' if found else ''}; give "
            "the full run id or its adapter folder"
        )
    return found[0], _model_of(database, found[0].name)


def _model_of(database: Path, run_id: str) -> str | None:
    if not database.is_file():
        return None
    try:
        from lorabench.results.store import ResultStore

        store = ResultStore(database, create=False)
        try:
            record = store.get(run_id)
        finally:
            store.close()
    except Exception:  # the database is optional here: the folder alone is enough
        return None
    return record.model if record is not None and record.model else None


def _summary(out: Path, folder: Path) -> str:
    import json

    config = json.loads((out / "adapter_config.json").read_text())
    kind = config.get("peft_type", "?")
    if config.get("use_dora"):
        kind += " (use_dora)"
    elif config.get("use_rslora"):
        kind += " (use_rslora)"
    modules = len(config.get("target_modules") or [])
    head = config.get("modules_to_save") or []
    lines = [
        f"wrote a PEFT {kind} adapter of {modules} modules"
        + (f" with the task head ({', '.join(head)})" if head else "")
        + f" from {folder} to {out}",
        f"  load it with: peft.PeftModel.from_pretrained(base_model, {str(out)!r})",
    ]
    return "\n".join(lines)
