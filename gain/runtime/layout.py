"""Where each stage reads and writes, relative to the repo root: the one place these paths are written in
Python. dvc.yaml repeats them for DVC, and tests/test_layout.py checks that the two agree. `StagePaths`
carries them into the stages' run() functions (stages/*.py): `PIPELINE` is this layout, `run_paths` a study
run's folder."""

from dataclasses import dataclass
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


@dataclass(frozen=True)
class StagePaths:
    """Where the stages' run() functions read and write: by default the pipeline's files above (what
    dvc.yaml declares); `run_paths` gives a study run's folder instead."""

    dataset: Path = DATASET  # written by the data stage, with its index.json
    gain_model: Path = GAIN_MODEL
    seeds: Path = SEEDS
    sec_model: Path = SEC_MODEL
    reports: Path = REPORTS  # <reports>/<stage>/ per stage; the evaluate stage's report at the top
    gain_ckpt: Path = CHECKPOINTS / "gain"  # resume checkpoints (last.pt), outside DVC
    sec_ckpt: Path = CHECKPOINTS / "sec"

    @property
    def index(self) -> Path:
        return self.dataset / "index.json"

    def report_dir(self, stage: str) -> Path:
        return self.reports / stage

    def files(self, stage: str) -> list[Path]:
        """Every file or folder `stage` writes (its OUTPUTS, stage_files) moved under these paths."""
        moved = {
            DATASET: self.dataset,
            GAIN_MODEL: self.gain_model,
            SEEDS: self.seeds,
            SEC_MODEL: self.sec_model,
            REPORTS: self.reports,
        }
        return [
            next(new / path.relative_to(old) for old, new in moved.items() if path.is_relative_to(old))
            for path in stage_files(stage)
        ]


PIPELINE = StagePaths()


def run_paths(run_dir: Path, source: Path | None = None) -> StagePaths:
    """A study run's folder (gain/study/runner.py): run_dir/gain.pt, seeds/, sec.pt, reports/ and the resume
    checkpoints ckpt_gain/, ckpt_sec/. A SEC-only run reads gain.pt and seeds/ of `source`, another run's
    folder. The study prepares its data itself (one data set per data config), so `dataset` is unused."""
    source = source or run_dir
    return StagePaths(
        gain_model=source / "gain.pt",
        seeds=source / "seeds",
        sec_model=run_dir / "sec.pt",
        reports=run_dir / "reports",
        gain_ckpt=run_dir / "ckpt_gain",
        sec_ckpt=run_dir / "ckpt_sec",
    )
