"""Batching for data held in memory: shuffle the index once per epoch, gather once,
then hand out contiguous slices (views, no copies). Under DDP each rank keeps its own
shard of the permutation, so the same code runs on one process or many.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch

from danlu.data.tabular import TensorData

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]
# a split larger than this is gathered batch by batch instead of once per epoch
GATHER_ONCE_BYTES = 256 * 2**20


class BatchSource(Protocol):
    """What the trainer iterates: batches per epoch, and one epoch's batches from batch
    `start` on, in an order fixed by (seed, epoch) so a resumed run continues exactly."""

    def __len__(self) -> int: ...
    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]: ...


def epoch_order(
    n: int, rows: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> tuple[torch.Tensor, torch.Generator | None]:
    """This rank's rows of one epoch: a permutation seeded by (seed, epoch), or file order
    when not shuffling; every rank takes `rows` of them (rank::world) so DDP steps stay in
    lockstep. The generator comes back for sources that shuffle further (length buckets)."""
    generator = None
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    return order[rank : rows * world : world], generator


def length_buckets(
    order: torch.Tensor, lengths: torch.Tensor, batch_size: int, generator: torch.Generator, bucket: int = 50
) -> list[torch.Tensor]:
    """Batches of rows of similar length: `order` sorted by `lengths` (per row of the split)
    within windows of `bucket` batches, then the batches shuffled, so padding is small
    while every epoch still differs."""
    out: list[torch.Tensor] = []
    for window in order.split(batch_size * bucket):
        out.extend(window[torch.argsort(lengths[window], descending=True, stable=True)].split(batch_size))
    return [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]


def batches(
    data: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
) -> BatchSource:
    """A split -> its batches. In-memory splits (TensorData) are sliced as tensors; any
    other split (images or audio decoded from disk, length-bucketed sequences) brings its
    own `batches(...)` with the same arguments, typically backed by a DataLoader."""
    if isinstance(data, TensorData):
        return TensorBatches(
            data, batch_size, shuffle=shuffle, seed=seed, rank=rank, world=world, device=device
        )
    return data.batches(batch_size, shuffle=shuffle, seed=seed, rank=rank, world=world, device=device)


class TensorBatches:
    def __init__(
        self,
        data: TensorData,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.inputs = {k: v.to(device) for k, v in data.inputs.items()}
        self.y = data.y.to(device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world = rank, world
        # every rank takes the same number of rows so DDP steps stay in lockstep
        self.rows = len(data) // world
        if self.rows == 0:
            raise ValueError(f"{len(data)} rows cannot be shared by {world} processes")

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches of one epoch from batch `start` on; the order depends only on
        (seed, epoch), which is what makes resuming mid-epoch exact."""
        order, _ = epoch_order(
            len(self.y), self.rows, shuffle=self.shuffle, seed=self.seed, epoch=epoch, rank=self.rank,
            world=self.world,
        )
        order = order.to(self.y.device)
        bs = self.batch_size
        if self._bytes() > GATHER_ONCE_BYTES:
            # e.g. every offset of a text as a window (views of one tensor): gathering the
            # whole epoch would copy the text block_size times over; gather each batch
            for i in range(start, len(self)):
                rows = order[i * bs : (i + 1) * bs]
                yield {k: v[rows] for k, v in self.inputs.items()}, self.y[rows]
            return
        inputs = {k: v[order] for k, v in self.inputs.items()}
        y = self.y[order]
        for i in range(start, len(self)):
            s = slice(i * bs, (i + 1) * bs)
            yield {k: v[s] for k, v in inputs.items()}, y[s]

    def _bytes(self) -> int:
        tensors = [*self.inputs.values(), self.y]
        return sum(t.element_size() * t.numel() for t in tensors)
