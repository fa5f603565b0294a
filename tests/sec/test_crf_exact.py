"""gain/sec/crf_exact.py: the exact batched CRF against the O(N^2) float64 reference of tests/sec/test_crf.py (to
float tolerance) and against pydensecrf's lattice (within the gap tests/sec/test_crf.py measures), chunking,
autocast, the backend choice and its input checks."""

import re

import numpy as np
import pytest
import torch

from gain.sec import crf_exact
from gain.sec.crf import CRFParams, CRFPool, dense_crf
from gain.sec.crf_exact import ExactCRF, exact_dense_crf, train_crf_backend, training_crf
from tests.sec.test_crf import MEANFIELD_ATOL, _regions_case, exact_meanfield, small_object_case

# float32 kernels and messages against the float64 reference: over 50 seeds of `_regions_case` at scales 1 and
# 12 the largest |dQ| was 1.2e-7 with compat 1 and 2.2e-6 with SEC's compat 10 (messages up to ~13 nats).
FLOAT_ATOL = 1e-5
WEAK = CRFParams(gauss_compat=1.0, bilateral_compat=1.0)


def _stack(seeds, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, 3) uint8 images and (B, C, H, W) float32 log-probabilities of `_regions_case` seeds."""
    cases = [_regions_case(s, **kw) for s in seeds]
    return torch.from_numpy(np.stack([i for i, _ in cases])), torch.from_numpy(
        np.stack([p for _, p in cases])
    )


@pytest.mark.parametrize("params", [WEAK, CRFParams()], ids=["compat1", "sec"])
@pytest.mark.parametrize("scale", [1.0, 12.0])
def test_exact_equals_the_reference_meanfield(scale, params):
    images, log_probs = _stack(range(5))
    q = exact_dense_crf(images, log_probs, scale=scale, params=params)
    assert q.dtype == torch.float32 and q.shape == log_probs.shape
    for image, lp, got in zip(images.numpy(), log_probs.numpy(), q.numpy(), strict=True):
        ref = exact_meanfield(image, lp, scale=scale, params=params, iterations=params.iterations)
        np.testing.assert_allclose(got, ref, atol=FLOAT_ATOL, rtol=0)


def test_exact_is_not_the_reference_without_the_self_term():
    # The reference's j != i variant differs by > 0.19 at scale 12 (tests/sec/test_crf.py): exactness is telling.
    images, log_probs = _stack([0])
    q = exact_dense_crf(images, log_probs, scale=12.0, params=WEAK)[0].numpy()
    ref = exact_meanfield(images[0].numpy(), log_probs[0].numpy(), scale=12.0, params=WEAK, iterations=10,
                          include_self=False)  # fmt: skip
    assert np.abs(q - ref).max() > 0.1


@pytest.mark.parametrize("scale", [1.0, 12.0])
def test_exact_and_lattice_agree_within_the_lattice_gap(scale):
    # The gap tests/sec/test_crf.py measures for the lattice against the exact mean-field: |dQ| <= 0.05 with
    # compat 1, and >= 90% argmax agreement on average at SEC's compat 10. Exact vs lattice over 50 seeds:
    # largest |dQ| 0.015 (scale 1) and 0.029 (scale 12) with compat 1; at SEC's settings mean argmax
    # agreement 94% (scale 1) and 99% (scale 12), the worst image 29% (mean-field flips near ties).
    images, log_probs = _stack(range(10))
    weak = exact_dense_crf(images, log_probs, scale=scale, params=WEAK).numpy()
    sec = exact_dense_crf(images, log_probs, scale=scale).numpy()
    agree = []
    for i, (image, lp) in enumerate(zip(images.numpy(), log_probs.numpy(), strict=True)):
        np.testing.assert_allclose(
            dense_crf(image, lp, scale=scale, params=WEAK), weak[i], atol=MEANFIELD_ATOL
        )
        agree.append((dense_crf(image, lp, scale=scale).argmax(0) == sec[i].argmax(0)).mean())
    assert np.mean(agree) >= 0.9


@pytest.mark.parametrize("num_classes", [2, 21])
def test_small_confident_object_survives_at_41x41(num_classes):
    image, logits = small_object_case(num_classes)
    q = exact_dense_crf(torch.from_numpy(image)[None], torch.from_numpy(logits)[None], scale=12.0)[0]
    assert q[1, 19:22, 19:22].min() > 0.99
    assert q[0].sum() > 41 * 41 - 9 - 0.1


def test_zero_iterations_is_the_softmax_without_a_floor():
    images, log_probs = _stack([2])
    log_probs[0, 0, 0, 0] = -40.0
    q = exact_dense_crf(images, log_probs, scale=1.0, params=CRFParams(iterations=0))
    torch.testing.assert_close(q, torch.softmax(log_probs, dim=1))
    assert q[0, 0, 0, 0] < 1e-16


def test_one_cell_hand_computed():
    # One cell: both normalised kernels are [[1]], so Q <- softmax(log_probs + (3 + 10) Q).
    log_probs = torch.tensor([0.0, -1.0]).view(1, 2, 1, 1)
    q = torch.softmax(log_probs.flatten(), 0)
    for _ in range(10):
        q = torch.softmax(log_probs.flatten() + 13.0 * q, 0)
    got = exact_dense_crf(torch.zeros(1, 1, 1, 3, dtype=torch.uint8), log_probs, scale=12.0)
    torch.testing.assert_close(got.flatten(), q)


def test_chunks_and_batches_give_each_image_its_own_q(monkeypatch):
    images, log_probs = _stack(range(3), h=9, w=11, c=4)
    whole = exact_dense_crf(images, log_probs, scale=4.0)
    monkeypatch.setattr(crf_exact, "MAX_KERNEL_BYTES", 4 * 99 * 99)  # one image per chunk
    chunked = exact_dense_crf(images, log_probs, scale=4.0)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(exact_dense_crf(images[1:2], log_probs[1:2], scale=4.0), whole[1:2], atol=1e-6,
                               rtol=0)  # fmt: skip
    empty = exact_dense_crf(images[:0], log_probs[:0], scale=4.0)
    assert empty.shape == (0, 4, 9, 11)


def test_autocast_does_not_reach_the_crf():
    images, log_probs = _stack(range(2))
    plain = exact_dense_crf(images, log_probs, scale=12.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = ExactCRF().run(images, log_probs, 12.0)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, plain, atol=0, rtol=0)


def test_raw_logits_and_log_softmax_give_the_same_q():
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (2, 9, 11, 3), generator=g, dtype=torch.uint8)
    logits = 6 * torch.randn(2, 4, 9, 11, generator=g)
    torch.testing.assert_close(
        exact_dense_crf(images, logits, scale=12.0),
        exact_dense_crf(images, torch.log_softmax(logits, 1), scale=12.0),
        atol=1e-5,
        rtol=0,
    )


def test_backend_follows_the_device():
    assert train_crf_backend("auto", torch.device("cuda", 0)) == "exact"
    assert train_crf_backend("auto", torch.device("cpu")) == "lattice"
    assert train_crf_backend("exact", torch.device("cpu")) == "exact"
    assert train_crf_backend("lattice", torch.device("cuda")) == "lattice"
    with pytest.raises(
        ValueError, match=r"^train_crf must be one of \('auto', 'lattice', 'exact'\), got 'fast'$"
    ):
        train_crf_backend("fast", torch.device("cpu"))
    with training_crf("exact", torch.device("cpu"), 2) as crf:
        assert isinstance(crf, ExactCRF)
    with training_crf("auto", torch.device("cpu"), 0) as crf:
        assert isinstance(crf, CRFPool) and crf.processes == 0


def test_bad_inputs_raise():
    images, log_probs = _stack([0])
    cases = [
        (images.float(), log_probs, r"images must be a \(B, h, w, 3\) uint8 tensor"),
        (images, log_probs[0], r"log_probs must be a \(B, C, h, w\) float tensor"),
        (images[:, :-1], log_probs, re.escape("differ in (B, h, w)")),
        (images, torch.full_like(log_probs, -torch.inf), r"log_probs must be finite"),
    ]
    for bad_images, bad_probs, message in cases:
        with pytest.raises(ValueError, match=message):
            exact_dense_crf(bad_images, bad_probs, scale=1.0)
    with pytest.raises(ValueError, match=r"^scale must be a number > 0, got 0\.0$"):
        exact_dense_crf(images, log_probs, scale=0.0)
