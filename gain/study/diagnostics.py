"""Why GAIN does (not) move its attention: erased-image scores, how much of each region I* erases, the
attention ceiling (part/body coverage is gain.cam.evaluate.AttentionCoverage, scored every epoch)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from gain.cam.attention import attention_maps
from gain.cam.evaluate import AttentionIoU, part_masks
from gain.data.dataset import VOCDataset
from gain.runtime.device import Runtime
from gain.runtime.loaders import eval_loader


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
    erase_part, erase_body, erase_bg: mean T on the class's discriminative part, its body (object minus part)
    and labelled pixels off the object (how much I* really erases).
    """
    clf = gain.classifier
    clf.eval()
    gen = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(("s_clean", "s_masked", "s_random", "erase_part", "erase_body", "erase_bg"), 0.0)
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
