"""Predict on your own images: GAIN attention per predicted class and the SEC segmentation (with CRF).

    python -m gain.predict IMAGE... --out DIR                        # models/*/model.pt of the last run
    python -m gain.predict IMAGE... --out DIR --model-version 3      # registered gain-classifier/sec-segmenter v3
    python -m gain.predict IMAGE... --out DIR --gain-version 2 --sec-version latest

For each image `<stem>` it writes to DIR: `<stem>_attention_<class>.png` (attention over the image, one per
predicted class), `<stem>_sec.png` and `<stem>_sec_crf.png` (segmentation overlays), `<stem>_summary.png`
(all of them in one figure, with a class colour legend); and `predictions.json` (class probabilities,
predicted classes and pixel fractions per image). Registered versions are read from the MLflow store of
params.yaml (or MLFLOW_TRACKING_URI): the exact model.pt file each training stage handed on.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from gain.cam.attention import attention_maps
from gain.cam.model import load_classifier
from gain.data.transforms import resize_pair, to_tensor
from gain.evaluation.figures import colorize, grid_figure, overlay, save_figure
from gain.runtime import layout
from gain.runtime.checkpoint import load_checkpoint
from gain.runtime.cli import run_stage
from gain.runtime.engine import setup_runtime
from gain.runtime.errors import InputError, StageError
from gain.runtime.io import read_rgb, write_json
from gain.runtime.params import load_params
from gain.runtime.tracking import REGISTERED, repo_root, tracking_uri
from gain.sec.crf import dense_crf
from gain.sec.evaluate import TEST_CRF_SCALE
from gain.sec.model import load_segmenter

SEG_ALPHA = 0.55  # weight of the label colours over the image in the segmentation overlays


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


def _input(image: np.ndarray, size: int, rt) -> torch.Tensor:
    small, _ = resize_pair(image, None, (size, size))
    return rt.to_device(to_tensor(small)[None])


@torch.no_grad()
def segment(model, image: np.ndarray, size: int, rt, *, crf: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """SEC at `size`, probabilities upsampled to the image; -> (argmax, argmax after the test-time CRF)."""
    with rt.autocast():
        logits = model(_input(image, size, rt)).float()
    up = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    probs = torch.softmax(up[0], dim=0).cpu().numpy().astype(np.float32)
    pred = probs.argmax(0).astype(np.uint8)
    if not crf:
        return pred, None
    q = dense_crf(np.ascontiguousarray(image), probs, scale=TEST_CRF_SCALE)
    return pred, q.argmax(0).astype(np.uint8)


def classify(classifier, image: np.ndarray, size: int, rt, threshold: float):
    """-> (class probabilities (C-1,), predicted 0-based foreground classes, attention (P, H, W) per class).
    The classes above `threshold`, or the most probable one when none is."""
    x = _input(image, size, rt)
    with torch.no_grad(), rt.autocast():
        probs = torch.sigmoid(classifier(x).float())[0]
    chosen = (probs > threshold).nonzero().flatten()
    if len(chosen) == 0:
        chosen = probs.argmax().reshape(1)
    labels = torch.zeros_like(probs)[None]
    labels[0, chosen] = 1
    attn, _, pair_class = attention_maps(classifier, x, labels, size=tuple(image.shape[:2]))
    return probs.cpu().numpy(), pair_class.tolist(), attn.float().cpu().numpy()


def seg_overlay(image: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return (image * (1 - SEG_ALPHA) + colorize(pred) * SEG_ALPHA).astype(np.uint8)


def predict_image(path: Path, out: Path, nets: dict, rt, *, threshold: float, crf: bool) -> dict:
    """Write one image's overlays and summary figure into `out`; -> its predictions.json entry."""
    image = read_rgb(path)
    classes = nets["classes"]
    probs, chosen, attn = classify(nets["classifier"], image, nets["gain_size"], rt, threshold)
    pred, crf_pred = segment(nets["segmenter"], image, nets["sec_size"], rt, crf=crf)
    stem = path.stem
    row = [(image, stem)]
    for c, a in zip(chosen, attn, strict=True):
        heat = overlay(image, a)
        _save_png(out / f"{stem}_attention_{classes[c + 1]}.png", heat)
        row.append((heat, f"attention: {classes[c + 1]}"))
    _save_png(out / f"{stem}_sec.png", seg_overlay(image, pred))
    row.append((seg_overlay(image, pred), "SEC"))
    if crf_pred is not None:
        _save_png(out / f"{stem}_sec_crf.png", seg_overlay(image, crf_pred))
        row.append((seg_overlay(image, crf_pred), "SEC + CRF"))
    save_figure(grid_figure([row], cell=2.4, classes=classes), out / f"{stem}_summary.png")
    final = crf_pred if crf_pred is not None else pred
    counts = np.bincount(final.ravel(), minlength=len(classes)) / final.size
    return {
        "image": str(path),
        "class_probabilities": {classes[i + 1]: float(p) for i, p in enumerate(probs)},
        "predicted_classes": [classes[c + 1] for c in chosen],
        "segmentation_fractions": {classes[i]: float(f) for i, f in enumerate(counts) if f > 0},
    }


def _save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+", type=Path, help="image files (anything PIL reads)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (created)")
    ap.add_argument("--gain-model", default=str(layout.GAIN_MODEL), help="GAIN model file")
    ap.add_argument("--sec-model", default=str(layout.SEC_MODEL), help="SEC model file")
    ap.add_argument("--model-version", help="registered version (N or latest) of both models")
    ap.add_argument("--gain-version", help=f"registered {REGISTERED['gain']} version (N or latest)")
    ap.add_argument("--sec-version", help=f"registered {REGISTERED['sec']} version (N or latest)")
    ap.add_argument("--threshold", type=float, default=0.5, help="class probability threshold (0.5)")
    ap.add_argument("--no-crf", action="store_true", help="skip the test-time dense CRF")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise InputError(f"no such image: {', '.join(missing)}")
    rt = setup_runtime(args.device)
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
    nets = {
        "classifier": classifier.to(rt.device),
        "segmenter": segmenter.to(rt.device),
        "classes": classes,
        "gain_size": gain_p["input_size"],
        "sec_size": sec_p["input_size"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in args.images:
        results.append(predict_image(path, args.out, nets, rt, threshold=args.threshold, crf=not args.no_crf))
        print(f"{path}: {', '.join(results[-1]['predicted_classes'])}")
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
