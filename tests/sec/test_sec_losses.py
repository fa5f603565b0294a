import math

import pytest
import torch

from gain.sec.losses import (
    constrain_loss,
    expansion_loss,
    gwrp,
    sec_loss,
    sec_probs,
    seeding_loss,
)
from tests.tensor_utils import assert_close, single_thread  # noqa: F401 (autouse fixture)


def adam_steps(params: torch.Tensor, loss_fn, steps: int, lr: float) -> None:
    """Plain Adam (betas 0.9, 0.999) on one tensor; torch.optim's first use imports torch._dynamo (~2.5 s)."""
    m = torch.zeros_like(params)
    v = torch.zeros_like(params)
    for t in range(1, steps + 1):
        (grad,) = torch.autograd.grad(loss_fn(params), params)
        m.mul_(0.9).add_(grad, alpha=0.1)
        v.mul_(0.999).addcmul_(grad, grad, value=0.001)
        step = (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        with torch.no_grad():
            params.sub_(lr * step)


def gwrp_reference(row: list[float], d: float) -> float:
    ranked = sorted(row, reverse=True)
    num = 0.0
    den = 0.0
    for j, v in enumerate(ranked):
        w = d**j  # python: 0.0 ** 0 == 1.0
        num += w * v
        den += w
    return num / den


# ---------------------------------------------------------------- sec_probs


def test_sec_probs_is_a_floored_distribution():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3, 4) * 20
    probs = sec_probs(logits, min_prob=1e-4)
    assert probs.shape == logits.shape
    assert_close(probs.sum(dim=1), torch.ones(2, 3, 4))
    assert probs.min() >= 1e-4 / (1 + 5 * 1e-4) - 1e-9
    expected = (torch.softmax(logits, dim=1) + 1e-4) / (1 + 5 * 1e-4)
    assert_close(probs, expected)


def test_sec_probs_floor_bounds_loss_and_scales_gradient():
    # With the floor, d(-log f_c)/dx = -p_c / (p_c + m) * (e_c - p): bounded loss, no NaN/inf anywhere.
    m = 1e-4
    logits = torch.tensor([[-30.0, 30.0, 0.0], [1.0, 0.5, -0.5]]).T.reshape(1, 3, 1, 2).requires_grad_()
    cues = torch.zeros(1, 1, 2, dtype=torch.long)
    loss = seeding_loss(sec_probs(logits, min_prob=m), cues)
    loss.backward()
    assert loss.item() <= -math.log(m / (1 + 3 * m))
    p = torch.softmax(logits.detach(), dim=1)
    e0 = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    expected = -(p[:, :1] / (p[:, :1] + m)) * (e0 - p) / 2  # 2 cue pixels in the image
    assert_close(logits.grad, expected)
    assert logits.grad[0, :, 0, 0].abs().max() < 1e-10  # confidently wrong cue: saturated
    assert logits.grad[0, 0, 0, 1] < -0.1  # ordinary cue: full softmax-CE gradient


# ---------------------------------------------------------------- gwrp


@pytest.mark.parametrize("d", [0.0, 0.3, 0.9, 0.996, 1.0])
@pytest.mark.parametrize("shape", [(3, 17), (2, 4, 9)])
def test_gwrp_matches_sorted_sum_loop(d, shape):
    torch.manual_seed(1)
    values = torch.rand(*shape, dtype=torch.float64)
    got = gwrp(values, d)
    assert got.shape == shape[:-1]
    flat_values = values.reshape(-1, shape[-1])
    expected = torch.tensor([gwrp_reference(row.tolist(), d) for row in flat_values], dtype=torch.float64)
    assert_close(got.reshape(-1), expected)


def test_gwrp_limits_are_mean_and_max():
    torch.manual_seed(2)
    values = torch.rand(3, 4, 50)
    assert_close(gwrp(values, 1.0), values.mean(dim=-1))
    assert_close(gwrp(values, 0.0), values.amax(dim=-1))


def test_gwrp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="values"):
        gwrp(torch.rand(5), 0.5)
    with pytest.raises(ValueError, match="d must be"):
        gwrp(torch.rand(2, 5), 1.5)


# ---------------------------------------------------------------- seeding loss


def test_seeding_loss_hand_computed_1x2x2x2():
    p0 = torch.tensor([[0.9, 0.2], [0.5, 0.6]])
    probs = torch.stack([p0, 1 - p0]).unsqueeze(0)  # (1, 2, 2, 2)
    cues = torch.tensor([[[0, 1], [255, 0]]])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.6)) / 3
    assert seeding_loss(probs, cues).item() == pytest.approx(expected, rel=1e-6)


def test_seeding_loss_ignores_unlabelled_pixels():
    torch.manual_seed(3)
    cues = torch.full((2, 4, 4), 255, dtype=torch.long)
    cues[0, 0, 0], cues[0, 2, 3], cues[1, 1, 1] = 1, 0, 2
    unlabelled = (cues == 255).unsqueeze(1).expand(-1, 3, -1, -1)

    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = seeding_loss(sec_probs(logits), cues)
    loss.backward()
    assert torch.all(logits.grad[unlabelled] == 0)
    assert torch.any(logits.grad[~unlabelled] != 0)

    changed = logits.detach().clone()
    changed[unlabelled] = torch.randn(int(unlabelled.sum())) * 10
    assert seeding_loss(sec_probs(changed), cues).item() == pytest.approx(loss.item(), rel=1e-6)


def test_seeding_loss_normalises_per_image():
    # Image 0 has 1 cue (prob 0.2), image 1 has 100 cues (prob 0.9 each): both weigh 1/2.
    probs = torch.full((2, 2, 10, 10), 0.5)
    probs[0, 1, 0, 0], probs[0, 0, 0, 0] = 0.2, 0.8
    probs[1, 1], probs[1, 0] = 0.9, 0.1
    cues = torch.full((2, 10, 10), 255, dtype=torch.long)
    cues[0, 0, 0] = 1
    cues[1] = 1
    expected = (-math.log(0.2) - math.log(0.9)) / 2
    assert seeding_loss(probs, cues).item() == pytest.approx(expected, rel=1e-6)

    # An image without cues is left out of the mean rather than counted as a zero.
    probs3 = torch.cat([probs, torch.full((1, 2, 10, 10), 0.5)])
    cues3 = torch.cat([cues, torch.full((1, 10, 10), 255, dtype=torch.long)])
    assert seeding_loss(probs3, cues3).item() == pytest.approx(expected, rel=1e-6)


def test_seeding_loss_without_any_cue_is_connected_zero():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = seeding_loss(sec_probs(logits), torch.full((2, 4, 4), 255, dtype=torch.long))
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_seeding_loss_validates_inputs():
    probs = torch.full((2, 3, 4, 4), 1 / 3)
    with pytest.raises(ValueError, match=r"cues .*\(2, 4, 5\)"):
        seeding_loss(probs, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices"):
        seeding_loss(probs, torch.full((2, 4, 4), 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        seeding_loss(probs, torch.zeros(2, 4, 4))


# ---------------------------------------------------------------- expansion loss


def test_expansion_loss_hand_computed_single_image():
    # C = 3 (bg, fg1, fg2), 1 x 2 grid; fg1 present, fg2 absent.
    probs = torch.tensor([[0.5, 0.2], [0.3, 0.7], [0.2, 0.1]]).view(1, 3, 1, 2)
    labels = torch.tensor([[1.0, 0.0]])
    g_fg1 = (0.7 + 0.5 * 0.3) / (1 + 0.5)
    g_bg = (0.5 + 0.25 * 0.2) / (1 + 0.25)
    expected = -math.log(g_fg1) - math.log(1 - 0.2) - math.log(g_bg)
    got = expansion_loss(probs, labels, d_fg=0.5, d_bg=0.25)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_expansion_loss_hand_computed_batch_with_term_averaging():
    # C = 4, 1 x 3 grid. Image 0: fg1 present, fg2 and fg3 absent. Image 1: all present (no absent term).
    bg = [[0.6, 0.3, 0.1], [0.2, 0.1, 0.1]]
    fg = [
        [[0.2, 0.5, 0.1], [0.1, 0.1, 0.4], [0.1, 0.1, 0.4]],
        [[0.6, 0.1, 0.2], [0.1, 0.7, 0.2], [0.1, 0.1, 0.5]],
    ]
    probs = torch.tensor([[bg[i], *fg[i]] for i in range(2)], dtype=torch.float64).view(2, 4, 1, 3)
    labels = torch.tensor([[True, False, False], [True, True, True]])
    d_fg, d_bg = 0.5, 0.8

    def ref_image(i, present):
        pos = [-math.log(gwrp_reference(fg[i][c], d_fg)) for c in range(3) if present[c]]
        neg = [-math.log(1 - max(fg[i][c])) for c in range(3) if not present[c]]
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
        return mean(pos) + mean(neg) - math.log(gwrp_reference(bg[i], d_bg))

    expected = (ref_image(0, [1, 0, 0]) + ref_image(1, [1, 1, 1])) / 2
    got = expansion_loss(probs, labels, d_fg=d_fg, d_bg=d_bg)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    # Float labels give the same result as bool labels.
    assert expansion_loss(probs, labels.double(), d_fg=d_fg, d_bg=d_bg).item() == pytest.approx(got.item())
    # Each image averages its absent term over its own absent classes (here 1 and 2), not the batch's.
    labels = torch.tensor([[True, True, False], [False, True, False]])
    expected = (ref_image(0, [1, 1, 0]) + ref_image(1, [0, 1, 0])) / 2
    assert expansion_loss(probs, labels, d_fg=d_fg, d_bg=d_bg).item() == pytest.approx(expected, rel=1e-9)


def test_expansion_loss_validates_labels_shape():
    with pytest.raises(
        ValueError,
        match=r"^labels must have shape \(B, C-1\) = \(2, 2\) to match probs \(2, 3, 4, 4\); got labels \(2, 3\)$",
    ):
        expansion_loss(torch.full((2, 3, 4, 4), 1 / 3), torch.ones(2, 3))


# ---------------------------------------------------------------- constrain loss


def test_constrain_loss_zero_at_q_positive_elsewhere_and_no_grad_to_q():
    torch.manual_seed(4)
    q = torch.softmax(torch.randn(2, 3, 5, 5), dim=1)
    assert constrain_loss(q.clone(), q).item() == pytest.approx(0.0, abs=1e-6)

    logits = torch.randn(2, 3, 5, 5, requires_grad=True)
    q_grad = q.clone().requires_grad_()
    loss = constrain_loss(sec_probs(logits), q_grad)
    assert loss.item() > 1e-3
    loss.backward()
    assert q_grad.grad is None
    assert logits.grad is not None and torch.any(logits.grad != 0)


def test_constrain_loss_handles_zero_q_and_validates_shape():
    q = torch.zeros(1, 3, 2, 2)
    q[:, 0] = 1.0  # exact zeros would give 0 * log 0 without the clip
    loss = constrain_loss(torch.full((1, 3, 2, 2), 1 / 3), q)
    assert torch.isfinite(loss)
    q_clipped = torch.tensor([1.0, 1e-4, 1e-4]) / (1 + 2e-4)
    expected = float((q_clipped * torch.log(3 * q_clipped)).sum())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"crf_probs .*\(1, 3, 2, 3\)"):
        constrain_loss(torch.full((1, 3, 2, 2), 1 / 3), torch.zeros(1, 3, 2, 3))
    with pytest.raises(ValueError, match=r"^probs must have shape \(B, C, h, w\); got probs \(3, 2, 2\)$"):
        constrain_loss(torch.full((3, 2, 2), 1 / 3), q[0])


# ---------------------------------------------------------------- sec_loss


def _toy_problem():
    # Two 8x8 images, C = 3: image 0 is bg | fg1 (left/right), image 1 is bg / fg2 (top/bottom).
    truth = torch.zeros(2, 8, 8, dtype=torch.long)
    truth[0, :, 4:] = 1
    truth[1, 4:, :] = 2
    cues = torch.full_like(truth, 255)
    cues[:, 1:3, 1:3] = truth[:, 1:3, 1:3]
    cues[:, 5:7, 5:7] = truth[:, 5:7, 5:7]
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    crf = torch.softmax(3.0 * torch.nn.functional.one_hot(truth, 3).permute(0, 3, 1, 2).float(), dim=1)
    return cues, labels, crf


def test_sec_loss_keys_and_weights():
    torch.manual_seed(5)
    cues, labels, crf = _toy_problem()
    logits = torch.randn(2, 3, 8, 8)
    out = sec_loss(logits, cues, labels, crf, weights=(1.0, 2.0, 0.5))
    assert set(out) == {"seed", "expand", "constrain", "total"}
    expected = out["seed"] + 2.0 * out["expand"] + 0.5 * out["constrain"]
    assert_close(out["total"], expected)


def test_sec_loss_optimisation_lowers_every_term():
    torch.manual_seed(6)
    cues, labels, crf = _toy_problem()
    logits = (0.5 * torch.randn(2, 3, 8, 8)).requires_grad_()
    with torch.no_grad():
        start = sec_loss(logits, cues, labels, crf)
    adam_steps(logits, lambda x: sec_loss(x, cues, labels, crf)["total"], steps=50, lr=0.05)
    with torch.no_grad():
        end = sec_loss(logits, cues, labels, crf)
    for key in ("seed", "expand", "constrain", "total"):
        assert end[key] < 0.75 * start[key], (key, start[key].item(), end[key].item())


def test_sec_loss_terms_subset_computes_only_those():
    torch.manual_seed(7)
    cues, labels, crf = _toy_problem()
    logits = torch.randn(2, 3, 8, 8)
    full = sec_loss(logits, cues, labels, crf, weights=(1.0, 2.0, 0.5))
    # A left-out term's input may be None: it is never looked at.
    out = sec_loss(logits, cues, labels, None, terms=("seed", "expand"), weights=(1.0, 2.0, 0.5))
    assert set(out) == {"seed", "expand", "total"}
    assert_close(out["seed"], full["seed"])
    assert_close(out["total"], full["seed"] + 2.0 * full["expand"])
    only = sec_loss(logits, None, None, crf, terms=("constrain",), weights=(1.0, 2.0, 0.5))
    assert set(only) == {"constrain", "total"}
    assert_close(only["total"], 0.5 * full["constrain"])


def test_sec_loss_passes_min_prob_to_the_softmax_and_to_the_crf_clip():
    torch.manual_seed(8)
    cues, labels, crf = _toy_problem()
    crf = torch.nn.functional.one_hot(crf.argmax(dim=1), 3).permute(0, 3, 1, 2).float()  # zeros to clip
    logits = torch.randn(2, 3, 8, 8)
    got = sec_loss(logits, None, None, crf, terms=("constrain",), min_prob=0.05)["constrain"]
    expected = constrain_loss(sec_probs(logits, 0.05), crf, min_prob=0.05)
    assert_close(got, expected)
    assert abs(got.item() - constrain_loss(sec_probs(logits, 0.05), crf).item()) > 0.1


def test_sec_loss_weights_are_three():
    cues, labels, crf = _toy_problem()
    with pytest.raises(ValueError, match=r"^weights must be \(seed, expand, constrain\); got \(1.0, 1.0\)$"):
        sec_loss(torch.zeros(2, 3, 8, 8), cues, labels, crf, weights=(1.0, 1.0))


def test_sec_loss_rejects_bad_terms():
    cues, labels, crf = _toy_problem()
    logits = torch.zeros(2, 3, 8, 8)
    for terms in [(), ("seed", "seed"), ("seed", "balance")]:
        with pytest.raises(ValueError, match="non-empty subset"):
            sec_loss(logits, cues, labels, crf, terms=terms)
    with pytest.raises(ValueError, match=r"\['constrain'\] need their input"):
        sec_loss(logits, cues, labels, None, terms=("seed", "constrain"))


def test_seeding_loss_names_its_input_and_constrain_loss_keeps_the_probs_dtype():
    with pytest.raises(ValueError, match=r"^probs must have shape \(B, C, h, w\); got probs \(3, 2, 2\)$"):
        seeding_loss(torch.full((3, 2, 2), 1 / 3), torch.zeros(3, 2, 2, dtype=torch.long))
    probs = torch.full((1, 3, 2, 2), 1 / 3)
    loss = constrain_loss(probs, torch.full((1, 3, 2, 2), 1 / 3, dtype=torch.float64))
    assert loss.dtype == torch.float32


def test_sec_loss_inputs_are_checked_with_messages_that_name_them():
    cues = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(
        ValueError,
        match=r"^probs needs C >= 2 classes \(background \+ foreground\); got probs \(1, 1, 2, 2\)$",
    ):
        seeding_loss(torch.ones(1, 1, 2, 2), cues)
    with pytest.raises(ValueError, match=r"^logits must have shape \(B, C, h, w\); got logits \(2, 2\)$"):
        sec_probs(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"^min_prob must be in \[0, 1\); got 1.0$"):
        sec_probs(torch.zeros(1, 2, 2, 2), min_prob=1.0)
    sec_probs(torch.zeros(1, 2, 2, 2), min_prob=0.0)  # no floor is allowed
    with pytest.raises(ValueError, match=r"^values must have N >= 1 entries to pool; got values \(2, 0\)$"):
        gwrp(torch.zeros(2, 0), 0.9)
    with pytest.raises(ValueError, match=r"^probs must have shape \(B, C, h, w\); got probs \(3, 2, 2\)$"):
        expansion_loss(torch.full((3, 2, 2), 1 / 3), torch.zeros(3, 1))


def test_gwrp_of_one_value_is_that_value_and_expansion_defaults_are_secs():
    assert gwrp(torch.tensor([[0.3]]), 0.9).item() == pytest.approx(0.3)
    probs = sec_probs(torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert_close(expansion_loss(probs, labels), expansion_loss(probs, labels, d_fg=0.996, d_bg=0.999))
