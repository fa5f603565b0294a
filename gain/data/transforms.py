"""Paired image/mask transforms on numpy arrays: masks resized with NEAREST and padded with 255.

Each transform takes and returns `(image (H, W, 3) uint8, mask (H, W) uint8)` plus a numpy Generator, so
augmentation is a pure function of a per-sample seed (which is what makes resumed training bit-exact).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from gain.data.voc import IGNORE_INDEX

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]):
    """Resize to (h, w): bilinear for the image, nearest for the mask."""
    h, w = size
    img = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    if mask is None:
        return img, None
    return img, np.array(Image.fromarray(mask).resize((w, h), Image.NEAREST))


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, image, mask, rng: np.random.Generator):
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask


class Resize:
    """Resize to a fixed square size."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, mask, rng):
        return resize_pair(image, mask, (self.size, self.size))


class RandomScale:
    """Scale both sides by a factor drawn uniformly from [lo, hi] (relative to `base`)."""

    def __init__(self, base: int, lo: float, hi: float):
        self.base, self.lo, self.hi = base, lo, hi

    def __call__(self, image, mask, rng):
        s = int(round(self.base * rng.uniform(self.lo, self.hi)))
        return resize_pair(image, mask, (s, s))


class RandomCrop:
    """Crop (padding first if needed: image with the mean colour, mask with 255) to size x size."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, mask, rng):
        h, w = image.shape[:2]
        ph, pw = max(self.size - h, 0), max(self.size - w, 0)
        if ph or pw:
            fill = np.array(MEAN) * 255
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="constant")
            image[h:, :] = fill
            image[:, w:] = fill
            if mask is not None:
                mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        h, w = image.shape[:2]
        y = int(rng.integers(0, h - self.size + 1))
        x = int(rng.integers(0, w - self.size + 1))
        image = image[y : y + self.size, x : x + self.size]
        if mask is not None:
            mask = mask[y : y + self.size, x : x + self.size]
        return image, mask


class RandomHFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, mask, rng):
        if rng.random() < self.p:
            image = image[:, ::-1]
            mask = None if mask is None else mask[:, ::-1]
        return image, mask


def train_preset(size: int) -> Compose:
    return Compose([RandomScale(size, 0.8, 1.25), RandomCrop(size), RandomHFlip()])


def eval_preset(size: int) -> Compose:
    return Compose([Resize(size)])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, ImageNet-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) uint8 for figures and the CRF."""
    mean = torch.tensor(MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(3, 1, 1)
    img = ((x * std + mean).clamp(0, 1) * 255).round().byte()
    return img.permute(1, 2, 0).cpu().numpy()
