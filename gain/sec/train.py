"""SEC training (the `sec` stage): seed, expand and constrain losses on the GAIN seeds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from gain.data.dataset import DatasetIndex, VOCDataset
from gain.data.heldout import training_ids
from gain.data.transforms import Compose, denormalize, eval_preset, train_preset
from gain.runtime.device import Runtime, unwrap
from gain.runtime.loop import FitResult, Loop, Schedule, fit, sgd
from gain.runtime.params import RuntimeParams, SecParams
from gain.sec.crf import CRFPool
from gain.sec.crf_exact import ExactCRF, training_crf
from gain.sec.evaluate import evaluate_segmenter
from gain.sec.losses import sec_loss
from gain.sec.model import LargeFOV, build_sec
from gain.sec.scale import gwrp_decays, resolve, train_crf_scale


def cell_pixels(
    n_in: int, n_out: int, *, align_corners: bool, device: torch.device | None = None
) -> torch.Tensor:
    """(n_out,) long on `device`: the input pixel under each output cell's centre, corner-aligned
    (i (n_in - 1) / (n_out - 1)) or half-pixel ((i + 0.5) n_in / n_out - 0.5), rounded to the nearest
    pixel."""
    i = torch.arange(n_out, dtype=torch.float64, device=device)
    if align_corners:
        pos = i * (n_in - 1) / max(n_out - 1, 1)
    else:
        pos = (i + 0.5) * n_in / n_out - 0.5
    return torch.floor(pos + 0.5).long().clamp(0, n_in - 1)


def downscale_cues(cues: torch.Tensor, size: tuple[int, int], *, align_corners: bool = True) -> torch.Tensor:
    """(B, H, W) long seed maps -> (B, h, w): each cell takes the cue under its centre (`cell_pixels`), so
    unlabeled (255) stays unlabeled and no cue moves by part of a cell."""
    rows = cell_pixels(cues.shape[-2], size[0], align_corners=align_corners, device=cues.device)
    cols = cell_pixels(cues.shape[-1], size[1], align_corners=align_corners, device=cues.device)
    return cues[:, rows][:, :, cols]


def downscale_images(x: torch.Tensor, size: tuple[int, int], *, align_corners: bool = True) -> np.ndarray:
    """(B, 3, H, W) normalised -> (B, h, w, 3) uint8 images for the CRF at output resolution, zoomed
    bilinearly; corner-aligned (the default) as SEC's CRF layer does (scipy's zoom, order 1)."""
    small = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=align_corners)
    return np.ascontiguousarray(np.stack([denormalize(s) for s in small.cpu()]))


def crf_targets(
    crf: CRFPool | ExactCRF, images: np.ndarray, logits: torch.Tensor, scale: float
) -> torch.Tensor:
    """Q (B, C, h, w) float32 on logits' device, no gradient: the dense CRF of (B, h, w, 3) uint8 images
    with the unfloored log-softmax of (B, C, h, w) logits as unary (SEC feeds the raw fc8 scores).
    ExactCRF computes on logits' device; a CRFPool (or anything with its `map`) on the CPU via numpy."""
    log_probs = torch.log_softmax(logits.detach().float(), dim=1)
    if isinstance(crf, ExactCRF):
        return crf.run(torch.from_numpy(images).to(logits.device), log_probs, scale)
    q = crf.map(images, log_probs.cpu().numpy().astype(np.float32), scale)
    return torch.from_numpy(q).to(logits.device)


def sec_step_losses(net, batch: dict, pool: CRFPool | ExactCRF, p: SecParams, rt: Runtime) -> dict:
    """One SEC step's losses over `p.losses`: forward; for "constrain", Q = CRF(image at output size,
    log-softmax of the output) from `pool` (`crf_targets`: no gradient through it, no floor on the unary);
    seeds at output resolution; then gain.sec.losses.sec_loss. Terms left out of `p.losses` are not
    computed (no CRF without the constrain term)."""
    logits = net(rt.to_device(batch["image"])).float()
    size = tuple(logits.shape[-2:])
    align = unwrap(net).align_corners  # how the network's output grid sits on its input
    crf = cues = labels = None
    if "constrain" in p.losses:
        scale = resolve(p.crf_scale, train_crf_scale, size)
        crf = crf_targets(pool, downscale_images(batch["image"], size, align_corners=align), logits, scale)
    if "seed" in p.losses:
        cues = downscale_cues(batch["mask"], size, align_corners=align).to(rt.device)
    if "expand" in p.losses:
        labels = batch["label"].to(rt.device)
    d_fg, d_bg = gwrp_decays(p.d_fg, p.d_bg, size)
    return sec_loss(logits, cues, labels, crf, terms=p.losses, d_fg=d_fg, d_bg=d_bg, min_prob=p.min_prob)


def train_transform(p: SecParams) -> Compose:
    """SEC's input (`augment: none`): every image resized to input_size, no mirror, no crop, so no labelled
    object is ever cropped away while the expansion loss still asks for it; `scale_crop_flip`: random
    scale 0.8-1.25, crop and horizontal flip."""
    return eval_preset(p.input_size) if p.augment == "none" else train_preset(p.input_size)


def train_sec(
    p: SecParams,
    index: DatasetIndex,
    rt: Runtime,
    tracker,
    *,
    seed: int,
    knobs: RuntimeParams,
    seeds_dir: Path,
    gain_model: Path | None,
    ckpt_dir: Path,
    fingerprint: str,
    outputs: Sequence[Path] = (),
) -> tuple[FitResult, LargeFOV]:
    """Train SEC on the seed maps in `seeds_dir`; -> (FitResult, the network with the shipped weights).
    `outputs`: the stage's files, checked writable with room on disk before the first step (see `fit`).

    `p.select`: "last" ships the last step (SEC); "heldout" carves `p.heldout_fraction` of the training ids
    that have masks (the seed-evaluation role) out of training and ships the evaluation step with the best
    mIoU on them (`heldout_miou`). The val mIoU of every evaluation is a monitoring curve either way.
    """
    model = build_sec(p, index.num_classes, gain_model)
    train_ids, heldout_ids = training_ids(
        index.splits["weak_train"], p, seed, eligible=index.splits["seed_eval"], what="ids with masks"
    )
    train_set = VOCDataset(index, train_ids, train_transform(p), seed=seed, mask_root=seeds_dir)
    val_set = VOCDataset(index, index.splits["val"], eval_preset(p.input_size), keep_original=True)
    heldout_set = VOCDataset(index, heldout_ids, eval_preset(p.input_size), keep_original=True)

    def eval_fn(step: int) -> dict:
        metrics = evaluate_segmenter(model, val_set, rt).summary()
        if heldout_ids:
            metrics["heldout_miou"] = evaluate_segmenter(model, heldout_set, rt).summary()["miou"]
        return metrics

    workers = knobs.crf_workers if "constrain" in p.losses else 0
    with training_crf(p.train_crf, rt.device, workers) as pool:
        loop = Loop(
            model=model,
            optimizer=sgd(model.param_groups(p.weight_decay), lr=p.lr, momentum=p.momentum),
            dataset=train_set,
            step_fn=lambda net, batch, step: sec_step_losses(net, batch, pool, p, rt),
            lr_at=lambda step: p.lr * (0.1 ** (step // p.lr_step)),  # SEC's step schedule
            eval_fn=eval_fn,
            meta={"params": asdict(p), "classes": list(index.classes), "trunk": model.trunk.spec.record()},
        )
        schedule = Schedule(
            total_steps=p.iterations,
            batch_size=p.batch_size,
            eval_every=p.eval_every,
            ckpt_every=knobs.sec_ckpt_every,
            seed=seed,
            workers=knobs.workers,
            select="heldout_miou" if heldout_ids else None,
            desc="sec",
        )
        result = fit(
            loop,
            schedule,
            rt=rt,
            tracker=tracker,
            ckpt_dir=ckpt_dir,
            fingerprint=fingerprint,
            outputs=outputs,
        )
    return result, model
