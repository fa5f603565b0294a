import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, confusion_matrix, jaccard_score

from gain.evaluation.metrics import (
    ConfusionMatrix,
    average_precision,
    exact_match_accuracy,
    mean_average_precision,
)

NAMES = ["bg", "cat", "dog", "cow"]

# 4 classes; class 3 (cow) appears in neither map. (1, 2) is void in gt; (1, 3) is left unlabeled (255).
GT = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1], [2, 0, 2, 255]], dtype=np.uint8)
# Counted by hand, pixel by pixel:
#   bg:  TP (0,0); FN (0,1) -> cat; FP (1,1) from dog      -> IoU 1 / 3
#   cat: TP (0,2), (0,3); FP (0,1); FN (1,3) unlabeled     -> IoU 2 / 4
#   dog: TP (1,0); FN (1,1); pred 2 at void (1,2) ignored  -> IoU 1 / 2
#   cow: absent from gt and pred                           -> nan, not averaged
EXPECTED_IOU = [1 / 3, 2 / 4, 1 / 2]
EXPECTED_MIOU = (1 / 3 + 1 / 2 + 1 / 2) / 3  # 4 / 9


def test_hand_computed_miou_with_void_unlabeled_and_absent_class():
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    out = cm.compute(NAMES)

    assert out["matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert out["unlabeled"] == 1
    np.testing.assert_allclose(out["iou"][:3], EXPECTED_IOU)
    assert math.isnan(out["iou"][3])
    assert out["present"] == [True, True, True, False]
    assert out["absent_classes"] == ["cow"]
    assert out["miou"] == pytest.approx(4 / 9)
    assert out["miou"] == pytest.approx(EXPECTED_MIOU)
    # 4 correct of 7 non-void pixels (the unlabeled one is a miss).
    assert out["pixel_accuracy"] == pytest.approx(4 / 7)
    np.testing.assert_allclose(out["recall"][:3], [1 / 2, 2 / 3, 1 / 2])
    assert out["mean_class_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    # The unlabeled pixel is nobody's false positive: cat precision 2/3, dog 1/1.
    np.testing.assert_allclose(out["precision"][:3], [1 / 2, 2 / 3, 1 / 1])
    assert math.isnan(out["precision"][3]) and math.isnan(out["recall"][3])


def test_absent_classes_are_indices_without_names():
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    assert cm.compute()["absent_classes"] == [3]


def test_class_in_gt_with_zero_tp_counts_as_zero():
    # Class 2 is in gt but never predicted; class 3 only predicted (pure FP). Both count as 0 in the mean.
    gt = np.array([0, 0, 1, 2, 2])
    pred = np.array([0, 3, 1, 0, 1])
    cm = ConfusionMatrix(4)
    cm.update(gt, pred)
    out = cm.compute()
    # bg: TP 1, FP 1 (gt 2), FN 1 (pred 3) -> 1/3; class 1: TP 1, FP 1 -> 1/2; class 2: 0/2; class 3: 0/1.
    np.testing.assert_allclose(out["iou"], [1 / 3, 1 / 2, 0.0, 0.0])
    assert out["present"] == [True, True, True, True]
    assert out["absent_classes"] == []
    assert out["miou"] == pytest.approx((1 / 3 + 1 / 2) / 4)


def test_all_void_image_changes_nothing():
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    cm.update(np.full((3, 3), 255, dtype=np.uint8), np.ones((3, 3), dtype=np.uint8))
    assert cm.compute()["matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert cm.compute()["miou"] == pytest.approx(4 / 9)


def test_empty_matrix_gives_nan_not_error():
    out = ConfusionMatrix(3).compute()
    assert math.isnan(out["miou"]) and math.isnan(out["pixel_accuracy"])
    assert out["absent_classes"] == [0, 1, 2]


def test_matches_sklearn_over_several_updates():
    rng = np.random.default_rng(0)
    c = 6
    cm = ConfusionMatrix(c)
    all_gt, all_pred = [], []
    for _ in range(5):
        gt = rng.integers(0, c, size=(2, 17, 23)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = rng.integers(0, c, size=gt.shape).astype(np.uint8)
        cm.update(gt, pred)
        keep = gt != 255
        all_gt.append(gt[keep])
        all_pred.append(pred[keep])
    y_true, y_pred = np.concatenate(all_gt), np.concatenate(all_pred)
    expected = confusion_matrix(y_true, y_pred, labels=list(range(c)))
    np.testing.assert_array_equal(np.array(cm.compute()["matrix"]), expected)
    np.testing.assert_allclose(cm.compute()["iou"], jaccard_score(y_true, y_pred, average=None))
    assert cm.mat.dtype == np.int64


def test_torch_tensors_accepted():
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(GT, PRED)
    b.update(torch.from_numpy(GT.astype(np.int64)), torch.from_numpy(PRED.astype(np.int64)))
    np.testing.assert_array_equal(a.mat, b.mat)
    np.testing.assert_array_equal(a.unlabeled, b.unlabeled)


def test_shape_mismatch_names_both_shapes():
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(4, 2\)"):
        cm.update(GT, PRED.reshape(4, 2))


@pytest.mark.parametrize("which", ["gt", "pred"])
def test_out_of_range_label_names_value(which):
    bad = GT.copy() if which == "gt" else PRED.copy()
    bad[0, 0] = 7
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match=rf"{which} holds label value 7 .*\[0, 4\)"):
        cm.update(bad, PRED) if which == "gt" else cm.update(GT, bad)
    assert cm.mat.sum() == 0  # nothing half-added


def test_negative_label_rejected():
    with pytest.raises(ValueError, match="label value -1"):
        ConfusionMatrix(4).update(np.array([0, -1]), np.array([0, 1]))


def test_float_labels_rejected():
    with pytest.raises(TypeError, match="float"):
        ConfusionMatrix(4).update(np.zeros(3), np.zeros(3, dtype=np.int64))


def test_dataframes():
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    df = cm.to_dataframe(NAMES)
    assert list(df.index) == NAMES and list(df.columns) == NAMES
    assert df.loc["dog", "bg"] == 1 and df.loc["bg", "cat"] == 1 and df.loc["cat", "cat"] == 2
    table = cm.per_class_table(NAMES)
    assert list(table.columns) == ["class", "iou", "precision", "recall", "gt_pixels", "pred_pixels"]
    assert table["gt_pixels"].tolist() == [2, 3, 2, 0]  # cat includes the unlabeled pixel
    assert table["pred_pixels"].tolist() == [2, 3, 1, 0]
    np.testing.assert_allclose(table["iou"][:3], EXPECTED_IOU)
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        cm.to_dataframe(NAMES[:3])


def test_average_precision_hand_values():
    scores = np.array([[0.9, 0.5, 0.3], [0.8, 0.5, 0.2], [0.7, 0.1, 0.1], [0.6, 0.0, 0.0]])
    labels = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    ap = average_precision(scores, labels)
    # Column 0: hits at ranks 1 and 3 -> 1 * 1/2 + 2/3 * 1/2.
    assert ap[0] == pytest.approx(1 / 2 + 1 / 3)
    # Column 1: the two 0.5 scores tie (one hit, one miss) -> one threshold at P = 1/2, R = 1/2; then 2/3.
    assert ap[1] == pytest.approx(1 / 2 * 1 / 2 + 1 / 2 * 2 / 3)
    assert math.isnan(ap[2])  # no positives
    assert mean_average_precision(scores, labels) == pytest.approx((5 / 6 + 7 / 12) / 2)


def test_average_precision_matches_sklearn():
    rng = np.random.default_rng(1)
    n, k = 60, 5
    labels = (rng.random((n, k)) < 0.3).astype(int)
    labels[0] = 1  # every class has a positive
    scores = np.round(rng.random((n, k)) + 0.5 * labels, 1)  # rounding makes ties
    expected = [average_precision_score(labels[:, j], scores[:, j]) for j in range(k)]
    np.testing.assert_allclose(average_precision(scores, labels), expected)
    assert mean_average_precision(scores, labels) == pytest.approx(np.mean(expected))


def test_average_precision_validates():
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(3, 1\)"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="0/1"):
        average_precision(np.zeros((2, 2)), np.full((2, 2), 2))


def test_exact_match_accuracy():
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.4, 0.1], [0.5, 0.0]])
    labels = np.array([[1, 0], [1, 0], [0, 0], [1, 0]])
    # Rows 0 and 2 match; row 1 predicts an extra class; row 3: 0.5 is not > 0.5, so class 0 is missed.
    assert exact_match_accuracy(probs, labels) == pytest.approx(2 / 4)
    assert exact_match_accuracy(probs, labels, threshold=0.45) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        exact_match_accuracy(probs * 4 - 2, labels)  # logits, not probabilities


def test_absent_classes_by_name_and_index():
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    assert cm.compute(NAMES)["absent_classes"] == ["cow"]
    assert cm.compute()["absent_classes"] == [3]


def test_dataframes_name_their_axes_and_table_has_precision_and_recall():
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    df = cm.to_dataframe(NAMES)
    assert (df.index.name, df.columns.name) == ("gt", "pred")
    table = cm.per_class_table()
    assert table["class"].tolist() == [0, 1, 2, 3]
    # precision = TP / predicted pixels: bg 1/2, cat 2/3, dog 1/1; recall = TP / gt pixels: 1/2, 2/3, 1/2.
    np.testing.assert_allclose(table["precision"][:3], [1 / 2, 2 / 3, 1.0])
    np.testing.assert_allclose(table["recall"][:3], [1 / 2, 2 / 3, 1 / 2])
    assert math.isnan(table["precision"][3]) and math.isnan(table["recall"][3])


def test_average_precision_with_one_positive_after_a_class_without_any():
    # Column 0 has no positive (nan, and the loop goes on); column 1's single positive is ranked 2nd -> 1/2.
    scores = np.array([[0.9, 0.8], [0.1, 0.6], [0.5, 0.2]])
    labels = np.array([[0, 0], [0, 1], [0, 0]])
    ap = average_precision(scores, labels)
    assert math.isnan(ap[0]) and ap[1] == pytest.approx(1 / 2)
    assert mean_average_precision(scores, labels) == pytest.approx(1 / 2)


def test_exact_match_accuracy_probability_range_is_inclusive_and_checked_at_both_ends():
    labels = np.array([[1, 0], [0, 0]])
    assert exact_match_accuracy(np.array([[1.0, 0.0], [0.0, 0.0]]), labels) == 1.0  # 1.0 is a probability
    for bad in ([[1.5, 0.0], [0.0, 0.0]], [[0.9, -0.1], [0.0, 0.0]]):  # above 1 only; below 0 only
        with pytest.raises(ValueError, match=r"^probs must lie in \[0, 1\]"):
            exact_match_accuracy(np.array(bad), labels)
    with pytest.raises(ValueError, match=r"^probs and labels must both be \(N, K\)"):
        exact_match_accuracy(np.zeros((2, 3)), labels)
    # No images: undefined, not an error.
    with pytest.warns(RuntimeWarning):
        assert math.isnan(exact_match_accuracy(np.zeros((0, 2)), np.zeros((0, 2))))


def test_confusion_matrix_arguments():
    ConfusionMatrix(1).update(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))  # one class is enough
    with pytest.raises(ValueError, match="^num_classes must be >= 1, got 0$"):
        ConfusionMatrix(0)
    ConfusionMatrix(3, ignore_index=3)  # just past the classes: no collision
    for index in (0, 2):  # the first and the last class index
        with pytest.raises(
            ValueError, match=rf"^ignore_index {index} collides with a class index in \[0, 3\)$"
        ):
            ConfusionMatrix(3, ignore_index=index)


def test_per_class_table_names_its_rows():
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    assert cm.per_class_table(NAMES)["class"].tolist() == NAMES


def test_multilabel_messages_name_the_argument_and_the_bad_values():
    with pytest.raises(ValueError, match=r"^scores and labels must both be \(N, K\)"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 1)))
    # Eleven distinct values: the message lists the first ten.
    labels = np.arange(11).reshape(11, 1)
    with pytest.raises(
        ValueError, match=r"^labels must be 0/1, got values \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]$"
    ):
        average_precision(np.zeros((11, 1)), labels)


def test_average_precision_counts_a_hit_ranked_last_and_ranks_integer_scores_as_numbers():
    # The lowest score is a hit in a run of its own: the last threshold (recall 1) counts, P = 1/2 there.
    assert average_precision(np.array([[0.9], [0.1]]), np.array([[0], [1]]))[0] == pytest.approx(0.5)
    # uint8 scores (e.g. vote counts) rank by value: 200 first, not wrapped around by the negation.
    votes = np.array([[0], [200], [100]], dtype=np.uint8)
    assert average_precision(votes, np.array([[0], [1], [0]]))[0] == 1.0
    with pytest.raises(ValueError, match=r"^scores contain nan or inf$"):
        average_precision(np.array([[np.nan], [0.1]]), np.array([[0], [1]]))


def test_label_equal_to_num_classes_is_out_of_range_and_the_message_lists_ten_bad_values():
    cm = ConfusionMatrix(4)
    with pytest.raises(
        ValueError,
        match=r"^gt holds label value 4 \(all bad values: \[4\]\) outside \[0, 4\) and not ignore_index 255$",
    ):
        cm.update(np.array([0, 4]), np.array([0, 1]))
    gt = np.arange(4, 16)  # twelve bad values
    with pytest.raises(
        ValueError, match=r"^gt holds label value 4 \(all bad values: \[4, 5, 6, 7, 8, 9, 10, 11, 12, 13\]\) "
    ):
        cm.update(gt, np.zeros_like(gt))
    assert cm.mat.sum() == 0
