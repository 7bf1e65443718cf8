"""--balance: the class-balanced order (proportions, determinism, shards), the class-weighted loss against a
hand computation, and the imbalance warning."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.device import DeviceSetup
from edgetl.data.folders import load_dataset
from edgetl.data.pipelines import EpochBatchSampler
from edgetl.data.sampling import balanced_class_weights, balanced_sample_weights, imbalance_warning
from edgetl.data.sharding import Shard
from edgetl.train.config import FinetuneConfig
from edgetl.train.inputs import build_pipeline
from edgetl.train.objective import TrainingLoss, hard_labels, training_loss

LABELS = [0] * 90 + [1] * 10  # 9:1


def _rows(sampler: EpochBatchSampler, seed: int) -> torch.Tensor:
    sampler.set_epoch(seed)
    return torch.cat([rows for rows, _ in sampler])


def test_the_balanced_sampler_draws_each_class_equally_often() -> None:
    weights = balanced_sample_weights(LABELS, 2)
    sampler = EpochBatchSampler(len(LABELS), 16, True, True, weights=weights)
    drawn = torch.cat([_rows(sampler, seed) for seed in range(40)])  # 40 epochs x 100 draws
    minority = (drawn >= 90).double().mean().item()
    # binomial(4000, 0.5): sigma = 0.0079, so +-0.03 is 3.8 sigma (and the seeds are fixed: no flakiness)
    assert abs(minority - 0.5) < 0.03
    plain = torch.cat([_rows(EpochBatchSampler(len(LABELS), 16, True, True), seed) for seed in range(40)])
    assert abs((plain >= 90).double().mean().item() - 0.1) < 1e-9  # without it: a permutation, 10% minority


def test_the_balanced_order_is_a_function_of_the_epoch_seed_and_splits_into_shards() -> None:
    weights = balanced_sample_weights(LABELS, 2)
    one = EpochBatchSampler(len(LABELS), 16, True, True, weights=weights)
    assert torch.equal(_rows(one, 3), _rows(one, 3)) and not torch.equal(_rows(one, 3), _rows(one, 4))
    ranks = [EpochBatchSampler(len(LABELS), 16, True, True, Shard(r, 2), pad=False, weights=weights) for r in (0, 1)]
    for rank in ranks:
        rank.set_epoch(3)
    parts = [torch.cat([a, b]) for (a, _), (b, _) in zip(*ranks)]
    assert torch.equal(torch.cat(parts), _rows(one, 3))


def test_the_class_weighted_loss_matches_a_hand_computation() -> None:
    labels = [0, 0, 0, 1]
    assert balanced_class_weights(labels, 2) == [4 / 6, 2.0]  # N / (C n_c)
    logits = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [0.5, -0.5]])
    loss = training_loss(0.0, "loss", labels, 2, "cpu")

    def nll(row: int, cls: int) -> float:
        values = logits[row].tolist()
        return -(values[cls] - math.log(sum(math.exp(v) for v in values)))

    by_hand = (4 / 6 * (nll(0, 0) + nll(1, 0) + nll(2, 0)) + 2.0 * nll(3, 1)) / 4
    assert loss(logits, torch.tensor(labels)).item() == pytest.approx(by_hand, rel=1e-6)
    # soft target and label smoothing 0.1: q = 0.9 q + 0.1 / 2, weighted per class, mean over the 4 samples
    soft = torch.tensor([[0.7, 0.3], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    smooth = TrainingLoss(0.1, torch.tensor([4 / 6, 2.0]))
    q = [[0.9 * v + 0.05 for v in row] for row in soft.tolist()]
    by_hand = sum(q[i][c] * [4 / 6, 2.0][c] * nll(i, c) for i in range(4) for c in range(2)) / 4
    assert smooth(logits, soft).item() == pytest.approx(by_hand, rel=1e-6)
    assert smooth.summed()(logits, soft).item() == pytest.approx(4 * by_hand, rel=1e-6)  # a process's share
    assert torch.equal(hard_labels(soft), torch.tensor([0, 0, 0, 1]))  # what train accuracy counts
    assert training_loss(0.0, "sampler", labels, 2, "cpu").weight is None


def test_an_imbalanced_training_set_gets_a_one_line_warning(make_image_folder, caplog) -> None:
    assert imbalance_warning([0, 0, 1], ["a", "b"], "none") is None  # 1 of 2: exactly half
    split = load_dataset(make_image_folder({"big": 5, "small": 2}, size=32, split=True))
    config = FinetuneConfig(arch="mobilenet_v3_small", strategy="full", cache="none", workers=0)
    spec = PreprocessSpec(input_size=32, resize_size=36)
    with caplog.at_level(logging.WARNING, logger="edgetl"):
        build_pipeline(config, split, spec, None, DeviceSetup.create("cpu"))
    lines = [r.getMessage() for r in caplog.records if "imbalance" in r.getMessage()]
    assert lines == ["class imbalance: 'small' has 2 training images, under half of 'big''s 5; "
                     "consider --balance sampler or loss"]  # fmt: skip
    assert "\n" not in lines[0]


def test_balanced_sampling_reaches_the_feature_pipeline(tmp_path: Path, monkeypatch) -> None:
    from edgetl.data.feature_cache import FeaturePipeline

    monkeypatch.setenv("EDGETL_HOME", str(tmp_path))
    features = torch.arange(100.0).view(1, 100, 1)
    labels = torch.tensor(LABELS)
    weights = balanced_sample_weights(LABELS, 2)
    pipeline = FeaturePipeline(features, labels, features[0], labels, 20, sample_weights=weights)
    drawn = torch.cat([y for seed in range(40) for _, y in pipeline.train_batches(seed)]).double()
    assert abs(drawn.mean().item() - 0.5) < 0.03  # the same tolerance as above: 4000 draws
