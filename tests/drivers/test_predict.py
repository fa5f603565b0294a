"""gain/predict.py and gain/photos.py: predict's segmentation and attention are the evaluate and seeds
stages' for the same image and model; any image mode becomes the right 8-bit RGB; folders, colliding stems,
an unreadable file among good ones, large photos at a capped working size."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gain import predict as pred_mod
from gain.cam.model import Classifier
from gain.data.dataset import VOCDataset, synthetic_dataset_index
from gain.data.synthetic import SyntheticConfig, generate
from gain.data.transforms import eval_preset
from gain.photos import _reason, expand_inputs, output_names, read_photo, working_size
from gain.runtime.checkpoint import save_checkpoint
from gain.runtime.device import CPU
from gain.runtime.errors import InputError
from gain.sec.crf import CRFPool
from gain.sec.evaluate import evaluate_segmenter
from gain.sec.model import LargeFOV
from gain.seeds.extract import image_attention
from tests.tensor_utils import single_thread  # noqa: F401 (autouse fixture)

SIZE = 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny synthetic set and two untrained (seeded) networks saved as model files."""
    tmp = tmp_path_factory.mktemp("predict")
    root = tmp / "VOC2012"
    cfg = SyntheticConfig(num_classes=3, image_size=SIZE, n_train=4, n_val=3, n_bias_eval=1, pixel_labelled=0)
    generate(root, cfg, progress=False)
    index = synthetic_dataset_index(root)
    classes = list(index.classes)
    torch.manual_seed(0)
    classifier = Classifier("small", len(classes) - 1, weights="none", head="gap").eval()
    segmenter = LargeFOV("small", len(classes), weights="none").eval()
    with torch.no_grad():  # a spatially varied untrained output, so equal label maps mean something
        for p in segmenter.parameters():
            p.mul_(3)
    gain_file, sec_file = tmp / "gain.pt", tmp / "sec.pt"
    save_checkpoint(
        gain_file,
        {
            "model": {f"classifier.{k}": v for k, v in classifier.state_dict().items()},
            "params": {"backbone": "small", "head": "gap", "input_size": SIZE},
            "classes": classes,
        },
    )
    save_checkpoint(
        sec_file,
        {
            "model": segmenter.state_dict(),
            "params": {"backbone": "small", "input_size": SIZE},
            "classes": classes,
        },
    )
    return index, classifier, segmenter, gain_file, sec_file


def run_predict(setup, inputs, out: Path, *extra: str) -> dict:
    _, _, _, gain_file, sec_file = setup
    pred_mod.main(
        [
            *map(str, inputs),
            "--out",
            str(out),
            "--gain-model",
            str(gain_file),
            "--sec-model",
            str(sec_file),
            *extra,
        ]
    )
    return json.loads((out / "predictions.json").read_text())


@pytest.mark.parametrize("crf", [False, True])
def test_predict_segmentation_is_the_evaluate_stages(setup, tmp_path, crf):
    index, _, segmenter, _, _ = setup
    ids = index.splits["val"]
    ds = VOCDataset(index, ids, eval_preset(SIZE), keep_original=True)
    with CRFPool(0) as pool:
        scores = evaluate_segmenter(segmenter, ds, CPU, crf_pool=pool if crf else None, n_examples=len(ids))
    paths = [index.root / "JPEGImages" / f"{i}.jpg" for i in ids]
    run_predict(setup, paths, tmp_path, *([] if crf else ["--no-crf"]))
    varied = False
    for image_id, example in zip(ids, scores.examples, strict=True):
        want = example["crf_pred"] if crf else example["pred"]
        got = np.array(Image.open(tmp_path / f"{image_id}_labels.png"))
        np.testing.assert_array_equal(got, want)
        varied |= len(np.unique(want)) > 1
    assert varied


def test_predict_attention_is_the_seeds_stages(setup):
    index, classifier, _, _, _ = setup
    ids = index.splits["val"]
    ds = VOCDataset(index, ids, eval_preset(SIZE), keep_original=True)
    for item, want, _ in image_attention(classifier, ds, CPU, batch_size=1, flip=True):
        label = torch.from_numpy(index.label_vector(item["id"]))
        got = pred_mod.attention(classifier, item["orig_image"], SIZE, CPU, label, flip=True)
        np.testing.assert_array_equal(got, want)


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    a = np.full((6, 8), 32896, np.uint16)  # 32896 / 257 = 128
    a[0, 0] = 65535
    path = save(Image.fromarray(a), tmp_path / "grey16.png")
    assert Image.open(path).mode.startswith("I")
    rgb = read_photo(path, 1024)
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 8, 3)
    assert (rgb[1:, 1:] == 128).all() and (rgb[0, 0] == 255).all()


def test_palette_cmyk_and_transparency_become_their_rgb(tmp_path):
    pal = Image.new("P", (4, 4))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 1)
    rgb = read_photo(save(pal, tmp_path / "pal.png"), 1024)
    assert tuple(rgb[0, 0]) == (200, 100, 50) and tuple(rgb[1, 1]) == (10, 20, 30)
    cmyk = Image.new("CMYK", (4, 4), (255, 0, 0, 0))  # full cyan
    assert tuple(read_photo(save(cmyk, tmp_path / "cmyk.tif"), 1024)[2, 2]) == (0, 255, 255)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red: the white behind it
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = read_photo(save(rgba, tmp_path / "rgba.png"), 1024)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[3, 3]) == (255, 255, 255)
    la = Image.new("LA", (2, 2), (40, 255))
    assert tuple(read_photo(save(la, tmp_path / "la.png"), 1024)[0, 0]) == (40, 40, 40)


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((2, 4, 3), np.uint8)
    a[:, :2] = (255, 0, 0)  # left half red, right half blue, stored sideways
    a[:, 2:] = (0, 0, 255)
    img = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    rgb = read_photo(save(img, tmp_path / "rot.png", exif=exif), 1024)
    assert rgb.shape == (4, 2, 3)
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[-1, 0]) == (0, 0, 255)


def test_float_images_outside_unit_range_are_refused_in_one_line(tmp_path):
    path = save(Image.fromarray(np.full((3, 3), 7.5, np.float32)), tmp_path / "f.tif")
    with pytest.raises(InputError, match=r"f\.tif: float image with values outside \[0, 1\]"):
        read_photo(path, 1024)


def test_large_jpeg_is_read_at_the_working_size(tmp_path):
    rng = np.random.default_rng(0)
    big = np.kron(rng.integers(0, 255, (20, 30, 3)), np.ones((100, 100, 1))).astype(np.uint8)  # 2000x3000
    path = save(Image.fromarray(big), tmp_path / "big.jpg", quality=95)
    rgb = read_photo(path, 300)
    assert rgb.shape == (200, 300, 3) and working_size((3000, 2000), 300) == (300, 200)
    small = np.asarray(Image.fromarray(big).resize((300, 200), Image.BILINEAR)).astype(int)
    assert np.abs(rgb.astype(int) - small)[10:-10, 10:-10].mean() < 6


def test_unreadable_messages_name_the_file_never_a_stream_object(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError) as e:
        read_photo(path, 1024)
    assert str(e.value).startswith(f"{path}: unreadable image (") and "\n" not in str(e.value)
    assert "_io." not in _reason(OSError("cannot identify image file <_io.BytesIO object at 0x7f3a2c>"))


def test_folders_expand_to_their_sorted_images_and_colliding_stems_get_unique_names(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for name in ("z.png", "same.png"):
            Image.new("RGB", (4, 4)).save(tmp_path / folder / name)
        (tmp_path / folder / "notes.txt").write_text("not an image")
    paths = expand_inputs([tmp_path / "a", tmp_path / "b"])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "a/same.png",
        "a/z.png",
        "b/same.png",
        "b/z.png",
    ]
    assert output_names(paths) == ["a_same", "a_z", "b_same", "b_z"]
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "same.jpg")
    names = output_names(
        [tmp_path / "a/same.png", tmp_path / "a/same.jpg", tmp_path / "a/same.png", tmp_path / "b/z.png"]
    )
    assert names == ["same_png", "same_jpg", "same_png-2", "z"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: folder holds no image files"):
        expand_inputs([tmp_path / "empty"])


def test_same_stem_from_two_folders_writes_two_sets_of_files(setup, tmp_path):
    index = setup[0]
    src = sorted((index.root / "JPEGImages").glob("*.jpg"))[:2]
    for folder, image in zip(("a", "b"), src, strict=True):
        (tmp_path / folder).mkdir()
        Image.open(image).save(tmp_path / folder / "same.jpg")
    out = tmp_path / "out"
    result = run_predict(setup, [tmp_path / "a", tmp_path / "b"], out, "--no-crf")
    assert [e["name"] for e in result["images"]] == ["a_same", "b_same"]
    for name in ("a_same", "b_same"):
        for kind in ("sec", "labels", "summary"):
            assert (out / f"{name}_{kind}.png").is_file()
    assert not (out / "same_sec.png").exists()


def test_an_unreadable_image_among_good_ones_stops_before_anything_is_written(setup, tmp_path):
    index = setup[0]
    good = sorted((index.root / "JPEGImages").glob("*.jpg"))[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(Path(good[0]).read_bytes()[:40])
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        run_predict(setup, [good[0], bad, good[1]], out)
    assert str(e.value).startswith(f"1 of 3 inputs unreadable, nothing written: {bad}: unreadable image")
    assert not out.exists()


def test_a_large_photo_is_predicted_at_the_working_size_with_a_wrapped_summary(setup, tmp_path, capsys):
    index = setup[0]
    src = Image.open(sorted((index.root / "JPEGImages").glob("*.jpg"))[0])
    photo = save(src.resize((400, 300)), tmp_path / "photo.jpg")
    result = run_predict(setup, [photo], tmp_path / "out", "--max-side", "100", "--threshold", "0")
    (entry,) = result["images"]
    assert entry["working_size"] == [100, 75]
    assert Image.open(tmp_path / "out/photo_sec_crf.png").size == (100, 75)
    assert len(entry["predicted_classes"]) == 3  # threshold 0: every class explained, wrapped in rows
    assert pred_mod._wrap(list(range(10))) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert "photo.jpg -> photo:" in capsys.readouterr().out


def test_image_bytes_object_repr_is_replaced():
    e = OSError(f"cannot identify image file {io.BytesIO()!r}")
    assert _reason(e) == "cannot identify image file the file"
