"""GAIN classifier pretraining (S_cl + S_am [+ S_e]) on the weak training split, and its evaluation."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from gain.attention import GAIN, attention_maps
from gain.data import DatasetIndex, VOCDataset, collate
from gain.engine import Runtime, fit, unwrap
from gain.figures import grid_figure, overlay
from gain.losses import gain_loss
from gain.metrics import exact_match_accuracy, mean_average_precision
from gain.models import Classifier
from gain.params import GainParams
from gain.transforms import denormalize, eval_preset, train_preset

FG_FRACTION = 0.2  # the SEC/GAIN cue threshold: attention > 20% of that map's max


def build_gain(p: GainParams, num_fg: int) -> GAIN:
    classifier = Classifier(p.backbone, num_fg, weights=p.weights)
    return GAIN(
        classifier,
        sigma=p.sigma,
        omega=p.omega,
        differentiable=p.grad_weights == "differentiable",
        masked_bn=p.masked_bn,
        erase=p.erase,
        am_grad=p.am_grad,
    )


class AttentionIoU:
    """Per-class IoU of binarised attention (> 20% of its max) against the class's ground-truth mask."""

    def __init__(self, num_fg: int):
        self.inter = np.zeros(num_fg)
        self.union = np.zeros(num_fg)

    def update(self, attn: np.ndarray, mask: np.ndarray, cls: int) -> None:
        """attn (H, W) in [0, 1]; mask (H, W) with 255 = void; cls 0-based foreground index."""
        valid = mask != 255
        pred = (attn > FG_FRACTION * attn.max()) & valid
        gt = (mask == cls + 1) & valid
        self.inter[cls] += (pred & gt).sum()
        self.union[cls] += (pred | gt).sum()

    def compute(self) -> float:
        seen = self.union > 0
        return float((self.inter[seen] / self.union[seen]).mean()) if seen.any() else float("nan")


@torch.no_grad()
def evaluate_classifier(classifier, dataset: VOCDataset, rt: Runtime, *, batch_size: int = 32) -> dict:
    """Val mAP, exact-match accuracy and attention mIoU (images with masks) of a classifier."""
    classifier.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    probs, labels = [], []
    attn_iou = AttentionIoU(dataset.index.num_classes - 1)
    for batch in loader:
        x = batch["image"].to(rt.device)
        with rt.autocast():
            probs.append(torch.sigmoid(classifier(x)).float().cpu())
            attn, pi, pc = attention_maps(classifier, x, batch["label"].to(rt.device))
        labels.append(batch["label"])
        attn = attn.float().cpu().numpy()
        for a, i, c in zip(attn, pi.tolist(), pc.tolist(), strict=True):
            if batch["has_mask"][i]:
                attn_iou.update(a, batch["mask"][i].numpy(), c)
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    return {
        "map": mean_average_precision(p, y),
        "exact_match": exact_match_accuracy(p, y),
        "attn_miou": attn_iou.compute(),
    }


@torch.no_grad()
def attention_figure(classifier, dataset: VOCDataset, ids_idx: list[int], rt: Runtime, *, title: str):
    """Grid: each row an image, then its attention overlay for every ground-truth class."""
    classifier.eval()
    batch = collate([dataset[i] for i in ids_idx])
    x = batch["image"].to(rt.device)
    attn, pi, pc = attention_maps(classifier, x, batch["label"].to(rt.device))
    attn = attn.float().cpu().numpy()
    rows = []
    names = dataset.index.classes
    for b in range(len(ids_idx)):
        img = denormalize(batch["image"][b])
        row = [(img, batch["id"][b])]
        for a, i, c in zip(attn, pi.tolist(), pc.tolist(), strict=True):
            if i == b:
                row.append((overlay(img, a), f"{title}: {names[c + 1]}"))
        rows.append(row)
    return grid_figure(rows)


def train_gain(
    p: GainParams,
    index: DatasetIndex,
    rt: Runtime,
    tracker,
    *,
    seed: int,
    ckpt_dir: Path,
    fingerprint: str,
    figure_dir: Path | None = None,
) -> dict:
    """Train GAIN; returns the final dict (best metrics, history, model). Checkpoints go to ckpt_dir."""
    num_fg = index.num_classes - 1
    model = build_gain(p, num_fg).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pixel = set(index.splits.get("pixel", [])) if p.ext else set()
    train_set = VOCDataset(
        index, index.splits["weak_train"], train_preset(p.input_size), seed=seed, with_masks=pixel
    )
    val_set = VOCDataset(index, index.splits["val"], eval_preset(p.input_size), seed=seed)
    per_epoch = len(train_set) // rt.world_size // p.batch_size
    total = p.epochs * per_epoch
    warmup_steps = p.warmup_epochs * per_epoch
    optimizer = torch.optim.SGD(
        unwrap(model).classifier.param_groups(p.lr, p.weight_decay), lr=p.lr, momentum=p.momentum
    )
    for g, mult in zip(optimizer.param_groups, (1, 10), strict=True):
        g["lr_mult"] = mult
    net = DistributedDataParallel(model) if rt.world_size > 1 else model

    def lr_at(step: int) -> float:  # cosine decay over the run
        return 0.5 * p.lr * (1 + math.cos(math.pi * step / max(total, 1)))

    def step_fn(batch: dict, step: int) -> dict:
        x = batch["image"].to(rt.device, non_blocking=True)
        y = batch["label"].to(rt.device)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Warm-up epochs are classification only: the attention-mining stream is not run at all. (alpha = 0
        # after warm-up, the Grad-CAM baseline, still runs it so L_am is measured the same way as for GAIN.)
        warm = step < warmup_steps
        out = net(x, y, mine=not warm)
        alpha = 0.0 if warm else p.alpha
        masks = batch["mask"].to(rt.device) if p.ext and not warm else None
        has_mask = batch["has_mask"].to(rt.device) if p.ext and not warm else None
        return gain_loss(out, y, alpha=alpha, masks=masks, has_mask=has_mask, omega_e=p.omega_e)

    vis_idx = list(range(min(p.vis_images, len(val_set))))

    def eval_fn(step: int) -> dict:
        if not rt.is_main:
            return {}
        clf = unwrap(model).classifier
        metrics = evaluate_classifier(clf, val_set, rt)
        metrics["epoch"] = step // per_epoch
        if vis_idx:
            fig = attention_figure(clf, val_set, vis_idx, rt, title="GAIN" if p.alpha > 0 else "Grad-CAM")
            tracker.log_figure(fig, f"attention/epoch_{step // per_epoch:03d}.png")
            if figure_dir is not None:
                from gain.figures import save_figure

                save_figure(fig, figure_dir / "attention.png")
            else:
                import matplotlib.pyplot as plt

                plt.close(fig)
        return metrics

    result = fit(
        model=net,
        optimizer=optimizer,
        lr_at=lr_at,
        dataset=train_set,
        batch_size=p.batch_size,
        total_steps=total,
        seed=seed,
        rt=rt,
        workers=p.workers,
        step_fn=step_fn,
        eval_fn=eval_fn,
        eval_every=per_epoch,
        ckpt_dir=ckpt_dir,
        ckpt_every=p.ckpt_every,
        fingerprint=fingerprint,
        tracker=tracker,
        best_key="map",
        desc="gain",
        extra_state=lambda: {"params": asdict(p), "classes": list(index.classes)},
    )
    return {"result": result, "model": unwrap(model)}


def load_classifier(path: Path) -> tuple[Classifier, dict]:
    """The trained classifier of a GAIN checkpoint (models/gain/best.pt) and the GAIN params it used."""
    from gain.engine import load_checkpoint

    state = load_checkpoint(path)
    p = state["params"]
    classifier = Classifier(p["backbone"], len(state["classes"]) - 1, weights="none")
    prefix = "classifier."
    classifier.load_state_dict(
        {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    )
    return classifier.eval(), p
