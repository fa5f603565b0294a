"""No second default: every keyword default in the library that stands for a params.yaml value (GAIN's
`sigma`, the SEC losses' `min_prob`, SyntheticConfig's fields, ...) equals that value, so code called without
it behaves as the pipeline does. params.yaml stays the one place a value is chosen (gain/runtime/params.py).
The constructors built from a params section (GAIN, Classifier, LargeFOV and every dataclass of
gain/runtime/params.py) are walked on their own, None defaults included."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import typing
from collections.abc import Callable, Iterator

import gain
from gain.cam.model import GAIN, Classifier
from gain.runtime import params as params_module
from gain.runtime.codebase import REPO
from gain.runtime.params import Params, load_params
from gain.sec.model import LargeFOV
from gain.sec.scale import SEC_D_BG, SEC_D_FG

# The params.yaml sections a wing's keyword defaults stand for.
WING_SECTIONS = {
    "cam": ("gain",),
    "models": ("gain", "sec"),
    "seeds": ("seeds",),
    "sec": ("sec", "evaluate"),
    "data": ("data", "data.synthetic"),
}
# Keyword names that say the same thing as a params key under another name: name -> (key, to_param).
ALIASES: dict[str, tuple[str, Callable[[object], object]]] = {
    "differentiable": ("gain.grad_weights", lambda v: "differentiable" if v else "detached"),
    "at": ("seeds.saliency_at", lambda v: v),
    "rule": ("data.voc_labels", lambda v: v),
    "labels": ("data.voc_labels", lambda v: v),
    "label_rule": ("data.voc_labels", lambda v: v),
}
# Same name, another quantity: inference batch sizes are runtime choices; a CRF's mean-field iterations
# are not SEC's training iterations.
NOT_PARAMS = {("*", "batch_size"), ("gain.sec.crf.CRFParams", "iterations")}
# Where params.yaml names a rule (`auto`), a numeric default is the reference value the rule starts from.
RULE_REFERENCES = {"d_fg": SEC_D_FG, "d_bg": SEC_D_BG}


def params_values() -> dict[str, object]:
    """Every leaf of params.yaml by dotted key: {"gain.sigma": 0.7, ...}."""
    out: dict[str, object] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(dataclasses.asdict(load_params(REPO / "params.yaml")), "")
    return out


def keyword_defaults(module) -> Iterator[tuple[str, str, object]]:
    """(qualified name, argument, default) of every public function, class constructor and public method
    defined in `module`, dataclass fields included; None defaults ("not given") are left out."""
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        callables = [(name, obj)] if inspect.isfunction(obj) or inspect.isclass(obj) else []
        if inspect.isclass(obj):
            callables += [(f"{name}.{a}", f) for a, f in vars(obj).items() if inspect.isfunction(f)]
            callables = [(q, f) for q, f in callables if not q.split(".")[-1].startswith("_")]
        for qualname, fn in callables:
            try:
                signature = inspect.signature(fn)
            except (TypeError, ValueError):
                continue
            for arg in signature.parameters.values():
                if arg.default is not inspect.Parameter.empty and arg.default is not None:
                    yield f"{module.__name__}.{qualname}", arg.name, arg.default


def params_keys(arg: str, sections: tuple[str, ...], values: dict) -> tuple[list[str], Callable]:
    """The params.yaml keys a keyword `arg` stands for in `sections` ("" = the top level), and how to turn
    the keyword's value into the key's."""
    if arg in ALIASES and ALIASES[arg][0].rsplit(".", 1)[0] in sections:
        return [ALIASES[arg][0]], ALIASES[arg][1]
    keys = [f"{s}.{arg}" if s else arg for s in sections]
    return [k for k in keys if k in values], lambda v: v


def mismatches(qualname: str, arg: str, default, sections: tuple[str, ...], values: dict) -> list[str]:
    """`qualname(arg=default) but params.yaml key: value` for each key `arg` stands for whose value differs."""
    found = []
    keys, convert = params_keys(arg, sections, values)
    for key in keys:
        expected = values[key]
        if expected == "auto" and arg in RULE_REFERENCES:
            expected = RULE_REFERENCES[arg]
        if convert(default) != expected:
            found.append(f"{qualname}({arg}={default!r}) but params.yaml {key}: {values[key]!r}")
    return found


def disagreements(module, sections: tuple[str, ...], values: dict[str, object]) -> list[str]:
    """`qualname(arg=default)` vs `key: value` for each default of `module` that differs from params.yaml."""
    found = []
    for qualname, arg, default in keyword_defaults(module):
        if ("*", arg) in NOT_PARAMS or (qualname, arg) in NOT_PARAMS:
            continue
        found += mismatches(qualname, arg, default, sections, values)
    return found


def library_modules() -> Iterator[tuple[str, object]]:
    for info in pkgutil.walk_packages(gain.__path__, "gain."):
        wing = info.name.split(".")[1]
        if wing in WING_SECTIONS and not info.ispkg:
            yield wing, importlib.import_module(info.name)


def test_no_keyword_default_disagrees_with_params_yaml():
    values = params_values()
    found = [d for wing, mod in library_modules() for d in disagreements(mod, WING_SECTIONS[wing], values)]
    assert not found, "\n".join(found)


def test_the_walk_sees_the_defaults_that_mirror_params():
    """The check above compares something: GAIN's soft-mask and BN knobs, the losses' floors, the synthetic
    generator's fields, the saliency resolution and the VOC label rule are all found."""
    seen = {(q.rsplit(".", 1)[-1], a) for _, mod in library_modules() for q, a, _ in keyword_defaults(mod)}
    for expected in [("GAIN", "sigma"), ("GAIN", "omega"), ("GAIN", "differentiable"), ("GAIN", "am_grad"),
                     ("sec_probs", "min_prob"), ("expansion_loss", "d_fg"), ("SyntheticConfig", "object_size"),
                     ("class_agnostic_saliency", "at"), ("labels_from_xml", "rule")]:  # fmt: skip
        assert expected in seen, expected


def test_a_planted_disagreement_is_named():
    import types

    module = types.ModuleType("gain.cam.planted")

    values = params_values()
    sigma = values["gain.sigma"] + 0.1
    detached = values["gain.grad_weights"] != "differentiable"  # the other choice

    def soft(x, *, sigma: float = sigma, differentiable: bool = detached, batch_size: int = 3, omega=None):
        return x

    soft.__module__ = module.__name__
    module.soft = soft
    assert disagreements(module, WING_SECTIONS["cam"], values) == [
        f"gain.cam.planted.soft(sigma={sigma!r}) but params.yaml gain.sigma: {values['gain.sigma']!r}",
        f"gain.cam.planted.soft(differentiable={detached!r}) but params.yaml gain.grad_weights: "
        f"{values['gain.grad_weights']!r}",
    ]


# ---------------------------------------------------------------- constructors built from params sections


def params_dataclasses(cls=Params, section: str = "") -> Iterator[tuple[type, str]]:
    """(dataclass, its params.yaml section) for Params and every section dataclass under it ("" = top)."""
    yield cls, section
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from params_dataclasses(hints[f.name], f"{section}.{f.name}" if section else f.name)


def built_from_params() -> list[tuple[type, str]]:
    """The constructors the pipeline calls with a params section's values, and that section."""
    return [(GAIN, "gain"), (Classifier, "gain"), (LargeFOV, "sec"), *params_dataclasses()]


def constructor_defaults(cls) -> dict[str, object]:
    """Every default of `cls`'s constructor, None included: a dataclass's field defaults (factories
    called), else its __init__ keywords."""
    if dataclasses.is_dataclass(cls):
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
    params = inspect.signature(cls).parameters.values()
    return {a.name: a.default for a in params if a.default is not inspect.Parameter.empty}


def constructor_disagreements(cls, section: str, values: dict) -> list[str]:
    return [
        found
        for arg, default in constructor_defaults(cls).items()
        for found in mismatches(cls.__name__, arg, default, (section,), values)
    ]


def test_no_constructor_built_from_params_has_a_default_that_disagrees():
    values = params_values()
    found = [
        d for cls, section in built_from_params() for d in constructor_disagreements(cls, section, values)
    ]
    assert not found, "\n".join(found)


def test_the_constructor_walk_compares_the_defaults_that_mirror_params():
    """The check above compares something: GAIN's keywords (differentiable through its alias), the
    classifier's weights and head; and it reaches every params section, nested ones included."""
    values = params_values()
    compared = {
        (cls.__name__, arg)
        for cls, section in built_from_params()
        for arg in constructor_defaults(cls)
        if params_keys(arg, (section,), values)[0]
    }
    for arg in ("sigma", "omega", "differentiable", "masked_bn", "erase", "am_grad"):
        assert ("GAIN", arg) in compared, arg
    assert {("Classifier", "weights"), ("Classifier", "head")} <= compared
    walked = dict(params_dataclasses())
    assert {"", "gain", "sec", "data.synthetic", "runtime.mlflow"} <= set(walked.values())
    defined = {c for c in vars(params_module).values() if inspect.isclass(c) and dataclasses.is_dataclass(c)}
    assert set(walked) == defined  # every dataclass of gain/runtime/params.py, each in one section


def test_a_planted_constructor_default_is_named():
    values = params_values()

    @dataclasses.dataclass(frozen=True)
    class Planted:
        sigma: float = values["gain.sigma"] + 0.1
        omega: float = values["gain.omega"]  # agrees
        head: str | None = None  # None differs from params.yaml's gap too
        lr: tuple = dataclasses.field(default_factory=lambda: (values["gain.lr"],))

    assert constructor_disagreements(Planted, "gain", values) == [
        f"Planted(sigma={values['gain.sigma'] + 0.1!r}) but params.yaml gain.sigma: {values['gain.sigma']!r}",
        f"Planted(head=None) but params.yaml gain.head: {values['gain.head']!r}",
        f"Planted(lr={(values['gain.lr'],)!r}) but params.yaml gain.lr: {values['gain.lr']!r}",
    ]
