"""The CRF reference row: SEC's test-time CRF applied to dense attention alone (gain.sec.evaluate
attention_probs / evaluate_attention_crf), the score SEC + CRF has to beat."""

from __future__ import annotations

import numpy as np
import pytest

from gain.evaluation.metrics import ConfusionMatrix
from gain.sec.crf import CRFPool
from gain.sec.evaluate import attention_probs, evaluate_attention_crf


def test_attention_probs_argmax_is_the_binarised_attention():
    rng = np.random.default_rng(0)
    attn = rng.random((2, 6, 5)) * np.array([0.5, 1.0])[:, None, None]  # maps with maxima 0.5 and 1
    probs = attention_probs(attn, np.array([2, 4]), 5, fg_fraction=0.2)
    assert probs.shape == (5, 6, 5) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-6)
    assert (probs[[1, 3]] == 0).all()  # absent classes
    norm = attn / attn.max(axis=(1, 2), keepdims=True)
    want = np.where(norm.max(axis=0) > 0.2, np.array([2, 4])[norm.argmax(axis=0)], 0)
    np.testing.assert_array_equal(probs.argmax(axis=0), want)
    # No class: every pixel background.
    assert (attention_probs(np.zeros((0, 3, 3)), np.zeros(0, int), 3, fg_fraction=0.2).argmax(0) == 0).all()


def _square_scene(size: int = 64):
    """A flat square object (class 1) on a flat background, and a coarse attention blob over it that spills
    past its edges and fades before its corners, as an attention on an 8 px grid does."""
    image = np.full((size, size, 3), 40, dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[16:48, 16:48] = 1
    image[mask == 1] = (200, 180, 60)
    yy, xx = np.mgrid[0:size, 0:size]
    attn = np.exp(-(((yy - 31.5) ** 2 + (xx - 31.5) ** 2) / (2 * 14.0**2)))[None]
    return image, mask, attn


def test_the_crf_on_attention_snaps_it_to_the_object_and_is_scored_like_the_devkit():
    image, mask, attn = _square_scene()
    item = {"orig_image": image, "orig_mask": mask}
    with CRFPool(0) as pool:
        crf = evaluate_attention_crf(
            [(item, attn, np.array([1]))], 2, pool, fg_fraction=0.2, crf_scale="auto"
        )
        flat = evaluate_attention_crf([(item, attn, np.array([1]))], 2, pool, fg_fraction=0.2, crf_scale=1e3)
    raw = ConfusionMatrix(2)
    raw.update(mask, attention_probs(attn, np.array([1]), 2, fg_fraction=0.2).argmax(0).astype(np.uint8))
    raw_miou = raw.compute()["miou"]
    print(f"binarised attention mIoU {raw_miou:.3f}, after the CRF {crf:.3f}, CRF without reach {flat:.3f}")
    assert crf > raw_miou + 0.1  # colour edges pull the attention onto the square's edges
    assert crf > 0.9
    # With the spatial stds divided by 1000 the pairwise terms reach no neighbour: the attention stays.
    assert flat == pytest.approx(raw_miou, abs=0.02)
