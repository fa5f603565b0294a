"""GAIN pretraining (the `gain` stage): S_cl + S_am (+ S_e for GAIN_ext) on the weak training split."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from gain.cam.evaluate import attention_figure, evaluate_classifier
from gain.cam.losses import gain_loss
from gain.cam.model import build_gain, gain_record
from gain.data.dataset import DatasetIndex, VOCDataset
from gain.data.heldout import training_ids
from gain.data.transforms import eval_preset, train_preset
from gain.evaluation.figures import close_figure, save_figure
from gain.runtime.device import Runtime
from gain.runtime.loaders import steps_per_epoch
from gain.runtime.loop import FitResult, Loop, Schedule, fit, sgd
from gain.runtime.naming import method_name
from gain.runtime.params import GainParams, RuntimeParams


def gain_step_losses(net, batch: dict, p: GainParams, rt: Runtime, *, mine: bool = True) -> dict:
    """One GAIN step's losses (Eq. 6, or Eq. 8 with `p.ext`): forward of both streams, L_cl, L_am, L_e.

    `mine=False` (warm-up) runs the classification stream alone: no attention, no masked images, and
    L_am = 0 with no weight. With alpha = 0 (Grad-CAM) the attention stream still runs, so L_am is
    measured the same way for both methods, and contributes nothing to the gradient.
    """
    x = rt.to_device(batch["image"])
    y = batch["label"].to(rt.device)
    out = net(x, y, mine=mine)
    ext = p.ext and mine
    return gain_loss(
        out,
        y,
        alpha=p.alpha if mine else 0.0,
        masks=batch["mask"].to(rt.device) if ext else None,
        has_mask=batch["has_mask"].to(rt.device) if ext else None,
        omega_e=p.omega_e,
    )


def train_gain(
    p: GainParams,
    index: DatasetIndex,
    rt: Runtime,
    tracker,
    *,
    seed: int,
    knobs: RuntimeParams,
    ckpt_dir: Path,
    fingerprint: str,
    outputs: Sequence[Path] = (),
    figure_dir: Path | None = None,
    extra_eval: Callable[[torch.nn.Module], dict] | None = None,
) -> tuple[FitResult, torch.nn.Module]:
    """Train GAIN; -> (FitResult, the GAIN module). Resume checkpoints go to ckpt_dir; the attention figure
    of the latest epoch to figure_dir/attention.png. `extra_eval(gain_module)` adds its metrics to every
    epoch's evaluation (the study's per-epoch diagnostics). `outputs`: the stage's files, checked writable
    with room on disk before the first step (see `fit`).

    `p.select`: "last" ships the last step (the paper); "heldout" carves `p.heldout_fraction` of the
    training ids out of training and ships the epoch with the best mAP on them (`heldout_map`: image
    labels only, all weak supervision has). The val metrics of every epoch are monitoring curves either way.
    """
    model = build_gain(p, index.num_classes - 1)
    pixel = set(index.splits.get("pixel", [])) if p.ext else set()
    train_ids, heldout_ids = training_ids(index.splits["weak_train"], p, seed, what="training ids")
    train_set = VOCDataset(index, train_ids, train_preset(p.input_size), seed=seed, with_masks=pixel)
    val_set = VOCDataset(index, index.splits["val"], eval_preset(p.input_size), seed=seed)
    heldout_set = VOCDataset(index, heldout_ids, eval_preset(p.input_size), seed=seed)
    per_epoch = steps_per_epoch(len(train_set), p.batch_size, rt.world_size)
    total, warmup_steps = p.epochs * per_epoch, p.warmup_epochs * per_epoch
    optimizer = sgd(model.classifier.param_groups(p.weight_decay), lr=p.lr, momentum=p.momentum)
    vis_idx = list(range(min(knobs.vis_images, len(val_set))))

    def eval_fn(step: int) -> dict:
        clf = model.classifier
        metrics = {**evaluate_classifier(clf, val_set, rt), "epoch": step // per_epoch}
        if heldout_ids:
            metrics["heldout_map"] = evaluate_classifier(clf, heldout_set, rt)["map"]
        if extra_eval is not None:
            metrics |= extra_eval(model)
        if vis_idx:
            fig = attention_figure(clf, val_set, vis_idx, rt, title=method_name(p.alpha, p.ext))
            tracker.log_figure(fig, f"attention/epoch_{step // per_epoch:03d}.png")
            if figure_dir is not None:
                save_figure(fig, figure_dir / "attention.png")
            else:
                close_figure(fig)
        return metrics

    loop = Loop(
        model=model,
        optimizer=optimizer,
        dataset=train_set,
        # Warm-up epochs are classification only (public GAIN code's schedule; the paper starts at once).
        step_fn=lambda net, batch, step: gain_step_losses(net, batch, p, rt, mine=step >= warmup_steps),
        lr_at=lambda step: 0.5 * p.lr * (1 + math.cos(math.pi * step / max(total, 1))),  # cosine decay
        eval_fn=eval_fn,
        meta={"params": asdict(p), "classes": list(index.classes), **gain_record(model)},
    )
    schedule = Schedule(
        total_steps=total,
        batch_size=p.batch_size,
        eval_every=per_epoch,
        ckpt_every=knobs.gain_ckpt_every,
        seed=seed,
        workers=knobs.workers,
        select="heldout_map" if heldout_ids else None,
        desc="gain",
    )
    result = fit(
        loop, schedule, rt=rt, tracker=tracker, ckpt_dir=ckpt_dir, fingerprint=fingerprint, outputs=outputs
    )
    return result, model
