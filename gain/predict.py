"""Predict on your own images: GAIN attention per predicted class and the SEC segmentation (with CRF).

    python -m gain.predict IMAGE_OR_FOLDER... --out DIR                  # models/*/model.pt of the last run
    python -m gain.predict IMAGE... --out DIR --model-version 3          # registered gain-classifier/sec-segmenter v3
    python -m gain.predict IMAGE... --out DIR --gain-version 2 --sec-version latest

A folder stands for its image files, sorted by name. Any image PIL reads is converted to 8-bit RGB (16-bit
rescaled, palette and CMYK converted, transparency over white, EXIF orientation applied) and worked on at
most `--max-side` pixels on its longer side (default 1024): attention, SEC, the test-time CRF and every
output file are at that working size, so memory stays bounded for any photo. Every input is decoded before
any work: one unreadable file stops the run before anything is written, with one line naming each such file.

For each image, under a name unique per input (`<stem>`, or `<folder>_<stem>` where stems collide), it
writes to DIR: `<name>_attention_<class>.png` (attention over the image, one per predicted class),
`<name>_sec.png` and `<name>_sec_crf.png` (segmentation overlays), `<name>_labels.png` (the final label map,
VOC palette: CRF'd unless --no-crf), `<name>_summary.png` (all of them in one figure, with class
probabilities and a class colour legend); and `predictions.json` (per image: its path,
name, working size, class probabilities, predicted classes and pixel fractions). The attention is the seeds
stage's and the segmentation the evaluate stage's (gain.seeds.extract, gain.sec.evaluate) for the same
image. Registered versions are read from the MLflow store of params.yaml (or MLFLOW_TRACKING_URI): the
exact model.pt file each training stage handed on.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from gain.cam.model import load_classifier
from gain.data.transforms import eval_preset, to_tensor
from gain.data.voc import voc_palette
from gain.evaluation.figures import colorize, grid_figure, overlay, save_figure
from gain.photos import expand_inputs, output_names, read_photo
from gain.runtime import layout
from gain.runtime.checkpoint import load_checkpoint
from gain.runtime.cli import run_stage
from gain.runtime.device import setup_runtime
from gain.runtime.errors import InputError, StageError
from gain.runtime.io import atomic_path, save_palette_png, write_json
from gain.runtime.naming import REGISTERED
from gain.runtime.params import load_params
from gain.runtime.provenance import repo_root
from gain.runtime.store import tracking_uri
from gain.sec.crf import CRFPool
from gain.sec.evaluate import crf_labels, submit_crf
from gain.sec.evaluate import predict as sec_predict
from gain.sec.model import load_segmenter
from gain.sec.scale import inference_crf_scale, resolve
from gain.seeds.extract import image_attention

MAX_SIDE = 1024  # default working resolution (longer side): bounds the memory of the CRF and the figures


def registered_file(name: str, version: str, uri: str, dest: Path) -> Path:
    """Download the model.pt a registered model version was logged from (`latest`: the newest version)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    try:
        if version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise InputError(f"{uri}: no version of registered model {name!r}")
            version = str(max(int(v.version) for v in versions))
        mv = client.get_model_version(name, version)
        local = client.download_artifacts(mv.run_id, "checkpoint", str(dest))
    except MlflowException as e:
        raise InputError(f"{uri}: registered model {name!r} version {version}: {e.message}") from None
    files = sorted(Path(local).glob("*.pt"))
    if not files:
        raise InputError(f"{name} v{version}: run {mv.run_id} has no checkpoint/*.pt artifact")
    return files[0]


def model_files(args, tmp: Path) -> tuple[Path, Path]:
    """The GAIN and SEC model files: the registered versions asked for, else the workspace's."""
    gain_v = args.gain_version or args.model_version
    sec_v = args.sec_version or args.model_version
    if not (gain_v or sec_v):
        return Path(args.gain_model), Path(args.sec_model)
    try:
        uri = tracking_uri(load_params(repo_root() / "params.yaml"))
    except StageError:
        uri = f"sqlite:///{repo_root() / 'mlflow.db'}"
    gain = registered_file(REGISTERED["gain"], gain_v, uri, tmp / "gain") if gain_v else Path(args.gain_model)
    sec = registered_file(REGISTERED["sec"], sec_v, uri, tmp / "sec") if sec_v else Path(args.sec_model)
    return gain, sec


SEG_ALPHA = 0.55  # weight of the label colours over the image in the segmentation overlays
FIGURE_COLUMNS = 4  # cells per row of the summary figure; more attention maps wrap onto further rows
STEPS = 5  # per image: read, classify, attention, segment (+ CRF), write


class _OneImage(Dataset):
    """One image as the stages' datasets yield it (keep_original=True), so predict runs the seeds stage's
    attention and the evaluate stage's SEC inference on it: the network input `eval_preset(size)`, the
    multi-hot `label` of the classes to explain, and `orig_mask` giving the output resolution."""

    def __init__(self, image: np.ndarray, size: int, label: torch.Tensor | None = None):
        small, _ = eval_preset(size)(image, None, None)
        self.item = {
            "image": to_tensor(small),
            "label": label if label is not None else torch.zeros(0),
            "orig_image": image,
            "orig_mask": np.zeros(image.shape[:2], np.uint8),
        }

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        return self.item


@dataclass
class Prediction:
    """What predict computes for one image (H x W: its working size): class probabilities (C-1,), the
    0-based foreground classes explained, their attention (K, H, W) in [0, 1], the SEC label map and the
    label map after the test-time CRF (None without it)."""

    probs: np.ndarray
    chosen: list[int]
    attn: np.ndarray
    pred: np.ndarray
    crf_pred: np.ndarray | None


def classify(classifier, image: np.ndarray, size: int, rt, threshold: float) -> tuple[np.ndarray, list[int]]:
    """-> (class probabilities (C-1,), the 0-based classes above `threshold`, or the most probable one)."""
    x = rt.to_device(_OneImage(image, size)[0]["image"][None])
    with torch.no_grad(), rt.autocast():
        probs = torch.sigmoid(classifier(x).float())[0].cpu()
    chosen = (probs > threshold).nonzero().flatten()
    if len(chosen) == 0:
        chosen = probs.argmax().reshape(1)
    return probs.numpy(), chosen.tolist()


def attention(classifier, image: np.ndarray, size: int, rt, label: torch.Tensor, *, flip: bool) -> np.ndarray:
    """(K, H, W) attention of the classes of the multi-hot `label` (C-1,), as the seeds stage computes it."""
    ((_, attn, _),) = image_attention(classifier, _OneImage(image, size, label), rt, batch_size=1, flip=flip)
    return attn


def segment(model, image: np.ndarray, size: int, rt, *, crf_scale: float | str | None) -> tuple:
    """SEC's label map of `image` as the evaluate stage computes it, and with `crf_scale` also after its
    test-time CRF (spatial stds divided by `crf_scale`; "auto": the scale rule for the image's size, as
    the evaluate stage) -> (pred, crf_pred or None), (H, W) uint8."""
    ((_, probs),) = sec_predict(model, _OneImage(image, size), rt, batch_size=1)
    pred = probs.argmax(0).astype(np.uint8)
    if crf_scale is None:
        return pred, None
    with CRFPool(0) as pool:
        scale = resolve(crf_scale, inference_crf_scale, image.shape[:2])
        return pred, crf_labels(submit_crf(pool, image, probs, scale))


def infer(
    nets: dict,
    image: np.ndarray,
    rt,
    *,
    threshold: float,
    crf_scale: float | str | None,
    flip: bool,
    bar=None,
):
    """Classify, explain and segment one (H, W, 3) uint8 image -> Prediction; `bar` advances per step."""
    tick = bar.update if bar is not None else (lambda n: None)
    probs, chosen = classify(nets["classifier"], image, nets["gain_size"], rt, threshold)
    tick(1)
    label = torch.zeros(len(probs))
    label[chosen] = 1
    attn = attention(nets["classifier"], image, nets["gain_size"], rt, label, flip=flip)
    tick(1)
    pred, crf_pred = segment(nets["segmenter"], image, nets["sec_size"], rt, crf_scale=crf_scale)
    tick(1)
    return Prediction(probs, chosen, attn, pred, crf_pred)


def seg_overlay(image: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return (image * (1 - SEG_ALPHA) + colorize(pred) * SEG_ALPHA).astype(np.uint8)


def _wrap(cells: list, columns: int = FIGURE_COLUMNS) -> list[list]:
    return [cells[i : i + columns] for i in range(0, len(cells), columns)]


def write_outputs(p: Prediction, image: np.ndarray, name: str, out: Path, classes) -> None:
    """`<name>_attention_<class>.png`, `<name>_sec.png`, `<name>_sec_crf.png`, `<name>_labels.png` (the
    final label map, class indices in a VOC palette PNG) and `<name>_summary.png` (cells in rows of
    FIGURE_COLUMNS, each attention titled with its class probability)."""
    cells = [(image, f"{name} ({image.shape[1]}x{image.shape[0]})")]
    for c, a in zip(p.chosen, p.attn, strict=True):
        heat = overlay(image, a)
        _save_png(out / f"{name}_attention_{classes[c + 1]}.png", heat)
        cells.append((heat, f"attention: {classes[c + 1]} (p={p.probs[c]:.2f})"))
    cells.append((seg_overlay(image, p.pred), "SEC"))
    _save_png(out / f"{name}_sec.png", cells[-1][0])
    if p.crf_pred is not None:
        cells.append((seg_overlay(image, p.crf_pred), "SEC + CRF"))
        _save_png(out / f"{name}_sec_crf.png", cells[-1][0])
    final = p.crf_pred if p.crf_pred is not None else p.pred
    save_palette_png(out / f"{name}_labels.png", final, voc_palette())
    save_figure(grid_figure(_wrap(cells), cell=2.4, classes=classes), out / f"{name}_summary.png")


def entry(p: Prediction, path: Path, name: str, image: np.ndarray, classes) -> dict:
    """predictions.json's record of one image."""
    final = p.crf_pred if p.crf_pred is not None else p.pred
    counts = np.bincount(final.ravel(), minlength=len(classes)) / final.size
    return {
        "image": str(path),
        "name": name,
        "working_size": [int(image.shape[1]), int(image.shape[0])],
        "class_probabilities": {classes[i + 1]: float(v) for i, v in enumerate(p.probs)},
        "predicted_classes": [classes[c + 1] for c in p.chosen],
        "segmentation_fractions": {classes[i]: float(f) for i, f in enumerate(counts) if f > 0},
    }


def _save_png(path: Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def check_inputs(paths: list[Path], max_side: int) -> None:
    """Decode every input before any work; one InputError listing each unreadable file (nothing written)."""
    bad = []
    for path in paths:
        try:
            read_photo(path, max_side)
        except InputError as e:
            bad.append(str(e))
    if bad:
        raise InputError(f"{len(bad)} of {len(paths)} inputs unreadable, nothing written: {'; '.join(bad)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "images", nargs="+", type=Path, help="image files or folders of images (anything PIL reads)"
    )
    ap.add_argument("--out", type=Path, required=True, help="output folder (created)")
    ap.add_argument("--gain-model", default=str(layout.GAIN_MODEL), help="GAIN model file")
    ap.add_argument("--sec-model", default=str(layout.SEC_MODEL), help="SEC model file")
    ap.add_argument("--model-version", help="registered version (N or latest) of both models")
    ap.add_argument("--gain-version", help=f"registered {REGISTERED['gain']} version (N or latest)")
    ap.add_argument("--sec-version", help=f"registered {REGISTERED['sec']} version (N or latest)")
    ap.add_argument("--threshold", type=float, default=0.5, help="class probability threshold (0.5)")
    ap.add_argument("--no-crf", action="store_true", help="skip the test-time dense CRF")
    ap.add_argument(
        "--max-side",
        type=int,
        default=MAX_SIDE,
        help=f"working resolution: longer image side in pixels for attention, SEC, CRF and outputs ({MAX_SIDE})",
    )
    ap.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip-averaged attention (default: params.yaml seeds.flip, as the seeds stage)",
    )
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)
    if args.max_side < 1:
        ap.error("--max-side must be >= 1")
    return args


def load_nets(args, rt) -> dict:
    """Both networks (and their input sizes, the class list), checked to belong together."""
    with tempfile.TemporaryDirectory() as tmp:
        gain_file, sec_file = model_files(args, Path(tmp))
        for f in (gain_file, sec_file):
            if not f.is_file():
                raise InputError(f"{f}: model file not found; run the pipeline (dvc repro) or pass a version")
        classifier, gain_p = load_classifier(gain_file)
        segmenter, sec_p = load_segmenter(sec_file)
        classes = load_checkpoint(gain_file)["classes"]
        if load_checkpoint(sec_file)["classes"] != classes:
            raise InputError(f"{gain_file} and {sec_file} were trained on different class lists")
    return {
        "classifier": classifier.to(rt.device).eval(),
        "segmenter": segmenter.to(rt.device).eval(),
        "classes": classes,
        "gain_size": gain_p["input_size"],
        "sec_size": sec_p["input_size"],
    }


def workspace_defaults() -> tuple[bool, float | str]:
    """(seeds.flip, evaluate.crf_scale) of params.yaml where the workspace has a valid one, as the seeds and
    evaluate stages use them; else the shipped values (True, "auto")."""
    try:
        params = load_params(repo_root() / "params.yaml")
    except StageError:
        return True, "auto"
    return params.seeds.flip, params.evaluate.crf_scale


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    paths = expand_inputs(args.images)
    check_inputs(paths, args.max_side)
    names = output_names(paths)
    rt = setup_runtime(args.device)
    nets = load_nets(args, rt)
    default_flip, default_scale = workspace_defaults()
    flip = default_flip if args.flip is None else args.flip
    crf_scale = None if args.no_crf else default_scale
    args.out.mkdir(parents=True, exist_ok=True)
    results, classes = [], nets["classes"]
    for i, (path, name) in enumerate(zip(paths, names, strict=True)):
        with tqdm(total=STEPS, desc=f"[{i + 1}/{len(paths)}] {name}", unit="step", leave=False) as bar:
            image = read_photo(path, args.max_side)
            bar.update(1)
            p = infer(nets, image, rt, threshold=args.threshold, crf_scale=crf_scale, flip=flip, bar=bar)
            write_outputs(p, image, name, args.out, classes)
            bar.update(1)
        results.append(entry(p, path, name, image, classes))
        print(f"{path} -> {name}: {', '.join(results[-1]['predicted_classes'])}")
    sources = {}
    for stage, version, file in (
        ("gain", args.gain_version or args.model_version, args.gain_model),
        ("sec", args.sec_version or args.model_version, args.sec_model),
    ):
        sources[stage] = f"{REGISTERED[stage]}/{version}" if version else str(file)
    write_json(args.out / "predictions.json", {"models": sources, "images": results})
    print(f"wrote {len(results)} predictions to {args.out}")
    return results


if __name__ == "__main__":
    run_stage(main)
