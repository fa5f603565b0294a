"""How good a GAIN classifier is: mAP, attention against the masks, the context-bias test (Table 4), figures."""

from __future__ import annotations

import numpy as np
import torch

from gain.cam.attention import FG_FRACTION, attention_maps
from gain.data.dataset import DatasetIndex, VOCDataset
from gain.data.transforms import denormalize, eval_preset
from gain.evaluation.figures import grid_figure, overlay
from gain.evaluation.metrics import exact_match_accuracy, mean_average_precision
from gain.runtime.engine import Runtime, collate, eval_loader


class AttentionIoU:
    """Per-class IoU of binarised attention (> FG_FRACTION of its map's max) against the class's mask,
    accumulated over images like the devkit's mIoU, then averaged over the classes seen."""

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
    """mAP, exact-match accuracy and attention mIoU (images with masks) of a classifier on `dataset`."""
    classifier.eval()
    probs, labels = [], []
    attn_iou = AttentionIoU(dataset.index.num_classes - 1)
    for batch in eval_loader(dataset, batch_size):
        x = rt.to_device(batch["image"])
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
