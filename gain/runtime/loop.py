"""The one training loop shared by GAIN and SEC: the step, the schedule, evaluation, the NaN guard, resume.

`fit` takes the bare model: it places it on the device (channels_last where faster), wraps it for DDP under
torchrun, trains, and loads the shipped weights back into it. Resume is exact because (a) the sample order
of an epoch is a function of (seed, epoch) only (gain.runtime.loaders.epoch_loader), (b) augmentation draws
from a per-sample generator seeded by (seed, epoch, index), (c) the checkpoint carries model, optimizer,
step and every RNG state, and (d) skipped batches of a partly done epoch are dropped by index, without
loading them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from gain.runtime.checkpoint import CheckpointError, load_checkpoint, load_resumable, save_checkpoint
from gain.runtime.device import Runtime, rng_state, set_rng_state
from gain.runtime.errors import StageError
from gain.runtime.loaders import epoch_loader, steps_per_epoch
from gain.runtime.preflight import check_training_outputs


class NonFiniteLoss(StageError):
    """A loss became NaN or inf; the last good checkpoint is kept."""


def sgd(param_groups: list[dict], *, lr: float, momentum: float) -> torch.optim.Optimizer:
    """SGD over a model's own parameter groups; each group keeps its `lr_mult` for `fit`'s schedule."""
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """fit's update: clear the gradients, backward from `loss`, one optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value.detach()).all():
            raise NonFiniteLoss(
                f"step {step}: loss '{name}' is {value.item()}; training stopped, the last "
                "good checkpoint is kept (lower the learning rate, or check the inputs of this step)"
            )


def save_or_stop(step: int, path: Path, state: dict, **kw) -> None:
    """save_checkpoint, turning weights that are no longer finite into the training's NaN stop."""
    try:
        save_checkpoint(path, state, **kw)
    except CheckpointError as e:
        raise NonFiniteLoss(f"step {step}: the weights are no longer finite; {e}") from e


@dataclass
class Loop:
    """What `fit` trains.

    model: the bare model (fit places and wraps it); step_fn(net, batch, step) returns named losses
    including "total" from `net`, the model as trained (DDP-wrapped under torchrun); fit does backward and
    the optimizer step. lr_at(step) is the base learning rate, scaled per parameter group by its `lr_mult`;
    eval_fn(step), called in the main process with the model in eval mode, returns metrics (validation
    curves, and the selection metric when Schedule.select names one); meta is plain data stored with every
    checkpoint and the model file (params, class names).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dataset: object
    step_fn: Callable[[torch.nn.Module, dict, int], dict[str, torch.Tensor]]
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
    state, source, note = load_resumable(last_path)  # every rank: each must resume at the same step
    lead = f"{note}; " if note else ""
    if state is not None and state.get("fingerprint") == fingerprint:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        if rt.is_main:
            print(f"{lead}resuming from {source} at step {state['step']}/{total}")
        return state["step"], state["history"], state["chosen"]
    if rt.is_main and (state is not None or note):
        why = f"{source}: written for other params, inputs or code; " if state is not None else ""
        print(f"{lead}{why}starting from scratch")
    return 0, [], None


class _Run:
    """One `fit` call's state: the model and its trained wrapper, history, the chosen evaluation, and how
    each step, evaluation and checkpoint is done."""

    def __init__(self, loop: Loop, s: Schedule, *, rt: Runtime, tracker, ckpt_dir: Path, fingerprint: str):
        self.loop, self.s, self.rt, self.tracker, self.fingerprint = loop, s, rt, tracker, fingerprint
        self.model = rt.place(loop.model)
        self.net = DistributedDataParallel(self.model) if rt.world_size > 1 else self.model
        self.last_path, self.selected_path = Path(ckpt_dir) / "last.pt", Path(ckpt_dir) / "selected.pt"
        self.start, self.history, self.chosen = resume(
            self.model, loop.optimizer, self.last_path, fingerprint, total=s.total_steps, rt=rt
        )

    def checkpoint(self, step: int) -> None:
        if self.rt.is_main:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.loop.optimizer.state_dict(),
                "step": step,
                "rng": rng_state(),
                "history": self.history,
                "chosen": self.chosen,
                "fingerprint": self.fingerprint,
                **self.loop.meta,
            }
            save_or_stop(step, self.last_path, state, keep_previous=True)
        if dist.is_initialized():
            dist.barrier()

    def run_eval(self, step: int) -> dict:
        """eval_fn in eval mode; it must not shift the training RNG streams."""
        rng = rng_state()
        self.net.eval()
        metrics = self.loop.eval_fn(step)
        self.net.train()
        set_rng_state(rng)
        return metrics

    def evaluate(self, step: int) -> None:
        if self.loop.eval_fn is None or not self.rt.is_main:
            return
        metrics = self.run_eval(step)
        self.history.append({"step": step, **metrics})
        self.tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=step)
        select = self.s.select
        if select is not None and (self.chosen is None or metrics[select] > self.chosen[select]):
            self.chosen = {"step": step, **metrics}
            save_or_stop(step, self.selected_path, {"model": self.model.state_dict(), "step": step})

    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        lr = self.loop.lr_at(step)
        for group in self.loop.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1)
        with self.rt.autocast():
            losses = self.loop.step_fn(self.net, batch, step)
        check_finite(losses, step)
        optimizer_step(losses["total"], self.loop.optimizer)
        if self.rt.is_main:
            logged = {**{f"train/loss_{k}": v.item() for k, v in losses.items()}, "train/lr": lr}
            self.tracker.log_metrics(logged, step=step + 1)
        return losses

    def epoch(self, step: int, per_epoch: int, bar) -> int:
        """Train from `step` to the end of its epoch (or the last step); -> the step reached."""
        s = self.s
        epoch, offset = divmod(step, per_epoch)
        loader = epoch_loader(
            self.loop.dataset,
            batch_size=s.batch_size,
            epoch=epoch,
            skip_batches=offset,
            seed=s.seed,
            rt=self.rt,
            workers=s.workers,
        )
        for batch in loader:
            losses = self.train_step(batch, step)
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
            evaluated = step % s.eval_every == 0 or step == s.total_steps
            if evaluated:
                self.evaluate(step)
            if evaluated or step % s.ckpt_every == 0:
                self.checkpoint(step)
            if step >= s.total_steps:
                break
        return step

    def finish(self, step: int) -> FitResult:
        """Sync the ranks' buffers, redo a finished run's evaluation side outputs, pick the shipped weights
        and load them into the model."""
        if dist.is_initialized():
            # DDP syncs gradients, not BatchNorm running statistics (each rank's last forward updated its
            # own): take rank 0's, which are the ones checkpointed, so every rank ends with the same state.
            for buf in self.model.buffers():
                dist.broadcast(buf, src=0)
        if self.start == self.s.total_steps:
            if self.rt.is_main:
                print(f"{self.last_path}: already trained to step {self.s.total_steps}")
                if self.loop.eval_fn is not None:  # regenerate the evaluation's side outputs (figures)
                    self.run_eval(step)
        if self.s.select is None:
            last = {k: v for k, v in self.history[-1].items() if k != "step"} if self.history else {}
            self.chosen, model_state = {"step": step, **last}, self.model.state_dict()
        else:
            model_state = load_checkpoint(self.selected_path)["model"]
        self.model.load_state_dict(model_state)
        return FitResult(step, self.history, self.chosen, model_state, self.start, self.loop.meta)


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
    """Run (or resume) training to `schedule.total_steps`; loop.model ends holding the shipped weights.
    Before the first step, the main process checks that `outputs` (the stage's files) and the checkpoints
    can be written and fit on disk (gain.runtime.preflight).

    `ckpt_dir/last.pt` (the resume point, its predecessor kept as last.pt.prev) is written every
    `ckpt_every` steps, after each evaluation and at the end, and resumed only if its `fingerprint` (params,
    inputs, code) matches; with `select`, `ckpt_dir/selected.pt` holds the best weights so far. The folder
    is scratch space, outside the stage's DVC outputs.
    """
    run = _Run(loop, schedule, rt=rt, tracker=tracker, ckpt_dir=ckpt_dir, fingerprint=fingerprint)
    per_epoch = steps_per_epoch(len(loop.dataset), schedule.batch_size, rt.world_size)
    if rt.is_main:
        check_training_outputs(run.model, outputs, ckpt_dir, selects=schedule.select is not None)
    step = run.start
    bar = tqdm(
        total=schedule.total_steps,
        initial=step,
        desc=schedule.desc,
        disable=not rt.is_main,
        dynamic_ncols=True,
    )
    run.net.train()
    while step < schedule.total_steps:
        step = run.epoch(step, per_epoch, bar)
    bar.close()
    return run.finish(step)
