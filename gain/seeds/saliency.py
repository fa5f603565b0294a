"""SEC's background cues: class-agnostic gradient saliency of the classifier; the least salient cells are
background.

SEC's release (weak-localization/background notebook) sets the gradient of every class score to 1 (so it
differentiates the sum of all class scores, present or not), back-propagates to conv4_1 - the first
convolution on the stride-8 grid, 41x41 at 321 px input - takes max_k |d score / d a_k| over its channels,
smooths that with a 3x3 median filter and labels background where the saliency is below
thr = sorted(saliency)[int(0.1 * 41**2)]. No external network is involved. Here the same rule runs on the
GAIN classifier, with the gradient taken at one of two places (`at`):
  - "image": |d score / d image|, max over the colour channels, averaged over each cell of the stride-8 grid
    ((H - 1) // 8 + 1 cells a side: 41 at 321 px as in SEC, 14 at 112 px), whatever the classifier's own
    output stride (Simonyan et al.'s saliency, the form SEC's paper describes);
  - "stride8": the pre-activation of the first convolution of the trunk that runs at stride 8, max over its
    channels (VGG16: conv4_1, exactly the release's layer; the small trunk: its first stride-8 conv + BN).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

SALIENCY_STRIDE = 8  # SEC's cell grid: conv4_1 of VGG16, the output stride of DeepLab-LargeFOV


def leaf_modules(module: nn.Module) -> list[nn.Module]:
    """The modules of a (nested) nn.Sequential in execution order; any other module is one leaf."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in leaf_modules(child)]
    return [module]


def _stride(module: nn.Module) -> int:
    s = getattr(module, "stride", 1)  # Conv2d, pooling, torchvision's residual blocks; None for the rest
    s = s[0] if isinstance(s, tuple) else s
    return int(s) if s else 1


def split_trunk(trunk: nn.Module, stride: int = SALIENCY_STRIDE) -> tuple[nn.Sequential, nn.Sequential]:
    """(pre, post) with trunk(x) == post(pre(x)): `pre` ends with the pre-activation of the first layer that
    runs on the stride-`stride` grid (a Conv2d and the BatchNorm right after it; a residual block as a
    whole). Raises ValueError when the trunk never reaches that stride."""
    leaves = leaf_modules(trunk)
    reached = 1
    for i, leaf in enumerate(leaves):
        if reached == stride and (
            isinstance(leaf, nn.Conv2d) or _stride(leaf) == 1 and next(leaf.parameters(), None) is not None
        ):
            cut = i + 1
            if isinstance(leaf, nn.Conv2d) and cut < len(leaves) and isinstance(leaves[cut], nn.BatchNorm2d):
                cut += 1
            return nn.Sequential(*leaves[:cut]), nn.Sequential(*leaves[cut:])
        reached *= _stride(leaf)
    raise ValueError(f"the trunk never runs at output stride {stride} (it reaches {reached})")


def median3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 median filter of (B, h, w) maps; borders repeat the edge value (scipy.ndimage.median_filter's
    default 'reflect' mode, which for a 3x3 window is edge replication)."""
    padded = F.pad(x[:, None], (1, 1, 1, 1), mode="replicate")  # (B, 1, h+2, w+2)
    windows = F.unfold(padded, kernel_size=3)  # (B, 9, h*w)
    return windows.median(dim=1).values.view_as(x)


SALIENCY_AT = ("image", "stride8")


def class_agnostic_saliency(classifier, x: torch.Tensor, *, at: str = "image") -> torch.Tensor:
    """SEC's background saliency of a batch: (B, 3, H, W) -> (B, h, w) on a cell grid.

    s = median3x3(max_k |d (sum_c score_c) / d a_k|), score the classifier's logits (every class, as SEC's
    fc8 gradient of ones) and a the image (`at="image"`: max over colour channels, then averaged over the
    cells of the stride-8 grid) or the pre-activation of the first stride-8 layer (`"stride8"`).
    Images do not interact (the classifier is in eval mode), so the gradient of the batch sum is every
    image's own gradient. `classifier` needs `.trunk` (an nn.Sequential) and `.head(feats)` -> logits.
    """
    if at not in SALIENCY_AT:
        raise ValueError(f"at must be one of {SALIENCY_AT}, got {at!r}")
    pre, post = split_trunk(classifier.trunk) if at == "stride8" else (nn.Identity(), classifier.trunk)
    with torch.enable_grad():
        a = pre(x.detach()).detach().requires_grad_(True)
        # clone: the trunk's in-place ReLU would otherwise overwrite a leaf that requires grad
        score = classifier.head(post(a.clone())).float().sum()
        (grad,) = torch.autograd.grad(score, a)
    sal = grad.float().abs().amax(dim=1)  # (B, h, w) or (B, H, W)
    if at == "image":
        cells = tuple((n - 1) // SALIENCY_STRIDE + 1 for n in sal.shape[-2:])
        sal = F.adaptive_avg_pool2d(sal[:, None], cells)[:, 0]
    return median3x3(sal)


def lowest_cells(saliency: torch.Tensor, fraction: float) -> torch.Tensor:
    """Background cells of (B, h, w) saliency maps -> (B, h, w) bool: saliency < thr with
    thr = sorted(saliency)[int(fraction * h * w)] per image (SEC: fraction 0.1, 168 of 41x41 cells; fewer
    when values tie at the threshold). fraction >= 1 marks every cell."""
    flat = saliency.flatten(1)  # (B, N)
    k = int(fraction * flat.shape[1])
    if k >= flat.shape[1]:
        return torch.ones_like(saliency, dtype=torch.bool)
    thr = flat.sort(dim=1).values[:, k]  # (B,)
    return saliency < thr[:, None, None]
