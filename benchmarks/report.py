"""reports/benchmarks.md from the figures in reports/benchmarks.json: the default run's table against its
targets, and the VOC paper-scale projection when `--paper-scale` has run."""

from __future__ import annotations

from benchmarks.paper import ASSUMED, BATCHED_GAIN, PAPER

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


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "skipped"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def fmt_hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]


def busy_note(m: dict, trust: str = "paired ratios are the figures to trust") -> list[str]:
    load = max(m["loadavg_start"][0], m["loadavg_end"][0])
    if m["loadavg_start"][0] <= 0.5 * m["cores"] and m["loadavg_end"][0] <= 1.25 * m["cores"]:
        return []  # this run itself adds up to a core or two by its end
    return [
        f"The machine was busy (1-minute load average up to {load:.1f} on {m['cores']} cores, this run "
        f"included): absolute times are inflated by other processes; {trust}.",
        "",
    ]


def render_default(res: dict) -> list[str]:
    m, s = res["machine"], res["step_setup"]
    lines = [
        f"Produced by `{res['command']}` on {m['date']}: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} intra-op threads, torch's default {m['torch_default_threads']}), CUDA: "
        f"{m['cuda'] or 'none'}; device `{res['device']}`; load average {m['loadavg_start'][0]:.2f} at the start, "
        f"{m['loadavg_end'][0]:.2f} at the end{' (quick run: few repetitions)' if res['quick'] else ''}.",
        "",
        "Compared variants run interleaved in the same process (order alternating each round); every ratio is "
        "the median of the per-round ratios.",
        "",
        *busy_note(m),
    ]
    rows = []
    for key, unit, what in FIGURES:
        t = res["targets"].get(key)
        verdict = "info" if not t else {True: "pass", False: "**FAIL**", None: "n/a"}[t["pass"]]
        rows.append([f"`{key}`", res.get(key), unit, t["target"] if t else "-", verdict, what])
    lines += table(["figure", "value", "unit", "target", "result", "what"], rows)
    lines += ["", f"### Training steps (batch {s['batch_size']}, input {s['input_size']}, {s['backbone']} backbone, "
              f"{s['num_fg']} classes, {res['mean_labels_per_image']:.3g} labels per image, {s['class_ranks']} class ranks)", ""]  # fmt: skip
    lines += table(["variant", "median ms/step"], [[k, v] for k, v in res["step_ms"].items()])
    if res.get("plain_step_ms_by_threads"):
        by = ", ".join(f"{k} thread(s) {v:.1f} ms" for k, v in res["plain_step_ms_by_threads"].items())
        lines += ["", f"Plain step by intra-op threads (interleaved): {by}."]
    eq, se, ss = res["public_equivalence"], res["seed_equivalence"], res["sec_setup"]
    lines += [
        "",
        "gain: gain.cam.train.gain_step_losses (grad_weights "
        f"{s['grad_weights']}); gain_detached: the same with detached weights; plain: its classification stream "
        "alone; public: a full backward per class rank with a feature hook, then the masked forward and the real "
        f"backward. public vs gain_detached on the same weights: loss differs by {eq['loss_abs_diff']:.2g}, "
        f"gradients by {eq['grad_max_abs_diff_rel']:.2g} (relative to the largest).",
        "",
        f"Peak step memory ({res['memory_method']}): "
        + ", ".join(f"{k} {v:.1f} MiB" for k, v in res["memory_mib"].items())
        + ".",
        "",
        f"Seed extraction ({res['seed_setup']['images']} images, batch {res['seed_setup']['batch_size']}): "
        f"{fmt(res['seed_images_per_s'])} img/s with gain.seeds.extract.image_attention, "
        f"{fmt(res['seed_per_class_images_per_s'])} img/s with one attention_maps call per class; same classes "
        f"{se['same_classes']}, max abs difference {se['max_abs_diff']:.2g}.",
        "",
        f"SEC step (batch {ss['batch_size']}, input {ss['input_size']}, CRF scale {ss['crf_scale']:g}): "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in res["sec_step_ms"].items())
        + f" (pool: {ss['crf_workers']} processes; exact: gain.sec.crf_exact on `{res['device']}`). The training "
        "CRF alone, CRFs per second by backend (pydensecrf inline, in N processes, the exact CRF batched):",
        "",
    ]
    crf = res["crf_per_s"]
    backends = list(next(iter(crf.values())))
    lines += table(["grid x classes (images per call)", *backends],
                   [[f"{c} ({res['crf_setup'][c]['images']})", *crf[c].values()] for c in crf])  # fmt: skip
    if res.get("pipeline_stage_s"):
        kept = (
            f" (measured on {res['pipeline_measured_on']}, not re-run)"
            if res.get("pipeline_measured_on")
            else ""
        )
        lines += ["", f"Pipeline{kept}: {res['pipeline_wall_s']:.1f} s wall, {res['pipeline_cpu_s']:.1f} s CPU; load average "
                  f"{res['pipeline_loadavg'][0]:.2f} -> {res['pipeline_loadavg'][1]:.2f}; by stage: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in res["pipeline_stage_s"].items())
                  + (f". The no-op repro re-ran {res['noop_reran_stages']}" if res.get("noop_reran_stages") else "") + "."]  # fmt: skip
    if res.get("profile"):
        lines += [
            "",
            "Profile (torch.profiler, self time per step; shown when a step target is missed or on --profile):",
            "",
        ]
        lines += table(["variant", "ms/step", "conv fwd/step", "conv bwd/step", "top ops (ms)"], [
            [k, p["total_ms_per_step"], p["conv_forward_per_step"], p["conv_backward_per_step"],
             "; ".join(f"{o} {t:.1f}" for o, t in sorted(p["ms_by_op"].items(), key=lambda kv: -kv[1])[:4])]
            for k, p in res["profile"].items()])  # fmt: skip
    return lines


def render_paper(res: dict) -> list[str]:
    run, st, m = res["paper_scale_run"], res["paper_scale_setup"], res["paper_scale_measured"]
    hours, split, crf = res["voc_stage_hours"], res["voc_step_split_s"], res["crf_sizing"]
    on = (
        res["gpu_name"]
        if res["gpu_measured"]
        else f"{run['machine']['cpu']} (CPU, {run['machine']['cores']} cores)"
    )
    n, bb = PAPER["train_images"], f"gain_batch_{BATCHED_GAIN}"
    size = st["input_size"]
    lines = [
        f"Produced by `{run['command']}` on {run['machine']['date']} in {run['wall_s']:.0f} s. Measured on **{on}**"
        f"{'' if res['gpu_measured'] else ' (gpu_measured: false: no GPU)'}: VGG16 at {size} x {size}"
        + (f" (quick: scaled to 321 by counted FLOPs, x{st['flops']['classifier_gflops_321'] / st['flops']['classifier_gflops_measured']:.1f})" if size != 321 else "")
        + f", random weights, bf16 autocast {st['amp_bf16']}, channels_last {st['channels_last']}, deterministic "
        f"{st['deterministic']}, {st['loader_workers']} DataLoader workers, {st['crf_processes']} CRF processes"
        + (f" (params.yaml's runtime.crf_workers is {st['crf_workers_configured']}: set it to {st['crf_processes']} on this machine)"
           if st["crf_processes"] != st["crf_workers_configured"] else "")
        + "; "
        f"timed rounds: {st['step_rounds']} of each step, {st['rounds']} of each pass over several images, after "
        f"{st['warmup']} warm-up.",
        "",
        *busy_note(run["machine"], "rerun on a quiet machine for figures to quote"),
    ]  # fmt: skip
    scaled = "" if res["gpu_measured"] else f" (measured at batch {st['gain_batch']}, scaled linearly)"
    sec_note = (
        ""
        if st["sec_batch"] == PAPER["sec_batch"]
        else f" (network measured at batch {st['sec_batch']}, scaled linearly; CRFs as measured for 15)"
    )
    lines += table(["stage", "papers' count", "setting", "projected hours"], [
        ["GAIN, paper", f"{PAPER['gain_epochs']} epochs x {n:,} images, batch 1", "1.5 labels per image", fmt_hours(hours["gain_batch_1"])],
        ["GAIN, batched", f"{PAPER['gain_epochs']} x {n // BATCHED_GAIN:,} steps of {BATCHED_GAIN}", f"label pattern {list(st['label_pattern'])}{scaled}", fmt_hours(hours[bb])],
        ["seeds", f"{n:,} images at 321", f"extract_seeds, batch {st['seeds_batch']}, flip", fmt_hours(hours["seeds"])],
        ["SEC", f"{PAPER['sec_iterations']:,} iterations x 15", f"41 x 41 x 21 CRF per image{sec_note}", fmt_hours(hours["sec"])],
        ["evaluate", f"{PAPER['val_images']:,} val images", "full-resolution CRF (s = 1) beside inference", fmt_hours(hours["evaluate"])],
        ["**total, GAIN at batch 1**", "", "", "**" + fmt_hours(res["voc_paper_scale_hours"]["gain_batch_1"]) + "**"],
        [f"**total, GAIN at batch {BATCHED_GAIN}**", "", "", "**" + fmt_hours(res["voc_paper_scale_hours"][bb]) + "**"],
    ])  # fmt: skip
    lines += ["", "Step time split (seconds per step at the projected sizes; data: the loader's time for one batch "
              "with the workers above, overlapped with the step when there are workers):", ""]  # fmt: skip
    lines += table(["step", "data", "forward-backward", "CRF", "step", "data hidden"],
                   [[k, v["data"], v["forward_backward"], v["crf"], v["step"], v["data_hidden"]] for k, v in split.items()])  # fmt: skip
    e = m["eval_s"]
    lines += [
        "",
        "Measured: GAIN step "
        + ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in m["gain_step_s"].items())
        + "; seeds "
        + ", ".join(f"{k} {1e3 * v:.0f} ms/image" for k, v in m["seeds_s_per_image"].items())
        + "; SEC step (output "
        + "x".join(map(str, m["sec_output"]))
        + ") "
        + ", ".join(f"{k} {1e3 * v:.0f} ms (CRF {1e3 * m['sec_crf_s'][k]:.0f} ms)" for k, v in m["sec_step_s"].items())
        + "; decoding + training preset at 321: "
        + ", ".join(f"{k} {v:.0f} img/s" for k, v in m["decode_images_per_s"].items())
        + ".",
        "",
        "CRFs of 41 x 41 x 21 (s = 12), 15 per call: "
        + ", ".join(f"{k} {v:.1f}" for k, v in m["crf41_per_s"].items())
        + " CRFs/s by processes. Evaluation of "
        f"{st['eval_images']} images of {m['eval_image_size'][1]} x {m['eval_image_size'][0]} with "
        f"{m['eval_crf_processes']} CRF processes: inference {e['inference']:.2f} s, inference + CRF "
        f"{e['inference_and_crf']:.2f} s, the CRFs alone {e['crf_only']:.2f} s, one full-resolution CRF in-line "
        f"{e['crf_one_inline']:.2f} s; overlap {m['eval_crf_overlap']:.2f} (1: the shorter part hides entirely "
        "behind the longer, 0: they run one after the other).",
        "",
        f"Lattice CRF pool sizing: {crf['crf41_per_s_per_process']:.0f} CRFs/s of 41 x 41 per process, so SEC's 15 CRFs per "
        f"step fit in one {'measured' if res['gpu_measured'] else 'estimated (below)'} GPU forward-backward with "
        f"{crf['sec_processes_needed']} processes"
        + (" (more than 15: CRF-bound even with one CRF per process)" if crf["sec_crf_bound_even_at_15"] else "")
        + "; the exact CRF (`sec.train_crf: exact`, auto's choice on CUDA) runs on the GPU and needs none"
        + f"; a full-resolution CRF takes {crf['crf_full_s_per_crf']:.2f} s, so evaluation keeps up with "
        f"inference with {crf['eval_processes_needed']} process(es).",
    ]  # fmt: skip
    if res["gpu_utilisation"]:
        lines += ["", "GPU utilisation while each part ran (sampled every 0.2 s):", ""]
        lines += table(["part", "mean %", "max %", "samples"], [[k, v["mean_pct"], v["max_pct"], v["samples"]] for k, v in res["gpu_utilisation"].items() if v])  # fmt: skip
    est = res["gpu_estimate"]
    if est:
        a = est["assumed"]
        lines += ["", f"**Estimate, not a measurement** (no GPU here): one {a['gpu']} GPU at an assumed "
                  f"{a['sustained_tflops']:g} TFLOP/s sustained and {a['host_cores']} host cores, with the CPU-side "
                  "costs (decoding, CRFs, seed post-processing) measured on this CPU; GAIN at batch 1 is latency-bound "
                  "and not estimated:", ""]  # fmt: skip
        lines += table(["stage", "estimated hours"], [[k, fmt_hours(v)] for k, v in est["stage_hours"].items()] + [["**total**", fmt_hours(est["total_hours"])]])  # fmt: skip
        by = est.get("sec_hours_by_crf")  # absent from runs before the exact CRF
        lines += [] if by is None else ["", f"SEC's training CRF in this estimate: exact on the GPU (`sec.train_crf: auto` on CUDA), "
                  f"{1e3 * est['sec_crf_exact_gpu_s']:.1f} ms per step of 15 from its counted FLOPs at an assumed "
                  f"{a['fp32_tflops']:g} TFLOP/s in float32, beside {1e3 * est['sec_step_gpu_s']:.1f} ms of network: "
                  f"SEC {fmt_hours(by['exact'])} h; with the lattice in {a['host_cores'] - 1} CPU processes instead, "
                  f"{fmt_hours(by['lattice'])} h."]  # fmt: skip
    lines += [
        "",
        f"torchrun on N GPUs ({'measured' if res['gpu_measured'] else 'estimated'} hours above, GAIN at batch "
        f"{BATCHED_GAIN}): "
        + ", ".join(f"{k}: {v:.2f} h" for k, v in res["voc_multi_gpu_hours"].items())
        + f". Assumes GAIN and SEC keep their per-rank batch and split the papers' image count over the ranks "
        f"(global batch N x {BATCHED_GAIN} and N x 15: the learning rates need retuning), {ASSUMED['ddp_efficiency']:.0%} "
        "of the per-GPU throughput kept (DDP all-reduce), each GPU with as many CPU cores as one has (the auto "
        "DataLoader workers divide the cores by the local ranks; each rank has its own CRF pool), and seeds and "
        "evaluation in one process as today.",
    ]  # fmt: skip
    return lines


def render(res: dict) -> str:
    lines = ["# Benchmarks", ""]
    if "step_ms" in res:
        lines += ["## At params.yaml's settings (`python -m benchmarks.run`)", "", *render_default(res), ""]
    if "voc_paper_scale_hours" in res:
        lines += [
            "## VOC 2012 at the papers' scale (`python -m benchmarks.run --paper-scale`)",
            "",
            *render_paper(res),
            "",
        ]
    return "\n".join(lines)
