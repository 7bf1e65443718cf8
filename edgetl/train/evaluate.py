"""Evaluation: loss, top-1, top-k, per-class accuracy and confusion matrix of a model or a run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetl.contracts.preprocess import PreprocessSpec, load_input, torch_transforms
from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup, resolve_workers
from edgetl.core.fileio import atomic_write_text
from edgetl.core.tables import text_table
from edgetl.data.folders import DatasetSplit, ImageDataset, Sample, scan_class_folders
from edgetl.errors import DataError
from edgetl.train.checkpoint import load_run, preprocess_of

torch = require("torch")


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    k: int  # top-k actually used: min(5, number of classes)
    count: int
    per_class: List[float]
    confusion: List[List[int]]  # rows: true class, columns: predicted class


def prediction_counts(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> Tuple[np.ndarray, int]:
    """Confusion matrix (rows: true class) and top-k hits (k = min(5, classes)) of stacked logits: counts,
    so that the parts of a val set evaluated by several processes add up."""
    top_k = np.argsort(-logits, axis=1)[:, : min(5, num_classes)]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, top_k[:, 0]), 1)
    return confusion, int((top_k == labels[:, None]).any(1).sum())


def metrics_from_counts(confusion: np.ndarray, top_k_hits: int, k: int, loss: float = float("nan")) -> EvalResult:
    """Top-1, top-k, per-class accuracy from a confusion matrix and the top-k hits."""
    count = int(confusion.sum())
    support = confusion.sum(axis=1)
    per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    return EvalResult(
        loss,
        int(np.trace(confusion)) / count,
        top_k_hits / count,
        k,
        count,
        [float(v) for v in per_class],
        confusion.tolist(),
    )


def metrics_from_logits(
    logits: np.ndarray, labels: np.ndarray, num_classes: int, loss: float = float("nan")
) -> EvalResult:
    """Top-1, top-k (k = min(5, classes)), per-class accuracy and confusion matrix from stacked logits."""
    confusion, top_k_hits = prediction_counts(logits, labels, num_classes)
    return metrics_from_counts(confusion, top_k_hits, min(5, num_classes), loss)


@torch.no_grad()
def predict_logits(model: Any, loader: Any, device: Any) -> tuple:
    """Stacked logits and labels of a whole loader (model in eval mode), both on the CPU: pipelines may
    hand labels over already on the training device, and the metrics are computed in numpy."""
    model.eval()
    outputs, labels = [], []
    for images, target in loader:
        outputs.append(model(images.to(device)).float().cpu())
        labels.append(target.cpu())
    return torch.cat(outputs), torch.cat(labels)


def evaluate_model(
    model: Any, loader: Any, device: Any, num_classes: int, criterion: Optional[Any] = None
) -> EvalResult:
    logits, labels = predict_logits(model, loader, device)
    loss = float(criterion(logits, labels)) if criterion is not None else float("nan")
    return metrics_from_logits(logits.numpy(), labels.numpy(), num_classes, loss)


def evaluate_samples(
    model: Any,
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    setup: DeviceSetup,
    num_classes: int,
    batch_size: int = 32,
    workers: Optional[int] = None,
) -> EvalResult:
    """``model`` on image files through the eval geometry of ``spec``."""
    loader = torch.utils.data.DataLoader(
        ImageDataset(samples, torch_transforms(spec, train=False), partial(load_input, spec=spec)),
        batch_size=batch_size,
        num_workers=resolve_workers(workers),
    )
    model = setup.module_to_device(model)
    return evaluate_model(model, loader, setup.device, num_classes, torch.nn.CrossEntropyLoss())


def evaluate_run(
    run: Path,
    data: Optional[Path] = None,
    batch_size: int = 32,
    device: str = "auto",
    workers: Optional[int] = None,
    *,
    split: str = "val",
    setup: Optional[DeviceSetup] = None,
) -> Dict[str, Any]:
    """Evaluate a run's best.pt on DATA (class folders; a train/val root uses val/) or its own ``split``
    (``val``, or ``test``: the images ``--test-split`` held out). Writes ``evaluation.json`` and
    ``evaluation.txt`` (``evaluation-test.*`` for the test split) into the run folder. ``setup`` (default:
    built from ``device``, AMP off) is where the model runs; tests pass a placement-checking one."""
    run = Path(run)
    model, payload = load_run(run)
    classes = list(payload["class_names"])
    if split not in ("val", "test"):
        raise DataError("split must be val or test, got {!r}".format(split))
    if data is None:
        samples = getattr(DatasetSplit.load(run), split)
        if not samples:
            raise DataError("{} has no test split: it was trained without --test-split".format(run))
        source = "the run's {} split".format("validation" if split == "val" else "test (held out from selection)")
    else:
        root = Path(data) / "val" if (Path(data) / "val").is_dir() else Path(data)
        found, samples, _ = scan_class_folders(root)
        if found != classes:
            raise DataError("classes in {} ({}) differ from the run's ({})".format(root, found, classes))
        source = str(root)
    setup = setup or DeviceSetup.create(device, amp=False)
    result = evaluate_samples(model, samples, preprocess_of(payload), setup, len(classes), batch_size, workers)
    report = dict(asdict(result), classes=classes, data=source, checkpoint=str(run / "best.pt"))
    name = "evaluation" if data is not None or split == "val" else "evaluation-test"
    atomic_write_text(run / (name + ".json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(run / (name + ".txt"), format_evaluation(report) + "\n")
    return report


def format_evaluation(report: Dict[str, Any]) -> str:
    """Summary line, per-class accuracy and the confusion matrix as text."""
    classes = report["classes"]
    lines = [
        "{} images from {}: top-1 {:.2%}, top-{} {:.2%}, loss {:.4f}".format(
            report["count"], report["data"], report["top1"], report["k"], report["top5"], report["loss"]
        ),
        "",
    ]
    lines.append(text_table(["class", "accuracy"], list(zip(classes, report["per_class"]))))
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(text_table(["true \\ pred"] + classes, [[c] + row for c, row in zip(classes, report["confusion"])]))
    return "\n".join(lines)
