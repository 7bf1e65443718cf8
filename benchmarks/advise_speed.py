"""Benchmark: does `edgetl advise` finish in a few minutes on a CPU for a few hundred images?

Runs, on the demo dataset (240 train / 80 val images) in one process, side by side:
  1. advise with an empty feature cache (cold),
  2. advise again (features from the cache),
  3. advise --pilot (cached features + three short training runs).
Writes benchmarks/results/advise_speed.{json,md}; exits 1 if a wall time exceeds its target.

    OMP_NUM_THREADS=2 python benchmarks/advise_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from edgetl.analysis.advise import advise
from edgetl.analysis.pilot import PilotConfig
from edgetl.core.fileio import atomic_write_text
from edgetl.core.tables import markdown_table
from edgetl.data.demo import ensure_demo_dataset
from edgetl.diagnostics.machine import machine_info

# From a fresh clone (the package installed, not put on sys.path): the command behind results/advise_speed.*
REPRODUCE = "{}OMP_NUM_THREADS=2 .venv/bin/python benchmarks/advise_speed.py".format(
    "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[train,plot]' && "
)
TARGETS_S = {"advise (cold cache)": 180.0, "advise (cached features)": 30.0, "advise --pilot": 300.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows, reports = [], {}
    data = ensure_demo_dataset(train_per_class=60, val_per_class=20)  # the demo size the results were measured on
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-cache-") as cache:
        for name, pilot in (
            ("advise (cold cache)", None),
            ("advise (cached features)", None),
            ("advise --pilot", PilotConfig()),
        ):
            tick = time.perf_counter()
            report = advise(data, args.arch, cache_dir=Path(cache), pilot=pilot)
            seconds = time.perf_counter() - tick
            reports[name] = report
            rows.append(
                {
                    "run": name,
                    "wall_s": round(seconds, 1),
                    "target_s": TARGETS_S[name],
                    "ok": seconds <= TARGETS_S[name],
                    "quadrant": report["quadrant"],
                    "strategy": report["plan"]["strategy"],
                    "probe_accuracy": round(report["similarity"]["probe_accuracy"], 4),
                    "knn_accuracy": round(report["similarity"]["knn_accuracy"], 4),
                    "confidence": round(report["similarity"]["confidence"], 4),
                }
            )
            print("{:<26} {:7.1f} s (target {:.0f} s)".format(name, seconds, TARGETS_S[name]), flush=True)
    pilot_rows = reports["advise --pilot"]["pilot"]["rows"]
    omp_threads = os.environ.get("OMP_NUM_THREADS")
    result = {
        "command": REPRODUCE,
        "machine": dict(
            machine_info(int(omp_threads) if omp_threads else None),
            omp_threads=omp_threads,
            load_average_at_start=load_before,
        ),
        "data": reports["advise (cold cache)"]["data"],
        "size": reports["advise (cold cache)"]["size"],
        "runs": rows,
        "pilot": pilot_rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "advise_speed.json", json.dumps(result, indent=2) + "\n")
    columns = [
        "run",
        "wall_s",
        "target_s",
        "ok",
        "quadrant",
        "strategy",
        "probe_accuracy",
        "knn_accuracy",
        "confidence",
    ]
    pilot_columns = ["strategy", "trainable_stages", "val_top1", "time_s", "rule", "beats_rule"]
    markdown = "\n\n".join(
        [
            "# edgetl advise speed ({} CPUs, OMP_NUM_THREADS={}, load average {:.1f} at start)".format(
                os.cpu_count(), os.environ.get("OMP_NUM_THREADS"), load_before
            ),
            "Reproduce: `{}`".format(REPRODUCE),
            markdown_table(columns, [[row[c] for c in columns] for row in rows]),
            "## Pilot runs",
            markdown_table(pilot_columns, [[row[c] for c in pilot_columns] for row in pilot_rows]),
        ]
    )
    atomic_write_text(args.out / "advise_speed.md", markdown + "\n")
    print("wrote {}".format(args.out / "advise_speed.md"))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
