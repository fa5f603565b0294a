"""Speed and memory of the pipeline's hot paths on this machine, in one run.

    python -m benchmarks.run [--quick] [--paper-scale] [--device auto|cpu|cuda] [--skip-pipeline]
                             [--threads N] [--out-dir reports]

The default run times params.yaml's settings (benchmarks.suite) against its targets; `--paper-scale` times
VOC at the papers' scale and projects the full run (benchmarks.paper). Both write <out-dir>/benchmarks.json
and .md; each replaces its own figures there and keeps the other's.

Only the standard library is imported at module level: the CRF pools start their workers with "spawn",
which re-imports this module in every worker, and they need neither torch nor the benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine_info(torch, rt, default_threads: int) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.processor()
    )
    return {
        "cpu": model or None,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_default_threads": default_threads,
        "cuda": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else None,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
    }


def write(out_dir: Path, res: dict, keep, render) -> str:
    """out_dir/benchmarks.json := the old file's keys for which keep(key) holds (the other mode's figures)
    plus `res`; benchmarks.md rendered from that."""
    path = out_dir / "benchmarks.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    merged = {**{k: v for k, v in old.items() if keep(k)}, **res}
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2, allow_nan=False) + "\n")
    md = render(merged)
    (out_dir / "benchmarks.md").write_text(md)
    return md


PIPELINE_KEYS = ("pipeline_wall_s", "noop_repro_s", "pipeline_stage_s", "pipeline_cpu_s", "pipeline_loadavg",
                 "noop_reran_stages")  # fmt: skip


def kept_pipeline(out_dir: Path) -> dict:
    """--skip-pipeline: the pipeline figures of the previous run in out_dir with the date they were measured
    (`pipeline_measured_on`), or None where there are none."""
    path = out_dir / "benchmarks.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    if old.get("pipeline_wall_s") is None:
        return {k: None for k in PIPELINE_KEYS[:4]}
    return {k: old.get(k) for k in PIPELINE_KEYS} | {
        "pipeline_measured_on": old.get("pipeline_measured_on") or old["machine"]["date"]
    }


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="few repetitions (and --paper-scale at a small size)"
    )
    ap.add_argument(
        "--paper-scale", action="store_true", help="VOC at the papers' scale and the projected run"
    )
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--skip-pipeline",
        action="store_true",
        help="do not time `dvc repro` (keep the previous run's figures)",
    )
    ap.add_argument("--profile", action="store_true", help="profile the training steps even if targets pass")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads on the CPU (default 1: on a CPU shared with other jobs, ratios stay fair; "
        "0: torch's default, as the pipeline's stages run)",
    )
    ap.add_argument("--out-dir", type=Path, default=Path("reports"), help="where benchmarks.json/.md go")
    ap.add_argument("--memory-child", choices=("plain", "gain", "public"), help=argparse.SUPPRESS)
    ap.add_argument("--memory-steps", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    # Imported here, not at the top: see the module docstring.
    import torch

    from benchmarks import paper, report, suite
    from gain.runtime.device import seed_everything, setup_runtime
    from gain.runtime.params import load_params

    if args.memory_child:
        suite.memory_child(args.memory_child, args.device, args.memory_steps, args.threads)
        return None
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")
    rt = setup_runtime(args.device)
    seed_everything(params.seed, params.deterministic)
    command = ("python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    machine = machine_info(torch, rt, default_threads)

    if args.paper_scale:
        start = time.perf_counter()
        res = paper.paper_scale(params, rt, quick=args.quick)
        machine["loadavg_end"] = list(os.getloadavg())
        res["paper_scale_run"] = {"command": command, "quick": args.quick, "device": rt.device.type,
                                  "machine": machine, "wall_s": time.perf_counter() - start}  # fmt: skip
        print(write(args.out_dir, res, lambda k: k not in paper.KEYS, report.render))
        return res

    reps = suite.QUICK if args.quick else suite.FULL
    profile = True if args.profile else (False if args.quick else None)  # None: when a step target is missed
    device = rt.device.type
    res: dict = {"command": command, "device": device, "quick": args.quick, "machine": machine}
    sections = [
        ("training steps", lambda: suite.bench_steps(params, rt, reps, profile_steps=profile, default_threads=default_threads)),
        ("memory", lambda: suite.bench_memory(params, rt, reps, device, args.threads)),
        ("seeds", lambda: suite.bench_seeds(params, rt, reps)),
        ("SEC step and CRF pool", lambda: suite.bench_sec(params, rt, reps)),
        ("evaluation", lambda: suite.bench_eval(params, reps)),
    ]  # fmt: skip
    if args.skip_pipeline:
        res |= kept_pipeline(args.out_dir)
    else:
        sections.append(("pipeline", lambda: suite.bench_pipeline(device)))
    res["section_s"] = {}
    for name, fn in sections:
        start = time.perf_counter()
        print(f"[benchmarks] {name} ...", flush=True)
        res.update(fn())
        res["section_s"][name] = time.perf_counter() - start
        print(f"[benchmarks] {name}: {res['section_s'][name]:.1f} s", flush=True)
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    res["targets"] = suite.verdicts(res)
    print(write(args.out_dir, res, lambda k: k in paper.KEYS, report.render))
    return res


if __name__ == "__main__":
    main()
