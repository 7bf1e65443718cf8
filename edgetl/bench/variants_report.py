"""Tables and the accuracy-vs-latency plot of an ``edgetl bench variants`` report (torch-free;
matplotlib is imported only to draw the plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

from edgetl.core.deps import require
from edgetl.core.fileio import atomic_path
from edgetl.core.tables import markdown_table, text_table

TRAINING_HEADERS = (
    "variant",
    "strategy",
    "cache",
    "epochs",
    "trainable params",
    "step ms",
    "step img/s",
    "epoch s",
    "epoch img/s",
    "peak MiB",
    "val top-1",
    "val top-5",
)
_MARKERS = {"torch": "o", "onnx": "s", "onnx-int8": "D", "trt-fp16": "^", "trt-int8": "v"}


def _percent(value: float) -> str:
    return "{:.1f}%".format(100.0 * value)


def training_rows(report: Dict[str, Any]) -> List[List[Any]]:
    rows = []
    for v in report["variants"]:
        t = v["training"]
        rows.append(
            [
                v["name"],
                v["strategy"],
                t["cache"],
                t.get("epochs", report["config"]["epochs"]),  # reports before the field trained --epochs each
                t["params_trainable"],
                t["step_ms"],
                t["step_images_per_s"],
                t["epoch_s"],
                t["images_per_s"],
                t["peak_memory_mib"],
                _percent(t["val_top1"]),
                _percent(t["val_top5"]),
            ]
        )
    return rows


def _batches(report: Dict[str, Any]) -> List[str]:
    return [str(b) for b in report["config"]["batches"]]


def inference_headers(report: Dict[str, Any]) -> List[str]:
    headers = ["variant", "params", "MFLOPs", "backend", "val top-1"]
    for b in _batches(report):
        headers += ["b{} p50 ms".format(b), "b{} p90 ms".format(b), "b{} p99 ms".format(b), "b{} img/s".format(b)]
    return headers + ["Pareto (b1)"]


def inference_rows(report: Dict[str, Any]) -> List[List[Any]]:
    front = {(p["variant"], p["backend"]) for p in report["pareto"] if p["pareto"]}
    rows = []
    for v in report["variants"]:
        for entry in v["inference"]:
            row = [v["name"], v["params"], v["flops"] / 1e6, entry["label"], _percent(entry["val_top1"])]
            for b in _batches(report):
                stats = entry["latency"].get(b)
                row += [stats[k] for k in ("p50_ms", "p90_ms", "p99_ms", "images_per_s")] if stats else ["-"] * 4
            rows.append(row + ["yes" if (v["name"], entry["backend"]) in front else ""])
    return rows


def _heading(report: Dict[str, Any]) -> str:
    first = report["variants"][0]["training"]
    epochs = report["config"]["epochs"]
    return "{} on {} ({} train / {} val images), {}, batch {}, training on {}".format(
        report["arch"],
        report["data"],
        first["num_train"],
        first["num_val"],
        "epochs auto" if epochs is None else "{} epochs".format(epochs),
        report["config"]["batch_size"],
        report["device"],
    )


def format_text(report: Dict[str, Any]) -> str:
    """The report as terminal tables, skipped backends and where the files are."""
    lines = [
        _heading(report),
        "",
        "training (step: compute on a synthetic batch; epoch: the real run):",
        text_table(TRAINING_HEADERS, training_rows(report)),
        "",
        "inference (latency of the exported bundle; val top-1 of each artifact):",
        text_table(inference_headers(report), inference_rows(report)),
    ]
    lines += [""] + ["skipped: " + reason for reason in report["skipped"]]
    out = Path(report["out"])
    lines.append("wrote {}, {} and {}".format(out / "variants.md", out / "variants.json", out / "variants.png"))
    return "\n".join(lines)


def format_markdown(report: Dict[str, Any]) -> str:
    """The report as Markdown: heading, training table, inference table, method notes."""
    memory = report["variants"][0]["training"]["memory_kind"]
    lines = [
        "# Variant comparison: {}".format(report["arch"]),
        "",
        _heading(report) + ".",
        "",
        "## Training",
        "",
        "Step: the variant's own training step on a synthetic device-resident batch (compute alone); "
        "epoch: mean over the real run's epochs (input pipeline included; a solved head's one epoch is its "
        "fit); peak memory: {} during the run.".format(memory),
        "",
        markdown_table(TRAINING_HEADERS, training_rows(report)),
        "",
        "## Inference",
        "",
        "Latency of each exported bundle, all variants timed in one run: " + report["latency_method"],
        "",
        markdown_table(inference_headers(report), inference_rows(report)),
    ]
    if report["skipped"]:
        lines += ["", "Skipped:", ""] + ["- " + reason for reason in report["skipped"]]
    return "\n".join(lines)


def plot_accuracy_latency(points: Sequence[Dict[str, Any]], path: Path, title: str) -> None:
    """A PNG of val top-1 vs batch-1 p50 latency: colour = variant, marker = backend, the Pareto front
    ringed and joined by a dashed staircase."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    pyplot = require("matplotlib.pyplot")
    figure, axes = pyplot.subplots(figsize=(8, 5.5), dpi=110)
    variants = list(dict.fromkeys(p["variant"] for p in points))
    colours = {name: pyplot.get_cmap("tab10")(i % 10) for i, name in enumerate(variants)}
    for p in points:
        axes.scatter(
            p["p50_ms"],
            100.0 * p["val_top1"],
            color=colours[p["variant"]],
            marker=_MARKERS.get(p["backend"], "x"),
            s=55,
            zorder=3,
        )
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["p50_ms"])
    if front:
        axes.step(
            [p["p50_ms"] for p in front],
            [100.0 * p["val_top1"] for p in front],
            where="post",
            linestyle="--",
            color="0.3",
            zorder=2,
            label="Pareto front",
        )
        axes.scatter(
            [p["p50_ms"] for p in front],
            [100.0 * p["val_top1"] for p in front],
            s=190,
            facecolors="none",
            edgecolors="black",
            linewidths=1.3,
            zorder=4,
        )
        for p in front:
            axes.annotate(
                "{} / {}".format(p["variant"], p["label"]),
                (p["p50_ms"], 100.0 * p["val_top1"]),
                textcoords="offset points",
                xytext=(7, -12),
                fontsize=7,
            )
    handles = [axes.scatter([], [], color=colours[v], marker="o", label=v) for v in variants]
    backends = list(dict.fromkeys((p["backend"], p["label"]) for p in points))
    handles += [axes.scatter([], [], color="0.4", marker=_MARKERS.get(b, "x"), label=label) for b, label in backends]
    handles += [h for h in axes.get_lines() if h.get_label() == "Pareto front"]
    axes.legend(handles=handles, fontsize=7, loc="lower right", ncol=2)
    axes.set_xscale("log")
    plain = require("matplotlib.ticker").FormatStrFormatter("%g")
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.set_xlabel("batch-1 p50 latency, ms (log scale)")
    axes.set_ylabel("val top-1, %")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    with atomic_path(Path(path)) as tmp:
        figure.savefig(str(tmp), format="png")
    pyplot.close(figure)
