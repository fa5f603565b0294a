"""gain/sec/train.py and gain/sec/evaluate.py: what the SEC step hands the CRF (the unfloored log-softmax),
which loss terms it computes, SEC's fixed-resize input, held-out checkpoint selection (and the model file's
trunk record), and the test-time upsampling and unary of SEC's demo; gain/data/heldout.py's deterministic
split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gain.data.dataset import synthetic_dataset_index
from gain.data.heldout import carve_heldout
from gain.data.synthetic import SyntheticConfig, generate
from gain.data.transforms import RandomCrop, RandomHFlip, RandomScale, Resize
from gain.models.backbones import SmallTrunk
from gain.runtime.device import CPU, seed_everything
from gain.runtime.errors import InputError
from gain.runtime.params import load_params
from gain.runtime.stage import save_model
from gain.runtime.tracking import NullRun
from gain.sec import train as sec_train
from gain.sec.evaluate import TEST_PROB_FLOOR, crf_unary, predict
from gain.sec.model import load_segmenter
from gain.sec.scale import resolve, train_crf_scale
from gain.sec.train import (
    cell_pixels,
    downscale_cues,
    downscale_images,
    sec_step_losses,
    train_sec,
    train_transform,
)
from tests.tensor_utils import record_dataset_ids, single_thread  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = load_params(REPO / "params.yaml")


class FixedLogits(nn.Module):
    """A 'network' whose output is a fixed (B, C, h, w) tensor, plus one weight so losses have a gradient."""

    def __init__(self, logits: torch.Tensor, align_corners: bool = True):
        super().__init__()
        self.logits = logits
        self.align_corners = align_corners
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * self.logits[: x.shape[0]]


class RecordingPool:
    """CRFPool stand-in: records what it is given and returns a uniform Q."""

    def __init__(self):
        self.calls = []

    def map(self, images, log_probs, scale):
        self.calls.append((images, log_probs, scale))
        return np.full(log_probs.shape, 1.0 / log_probs.shape[1], dtype=np.float32)


class NoPool:
    def map(self, *args):
        raise AssertionError("the CRF ran although the constrain term is off")


def step_case():
    """Two 16x16 images, 3 classes, logits on a 2x2 grid with margins of 50 (p ~ 1e-22 for the losers)."""
    logits = torch.zeros(2, 3, 2, 2)
    logits[:, 0] = 50.0
    logits[0, 1, 0, 0] = 100.0
    mask = torch.full((2, 16, 16), 255, dtype=torch.long)
    mask[:, :8, :8] = 1
    batch = {
        "image": torch.zeros(2, 3, 16, 16),
        "mask": mask,
        "label": torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
    }
    return FixedLogits(logits), batch


def test_step_hands_the_crf_the_unfloored_log_softmax():
    net, batch = step_case()
    pool = RecordingPool()
    out = sec_step_losses(net, batch, pool, SHIPPED.sec, CPU)
    assert set(out) == {"seed", "expand", "constrain", "total"}
    ((images, log_probs, scale),) = pool.calls
    assert images.shape == (2, 2, 2, 3) and images.dtype == np.uint8
    assert scale == resolve(SHIPPED.sec.crf_scale, train_crf_scale, (2, 2))
    expected = torch.log_softmax(net.logits, dim=1).numpy()
    np.testing.assert_allclose(log_probs, expected, atol=1e-5)
    assert log_probs.min() < -49  # no floor: log(1e-5) would be -11.5, SEC's min_prob -9.2


@pytest.mark.parametrize(
    "terms", [("seed",), ("expand",), ("seed", "expand"), ("expand", "constrain"), ("constrain",)]
)
def test_step_computes_only_the_chosen_terms(terms):
    net, batch = step_case()
    pool = RecordingPool() if "constrain" in terms else NoPool()
    out = sec_step_losses(net, batch, pool, replace(SHIPPED.sec, losses=terms), CPU)
    assert set(out) == {*terms, "total"}
    torch.testing.assert_close(out["total"], sum(out[t] for t in terms))
    out["total"].backward()
    assert net.scale.grad is not None


def test_fixed_resize_input_is_the_default_and_scale_crop_flip_an_option():
    assert SHIPPED.sec.augment == "none"
    fixed = train_transform(replace(SHIPPED.sec, augment="none", input_size=12))
    assert [type(t) for t in fixed.transforms] == [Resize]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (20, 30), dtype=np.uint8)
    a = fixed(image, mask, np.random.default_rng(1))
    b = fixed(image, mask, np.random.default_rng(2))  # no randomness: every epoch sees the same input
    assert a[0].shape == (12, 12, 3) and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    aug = train_transform(replace(SHIPPED.sec, augment="scale_crop_flip", input_size=12))
    assert [type(t) for t in aug.transforms] == [RandomScale, RandomCrop, RandomHFlip]


def test_cell_pixels_follow_the_grid_geometry():
    # VGG16-LargeFOV at 321: cell i on pixel 8i (corners); the small trunk at 112: centre 8i + 3.5 -> 8i + 4.
    assert cell_pixels(321, 41, align_corners=True).tolist() == list(range(0, 321, 8))
    assert cell_pixels(112, 14, align_corners=False).tolist() == list(range(4, 112, 8))
    assert cell_pixels(5, 1, align_corners=True).tolist() == [0]


def test_cues_are_taken_under_each_cell_centre():
    cues = torch.full((1, 16, 16), 255, dtype=torch.long)
    cues[0, 4, 4] = 1  # under cell (0, 0)'s half-pixel centre (2 cells of 8 px)
    cues[0, 15, 15] = 2  # the last pixel: corner-aligned cell (1, 1)
    half = downscale_cues(cues, (2, 2), align_corners=False)
    corner = downscale_cues(cues, (2, 2), align_corners=True)
    assert half.tolist() == [[[1, 255], [255, 255]]]
    assert corner.tolist() == [[[255, 255], [255, 2]]]


def test_crf_image_is_zoomed_with_corners_aligned():
    # SEC's CRF layer zooms the input to 41x41 with scipy (order 1, corners aligned): 5 -> 3 keeps
    # pixels 0, 2 and 4 of each row and column exactly.
    x = torch.zeros(1, 3, 5, 5)
    x[0, :, ::2, ::2] = 1.0
    small = downscale_images(x, (3, 3))
    assert small.shape == (1, 3, 3, 3)
    np.testing.assert_array_equal(small, downscale_images(torch.ones(1, 3, 5, 5), (3, 3)))  # only 1.0 pixels


# ---------------------------------------------------------------- test time: SEC's deploy/demo.py


def test_predict_zooms_probabilities_with_corners_aligned():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[4.0, 0.0], [0.0, -4.0]])
    item = {"image": torch.zeros(3, 16, 16), "orig_mask": np.zeros((3, 3), np.uint8), "id": "a"}
    ((_, probs),) = list(predict(FixedLogits(logits), [item], CPU))
    p = torch.softmax(logits[0], dim=0).numpy()
    assert probs.shape == (2, 3, 3)
    np.testing.assert_allclose(probs[:, ::2, ::2], p, atol=1e-6)  # the corners are the output cells
    np.testing.assert_allclose(probs[:, 1, 1], p.mean(axis=(1, 2)), atol=1e-6)  # probabilities, not logits
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-6)
    # A half-pixel grid (the small trunk): 2 cells over 4 pixels, centres at pixels 0.5 and 2.5.
    item["orig_mask"] = np.zeros((4, 4), np.uint8)
    ((_, probs),) = list(predict(FixedLogits(logits, align_corners=False), [item], CPU))
    np.testing.assert_allclose(probs[:, 0, 0], p[:, 0, 0], atol=1e-6)  # clamped beyond the first centre
    np.testing.assert_allclose(
        probs[:, 1, 1],
        0.75**2 * p[:, 0, 0] + 0.1875 * (p[:, 0, 1] + p[:, 1, 0]) + 0.0625 * p[:, 1, 1],
        atol=1e-6,
    )


def test_test_time_crf_unary_floors_probabilities_at_1e_5():
    probs = np.array([[[1.0, 1e-9]], [[0.0, 1.0]]], dtype=np.float32)
    unary = crf_unary(probs)
    assert unary.dtype == np.float32
    np.testing.assert_allclose(unary, np.log([[[1.0, TEST_PROB_FLOOR]], [[TEST_PROB_FLOOR, 1.0]]]), rtol=1e-6)


# ---------------------------------------------------------------- held-out selection


def test_carve_heldout_is_seeded_and_respects_eligibility():
    ids = [f"i{k:02d}" for k in range(20)]
    train, held = carve_heldout(ids, 0.2, seed=3)
    assert len(held) == 4 and sorted(train + held) == sorted(ids) and not set(train) & set(held)
    assert [i for i in ids if i in held] == held and [i for i in ids if i in train] == train
    assert carve_heldout(ids, 0.2, seed=3) == (train, held)
    assert carve_heldout(ids, 0.2, seed=4)[1] != held
    masked = ids[::3]  # 7 ids with masks
    _, held = carve_heldout(ids, 0.25, seed=0, eligible=masked)
    assert len(held) == 5 and set(held) <= set(masked)
    with pytest.raises(InputError, match="only 7 are eligible"):
        carve_heldout(ids, 0.4, seed=0, eligible=masked, what="ids with masks")
    with pytest.raises(ValueError, match="fraction"):
        carve_heldout(ids, 0.0, seed=0)


def test_sec_heldout_selection_trains_without_the_heldout_ids_and_ships_their_best_step(
    tmp_path, monkeypatch
):
    root = tmp_path / "VOC2012"
    cfg = SyntheticConfig(num_classes=2, image_size=32, n_train=10, n_val=2, n_bias_eval=1, pixel_labelled=0)
    generate(root, cfg, progress=False)
    index = synthetic_dataset_index(root)
    p = replace(
        SHIPPED.sec,
        init="none",
        input_size=32,
        batch_size=4,
        iterations=4,
        eval_every=1,
        select="heldout",
        heldout_fraction=0.2,
        losses=("seed", "expand"),
    )
    seen = record_dataset_ids(monkeypatch, sec_train)
    seed_everything(0, True)
    result, _ = train_sec(
        p,
        index,
        CPU,
        NullRun(),
        seed=0,
        knobs=replace(SHIPPED.runtime, crf_workers=0),
        seeds_dir=root / "SegmentationClass",
        gain_model=None,
        ckpt_dir=tmp_path / "ckpt",
        fingerprint="sec",
    )
    train_ids, val_ids, held_ids = seen
    _, expected_held = carve_heldout(index.splits["weak_train"], 0.2, 0, eligible=index.splits["seed_eval"])
    assert held_ids == expected_held and len(held_ids) == 2
    assert not set(train_ids) & set(held_ids) and len(train_ids) == 8
    assert val_ids == index.splits["val"]
    scores = [h["heldout_miou"] for h in result.history]
    assert len(scores) == 4 and all("miou" in h for h in result.history)  # val stays a monitoring curve
    assert result.chosen["step"] == result.history[int(np.argmax(scores))]["step"]
    # The model file records its trunk, and is rebuilt on it.
    assert result.meta["trunk"] == SmallTrunk.spec.record()
    save_model(tmp_path / "model.pt", result)
    loaded, params = load_segmenter(tmp_path / "model.pt")
    assert params == result.meta["params"] and loaded.trunk.spec == SmallTrunk.spec
    assert all(torch.equal(v, result.model_state[k]) for k, v in loaded.state_dict().items())
