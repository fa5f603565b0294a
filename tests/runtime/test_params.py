"""gain/runtime/params.py: params.yaml loads into typed frozen sections; every bad value is an error that names the
dotted key and the file; each dvc.yaml stage lists exactly the params sections its script reads."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from gain.runtime.params import (
    STAGE_PARAMS,
    Params,
    ParamsError,
    flatten,
    load_params,
    params_hash,
    parse_params,
    section_dict,
)
from tests.pipeline_utils import deep_update

REPO = Path(__file__).resolve().parents[2]
PARAMS_YAML = REPO / "params.yaml"


def repo_raw() -> dict:
    return yaml.safe_load(PARAMS_YAML.read_text())


def write_params(tmp_path: Path, dotted: str, value) -> Path:
    """The repo's params.yaml with one dotted key set to `value`, written to tmp_path/params.yaml."""
    raw = repo_raw()
    *parents, last = dotted.split(".")
    node = raw
    for k in parents:
        node = node[k]
    node[last] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def load_error(tmp_path: Path, dotted: str, value) -> str:
    path = write_params(tmp_path, dotted, value)
    with pytest.raises(ParamsError) as e:
        load_params(path)
    return str(e.value)


# --- the repo's params.yaml -----------------------------------------------------------------------------


def test_repo_params_yaml_loads_every_value():
    params = load_params(PARAMS_YAML)
    assert isinstance(params, Params)
    loaded = flatten(dataclasses.asdict(params))
    written = flatten(repo_raw())
    # Every value written in the file arrives unchanged (lists as comma-joined strings in both).
    assert {k: loaded[k] for k in written} == written
    assert isinstance(params.gain.lr, float) and isinstance(params.gain.epochs, int)
    assert params.data.voc_urls and isinstance(params.data.voc_urls, tuple)


def test_params_are_frozen():
    params = load_params(PARAMS_YAML)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.gain.alpha = 0.0


def parse(overrides: dict) -> Params:
    """The repo's params.yaml with `overrides` merged in, validated."""
    return parse_params(deep_update(repo_raw(), overrides))


def test_ints_widen_to_float():
    params = parse({"gain": {"lr": 1, "alpha": 0}})
    assert params.gain.lr == 1.0 and isinstance(params.gain.lr, float)
    assert params.gain.alpha == 0.0 and isinstance(params.gain.alpha, float)


@pytest.mark.parametrize(
    ("dotted", "missing"),
    [("gain.lr", "gain.lr"), ("seed", "seed"), ("data.synthetic.n_val", "data.synthetic.n_val")],
)
def test_every_key_is_required_params_yaml_is_the_only_source(dotted, missing):
    raw = repo_raw()
    *parents, last = dotted.split(".")
    node = raw
    for k in parents:
        node = node[k]
    del node[last]
    with pytest.raises(ParamsError, match=rf"{re.escape(missing)}: missing key"):
        parse_params(raw)


def test_dataclasses_declare_no_default_values():
    """A default in gain/runtime/params.py would be a second source beside params.yaml."""

    def walk(cls):
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f.name
            if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None):
                walk(f.type)

    for cls in (
        Params,
        *[type(v) for v in vars(load_params(PARAMS_YAML)).values() if dataclasses.is_dataclass(v)],
    ):
        walk(cls)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-5", 1e-5),
        ("1e-05", 1e-5),
        ("1.0e-05", 1e-5),
        ("1e6", 1e6),
        ("2E+3", 2000.0),
        (".5", 0.5),
        ("3", 3.0),
    ],
)
def test_floats_in_any_yaml_spelling_are_numbers(tmp_path, text, value):
    """PyYAML's YAML 1.1 reads 1e-05 (what `dvc exp run -S gain.lr=1e-5` writes) as a string."""
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_YAML.read_text().replace("  lr: 0.01\n", f"  lr: {text}\n", 1))
    assert load_params(path).gain.lr == value


def test_unknown_key_at_every_level_is_named():
    for overrides, key in (
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"gain": {"learning_rate": 0.1}}, "gain.learning_rate"),
        ({"data": {"synthetic": {"size": 3}}}, "data.synthetic.size"),
        ({"runtime": {"mlflow": {"uri": "x"}}}, "runtime.mlflow.uri"),
    ):
        with pytest.raises(ParamsError, match=rf"{re.escape(key)}: unknown key"):
            parse(overrides)


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError, match=re.escape(str(path))):
        load_params(path)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("gain: {alpha: [1,\n")
    with pytest.raises(ParamsError, match=re.escape(str(path)) + ".*invalid YAML"):
        load_params(path)


# --- unknown keys ---------------------------------------------------------------------------------------


def test_unknown_nested_key_suggests_the_close_match(tmp_path):
    path = tmp_path / "params.yaml"
    raw = repo_raw()
    raw["data"]["sourse"] = raw["data"].pop("source")
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as e:
        load_params(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "data.sourse: unknown key" in msg
    assert "did you mean data.source?" in msg


def test_unknown_top_level_and_deep_keys():
    with pytest.raises(ParamsError, match=r"seeed: unknown key; did you mean seed\?"):
        parse({"seeed": 1})
    deep = r"data\.synthetic\.num_clases: unknown key; did you mean data\.synthetic\.num_classes\?"
    with pytest.raises(ParamsError, match=deep):
        parse({"data": {"synthetic": {"num_clases": 4}}})


def test_unknown_key_without_close_match_lists_known_keys():
    with pytest.raises(ParamsError, match=r"gain\.zzz: unknown key; known keys: backbone, weights, "):
        parse({"gain": {"zzz": 1}})


# --- types, ranges and choices: the message names the key and the file ----------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("gain.epochs", "ten", "expected an integer"),
        ("gain.epochs", 10.0, "expected an integer"),
        ("gain.epochs", True, "expected an integer"),  # bool is an int subclass in Python
        ("gain.ext", "False", "expected true or false"),  # bool("False") would be True
        ("gain.ext", 0, "expected true or false"),
        ("gain.lr", True, "expected a number"),
        ("gain.lr", "0.1", "expected a number"),
        ("data.voc_root", 3, "expected a string"),
        ("data.voc_urls", "http://example.com/voc.tar", "expected a list of strings"),
        ("data.synthetic", 6, "expected a mapping"),
        ("seed", None, "expected an integer"),
    ],
)
def test_wrong_type_names_key_and_file(tmp_path, key, value, expected):
    msg = load_error(tmp_path, key, value)
    assert msg.startswith(f"{tmp_path / 'params.yaml'}: {key}: {expected}"), msg


@pytest.mark.parametrize(
    ("key", "value"),
    [("gain.sigma", 1.5), ("gain.sigma", -0.1), ("gain.momentum", 1.01), ("gain.epochs", 0),
     ("sec.min_prob", 0.5), ("data.synthetic.num_classes", 13), ("seed", -1)],
)  # fmt: skip
def test_out_of_range_names_key_and_file(tmp_path, key, value):
    msg = load_error(tmp_path, key, value)
    assert msg.startswith(f"{tmp_path / 'params.yaml'}: {key}: {value!r} is out of range"), msg


def test_range_bounds_are_inclusive():
    params = parse({"gain": {"sigma": 1.0, "momentum": 0}, "seeds": {"fg_fraction": 0.0}})
    assert params.gain.sigma == 1.0 and params.gain.momentum == 0.0


def test_nan_is_out_of_range():
    with pytest.raises(ParamsError, match="gain.sigma"):
        parse({"gain": {"sigma": float("nan")}})


def test_bad_choice_lists_allowed_values(tmp_path):
    msg = load_error(tmp_path, "gain.backbone", "vgg19")
    assert str(tmp_path / "params.yaml") in msg
    assert "gain.backbone: 'vgg19' is not allowed" in msg
    for allowed in ("small", "vgg16", "resnet50"):
        assert allowed in msg


def test_choices_are_checked_in_every_section():
    with pytest.raises(
        ParamsError, match=r"sec\.backbone: 'resnet50' is not allowed; choose one of small, vgg16"
    ):
        parse({"sec": {"backbone": "resnet50"}})
    with pytest.raises(ParamsError, match=r"device: 'gpu' is not allowed"):
        parse({"device": "gpu"})


def test_sec_train_crf_is_auto_lattice_or_exact():
    assert load_params(PARAMS_YAML).sec.train_crf == "auto"  # exact on CUDA, the lattice on the CPU
    for value in ("lattice", "exact"):
        assert parse({"sec": {"train_crf": value}}).sec.train_crf == value
    with pytest.raises(
        ParamsError, match=r"sec\.train_crf: 'dense' is not allowed; choose one of auto, lattice, exact"
    ):
        parse({"sec": {"train_crf": "dense"}})


def test_sec_losses_is_a_non_empty_list_of_distinct_terms(tmp_path):
    assert parse({"sec": {"losses": ["expand", "seed"]}}).sec.losses == ("expand", "seed")
    assert load_params(PARAMS_YAML).sec.losses == ("seed", "expand", "constrain")  # SEC's objective
    for bad in ([], ["seed", "seed"], ["seed", "balance"]):
        msg = load_error(tmp_path, "sec.losses", bad)
        assert (
            "sec.losses: " in msg and "non-empty list of distinct values from seed, expand, constrain" in msg
        )
    assert "expected a list of strings" in load_error(tmp_path, "sec.losses", "seed")


def test_heldout_selection_needs_a_heldout_fraction():
    assert parse({"sec": {"select": "heldout", "heldout_fraction": 0.1}}).sec.select == "heldout"
    assert parse({"sec": {"select": "last", "heldout_fraction": 0.0}}).sec.heldout_fraction == 0.0
    with pytest.raises(ParamsError, match=r"sec\.heldout_fraction: must be > 0 when sec\.select is heldout"):
        parse({"sec": {"select": "heldout", "heldout_fraction": 0.0}})
    with pytest.raises(ParamsError, match=r"sec\.select: 'best' is not allowed"):
        parse({"sec": {"select": "best"}})
    assert parse({"gain": {"select": "heldout", "heldout_fraction": 0.2}}).gain.heldout_fraction == 0.2
    with pytest.raises(
        ParamsError, match=r"gain\.heldout_fraction: must be > 0 when gain\.select is heldout"
    ):
        parse({"gain": {"select": "heldout", "heldout_fraction": 0.0}})


def test_vgg_fc_head_needs_the_vgg16_backbone():
    assert parse({"gain": {"backbone": "vgg16", "head": "vgg_fc"}}).gain.head == "vgg_fc"
    with pytest.raises(ParamsError, match=r"gain\.head: vgg_fc .* needs gain\.backbone vgg16, got 'small'"):
        parse({"gain": {"head": "vgg_fc"}})
    with pytest.raises(ParamsError, match=r"gain\.head: 'fc' is not allowed"):
        parse({"gain": {"head": "fc"}})


def test_paper_defaults_of_the_fidelity_options():
    params = load_params(PARAMS_YAML)
    assert (params.seeds.background, params.seeds.bg_fraction) == ("saliency", 0.1)
    assert (params.sec.augment, params.sec.select) == ("none", "last")
    assert params.data.voc_labels in ("all", "nondifficult")


def test_bias_class_must_be_one_of_the_synthetic_classes(tmp_path):
    path = write_params(tmp_path, "data.synthetic.bias_class", 7)  # num_classes is 6
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert str(e.value).startswith(f"{path}: data.synthetic.bias_class: 7 is out of range")
    assert "num_classes=6" in str(e.value)
    # The last class is allowed (bias_class is 1-based over the foreground classes).
    last = parse({"data": {"synthetic": {"num_classes": 6, "bias_class": 6}}})
    assert last.data.synthetic.bias_class == 6


def test_pixel_labelled_cannot_exceed_train_images():
    with pytest.raises(ParamsError, match=r"data\.synthetic\.pixel_labelled: 300 exceeds"):
        parse({"data": {"synthetic": {"n_train": 240, "pixel_labelled": 300}}})


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match=re.escape(str(path))):
        load_params(path)


# --- flatten, section_dict, params_hash -----------------------------------------------------------------


def test_flatten_dots_nested_keys_and_joins_lists():
    nested = {
        "seed": 0,
        "gain": {"alpha": 1.0, "ext": False},
        "data": {"voc_urls": ("a", "b"), "s": {"n": 2}},
    }
    assert flatten(nested) == {
        "seed": 0,
        "gain.alpha": 1.0,
        "gain.ext": False,
        "data.voc_urls": "a,b",
        "data.s.n": 2,
    }
    assert flatten({"x": ["p", 3]}, prefix="top.") == {"top.x": "p,3"}


def test_section_dict_holds_only_the_stage_sections():
    params = load_params(PARAMS_YAML)
    used = section_dict(params, STAGE_PARAMS["gain"])
    assert set(used) == set(STAGE_PARAMS["gain"])
    flat = flatten(used)
    assert flat["gain.alpha"] == params.gain.alpha
    assert not any(k.startswith(("sec.", "data.", "seeds.", "runtime.")) for k in flat)


def test_params_hash_is_stable_and_value_sensitive():
    a = {"seed": 0, "gain": {"alpha": 1.0, "sigma": 0.5}}
    same_reordered = {"gain": {"sigma": 0.5, "alpha": 1.0}, "seed": 0}
    h = params_hash(a)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert params_hash(same_reordered) == h
    assert params_hash({"seed": 0, "gain": {"alpha": 0.0, "sigma": 0.5}}) != h
    assert params_hash({"seed": 1, "gain": {"alpha": 1.0, "sigma": 0.5}}) != h
    # Hash of the same params loaded twice from the file is identical (e.g. across stage processes).
    used = section_dict(load_params(PARAMS_YAML), STAGE_PARAMS["gain"])
    assert params_hash(used) == params_hash(section_dict(load_params(PARAMS_YAML), STAGE_PARAMS["gain"]))


# --- dvc.yaml lists exactly what each stage reads -------------------------------------------------------


def test_dvc_yaml_stage_params_match_stage_params():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages, "dvc.yaml has no stages"
    unknown = sorted(set(stages) - set(STAGE_PARAMS))
    assert not unknown, f"dvc.yaml stages missing from gain.runtime.params.STAGE_PARAMS: {unknown}"
    for name, stage in stages.items():
        listed = stage.get("params", [])
        assert all(isinstance(p, str) for p in listed), f"{name}: params must be plain keys of params.yaml"
        assert len(listed) == len(set(listed)), f"{name}: duplicate params in dvc.yaml"
        assert set(listed) == set(STAGE_PARAMS[name]), (
            f"dvc.yaml stage {name!r} lists {sorted(listed)}, the script reads {sorted(STAGE_PARAMS[name])}"
        )


def test_stage_params_name_real_sections_and_never_runtime():
    top = {f.name for f in dataclasses.fields(Params)}
    for stage, keys in STAGE_PARAMS.items():
        assert set(keys) <= top, stage
        assert "runtime" not in keys  # knobs that do not change outputs never re-run a stage


def test_each_stage_script_reads_only_its_dvc_params():
    """`params.<section>` in stages/<stage>.py: only the sections dvc.yaml lists for it, plus runtime."""
    import ast

    for stage, keys in STAGE_PARAMS.items():
        tree = ast.parse((REPO / "stages" / f"{stage}.py").read_text())
        read = {
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "params"
        }
        assert read or not keys, stage  # `check` validates the whole file and reads no section
        assert read <= set(keys) | {"runtime"}, (stage, sorted(read - set(keys)))
