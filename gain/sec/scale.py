"""SEC's scale-bound constants carried to another grid by one rule.

SEC tuned four constants for a 41x41 output on 321 px inputs, with the test-time CRF on ~500 px images: the
GWRP decays d_fg = 0.996 and d_bg = 0.999 of the expansion loss, and the dense CRF's spatial stds (bilateral
80 px and Gaussian 3 px, divided by the scale s: s = 12 during training at 41x41, s = 1 at test time). Copied
to another grid they mean something else (GWRP 0.996 rests a class's score on 15% of 41x41 cells but on 69%
of 14x14 cells). The rule keeps what each constant means:

- GWRP: the decay on an n-cell map is the one whose mean weight (1 - d^n) / ((1 - d) n), the effective
  fraction of cells a class's score rests on, equals SEC's at 41x41 (0.149 for d_fg, 0.484 for d_bg).
- CRF: the spatial stds stay the same fraction of the side of the image the CRF runs on: s = s_SEC x
  side_SEC / side, with side the longer side (SEC: 41 cells at training, 500 px, VOC's longer side, at
  test time). The colour std is in intensity units and does not scale.

At SEC's own scale (41x41, 500 px) the rule returns SEC's values exactly.
"""

from __future__ import annotations

import functools

SEC_GRID = 41  # SEC's output side at 321 px (DeepLab-LargeFOV, stride 8)
SEC_D_FG = 0.996
SEC_D_BG = 0.999
SEC_TRAIN_CRF_SCALE = 12.0  # on the SEC_GRID x SEC_GRID image the training CRF runs on
SEC_TEST_SIDE = 500  # VOC's longer image side, where SEC's test-time CRF runs with s = 1
SEC_TEST_CRF_SCALE = 1.0


def gwrp_fraction(d: float, n: int) -> float:
    """Mean GWRP weight over n sorted cells, (1 - d^n) / ((1 - d) n): the effective fraction of the cells a
    class's pooled score rests on (1 for d = 1: plain averaging)."""
    if not 0.0 <= d <= 1.0 or n < 1:
        raise ValueError(f"gwrp_fraction: need 0 <= d <= 1 and n >= 1, got d={d}, n={n}")
    return 1.0 if d == 1.0 else (1.0 - d**n) / ((1.0 - d) * n)


@functools.lru_cache(maxsize=64)
def gwrp_decay(d_ref: float, n: int, n_ref: int = SEC_GRID * SEC_GRID) -> float:
    """The decay on an n-cell map with the effective fraction that `d_ref` has on n_ref cells (bisection to
    1e-15; gwrp_fraction falls strictly as d falls). n == n_ref returns d_ref itself."""
    if n == n_ref:
        return float(d_ref)
    target = gwrp_fraction(d_ref, n_ref)
    if target <= 1.0 / n:  # at most one cell's weight: max pooling
        return 0.0
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-15:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gwrp_fraction(mid, n) < target else (lo, mid)
    return 0.5 * (lo + hi)


def crf_scale(side: int, *, ref_side: float, ref_scale: float) -> float:
    """The CRF scale s on an image whose longer side is `side` (pixels or cells) that keeps the spatial stds
    the fraction of the side they are at (ref_side, ref_scale): s = ref_scale x ref_side / side."""
    if side < 1:
        raise ValueError(f"crf_scale: side must be >= 1, got {side}")
    return ref_scale * ref_side / side


def train_crf_scale(grid: tuple[int, int]) -> float:
    """SEC's training CRF scale (12 at 41x41) carried to an output grid (h, w)."""
    return crf_scale(max(grid), ref_side=SEC_GRID, ref_scale=SEC_TRAIN_CRF_SCALE)


def inference_crf_scale(size: tuple[int, int]) -> float:
    """SEC's test-time CRF scale (1 on a 500 px image) carried to an image of (h, w) pixels."""
    return crf_scale(max(size), ref_side=SEC_TEST_SIDE, ref_scale=SEC_TEST_CRF_SCALE)


def resolve(value: float | str, rule, *args) -> float:
    """A params value that is a number or "auto": the number, or `rule(*args)` for "auto"."""
    return float(rule(*args)) if value == "auto" else float(value)


def gwrp_decays(d_fg: float | str, d_bg: float | str, grid: tuple[int, int]) -> tuple[float, float]:
    """(d_fg, d_bg) for an output grid (h, w): each a number, or "auto" for SEC's decay carried to h x w cells."""
    n = grid[0] * grid[1]
    return resolve(d_fg, gwrp_decay, SEC_D_FG, n), resolve(d_bg, gwrp_decay, SEC_D_BG, n)
