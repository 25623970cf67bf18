"""Suite throughput: ``--workers 2 --threads 1`` against ``--workers 1 --threads 2``.

Runs the quick preset (3 seeds by default) twice through ``lorabench run``, each time into a fresh
output folder under a temporary directory, and prints runs per minute for each and their ratio.
Target on a 2-core machine: at least 1.4x for two 1-thread workers.

    python benchmarks/suite_throughput.py                      # the full figure (~15 minutes)
    python benchmarks/suite_throughput.py --variants lora,dora --seeds 2 --steps 40   # a smoke run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = (("1 worker x 2 threads", 1, 2), ("2 workers x 1 thread", 2, 1))


def _runs(results: Path) -> int:
    """Finished runs in a results database."""
    from lorabench.results.store import ResultStore

    with ResultStore(results, create=False) as store:
        return len(store.finished_ids())


def main(argv: list[str] | None = None) -> int:
    """Times both configurations and prints runs per minute and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick", help="suite preset (default quick)")
    parser.add_argument("--seeds", default="3", help="seeds: a count or a list (default 3)")
    parser.add_argument("--variants", help="override the preset's variants, e.g. lora,dora")
    parser.add_argument("--steps", type=int, help="override the budget: steps=N (smoke runs)")
    args = parser.parse_args(argv)

    common = ["--preset", args.preset, "--seeds", args.seeds, "--no-adapters", "--quiet"]
    if args.variants:
        common += ["--variants", args.variants]
    if args.steps:
        common += ["--budget", f"steps={args.steps}"]
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lorabench-throughput-") as tmp:
        for label, workers, threads in CONFIGS:
            out = Path(tmp) / f"w{workers}t{threads}"
            command = [
                *(sys.executable, "-m", "lorabench.cli.main", "run", *common),
                *("--out", str(out), "--workers", str(workers), "--threads", str(threads)),
            ]
            began = time.perf_counter()
            done = subprocess.run(command, stdout=subprocess.DEVNULL, check=False)
            seconds = time.perf_counter() - began
            if done.returncode != 0:
                print(f"{label}: 'lorabench run' exited {done.returncode}: {' '.join(command)}")
                return 1
            runs = _runs(out / "results.db")
            rates[label] = runs / seconds * 60
            print(f"{label}: {runs} runs in {seconds:.1f} s = {rates[label]:.2f} runs/min")
    one, two = (rates[label] for label, _, _ in CONFIGS)
    print(f"ratio (2 workers x 1 thread / 1 worker x 2 threads): {two / one:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
