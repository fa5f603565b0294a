"""DVC stage `track`: after `evaluate`, whenever any stage's results changed, make this pipeline's MLflow run
name the run behind each stage's outputs that DVC restored from its run-cache (tags `restored.<stage>`) and
carry every stage's headline metrics. Stages that DVC restores run no code, so without this a pipeline run
whose later stages were restored would show only the stages that ran and none of the final metrics.

It writes nothing (no DVC outputs, so never restored itself) and reads only the MLflow store settings."""

from gain.runtime.cli import run_stage
from gain.runtime.params import load_params
from gain.runtime.tracking import record_pipeline


def main() -> None:
    params = load_params()
    restored = record_pipeline(params)
    if restored is None:
        print("track: no stage ran in this pipeline; its outputs all came from DVC's cache")
    elif restored:
        print("track: restored by DVC: " + ", ".join(f"{s} (run {r})" for s, r in restored.items()))
    else:
        print("track: every stage's outputs come from this pipeline")


if __name__ == "__main__":
    run_stage(main)
