"""Fine-tuning options as one validated, serialisable dataclass (torch-free: the CLI reads defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgetl.core.device import check_device_name
from edgetl.core.fileio import check_out_path
from edgetl.errors import ConfigError
from edgetl.spec.backbones import DEFAULT_ARCH, BackboneSpec, get_backbone
from edgetl.spec.formats import AUGMENTS, BALANCES, GEOMETRIES, TRAIN_GEOMETRIES
from edgetl.spec.geometry import cached_views_suffice

STRATEGIES = ("feature-extractor", "partial", "full")
HEADS = ("linear", "mlp")
OPTIMIZERS = ("sgd", "adamw")
FLOAT32_MAX = 3.4028234663852886e38  # the optimizers keep rates in float32 tensors
CACHES = ("auto", "none", "ram", "features")  # input pipelines: see edgetl.data.pipelines
AUTO_EPOCHS = 5  # --epochs auto where no convex fit applies (partial, full, an MLP head, no feature cache)
WARMUP_EPOCHS = 1  # --warmup-epochs auto of the strategies that train pretrained layers (partial, full)
REFERENCE_BATCH = 32  # the batch the default step sizes were measured at


@dataclass(frozen=True)
class StepDefaults:
    """An optimizer's default step sizes at ``REFERENCE_BATCH``; ``batch_power``: lr x (batch / 32) ** power."""

    lr: float
    head_lr_mult: float
    weight_decay: float
    batch_power: float


# SGD (the default): base lr 0.005 at batch 32, linear in the batch; the head at 2x (was 10x, then 4x). A
# linear head's SGD step is stable below about 2 (1 + momentum) / lambda_max of the feature second moment; for
# MobileNetV2 (features of mean norm 18) that bound is near 0.05, the first head lr, hence divergence on some
# data. Training base layers moves the features under the head, and head lr 0.02 (4x) still took full
# fine-tuning on digits above chance in epoch 2 (2.45; head 0.01: 2.19). Measured on mobilenet_v2 against
# lower base lr and longer warm-up (README "Learning rates", benchmarks/results/realdata.md); the other five
# backbones use the same rule, not measured. AdamW (per-coordinate steps, insensitive to the feature scale):
# not measured.
OPTIMIZER_DEFAULTS = {
    "adamw": StepDefaults(lr=1e-4, head_lr_mult=10.0, weight_decay=0.05, batch_power=0.5),
    "sgd": StepDefaults(lr=0.005, head_lr_mult=2.0, weight_decay=1e-3, batch_power=1.0),
}


def trainable_stage_names(spec: BackboneSpec, strategy: str, trainable_stages: int) -> List[str]:
    """The base stages that train under a strategy (the head always trains)."""
    if strategy not in STRATEGIES:
        raise ConfigError("strategy must be one of {}, got {!r}".format(", ".join(STRATEGIES), strategy))
    names = spec.stage_names
    if strategy == "full":
        return names
    if strategy == "feature-extractor":
        return []
    if not 1 <= trainable_stages <= len(names):
        raise ConfigError(
            "--trainable-stages must be between 1 and {} for {} (stages: {})".format(
                len(names), spec.name, ", ".join(names)
            )
        )
    return names[len(names) - trainable_stages :]


@dataclass(frozen=True)
class FinetuneConfig:
    """Every option of a fine-tuning run; validated on creation, saved in the run."""

    data: Optional[str] = None  # None: the built-in demo dataset
    arch: str = DEFAULT_ARCH
    strategy: str = "feature-extractor"
    trainable_stages: int = 2
    cut_at: Optional[str] = None  # end the base early at this stage (smaller, faster)
    head: str = "linear"
    epochs: Optional[int] = None  # None: auto (solve a linear head on cached features, else AUTO_EPOCHS)
    batch_size: int = 32
    lr: Optional[float] = None  # None: OPTIMIZER_DEFAULTS, scaled by the batch size
    head_lr_mult: Optional[float] = None
    optimizer: str = "sgd"
    weight_decay: Optional[float] = None
    label_smoothing: float = 0.1  # as torchvision's recipes; an unsmoothed head on frozen features fails INT8's gate
    warmup_epochs: Optional[int] = None  # None: auto (``warmup``): 0 for the feature extractor, else WARMUP_EPOCHS
    amp: Optional[bool] = None  # None: on for CUDA
    device: str = "auto"
    seed: int = 0
    workers: Optional[int] = None  # None: from the core count
    cache: str = "auto"
    feature_views: int = 0  # --cache features: 0 = the eval view, N = N augmented views per image
    val_split: Optional[float] = None
    weights: Optional[str] = None  # None: torchvision weights; "none": random init; else a file
    out: Optional[str] = None
    sync_bn: bool = False  # distributed on CUDA: BatchNorm statistics of the global batch (SyncBatchNorm)
    eval_geometry: str = GEOMETRIES[0]  # how val images become inputs (best.pt is picked on it); preprocess.json
    train_geometry: str = TRAIN_GEOMETRIES[0]  # random-resized-crop, or a deployment geometry + random flip
    augment: str = "default"  # none | default | strong (edgetl.data.strong_augment); never changes eval/deploy input
    mixup: float = 0.0  # Beta(alpha, alpha) of MixUp; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix; 0 = off
    balance: str = "none"  # none | sampler (class-balanced order) | loss (class-weighted cross-entropy)

    patience: Optional[int] = None  # stop after this many epochs without a better val top-1 (ties: val loss)
    test_split: Optional[float] = None  # hold out this fraction per class; only the final report touches it

    @property
    def mixing(self) -> bool:
        """Whether batches are mixed (MixUp/CutMix): soft targets, image pipelines only."""
        return self.mixup > 0 or self.cutmix > 0

    def __post_init__(self) -> None:
        trainable_stage_names(get_backbone(self.arch, self.cut_at), self.strategy, self.trainable_stages)
        check_device_name(self.device)
        rates = (self.lr, self.head_lr_mult, self.weight_decay, self.label_smoothing)
        head_lr = self.step_sizes()[1] if self.optimizer in OPTIMIZERS else 0.0
        checks = [
            (
                all(v is None or math.isfinite(v) for v in rates),  # None: the optimizer's default
                "--lr, --head-lr-mult, --weight-decay and --label-smoothing must be finite",
            ),
            (self.head in HEADS, "--head must be one of " + ", ".join(HEADS)),
            (self.strategy in STRATEGIES, "--strategy must be one of " + ", ".join(STRATEGIES)),
            (self.optimizer in OPTIMIZERS, "--optimizer must be one of " + ", ".join(OPTIMIZERS)),
            (self.epochs is None or self.epochs >= 1, "--epochs must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            ((self.lr or 1) > 0 and (self.head_lr_mult or 1) > 0, "--lr and --head-lr-mult must be > 0"),
            (head_lr < FLOAT32_MAX, "--lr x --head-lr-mult must fit in float32 (< 3.4e38)"),
            ((self.weight_decay or 0) >= 0, "--weight-decay must be >= 0"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (
                self.warmup_epochs is None or 0 <= self.warmup_epochs <= (self.epochs or AUTO_EPOCHS),
                "--warmup-epochs must be between 0 and --epochs",
            ),
            (self.patience is None or self.patience >= 1, "--patience must be >= 1"),
            (self.test_split is None or 0 < self.test_split < 1, "--test-split must be between 0 and 1"),
            (self.workers is None or self.workers >= 0, "--workers must be >= 0"),
            (self.cache in CACHES, "--cache must be one of " + ", ".join(CACHES)),
            (
                self.cache != "features" or self.strategy == "feature-extractor",
                "--cache features needs --strategy feature-extractor (other strategies train base layers)",
            ),
            (self.feature_views >= 0, "--feature-views must be >= 0"),
            (
                self.feature_views == 0
                or (self.strategy == "feature-extractor" and self.cache in ("auto", "features")),
                "--feature-views needs --strategy feature-extractor with --cache features (or auto)",
            ),
            (
                not (self.sync_bn and self.strategy == "feature-extractor"),
                "--sync-bn has nothing to synchronise: with --strategy feature-extractor no BatchNorm trains",
            ),
            (self.eval_geometry in GEOMETRIES, "--eval-geometry must be one of " + ", ".join(GEOMETRIES)),
            (self.train_geometry in TRAIN_GEOMETRIES, "--train-geometry must be one of " + ", ".join(TRAIN_GEOMETRIES)),
            (
                cached_views_suffice(self.eval_geometry, self.train_geometry)
                or (self.cache in ("auto", "none") and self.feature_views == 0),
                "--eval-geometry/--train-geometry other than center-crop/random-resized-crop run on whole images: "
                "use --cache none (or auto) and no --feature-views",
            ),
        ] + self._augment_checks()
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def _augment_checks(self) -> List[Tuple[bool, str]]:
        return [
            (self.augment in AUGMENTS, "--augment must be one of " + ", ".join(AUGMENTS)),
            (self.balance in BALANCES, "--balance must be one of " + ", ".join(BALANCES)),
            (
                all(math.isfinite(a) and a >= 0 for a in (self.mixup, self.cutmix)),
                "--mixup and --cutmix must be finite and >= 0 (0 = off)",
            ),
            (
                not (self.mixing and (self.cache == "features" or self.feature_views)),
                "--mixup/--cutmix mix images, and --cache features trains on stored features: use --cache ram or none",
            ),
            (
                not (self.augment == "none" and self.feature_views),
                "--feature-views are augmented views; --augment none has none",
            ),
        ]

    def check_inputs(self) -> None:
        """What a new run reads and writes, checked before any work (not in ``__post_init__``: a resumed run's
        saved options need neither its dataset folder nor its weights file any more)."""
        if self.data is not None and not Path(self.data).expanduser().is_dir():
            raise ConfigError("dataset folder not found: {}".format(self.data))
        if (
            self.weights is not None
            and self.weights.lower() != "none"
            and not Path(self.weights).expanduser().is_file()
        ):
            raise ConfigError("--weights file not found: {}".format(self.weights))
        if self.out is not None:
            check_out_path(Path(self.out), "--out")

    @property
    def warmup(self) -> int:
        """Warm-up epochs: the option, else auto. The warm-up keeps a random head's first large gradients from
        wrecking pretrained layers; a frozen base has none to protect, and there a warm-up only slows the
        head (digits, --cache none: train loss 2.34 after epoch 2 with one, above chance; 2.23 without)."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return 0 if self.strategy == "feature-extractor" else min(WARMUP_EPOCHS, self.epochs or AUTO_EPOCHS)

    def step_sizes(self) -> Tuple[float, float, float]:
        """(base lr, head lr, weight decay): the options given, else the optimizer's defaults, whose lr scales
        with ``--batch-size`` (SGD linearly, AdamW by the square root)."""
        default = OPTIMIZER_DEFAULTS[self.optimizer]
        lr = self.lr if self.lr is not None else default.lr * (self.batch_size / REFERENCE_BATCH) ** default.batch_power
        mult = self.head_lr_mult if self.head_lr_mult is not None else default.head_lr_mult
        decay = self.weight_decay if self.weight_decay is not None else default.weight_decay
        return lr, lr * mult, decay

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "FinetuneConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class LaunchConfig:
    """How ``edgetl finetune`` starts its processes (not saved with the run: a run may resume with another count)."""

    nproc_per_node: int = 1  # > 1: launch that many processes on this node with torch.distributed.run

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1:
            raise ConfigError("--nproc-per-node must be >= 1")


def check_job(config: FinetuneConfig, device_type: str, world_size: int) -> None:
    """What a run of ``world_size`` processes on ``device_type`` needs: ``--batch-size`` is the global batch and
    each process takes an equal part of it; ``--sync-bn`` runs on CUDA only."""
    if config.sync_bn and device_type != "cuda":
        raise ConfigError("--sync-bn needs CUDA: SyncBatchNorm does not run on {}".format(device_type.upper()))
    if config.batch_size % world_size:
        lower = config.batch_size - config.batch_size % world_size
        choices = [str(size) for size in (lower, lower + world_size) if size > 0]
        raise ConfigError(
            "--batch-size {} is the global batch and must divide by the {} processes; use {}".format(
                config.batch_size, world_size, " or ".join(choices)
            )
        )
