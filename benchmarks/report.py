"""reports/benchmarks.md from the figures in reports/benchmarks.json: the default run's table against its
targets with the details behind it, and the VOC paper-scale projection when `--paper-scale` has run."""

from __future__ import annotations

from benchmarks.paper import ASSUMED, WORKLOADS

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
# The details under the table (units in the keys' names).
DETAILS = ("step_setup", "step_ms", "public_equivalence", "memory_mib", "memory_method", "seed_setup",
           "seed_equivalence", "sec_setup", "sec_step_ms", "crf_setup", "pipeline_stage_s", "pipeline_cpu_s",
           "pipeline_loadavg", "pipeline_measured_on", "noop_reran_stages")  # fmt: skip


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "skipped"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e3 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(
            f"{k} ({fmt(v)})" if isinstance(v, dict) else f"{k} {fmt(v, digits)}" for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    return str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]


def produced(command: str, m: dict, extra: str, trust: str) -> list[str]:
    """Who produced the figures where, and a warning where the machine was busy (this run adds a core or
    two by its end)."""
    start, end, n = m["loadavg_start"][0], m["loadavg_end"][0], m["cores"]
    threads = f"{m['torch_threads']} intra-op threads, torch's default {m['torch_default_threads']}"
    load = f"load average {start:.2f} at the start, {end:.2f} at the end"
    machine = f"{m['cpu']}, {n} cores, torch {m['torch']} ({threads}), CUDA: {m['cuda'] or 'none'}"
    lines = [f"Produced by `{command}` on {m['date']}: {machine}; {load}{extra}.", ""]
    if start > 0.5 * n or end > 1.25 * n:
        load = f"1-minute load average up to {max(start, end):.1f} on {n} cores, this run included"
        lines += [
            f"The machine was busy ({load}): absolute times are inflated by other processes; {trust}.",
            "",
        ]
    return lines


def render_default(res: dict) -> list[str]:
    quick = " (quick run: few repetitions)" if res["quick"] else ""
    trust = "paired ratios are the figures to trust"
    lines = produced(res["command"], res["machine"], f"; device `{res['device']}`{quick}", trust)
    lines += ["Compared variants run interleaved in the same process (order alternating each round); every "
              "ratio is the median of the per-round ratios.", ""]  # fmt: skip
    verdict = {True: "pass", False: "**FAIL**", None: "n/a"}
    rows = [[f"`{k}`", res.get(k), unit, t["target"] if (t := res["targets"].get(k)) else "-",
             verdict[t["pass"]] if t else "info", what] for k, unit, what in FIGURES]  # fmt: skip
    lines += table(["figure", "value", "unit", "target", "result", "what"], rows) + ["", "### Details", ""]
    lines += [f"- `{k}`: {fmt(res[k])}" for k in DETAILS if res.get(k) is not None]
    crf, setup = res["crf_per_s"], res["crf_setup"]
    lines += [
        "",
        "Training CRFs per second by backend (pydensecrf inline, in N processes, the exact CRF):",
        "",
    ]
    rows = [[f"{c} ({setup[c]['images']})", *crf[c].values()] for c in crf]
    return lines + table(["grid x classes (images per call)", *next(iter(crf.values()))], rows)


def render_paper(res: dict) -> list[str]:
    run, st, m, est = (
        res[k] for k in ("paper_scale_run", "paper_scale_setup", "paper_scale_measured", "gpu_estimate")
    )
    on = f"; measured on **{res['gpu_name'] or 'the CPU'}** in {run['wall_s']:.0f} s"
    on += "" if res["gpu_measured"] else " (gpu_measured: false)"
    lines = produced(run["command"], run["machine"], on, "rerun on a quiet machine for figures to quote")
    how = "How each step is projected from counted FLOPs (`flops`: GFLOPs of one forward pass): benchmarks/paper.py."
    lines += [how, "", f"Setting: {fmt({k: v for k, v in st.items() if k != 'paper'})}.", ""]
    hours, gpu = res["voc_stage_hours"], est["stage_hours"] if est else {}
    rows = [[k, f"{steps:,} x {n}", hours[k], gpu.get(k, "-")] for k, (steps, n, *_) in WORKLOADS.items()]
    for k, v in res["voc_paper_scale_hours"].items():
        rows.append([f"**total, GAIN as {k}**", "", v, est["total_hours"] if est and k in gpu else ""])
    lines += table(["stage", "steps x images", "projected hours here", "GPU estimate hours"], rows) + [""]
    header = ["seconds per step", "data", "network", "CRF / post-processing", "step", "data hidden"]
    keys = ("data", "forward_backward", "crf", "step", "data_hidden")
    lines += table(header, [[k, *(v[c] for c in keys)] for k, v in res["voc_step_split_s"].items()])
    per = {k: 1e3 * v for k, v in m["seconds_per_image"].items()}
    timed = (
        f"Timed here, ms per image: {fmt(per)}. SEC's training CRFs (41 x 41 x 21, 15 per call) per second "
        f"in-line, by processes and exact: {fmt(m['crf41_per_s'])}. CRF processes, `crf_sizing`: "
        f"{fmt(res['crf_sizing'])}. torchrun on N GPUs, hours (GAIN batched; GAIN and SEC split the images "
        f"over the ranks at {ASSUMED['ddp_efficiency']:.0%} of the per-GPU throughput, seeds and evaluation in one "
        f"process; the learning rates need retuning): {fmt(res['voc_multi_gpu_hours'])}."
    )
    lines += ["", timed]
    if est:
        a, by = est["assumed"], est["sec_hours_by_crf"]
        estimate = (
            f"**Estimate, not a measurement** (no GPU here): one {a['gpu']} GPU at an assumed "
            f"{a['sustained_tflops']:g} TFLOP/s sustained with {a['host_cores']} host cores and the CPU costs "
            "timed here; GAIN at batch 1 is latency-bound and not estimated. SEC's training CRF exact on the GPU "
            f"(auto's choice on CUDA) takes {1e3 * est['sec_crf_exact_gpu_s']:.1f} ms per step from its counted "
            f"FLOPs at {a['fp32_tflops']:g} TFLOP/s in float32, beside {1e3 * est['sec_step_gpu_s']:.1f} ms of "
            f"network: SEC {fmt(by['exact'])} h; with the lattice in {a['host_cores'] - 1} CPU processes, "
            f"{fmt(by['lattice'])} h."
        )
        lines += ["", estimate]
    return lines


def render(res: dict) -> str:
    lines = ["# Benchmarks", ""]
    if "step_ms" in res:
        lines += ["## At params.yaml's settings (`python -m benchmarks.run`)", "", *render_default(res), ""]
    if "voc_paper_scale_hours" in res:
        title = "## VOC 2012 at the papers' scale (`python -m benchmarks.run --paper-scale`)"
        lines += [title, "", *render_paper(res), ""]
    return "\n".join(lines)
