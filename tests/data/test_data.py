"""The one dataset reader (gain/data/dataset.py, gain/data/voc.py, gain/data/transforms.py) on five real VOC 2012 images with
their official masks, plus seeded paired-transform tests on a pattern whose mask follows from its pixels."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from gain.data.dataset import DatasetIndex, VOCDataset, image_label
from gain.data.dataset import build_index as build_dataset_index
from gain.data.transforms import (
    MEAN,
    STD,
    Compose,
    RandomCrop,
    RandomHFlip,
    RandomScale,
    Resize,
    denormalize,
    eval_preset,
    train_preset,
)
from gain.data.voc import IGNORE_INDEX, VOC_CLASSES, read_split, voc_palette
from gain.runtime.errors import InputError
from gain.runtime.io import read_label_png, read_rgb, save_palette_png
from gain.runtime.loaders import collate

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SAMPLE = HERE / "VOCdevkit" / "VOC2012"
IDS = sorted(p.stem for p in (SAMPLE / "JPEGImages").glob("*.jpg"))
OFFICIAL = json.loads((HERE / "cls_labels_sample.json").read_text())
CLS_LABELS_NPY = [
    Path("/work/shared/voc12/cls_labels.npy"),
    REPO.parent / "shared" / "voc12" / "cls_labels.npy",
]


def build_index(root: Path) -> DatasetIndex:
    ids = sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg"))
    labels = {i: (np.flatnonzero(image_label(root, i, VOC_CLASSES)) + 1).tolist() for i in ids}
    splits = {"train": read_split(root, "train"), "val": read_split(root, "val")}
    return DatasetIndex(root=root, source="voc", classes=VOC_CLASSES, splits=splits, labels=labels)


@pytest.fixture
def voc_copy(tmp_path) -> Path:
    """A writable copy of the sample VOC2012 folder."""
    return Path(shutil.copytree(SAMPLE, tmp_path / "VOCdevkit" / "VOC2012"))


# --- image labels -----------------------------------------------------------------------------------------


def test_sample_is_complete():
    assert len(IDS) == 5 and sorted(OFFICIAL) == IDS
    assert not (SAMPLE / "Annotations").exists()  # labels below come from the masks


@pytest.mark.parametrize("image_id", IDS)
def test_image_label_from_mask_matches_official_labels(image_id):
    label = image_label(SAMPLE, image_id, VOC_CLASSES)
    assert label.dtype == np.float32 and label.shape == (20,)
    np.testing.assert_array_equal(label, OFFICIAL[image_id])


def test_image_label_matches_cls_labels_npy():
    path = next((p for p in CLS_LABELS_NPY if p.is_file()), None)
    assert path is not None, (
        f"cls_labels.npy missing: fetch voc12/cls_labels.npy of github.com/jiwoon-ahn/irn into one of "
        f"{[str(p) for p in CLS_LABELS_NPY]} (see /work/shared/voc12/README.md)"
    )
    official = np.load(path, allow_pickle=True).item()
    for image_id in IDS:
        np.testing.assert_array_equal(
            image_label(SAMPLE, image_id, VOC_CLASSES),
            official[int(image_id.replace("_", ""))],
            err_msg=image_id,
        )


def test_image_label_falls_back_to_segmentation_class_aug(voc_copy):
    image_id = "2011_003066"
    (voc_copy / "SegmentationClass" / f"{image_id}.png").unlink()
    np.testing.assert_array_equal(image_label(voc_copy, image_id, VOC_CLASSES), OFFICIAL[image_id])
    (voc_copy / "SegmentationClassAug" / f"{image_id}.png").unlink()
    with pytest.raises(InputError, match=image_id):
        image_label(voc_copy, image_id, VOC_CLASSES)


XML = """<annotation><folder>VOC2012</folder><filename>{id}.jpg</filename>
<size><width>500</width><height>375</height><depth>3</depth></size>
<object><name>dog</name><pose>Left</pose><truncated>0</truncated><difficult>0</difficult>
<bndbox><xmin>10</xmin><ymin>10</ymin><xmax>100</xmax><ymax>100</ymax></bndbox></object>
<object><name>sheep</name><difficult>1</difficult>
<bndbox><xmin>200</xmin><ymin>50</ymin><xmax>300</xmax><ymax>150</ymax></bndbox></object>
<object><name>dog</name><difficult>0</difficult>
<bndbox><xmin>5</xmin><ymin>5</ymin><xmax>50</xmax><ymax>50</ymax></bndbox></object>
<object><name>{extra}</name><difficult>0</difficult>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox>
<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></part>
<part><name>hand</name><bndbox><xmin>6</xmin><ymin>6</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></part>
</object></annotation>
"""


def test_xml_labels_win_over_the_mask(voc_copy):
    image_id = "2011_000025"  # mask: bus, car
    (voc_copy / "Annotations").mkdir()
    (voc_copy / "Annotations" / f"{image_id}.xml").write_text(XML.format(id=image_id, extra="person"))
    label = image_label(voc_copy, image_id, VOC_CLASSES)
    # dog, sheep (difficult objects count, as in cls_labels.npy) and person; parts (head, hand) are not objects.
    expected = np.zeros(20, np.float32)
    expected[[VOC_CLASSES.index(c) - 1 for c in ("dog", "sheep", "person")]] = 1
    np.testing.assert_array_equal(label, expected)
    # Ids without an XML still read their mask.
    np.testing.assert_array_equal(image_label(voc_copy, "2011_000006", VOC_CLASSES), OFFICIAL["2011_000006"])


def test_nondifficult_rule_skips_objects_marked_difficult(voc_copy):
    image_id = "2011_000025"
    (voc_copy / "Annotations").mkdir()
    (voc_copy / "Annotations" / f"{image_id}.xml").write_text(XML.format(id=image_id, extra="person"))

    def names(label):
        return [VOC_CLASSES[i + 1] for i in np.flatnonzero(label)]

    assert names(image_label(voc_copy, image_id, VOC_CLASSES, rule="all")) == ["dog", "person", "sheep"]
    # the only sheep is difficult; the second dog is not, so dog stays
    assert names(image_label(voc_copy, image_id, VOC_CLASSES, rule="nondifficult")) == ["dog", "person"]
    index = build_dataset_index(voc_copy, "voc", {"train": [image_id]}, label_rule="nondifficult")
    assert index.labels[image_id] == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    # an image whose objects are all difficult keeps an empty label; a mask-only id is unaffected
    (voc_copy / "Annotations" / f"{image_id}.xml").write_text(
        XML.replace("<difficult>0", "<difficult>1").format(id=image_id, extra="person")
    )
    assert names(image_label(voc_copy, image_id, VOC_CLASSES, rule="nondifficult")) == []
    np.testing.assert_array_equal(
        image_label(voc_copy, "2011_000006", VOC_CLASSES, rule="nondifficult"), OFFICIAL["2011_000006"]
    )
    with pytest.raises(ValueError, match="'some'"):
        image_label(voc_copy, image_id, VOC_CLASSES, rule="some")


def test_xml_with_unknown_class_or_bad_syntax_names_the_file(voc_copy):
    xml = voc_copy / "Annotations" / "2011_000025.xml"
    xml.parent.mkdir()
    xml.write_text(XML.format(id="2011_000025", extra="unicorn"))
    with pytest.raises(ValueError, match=re.escape(str(xml)) + ".*unicorn"):
        image_label(voc_copy, "2011_000025", VOC_CLASSES)
    xml.write_text("<annotation><object><name>dog</name>")
    with pytest.raises(ValueError, match=re.escape(str(xml))):
        image_label(voc_copy, "2011_000025", VOC_CLASSES)


# --- DatasetIndex and VOCDataset on the real sample -------------------------------------------------------


def test_index_of_the_sample():
    index = build_index(SAMPLE)
    assert index.num_classes == 21
    assert index.splits["val"] == ["2007_000129"] and len(index.splits["train"]) == 4
    for image_id in IDS:
        np.testing.assert_array_equal(index.label_vector(image_id), OFFICIAL[image_id])


def test_index_save_load_round_trip(tmp_path):
    index = build_index(SAMPLE)
    index.save(tmp_path / "index.json")
    assert DatasetIndex.load(tmp_path / "index.json") == index
    bad = tmp_path / "bad.json"
    bad.write_text('{"root": "x"}')
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        DatasetIndex.load(bad)


def test_eval_items_are_normalised_and_keep_void():
    index = build_index(SAMPLE)
    size = 96
    ds = VOCDataset(index, IDS, eval_preset(size), keep_original=True)
    assert len(ds) == 5
    for i, image_id in enumerate(IDS):
        item = ds[i]
        rgb = read_rgb(SAMPLE / "JPEGImages" / f"{image_id}.jpg")
        mask = read_label_png(SAMPLE / "SegmentationClass" / f"{image_id}.png")
        assert item["id"] == image_id and item["index"] == i and item["has_mask"] is True
        assert item["image"].shape == (3, size, size) and item["image"].dtype == torch.float32
        resized = np.array(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.float64)
        expected = (resized / 255.0 - np.array(MEAN)) / np.array(STD)  # (H, W, 3) -> channels first below
        np.testing.assert_allclose(item["image"].numpy(), expected.transpose(2, 0, 1), atol=1e-5)
        np.testing.assert_array_equal(item["label"].numpy(), OFFICIAL[image_id])
        assert item["mask"].shape == (size, size) and item["mask"].dtype == torch.long
        np.testing.assert_array_equal(
            item["mask"].numpy(), np.array(Image.fromarray(mask).resize((size, size), Image.NEAREST))
        )
        assert (item["mask"] == IGNORE_INDEX).any()  # the official void borders survive
        assert set(item["mask"].unique().tolist()) <= set(np.unique(mask).tolist())
        np.testing.assert_array_equal(item["orig_image"], rgb)
        np.testing.assert_array_equal(item["orig_mask"], mask)


def test_with_masks_limits_which_masks_load():
    index = build_index(SAMPLE)
    ds = VOCDataset(index, IDS, eval_preset(64), with_masks={IDS[1]})
    assert [ds[i]["has_mask"] for i in range(5)] == [False, True, False, False, False]
    assert (ds[0]["mask"] == IGNORE_INDEX).all()
    assert (ds[1]["mask"] != IGNORE_INDEX).any()


def test_collate_stacks_a_batch():
    ds = VOCDataset(build_index(SAMPLE), IDS, eval_preset(64), with_masks={IDS[0]})
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 3, 64, 64) and batch["label"].shape == (3, 20)
    assert batch["mask"].shape == (3, 64, 64)
    assert batch["has_mask"].tolist() == [True, False, False] and batch["index"].tolist() == [0, 1, 2]
    assert batch["id"] == IDS[:3]


def test_same_seed_epoch_index_gives_the_same_sample():
    index = build_index(SAMPLE)
    ds = VOCDataset(index, IDS, train_preset(64), seed=5)
    first = [ds[i] for i in range(5)]
    # A fresh dataset read in another order (as another worker would) gives the same samples.
    again = VOCDataset(index, IDS, train_preset(64), seed=5)
    for i in reversed(range(5)):
        item = again[i]
        assert torch.equal(item["image"], first[i]["image"]) and torch.equal(item["mask"], first[i]["mask"])
    ds.set_epoch(1)
    other_seed = VOCDataset(index, IDS, train_preset(64), seed=6)
    for i in range(5):
        assert not torch.equal(ds[i]["image"], first[i]["image"]), f"epoch 1 repeats epoch 0 for index {i}"
        assert not torch.equal(other_seed[i]["image"], first[i]["image"])


def test_missing_image_names_the_path(voc_copy):
    path = voc_copy / "JPEGImages" / f"{IDS[2]}.jpg"
    path.unlink()
    ds = VOCDataset(_index_at(voc_copy), IDS, eval_preset(64))
    with pytest.raises(InputError, match=re.escape(str(path))):
        ds[2]
    ds[1]  # the others still load


def _index_at(root: Path) -> DatasetIndex:
    """The sample's index, pointed at another copy of the folder."""
    index = build_index(SAMPLE)
    return DatasetIndex(
        root=root, source=index.source, classes=index.classes, splits=index.splits, labels=index.labels
    )


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_jpeg_names_the_path(voc_copy, damage):
    path = voc_copy / "JPEGImages" / f"{IDS[0]}.jpg"
    data = path.read_bytes()
    path.write_bytes(b"this is not a JPEG file\n" * 50 if damage == "garbage" else data[: len(data) // 3])
    ds = VOCDataset(_index_at(voc_copy), IDS, eval_preset(64))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        ds[0]


def test_mask_of_another_size_names_the_mask(voc_copy):
    image_id = IDS[3]
    mask_file = voc_copy / "SegmentationClass" / f"{image_id}.png"
    mask = read_label_png(mask_file)
    save_palette_png(mask_file, mask[:-10], voc_palette())  # 10 rows short
    ds = VOCDataset(_index_at(voc_copy), IDS, eval_preset(64))
    with pytest.raises(ValueError) as e:
        ds[3]
    assert str(e.value).startswith(str(mask_file)), str(e.value)
    assert "differs from image size" in str(e.value)


def test_unreadable_mask_names_the_mask(voc_copy):
    mask_file = voc_copy / "SegmentationClass" / f"{IDS[4]}.png"
    rgb = read_rgb(voc_copy / "JPEGImages" / f"{IDS[4]}.jpg")
    Image.fromarray(rgb).save(mask_file)  # an RGB PNG is not a label map
    ds = VOCDataset(_index_at(voc_copy), IDS, eval_preset(64))
    with pytest.raises(ValueError, match=re.escape(str(mask_file)) + ".*palette or greyscale"):
        ds[4]
    mask_file.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=re.escape(str(mask_file))):
        ds[4]


# --- paired transforms: a pattern whose mask follows from its pixels -------------------------------------

# Class value -> colour, far apart so the class of any unblended pixel is the nearest colour. The crop
# padding colour (ImageNet mean) must read back as void.
COLOURS = {
    0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 4: (255, 255, 0), 5: (255, 0, 255),
    6: (0, 255, 255), 7: (255, 128, 0), 8: (128, 0, 255), 9: (0, 128, 255), 10: (255, 255, 255),
    11: (128, 255, 0), IGNORE_INDEX: (128, 64, 192),
}  # fmt: skip
PAD = tuple(int(m * 255) for m in MEAN)
_TABLE = np.array(list(COLOURS.values()) + [PAD], dtype=np.float64)
_VALUES = np.array(list(COLOURS) + [IGNORE_INDEX], dtype=np.uint8)


def pattern(h: int = 90, w: int = 120, block: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image of 12 coloured blocks and a void stripe, and its (H, W) uint8 mask."""
    y, x = np.mgrid[:h, :w]
    mask = ((y // block) * (w // block) + x // block) % 12
    mask[:, w // 2 - 3 : w // 2 + 2] = IGNORE_INDEX
    mask = mask.astype(np.uint8)
    image = np.zeros((h, w, 3), np.uint8)
    for v, c in COLOURS.items():
        image[mask == v] = c
    return image, mask


def derive_mask(image: np.ndarray) -> np.ndarray:
    """The mask the pattern's pixels encode (nearest colour)."""
    d = ((image[..., None, :].astype(np.float64) - _TABLE) ** 2).sum(-1)
    return _VALUES[d.argmin(-1)]


def interior(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood holds one label: away from any interpolated edge."""
    size = 2 * radius + 1
    return ndimage.maximum_filter(mask, size=size) == ndimage.minimum_filter(mask, size=size)


def test_pattern_encodes_its_mask():
    image, mask = pattern()
    np.testing.assert_array_equal(derive_mask(image), mask)
    assert len(np.unique(mask)) == 13


def test_hflip_moves_image_and_mask_together():
    image, mask = pattern()
    img_t, mask_t = RandomHFlip(p=1.0)(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(img_t, image[:, ::-1])
    np.testing.assert_array_equal(derive_mask(img_t), mask_t)
    img_n, mask_n = RandomHFlip(p=0.0)(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(img_n, image)
    np.testing.assert_array_equal(mask_n, mask)


def test_crop_takes_the_same_window_from_both():
    image, mask = pattern()
    windows = set()
    for seed in range(8):
        img_t, mask_t = RandomCrop(48)(image, mask, np.random.default_rng(seed))
        assert img_t.shape == (48, 48, 3) and mask_t.shape == (48, 48)
        np.testing.assert_array_equal(derive_mask(img_t), mask_t)
        windows.add(mask_t.tobytes())
    assert len(windows) > 1  # the window position is random


def test_crop_pads_the_mask_with_255_and_the_image_with_the_mean():
    image, mask = pattern(h=40, w=30, block=10)
    img_t, mask_t = RandomCrop(48)(image, mask, np.random.default_rng(0))
    assert img_t.shape == (48, 48, 3) and mask_t.shape == (48, 48)
    np.testing.assert_array_equal(mask_t[:40, :30], mask)  # padding goes after the content
    np.testing.assert_array_equal(img_t[:40, :30], image)
    assert (mask_t[40:] == IGNORE_INDEX).all() and (mask_t[:, 30:] == IGNORE_INDEX).all()
    assert (img_t[40:] == PAD).all() and (img_t[:, 30:] == PAD).all()


@pytest.mark.parametrize("transform", [Resize(37), RandomScale(50, 0.8, 1.25), Resize(131)])
def test_mask_resize_is_nearest(transform):
    # A 1-px checkerboard of 0 and 20 with void pixels: any blending would create new values.
    y, x = np.mgrid[:45, :61]
    mask = np.where((y + x) % 2 == 0, 0, 20).astype(np.uint8)
    mask[::7, ::5] = IGNORE_INDEX
    image = np.repeat(mask[..., None], 3, axis=2)
    for seed in range(4):
        img_t, mask_t = transform(image, mask, np.random.default_rng(seed))
        assert img_t.shape[:2] == mask_t.shape
        assert set(np.unique(mask_t)) <= {0, 20, IGNORE_INDEX}
    assert set(np.unique(img_t[..., 0])) - {0, 20, IGNORE_INDEX}  # the image, by contrast, is blended


def test_train_preset_keeps_image_and_mask_aligned():
    image, mask = pattern()
    size = 64
    seen = set()
    for seed in range(12):
        img_t, mask_t = train_preset(size)(image, mask, np.random.default_rng(seed))
        assert img_t.shape == (size, size, 3) and mask_t.shape == (size, size)
        assert set(np.unique(mask_t)) <= set(np.unique(mask))
        inside = interior(mask_t)
        assert inside.mean() > 0.5
        np.testing.assert_array_equal(derive_mask(img_t)[inside], mask_t[inside], err_msg=f"seed {seed}")
        seen.add(mask_t.tobytes())
        # The same generator state gives the same pair.
        again = train_preset(size)(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(again[0], img_t)
        np.testing.assert_array_equal(again[1], mask_t)
    assert len(seen) == 12


def test_dataset_items_stay_aligned_through_the_train_preset(tmp_path):
    """Through the whole reader: JPEG on disk, palette mask, seeded augmentation, tensor conversion."""
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    image, mask = pattern(h=150, w=200, block=50)
    Image.fromarray(image).save(root / "JPEGImages" / "p_0001.jpg", quality=95)
    save_palette_png(root / "SegmentationClass" / "p_0001.png", mask, voc_palette())
    index = DatasetIndex(
        root=root, source="voc", classes=VOC_CLASSES, splits={"train": ["p_0001"]}, labels={"p_0001": [1, 2]}
    )
    ds = VOCDataset(
        index, ["p_0001"] * 6, Compose([RandomScale(100, 0.6, 1.0), RandomCrop(80), RandomHFlip()]), seed=1
    )
    for i in range(len(ds)):
        item = ds[i]
        img = denormalize(item["image"])
        m = item["mask"].numpy().astype(np.uint8)
        inside = interior(m, radius=3)
        assert inside.mean() > 0.5
        np.testing.assert_array_equal(derive_mask(img)[inside], m[inside], err_msg=f"item {i}")
    assert ds[0]["label"].tolist()[:3] == [1.0, 1.0, 0.0]
