"""SEC training on GAIN seeds, and segmentation prediction at original image resolution."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from gain.crf import CRFPool
from gain.data import DatasetIndex, VOCDataset, collate
from gain.engine import Runtime, fit, load_checkpoint, unwrap
from gain.metrics import ConfusionMatrix
from gain.models import LargeFOV
from gain.params import SecParams
from gain.sec_losses import sec_loss, sec_probs
from gain.transforms import denormalize, eval_preset, train_preset


def build_sec(p: SecParams, num_classes: int, gain_ckpt: Path | None) -> LargeFOV:
    """LargeFOV on the configured backbone; init: gain (the GAIN classifier's trunk), imagenet or none."""
    model = LargeFOV(p.backbone, num_classes, weights="imagenet" if p.init == "imagenet" else "none")
    if p.init == "gain":
        if gain_ckpt is None or not gain_ckpt.is_file():
            raise FileNotFoundError(f"{gain_ckpt}: sec.init is 'gain' but the GAIN checkpoint is missing")
        state = load_checkpoint(gain_ckpt)
        if state["params"]["backbone"] != p.backbone:
            raise ValueError(
                f"sec.init: gain needs sec.backbone == gain.backbone, got {p.backbone!r} and "
                f"{state['params']['backbone']!r}"
            )
        prefix = "classifier.trunk."
        model.trunk.load_state_dict(
            {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
        )
    return model


def downscale_cues(cues: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) long seed maps -> (B, h, w) by nearest neighbour, so unlabeled (255) stays unlabeled."""
    return F.interpolate(cues[:, None].float(), size=size, mode="nearest")[:, 0].long()


def downscale_images(x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(B, 3, H, W) normalised -> (B, h, w, 3) uint8 images for the CRF at output resolution."""
    small = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return np.ascontiguousarray(np.stack([denormalize(s) for s in small.cpu()]))


@torch.no_grad()
def predict(model, dataset: VOCDataset, rt: Runtime, *, batch_size: int = 8):
    """Yield (item, probs (C, H, W) float32 at the image's original resolution): probabilities upsampled,
    argmax left to the caller. dataset: a VOCDataset with keep_original=True."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in loader:
        x = batch["image"].to(rt.device)
        with rt.autocast():
            logits = model(x).float()
        for b in range(x.shape[0]):
            h, w = batch["orig_mask"][b].shape
            up = F.interpolate(logits[b : b + 1], size=(h, w), mode="bilinear", align_corners=False)
            yield {k: v[b] for k, v in batch.items()}, torch.softmax(up[0], dim=0).cpu().numpy()


def segmentation_miou(model, dataset: VOCDataset, rt: Runtime) -> dict:
    cm = ConfusionMatrix(dataset.index.num_classes)
    for item, probs in predict(model, dataset, rt):
        cm.update(item["orig_mask"], probs.argmax(0).astype(np.uint8))
    res = cm.compute()
    return {"miou": res["miou"], "pixel_accuracy": res["pixel_accuracy"]}


def sec_step_losses(net, batch: dict, pool: CRFPool, p: SecParams, rt: Runtime) -> dict:
    """One SEC step's losses: forward, Q = CRF(image at output size, f) in the worker pool (no gradient
    through it), seeds at output resolution, then seed/expand/constrain (gain.sec_losses.sec_loss)."""
    x = batch["image"].to(rt.device, non_blocking=True)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    logits = net(x).float()
    size = tuple(logits.shape[-2:])
    probs = sec_probs(logits.detach(), p.min_prob).cpu().numpy().astype(np.float32)
    job = pool.submit(downscale_images(batch["image"], size), probs, p.crf_scale)
    cues = downscale_cues(batch["mask"], size).to(rt.device)
    labels = batch["label"].to(rt.device)
    crf = torch.from_numpy(job.get()).to(rt.device)
    return sec_loss(logits, cues, labels, crf, d_fg=p.d_fg, d_bg=p.d_bg, min_prob=p.min_prob)


def train_sec(
    p: SecParams,
    index: DatasetIndex,
    rt: Runtime,
    tracker,
    *,
    seed: int,
    seeds_dir: Path,
    gain_ckpt: Path | None,
    ckpt_dir: Path,
    fingerprint: str,
) -> dict:
    """Train SEC with seed, expand and constrain losses; returns {"result": FitResult, "model": LargeFOV}."""
    n = index.num_classes
    model = build_sec(p, n, gain_ckpt).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_set = VOCDataset(
        index, index.splits["weak_train"], train_preset(p.input_size), seed=seed, mask_root=seeds_dir
    )
    val_set = VOCDataset(index, index.splits["val"], eval_preset(p.input_size), keep_original=True)
    optimizer = torch.optim.SGD(model.param_groups(p.lr, p.weight_decay), lr=p.lr, momentum=p.momentum)
    net = DistributedDataParallel(model) if rt.world_size > 1 else model
    pool = CRFPool(p.crf_workers)

    def lr_at(step: int) -> float:  # SEC's step schedule
        return p.lr * (0.1 ** (step // p.lr_step))

    def step_fn(batch: dict, step: int) -> dict:
        return sec_step_losses(net, batch, pool, p, rt)

    def eval_fn(step: int) -> dict:
        return segmentation_miou(unwrap(model), val_set, rt) if rt.is_main else {}

    try:
        result = fit(
            model=net,
            optimizer=optimizer,
            lr_at=lr_at,
            dataset=train_set,
            batch_size=p.batch_size,
            total_steps=p.iterations,
            seed=seed,
            rt=rt,
            workers=p.workers,
            step_fn=step_fn,
            eval_fn=eval_fn,
            eval_every=p.eval_every,
            ckpt_dir=ckpt_dir,
            ckpt_every=p.ckpt_every,
            fingerprint=fingerprint,
            tracker=tracker,
            best_key="miou",
            desc="sec",
            extra_state=lambda: {"params": asdict(p), "classes": list(index.classes)},
        )
    finally:
        pool.close()
    return {"result": result, "model": unwrap(model)}


def load_segmenter(path: Path) -> tuple[LargeFOV, dict]:
    state = load_checkpoint(path)
    p = state["params"]
    model = LargeFOV(p["backbone"], len(state["classes"]), weights="none")
    model.load_state_dict(state["model"])
    return model.eval(), p
