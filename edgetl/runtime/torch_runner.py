"""PyTorch backend: runs the run folder's checkpoint itself (needs the training extra). torch and the
workstation's checkpoint loader are imported on activation only, so the device side stays torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np

from edgetl.core.deps import require
from edgetl.runtime.base import Runner, TensorMeta


class TorchRunner(Runner):
    """The run's PyTorch checkpoint (needs the training extra); input ``input``, output ``logits``."""

    name = "torch"

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.model: Any = None

    def _activate(self) -> None:
        require("torch")
        from edgetl.train.checkpoint import load_run

        self.model, _ = load_run(self.run_dir)

    def _deactivate(self) -> None:
        self.model = None

    def input_metadata(self) -> Dict[str, TensorMeta]:
        return {"input": TensorMeta((None, 3, None, None), np.float32)}

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        torch = require("torch")
        with torch.no_grad():
            return {"logits": self.model(torch.from_numpy(np.ascontiguousarray(feed["input"]))).numpy()}
