"""DVC stage `evaluate`: VOC-convention mIoU of SEC (with and without the test-time CRF), of the seeds and
attention maps, the classifier on the biased splits, and the report.

mIoU the devkit's way: one confusion matrix over the whole split at original resolution, 255 ignored,
IoU per class, mean over classes (a class absent from both prediction and ground truth is reported as such).
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import torch

from gain.cli import run_stage
from gain.crf import CRFPool
from gain.data import DatasetIndex, VOCDataset, collate
from gain.engine import setup_runtime
from gain.figures import bar_figure, colorize, grid_figure, heatmap_figure, overlay, save_figure
from gain.io import atomic_path, read_label_png, write_json, write_text
from gain.metrics import ConfusionMatrix
from gain.params import load_params
from gain.pretrain import load_classifier
from gain.report import method_name, render
from gain.seeds import SeedQuality, dense_from_attention, image_attention, load_attention, make_cues
from gain.segment import load_segmenter, predict
from gain.tracking import stage_run
from gain.transforms import eval_preset

INDEX = Path("data/dataset/index.json")
SEEDS = Path("data/seeds")
GAIN_MODEL = Path("models/gain/best.pt")
SEC_MODEL = Path("models/sec/best.pt")
REPORTS = Path("reports")


def score_sec(model, index, split, rt, p, *, input_size: int, n_vis: int):
    """Confusion matrices of SEC on `split` without and with the test-time CRF (s = 1, full image).

    Images differ in size, so each CRF is its own pool job; up to 2 jobs per worker are kept in flight so
    every worker stays busy while the network predicts the next images.
    """
    ds = VOCDataset(index, index.splits[split], eval_preset(input_size), keep_original=True)
    plain, crf_cm = ConfusionMatrix(index.num_classes), ConfusionMatrix(index.num_classes)
    vis, pending = [], deque()

    def finish(entry) -> None:
        gt, job, record = entry
        crf_pred = job.get()[0].argmax(0).astype(np.uint8)
        crf_cm.update(gt, crf_pred)
        if record is not None:
            record["crf_pred"] = crf_pred

    with CRFPool(p.crf_workers if p.crf else 0) as pool:
        for item, probs in predict(model, ds, rt):
            gt = item["orig_mask"]
            pred = probs.argmax(0).astype(np.uint8)
            plain.update(gt, pred)
            record = {"item": item, "pred": pred, "crf_pred": None} if len(vis) < n_vis else None
            if record is not None:
                vis.append(record)
            if p.crf:
                pending.append(
                    (gt, pool.submit(item["orig_image"][None], probs[None].astype(np.float32), 1.0), record)
                )
                while len(pending) > 2 * max(p.crf_workers, 1):
                    finish(pending.popleft())
        while pending:
            finish(pending.popleft())
    return plain, crf_cm if p.crf else None, vis


def score_seeds(index: DatasetIndex, bg_threshold_of_dense: float):
    """Seed maps (255 unlabeled = a miss) and dense attention maps against the masks of seed_eval images."""
    from gain.data import mask_path

    seeds_cm, attn_cm = ConfusionMatrix(index.num_classes), ConfusionMatrix(index.num_classes)
    quality = SeedQuality(index.num_classes)
    for image_id in index.splits["seed_eval"]:
        mp = mask_path(index.root, image_id)
        seed_png = SEEDS / f"{image_id}.png"
        if mp is None or not seed_png.is_file():
            continue
        gt = read_label_png(mp)
        seeds = read_label_png(seed_png)
        seeds_cm.update(gt, seeds)
        quality.update(seeds, gt)
        attn, classes = load_attention(SEEDS / "attn" / f"{image_id}.npz")
        attn_cm.update(
            gt, dense_from_attention(np.clip(attn, 0, 1), classes, bg_threshold=bg_threshold_of_dense)
        )
    q = quality.compute()
    stats = {
        "seed_precision": q["precision"],
        "seed_recall": q["recall"],
        "seed_labeled_fraction": q["labeled_fraction"],
    }
    return seeds_cm, attn_cm, stats


@torch.no_grad()
def bias_accuracy(index: DatasetIndex, rt) -> dict:
    """Paper Table 4: is the biased class recognised without its context / correctly absent in context only?"""
    meta = index.root / "synthetic.json"
    if not meta.is_file() or "bias_object_only" not in index.splits:
        return {}
    bias = json.loads(meta.read_text())["config"]["bias_class"]
    classifier, gp = load_classifier(GAIN_MODEL)
    classifier.to(rt.device)
    out = {}
    for split, want_present in (("bias_object_only", True), ("bias_context_only", False)):
        ds = VOCDataset(index, index.splits[split], eval_preset(gp["input_size"]))
        loader = torch.utils.data.DataLoader(ds, batch_size=32, collate_fn=collate)
        hits = n = 0
        for batch in loader:
            prob = torch.sigmoid(classifier(batch["image"].to(rt.device)))[:, bias - 1].cpu()
            hits += int(((prob > 0.5) == want_present).sum())
            n += len(prob)
        out[f"{split}_accuracy"] = hits / max(n, 1)
    return out


def main() -> None:
    params = load_params()
    p = params.evaluate
    index = DatasetIndex.load(INDEX)
    rt = setup_runtime(params.device)
    with stage_run("evaluate", params) as run:
        model, sec_p = load_segmenter(SEC_MODEL)
        model.to(rt.device)
        plain, crf_cm, vis = score_sec(
            model, index, p.split, rt, p, input_size=sec_p["input_size"], n_vis=p.vis_images
        )
        res = plain.compute(index.classes)
        seeds_cm, attn_cm, seed_stats = score_seeds(index, bg_threshold_of_dense=params.seeds.bg_threshold)
        gain_state = torch.load(GAIN_MODEL, map_location="cpu", weights_only=True)
        method = method_name(gain_state["params"]["alpha"], gain_state["params"]["ext"])
        metrics = {
            "sec_miou": res["miou"],
            "sec_pixel_accuracy": res["pixel_accuracy"],
            "sec_absent_classes": res["absent_classes"],
            "seed_miou": seeds_cm.compute()["miou"],
            "attention_miou": attn_cm.compute()["miou"],
            **seed_stats,
            **bias_accuracy(index, rt),
            "method": method,
            "dataset": index.source,
        }
        if crf_cm is not None:
            c = crf_cm.compute(index.classes)
            metrics["sec_crf_miou"], metrics["sec_crf_pixel_accuracy"] = c["miou"], c["pixel_accuracy"]
        metrics = {
            k: (float(v) if isinstance(v, np.floating | np.integer) else v) for k, v in metrics.items()
        }
        write_json(REPORTS / "metrics.json", metrics)
        table = plain.per_class_table(index.classes)
        with atomic_path(REPORTS / "per_class_iou.csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(REPORTS / "confusion.csv") as tmp:
            plain.to_dataframe(index.classes).to_csv(tmp)
        save_figure(
            heatmap_figure(plain.mat, list(index.classes), title=f"SEC val confusion ({index.source})"),
            REPORTS / "confusion.png",
        )
        save_figure(
            bar_figure(
                list(index.classes), res["iou"], title="SEC per-class IoU (val, no CRF)", ylabel="IoU"
            ),
            REPORTS / "per_class_iou.png",
        )
        save_figure(qualitative(vis, index, params.seeds, rt), REPORTS / "qualitative.png")
        figures = {
            "Qualitative: image / GT / attention / seeds / SEC / SEC+CRF": "qualitative.png",
            "Per-class IoU": "per_class_iou.png",
            "Confusion matrix (row-normalised)": "confusion.png",
            "GAIN attention (fixed val images)": "gain/attention.png",
            "Seeds": "seeds/grid.png",
        }
        commands = [
            "dvc repro",
            "dvc metrics show",
            f"# params: evaluate.split={p.split}, evaluate.crf={p.crf}",
        ]
        write_text(
            REPORTS / "report.md",
            render(
                dataset=index.source,
                method=method,
                metrics=metrics,
                per_class=table.to_dict("records"),
                commands=commands,
                figures=figures,
            ),
        )
        run.log_metrics({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, int | float)})
        for name in (
            "metrics.json",
            "per_class_iou.csv",
            "confusion.csv",
            "confusion.png",
            "per_class_iou.png",
            "qualitative.png",
            "report.md",
        ):
            run.log_artifact(REPORTS / name, "report")
        crf_txt = f", with CRF {metrics['sec_crf_miou']:.3f}" if "sec_crf_miou" in metrics else ""
        print(
            f"evaluate: SEC val mIoU {metrics['sec_miou']:.3f}{crf_txt}; seeds mIoU {metrics['seed_miou']:.3f}"
        )


def qualitative(vis: list[dict], index: DatasetIndex, sp, rt):
    """Rows of image / GT / GAIN attention / seeds (computed the seeds stage's way) / SEC / SEC + CRF."""
    classifier, gp = load_classifier(GAIN_MODEL)
    classifier.to(rt.device)
    ds = VOCDataset(index, [v["item"]["id"] for v in vis], eval_preset(gp["input_size"]), keep_original=True)
    rows = []
    for v, (_, attn, classes) in zip(
        vis, image_attention(classifier, ds, device=rt.device, batch_size=8, flip=sp.flip), strict=True
    ):
        item = v["item"]
        img = item["orig_image"]
        cues = make_cues(
            attn, classes, fg_threshold=sp.fg_threshold, bg_threshold=sp.bg_threshold, conflict=sp.conflict
        )
        row = [
            (img, item["id"]),
            (colorize(item["orig_mask"]), "ground truth"),
            (overlay(img, attn.max(0) if len(attn) else np.zeros(img.shape[:2])), "attention"),
            (colorize(cues), "seeds"),
            (colorize(v["pred"]), "SEC"),
        ]
        if v["crf_pred"] is not None:
            row.append((colorize(v["crf_pred"]), "SEC + CRF"))
        rows.append(row)
    return grid_figure(rows)


if __name__ == "__main__":
    run_stage(main)
