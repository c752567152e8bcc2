"""Sharding and contexts of the distributed engine; the torchrun end-to-end tests live in test_distributed_training.py."""

from __future__ import annotations

import pytest

from mobilenets.distributed import DistributedContext, init_distributed, shard_indices


def test_single_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = init_distributed("cpu")
    assert (context.rank, context.world_size, context.is_main, context.is_distributed) == (0, 1, True, False)
    assert context.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_and_cover_the_epoch(world_size):
    shards = [
        list(shard_indices(10, DistributedContext(rank=r, world_size=world_size), seed=7, epoch=3)) for r in range(world_size)
    ]
    seen = [i for shard in shards for i in shard]
    assert set(seen) == set(range(10))
    # DistributedSampler pads to equal shard sizes by repeating a few indices; the unpadded parts are disjoint.
    assert len(seen) == world_size * -(-10 // world_size)
    assert len({len(s) for s in shards}) == 1


def test_rank_batches_together_form_the_global_batch():
    """Rank r takes every world_size-th index, so the ranks' k-th batches form the k-th global batch."""
    world_size, local_batch = 2, 3
    shards = [list(shard_indices(12, DistributedContext(rank=r, world_size=world_size), seed=1, epoch=0)) for r in range(2)]
    interleaved = [shards[r][i] for i in range(6) for r in range(world_size)]
    for k in range(2):
        global_batch = set(interleaved[k * 6 : (k + 1) * 6])
        ranks_batch = set(shards[0][k * local_batch : (k + 1) * local_batch]) | set(shards[1][k * local_batch : (k + 1) * local_batch])
        assert ranks_batch == global_batch


def test_epochs_reshuffle_deterministically():
    context = DistributedContext()
    assert list(shard_indices(20, context, seed=0, epoch=0)) == list(shard_indices(20, context, seed=0, epoch=0))
    assert list(shard_indices(20, context, seed=0, epoch=0)) != list(shard_indices(20, context, seed=0, epoch=1))


def test_one_process_order_is_the_distributed_permutation():
    """So a 2-process run's k-th global batch is the k-th batch of a 1-process run with the same seed."""
    single = list(shard_indices(12, DistributedContext(), seed=5, epoch=2))
    ranks = [list(shard_indices(12, DistributedContext(rank=r, world_size=2), seed=5, epoch=2)) for r in range(2)]
    assert single == [ranks[r][i] for i in range(6) for r in range(2)]
