"""One dataset reader for the VOC 2012 layout (real or synthetic) and the index the data stage writes."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from gain.data.transforms import Compose, to_tensor
from gain.data.voc import IGNORE_INDEX, labels_from_mask, labels_from_xml, read_class_names, read_split
from gain.runtime.errors import InputError
from gain.runtime.io import read_label_png, read_rgb, write_json


@dataclass(frozen=True)
class DatasetIndex:
    """What the data stage hands to later stages (`data/dataset/index.json`).

    root: the VOC2012-layout folder; splits: role -> ids (`weak_train`, `seed_eval`, `val`, `pixel`,
    `bias_object_only`, `bias_context_only`, `part_hidden`); labels: id -> foreground class indices (1-based).
    """

    root: Path
    source: str
    classes: tuple[str, ...]
    splits: dict[str, list[str]]
    labels: dict[str, list[int]]
    digest: str = ""  # sha256 of every listed image, mask and XML (set by the data stage's validation)
    bias_class: int | None = None  # the synthetic set's context-biased class (1-based), for Table 4

    def with_meta(self, **kw) -> DatasetIndex:
        return dataclasses.replace(self, **kw)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_vector(self, image_id: str) -> np.ndarray:
        v = np.zeros(self.num_classes - 1, dtype=np.float32)
        v[np.asarray(self.labels[image_id], dtype=int) - 1] = 1.0
        return v

    def save(self, path: Path) -> None:
        write_json(
            path,
            {
                "root": str(self.root),
                "source": self.source,
                "classes": list(self.classes),
                "splits": self.splits,
                "labels": self.labels,
                "digest": self.digest,
                "bias_class": self.bias_class,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> DatasetIndex:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            return cls(
                root=Path(d["root"]),
                source=d["source"],
                classes=tuple(d["classes"]),
                splits=d["splits"],
                labels=d["labels"],
                digest=d.get("digest", ""),
                bias_class=d.get("bias_class"),
            )
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{path}: unreadable dataset index ({e}); re-run the data stage") from e


def image_label(root: Path, image_id: str, classes: tuple[str, ...], *, rule: str = "all") -> np.ndarray:
    """Multi-hot label from Annotations/<id>.xml where present (`rule`: all | nondifficult objects, see
    labels_from_xml), otherwise from the mask."""
    xml = root / "Annotations" / f"{image_id}.xml"
    if xml.is_file():
        return labels_from_xml(xml, classes, rule=rule)
    for folder in ("SegmentationClass", "SegmentationClassAug"):
        png = root / folder / f"{image_id}.png"
        if png.is_file():
            return labels_from_mask(read_label_png(png), len(classes))
    raise InputError(f"{xml}: no annotation XML and no mask for image {image_id}")


def build_index(
    root: Path, source: str, splits: dict[str, list[str]], *, label_rule: str = "all"
) -> DatasetIndex:
    """Index of a VOC-layout root: class names, splits by role and every listed image's label (from the XML
    objects `label_rule` keeps: all | nondifficult)."""
    classes = read_class_names(root)
    ids = sorted({i for ids in splits.values() for i in ids})
    labels = {i: (np.flatnonzero(image_label(root, i, classes, rule=label_rule)) + 1).tolist() for i in ids}
    return DatasetIndex(root=root, source=source, classes=classes, splits=splits, labels=labels)


def synthetic_dataset_index(root: Path, *, label_rule: str = "all") -> DatasetIndex:
    """The roles of a generated synthetic set: weak training and seed evaluation on train (all have masks).
    Its XMLs mark no object difficult, so both label rules give the same labels."""
    splits = {
        "weak_train": read_split(root, "train"),
        "seed_eval": read_split(root, "train"),
        "val": read_split(root, "val"),
        "pixel": read_split(root, "train_pixel"),
        "bias_object_only": read_split(root, "bias_object_only"),
        "bias_context_only": read_split(root, "bias_context_only"),
        "part_hidden": read_split(root, "part_hidden"),
    }
    return build_index(root, "synthetic", splits, label_rule=label_rule)


def mask_path(root: Path, image_id: str) -> Path | None:
    for folder in ("SegmentationClass", "SegmentationClassAug"):
        p = root / folder / f"{image_id}.png"
        if p.is_file():
            return p
    return None


class VOCDataset(Dataset):
    """Yields dict(image (3,h,w) float, label (C-1,) float, mask (h,w) long with 255 = void/none,
    has_mask bool, index, id). Augmentation draws from a per-sample generator seeded by
    (seed, epoch, index), so a sample's augmentation does not depend on what was loaded before it.

    with_masks: ids whose masks are loaded (others get an all-255 mask); None loads every mask found.
    keep_original: also return the un-resized uint8 image and mask (for evaluation at full resolution).
    mask_root: read masks from `<mask_root>/<id>.png` instead (SEC trains on seed maps this way).
    """

    def __init__(
        self,
        index: DatasetIndex,
        ids: list[str],
        transform: Compose,
        *,
        seed: int = 0,
        with_masks: set[str] | None = None,
        keep_original: bool = False,
        mask_root: Path | None = None,
    ):
        self.index, self.ids, self.transform, self.seed = index, list(ids), transform, seed
        self.with_masks = with_masks
        self.mask_root = mask_root
        self.keep_original = keep_original
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        root = self.index.root
        path = root / "JPEGImages" / f"{image_id}.jpg"
        if not path.is_file():
            raise InputError(f"{path}: image not found")
        image = read_rgb(path)
        mask = None
        if self.with_masks is None or image_id in self.with_masks:
            mp = mask_path(root, image_id) if self.mask_root is None else self.mask_root / f"{image_id}.png"
            if self.mask_root is not None and not mp.is_file():
                raise InputError(f"{mp}: seed map not found")
            if mp is not None:
                mask = read_label_png(mp)
                if mask.shape != image.shape[:2]:
                    raise InputError(
                        f"{mp}: mask size {mask.shape[::-1]} differs from image size "
                        f"{image.shape[1::-1]} of {path}"
                    )
        return image, mask

    def __getitem__(self, i: int) -> dict:
        image_id = self.ids[i]
        image, mask = self.load(image_id)
        has_mask = mask is not None
        full = np.full(image.shape[:2], IGNORE_INDEX, np.uint8) if mask is None else mask
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img_t, mask_t = self.transform(image, full, rng)
        item = {
            "image": to_tensor(img_t),
            "label": torch.from_numpy(self.index.label_vector(image_id)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask_t)).long(),
            "has_mask": has_mask,
            "index": i,
            "id": image_id,
        }
        if self.keep_original:
            item["orig_image"] = image
            item["orig_mask"] = full
        return item
