"""The DVC contract is derived from the code: each stage's deps are its import closure plus its inputs, its
outputs are gain/runtime/layout.py's, no stage needs `persist`, and the library reads like dvc.yaml."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from gain.runtime import layout
from gain.runtime.codebase import REPO, closure, imported_modules
from gain.runtime.params import STAGE_PARAMS
from tests.imports import nested_imports

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# Data each stage reads besides code: the outputs of earlier stages (and the VOC id list).
INPUTS = {
    "check": {Path("params.yaml")},
    "data": {layout.VOC_TRAIN_AUG},
    "gain": {layout.DATASET},
    "seeds": {layout.DATASET, layout.GAIN_MODEL},
    "sec": {layout.DATASET, layout.SEEDS, layout.GAIN_MODEL},
    "evaluate": {
        layout.DATASET,
        layout.GAIN_MODEL,
        layout.SEC_MODEL,
        layout.reports("gain") / "metrics.json",
        layout.reports("seeds") / "metrics.json",
    },
    # Every stage's key output and metrics file: what the MLflow pipeline run is told about.
    "track": {
        layout.DATASET,
        layout.GAIN_MODEL,
        layout.SEC_MODEL,
        layout.REPORTS / "report.md",
        *(
            path
            for stage in ("gain", "seeds", "sec", "evaluate")
            for path in layout.OUTPUTS[stage]["metrics"]
        ),
    },
}


def entries(stage: dict, key: str) -> set[Path]:
    """Paths listed under `key` (deps, outs, metrics, plots), with or without per-path options."""
    return {Path(next(iter(e)) if isinstance(e, dict) else e) for e in stage.get(key, [])}


def test_dvc_yaml_has_one_stage_per_script_with_the_same_name():
    scripts = {p.stem for p in (REPO / "stages").glob("*.py") if p.stem != "__init__"}
    assert set(DVC) == scripts == set(STAGE_PARAMS) == set(layout.OUTPUTS)
    for name, stage in DVC.items():
        assert stage["cmd"] == f"stages/python -m stages.{name}"


@pytest.mark.parametrize("stage", list(STAGE_PARAMS))
def test_deps_are_the_import_closure_and_the_inputs(stage):
    code = closure(f"stages.{stage}")
    listed = entries(DVC[stage], "deps")
    missing, extra = (code | INPUTS[stage]) - listed, listed - (code | INPUTS[stage])
    assert not missing, f"dvc.yaml stage {stage!r}: add to deps {sorted(map(str, missing))}"
    assert not extra, f"dvc.yaml stage {stage!r}: remove from deps {sorted(map(str, extra))}"


@pytest.mark.parametrize("stage", list(STAGE_PARAMS))
def test_outputs_match_the_layout_and_nothing_persists(stage):
    declared = layout.OUTPUTS[stage]
    for key in ("outs", "metrics", "plots"):
        assert entries(DVC[stage], key) == set(declared[key]), (stage, key)
    for key in ("outs", "metrics", "plots"):
        for e in DVC[stage].get(key, []):
            options = next(iter(e.values())) if isinstance(e, dict) else {}
            assert not options.get("persist"), f"{stage}: persist turns DVC's run-cache off"
    everything = [p for ps in declared.values() for p in ps]
    assert not any(p.parts[0] in ("runs", "checkpoints") for p in everything)


def test_the_stages_default_paths_are_the_layout_and_a_study_run_keeps_to_its_folder(tmp_path):
    pipeline = layout.PIPELINE
    assert pipeline.index == layout.INDEX and pipeline.gain_ckpt == layout.CHECKPOINTS / "gain"
    for stage in layout.OUTPUTS:
        assert pipeline.files(stage) == layout.stage_files(stage)
    run = layout.run_paths(tmp_path)
    for stage in ("gain", "seeds", "sec"):
        assert all(tmp_path in p.parents for p in run.files(stage)), stage
    sec_only = layout.run_paths(tmp_path / "run", tmp_path / "source")  # on another run's seeds
    assert sec_only.gain_model == tmp_path / "source/gain.pt" and sec_only.seeds == tmp_path / "source/seeds"
    assert all(tmp_path / "run" in p.parents for p in sec_only.files("sec"))


def test_package_inits_hold_only_a_docstring():
    """They are left out of the import closure, so they must not hold code."""
    for init in (REPO / "gain").rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), (
            init
        )


def test_repo_imports_are_at_module_level():
    """An import inside a function hides a dependency edge from a reader (and once hid it from dvc.yaml)."""
    found = [
        f for path in [*REPO.glob("gain/**/*.py"), *REPO.glob("stages/*.py")] for f in nested_imports(path)
    ]
    assert not found, found


def test_every_module_opens_with_a_docstring():
    for path in [*REPO.glob("gain/**/*.py"), *REPO.glob("stages/*.py"), *REPO.glob("benchmarks/*.py")]:
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.relative_to(REPO)} has no module docstring"


def test_stage_scripts_are_thin():
    for path in (REPO / "stages").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 80, path.name


# What a stage wires together, made only by its script: the study (gain/study/runner.py) and the DDP test
# worker and the benchmarks call the stage's run() instead of wiring these again.
STAGE_WORK = {
    "train_gain": "stages/gain.py",
    "extract_seeds": "stages/seeds.py",
    "train_sec": "stages/sec.py",
    "write_evaluation": "stages/evaluate.py",
}


def test_only_its_stage_script_wires_a_stage():
    found = []
    for path in [
        *REPO.glob("gain/**/*.py"),
        *REPO.glob("stages/*.py"),
        *REPO.glob("benchmarks/*.py"),
        REPO / "tests/ddp_worker.py",
    ]:
        name = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found += [f"{name}: {a.name}" for a in node.names if STAGE_WORK.get(a.name, name) != name]
    assert not found, "call the stage's run() (stages/<name>.py) instead:\n" + "\n".join(found)


def test_library_has_a_wing_per_stage():
    wings = {p.name for p in (REPO / "gain").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {"data", "cam", "seeds", "sec", "evaluation", "report", "runtime", "models"} <= wings


# The library's floors and wings, lowest first: a module imports only from its own package and from
# packages on lower floors, so shared tools never reach up into a stage's wing and wings never sideways.
FLOORS = [
    {"runtime"},  # params, device, the loop, checkpoints, tracking
    {"data", "photos"},  # the data set, users' photos
    {"models", "evaluation"},  # trunks; metrics, figures (shared by every wing above)
    {"cam"},  # the gain stage
    {"seeds"},  # the seeds stage (reads attention)
    {"sec"},  # the sec stage
    {"report"},  # the evaluate stage's report, the MLflow comparison
    {"stages"},  # the DVC stage scripts and their run()
    {"study", "predict", "ui"},  # drivers over whole pipelines
]


def package_of(module: str) -> str:
    """gain.cam.model -> cam, gain.predict -> predict, stages.sec -> stages."""
    parts = module.split(".")
    return "stages" if parts[0] == "stages" else parts[1]


def floor_of(package: str) -> int:
    found = [i for i, names in enumerate(FLOORS) if package in names]
    assert found, f"gain/{package} is on no floor: add it to FLOORS in {Path(__file__).name}"
    return found[0]


def import_edges() -> set[tuple[str, str, str]]:
    """(file, importing package, imported package) for every import between two packages of the repo."""
    edges = set()
    for path in [*(REPO / "gain").rglob("*.py"), *(REPO / "stages").glob("*.py")]:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if module.count(".") == 0 or module.endswith("__init__") and module.count(".") == 1:
            continue
        for target in imported_modules(path):
            if target.count(".") >= 1 and package_of(target) != package_of(module):
                edges.add((str(path.relative_to(REPO)), package_of(module), package_of(target)))
    return edges


def upward(edges) -> list[str]:
    return [f"{f}: {a} -> {b}" for f, a, b in sorted(edges) if floor_of(b) >= floor_of(a)]


def test_imports_between_wings_point_downward():
    bad = upward(import_edges())
    assert not bad, "imports that do not point to a lower floor:\n" + "\n".join(bad)


def test_the_floor_rule_sees_real_edges_and_reports_upward_and_sideways_ones():
    edges = import_edges()
    assert ("gain/cam/train.py", "cam", "evaluation") in edges  # downward: allowed
    assert ("stages/evaluate.py", "stages", "report") in edges
    assert not upward({("gain/cam/train.py", "cam", "evaluation")})
    assert upward({("gain/evaluation/x.py", "evaluation", "cam")}) == [
        "gain/evaluation/x.py: evaluation -> cam"
    ]
    assert upward({("gain/models/x.py", "models", "evaluation")})  # sideways on one floor


PATH_MENTION = re.compile(r"\b((?:gain|stages|tests|benchmarks)/[\w/]*\w\.(?:py|sh))\b")
MODULE_MENTION = re.compile(r"\bgain\.(\w+)\.(\w+)\b")
MADE_UP = {"gain/models/x.py", "gain/evaluation/x.py", "gain.cam.planted"}  # names tests make up on purpose


def stale_names(text: str) -> set[str]:
    """The repo paths and gain.<package>.<module> names in `text` that do not exist."""
    packages = {p.name for p in (REPO / "gain").iterdir() if (p / "__init__.py").is_file()}
    paths = {m for m in PATH_MENTION.findall(text) if not (REPO / m).exists()}
    modules = {
        f"gain.{pkg}.{mod}"
        for pkg, mod in MODULE_MENTION.findall(text)
        if pkg in packages
        and not (REPO / "gain" / pkg / f"{mod}.py").is_file()
        and not (REPO / "gain" / pkg / mod).is_dir()
    }
    return (paths | modules) - MADE_UP


def test_docs_and_docstrings_name_current_paths():
    """Every repo path (gain/..., stages/..., tests/..., benchmarks/...) and every module of a gain package
    (gain.cam.model, gain.runtime.loop.fit) named in a tracked source or document exists, so a move cannot
    leave its old name behind in a docstring or the README."""
    gone = "engine"  # a module that moved (spelt apart so this file does not name it)
    assert stale_names(f"see gain/runtime/{gone}.py and gain.runtime.{gone}.fit") == {
        f"gain/runtime/{gone}.py",
        f"gain.runtime.{gone}",
    }
    listed = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.yaml", "*.toml", "*.sh", "Makefile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    stale = [
        f"{name}: {m}"
        for name in listed
        if not name.startswith("reports/study/runs/")
        for m in stale_names((REPO / name).read_text(errors="ignore"))
    ]
    assert not stale, "names of files or modules that do not exist:\n" + "\n".join(sorted(stale))


def long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_library_function_runs_over_80_lines():
    assert not long_functions(REPO / "gain", 80)
    assert long_functions(REPO / "gain", 60)  # the check sees functions (some are between 60 and 80)


def test_benchmarks_stay_small():
    """benchmarks/ times the library's own steps, passes and CRFs and the pipeline, and projects the
    paper-scale run from a table: about a ninth of gain/ (it was 1,740 lines, a fifth)."""
    lines = {p.name: len(p.read_text().splitlines()) for p in (REPO / "benchmarks").glob("*.py")}
    assert sum(lines.values()) <= 1000, lines


def test_tests_mirror_the_library_wings():
    """tests/<wing>/ for every package of gain/, plus the end-to-end pipeline, the drivers (predict, ui) and
    the benchmarks; only the repo-wide checks (this file, the README's) sit at the top."""
    wings = {p.name for p in (REPO / "gain").iterdir() if (p / "__init__.py").is_file()}
    folders = {p.parent.name for p in (REPO / "tests").glob("*/test_*.py")}
    assert wings <= folders, f"no tests/<wing>/ for {sorted(wings - folders)}"
    assert folders - wings <= {"pipeline", "drivers", "benchmarks"}, sorted(folders - wings)
    assert {p.name for p in (REPO / "tests").glob("test_*.py")} == {"test_layout.py", "test_readme.py"}
