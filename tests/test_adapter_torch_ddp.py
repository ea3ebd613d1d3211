"""Data-parallel training: ``DeformConv2dPack`` under ``DistributedDataParallel`` with
the gloo backend, two processes on the CPU over loopback. After a few steps on
different shards, every replica holds the same gradients and the same weights.

Skipped without PyTorch or its distributed package.
"""

from __future__ import annotations

import datetime
import gc
import os
import socket

import numpy
import pytest

torch = pytest.importorskip("torch")
distributed = pytest.importorskip("torch.distributed")
if not distributed.is_available() or not distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

WORLD_SIZE = 2
STEPS = 4
TIMEOUT = datetime.timedelta(seconds=30)


def free_loopback_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def flat_gradients(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def flat_parameters(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def train(rank, port, results):
    """One replica: the same seeded model, its own shard of the data."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      GLOO_SOCKET_IFNAME="lo", CUDEFORM_NUM_THREADS="1")
    torch.set_num_threads(1)
    distributed.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE,
                                   timeout=TIMEOUT)
    try:
        summary = train_replica(rank)
        if rank == 0:
            results.put(summary)
    finally:
        # Collect the DDP objects (which hold the gloo group) before tearing it down.
        # Without this, about one run in ten aborted at interpreter shutdown with
        # "terminate called without an active exception", with or without cudeform.
        gc.collect()
        distributed.destroy_process_group()


def train_replica(rank):
    """``STEPS`` of SGD under DDP, then every rank's gradients and weights (all_gather),
    as NumPy arrays: torch tensors would travel as file descriptors of this process."""
    from cudeform.adapters.torch_layers import DeformConv2dPack

    torch.manual_seed(0)  # identical replicas (DDP also broadcasts rank 0's weights)
    model = nn.Sequential(DeformConv2dPack(3, 6, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(6, 2, 1))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(100 + rank)  # a different shard per rank
    losses = []
    for _ in range(STEPS):
        x = torch.randn(2, 3, 8, 8, generator=generator)
        target = torch.randn(2, 2, 8, 8, generator=generator)
        loss = nn.functional.mse_loss(ddp(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    local = [flat_gradients(model), flat_parameters(model)]
    gathered = [[torch.empty_like(t) for _ in range(WORLD_SIZE)] for t in local]
    for tensor, slots in zip(local, gathered):
        distributed.all_gather(slots, tensor)
    return dict(gradients=[t.numpy() for t in gathered[0]],
                parameters=[t.numpy() for t in gathered[1]],
                offset_moved=bool(model[0].conv_offset.weight.abs().max() > 0),
                losses=losses)


def test_ddp_replicas_agree():
    context = torch.multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    torch.multiprocessing.start_processes(train, args=(free_loopback_port(), results),
                                          nprocs=WORLD_SIZE, join=True,
                                          start_method="spawn")
    result = results.get()
    gradients, parameters = result["gradients"], result["parameters"]
    # all_reduce averages in the same order on every rank: the replicas agree bit for bit
    numpy.testing.assert_array_equal(gradients[0], gradients[1])
    numpy.testing.assert_array_equal(parameters[0], parameters[1])
    assert numpy.abs(gradients[0]).max() > 0
    assert result["offset_moved"]  # the offset convolution trains under DDP too
    assert numpy.isfinite(result["losses"]).all()
