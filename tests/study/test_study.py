"""gain/study: the study runner end to end on a tiny configuration (schema and consistency of summary.json),
and its pieces: overrides, aggregation, the held-out index."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import stages.gain
import stages.sec
import stages.seeds
from gain.data.dataset import DatasetIndex
from gain.runtime.device import CPU
from gain.runtime.layout import run_paths
from gain.runtime.params import read_yaml
from gain.runtime.tracking import NullRun
from gain.study.__main__ import main, merge_heldout
from gain.study.diagnostics import rolled
from gain.study.runner import (
    ABLATIONS,
    METRICS,
    STUDY_RUNTIME,
    Job,
    aggregate,
    heldout_index,
    run_job,
    set_dotted,
)

SEEDS = [0, 1]
METHODS = ["gradcam", "gain"]


def strict_json(path: Path):
    def reject(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=reject)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study")
    main(
        ["--tiny", "--seeds", *map(str, SEEDS), "--methods", *METHODS, "--workers", "2",
         "--out", str(out / "reports"), "--work", str(out / "work")]
    )  # fmt: skip
    return out


def check_stat(stat: dict, n: int) -> None:
    assert set(stat) == {"n", "mean", "std", "values"}
    values = stat["values"]
    assert len(values) == n == stat["n"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert stat["mean"] == pytest.approx(float(np.mean(values)), abs=1e-12)
    assert stat["std"] == pytest.approx(float(np.std(values, ddof=1)) if n > 1 else 0.0, abs=1e-12)


def test_summary_schema_and_values(tiny_study):
    summary = strict_json(tiny_study / "reports" / "summary.json")
    assert set(summary) == {"n_seeds", "methods", "sec_ablation"}
    assert summary["n_seeds"] == len(SEEDS)
    assert set(summary["methods"]) == set(METHODS)
    for method, metrics in summary["methods"].items():
        assert set(METRICS) <= set(metrics), method
        for name, stat in metrics.items():
            check_stat(stat, len(SEEDS))
            if name != "sec_miou" and not name.startswith("diag_"):
                assert all(0.0 <= v <= 1.0 for v in stat["values"]), (method, name)
    assert set(summary["sec_ablation"]) == set(ABLATIONS)
    for stat in summary["sec_ablation"].values():
        assert set(stat) == {"sec_miou"}
        check_stat(stat["sec_miou"], len(SEEDS))
    # the all-three ablation row is the GAIN method's own SEC run, seed by seed
    assert (
        summary["sec_ablation"]["seed_expand_constrain"]["sec_miou"] == summary["methods"]["gain"]["sec_miou"]
    )


def test_summary_matches_the_runs_that_ran(tiny_study):
    summary = strict_json(tiny_study / "reports" / "summary.json")
    results = [strict_json(p) for p in (tiny_study / "work" / "runs").glob("*/result.json")]
    assert len(results) == len(METHODS) * len(SEEDS) + (len(ABLATIONS) - 1) * len(SEEDS)
    for method in METHODS:
        runs = sorted(
            (r for r in results if r["group"] == "methods" and r["key"] == method), key=lambda r: r["seed"]
        )
        assert [r["seed"] for r in runs] == SEEDS
        for metric in METRICS:
            assert summary["methods"][method][metric]["values"] == [r["metrics"][metric] for r in runs]
    # Grad-CAM (alpha 0) and GAIN train differently from the same seed
    gc, ga = summary["methods"]["gradcam"]["map"]["values"], summary["methods"]["gain"]["map"]["values"]
    assert gc != ga


def test_a_cached_run_without_the_sec_precision_is_scored_from_its_last_checkpoint(tiny_study):
    """Runs recorded before sec_min_class_precision existed get it from their final SEC weights, equal to
    what the run itself measured, without retraining."""
    path = next((tiny_study / "work" / "runs").glob("gain-s0-*/result.json"))
    original = strict_json(path)
    stale = {
        **original,
        "metrics": {k: v for k, v in original["metrics"].items() if k != "sec_min_class_precision"},
    }
    path.write_text(json.dumps(stale))
    before = {p: p.stat().st_mtime_ns for p in path.parent.rglob("*.pt")}
    main(
        ["--tiny", "--seeds", *map(str, SEEDS), "--methods", *METHODS, "--workers", "0", "--no-ablation",
         "--out", str(tiny_study / "reports2"), "--work", str(tiny_study / "work")]
    )  # fmt: skip
    again = strict_json(path)
    assert again["metrics"]["sec_min_class_precision"] == pytest.approx(
        original["metrics"]["sec_min_class_precision"], abs=1e-9
    )
    assert {p: p.stat().st_mtime_ns for p in path.parent.rglob("*.pt")} == before  # nothing retrained


def test_report_files(tiny_study):
    reports = tiny_study / "reports"
    for name in ("study.md", "attention_comparison.png", "timing.json"):
        assert (reports / name).is_file(), name
    text = (reports / "study.md").read_text()
    assert "wall time" in text and "SEC loss ablation" in text and "Table 4" in text
    assert strict_json(reports / "timing.json")["wall_s"] > 0


def test_set_dotted_overrides_and_names_unknown_keys():
    raw = {"gain": {"sigma": 0.5}, "seed": 0}
    out = set_dotted(raw, {"gain.sigma": 0.7, "seed": 2})
    assert out == {"gain": {"sigma": 0.7}, "seed": 2} and raw["gain"]["sigma"] == 0.5
    with pytest.raises(KeyError, match="gain.sigmaa"):
        set_dotted(raw, {"gain.sigmaa": 1})
    with pytest.raises(KeyError, match="gan.sigma"):
        set_dotted(raw, {"gan.sigma": 1})


def test_aggregate_rejects_what_json_cannot_hold():
    # Sample std (ddof = 1): sqrt(((1 - 2)^2 + (3 - 2)^2) / 1); population std would be 1.
    assert aggregate([1, 3]) == {
        "n": 2,
        "mean": 2.0,
        "std": pytest.approx(math.sqrt(2)),
        "values": [1.0, 3.0],
    }
    assert aggregate([5.0]) == {"n": 1, "mean": 5.0, "std": 0.0, "values": [5.0]}
    for bad in ([], [float("nan")], [1.0, float("inf")]):
        with pytest.raises(ValueError):
            aggregate(bad)


def test_heldout_index_scores_on_training_ids_only():
    ids = [f"t{i:02d}" for i in range(20)]
    index = DatasetIndex(
        root=Path("."),
        source="synthetic",
        classes=("background", "a"),
        splits={"weak_train": ids, "seed_eval": ids, "val": ["v0", "v1"], "pixel": ids[:5]},
        labels={i: [1] for i in [*ids, "v0", "v1"]},
    )
    held = heldout_index(index, 0.2, seed=0)
    assert len(held.splits["val"]) == 4 and set(held.splits["val"]) <= set(ids)
    assert not set(held.splits["val"]) & set(held.splits["weak_train"])
    assert set(held.splits["weak_train"]) | set(held.splits["val"]) == set(ids)
    assert not set(held.splits["pixel"]) & set(held.splits["val"])
    assert held.splits["seed_eval"] == held.splits["weak_train"]
    assert heldout_index(index, 0.2, seed=0).splits == held.splits


class Reached(Exception):
    """Raised by a stand-in stage run(): the runner got there."""


def test_every_run_trains_through_the_stages_run(tmp_path, monkeypatch):
    """A study run is the stages' own run() (stages/gain.py, seeds.py, sec.py) on the run's folder, on the
    CPU, without MLflow: a runner that wired the library calls by hand again would never reach them."""
    calls = []

    def stand_in(stage: str):
        def run(params, index, *, paths, rt, tracker, **options):
            calls.append((stage, paths, rt, tracker, options))
            raise Reached(stage)

        return run

    for module in (stages.gain, stages.seeds, stages.sec):
        monkeypatch.setattr(module, "run", stand_in(module.__name__.split(".")[-1]))
    ids = [f"t{i}" for i in range(4)]
    index_path = tmp_path / "index.json"
    DatasetIndex(root=tmp_path, source="synthetic", classes=("background", "a"),
                 splits={"weak_train": ids, "seed_eval": ids, "val": ids}, labels={i: [1] for i in ids}
                 ).save(index_path)  # fmt: skip
    raw = set_dotted(read_yaml(Path(__file__).parents[2] / "params.yaml"), STUDY_RUNTIME)
    source = tmp_path / "source"
    for stage in ("gain", "seeds", "sec"):
        job = Job(stage, "methods", "gain", 0, raw, str(index_path), str(tmp_path / stage), (stage,),
                  source=str(source) if stage == "sec" else "", diagnose=True)  # fmt: skip
        with pytest.raises(Reached, match=stage):
            run_job(job)
    assert [c[0] for c in calls] == ["gain", "seeds", "sec"]
    want = [run_paths(tmp_path / "gain"), run_paths(tmp_path / "seeds"), run_paths(tmp_path / "sec", source)]
    assert [c[1] for c in calls] == want
    assert all(c[2] == CPU and type(c[3]) is NullRun for c in calls)
    assert callable(calls[0][4]["extra_eval"])  # the per-epoch diagnostics


def _heldout_run(key: str, seed: int, miou: float) -> dict:
    return {"group": "variants", "key": key, "seed": seed,
            "metrics": {"attention_miou": miou, "history": [{"epoch": 1, "attn_miou": miou}]}}  # fmt: skip


def test_heldout_record_merges_runs_per_seed():
    record = {"fraction": 0.2, "variants": {}, "history": []}
    extra = {"gain/base": {}, "gain/w3": {"gain.warmup_epochs": 3}}
    record = merge_heldout(
        record, [_heldout_run("gain/base", 0, 0.2), _heldout_run("gain/base", 1, 0.4)], extra
    )
    # A later sweep over seed 0 alone replaces seed 0's value, keeps seed 1's and adds a variant.
    record = merge_heldout(
        record, [_heldout_run("gain/base", 0, 0.3), _heldout_run("gain/w3", 0, 0.5)], extra
    )
    base = record["variants"]["gain/base"]
    assert base["seeds"] == [0, 1] and base["metrics"]["attention_miou"]["values"] == [0.3, 0.4]
    assert base["metrics"]["attention_miou"]["mean"] == pytest.approx(0.35)
    assert record["variants"]["gain/w3"]["overrides"] == '{"gain.warmup_epochs": 3}'
    assert sorted((h["key"], h["seed"], h["attn_miou"]) for h in record["history"]) == [
        ("gain/base", 0, 0.3), ("gain/base", 1, 0.4), ("gain/w3", 0, 0.5)]  # fmt: skip
    # Changed overrides under the same name start the variant afresh.
    record = merge_heldout(record, [_heldout_run("gain/w3", 1, 0.6)], {"gain/w3": {"gain.warmup_epochs": 2}})
    assert record["variants"]["gain/w3"]["seeds"] == [1]
    assert [h["seed"] for h in record["history"] if h["key"] == "gain/w3"] == [1]


def test_rolled_mask_keeps_its_area_and_moves():
    t = torch.zeros(3, 1, 16, 16)
    t[:, :, 2:6, 3:9] = torch.rand(3, 1, 4, 6)
    r = rolled(t, torch.Generator().manual_seed(0))
    assert torch.allclose(r.sum(dim=(1, 2, 3)), t.sum(dim=(1, 2, 3)))
    assert torch.equal(torch.sort(r.flatten(1)).values, torch.sort(t.flatten(1)).values)
    assert not (r[:, :, 2:6, 3:9] == t[:, :, 2:6, 3:9]).all(dim=(1, 2, 3)).any()  # every mask left its place
