"""How good seeds are against pixel labels: precision, recall, coverage and mIoU, read off the one confusion
matrix the project scores everything with (gain.evaluation.metrics.ConfusionMatrix, fed (gt, seeds)).

Label conventions: 0 = background, 1..C-1 = foreground classes, 255 = unlabeled (seeds) or void (gt). The
matrix skips void gt pixels and counts pixels the seeds leave unlabeled per gt class (`unlabeled`).
"""

from __future__ import annotations

import numpy as np

from gain.evaluation.metrics import ConfusionMatrix


def _ratio(num, den) -> float:
    return float(num / den) if den else float("nan")


def seed_quality(cm: ConfusionMatrix) -> dict:
    """Seed quality over everything `cm` accumulated (cm.update(gt, seeds)); nan where a denominator is 0.

    Returns a dict with keys:
      precision: correct labeled pixels / labeled pixels;
      recall: pixels seeded with their correct foreground class / all foreground gt pixels;
      labeled_fraction: labeled pixels / non-void pixels;
      fg_labeled_fraction, bg_labeled_fraction: pixels seeded foreground / background over non-void pixels
      (the two parts of labeled_fraction);
      bg_precision, fg_precision: precision of the background seeds / of all foreground seeds;
      class_precision, class_recall: (C,) lists, correct_c / seeded-as-c and correct_c / gt-is-c;
      labeled_pixels, num_pixels: the counts behind labeled_fraction;
      class_iou, miou: IoU per class of the seed map with unlabeled pixels counted as misses (in the
      class's ground truth, in no prediction), and its mean over classes present in gt or seeds.
    """
    c = cm.num_classes
    if c < 2:
        raise ValueError(f"num_classes must be >= 2 (background + a class), got {c}")
    correct = np.diag(cm.mat)  # (C,)
    seeded_as = cm.mat.sum(axis=0)  # (C,) per seed class
    gt_is = cm.mat.sum(axis=1) + cm.unlabeled  # (C,) per gt class, unlabeled included
    iou = [_ratio(correct[k], gt_is[k] + seeded_as[k] - correct[k]) for k in range(c)]
    seen = [v for v in iou if v == v]
    return {
        "precision": _ratio(correct.sum(), seeded_as.sum()),
        "recall": _ratio(correct[1:].sum(), gt_is[1:].sum()),
        "labeled_fraction": _ratio(seeded_as.sum(), gt_is.sum()),
        "fg_labeled_fraction": _ratio(seeded_as[1:].sum(), gt_is.sum()),
        "bg_labeled_fraction": _ratio(seeded_as[0], gt_is.sum()),
        "bg_precision": _ratio(correct[0], seeded_as[0]),
        "fg_precision": _ratio(correct[1:].sum(), seeded_as[1:].sum()),
        "class_precision": [_ratio(correct[k], seeded_as[k]) for k in range(c)],
        "class_recall": [_ratio(correct[k], gt_is[k]) for k in range(c)],
        "labeled_pixels": int(seeded_as.sum()),
        "num_pixels": int(gt_is.sum()),
        "class_iou": iou,
        "miou": float(np.mean(seen)) if seen else float("nan"),
    }
