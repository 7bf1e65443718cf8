"""The options of ``edgetl bench variants`` (``VariantsConfig``) and the variants it compares.

Torch-free and Python 3.8: the CLI imports this module for its defaults at import time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from edgetl.bench.latency import LatencyConfig
from edgetl.errors import ConfigError
from edgetl.spec.backbones import DEFAULT_ARCH, get_backbone
from edgetl.train.config import FinetuneConfig

IMAGE_CACHES = ("ram", "none")
# A mid/late stage per architecture, like taking an intermediate "mixed7" output of a big backbone.
DEFAULT_CUT = {
    "mobilenet_v2": "stage5",
    "mobilenet_v3_small": "stage4",
    "mobilenet_v3_large": "stage5",
    "resnet18": "layer3",
    "resnet50": "layer3",
    "efficientnet_b0": "stage5",
}
CPU_BACKENDS = ("torch", "onnx", "onnx-int8")


@dataclass(frozen=True)
class Variant:
    name: str
    strategy: str
    cache: str
    cut_at: Optional[str] = None
    trainable_stages: int = 2


@dataclass(frozen=True)
class VariantsConfig:
    """Every option of ``edgetl bench variants``; validated on creation."""

    data: Optional[str] = None  # None: the built-in demo dataset
    arch: str = DEFAULT_ARCH
    epochs: Optional[int] = None  # None: auto, as edgetl finetune (cached linear heads solved, else AUTO_EPOCHS)
    cut_at: Optional[str] = None  # None: DEFAULT_CUT[arch]
    trainable_stages: int = 2
    image_cache: str = "ram"  # pipeline of the variants that do not use the feature cache
    batch_size: int = 32
    weights: Optional[str] = None
    device: str = "auto"
    workers: Optional[int] = None
    val_split: Optional[float] = None
    steps: int = 2  # synthetic training steps timed per variant in each of variants.STEP_ROUNDS rounds
    batches: Sequence[int] = (1, 8)
    warmup: int = 10
    iters: int = 50
    rounds: int = 5
    threads: Optional[int] = None
    out: Optional[str] = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_cache not in IMAGE_CACHES:
            raise ConfigError("--image-cache must be one of " + ", ".join(IMAGE_CACHES))
        if self.steps < 1:
            raise ConfigError("--steps must be >= 1")
        if self.cut_at is None and self.arch not in DEFAULT_CUT:
            raise ConfigError("no default --cut-at for {}; name a stage".format(self.arch))
        self.latency_config(["variants"])  # validates batches, warmup, iters, rounds
        for variant in self.variants():
            self.finetune_config(variant, Path("."))  # validates arch, stages, epochs, batch size, ...

    @property
    def cut_stage(self) -> str:
        return self.cut_at or DEFAULT_CUT[self.arch]

    def variants(self) -> List[Variant]:
        cut = get_backbone(self.arch, self.cut_stage).cut_at
        return [
            Variant("frozen-features", "feature-extractor", "features"),
            Variant("frozen", "feature-extractor", self.image_cache),
            Variant("cut-" + cut, "feature-extractor", "features", cut_at=cut),
            Variant(
                "partial-{}".format(self.trainable_stages),
                "partial",
                self.image_cache,
                trainable_stages=self.trainable_stages,
            ),
            Variant("full", "full", self.image_cache),
        ]

    def finetune_config(self, variant: Variant, run_dir: Path) -> FinetuneConfig:
        return FinetuneConfig(
            data=self.data,
            arch=self.arch,
            strategy=variant.strategy,
            trainable_stages=variant.trainable_stages,
            cut_at=variant.cut_at,
            epochs=self.epochs,
            batch_size=self.batch_size,
            device=self.device,
            seed=self.seed,
            workers=self.workers,
            cache=variant.cache,
            val_split=self.val_split,
            weights=self.weights,
            out=str(run_dir),
        )

    def latency_config(self, models: Sequence[str], backends: Sequence[str] = CPU_BACKENDS) -> LatencyConfig:
        return LatencyConfig(
            models=list(models),
            backends=tuple(backends),
            batches=tuple(self.batches),
            warmup=self.warmup,
            iters=self.iters,
            rounds=self.rounds,
            threads=self.threads,
        )
