"""Scoring a SEC network: predictions at original resolution, with and without SEC's test-time dense CRF,
into one confusion matrix per variant (used by training-time validation and by the `evaluate` stage)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from gain.data.dataset import VOCDataset
from gain.evaluation.metrics import ConfusionMatrix
from gain.runtime.device import Runtime
from gain.runtime.loaders import eval_loader
from gain.sec.crf import CRFPool, CRFResult
from gain.sec.scale import inference_crf_scale, resolve

TEST_PROB_FLOOR = 1e-5  # SEC's demo floors the upsampled probabilities before the log of the CRF unary


@torch.no_grad()
def predict(model, dataset: VOCDataset, rt: Runtime, *, batch_size: int = 8):
    """Yield (item, probs (C, H, W) float32 at the image's original resolution), argmax left to the caller.
    As SEC's deploy/demo.py: softmax at the output resolution, then the probabilities (not the logits)
    zoomed bilinearly, with the corner pixels aligned (scipy's zoom, order 1) when the network's grid spans
    its input corner to corner (`model.align_corners`: VGG16-LargeFOV at 321), else at half-pixel centres
    (the small trunk). dataset: a VOCDataset with keep_original=True."""
    model.eval()
    for batch in eval_loader(dataset, batch_size):
        with rt.autocast():
            logits = model(rt.to_device(batch["image"])).float()
        probs = torch.softmax(logits, dim=1)  # (B, C, h, w)
        for b in range(probs.shape[0]):
            h, w = batch["orig_mask"][b].shape
            up = F.interpolate(
                probs[b : b + 1], size=(h, w), mode="bilinear", align_corners=model.align_corners
            )
            yield {k: v[b] for k, v in batch.items()}, up[0].cpu().numpy()


def crf_unary(probs: np.ndarray) -> np.ndarray:
    """The test-time CRF's log-probabilities from upsampled probabilities: log(max(p, 1e-5)), float32."""
    return np.log(np.maximum(probs, TEST_PROB_FLOOR)).astype(np.float32)


def submit_crf(pool: CRFPool, image: np.ndarray, probs: np.ndarray, scale: float) -> CRFResult:
    """Start SEC's test-time CRF on one image: (H, W, 3) uint8 and its upsampled probabilities (C, H, W)
    from `predict`, the unary `crf_unary(probs)`, spatial stds divided by `scale`. `crf_labels` reads the
    result. The evaluate stage and gain.predict both go through here."""
    return pool.submit(np.ascontiguousarray(image)[None], crf_unary(probs)[None], scale)


def crf_labels(job: CRFResult) -> np.ndarray:
    """(H, W) uint8 argmax of a `submit_crf` job's marginals (waits for it)."""
    return job.get()[0].argmax(0).astype(np.uint8)


def in_flight(jobs, pool: CRFPool | None):
    """Yield (key, crf_labels(job)) for an iterable of (key, submit_crf job), in order, pulling new jobs while
    at most two per worker are in flight, so the workers are busy while the caller makes the next ones."""
    pending: deque = deque()
    for key, job in jobs:
        pending.append((key, job))
        while len(pending) > 2 * max(pool.processes, 1):
            key, job = pending.popleft()
            yield key, crf_labels(job)
    for key, job in pending:
        yield key, crf_labels(job)


@dataclass
class SegmentationScores:
    """Confusion matrices of one evaluation (`crf` None when the CRF was not run) and the first few
    predictions kept for figures: dicts of item, pred and crf_pred."""

    plain: ConfusionMatrix
    crf: ConfusionMatrix | None
    examples: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        out = {"miou": self.plain.compute()["miou"], "pixel_accuracy": self.plain.compute()["pixel_accuracy"]}
        if self.crf is not None:
            c = self.crf.compute()
            out |= {"crf_miou": c["miou"], "crf_pixel_accuracy": c["pixel_accuracy"]}
        return out


def evaluate_segmenter(
    model,
    dataset: VOCDataset,
    rt: Runtime,
    *,
    crf_pool: CRFPool | None = None,
    crf_scale: float | str = "auto",
    n_examples: int = 0,
) -> SegmentationScores:
    """Score `model` on `dataset` (keep_original=True) the devkit's way, and with `crf_pool` also after the
    test-time CRF (spatial stds divided by `crf_scale`; "auto": gain.sec.scale.inference_crf_scale of each image's
    size). Each image's CRF is its own pool job; up to two jobs per worker stay in flight so the workers
    are busy while the network predicts the next images."""
    n = dataset.index.num_classes
    scores = SegmentationScores(ConfusionMatrix(n), ConfusionMatrix(n) if crf_pool is not None else None)

    def jobs():
        for item, probs in predict(model, dataset, rt):
            gt = item["orig_mask"]
            pred = probs.argmax(0).astype(np.uint8)
            scores.plain.update(gt, pred)
            example = None
            if len(scores.examples) < n_examples:
                example = {"item": item, "pred": pred, "crf_pred": None}
                scores.examples.append(example)
            if crf_pool is not None:
                scale = resolve(crf_scale, inference_crf_scale, gt.shape)
                yield (gt, example), submit_crf(crf_pool, item["orig_image"], probs, scale)

    for (gt, example), crf_pred in in_flight(jobs(), crf_pool):
        scores.crf.update(gt, crf_pred)
        if example is not None:
            example["crf_pred"] = crf_pred
    return scores


def attention_probs(
    attn: np.ndarray, classes: np.ndarray, num_classes: int, *, fg_fraction: float
) -> np.ndarray:
    """(C, H, W) float32 scores from one image's attention, for the CRF: each present class its max-normalised
    map, background the cue threshold `fg_fraction`, absent classes 0, normalised to sum 1. The argmax is
    the binarised attention that attention mIoU scores (a class where its map > fg_fraction of its max)."""
    scores = np.zeros((num_classes, *attn.shape[1:]), dtype=np.float64)
    scores[0] = fg_fraction
    peak = attn.max(axis=(1, 2), initial=0.0)
    for a, c, m in zip(attn, classes, peak, strict=True):
        scores[c] = a / m if m > 0 else 0.0
    return (scores / scores.sum(axis=0, keepdims=True)).astype(np.float32)


def evaluate_attention_crf(
    attention, num_classes: int, pool: CRFPool, *, fg_fraction: float, crf_scale: float | str = "auto"
) -> float:
    """mIoU of SEC's test-time CRF applied to the attention alone (a reference for SEC + CRF: what the CRF
    makes of the seeds' dense attention without SEC). attention: iterable of (item, attn (K, H, W) at the
    image's resolution, classes (K,) 1-based: the image's ground-truth classes), e.g. the seeds stage's
    gain.seeds.extract.image_attention over the reported split."""

    def jobs():
        for item, attn, classes in attention:
            gt = item["orig_mask"]
            probs = attention_probs(attn, classes, num_classes, fg_fraction=fg_fraction)
            scale = resolve(crf_scale, inference_crf_scale, gt.shape)
            yield gt, submit_crf(pool, item["orig_image"], probs, scale)

    cm = ConfusionMatrix(num_classes)
    for gt, labels in in_flight(jobs(), pool):
        cm.update(gt, labels)
    return cm.compute()["miou"]
