"""DVC stage `seeds`: GAIN attention -> SEC localization cues, with measured seed quality.

For every image of the weak training split and every class in its image label: the attention map (the
training code's Grad-CAM, no graph kept, all classes of a batch in one pass, optional flip averaging),
foreground cues above `seeds.fg_threshold` of that map's max, background cues where every present class's
attention is below `seeds.bg_threshold` (our stand-in for GAIN's saliency-based background).
Writes data/seeds/<id>.png (palette, 255 = unlabeled) and data/seeds/attn/<id>.npz (float16 maps).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from gain.cli import run_stage
from gain.data import DatasetIndex, VOCDataset
from gain.engine import seed_everything, setup_runtime
from gain.figures import colorize, grid_figure, overlay, save_figure
from gain.io import save_palette_png, write_json
from gain.metrics import ConfusionMatrix
from gain.params import load_params
from gain.pretrain import load_classifier
from gain.seeds import SeedQuality, dense_from_attention, image_attention, make_cues, save_attention
from gain.tracking import stage_run
from gain.transforms import eval_preset
from gain.voc import voc_palette

INDEX = Path("data/dataset/index.json")
MODEL = Path("models/gain/best.pt")
OUT = Path("data/seeds")
REPORTS = Path("reports/seeds")


def main() -> None:
    params = load_params()
    p = params.seeds
    index = DatasetIndex.load(INDEX)
    rt = setup_runtime(params.device)
    seed_everything(params.seed, deterministic=False)
    classifier, gain_p = load_classifier(MODEL)
    classifier.to(rt.device)
    n = index.num_classes
    with stage_run("seeds", params) as run:
        tmp = OUT.with_name(OUT.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "attn").mkdir(parents=True)
        seed_eval = set(index.splits["seed_eval"])
        metrics, vis = {}, []
        splits = {"train": index.splits["weak_train"]}
        splits.update(
            {k: index.splits[k] for k in ("bias_object_only", "bias_context_only") if k in index.splits}
        )
        start, n_images = time.perf_counter(), 0
        for split, ids in splits.items():
            ds = VOCDataset(index, ids, eval_preset(gain_p["input_size"]), keep_original=True)
            quality, dense = SeedQuality(n), ConfusionMatrix(n)
            for item, attn, classes in image_attention(
                classifier, ds, device=rt.device, batch_size=p.batch_size, flip=p.flip, autocast=rt.autocast
            ):
                cues = make_cues(
                    attn,
                    classes,
                    fg_threshold=p.fg_threshold,
                    bg_threshold=p.bg_threshold,
                    conflict=p.conflict,
                )
                n_images += 1
                if split == "train":
                    save_palette_png(tmp / f"{item['id']}.png", cues, voc_palette())
                    save_attention(tmp / "attn" / f"{item['id']}.npz", attn, classes)
                if item["has_mask"] and (split != "train" or item["id"] in seed_eval):
                    quality.update(cues, item["orig_mask"])
                    dense.update(
                        item["orig_mask"], dense_from_attention(attn, classes, bg_threshold=p.bg_threshold)
                    )
                    if split == "train" and len(vis) < 6:
                        vis.append((item, attn, cues))
            q = quality.compute()
            d = dense.compute(index.classes)
            metrics[split] = {
                "seed_precision": q["precision"],
                "seed_recall": q["recall"],
                "labeled_fraction": q["labeled_fraction"],
                "bg_precision": q["bg_precision"],
                "fg_precision": q["fg_precision"],
                "dense_miou": d["miou"],
                "class_precision": dict(zip(index.classes, q["class_precision"], strict=True)),
                "class_recall": dict(zip(index.classes, q["class_recall"], strict=True)),
                "dense_class_iou": dict(zip(index.classes, d["iou"], strict=True)),
            }
        images_per_s = n_images / (time.perf_counter() - start)
        if OUT.exists():
            shutil.rmtree(OUT)
        os.replace(tmp, OUT)
        write_json(REPORTS / "metrics.json", metrics)  # timing-free, so reruns give identical files
        write_json(REPORTS / "throughput.json", {"images": n_images, "images_per_s": images_per_s})
        for split, m in metrics.items():
            if isinstance(m, dict):
                run.log_metrics({f"seeds/{split}/{k}": v for k, v in m.items() if isinstance(v, float)})
        run.log_metrics({"seeds/images_per_s": images_per_s})
        fig = seed_figure(vis, index.classes)
        save_figure(fig, REPORTS / "grid.png")
        run.log_artifact(REPORTS)
        t = metrics["train"]
        print(
            f"seeds: {n_images} images at {images_per_s:.1f} img/s; train precision "
            f"{t['seed_precision']:.3f} recall {t['seed_recall']:.3f} labeled {t['labeled_fraction']:.3f} "
            f"dense mIoU {t['dense_miou']:.3f}"
        )


def seed_figure(vis, classes):
    rows = []
    for item, attn, cues in vis:
        img = item["orig_image"]
        rows.append(
            [
                (img, item["id"]),
                (colorize(item["orig_mask"]), "ground truth"),
                (overlay(img, attn.max(axis=0)), "attention (max over classes)"),
                (colorize(cues), "seeds"),
            ]
        )
    return grid_figure(rows)


if __name__ == "__main__":
    run_stage(main)
