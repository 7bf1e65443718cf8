"""How a distributed run splits batches: every sample of a global batch on exactly one rank, with the crop
randoms one process would give it; padding only where a rank's part is empty; val parts cover the set once."""

from __future__ import annotations

import pytest
import torch

from edgetl.data.feature_cache import FeaturePipeline
from edgetl.data.pipelines import EpochBatchSampler
from edgetl.data.sharding import Shard


@pytest.mark.parametrize(
    "count, batch_size, world", [(25, 8, 2), (27, 8, 2), (15, 8, 2), (10, 6, 3), (5, 4, 4), (7, 7, 1)]
)
def test_each_global_batch_is_cut_into_contiguous_parts_one_per_rank(count: int, batch_size: int, world: int) -> None:
    shards = [Shard(rank, world) for rank in range(world)]
    parts = [list(shard.batch_parts(count, batch_size, pad=False)) for shard in shards]
    covered = sorted(i for rank_parts in parts for lo, hi in rank_parts for i in range(lo, hi))
    assert covered == list(range(count))  # no sample dropped or duplicated (evaluation)
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        sizes = [shard.part(start, stop)[1] - shard.part(start, stop)[0] for shard in shards]
        assert sum(sizes) == stop - start and max(sizes) - min(sizes) <= 1
        if stop - start == batch_size and batch_size % world == 0:
            assert sizes == [batch_size // world] * world  # full batches: equal parts
    steps = [shard.steps(count, batch_size) for shard in shards]
    assert all(len(s) == -(-count // batch_size) for s in steps)  # every rank takes every step
    for index in range(len(steps[0])):
        assert sum(s[index][0] for s in steps) == steps[0][index][1]  # the parts add up to the global batch


def test_an_empty_part_becomes_one_padding_sample_that_counts_nothing() -> None:
    shard = Shard(1, 2)  # 25 = 3 x 8 + 1: the last global batch has one sample, rank 0's
    assert list(shard.batch_parts(25, 8, pad=True))[-1] == (24, 25)  # padding: the batch's first sample
    assert list(shard.batch_parts(25, 8, pad=False))[-1] == (20, 24)  # evaluation skips the empty part
    assert shard.steps(25, 8)[-1] == (0, 1)  # weight 0 of a 1-sample global batch
    assert Shard(0, 2).steps(25, 8)[-1] == (1, 1)


@pytest.mark.parametrize("world", [2, 3])
def test_sampler_parts_hold_the_single_process_rows_and_crops(world: int) -> None:
    one = EpochBatchSampler(26, 6, shuffle=True, augment=True)
    ranks = [EpochBatchSampler(26, 6, True, True, Shard(rank, world), pad=False) for rank in range(world)]
    for sampler in [one] + ranks:
        sampler.set_epoch(7)
    reference = list(one)
    per_rank = [list(sampler) for sampler in ranks]
    assert [len(sampler) for sampler in ranks] == [len(batches) for batches in per_rank]
    for index, (rows, randoms) in enumerate(reference):
        pieces = [batches[index] for batches in per_rank if index < len(batches)]
        assert torch.equal(torch.cat([p[0] for p in pieces]), rows)
        assert torch.equal(torch.cat([p[1] for p in pieces]), randoms)


def test_feature_batches_are_the_single_process_batches_cut_by_rank() -> None:
    generator = torch.Generator().manual_seed(0)
    train, val = torch.randn(2, 11, 3, generator=generator), torch.randn(7, 3, generator=generator)
    labels, val_labels = torch.arange(11) % 2, torch.arange(7) % 2

    def pipeline(shard: Shard) -> FeaturePipeline:
        return FeaturePipeline(train, labels, val, val_labels, batch_size=4, shard=shard)

    one, parts = pipeline(Shard()), [pipeline(Shard(rank, 2)) for rank in range(2)]
    for reference, *pieces in zip(one.train_batches(5), *(p.train_batches(5) for p in parts)):
        assert torch.equal(torch.cat([features for features, _ in pieces])[: len(reference[0])], reference[0])
    val_rows = torch.cat([features for p in parts for features, _ in p.val_batches()])
    assert sorted(val_rows[:, 0].tolist()) == sorted(val[:, 0].tolist())  # every val sample once
