"""PASCAL VOC 2012 conventions: class names, the label palette, split files and image labels."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from gain.runtime.errors import InputError
from gain.runtime.io import write_text

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
IGNORE_INDEX = 255


def voc_palette() -> list[int]:
    """The 256-entry VOC colour map (bit-interleaved), flattened to 768 ints for PIL.putpalette."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def read_split(root: str | Path, split: str) -> list[str]:
    """Image ids listed in ImageSets/Segmentation/<split>.txt under a VOC2012-layout root."""
    path = Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise InputError(f"{path}: split list not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_class_names(root: str | Path) -> tuple[str, ...]:
    """Class names of a dataset root: `classes.txt` if present (synthetic sets), else VOC's 21."""
    path = Path(root) / "classes.txt"
    if path.is_file():
        return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    return VOC_CLASSES


LABEL_RULES = ("all", "nondifficult")


def labels_from_xml(path: str | Path, class_names: tuple[str, ...], *, rule: str = "all") -> np.ndarray:
    """Multi-hot (C-1,) float32 image label over the foreground classes, from an Annotations XML.

    rule "all": every <object> counts (irn and psa read every <name> of the file); "nondifficult": objects
    marked <difficult>1</difficult> are skipped. SEC's released labels drop a class from 896 of the 10,582
    train_aug images relative to "all" (always a strict subset; mostly person, sofa, chair, diningtable),
    consistent with skipping difficult objects where an XML could be checked.
    """
    if rule not in LABEL_RULES:
        raise ValueError(f"rule must be one of {LABEL_RULES}, got {rule!r}")
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as e:
        raise InputError(f"{path}: unreadable annotation ({e})") from e
    label = np.zeros(len(class_names) - 1, dtype=np.float32)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_names[1:]:
            raise InputError(f"{path}: unknown object name {name!r}")
        if rule == "nondifficult" and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        label[class_names.index(name) - 1] = 1.0
    return label


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot (C-1,) float32 image label from a (H, W) label map (background and 255 ignored)."""
    present = np.unique(mask)
    present = present[(present > 0) & (present < num_classes)]
    label = np.zeros(num_classes - 1, dtype=np.float32)
    label[present - 1] = 1.0
    return label


def write_annotation_xml(
    path: str | Path,
    image_id: str,
    size: tuple[int, int],
    objects: list[tuple[str, tuple[int, int, int, int]]],
) -> None:
    """Write a minimal VOC Annotations XML; objects are (name, (xmin, ymin, xmax, ymax))."""
    h, w = size
    parts = [
        f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>",
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>",
    ]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    parts.append("</annotation>\n")
    write_text(path, "".join(parts))
