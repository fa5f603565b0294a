"""What the benchmarks run: the library's own training steps and passes on synthetic or real VOC batches,
plus the one thing the library does not have, the public GAIN code's pass structure.

Training steps (forward and losses under autocast, then zero_grad, backward and the optimizer step, as
gain.runtime.loop.fit does):
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
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from gain.cam.attention import EPS, attention_maps, label_pairs, soft_mask
from gain.cam.losses import gain_loss
from gain.cam.model import GAIN, build_gain
from gain.cam.train import gain_step_losses
from gain.data.dataset import DatasetIndex, build_index
from gain.data.synthetic import TEXTURES, SyntheticConfig, render_image
from gain.data.transforms import to_tensor
from gain.runtime.device import Runtime
from gain.runtime.loaders import collate
from gain.runtime.loop import sgd
from gain.runtime.params import GainParams, SecParams
from gain.sec.model import LargeFOV
from gain.sec.train import sec_step_losses
from gain.seeds.extract import image_attention

REPO = Path(__file__).resolve().parents[1]
VOC_SAMPLE = REPO / "tests" / "data" / "VOCdevkit" / "VOC2012"  # five real VOC 2012 images with masks
VARIANTS = ("plain", "gain", "gain_detached", "public")


def synthetic_items(n: int, *, size: int, num_fg: int, seed: int = 0) -> list[dict]:
    """n rendered images with 1..3 distinct classes each (mean ~2 labels over `num_fg` classes), as
    VOCDataset(keep_original=True) yields them: image, label, mask, has_mask, orig_mask, id."""
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
                "has_mask": True,
                "orig_mask": r.mask,
                "id": f"bench_{i:03d}",
            }
        )
    return items


def voc_index(root: Path = VOC_SAMPLE, *, repeat: int = 1) -> DatasetIndex:
    """The index of a VOC-layout folder's images (labels from their masks), every role listing them all,
    `repeat` times over (to fill batches from a few images)."""
    ids = sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg"))
    index = build_index(root, "voc", {"weak_train": ids, "seed_eval": ids, "val": ids})
    return index.with_meta(splits={k: v * repeat for k, v in index.splits.items()})


def mean_labels(labels: torch.Tensor) -> float:
    return float(labels.sum(dim=1).float().mean())


# ------------------------------------------------------------------------------------------- steps
@dataclass
class Trainee:
    """A model with its optimizer (SGD over the model's own parameter groups, as the stages build it)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer


def update(t: Trainee, loss: torch.Tensor) -> None:
    """fit's update."""
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t.optimizer.step()


def gain_trainee(p: GainParams, num_fg: int, rt: Runtime, *, seed: int) -> Trainee:
    """build_gain(p) from `seed` (so trainees built from one seed start from the same weights)."""
    torch.manual_seed(seed)
    model = build_gain(p, num_fg).to(rt.device).train()
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Trainee(model, sgd(model.classifier.param_groups(p.weight_decay), lr=p.lr, momentum=p.momentum))


def build_trainees(p: GainParams, num_fg: int, rt: Runtime, *, seed: int, names=VARIANTS) -> dict:
    detached = dataclasses.replace(p, grad_weights="detached")
    config = {"plain": p, "gain": p, "gain_detached": detached, "public": detached}
    return {name: gain_trainee(config[name], num_fg, rt, seed=seed) for name in names}


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
            src = x[pair_image]
            out["masked_logits"] = clf(
                src - soft_mask(attn, x.shape[-2:], sigma=model.sigma, omega=model.omega) * src
            )
        return gain_loss(out, y, alpha=alpha)["total"]


def loss_fns(trainees: dict[str, Trainee], batch: dict, p: GainParams, rt: Runtime) -> dict[str, Callable]:
    """Each variant's total loss on `batch` (autocast inside, as fit's)."""

    def library(t: Trainee, mine: bool) -> torch.Tensor:
        with rt.autocast():
            return gain_step_losses(t.model, batch, p, rt, mine=mine)["total"]

    fns = {
        name: (lambda t=t, mine=name != "plain": library(t, mine))
        for name, t in trainees.items()
        if name != "public"
    }
    if "public" in trainees:
        fns["public"] = lambda: public_total(trainees["public"].model, batch, rt, alpha=p.alpha)
    return fns


def step_fns(trainees: dict[str, Trainee], batch: dict, p: GainParams, rt: Runtime) -> dict[str, Callable]:
    """One full training step per variant: loss, backward, optimizer step."""
    return {
        name: (lambda t=trainees[name], f=fn: update(t, f()))
        for name, fn in loss_fns(trainees, batch, p, rt).items()
    }


def public_vs_ours(p: GainParams, num_fg: int, batch: dict, rt: Runtime, *, seed: int) -> dict:
    """One step's loss and parameter gradients of `public` and `gain_detached` from the same weights."""
    trainees = build_trainees(p, num_fg, rt, seed=seed, names=("gain_detached", "public"))
    res = {}
    for name, fn in loss_fns(trainees, batch, p, rt).items():
        loss = fn()
        loss.backward()
        res[name] = (loss.detach().float(), [q.grad.float() for q in trainees[name].model.parameters()])
    (la, ga), (lb, gb) = res["gain_detached"], res["public"]
    scale = max(float(g.abs().max()) for g in ga)
    return {
        "loss_abs_diff": float((la - lb).abs()),
        "grad_max_abs_diff_rel": max(float((a - b).abs().max()) for a, b in zip(ga, gb, strict=True)) / scale,
    }


def sec_trainee(p: SecParams, num_classes: int, rt: Runtime) -> Trainee:
    model = LargeFOV(p.backbone, num_classes).to(rt.device).train()
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Trainee(model, sgd(model.param_groups(p.weight_decay), lr=p.lr, momentum=p.momentum))


def sec_step(t: Trainee, pool, batch: dict, p: SecParams, rt: Runtime) -> None:
    """train_sec's step (CRF Q from `pool`), then fit's update."""
    with rt.autocast():
        losses = sec_step_losses(t.model, batch, pool, p, rt)
    update(t, losses["total"])


# ------------------------------------------------------------------------------------------- seed passes
def seeds_batched(classifier, items: list[dict], rt: Runtime, *, batch_size: int, flip: bool) -> list:
    """gain.seeds.extract.image_attention: every class of a batch in one attention_maps call."""
    return [(a, c) for _, a, c in image_attention(classifier, items, rt, batch_size=batch_size, flip=flip)]


def seeds_per_class(classifier, items: list[dict], rt: Runtime, *, batch_size: int, flip: bool) -> list:
    """The baseline: the same maps from one attention_maps call per class of each batch, each on the
    images that hold that class with single-class labels."""
    out = []
    for start in range(0, len(items), batch_size):
        batch = collate(items[start : start + batch_size])
        x, labels = rt.to_device(batch["image"]), batch["label"].to(rt.device)
        maps: dict[tuple[int, int], torch.Tensor] = {}  # (image, class) -> (H, W)
        for c in labels.any(dim=0).nonzero(as_tuple=True)[0].tolist():
            rows = labels[:, c].nonzero(as_tuple=True)[0]
            single = torch.zeros_like(labels[rows])
            single[:, c] = 1.0
            with torch.no_grad(), rt.autocast():
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


# ------------------------------------------------------------------------------------------- pipeline
def pipeline_copy(dest: Path) -> tuple[Path, dict]:
    """A fresh git copy of the project's files (no outputs, no store) with params.yaml as it is, and the
    environment `dvc repro` runs in there. -> (repo, env)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for f in listed:
        if (REPO / f).is_file() and not f.startswith(("reports/", "dvc.lock")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    (dest / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "GAIN_"))}
    env |= {"DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(dest / ".dvc_site_cache")}
    env |= {
        "OMP_NUM_THREADS": str(os.cpu_count() or 1)
    }  # the stages use every core, whatever this shell says
    env |= {
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    }
    env |= {
        f"GIT_{who}_{what}": v
        for who in ("AUTHOR", "COMMITTER")
        for what, v in (("NAME", "bench"), ("EMAIL", "bench@example.com"))
    }
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "benchmark copy"], cwd=dest, check=True, env=env)
    return dest, env
