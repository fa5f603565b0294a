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


# What each stage writes, as dvc.yaml declares it. outs: cached by DVC (`dvc push`/`pull`), among them the
# CSV tables that dvc.yaml's top-level `plots:` draws (PLOT_DATA; not `cache: false`, which would turn the
# run-cache off). metrics: one small JSON of headline numbers per training/scoring stage (what `dvc exp show`
# lists), committed to git. plots: the figures (PNG), committed to git.
PLOT_DATA = {
    "gain": [REPORTS / "gain/history.csv", REPORTS / "gain/train_loss.csv"],
    "seeds": [REPORTS / "seeds/per_class.csv"],
    "sec": [REPORTS / "sec/history.csv", REPORTS / "sec/train_loss.csv"],
    "evaluate": [REPORTS / "per_class_iou.csv"],
}
OUTPUTS: dict[str, dict[str, list[Path]]] = {
    "check": {"outs": [], "metrics": [], "plots": []},
    "data": {
        "outs": [DATASET, REPORTS / "data/stats.json"],
        "metrics": [],
        "plots": [REPORTS / "data/samples.png"],
    },
    "gain": {
        "outs": [GAIN_MODEL, *PLOT_DATA["gain"]],
        "metrics": [REPORTS / "gain/metrics.json"],
        "plots": [REPORTS / "gain/attention.png"],
    },
    "seeds": {
        "outs": [SEEDS, *PLOT_DATA["seeds"]],
        "metrics": [REPORTS / "seeds/metrics.json"],
        "plots": [REPORTS / "seeds/grid.png"],
    },
    "sec": {
        "outs": [SEC_MODEL, *PLOT_DATA["sec"]],
        "metrics": [REPORTS / "sec/metrics.json"],
        "plots": [],
    },
    "evaluate": {
        "outs": [REPORTS / "report.md", REPORTS / "confusion.csv", *PLOT_DATA["evaluate"]],
        "metrics": [REPORTS / "metrics.json"],
        "plots": [REPORTS / "per_class_iou.png", REPORTS / "confusion.png", REPORTS / "qualitative.png"],
    },
    "track": {"outs": [], "metrics": [], "plots": []},
}


def stage_files(stage: str) -> list[Path]:
    """Every file or folder `stage` writes (its outs, metrics and plots)."""
    return [path for paths in OUTPUTS[stage].values() for path in paths]
