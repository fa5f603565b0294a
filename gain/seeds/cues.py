"""Attention maps -> SEC localization cues ("seeds"): foreground where a class's attention is high,
background by a rule of its own, everything else unlabeled.

Label conventions: 0 = background, 1..C-1 = foreground classes, 255 = unlabeled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gain.cam.attention import above_fraction

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
    fg_fraction: float,
    bg_threshold: float | None = None,
    background: np.ndarray | None = None,
    conflict: str = "max",
) -> np.ndarray:
    """SEC localization cues from one image's attention maps. -> (H, W) uint8.

    attn: (K, H, W) in [0, 1], one map per class present in the image, in the order of `classes` (K class
    indices in 1..C-1). Foreground cue for class k where attn[k] > fg_fraction * max(attn[k]) (relative to
    the map's own max, as in SEC and GAIN: 20%); a map whose max is 0 gives no foreground. Background cue
    (0) by exactly one of two rules:
      - `background`: an (H, W) bool mask computed elsewhere (SEC's saliency rule, gain.seeds.saliency);
      - `bg_threshold`: where every map is < bg_threshold (absolute: the maps are already normalised).
    Foreground wins over background: a pixel claimed by a class is never background (SEC's released cues
    carry one label per cell, and fewer background cells than the saliency rule marks exactly where
    foreground overlaps it). A pixel claimed by several classes goes, with conflict="max", to the class of
    highest attn[k] / max(attn[k]) (first in `classes` on a tie), and stays 255 with conflict="ignore".
    Everything else is 255. With K == 0 every background pixel of the rule is background (the threshold
    rule: every pixel).
    """
    if conflict not in CONFLICT_RULES:
        raise ValueError(f"conflict must be one of {CONFLICT_RULES}, got {conflict!r}")
    if (bg_threshold is None) == (background is None):
        raise ValueError("give exactly one background rule: bg_threshold or a background mask")
    attn, classes, norm = _check_attention(attn, classes)
    fg = above_fraction(attn, fg_fraction)  # (K, H, W); an all-zero map claims no pixel
    if background is not None:
        bg = np.asarray(background)
        if bg.dtype != bool or bg.shape != attn.shape[1:]:
            raise ValueError(
                f"background must be a bool mask of shape {attn.shape[1:]}, got {bg.dtype} {bg.shape}"
            )
    else:
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
