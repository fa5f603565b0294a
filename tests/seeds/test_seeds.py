import math

import numpy as np
import pytest

from gain.evaluation.metrics import ConfusionMatrix
from gain.seeds.cues import dense_from_attention, make_cues
from gain.seeds.quality import seed_quality

RULE = {"fg_fraction": 0.2, "bg_threshold": 0.05}  # SEC's foreground rule; a small background threshold

CLASSES = [3, 7]
# Two (2, 4) maps. Class 3 peaks at 0.8, so its foreground threshold is 0.2 * 0.8 = 0.16.
ATTN = np.array(
    [
        [[0.80, 0.18, 0.00, 0.70], [0.10, 0.045, 0.00, 0.00]],  # class 3
        [[0.00, 0.00, 0.00, 0.75], [0.04, 0.00, 0.60, 0.00]],  # class 7, max 0.75: threshold 0.15
    ]
)
# Per pixel:
#   (0,0) 0.8 > 0.16                        -> 3
#   (0,1) 0.18 > 0.16 (relative; not > 0.2) -> 3
#   (0,2) both 0 < 0.05                     -> background
#   (0,3) both claim; normalised 0.7/0.8 = 0.875 vs 0.75/0.75 = 1.0 -> 7 with "max", 255 with "ignore"
#   (1,0) class 7 is < 0.05 but class 3 (0.1) is not, and 0.1 < 0.16 -> 255
#   (1,1) 0.045 < 0.05 absolute (normalised 0.056 would not be)     -> background
#   (1,2) 0.6 > 0.15                        -> 7
#   (1,3) both 0                            -> background
CUES_MAX = [[3, 3, 0, 7], [255, 0, 7, 0]]
CUES_IGNORE = [[3, 3, 0, 255], [255, 0, 7, 0]]


def test_make_cues_max_rule():
    cues = make_cues(ATTN, CLASSES, fg_fraction=0.2, bg_threshold=0.05, conflict="max")
    assert cues.dtype == np.uint8 and cues.shape == (2, 4)
    np.testing.assert_array_equal(cues, CUES_MAX)


def test_make_cues_ignore_rule():
    cues = make_cues(ATTN, CLASSES, fg_fraction=0.2, bg_threshold=0.05, conflict="ignore")
    np.testing.assert_array_equal(cues, CUES_IGNORE)


def test_make_cues_conflict_uses_normalised_not_raw_attention():
    # Raw attention favours class 2 at (0, 0) (0.5 > 0.4) but normalised favours class 1 (1.0 > 0.5).
    attn = np.array([[[0.4, 0.0]], [[0.5, 1.0]]])
    np.testing.assert_array_equal(make_cues(attn, [1, 2], **RULE), [[1, 2]])


def test_make_cues_order_follows_classes():
    np.testing.assert_array_equal(make_cues(ATTN[::-1], CLASSES[::-1], **RULE), CUES_MAX)


def test_zero_map_is_written_as_zeros_whatever_the_memory_held_before():
    # An all-zero map's normalised values must be written (0), not left as whatever a freed block of the same
    # size held: numpy reuses small freed blocks, so free one full of ones just before each call.
    attn = np.zeros((2, 4, 4))
    attn[0, 1:3, 1:3] = 1.0
    for _ in range(5):
        junk = np.ones_like(attn)
        del junk
        cues = make_cues(attn, [3, 7], **RULE)
        assert not (cues == 7).any()
        junk = np.ones_like(attn)
        del junk
        assert not (dense_from_attention(attn, [3, 7], bg_threshold=0.05) == 7).any()


def test_make_cues_zero_map_contributes_nothing():
    zero = np.zeros((1, 2, 4))
    with_zero = make_cues(np.concatenate([ATTN[:1], zero]), [3, 7], **RULE)
    np.testing.assert_array_equal(with_zero, make_cues(ATTN[:1], [3], **RULE))
    np.testing.assert_array_equal(make_cues(zero, [5], **RULE), np.zeros((2, 4)))  # all background, no nan


def test_make_cues_no_classes_is_all_background():
    cues = make_cues(np.zeros((0, 3, 2)), [], **RULE)
    assert cues.shape == (3, 2) and cues.dtype == np.uint8
    assert (cues == 0).all()


def test_make_cues_foreground_wins_over_background():
    # A weak map (max 0.04): its peak is foreground (relative rule) though below the absolute bg threshold.
    np.testing.assert_array_equal(make_cues(np.array([[[0.04, 0.0]]]), [5], **RULE), [[5, 0]])


def test_make_cues_validates():
    with pytest.raises(ValueError, match=r"'max', 'ignore'.*'maxx'"):
        make_cues(ATTN, CLASSES, conflict="maxx", **RULE)
    with pytest.raises(ValueError, match="1 classes for 2 attention maps"):
        make_cues(ATTN, [3], **RULE)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_cues(ATTN * 3, CLASSES, **RULE)
    with pytest.raises(ValueError, match="foreground"):
        make_cues(ATTN, [0, 7], **RULE)


def test_dense_from_attention():
    # Normalised: class 3 = ATTN[0] / 0.8, class 7 = ATTN[1] / 0.75.
    #   (0,3) 0.875 vs 1.0 -> 7;  (1,0) 0.125 vs 0.053 -> 3;  (1,1) 0.056 >= 0.05 -> 3;  zeros -> 0.
    dense = dense_from_attention(ATTN, CLASSES, bg_threshold=0.05)
    assert dense.dtype == np.uint8
    np.testing.assert_array_equal(dense, [[3, 3, 0, 7], [3, 3, 7, 0]])
    # A higher threshold sends the weak pixels (1,0) and (1,1) to background.
    np.testing.assert_array_equal(
        dense_from_attention(ATTN, CLASSES, bg_threshold=0.2), [[3, 3, 0, 7], [0, 0, 7, 0]]
    )
    assert (dense_from_attention(np.zeros((0, 2, 2)), [], bg_threshold=0.05) == 0).all()


# 3 classes. (1, 2) is void and carries a wrong seed that must not count.
GT = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], dtype=np.uint8)
SEEDS = np.array([[0, 255, 1, 2], [2, 255, 1, 0]], dtype=np.uint8)
# Non-void: 7 pixels, labeled 5: (0,0) bg ok, (0,2) 1 ok, (0,3) 2 wrong, (1,0) 2 ok, (1,3) 0 wrong.
# Foreground gt: class 1 at (0,2), (0,3), (1,3); class 2 at (1,0), (1,1) -> 5; correctly seeded: 2.


def check_hand_quality(out):
    assert out["precision"] == pytest.approx(3 / 5)
    assert out["recall"] == pytest.approx(2 / 5)
    assert out["labeled_fraction"] == pytest.approx(5 / 7)
    assert out["bg_precision"] == pytest.approx(1 / 2)
    assert out["fg_precision"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(out["class_precision"], [1 / 2, 1 / 1, 1 / 2])
    np.testing.assert_allclose(out["class_recall"], [1 / 2, 1 / 3, 1 / 2])
    assert (out["labeled_pixels"], out["num_pixels"]) == (5, 7)


def test_seed_quality_hand_computed():
    sq = ConfusionMatrix(3)
    sq.update(GT, SEEDS)
    check_hand_quality(seed_quality(sq))


def test_seed_quality_accumulates_and_excludes_void():
    sq = ConfusionMatrix(3)
    sq.update(GT[:1], SEEDS[:1])
    sq.update(GT[1:], SEEDS[1:])
    sq.update(np.full((1, 3), 255), np.array([[1, 2, 0]]))  # an all-void row: no effect
    check_hand_quality(seed_quality(sq))


def test_seed_quality_undefined_is_nan():
    sq = ConfusionMatrix(3)
    sq.update(np.array([[0, 1]]), np.array([[0, 255]]))
    out = seed_quality(sq)
    assert math.isnan(out["fg_precision"]) and math.isnan(out["class_precision"][1])
    assert out["recall"] == 0.0 and out["precision"] == 1.0


def test_seed_quality_validates():
    sq = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"gt shape \(4, 2\) does not match pred shape \(2, 4\)"):
        sq.update(GT.reshape(4, 2), SEEDS)
    with pytest.raises(ValueError, match="pred holds label value 9"):
        sq.update(GT, np.full((2, 4), 9))


# ---------------------------------------------------------------- background by SEC's saliency rule


def test_make_cues_with_a_background_mask_foreground_wins():
    # The saliency rule marks (0, 0), (0, 2) and (1, 3) background; (0, 0) is class 3's foreground, so it
    # stays 3 (SEC's released cues: one label per cell). No attention threshold is applied.
    bg = np.array([[True, False, True, False], [False, False, False, True]])
    cues = make_cues(ATTN, CLASSES, fg_fraction=0.2, background=bg)
    np.testing.assert_array_equal(cues, [[3, 3, 0, 7], [255, 255, 7, 0]])
    # No class present: exactly the mask is background.
    np.testing.assert_array_equal(
        make_cues(np.zeros((0, 2, 4)), [], fg_fraction=0.2, background=bg), np.where(bg, 0, 255)
    )


def test_make_cues_needs_exactly_one_background_rule():
    bg = np.zeros((2, 4), dtype=bool)
    with pytest.raises(ValueError, match="exactly one"):
        make_cues(ATTN, CLASSES, fg_fraction=0.2)
    with pytest.raises(ValueError, match="exactly one"):
        make_cues(ATTN, CLASSES, fg_fraction=0.2, bg_threshold=0.1, background=bg)
    with pytest.raises(ValueError, match=r"bool mask of shape \(2, 4\)"):
        make_cues(ATTN, CLASSES, fg_fraction=0.2, background=np.zeros((2, 4)))


def test_seed_quality_splits_labeled_fraction_into_fg_and_bg():
    # SEEDS vs GT above: 7 non-void pixels; background seeds at (0,0), (1,3); foreground at (0,2), (0,3),
    # (1,0).
    sq = ConfusionMatrix(3)
    sq.update(GT, SEEDS)
    out = seed_quality(sq)
    assert out["bg_labeled_fraction"] == pytest.approx(2 / 7)
    assert out["fg_labeled_fraction"] == pytest.approx(3 / 7)
    assert out["fg_labeled_fraction"] + out["bg_labeled_fraction"] == pytest.approx(out["labeled_fraction"])


# ------------------------------------------------------------------- edges the mutation run pointed at


def test_cue_validation_messages_name_the_problem():
    with pytest.raises(ValueError, match=r"^attn must be \(K, H, W\), got shape \(2, 4\)$"):
        make_cues(ATTN[0], [3], **RULE)
    # Three maps, one class: the message counts the maps, not the rows.
    with pytest.raises(ValueError, match="^got 1 classes for 3 attention maps$"):
        make_cues(np.zeros((3, 2, 4)), [3], **RULE)
    with pytest.raises(
        ValueError, match=r"^classes must be distinct foreground indices in \[1, 255\), got \[255\]$"
    ):
        make_cues(ATTN[:1], [255], **RULE)
    for bad in (ATTN * 1.5, np.where(ATTN > 0.7, np.nan, ATTN)):  # max 1.2 (< 2); a nan but no value < 0
        with pytest.raises(ValueError, match=r"^attn must be finite and normalised into \[0, 1\]$"):
            make_cues(bad, CLASSES, **RULE)
    with pytest.raises(
        ValueError, match="^give exactly one background rule: bg_threshold or a background mask$"
    ):
        make_cues(ATTN, CLASSES, fg_fraction=0.2)


def test_integer_attention_maps_give_the_float_result():
    # 0/1 maps (e.g. masks used as attention) are read as floats: same cues and dense map as 0.0/1.0 maps.
    maps = np.array([[[1, 0], [0, 0]], [[0, 0], [1, 0]]])
    assert maps.dtype.kind == "i"
    np.testing.assert_array_equal(make_cues(maps, [2, 4], **RULE), [[2, 0], [4, 0]])
    np.testing.assert_array_equal(dense_from_attention(maps, [2, 4], bg_threshold=0.5), [[2, 0], [4, 0]])


def test_background_thresholds_are_strict():
    # A value equal to the threshold is not below it. Threshold rule with fg_fraction 0.3: 1.0 is foreground,
    # 0.25 is neither foreground (not > 0.3) nor background (not < 0.25) -> 255, 0.125 is background.
    attn = np.array([[[1.0, 0.25, 0.125]]])
    np.testing.assert_array_equal(make_cues(attn, [3], fg_fraction=0.3, bg_threshold=0.25), [[3, 255, 0]])
    # Dense: normalised 1.0, 0.25, 0.125 against 0.25 -> class, class (0.25 is not < 0.25), background.
    np.testing.assert_array_equal(dense_from_attention(attn, [3], bg_threshold=0.25), [[3, 3, 0]])


def test_dense_map_ignores_an_all_zero_map():
    # Class 2's map is all zero: its normalised map is 0 (not 0/0 = nan, which argmax would pick).
    attn = np.array([[[0.0, 0.0]], [[0.5, 0.0]]])
    np.testing.assert_array_equal(dense_from_attention(attn, [2, 5], bg_threshold=0.1), [[5, 0]])


def test_seed_quality_validation():
    smallest = ConfusionMatrix(2)
    smallest.update(np.array([[1, 1, 0]]), np.array([[0, 1, 255]]))
    assert seed_quality(smallest)["labeled_pixels"] == 2  # the smallest case
    with pytest.raises(ValueError, match=r"^num_classes must be >= 2 \(background \+ a class\), got 1$"):
        seed_quality(ConfusionMatrix(1))
    sq = ConfusionMatrix(3)
    with pytest.raises(
        ValueError, match=r"^gt holds label value 3 \(all bad values: \[3\]\) outside \[0, 3\)"
    ):
        sq.update(np.array([[3, 0]]), np.zeros((1, 2), np.uint8))
    with pytest.raises(TypeError, match="^gt must hold integer labels, got dtype float64$"):
        sq.update(np.zeros((1, 2)), np.zeros((1, 2), np.uint8))
    assert (sq.mat == 0).all() and (sq.unlabeled == 0).all()  # nothing was added by the rejected updates


def test_seed_quality_of_nothing_is_nan():
    out = seed_quality(ConfusionMatrix(2))
    assert math.isnan(out["miou"]) and math.isnan(out["precision"]) and out["num_pixels"] == 0


def test_seed_quality_bg_precision_uses_background_counts():
    # Seeds 0 0 | 0 1 against gt 0 0 | 1 1: background seeded 3 times, right twice -> 2/3; class 1 right once.
    sq = ConfusionMatrix(2)
    sq.update(np.array([[0, 0], [1, 1]]), np.array([[0, 0], [0, 1]]))
    out = seed_quality(sq)
    assert out["bg_precision"] == pytest.approx(2 / 3) and out["fg_precision"] == 1.0
