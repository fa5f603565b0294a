"""Data loaders: in-order batches for inference, and the per-epoch training loader whose sample order is a
function of (seed, epoch) only, so a resumed run sees the batches an uninterrupted one would have."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, DistributedSampler

from gain.runtime.device import Runtime
from gain.runtime.errors import StageError


def collate(batch: list[dict]) -> dict:
    """Stack tensors, turn bools and ints into tensors; keep anything else (ids, originals of different
    sizes) as lists."""
    out = {}
    for k in batch[0]:
        vals = [b[k] for b in batch]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], bool | int):
            out[k] = torch.tensor(vals)
        else:
            out[k] = vals
    return out


AUTO_WORKERS = -1  # runtime.workers: size the DataLoader from the cores (see loader_workers)
MAX_AUTO_WORKERS = 16


def loader_workers(requested: int, cuda: bool) -> int:
    """DataLoader worker processes: `requested` if >= 0; for AUTO_WORKERS, none on the CPU (the model's own
    threads use every core there) and, on CUDA, the cores this process may use, shared among the ranks of
    this machine, less one for the process itself (at most MAX_AUTO_WORKERS). Workers that keep their queue
    full sleep, so the SEC stage's CRF processes can share those cores."""
    if requested >= 0:
        return requested
    if not cuda:
        return 0
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cores // ranks - 1))


def eval_loader(dataset, batch_size: int, *, workers: int = AUTO_WORKERS) -> DataLoader:
    """In-order batches for inference (evaluation, seed extraction, prediction). The default sizes the
    workers from the cores once this process computes on CUDA (decoding would otherwise starve the GPU),
    with pinned memory; a CPU process loads in-line, as before."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=loader_workers(workers, cuda),
        pin_memory=cuda,
    )


def steps_per_epoch(n_items: int, batch_size: int, world_size: int) -> int:
    n = n_items // world_size
    if n < batch_size:
        raise StageError(f"batch_size {batch_size} exceeds the {n} training images per process")
    return n // batch_size


def epoch_loader(
    dataset,
    *,
    batch_size: int,
    epoch: int,
    skip_batches: int,
    seed: int,
    rt: Runtime,
    workers: int,
) -> DataLoader:
    """The loader of one epoch, its first `skip_batches` batches dropped by index (for resume)."""
    sampler = DistributedSampler(
        dataset, num_replicas=rt.world_size, rank=rt.rank, shuffle=True, seed=seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    indices = list(sampler)
    n_batches = len(indices) // batch_size
    indices = indices[skip_batches * batch_size : n_batches * batch_size]
    # A DataLoader iterator draws its base seed from the generator it is given, else from the global RNG;
    # a private one keeps the global stream (dropout) identical whether or not a run was resumed mid-epoch.
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(
        dataset,
        generator=generator,
        batch_size=batch_size,
        sampler=indices,
        drop_last=True,
        num_workers=loader_workers(workers, rt.device.type == "cuda"),
        collate_fn=collate,
        pin_memory=rt.device.type == "cuda",
        persistent_workers=False,
    )
