"""DVC stage `data`: the built-in synthetic VOC-format set, or PASCAL VOC 2012 (downloaded or existing).

Writes data/dataset/index.json (splits and image labels for every later stage), reports/data/stats.json
and reports/data/samples.png; logs the statistics and the figure to MLflow.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from gain.cli import run_stage
from gain.data import DatasetIndex, build_index, synthetic_dataset_index
from gain.io import write_json
from gain.params import DataParams, load_params
from gain.tracking import stage_run
from gain.voc import read_split

OUT = Path("data/dataset")
REPORTS = Path("reports/data")
VOC_TRAIN_AUG = Path("data/voc_train_aug.txt")


def synthetic_index(p: DataParams, seed: int) -> tuple[DatasetIndex, dict]:
    from gain.synthetic import SyntheticConfig, generate

    root = OUT / "VOC2012"
    cfg = SyntheticConfig(**vars(p.synthetic), seed=seed)
    stats = generate(root, cfg)
    return synthetic_dataset_index(root), stats


def voc_index(p: DataParams, seed: int) -> tuple[DatasetIndex, dict]:
    from gain.download import prepare_voc

    root = Path(p.voc_root) if p.voc_root else prepare_voc(Path(p.voc_cache), list(p.voc_urls), p.voc_md5)
    if not (root / "JPEGImages").is_dir():
        raise FileNotFoundError(
            f"data.voc_root: {root} has no JPEGImages folder (expected .../VOCdevkit/VOC2012)"
        )
    available = {f.stem for f in (root / "JPEGImages").glob("*.jpg")}
    weak = [i for i in VOC_TRAIN_AUG.read_text().split() if i in available]
    train = read_split(root, "train")
    rng = np.random.default_rng(seed)
    pixel = sorted(rng.permutation(train)[: p.voc_pixel_labelled].tolist())
    splits = {"weak_train": weak, "seed_eval": train, "val": read_split(root, "val"), "pixel": pixel}
    return build_index(root, "voc", splits), {
        "train_aug_missing": len(VOC_TRAIN_AUG.read_text().split()) - len(weak)
    }


def statistics(index: DatasetIndex, extra: dict) -> dict:
    stats = {"images": {k: len(v) for k, v in index.splits.items()}, "num_classes": index.num_classes}
    for split in ("weak_train", "val"):
        counts = Counter(c for i in index.splits[split] for c in index.labels[i])
        stats[f"class_images_{split}"] = {
            index.classes[c]: counts.get(c, 0) for c in range(1, index.num_classes)
        }
        stats[f"labels_per_image_{split}"] = float(
            np.mean([len(index.labels[i]) for i in index.splits[split]])
        )
    for k, v in extra.items():
        if isinstance(v, int | float):
            stats[k] = v
    return stats


def main() -> None:
    params = load_params()
    with stage_run("data", params) as run:
        p = params.data
        if p.source == "synthetic":
            index, extra = synthetic_index(p, params.seed)
        else:
            index, extra = voc_index(p, params.seed)
        index.save(OUT / "index.json")
        stats = statistics(index, extra)
        write_json(REPORTS / "stats.json", stats)
        run.log_metrics({f"data/images_{k}": v for k, v in stats["images"].items()})
        run.log_metrics({f"data/{k}": v for k, v in stats.items() if isinstance(v, int | float)})
        run.log_dict(stats, "data/stats.json")
        if p.source == "synthetic":
            from gain.synthetic import sample_figure

            sample_figure(index.root, REPORTS / "samples.png")
            run.log_artifact(REPORTS / "samples.png", "data")
        print(f"data: {stats['images']} -> {OUT / 'index.json'}")


if __name__ == "__main__":
    run_stage(main)
