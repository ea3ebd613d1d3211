"""Training and evaluation of the demo's networks, with a tqdm progress bar."""

from __future__ import annotations

import time

import numpy
import torch
from torch import nn

from cudeform._demo.shapes import make_shapes


def train(net, steps, batch_size, learning_rate, seed, device, label):
    """Train ``net`` for ``steps`` Adam steps on fresh batches; returns seconds spent.

    The batches depend only on ``seed``, so two networks trained with one seed see
    the same images in the same order.
    """
    from tqdm import tqdm

    rng = numpy.random.default_rng(seed)
    net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps)
    start = time.perf_counter()
    with tqdm(range(steps), desc=label, unit="step", leave=True) as progress:
        for _ in progress:
            batch = make_shapes(batch_size, rng)
            images = torch.from_numpy(batch.images).to(device)
            labels = torch.from_numpy(batch.labels).to(device)
            loss = nn.functional.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return time.perf_counter() - start


@torch.no_grad()
def predict(net, images, device, batch_size=250):
    """Class predictions for ``images (n, 1, H, W)`` as a NumPy array."""
    net.to(device).eval()
    chunks = [net(torch.from_numpy(images[i:i + batch_size]).to(device)).argmax(dim=1).cpu()
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).numpy()
