"""benchmarks/run.py end to end in --quick mode (every figure present, finite and positive; no timing target is
asserted: targets live in the script's own report), and benchmarks/gpu_check.sh on a machine without CUDA."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
FIGURES = [
    "gain_step_over_plain",
    "gain_step_over_floor",
    "speedup_vs_public_pass_structure",
    "speedup_vs_public_differentiable",
    "gain_memory_over_plain",
    "public_memory_over_plain",
    "seed_images_per_s",
    "seed_batched_speedup",
    "crf_pool_speedup",
    "eval_mpix_per_s",
]
PIPELINE = ["pipeline_wall_s", "noop_repro_s"]


def positive(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("benchmarks")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--quick",
        "--skip-pipeline",
        "--threads",
        "1",
        "--out-dir",
        str(out),
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return json.loads((out / "benchmarks.json").read_text()), (out / "benchmarks.md").read_text()


def test_quick_run_reports_every_figure(quick_run):
    res, md = quick_run
    for key in FIGURES:
        assert positive(res[key]), (key, res[key])
        assert f"`{key}`" in md
    for key in PIPELINE:
        assert res[key] is None and res["targets"][key]["pass"] is None
    assert set(res["crf_pool_scaling"]) == {"inline", *(str(n) for n in range(1, os.cpu_count() + 1))}
    assert all(positive(v) for v in res["crf_pool_scaling"].values())
    assert set(res["memory_mib"]) == {"plain", "gain", "public"}
    assert all(positive(v) for v in res["memory_mib"].values())
    for section in ("step_ms", "sec_step_ms"):
        assert all(positive(v) for v in res[section].values())
    machine = res["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["torch"] and machine["date"]
    assert "cuda" in machine
    assert set(res["targets"]) == {"gain_step_over_floor", "speedup_vs_public_pass_structure", *PIPELINE}


def test_compared_variants_compute_the_same_thing(quick_run):
    res, _ = quick_run
    # The public pass structure and GAIN(differentiable=False) give the same loss and gradients (fp32, CPU) ...
    assert res["public_equivalence"]["loss_abs_diff"] < 1e-5
    assert res["public_equivalence"]["grad_max_abs_diff_rel"] < 1e-4
    # ... and one attention_maps pass per class gives the batched seed pass's maps.
    assert res["seed_equivalence"]["same_classes"]
    assert res["seed_equivalence"]["max_abs_diff"] < 1e-4


def test_gpu_check_without_cuda_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: gpu_check.sh would run the benchmarks")
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu_check.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "no CUDA" in res.stdout
