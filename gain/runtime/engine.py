"""The one training loop shared by GAIN and SEC: device and precision, DDP, seeding, resume, the NaN guard.

Resume is exact because (a) the sample order of an epoch is a function of (seed, epoch) only
(DistributedSampler), (b) augmentation draws from a per-sample generator seeded by (seed, epoch, index),
(c) the checkpoint carries model, optimizer, step and every RNG state, and (d) skipped batches of a partly
done epoch are dropped by index, without loading them.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from gain.runtime.checkpoint import CheckpointError, load_checkpoint, load_resumable, save_checkpoint
from gain.runtime.errors import StageError
from gain.runtime.io import atomic_path, write_json
from gain.runtime.params import STAGE_PARAMS, Params, params_hash, section_dict
from gain.runtime.preflight import check_training_outputs
from gain.runtime.tracking import NullRun, stage_run


class NonFiniteLoss(StageError):
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

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch on the device, channels_last where that is faster."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


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


@contextmanager
def training_stage(stage: str, params: Params) -> Iterator[tuple[Runtime, NullRun]]:
    """Device (DDP process group under torchrun), seeding and the stage's MLflow run (rank 0 only) of a
    training stage; the process group is left however the block ends. -> (runtime, tracker)."""
    rt = setup_runtime(params.device)
    seed_everything(params.seed, params.deterministic)
    try:
        with stage_run(stage, params, enabled=rt.is_main) as run:
            yield rt, run
    finally:
        teardown_runtime()


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


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


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


def sgd(param_groups: list[dict], *, lr: float, momentum: float) -> torch.optim.Optimizer:
    """SGD over a model's own parameter groups; each group keeps its `lr_mult` for `fit`'s schedule."""
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum)


def check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value.detach()).all():
            raise NonFiniteLoss(
                f"step {step}: loss '{name}' is {value.item()}; training stopped, the last "
                "good checkpoint is kept (lower the learning rate, or check the inputs of this step)"
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


def save_or_stop(step: int, path: Path, state: dict, **kw) -> None:
    """save_checkpoint, turning weights that are no longer finite into the training's NaN stop."""
    try:
        save_checkpoint(path, state, **kw)
    except CheckpointError as e:
        raise NonFiniteLoss(f"step {step}: the weights are no longer finite; {e}") from e


def steps_per_epoch(n_items: int, batch_size: int, world_size: int) -> int:
    n = n_items // world_size
    if n < batch_size:
        raise StageError(f"batch_size {batch_size} exceeds the {n} training images per process")
    return n // batch_size


@dataclass
class Loop:
    """What `fit` trains.

    step_fn(batch, step) returns named losses including "total" (fit does backward and the optimizer step);
    lr_at(step) is the base learning rate, scaled per parameter group by its `lr_mult`; eval_fn(step)
    returns metrics (validation curves, and the selection metric when Schedule.select names one); meta is
    plain data stored with every checkpoint and the model file (params, class names).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dataset: object
    step_fn: Callable[[dict, int], dict[str, torch.Tensor]]
    lr_at: Callable[[int], float]
    eval_fn: Callable[[int], dict] | None = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Schedule:
    """How long and how `fit` runs. `select`: None ships the last step's weights (the papers' way); a
    metric key ships the weights of the evaluation that maximised it (that metric must come from data that
    is not reported, e.g. held-out training ids)."""

    total_steps: int
    batch_size: int
    eval_every: int
    ckpt_every: int
    seed: int
    workers: int = 0
    select: str | None = None
    desc: str = "train"


@dataclass
class FitResult:
    step: int
    history: list[dict]
    chosen: dict  # {"step": s, **metrics of the shipped weights}
    model_state: dict  # the shipped weights
    resumed_from: int
    meta: dict  # Loop.meta


def resume(model, optimizer, last_path: Path, fingerprint: str, *, total: int, rt: Runtime) -> tuple:
    """Load the newest readable resume checkpoint written for `fingerprint` into model and optimizer (and
    the RNGs); print one line saying what happened. -> (step, history, chosen), (0, [], None) from scratch."""
    state, source, note = (None, None, "")
    if rt.is_main or not dist.is_initialized():
        state, source, note = load_resumable(last_path)
    lead = f"{note}; " if note else ""
    if state is not None and state.get("fingerprint") == fingerprint:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        if rt.is_main:
            print(f"{lead}resuming from {source} at step {state['step']}/{total}")
        return state["step"], state["history"], state["chosen"]
    if rt.is_main and (state is not None or note):
        why = f"{source}: written for other params, inputs or code; " if state is not None else ""
        print(f"{lead}{why}starting from scratch")
    return 0, [], None


def fit(
    loop: Loop,
    schedule: Schedule,
    *,
    rt: Runtime,
    tracker,
    ckpt_dir: Path,
    fingerprint: str,
    outputs: Sequence[Path] = (),
) -> FitResult:
    """Run (or resume) training to `schedule.total_steps`. Before the first step, the main process checks
    that `outputs` (the stage's files) and the checkpoints can be written and fit on disk (gain.runtime.
    preflight).

    `ckpt_dir/last.pt` (the resume point, its predecessor kept as last.pt.prev) is written every
    `ckpt_every` steps, after each evaluation and at the end, and resumed only if its `fingerprint` (params,
    inputs, code) matches; with `select`, `ckpt_dir/selected.pt` holds the best weights so far. The folder
    is scratch space, outside the stage's DVC outputs.
    """
    model, optimizer, s = loop.model, loop.optimizer, schedule
    ckpt_dir = Path(ckpt_dir)
    last_path, selected_path = ckpt_dir / "last.pt", ckpt_dir / "selected.pt"
    start, history, chosen = resume(model, optimizer, last_path, fingerprint, total=s.total_steps, rt=rt)
    resumed_from = start
    per_epoch = steps_per_epoch(len(loop.dataset), s.batch_size, rt.world_size)
    if rt.is_main:
        check_training_outputs(unwrap(model), outputs, ckpt_dir, selects=s.select is not None)

    def checkpoint(step: int) -> None:
        if rt.is_main:
            save_or_stop(
                step,
                last_path,
                {
                    "model": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "rng": rng_state(),
                    "history": history,
                    "chosen": chosen,
                    "fingerprint": fingerprint,
                    **loop.meta,
                },
                keep_previous=True,
            )
        if dist.is_initialized():
            dist.barrier()

    def evaluate(step: int) -> None:
        nonlocal chosen
        if loop.eval_fn is None:
            return
        rng = rng_state()  # evaluation must not shift the training RNG streams
        model.eval()
        metrics = loop.eval_fn(step)
        model.train()
        set_rng_state(rng)
        if not rt.is_main:
            return
        history.append({"step": step, **metrics})
        tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=step)
        if s.select is not None and (chosen is None or metrics[s.select] > chosen[s.select]):
            chosen = {"step": step, **metrics}
            save_or_stop(step, selected_path, {"model": unwrap(model).state_dict(), "step": step})

    step = start
    bar = tqdm(total=s.total_steps, initial=start, desc=s.desc, disable=not rt.is_main, dynamic_ncols=True)
    model.train()
    while step < s.total_steps:
        epoch, offset = divmod(step, per_epoch)
        loader = epoch_loader(
            loop.dataset,
            batch_size=s.batch_size,
            epoch=epoch,
            skip_batches=offset,
            seed=s.seed,
            rt=rt,
            workers=s.workers,
        )
        for batch in loader:
            lr = loop.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1)
            with rt.autocast():
                losses = loop.step_fn(batch, step)
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
            evaluated = step % s.eval_every == 0 or step == s.total_steps
            if evaluated:
                evaluate(step)
            if evaluated or step % s.ckpt_every == 0:
                checkpoint(step)
            if step >= s.total_steps:
                break
    bar.close()
    if dist.is_initialized():
        # DDP syncs gradients, not BatchNorm running statistics (each rank's last forward updated its own):
        # take rank 0's, which are the ones checkpointed, so every rank ends with the same model state.
        for buf in unwrap(model).buffers():
            dist.broadcast(buf, src=0)
    if resumed_from == s.total_steps:
        if rt.is_main:
            print(f"{last_path}: already trained to step {s.total_steps}")
        if loop.eval_fn is not None:  # regenerate the evaluation's side outputs (figures), history unchanged
            rng = rng_state()
            model.eval()
            loop.eval_fn(step)
            set_rng_state(rng)
    if s.select is None:
        chosen = {"step": step, **({k: v for k, v in history[-1].items() if k != "step"} if history else {})}
        model_state = unwrap(model).state_dict()
    else:
        model_state = load_checkpoint(selected_path)["model"]
    return FitResult(
        step=step,
        history=history,
        chosen=chosen,
        model_state=model_state,
        resumed_from=resumed_from,
        meta=loop.meta,
    )


def save_model(path: Path, result: FitResult) -> None:
    """The weights a training stage hands on (its DVC output) with its meta: identical weights give
    identical bytes."""
    save_checkpoint(path, {"model": result.model_state, "step": result.chosen["step"], **result.meta})


def stage_fingerprint(stage: str, params, inputs: list[str]) -> str:
    """What a resume checkpoint must match: the stage's DVC params, digests of its inputs and the code."""
    return params_hash(
        {
            **section_dict(params, STAGE_PARAMS[stage]),
            "inputs": inputs,
            "code": code_fingerprint("gain", "stages"),
        }
    )


def write_training_reports(
    result: FitResult, reports: Path, tracker, extra: dict | None = None, prefix: str = ""
) -> dict:
    """The DVC reports of a training stage, also logged to MLflow: history.csv (validation curves: step,
    epoch where the stage has one, metrics), train_loss.csv (step, every `train/*` value the loop logged:
    losses and lr, for all steps also across a resume) and metrics.json (the shipped step's evaluation,
    keys prefixed with `prefix`, and `extra`). Returns the metrics dict. The caller logs the folder as an
    artifact once the files are in place (inside `outputs_together` they are not yet)."""
    reports = Path(reports)
    with atomic_path(reports / "history.csv") as tmp:
        pd.DataFrame(result.history).to_csv(tmp, index=False)
    with atomic_path(reports / "train_loss.csv") as tmp:
        pd.DataFrame(tracker.train_log(result.step)).to_csv(tmp, index=False)
    chosen = {f"{prefix}{k}": v for k, v in result.chosen.items() if k not in ("step", "epoch")}
    final = {**chosen, **(extra or {})}
    write_json(reports / "metrics.json", final)
    tracker.log_metrics({k: v for k, v in final.items() if isinstance(v, int | float)})
    return final


def code_fingerprint(*folders: str) -> str:
    """Hash of the Python sources under `folders`: a checkpoint from other code is not resumed."""
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.py")):
            h.update(str(path).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
