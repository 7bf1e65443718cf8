"""Which input pipeline a training run uses (``--cache``, ``auto`` resolved and logged) and building
it: the image pipelines of ``edgetl.data.pipelines`` or the feature cache of
``edgetl.data.feature_cache``, with the run's ``--augment``/``--mixup``/``--cutmix`` (per image in the
loaders, per batch on the device: ``edgetl.data.batch_augment``) and ``--balance sampler`` order."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Tuple

from edgetl.contracts.backbones import get_backbone, preprocess_spec
from edgetl.contracts.geometry import cached_views_suffice
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.device import DeviceSetup, resolve_workers, total_memory_bytes
from edgetl.data.batch_augment import AugmentedPipeline, BatchAugment
from edgetl.data.decoded_cache import cache_bytes
from edgetl.data.feature_cache import feature_pipeline
from edgetl.data.folders import DatasetSplit
from edgetl.data.pipelines import image_pipeline
from edgetl.data.sampling import balanced_sample_weights, imbalance_warning
from edgetl.data.strong_augment import LEVELS
from edgetl.errors import ConfigError
from edgetl.train.config import FinetuneConfig
from edgetl.train.distributed import World

log = logging.getLogger(__name__)


def resolve_cache(
    config: FinetuneConfig, split: DatasetSplit, preprocess: PreprocessSpec, memory_bytes: Optional[int] = None
) -> Tuple[str, str]:
    """The pipeline ``--cache`` selects (``auto`` resolved) and why."""
    if config.cache != "auto":
        return config.cache, "--cache {}".format(config.cache)
    if not cached_views_suffice(config.eval_geometry, config.train_geometry):
        return "none", "the caches hold centre-crop views; {} / {} are computed from whole images".format(
            config.eval_geometry, config.train_geometry
        )
    if config.strategy == "feature-extractor" and not config.mixing:
        return "features", "the base is frozen, so its features are computed once and only the head trains"
    need = cache_bytes(len(split.train) + len(split.val), preprocess)
    memory = total_memory_bytes() if memory_bytes is None else memory_bytes
    if memory is not None and need > memory / 2:
        return "none", "a decoded-image cache would take {:.1f} GB, more than half of the {:.1f} GB of RAM".format(
            need / 1e9, memory / 1e9
        )
    mixing = "; --mixup/--cutmix mix images, not stored features" if config.strategy == "feature-extractor" else ""
    return "ram", "decoded-image cache ({:.2f} GB): images are decoded once, crops are cut per batch{}".format(
        need / 1e9, mixing
    )


def resolve_config(config: FinetuneConfig, split: DatasetSplit, run_dir: Path) -> FinetuneConfig:
    """``config`` as the run in ``run_dir`` on ``split`` saves it: ``FinetuneConfig.resolved`` with the pipeline
    ``--cache auto`` chooses here (logged)."""
    spec = replace(preprocess_spec(get_backbone(config.arch, config.cut_at)), geometry=config.eval_geometry)
    cache, reason = resolve_cache(config, split, spec)
    if config.cache == "auto":
        log.info("--cache auto: using %s (%s)", cache, reason)
    return config.resolved(cache, str(run_dir))


def build_pipeline(
    config: FinetuneConfig,
    split: DatasetSplit,
    spec: PreprocessSpec,
    model: Any,
    setup: DeviceSetup,
    world: Optional[World] = None,
) -> Any:
    """The training input pipeline ``config.cache`` names (resolved if ``auto``): in a distributed run, its
    batches are this rank's part of each global batch and ``--workers auto`` is this rank's share of the cores."""
    world = world or World()
    cache, reason = resolve_cache(config, split, spec)
    if config.cache == "auto":
        log.info("--cache auto: using %s (%s)", cache, reason)
    workers = resolve_workers(config.workers, world.role.local_world_size)
    labels = [s.label for s in split.train]
    warning = imbalance_warning(labels, split.classes, config.balance)
    if warning and world.is_main:
        log.warning(warning)
    weights = balanced_sample_weights(labels, len(split.classes)) if config.balance == "sampler" else None
    options = dict(batch_size=config.batch_size, workers=workers, setup=setup, shard=world.shard)
    options.update(augment=config.augment, sample_weights=weights)
    if cache == "features":
        if not model.base_frozen:
            raise ConfigError("--cache features needs --strategy feature-extractor (a frozen base)")
        if config.augment == "strong" and not config.feature_views and world.is_main:
            log.warning("--augment strong: the feature cache trains on the eval view; add --feature-views N")
        return feature_pipeline(split, spec, model, views=config.feature_views, seed=config.seed, **options)
    pipeline = image_pipeline(cache, split, spec, train_geometry=config.train_geometry, **options)
    augment = BatchAugment(
        config.batch_size,
        len(split.train),
        len(split.classes),
        LEVELS[config.augment].erase_p,
        config.mixup,
        config.cutmix,
        world.shard,
    )
    return AugmentedPipeline(pipeline, augment) if augment.active else pipeline
