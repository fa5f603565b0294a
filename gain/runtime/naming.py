"""What the experiment calls things: each method's name (in every report, figure and run name) and the
registered-model name of each network a stage hands on."""

from __future__ import annotations

# Registered-model names of the networks a stage hands on (MLflow's model registry; `gain.predict
# --model-version` loads them back by these names).
REGISTERED = {"gain": "gain-classifier", "sec": "sec-segmenter"}


def method_name(alpha: float, ext: bool) -> str:
    """One name per method, used in every report, figure and run name."""
    if ext:
        return "GAIN_ext"
    return "GAIN" if alpha > 0 else "Grad-CAM"
