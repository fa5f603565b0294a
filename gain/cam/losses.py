"""GAIN's losses as pure functions of tensors (the SEC losses live in gain/sec/losses.py)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_cl: multi-label soft margin. logits, labels (B, C-1)."""
    return F.multilabel_soft_margin_loss(logits, labels)


def attention_mining_loss(masked_logits: torch.Tensor, pair_class: torch.Tensor) -> torch.Tensor:
    """Eq. 5: L_am = (1/n) sum_c s^c(I*c), s = sigmoid of the class logit on its own masked image.

    masked_logits (P, C-1): one row per (image, class) pair. The sigmoid bounds the score (raw logits
    would make L_am unbounded below). Zero (with a graph) when there is no pair.
    """
    if pair_class.numel() == 0:
        return masked_logits.sum() * 0.0
    scores = masked_logits.gather(1, pair_class[:, None])[:, 0]
    return torch.sigmoid(scores).mean()


def attention_masks(
    masks: torch.Tensor, pair_image: torch.Tensor, pair_class: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """H^c at attention resolution: the fraction of each cell covered by class c. masks (B, H, W) long with
    foreground classes 1..C-1 (pair_class is 0-based over foreground) -> (P, h, w) in [0, 1]."""
    h = (masks[pair_image] == (pair_class[:, None, None] + 1)).float()
    return F.adaptive_avg_pool2d(h[:, None], size)[:, 0]


def external_loss(attn: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 7: L_e = (1/n) sum_c (A^c - H^c)^2, mean over pairs and cells. attn, target (P, h, w)."""
    if attn.shape[0] == 0:
        return attn.sum() * 0.0
    return ((attn - target) ** 2).mean()


def _given(t: torch.Tensor | None) -> str:
    return "None" if t is None else f"a tensor of shape {tuple(t.shape)}"


def gain_loss(
    out: dict,
    labels: torch.Tensor,
    *,
    alpha: float,
    masks: torch.Tensor | None = None,
    has_mask: torch.Tensor | None = None,
    omega_e: float | None = None,
) -> dict[str, torch.Tensor]:
    """L_self = L_cl + alpha L_am (Eq. 6); with masks for some images, L_ext = L_self + omega_e L_e (Eq. 8).

    `out` is GAIN.forward's dict. GAIN_ext passes masks (B, H, W), has_mask (B,) and omega_e together.
    alpha = 0 is the Grad-CAM baseline: L_am is still computed and logged but adds exactly nothing to the
    gradient.
    """
    if (masks is None) != (has_mask is None) or (masks is not None and omega_e is None):
        raise ValueError(
            "GAIN_ext's masks, has_mask and omega_e go together: pass all three or neither masks nor has_mask; "
            f"got masks={_given(masks)}, has_mask={_given(has_mask)}, omega_e={omega_e!r}"
        )
    losses = {"cl": classification_loss(out["logits"], labels)}
    if "masked_logits" in out:
        losses["am"] = attention_mining_loss(out["masked_logits"], out["pair_class"])
    else:
        losses["am"] = out["logits"].sum() * 0.0
    total = losses["cl"] + alpha * losses["am"]
    if masks is not None:
        sel = has_mask[out["pair_image"]]
        if bool(sel.any()):
            h = attention_masks(masks, out["pair_image"][sel], out["pair_class"][sel], out["attn"].shape[-2:])
            losses["e"] = external_loss(out["attn"][sel], h)
        else:
            losses["e"] = out["attn"].sum() * 0.0
        total = total + omega_e * losses["e"]
    losses["total"] = total
    return losses
