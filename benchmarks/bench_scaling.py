"""Benchmark: training images/s of `edgetl finetune` at 1 and N processes (DistributedDataParallel), and the
scaling efficiency images/s(N) / (N x images/s(1)).

Each process count P is a real `edgetl finetune --nproc-per-node P` run (torch.distributed.run: NCCL on GPUs,
gloo on CPU) with the same global batch, seed and options, on the demo textures (4 classes). images/s is the
median, over the epochs after the first (warm-up: loader workers, DDP buckets, cudnn autotuning), of
metrics.csv's train images / epoch time as rank 0 measures it. The decoded-image cache is built once, before
the first run, and is not timed. Every process has the same resources at every P, as with one GPU each: on
CPU that is cores / N torch threads and loader workers (N the largest P), so the P = 1 run leaves the other
cores idle. There a measurement says how well gloo's all-reduce and the data parts add up across processes
on one CPU: it says little about GPUs, where each process brings its own device.

    python benchmarks/bench_scaling.py            # all visible GPUs (2 processes without a GPU) against 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from edgetl.core.device import usable_cores
from edgetl.core.fileio import atomic_write_text
from edgetl.core.tables import markdown_table
from edgetl.data.demo import ensure_demo_dataset
from edgetl.diagnostics.machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
# From a fresh clone (the package installed, not put on sys.path): the command behind results/scaling.*
SETUP = "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[train]' && "


def process_counts(most: int) -> List[int]:
    """1, the powers of 2 below ``most``, and ``most``."""
    counts, count = [1], 2
    while count < most:
        counts.append(count)
        count *= 2
    return counts + ([most] if most > 1 else [])


def timed_run(args: argparse.Namespace, data: Path, out: Path, processes: int, env: Dict[str, str]) -> Dict[str, Any]:
    """One `edgetl finetune` with ``processes`` processes, each with the same share of the cores; its rates from
    metrics.csv."""
    command = [sys.executable, "-m", "edgetl", "-q", "finetune", str(data), "--out", str(out)]
    command += ["--arch", args.arch, "--strategy", args.strategy, "--epochs", str(args.epochs)]
    command += ["--batch-size", str(args.batch_size), "--weights", args.weights, "--cache", "ram"]
    threads = max(1, usable_cores() // args.nproc_per_node)  # a process's share of the cores, the same at every P
    command += ["--device", args.device, "--workers", str(threads), "--nproc-per-node", str(processes)]
    started = time.perf_counter()
    result = subprocess.run(command, env=dict(env, OMP_NUM_THREADS=str(threads)), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit("{} processes failed:\n{}".format(processes, result.stderr[-3000:]))
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    rates = [float(row["images_per_s"]) for row in rows]
    return {
        "processes": processes,
        "threads_per_process": threads,
        "images_per_s": statistics.median(rates[1:] or rates),
        "images_per_s_per_epoch": rates,
        "epoch_time_s": [float(row["epoch_time_s"]) for row in rows],
        "final_val_top1": float(rows[-1]["val_top1"]),
        "final_train_loss": float(rows[-1]["train_loss"]),
        "wall_s": wall,
    }


def markdown(report: Dict[str, Any]) -> str:
    setup, machine = report["setup"], report["machine"]
    lines = [
        "# Multi-process fine-tuning: scaling",
        "",
        "`{}` on {} ({} CPUs, {}, torch {}), {}.".format(
            report["command"],
            machine["platform"],
            machine["cpu_count"],
            ", ".join(machine["gpus"]) or "no GPU",
            machine["packages"].get("torch"),
            report["date"],
        ),
        "",
        "Reproduce: `{}`".format(report["reproduce"]),
        "",
        "## {} {}, global batch {}, {} train images, {} epochs, {} on {}".format(
            setup["arch"],
            setup["strategy"],
            setup["batch_size"],
            setup["train_images"],
            setup["epochs"],
            setup["backend"],
            setup["device"],
        ),
        "",
    ]
    rows = [
        [
            run["processes"],
            run["threads_per_process"],
            run["images_per_s"],
            run["speedup"],
            run["efficiency"],
            run["final_val_top1"],
            run["wall_s"],
        ]
        for run in report["runs"]
    ]
    headers = ["processes", "threads each", "img/s (median)", "speed-up", "efficiency", "final val top-1", "wall s"]
    lines.append(markdown_table(headers, rows))
    return "\n".join(lines + [""] + report["notes"]) + "\n"


def notes(gpus: List[str]) -> List[str]:
    found = [
        "## Notes",
        "",
        "- images/s is rank 0's count of the epoch's training images over its epoch time (median over epochs 2+); "
        "efficiency = images/s(P) / (P x images/s(1)). Per-epoch figures are in scaling.json.",
        "- The global batch, learning rate and schedule are the same at every P, so the runs train the same "
        "model; BatchNorm trains here (each rank normalises its own part of the batch), so final top-1 differs a "
        "little between P.",
    ]
    if not gpus:
        found.append(
            "- No GPU: each process has cores / N torch threads and loader workers (N the largest P), as it would "
            "have one GPU, and the processes talk over gloo. That measures how the work adds up across processes on "
            "one CPU, not what a GPU node gains; the machine is shared with other jobs, so rates vary between runs. "
            "Record on GPUs with `--nproc-per-node` = all visible GPUs (the default there)."
        )
    return found


def main() -> None:
    gpus = torch.cuda.device_count()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc-per-node", type=int, default=gpus or 2, help="default: the visible GPUs, else 2")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch (divides by every P)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-per-class", type=int, default=64)
    parser.add_argument("--weights", default="none", help="throughput does not depend on them: none avoids a download")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where scaling.json and scaling.md go")
    args = parser.parse_args()
    counts = process_counts(args.nproc_per_node)
    if any(args.batch_size % count for count in counts):
        parser.error("--batch-size {} must divide by every process count {}".format(args.batch_size, counts))
    report: Dict[str, Any] = {
        "command": "python benchmarks/bench_scaling.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "reproduce": "{}.venv/bin/python benchmarks/bench_scaling.py {}".format(SETUP, " ".join(sys.argv[1:])).strip(),
        "machine": dict(
            machine_info(torch.get_num_threads()), gpus=[torch.cuda.get_device_name(i) for i in range(gpus)]
        ),
    }
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-scaling-") as work:
        env = dict(os.environ, EDGETL_HOME=work)
        data = ensure_demo_dataset(Path(work) / "demo", train_per_class=args.train_per_class, val_per_class=16)
        runs = [timed_run(args, data, Path(work) / "p{}".format(p), p, env) for p in counts]
    for run in runs:
        run["speedup"] = run["images_per_s"] / runs[0]["images_per_s"]
        run["efficiency"] = run["speedup"] / run["processes"]
    on_gpu = gpus > 0 and args.device != "cpu"
    report["setup"] = {
        "arch": args.arch,
        "strategy": args.strategy,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "train_images": 4 * args.train_per_class,
        "weights": args.weights,
        "device": "{} GPUs".format(gpus) if on_gpu else "CPU",
        "backend": "NCCL" if on_gpu else "gloo",
    }
    report["runs"] = runs
    report["notes"] = notes(report["machine"]["gpus"] if on_gpu else [])
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "scaling.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out / "scaling.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
