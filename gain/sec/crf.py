"""Fully connected CRF (Krähenbühl & Koltun 2011) over class scores, as SEC uses it.

SEC's constrain loss compares the network output f with Q = CRF(image, f) at the 41x41 output resolution, and
its test-time post-processing runs the same CRF on the full image. The unary is -log p, with log p given
by the caller: during training SEC feeds the raw fc8 scores (equivalently the unfloored log-softmax: a
per-pixel constant does not change the mean-field result), so a confident prediction keeps its whole
margin; at test time its demo floors the upsampled probabilities at 1e-5 first (gain.sec.evaluate).
The pairwise terms follow SEC's release:
a Gaussian (smoothness) kernel with spatial std 3/s and weight 3, and a bilateral (appearance) kernel with
spatial std 80/s, colour std 13 and weight 10, both Potts, 10 mean-field iterations. Only the spatial std is
divided by s: s = 12 on the 41x41 training grid, s = 1 at test time.

`CRFPool` runs a batch of CRFs in worker processes, one CRF per task, so a batch's CRFs run in parallel
(and, for evaluation, in parallel with the network's predictions of the next images).
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from dataclasses import dataclass, fields

import numpy as np
import pydensecrf.densecrf as dcrf


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings; the defaults are SEC's released ones (spatial stds before division by the scale)."""

    gauss_sxy: float = 3.0
    gauss_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    iterations: int = 10

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "iterations":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"CRFParams.iterations must be an int >= 0, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"CRFParams.{f.name} must be a number, got {value!r}")
            elif f.name.endswith("compat") and not value >= 0:  # a zero weight switches that term off
                raise ValueError(f"CRFParams.{f.name} must be >= 0, got {value!r}")
            elif not f.name.endswith("compat") and not value > 0:
                raise ValueError(f"CRFParams.{f.name} must be > 0, got {value!r}")


def _check_pair(image: np.ndarray, log_probs: np.ndarray) -> None:
    """Raise ValueError unless image is (H, W, 3) C-contiguous uint8 and the scores are finite (C, H, W)
    float32."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an (H, W, 3) array, got shape {np.shape(image)}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if not image.flags.c_contiguous:
        raise ValueError("image must be C-contiguous (pass np.ascontiguousarray(image))")
    if not isinstance(log_probs, np.ndarray) or log_probs.ndim != 3:
        raise ValueError(f"log_probs must be a (C, H, W) array, got shape {np.shape(log_probs)}")
    if log_probs.dtype != np.float32:
        raise ValueError(f"log_probs must be float32, got dtype {log_probs.dtype}")
    if log_probs.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"log_probs (C, H, W) = {log_probs.shape} and image (H, W, 3) = {image.shape} differ in (H, W): "
            f"{log_probs.shape[1:]} vs {image.shape[:2]}"
        )
    if log_probs.shape[0] < 1 or log_probs.shape[1] < 1 or log_probs.shape[2] < 1:
        raise ValueError(f"log_probs must have at least one class and one pixel, got shape {log_probs.shape}")
    if not np.isfinite(log_probs).all():
        raise ValueError("log_probs must be finite (floor probabilities before taking their log)")


def _check_scale(scale: float) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise ValueError(f"scale must be a number > 0, got {scale!r}")


def dense_crf(
    image: np.ndarray, log_probs: np.ndarray, *, scale: float, params: CRFParams = CRFParams()
) -> np.ndarray:
    """Mean-field marginals Q (C, H, W) float32 of a dense CRF; each pixel's Q sums to 1.

    image: (H, W, 3) uint8 RGB, C-contiguous. log_probs: (C, H, W) float32 finite class scores, e.g. the
    log-softmax of the logits. Unary: -log_probs, no floor (any per-pixel constant added to the scores
    leaves Q unchanged, so raw logits give the same Q). Pairwise (Potts):
    gauss_compat * k(p_i - p_j; gauss_sxy / scale) and
    bilateral_compat * k(p_i - p_j; bilateral_sxy / scale) * k(I_i - I_j; bilateral_srgb), k a Gaussian with
    that std, normalised symmetrically (pydensecrf's default). Each iteration:
    Q <- softmax(-U + sum_m w_m K_m Q), where the kernel sum runs over all j including i itself. The kernels are evaluated on a permutohedral
    lattice, an approximation of the exact Gaussians (see tests/sec/test_crf.py for how close).
    """
    _check_pair(image, log_probs)
    _check_scale(scale)
    c, h, w = log_probs.shape
    unary = -log_probs.reshape(c, h * w)  # (C, N), N = H * W, row-major
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gauss_sxy / scale, compat=params.gauss_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy / scale,
        srgb=params.bilateral_srgb,
        rgbim=image,
        compat=params.bilateral_compat,
    )
    q = np.array(crf.inference(params.iterations), dtype=np.float32)  # (C, N)
    return q.reshape(c, h, w)


def _dense_crf_task(image: np.ndarray, log_probs: np.ndarray, scale: float, params: CRFParams) -> np.ndarray:
    """Module-level (hence picklable) worker entry point."""
    return dense_crf(image, log_probs, scale=scale, params=params)


def _check_batch(images: np.ndarray, log_probs: np.ndarray, scale: float) -> None:
    """Validate a batch in the caller's process, so errors surface at the call and not in a worker."""
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        raise ValueError(f"images must be a (B, H, W, 3) array, got shape {np.shape(images)}")
    if not isinstance(log_probs, np.ndarray) or log_probs.ndim != 4:
        raise ValueError(f"log_probs must be a (B, C, H, W) array, got shape {np.shape(log_probs)}")
    if images.shape[0] != log_probs.shape[0]:
        raise ValueError(f"batch sizes differ: images {images.shape} vs log_probs {log_probs.shape}")
    if not images.flags.c_contiguous:
        raise ValueError("images must be C-contiguous (pass np.ascontiguousarray(images))")
    _check_scale(scale)
    for image, log_prob in zip(images, log_probs, strict=True):
        _check_pair(image, log_prob)


def _stack(items: list[np.ndarray], log_probs: np.ndarray) -> np.ndarray:
    """(B, C, H, W) float32 from B (C, H, W) results; an empty batch keeps the input's shape."""
    if not items:
        return np.empty(log_probs.shape, dtype=np.float32)
    return np.stack(items)


class CRFResult:
    """A batch of CRF marginals that may still be computing; `get()` waits and returns (B, C, H, W) float32."""

    def __init__(self, log_probs: np.ndarray, pending=None, done: np.ndarray | None = None):
        self._probs = log_probs
        self._pending = pending  # multiprocessing AsyncResult of a list of (C, H, W) arrays
        self._done = done

    def get(self, timeout: float | None = None) -> np.ndarray:
        if self._done is None:
            self._done = _stack(self._pending.get(timeout), self._probs)
            self._pending = None
        return self._done


def _ignore_sigint() -> None:
    """Pool worker initializer: Ctrl-C reaches the whole process group, and only the parent should react
    (it closes the pool and reports one line); a worker that raised KeyboardInterrupt would print its own
    `Process SpawnPoolWorker-N:` traceback after that line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class CRFPool:
    """Runs `dense_crf` over a batch in `processes` worker processes (0: inline, in the caller's process).

    Workers are started with "spawn": the caller is typically a torch process with live threads, which
    fork would copy in an undefined state; they ignore SIGINT (see `_ignore_sigint`). Use as a context
    manager, or call `close()`.
    """

    def __init__(self, processes: int, params: CRFParams = CRFParams()):
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 0:
            raise ValueError(f"processes must be an int >= 0, got {processes!r}")
        self.processes = processes
        self.params = params
        self._pool = (
            multiprocessing.get_context("spawn").Pool(processes, initializer=_ignore_sigint)
            if processes > 0
            else None
        )

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Terminate the workers (any unfinished batch is dropped); safe to call twice."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def warm_up(self) -> None:
        """Return once every worker has started (spawned workers import their modules first), so that a
        timed first batch does not pay for it: sleeping tasks keep early workers busy until each took one."""
        if self._pool is not None:
            self._pool.map(time.sleep, [0.5] * self.processes, chunksize=1)

    def submit(self, images: np.ndarray, log_probs: np.ndarray, scale: float) -> CRFResult:
        """Start the CRF on a batch and return at once (inline: compute now); `.get()` gives (B, C, H, W).

        images: (B, H, W, 3) uint8 RGB, C-contiguous. log_probs: (B, C, H, W) float32 log-probabilities (the
        unary is their negative, see `dense_crf`).
        """
        _check_batch(images, log_probs, scale)
        tasks = [
            (image, log_prob, scale, self.params) for image, log_prob in zip(images, log_probs, strict=True)
        ]
        if self.processes == 0:
            return CRFResult(log_probs, done=_stack([_dense_crf_task(*t) for t in tasks], log_probs))
        if self._pool is None:
            raise RuntimeError("CRFPool is closed")
        return CRFResult(log_probs, pending=self._pool.starmap_async(_dense_crf_task, tasks, chunksize=1))

    def map(self, images: np.ndarray, log_probs: np.ndarray, scale: float) -> np.ndarray:
        """`dense_crf` on every item of a batch: (B, H, W, 3) uint8 images and (B, C, H, W) float32
        log-probabilities -> (B, C, H, W) marginals."""
        return self.submit(images, log_probs, scale).get()
