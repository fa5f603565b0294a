"""The work that benchmarks/run.py times: synthetic batches, training steps and seed passes.

Training steps (each one is forward, losses, backward and the optimizer step of gain/engine.py's `fit`):
  plain   the classifier alone, L_cl.
  gain    GAIN.forward + gain_loss, exactly as gain/pretrain.py's step_fn.
  public  the same objective with the pass structure of public GAIN code: per class, a full backward
          through the whole network (`score.backward(retain_graph=True)`) with a tensor hook on the trunk's
          features to read d s^c / d F, the polluted parameter gradients zeroed, Grad-CAM from those
          (detached) weights, then the masked forward and the real backward. It loops over class ranks
          (the first, second, ... label of every image at once), the same number of score passes as
          gain.cam.attention.grad_cam, so the comparison isolates what each pass runs through.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from gain.cam.attention import EPS, attention_maps, label_pairs, soft_mask
from gain.cam.losses import classification_loss, gain_loss
from gain.cam.model import GAIN, Classifier
from gain.data.synthetic import TEXTURES, SyntheticConfig, render_image
from gain.data.transforms import to_tensor
from gain.runtime.engine import Runtime, collate
from gain.runtime.params import GainParams, SecParams
from gain.sec.model import LargeFOV
from gain.sec.train import sec_step_losses

LossFn = Callable[[], torch.Tensor]


def synthetic_items(n: int, *, size: int, num_fg: int, seed: int = 0) -> list[dict]:
    """n rendered images with 1..3 distinct classes each (mean ~2 labels over `num_fg` classes).

    Items look like VOCDataset's with keep_original=True: image (3, H, W) normalised, label (num_fg,)
    float, mask (H, W) long (0 background, 1..num_fg, 255 void), orig_mask (H, W) uint8, id.
    """
    cfg = SyntheticConfig(num_classes=num_fg, image_size=size, seed=seed)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        classes = rng.choice(np.arange(1, num_fg + 1), size=int(rng.integers(1, 4)), replace=False)
        r = render_image(rng, cfg, classes, TEXTURES[i % len(TEXTURES)])
        label = np.zeros(num_fg, dtype=np.float32)
        label[[o.cls - 1 for o in r.objects]] = 1.0  # the classes actually drawn (a few get dropped)
        items.append(
            {
                "image": to_tensor(r.image),
                "label": torch.from_numpy(label),
                "mask": torch.from_numpy(r.mask.astype(np.int64)),
                "orig_mask": r.mask,
                "id": f"bench_{i:03d}",
            }
        )
    return items


def mean_labels(labels: torch.Tensor) -> float:
    return float(labels.sum(dim=1).float().mean())


# ------------------------------------------------------------------------------------------- GAIN steps
@dataclass
class Trainee:
    """One step variant's own model copy and optimizer (gain/pretrain.py's SGD with the 10x head group)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer


def trainee(model: torch.nn.Module, classifier: Classifier, p: GainParams) -> Trainee:
    optimizer = torch.optim.SGD(classifier.param_groups(p.weight_decay), lr=p.lr, momentum=p.momentum)
    return Trainee(model, optimizer)


VARIANTS = ("plain", "gain", "gain_detached", "public")


def build_trainees(
    classifier: Classifier, p: GainParams, rt: Runtime, *, names: tuple[str, ...] = VARIANTS
) -> dict[str, Trainee]:
    """plain, gain (params' grad_weights), gain_detached and public, each from a copy of `classifier`."""

    def copy_of() -> Classifier:
        clf = copy.deepcopy(classifier).to(rt.device).train()
        return clf.to(memory_format=torch.channels_last) if rt.channels_last else clf

    def gain_of(differentiable: bool) -> GAIN:
        return GAIN(
            copy_of(),
            sigma=p.sigma,
            omega=p.omega,
            differentiable=differentiable,
            masked_bn=p.masked_bn,
            erase=p.erase,
            am_grad=p.am_grad,
        )

    out = {}
    if "plain" in names:
        plain = copy_of()
        out["plain"] = trainee(plain, plain, p)
    for name, differentiable in (
        ("gain", p.grad_weights == "differentiable"),
        ("gain_detached", False),
        ("public", False),
    ):
        if name in names:
            g = gain_of(differentiable)
            out[name] = trainee(g, g.classifier, p)
    return out


def plain_loss(model: Classifier, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> torch.Tensor:
    with rt.autocast():
        return classification_loss(model(x), y)


def gain_total(model: GAIN, x: torch.Tensor, y: torch.Tensor, rt: Runtime, *, alpha: float) -> torch.Tensor:
    """gain/pretrain.py step_fn (after warm-up: alpha = params' alpha), inside fit's autocast."""
    with rt.autocast():
        out = model(x, y)
        return gain_loss(out, y, alpha=alpha)["total"]


def public_total(model: GAIN, x: torch.Tensor, y: torch.Tensor, rt: Runtime, *, alpha: float) -> torch.Tensor:
    """GAIN's loss with public implementations' pass structure (see the module docstring).

    Same semantics as GAIN(differentiable=False): detached Grad-CAM weights, A still a function of F.
    Only the default masked_bn="batch", erase="mean", am_grad="all" are implemented.
    """
    if (model.masked_bn, model.erase, model.am_grad) != ("batch", "mean", "all"):
        raise ValueError("public_total implements masked_bn=batch, erase=mean, am_grad=all only")
    clf = model.classifier
    with rt.autocast():
        feats = clf.features(x)  # (B, K, h, w)
        logits = clf.head(feats)  # (B, C-1)
    pair_image, pair_class = label_pairs(y)
    first = torch.searchsorted(pair_image, pair_image)
    rank = torch.arange(pair_image.numel(), device=x.device) - first  # class rank within its image
    captured: list[torch.Tensor] = []
    handle = feats.register_hook(captured.append)  # d score / d F, seen on the way through
    weights = torch.zeros(pair_image.numel(), feats.shape[1], device=x.device, dtype=feats.dtype)  # (P, K)
    for r in range(int(rank.max()) + 1 if rank.numel() else 0):
        sel = (rank == r).nonzero(as_tuple=True)[0]
        score = logits[pair_image[sel], pair_class[sel]].sum()
        score.backward(retain_graph=True)  # runs on through the trunk: every parameter gets a .grad
        weights[sel] = captured.pop()[pair_image[sel]].mean(dim=(2, 3)).to(weights.dtype)
    handle.remove()
    clf.zero_grad(set_to_none=True)  # those .grad were only a by-product
    with rt.autocast():
        cam = F.relu((weights[:, :, None, None] * feats[pair_image]).sum(dim=1))  # (P, h, w)
        lo = cam.flatten(1).min(dim=1).values[:, None, None]
        hi = cam.flatten(1).max(dim=1).values[:, None, None]
        attn = (cam - lo) / (hi - lo + EPS)
        out = {"logits": logits, "attn": attn, "pair_image": pair_image, "pair_class": pair_class}
        if pair_image.numel():
            t = soft_mask(attn, x.shape[-2:], sigma=model.sigma, omega=model.omega)
            src = x[pair_image]
            out["masked_logits"] = clf(src - t * src)  # Eq. 3, erase="mean"
        return gain_loss(out, y, alpha=alpha)["total"]


def loss_fns(
    trainees: dict[str, Trainee], x: torch.Tensor, y: torch.Tensor, rt: Runtime, alpha: float
) -> dict[str, LossFn]:
    fns = {}
    if "plain" in trainees:
        fns["plain"] = lambda: plain_loss(trainees["plain"].model, x, y, rt)
    for name in ("gain", "gain_detached"):
        if name in trainees:
            fns[name] = lambda m=trainees[name].model: gain_total(m, x, y, rt, alpha=alpha)
    if "public" in trainees:
        fns["public"] = lambda: public_total(trainees["public"].model, x, y, rt, alpha=alpha)
    return fns


def update(t: Trainee, loss: torch.Tensor) -> None:
    """gain/engine.py fit's update."""
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t.optimizer.step()


def step_fns(
    trainees: dict[str, Trainee], x: torch.Tensor, y: torch.Tensor, rt: Runtime, alpha: float
) -> dict[str, Callable[[], None]]:
    """One full training step per variant: loss, backward, optimizer step."""
    return {
        name: (lambda t=trainees[name], f=fn: update(t, f()))
        for name, fn in loss_fns(trainees, x, y, rt, alpha).items()
    }


def public_vs_ours(
    classifier: Classifier, p: GainParams, x: torch.Tensor, y: torch.Tensor, rt: Runtime
) -> dict:
    """One step's loss and parameter gradients of `public` and `gain_detached` from the same weights."""
    trainees = build_trainees(classifier, p, rt, names=("gain_detached", "public"))
    fns = loss_fns(trainees, x, y, rt, p.alpha)
    res = {}
    for name in ("gain_detached", "public"):
        t = trainees[name]
        t.optimizer.zero_grad(set_to_none=True)
        loss = fns[name]()
        loss.backward()
        res[name] = (loss.detach().float(), [q.grad.float() for q in t.model.parameters()])
    (la, ga), (lb, gb) = res["gain_detached"], res["public"]
    scale = max(float(g.abs().max()) for g in ga)
    return {
        "loss_abs_diff": float((la - lb).abs()),
        "grad_max_abs_diff_rel": max(float((a - b).abs().max()) for a, b in zip(ga, gb, strict=True)) / scale,
    }


# ------------------------------------------------------------------------------------------- seed passes
def seeds_batched(
    classifier: Classifier, items: list[dict], rt: Runtime, *, batch_size: int, flip: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """gain.seeds.image_attention: every class of a batch in one attention_maps call."""
    from gain.seeds.extract import image_attention

    return [(a, c) for _, a, c in image_attention(classifier, items, rt, batch_size=batch_size, flip=flip)]


def seeds_per_class(
    classifier: Classifier, items: list[dict], rt: Runtime, *, batch_size: int, flip: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same output as `seeds_batched`, one attention_maps call per class of each batch, each on the
    images that hold that class with single-class labels."""
    out = []
    for start in range(0, len(items), batch_size):
        batch = collate(items[start : start + batch_size])
        x, labels = batch["image"].to(rt.device), batch["label"].to(rt.device)
        maps: dict[tuple[int, int], torch.Tensor] = {}  # (image, class) -> (H, W)
        for c in labels.any(dim=0).nonzero(as_tuple=True)[0].tolist():
            rows = labels[:, c].nonzero(as_tuple=True)[0]
            single = torch.zeros_like(labels[rows])
            single[:, c] = 1.0
            with rt.autocast():
                attn, pair_image, _ = attention_maps(classifier, x[rows], single, flip=flip)
            for a, i in zip(attn.float(), pair_image.tolist(), strict=True):
                maps[(int(rows[i]), c)] = a
        for b in range(x.shape[0]):
            classes = sorted(c for i, c in maps if i == b)
            h, w = batch["orig_mask"][b].shape
            if not classes:
                out.append((np.zeros((0, h, w), np.float32), np.zeros(0, np.int64)))
                continue
            a = torch.stack([maps[(b, c)] for c in classes])
            a = F.interpolate(a[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            out.append((a.clamp(0, 1).cpu().numpy(), np.asarray(classes) + 1))
    return out


# ------------------------------------------------------------------------------------------- SEC step
def sec_trainee(num_classes: int, p: SecParams, rt: Runtime) -> Trainee:
    model = LargeFOV(p.backbone, num_classes).to(rt.device).train()
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.param_groups(p.weight_decay), lr=p.lr, momentum=p.momentum)
    return Trainee(model, optimizer)


def sec_step(t: Trainee, pool, batch: dict, p: SecParams, rt: Runtime) -> None:
    """gain/segment.py train_sec's step (CRF Q from `pool`), then fit's update."""
    with rt.autocast():
        losses = sec_step_losses(t.model, batch, pool, p, rt)
    update(t, losses["total"])
