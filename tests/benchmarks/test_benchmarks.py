"""benchmarks/run.py end to end on the CPU: the default --quick mode and the --paper-scale --quick projection
into one output folder (every figure present, finite and positive; each mode keeps the other's figures; no
timing target is asserted: targets live in the script's own report), benchmarks/gpu_check.sh on a machine
without CUDA, and the DataLoader sizing the paper-scale run relies on."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.paper import LABEL_PATTERN, PAPER, WORKLOADS, exact_crf_gflops, here, project
from gain.runtime.loaders import AUTO_WORKERS, MAX_AUTO_WORKERS, loader_workers

REPO = Path(__file__).resolve().parents[2]
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
    "sec_exact_over_inline",
    "sec_exact_over_pool",
    "eval_mpix_per_s",
]
PIPELINE = {"pipeline_wall_s": 250.0, "noop_repro_s": 1.5}
EARLIER = PIPELINE | {"pipeline_measured_on": "2026-01-01", "gain_step_over_plain": 99.0}  # a figure replaced
STAGES = {"gain_batch_1", "gain_batch_16", "seeds", "sec", "evaluate"}


def positive(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def run(out: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "benchmarks.run", "--quick", "--threads", "1", "--out-dir", str(out), *args]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory) -> tuple[dict, str]:
    """The default quick run, then the quick paper-scale run into the same folder."""
    out = tmp_path_factory.mktemp("benchmarks")
    (out / "benchmarks.json").write_text(json.dumps(EARLIER))
    run(out, "--skip-pipeline")
    run(out, "--paper-scale", "--device", "cpu")
    return json.loads((out / "benchmarks.json").read_text()), (out / "benchmarks.md").read_text()


@pytest.mark.e2e
def test_quick_run_reports_every_figure(quick_runs):
    res, md = quick_runs
    for key in FIGURES:
        assert positive(res[key]), (key, res[key])
        assert f"`{key}`" in md
    # --skip-pipeline kept the earlier pipeline figures (judged against their targets) and nothing else
    assert all(res[k] == v for k, v in EARLIER.items() if k != "gain_step_over_plain")
    assert all(res["targets"][k]["pass"] for k in PIPELINE) and res["gain_step_over_plain"] != 99.0
    backends = {"inline", "exact", *(str(n) for n in range(1, os.cpu_count() + 1))}
    assert set(res["crf_per_s"]) == backends and all(positive(v) for v in res["crf_per_s"].values())
    assert res["sec_setup"]["grid"] == [14, 14] and set(res["sec_step_ms"]) == {"pool", "inline", "exact"}
    assert set(res["memory_mib"]) == {"plain", "gain", "public"}
    assert all(positive(v) for v in res["memory_mib"].values())
    for section in ("step_ms", "sec_step_ms"):
        assert all(positive(v) for v in res[section].values())
    machine = res["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["torch"] and machine["date"]
    assert "cuda" in machine
    assert set(res["targets"]) == {"gain_step_over_floor", "speedup_vs_public_pass_structure", *PIPELINE}


@pytest.mark.e2e
def test_paper_scale_projects_every_stage(quick_runs):
    res, md = quick_runs
    assert res["gpu_measured"] is False and res["gpu_name"] is None
    assert set(res["voc_paper_scale_hours"]) == {"gain_batch_1", "gain_batch_16"}
    assert all(positive(v) for v in res["voc_paper_scale_hours"].values())
    assert set(res["voc_stage_hours"]) == STAGES and all(positive(v) for v in res["voc_stage_hours"].values())
    assert set(res["voc_step_split_s"]) == STAGES
    for step, split in res["voc_step_split_s"].items():
        assert all(positive(split[k]) for k in ("data", "forward_backward", "step")), (step, split)
        assert split["crf"] >= 0 and split["data_hidden"] is False  # in-line loading on the CPU
    assert positive(res["voc_step_split_s"]["sec"]["crf"]) and positive(
        res["voc_step_split_s"]["seeds"]["crf"]
    )
    crf = res["crf_sizing"]
    for key in (
        "crf41_per_s_per_process",
        "crf_full_s_per_crf",
        "sec_processes_needed",
        "eval_processes_needed",
    ):
        assert positive(crf[key]), (key, crf[key])
    est = res["gpu_estimate"]
    assert set(est["stage_hours"]) == STAGES - {"gain_batch_1"}  # latency-bound: not estimated from FLOPs
    assert all(positive(v) for v in est["stage_hours"].values()) and positive(est["total_hours"])
    # SEC's CRF exact on the GPU (auto's choice on CUDA), its time from its counted FLOPs
    assert est["sec_crf_exact_gpu_s"] == pytest.approx(exact_crf_gflops(1, 21, 41 * 41) * 15 / 30e3)
    m, setup = res["paper_scale_measured"], res["paper_scale_setup"]
    assert all(positive(v) for v in m["seconds_per_image"].values()) and positive(
        m["seeds_main_process_s_per_image"]
    )
    assert set(m["crf41_per_s"]) >= {"inline", "1", "exact"} and all(
        positive(v) for v in m["crf41_per_s"].values()
    )
    # On CUDA `auto` projects SEC with the exact CRF: the same projection, CRF time from the exact CRF's rate.
    at_321 = {net: setup["flops"][f"{net}_gflops_321"] for net in ("classifier", "largefov")}
    exact = project(at_321, *here(m, setup["flops"], "exact", setup["crf_processes"]))[0]["sec"]
    assert exact["crf"] == pytest.approx(15 / m["crf41_per_s"]["exact"])
    assert exact["crf"] > res["voc_step_split_s"]["sec"]["crf"]  # on the CPU the lattice is faster
    assert set(res["voc_multi_gpu_hours"]) == {"1", "2", "4", "8"}
    assert all(positive(v) for v in res["voc_multi_gpu_hours"].values())
    # One file holds both modes; the Markdown shows both.
    assert "## VOC 2012 at the papers' scale" in md and "## At params.yaml's settings" in md
    assert "**Estimate, not a measurement**" in md


@pytest.mark.e2e
def test_gpu_check_without_cuda_says_so(tmp_path):
    # CUDA hidden, so the check takes its no-CUDA branch on any machine (with a GPU it would run the benchmarks).
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu_check.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert res.returncode == 0, res.stderr
    assert "no CUDA" in res.stdout


def test_auto_loader_workers_come_from_the_cores_on_cuda_only(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(3, cuda=True) == 3 and loader_workers(0, cuda=True) == 0  # asked for: as asked
    assert loader_workers(AUTO_WORKERS, cuda=False) == 0  # the CPU's cores compute
    assert loader_workers(AUTO_WORKERS, cuda=True) == 11  # one core for the training process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loader_workers(AUTO_WORKERS, cuda=True) == 2  # 12 cores shared by 4 ranks
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "12")
    assert loader_workers(AUTO_WORKERS, cuda=True) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(128)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert loader_workers(AUTO_WORKERS, cuda=True) == MAX_AUTO_WORKERS


def test_projection_adds_or_overlaps_the_cpu_work():
    # One GFLOP per forward pass at 1 GFLOP/s: a stage's network time is its images x passes in seconds.
    gflops, rates = {"classifier": 1.0, "largefov": 1.0}, {"gain_batched": 1.0, "sec_network": 1.0}
    path, cpu = {"seed_post": 0.5, "sec_crf": 0.1}, {"decode_gain": 2.0, "decode_sec": 0.0, "crf_full": 0.0}
    inline, hours = project(gflops, rates, path, cpu, False)
    assert set(inline) == {"gain_batch_16", "seeds", "sec", "evaluate"}  # no rate for GAIN at batch 1
    assert inline["seeds"]["step"] == pytest.approx(2 + 0.5 + 2)  # two forwards, post-processing, decoding
    assert inline["sec"]["step"] == pytest.approx(15 * 3 + 15 * 0.1)
    assert hours["sec"] == pytest.approx(PAPER["sec_iterations"] * inline["sec"]["step"] / 3600)
    workers = project(gflops, rates, path, cpu, True)[0]
    assert workers["seeds"]["step"] == pytest.approx(2.5) and workers["seeds"]["data_hidden"]
    assert workers["gain_batch_16"]["step"] == pytest.approx(16 * 7.5)  # 16 x 2 s of decoding hide behind it
    assert all(statistics.fmean(LABEL_PATTERN[:n]) == 1.5 for n in (2, 4, 8, 16))  # VOC's mean labels
    assert {k: v[0] for k, v in WORKLOADS.items()}["gain_batch_1"] == 35 * PAPER["train_images"]


def test_exact_crf_flops_are_counted_by_hand():
    # One image, one class, one cell, one iteration: 2 kernels x 2 FLOPs, plus 6 for the colour products.
    assert exact_crf_gflops(1, 1, 1, 1) * 1e9 == pytest.approx(10)
    # SEC's batch: 15 x (10 x 4 x 21 x 1681^2 + 6 x 1681^2) = 35.9 GFLOP per step.
    assert exact_crf_gflops(15, 21, 41 * 41) == pytest.approx(15 * 846 * 1681**2 / 1e9)
