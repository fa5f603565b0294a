"""DVC stage `data`: the built-in synthetic VOC-format set, or PASCAL VOC 2012 (downloaded or existing),
checked file by file, indexed for the later stages, summarised and pictured."""

from gain.data.prepare import prepare_dataset, sample_figure
from gain.runtime import layout
from gain.runtime.cli import run_stage
from gain.runtime.io import write_json
from gain.runtime.params import load_params
from gain.runtime.provenance import repo_root
from gain.runtime.tracking import stage_run


def main() -> None:
    params = load_params()
    reports = layout.reports("data")
    with stage_run("data", params) as run:
        index, stats = prepare_dataset(params.data, params.seed, layout.DATASET, repo=repo_root())
        index.save(layout.INDEX)
        run.log_dataset(index)
        write_json(reports / "stats.json", stats)
        sample_figure(index, reports / "samples.png")
        run.log_metrics({f"data/images_{k}": v for k, v in stats["images"].items()})
        run.log_dict(stats, "data/stats.json")
        run.log_artifact(reports, "data")
        print(f"data: {stats['images']} -> {layout.INDEX}")


if __name__ == "__main__":
    run_stage(main)
