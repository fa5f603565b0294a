"""The `seeds` stage's work: GAIN attention for every weak training image -> cue maps on disk, scored once
against the masks of the images that have them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from gain.cam.attention import attention_maps
from gain.data.dataset import DatasetIndex, VOCDataset
from gain.data.transforms import eval_preset
from gain.data.voc import voc_palette
from gain.evaluation.figures import colorize, grid_figure, overlay
from gain.evaluation.metrics import ConfusionMatrix
from gain.runtime.device import Runtime
from gain.runtime.io import save_palette_png
from gain.runtime.loaders import eval_loader
from gain.runtime.params import SeedsParams
from gain.seeds.cues import dense_from_attention, make_cues
from gain.seeds.quality import seed_quality
from gain.seeds.saliency import class_agnostic_saliency, lowest_cells


def _image_batches(
    classifier, dataset: VOCDataset, rt: Runtime, *, batch_size: int, flip: bool, background=None
):
    """Per image: (item, attn (K, H, W), classes (K,), background (H, W) bool or None), H x W the image's own
    resolution. Attention of every class of a batch in one pass; with `background` = (saliency_at,
    bg_fraction), SEC's saliency background of the batch in one more backward pass."""
    for batch in eval_loader(dataset, batch_size):
        x = rt.to_device(batch["image"])
        with rt.autocast():
            attn, pi, pc = attention_maps(classifier, x, batch["label"].to(rt.device), flip=flip)
            cells = None
            if background is not None:
                at, fraction = background
                cells = lowest_cells(class_agnostic_saliency(classifier, x, at=at), fraction)  # (B, h, w)
        attn = attn.float()
        for b in range(x.shape[0]):
            sel = (pi == b).nonzero(as_tuple=True)[0]
            h, w = batch["orig_mask"][b].shape
            a = F.interpolate(attn[sel][:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            bg = None
            if cells is not None:  # each pixel takes the cell it lies in
                up = F.interpolate(cells[b : b + 1, None].float(), size=(h, w), mode="nearest-exact")
                bg = up[0, 0].cpu().numpy() > 0.5
            item = {k: v[b] for k, v in batch.items()}
            yield item, a.clamp(0, 1).cpu().numpy(), (pc[sel] + 1).cpu().numpy(), bg


@torch.no_grad()
def image_attention(classifier, dataset: VOCDataset, rt: Runtime, *, batch_size: int, flip: bool):
    """Yield (item, attn (K, H, W) float32 in [0, 1] at the image's own resolution, classes (K,) 1-based)
    for every image of `dataset` (a VOCDataset with keep_original=True); all classes of a batch in one pass."""
    for item, attn, classes, _ in _image_batches(classifier, dataset, rt, batch_size=batch_size, flip=flip):
        yield item, attn, classes


@torch.no_grad()
def image_cues(classifier, dataset: VOCDataset, p: SeedsParams, rt: Runtime, *, batch_size: int):
    """Yield (item, cues (H, W) uint8, attn (K, H, W), classes (K,)) for every image of `dataset`
    (keep_original=True): foreground by the attention rule, background by `p.background` - SEC's saliency
    rule (the `p.bg_fraction` least salient cells, gradient at `p.saliency_at`) or the attention threshold
    `p.bg_threshold`."""
    saliency = p.background == "saliency"
    for item, attn, classes, bg in _image_batches(
        classifier,
        dataset,
        rt,
        batch_size=batch_size,
        flip=p.flip,
        background=(p.saliency_at, p.bg_fraction) if saliency else None,
    ):
        rule = {"background": bg} if saliency else {"bg_threshold": p.bg_threshold}
        cues = make_cues(attn, classes, fg_fraction=p.fg_fraction, conflict=p.conflict, **rule)
        yield item, cues, attn, classes


def score_cues(classifier, dataset: VOCDataset, p: SeedsParams, rt: Runtime, *, batch_size: int) -> dict:
    """seed_quality of the cues `p` makes from `classifier` on `dataset` (keep_original=True), over its
    images with masks: how the study scores seeds on val (the stage scores them while it writes them)."""
    cm = ConfusionMatrix(dataset.index.num_classes)
    for item, cues, _, _ in image_cues(classifier, dataset, p, rt, batch_size=batch_size):
        if item["has_mask"]:
            cm.update(item["orig_mask"], cues)
    return seed_quality(cm)


def extract_seeds(
    classifier,
    index: DatasetIndex,
    p: SeedsParams,
    rt: Runtime,
    out_dir: Path,
    *,
    input_size: int,
    batch_size: int,
    n_vis: int = 6,
) -> tuple[dict, list]:
    """Write `out_dir/<id>.png` (palette, 255 = unlabeled) for every weak training image, all or nothing
    (built in a sibling folder, swapped in at the end). -> (metrics, figure rows).

    Metrics, on the seed-evaluation images with masks: the seed_quality figures (precision, recall, labeled
    fraction and its foreground/background parts, fg/bg precision, mIoU with unlabeled pixels as misses,
    per class) and the mIoU of the dense attention-argmax map (background below `p.bg_threshold`).
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = index.num_classes
    scored = set(index.splits["seed_eval"])
    quality, dense = ConfusionMatrix(n), ConfusionMatrix(n)
    vis = []
    ds = VOCDataset(index, index.splits["weak_train"], eval_preset(input_size), keep_original=True)
    palette = voc_palette()
    for item, cues, attn, classes in tqdm(
        image_cues(classifier, ds, p, rt, batch_size=batch_size), total=len(ds), desc="seeds", unit="img"
    ):
        save_palette_png(tmp / f"{item['id']}.png", cues, palette)
        if item["has_mask"] and item["id"] in scored:
            gt = item["orig_mask"]
            quality.update(gt, cues)
            dense.update(gt, dense_from_attention(attn, classes, bg_threshold=p.bg_threshold))
            if len(vis) < n_vis:
                vis.append(seed_row(item["orig_image"], gt, attn, cues, item["id"]))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    q, d = seed_quality(quality), dense.compute(index.classes)
    names = index.classes
    metrics = {
        "seed_precision": q["precision"],
        "seed_recall": q["recall"],
        "labeled_fraction": q["labeled_fraction"],
        "fg_labeled_fraction": q["fg_labeled_fraction"],
        "bg_labeled_fraction": q["bg_labeled_fraction"],
        "bg_precision": q["bg_precision"],
        "fg_precision": q["fg_precision"],
        "seed_miou": q["miou"],
        "dense_miou": d["miou"],
        "per_class": {
            "precision": dict(zip(names, q["class_precision"], strict=True)),
            "recall": dict(zip(names, q["class_recall"], strict=True)),
            "seed_iou": dict(zip(names, q["class_iou"], strict=True)),
            "dense_iou": dict(zip(names, d["iou"], strict=True)),
        },
    }
    return metrics, vis


def seed_row(image: np.ndarray, gt: np.ndarray, attn: np.ndarray, cues: np.ndarray, image_id: str) -> list:
    """One figure row: image, ground truth, attention (max over classes), seeds."""
    heat = attn.max(axis=0) if len(attn) else np.zeros(image.shape[:2])
    return [
        (image, image_id),
        (colorize(gt), "ground truth"),
        (overlay(image, heat), "attention (max over classes)"),
        (colorize(cues), "seeds"),
    ]


def seed_figure(rows: list):
    return grid_figure(rows)
