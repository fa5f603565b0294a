"""Every parameter of the two training steps reaches its loss: each step is run with one param changed and
compared with the loss functions called directly the way the formula says (so a parameter swapped,
dropped or sent to the wrong term on its way through the step fails here, not only in a quality test)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from gain.cam.losses import attention_masks, classification_loss, external_loss
from gain.cam.model import GAIN, Classifier
from gain.cam.train import gain_step_losses
from gain.runtime.device import CPU
from gain.runtime.params import load_params
from gain.sec.crf import CRFPool, dense_crf
from gain.sec.crf_exact import ExactCRF, exact_dense_crf
from gain.sec.losses import constrain_loss, expansion_loss, sec_probs, seeding_loss
from gain.sec.model import LargeFOV
from gain.sec.scale import gwrp_decay, gwrp_decays, train_crf_scale
from gain.sec.train import downscale_cues, downscale_images, sec_step_losses
from tests.pipeline_utils import REPO

SHIPPED = load_params(REPO / "params.yaml")


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


# --- SEC ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sec_setup():
    """A small LargeFOV in eval mode (no dropout: repeated steps see the same output), one 3-image batch
    with sparse cues and labels, and the network's own probabilities."""
    torch.manual_seed(0)
    net = LargeFOV("small", 4).eval()
    with torch.no_grad():  # SEC's fc8 starts near zero (N(0, 0.01)): spread the output so every term varies
        net.fc8.weight.normal_(0, 1.0)
        net.fc8.bias.copy_(torch.tensor([0.5, -0.5, 0.2, 0.0]))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 48, 48, generator=g)
    mask = torch.full((3, 48, 48), 255, dtype=torch.long)
    mask[0, :16, :16], mask[0, 30:, 30:] = 1, 0
    mask[1, 10:30, 20:40], mask[2, 5:20, 5:20], mask[2, 40:, :] = 2, 3, 0
    label = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    batch = {"image": x, "mask": mask, "label": label}
    with torch.no_grad():
        logits = net(x).float()
    return net, batch, logits


def sec_params(**kw):
    return replace(SHIPPED.sec, **kw)


def step(sec_setup, **kw) -> dict:
    net, batch, _ = sec_setup
    with torch.no_grad(), CRFPool(0) as pool:
        return sec_step_losses(net, batch, pool, sec_params(**kw), CPU)


def test_sec_step_sends_d_fg_to_present_classes_and_d_bg_to_background(sec_setup):
    _, batch, logits = sec_setup
    out = step(sec_setup, d_fg=0.3, d_bg=0.95, losses=("expand",))
    probs = sec_probs(logits, SHIPPED.sec.min_prob)
    assert close(out["expand"], expansion_loss(probs, batch["label"], d_fg=0.3, d_bg=0.95))
    assert not close(out["expand"], expansion_loss(probs, batch["label"], d_fg=0.95, d_bg=0.3))  # swapped
    assert not close(out["expand"], step(sec_setup, d_fg=0.9, d_bg=0.95, losses=("expand",))["expand"])
    assert not close(out["expand"], step(sec_setup, d_fg=0.3, d_bg=0.5, losses=("expand",))["expand"])


def test_sec_step_auto_decays_are_secs_carried_to_the_output_grid(sec_setup):
    net, batch, logits = sec_setup
    n = logits.shape[-2] * logits.shape[-1]
    probs = sec_probs(logits, SHIPPED.sec.min_prob)
    out = step(sec_setup, d_fg="auto", d_bg="auto", losses=("expand",))
    want = expansion_loss(probs, batch["label"], d_fg=gwrp_decay(0.996, n), d_bg=gwrp_decay(0.999, n))
    assert close(out["expand"], want)
    assert not close(out["expand"], expansion_loss(probs, batch["label"], d_fg=0.996, d_bg=0.999))
    mixed = step(sec_setup, d_fg=0.3, d_bg="auto", losses=("expand",))["expand"]
    assert close(mixed, expansion_loss(probs, batch["label"], d_fg=0.3, d_bg=gwrp_decay(0.999, n)))


def test_sec_step_min_prob_reaches_every_term(sec_setup):
    net, batch, logits = sec_setup
    for m in (1e-4, 0.05):
        out = step(sec_setup, min_prob=m)
        probs = sec_probs(logits, m)
        cues = downscale_cues(batch["mask"], tuple(logits.shape[-2:]), align_corners=net.align_corners)
        assert close(out["seed"], seeding_loss(probs, cues))
        d_fg, d_bg = gwrp_decays(SHIPPED.sec.d_fg, SHIPPED.sec.d_bg, tuple(logits.shape[-2:]))
        assert close(out["expand"], expansion_loss(probs, batch["label"], d_fg=d_fg, d_bg=d_bg))
    assert not close(step(sec_setup, min_prob=1e-4)["seed"], step(sec_setup, min_prob=0.05)["seed"])


class RecordingPool(CRFPool):
    """The real CRF pool, remembering what each `map` call received."""

    def __init__(self):
        super().__init__(0)
        self.calls = []

    def map(self, images, log_probs, scale):
        self.calls.append((images, log_probs, scale))
        return super().map(images, log_probs, scale)


def test_sec_step_crf_scale_and_unary_reach_the_constrain_term(sec_setup):
    """The CRF gets the image at output size, the unfloored log-softmax of the output (SEC's raw fc8
    unary) and crf_scale; its Q is what the constrain term compares the output with."""
    net, batch, logits = sec_setup
    size = tuple(logits.shape[-2:])
    for scale, expected in ((1.0, 1.0), (12.0, 12.0), ("auto", 12 * 41 / max(size))):
        pool = RecordingPool()
        with torch.no_grad():
            out = sec_step_losses(net, batch, pool, sec_params(crf_scale=scale, losses=("constrain",)), CPU)
        ((images, log_probs, used),) = pool.calls
        assert used == pytest.approx(expected)
        scale = used
        np.testing.assert_array_equal(
            images, downscale_images(batch["image"], size, align_corners=net.align_corners)
        )
        np.testing.assert_allclose(log_probs, torch.log_softmax(logits, dim=1).numpy(), rtol=1e-6, atol=1e-6)
        q = torch.from_numpy(
            np.stack([dense_crf(i, lp, scale=scale) for i, lp in zip(images, log_probs, strict=True)])
        )
        m = SHIPPED.sec.min_prob
        assert close(out["constrain"], constrain_loss(sec_probs(logits, m), q, min_prob=m))
    assert RecordingPool().calls == []
    pool = RecordingPool()
    with torch.no_grad():
        sec_step_losses(net, batch, pool, sec_params(losses=("seed", "expand")), CPU)
    assert pool.calls == []  # no CRF without the constrain term


def test_sec_step_with_the_exact_crf_gives_its_q_to_the_constrain_term(sec_setup):
    """sec.train_crf exact: the constrain term compares the output with the exact CRF's Q of the same image,
    unary and crf_scale, and its gradient reaches the network (the CRF's Q is a target without one)."""
    net, batch, logits = sec_setup
    p = sec_params(losses=("constrain",))
    out = sec_step_losses(net, batch, ExactCRF(), p, CPU)
    images = torch.from_numpy(
        downscale_images(batch["image"], logits.shape[-2:], align_corners=net.align_corners)
    )
    scale = train_crf_scale(tuple(logits.shape[-2:]))  # crf_scale auto: SEC's 12 carried to the grid
    q = exact_dense_crf(images, torch.log_softmax(logits, dim=1), scale=scale)
    m = SHIPPED.sec.min_prob
    assert close(out["constrain"], constrain_loss(sec_probs(logits, m), q, min_prob=m))
    out["total"].backward()
    assert net.fc8.weight.grad is not None and net.fc8.weight.grad.abs().sum() > 0
    net.zero_grad(set_to_none=True)


def test_sec_step_loss_switches_compute_only_their_terms(sec_setup):
    full = step(sec_setup)
    assert set(full) == {"seed", "expand", "constrain", "total"}
    assert close(full["total"], full["seed"] + full["expand"] + full["constrain"])
    for terms in (("seed",), ("expand",), ("constrain",), ("seed", "constrain"), ("seed", "expand")):
        out = step(sec_setup, losses=terms)
        assert set(out) == {*terms, "total"}
        assert close(out["total"], sum(full[t] for t in terms))


def test_sec_step_seeds_are_the_cues_under_each_cell(sec_setup):
    net, batch, logits = sec_setup
    out = step(sec_setup, losses=("seed",))
    wrong = downscale_cues(batch["mask"].flip(-1), tuple(logits.shape[-2:]), align_corners=net.align_corners)
    assert not close(out["seed"], seeding_loss(sec_probs(logits, SHIPPED.sec.min_prob), wrong))


# --- GAIN ---------------------------------------------------------------------------------------------


@pytest.fixture
def gain_batch():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 32, 32, generator=g)
    label = torch.tensor([[1.0, 0, 1.0], [0, 1.0, 0], [1.0, 1.0, 0]])
    mask = torch.zeros(3, 32, 32, dtype=torch.long)
    mask[0, :12, :12], mask[0, 20:, 20:], mask[1, 8:24, 8:24] = 1, 3, 2
    mask[2, :16], mask[2, 16:] = 1, 2
    return {"image": x, "label": label, "mask": mask, "has_mask": torch.tensor([True, False, True])}


def gain_net(**kw) -> GAIN:
    torch.manual_seed(3)
    return GAIN(Classifier("small", 3), **kw).eval()  # eval: BatchNorm statistics do not move between calls


def gain_params(**kw):
    return replace(SHIPPED.gain, **kw)


def test_gain_step_total_is_l_cl_plus_alpha_l_am(gain_batch):
    for alpha in (0.0, 0.5, 2.0):
        out = gain_step_losses(gain_net(), gain_batch, gain_params(alpha=alpha, ext=False), CPU)
        assert close(out["total"], out["cl"] + alpha * out["am"])
        assert "e" not in out
    am = [gain_step_losses(gain_net(), gain_batch, gain_params(alpha=a), CPU)["am"] for a in (0.0, 1.0)]
    assert close(am[0], am[1]) and am[0] > 0  # L_am is measured the same way whatever its weight


def test_gain_step_l_cl_is_the_multilabel_loss_of_the_image_logits(gain_batch):
    net = gain_net()
    out = gain_step_losses(net, gain_batch, gain_params(), CPU)
    with torch.no_grad():
        logits = net.classifier(gain_batch["image"])
    assert close(out["cl"], classification_loss(logits, gain_batch["label"]))


def test_gain_step_l_am_scores_each_class_on_its_own_erased_image(gain_batch):
    """L_am = mean over (image, class) pairs of sigmoid(score of that class on I*c): recomputed here from
    the masked images the forward built; the wrong class or the unmasked image give other values. sigma 0.5:
    a soft mask that erases enough of these tiny images for the unmasked score to differ."""
    net = gain_net(sigma=0.5)
    x, y = gain_batch["image"], gain_batch["label"]
    out = net(x, y)
    with torch.no_grad():
        masked_logits = net.classifier(out["masked_images"])
        own = masked_logits.gather(1, out["pair_class"][:, None])[:, 0]
        other = masked_logits.gather(1, ((out["pair_class"] + 1) % 3)[:, None])[:, 0]
        unmasked = net.classifier(x)[out["pair_image"], out["pair_class"]]
    step = gain_step_losses(gain_net(sigma=0.5), gain_batch, gain_params(alpha=1.0), CPU)
    assert close(step["am"], torch.sigmoid(own).mean())
    assert not close(step["am"], torch.sigmoid(other).mean())
    assert not close(step["am"], torch.sigmoid(unmasked).mean())


def test_gain_step_ext_adds_omega_e_times_l_e_on_images_with_masks_only(gain_batch):
    p = gain_params(ext=True, alpha=1.0)
    for omega_e in (1.0, 10.0):
        out = gain_step_losses(gain_net(), gain_batch, replace(p, omega_e=omega_e), CPU)
        assert close(out["total"], out["cl"] + out["am"] + omega_e * out["e"])
    net = gain_net()
    fwd = net(gain_batch["image"], gain_batch["label"])
    sel = gain_batch["has_mask"][fwd["pair_image"]]
    h = attention_masks(
        gain_batch["mask"], fwd["pair_image"][sel], fwd["pair_class"][sel], fwd["attn"].shape[-2:]
    )
    expected = external_loss(fwd["attn"][sel], h)
    out = gain_step_losses(gain_net(), gain_batch, p, CPU)
    assert close(out["e"], expected)
    everyone = external_loss(
        fwd["attn"],
        attention_masks(gain_batch["mask"], fwd["pair_image"], fwd["pair_class"], fwd["attn"].shape[-2:]),
    )
    assert not close(out["e"], everyone)  # image 1 has no mask: it must not count


def test_gain_warm_up_step_is_classification_only(gain_batch):
    out = gain_step_losses(gain_net(), gain_batch, gain_params(alpha=1.0, ext=True), CPU, mine=False)
    assert close(out["total"], out["cl"])
    assert out["am"].item() == 0.0 and "e" not in out
