"""Where each stage reads and writes, relative to the repo root: the one place these paths are written in
Python. dvc.yaml repeats them for DVC, and tests/test_layout.py checks that the two agree."""

from pathlib import Path

DATASET = Path("data/dataset")  # the VOC2012-layout set (synthetic) and index.json (both sources)
INDEX = DATASET / "index.json"
VOC_TRAIN_AUG = Path("data/voc_train_aug.txt")
SEEDS = Path("data/seeds")
GAIN_MODEL = Path("models/gain/model.pt")
SEC_MODEL = Path("models/sec/model.pt")
REPORTS = Path("reports")
RUNS = Path("runs")  # runs/<stage>.json: the MLflow run of the last execution (not a DVC output)
CHECKPOINTS = Path("checkpoints")  # checkpoints/<stage>/last.pt: resume points (not a DVC output)


def reports(stage: str) -> Path:
    return REPORTS / stage


# What each stage writes, as dvc.yaml declares it: outs (cached), metrics and plots (committed to git).
OUTPUTS: dict[str, dict[str, list[Path]]] = {
    "data": {
        "outs": [DATASET],
        "metrics": [REPORTS / "data/stats.json"],
        "plots": [REPORTS / "data/samples.png"],
    },
    "gain": {
        "outs": [GAIN_MODEL],
        "metrics": [REPORTS / "gain/metrics.json"],
        "plots": [REPORTS / "gain/history.csv", REPORTS / "gain/attention.png"],
    },
    "seeds": {
        "outs": [SEEDS],
        "metrics": [REPORTS / "seeds/metrics.json"],
        "plots": [REPORTS / "seeds/per_class.csv", REPORTS / "seeds/grid.png"],
    },
    "sec": {
        "outs": [SEC_MODEL],
        "metrics": [REPORTS / "sec/metrics.json"],
        "plots": [REPORTS / "sec/history.csv"],
    },
    "evaluate": {
        "outs": [REPORTS / "report.md"],
        "metrics": [REPORTS / "metrics.json"],
        "plots": [
            REPORTS / "per_class_iou.csv",
            REPORTS / "confusion.csv",
            REPORTS / "per_class_iou.png",
            REPORTS / "confusion.png",
            REPORTS / "qualitative.png",
        ],
    },
}
