"""What the benchmarks run: the library's own training steps, passes and CRFs on synthetic or real VOC
batches, plus the one thing the library does not have, the public GAIN code's pass structure.

Training steps (the library's losses under autocast, then gain.runtime.loop.optimizer_step, as fit does):
  plain          gain_step_losses(mine=False): the classification stream alone, L_cl (the warm-up step).
  gain           gain_step_losses with params' grad_weights.
  gain_detached  the same with grad_weights = "detached".
  public         gain_detached's step with public GAIN code's pass structure: Grad-CAM's d s^c / d F read
                 per class rank by a full backward through the network with a hook on the trunk's features
                 (hooked_grad in place of torch.autograd.grad), the polluted parameter gradients cleared by
                 the update. Everything else is the library's step, so the comparison isolates that pass.
"""

from __future__ import annotations

import dataclasses
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from benchmarks.timing import interleaved, median_s, raw_ms
from gain.cam.attention import attention_maps, label_pairs
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


def hooked_grad(score: torch.Tensor, feats: torch.Tensor, *, create_graph: bool, retain_graph: bool) -> tuple:
    """torch.autograd.grad(score, feats) as public GAIN code reads it: a full backward through the network
    (`score.backward(retain_graph=True)`; the parameter gradients it leaves are cleared by the update's
    zero_grad) with a hook on the features catching d score / d F. Detached weights only."""
    assert not create_graph and retain_graph, "the public pass structure has detached Grad-CAM weights"
    captured: list[torch.Tensor] = []
    handle = feats.register_hook(captured.append)
    score.backward(retain_graph=True)
    handle.remove()
    return (captured[0],)


def step_fns(trainees: dict[str, Trainee], batch: dict, p: GainParams, rt: Runtime) -> dict[str, Callable]:
    """One full training step per variant; `public` is gain_detached's with hooked_grad for Grad-CAM's."""

    def one(name: str, t: Trainee) -> Callable:
        if name == "public":
            return lambda: public_step(t, batch, p, rt)
        return lambda: step(t, gain_step_losses, batch, p, rt=rt, mine=name != "plain")

    return {name: one(name, t) for name, t in trainees.items()}


def public_step(t: Trainee, batch: dict, p: GainParams, rt: Runtime) -> None:
    with mock.patch("torch.autograd.grad", hooked_grad):
        step(t, gain_step_losses, batch, p, rt=rt)


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
