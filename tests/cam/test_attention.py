import copy
import math
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gain.cam.model
from gain.cam.attention import EPS, above_fraction, attention_maps, grad_cam, label_pairs, soft_mask
from gain.cam.losses import gain_loss
from gain.cam.model import GAIN, Classifier
from gain.data.transforms import MEAN, STD
from gain.runtime.codebase import REPO
from tests.tensor_utils import assert_close, single_thread  # noqa: F401 (autouse fixture)


def min_max(cam: torch.Tensor) -> torch.Tensor:
    """(h, w) -> (h, w), the per-map normalisation grad_cam documents."""
    return (cam - cam.min()) / (cam.max() - cam.min() + EPS)


# Hand-set head: 3 classes over 4 trunk channels.
FC_WEIGHT = [[1.0, -2.0, 0.5, 3.0], [-1.0, 1.0, 2.0, 0.0], [0.0, 0.0, -1.0, 1.0]]
FC_BIAS = [0.1, -0.2, 0.3]
# 4 images with 2, 1, 0 and 3 labels: class ranks 0..2 and an image without pairs in between.
LABELS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


def linear_classifier(dtype=torch.float64) -> Classifier:
    """Classifier with a 1x1-conv trunk (3 -> 4 channels) and a hand-set GAP + linear head."""
    torch.manual_seed(0)
    clf = Classifier("small", 3)
    clf.trunk = nn.Conv2d(3, 4, kernel_size=1)
    clf.fc = nn.Linear(4, 3)
    with torch.no_grad():
        clf.fc.weight.copy_(torch.tensor(FC_WEIGHT))
        clf.fc.bias.copy_(torch.tensor(FC_BIAS))
    return clf.to(dtype)


class SquaredHead(Classifier):
    """A head that is not linear in the features: d s^c / d F depends on F itself."""

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc((F.relu(feats) ** 2).mean(dim=(2, 3)))


def squared_classifier() -> SquaredHead:
    torch.manual_seed(0)
    clf = SquaredHead("small", 3)
    clf.trunk = nn.Conv2d(3, 4, kernel_size=1)
    clf.fc = nn.Linear(4, 3)
    with torch.no_grad():
        clf.fc.weight.copy_(torch.tensor(FC_WEIGHT))
    return clf.double()


def small_classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier("small", 3)


def trunk_grads(clf: Classifier) -> list[torch.Tensor]:
    return [p.grad for p in clf.trunk.parameters()]


# ---------------------------------------------------------------- label_pairs


def test_label_pairs_are_image_major_then_class():
    labels = torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 0, 1]])
    pair_image, pair_class = label_pairs(labels)
    assert pair_image.tolist() == [0, 0, 1, 3, 3]
    assert pair_class.tolist() == [1, 2, 0, 0, 2]


def test_label_pairs_no_labels():
    pair_image, pair_class = label_pairs(torch.zeros(2, 4))
    assert pair_image.numel() == 0 and pair_class.numel() == 0


# ---------------------------------------------------------------- grad_cam


def test_grad_cam_hand_computed_2x2():
    # One image, 2 channels of 2x2, two classes with weights [4, -4] and [4, 0]: GAP of the gradient gives
    # w = W / (h w) = [1, -1] and [1, 0].
    f0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    f1 = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    feats = torch.stack([f0, f1])[None].requires_grad_()  # (1, 2, 2, 2)
    weight = torch.tensor([[4.0, -4.0], [4.0, 0.0]])
    logits = feats.mean(dim=(2, 3)) @ weight.T  # (1, 2)
    attn = grad_cam(feats, logits, torch.tensor([0, 0]), torch.tensor([0, 1]))
    expected = torch.stack(
        [
            torch.tensor([[0.0, 2.0], [3.0, 4.0]]) / (4.0 + EPS),  # ReLU(f0 - f1): min 0, max 4
            torch.tensor([[0.0, 1.0], [2.0, 3.0]]) / (3.0 + EPS),  # f0: min 1 is subtracted, max 4
        ]
    )
    assert_close(attn, expected)


@pytest.mark.parametrize("differentiable", [True, False])
def test_grad_cam_gap_linear_head_closed_form(differentiable):
    # GAP + linear: d s^c / d F_k = W[c, k] / (h w) at every cell, so A^c = ReLU(sum_k W[c,k]/(hw) F_k).
    clf = linear_classifier()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 3, 5, dtype=torch.float64)
    feats = clf.features(x)
    logits = clf.head(feats)
    pair_image, pair_class = label_pairs(LABELS)
    attn = grad_cam(feats, logits, pair_image, pair_class, differentiable=differentiable)
    assert attn.shape == (6, 3, 5)
    weight = torch.tensor(FC_WEIGHT, dtype=torch.float64) / 15
    for p, (i, c) in enumerate(zip(pair_image.tolist(), pair_class.tolist(), strict=True)):
        cam = F.relu(torch.einsum("k,khw->hw", weight[c], feats[i].detach()))
        assert_close(attn[p].detach(), min_max(cam), atol=1e-10)
    assert attn.min() >= 0 and attn.max() <= 1


def finite_difference_cam(clf: Classifier, image: torch.Tensor, c: int, delta: float = 1e-6) -> torch.Tensor:
    """Grad-CAM of one image and one class with d s^c / d F by central differences (no autograd)."""
    with torch.no_grad():
        feats = clf.features(image[None])  # (1, K, h, w)
        grad = torch.zeros_like(feats)
        for idx in range(feats.numel()):
            up, down = feats.clone(), feats.clone()
            up.view(-1)[idx] += delta
            down.view(-1)[idx] -= delta
            grad.view(-1)[idx] = (clf.head(up)[0, c] - clf.head(down)[0, c]) / (2 * delta)
        w = grad.mean(dim=(2, 3))[0]  # (K,)
        return min_max(F.relu(torch.einsum("k,khw->hw", w, feats[0])))


def test_grad_cam_nonlinear_head_matches_per_pair_finite_differences():
    clf = squared_classifier()
    torch.manual_seed(2)
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    feats = clf.features(x)
    logits = clf.head(feats)
    pair_image, pair_class = label_pairs(LABELS)
    attn = grad_cam(feats, logits, pair_image, pair_class)
    assert attn.shape == (6, 3, 3)
    for p, (i, c) in enumerate(zip(pair_image.tolist(), pair_class.tolist(), strict=True)):
        assert_close(attn[p].detach(), finite_difference_cam(clf, x[i], c), atol=1e-6)
    # the maps of one image's classes differ (each pair used its own class score)
    assert not torch.allclose(attn[3], attn[4])


def test_grad_cam_nonlinear_head_matches_single_image_single_class_autograd():
    clf = squared_classifier()
    torch.manual_seed(3)
    x = torch.randn(4, 3, 4, 3, dtype=torch.float64)
    feats = clf.features(x)
    pair_image, pair_class = label_pairs(LABELS)
    attn = grad_cam(feats, clf.head(feats), pair_image, pair_class)
    for p, (i, c) in enumerate(zip(pair_image.tolist(), pair_class.tolist(), strict=True)):
        f = clf.features(x[i : i + 1])
        (g,) = torch.autograd.grad(clf.head(f)[0, c], f)
        cam = F.relu(torch.einsum("k,khw->hw", g.mean(dim=(2, 3))[0], f[0].detach()))
        assert_close(attn[p].detach(), min_max(cam), atol=1e-10)


def test_grad_cam_without_pairs():
    feats = torch.randn(2, 4, 3, 5, requires_grad=True)
    logits = feats.mean(dim=(2, 3))
    empty = torch.zeros(0, dtype=torch.long)
    assert grad_cam(feats, logits, empty, empty).shape == (0, 3, 5)


def test_grad_cam_all_negative_map_is_zero_not_nan():
    feats = torch.ones(1, 1, 2, 2, requires_grad=True)
    logits = -feats.mean(dim=(2, 3))  # w < 0 everywhere: ReLU kills the whole map
    attn = grad_cam(feats, logits, torch.tensor([0]), torch.tensor([0]))
    assert torch.equal(attn.detach(), torch.zeros(1, 2, 2))


# ---------------------------------------------------------------- soft mask


def test_soft_mask_values():
    half = soft_mask(torch.full((1, 2, 2), 0.5), (2, 2), sigma=0.5, omega=10.0)
    assert_close(half, torch.full((1, 1, 2, 2), 0.5))
    one = soft_mask(torch.ones(2, 2, 2), (2, 2), sigma=0.5, omega=10.0)
    assert_close(one, torch.full((2, 1, 2, 2), 1 / (1 + math.exp(-5))))
    other = soft_mask(torch.full((1, 1, 1), 0.2), (1, 1), sigma=0.4, omega=3.0)
    assert other.item() == pytest.approx(1 / (1 + math.exp(0.6)), rel=1e-6)


def test_soft_mask_upsamples_bilinearly_to_image_size():
    # [0, 1] on 2 cells -> 4 pixels, half-pixel centres: sample points -0.25, 0.25, 0.75, 1.25 (clamped)
    attn = torch.tensor([[[0.0, 1.0]]])
    t = soft_mask(attn, (3, 4), sigma=0.5, omega=10.0)
    assert t.shape == (1, 1, 3, 4)
    row = torch.sigmoid(10 * (torch.tensor([0.0, 0.25, 0.75, 1.0]) - 0.5))
    assert_close(t[0, 0], row.expand(3, 4))


# ---------------------------------------------------------------- GAIN forward


def test_gain_forward_attention_is_in_the_graph():
    for differentiable in (True, False):
        model = GAIN(small_classifier(), differentiable=differentiable)
        x = torch.randn(2, 3, 32, 32)
        out = model(x, LABELS[:2])
        assert out["attn"].requires_grad
        assert out["attn"].shape == (3, 4, 4)
        assert out["masked_logits"].shape == (3, 3)
        assert out["masked_images"].shape == (3, 3, 32, 32)
        grads = torch.autograd.grad(out["attn"].sum(), list(model.classifier.trunk.parameters()))
        assert any(bool(g.abs().sum() > 0) for g in grads)


def test_gain_forward_without_mining_is_classification_only():
    """Warm-up steps: logits only, no attention and no masked stream."""
    model = small_classifier()
    x = torch.randn(2, 3, 32, 32)
    out = GAIN(model)(x, LABELS[:2], mine=False)
    assert "masked_logits" not in out and "attn" not in out
    assert torch.equal(out["logits"], model(x))


def test_attention_mining_changes_trunk_gradients():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 32, 32)
    labels = LABELS[:2]
    base = small_classifier()
    grads = {}
    for alpha in (0.0, 1.0):
        clf = copy.deepcopy(base)
        gain_loss(GAIN(clf)(x, labels), labels, alpha=alpha)["total"].backward()
        grads[alpha] = trunk_grads(clf)
    assert all(g is not None for g in grads[0.0] + grads[1.0])
    assert any(not torch.allclose(a, b) for a, b in zip(grads[0.0], grads[1.0], strict=True))


def test_double_backward_changes_head_gradient_of_l_am():
    torch.manual_seed(5)
    x = torch.randn(2, 3, 32, 32)
    labels = LABELS[:2]
    base = small_classifier()
    fc_grad, trunk = {}, {}
    for differentiable in (True, False):
        clf = copy.deepcopy(base)
        out = GAIN(clf, differentiable=differentiable)(x, labels)
        gain_loss(out, labels, alpha=1.0)["am"].backward()
        fc_grad[differentiable] = clf.fc.weight.grad
        trunk[differentiable] = trunk_grads(clf)
    assert not torch.allclose(fc_grad[True], fc_grad[False])
    for differentiable in (True, False):
        assert all(g is not None for g in trunk[differentiable])
        assert any(bool(g.abs().sum() > 0) for g in trunk[differentiable])


@pytest.mark.parametrize(
    ("train", "masked_bn", "differentiable"),
    [
        (True, "batch", True),
        (True, "batch", False),
        (True, "running", True),
        (False, "batch", True),
    ],
)
def test_alpha_zero_gives_exactly_the_classifier_gradients(train, masked_bn, differentiable):
    torch.manual_seed(6)
    x = torch.randn(2, 3, 32, 32)
    labels = LABELS[:2]
    base = small_classifier().train(train)
    plain = copy.deepcopy(base)
    F.multilabel_soft_margin_loss(plain(x), labels).backward()

    clf = copy.deepcopy(base)
    out = GAIN(clf, masked_bn=masked_bn, differentiable=differentiable)(x, labels)
    losses = gain_loss(out, labels, alpha=0.0)
    assert losses["am"].item() > 0  # L_am was computed
    losses["total"].backward()
    for (name, p), q in zip(clf.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("masked_bn", ["running", "batch"])
@pytest.mark.parametrize("am_grad", ["all", "mask"])
def test_masked_pass_leaves_running_stats_to_the_clean_forward(masked_bn, am_grad):
    """Running statistics describe real images only: the masked batch I* never moves them, whichever BN
    statistics normalise it."""
    torch.manual_seed(7)
    x = torch.randn(2, 3, 32, 32)
    base = small_classifier().train()
    ref = copy.deepcopy(base)
    ref(x)  # one training forward updates the running stats once
    clf = copy.deepcopy(base)
    out = GAIN(clf, masked_bn=masked_bn, am_grad=am_grad)(x, LABELS[:2])
    assert clf.training and all(m.training for m in clf.modules())
    bns = [m for m in clf.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.track_running_stats for m in bns)
    for a, b in zip(clf.buffers(), ref.buffers(), strict=True):
        assert torch.equal(a, b)
    gain_loss(out, LABELS[:2], alpha=1.0)["total"].backward()  # the graph is intact


def test_masked_bn_batch_normalises_the_masked_images_with_their_own_statistics():
    torch.manual_seed(8)
    x = torch.randn(2, 3, 32, 32)
    base = small_classifier().train()
    logits = {}
    for mode in ("batch", "running"):
        logits[mode] = GAIN(copy.deepcopy(base), masked_bn=mode)(x, LABELS[:2])["masked_logits"]
    assert not torch.allclose(logits["batch"], logits["running"])


# ---------------------------------------------------------------- erasing


def fixed_attention(monkeypatch, size: tuple[int, int]):
    """Replace grad_cam by a map at image resolution: 1 on the left half, 0 on the right half."""

    def fake(feats, logits, pair_image, pair_class, *, differentiable=True):
        a = feats.new_zeros(pair_image.numel(), *size)
        a[:, :, : size[1] // 2] = 1.0
        return a

    monkeypatch.setattr(gain.cam.model, "grad_cam", fake)


def test_erase_mean_is_i_minus_t_times_i(monkeypatch):
    fixed_attention(monkeypatch, (8, 8))
    torch.manual_seed(8)
    x = torch.randn(2, 3, 8, 8)
    clf = small_classifier().eval()
    out = GAIN(clf, sigma=0.5, omega=10.0, erase="mean")(x, LABELS[:2])
    assert out["pair_image"].tolist() == [0, 0, 1]
    t = torch.full((8, 8), 1 / (1 + math.exp(5)))  # T(0)
    t[:, :4] = 1 / (1 + math.exp(-5))  # T(1)
    src = x[[0, 0, 1]]
    assert_close(out["masked_images"], src - t * src)
    with torch.no_grad():
        assert_close(out["masked_logits"], clf(out["masked_images"]), atol=1e-6)


def test_erase_black_makes_attended_pixels_black(monkeypatch):
    fixed_attention(monkeypatch, (8, 8))
    torch.manual_seed(9)
    x = torch.randn(2, 3, 8, 8)
    out = GAIN(small_classifier().eval(), sigma=0.5, omega=1e4, erase="black")(x, LABELS[:2])
    masked = out["masked_images"]
    black = -torch.tensor(MEAN) / torch.tensor(STD)  # RGB 0 after normalisation
    assert_close(masked[:, :, :, :4], black.view(1, 3, 1, 1).expand(3, 3, 8, 4))
    assert_close(masked[:, :, :, 4:], x[[0, 0, 1]][:, :, :, 4:])  # unattended pixels untouched
    mean = GAIN(small_classifier().eval(), sigma=0.5, omega=1e4, erase="mean")(x, LABELS[:2])
    assert torch.all(mean["masked_images"][:, :, :, :4] == 0)  # the contrast: "mean" erases to 0


# ---------------------------------------------------------------- inference attention


def test_attention_maps_range_size_and_no_graph():
    torch.manual_seed(10)
    clf = small_classifier().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        attn, pair_image, pair_class = attention_maps(clf, x, LABELS[:2])
    assert attn.shape == (3, 32, 32)
    assert pair_image.tolist() == [0, 0, 1] and pair_class.tolist() == [0, 2, 1]
    assert not attn.requires_grad and attn.grad_fn is None
    assert attn.min() >= 0 and attn.max() <= 1
    assert all(p.grad is None for p in clf.parameters())
    # the maps are Grad-CAM at feature resolution, bilinearly resized
    feats = clf.features(x)
    expected = F.interpolate(
        grad_cam(feats, clf.head(feats), pair_image, pair_class)[:, None].detach(),
        size=(32, 32),
        mode="bilinear",
        align_corners=False,
    )[:, 0]
    assert_close(attn, expected, atol=1e-6)
    small, _, _ = attention_maps(clf, x, LABELS[:2], size=(5, 7))  # no outer no_grad: still no graph
    assert small.shape == (3, 5, 7)
    assert not small.requires_grad and small.grad_fn is None
    assert all(p.grad is None for p in clf.parameters())


def test_attention_maps_flip_averages_with_the_mirrored_image():
    torch.manual_seed(11)
    clf = small_classifier().eval()
    x = torch.randn(2, 3, 32, 32)
    plain, _, _ = attention_maps(clf, x, LABELS[:2])
    mirrored, _, _ = attention_maps(clf, x.flip(-1), LABELS[:2])
    avg = 0.5 * (plain + mirrored.flip(-1))
    expected = avg / avg.flatten(1).max(dim=1).values[:, None, None]
    got, _, _ = attention_maps(clf, x, LABELS[:2], flip=True)
    assert_close(got, expected, atol=1e-6)
    assert not torch.allclose(got, plain, atol=1e-3)  # the flip did something
    assert_close(got.flatten(1).max(dim=1).values, torch.ones(3))
    assert got.min() >= 0


def test_attention_maps_of_a_frozen_classifier():
    # Parameters without requires_grad (a loaded, frozen model): the features get a graph of their own and
    # the maps are those of the trainable copy.
    torch.manual_seed(10)
    clf = small_classifier().eval()
    x = torch.randn(2, 3, 32, 32)
    expected, _, _ = attention_maps(clf, x, LABELS[:2])
    frozen = copy.deepcopy(clf).requires_grad_(False)
    attn, _, _ = attention_maps(frozen, x, LABELS[:2])
    assert_close(attn, expected, atol=1e-6)


def test_grad_cam_keeps_the_weights_in_the_graph_by_default():
    # The paper's formulation: A^c depends on the head's weights through w^c (double backward).
    clf = linear_classifier()
    feats = clf.features(torch.randn(1, 3, 4, 4, dtype=torch.float64))
    cam = grad_cam(feats, clf.head(feats), torch.tensor([0]), torch.tensor([1]), normalise=False)
    (g,) = torch.autograd.grad(cam.sum(), clf.fc.weight)
    assert bool(g.abs().sum() > 0)


def test_the_foreground_rule_is_one_function_for_numpy_and_torch():
    maps = np.array([[[0.1, 0.3], [0.05, 0.6]], [[0.0, 0.0], [0.0, 0.0]]])  # the second map is all zero
    expected = [[[False, True], [False, True]], [[False, False], [False, False]]]
    np.testing.assert_array_equal(above_fraction(maps, 0.2), expected)  # 0.2 x 0.6 = 0.12: 0.1 is below
    np.testing.assert_array_equal(above_fraction(torch.from_numpy(maps), 0.2).numpy(), expected)
    np.testing.assert_array_equal(
        above_fraction(maps[0], 0.5), [[False, False], [False, True]]
    )  # 0.3: not above
    assert above_fraction(np.zeros((0, 2, 2)), 0.2).shape == (0, 2, 2)


def test_no_module_writes_the_foreground_rule_again():
    """Cues, attention mIoU and coverage binarise through above_fraction; a second copy of the rule would
    silently stay behind when it changes."""
    rule_copy = re.compile(r">\s*\(?\s*(FG_FRACTION|\w*fraction\w*|0\.5)\s*\*\s*\w*(peak|\.max\(|\.amax\()")
    found = [
        f"{path}:{n}"
        for path in (REPO / "gain").rglob("*.py")
        if path.name != "attention.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if rule_copy.search(line)
    ]
    assert not found, found
    assert rule_copy.search("fg = attn > fg_fraction * peak[:, None, None]")  # the copy it replaced is caught
