"""Where and how a process computes: device, bf16 autocast, channels_last, the DDP process group, seeding
and every RNG state as plain data (for exact resume)."""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from gain.runtime.errors import StageError


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass(frozen=True)
class Runtime:
    """Where and how to compute: device, bf16 autocast and channels_last on CUDA, DDP rank/world."""

    device: torch.device
    amp: bool
    channels_last: bool
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch on the device, channels_last where that is faster."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` moved (in place: its parameters stay the same objects) to the device, channels_last
        where that is faster."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False)


def setup_runtime(device: str) -> Runtime:
    """`device`: auto | cpu | cuda. Under torchrun (WORLD_SIZE > 1) joins the process group (nccl on
    CUDA, gloo on CPU). CPU stays fp32; CUDA gets bf16 autocast and channels_last."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise StageError("device: cuda requested but torch.cuda.is_available() is False")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(
        device=dev, amp=use_cuda, channels_last=use_cuda, rank=rank, world_size=world, local_rank=local_rank
    )


def teardown_runtime() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict:
    """Every RNG state as plain data (tensors, ints, strings), so checkpoints load with weights_only=True."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
