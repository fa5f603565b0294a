"""`python -m gain.study`: the method study (Grad-CAM, GAIN, GAIN_ext over seeds, SEC's loss ablation) or, with
--holdout, knob variants scored on held-out training ids; writes reports/study/."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from gain.data.dataset import DatasetIndex
from gain.runtime.io import read_json, write_json
from gain.runtime.params import parse_params, read_yaml
from gain.study.report import save_figures, write_study_md
from gain.study.runner import (
    ABLATIONS,
    FULL_SEC,
    METHODS,
    STUDY_RUNTIME,
    TINY,
    Job,
    aggregate,
    history_table,
    job_dir,
    prepare_study_data,
    run_jobs,
    set_dotted,
    summarise,
)

HELDOUT_FRACTION = 0.2


def parse_overrides(items: list[str]) -> dict[str, object]:
    """["gain.sigma=0.7", "sec.losses=[seed]"] -> {"gain.sigma": 0.7, "sec.losses": ["seed"]} (YAML values)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"override {item!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def command_line() -> str:
    return " ".join(["python -m gain.study", *sys.argv[1:]])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m gain.study", description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="reports/study", help="where summary.json, study.md and figures go")
    ap.add_argument(
        "--work", default="checkpoints/study", help="scratch: datasets, runs (reused when unchanged)"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--no-ablation", action="store_true", help="skip SEC's loss ablation")
    ap.add_argument("--diagnose", action="store_true", help="per-epoch erasure and part/body diagnostics")
    ap.add_argument(
        "--holdout", action="store_true", help="score variants on held-out training ids (not val)"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="with --holdout: NAME:key=value;key=value (a knob setting to compare); 'base' always runs",
    )
    ap.add_argument("--full", action="store_true", help="with --holdout: also seeds and SEC, not GAIN alone")
    ap.add_argument("--set", action="append", default=[], help="key=value override for every run")
    ap.add_argument("--tiny", action="store_true", help="a tiny dataset and schedule (tests)")
    ap.add_argument("--workers", type=int, default=2, help="parallel run processes (0: in this process)")
    ap.add_argument("--report-only", action="store_true", help="rewrite study.md and figures from --out")
    return ap.parse_args(argv)


def base_raw(args: argparse.Namespace) -> dict:
    overrides = {**STUDY_RUNTIME, **(TINY if args.tiny else {}), **parse_overrides(args.set)}
    raw = set_dotted(read_yaml(args.params), overrides)
    parse_params(raw)  # fail before any work
    return raw


def method_jobs(args, raw: dict, index_path: Path, work: Path) -> list[Job]:
    jobs = []
    for method in args.methods:
        for seed in args.seeds:
            r = set_dotted(raw, {**METHODS[method], "seed": seed})
            stages = ("gain", "seeds", "sec")
            name = f"{method}-s{seed}"
            jobs.append(
                Job(name, "methods", method, seed, r, str(index_path),
                    str(job_dir(work, name, r, stages, 0.0, args.diagnose)), stages, diagnose=args.diagnose)
            )  # fmt: skip
    if "gain" in args.methods and not args.no_ablation:
        for abl, losses in ABLATIONS.items():
            if abl == FULL_SEC:
                continue  # the GAIN method's own SEC run
            for seed in args.seeds:
                src = next(j for j in jobs if j.key == "gain" and j.seed == seed)
                r = set_dotted(src.raw, {"sec.losses": losses})
                name = f"ablation-{abl}-s{seed}"
                d = job_dir(work, name, {"r": r, "source": src.run_dir}, ("sec",), 0.0, False)
                jobs.append(
                    Job(name, "ablation", abl, seed, r, str(index_path), str(d), ("sec",),
                        source=src.run_dir, after=src.name)
                )  # fmt: skip
    return jobs


def study(args, raw: dict, out: Path, work: Path) -> None:
    index_path = prepare_study_data(raw, work)
    jobs = method_jobs(args, raw, index_path, work)
    cached = sum((Path(j.run_dir) / "result.json").is_file() for j in jobs)
    start = time.perf_counter()
    results = run_jobs(jobs, args.workers)
    wall = time.perf_counter() - start
    for r in [r for r in results if r["group"] == "methods" and r["key"] == "gain"]:
        if "gain" in args.methods and not args.no_ablation:
            results.append({**r, "group": "ablation", "key": FULL_SEC})
    summary = summarise(results, args.seeds)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    timing = {"command": command_line(), "wall_s": wall, "workers": args.workers, "n_runs": len(jobs), "cached": cached, "seeds": args.seeds,
              "run_seconds": {r["name"]: r["seconds"] for r in results if r["group"] != "ablation" or
                              r["key"] != FULL_SEC}}  # fmt: skip
    write_json(out / "timing.json", timing)
    write_json(out / "history.json", history_table(results))
    models = {
        j.key: Path(j.run_dir) / "gain.pt" for j in jobs if j.group == "methods" and j.seed == args.seeds[0]
    }
    write_json(out / "models.json", {k: str(v) for k, v in models.items()})
    print(
        f"study: {len(jobs)} runs ({cached} reused) in {wall / 60:.1f} min wall time with {args.workers} workers"
    )
    report(args, out, DatasetIndex.load(index_path))


def merge_heldout(record: dict, results: list[dict], extra: dict[str, dict]) -> dict:
    """heldout.json with finished runs merged in, per variant and seed: a run replaces the earlier value of its
    own seed, other seeds of the variant are kept (so a sweep over one seed adds to a variant measured on
    more); a variant whose overrides changed starts afresh. extra: variant key -> its overrides."""
    record = {**record, "variants": dict(record["variants"]), "history": list(record["history"])}
    for key in dict.fromkeys(r["key"] for r in results):
        overrides = json.dumps(extra[key])
        runs = [r for r in results if r["key"] == key]
        redone = {r["seed"] for r in runs}
        old = record["variants"].get(key)
        per_seed: dict[int, dict[str, float]] = {}
        if old is not None and old["overrides"] == overrides:
            for i, seed in enumerate(old["seeds"]):
                if seed not in redone:
                    per_seed[seed] = {m: agg["values"][i] for m, agg in old["metrics"].items()}
        kept = set(per_seed)
        record["history"] = [h for h in record["history"] if h["key"] != key or h["seed"] in kept]
        record["history"] += history_table(runs)
        for r in runs:
            per_seed[r["seed"]] = {m: v for m, v in r["metrics"].items() if m != "history"}
        seeds = sorted(per_seed)
        names = [m for m in per_seed[seeds[0]] if all(m in per_seed[s] for s in seeds)]
        record["variants"][key] = {
            "overrides": overrides,
            "seeds": seeds,
            "metrics": {m: aggregate([per_seed[s][m] for s in seeds]) for m in names},
        }
    return record


def heldout(args, raw: dict, out: Path, work: Path) -> None:
    index_path = prepare_study_data(raw, work)
    data_seed = int(raw["seed"])
    sets = parse_overrides(args.set)
    variants = {"base": {}}
    for v in args.variant:
        name, _, spec = v.partition(":")
        variants[name] = parse_overrides([s for s in spec.split(";") if s.strip()])
    stages = ("gain", "seeds", "sec") if args.full else ("gain",)
    jobs = []
    for vname, ov in variants.items():
        for method in args.methods:
            for seed in args.seeds:
                r = set_dotted(raw, {**METHODS[method], **ov, "seed": seed})
                name = f"heldout-{method}-{vname}-s{seed}"
                d = job_dir(work, name, r, stages, HELDOUT_FRACTION, True)
                jobs.append(
                    Job(name, "variants", f"{method}/{vname}", seed, r, str(index_path), str(d), stages,
                        diagnose=True, holdout=HELDOUT_FRACTION, data_seed=data_seed, extra=ov)
                )  # fmt: skip
    path = out / "heldout.json"
    extra = {j.key: {**sets, **j.extra} for j in jobs}  # what differs from params.yaml, --set included

    def record_results(results: list[dict]) -> None:
        """Merge the finished runs into heldout.json (written after every run: a long sweep cut short keeps
        what finished)."""
        record = (
            read_json(path)
            if path.is_file()
            else {"fraction": HELDOUT_FRACTION, "variants": {}, "history": []}
        )
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, merge_heldout(record, results, extra))

    start = time.perf_counter()
    run_jobs(jobs, args.workers, on_done=record_results)
    print(f"heldout: {len(jobs)} runs in {(time.perf_counter() - start) / 60:.1f} min")
    for key, v in read_json(path)["variants"].items():
        print(f"heldout {key:40s} attention mIoU {v['metrics']['attention_miou']['mean']:.3f} "
              f"± {v['metrics']['attention_miou']['std']:.3f}")  # fmt: skip


def report(args, out: Path, index: DatasetIndex) -> None:
    summary = read_json(out / "summary.json")
    timing = read_json(out / "timing.json") if (out / "timing.json").is_file() else {}
    held = read_json(out / "heldout.json") if (out / "heldout.json").is_file() else {}
    findings = (out / "findings.md").read_text() if (out / "findings.md").is_file() else ""
    history = read_json(out / "history.json") if (out / "history.json").is_file() else []
    models = {k: Path(v) for k, v in read_json(out / "models.json").items()}
    if all(p.is_file() for p in models.values()):
        save_figures(out, models, index, history)
    command = timing.get("command", command_line())
    write_study_md(
        out / "study.md", summary=summary, timing=timing, heldout=held, findings=findings, command=command
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    raw = base_raw(args)
    if args.report_only:
        index = DatasetIndex.load(prepare_study_data(raw, work))
        report(args, out, index)
    elif args.holdout:
        heldout(args, raw, out, work)
    else:
        study(args, raw, out, work)


if __name__ == "__main__":
    main()
