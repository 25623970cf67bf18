r"""How close a pruned TPE search gets to an exhaustive grid, and for what fraction of its compute.

Reads the search summaries of two studies of the same variant and task from a results database
(see benchmarks/search_rank_grid.yaml and search_rank_tpe.yaml) and prints every grid point, the
TPE trials, and the comparison: best score of each, the gap, and TPE's spend as a fraction of the
grid's (optimiser steps and training + evaluation seconds, pruned trials included).

    lorabench search --config benchmarks/search_rank_grid.yaml \
        --data-dir ../shared/data/glue --threads 1
    lorabench search --config benchmarks/search_rank_tpe.yaml \
        --data-dir ../shared/data/glue --threads 1
    python benchmarks/search_vs_grid.py --results runs/search-rank/results.db \
        --grid rank-grid --tpe rank-tpe
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lorabench.search.summary import load_search_summaries


def find_summary(
    summaries: list[dict[str, Any]], prefix: str, variant: str | None, task: str | None
) -> dict[str, Any]:
    """The one summary whose study is PREFIX/VARIANT/TASK (variant and task optional if unique)."""
    matches = [
        s
        for s in summaries
        if s["study"].split("/")[0] == prefix
        and (variant is None or s["variant"] == variant)
        and (task is None or s["task"] == task)
    ]
    if len(matches) != 1:
        studies = sorted(s["study"] for s in summaries)
        raise SystemExit(
            f"expected one study with prefix {prefix!r}, found {len(matches)}; "
            f"stored studies: {studies}"
        )
    return matches[0]


def spend_of(summary: dict[str, Any]) -> dict[str, float]:
    """Steps and seconds summed over every trial (pruned and failed ones included)."""
    total = {"steps": 0.0, "seconds": 0.0}
    for row in summary["score_vs_rank"]:
        spend = row.get("spend") or {}
        for key in total:
            total[key] += float(spend.get(key) or 0.0)
    return total


def trial_table(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| trial | state | rank | score | steps | seconds | note |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in summary["score_vs_rank"]:
        spend = row.get("spend") or {}
        note = (
            f"same config as trial {row['duplicate_of']}"
            if row.get("duplicate_of") is not None
            else ""
        )
        if row["state"] == "PRUNED":
            note = "pruned (score at its last evaluation)"
        score = "-" if row["score"] is None else f"{row['score']:.4f}"
        lines.append(
            f"| {row['trial']} | {row['state']} | {row['rank']} | {score} "
            f"| {spend.get('steps', 0):.0f} "
            f"| {spend.get('seconds', 0):.1f} | {note} |"
        )
    return lines


def compare(grid: dict[str, Any], tpe: dict[str, Any]) -> dict[str, Any]:
    if not grid["best"] or not tpe["best"]:
        raise SystemExit("a study has no finished trial yet: run both searches to the end first")
    grid_spend, tpe_spend = spend_of(grid), spend_of(tpe)
    sign = 1.0 if grid["higher_is_better"] else -1.0
    fractions = {
        k: tpe_spend[k] / grid_spend[k]
        for k in ("steps", "seconds")
        if grid_spend.get(k) and k in tpe_spend
    }
    return {
        "variant": grid["variant"],
        "task": grid["task"],
        "grid_best_score": grid["best"]["score"],
        "grid_best_rank": grid["best_rank"],
        "tpe_best_score": tpe["best"]["score"],
        "tpe_best_rank": tpe["best_rank"],
        "gap": sign * (grid["best"]["score"] - tpe["best"]["score"]),
        "grid_spend": grid_spend,
        "tpe_spend": tpe_spend,
        "tpe_fraction_of_grid": fractions,
        "tpe_states": tpe["states"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--results", required=True, help="results database holding both searches' summaries"
    )
    parser.add_argument(
        "--grid", required=True, metavar="PREFIX", help="study prefix of the grid search"
    )
    parser.add_argument(
        "--tpe", required=True, metavar="PREFIX", help="study prefix of the TPE search"
    )
    parser.add_argument("--variant")
    parser.add_argument("--task")
    parser.add_argument("--json", metavar="OUT", help="also write the comparison here")
    args = parser.parse_args(argv)

    summaries = load_search_summaries(args.results)
    grid = find_summary(summaries, args.grid, args.variant, args.task)
    tpe = find_summary(summaries, args.tpe, grid["variant"], grid["task"])
    result = compare(grid, tpe)

    for name, summary in (("grid", grid), ("TPE + pruning", tpe)):
        print(
            f"\n{name}: {summary['study']} ({summary['sampler']}, pruner {summary['pruner']}, "
            f"budget {summary['budget']})"
        )
        print("\n".join(trial_table(summary)))
    frac = ", ".join(f"{v:.0%} of its {k}" for k, v in result["tpe_fraction_of_grid"].items())
    print(
        f"\n{result['variant']} on {result['task']}: "
        f"grid best {result['grid_best_score']:.4f} at r={result['grid_best_rank']}; "
        f"TPE best {result['tpe_best_score']:.4f} at r={result['tpe_best_rank']} "
        f"(gap {result['gap']:+.4f}) using {frac}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
