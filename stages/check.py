"""DVC stage `check`: validates the whole params.yaml whenever the file changes, so a mistyped or unknown
key (`sed: 1`) stops `dvc repro` with one line naming it even when no stage that reads params has to run.
It writes nothing and no stage depends on it."""

from gain.runtime.cli import run_stage
from gain.runtime.params import load_params


def main() -> None:
    load_params()
    print("check: params.yaml is valid")


if __name__ == "__main__":
    run_stage(main)
