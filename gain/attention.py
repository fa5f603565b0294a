"""GAIN's attention machinery: differentiable Grad-CAM (Eq. 1-2), the soft mask (Eq. 3-4) and the
two-stream forward (S_cl and S_am share weights) in one `nn.Module.forward`, so DDP sees one call.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from gain.models import Classifier

EPS = 1e-5


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
) -> torch.Tensor:
    """Eq. 1-2: A^c = ReLU(sum_k w^c_k f_k), w^c_k = GAP(d s^c / d f_k), min-max normalised per map.

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
    lo = cam.flatten(1).min(dim=1).values[:, None, None]
    hi = cam.flatten(1).max(dim=1).values[:, None, None]
    return (cam - lo) / (hi - lo + EPS)


def soft_mask(attn: torch.Tensor, size: tuple[int, int], *, sigma: float, omega: float) -> torch.Tensor:
    """Eq. 4: T(A) = sigmoid(omega (A - sigma)) at image resolution. (P, h, w) -> (P, 1, H, W)."""
    up = F.interpolate(attn[:, None], size=size, mode="bilinear", align_corners=False)
    return torch.sigmoid(omega * (up - sigma))


@contextmanager
def bn_eval(module: nn.Module, enabled: bool):
    """Temporarily put BatchNorm layers in eval mode (masked batch neither uses nor updates batch stats)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if enabled:
        for m in bns:
            m.eval()
    try:
        yield
    finally:
        if enabled:
            for m in bns:
                m.train()


class GAIN(nn.Module):
    """S_cl and S_am with shared weights.

    forward(x (B,3,H,W), labels (B,C-1)) -> dict: logits (B,C-1); attn (P,h,w); pair_image, pair_class (P,);
    masked_logits (P,C-1) = classifier(I*), I* = I - T(A) (.) (I - erase_value) (Eq. 3).
    erase "mean": erased pixels become 0 in normalised space, the dataset mean colour (the paper's I - T(A) I
    on normalised input); "black": they become black in RGB. am_grad "all": L_am trains every weight through
    both streams (Eq. 6 read literally); "mask": S_am's forward uses detached weights, so L_am changes the
    network only through the attention map T(A) and cannot teach the classifier to score masked images low.
    """

    def __init__(
        self,
        classifier: Classifier,
        *,
        sigma: float = 0.5,
        omega: float = 10.0,
        differentiable: bool = True,
        masked_bn: str = "batch",
        erase: str = "mean",
        am_grad: str = "all",
    ):
        super().__init__()
        for name, value, allowed in (
            ("masked_bn", masked_bn, ("batch", "running")),
            ("erase", erase, ("mean", "black")),
            ("am_grad", am_grad, ("all", "mask")),
        ):
            if value not in allowed:
                raise ValueError(f"{name}: {value!r} is not one of {allowed}")
        self.am_grad = am_grad
        self.classifier = classifier
        self.sigma, self.omega = sigma, omega
        self.differentiable = differentiable
        self.masked_bn = masked_bn
        self.erase = erase

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *, mine: bool = True) -> dict:
        feats = self.classifier.features(x)
        logits = self.classifier.head(feats)
        pair_image, pair_class = label_pairs(labels)
        if not mine:  # classification only (warm-up): no attention, no masked stream
            return {"logits": logits, "pair_image": pair_image, "pair_class": pair_class}
        attn = grad_cam(feats, logits, pair_image, pair_class, differentiable=self.differentiable)
        out = {"logits": logits, "attn": attn, "pair_image": pair_image, "pair_class": pair_class}
        if pair_image.numel():
            t = soft_mask(attn, x.shape[-2:], sigma=self.sigma, omega=self.omega)
            src = x[pair_image]
            if self.erase == "black":
                black = _black(x)
                masked = src - t * (src - black)
            else:
                masked = src - t * src
            with bn_eval(self.classifier, self.masked_bn == "running"):
                if self.am_grad == "all":
                    out["masked_logits"] = self.classifier(masked)
                else:  # "mask": L_am reaches the weights only through T(A), not through S_am's own forward
                    frozen = {k: v.detach() for k, v in self.classifier.state_dict(keep_vars=True).items()}
                    out["masked_logits"] = torch.func.functional_call(self.classifier, frozen, (masked,))
            out["masked_images"] = masked
        return out


def _black(x: torch.Tensor) -> torch.Tensor:
    from gain.transforms import MEAN, STD

    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return -mean / std


def attention_maps(
    classifier: Classifier,
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
