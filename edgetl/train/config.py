"""Fine-tuning options as one validated, serialisable dataclass, each field declaring its command-line option
(torch-free: the CLI builds ``edgetl finetune``'s options from it, on the device too)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgetl.contracts.backbones import BACKBONES, DEFAULT_ARCH, BackboneSpec, get_backbone
from edgetl.contracts.formats import AUGMENTS, BALANCES, GEOMETRIES, TRAIN_GEOMETRIES
from edgetl.contracts.geometry import cached_views_suffice
from edgetl.core.device import check_device_name
from edgetl.core.fileio import check_out_path
from edgetl.core.options import option
from edgetl.errors import ConfigError

STRATEGIES = ("feature-extractor", "partial", "full")
HEADS = ("linear", "mlp")
OPTIMIZERS = ("sgd", "adamw")
HEAD_FITS = ("auto", "solve", "epochs")  # how the head is fitted: see edgetl.train.head_fit
FLOAT32_MAX = 3.4028234663852886e38  # the optimizers keep rates in float32 tensors
CACHES = ("auto", "none", "ram", "features")  # input pipelines: see edgetl.data.pipelines
AUTO_EPOCHS = 5  # --epochs auto of a run trained by epochs
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
        raise ConfigError.about(f"{{strategy}} must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    names = spec.stage_names
    if strategy == "full":
        return names
    if strategy == "feature-extractor":
        return []
    if not 1 <= trainable_stages <= len(names):
        raise ConfigError.about(
            f"{{trainable_stages}} must be between 1 and {len(names)} for {spec.name} (stages: {', '.join(names)})"
        )
    return names[len(names) - trainable_stages :]


MODEL, OPTIMISATION, DATA, AUGMENTATION, DISTRIBUTED, RUN = (
    "Model",
    "Optimisation",
    "Data",
    "Augmentation",
    "Distributed",
    "Output and run",
)
FINETUNE_GROUPS = (MODEL, OPTIMISATION, DATA, AUGMENTATION, DISTRIBUTED, RUN)  # the help's sections, in order
_SGD, _ADAMW = OPTIMIZER_DEFAULTS["sgd"], OPTIMIZER_DEFAULTS["adamw"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Every option of a fine-tuning run; validated on creation. A run saves it ``resolved`` (no ``auto`` left
    that depends on the data) before any work, and never changes it afterwards."""

    data: Optional[str] = option(None, argument=True, kind="path", group=DATA)  # None: the built-in demo dataset
    arch: str = option(DEFAULT_ARCH, group=MODEL, choices=tuple(sorted(BACKBONES)), help="Pretrained backbone.")
    strategy: str = option(
        "feature-extractor",
        group=MODEL,
        choices=STRATEGIES,
        help="Freeze the whole conv base, train the last K stages, or train everything.",
    )
    trainable_stages: int = option(
        2, group=MODEL, kind="int", help="K for --strategy partial: how many named stages (from the top) train."
    )
    cut_at: Optional[str] = option(
        None,
        group=MODEL,
        metavar="STAGE",
        help="End the base early at this named stage: a smaller, faster feature extractor.",
    )
    head: str = option("linear", group=MODEL, choices=HEADS, help="The new classification head.")
    head_fit: str = option(
        "auto",
        group=OPTIMISATION,
        choices=HEAD_FITS,
        help="solve: a linear head on cached features (the feature extractor's default pipeline) is solved to "
        "convergence (L-BFGS, L2 by cross-validation); epochs: train --epochs epochs; auto: solve where it "
        "applies and --epochs is auto, else epochs.",
    )
    epochs: Optional[int] = option(
        None,
        group=OPTIMISATION,
        kind="int",
        auto=True,
        help=f"Epochs to train (--head-fit epochs). auto: {AUTO_EPOCHS}.",
    )
    batch_size: int = option(
        32,
        group=OPTIMISATION,
        kind="int",
        minimum=1,
        help="Images per optimisation step: the global batch, over all processes.",
    )
    lr: Optional[float] = option(
        None,
        group=OPTIMISATION,
        kind="float",
        auto=True,
        minimum=0.0,
        help=f"Learning rate of pretrained layers. auto: {_ADAMW.lr} (AdamW) or {_SGD.lr} (SGD) at batch "
        f"{REFERENCE_BATCH}, x sqrt(batch/{REFERENCE_BATCH}) for AdamW, x batch/{REFERENCE_BATCH} for SGD.",
    )
    head_lr_mult: Optional[float] = option(
        None,
        group=OPTIMISATION,
        kind="float",
        auto=True,
        minimum=0.0,
        help=f"The new head trains at lr x this. auto: {_ADAMW.head_lr_mult:g} (AdamW), {_SGD.head_lr_mult:g} (SGD).",
    )
    optimizer: str = option("sgd", group=OPTIMISATION, choices=OPTIMIZERS, help="sgd (momentum 0.9) or adamw.")
    weight_decay: Optional[float] = option(
        None,
        group=OPTIMISATION,
        kind="float",
        auto=True,
        minimum=0.0,
        help=f"auto: {_ADAMW.weight_decay:g} (AdamW, decoupled), {_SGD.weight_decay:g} (SGD).",
    )
    # as torchvision's recipes; an unsmoothed head on frozen features fails INT8's gate
    label_smoothing: float = option(0.1, group=OPTIMISATION, kind="float", help="Label smoothing of the loss.")
    warmup_epochs: Optional[int] = option(
        None,
        group=OPTIMISATION,
        kind="int",
        auto=True,
        minimum=0,
        help="Epochs of linear lr warm-up before the cosine decay. auto: 0 for the feature extractor (its base is "
        f"frozen), {WARMUP_EPOCHS} otherwise.",
    )
    amp: Optional[bool] = option(
        None,
        group=OPTIMISATION,
        kind="switch",
        flags=("--amp/--no-amp",),
        help="Mixed precision (default: on with CUDA).",
    )
    device: str = option("auto", group=RUN, kind="device", help="Torch device: auto, cpu, cuda or cuda:N.")
    seed: int = option(0, group=RUN, kind="int", help="Seeds the weights' init, the data order and the splits.")
    workers: Optional[int] = option(
        None,
        group=DATA,
        kind="workers",
        help="DataLoader worker processes: 'auto' (the usable cores, at most 8; in a distributed run, each "
        "process's share) or a number (0: load in the main process).",
    )
    cache: str = option(
        "auto",
        group=DATA,
        choices=CACHES,
        help="Input pipeline: none (PIL decoding each epoch), ram (decoded-image cache, crops per batch on "
        "the device), features (frozen base run once, head trains on its features), auto (features "
        "for feature-extractor, else ram).",
    )
    feature_views: int = option(
        0,
        group=DATA,
        kind="int",
        help="--cache features: 0 = one un-augmented view per image, N = N random crop+flip views.",
    )
    val_split: Optional[float] = option(
        None,
        group=DATA,
        kind="float",
        help="Hold out this fraction per class when DATA has no train/ and val/ folders (default 0.2).",
    )
    weights: Optional[str] = option(
        None, group=MODEL, help="A local state dict, or 'none' for random init (default: torchvision's, cached)."
    )
    out: Optional[str] = option(
        None, group=RUN, kind="path", output=True, help="Run folder (default models/<arch>-<strategy>-<time>)."
    )
    sync_bn: bool = option(
        False,
        group=DISTRIBUTED,
        kind="flag",
        help="Distributed on CUDA: trainable BatchNorm layers use the statistics of the global batch (SyncBatchNorm).",
    )
    eval_geometry: str = option(
        GEOMETRIES[0],
        group=DATA,
        choices=GEOMETRIES,
        help="How val images become inputs, so best.pt is picked on what the device sees: center-crop, "
        "imagenet-stretch (jetson-inference) or nvinfer-* (DeepStream). Written to preprocess.json and the bundle.",
    )
    train_geometry: str = option(
        TRAIN_GEOMETRIES[0],
        group=AUGMENTATION,
        choices=TRAIN_GEOMETRIES,
        help="random-resized-crop (+ flip), or a deployment geometry of the whole image + random flip. "
        "Geometries other than these defaults train through --cache none.",
    )
    augment: str = option(
        "default",
        group=AUGMENTATION,
        choices=AUGMENTS,
        help="Training augmentation: none (the eval view), default (--train-geometry's crop + flip), strong "
        "(default + TrivialAugmentWide per image + RandomErasing). Evaluation and the exported preprocessing "
        "never change.",
    )
    mixup: float = option(
        0.0,
        group=AUGMENTATION,
        kind="float",
        minimum=0.0,
        help="MixUp with mixing weights from Beta(A, A); 0 = off. Not with --cache features.",
    )
    cutmix: float = option(
        0.0,
        group=AUGMENTATION,
        kind="float",
        minimum=0.0,
        help="CutMix with box areas from Beta(A, A); 0 = off. With --mixup too, each image gets one of the two.",
    )
    balance: str = option(
        "none",
        group=DATA,
        choices=BALANCES,
        help="Class imbalance: sampler (each class drawn equally often, with replacement) or loss (class-weighted "
        "cross-entropy); a solved linear head (--head-fit solve) fits class-weighted under either.",
    )
    patience: Optional[int] = option(
        None,
        group=OPTIMISATION,
        kind="int",
        minimum=1,
        help="Stop after N epochs without a better val top-1 (ties: lower val loss); best.pt stays the best epoch.",
    )
    test_split: Optional[float] = option(
        None,
        group=DATA,
        kind="float",
        help="Hold out this fraction per class (of train/ in a train/val layout) as a test split: no selection "
        "(best.pt, --patience, the head's L2) sees it; the final report and 'edgetl evaluate RUN --split test' do.",
    )

    @property
    def mixing(self) -> bool:
        """Whether batches are mixed (MixUp/CutMix): soft targets, image pipelines only."""
        return self.mixup > 0 or self.cutmix > 0

    def __post_init__(self) -> None:
        trainable_stage_names(get_backbone(self.arch, self.cut_at), self.strategy, self.trainable_stages)
        check_device_name(self.device)
        rates = (self.lr, self.head_lr_mult, self.weight_decay, self.label_smoothing)
        head_lr = self.step_sizes()[1] if self.optimizer in OPTIMIZERS else 0.0
        checks = (
            [
                (
                    all(v is None or math.isfinite(v) for v in rates),  # None: the optimizer's default
                    "{lr}, {head_lr_mult}, {weight_decay} and {label_smoothing} must be finite",
                ),
                (self.head in HEADS, "{head} must be one of " + ", ".join(HEADS)),
                (self.strategy in STRATEGIES, "{strategy} must be one of " + ", ".join(STRATEGIES)),
                (self.optimizer in OPTIMIZERS, "{optimizer} must be one of " + ", ".join(OPTIMIZERS)),
                (self.head_fit in HEAD_FITS, "{head_fit} must be one of " + ", ".join(HEAD_FITS)),
                (self.epochs is None or self.epochs >= 1, "{epochs} must be >= 1"),
                (self.batch_size >= 1, "{batch_size} must be >= 1"),
                ((self.lr or 1) > 0 and (self.head_lr_mult or 1) > 0, "{lr} and {head_lr_mult} must be > 0"),
                (head_lr < FLOAT32_MAX, "{lr} x {head_lr_mult} must fit in float32 (< 3.4e38)"),
                ((self.weight_decay or 0) >= 0, "{weight_decay} must be >= 0"),
                (0 <= self.label_smoothing < 1, "{label_smoothing} must be in [0, 1)"),
                (
                    self.warmup_epochs is None or 0 <= self.warmup_epochs <= (self.epochs or AUTO_EPOCHS),
                    "{warmup_epochs} must be between 0 and {epochs}",
                ),
                (self.patience is None or self.patience >= 1, "{patience} must be >= 1"),
                (self.test_split is None or 0 < self.test_split < 1, "{test_split} must be between 0 and 1"),
                (self.workers is None or self.workers >= 0, "{workers} must be >= 0"),
                (self.cache in CACHES, "{cache} must be one of " + ", ".join(CACHES)),
                (
                    self.cache != "features" or self.strategy == "feature-extractor",
                    "{cache} features needs {strategy} feature-extractor (other strategies train base layers)",
                ),
                (self.feature_views >= 0, "{feature_views} must be >= 0"),
                (
                    self.feature_views == 0
                    or (self.strategy == "feature-extractor" and self.cache in ("auto", "features")),
                    "{feature_views} needs {strategy} feature-extractor with {cache} features (or auto)",
                ),
                (
                    not (self.sync_bn and self.strategy == "feature-extractor"),
                    "{sync_bn} has nothing to synchronise: with {strategy} feature-extractor no BatchNorm trains",
                ),
                (self.eval_geometry in GEOMETRIES, "{eval_geometry} must be one of " + ", ".join(GEOMETRIES)),
                (
                    self.train_geometry in TRAIN_GEOMETRIES,
                    "{train_geometry} must be one of " + ", ".join(TRAIN_GEOMETRIES),
                ),
                (
                    cached_views_suffice(self.eval_geometry, self.train_geometry)
                    or (self.cache in ("auto", "none") and self.feature_views == 0),
                    "{eval_geometry}/{train_geometry} other than center-crop/random-resized-crop run on whole images: "
                    "use {cache} none (or auto) and no {feature_views}",
                ),
            ]
            + self._augment_checks()
            + self._head_fit_checks()
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError.about(message)

    def _augment_checks(self) -> List[Tuple[bool, str]]:
        return [
            (self.augment in AUGMENTS, "{augment} must be one of " + ", ".join(AUGMENTS)),
            (self.balance in BALANCES, "{balance} must be one of " + ", ".join(BALANCES)),
            (
                all(math.isfinite(a) and a >= 0 for a in (self.mixup, self.cutmix)),
                "{mixup} and {cutmix} must be finite and >= 0 (0 = off)",
            ),
            (
                not (self.mixing and (self.cache == "features" or self.feature_views)),
                "{mixup}/{cutmix} mix images, and {cache} features trains on stored features: use {cache} ram or none",
            ),
            (
                not (self.augment == "none" and self.feature_views),
                "{feature_views} are augmented views; {augment} none has none",
            ),
        ]

    def _head_fit_checks(self) -> List[Tuple[bool, str]]:
        """``solve`` needs what the convex fit needs: a linear head on the feature cache of a frozen base."""
        solve = self.head_fit == "solve"
        return [
            (not (solve and self.epochs is not None), "{epochs} trains by epochs; {head_fit} solve has none"),
            (
                not solve
                or (
                    self.head == "linear"
                    and self.strategy == "feature-extractor"
                    and self.cache in ("auto", "features")
                    and not self.mixing
                ),
                "{head_fit} solve needs a linear {head} on cached features: {strategy} feature-extractor with "
                "{cache} features (or auto), no {mixup}/{cutmix}",
            ),
        ]

    def check_inputs(self) -> None:
        """What a new run reads and writes, checked before any work (not in ``__post_init__``: a resumed run's
        saved options need neither its dataset folder nor its weights file any more)."""
        if self.data is not None and not Path(self.data).expanduser().is_dir():
            raise ConfigError.about("dataset folder not found: {path}", path=self.data)
        if (
            self.weights is not None
            and self.weights.lower() != "none"
            and not Path(self.weights).expanduser().is_file()
        ):
            raise ConfigError.about("{weights} file not found: {path}", path=self.weights)
        if self.out is not None:
            check_out_path(Path(self.out), "{out}")

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

    def resolved(self, cache: str, out: str) -> "FinetuneConfig":
        """This config with every ``auto`` that the run's data decides made concrete: ``cache`` (the pipeline
        ``--cache auto`` chose), ``out`` (the run folder), the head fit, epochs, warm-up and step sizes.
        ``device``, ``amp`` and ``workers`` stay as given: they describe the machine, and a run may resume on
        another. Resolving a resolved config changes nothing."""
        head_fit = self.head_fit
        if head_fit == "auto":
            convex = self.epochs is None and self.head == "linear" and cache == "features"
            head_fit = "solve" if convex else "epochs"
        if head_fit == "solve" and cache != "features":
            raise ConfigError.about(f"{{head_fit}} solve needs the feature cache; {{cache}} auto chose {cache}")
        epochs = None if head_fit == "solve" else self.epochs or AUTO_EPOCHS
        concrete = replace(self, head_fit=head_fit, epochs=epochs, cache=cache, out=out)
        lr, _, decay = concrete.step_sizes()
        mult = self.head_lr_mult if self.head_lr_mult is not None else OPTIMIZER_DEFAULTS[self.optimizer].head_lr_mult
        return replace(concrete, lr=lr, head_lr_mult=mult, weight_decay=decay, warmup_epochs=concrete.warmup)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "FinetuneConfig":
        """A saved config, this version's or an earlier one's (whose ``epochs`` None meant ``head_fit`` auto)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class LaunchConfig:
    """How ``edgetl finetune`` starts its processes (not saved with the run: a run may resume with another count)."""

    nproc_per_node: int = option(
        1,
        group=DISTRIBUTED,
        kind="int",
        minimum=1,
        help="Train with N processes on this node (one per GPU; gloo on CPU), launched with torch.distributed.run. "
        "Under torchrun it must match torchrun's.",
    )

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1:
            raise ConfigError.about("{nproc_per_node} must be >= 1")


def check_job(config: FinetuneConfig, device_type: str, world_size: int) -> None:
    """What a run of ``world_size`` processes on ``device_type`` needs: ``--batch-size`` is the global batch and
    each process takes an equal part of it; ``--sync-bn`` runs on CUDA only."""
    if config.sync_bn and device_type != "cuda":
        raise ConfigError.about(f"{{sync_bn}} needs CUDA: SyncBatchNorm does not run on {device_type.upper()}")
    if config.batch_size % world_size:
        lower = config.batch_size - config.batch_size % world_size
        choices = [str(size) for size in (lower, lower + world_size) if size > 0]
        raise ConfigError.about(
            f"{{batch_size}} {config.batch_size} is the global batch and must divide by the {world_size} processes; "
            f"use {' or '.join(choices)}"
        )
