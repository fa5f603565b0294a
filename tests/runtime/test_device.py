"""Where tensors live, checked without a GPU, and bf16 autocast on the CPU.

Placement: each step runs on real CPU tensors while PyTorch's default device is `meta`
(`with torch.device("meta")`). A tensor made without naming a device - the mistake that stays hidden while
every test runs on the CPU, since there the default device is the network's - lands on meta, and mixing it
with the CPU tensors raises, as mixing CPU and CUDA tensors does on a GPU. Data loading makes its batches
on the default device by design, so the loaders are replaced by batches collated beforehand.

Mixed precision: `device: auto` turns on bf16 autocast on CUDA; here the GAIN and SEC steps run under the
same autocast on the CPU and must give finite losses and gradients close to float32's (tolerances below).
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gain.cam.model import GAIN, Classifier
from gain.cam.train import gain_step_losses
from gain.runtime.device import CPU, Runtime
from gain.runtime.params import load_params
from gain.sec import evaluate as sec_evaluate
from gain.sec.crf import CRFPool
from gain.sec.crf_exact import ExactCRF
from gain.sec.model import LargeFOV
from gain.sec.train import sec_step_losses
from gain.seeds import extract
from tests.pipeline_utils import REPO

SHIPPED = load_params(REPO / "params.yaml")
BF16 = Runtime(device=torch.device("cpu"), amp=True, channels_last=False)


def default_device_meta():
    """Factory calls without a device make meta tensors; the network and its inputs stay on the CPU."""
    return torch.device("meta")


def test_the_check_catches_a_tensor_made_on_the_default_device():
    x = torch.arange(4)
    with default_device_meta():
        torch.arange(4, device=x.device) - x  # named device: fine
        with pytest.raises((RuntimeError, NotImplementedError)):
            torch.arange(4) - x  # default device: meta against cpu


def gain_batch() -> dict:
    """Three 32 x 32 images, 1-2 labels each, masks on images 0 and 2 (GAIN_ext's pixel-labelled ones)."""
    g = torch.Generator().manual_seed(2)
    mask = torch.zeros(3, 32, 32, dtype=torch.long)
    mask[0, :12, :12], mask[0, 20:, 20:], mask[1, 8:24, 8:24], mask[2, :16], mask[2, 16:] = 1, 3, 2, 1, 2
    return {
        "image": torch.randn(3, 3, 32, 32, generator=g),
        "label": torch.tensor([[1.0, 0, 1.0], [0, 1.0, 0], [1.0, 1.0, 0]]),
        "mask": mask,
        "has_mask": torch.tensor([True, False, True]),
    }


def gain_net(**kw) -> GAIN:
    torch.manual_seed(3)
    return GAIN(Classifier("small", 3), **kw).eval()


def gain_grads(net: GAIN, batch: dict, p, rt: Runtime) -> tuple[dict, list[torch.Tensor]]:
    """GAIN step losses (fit's way: forward under rt.autocast, backward outside) and every weight's
    gradient."""
    with rt.autocast():
        losses = gain_step_losses(net, batch, p, rt)
    losses["total"].backward()
    return {k: v.detach().float() for k, v in losses.items()}, [w.grad for w in net.parameters()]


@pytest.mark.parametrize(
    ("kw", "p"),
    [
        ({}, {"ext": True, "grad_weights": "differentiable"}),
        ({"differentiable": False, "erase": "black", "am_grad": "mask"}, {"ext": True}),
        ({"masked_bn": "running"}, {"ext": False}),
    ],
)
def test_gain_step_makes_no_tensor_off_the_network_device(kw, p):
    params = replace(SHIPPED.gain, alpha=1.0, **p)
    expected, _ = gain_grads(gain_net(**kw), gain_batch(), params, CPU)
    net, batch = gain_net(**kw), gain_batch()  # made on the CPU, before the default device changes
    with default_device_meta():
        losses, grads = gain_grads(net, batch, params, CPU)
    assert set(losses) == set(expected) and ("e" in losses) == params.ext
    for k in expected:
        torch.testing.assert_close(losses[k], expected[k])
    assert all(g is not None and g.device.type == "cpu" for g in grads)


def seed_batch() -> dict:
    """A collated seed-extraction batch of two 32 x 32 images (what eval_loader yields)."""
    g = torch.Generator().manual_seed(4)
    return {
        "image": torch.randn(2, 3, 32, 32, generator=g),
        "label": torch.tensor([[1.0, 0, 1.0], [0, 1.0, 0]]),
        "orig_mask": [np.zeros((40, 36), np.uint8), np.zeros((32, 32), np.uint8)],
        "id": ["a", "b"],
    }


@pytest.mark.parametrize("saliency_at", ["image", "stride8"])
def test_seed_attention_and_saliency_make_no_tensor_off_the_network_device(monkeypatch, saliency_at):
    batch = seed_batch()
    monkeypatch.setattr(extract, "eval_loader", lambda dataset, batch_size: [batch])
    torch.manual_seed(5)
    classifier = Classifier("small", 3).eval()
    p = replace(SHIPPED.seeds, background="saliency", saliency_at=saliency_at, flip=True)
    expected = list(extract.image_cues(classifier, None, p, CPU, batch_size=2))
    with default_device_meta():
        got = list(extract.image_cues(classifier, None, p, CPU, batch_size=2))
    assert len(got) == 2
    for (_, cues, attn, classes), (_, cues0, attn0, classes0) in zip(got, expected, strict=True):
        assert cues.shape == attn.shape[1:] and (cues != 255).any()
        np.testing.assert_array_equal(cues, cues0)
        np.testing.assert_array_equal(classes, classes0)
        np.testing.assert_allclose(attn, attn0)


def sec_case() -> tuple[LargeFOV, dict]:
    """A small LargeFOV with a spread-out output, and a 3-image batch with cues and labels."""
    torch.manual_seed(0)
    net = LargeFOV("small", 4).eval()
    with torch.no_grad():
        net.fc8.weight.normal_(0, 1.0)
    g = torch.Generator().manual_seed(1)
    mask = torch.full((3, 48, 48), 255, dtype=torch.long)
    mask[0, :16, :16], mask[0, 30:, 30:], mask[1, 10:30, 20:40], mask[2, 5:20, 5:20] = 1, 0, 2, 3
    label = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    return net, {"image": torch.randn(3, 3, 48, 48, generator=g), "mask": mask, "label": label}


def sec_grads(case: tuple[LargeFOV, dict], crf, rt: Runtime) -> tuple[dict, list[torch.Tensor]]:
    net, batch = case
    with rt.autocast():
        losses = sec_step_losses(net, batch, crf, SHIPPED.sec, rt)
    losses["total"].backward()
    return {k: v.detach().float() for k, v in losses.items()}, [w.grad for w in net.parameters()]


def test_sec_step_with_the_exact_crf_makes_no_tensor_off_the_network_device():
    expected, _ = sec_grads(sec_case(), ExactCRF(), CPU)
    case = sec_case()
    with default_device_meta():
        losses, grads = sec_grads(case, ExactCRF(), CPU)
    assert set(losses) == {"seed", "expand", "constrain", "total"}
    for k in expected:
        torch.testing.assert_close(losses[k], expected[k])
    assert all(g is not None and g.device.type == "cpu" for g in grads)


def test_evaluate_inference_makes_no_tensor_off_the_network_device(monkeypatch):
    net, batch = sec_case()
    masks = [np.zeros((48, 48), np.uint8), np.ones((50, 40), np.uint8), np.full((48, 48), 2, np.uint8)]
    batch = {**batch, "orig_mask": masks, "orig_image": [np.zeros((*m.shape, 3), np.uint8) for m in masks]}
    monkeypatch.setattr(sec_evaluate, "eval_loader", lambda dataset, batch_size: [batch])
    dataset = SimpleNamespace(index=SimpleNamespace(num_classes=4))
    expected = sec_evaluate.evaluate_segmenter(net, dataset, CPU, crf_pool=CRFPool(0)).summary()
    with default_device_meta():
        got = sec_evaluate.evaluate_segmenter(net, dataset, CPU, crf_pool=CRFPool(0)).summary()
    assert got == expected and set(got) == {"miou", "pixel_accuracy", "crf_miou", "crf_pixel_accuracy"}


# --- bf16 autocast on the CPU ------------------------------------------------------------------------------
# bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4%). Measured on these cases, bf16 against float32:
# every loss within 0.27%; the gradient of all weights together (relative L2) 1.5% off for GAIN, 5.6% for
# GAIN_ext (L_e differentiates through Grad-CAM's own backward and the min-max normalisation) and 0.4% for
# SEC with either CRF. The tolerances leave about 2-4x.
LOSS_RTOL = 0.01
GRAD_RTOL = {"gain": 0.05, "gain_ext": 0.12, "sec": 0.02}


def relative_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors together."""
    num = sum(float(((x.float() - y) ** 2).sum()) for x, y in zip(a, b, strict=True))
    return (num / sum(float((y**2).sum()) for y in b)) ** 0.5


def assert_bf16_close(fp32: tuple[dict, list], bf16: tuple[dict, list], grad_rtol: float) -> None:
    (l32, g32), (l16, g16) = fp32, bf16
    for k, v in l32.items():
        assert torch.isfinite(l16[k]), k
        assert abs(float(l16[k] - v)) <= LOSS_RTOL * abs(float(v)) + 1e-6, (k, float(l16[k]), float(v))
    assert all(bool(torch.isfinite(g).all()) for g in g16)
    assert relative_gap(g16, g32) <= grad_rtol


@pytest.mark.parametrize("ext", [False, True])
def test_gain_step_under_bf16_autocast_is_close_to_float32(ext):
    params = replace(SHIPPED.gain, alpha=1.0, ext=ext)
    fp32 = gain_grads(gain_net(), gain_batch(), params, CPU)
    bf16 = gain_grads(gain_net(), gain_batch(), params, BF16)
    assert_bf16_close(fp32, bf16, GRAD_RTOL["gain_ext" if ext else "gain"])
    assert relative_gap(bf16[1], fp32[1]) > 1e-3  # autocast really ran in bf16


@pytest.mark.parametrize("crf", ["exact", "lattice"])
def test_sec_step_under_bf16_autocast_is_close_to_float32(crf):
    make = ExactCRF if crf == "exact" else lambda: CRFPool(0)
    fp32 = sec_grads(sec_case(), make(), CPU)
    bf16 = sec_grads(sec_case(), make(), BF16)
    assert_bf16_close(fp32, bf16, GRAD_RTOL["sec"])
    assert relative_gap(bf16[1], fp32[1]) > 1e-3
