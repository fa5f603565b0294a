"""How good a GAIN classifier is: mAP, attention against the masks, the context-bias test (Table 4), figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from gain.cam.attention import FG_FRACTION, above_fraction, attention_maps
from gain.data.dataset import DatasetIndex, VOCDataset
from gain.data.transforms import denormalize, eval_preset
from gain.evaluation.figures import grid_figure, overlay
from gain.evaluation.metrics import exact_match_accuracy, mean_average_precision
from gain.runtime.device import Runtime
from gain.runtime.io import read_label_png
from gain.runtime.loaders import collate, eval_loader

PART_FOLDER = (
    "SegmentationPart"  # the synthetic set's part labels: the class id on discriminative-part pixels
)


class AttentionIoU:
    """Per-class IoU of binarised attention (> FG_FRACTION of its map's max) against the class's mask,
    accumulated over images like the devkit's mIoU, then averaged over the classes seen."""

    def __init__(self, num_fg: int):
        self.inter = np.zeros(num_fg)
        self.union = np.zeros(num_fg)

    def update(self, attn: np.ndarray, mask: np.ndarray, cls: int) -> None:
        """attn (H, W) in [0, 1]; mask (H, W) with 255 = void; cls 0-based foreground index."""
        valid = mask != 255
        pred = above_fraction(attn, FG_FRACTION) & valid
        gt = (mask == cls + 1) & valid
        self.inter[cls] += (pred & gt).sum()
        self.union[cls] += (pred | gt).sum()

    def compute(self) -> float:
        seen = self.union > 0
        return float((self.inter[seen] / self.union[seen]).mean()) if seen.any() else float("nan")


def has_parts(dataset: VOCDataset) -> bool:
    """Whether the set labels its objects' discriminative parts (the synthetic set does, VOC does not)."""
    return dataset.index.root is not None and (Path(dataset.index.root) / PART_FOLDER).is_dir()


def part_masks(dataset: VOCDataset, ids: list[str], size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) long: each image's part labels (class id on discriminative-part pixels, else 0), resized
    (nearest) to `size`; all zero for an image the generator wrote no part file for."""
    out = []
    for image_id in ids:
        path = Path(dataset.index.root) / PART_FOLDER / f"{image_id}.png"
        if path.is_file():
            m = torch.from_numpy(read_label_png(path).astype(np.int64))
            m = F.interpolate(m[None, None].float(), size=size, mode="nearest")[0, 0].long()
        else:
            m = torch.zeros(size, dtype=torch.long)
        out.append(m)
    return torch.stack(out)


class AttentionCoverage:
    """Where binarised attention falls, pooled over a split's (image, class) pairs like the devkit's mIoU:

    part_coverage / body_coverage: share of the class's discriminative-part / body (object minus part)
    pixels inside the attention binarised at FG_FRACTION (the cue threshold) of its map's max;
    body_coverage_at_half: the same at 0.5 of the max; spill: share of the binarised attention (cue
    threshold) on labelled pixels outside the class's object (the void ring around objects counts for
    neither side). A part-only attention has part coverage near 1 and low body coverage; a whole-object
    attention high both; neither moves spill, which counts attention off the object."""

    KEYS = ("part_coverage", "body_coverage", "body_coverage_at_half", "spill")

    def __init__(self):
        self.n = dict.fromkeys(
            ("part", "body", "part_hit", "body_hit", "body_hit_half", "att", "att_out"), 0.0
        )

    def update(
        self, attn: torch.Tensor, masks: torch.Tensor, parts: torch.Tensor, classes: torch.Tensor
    ) -> None:
        """attn (P, H, W) in [0, 1]; masks (P, H, W) long (255 void); parts (P, H, W) long part labels;
        classes (P,) 1-based class of each pair."""
        cls = classes[:, None, None]
        valid = masks != 255
        obj = masks == cls
        part = (parts == cls) & obj
        body = obj & ~part
        cue, half = above_fraction(attn, FG_FRACTION), above_fraction(attn, 0.5)
        for key, value in (
            ("part", part),
            ("body", body),
            ("part_hit", cue & part),
            ("body_hit", cue & body),
            ("body_hit_half", half & body),
            ("att", cue & valid),
            ("att_out", cue & valid & ~obj),
        ):
            self.n[key] += float(value.sum())

    def compute(self) -> dict:
        n = self.n

        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else 0.0

        return {
            "part_coverage": ratio(n["part_hit"], n["part"]),
            "body_coverage": ratio(n["body_hit"], n["body"]),
            "body_coverage_at_half": ratio(n["body_hit_half"], n["body"]),
            "spill": ratio(n["att_out"], n["att"]),
        }


@torch.no_grad()
def evaluate_classifier(classifier, dataset: VOCDataset, rt: Runtime, *, batch_size: int = 32) -> dict:
    """mAP, exact-match accuracy and attention mIoU (images with masks) of a classifier on `dataset`, and on a
    set with part labels the attention's coverage (AttentionCoverage)."""
    classifier.eval()
    probs, labels = [], []
    attn_iou = AttentionIoU(dataset.index.num_classes - 1)
    coverage = AttentionCoverage() if has_parts(dataset) else None
    for batch in eval_loader(dataset, batch_size):
        x = rt.to_device(batch["image"])
        with rt.autocast():
            probs.append(torch.sigmoid(classifier(x)).float().cpu())
            attn, pi, pc = attention_maps(classifier, x, batch["label"].to(rt.device))
        labels.append(batch["label"])
        attn = attn.float().cpu()
        for a, i, c in zip(attn.numpy(), pi.tolist(), pc.tolist(), strict=True):
            if batch["has_mask"][i]:
                attn_iou.update(a, batch["mask"][i].numpy(), c)
        if coverage is not None:
            keep = batch["has_mask"][pi.cpu()]
            pi, pc = pi.cpu()[keep], pc.cpu()[keep]
            parts = part_masks(dataset, [batch["id"][i] for i in pi.tolist()], tuple(attn.shape[-2:]))
            coverage.update(attn[keep], batch["mask"][pi], parts, pc + 1)
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    out = {
        "map": mean_average_precision(p, y),
        "exact_match": exact_match_accuracy(p, y),
        "attn_miou": attn_iou.compute(),
    }
    return out | (coverage.compute() if coverage is not None else {})


@torch.no_grad()
def part_hidden_recall(classifier, index: DatasetIndex, rt: Runtime, *, input_size: int) -> dict:
    """Body evidence: on the synthetic `part_hidden` split (every object's discriminative part painted over
    by its body) the share of (image, present class) pairs scored > 0.5. -> {"part_hidden_recall": r}, or {}
    when the index has no such split."""
    if not index.splits.get("part_hidden"):
        return {}
    classifier.eval()
    hits = n = 0
    for batch in eval_loader(VOCDataset(index, index.splits["part_hidden"], eval_preset(input_size)), 32):
        with rt.autocast():
            prob = torch.sigmoid(classifier(rt.to_device(batch["image"])).float()).cpu()
        present = batch["label"] > 0.5
        hits += int((prob[present] > 0.5).sum())
        n += int(present.sum())
    return {"part_hidden_recall": hits / max(n, 1)}


@torch.no_grad()
def bias_accuracy(classifier, index: DatasetIndex, bias_class: int, rt: Runtime, *, input_size: int) -> dict:
    """The paper's Table 4 on the held-out biased splits: is `bias_class` (1-based) recognised without its
    usual context (`bias_object_only`), and correctly absent in the context alone (`bias_context_only`)?
    -> {"bias_object_only_accuracy": a, "bias_context_only_accuracy": b}, for the splits the index has."""
    classifier.eval()
    out = {}
    for split, want_present in (("bias_object_only", True), ("bias_context_only", False)):
        if split not in index.splits:
            continue
        hits = n = 0
        for batch in eval_loader(VOCDataset(index, index.splits[split], eval_preset(input_size)), 32):
            with rt.autocast():
                prob = torch.sigmoid(classifier(rt.to_device(batch["image"])).float())[:, bias_class - 1]
            hits += int(((prob.cpu() > 0.5) == want_present).sum())
            n += len(prob)
        out[f"{split}_accuracy"] = hits / max(n, 1)
    return out


@torch.no_grad()
def attention_figure(classifier, dataset: VOCDataset, ids_idx: list[int], rt: Runtime, *, title: str):
    """Grid: each row an image, then its attention overlay for every ground-truth class."""
    classifier.eval()
    batch = collate([dataset[i] for i in ids_idx])
    attn, pi, pc = attention_maps(classifier, rt.to_device(batch["image"]), batch["label"].to(rt.device))
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
