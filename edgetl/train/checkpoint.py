"""Run checkpoints: atomic save, safe load (``weights_only=True``), rebuild a model from a run."""

from __future__ import annotations

import errno
import random
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from edgetl.contracts.backbones import get_backbone
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.deps import require
from edgetl.core.fileio import atomic_path
from edgetl.errors import CheckpointError, ConfigError
from edgetl.train.config import trainable_stage_names
from edgetl.train.model import EdgeClassifier, HeadConfig
from edgetl.train.weights import load_problem

torch = require("torch")

CHECKPOINT_FORMAT = "edgetl-checkpoint-v1"


def save_checkpoints(paths: Sequence[Path], payload: Dict[str, Any]) -> None:
    """Write the same checkpoint to several files: all temporary files first (where a full disk fails, leaving
    every old file in place), then renamed in reverse order, so the first path is the last to change."""
    with ExitStack() as stack:
        temporaries = [(path, stack.enter_context(atomic_path(path))) for path in paths]
        for path, tmp in temporaries:
            try:
                torch.save(dict(payload, format=CHECKPOINT_FORMAT), str(tmp))
            except (OSError, RuntimeError) as exc:
                raise _write_error(path, exc) from None


def _write_error(path: Path, exc: Exception) -> Exception:
    """A full disk as one line (torch reports it as ``RuntimeError: ... unexpected pos``); other errors as they are."""
    text = str(exc)
    full = getattr(exc, "errno", None) == errno.ENOSPC or "unexpected pos" in text or "No space left" in text
    if not full:
        return exc
    free = shutil.disk_usage(str(path.parent)).free
    resume = "continue with 'edgetl finetune --out {} --resume'".format(path.parent)
    if not (path.parent / "last.pt").is_file():
        resume = "start the run again"
    return CheckpointError(
        "cannot write {}: no space left on the device ({:.0f} MB free); the files already there are unchanged: "
        "free some space, then {}".format(path, free / 1e6, resume)
    )


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Load an edgetl checkpoint safely; CheckpointError with one line for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found: {}".format(path))
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or pickles outside the safe allowlist
        raise CheckpointError("cannot load checkpoint {}: {}".format(path, load_problem(exc, path))) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError("{} is not an edgetl checkpoint (a plain state dict? pass it as --weights)".format(path))
    return payload


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch RNG states in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore ``rng_state()``. A run saved on more GPUs than this machine (or CUDA_VISIBLE_DEVICES) shows
    restores the states of the devices it sees: set_rng_state_all would index past the visible devices."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device, cuda_state in enumerate(state.get("cuda", [])[:visible]):
        torch.cuda.set_rng_state(cuda_state, device)


def model_from_checkpoint(payload: Dict[str, Any]) -> EdgeClassifier:
    """Rebuild the trained model (eval mode, CPU) from a loaded checkpoint."""
    try:
        spec = get_backbone(payload["arch"], payload.get("cut_at"))
        model = EdgeClassifier(spec, len(payload["class_names"]), HeadConfig(**payload["head"]))
        model.freeze(trainable_stage_names(spec, payload["strategy"], payload["trainable_stages"]))
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as exc:
        raise CheckpointError(
            "checkpoint does not match its recorded model: {}".format(str(exc).splitlines()[0])
        ) from exc
    return model.eval()


def load_run(run: Path, which: str = "best.pt") -> Tuple[EdgeClassifier, Dict[str, Any]]:
    """Model and checkpoint payload of a run folder (or a checkpoint file)."""
    run = Path(run)
    path = run / which if run.is_dir() else run
    payload = load_checkpoint(path)
    return model_from_checkpoint(payload), payload


def preprocess_of(payload: Dict[str, Any]) -> PreprocessSpec:
    return PreprocessSpec.from_dict(payload["preprocess"])
