"""The one training-loop skeleton shared by GAIN pretraining and SEC: device and precision, DDP,
deterministic seeding, atomic self-describing checkpoints, bit-exact resume and the NaN guard.

Resume is exact because (a) the sample order of an epoch is a function of (seed, epoch) only
(DistributedSampler), (b) augmentation draws from a per-sample generator seeded by (seed, epoch, index),
(c) the checkpoint carries model, optimizer, scheduler, step and every RNG state, and (d) skipped batches of
a partly done epoch are dropped by index, without loading them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from gain.data import collate
from gain.io import atomic_path


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or inf; the last good checkpoint is kept."""


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


def setup_runtime(device: str) -> Runtime:
    """`device`: auto | cpu | cuda. Under torchrun (WORLD_SIZE > 1) joins the process group (nccl on
    CUDA, gloo on CPU). CPU stays fp32; CUDA gets bf16 autocast and channels_last."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda requested but torch.cuda.is_available() is False")
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


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint dict atomically (temp file + rename): a crash never leaves a torn file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint of plain data (weights_only=True); errors name the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: unreadable checkpoint ({e})") from e


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value.detach()).all():
            raise NonFiniteLoss(
                f"step {step}: loss '{name}' is {value.item()}; training stopped, the last "
                "good checkpoint is kept"
            )


def epoch_loader(
    dataset,
    *,
    batch_size: int,
    epoch: int,
    skip_batches: int,
    seed: int,
    rt: Runtime,
    workers: int,
    shuffle: bool = True,
) -> DataLoader:
    """The loader of one epoch, its first `skip_batches` batches dropped by index (for resume)."""
    sampler = DistributedSampler(
        dataset, num_replicas=rt.world_size, rank=rt.rank, shuffle=shuffle, seed=seed, drop_last=True
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
        num_workers=workers,
        collate_fn=collate,
        pin_memory=rt.device.type == "cuda",
    )


def steps_per_epoch(dataset, batch_size: int, world_size: int) -> int:
    n = len(dataset) // world_size
    if n < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training images per process")
    return n // batch_size


@dataclass
class FitResult:
    step: int
    history: list[dict]
    best: dict | None
    resumed_from: int


def fit(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    dataset,
    batch_size: int,
    total_steps: int,
    seed: int,
    rt: Runtime,
    workers: int,
    step_fn: Callable[[dict, int], dict[str, torch.Tensor]],
    eval_fn: Callable[[int], dict] | None,
    eval_every: int,
    ckpt_dir: Path,
    ckpt_every: int,
    fingerprint: str,
    tracker,
    best_key: str,
    extra_state: Callable[[], dict] | None = None,
    desc: str = "train",
) -> FitResult:
    """Run (or resume) training to `total_steps`.

    step_fn(batch, step) returns named losses including "total" (the loop does backward and the optimizer
    step). eval_fn(step) returns metrics; it runs every `eval_every` steps and at the end, and the best
    value of `best_key` selects `best.pt`. `last.pt` is written every `ckpt_every` steps, after each eval
    and at the end; it is resumed only if its `fingerprint` (params + data hash) matches.
    lr_at(step) gives the base learning rate; each param group scales it by its `lr_mult`.
    """
    ckpt_dir = Path(ckpt_dir)
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    start, history, best = 0, [], None
    if last_path.is_file():
        state = load_checkpoint(last_path)
        if state.get("fingerprint") == fingerprint:
            unwrap(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            start, history, best = state["step"], state["history"], state["best"]
            if rt.is_main:
                print(f"resuming from {last_path} at step {start}/{total_steps}")
        elif rt.is_main:
            print(f"{last_path}: written for other params or data; starting from scratch")
    resumed_from = start
    per_epoch = steps_per_epoch(dataset, batch_size, rt.world_size)

    def checkpoint(step: int) -> None:
        if rt.is_main:
            state = {
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "rng": rng_state(),
                "history": history,
                "best": best,
                "fingerprint": fingerprint,
            }
            if extra_state:
                state.update(extra_state())
            save_checkpoint(last_path, state)
        if dist.is_initialized():
            dist.barrier()

    def evaluate(step: int) -> None:
        nonlocal best
        if eval_fn is None:
            return
        state = rng_state()  # evaluation must not shift the training RNG streams
        metrics = eval_fn(step)
        set_rng_state(state)
        if rt.is_main:
            history.append({"step": step, **metrics})
            tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=step)
            if best is None or metrics[best_key] > best[best_key]:
                best = {"step": step, **metrics}
                state = {
                    "model": unwrap(model).state_dict(),
                    "step": step,
                    "metrics": metrics,
                    "fingerprint": fingerprint,
                }
                if extra_state:
                    state.update(extra_state())
                save_checkpoint(best_path, state)

    step = start
    bar = tqdm(total=total_steps, initial=start, desc=desc, disable=not rt.is_main, dynamic_ncols=True)
    model.train()
    while step < total_steps:
        epoch, offset = divmod(step, per_epoch)
        loader = epoch_loader(
            dataset,
            batch_size=batch_size,
            epoch=epoch,
            skip_batches=offset,
            seed=seed,
            rt=rt,
            workers=workers,
        )
        for batch in loader:
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1)
            with rt.autocast():
                losses = step_fn(batch, step)
            check_finite(losses, step)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
            if rt.is_main:
                tracker.log_metrics(
                    {**{f"train/loss_{k}": v.item() for k, v in losses.items()}, "train/lr": lr}, step=step
                )
            evaluated = step % eval_every == 0 or step == total_steps
            if evaluated:
                model.eval()
                evaluate(step)
                model.train()
            if evaluated or step % ckpt_every == 0:
                checkpoint(step)
            if step >= total_steps:
                break
    bar.close()
    if dist.is_initialized():
        # DDP syncs gradients, not BatchNorm running statistics (each rank's last forward updated its own):
        # take rank 0's, which are the ones checkpointed, so every rank ends with the same model state.
        for buf in unwrap(model).buffers():
            dist.broadcast(buf, src=0)
    if resumed_from == total_steps:
        if rt.is_main:
            print(f"{last_path}: already trained to step {total_steps}")
        if eval_fn is not None:  # regenerate the evaluation's side outputs (figures), history unchanged
            model.eval()
            state = rng_state()
            eval_fn(step)
            set_rng_state(state)
    return FitResult(step=step, history=history, best=best, resumed_from=resumed_from)


def write_training_reports(result: FitResult, reports: Path, tracker) -> dict:
    """history.csv (DVC plots) and metrics.json (best and last eval, resume point) of a finished run, also
    logged to MLflow. Returns the metrics dict."""
    import pandas as pd

    from gain.io import write_json

    with atomic_path(Path(reports) / "history.csv") as tmp:
        pd.DataFrame(result.history).to_csv(tmp, index=False)
    final = {f"best_{k}": v for k, v in result.best.items()} | {
        f"last_{k}": v for k, v in result.history[-1].items()
    }
    final["resumed_from_step"] = result.resumed_from
    write_json(Path(reports) / "metrics.json", final)
    tracker.log_metrics({k: v for k, v in final.items() if isinstance(v, int | float)})
    tracker.log_artifact(reports)
    return final


def code_fingerprint(*folders: str) -> str:
    """Hash of the Python sources under `folders`: a checkpoint from other code is not resumed."""
    import hashlib

    h = hashlib.sha256()
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.py")):
            h.update(str(path).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
