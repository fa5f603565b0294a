"""Attention maps -> SEC localization cues ("seeds"), and how good those seeds are against pixel labels.

Label conventions: 0 = background, 1..C-1 = foreground classes, 255 = unlabeled (seeds) or void (gt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

UNLABELED = 255
CONFLICT_RULES = ("max", "ignore")


def _check_attention(attn: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate (K, H, W) maps against K class indices; returns (attn, classes (K,), normalised maps)."""
    attn = np.asarray(attn, dtype=np.float64)
    if attn.ndim != 3:
        raise ValueError(f"attn must be (K, H, W), got shape {attn.shape}")
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if len(classes) != attn.shape[0]:
        raise ValueError(f"got {len(classes)} classes for {attn.shape[0]} attention maps")
    if ((classes < 1) | (classes >= UNLABELED)).any() or len(np.unique(classes)) != len(classes):
        raise ValueError(f"classes must be distinct foreground indices in [1, 255), got {classes.tolist()}")
    if attn.size and (not np.isfinite(attn).all() or attn.min() < 0.0 or attn.max() > 1.0):
        raise ValueError("attn must be finite and normalised into [0, 1]")
    peak = attn.max(axis=(1, 2), initial=0.0)  # (K,)
    # Each map divided by its own max; an all-zero map stays zero instead of 0/0.
    norm = np.divide(attn, peak[:, None, None], out=np.zeros_like(attn), where=peak[:, None, None] > 0)
    return attn, classes, norm


def make_cues(
    attn: np.ndarray,
    classes: Sequence[int],
    *,
    fg_threshold: float = 0.2,
    bg_threshold: float = 0.05,
    conflict: str = "max",
) -> np.ndarray:
    """SEC localization cues from one image's attention maps. -> (H, W) uint8.

    attn: (K, H, W) in [0, 1], one map per class present in the image, in the order of `classes` (K class
    indices in 1..C-1). Foreground cue for class k where attn[k] > fg_threshold * max(attn[k]) (relative to
    the map's own max, as in SEC and GAIN: 20%); a map whose max is 0 gives no foreground. Background cue (0)
    where every map is < bg_threshold (absolute: the maps are already normalised) and no class claims the
    pixel - GAIN took background cues from a saliency network, this rule stands in for it. A pixel claimed
    by several classes goes, with conflict="max", to the class of highest attn[k] / max(attn[k]) (first in
    `classes` on a tie), and stays 255 with conflict="ignore". Everything else is 255. With K == 0 every
    pixel is background.
    """
    if conflict not in CONFLICT_RULES:
        raise ValueError(f"conflict must be one of {CONFLICT_RULES}, got {conflict!r}")
    attn, classes, norm = _check_attention(attn, classes)
    peak = attn.max(axis=(1, 2), initial=0.0)
    # (K, H, W); an all-zero map has threshold 0 and attn > 0 nowhere, so it claims no pixel.
    fg = attn > fg_threshold * peak[:, None, None]
    bg = (attn < bg_threshold).all(axis=0)  # (H, W); True everywhere when K == 0
    claims = fg.sum(axis=0)  # (H, W) number of classes claiming each pixel

    cues = np.full(attn.shape[1:], UNLABELED, dtype=np.uint8)
    cues[bg] = 0
    if len(classes):
        best = np.where(fg, norm, -np.inf).argmax(axis=0)  # (H, W) index into classes
        cues[claims > 0] = classes[best[claims > 0]]
    if conflict == "ignore":
        cues[claims > 1] = UNLABELED
    return cues


def dense_from_attention(attn: np.ndarray, classes: Sequence[int], *, bg_threshold: float) -> np.ndarray:
    """Dense label map: attention argmax with a background threshold. -> (H, W) uint8.

    attn: (K, H, W) in [0, 1], classes: K class indices. Each pixel gets the class of highest normalised
    attention attn[k] / max(attn[k]) (first in `classes` on a tie), or background (0) where that highest
    normalised value is < bg_threshold. With K == 0 every pixel is background.
    """
    attn, classes, norm = _check_attention(attn, classes)
    dense = np.zeros(attn.shape[1:], dtype=np.uint8)
    if len(classes):
        best = norm.argmax(axis=0)  # (H, W)
        dense[:] = classes[best]
        dense[norm.max(axis=0) < bg_threshold] = 0
    return dense


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
          bg_precision, fg_precision: precision of the background seeds / of all foreground seeds;
          class_precision, class_recall: (C,) lists, correct_c / seeded-as-c and correct_c / gt-is-c;
          labeled_pixels, num_pixels: the counts behind labeled_fraction.
        """
        c = self.num_classes
        labeled = self.mat[:, :c]  # (C, C) gt x seed class, unlabeled column dropped
        correct = np.diag(labeled)  # (C,)
        seeded_as = labeled.sum(axis=0)  # (C,) per seed class
        gt_is = self.mat.sum(axis=1)  # (C,) per gt class, unlabeled included

        def ratio(num, den) -> float:
            return float(num / den) if den else float("nan")

        return {
            "precision": ratio(correct.sum(), seeded_as.sum()),
            "recall": ratio(correct[1:].sum(), gt_is[1:].sum()),
            "labeled_fraction": ratio(seeded_as.sum(), gt_is.sum()),
            "bg_precision": ratio(correct[0], seeded_as[0]),
            "fg_precision": ratio(correct[1:].sum(), seeded_as[1:].sum()),
            "class_precision": [ratio(correct[k], seeded_as[k]) for k in range(c)],
            "class_recall": [ratio(correct[k], gt_is[k]) for k in range(c)],
            "labeled_pixels": int(seeded_as.sum()),
            "num_pixels": int(gt_is.sum()),
        }


def save_attention(path, attn: np.ndarray, classes: Sequence[int]) -> None:
    """Store (K, H, W) attention maps as compressed float16 with their class indices, atomically."""
    from gain.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, attn=attn.astype(np.float16), classes=np.asarray(classes, dtype=np.int64))


def load_attention(path) -> tuple[np.ndarray, np.ndarray]:
    """-> (attn (K, H, W) float32, classes (K,))."""
    with np.load(path) as z:
        return z["attn"].astype(np.float32), z["classes"]


def image_attention(classifier, dataset, *, device, batch_size: int, flip: bool, autocast=None):
    """Yield (item, attn (K, H, W) float32 at the image's own resolution, classes (K,) 1-based) for every
    image of `dataset` (a VOCDataset with keep_original=True); all classes of a batch in one pass."""
    import torch
    from torch.nn import functional as F

    from gain.attention import attention_maps
    from gain.data import collate

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in loader:
        x = batch["image"].to(device)
        with autocast() if autocast else _null():
            attn, pi, pc = attention_maps(classifier, x, batch["label"].to(device), flip=flip)
        attn = attn.float()
        for b in range(x.shape[0]):
            sel = (pi == b).nonzero(as_tuple=True)[0]
            h, w = batch["orig_mask"][b].shape
            a = F.interpolate(attn[sel][:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            item = {k: v[b] for k, v in batch.items()}
            yield item, a.clamp(0, 1).cpu().numpy(), (pc[sel] + 1).cpu().numpy()


def _null():
    from contextlib import nullcontext

    return nullcontext()
