"""SEC losses: seed, expand and constrain (Kolesnikov & Lampert, ECCV 2016, arXiv 1603.06098).

Pure functions of tensors. Shapes: B images, C classes (index 0 = background), an h x w output grid
(41 x 41 for DeepLab-LargeFOV at 321 x 321 input). The normalisations follow SEC's released code, which the
paper leaves open: the seeding loss is averaged per image, the expansion terms per class set, and everything
is then averaged over the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gain.data.voc import IGNORE_INDEX

MIN_PROB = 1e-4


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_probs(name: str, probs: Tensor) -> None:
    if probs.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, h, w); got {name} {_shape(probs)}")
    if probs.shape[1] < 2:
        raise ValueError(f"{name} needs C >= 2 classes (background + foreground); got {name} {_shape(probs)}")


def _check_min_prob(min_prob: float) -> None:
    if not 0.0 <= min_prob < 1.0:
        raise ValueError(f"min_prob must be in [0, 1); got {min_prob}")


def sec_probs(logits: Tensor, min_prob: float = MIN_PROB) -> Tensor:
    """Softmax over classes with a probability floor: f = (softmax(x) + m) / (1 + C m).

    logits: (B, C, h, w) -> (B, C, h, w), every entry >= m / (1 + C m) and each pixel summing to 1.

    SEC's released softmax layer adds `min_prob` to every class and renormalises; it is its CRF output that is
    clipped (see `constrain_loss`). Adding is smooth and differs from clipping by O(C m) per entry.
    The floor bounds every -log f by -log(m / (1 + C m)) (~9.2 at m = 1e-4): d(-log f_c)/dx =
    -p_c / (p_c + m) (e_c - p), so a cue the network contradicts with p_c << m stops pulling.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must have shape (B, C, h, w); got logits {_shape(logits)}")
    _check_min_prob(min_prob)
    probs = torch.softmax(logits, dim=1) + min_prob
    return probs / probs.sum(dim=1, keepdim=True)


def seeding_loss(probs: Tensor, cues: Tensor) -> Tensor:
    """SEC seeding loss: -1/|S| sum_{(u, c) in S} log f_{u,c} per image (S: its cues), averaged over images.

    probs: (B, C, h, w) class probabilities f (from `sec_probs`); cues: (B, h, w) long, the cue class of
    each labelled cell and 255 elsewhere. Each image is normalised by its own cue count, so an image with one
    cue weighs as much as one with a hundred; images with no cue are left out of the batch mean. With no cue in
    the whole batch the result is 0, still connected to `probs` (zero gradient). Returns a scalar.
    """
    _check_probs("probs", probs)
    b, c, h, w = probs.shape
    if cues.shape != (b, h, w):
        raise ValueError(
            f"cues must have shape (B, h, w) = {(b, h, w)} to match probs {_shape(probs)}; got cues {_shape(cues)}"
        )
    if cues.dtype.is_floating_point or cues.dtype == torch.bool:
        raise ValueError(f"cues must be an integer tensor of class indices; got dtype {cues.dtype}")
    labelled = cues != IGNORE_INDEX  # (B, h, w)
    if bool(((cues < 0) | (cues >= c))[labelled].any()):
        raise ValueError(f"cues must hold class indices in [0, {c}) or {IGNORE_INDEX}")

    index = torch.where(labelled, cues, torch.zeros_like(cues)).long()
    picked = probs.gather(1, index.unsqueeze(1)).squeeze(1)  # (B, h, w): f_{u, cue(u)}
    # log(1) = 0 off the cues; selecting before the log keeps a zero probability there from making NaN grads.
    log_p = torch.log(torch.where(labelled, picked, torch.ones_like(picked)))

    count = labelled.flatten(1).sum(dim=1)  # (B,)
    per_image = -log_p.flatten(1).sum(dim=1) / count.clamp_min(1)  # (B,), 0 for an image without cues
    has_cues = (count > 0).to(per_image.dtype)
    return (per_image * has_cues).sum() / has_cues.sum().clamp_min(1.0)


def gwrp(values: Tensor, d: float) -> Tensor:
    """SEC global weighted rank pooling over the last dimension.

    G = sum_j d^(j-1) v_(j) / sum_j d^(j-1), with v_(1) >= v_(2) >= ... the values sorted high to low.
    values: (B, N) or (B, C, N) -> (B,) or (B, C). d = 1 is average pooling, d = 0 max pooling (0^0 = 1).
    Differentiable in `values` (the gradient follows the sort).
    """
    if values.ndim not in (2, 3):
        raise ValueError(f"values must have shape (B, N) or (B, C, N); got values {_shape(values)}")
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"d must be in [0, 1]; got {d}")
    n = values.shape[-1]
    if n == 0:
        raise ValueError(f"values must have N >= 1 entries to pool; got values {_shape(values)}")
    # Weights in float64: d^j underflows gracefully to 0 and torch.pow(0, 0) = 1 gives max pooling at d = 0.
    exponents = torch.arange(n, dtype=torch.float64, device=values.device)
    weights = torch.pow(torch.tensor(d, dtype=torch.float64, device=values.device), exponents)
    weights = (weights / weights.sum()).to(values.dtype)  # (N,)
    ranked = values.sort(dim=-1, descending=True).values
    return (ranked * weights).sum(dim=-1)


def expansion_loss(probs: Tensor, labels: Tensor, d_fg: float = 0.996, d_bg: float = 0.999) -> Tensor:
    """SEC expansion loss, built on global weighted rank pooling (`gwrp`).

    probs: (B, C, h, w) class probabilities f; labels: (B, C-1) multi-hot over the foreground classes (float
    or bool; background is always present). Per image, with T the present and T-bar the absent foreground
    classes:
        -1/|T| sum_{c in T} log G_c(d_fg) - 1/|T-bar| sum_{c in T-bar} log(1 - max_u f_{u,c}) - log G_bg(d_bg),
    each class term averaged over its own classes as in SEC's released code (a term with no classes is 0),
    then the mean over the batch. Returns a scalar.
    """
    _check_probs("probs", probs)
    b, c = probs.shape[:2]
    if labels.shape != (b, c - 1):
        raise ValueError(
            f"labels must have shape (B, C-1) = {(b, c - 1)} to match probs {_shape(probs)}; "
            f"got labels {_shape(labels)}"
        )
    present = labels.to(probs.dtype) > 0.5  # (B, C-1)
    absent = ~present
    fg = probs[:, 1:].flatten(2)  # (B, C-1, h*w)
    bg = probs[:, 0].flatten(1)  # (B, h*w)

    # Select before the log so masked-out classes give log(1) = 0 and no NaN gradients.
    g_fg = gwrp(fg, d_fg)  # (B, C-1)
    log_g_fg = torch.log(torch.where(present, g_fg, torch.ones_like(g_fg)))
    term_present = -log_g_fg.sum(dim=1) / present.sum(dim=1).clamp_min(1)  # (B,)

    max_fg = fg.amax(dim=2)  # (B, C-1)
    log_not_max = torch.log1p(-torch.where(absent, max_fg, torch.zeros_like(max_fg)))
    term_absent = -log_not_max.sum(dim=1) / absent.sum(dim=1).clamp_min(1)  # (B,)

    term_bg = -torch.log(gwrp(bg, d_bg))  # (B,)
    return (term_present + term_absent + term_bg).mean()


def constrain_loss(probs: Tensor, crf_probs: Tensor, *, min_prob: float = MIN_PROB) -> Tensor:
    """SEC constrain-to-boundary loss: KL(Q || f) = 1/n sum_u sum_c Q_{u,c} log(Q_{u,c} / f_{u,c}).

    probs: (B, C, h, w) network probabilities f; crf_probs: (B, C, h, w) the dense-CRF output Q for the same
    images at the same resolution. Q is detached (no gradient through the CRF, as in SEC's later release) and,
    like the released CRF layer, clipped at `min_prob` and renormalised before the log. Averaged over images
    and pixels; returns a scalar.
    """
    _check_probs("probs", probs)
    if crf_probs.shape != probs.shape:
        raise ValueError(
            f"crf_probs must have the shape of probs {_shape(probs)}; got crf_probs {_shape(crf_probs)}"
        )
    _check_min_prob(min_prob)
    q = crf_probs.detach().to(probs.dtype).clamp_min(min_prob)
    q = q / q.sum(dim=1, keepdim=True)
    return (q * (torch.log(q) - torch.log(probs))).sum(dim=1).mean()


TERMS = ("seed", "expand", "constrain")


def sec_loss(
    logits: Tensor,
    cues: Tensor | None,
    labels: Tensor | None,
    crf_probs: Tensor | None,
    *,
    terms: tuple[str, ...] = TERMS,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    d_fg: float = 0.996,
    d_bg: float = 0.999,
    min_prob: float = MIN_PROB,
) -> dict[str, Tensor]:
    """SEC objective: w_s L_seed + w_e L_expand + w_c L_constrain on f = sec_probs(logits), over `terms`.

    logits: (B, C, h, w); cues: (B, h, w) long with 255 = no cue; labels: (B, C-1) multi-hot foreground image
    labels; crf_probs: (B, C, h, w) dense-CRF output Q. `terms`: a non-empty subset of ("seed", "expand",
    "constrain") - SEC's loss ablation; a term left out is not computed and its input may be None. Returns
    a scalar for each computed term under its name, and "total", the weighted sum (SEC: weights 1, 1, 1).
    """
    if len(weights) != 3:
        raise ValueError(f"weights must be (seed, expand, constrain); got {weights!r}")
    if not terms or any(t not in TERMS for t in terms) or len(set(terms)) != len(terms):
        raise ValueError(f"terms must be a non-empty subset of {TERMS} without repeats; got {terms!r}")
    inputs = {"seed": cues, "expand": labels, "constrain": crf_probs}
    missing = [t for t in terms if inputs[t] is None]
    if missing:
        raise ValueError(f"loss terms {missing} need their input (cues, labels, crf_probs), got None")
    probs = sec_probs(logits, min_prob)
    compute = {
        "seed": lambda: seeding_loss(probs, cues),
        "expand": lambda: expansion_loss(probs, labels, d_fg=d_fg, d_bg=d_bg),
        "constrain": lambda: constrain_loss(probs, crf_probs, min_prob=min_prob),
    }
    weight = dict(zip(TERMS, weights, strict=True))
    out = {t: compute[t]() for t in TERMS if t in terms}
    out["total"] = sum(weight[t] * v for t, v in out.items())
    return out
