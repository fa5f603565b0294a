"""Why GAIN does (not) move its attention: erased-image scores, part/body coverage, the attention ceiling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from gain.cam.attention import FG_FRACTION, attention_maps
from gain.cam.evaluate import AttentionIoU
from gain.data.dataset import VOCDataset
from gain.runtime.engine import Runtime, eval_loader
from gain.runtime.io import read_label_png

PART_FOLDER = (
    "SegmentationPart"  # the synthetic generator's discriminative-part labels (class id on part pixels)
)


def part_masks(dataset: VOCDataset, ids: list[str], size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) long: each image's part labels (class id on discriminative-part pixels, else 0), resized
    (nearest) to `size`; all zero for an image the generator wrote no part file for."""
    out = []
    for image_id in ids:
        path = Path(dataset.index.root) / PART_FOLDER / f"{image_id}.png"
        if path.is_file():
            m = torch.from_numpy(read_label_png(path).astype(np.int64))
            m = F.interpolate(m[None, None].float(), size=size, mode="nearest")[0, 0].long()
        else:
            m = torch.zeros(size, dtype=torch.long)
        out.append(m)
    return torch.stack(out)


def rolled(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(P, 1, H, W) masks, each circularly shifted by a random offset of a quarter to three quarters of the
    image: the same shape and erased area, somewhere else."""
    h, w = t.shape[-2:]
    out = torch.empty_like(t)
    for i in range(t.shape[0]):
        dy = int(torch.randint(h // 4, 3 * h // 4 + 1, (1,), generator=gen))
        dx = int(torch.randint(w // 4, 3 * w // 4 + 1, (1,), generator=gen))
        out[i] = t[i].roll((dy, dx), dims=(-2, -1))
    return out


@torch.no_grad()
def attention_diagnostics(
    gain, dataset: VOCDataset, rt: Runtime, *, batch_size: int = 32, seed: int = 0
) -> dict:
    """Measurements of a GAIN module (classifier + its soft mask and erase rule) on `dataset` (eval preset):

    s_clean, s_masked, s_random: mean sigmoid score of each present class on I, on I* (its own attention
    erased, T = sigmoid(omega (A - sigma)), Eq. 3-4) and on I with the same mask rolled elsewhere (equal
    area, random place); the classifier in eval mode (running BN statistics).
    part_cov, body_cov: share of the class's discriminative-part / body (object minus part) pixels inside the
    binarised attention (> FG_FRACTION of the map's max); spill: share of binarised attention outside the
    class's object. erase_part, erase_body, erase_bg: mean T on those pixels (how much I* really erases).
    """
    clf = gain.classifier
    clf.eval()
    gen = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(("s_clean", "s_masked", "s_random", "erase_part", "erase_body", "erase_bg"), 0.0)
    counts = dict.fromkeys(("part", "body", "part_hit", "body_hit", "att", "att_out"), 0.0)
    n_pairs = 0
    ebody = epart = ebg = 0.0
    for batch in eval_loader(dataset, batch_size):
        x = rt.to_device(batch["image"])
        y = batch["label"].to(rt.device)
        with rt.autocast():
            attn, pi, pc = attention_maps(clf, x, y)
        if pi.numel() == 0:
            continue
        attn = attn.float()
        t = torch.sigmoid(gain.omega * (attn - gain.sigma))[:, None]
        src = x[pi]
        with rt.autocast():
            s_clean = torch.sigmoid(clf(src).float())
            s_masked = torch.sigmoid(clf(gain.erase_region(src, t)).float())
            s_random = torch.sigmoid(clf(gain.erase_region(src, rolled(t, gen))).float())
        rows = torch.arange(pi.numel(), device=pi.device)
        sums["s_clean"] += float(s_clean[rows, pc].sum())
        sums["s_masked"] += float(s_masked[rows, pc].sum())
        sums["s_random"] += float(s_random[rows, pc].sum())
        n_pairs += pi.numel()
        masks = batch["mask"].to(rt.device)[pi]
        parts = part_masks(dataset, [batch["id"][i] for i in pi.tolist()], tuple(x.shape[-2:])).to(rt.device)
        cls = (pc + 1)[:, None, None]
        obj = masks == cls
        part = (parts == cls) & obj
        body = obj & ~part
        bg = (masks != 255) & ~obj
        binar = attn > FG_FRACTION * attn.flatten(1).max(dim=1).values[:, None, None]
        counts["part"] += float(part.sum())
        counts["body"] += float(body.sum())
        counts["part_hit"] += float((binar & part).sum())
        counts["body_hit"] += float((binar & body).sum())
        counts["att"] += float(binar.sum())
        counts["att_out"] += float((binar & ~obj).sum())
        tt = t[:, 0]
        sums["erase_part"] += float(tt[part].sum())
        sums["erase_body"] += float(tt[body].sum())
        sums["erase_bg"] += float(tt[bg].sum())
        epart += float(part.sum())
        ebody += float(body.sum())
        ebg += float(bg.sum())

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else 0.0

    return {
        "s_clean": ratio(sums["s_clean"], n_pairs),
        "s_masked": ratio(sums["s_masked"], n_pairs),
        "s_random": ratio(sums["s_random"], n_pairs),
        "part_cov": ratio(counts["part_hit"], counts["part"]),
        "body_cov": ratio(counts["body_hit"], counts["body"]),
        "spill": ratio(counts["att_out"], counts["att"]),
        "erase_part": ratio(sums["erase_part"], epart),
        "erase_body": ratio(sums["erase_body"], ebody),
        "erase_bg": ratio(sums["erase_bg"], ebg),
    }


@torch.no_grad()
def attention_ceiling(dataset: VOCDataset, grid: tuple[int, int], *, batch_size: int = 32) -> float:
    """The best attention mIoU a map on the classifier's `grid` can reach: each class's ground-truth mask
    average-pooled to the grid, upsampled back (bilinear) and scored like attention (AttentionIoU)."""
    score = AttentionIoU(dataset.index.num_classes - 1)
    for batch in eval_loader(dataset, batch_size):
        masks = batch["mask"]
        size = tuple(masks.shape[-2:])
        for b, (m, label) in enumerate(zip(masks, batch["label"], strict=True)):
            if not batch["has_mask"][b]:
                continue
            for c in torch.nonzero(label)[:, 0].tolist():
                gt = ((m == c + 1) & (m != 255)).float()[None, None]
                pooled = F.adaptive_avg_pool2d(gt, grid)
                up = F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)[0, 0]
                score.update(up.numpy(), m.numpy(), c)
    return score.compute()
