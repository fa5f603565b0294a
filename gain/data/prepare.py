"""The `data` stage's work: the synthetic set or PASCAL VOC 2012, checked file by file, indexed by role,
summarised and pictured."""

from __future__ import annotations

import hashlib
import io
import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from gain.data.dataset import DatasetIndex, build_index, mask_path, synthetic_dataset_index
from gain.data.download import prepare_voc
from gain.data.synthetic import SyntheticConfig, generate
from gain.data.voc import IGNORE_INDEX, read_split, voc_palette
from gain.runtime.errors import InputError
from gain.runtime.io import atomic_path, read_label_png, read_rgb
from gain.runtime.layout import VOC_TRAIN_AUG
from gain.runtime.params import DataParams

MAX_LISTED = 20  # offenders named in a validation error; the rest are counted


def prepare_dataset(p: DataParams, seed: int, out: Path, *, repo: Path) -> tuple[DatasetIndex, dict]:
    """Build (synthetic) or locate (VOC) the dataset, validate every listed file and index it.

    The synthetic set is written to `out/VOC2012`; a VOC devkit is `p.voc_root` or downloaded into
    `p.voc_cache` (relative paths are taken from `repo`, the real repo root also inside `dvc exp run --temp`,
    so one download serves every experiment). -> (index with a content digest, statistics).
    """
    if p.source == "synthetic":
        root = out / "VOC2012"
        cfg = SyntheticConfig(**asdict(p.synthetic), seed=seed)
        extra = generate(root, cfg)
        index = synthetic_dataset_index(root, label_rule=p.voc_labels)
        index = index.with_meta(bias_class=cfg.bias_class)
    else:
        root, extra = _voc_root(p, repo), {}
        index, missing = voc_index(root, seed=seed, pixel_labelled=p.voc_pixel_labelled, labels=p.voc_labels)
        extra["train_aug_missing"] = missing
    try:
        digest = validate(index)
    except InputError as e:
        if p.source != "voc" or p.voc_root:
            raise
        raise InputError(
            f"{e}\n  (extracted from the tar with md5 {p.voc_md5} in data.voc_cache; if that tar is bad, "
            "correct data.voc_urls and data.voc_md5: a devkit is extracted again when the md5 changes)"
        ) from None
    return index.with_meta(digest=digest), statistics(index, extra)


def _voc_root(p: DataParams, repo: Path) -> Path:
    if p.voc_root:
        root = Path(p.voc_root)
        root = root if root.is_absolute() else repo / root
    else:
        cache = Path(p.voc_cache)
        root = prepare_voc(cache if cache.is_absolute() else repo / cache, list(p.voc_urls), p.voc_md5)
    if not (root / "JPEGImages").is_dir():
        raise InputError(f"data.voc_root: {root} has no JPEGImages folder (expected .../VOCdevkit/VOC2012)")
    return root.resolve()


def voc_index(root: Path, *, seed: int, pixel_labelled: int, labels: str = "all") -> tuple[DatasetIndex, int]:
    """Roles of the VOC 2012 devkit: weak training on train_aug (every id of the shipped list whose JPEG the
    devkit has: all 10,582 are in the trainval tar), seed quality on train (1,464 masks), mIoU on val,
    `pixel_labelled` train images for GAIN_ext; image labels from the XML objects `labels` keeps (all |
    nondifficult). -> (index, number of train_aug ids missing from the devkit)."""
    available = {f.stem for f in (root / "JPEGImages").glob("*.jpg")}
    listed = VOC_TRAIN_AUG.read_text().split()
    weak = [i for i in listed if i in available]
    train = read_split(root, "train")
    pixel = sorted(np.random.default_rng(seed).permutation(train)[:pixel_labelled].tolist())
    splits = {"weak_train": weak, "seed_eval": train, "val": read_split(root, "val"), "pixel": pixel}
    return build_index(root, "voc", splits, label_rule=labels), len(listed) - len(weak)


def _check_image(root: Path, image_id: str, h: hashlib._Hash) -> str | None:
    """Hash the image, its mask and XML into `h`; -> a description of what is wrong, or None."""
    jpg = root / "JPEGImages" / f"{image_id}.jpg"
    if not jpg.is_file():
        return f"{jpg}: missing"
    data = jpg.read_bytes()
    h.update(image_id.encode() + b"\0" + data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))  # decodes every byte, 8x faster
            img.load()
    except Exception as e:
        return f"{jpg}: unreadable image ({e})"
    png = mask_path(root, image_id)
    if png is not None:
        h.update(png.read_bytes())
        try:
            with Image.open(png) as m:
                if m.size != size:
                    return f"{png}: mask size {m.size} differs from image size {size}"
        except Exception as e:
            return f"{png}: unreadable mask ({e})"
    xml = root / "Annotations" / f"{image_id}.xml"
    if xml.is_file():
        text = xml.read_bytes()
        h.update(text)
        try:
            ET.fromstring(text)
        except ET.ParseError as e:
            return f"{xml}: unreadable annotation ({e})"
    elif png is None:
        return f"{xml}: missing, and no mask either (no image label)"
    return None


def validate(index: DatasetIndex) -> str:
    """Check every image of every split before any training: a readable JPEG, a mask of the image's size
    where one exists, and an annotation XML (or a mask) for its label. Raises InputError listing the first
    offenders with their paths and the count; returns a sha256 digest of all those files."""
    ids = sorted({i for ids in index.splits.values() for i in ids})
    h = hashlib.sha256()
    bad = [
        problem
        for image_id in tqdm(ids, desc="checking images", unit="img")
        if (problem := _check_image(index.root, image_id, h)) is not None
    ]
    if bad:
        listing = "\n".join(f"  {b}" for b in bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise InputError(f"{index.root}: {len(bad)} of {len(ids)} images are unusable:\n{listing}{more}")
    return h.hexdigest()


def statistics(index: DatasetIndex, extra: dict) -> dict:
    """Images per role, images per class and labels per image (weak training and val)."""
    stats = {"images": {k: len(v) for k, v in index.splits.items()}, "num_classes": index.num_classes}
    for split in ("weak_train", "val"):
        counts = Counter(c for i in index.splits[split] for c in index.labels[i])
        stats[f"class_images_{split}"] = {
            index.classes[c]: counts.get(c, 0) for c in range(1, index.num_classes)
        }
        stats[f"labels_per_image_{split}"] = float(
            np.mean([len(index.labels[i]) for i in index.splits[split]])
        )
    stats.update({k: v for k, v in extra.items() if isinstance(v, int | float)})
    return stats


def sample_figure(index: DatasetIndex, out_png: Path, *, n: int = 8) -> None:
    """A grid of the first `n` images with masks (seed-evaluation role) under their colour masks (white
    outline: the synthetic set's discriminative part), titled with the classes present, with a legend of
    class colours; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    root, names = index.root, index.classes
    ids = [i for i in index.splits["seed_eval"] if mask_path(root, i) is not None][:n]
    if not ids:
        raise InputError(f"{root}: no image of the seed_eval split has a mask to show")
    colours = np.array(voc_palette(), dtype=np.float64).reshape(256, 3) / 255.0
    cols = min(4, len(ids))
    rows = math.ceil(len(ids) / cols)
    fig = Figure(figsize=(2.6 * cols, 2.7 * rows + 0.7), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg whatever the session's pyplot backend is
    for k, image_id in enumerate(ids):
        img = read_rgb(root / "JPEGImages" / f"{image_id}.jpg") / 255.0
        mask = read_label_png(mask_path(root, image_id))
        shown = np.where(
            ((mask > 0) & (mask < len(names)))[..., None], 0.55 * img + 0.45 * colours[mask], img
        )
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(shown, interpolation="nearest")
        part_png = root / "SegmentationPart" / f"{image_id}.png"
        if part_png.is_file():
            ax.contour(read_label_png(part_png) > 0, levels=[0.5], colors="white", linewidths=0.8)
        present = [names[c] for c in np.unique(mask) if 0 < c < len(names)]
        ax.set_title(f"{image_id}\n{', '.join(present) or '(none)'}", fontsize=7)
        ax.set_axis_off()
    handles = [Patch(facecolor=colours[c], edgecolor="black", label=names[c]) for c in range(len(names))]
    handles.append(Patch(facecolor=colours[IGNORE_INDEX], edgecolor="black", label="void (255)"))
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False
    )
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
