"""DVC stage `data`: the built-in synthetic VOC-format set, or PASCAL VOC 2012 (downloaded or existing),
checked file by file, indexed for the later stages, summarised and pictured."""

from gain.data.prepare import prepare_dataset, sample_figure
from gain.runtime import layout
from gain.runtime.cli import run_stage
from gain.runtime.io import write_json
from gain.runtime.params import Params, load_params
from gain.runtime.provenance import repo_root
from gain.runtime.tracking import stage_run


def run(params: Params, *, paths: layout.StagePaths = layout.PIPELINE, tracker) -> dict:
    """The data set in paths.dataset with its index (paths.index), its stats.json and samples.png under
    paths.report_dir("data"). -> the stats."""
    reports = paths.report_dir("data")
    index, stats = prepare_dataset(params.data, params.seed, paths.dataset, repo=repo_root())
    index.save(paths.index)
    tracker.log_dataset(index)
    write_json(reports / "stats.json", stats)
    sample_figure(index, reports / "samples.png")
    tracker.log_metrics({f"data/images_{k}": v for k, v in stats["images"].items()})
    tracker.log_dict(stats, "data/stats.json")
    tracker.log_artifact(reports, "data")
    print(f"data: {stats['images']} -> {paths.index}")
    return stats


def main() -> None:
    params = load_params()
    with stage_run("data", params) as tracker:
        run(params, tracker=tracker)


if __name__ == "__main__":
    run_stage(main)
