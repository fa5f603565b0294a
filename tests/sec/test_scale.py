"""SEC's scale-bound constants carried to another grid (gain.sec.scale): SEC's own values at SEC's scale,
the same meaning (effective fraction of cells, std as a fraction of the side) elsewhere, and `auto` reaching
the SEC step and the test-time CRF."""

from __future__ import annotations

import math

import pytest

from gain.sec import scale
from gain.sec.scale import (
    gwrp_decay,
    gwrp_decays,
    gwrp_fraction,
    inference_crf_scale,
    resolve,
    train_crf_scale,
)


def test_gwrp_fraction_by_hand():
    # d = 0.5 over 3 cells: weights 1, 0.5, 0.25 -> mean 1.75 / 3.
    assert gwrp_fraction(0.5, 3) == pytest.approx(1.75 / 3)
    assert gwrp_fraction(1.0, 7) == 1.0  # plain average
    assert gwrp_fraction(0.0, 4) == pytest.approx(0.25)  # max pooling: one cell of four


def test_sec_values_at_sec_scale_exactly():
    n = 41 * 41
    assert gwrp_decay(0.996, n) == 0.996
    assert gwrp_decay(0.999, n) == 0.999
    assert gwrp_decays("auto", "auto", (41, 41)) == (0.996, 0.999)
    assert train_crf_scale((41, 41)) == 12.0
    assert inference_crf_scale((375, 500)) == 1.0  # VOC's usual 500 px longer side
    # NOTES-gain-sec.md: 0.149 and 0.484 of the 41x41 cells.
    assert gwrp_fraction(0.996, n) == pytest.approx(0.149, abs=5e-4)
    assert gwrp_fraction(0.999, n) == pytest.approx(0.484, abs=5e-4)


@pytest.mark.parametrize("n", [49, 196, 400, 1024, 4225])
def test_gwrp_decay_keeps_the_effective_fraction(n):
    for d_ref in (0.996, 0.999):
        d = gwrp_decay(d_ref, n)
        assert gwrp_fraction(d, n) == pytest.approx(gwrp_fraction(d_ref, 41 * 41), rel=1e-9)
        assert (d < d_ref) == (n < 41 * 41)  # fewer cells need a faster decay


def test_gwrp_decay_on_the_default_grid_matches_the_notes():
    # NOTES-gain-sec.md: at 14x14 keeping 0.149 / 0.484 needs d_fg ~0.966 and d_bg ~0.991.
    d_fg, d_bg = gwrp_decays("auto", "auto", (14, 14))
    assert d_fg == pytest.approx(0.966, abs=1e-3)
    assert d_bg == pytest.approx(0.991, abs=1e-3)
    # The unchanged constants would rest a class's score on 69% / 91% of the cells.
    assert gwrp_fraction(0.996, 196) == pytest.approx(0.694, abs=1e-3)
    assert gwrp_fraction(0.999, 196) == pytest.approx(0.908, abs=1e-3)


def test_gwrp_decay_with_too_few_cells_is_max_pooling():
    assert gwrp_decay(0.996, 4) == 0.0  # 0.149 of 4 cells is less than one cell


def test_crf_std_stays_the_same_fraction_of_the_side():
    bilateral_px = 80.0
    sec_train = bilateral_px / 12.0 / 41  # 16% of the side
    for side in (14, 21, 41, 65):
        assert bilateral_px / train_crf_scale((side, side)) / side == pytest.approx(sec_train)
    sec_test = bilateral_px / 1.0 / 500
    for size in ((112, 112), (333, 500), (1000, 4000)):
        assert bilateral_px / inference_crf_scale(size) / max(size) == pytest.approx(sec_test)
    assert train_crf_scale((14, 14)) == pytest.approx(12 * 41 / 14)
    assert inference_crf_scale((112, 112)) == pytest.approx(500 / 112)


def test_resolve_takes_a_number_or_the_rule():
    assert resolve(3.0, train_crf_scale, (14, 14)) == 3.0
    assert resolve("auto", train_crf_scale, (14, 14)) == pytest.approx(35.142857, rel=1e-6)
    assert resolve(0.5, gwrp_decay, 0.996, 196) == 0.5


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="side"):
        scale.crf_scale(0, ref_side=41, ref_scale=12)
    with pytest.raises(ValueError, match="d=1.5"):
        gwrp_fraction(1.5, 3)
    assert math.isfinite(gwrp_decay(0.5, 2))
