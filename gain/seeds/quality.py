"""How good seeds are against pixel labels: precision, recall, coverage and mIoU, accumulated over images.

Label conventions: 0 = background, 1..C-1 = foreground classes, 255 = unlabeled (seeds) or void (gt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gain.seeds.cues import UNLABELED


def _check_map(x: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{what} must hold integer labels, got dtype {x.dtype}")
    bad = (x != UNLABELED) & ((x < 0) | (x >= num_classes))
    if bad.any():
        raise ValueError(
            f"{what} holds label value {np.unique(x[bad])[0]} outside [0, {num_classes}) and not 255"
        )
    return x.astype(np.int64)


@dataclass
class SeedQuality:
    """Accumulates how seeds (255 = unlabeled) agree with ground truth (255 = void) over many images.

    Void gt pixels are excluded from every count. Internally a (C, C+1) matrix of gt class x seed label,
    the last column counting pixels the seeds leave unlabeled.
    """

    num_classes: int
    mat: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + a class), got {self.num_classes}")
        self.mat = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def update(self, seeds: np.ndarray, gt: np.ndarray) -> None:
        """Add one image (or a batch): seeds and gt are integer arrays of the same shape, e.g. (H, W)."""
        seeds = np.asarray(seeds)
        gt = np.asarray(gt)
        if seeds.shape != gt.shape:
            raise ValueError(f"seeds shape {seeds.shape} does not match gt shape {gt.shape}")
        c = self.num_classes
        seeds = _check_map(seeds, c, "seeds").ravel()
        gt = _check_map(gt, c, "gt").ravel()
        keep = gt != UNLABELED
        col = np.where(seeds[keep] == UNLABELED, c, seeds[keep])  # unlabeled -> last column
        self.mat += np.bincount(gt[keep] * (c + 1) + col, minlength=c * (c + 1)).reshape(c, c + 1)

    def compute(self) -> dict:
        """Seed quality over everything accumulated (nan where a denominator is 0).

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
        c = self.num_classes
        labeled = self.mat[:, :c]  # (C, C) gt x seed class, unlabeled column dropped
        correct = np.diag(labeled)  # (C,)
        seeded_as = labeled.sum(axis=0)  # (C,) per seed class
        gt_is = self.mat.sum(axis=1)  # (C,) per gt class, unlabeled included

        def ratio(num, den) -> float:
            return float(num / den) if den else float("nan")

        iou = [ratio(correct[k], gt_is[k] + seeded_as[k] - correct[k]) for k in range(c)]
        seen = [v for v in iou if v == v]

        return {
            "precision": ratio(correct.sum(), seeded_as.sum()),
            "recall": ratio(correct[1:].sum(), gt_is[1:].sum()),
            "labeled_fraction": ratio(seeded_as.sum(), gt_is.sum()),
            "fg_labeled_fraction": ratio(seeded_as[1:].sum(), gt_is.sum()),
            "bg_labeled_fraction": ratio(seeded_as[0], gt_is.sum()),
            "bg_precision": ratio(correct[0], seeded_as[0]),
            "fg_precision": ratio(correct[1:].sum(), seeded_as[1:].sum()),
            "class_precision": [ratio(correct[k], seeded_as[k]) for k in range(c)],
            "class_recall": [ratio(correct[k], gt_is[k]) for k in range(c)],
            "labeled_pixels": int(seeded_as.sum()),
            "num_pixels": int(gt_is.sum()),
            "class_iou": iou,
            "miou": float(np.mean(seen)) if seen else float("nan"),
        }
