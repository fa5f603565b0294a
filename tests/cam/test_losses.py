import math

import pytest
import torch
from torch.nn import functional as F

from gain.cam.losses import (
    attention_masks,
    attention_mining_loss,
    classification_loss,
    external_loss,
    gain_loss,
)
from tests.tensor_utils import assert_close, single_thread  # noqa: F401 (autouse fixture)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# ---------------------------------------------------------------- classification loss


def test_classification_loss_is_multilabel_soft_margin_by_hand():
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # per element: -[y log sig(x) + (1 - y) log(1 - sig(x))], mean over classes then over images
    terms = [
        -math.log(sigmoid(2.0)),
        -math.log(1 - sigmoid(-1.0)),
        -math.log(1 - sigmoid(0.0)),
        -math.log(sigmoid(3.0)),
    ]
    expected = sum(terms) / 4
    got = classification_loss(logits, labels)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() == pytest.approx(F.multilabel_soft_margin_loss(logits, labels).item(), rel=1e-7)


# ---------------------------------------------------------------- attention mining loss


def test_attention_mining_loss_uses_each_pairs_own_class():
    # 3 pairs over 3 classes; the loss must read logit (p, pair_class[p]) only.
    masked_logits = torch.tensor([[1.0, 50.0, 50.0], [50.0, -2.0, 50.0], [50.0, 50.0, 0.0]])
    pair_class = torch.tensor([0, 1, 2])
    expected = (sigmoid(1.0) + sigmoid(-2.0) + sigmoid(0.0)) / 3
    assert attention_mining_loss(masked_logits, pair_class).item() == pytest.approx(expected, rel=1e-6)


def test_attention_mining_loss_repeated_class_and_gradient():
    masked_logits = torch.tensor([[0.5, 9.0], [-1.5, 9.0]], requires_grad=True)
    pair_class = torch.tensor([0, 0])
    loss = attention_mining_loss(masked_logits, pair_class)
    assert loss.item() == pytest.approx((sigmoid(0.5) + sigmoid(-1.5)) / 2, rel=1e-6)
    loss.backward()
    # d/dx mean(sig(x)) = sig(x)(1 - sig(x)) / n on the used entries, 0 elsewhere
    expected = torch.tensor(
        [[sigmoid(0.5) * (1 - sigmoid(0.5)) / 2, 0.0], [sigmoid(-1.5) * (1 - sigmoid(-1.5)) / 2, 0.0]]
    )
    assert_close(masked_logits.grad, expected)


def test_attention_mining_loss_is_bounded_by_the_sigmoid():
    masked_logits = torch.tensor([[-1e4], [1e4]])
    assert attention_mining_loss(masked_logits[:1], torch.tensor([0])).item() == 0.0
    assert attention_mining_loss(masked_logits[1:], torch.tensor([0])).item() == 1.0


def test_attention_mining_loss_without_pairs_is_zero_with_a_graph():
    masked_logits = torch.zeros(0, 4, requires_grad=True)
    loss = attention_mining_loss(masked_logits, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()  # must not raise
    assert masked_logits.grad.shape == (0, 4)


# ---------------------------------------------------------------- attention masks (H^c)


def test_attention_masks_cell_coverage_4x4_to_2x2():
    # classes are 1-based in masks (0 = background, 255 = void), 0-based in pair_class.
    masks = torch.tensor(
        [
            [
                [1, 1, 0, 2],
                [1, 0, 2, 2],
                [255, 1, 1, 1],
                [0, 0, 1, 255],
            ],
            [
                [2, 2, 2, 2],
                [2, 2, 2, 2],
                [0, 0, 0, 0],
                [0, 0, 0, 2],
            ],
        ]
    )
    pair_image = torch.tensor([0, 0, 1])
    pair_class = torch.tensor([0, 1, 1])  # image 0: class 1 and 2; image 1: class 2
    got = attention_masks(masks, pair_image, pair_class, (2, 2))
    expected = torch.tensor(
        [
            [[3 / 4, 0 / 4], [1 / 4, 3 / 4]],  # class 1 in image 0
            [[0 / 4, 3 / 4], [0 / 4, 0 / 4]],  # class 2 in image 0
            [[4 / 4, 4 / 4], [0 / 4, 1 / 4]],  # class 2 in image 1
        ]
    )
    assert_close(got, expected)


def test_attention_masks_void_is_not_the_class():
    masks = torch.full((1, 2, 2), 255)
    got = attention_masks(masks, torch.tensor([0]), torch.tensor([0]), (1, 1))
    assert got.item() == 0.0


# ---------------------------------------------------------------- external loss


def test_external_loss_is_zero_for_perfect_attention():
    h = torch.tensor([[[0.0, 0.25], [1.0, 0.5]]])
    attn = h.clone().requires_grad_()
    loss = external_loss(attn, h)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(attn.grad == 0)


def test_external_loss_hand_mse():
    attn = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 0.0], [0.0, 1.0]]])
    target = torch.tensor([[[0.0, 0.0], [1.0, 0.5]], [[0.5, 0.0], [0.0, 0.0]]])
    # squared errors: 1, 0, .25, 0 | .25, 0, 0, 1 -> 2.5 over 8 cells
    assert external_loss(attn, target).item() == pytest.approx(2.5 / 8, rel=1e-7)


def test_external_loss_without_pairs_is_zero_with_a_graph():
    attn = torch.zeros(0, 2, 2, requires_grad=True)
    loss = external_loss(attn, torch.zeros(0, 2, 2))
    assert loss.item() == 0.0
    assert loss.grad_fn is not None


# ---------------------------------------------------------------- gain_loss


def _out() -> dict:
    # 2 images, 2 classes; image 0 has classes {0, 1}, image 1 has class {1}: 3 pairs.
    return {
        "logits": torch.tensor([[1.0, -0.5], [-2.0, 0.5]], requires_grad=True),
        "pair_image": torch.tensor([0, 0, 1]),
        "pair_class": torch.tensor([0, 1, 1]),
        "masked_logits": torch.tensor([[0.2, 3.0], [3.0, -1.0], [3.0, 0.4]], requires_grad=True),
        "attn": torch.tensor(
            [
                [[1.0, 0.0], [0.0, 0.0]],
                [[0.0, 0.5], [0.0, 0.0]],
                [[0.0, 0.0], [1.0, 1.0]],
            ],
            requires_grad=True,
        ),
    }


LABELS = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
MASKS = torch.tensor(
    [
        [[1, 0], [0, 2]],  # image 0: class 0 (mask value 1) top-left, class 1 (mask value 2) bottom-right
        [[2, 2], [0, 0]],  # image 1: class 1 on the top row
    ]
)


def test_gain_loss_self_total():
    out = _out()
    cl = F.multilabel_soft_margin_loss(out["logits"], LABELS).item()
    am = (sigmoid(0.2) + sigmoid(-1.0) + sigmoid(0.4)) / 3
    losses = gain_loss(out, LABELS, alpha=0.7)
    assert "e" not in losses
    assert losses["cl"].item() == pytest.approx(cl, rel=1e-6)
    assert losses["am"].item() == pytest.approx(am, rel=1e-6)
    assert losses["total"].item() == pytest.approx(cl + 0.7 * am, rel=1e-6)


def test_gain_loss_alpha_zero_adds_nothing_to_the_gradient():
    out = _out()
    gain_loss(out, LABELS, alpha=0.0)["total"].backward()
    assert torch.all(out["masked_logits"].grad == 0)
    reference = out["logits"].detach().clone().requires_grad_()
    F.multilabel_soft_margin_loss(reference, LABELS).backward()
    assert torch.equal(out["logits"].grad, reference.grad)


def test_gain_loss_without_masked_logits_has_zero_am():
    out = _out()
    del out["masked_logits"]
    losses = gain_loss(out, LABELS, alpha=1.0)
    assert losses["am"].item() == 0.0
    assert losses["total"].item() == pytest.approx(losses["cl"].item(), rel=1e-7)


def test_gain_loss_ext_counts_only_pairs_with_a_mask():
    out = _out()
    # Only image 0 has a mask: pairs 0 and 1. H at 2x2 (mask already 2x2, so coverage is 0/1):
    #   pair 0 (class 0): [[1,0],[0,0]] vs A [[1,0],[0,0]] -> 0
    #   pair 1 (class 1): [[0,0],[0,1]] vs A [[0,.5],[0,0]] -> .25 + 1 = 1.25
    # L_e = 1.25 / 8 cells. Pair 2 (image 1, no mask) would add (1 + 1 + 1 + 1) and is ignored.
    has_mask = torch.tensor([True, False])
    losses = gain_loss(out, LABELS, alpha=0.5, masks=MASKS, has_mask=has_mask, omega_e=10.0)
    e = 1.25 / 8
    assert losses["e"].item() == pytest.approx(e, rel=1e-6)
    expected = losses["cl"].item() + 0.5 * losses["am"].item() + 10.0 * e
    assert losses["total"].item() == pytest.approx(expected, rel=1e-6)
    losses["total"].backward()
    assert torch.all(out["attn"].grad[2] == 0)  # the unmasked image's attention gets no L_e gradient
    assert torch.any(out["attn"].grad[1] != 0)


def test_gain_loss_ext_all_pairs_with_masks():
    out = _out()
    # pair 2 (class 1 in image 1): H [[1,1],[0,0]] vs A [[0,0],[1,1]] -> 4; (0 + 1.25 + 4) / 12 cells
    losses = gain_loss(out, LABELS, alpha=1.0, masks=MASKS, has_mask=torch.tensor([True, True]), omega_e=2.0)
    assert losses["e"].item() == pytest.approx(5.25 / 12, rel=1e-6)
    expected = losses["cl"].item() + losses["am"].item() + 2.0 * 5.25 / 12
    assert losses["total"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("masks", "has_mask", "omega_e", "got"),
    [
        (MASKS, None, 10.0, r"masks=a tensor of shape \(2, 2, 2\), has_mask=None, omega_e=10.0"),
        (
            None,
            torch.tensor([True, True]),
            10.0,
            r"masks=None, has_mask=a tensor of shape \(2,\), omega_e=10.0",
        ),
        (
            MASKS,
            torch.tensor([True, True]),
            None,
            r"masks=a tensor of shape \(2, 2, 2\), has_mask=a tensor of shape \(2,\), omega_e=None",
        ),
    ],
)
def test_gain_loss_ext_inputs_go_together(masks, has_mask, omega_e, got):
    with pytest.raises(
        ValueError,
        match=r"^GAIN_ext's masks, has_mask and omega_e go together: pass all three or neither masks nor "
        rf"has_mask; got {got}$",
    ):
        gain_loss(_out(), LABELS, alpha=1.0, masks=masks, has_mask=has_mask, omega_e=omega_e)


def test_gain_loss_ext_no_masked_image_gives_zero_e_with_a_graph():
    out = _out()
    losses = gain_loss(
        out, LABELS, alpha=1.0, masks=MASKS, has_mask=torch.tensor([False, False]), omega_e=3.0
    )
    assert losses["e"].item() == 0.0
    assert losses["e"].grad_fn is not None
    assert losses["total"].item() == pytest.approx(losses["cl"].item() + losses["am"].item(), rel=1e-7)
