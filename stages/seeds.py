"""DVC stage `seeds`: GAIN attention -> SEC localization cues for every weak training image
(data/seeds/<id>.png, 255 = unlabeled), scored once against the masks of the seed-evaluation images."""

import time

import pandas as pd

from gain.cam.model import load_classifier
from gain.data.dataset import DatasetIndex
from gain.evaluation.figures import grid_figure, save_figure
from gain.runtime import layout
from gain.runtime.cli import run_stage
from gain.runtime.device import Runtime, setup_runtime
from gain.runtime.io import atomic_path, write_json
from gain.runtime.params import Params, load_params
from gain.runtime.tracking import stage_run
from gain.seeds.extract import extract_seeds


def run(
    params: Params, index: DatasetIndex, *, paths: layout.StagePaths = layout.PIPELINE, rt: Runtime, tracker
) -> dict:
    """Seeds from paths.gain_model into paths.seeds, their scores under paths.report_dir("seeds") and the
    grid of runtime.vis_images examples (none for 0, as the study runs). -> metrics.json's values."""
    classifier, gain_p = load_classifier(paths.gain_model)
    reports = paths.report_dir("seeds")
    tracker.log_dataset(index)
    start = time.perf_counter()
    metrics, rows = extract_seeds(
        classifier.to(rt.device),
        index,
        params.seeds,
        rt,
        paths.seeds,
        input_size=gain_p["input_size"],
        batch_size=params.runtime.seeds_batch_size,
        n_vis=params.runtime.vis_images,
    )
    images_per_s = len(index.splits["weak_train"]) / (time.perf_counter() - start)
    per_class = pd.DataFrame(metrics.pop("per_class")).rename_axis("class").reset_index()
    write_json(reports / "metrics.json", metrics)
    with atomic_path(reports / "per_class.csv") as tmp:
        per_class.to_csv(tmp, index=False)
    if rows:
        save_figure(grid_figure(rows, classes=index.classes), reports / "grid.png")
    tracker.log_metrics({f"seeds/{k}": v for k, v in metrics.items()} | {"seeds/images_per_s": images_per_s})
    tracker.log_artifact(reports)
    print(
        f"seeds: {images_per_s:.1f} img/s; precision {metrics['seed_precision']:.3f} recall "
        f"{metrics['seed_recall']:.3f} labeled {metrics['labeled_fraction']:.3f} mIoU {metrics['seed_miou']:.3f}"
    )
    return metrics


def main() -> None:
    params = load_params()
    index = DatasetIndex.load(layout.INDEX)
    rt = setup_runtime(params.device)
    with stage_run("seeds", params) as tracker:
        run(params, index, rt=rt, tracker=tracker)


if __name__ == "__main__":
    run_stage(main)
