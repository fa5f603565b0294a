"""Tests for gain/data/synthetic.py: VOC layout, determinism, context bias, parts, config checks, atomic replace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gain.data import synthetic
from gain.data.dataset import synthetic_dataset_index
from gain.data.prepare import sample_figure
from gain.data.synthetic import WATER, SyntheticConfig, generate, render_image
from gain.data.voc import (
    IGNORE_INDEX,
    labels_from_mask,
    labels_from_xml,
    read_class_names,
    read_split,
    voc_palette,
)
from gain.runtime.io import read_label_png

TINY = SyntheticConfig(
    num_classes=4,
    image_size=48,
    n_train=24,
    n_val=6,
    n_bias_eval=5,
    max_objects=3,
    bias_class=2,
    bias_fraction=0.8,
    context_rate=0.1,
    pixel_labelled=5,
    seed=3,
)
SPLITS = ("train", "val", "train_pixel", "bias_object_only", "bias_context_only", "part_hidden")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("syn") / "VOC2012"
    return root, generate(root, TINY, progress=False)


def mask_labels(root: Path, image_id: str) -> set[int]:
    mask = read_label_png(root / "SegmentationClass" / f"{image_id}.png")
    return {int(c) for c in np.unique(mask) if 0 < c < IGNORE_INDEX}


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny):
    root, _ = tiny
    again = tmp_path / "again"
    generate(again, TINY, progress=False)
    assert snapshot(again) == snapshot(root)

    other = tmp_path / "other"
    generate(other, SyntheticConfig(**{**TINY.__dict__, "seed": 4}), progress=False)
    a, b = snapshot(root), snapshot(other)
    assert a.keys() == b.keys()
    assert a["JPEGImages/syn_train_00001.jpg"] != b["JPEGImages/syn_train_00001.jpg"]


def test_voc_layout(tiny):
    root, stats = tiny
    names = read_class_names(root)
    assert names == ("background", "disc", "block", "hexa", "ring")
    for sub in (
        "JPEGImages",
        "SegmentationClass",
        "SegmentationPart",
        "Annotations",
        "ImageSets/Segmentation",
    ):
        assert (root / sub).is_dir()
    expected = {
        "train": TINY.n_train,
        "val": TINY.n_val,
        "train_pixel": TINY.pixel_labelled,
        "bias_object_only": TINY.n_bias_eval,
        "bias_context_only": TINY.n_bias_eval,
    }
    for split, n in expected.items():
        assert len(read_split(root, split)) == n == stats["images"][split]
    assert read_split(root, "trainval") == read_split(root, "train") + read_split(root, "val")
    assert read_split(root, "train")[0] == "syn_train_00001"
    assert read_split(root, "bias_context_only")[-1] == f"syn_bctx_{TINY.n_bias_eval:05d}"

    for split in SPLITS:
        for image_id in read_split(root, split):
            assert (root / "Annotations" / f"{image_id}.xml").is_file()
            with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as img:
                assert img.format == "JPEG" and img.mode == "RGB"
                size = img.size
            with Image.open(root / "SegmentationClass" / f"{image_id}.png") as m:
                assert m.mode == "P" and m.size == size == (TINY.image_size, TINY.image_size)
                assert m.getpalette()[:48] == voc_palette()[:48]
                values = set(np.unique(np.array(m)).tolist())
            assert values <= set(range(TINY.num_classes + 1)) | {IGNORE_INDEX}
            if split in ("train", "val"):
                assert mask_labels(root, image_id), f"{image_id} has no object"
                assert IGNORE_INDEX in values  # the void ring around each object


def test_xml_labels_equal_mask_labels(tiny):
    root, _ = tiny
    names = read_class_names(root)
    for split in SPLITS:
        for image_id in read_split(root, split):
            xml = labels_from_xml(root / "Annotations" / f"{image_id}.xml", names)
            mask = labels_from_mask(
                read_label_png(root / "SegmentationClass" / f"{image_id}.png"), len(names)
            )
            np.testing.assert_array_equal(xml, mask, err_msg=image_id)


def test_context_bias_and_biased_splits(tiny):
    root, stats = tiny
    backgrounds = json.loads((root / "backgrounds.json").read_text())
    bias = TINY.bias_class
    with_bias = [i for i in read_split(root, "train") if bias in mask_labels(root, i)]
    without = [i for i in read_split(root, "train") if bias not in mask_labels(root, i)]
    observed = np.mean([backgrounds[i] == WATER for i in with_bias])
    # Water is assigned to exactly round(fraction x count) images, so only rounding separates the two.
    assert abs(observed - TINY.bias_fraction) <= 0.5 / len(with_bias) + 1e-9
    assert stats["bias_fraction_train"] == pytest.approx(observed)
    assert abs(np.mean([backgrounds[i] == WATER for i in without]) - TINY.context_rate) <= 0.5 / len(without)

    for image_id in read_split(root, "bias_object_only"):
        assert bias in mask_labels(root, image_id)
        assert backgrounds[image_id] != WATER
    for image_id in read_split(root, "bias_context_only"):
        assert bias not in mask_labels(root, image_id)
        assert backgrounds[image_id] == WATER


def test_train_pixel_is_a_seeded_nested_subset(tmp_path, tiny):
    root, stats = tiny
    pixel = read_split(root, "train_pixel")
    assert stats["pixel_labelled"] == len(pixel) == TINY.pixel_labelled
    assert len(set(pixel)) == len(pixel) and set(pixel) <= set(read_split(root, "train"))
    assert pixel != read_split(root, "train")[: len(pixel)]  # a permutation, not the first ids
    # Only the permutation's length changes with pixel_labelled: smaller sets are prefixes of larger ones.
    more = tmp_path / "more"
    generate(more, SyntheticConfig(**{**TINY.__dict__, "pixel_labelled": 9}), progress=False)
    assert read_split(more, "train_pixel")[: len(pixel)] == pixel


def test_discriminative_part_is_a_minority_of_each_object():
    cfg = SyntheticConfig(image_size=96, part_fraction=0.15)
    rng = np.random.default_rng(0)
    for _ in range(10):
        r = render_image(rng, cfg, rng.integers(1, cfg.num_classes + 1, size=3), "noise")
        assert r.image.shape == (96, 96, 3) and r.image.dtype == np.uint8
        assert not (r.part_mask & (r.instances == 0)).any()
        for k, obj in enumerate(r.objects, start=1):
            vis = r.instances == k
            assert obj.area == vis.sum() and obj.part_area == (r.part_mask & vis).sum()
            # Occlusion may hide body more than part, but each object keeps >= MIN_VISIBLE of its area.
            assert 0 < obj.part_area <= (cfg.part_fraction / synthetic.MIN_VISIBLE) * obj.area + 1
            assert obj.part_area < 0.5 * obj.area
        # The top object is never occluded, so its part is exactly part_fraction of its area.
        top = r.objects[-1]
        assert top.part_area / top.area == pytest.approx(cfg.part_fraction, abs=0.01)


def test_default_objects_are_large_against_the_attention_grid_and_parts_sit_at_an_extremity():
    """Default set at 112 px, 8 px attention cells: area-equivalent diameter >= ~6 cells (median), the part
    about 8% of the object and its centroid far from the object's centre (a cap at the edge)."""
    cfg = SyntheticConfig()
    rng = np.random.default_rng(1)
    diameters, offsets, shares = [], [], []
    for _ in range(30):
        r = render_image(rng, cfg, rng.integers(1, cfg.num_classes + 1, size=1), "noise")
        (obj,) = r.objects
        vis = r.instances == 1
        diameters.append(2 * np.sqrt(obj.area / np.pi))
        shares.append(obj.part_area / obj.area)
        oy, ox = np.argwhere(vis).mean(axis=0)
        py, px = np.argwhere(r.part_mask).mean(axis=0)
        # Part centroid distance from the object centroid, in units of the object's equivalent radius.
        offsets.append(np.hypot(py - oy, px - ox) / (diameters[-1] / 2))
    assert np.median(diameters) / 8 >= 6.0
    assert np.median(shares) == pytest.approx(cfg.part_fraction, abs=0.005) and max(shares) <= 0.1
    assert min(offsets) > 0.4 and np.median(offsets) > 0.6  # a centred part would be near 0


def test_body_colours_come_from_the_shared_palette_and_differ_from_the_background():
    cfg = SyntheticConfig()
    rng = np.random.default_rng(2)
    for _ in range(10):
        r = render_image(rng, cfg, [1, 2], "noise")
        for k in range(1, len(r.objects) + 1):
            body = (r.instances == k) & ~r.part_mask
            mean = r.image[body].mean(axis=0) / 255.0
            nearest = min(np.abs(mean - c).max() for c in synthetic.PALETTE)
            assert nearest < 0.08  # a palette colour (jitter 0.04, faint grating and noise around it)


def test_part_hidden_split_draws_objects_without_their_parts(tiny):
    root, stats = tiny
    ids = read_split(root, "part_hidden")
    assert len(ids) == TINY.n_bias_eval == stats["images"]["part_hidden"]
    for image_id in ids:
        assert mask_labels(root, image_id)  # every image has an object ...
        assert not read_label_png(root / "SegmentationPart" / f"{image_id}.png").any()  # ... with no part
    assert synthetic_dataset_index(root).splits["part_hidden"] == ids
    cfg = SyntheticConfig()
    seen = render_image(np.random.default_rng(5), cfg, [3], "noise")
    hidden = render_image(np.random.default_rng(5), cfg, [3], "noise", hide_parts=True)
    np.testing.assert_array_equal(seen.mask, hidden.mask)  # the same object, the same place ...
    assert seen.part_mask.any() and not hidden.part_mask.any()  # ... its part painted over by the body
    changed = (seen.image != hidden.image).any(axis=2)
    assert changed[seen.part_mask].mean() > 0.9 and not changed[~seen.part_mask].any()


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("bias_class", {"bias_class": 0}),
        ("bias_class", {"num_classes": 4, "bias_class": 5}),
        ("bias_fraction", {"bias_fraction": 1.5}),
        ("context_rate", {"context_rate": -0.1}),
        ("pixel_labelled", {"n_train": 10, "pixel_labelled": 11}),
        ("num_classes", {"num_classes": 13}),
        ("part_fraction", {"part_fraction": 0.0}),
        ("image_size", {"image_size": 8}),
        ("max_objects", {"max_objects": True}),
    ],
)
def test_bad_config_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field}:"):
        SyntheticConfig(**kwargs)


def test_failed_run_leaves_existing_root_untouched(tmp_path, monkeypatch):
    root = tmp_path / "VOC2012"
    generate(root, TINY, progress=False)
    before = snapshot(root)

    calls = []
    real = synthetic.save_palette_png

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "save_palette_png", flaky)
    with pytest.raises(OSError, match="disk full"):
        generate(root, SyntheticConfig(**{**TINY.__dict__, "seed": 9}), progress=False)
    assert snapshot(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["VOC2012"]  # no temporary folder left behind

    # A successful run replaces the old set completely (stale files go too).
    monkeypatch.setattr(synthetic, "save_palette_png", real)
    (root / "stale.txt").write_text("x")
    generate(root, TINY, progress=False)
    assert snapshot(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["VOC2012"]


def test_sample_figure(tmp_path, tiny):
    root, _ = tiny
    out = tmp_path / "figs" / "samples.png"
    sample_figure(synthetic_dataset_index(root), out, n=5)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 200
