"""gain/sec/crf.py: pydensecrf's dense CRF against an exact O(N^2) mean-field reference, the unfloored unary
that lets a small confident object survive, and the worker pool."""

import multiprocessing
import re
import signal

import numpy as np
import pytest
import torch

from gain.sec.crf import CRFParams, CRFPool, dense_crf
from gain.sec.losses import sec_probs


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of (C, N)."""
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _normalised(k: np.ndarray) -> np.ndarray:
    """D^-1/2 K D^-1/2 with D = diag(row sums): pydensecrf's default NORMALIZE_SYMMETRIC."""
    d = 1.0 / np.sqrt(k.sum(axis=1))
    return d[:, None] * k * d[None, :]


def exact_meanfield(
    image: np.ndarray,
    log_probs: np.ndarray,
    *,
    scale: float,
    params: CRFParams,
    iterations: int,
    include_self: bool = True,
) -> np.ndarray:
    """The mean-field updates pydensecrf runs, with exact dense (N, N) Gaussian kernels: (C, H, W) float64.

    Q0 = softmax(-U); Q <- softmax(-U + sum_m w_m Q K_m), U = -log_probs, K_m the symmetrically
    normalised kernel. Potts compatibility with weight w multiplies the message by -w and inference subtracts
    it, hence the +w here. pydensecrf's permutohedral filter does not drop the j = i term (probing it with a
    one-hot Q shows a non-zero kernel diagonal); `include_self=False` is the textbook sum over j != i.
    """
    c, h, w = log_probs.shape
    ys, xs = np.mgrid[0:h, 0:w]
    pos = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)  # (N, 2), row-major like pydensecrf
    rgb = image.reshape(-1, 3).astype(np.float64)  # (N, 3)
    d_pos = ((pos[:, None] - pos[None]) ** 2).sum(-1)  # (N, N) squared pixel distances
    d_rgb = ((rgb[:, None] - rgb[None]) ** 2).sum(-1)  # (N, N) squared colour distances
    gauss = np.exp(-d_pos / (2 * (params.gauss_sxy / scale) ** 2))
    bilateral = np.exp(
        -d_pos / (2 * (params.bilateral_sxy / scale) ** 2) - d_rgb / (2 * params.bilateral_srgb**2)
    )
    if not include_self:
        gauss -= np.eye(h * w)
        bilateral -= np.eye(h * w)
    kernels = [(params.gauss_compat, _normalised(gauss)), (params.bilateral_compat, _normalised(bilateral))]
    unary = -log_probs.reshape(c, -1).astype(np.float64)  # (C, N)
    q = _softmax(-unary)
    for _ in range(iterations):
        q = _softmax(-unary + sum(wt * q @ k for wt, k in kernels))  # kernels are symmetric: Q K = (K Q^T)^T
    return q.reshape(c, h, w)


def _regions_case(seed: int, h: int = 6, w: int = 7, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A (H, W, 3) uint8 image of three noisy colour regions and (C, H, W) float32 random log-softmax
    scores."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(3, 3))
    regions = np.minimum(np.arange(w) * 3 // w, 2)[None, :].repeat(h, axis=0)  # (H, W) three vertical bands
    image = np.clip(palette[regions] + rng.normal(0, 4, size=(h, w, 3)), 0, 255).astype(np.uint8)
    probs = _softmax(rng.normal(0, 1.5, size=(c, h * w))).reshape(c, h, w)
    return image, np.log(probs).astype(np.float32)


def _batch(seed: int, b: int = 3, h: int = 9, w: int = 11, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(b, h, w, 3), dtype=np.uint8)
    probs = _softmax(rng.normal(0, 1.5, size=(c, b * h * w))).reshape(c, b, h, w).transpose(1, 0, 2, 3)
    return images, np.ascontiguousarray(np.log(probs), dtype=np.float32)


@pytest.fixture(scope="module")
def pool():
    with CRFPool(2) as p:
        yield p


# Tolerance. The permutohedral lattice approximates each normalised kernel: probed entry by entry on 6x7 images,
# its rms error is 10-20% of the kernel's rms, so each pairwise message is off by ~0.1 x compat nats. With
# compat 1, over 50 seeds of `_regions_case` at scales 1, 4 and 12, the largest |Q - Q_exact| after 10
# iterations was 0.029 and at most 1 pixel in 42 changed argmax; 0.05 leaves a 1.7x margin. With SEC's
# compat 10 the same relative error moves messages by up to ~3 nats, and mean-field, bistable near ties, can
# flip most of an image (worst seed: 29% argmax agreement, |dQ| up to 1), so at SEC's settings only the
# average argmax agreement over several images is a fair check (94-99% over 50 seeds; tested >= 90%).
MEANFIELD_ATOL = 0.05


@pytest.mark.parametrize("scale", [1.0, 12.0])
@pytest.mark.parametrize("seed", range(5))
def test_matches_exact_reference(seed, scale):
    image, probs = _regions_case(seed)
    params = CRFParams(gauss_compat=1.0, bilateral_compat=1.0)
    q = dense_crf(image, probs, scale=scale, params=params)
    ref = exact_meanfield(image, probs, scale=scale, params=params, iterations=params.iterations)
    np.testing.assert_allclose(q, ref, atol=MEANFIELD_ATOL, rtol=0)
    assert (q.argmax(0) == ref.argmax(0)).mean() >= 0.9


def test_kernel_includes_the_pixel_itself():
    # Pins the convention the reference follows. At scale 12 the Gaussian kernel (std 0.25 px) is almost all
    # self-weight, so dropping the j = i term changes it most (over 50 seeds: error >= 0.19 without, <= 0.03 with).
    image, probs = _regions_case(0)
    params = CRFParams(gauss_compat=1.0, bilateral_compat=1.0)
    q = dense_crf(image, probs, scale=12.0, params=params)
    kw = dict(scale=12.0, params=params, iterations=params.iterations)
    err_with = np.abs(q - exact_meanfield(image, probs, **kw)).max()
    err_without = np.abs(q - exact_meanfield(image, probs, include_self=False, **kw)).max()
    assert err_with < MEANFIELD_ATOL < err_without


@pytest.mark.parametrize("scale", [1.0, 12.0])
def test_sec_settings_agree_with_exact_reference_on_argmax(scale):
    agree = []
    for seed in range(10):
        image, probs = _regions_case(seed)
        q = dense_crf(image, probs, scale=scale)
        ref = exact_meanfield(
            image, probs, scale=scale, params=CRFParams(), iterations=CRFParams().iterations
        )
        agree.append((q.argmax(0) == ref.argmax(0)).mean())
    assert np.mean(agree) >= 0.9


def test_output_is_a_distribution_per_pixel():
    image, probs = _regions_case(1, h=13, w=17, c=5)
    q = dense_crf(image, probs, scale=1.0)
    assert q.shape == probs.shape and q.dtype == np.float32
    assert q.min() >= 0.0 and q.max() <= 1.0
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)


def test_zero_iterations_is_the_softmax_of_the_scores_without_a_floor():
    image = np.zeros((6, 7, 3), dtype=np.uint8)
    _, log_probs = _regions_case(2)
    log_probs[0, 0, 0] = -40.0  # p = 4e-18: a floor at 1e-5 would lift it 10^12-fold
    q = dense_crf(image, log_probs, scale=1.0, params=CRFParams(iterations=0))
    np.testing.assert_allclose(q, _softmax(log_probs.reshape(3, -1)).reshape(q.shape), rtol=1e-4, atol=1e-12)
    assert q[0, 0, 0] < 1e-16


def test_raw_logits_and_log_softmax_give_the_same_q():
    # SEC's CRF layer takes the raw fc8 scores; the log-softmax differs by a per-pixel constant.
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    logits = rng.normal(0, 6, size=(4, 9, 11)).astype(np.float32)
    log_softmax = torch.log_softmax(torch.from_numpy(logits), dim=0).numpy()
    np.testing.assert_allclose(
        dense_crf(image, logits, scale=12.0), dense_crf(image, log_softmax, scale=12.0), atol=1e-5
    )


def small_object_case(num_classes: int, margin: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """41x41 grid (SEC's output size) on a one-colour image: background scores `margin` above every other
    class, except a 3x3-cell object whose class 1 scores `margin` above the rest. -> (image, logits)."""
    logits = np.zeros((num_classes, 41, 41), np.float32)
    logits[0] = margin
    logits[0, 19:22, 19:22] = 0.0
    logits[1, 19:22, 19:22] = margin
    return np.full((41, 41, 3), 120, np.uint8), logits


@pytest.mark.parametrize("num_classes", [2, 21])
def test_small_confident_object_survives_the_training_crf(num_classes):
    # SEC's training CRF (s = 12) on the unfloored log-softmax keeps the object (Q = 1.00 at its centre);
    # the same CRF on floored probabilities (SEC's min_prob 1e-4, a unary capped near 9.2 nats) lets the
    # background's pairwise messages (up to 10 + 3 nats) erase it (Q = 0.015), so the constrain loss would
    # teach the network to drop small objects.
    image, logits = small_object_case(num_classes)
    log_softmax = torch.log_softmax(torch.from_numpy(logits), dim=0).numpy()
    q = dense_crf(image, log_softmax, scale=12.0)
    assert q[1, 19:22, 19:22].min() > 0.99
    assert q[0].sum() > 41 * 41 - 9 - 0.1  # the background stays background
    floored = torch.log(sec_probs(torch.from_numpy(logits)[None], 1e-4)[0]).numpy()
    assert dense_crf(image, floored, scale=12.0)[1, 20, 20] < 0.05


def test_bilateral_term_snaps_labels_to_colour_regions():
    rng = np.random.default_rng(0)
    h, w = 12, 16
    truth = np.zeros((h, w), dtype=np.int64)
    truth[:, 6:] = 1  # off-centre boundary: left region red, right region blue
    image = np.where(truth[..., None] == 0, [200, 30, 30], [30, 30, 200]).astype(np.uint8)
    noisy = np.where(rng.random((h, w)) < 0.2, 1 - truth, truth)  # 20% of pixels vote for the wrong class
    probs = np.log(np.stack([np.where(noisy == 0, 0.6, 0.4), np.where(noisy == 1, 0.6, 0.4)]))
    probs = probs.astype(np.float32)
    assert (probs.argmax(0) != truth).mean() > 0.1
    q = dense_crf(image, probs, scale=1.0)
    np.testing.assert_array_equal(q.argmax(0), truth)
    # Without the colour term the smoothness kernel alone leaves errors (15 of 192 pixels here), and on a
    # one-colour image the same CRF cannot find the boundary at all.
    no_bilateral = dense_crf(image, probs, scale=1.0, params=CRFParams(bilateral_compat=0.0))
    assert (no_bilateral.argmax(0) != truth).sum() > 5
    grey = dense_crf(np.full_like(image, 120), probs, scale=1.0)
    assert (grey.argmax(0) != truth).mean() > 0.2


def test_scale_changes_the_result():
    # compat 1 keeps mean-field away from saturation (SEC's compat 10 often drives both scales to the same
    # near one-hot Q); scale 12 shrinks both spatial stds 12-fold, which moves Q by 0.14-0.19 on these cases.
    params = CRFParams(gauss_compat=1.0, bilateral_compat=1.0)
    for seed in range(3):
        image, probs = _regions_case(seed)
        q1 = dense_crf(image, probs, scale=1.0, params=params)
        q12 = dense_crf(image, probs, scale=12.0, params=params)
        assert np.abs(q1 - q12).max() > 0.1


def test_shape_mismatch_names_the_shapes():
    image = np.zeros((6, 8, 3), dtype=np.uint8)
    probs = np.full((3, 6, 7), 1 / 3, dtype=np.float32)
    with pytest.raises(
        ValueError,
        match=r"^log_probs \(C, H, W\) = \(3, 6, 7\) and image \(H, W, 3\) = \(6, 8, 3\) differ in \(H, W\): "
        r"\(6, 7\) vs \(6, 8\)$",
    ):
        dense_crf(image, probs, scale=1.0)


@pytest.mark.parametrize(
    ("image", "probs", "message"),
    [
        (
            np.zeros((6, 7), np.uint8),
            np.ones((3, 6, 7), np.float32),
            r"^image must be an \(H, W, 3\) array, got shape \(6, 7\)$",
        ),
        (
            np.zeros((6, 7, 3), np.float32),
            np.ones((3, 6, 7), np.float32),
            r"^image must be uint8 RGB, got dtype float32$",
        ),
        (
            np.zeros((7, 6, 3), np.uint8).transpose(1, 0, 2),
            np.ones((3, 6, 7), np.float32),
            r"^image must be C-contiguous \(pass np\.ascontiguousarray\(image\)\)$",
        ),
        (
            np.zeros((6, 7, 3), np.uint8),
            np.ones((3, 6, 7), np.float64),
            r"^log_probs must be float32, got dtype float64$",
        ),
        (
            np.zeros((6, 7, 3), np.uint8),
            np.ones((6, 7), np.float32),
            r"^log_probs must be a \(C, H, W\) array, got shape \(6, 7\)$",
        ),
        (
            np.zeros((6, 7, 3), np.uint8),
            np.full((3, 6, 7), -np.inf, np.float32),
            r"^log_probs must be finite \(floor probabilities before taking their log\)$",
        ),
    ],
)
def test_bad_inputs_raise(image, probs, message):
    with pytest.raises(ValueError, match=message):
        dense_crf(image, probs, scale=1.0)


@pytest.mark.parametrize("shape", [(0, 6, 7), (3, 0, 7), (3, 6, 0)])
def test_no_class_or_no_pixel_is_an_error(shape):
    image = np.zeros((*shape[1:], 3), np.uint8)
    with pytest.raises(
        ValueError,
        match=rf"^log_probs must have at least one class and one pixel, got shape {re.escape(str(shape))}$",
    ):
        dense_crf(image, np.zeros(shape, np.float32), scale=1.0)


@pytest.mark.parametrize("shape", [(1, 6, 7), (3, 1, 7), (3, 6, 1), (2, 1, 1)])
def test_one_class_one_row_one_column_or_one_pixel_is_allowed(shape):
    image = np.zeros((*shape[1:], 3), np.uint8)
    q = dense_crf(image, np.log(np.full(shape, 1 / shape[0], np.float32)), scale=1.0)
    np.testing.assert_allclose(q.sum(axis=0), 1.0, rtol=1e-5)


def test_scale_divides_both_spatial_stds():
    image, probs = _regions_case(3, h=12, w=14)
    params = CRFParams(gauss_compat=2.0, bilateral_compat=5.0)
    divided = CRFParams(gauss_sxy=3.0 / 4, gauss_compat=2.0, bilateral_sxy=80.0 / 4, bilateral_compat=5.0)
    np.testing.assert_array_equal(
        dense_crf(image, probs, scale=4.0, params=params), dense_crf(image, probs, scale=1.0, params=divided)
    )


def test_bad_scale_and_params_raise():
    image, probs = _regions_case(0)
    for scale in (0.0, True, "1"):
        with pytest.raises(ValueError, match=rf"^scale must be a number > 0, got {re.escape(repr(scale))}$"):
            dense_crf(image, probs, scale=scale)
    with pytest.raises(ValueError, match="bilateral_srgb"):
        CRFParams(bilateral_srgb=-1.0)
    with pytest.raises(ValueError, match="gauss_compat"):
        CRFParams(gauss_compat=-1.0)
    with pytest.raises(ValueError, match="iterations"):
        CRFParams(iterations=2.5)


def test_pool_map_equals_inline_dense_crf_exactly(pool):
    images, probs = _batch(0)
    out = pool.map(images, probs, scale=4.0)
    assert out.shape == probs.shape and out.dtype == np.float32
    for image, prob, got in zip(images, probs, out, strict=True):
        np.testing.assert_array_equal(got, dense_crf(image, prob, scale=4.0))


def test_submit_get_matches_map(pool):
    images, probs = _batch(1)
    pending = pool.submit(images, probs, scale=12.0)
    np.testing.assert_array_equal(pending.get(timeout=60), pool.map(images, probs, scale=12.0))


def test_pool_uses_its_params(pool):
    images, probs = _batch(2, b=2)
    params = CRFParams(iterations=3, bilateral_compat=4.0)
    with CRFPool(0, params) as inline:
        expected = inline.map(images, probs, scale=1.0)
    assert not np.array_equal(expected, pool.map(images, probs, scale=1.0))
    np.testing.assert_array_equal(expected[0], dense_crf(images[0], probs[0], scale=1.0, params=params))


def test_inline_pool_runs_in_the_calling_process():
    images, probs = _batch(3)
    with CRFPool(0) as inline:
        assert inline._pool is None
        out = inline.map(images, probs, scale=1.0)
        np.testing.assert_array_equal(inline.submit(images, probs, scale=1.0).get(), out)
    for image, prob, got in zip(images, probs, out, strict=True):
        np.testing.assert_array_equal(got, dense_crf(image, prob, scale=1.0))


def test_warm_up_waits_for_the_workers_and_leaves_the_pool_as_it_was(pool):
    images, probs = _batch(8)
    with CRFPool(0) as inline:
        inline.warm_up()  # no workers to wait for
        pool.warm_up()
        np.testing.assert_array_equal(pool.map(images, probs, 1.0), inline.map(images, probs, 1.0))


def test_pool_checks_the_batch_before_dispatch(pool):
    images, probs = _batch(4)
    with pytest.raises(ValueError, match="batch sizes differ"):
        pool.submit(images[:2], probs, scale=1.0)
    with pytest.raises(ValueError, match=r"differ in \(H, W\)"):
        pool.map(np.ascontiguousarray(images[:, :, :-1]), probs, scale=1.0)


def test_empty_batch_and_closed_pool():
    images, probs = _batch(5)
    with CRFPool(0) as inline:
        empty = inline.map(images[:0], probs[:0], scale=1.0)
        assert empty.shape == (0, *probs.shape[1:]) and empty.dtype == np.float32
    closed = CRFPool(1)
    closed.close()
    closed.close()
    with pytest.raises(RuntimeError, match=r"^CRFPool is closed$"):
        closed.map(images, probs, scale=1.0)


def test_crf_params_must_be_positive_numbers():
    CRFParams(gauss_sxy=0.5, bilateral_srgb=0.5)  # any positive std, also below 1
    with pytest.raises(ValueError, match=r"^CRFParams.gauss_sxy must be a number, got 'x'$"):
        CRFParams(gauss_sxy="x")
    with pytest.raises(ValueError, match=r"^CRFParams.bilateral_sxy must be > 0, got 0.0$"):
        CRFParams(bilateral_sxy=0.0)


def test_batch_errors_name_the_bad_argument_and_its_shape():
    images, probs = _batch(6, b=2)
    cases = [
        (images[0], probs, r"^images must be a \(B, H, W, 3\) array, got shape \(9, 11, 3\)$"),
        (images.tolist(), probs, r"^images must be a \(B, H, W, 3\) array, got shape \(2, 9, 11, 3\)$"),
        (images, probs[0], r"^log_probs must be a \(B, C, H, W\) array, got shape \(4, 9, 11\)$"),
        (images, probs.tolist(), r"^log_probs must be a \(B, C, H, W\) array, got shape \(2, 4, 9, 11\)$"),
        # Reversed along the batch: each image is contiguous, the batch is not.
        (images[::-1], probs, r"^images must be C-contiguous \(pass np\.ascontiguousarray\(images\)\)$"),
    ]
    with CRFPool(0) as inline:
        for bad_images, bad_probs, message in cases:
            with pytest.raises(ValueError, match=message):
                inline.submit(bad_images, bad_probs, scale=1.0)


@pytest.mark.parametrize("processes", [-1, True, 1.0, "2"])
def test_pool_size_must_be_an_int_at_least_zero(processes):
    with pytest.raises(
        ValueError, match=rf"^processes must be an int >= 0, got {re.escape(repr(processes))}$"
    ):
        CRFPool(processes)


def test_one_worker_pool_runs_batches_empty_ones_too_and_honours_the_timeout():
    images, probs = _batch(7, b=2, h=60, w=80)
    with CRFPool(1) as single:
        assert single._pool is not None  # one worker process, not the inline path
        assert single._pool._ctx.get_start_method() == "spawn"  # not fork: the caller has torch's threads
        assert single._pool._processes == 1  # the size asked for, not one worker per core
        empty = single.map(images[:0], probs[:0], scale=1.0)
        assert empty.shape == (0, *probs.shape[1:]) and empty.dtype == np.float32
        pending = single.submit(images, probs, scale=1.0)
        with pytest.raises(multiprocessing.TimeoutError):
            pending.get(timeout=1e-4)  # two 60x80 CRFs take far longer than 0.1 ms
        out = pending.get(timeout=60)
        np.testing.assert_array_equal(out, single.map(images, probs, scale=1.0))
    np.testing.assert_array_equal(out[1], dense_crf(images[1], probs[1], scale=1.0))


def test_pool_workers_ignore_ctrl_c_so_only_the_caller_reports_it():
    """Ctrl-C reaches every process of the group: a worker that took it would print a stray
    `Process SpawnPoolWorker-N:` traceback after the stage's one-line error."""
    caller = signal.getsignal(signal.SIGINT)
    with CRFPool(1) as single:
        handler = single._pool.apply(signal.getsignal, (signal.SIGINT,))
    assert handler == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is caller  # the caller's own Ctrl-C handling is left as it was
