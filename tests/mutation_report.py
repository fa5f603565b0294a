"""reports/mutation.md from mutmut's results in mutants/: kill rate per module, every surviving mutant's diff,
and why each one left alive is equivalent (EQUIVALENT below); `make mutation` runs mutmut, then this.

    python -m tests.mutation_report [MUTANTS_DIR] > reports/mutation.md
"""

from __future__ import annotations

import ast
import difflib
import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# mutmut's exit codes of a mutant's test run (mutmut/__main__.py status_by_exit_code).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          35: "suspicious", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", None: "not checked"}  # fmt: skip
# A timeout or a crash under a mutant is a detected change, as mutmut counts it.
DETECTED = {"killed", "timeout", "segfault"}

# Survivors that no test can kill because the mutant computes the same thing on every input the code can
# receive, with the reason. Keys: mutmut's mutant names (stable while the function is unchanged).
_COUNTS_FLOAT = "counts held as float64 instead of int64: exact below 2**53 pixels, the same ratios and sums"
_NAN_CASE = '"NAN" parses to the same float nan'
_RATIO_NUM_LE_DEN = (
    "every ratio has 0 <= numerator <= denominator, so a zero denominator gives numpy's 0/0 = nan either way"
)
_EMPTY_MEAN = (
    "the mean of an empty selection is numpy's nan (with a RuntimeWarning), the value of the else branch"
)
_PEAK_INITIAL = (
    "attention is validated into [0, 1], so max(.., initial=0) equals the plain max; they differ only for a map "
    "with zero pixels, which no image has"
)
_FLOAT_IN = (
    "the callers pass float arrays, and the division writes into a float64 output, so the dtype is the same"
)
_SAME_SHAPE = (
    "numerator and denominator have the same shape at every call site, so the broadcast shape is either's"
)
_TIES = (
    "tied scores form one threshold (cut at the last of each run), so the order within a tie does not matter"
)
_MINMAX_INITIAL = (
    "min(x, 1) < 0 exactly when min(x) < 0 and max(x, 1) > 1 exactly when max(x) > 1 (and None only differs "
    "from 0 on an empty array, checked by the empty-input test for the other side)"
)
_INT_CLASSES = (
    "every call site passes integer class indices: any integer dtype gives the same checks and the same uint8 "
    "labels as int64"
)
_INT_EXPONENTS = "int64 exponents of a float64 base: torch.pow gives the same float64 weights"
_THREE_WEIGHTS = "weights is checked to have 3 entries above, so zip's strict check never fires"
_SAME_BATCH = (
    "the batch sizes of images and log_probs are checked equal just before, so zip's strict check never fires"
)
_CHUNKS = (
    "chunksize only groups tasks per message to a worker; starmap returns the results in order either way"
)
_F32_UNARY = "log_probs is checked to be float32, so its negation already is: the cast changes nothing"
_F32_MARGINALS = (
    "pydensecrf's inference returns float32 marginals: np.array keeps that dtype without being told"
)
# Mutants that make a tensor on the default device instead of the input's: the same on the CPU, so they
# survived while every test ran there; tests/runtime/test_device.py runs the steps with the default device set to
# meta, where such a tensor meets the CPU tensors and raises. Mutant -> the tests that kill it.
_GAIN_AND_SEEDS = (
    "tests/runtime/test_device.py::test_gain_step_makes_no_tensor_off_the_network_device (3 cases) and "
    "::test_seed_attention_and_saliency_make_no_tensor_off_the_network_device (2 cases)"
)
_SEC_STEP = (
    "tests/runtime/test_device.py::test_sec_step_with_the_exact_crf_makes_no_tensor_off_the_network_device"
)
DEVICE_KILLED: dict[str, str] = {
    "gain.cam.attention.x_grad_cam__mutmut_16": _GAIN_AND_SEEDS,
    "gain.cam.attention.x_grad_cam__mutmut_18": _GAIN_AND_SEEDS,
    "gain.sec.losses.x_gwrp__mutmut_22": _SEC_STEP,
    "gain.sec.losses.x_gwrp__mutmut_25": _SEC_STEP,
    "gain.sec.losses.x_gwrp__mutmut_33": _SEC_STEP,
    "gain.sec.losses.x_gwrp__mutmut_36": _SEC_STEP,
}
EQUIVALENT: dict[str, str] = {
    # gain/seeds/cues.py
    "gain.seeds.cues.x__check_attention__mutmut_10": "classes is a flat sequence at every call site; reshape(None) "
    "leaves a 1-D array as reshape(-1) does",
    "gain.seeds.cues.x__check_attention__mutmut_12": _INT_CLASSES,
    "gain.seeds.cues.x__check_attention__mutmut_14": _INT_CLASSES,
    "gain.seeds.cues.x__check_attention__mutmut_16": "numpy infers any negative size in reshape: reshape(-2) is "
    "reshape(-1)",
    "gain.seeds.cues.x__check_attention__mutmut_42": _PEAK_INITIAL,
    "gain.seeds.cues.x__check_attention__mutmut_44": _PEAK_INITIAL,
    "gain.seeds.cues.x_make_cues__mutmut_18": _PEAK_INITIAL,
    "gain.seeds.cues.x_make_cues__mutmut_20": _PEAK_INITIAL,
    # gain/seeds/quality.py
    # gain/evaluation/metrics.py
    "gain.evaluation.metrics.x__check_multilabel__mutmut_29": "float 0/1 labels instead of bool: the positive counts "
    "and cumulative sums are the same numbers",
    "gain.evaluation.metrics.x__divide__mutmut_3": _FLOAT_IN,
    "gain.evaluation.metrics.x__divide__mutmut_5": _FLOAT_IN,
    "gain.evaluation.metrics.x__divide__mutmut_8": _FLOAT_IN,
    "gain.evaluation.metrics.x__divide__mutmut_10": _FLOAT_IN,
    "gain.evaluation.metrics.x__divide__mutmut_16": _SAME_SHAPE,
    "gain.evaluation.metrics.x__divide__mutmut_17": _SAME_SHAPE,
    "gain.evaluation.metrics.x__divide__mutmut_18": _SAME_SHAPE,
    "gain.evaluation.metrics.x__divide__mutmut_19": _SAME_SHAPE,
    "gain.evaluation.metrics.x__divide__mutmut_27": _RATIO_NUM_LE_DEN,
    "gain.evaluation.metrics.x__nanmean__mutmut_3": _FLOAT_IN,
    "gain.evaluation.metrics.x__nanmean__mutmut_5": _FLOAT_IN,
    "gain.evaluation.metrics.x__nanmean__mutmut_10": _EMPTY_MEAN,
    "gain.evaluation.metrics.x__nanmean__mutmut_14": _NAN_CASE,
    "gain.evaluation.metrics.x__predict__mutmut_12": _MINMAX_INITIAL,
    "gain.evaluation.metrics.x__predict__mutmut_16": _MINMAX_INITIAL,
    "gain.evaluation.metrics.x_average_precision__mutmut_19": _TIES,
    "gain.evaluation.metrics.x_average_precision__mutmut_21": _TIES,
    "gain.evaluation.metrics.x_average_precision__mutmut_24": _TIES,
    "gain.evaluation.metrics.xǁConfusionMatrixǁ__init____mutmut_18": _COUNTS_FLOAT,
    "gain.evaluation.metrics.xǁConfusionMatrixǁ__init____mutmut_20": _COUNTS_FLOAT,
    # gain/cam/attention.py: attention_maps returns detached maps at the input size
    "gain.cam.attention.x_attention_maps__mutmut_5": "x is (B, 3, H, W): shape[2:] is shape[-2:]",
    "gain.cam.attention.x_attention_maps__mutmut_12": "the input joins the graph too; the maps (w.r.t. the features) "
    "are the same",
    "gain.cam.attention.x_attention_maps__mutmut_14": "requires_grad_(True) on features that already require grad "
    "changes nothing",
    "gain.cam.attention.x_attention_maps__mutmut_30": "differentiable only keeps the double-backward graph; the maps "
    "are the same and returned detached",
    "gain.cam.attention.x_attention_maps__mutmut_31": "differentiable only keeps the double-backward graph; the maps "
    "are the same and returned detached",
    "gain.cam.attention.x_attention_maps__mutmut_35": "align_corners=None is bilinear's default, False",
    "gain.cam.attention.x_attention_maps__mutmut_39": "align_corners=None is bilinear's default, False",
    "gain.cam.attention.x_attention_maps__mutmut_48": "the flip average is divided by its own max right after, so "
    "its scale cancels",
    "gain.cam.attention.x_grad_cam__mutmut_14": "rank + first is still distinct within an image (images are "
    "independent given the features): more autograd rounds, the same weights",
    "gain.cam.attention.x_grad_cam__mutmut_28": "one more round selects no pair: an empty index_put changes nothing",
    "gain.cam.attention.x_soft_mask__mutmut_5": "align_corners=None is bilinear's default, False",
    "gain.cam.attention.x_soft_mask__mutmut_9": "align_corners=None is bilinear's default, False",
    # gain/seeds/saliency.py
    "gain.seeds.saliency.x__stride__mutmut_4": "a module without a stride attribute gets None, which the next "
    "line maps to 1, the default",
    "gain.seeds.saliency.x__stride__mutmut_14": "every layer of the project's trunks strides both axes alike",
    "gain.seeds.saliency.x__stride__mutmut_16": "no layer of the project's trunks has a stride of None or 0",
    "gain.seeds.saliency.x__stride__mutmut_18": "no layer of the project's trunks has a stride of None or 0",
    "gain.seeds.saliency.x_split_trunk__mutmut_10": "_stride(None) is 1, as _stride(leaf) is for every leaf with "
    "parameters that is not a Conv2d in the project's trunks (batch norms)",
    # gain/cam/losses.py
    "gain.cam.losses.x_external_loss__mutmut_5": "only reached with no pair: the sum of an empty tensor is 0, "
    "times 1 or 0",
    "gain.cam.losses.x_attention_mining_loss__mutmut_4": "only reached with no pair: masked_logits has no row, so "
    "its sum is 0, times 1 or 0",
    # gain/sec/losses.py
    "gain.sec.losses.x_expansion_loss__mutmut_20": "labels.to(None) is labels: bool or 0/1 float labels compare "
    "with 0.5 alike",
    "gain.sec.losses.x_expansion_loss__mutmut_21": "labels are multi-hot 0/1: no label equals 0.5",
    "gain.sec.losses.x_gwrp__mutmut_21": _INT_EXPONENTS,
    "gain.sec.losses.x_gwrp__mutmut_24": _INT_EXPONENTS,
    "gain.sec.losses.x_gwrp__mutmut_43": "sort's default dim is the last one, -1",
    "gain.sec.losses.x_sec_loss__mutmut_60": _THREE_WEIGHTS,
    "gain.sec.losses.x_sec_loss__mutmut_63": _THREE_WEIGHTS,
    "gain.sec.losses.x_sec_loss__mutmut_64": _THREE_WEIGHTS,
    "gain.sec.losses.x_seeding_loss__mutmut_65": "a bool has_cues is promoted to the loss's float dtype in the "
    "product and the sum: the same numbers",
    # gain/sec/crf.py
    "gain.sec.crf.x__check_batch__mutmut_25": _SAME_BATCH,
    "gain.sec.crf.x__check_batch__mutmut_28": _SAME_BATCH,
    "gain.sec.crf.x__check_batch__mutmut_29": _SAME_BATCH,
    "gain.sec.crf.xǁCRFPoolǁsubmit__mutmut_10": _SAME_BATCH,
    "gain.sec.crf.xǁCRFPoolǁsubmit__mutmut_13": _SAME_BATCH,
    "gain.sec.crf.xǁCRFPoolǁsubmit__mutmut_14": _SAME_BATCH,
    "gain.sec.crf.xǁCRFPoolǁsubmit__mutmut_17": "a CRFResult that is already done never reads the input (it "
    "only shapes an empty batch that was pending)",
    "gain.sec.crf.xǁCRFPoolǁsubmit__mutmut_36": _CHUNKS,
    "gain.sec.crf.xǁCRFPoolǁsubmit__mutmut_39": _CHUNKS,
    "gain.sec.crf.xǁCRFPoolǁsubmit__mutmut_40": _CHUNKS,
    "gain.sec.crf.x_dense_crf__mutmut_23": _F32_UNARY,
    "gain.sec.crf.x_dense_crf__mutmut_25": _F32_UNARY,
    "gain.sec.crf.x_dense_crf__mutmut_42": _F32_MARGINALS,
    "gain.sec.crf.x_dense_crf__mutmut_44": _F32_MARGINALS,
    "gain.sec.crf.xǁCRFResultǁget__mutmut_8": "after the first get() the result is held in _done and _pending is "
    "never read again, whether None or an empty string",
}

# Planted bugs of the issue and the fast test that fails with each (verified by planting it in a copy).
PLANTED: list[tuple[str, str]] = [
    (
        "d_fg and d_bg swapped at sec_loss's call of expansion_loss (gain/sec/losses.py)",
        "tests/cam/test_steps.py::test_sec_step_sends_d_fg_to_present_classes_and_d_bg_to_background",
    ),
    (
        "d_fg and d_bg swapped at the SEC step's call of sec_loss (gain/sec/train.py)",
        "tests/cam/test_steps.py::test_sec_step_sends_d_fg_to_present_classes_and_d_bg_to_background",
    ),
    (
        "alpha ignored in the GAIN step (L_am weighted 1 whatever alpha; gain/cam/train.py)",
        "tests/cam/test_steps.py::test_gain_step_total_is_l_cl_plus_alpha_l_am",
    ),
    (
        "L_am on the wrong class (the next class's masked logit; gain/cam/losses.py)",
        "tests/cam/test_losses.py::test_attention_mining_loss_uses_each_pairs_own_class (also "
        "test_attention_mining_loss_repeated_class_and_gradient, test_gain_loss_self_total, "
        "tests/cam/test_steps.py::test_gain_step_l_am_scores_each_class_on_its_own_erased_image)",
    ),
    (
        "Grad-CAM weights summed over the cells instead of averaged (gain/cam/attention.py)",
        "tests/evaluation/test_measures.py::test_grad_cam_weights_are_averaged_over_the_cells (also the four closed-form "
        "and finite-difference Grad-CAM tests of tests/cam/test_attention.py)",
    ),
    (
        "flipped soft mask: erasing 1 - T(A) instead of T(A) (gain/cam/model.py)",
        "tests/cam/test_attention.py::test_erase_mean_is_i_minus_t_times_i (also "
        "test_erase_black_makes_attended_pixels_black)",
    ),
]


def mutated_modules(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    return tomllib.loads(pyproject.read_text())["tool"]["mutmut"]["only_mutate"]


def function_sources(path: Path) -> dict[str, str]:
    """name -> source of every function in a mutated file (originals are `<x>__mutmut_orig`)."""
    text = path.read_text()
    return {
        node.name: ast.get_source_segment(text, node)
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef)
    }


def mutant_diff(sources: dict[str, str], mutant: str) -> str:
    """The changed lines of one mutant against its original function."""
    local = mutant.rsplit(".", 1)[-1]  # x_f__mutmut_3 or xǁClassǁmethod__mutmut_3
    orig = sources.get(local.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
    new = sources.get(local)
    if orig is None or new is None:
        return "(source not found)"
    base = local.rsplit("__mutmut_", 1)[0]
    orig_lines = orig.replace(f"{base}__mutmut_orig(", "(", 1).splitlines()  # same name on both sides
    new_lines = new.replace(f"{local}(", "(", 1).splitlines()
    lines = [
        line
        for line in difflib.unified_diff(orig_lines, new_lines, lineterm="", n=0)
        if line[:1] in "-+" and not line.startswith(("---", "+++"))
    ]
    return "\n".join(lines)


def module_results(mutants_dir: Path, module: str) -> tuple[Counter, dict[str, str]]:
    """-> (count per status, survivor name -> diff) of one mutated module."""
    meta = mutants_dir / f"{module}.meta"
    if not meta.is_file():
        raise SystemExit(f"{meta} missing: run `make mutation` (mutmut run) first")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    counts = Counter(STATUS.get(code, f"exit {code}") for code in codes.values())
    sources = function_sources(mutants_dir / module)
    survivors = {
        name: mutant_diff(sources, name)
        for name, code in sorted(codes.items())
        if STATUS.get(code) == "survived"
    }
    return counts, survivors


def pct(num: int, den: int) -> str:
    return f"{100 * num / den:.1f}%" if den else "n/a"


def render(mutants_dir: Path) -> str:
    rows, sections, unexplained = [], [], []
    for module in mutated_modules():
        counts, survivors = module_results(mutants_dir, module)
        total = sum(counts.values())
        detected = sum(counts[s] for s in DETECTED)
        equivalent = sum(1 for name in survivors if name in EQUIVALENT)
        other = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()) if s not in DETECTED | {"survived"})
        rows.append(
            f"| `{module}` | {detected}/{total} | {pct(detected, total)} | {len(survivors)} | {equivalent} "
            f"| {pct(detected + equivalent, total)} | {other or '-'} |"
        )
        if survivors:
            sections.append(f"\n### `{module}`\n")
            for name, diff in survivors.items():
                reason = EQUIVALENT.get(name)
                if reason is None:
                    unexplained.append(name)
                sections.append(
                    f"- `{name}`: {reason or '**not explained: needs a test**'}\n```diff\n{diff}\n```"
                )
    out = [
        "# Mutation testing",
        "",
        "`make mutation`: mutmut (see `[tool.mutmut]` in pyproject.toml: the modules that hold the method, each "
        "mutant checked by the fast unit tests that execute its function), then `python -m tests.mutation_report`.",
        "Killed = a test failed (or timed out) under the mutant. A survivor is either killed by a new test or "
        "listed below as equivalent, with the reason.",
        "",
        "| module | killed/total | killed | survived | of which equivalent | killed + equivalent | other |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Survivors not explained: {len(unexplained)}.",
        "",
        "## Survivors",
        *(sections or ["\nNone."]),
    ]
    out += device_section()
    if PLANTED:
        out += [
            "",
            "## Planted bugs and the fast test that catches each",
            "",
            "Each bug planted in a copy of the tree, where tests/cam/test_attention.py, test_losses.py, test_steps.py, "
            "test_sec_losses.py, test_measures.py and test_models.py were run: the tests named are the ones that "
            "failed. The slow tests/study/test_quality.py also fails with the wrong-class L_am, the ignored alpha and "
            "the flipped mask (margins in its docstring).",
            "",
            "| bug | test |",
            "|---|---|",
        ]
        out += [f"| {bug} | `{test}` |" for bug, test in PLANTED]
    return "\n".join(out) + "\n"


def device_section() -> list[str]:
    """The CUDA-only mutants, once listed as equivalent, and the tests that now kill them."""
    return [
        "",
        "## Mutants that only fail on a GPU, killed without one",
        "",
        "Each makes a tensor on the default device instead of its input's. On the CPU that is the same device, "
        "so they survived while every test ran there; tests/runtime/test_device.py runs the steps with PyTorch's default "
        "device set to `meta`, where such a tensor meets the CPU tensors and raises. Re-run by name "
        "(`mutmut run <names>`) with tests/runtime/test_device.py in the selection: all killed (the table above counts them so; no other mutant was re-run). "
        "`x_gwrp__mutmut_33`/`_36` build the 0-dim base `d` off-device; CUDA would accept a 0-dim CPU tensor there "
        "as a scalar (a host-to-device copy each call), the meta check does not.",
        "",
        "| mutant | killed by |",
        "|---|---|",
        *(f"| `{name}` | `{test}` |" for name, test in DEVICE_KILLED.items()),
    ]


def main(argv: list[str]) -> None:
    mutants_dir = Path(argv[0]) if argv else REPO / "mutants"
    sys.stdout.write(render(mutants_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
