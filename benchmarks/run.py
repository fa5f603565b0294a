"""Speed and memory of the pipeline's hot paths on this machine, in one run (`--help` for the flags).

The default run times params.yaml's settings (benchmarks.suite) against its targets; `--paper-scale` times
VOC's steps at the papers' scale and projects the full run (benchmarks.paper). Both write <out-dir>/
benchmarks.json and .md; each replaces its own figures there and keeps the other's.

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
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), None)
    return {
        "cpu": model or platform.processor() or None, "cores": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "torch_default_threads": default_threads,
        "cuda": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else None,
        "python": platform.python_version(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
    }  # fmt: skip


def write(out_dir: Path, res: dict) -> str:
    """out_dir/benchmarks.json := `res`; benchmarks.md rendered from it."""
    from benchmarks.report import render

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmarks.json").write_text(json.dumps(res, indent=2, allow_nan=False) + "\n")
    (out_dir / "benchmarks.md").write_text(md := render(res))
    return md


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions (--paper-scale: a small size)")
    ap.add_argument("--paper-scale", action="store_true", help="VOC at the papers' scale, the run projected")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--skip-pipeline", action="store_true", help="keep the previous run's `dvc repro` times")
    threads = "torch intra-op threads (1: fair ratios on a shared CPU; 0: torch's default, as the stages run)"
    ap.add_argument("--threads", type=int, default=1, help=threads)
    ap.add_argument("--out-dir", type=Path, default=Path("reports"), help="where benchmarks.json/.md go")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    import torch  # here, not at the top: see the module docstring

    from benchmarks import paper, suite
    from gain.runtime.device import seed_everything, setup_runtime
    from gain.runtime.params import load_params

    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")
    rt = setup_runtime(args.device)
    seed_everything(params.seed, params.deterministic)
    command = ("python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    machine, start = machine_info(torch, rt, default_threads), time.perf_counter()
    old = json.loads(path.read_text()) if (path := args.out_dir / "benchmarks.json").is_file() else {}
    if args.paper_scale:  # the default run's figures stay
        res = {k: v for k, v in old.items() if k not in paper.KEYS}
        res |= paper.paper_scale(params, rt, quick=args.quick)
        machine["loadavg_end"] = list(os.getloadavg())
        res["paper_scale_run"] = {"command": command, "quick": args.quick, "device": rt.device.type,
                                  "machine": machine, "wall_s": time.perf_counter() - start}  # fmt: skip
    else:  # the paper-scale figures stay, and with --skip-pipeline the last pipeline timing
        keep = ("pipeline_", "noop_") if args.skip_pipeline else ()
        res = {k: v for k, v in old.items() if k in paper.KEYS or k.startswith(keep)}
        res |= {"command": command, "device": rt.device.type}
        res |= {"quick": args.quick, "machine": machine} | suite.run_sections(params, rt, args)
        res["machine"]["loadavg_end"] = list(os.getloadavg())
        res["targets"] = suite.verdicts(res)
    print(write(args.out_dir, res))
    return res


if __name__ == "__main__":
    main()
