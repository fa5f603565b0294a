"""Typed, validated view of params.yaml: one frozen dataclass per stage section.

Unknown keys, wrong types and out-of-range values raise `ParamsError` with the dotted key at fault
(`data.sourse: unknown key; did you mean data.source?`), before a stage does any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml


class ParamsError(ValueError):
    """A params.yaml problem; the message names the file and the dotted key."""


def _range(lo=None, hi=None):
    return field(metadata={"min": lo, "max": hi})


def _default(value, lo=None, hi=None):
    return field(default=value, metadata={"min": lo, "max": hi})


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = "gain-sec"
    tracking_uri: str = ""


@dataclass(frozen=True)
class SyntheticParams:
    num_classes: int = _default(6, 2, 12)
    image_size: int = _default(112, 32, 1024)
    n_train: int = _default(240, 2, None)
    n_val: int = _default(80, 1, None)
    n_bias_eval: int = _default(40, 1, None)
    max_objects: int = _default(3, 1, 5)
    bias_class: int = _default(1, 1, 12)
    bias_fraction: float = _default(0.9, 0.0, 1.0)
    context_rate: float = _default(0.05, 0.0, 1.0)
    pixel_labelled: int = _default(24, 0, None)
    part_fraction: float = _default(0.15, 0.01, 0.9)


@dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "voc"] = "synthetic"
    voc_root: str = ""
    voc_cache: str = "data/voc"
    voc_urls: tuple[str, ...] = ()
    voc_md5: str = "6cd6e144f989b92b3379bac3b3de84fd"
    voc_pixel_labelled: int = _default(200, 0, 1464)
    synthetic: SyntheticParams = SyntheticParams()


@dataclass(frozen=True)
class GainParams:
    backbone: Literal["small", "vgg16", "resnet50"] = "small"
    weights: str = "none"
    input_size: int = _default(112, 32, 1024)
    batch_size: int = _default(16, 1, None)
    epochs: int = _default(14, 1, None)
    warmup_epochs: int = _default(0, 0, None)
    lr: float = _default(0.02, 0.0, None)
    momentum: float = _default(0.9, 0.0, 1.0)
    weight_decay: float = _default(0.0005, 0.0, None)
    alpha: float = _default(1.0, 0.0, None)
    sigma: float = _default(0.5, 0.0, 1.0)
    omega: float = _default(10.0, 0.0, None)
    ext: bool = False
    omega_e: float = _default(10.0, 0.0, None)
    grad_weights: Literal["differentiable", "detached"] = "differentiable"
    masked_bn: Literal["batch", "running"] = "batch"
    erase: Literal["mean", "black"] = "mean"
    am_grad: Literal["all", "mask"] = "all"
    workers: int = _default(0, 0, 64)
    ckpt_every: int = _default(50, 1, None)
    vis_images: int = _default(8, 0, 64)


@dataclass(frozen=True)
class SeedsParams:
    fg_threshold: float = _default(0.2, 0.0, 1.0)
    bg_threshold: float = _default(0.1, 0.0, 1.0)
    conflict: Literal["max", "ignore"] = "max"
    flip: bool = True
    batch_size: int = _default(32, 1, None)


@dataclass(frozen=True)
class SecParams:
    backbone: Literal["small", "vgg16"] = "small"
    init: Literal["gain", "imagenet", "none"] = "gain"
    input_size: int = _default(112, 32, 1024)
    batch_size: int = _default(8, 1, None)
    iterations: int = _default(400, 1, None)
    lr: float = _default(0.002, 0.0, None)
    lr_step: int = _default(200, 1, None)
    momentum: float = _default(0.9, 0.0, 1.0)
    weight_decay: float = _default(0.0005, 0.0, None)
    d_fg: float = _default(0.996, 0.0, 1.0)
    d_bg: float = _default(0.999, 0.0, 1.0)
    min_prob: float = _default(0.0001, 0.0, 0.1)
    crf_scale: float = _default(12.0, 0.01, None)
    crf_workers: int = _default(2, 0, 64)
    eval_every: int = _default(100, 1, None)
    ckpt_every: int = _default(50, 1, None)
    workers: int = _default(0, 0, 64)


@dataclass(frozen=True)
class EvaluateParams:
    split: str = "val"
    crf: bool = True
    crf_workers: int = _default(2, 0, 64)
    vis_images: int = _default(6, 0, 64)


@dataclass(frozen=True)
class Params:
    seed: int = _default(0, 0, 2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True
    mlflow: MlflowParams = MlflowParams()
    data: DataParams = DataParams()
    gain: GainParams = GainParams()
    seeds: SeedsParams = SeedsParams()
    sec: SecParams = SecParams()
    evaluate: EvaluateParams = EvaluateParams()


# The params each stage reads; dvc.yaml lists exactly these (a test checks it).
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "data": ("seed", "mlflow", "data"),
    "gain": ("seed", "device", "deterministic", "mlflow", "gain"),
    "seeds": ("seed", "device", "mlflow", "seeds"),
    "sec": ("seed", "device", "deterministic", "mlflow", "sec"),
    "evaluate": ("seed", "device", "mlflow", "seeds", "evaluate"),
}


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value, tp, key: str, meta) -> object:
    origin = typing.get_origin(tp)
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
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return value
    lo, hi = meta.get("min"), meta.get("max")
    if value != value:  # NaN passes every comparison
        raise ParamsError(f"{key}: nan is not a valid value")
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
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _convert(raw[f.name], hints[f.name], prefix + f.name, f.metadata)
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
    if syn.pixel_labelled > syn.n_train:
        raise ParamsError(
            f"{source}: data.synthetic.pixel_labelled: {syn.pixel_labelled} exceeds "
            f"data.synthetic.n_train={syn.n_train}"
        )
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: invalid YAML ({e})") from None
    return parse_params(raw or {}, str(path))


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
