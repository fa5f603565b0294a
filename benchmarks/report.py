"""reports/benchmarks.md from the figures in reports/benchmarks.json: the default run's table against its
targets, and the VOC paper-scale projection when `--paper-scale` has run. The other figures follow by key,
each as the function that measures it (benchmarks.suite, .paper) names it; per-round times stay in the JSON."""

from __future__ import annotations

from benchmarks.paper import KEYS, WORKLOADS

FIGURES = [  # (key, unit, what)
    ("gain_step_over_plain", "x", "GAIN step / plain classifier step"),
    ("gain_step_over_floor", "", "that ratio / ((1 + mean labels per image) x 1.1)"),
    ("speedup_vs_public_pass_structure", "x", "public pass structure / ours (both detached weights)"),
    ("speedup_vs_public_differentiable", "x", "public pass structure / ours with differentiable weights"),
    ("gain_memory_over_plain", "x", "peak step memory, GAIN / plain"),
    ("public_memory_over_plain", "x", "peak step memory, public / plain"),
    ("seed_images_per_s", "img/s", "seed extraction, all classes of a batch in one pass"),
    ("seed_batched_speedup", "x", "one pass per class / one pass per batch"),
    ("crf_pool_speedup", "x", "SEC step with the CRF inline / with the CRF pool"),
    ("sec_exact_over_inline", "x", "SEC step with the exact CRF / with the lattice CRF inline"),
    ("sec_exact_over_pool", "x", "SEC step with the exact CRF / with the lattice CRF pool"),
    ("eval_mpix_per_s", "Mpx/s", "ConfusionMatrix.update"),
    ("pipeline_wall_s", "s", "default `dvc repro` from a clean copy"),
    ("noop_repro_s", "s", "no-op `dvc repro` right after"),
]
PAPER_SHOWN = {"voc_stage_hours", "voc_paper_scale_hours", "voc_step_split_s", "gpu_estimate", "paper_scale_run",
               "gpu_measured", "gpu_name"}  # fmt: skip
SHOWN = {"command", "device", "quick", "machine", "targets", *(k for k, *_ in FIGURES)}
HOW = ("Each step costs its network FLOPs (counted; `flops`: GFLOPs of one forward pass) at the rate of the "
       "library's VGG16 steps timed here, or at the GPU rate assumed below, plus the work on its path (CRF, "
       "seed post-processing), beside the CPU work it needs (in-line it adds to the step, with loader workers "
       "it overlaps): `project` in benchmarks/paper.py.")  # fmt: skip


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "skipped"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e3 else f"{value:,.0f}"
    if isinstance(value, dict):
        items = ((k, v) for k, v in value.items() if not k.startswith("raw"))
        return ", ".join(
            f"{k} ({fmt(v)})" if isinstance(v, dict) else f"{k} {fmt(v, digits)}" for k, v in items
        )
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    return str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]


def details(res: dict, keys) -> list[str]:
    return ["### Details", "", *(f"- `{k}`: {fmt(res[k])}" for k in keys if not k.startswith("raw"))]


def produced(command: str, m: dict, extra: str, trust: str) -> list[str]:
    """Who produced the figures where, and a warning where the machine was busy (this run adds a core or
    two by its end)."""
    start, end, n = m["loadavg_start"][0], m["loadavg_end"][0], m["cores"]
    threads = f"{m['torch_threads']} intra-op threads, torch's default {m['torch_default_threads']}"
    machine = f"{m['cpu']}, {n} cores, torch {m['torch']} ({threads}), CUDA: {m['cuda'] or 'none'}"
    load = f"load average {start:.2f} at the start, {end:.2f} at the end"
    lines = [f"Produced by `{command}` on {m['date']}: {machine}; {load}{extra}.", ""]
    if start > 0.5 * n or end > 1.25 * n:
        lines += [f"The machine was busy (load average up to {max(start, end):.1f} on {n} cores, this run "
                  f"included): absolute times are inflated by other processes; {trust}.", ""]  # fmt: skip
    return lines


def render_default(res: dict) -> list[str]:
    quick = " (quick run: few repetitions)" if res["quick"] else ""
    lines = produced(res["command"], res["machine"], f"; device `{res['device']}`{quick}",
                     "paired ratios are the figures to trust")  # fmt: skip
    lines += ["Compared variants run interleaved in the same process (order alternating each round); every "
              "ratio is the median of the per-round ratios.", ""]  # fmt: skip
    verdict = {True: "pass", False: "**FAIL**", None: "n/a"}
    rows = [[f"`{k}`", res.get(k), unit, t["target"] if (t := res["targets"].get(k)) else "-",
             verdict[t["pass"]] if t else "info", what] for k, unit, what in FIGURES]  # fmt: skip
    rest = [k for k in res if k not in SHOWN and k not in KEYS]
    lines += table(["figure", "value", "unit", "target", "result", "what"], rows)
    return lines + ["", *details(res, rest)]


def render_paper(res: dict) -> list[str]:
    run, est = res["paper_scale_run"], res["gpu_estimate"]
    on = f"; measured on **{res['gpu_name'] or 'the CPU'}** in {run['wall_s']:.0f} s"
    on += "" if res["gpu_measured"] else " (gpu_measured: false)"
    lines = produced(run["command"], run["machine"], on, "rerun on a quiet machine for figures to quote")
    hours, gpu = res["voc_stage_hours"], est["stage_hours"] if est else {}
    rows = [[k, f"{steps:,} x {n}", hours[k], gpu.get(k, "-")] for k, (steps, n, *_) in WORKLOADS.items()]
    for k, v in res["voc_paper_scale_hours"].items():
        rows.append([f"**total, GAIN as {k}**", "", v, est["total_hours"] if est and k in gpu else ""])
    header = ["stage", "steps x images", "projected hours here", "GPU estimate hours"]
    lines += [HOW, "", *table(header, rows)]
    header = ["seconds per step", "data", "network", "CRF / post-processing", "step", "data hidden"]
    keys = ("data", "forward_backward", "crf", "step", "data_hidden")
    lines += ["", *table(header, [[k, *(v[c] for c in keys)] for k, v in res["voc_step_split_s"].items()])]
    if est:
        lines += ["", "**Estimate, not a measurement** (no GPU here), from counted FLOPs and the CPU costs timed "
                  f"here; GAIN at batch 1 is latency-bound and not estimated: {fmt(est)}."]  # fmt: skip
    rest = [k for k in KEYS if k in res and k not in PAPER_SHOWN]
    return lines + ["", *details(res, rest)]


def render(res: dict) -> str:
    lines = ["# Benchmarks", ""]
    if "step_ms" in res:
        lines += ["## At params.yaml's settings (`python -m benchmarks.run`)", "", *render_default(res), ""]
    if "voc_paper_scale_hours" in res:
        title = "## VOC 2012 at the papers' scale (`python -m benchmarks.run --paper-scale`)"
        lines += [title, "", *render_paper(res), ""]
    return "\n".join(lines)
