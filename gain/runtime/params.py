"""params.yaml as typed, frozen sections: every key required, unknown keys and bad values named.

params.yaml is the only source of values: the dataclasses below declare types and ranges, never defaults,
so a missing key is an error (`gain.lr: missing key`) rather than a silent second default. Sections that
change a stage's outputs are DVC params (`STAGE_PARAMS`, mirrored in dvc.yaml); the `runtime` section holds
knobs that never change results (DataLoader workers, checkpoint cadence, figure counts, the MLflow store),
so editing them re-runs nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from gain.runtime.errors import StageError


class ParamsError(StageError):
    """A params.yaml problem; the message names the file and the dotted key."""


def _range(lo=None, hi=None):
    return field(metadata={"min": lo, "max": hi})


@dataclass(frozen=True)
class SyntheticParams:
    num_classes: int = _range(2, 12)
    image_size: int = _range(32, 1024)
    n_train: int = _range(2)
    n_val: int = _range(1)
    n_bias_eval: int = _range(1)
    max_objects: int = _range(1, 5)
    bias_class: int = _range(1, 12)
    bias_fraction: float = _range(0.0, 1.0)
    context_rate: float = _range(0.0, 1.0)
    pixel_labelled: int = _range(0)
    part_fraction: float = _range(0.01, 0.9)
    object_size: float = _range(0.05, 0.7)


@dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "voc"]
    voc_root: str
    voc_cache: str
    voc_urls: tuple[str, ...]
    voc_md5: str
    voc_pixel_labelled: int = _range(0, 1464)
    voc_labels: Literal["all", "nondifficult"] = _range()
    synthetic: SyntheticParams = _range()


@dataclass(frozen=True)
class GainParams:
    backbone: Literal["small", "vgg16", "resnet50"]
    weights: str
    head: Literal["gap", "vgg_fc"]
    input_size: int = _range(32, 1024)
    batch_size: int = _range(1)
    epochs: int = _range(1)
    warmup_epochs: int = _range(0)
    lr: float = _range(0.0)
    momentum: float = _range(0.0, 1.0)
    weight_decay: float = _range(0.0)
    alpha: float = _range(0.0)
    sigma: float = _range(0.0, 1.0)
    omega: float = _range(0.0)
    ext: bool = _range()
    omega_e: float = _range(0.0)
    grad_weights: Literal["differentiable", "detached"] = _range()
    masked_bn: Literal["batch", "running"] = _range()
    erase: Literal["mean", "black"] = _range()
    am_grad: Literal["all", "mask"] = _range()
    select: Literal["last", "heldout"] = _range()
    heldout_fraction: float = _range(0.0, 0.5)


@dataclass(frozen=True)
class SeedsParams:
    fg_fraction: float = _range(0.0, 1.0)
    background: Literal["saliency", "attention"] = _range()
    saliency_at: Literal["image", "stride8"] = _range()
    bg_fraction: float = _range(0.0, 1.0)
    bg_threshold: float = _range(0.0, 1.0)
    conflict: Literal["max", "ignore"] = _range()
    flip: bool = _range()


@dataclass(frozen=True)
class SecParams:
    backbone: Literal["small", "vgg16"]
    init: Literal["gain", "imagenet", "none"]
    augment: Literal["none", "scale_crop_flip"]
    losses: tuple[Literal["seed", "expand", "constrain"], ...]
    input_size: int = _range(32, 1024)
    batch_size: int = _range(1)
    iterations: int = _range(1)
    lr: float = _range(0.0)
    lr_step: int = _range(1)
    momentum: float = _range(0.0, 1.0)
    weight_decay: float = _range(0.0)
    # auto: SEC's values carried to the output grid by gain.sec.scale's rule
    d_fg: float | Literal["auto"] = _range(0.0, 1.0)
    d_bg: float | Literal["auto"] = _range(0.0, 1.0)
    min_prob: float = _range(0.0, 0.1)
    crf_scale: float | Literal["auto"] = _range(0.01)
    train_crf: Literal["auto", "lattice", "exact"] = _range()
    eval_every: int = _range(1)
    select: Literal["last", "heldout"] = _range()
    heldout_fraction: float = _range(0.0, 0.5)


@dataclass(frozen=True)
class EvaluateParams:
    split: str
    crf: bool
    crf_scale: float | Literal["auto"] = _range(0.01)  # auto: gain.sec.scale.inference_crf_scale per image


@dataclass(frozen=True)
class MlflowParams:
    experiment: str
    tracking_uri: str
    log_models: bool = _range()


@dataclass(frozen=True)
class RuntimeParams:
    """Knobs that change how fast or where things run, never what a stage writes (not DVC params)."""

    mlflow: MlflowParams
    workers: int = _range(-1, 64)  # -1: auto (gain.runtime.loaders.loader_workers)
    gain_ckpt_every: int = _range(1)
    sec_ckpt_every: int = _range(1)
    seeds_batch_size: int = _range(1)
    crf_workers: int = _range(0, 64)
    vis_images: int = _range(0, 64)


@dataclass(frozen=True)
class Params:
    seed: int = _range(0, 2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = _range()
    deterministic: bool = _range()
    data: DataParams = _range()
    gain: GainParams = _range()
    seeds: SeedsParams = _range()
    sec: SecParams = _range()
    evaluate: EvaluateParams = _range()
    runtime: RuntimeParams = _range()


# The params each stage's outputs depend on; dvc.yaml lists exactly these (tests check both that and that
# each stage script reads no other section). `runtime` is read by every stage and listed by none.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "check": (),  # validates the whole file, outputs nothing: depends on params.yaml as a file instead
    "data": ("seed", "data"),
    "gain": ("seed", "device", "deterministic", "gain"),
    "seeds": ("device", "seeds"),
    "sec": ("seed", "device", "deterministic", "sec"),
    "evaluate": ("device", "seeds", "evaluate"),
    "track": (),  # annotates the MLflow pipeline run, writes nothing
}
# Every section that is a DVC param (the pipeline's inputs besides code and data), in params.yaml order.
DVC_PARAMS = tuple(dict.fromkeys(k for keys in STAGE_PARAMS.values() for k in keys))


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-05` and `1e6` are strings (a float needs a dot and a signed
    exponent); `dvc exp run -S gain.lr=1e-5` writes exactly that. Resolve floats the YAML 1.2 way."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first, _resolvers in _Loader.yaml_implicit_resolvers.items():
    _Loader.yaml_implicit_resolvers[_first] = [r for r in _resolvers if r[0] != "tag:yaml.org,2002:float"]
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value, tp, key: str, meta) -> object:
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # a number or a rule's name: `float | Literal["auto"]`
        choices = [a for a in typing.get_args(tp) if typing.get_origin(a) is Literal]
        names = [v for c in choices for v in typing.get_args(c)]
        if isinstance(value, str):
            if value not in names:
                raise ParamsError(f"{key}: {value!r} is not allowed; give a number or {' | '.join(names)}")
            return value
        (number,) = [a for a in typing.get_args(tp) if a not in choices]
        return _convert(value, number, key, meta)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ParamsError(
                f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, allowed))}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ParamsError(f"{key}: expected a list of strings, got {value!r}")
        item = typing.get_args(tp)[0]
        if typing.get_origin(item) is Literal:  # a list of choices: non-empty, each allowed, no repeats
            allowed = typing.get_args(item)
            bad = [v for v in value if v not in allowed]
            if not value or bad or len(set(value)) != len(value):
                raise ParamsError(
                    f"{key}: {list(value)!r} is not allowed; choose a non-empty list of distinct values "
                    f"from {', '.join(allowed)}"
                )
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ParamsError(f"{key}: {value} is not a finite number")
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ParamsError(f"{key}: {value!r} is out of range; allowed {bounds}")
    return value


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in raw:
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(names)}"
            raise ParamsError(f"{prefix}{k}: unknown key{hint}")
    missing = [n for n in names if n not in raw]
    if missing:
        raise ParamsError(f"{prefix}{missing[0]}: missing key (every key of params.yaml is required)")
    kwargs = {
        f.name: _convert(raw[f.name], hints[f.name], prefix + f.name, f.metadata)
        for f in dataclasses.fields(cls)
    }
    return cls(**kwargs)


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    """Validate a params mapping into `Params`; errors are prefixed with `source`."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level")
    try:
        params = _build(Params, raw)
    except ParamsError as e:
        raise ParamsError(f"{source}: {e}") from None
    syn = params.data.synthetic
    if syn.bias_class > syn.num_classes:
        raise ParamsError(
            f"{source}: data.synthetic.bias_class: {syn.bias_class} is out of range; "
            f"allowed [1, data.synthetic.num_classes={syn.num_classes}]"
        )
    for name, section in (("gain", params.gain), ("sec", params.sec)):
        if section.select == "heldout" and section.heldout_fraction <= 0:
            raise ParamsError(
                f"{source}: {name}.heldout_fraction: must be > 0 when {name}.select is heldout, got "
                f"{section.heldout_fraction}"
            )
    if params.gain.head == "vgg_fc" and params.gain.backbone != "vgg16":
        raise ParamsError(
            f"{source}: gain.head: vgg_fc is VGG16's fc6/fc7 and needs gain.backbone vgg16, got "
            f"{params.gain.backbone!r}"
        )
    if syn.pixel_labelled > syn.n_train:
        raise ParamsError(
            f"{source}: data.synthetic.pixel_labelled: {syn.pixel_labelled} exceeds "
            f"data.synthetic.n_train={syn.n_train}"
        )
    return params


def read_yaml(path: str | Path) -> dict:
    """A params-style YAML file as plain data, floats read the YAML 1.2 way; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: invalid YAML ({e})") from None
    return raw if raw is not None else {}


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    return parse_params(read_yaml(path), str(path))


def section_dict(params: Params, keys: tuple[str, ...]) -> dict:
    """The plain-data subset of params that a stage reads, e.g. {"seed": 0, "gain": {...}}."""
    full = dataclasses.asdict(params)
    return {k: full[k] for k in keys}


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"gain": {"alpha": 1}} -> {"gain.alpha": 1} (lists joined by commas)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = ",".join(map(str, v)) if isinstance(v, list | tuple) else v
    return out


def params_hash(d: dict) -> str:
    """Short stable hash of a plain-data params subset (used to tag runs and guard resumes)."""
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
