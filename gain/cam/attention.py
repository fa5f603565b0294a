"""GAIN's attention: differentiable Grad-CAM (Eq. 1-2), the soft mask (Eq. 3-4) and inference-time maps."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

EPS = 1e-5
# SEC's and GAIN's cue threshold (params.yaml seeds.fg_fraction): the fraction at which the gain stage's
# measures (attention mIoU, coverage) binarise attention, as the seeds stage's cues do by default.
FG_FRACTION = 0.2


def above_fraction(attn, fraction: float):
    """The foreground rule of cues and attention measures, in one place: where each map (over the last two
    dims) is above `fraction` of its own max. A map whose max is 0 is above nowhere. numpy or torch in,
    the same kind of bool array out."""
    if isinstance(attn, torch.Tensor):
        return attn > fraction * attn.amax(dim=(-2, -1), keepdim=True)
    attn = np.asarray(attn)
    return attn > fraction * np.max(attn, axis=(-2, -1), keepdims=True, initial=0.0)


def label_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C-1) multi-hot -> (pair_image (P,), pair_class (P,)): one pair per ground-truth class."""
    pair_image, pair_class = labels.nonzero(as_tuple=True)
    return pair_image, pair_class


def grad_cam(
    feats: torch.Tensor,
    logits: torch.Tensor,
    pair_image: torch.Tensor,
    pair_class: torch.Tensor,
    *,
    differentiable: bool = True,
    normalise: bool = True,
) -> torch.Tensor:
    """Eq. 1-2: A^c = ReLU(sum_k w^c_k f_k), w^c_k = GAP(d s^c / d f_k), min-max normalised per map
    (`normalise=False`: the map as computed, in the units of feats).

    feats (B, K, h, w) must be part of the graph that produced logits (B, C-1). Returns (P, h, w) in [0, 1]
    for the P (image, class) pairs. `differentiable=True` keeps w in the graph (double backward, the
    paper's formulation); False detaches w as public implementations do. Either way A depends on feats, so
    a loss on A trains the trunk. Images are independent given feats (the head has no batch coupling), so
    one autograd.grad per class rank covers every image at once: at most max-labels-per-image calls.
    """
    if pair_image.numel() == 0:
        return feats.new_zeros((0, *feats.shape[2:]))
    # rank of each pair within its image: pairs are sorted by image (nonzero order)
    first = torch.searchsorted(pair_image, pair_image)
    rank = torch.arange(pair_image.numel(), device=feats.device) - first
    weights = feats.new_zeros(pair_image.numel(), feats.shape[1])
    for r in range(int(rank.max()) + 1):
        sel = (rank == r).nonzero(as_tuple=True)[0]
        score = logits[pair_image[sel], pair_class[sel]].sum()
        (g,) = torch.autograd.grad(score, feats, create_graph=differentiable, retain_graph=True)
        weights = weights.index_put((sel,), g[pair_image[sel]].mean(dim=(2, 3)))
    if not differentiable:
        weights = weights.detach()
    cam = F.relu((weights[:, :, None, None] * feats[pair_image]).sum(dim=1))  # (P, h, w)
    if not normalise:
        return cam
    lo = cam.flatten(1).min(dim=1).values[:, None, None]
    hi = cam.flatten(1).max(dim=1).values[:, None, None]
    return (cam - lo) / (hi - lo + EPS)


def soft_mask(attn: torch.Tensor, size: tuple[int, int], *, sigma: float, omega: float) -> torch.Tensor:
    """Eq. 4: T(A) = sigmoid(omega (A - sigma)) at image resolution. (P, h, w) -> (P, 1, H, W)."""
    up = F.interpolate(attn[:, None], size=size, mode="bilinear", align_corners=False)
    return torch.sigmoid(omega * (up - sigma))


def attention_maps(
    classifier,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    flip: bool = False,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inference-time attention for every ground-truth class, all classes of the batch in one pass.

    Returns (attn (P, H, W) in [0, 1] at `size` (default: input size), pair_image, pair_class), no graph kept.
    With `flip`, the maps of the mirrored image are flipped back and averaged (test-time augmentation).
    """
    size = size or tuple(x.shape[-2:])
    pair_image, pair_class = label_pairs(labels)

    def one(inp):
        with torch.enable_grad():
            feats = classifier.features(inp.detach().requires_grad_(False))
            feats = feats if feats.requires_grad else feats.requires_grad_(True)
            logits = classifier.head(feats)
            a = grad_cam(feats, logits, pair_image, pair_class, differentiable=False)
        return F.interpolate(a[:, None].detach(), size=size, mode="bilinear", align_corners=False)[:, 0]

    attn = one(x)
    if flip:
        attn = 0.5 * (attn + one(x.flip(-1)).flip(-1))
        attn = attn / attn.flatten(1).max(dim=1).values.clamp_min(EPS)[:, None, None]
    return attn, pair_image, pair_class
