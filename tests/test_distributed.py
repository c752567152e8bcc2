"""Sharding and contexts of the distributed engine; torchrun end-to-end tests are in test_distributed_training.py."""

from __future__ import annotations

import pytest
import torch

from mobilenets.core.distributed import init_distributed, sampler_indices
from mobilenets.core.errors import MobilenetsError


def test_single_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = init_distributed("cpu")
    assert (context.rank, context.world_size, context.is_main, context.is_distributed) == (0, 1, True, False)
    assert context.reduce_sum(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]
    model = torch.nn.Linear(2, 2)
    assert context.wrap_model(model) is model


def test_sync_batchnorm_on_cpu_is_refused_with_the_reason():
    with pytest.raises(MobilenetsError, match="SyncBatchNorm for GPUs only"):
        init_distributed("cpu", sync_batchnorm=True)


@pytest.mark.parametrize(("num_samples", "world_size"), [(10, 2), (10, 3), (7, 4)])
def test_shards_are_disjoint_equal_and_drop_only_the_uneven_tail(num_samples, world_size):
    shards = [sampler_indices(num_samples, r, world_size, seed=7).tolist() for r in range(world_size)]
    seen = [i for shard in shards for i in shard]
    assert len(seen) == len(set(seen)) == num_samples // world_size * world_size
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank, or DDP would hang


def test_one_process_order_is_the_distributed_permutation():
    """So a 2-process run's k-th global batch is the k-th batch of a 1-process run with the same seed."""
    single = sampler_indices(12, 0, 1, seed=5).tolist()
    ranks = [sampler_indices(12, r, 2, seed=5).tolist() for r in range(2)]
    assert single == [ranks[r][i] for i in range(6) for r in range(2)]
    assert single == torch.randperm(12, generator=torch.Generator().manual_seed(5)).tolist()
