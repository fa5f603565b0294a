"""The DVC views people read (`dvc plots`, `dvc exp show`) as dvc.yaml declares them: every top-level plot
is titled and labelled and draws a stage output, and nothing disables the run-cache."""

from __future__ import annotations

from pathlib import Path

import yaml

from gain.runtime import layout
from tests.imports import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_top_level_plots_are_labelled_and_draw_the_layouts_plot_data():
    drawn = set()
    for entry in DVC["plots"]:
        ((name, props),) = entry.items()
        assert props.get("title") and props.get("x_label") and props.get("y_label"), name
        assert isinstance(props["y"], dict), f"{name}: name the file its fields come from"
        drawn |= {Path(f) for f in props["y"]}
    plot_data = {p for paths in layout.PLOT_DATA.values() for p in paths}
    assert drawn == plot_data
    for stage, paths in layout.PLOT_DATA.items():
        assert set(paths) <= set(layout.OUTPUTS[stage]["outs"]), stage


def test_no_uncached_plain_out_turns_the_run_cache_off():
    """DVC skips the run-cache of a stage with a `cache: false` out that is neither a metric nor a plot."""
    for name, stage in DVC["stages"].items():
        for out in stage.get("outs", []):
            options = next(iter(out.values())) if isinstance(out, dict) else {}
            assert options.get("cache", True), f"{name}: {out}"
