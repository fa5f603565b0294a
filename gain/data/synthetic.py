"""Built-in synthetic dataset in the exact PASCAL VOC 2012 layout, designed so GAIN's phenomena are measurable.

Every object is large against the classifier's attention grid (area-equivalent diameter `object_size` of the
image side: about 6-7 cells of the 8 px grid at 112 px) and has two kinds of evidence:
- a weakly distinctive BODY: the class silhouette with a faint class-specific grating, in a colour drawn
  from one palette that every class and every non-water background also uses, so colour alone neither
  names the class nor separates the object from its background;
- a small DISCRIMINATIVE PART (`part_fraction` of the area, at most ~10%) at an extremity of the object
  (never centred), with a high-contrast class-unique pattern.
A plain classifier can solve the task from the part alone, so its attention can cover the part and little
of the body - the failure GAIN's attention mining targets - while the masks cover the whole object. The
held-out split `part_hidden` (objects drawn with the part painted over by the body) measures how much body
evidence a classifier uses. One class (`bias_class`, like the paper's boat) mostly appears on a "water"
background in train; the held-out splits `bias_object_only` (the class without water) and
`bias_context_only` (water without the class) measure the context bias of the paper's Table 4.

Layout under `root` (plays the role of VOCdevkit/VOC2012):
    JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette, 255 on object borders), Annotations/<id>.xml,
    ImageSets/Segmentation/{train,val,trainval,train_pixel,bias_object_only,bias_context_only,
    part_hidden}.txt, classes.txt, plus extras that VOC lacks: SegmentationPart/<id>.png (the
    SegmentationClass values on the visible discriminative parts, else 0: measures how much attention falls
    on the part), backgrounds.json ({id: texture name}) and synthetic.json (config and stats).
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import math
import numbers
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.measure import points_in_poly
from skimage.segmentation import find_boundaries
from tqdm import tqdm

from gain.data.voc import IGNORE_INDEX, voc_palette, write_annotation_xml
from gain.runtime.io import atomic_path, save_palette_png, write_json, write_text

# Compact silhouettes first: at a given area they stay inside the image (a thin kite or star would not).
CLASS_NAMES = (
    "disc", "block", "hexa", "ring", "heart", "cross", "wedge", "moon", "kite", "star", "bar", "arch",
)  # fmt: skip
WATER = "water"
TEXTURES = ("noise", "stripes", "blobs", "gradient")  # the non-water backgrounds
SPLITS = ("train", "val", "bias_object_only", "bias_context_only", "part_hidden")
ID_PREFIX = {
    "train": "syn_train",
    "val": "syn_val",
    "bias_object_only": "syn_bobj",
    "bias_context_only": "syn_bctx",
    "part_hidden": "syn_phid",
}
# The colours of bodies and of every non-water background: moderate saturation, no water blues.
PALETTE = tuple(
    np.array(c) / 255.0
    for c in (
        (196, 92, 70), (214, 170, 82), (150, 176, 88), (86, 150, 120),
        (160, 110, 170), (200, 120, 150), (120, 110, 90), (190, 190, 175),
    )
)  # fmt: skip

# Class-unique (colour, colour) pairs of the discriminative part; the pattern cycles over PART_PATTERNS.
PART_COLOURS = (
    ((255, 225, 0), (15, 15, 15)),
    ((235, 20, 20), (250, 250, 250)),
    ((0, 200, 0), (230, 0, 230)),
    ((0, 225, 235), (130, 0, 0)),
    ((255, 130, 0), (0, 0, 170)),
    ((250, 250, 250), (0, 100, 0)),
    ((255, 0, 150), (255, 255, 130)),
    ((15, 15, 15), (0, 235, 130)),
    ((150, 0, 230), (235, 235, 0)),
    ((0, 90, 255), (255, 190, 150)),
    ((120, 60, 0), (0, 255, 255)),
    ((255, 255, 255), (255, 0, 0)),
)
PART_PATTERNS = ("checker", "hstripes", "vstripes", "diagonal")

MIN_VISIBLE = 0.6  # an object keeps >= 60% of its area when later objects overlap it ...
MIN_PART_VISIBLE = 0.5  # ... and >= 50% of its discriminative part
PLACEMENT_TRIES = 40


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings (params.yaml `data.synthetic`, plus the global seed); validated on construction."""

    num_classes: int = 6  # foreground classes, 2..12
    image_size: int = 112
    n_train: int = 240
    n_val: int = 80
    n_bias_eval: int = 40  # images in each held-out biased split
    max_objects: int = 2  # 1..max_objects objects per train/val image
    bias_class: int = 1  # 1-based foreground class that carries the context bias (the paper's boat)
    bias_fraction: float = 0.9  # fraction of train/val images containing bias_class that show water
    context_rate: float = 0.05  # fraction of train/val images without bias_class that show water
    pixel_labelled: int = 24  # train images whose masks GAIN_ext may use
    part_fraction: float = 0.08  # area of the discriminative part relative to the object
    object_size: float = 0.48  # mean area-equivalent diameter of an object / image side (+-15% per object)
    seed: int = 0

    def __post_init__(self):
        # Same ranges as gain/runtime/params.py SyntheticParams, so any accepted params.yaml is a valid config.
        n, t = self.num_classes, self.n_train
        ints = {
            "num_classes": (2, len(CLASS_NAMES)),
            "image_size": (32, 1024),
            "n_train": (2, None),
            "n_val": (1, None),
            "n_bias_eval": (1, None),
            "max_objects": (1, 5),
            "bias_class": (1, n, f"num_classes={n}"),
            "pixel_labelled": (0, t, f"n_train={t}"),
            "seed": (0, None),
        }
        floats = {
            "bias_fraction": (0.0, 1.0),
            "context_rate": (0.0, 1.0),
            "part_fraction": (0.01, 0.9),
            "object_size": (0.05, 0.7),
        }
        for name, (lo, hi, *label) in {**ints, **floats}.items():
            value = getattr(self, name)
            kind, cast = (numbers.Real, float) if name in floats else (numbers.Integral, int)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"SyntheticConfig.{name}: expected {cast.__name__}, got {value!r}")
            object.__setattr__(self, name, cast(value))  # plain Python numbers (numpy ints too) for JSON
            if not (lo <= value and (hi is None or value <= hi)):
                bound = label[0] if label else ("inf" if hi is None else hi)
                raise ValueError(f"SyntheticConfig.{name}: {value} is out of range; allowed [{lo}, {bound}]")


@dataclass(frozen=True)
class SyntheticObject:
    cls: int  # 1-based class index
    name: str
    bbox: tuple[int, int, int, int]  # (xmin, ymin, xmax, ymax) of the visible pixels, 1-based inclusive
    area: int  # visible pixels (before the 255 border ring)
    part_area: int  # visible pixels of the discriminative part


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8: 0 background, 1..num_classes, 255 on a 2 px ring around each object
    instances: np.ndarray  # (H, W) uint8: 0 background, i = objects[i - 1] (visible pixels, no ring)
    part_mask: np.ndarray  # (H, W) bool: visible discriminative-part pixels
    objects: list[SyntheticObject]
    background: str


def class_names(num_classes: int) -> tuple[str, ...]:
    """("background", first num_classes shape names)."""
    return ("background",) + CLASS_NAMES[:num_classes]


# ----------------------------------------------------------------------------------------- silhouettes
def _star(n: int, inner: float) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * n) * np.pi / n
    radii = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_POLYGONS = {
    "kite": np.array([[0.0, -1.0], [0.7, -0.35], [0.0, 1.0], [-0.7, -0.35]]),
    "star": _star(5, 0.45),
    "wedge": np.array([[0.0, -1.0], [1.0, 0.85], [-1.0, 0.85]]),
    "hexa": np.array([[np.cos(a), np.sin(a)] for a in np.arange(6) * np.pi / 3]),
}


def _silhouette(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean inside-test of a class silhouette in its own frame, (u, v) in about [-1, 1]^2."""
    r2 = u * u + v * v
    if name in _POLYGONS:
        pts = np.stack([u.ravel(), v.ravel()], axis=1)
        return points_in_poly(pts, _POLYGONS[name]).reshape(u.shape)
    if name == "disc":
        return r2 <= 1.0
    if name == "block":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.7)
    if name == "cross":
        return ((np.abs(u) <= 0.34) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.34) & (np.abs(u) <= 1.0))
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if name == "moon":
        return (r2 <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.8**2)
    if name == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.4)
    if name == "arch":
        return (r2 <= 1.0) & (r2 >= 0.5**2) & (v <= 0.2)
    if name == "heart":
        x, y = 1.15 * u, -1.15 * v + 0.15
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    raise ValueError(f"unknown silhouette {name!r}")


# ----------------------------------------------------------------------------------------- appearance
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed noise with unit std over the first two axes, (H, W[, 3])."""
    sig = (sigma, sigma) + (0,) * (len(shape) - 2)
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sig)
    return n / (n.std() + 1e-8)


def _palette_colour(rng: np.random.Generator, used: list[int], avoid: frozenset = frozenset()) -> np.ndarray:
    """A PALETTE colour (index appended to `used`) not in `avoid`, jittered by +-0.04 per channel."""
    k = int(rng.choice([i for i in range(len(PALETTE)) if i not in avoid]))
    used.append(k)
    return PALETTE[k] + rng.uniform(-0.04, 0.04, 3)


def _background(rng: np.random.Generator, name: str, size: int) -> tuple[np.ndarray, frozenset]:
    """(H, W, 3) float texture in [0, 1], and the PALETTE indices it uses (none for water)."""
    used: list[int] = []
    img = _texture(rng, name, size, lambda: _palette_colour(rng, used))
    return img, frozenset(used)


def _texture(rng: np.random.Generator, name: str, size: int, colour) -> np.ndarray:
    """(H, W, 3) float background texture; `colour()` draws each of its colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if name == WATER:
        # Blue waves: a wobbly sinusoid along a near-horizontal direction, with bright crests.
        base = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.6, 0.85), rng.uniform(0.45, 0.7))
        a = rng.uniform(-0.3, 0.3)
        along, across = xx * math.cos(a) + yy * math.sin(a), -xx * math.sin(a) + yy * math.cos(a)
        wobble = 0.35 * np.sin(2 * np.pi * along / rng.uniform(18, 36) + rng.uniform(0, 2 * np.pi))
        w = 0.5 + 0.5 * np.sin(2 * np.pi * across / rng.uniform(6, 11) + wobble * 2 * np.pi)
        crest = w[..., None] ** 4
        img = base * (0.8 + 0.3 * w[..., None]) + 0.35 * crest * (1.0 - base)
        return img + 0.02 * _smooth_noise(rng, (size, size, 3), 1.0)
    if name == "noise":
        return colour() + 0.08 * _smooth_noise(rng, (size, size, 3), rng.uniform(1.5, 4.0))
    if name == "stripes":
        c1, c2 = colour(), colour()
        a = rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * math.cos(a) + yy * math.sin(a)) / rng.uniform(10, 28))
        return c1 + (c2 - c1) * t[..., None]
    if name == "blobs":
        img = np.broadcast_to(colour(), (size, size, 3)).copy()
        for _ in range(int(rng.integers(4, 8))):
            cy, cx = rng.uniform(0, size, 2)
            sig = rng.uniform(0.07, 0.22) * size
            g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig * sig))[..., None]
            img = img * (1 - g) + colour() * g
        return img
    if name == "gradient":
        c1, c2 = colour(), colour()
        a = rng.uniform(0, 2 * np.pi)
        t = (xx - size / 2) * math.cos(a) + (yy - size / 2) * math.sin(a)
        t = (t - t.min()) / (t.max() - t.min() + 1e-8)
        return c1 + (c2 - c1) * t[..., None] + 0.02 * _smooth_noise(rng, (size, size, 3), 1.0)
    raise ValueError(f"unknown background texture {name!r}")


def _body_grating(cls: int, num_classes: int, yy: np.ndarray, xx: np.ndarray, phase: float) -> np.ndarray:
    """(H, W) in [-1, 1]: the class's faint body texture, a grating at a class-specific orientation."""
    a = math.pi * (cls - 1) / num_classes
    return np.sin(2 * np.pi * (xx * math.cos(a) + yy * math.sin(a)) / 7.0 + phase)


def _part_pattern(cls: int, yy: np.ndarray, xx: np.ndarray, half_period: int, phase: int) -> np.ndarray:
    """Boolean high-frequency pattern of the class's discriminative part, (H, W)."""
    y, x = (yy + phase) // half_period, (xx + phase) // half_period
    kind = PART_PATTERNS[(cls - 1) % len(PART_PATTERNS)]
    if kind == "checker":
        return (y + x) % 2 == 0
    if kind == "hstripes":
        return y % 2 == 0
    if kind == "vstripes":
        return x % 2 == 0
    return ((yy + xx + phase) // half_period) % 2 == 0  # diagonal


@functools.cache
def _unit_area(name: str) -> float:
    """Area of a silhouette in its own frame (radius 1), measured on a fine grid."""
    t = np.linspace(-1.5, 1.5, 601)
    v, u = np.meshgrid(t, t, indexing="ij")
    return float(_silhouette(name, u, v).mean() * 9.0)


def _object_mask(rng: np.random.Generator, name: str, cfg: SyntheticConfig, scale: float, grid) -> np.ndarray:
    """(H, W) bool silhouette at a random position, rotation and mild aspect ratio, sized so its
    area-equivalent diameter is cfg.object_size x image side (+-15%) x `scale`."""
    yy, xx = grid
    size = cfg.image_size
    diameter = cfg.object_size * size * rng.uniform(0.85, 1.15) * scale
    radius = 0.5 * diameter * math.sqrt(math.pi / _unit_area(name))
    ax, ay = radius * rng.uniform(0.9, 1.1), radius * rng.uniform(0.9, 1.1)
    reach = min(max(ax, ay), 0.5 * size)
    cx, cy = rng.uniform(reach, size - reach, 2)
    t = rng.uniform(0, 2 * np.pi)
    dx, dy = xx - cx, yy - cy
    u = (dx * math.cos(t) + dy * math.sin(t)) / ax
    v = (-dx * math.sin(t) + dy * math.cos(t)) / ay
    return _silhouette(name, u, v)


def _part_of(rng: np.random.Generator, obj: np.ndarray, fraction: float, grid) -> np.ndarray:
    """The `fraction` x area object pixels nearest to a point at an extremity of the object: the object pixel
    farthest along a random direction, moved one part radius back inside. A compact cap at the object's
    edge, never its centre."""
    yy, xx = grid
    area = int(obj.sum())
    n = max(4, round(fraction * area))
    idx = np.flatnonzero(obj.ravel())
    t = rng.uniform(0, 2 * np.pi)
    along = yy.ravel()[idx] * math.sin(t) + xx.ravel()[idx] * math.cos(t)
    tip = int(idx[np.argmax(along)])
    back = 0.7 * math.sqrt(n / math.pi)
    sy, sx = divmod(tip, obj.shape[1])
    sy, sx = sy - back * math.sin(t), sx - back * math.cos(t)
    d2 = (yy.ravel()[idx] - sy) ** 2 + (xx.ravel()[idx] - sx) ** 2
    part = np.zeros(obj.size, dtype=bool)
    part[idx[np.argsort(d2, kind="stable")[:n]]] = True
    return part.reshape(obj.shape)


def render_image(
    rng: np.random.Generator, cfg: SyntheticConfig, classes, background: str, *, hide_parts: bool = False
) -> Rendered:
    """Render one image with objects of `classes` (1-based, drawn in order, later ones on top).

    Each object is placed so every earlier object keeps >= 60% of its area and >= 50% of its part visible;
    an object that cannot be placed in 40 tries (shrinking as it goes) is dropped, so `objects` lists what
    was actually drawn. The first object is never dropped. The body's colour is a PALETTE colour the
    background does not use. `hide_parts`: each part is painted over with its object's body (the
    `part_hidden` split; part_mask and part areas are then empty).
    """
    size = cfg.image_size
    names = class_names(cfg.num_classes)
    bad = [int(c) for c in classes if not 1 <= int(c) <= cfg.num_classes]
    if bad:
        raise ValueError(f"classes: {bad} out of range; allowed [1, num_classes={cfg.num_classes}]")
    grid = np.mgrid[0:size, 0:size]
    img, bg_colours = _background(rng, background, size)
    img = np.clip(img, 0.0, 1.0)
    instances = np.zeros((size, size), dtype=np.uint8)
    part_mask = np.zeros((size, size), dtype=bool)
    full_areas, part_areas, placed = [], [], []
    for cls in (int(c) for c in classes):
        for attempt in range(PLACEMENT_TRIES):  # shrink towards half size as tries fail
            obj = _object_mask(rng, names[cls], cfg, 1.0 - 0.5 * attempt / PLACEMENT_TRIES, grid)
            if obj.sum() < 16:
                continue
            inst = np.where(obj, len(placed) + 1, instances)
            parts = part_mask & ~obj
            ok = all(
                (inst == k + 1).sum() >= MIN_VISIBLE * full_areas[k]
                and (parts & (inst == k + 1)).sum() >= MIN_PART_VISIBLE * part_areas[k]
                for k in range(len(placed))
            )
            if ok:  # always true for the first object
                break
        else:
            continue  # dropped: no placement keeps the earlier objects visible
        part = _part_of(rng, obj, cfg.part_fraction, grid)
        # Body: a palette colour (not the background's) with a faint class grating and a little noise;
        # part: class-unique high-contrast pattern.
        body = _palette_colour(rng, [], avoid=bg_colours)
        grating = _body_grating(cls, cfg.num_classes, grid[0], grid[1], rng.uniform(0, 2 * np.pi))
        texture = (0.06 * grating + 0.03 * _smooth_noise(rng, (size, size), 1.5))[..., None]
        img[obj] = np.clip(body + texture[obj], 0.0, 1.0)
        half_period = max(2, round(size / 56))
        on = _part_pattern(cls, grid[0], grid[1], half_period, int(rng.integers(2 * half_period)))
        c_on, c_off = (np.array(c) / 255.0 for c in PART_COLOURS[cls - 1])
        if hide_parts:
            part = np.zeros_like(part)
        img[part] = np.where(on[part][:, None], c_on, c_off)
        instances, part_mask = inst, parts | part
        full_areas.append(int(obj.sum()))
        part_areas.append(int(part.sum()))
        placed.append(cls)

    labels = np.zeros((size, size), dtype=np.uint8)
    objects = []
    for k, cls in enumerate(placed):
        vis = instances == k + 1
        labels[vis] = cls
        ys, xs = np.nonzero(vis)
        bbox = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(SyntheticObject(cls, names[cls], bbox, int(vis.sum()), int((part_mask & vis).sum())))
    # VOC-style void ring (1 px either side of every instance edge, also between touching objects).
    labels[find_boundaries(instances, mode="thick")] = IGNORE_INDEX
    image = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Rendered(image, labels, instances, part_mask, objects, background)


# ----------------------------------------------------------------------------------------- planning
def _plan(split: str, rng: np.random.Generator, cfg: SyntheticConfig, n: int):
    """Per image: (own Generator, classes, background). Water is assigned per split to exactly
    round(rate x count) images, so the observed bias equals the configured one up to rounding."""
    image_rngs = rng.spawn(n)
    others = np.array([c for c in range(1, cfg.num_classes + 1) if c != cfg.bias_class])
    classes, textures = [], []
    for r in image_rngs:
        if split == "part_hidden":  # like val, every part hidden; no water
            classes.append(r.integers(1, cfg.num_classes + 1, size=int(r.integers(1, cfg.max_objects + 1))))
        elif split == "bias_context_only":  # water, no bias class, possibly no object at all
            classes.append(r.choice(others, size=int(r.integers(0, cfg.max_objects + 1))))
        elif split == "bias_object_only":  # bias class first (never dropped), on a non-water texture
            extra = r.integers(1, cfg.num_classes + 1, size=int(r.integers(0, cfg.max_objects)))
            classes.append(np.concatenate([[cfg.bias_class], extra]))
        else:
            classes.append(r.integers(1, cfg.num_classes + 1, size=int(r.integers(1, cfg.max_objects + 1))))
        textures.append(TEXTURES[int(r.integers(len(TEXTURES)))])
    if split == "bias_context_only":
        textures = [WATER] * n
    elif split in ("train", "val"):
        has_bias = np.array([cfg.bias_class in c for c in classes])
        for group, rate in ((has_bias, cfg.bias_fraction), (~has_bias, cfg.context_rate)):
            idx = rng.permutation(np.flatnonzero(group))
            for i in idx[: round(rate * len(idx))]:
                textures[i] = WATER
    return list(zip(image_rngs, classes, textures, strict=True))


def _write_image(root: Path, image_id: str, r: Rendered, palette: list[int]) -> None:
    with atomic_path(root / "JPEGImages" / f"{image_id}.jpg") as tmp:
        # 4:4:4 keeps the colours of the small part patterns; fixed settings give identical bytes.
        Image.fromarray(r.image).save(tmp, format="JPEG", quality=95, subsampling=0)
    save_palette_png(root / "SegmentationClass" / f"{image_id}.png", r.mask, palette)
    part_labels = np.where(r.part_mask, r.mask, 0).astype(np.uint8)
    save_palette_png(root / "SegmentationPart" / f"{image_id}.png", part_labels, palette)
    size = r.image.shape[:2]
    write_annotation_xml(
        root / "Annotations" / f"{image_id}.xml", image_id, size, [(o.name, o.bbox) for o in r.objects]
    )


def _build(root: Path, cfg: SyntheticConfig, progress: bool) -> dict:
    names = class_names(cfg.num_classes)
    palette = voc_palette()
    counts = {
        "train": cfg.n_train,
        "val": cfg.n_val,
        "bias_object_only": cfg.n_bias_eval,
        "bias_context_only": cfg.n_bias_eval,
        "part_hidden": cfg.n_bias_eval,
    }
    # Independent streams: a split's images do not change when another split's size changes, and the
    # pixel-labelled permutation depends only on (seed, n_train), so smaller train_pixel sets are prefixes
    # of larger ones (the paper's 9 / 23 / 78 comparison).
    *children, pixel_rng = np.random.default_rng(cfg.seed).spawn(len(SPLITS) + 1)
    split_rngs = dict(zip(SPLITS, children, strict=True))
    for sub in (
        "JPEGImages",
        "SegmentationClass",
        "SegmentationPart",
        "Annotations",
        "ImageSets/Segmentation",
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)

    ids, backgrounds, labels, diameters, part_shares = {}, {}, {}, [], []
    with tqdm(total=sum(counts.values()), desc="synthetic", unit="img", disable=not progress) as bar:
        for split in SPLITS:
            ids[split], labels[split] = [], []
            for i, (rng, classes, texture) in enumerate(_plan(split, split_rngs[split], cfg, counts[split])):
                image_id = f"{ID_PREFIX[split]}_{i + 1:05d}"
                r = render_image(rng, cfg, classes, texture, hide_parts=split == "part_hidden")
                _write_image(root, image_id, r, palette)
                ids[split].append(image_id)
                backgrounds[image_id] = texture
                labels[split].append([o.cls for o in r.objects])
                if split in ("train", "val"):
                    diameters += [2.0 * math.sqrt(o.area / math.pi) for o in r.objects]
                    part_shares += [o.part_area / o.area for o in r.objects]
                bar.update(1)

    pixel = [ids["train"][i] for i in pixel_rng.permutation(cfg.n_train)[: cfg.pixel_labelled]]
    lists = {**ids, "trainval": ids["train"] + ids["val"], "train_pixel": pixel}
    for split, split_ids in lists.items():
        write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in split_ids))
    write_text(root / "classes.txt", "".join(f"{n}\n" for n in names))
    write_json(root / "backgrounds.json", backgrounds)

    def water_rate(split: str, with_bias: bool) -> float:
        sel = [
            backgrounds[i] == WATER
            for i, c in zip(ids[split], labels[split], strict=True)
            if (cfg.bias_class in c) == with_bias
        ]
        return float(np.mean(sel)) if sel else None  # None: no such image (JSON has no NaN)

    stats = {
        "images": {s: len(v) for s, v in lists.items()},
        "class_images": {
            s: {names[c]: sum(c in objs for objs in labels[s]) for c in range(1, len(names))}
            for s in ("train", "val")
        },
        "bias_fraction_train": water_rate("train", True),
        "context_rate_train": water_rate("train", False),
        "objects_per_image": {s: float(np.mean([len(c) for c in labels[s]])) for s in SPLITS},
        "pixel_labelled": len(pixel),
        # Visible pixels of train/val objects: area-equivalent diameter (median, px) and part share (median).
        "object_diameter_px": float(np.median(diameters)),
        "part_share": float(np.median(part_shares)),
        "backgrounds_train": {t: sum(backgrounds[i] == t for i in ids["train"]) for t in (WATER,) + TEXTURES},
    }
    write_json(root / "synthetic.json", {"config": dataclasses.asdict(cfg), "stats": stats})
    return stats


def generate(root: Path, cfg: SyntheticConfig, *, progress: bool = True) -> dict:
    """Write the synthetic dataset under `root` (a VOCdevkit/VOC2012-like folder) and return its stats.

    Deterministic: the same cfg gives byte-identical files. The set is built in a temporary sibling folder
    and swapped in at the end, so an existing `root` is replaced only by a complete new one and a failed run
    leaves it untouched. Stats: images per split, images containing each class (train, val), the observed
    water fractions in train (bias_fraction_train: bias-class images; context_rate_train: the others),
    mean objects per image per split, the pixel-labelled count and the train background counts.
    """
    root = Path(root)
    if not isinstance(cfg, SyntheticConfig):
        raise TypeError(f"cfg: expected SyntheticConfig, got {type(cfg).__name__}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    old = tmp.with_name(tmp.name + ".old")
    try:
        stats = _build(tmp, cfg, progress)
        if root.exists():
            os.replace(root, old)
            try:
                os.replace(tmp, root)
            except BaseException:
                os.replace(old, root)
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return stats
