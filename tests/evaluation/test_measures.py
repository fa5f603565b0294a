"""The classifier's evaluation measures on tiny hand-made inputs whose answers are computed by hand in the
comments: attention IoU, evaluate_classifier (mAP, exact match, attention mIoU), Table 4's bias accuracy,
the seed maps' IoU, and Grad-CAM's averaged (not summed) channel weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gain.cam.attention import grad_cam
from gain.cam.evaluate import AttentionIoU, bias_accuracy, evaluate_classifier
from gain.data.dataset import DatasetIndex
from gain.evaluation.metrics import ConfusionMatrix
from gain.runtime.device import CPU
from gain.seeds.quality import seed_quality
from tests.tensor_utils import single_thread  # noqa: F401 (autouse fixture)

# --------------------------------------------------------------------------------------- attention IoU


def test_attention_iou_accumulates_over_images_per_class_and_excludes_void():
    iou = AttentionIoU(num_fg=3)
    # Image 1, class 0 (label 1): threshold 0.2 * 1.0; attention above it at (0,0), (0,1), (1,1); the gt is
    # (0,0), (1,0), (1,1) with (0,1) void -> pred (0,0), (1,1); inter 2, union 3.
    attn = np.array([[1.0, 0.5], [0.1, 0.3]])
    iou.update(attn, np.array([[1, 255], [1, 1]]), 0)
    # Image 2, class 0: the map's max is 0.5, threshold 0.1: pred (0,0), (1,0) (0.1 is not above 0.1);
    # gt (0,0) only -> inter 1, union 2. Class 0 over both images: 3 / 5 (not the mean of 2/3 and 1/2).
    iou.update(np.array([[0.5, 0.1], [0.4, 0.0]]), np.array([[1, 0], [0, 0]]), 0)
    # Image 2, class 2 (label 3): pred (0,0) only (0.9 > 0.18), gt (0,1), (1,1) -> inter 0, union 3.
    iou.update(np.array([[0.9, 0.1], [0.05, 0.0]]), np.array([[0, 3], [0, 3]]), 2)
    # Class 1 never seen: not averaged. mIoU = (3/5 + 0) / 2.
    assert iou.compute() == pytest.approx(0.3)
    np.testing.assert_array_equal(iou.inter, [3, 0, 0])
    np.testing.assert_array_equal(iou.union, [5, 0, 3])


def test_attention_iou_of_nothing_is_nan():
    assert math.isnan(AttentionIoU(num_fg=2).compute())


# ------------------------------------------------------------------------------- evaluate_classifier


class TinyClassifier(nn.Module):
    """features = the input itself (3 channels, no trunk); head = GAP + a hand-set linear layer, so
    Grad-CAM of class c is ReLU(sum_k W[c, k] / (h w) x_k) and its logit is sum_k W[c, k] mean(x_k) + b[c]."""

    def __init__(self, weight, bias):
        super().__init__()
        self.fc = nn.Linear(3, len(weight))
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(weight))
            self.fc.bias.copy_(torch.tensor(bias))

    def features(self, x):
        return x.clone()

    def head(self, feats):
        return self.fc(feats.mean(dim=(2, 3)))

    def forward(self, x):
        return self.head(self.features(x))


class ListDataset(torch.utils.data.Dataset):
    """Just what evaluate_classifier reads: index.num_classes and the items of VOCDataset."""

    def __init__(self, items, num_classes):
        self.items = items
        self.index = DatasetIndex(
            root=None, source="hand", classes=("bg", "a", "b")[:num_classes], splits={}, labels={}
        )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def item(i, ch0, ch1, label, mask):
    x = torch.zeros(3, 2, 2)
    x[0], x[1] = torch.tensor(ch0), torch.tensor(ch1)
    has_mask = mask is not None
    mask = torch.full((2, 2), 255) if mask is None else torch.tensor(mask)
    return {
        "image": x,
        "label": torch.tensor(label),
        "mask": mask.long(),
        "has_mask": has_mask,
        "index": i,
        "id": str(i),
    }


def test_evaluate_classifier_hand_computed():
    # Class a reads channel 0, class b channel 1, both with weight 4 and bias -1.5 on the channel's mean:
    # logit = 4 mean - 1.5; Grad-CAM weight 4 / 4 cells = 1, so a class's attention is its channel.
    clf = TinyClassifier([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]], [-1.5, -1.5])
    items = [
        # img0, labels {a}: logits a 4*0.5-1.5 = 0.5, b 4*0.3-1.5 = -0.3 -> predicts {a}: exact.
        # attention a = top row; gt a = left column -> a: inter 1, union 3.
        item(0, [[1, 1], [0, 0]], [[0, 0], [0, 1.2]], [1.0, 0.0], [[1, 0], [1, 0]]),
        # img1, labels {b}: logits a -1.5, b 4*0.25-1.5 = -0.5 -> predicts {}: not exact.
        # attention b = (1,1); gt b = bottom row -> b: inter 1, union 2.
        item(1, [[0, 0], [0, 0]], [[0, 0], [0, 1]], [0.0, 1.0], [[0, 0], [2, 2]]),
        # img2, labels {a, b}: logits a 4*0.25-1.5 = -0.5, b 4*0.5-1.5 = 0.5 -> predicts {b}: not exact.
        # attention a = (0,0), gt a = (0,0): inter 1, union 1; attention b = bottom row, but (1,1) is void:
        # gt b = (1,0) -> inter 1, union 1.
        item(2, [[1, 0], [0, 0]], [[0, 0], [1, 1]], [1.0, 1.0], [[1, 0], [2, 255]]),
        # img3, labels {a}, no mask: counts for mAP and exact match only. logits a 4*0.75-1.5 = 1.5, b -1.5:
        # exact. Its mask is all void, so its attention is not scored.
        item(3, [[1, 1], [1, 0]], [[0, 0], [0, 0]], [1.0, 0.0], None),
    ]
    # AP a: scores img3 1.5 (+), img0 0.5 (+), img2 -0.5 (+), img1 -1.5 (-) -> 1.
    # AP b: scores img2 0.5 (+), img0 -0.3 (-), img1 -0.5 (+), img3 -1.5 (-) -> (1/1 + 2/3) / 2 = 5/6.
    # mAP = (1 + 5/6) / 2 = 11/12. Exact match 2/4. Attention IoU: a (1 + 1) / (3 + 1) = 1/2,
    # b (1 + 1) / (2 + 1) = 2/3 -> 7/12. Batches of 3 and 1: the sums run over batches.
    out = evaluate_classifier(clf, ListDataset(items, 3), CPU, batch_size=3)
    assert out["map"] == pytest.approx(11 / 12)
    assert out["exact_match"] == pytest.approx(0.5)
    assert out["attn_miou"] == pytest.approx(7 / 12)
    assert not clf.training


# ------------------------------------------------------------------------------ Table 4 bias accuracy


class BrightnessClassifier(nn.Module):
    """Logit +4 for class 2 on a white image, -4 on a black one (mean of the normalised input), and the
    opposite for class 1, so reading the wrong column flips every answer."""

    def forward(self, x):
        s = 4.0 * torch.sign(x.mean(dim=(1, 2, 3)))
        return torch.stack([-s, s], dim=1)


def test_bias_accuracy_hand_computed(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    for name, value in (("white", 255), ("black", 0)):
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(
                tmp_path / "JPEGImages" / f"{name}{i}.jpg"
            )
    index = DatasetIndex(
        root=tmp_path,
        source="hand",
        classes=("bg", "a", "b"),
        # Object only (b must be found): white0 yes, black0 no, white1 yes -> 2/3.
        # Context only (b must be absent): black0, black1, black2 right, white0 wrong -> 3/4.
        splits={
            "bias_object_only": ["white0", "black0", "white1"],
            "bias_context_only": ["black0", "black1", "white0", "black2"],
        },
        labels={f"{n}{i}": [2] for n in ("white", "black") for i in range(3)},
    )
    out = bias_accuracy(BrightnessClassifier(), index, 2, CPU, input_size=4)
    assert out == {"bias_object_only_accuracy": pytest.approx(2 / 3), "bias_context_only_accuracy": 0.75}
    # A split the index lacks is left out.
    only = index.with_meta(splits={"bias_context_only": index.splits["bias_context_only"]})
    assert bias_accuracy(BrightnessClassifier(), only, 2, CPU, input_size=4) == {
        "bias_context_only_accuracy": 0.75
    }


# ---------------------------------------------------------------------------------- seed map IoU


def test_seed_quality_iou_counts_unlabeled_as_misses():
    # 3 classes; gt (row-major) 0 0 1 1 | 2 2 255 1; seeds 0 255 1 2 | 2 255 1 0 (void (1,2) ignored).
    # gt x seed over the 7 non-void pixels: bg: (0,0)->0, (0,1)->unlabeled; class 1: (0,2)->1, (0,3)->2,
    # (1,3)->0; class 2: (1,0)->2, (1,1)->unlabeled.
    # IoU bg: correct 1 / (gt 2 + seeded-as-0 2 - 1) = 1/3; class 1: 1 / (3 + 1 - 1) = 1/3;
    # class 2: 1 / (2 + 2 - 1) = 1/3 -> mIoU 1/3.
    sq = ConfusionMatrix(3)
    sq.update(np.array([[0, 0, 1, 1], [2, 2, 255, 1]]), np.array([[0, 255, 1, 2], [2, 255, 1, 0]]))
    out = seed_quality(sq)
    np.testing.assert_allclose(out["class_iou"], [1 / 3, 1 / 3, 1 / 3])
    assert out["miou"] == pytest.approx(1 / 3)
    # A second image: class 1 everywhere in gt, seeds 1 1 | 255 0 -> class 1 gains 2 correct, gt 4, seeded 2;
    # bg gains one wrong seed. class 1: 3 / (7 + 3 - 3) = 3/7; bg: 1 / (2 + 3 - 1) = 1/4; class 2 stays 1/3.
    sq.update(np.ones((2, 2), np.int64), np.array([[1, 1], [255, 0]]))
    out = seed_quality(sq)
    np.testing.assert_allclose(out["class_iou"], [1 / 4, 3 / 7, 1 / 3])
    assert out["miou"] == pytest.approx((1 / 4 + 3 / 7 + 1 / 3) / 3)


def test_seed_quality_miou_averages_only_classes_present():
    # 4 classes; class 3 is neither in gt nor seeded: its IoU is nan and it is not averaged.
    # bg: 2 correct / (2 + 2 - 2) = 1; class 1: gt (1,0), (1,1), seeded (1,0) -> 1 / (2 + 1 - 1) = 1/2;
    # class 2: seeded at (1,1), not in gt -> 0 / (0 + 1 - 0) = 0. mIoU = (1 + 1/2 + 0) / 3.
    sq = ConfusionMatrix(4)
    sq.update(np.array([[0, 0], [1, 1]]), np.array([[0, 0], [1, 2]]))
    out = seed_quality(sq)
    assert out["class_iou"][:3] == pytest.approx([1.0, 0.5, 0.0]) and math.isnan(out["class_iou"][3])
    assert out["miou"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------- Grad-CAM weights


def test_grad_cam_weights_are_averaged_over_the_cells():
    # One image, K = 2 channels on a 2x2 map, head = GAP + linear, class 0 with weights (8, -4):
    # d s / d f_k(i, j) = W_k / 4, so the averaged weights are (2, -1) (summed: (8, -4), 4 times larger).
    # f_0 = [[1, 2], [0, 3]], f_1 = [[1, 0], [2, 1]] -> 2 f_0 - f_1 = [[1, 4], [-2, 5]] -> ReLU: [[1, 4], [0, 5]].
    feats = torch.tensor([[[[1.0, 2.0], [0.0, 3.0]], [[1.0, 0.0], [2.0, 1.0]]]], dtype=torch.float64)
    feats.requires_grad_(True)
    weight = torch.tensor([[8.0, -4.0], [1.0, 1.0]], dtype=torch.float64)
    logits = feats.mean(dim=(2, 3)) @ weight.T
    pi, pc = torch.tensor([0]), torch.tensor([0])
    for differentiable in (True, False):
        cam = grad_cam(feats, logits, pi, pc, differentiable=differentiable, normalise=False)
        torch.testing.assert_close(cam, torch.tensor([[[1.0, 4.0], [0.0, 5.0]]], dtype=torch.float64))
    # grad_cam is that map min-max normalised: [[0.2, 0.8], [0, 1]] up to the epsilon.
    norm = grad_cam(feats, logits, pi, pc)
    torch.testing.assert_close(
        norm, torch.tensor([[[0.2, 0.8], [0.0, 1.0]]], dtype=torch.float64), atol=1e-5, rtol=0
    )
