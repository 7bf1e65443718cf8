"""The options of ``edgetl bench variants`` (``VariantsConfig``) and the variants it compares.

Torch-free and Python 3.8: the CLI builds the command's options from its declarations at import time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from edgetl.bench.latency import LatencyConfig
from edgetl.contracts.backbones import BACKBONES, DEFAULT_ARCH, get_backbone
from edgetl.core.options import option
from edgetl.errors import ConfigError
from edgetl.train.config import AUTO_EPOCHS, FinetuneConfig

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


TRAINING, TIMING, OUTPUT = "Training", "Inference timing", "Output"
VARIANTS_GROUPS = (TRAINING, TIMING, OUTPUT)  # the help's sections, in order


@dataclass(frozen=True)
class VariantsConfig:
    """Every option of ``edgetl bench variants``; validated on creation."""

    data: Optional[str] = option(None, argument=True, kind="path", group=TRAINING)  # None: the built-in demo set
    arch: str = option(DEFAULT_ARCH, group=TRAINING, choices=tuple(sorted(BACKBONES)), help="Pretrained backbone.")
    epochs: Optional[int] = option(
        None,
        group=TRAINING,
        kind="int",
        auto=True,
        minimum=1,
        help=f"auto: as edgetl finetune (a linear head on cached features is solved, the others train {AUTO_EPOCHS} "
        "epochs); N: every variant trains N epochs.",
    )
    cut_at: Optional[str] = option(
        None,
        group=TRAINING,
        metavar="STAGE",
        help="Stage where the cut feature extractor ends (default: a mid/late stage, stage5 for mobilenet_v2).",
    )
    trainable_stages: int = option(
        2, group=TRAINING, kind="int", minimum=1, help="K: the partial variant trains the top K stages."
    )
    image_cache: str = option(
        "ram",
        group=TRAINING,
        choices=IMAGE_CACHES,
        help="--cache of the variants that do not train on cached features.",
    )
    batch_size: int = option(32, group=TRAINING, kind="int", minimum=1, help="Training batch size.")
    weights: Optional[str] = option(None, group=TRAINING, help="As for finetune: a file, or 'none' for random init.")
    device: str = option("auto", group=TRAINING, kind="device", help="Training device: auto, cpu, cuda or cuda:N.")
    workers: Optional[int] = option(
        None,
        group=TRAINING,
        kind="workers",
        help="DataLoader worker processes: 'auto' (the usable cores, at most 8) or a number (0: load in the main "
        "process).",
    )
    val_split: Optional[float] = option(
        None, group=TRAINING, kind="float", help="As for finetune, when DATA has no train/ and val/."
    )
    steps: int = option(
        2,
        group=TIMING,
        kind="int",
        minimum=1,
        help="Synthetic training steps timed per variant in each of 3 interleaved rounds.",
    )
    batches: Sequence[int] = option(
        (1, 8), group=TIMING, kind="ints", flags=("--batch",), help="Inference batch sizes, comma-separated."
    )
    warmup: int = option(10, group=TIMING, kind="int", minimum=0, help="Untimed inference calls first.")
    iters: int = option(50, group=TIMING, kind="int", minimum=1, help="Timed inference calls per backend and batch.")
    rounds: int = option(5, group=TIMING, kind="int", minimum=1, help="Timing rounds.")
    threads: Optional[int] = option(
        None, group=TIMING, kind="int", minimum=1, help="Inference threads (default: the runtime's)."
    )
    out: Optional[str] = option(None, group=OUTPUT, kind="path", output=True, help="Default: models/variants-<time>/.")
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_cache not in IMAGE_CACHES:
            raise ConfigError.about("{image_cache} must be one of " + ", ".join(IMAGE_CACHES))
        if self.steps < 1:
            raise ConfigError.about("{steps} must be >= 1")
        if self.cut_at is None and self.arch not in DEFAULT_CUT:
            raise ConfigError.about(f"no default {{cut_at}} for {self.arch}; name a stage")
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
