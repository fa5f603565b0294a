"""What the benchmarks run: the library's own training steps, passes and CRFs on synthetic or real VOC
batches, plus the one thing the library does not have, the public GAIN code's pass structure.

Training steps (the library's losses under autocast, then gain.runtime.loop.optimizer_step, as fit does):
  plain          gain_step_losses(mine=False): the classification stream alone, L_cl (the warm-up step).
  gain           gain_step_losses with params' grad_weights.
  gain_detached  the same with grad_weights = "detached".
  public         the same objective with public GAIN code's pass structure: per class rank a full backward
                 through the network (`score.backward(retain_graph=True)`) with a hook on the trunk's features
                 to read d s^c / d F, the polluted parameter gradients zeroed, Grad-CAM from those (detached)
                 weights, then the masked forward and the real backward. It loops over class ranks as
                 gain.cam.attention.grad_cam does, so the comparison isolates what each pass runs through.
"""

from __future__ import annotations

import dataclasses
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from benchmarks.timing import interleaved, median_s, raw_ms
from gain.cam.attention import EPS, attention_maps, label_pairs, soft_mask
from gain.cam.losses import gain_loss
from gain.cam.model import GAIN, build_gain
from gain.cam.train import gain_step_losses
from gain.data.dataset import DatasetIndex, build_index
from gain.data.synthetic import TEXTURES, SyntheticConfig, render_image
from gain.data.transforms import to_tensor
from gain.runtime.device import Runtime
from gain.runtime.loop import optimizer_step, sgd
from gain.runtime.params import GainParams, SecParams
from gain.sec.crf import CRFPool
from gain.sec.crf_exact import ExactCRF

REPO = Path(__file__).resolve().parents[1]
VOC_SAMPLE = REPO / "tests" / "data" / "VOCdevkit" / "VOC2012"  # five real VOC 2012 images with masks
VARIANTS = ("plain", "gain", "gain_detached", "public")


def synthetic_items(n: int, *, size: int, num_fg: int, seed: int = 0) -> list[dict]:
    """n rendered images with 1..3 distinct classes each (mean ~2 labels over `num_fg` classes), as
    VOCDataset(keep_original=True) yields them: image, label, mask, has_mask, orig_mask, id."""
    cfg, rng = SyntheticConfig(num_classes=num_fg, image_size=size, seed=seed), np.random.default_rng(seed)
    items = []
    for i in range(n):
        classes = rng.choice(np.arange(1, num_fg + 1), size=int(rng.integers(1, 4)), replace=False)
        r = render_image(rng, cfg, classes, TEXTURES[i % len(TEXTURES)])
        label = torch.zeros(num_fg)
        label[[o.cls - 1 for o in r.objects]] = 1.0  # the classes actually drawn (a few get dropped)
        mask = torch.from_numpy(r.mask.astype(np.int64))
        items.append({"image": to_tensor(r.image), "label": label, "mask": mask, "has_mask": True})
        items[-1] |= {"orig_mask": r.mask, "id": f"bench_{i:03d}"}
    return items


def voc_index(root: Path = VOC_SAMPLE) -> DatasetIndex:
    """The index of a VOC-layout folder's images (labels from their masks), every role listing them all."""
    ids = sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg"))
    return build_index(root, "voc", {"weak_train": ids, "seed_eval": ids, "val": ids})


def random_log_probs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 log-softmax over the class axis (third from last) of confident random logits."""
    return torch.log_softmax(torch.from_numpy(3.0 * rng.standard_normal(shape)), dim=-3).float().numpy()


# ------------------------------------------------------------------------------------------- steps
Trainee = namedtuple("Trainee", "model optimizer")


def trainee(model: torch.nn.Module, p: GainParams | SecParams, rt: Runtime) -> Trainee:
    """`model` placed on the device in training mode, with SGD over its own parameter groups, as the stages
    build it."""
    model = rt.place(model).train()
    groups = (model.classifier if isinstance(model, GAIN) else model).param_groups(p.weight_decay)
    return Trainee(model, sgd(groups, lr=p.lr, momentum=p.momentum))


def build_trainees(p: GainParams, num_fg: int, rt: Runtime, *, seed: int, names=VARIANTS) -> dict:
    """build_gain per variant, each from `seed` (so all start from the same weights)."""
    detached = dataclasses.replace(p, grad_weights="detached")
    config = {"plain": p, "gain": p, "gain_detached": detached, "public": detached}
    out = {}
    for name in names:
        torch.manual_seed(seed)
        out[name] = trainee(build_gain(config[name], num_fg), config[name], rt)
    return out


def step(t: Trainee, losses: Callable, *args, rt: Runtime, **kw) -> None:
    """fit's step on `t`: a library step's losses (gain_step_losses, sec_step_losses) under autocast, then
    fit's update."""
    with rt.autocast():
        loss = losses(t.model, *args, rt, **kw)["total"]
    optimizer_step(loss, t.optimizer)


def public_total(model: GAIN, batch: dict, rt: Runtime, *, alpha: float) -> torch.Tensor:
    """GAIN's loss with public implementations' pass structure (see the module docstring); the semantics of
    GAIN(differentiable=False) with the default masked_bn="batch", erase="mean", am_grad="all"."""
    if (model.masked_bn, model.erase, model.am_grad) != ("batch", "mean", "all"):
        raise ValueError("public_total implements masked_bn=batch, erase=mean, am_grad=all only")
    clf = model.classifier
    x, y = rt.to_device(batch["image"]), batch["label"].to(rt.device)
    with rt.autocast():
        feats = clf.features(x)  # (B, K, h, w)
        logits = clf.head(feats)  # (B, C-1)
    pair_image, pair_class = label_pairs(y)
    rank = torch.arange(pair_image.numel(), device=x.device) - torch.searchsorted(pair_image, pair_image)
    captured: list[torch.Tensor] = []
    handle = feats.register_hook(captured.append)  # d score / d F, seen on the way through
    weights = torch.zeros(pair_image.numel(), feats.shape[1], device=x.device, dtype=feats.dtype)  # (P, K)
    for r in range(int(rank.max()) + 1 if rank.numel() else 0):
        sel = (rank == r).nonzero(as_tuple=True)[0]
        logits[pair_image[sel], pair_class[sel]].sum().backward(retain_graph=True)  # through the whole trunk
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
            mask = soft_mask(attn, x.shape[-2:], sigma=model.sigma, omega=model.omega)
            out["masked_logits"] = clf(model.erase_region(x[pair_image], mask))
        return gain_loss(out, y, alpha=alpha)["total"]


def step_fns(trainees: dict[str, Trainee], batch: dict, p: GainParams, rt: Runtime) -> dict[str, Callable]:
    """One full training step per variant: its loss, then fit's update."""

    def one(name: str, t: Trainee) -> Callable:
        if name == "public":
            return lambda: optimizer_step(public_total(t.model, batch, rt, alpha=p.alpha), t.optimizer)
        return lambda: step(t, gain_step_losses, batch, p, rt=rt, mine=name != "plain")

    return {name: one(name, t) for name, t in trainees.items()}


# ------------------------------------------------------------------------------------------- CRFs
def crf_rates(images, log_probs, scale: float, pools, device: torch.device, rounds: int) -> tuple[dict, dict]:
    """CRFs per second on one batch ((B, h, w, 3) uint8, (B, C, h, w) float32 log-probabilities): pydensecrf
    in-line ("inline") and in pools of each size in `pools`, and the exact CRF batched on `device`
    ("exact"), interleaved. -> (rates, raw ms)."""
    backends = {"inline": CRFPool(0), **{str(n): CRFPool(n) for n in pools}}
    tensors, exact = [torch.from_numpy(a).to(device) for a in (images, log_probs)], ExactCRF()
    fns = {k: (lambda b=b: b.map(images, log_probs, scale)) for k, b in backends.items()}
    fns["exact"] = lambda: exact.run(*tensors, scale)
    try:
        for b in backends.values():
            b.warm_up()
        times = interleaved(fns, rounds, device, warmup=1)
    finally:
        for b in backends.values():
            b.close()
    return {k: len(images) / v for k, v in median_s(times).items()}, raw_ms(times)


# ------------------------------------------------------------------------------------------- seed passes
def attention_per_class(classifier, x: torch.Tensor, labels: torch.Tensor, *, flip: bool, size=None):
    """attention_maps' result from one call per class of the batch, each on the images that hold that class
    labelled with it alone: the baseline the seed pass is timed against with this in place of attention_maps
    (gain.seeds.extract's), so the rest of the pass is the same."""
    maps = {}  # (image, class) -> (H, W)
    for c in labels.any(dim=0).nonzero(as_tuple=True)[0].tolist():
        rows = labels[:, c].nonzero(as_tuple=True)[0]
        single = torch.zeros_like(labels[rows])
        single[:, c] = 1.0
        attn, pair_image, _ = attention_maps(classifier, x[rows], single, flip=flip, size=size)
        maps |= {(int(rows[i]), c): a for a, i in zip(attn, pair_image.tolist(), strict=True)}
    pair_image, pair_class = label_pairs(labels)
    attn = [maps[(i, c)] for i, c in zip(pair_image.tolist(), pair_class.tolist(), strict=True)]
    return torch.stack(attn) if attn else x.new_zeros((0, *(size or x.shape[-2:]))), pair_image, pair_class
