"""The training-time dense CRF computed exactly, as batched tensor operations on the network's device.

The same model as gain.sec.crf.dense_crf (Potts, SEC's CRFParams, the spatial stds divided by `scale`,
the unary -log_probs without a floor, 10 mean-field iterations, kernels that include j = i and are
normalised symmetrically), but with the Gaussian kernels as dense N x N matrices (N = h * w cells) instead
of pydensecrf's permutohedral-lattice approximation. At SEC's 41 x 41 grid a kernel is 1,681 x 1,681, so a
mean-field iteration is one batched matrix product per kernel: ~36 GFLOP for a batch of 15 at 21 classes.
That is slower than the lattice on a CPU core but runs on the GPU beside the network, without the CRF
process pool (`sec.train_crf`: auto picks exact on CUDA, the lattice on the CPU). The test-time CRF at full
image resolution (N ~ 190,000) stays on the lattice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gain.sec.crf import CRFParams, CRFPool, _check_scale

TRAIN_CRF = ("auto", "lattice", "exact")
SEC_CRF = CRFParams()  # SEC's released settings
# Bilateral kernels held at once (float32): batch 15 at 41 x 41 is 170 MB, one chunk; building them needs a
# second buffer of the same size, so the CRF's peak is about 2 x this bound plus two (N, N) Gaussian matrices.
MAX_KERNEL_BYTES = 2**28


def train_crf_backend(setting: str, device: torch.device) -> str:
    """`sec.train_crf` -> "exact" or "lattice"; auto: exact on CUDA, the lattice elsewhere (faster on a CPU,
    see reports/benchmarks.md)."""
    if setting not in TRAIN_CRF:
        raise ValueError(f"train_crf must be one of {TRAIN_CRF}, got {setting!r}")
    if setting == "auto":
        return "exact" if device.type == "cuda" else "lattice"
    return setting


def _check_inputs(images: Tensor, log_probs: Tensor) -> None:
    """images (B, h, w, 3) uint8 and log_probs (B, C, h, w) floating, same batch and grid."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be a (B, h, w, 3) uint8 tensor, got {tuple(images.shape)} {images.dtype}"
        )
    if log_probs.ndim != 4 or not log_probs.dtype.is_floating_point:
        raise ValueError(f"log_probs must be a (B, C, h, w) float tensor, got {tuple(log_probs.shape)}")
    b, _, h, w = log_probs.shape
    if tuple(images.shape[:3]) != (b, h, w):
        raise ValueError(
            f"images {tuple(images.shape)} and log_probs {tuple(log_probs.shape)} differ in (B, h, w)"
        )


def pixel_sq_distances(h: int, w: int, device: torch.device) -> Tensor:
    """(N, N) float32 squared distances between the cells of an h x w grid, N = h * w in row-major order
    (pydensecrf's); integers, so exact."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pos = torch.stack([xs.flatten(), ys.flatten()], dim=1).float()  # (N, 2)
    return ((pos[:, None] - pos[None]) ** 2).sum(-1)


def bilateral_kernels(rgb: Tensor, d_pos: Tensor, *, sxy: float, srgb: float) -> Tensor:
    """(B, N, N) unnormalised bilateral kernels exp(-|p_i - p_j|^2 / 2 sxy^2 - |I_i - I_j|^2 / 2 srgb^2).

    rgb: (B, N, 3) float32 holding integer colours 0-255, so |I_i|^2 + |I_j|^2 - 2 I_i.I_j is exact in
    float32 (every partial sum < 2^24); d_pos: (N, N) squared cell distances."""
    sq = (rgb * rgb).sum(-1)  # (B, N)
    d_rgb = torch.baddbmm(sq[:, :, None] + sq[:, None, :], rgb, rgb.transpose(1, 2), alpha=-2.0)
    return d_rgb.mul_(-0.5 / srgb**2).sub_(d_pos * (0.5 / sxy**2)).exp_()


def _meanfield(log_probs: Tensor, kernels: list[tuple[float, Tensor]], iterations: int) -> Tensor:
    """Q (B, C, N): Q0 = softmax(log_probs), then
    Q <- softmax(log_probs + sum_m w_m (D^-1/2 K_m D^-1/2 Q^T)^T), D = diag(row sums of K_m);
    each K_m (N, N) or (B, N, N) and symmetric."""
    norms = [(wt, k, k.sum(-1).rsqrt().unsqueeze(-2)) for wt, k in kernels]  # d: (1, N) or (B, 1, N)
    q = torch.softmax(log_probs, dim=1)
    for _ in range(iterations):
        message = sum(wt * d * torch.matmul(q * d, k) for wt, k, d in norms)  # (B, C, N)
        q = torch.softmax(log_probs + message, dim=1)
    return q


def exact_dense_crf(
    images: Tensor, log_probs: Tensor, *, scale: float, params: CRFParams = SEC_CRF
) -> Tensor:
    """Mean-field marginals Q (B, C, h, w) float32 on log_probs' device, each pixel's Q summing to 1.

    images: (B, h, w, 3) uint8 RGB (moved to log_probs' device); log_probs: (B, C, h, w) finite class
    scores (the unary is their negative; a per-pixel constant leaves Q unchanged). The model of
    gain.sec.crf.dense_crf with exact kernels. Images are processed in chunks whose bilateral kernels fit
    MAX_KERNEL_BYTES. Runs in float32 with autocast off, without a graph.
    """
    _check_inputs(images, log_probs)
    _check_scale(scale)
    if not bool(torch.isfinite(log_probs).all()):
        raise ValueError("log_probs must be finite (floor probabilities before taking their log)")
    b, c, h, w = log_probs.shape
    device, n = log_probs.device, h * w
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        unary = log_probs.detach().float().reshape(b, c, n)
        rgb = images.to(device).reshape(b, n, 3).float()
        d_pos = pixel_sq_distances(h, w, device)
        gauss = d_pos.mul(-0.5 / (params.gauss_sxy / scale) ** 2).exp_()  # (N, N), shared by the batch
        chunk = max(1, MAX_KERNEL_BYTES // (4 * n * n))
        out = []
        for s in range(0, b, chunk):
            bilateral = bilateral_kernels(
                rgb[s : s + chunk], d_pos, sxy=params.bilateral_sxy / scale, srgb=params.bilateral_srgb
            )
            kernels = [(params.gauss_compat, gauss), (params.bilateral_compat, bilateral)]
            out.append(_meanfield(unary[s : s + chunk], kernels, params.iterations))
        q = torch.cat(out) if out else unary.new_empty((0, c, n))
    return q.reshape(b, c, h, w)


class ExactCRF:
    """The training CRF on the network's device: `run` takes the batch as tensors and returns Q there.
    A context manager like CRFPool (nothing to start or stop)."""

    def __init__(self, params: CRFParams = SEC_CRF):
        self.params = params

    def __enter__(self) -> ExactCRF:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, images: Tensor, log_probs: Tensor, scale: float) -> Tensor:
        """(B, h, w, 3) uint8 images, (B, C, h, w) log-probabilities -> Q (B, C, h, w) float32."""
        return exact_dense_crf(images, log_probs, scale=scale, params=self.params)


def training_crf(setting: str, device: torch.device, workers: int) -> CRFPool | ExactCRF:
    """The training CRF `sec.train_crf` asks for on `device`: ExactCRF, or a CRFPool of `workers`
    processes (0: inline)."""
    return ExactCRF() if train_crf_backend(setting, device) == "exact" else CRFPool(workers)
