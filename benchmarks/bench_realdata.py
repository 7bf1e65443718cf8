"""Benchmark: the three strategies of ``edgetl finetune`` with their defaults on real image datasets that are
not the demo, beside a reference linear probe, and what ``edgetl advise`` recommends there.

Datasets (real scans and photos, available offline, never synthetic):
- ``digits``: scikit-learn's ``load_digits`` (1,797 scanned handwritten digits, 8x8 grey, 10 classes; the UCI
  "Optical Recognition of Handwritten Digits" test set, shipped inside the scikit-learn wheel, BSD-3-Clause).
  No official split: a seeded per-class split (edgetl's sampler, seed 0) gives val first, then train.
- ``fashion-mnist``: Zalando's Fashion-MNIST (photos of fashion products, 28x28 grey, 10 classes, MIT/Expat),
  from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``). Train images come
  from the official train file, val images from the official test file, each a seeded per-class subset.
Images are written at their own size as PNGs into an ImageFolder (``train/<class>``, ``val/<class>``) under
the cache dir; edgetl resizes them like any user's images.

Per dataset: ``finetune`` with ``FinetuneConfig``'s defaults and ``--strategy`` feature-extractor / partial /
full (so that re-running measures whatever the defaults are then), the val top-1 of best.pt with its
binomial standard error, the verdict of a two-proportion z test (``edgetl.analysis.significance``), the run
time, the largest train loss after the first epoch against chance ln(classes) (issue 9: a stable default never
goes above it); a reference probe: scikit-learn ``LogisticRegressionCV`` on the same eval-view features of the frozen
backbone (the feature-extractor run's base), fitted on train, scored on val; and ``edgetl advise``'s
strategy beside the measured winner, with advise's own finetune command run too (its epochs, augmentation).

    nice python benchmarks/bench_realdata.py   # writes benchmarks/results/realdata.{json,md}
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from edgetl.analysis.significance import binomial_se, compare
from edgetl.core.fileio import atomic_write_text
from edgetl.data.sampling import shuffled_by_class
from edgetl.train.config import STRATEGIES, FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]
REPRODUCE = (
    "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[train,bench]' && "
    "apt-get install dataset-fashion-mnist && nice .venv/bin/python benchmarks/bench_realdata.py"
)
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
PROBE_CS = np.logspace(-4, 1, 6)  # the probe's inverse L2 strengths, picked by cross-validation on train
Arrays = Tuple[np.ndarray, np.ndarray]  # uint8 images (N, H, W), int labels (N,)


@dataclass(frozen=True)
class RealDataset:
    """A real image dataset: how to load it, and where it comes from."""

    name: str
    source: str
    licence: str
    classes: Tuple[str, ...]
    load: Callable[[], Tuple[Arrays, Optional[Arrays]]]  # (train pool, val pool or None: split the train pool)


def load_digits_arrays() -> Tuple[Arrays, Optional[Arrays]]:
    """scikit-learn's bundled digits (values 0..16) as uint8 0..255; no official split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return (images, digits.target.astype(np.int64)), None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip), as in the MNIST family: big-endian dims after a magic whose last byte is the rank."""
    with gzip.open(str(path), "rb") as handle:
        data = handle.read()
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def load_fashion_arrays(folder: Path = FASHION_DIR) -> Tuple[Arrays, Optional[Arrays]]:
    """Fashion-MNIST's official train and test files."""
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit("Fashion-MNIST not found in {}: apt-get install dataset-fashion-mnist".format(folder))

    def part(prefix: str) -> Arrays:
        images = read_idx(folder / "{}-images-idx3-ubyte.gz".format(prefix))
        return images, read_idx(folder / "{}-labels-idx1-ubyte.gz".format(prefix)).astype(np.int64)

    return part("train"), part("t10k")


DATASETS = {
    "digits": RealDataset(
        "digits",
        "scikit-learn load_digits (UCI optical recognition of handwritten digits), in the scikit-learn wheel",
        "BSD-3-Clause (scikit-learn); UCI data, CC BY 4.0",
        tuple(str(i) for i in range(10)),
        load_digits_arrays,
    ),
    "fashion-mnist": RealDataset(
        "fashion-mnist",
        "Zalando Fashion-MNIST, Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)",
        "MIT (Expat), Zalando SE",
        FASHION_CLASSES,
        load_fashion_arrays,
    ),
}


@dataclass(frozen=True)
class _Item:
    path: str  # the sampler sorts by path: the zero-padded index keeps the original order
    label: int
    index: int


def per_class(labels: np.ndarray, seed: int) -> Dict[int, List[int]]:
    """Indices of each class in edgetl's seeded per-class order (``edgetl.data.sampling``)."""
    items = [_Item("{:06d}".format(i), int(label), i) for i, label in enumerate(labels)]
    return {label: [item.index for item in group] for label, group in shuffled_by_class(items, seed).items()}


def split_indices(
    train_labels: np.ndarray, val_labels: Optional[np.ndarray], train_per_class: int, val_per_class: int, seed: int
) -> Tuple[List[int], List[int]]:
    """Val indices first (into the val pool, or the head of each class's shuffled train pool), then train."""
    train, val = [], []
    for label, order in per_class(train_labels, seed).items():
        if val_labels is None:
            val += order[:val_per_class]
            order = order[val_per_class:]
        if len(order) < train_per_class:
            raise SystemExit("class {} has {} images, {} asked for".format(label, len(order), train_per_class))
        train += order[:train_per_class]
    if val_labels is not None:
        val = [i for order in per_class(val_labels, seed).values() for i in order[:val_per_class]]
    return train, val


def materialise(dataset: RealDataset, cache: Path, train_per_class: int, val_per_class: int, seed: int) -> Path:
    """The dataset as ``train/<class>/*.png`` + ``val/<class>/*.png`` under ``cache`` (written once)."""
    root = cache / "{}-{}train-{}val-seed{}".format(dataset.name, train_per_class, val_per_class, seed)
    if (root / "done.json").is_file():
        return root
    (train_x, train_y), val_pool = dataset.load()
    val_x, val_y = val_pool if val_pool is not None else (train_x, train_y)
    train, val = split_indices(train_y, None if val_pool is None else val_y, train_per_class, val_per_class, seed)
    for part, images, labels, indices in (("train", train_x, train_y, train), ("val", val_x, val_y, val)):
        for index in indices:
            folder = root / part / dataset.classes[labels[index]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(folder / "{:05d}.png".format(index))
    counts = {"train": len(train), "val": len(val), "seed": seed, "source": dataset.source}
    atomic_write_text(root / "done.json", json.dumps(counts) + "\n")
    return root


def train_strategy(root: Path, strategy: str, out: Path, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """``edgetl finetune`` with its defaults and ``--strategy``: val top-1 of best.pt, last epoch, time, and the
    largest train loss after epoch 1 (None for a solved head, which has no epochs)."""
    from edgetl.train.head_fit import epochs_trained
    from edgetl.train.loop import finetune

    config = FinetuneConfig(data=str(root), strategy=strategy, out=str(out / strategy), **overrides)
    summary = finetune(config, progress=False).summary
    with (out / strategy / "metrics.csv").open() as rows:
        later = [float(row["train_loss"]) for row in csv.DictReader(rows) if int(row["epoch"]) > 1]
    return {
        "max_train_loss_after_epoch1": None if summary.get("head_fit") or not later else max(later),
        "chance_loss": math.log(len(summary["classes"])),
        "strategy": strategy,
        "epochs": epochs_trained(summary),
        "val_top1": summary["best_val_top1"],
        "final_val_top1": summary["final_val_top1"],
        "train_time_s": summary["run_time_s"],
        "params_trainable": summary["params_trainable"],
        "run": str(out / strategy),
    }


def probe_top1(root: Path, feature_run: Path, seed: int, workers: Optional[int] = None) -> Dict[str, Any]:
    """LogisticRegressionCV on the frozen base's eval-view features (train), scored on val: what a linear head
    on these features can reach."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgetl.analysis.embeddings import compute_features, run_model
    from edgetl.data.folders import load_dataset

    split = load_dataset(root)
    model = run_model(feature_run)
    started = time.perf_counter()
    x = {
        part: compute_features(model, [s.path for s in samples], workers=workers, cache=False)
        for part, samples in split_parts(split)
    }
    y = {part: np.array([s.label for s in samples]) for part, samples in split_parts(split)}
    folds = int(min(5, np.bincount(y["train"]).min()))
    regression = LogisticRegressionCV(
        Cs=PROBE_CS, cv=folds, max_iter=500, tol=1e-3, scoring="accuracy", random_state=seed
    )
    probe = make_pipeline(StandardScaler(), regression)
    with warnings.catch_warnings():  # scikit-learn 1.9 announces default changes that do not apply here
        warnings.simplefilter("ignore", FutureWarning)
        probe.fit(x["train"], y["train"])
    return {
        "val_top1": float(np.mean(probe.predict(x["val"]) == y["val"])),
        "C": float(np.ravel(regression.C_)[0]),
        "time_s": time.perf_counter() - started,
    }


def split_parts(split: Any) -> List[Tuple[str, Sequence[Any]]]:
    return [("train", split.train), ("val", split.val)]


def advise_verdict(root: Path, seed: int) -> Dict[str, Any]:
    """``edgetl advise`` with its defaults: strategy, quadrant, probe score, whether it asks for the pilot, and
    the plan behind its printed command."""
    from edgetl.analysis.advise import advise

    report = advise(root, seed=seed)
    sim = report["similarity"]
    return {
        "command": report["command"],
        "plan": report["plan"],
        "strategy": report["plan"]["strategy"],
        "quadrant": report["quadrant"],
        "probe_score": sim["probe_score"],
        "knn_score": sim["knn_score"],
        "confidence": sim["confidence"],
        "pilot_advised": bool(report["pilot_advised"]),
        "time_s": report["time_s"],
    }


def agrees(advised: str, pilot_advised: bool, verdict: Dict[str, Any]) -> str:
    """Whether advise's strategy wins or ties within the noise with the winner."""
    if advised == verdict["best"] or advised in verdict["tied"]:
        return "yes" if not verdict["tied"] else "yes (tie within noise)"
    return "no, but advise asks for the pilot" if pilot_advised else "NO"


def bench_dataset(dataset: RealDataset, args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    load_before, started = os.getloadavg()[0], time.perf_counter()
    root = materialise(dataset, args.cache, args.train_per_class, args.val_per_class, args.seed)
    overrides: Dict[str, Any] = {"seed": args.seed}
    if args.smoke:  # tiny, random init: exercises the code, measures nothing
        overrides.update(arch="mobilenet_v3_small", weights="none", epochs=1, warmup_epochs=0, workers=0)
    runs = [train_strategy(root, strategy, work / dataset.name, overrides) for strategy in STRATEGIES]
    # the feature extractor trained by epochs (no feature cache, so no solve): issue 9 item 2 covers it too
    epochs_head = train_strategy(
        root, "feature-extractor", work / dataset.name / "no-cache", dict(overrides, cache="none")
    )
    val_images = args.val_per_class * len(dataset.classes)
    for row in runs:
        row["se"] = binomial_se(row["val_top1"], val_images)
    verdict = compare([(r["strategy"], r["val_top1"]) for r in runs], val_images)
    probe = probe_top1(root, Path(runs[0]["run"]), args.seed, overrides.get("workers"))
    probe["se"] = binomial_se(probe["val_top1"], val_images)
    result: Dict[str, Any] = {
        "dataset": dataset.name,
        "source": dataset.source,
        "licence": dataset.licence,
        "classes": list(dataset.classes),
        "train_images": args.train_per_class * len(dataset.classes),
        "val_images": val_images,
        "runs": runs,
        "epochs_head_run": dict(epochs_head, se=binomial_se(epochs_head["val_top1"], val_images)),
        "probe": probe,
        "verdict": {"best": verdict.best, "tied": list(verdict.tied), "z": verdict.z, "text": verdict.describe()},
    }
    if not args.skip_advise:
        result["advise"] = advise_verdict(root, args.seed)
        result["advise"]["agrees"] = agrees(
            result["advise"]["strategy"], result["advise"]["pilot_advised"], result["verdict"]
        )
        result["advised_run"] = advised_run(root, result["advise"]["plan"], runs, work / dataset.name, overrides)
        result["advised_run"]["se"] = binomial_se(result["advised_run"]["val_top1"], val_images)
    result.update(wall_s=time.perf_counter() - started, load_before_after=[load_before, os.getloadavg()[0]])
    return result


def advised_run(
    root: Path, plan: Dict[str, Any], runs: List[Dict[str, Any]], work: Path, overrides: Dict[str, Any]
) -> Dict[str, Any]:
    """advise's printed command, run: its strategy with the plan's stages, epochs and augmentation (the step
    sizes are finetune's). A plan with nothing beyond finetune's defaults is the strategy's own row."""
    options = dict(overrides, epochs=plan["epochs"], augment="strong" if plan["augment_harder"] else "default")
    if plan["strategy"] == "partial":
        options["trainable_stages"] = plan["trainable_stages"]
    if plan["strategy"] == "feature-extractor" and plan["epochs"] is None and not plan["augment_harder"]:
        return dict(next(run for run in runs if run["strategy"] == plan["strategy"]), same_as=plan["strategy"])
    return train_strategy(root, plan["strategy"], work / "advised", options)


def _loss(run: Dict[str, Any]) -> str:
    loss = run.get("max_train_loss_after_epoch1")
    return "-" if loss is None else "{:.2f}{}".format(loss, " (above chance)" if loss > run["chance_loss"] else "")


def markdown(result: Dict[str, Any]) -> str:
    """The results as Markdown: one table per dataset and advise's verdict."""
    lines = [
        "# Real-data benchmark: feature extractor vs partial vs full, edgetl finetune defaults",
        "",
        "Reproduce: `{}`".format(REPRODUCE),
        "",
        "{} CPUs, {}. Val top-1 is best.pt's (the epoch picked on val, so slightly optimistic; the last "
        "epoch's is shown too); SE = binomial standard error sqrt(p(1-p)/n); winner = z >= 1.96 (two-proportion, "
        "pooled) against every other strategy, otherwise a tie within noise. Max loss: the largest train loss "
        "after epoch 1, against chance ln(classes), 2.30 for 10 (- for a solved head). The probe is the "
        "reference: what a linear head on the frozen eval-view features reaches when solved to convergence.".format(
            result["cpus"], result["date"]
        ),
    ]
    for data in result["datasets"]:
        lines += [
            "",
            "## {} ({} classes, {} train / {} val images)".format(
                data["dataset"], len(data["classes"]), data["train_images"], data["val_images"]
            ),
            "",
            "Source: {}. Licence: {}.".format(data["source"], data["licence"]),
            "",
            "Measured by `{}` in {:.0f} s (load average before/after {:.1f}/{:.1f}).".format(
                data["command"], data["wall_s"], *data["load_before_after"]
            ),
            "",
            "| strategy | epochs | val top-1 | SE | last epoch | max loss | train time s |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        extra = (
            [dict(data["epochs_head_run"], strategy="feature-extractor, --cache none")]
            if "epochs_head_run" in data
            else []
        )
        extra += [dict(data["advised_run"], strategy="advise's command")] if "advised_run" in data else []
        for run in data["runs"] + extra:
            lines.append(
                "| {} | {} | {:.1%} | {:.1%} | {:.1%} | {} | {:.0f} |".format(
                    run["strategy"],
                    run["epochs"],
                    run["val_top1"],
                    run["se"],
                    run["final_val_top1"],
                    _loss(run),
                    run["train_time_s"],
                )
            )
        probe = data["probe"]
        lines.append(
            "| reference probe (LogisticRegressionCV, C={:.3g}) | - | {:.1%} | {:.1%} | - | - | {:.0f} |".format(
                probe["C"], probe["val_top1"], probe["se"], probe["time_s"]
            )
        )
        lines += ["", "Measured: {}.".format(data["verdict"]["text"])]
        if "advise" in data:
            adv = data["advise"]
            lines.append(
                "`edgetl advise`: {} (quadrant {}, probe score {:.2f}, k-NN score {:.2f}{}); agrees: {}.".format(
                    adv["strategy"],
                    adv["quadrant"],
                    adv["probe_score"],
                    adv["knn_score"],
                    ", asks for --pilot" if adv["pilot_advised"] else "",
                    adv["agrees"],
                )
            )
            lines.append(
                "Its command: `{}`{}.".format(
                    adv.get("command", "?"),
                    " (the {} row: nothing beyond finetune's defaults)".format(data["advised_run"]["same_as"])
                    if "same_as" in data.get("advised_run", {})
                    else ' (run: the row "advise\'s command")',
                )
            )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--val-per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgetl" / "realdata")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true", help="tiny random-init model, 1 epoch: tests the script")
    parser.add_argument("--skip-advise", action="store_true", help="leave out edgetl advise (needs the weights)")
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_realdata.py " + " ".join(sys.argv[1:] if argv is None else argv)
    previous = _load(args.out / "realdata.json")
    datasets = {d["dataset"]: d for d in previous.get("datasets", [])}
    with tempfile.TemporaryDirectory(prefix="edgetl-realdata-") as tmp:
        for name in args.datasets:
            datasets[name] = dict(bench_dataset(DATASETS[name], args, Path(tmp)), command=command)
            result = {  # written after each dataset: a long run keeps what it measured
                "date": time.strftime("%Y-%m-%d"),
                "cpus": os.cpu_count(),
                "defaults": {k: v for k, v in vars(FinetuneConfig()).items() if k not in ("data", "out", "strategy")},
                "datasets": [datasets[n] for n in sorted(datasets)],
            }
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out / "realdata.json", json.dumps(result, indent=2, default=str) + "\n")
            atomic_write_text(args.out / "realdata.md", markdown(result))
    print(markdown(result))
    return result


def _load(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    main()
