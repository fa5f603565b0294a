"""Segmentation and multi-label classification metrics.

Segmentation: one `ConfusionMatrix` accumulated over a whole split (the VOC devkit's mIoU), label 255
ignored. Classification: per-class average precision and thresholded accuracies over (N, K) arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch


def _as_numpy(x) -> np.ndarray:
    """A numpy view of a numpy array or a torch tensor (moved to CPU, detached)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num / den as float64, nan where den == 0 (no 0/0 warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    """Mean over the non-nan entries; nan (and no warning) when there are none."""
    x = np.asarray(x, dtype=np.float64)
    keep = ~np.isnan(x)
    return float(x[keep].mean()) if keep.any() else float("nan")


class ConfusionMatrix:
    """Accumulating (C, C) confusion matrix: rows = ground truth, columns = prediction.

    Pixels whose ground truth is `ignore_index` are skipped. A non-ignored pixel whose *prediction* is
    `ignore_index` (a seed map or a method that abstains) is "unlabeled": it is kept out of the matrix and
    counted per ground-truth class in `unlabeled` (C,), so it is a miss (FN) for IoU and recall but a false
    positive of no class.

    Accumulate over the whole split, then `compute()` once: this is the VOC devkit's mIoU, not a mean of
    per-image IoUs.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class index in [0, {num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)  # (C, C) gt x pred
        self.unlabeled = np.zeros(num_classes, dtype=np.int64)  # (C,) per gt class, pred == ignore_index

    def _check_labels(self, x: np.ndarray, what: str) -> None:
        if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
            raise TypeError(f"{what} must hold integer labels, got dtype {x.dtype}")
        bad = (x != self.ignore_index) & ((x < 0) | (x >= self.num_classes))
        if bad.any():
            values = np.unique(x[bad])
            raise ValueError(
                f"{what} holds label value {values[0]} (all bad values: {values[:10].tolist()}) outside "
                f"[0, {self.num_classes}) and not ignore_index {self.ignore_index}"
            )

    def update(self, gt, pred) -> None:
        """Add one batch. gt, pred: integer arrays or tensors of the same shape, e.g. (H, W) or (B, H, W)."""
        gt = _as_numpy(gt)
        pred = _as_numpy(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"gt shape {tuple(gt.shape)} does not match pred shape {tuple(pred.shape)}")
        self._check_labels(gt, "gt")
        self._check_labels(pred, "pred")
        c = self.num_classes
        gt = gt.ravel().astype(np.int64)
        pred = pred.ravel().astype(np.int64)
        valid = gt != self.ignore_index
        unlabeled = valid & (pred == self.ignore_index)
        counted = valid & ~unlabeled
        self.mat += np.bincount(gt[counted] * c + pred[counted], minlength=c * c).reshape(c, c)
        self.unlabeled += np.bincount(gt[unlabeled], minlength=c)

    def _names(self, class_names: Sequence[str] | None) -> list:
        if class_names is None:
            return list(range(self.num_classes))
        if len(class_names) != self.num_classes:
            raise ValueError(f"got {len(class_names)} class names for {self.num_classes} classes")
        return list(class_names)

    def _counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tp, gt_pixels, pred_pixels), each (C,); gt_pixels includes the unlabeled pixels."""
        tp = np.diag(self.mat)
        return tp, self.mat.sum(axis=1) + self.unlabeled, self.mat.sum(axis=0)

    def compute(self, class_names: Sequence[str] | None = None) -> dict:
        """Per-class and mean scores of everything accumulated so far.

        IoU_c = TP_c / (TP_c + FP_c + FN_c), FN including pixels left unlabeled. A class absent from both
        ground truth and prediction has IoU 0/0: it is reported as nan in `iou`, False in `present` and
        listed in `absent_classes`, and `miou` is the mean over the present classes only. A class that is
        present (in gt or prediction) with no true positive has IoU 0 and always counts in `miou`. On VOC val
        every class is present, so this equals the devkit's mean over all 21 classes.

        Returns a dict with keys: iou, present, miou, pixel_accuracy, mean_class_accuracy, precision,
        recall (lists are (C,), nan where undefined), absent_classes (names if `class_names` is given,
        else indices), unlabeled (total count), matrix ((C, C) list of lists, gt rows x pred columns).
        """
        names = self._names(class_names)
        tp, gt_pixels, pred_pixels = self._counts()
        present = (gt_pixels + pred_pixels) > 0
        iou = _divide(tp, gt_pixels + pred_pixels - tp)  # union = TP + FP + FN
        recall = _divide(tp, gt_pixels)
        return {
            "iou": iou.tolist(),
            "present": present.tolist(),
            "miou": _nanmean(iou),
            "pixel_accuracy": float(_divide(tp.sum(), gt_pixels.sum())),
            "mean_class_accuracy": _nanmean(recall),
            "precision": _divide(tp, pred_pixels).tolist(),
            "recall": recall.tolist(),
            "absent_classes": [names[i] for i in np.flatnonzero(~present)],
            "unlabeled": int(self.unlabeled.sum()),
            "matrix": self.mat.tolist(),
        }

    def to_dataframe(self, class_names: Sequence[str] | None = None) -> pd.DataFrame:
        """The (C, C) matrix as a DataFrame: index = ground-truth class, columns = predicted class."""
        names = self._names(class_names)
        return pd.DataFrame(
            self.mat.copy(), index=pd.Index(names, name="gt"), columns=pd.Index(names, name="pred")
        )

    def per_class_table(self, class_names: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per class: class, iou, precision, recall, gt_pixels, pred_pixels (nan where undefined)."""
        names = self._names(class_names)
        tp, gt_pixels, pred_pixels = self._counts()
        return pd.DataFrame(
            {
                "class": names,
                "iou": _divide(tp, gt_pixels + pred_pixels - tp),
                "precision": _divide(tp, pred_pixels),
                "recall": _divide(tp, gt_pixels),
                "gt_pixels": gt_pixels,
                "pred_pixels": pred_pixels,
            }
        )


def _check_multilabel(scores, labels, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(_as_numpy(scores), dtype=np.float64)
    labels = _as_numpy(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(
            f"{what} and labels must both be (N, K); got {what} {scores.shape}, labels {labels.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} contain nan or inf")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(labels)[:10].tolist()}")
    return scores, labels.astype(bool)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class average precision. scores, labels: (N, K) (labels 0/1) -> (K,), nan for no positives.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, high to low (tied scores form one
    threshold): the non-interpolated area, equal to sklearn's `average_precision_score` per column. The
    VOC 2010+ devkit interpolates precision to be monotone, which can give a slightly higher value.
    """
    scores, labels = _check_multilabel(scores, labels)
    n, k = scores.shape
    ap = np.full(k, np.nan)
    for j in range(k):
        npos = labels[:, j].sum()
        if npos == 0:
            continue
        order = np.argsort(-scores[:, j], kind="stable")
        s, y = scores[order, j], labels[order, j]
        # Last index of each run of tied scores: the cut-off points of the distinct thresholds.
        cut = np.r_[np.flatnonzero(np.diff(s) != 0), n - 1]
        tp = np.cumsum(y)[cut]
        precision = tp / (cut + 1)
        recall = tp / npos
        ap[j] = np.sum(np.diff(recall, prepend=0.0) * precision)
    return ap


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAP: mean of `average_precision` over the classes that have at least one positive."""
    return _nanmean(average_precision(scores, labels))


def _predict(probs, labels, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = _check_multilabel(probs, labels, what="probs")
    if probs.min(initial=0.0) < 0.0 or probs.max(initial=0.0) > 1.0:
        raise ValueError(
            f"probs must lie in [0, 1] (got range [{probs.min()}, {probs.max()}]); pass sigmoid(logits)"
        )
    return probs > threshold, labels


def exact_match_accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of images whose predicted label set {k : probs[k] > threshold} equals the true set.

    probs: (N, K) in [0, 1]; labels: (N, K) 0/1. With threshold 0.5 this is logit > 0.
    """
    pred, labels = _predict(probs, labels, threshold)
    return float((pred == labels).all(axis=1).mean())
