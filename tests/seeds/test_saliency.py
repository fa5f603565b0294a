"""gain/seeds/saliency.py: SEC's class-agnostic gradient saliency and its lowest-10% background cells, on a
toy classifier whose gradients are known in closed form, and the trunk split at stride 8."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from scipy import ndimage
from torch import nn

from gain.models.backbones import SmallTrunk, build_trunk, vgg16_trunk
from gain.seeds.saliency import class_agnostic_saliency, lowest_cells, median3x3, split_trunk


class Toy(nn.Module):
    """trunk: 8x8 average pool (stride 8) -> 1x1 conv 3 -> 2 channels (+x_r, -x_r) -> ReLU; head: GAP +
    linear 2 -> 2 classes with weights [[1, 2], [2, 3]]. d(sum of logits) / d a_k = (1 + 2, 2 + 3)[k] / N
    where channel k is active (N cells), so the stride-8 saliency of a cell is 3/N if x_r > 0, 5/N if
    x_r < 0, 0 if x_r == 0 (both channels off)."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 2, kernel_size=1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]])[:, :, None, None])
        self.trunk = nn.Sequential(nn.AvgPool2d(8), conv, nn.ReLU(inplace=True))
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [2.0, 3.0]]))

    def head(self, feats):
        return self.fc(feats.mean(dim=(2, 3)))


def toy_image(signs: np.ndarray) -> torch.Tensor:
    """(1, 3, 8h, 8w) image whose red channel is constant `signs[i, j]` over each 8x8 cell."""
    red = torch.from_numpy(np.kron(signs, np.ones((8, 8)))).float()
    return torch.stack([red, torch.zeros_like(red), torch.zeros_like(red)])[None]


def test_median3x3_matches_scipy_median_filter():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 9)).astype(np.float32)
    got = median3x3(torch.from_numpy(x)).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], ndimage.median_filter(x[b], size=3), rtol=0, atol=0)


def test_split_trunk_cuts_after_the_first_stride8_pre_activation():
    small = SmallTrunk()
    pre, post = split_trunk(small)
    assert isinstance(pre[-1], nn.BatchNorm2d) and isinstance(post[0], nn.ReLU)
    assert pre[-2] is small[6][0]  # the first conv on the 14x14 grid, before its ReLU
    x = torch.randn(2, 3, 112, 112)
    small.eval()
    with torch.no_grad():
        assert pre(x).shape == (2, 128, 14, 14)
        torch.testing.assert_close(post(pre(x)), small(x))
    # VGG16's conv layers alone (torchvision's "D" configuration), without building its 120M-weight classifier
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    vgg = vgg16_trunk(SimpleNamespace(features=features))
    pre, post = split_trunk(vgg)
    assert pre[-1] is vgg[17] and isinstance(post[0], nn.ReLU)  # conv4_1, SEC's layer
    with pytest.raises(ValueError, match="stride 8"):
        split_trunk(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU()))


def test_stride8_saliency_hand_computed():
    # 4x4 cells (N = 16): red +1 (saliency 3/16), -1 (5/16) or 0 (0).
    signs = np.array([[1, 1, 1, 1], [1, -1, 0, 1], [1, 1, 1, 1], [-1, -1, 1, 1]], dtype=np.float32)
    raw = np.where(signs > 0, 3 / 16, np.where(signs < 0, 5 / 16, 0.0)).astype(np.float32)
    got = class_agnostic_saliency(Toy().eval(), toy_image(signs), at="stride8")
    assert got.shape == (1, 4, 4)
    np.testing.assert_allclose(got[0].numpy(), ndimage.median_filter(raw, size=3), atol=1e-7)


def test_image_saliency_hand_computed():
    # d(sum logits)/d x_red at a pixel = (3 if x_r > 0 else 5 if x_r < 0) / 16 cells / 64 pixels per cell
    # (the average pool), 0 for the other colours; averaged over each cell it stays that value.
    signs = np.array([[1, -1, 1], [1, 1, 0], [-1, 1, 1]], dtype=np.float32)
    raw = np.where(signs > 0, 3, np.where(signs < 0, 5, 0)).astype(np.float32) / (9 * 64)
    got = class_agnostic_saliency(Toy().eval(), toy_image(signs), at="image")
    assert got.shape == (1, 3, 3)
    np.testing.assert_allclose(got[0].numpy(), ndimage.median_filter(raw, size=3), rtol=1e-5)


def test_image_saliency_is_on_secs_41x41_grid_at_321_px():
    # SEC's cells: 41 x 41 at 321 px, whatever the classifier's own stride (here 32: a 10x10 output).
    head = nn.Linear(2, 3)
    clf = SimpleNamespace(
        trunk=nn.Sequential(nn.Conv2d(3, 2, 3, stride=32, padding=1)), head=lambda f: head(f.mean((2, 3)))
    )
    assert class_agnostic_saliency(clf, torch.randn(1, 3, 321, 321), at="image").shape == (1, 41, 41)


def test_saliency_is_per_image_in_a_batch_and_class_agnostic():
    toy = Toy().eval()
    a = toy_image(np.array([[1, -1], [0, 1]], dtype=np.float32))
    b = toy_image(np.array([[-1, -1], [1, 0]], dtype=np.float32))
    batch = class_agnostic_saliency(toy, torch.cat([a, b]), at="stride8")
    torch.testing.assert_close(batch[0], class_agnostic_saliency(toy, a, at="stride8")[0])
    torch.testing.assert_close(batch[1], class_agnostic_saliency(toy, b, at="stride8")[0])
    with pytest.raises(ValueError, match="'pixels'"):
        class_agnostic_saliency(toy, a, at="pixels")


def test_saliency_works_under_no_grad_and_leaves_no_graph():
    toy = Toy().eval()
    with torch.no_grad():
        s = class_agnostic_saliency(toy, toy_image(np.ones((2, 2), dtype=np.float32)), at="image")
    assert not s.requires_grad
    assert all(p.grad is None for p in toy.parameters())


def test_lowest_cells_is_the_notebook_threshold():
    # thr = sorted(s)[int(0.1 * 41**2)] = sorted(s)[168]; background = s < thr: exactly 168 cells.
    rng = np.random.default_rng(1)
    s = torch.from_numpy(rng.permutation(41 * 41).reshape(1, 41, 41).astype(np.float32))
    bg = lowest_cells(s, 0.1)
    assert bg.dtype == torch.bool and int(bg.sum()) == 168
    assert bool((s[bg] < 168).all())
    # 3x3 cells 0..8: int(0.34 * 9) = 3 -> thr = 3 -> cells 0, 1, 2.
    s = torch.arange(9.0).reshape(1, 3, 3)
    assert lowest_cells(s, 0.34)[0].flatten().tolist() == [True] * 3 + [False] * 6
    # Ties at the threshold stay out: values [0, 0, 1, 1] with k = 2 -> thr = 1 -> two cells.
    assert int(lowest_cells(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]), 0.5).sum()) == 2
    assert int(lowest_cells(torch.tensor([[[0.0, 0.0], [0.0, 0.0]]]), 0.5).sum()) == 0
    assert bool(lowest_cells(s, 1.0).all())  # everything when the fraction covers every cell


def test_saliency_defaults_to_the_image_rule():
    image = toy_image(np.array([[1, -1], [0, 1]], dtype=np.float32))
    torch.testing.assert_close(
        class_agnostic_saliency(Toy().eval(), image), class_agnostic_saliency(Toy().eval(), image, at="image")
    )


def test_lowest_cells_with_fraction_one_marks_every_cell_as_bool():
    bg = lowest_cells(torch.rand(2, 3, 3), 1.0)
    assert bg.dtype == torch.bool and bool(bg.all()) and bg.shape == (2, 3, 3)


def conv(stride: int, out: int = 4) -> nn.Conv2d:
    return nn.Conv2d(4, out, 3, stride=stride, padding=1)


def test_split_trunk_takes_the_first_layer_with_weights_on_the_grid():
    # Three stride-2 convs reach stride 8. A ReLU (no weights) is not a layer on the grid; a BatchNorm (weights,
    # stride 1) is, so the cut comes after it.
    trunk = nn.Sequential(conv(2), conv(2), conv(2), nn.ReLU(), nn.BatchNorm2d(4), conv(1))
    pre, post = split_trunk(trunk)
    assert len(pre) == 5 and len(post) == 1
    # The conv on the grid may be the trunk's last layer (no BatchNorm after it to take along).
    trunk = nn.Sequential(
        conv(2), conv(2), conv(2), nn.ReLU(), nn.MaxPool2d(3, stride=1, padding=1), conv(1, 5)
    )
    pre, post = split_trunk(trunk)
    assert len(pre) == 6 and len(post) == 0


def test_split_trunk_of_resnet50_cuts_after_the_first_block_on_the_stride8_grid():
    # conv1 and the max-pool reach stride 4, layer2's first block stride 8; its second block is the first on
    # that grid. (Residual blocks are leaves with weights: the check must not take a tensor's truth value.)
    trunk = build_trunk("resnet50")
    pre, post = split_trunk(trunk)
    assert pre[-1] is trunk[5][1] and post[0] is trunk[5][2]
