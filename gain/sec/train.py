"""SEC training (the `sec` stage): seed, expand and constrain losses on the GAIN seeds."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from gain.data.dataset import DatasetIndex, VOCDataset
from gain.data.transforms import denormalize, eval_preset, train_preset
from gain.runtime.engine import FitResult, Loop, Runtime, Schedule, fit, sgd, unwrap
from gain.runtime.params import RuntimeParams, SecParams
from gain.sec.crf import CRFPool
from gain.sec.evaluate import evaluate_segmenter
from gain.sec.losses import sec_loss, sec_probs
from gain.sec.model import LargeFOV, build_sec


def downscale_cues(cues: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) long seed maps -> (B, h, w) by nearest neighbour, so unlabeled (255) stays unlabeled."""
    return F.interpolate(cues[:, None].float(), size=size, mode="nearest")[:, 0].long()


def downscale_images(x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(B, 3, H, W) normalised -> (B, h, w, 3) uint8 images for the CRF at output resolution."""
    small = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return np.ascontiguousarray(np.stack([denormalize(s) for s in small.cpu()]))


def sec_step_losses(net, batch: dict, pool: CRFPool, p: SecParams, rt: Runtime) -> dict:
    """One SEC step's losses: forward, Q = CRF(image at output size, f) in the worker pool (no gradient
    through it), seeds at output resolution, then seed/expand/constrain (gain.sec.losses.sec_loss)."""
    logits = net(rt.to_device(batch["image"])).float()
    size = tuple(logits.shape[-2:])
    probs = sec_probs(logits.detach(), p.min_prob).cpu().numpy().astype(np.float32)
    crf = pool.map(downscale_images(batch["image"], size), probs, p.crf_scale)
    cues = downscale_cues(batch["mask"], size).to(rt.device)
    labels = batch["label"].to(rt.device)
    crf = torch.from_numpy(crf).to(rt.device)
    return sec_loss(logits, cues, labels, crf, d_fg=p.d_fg, d_bg=p.d_bg, min_prob=p.min_prob)


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
) -> tuple[FitResult, LargeFOV]:
    """Train SEC on the seed maps in `seeds_dir`; -> (FitResult, the network with the shipped weights)."""
    model = build_sec(p, index.num_classes, gain_model).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_set = VOCDataset(
        index, index.splits["weak_train"], train_preset(p.input_size), seed=seed, mask_root=seeds_dir
    )
    val_set = VOCDataset(index, index.splits["val"], eval_preset(p.input_size), keep_original=True)
    net = DistributedDataParallel(model) if rt.world_size > 1 else model
    with CRFPool(knobs.crf_workers) as pool:
        loop = Loop(
            model=net,
            optimizer=sgd(model.param_groups(p.weight_decay), lr=p.lr, momentum=p.momentum),
            dataset=train_set,
            step_fn=lambda batch, step: sec_step_losses(net, batch, pool, p, rt),
            lr_at=lambda step: p.lr * (0.1 ** (step // p.lr_step)),  # SEC's step schedule
            eval_fn=lambda step: (
                evaluate_segmenter(unwrap(model), val_set, rt).summary() if rt.is_main else {}
            ),
            meta={"params": asdict(p), "classes": list(index.classes)},
        )
        schedule = Schedule(
            total_steps=p.iterations,
            batch_size=p.batch_size,
            eval_every=p.eval_every,
            ckpt_every=knobs.sec_ckpt_every,
            seed=seed,
            workers=knobs.workers,
            desc="sec",
        )
        result = fit(loop, schedule, rt=rt, tracker=tracker, ckpt_dir=ckpt_dir, fingerprint=fingerprint)
    unwrap(model).load_state_dict(result.model_state)
    return result, unwrap(model)
