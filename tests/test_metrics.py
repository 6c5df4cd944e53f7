import numpy as np
import pytest
import torch

from npdg.metrics import ConfusionMatrix, format_table, mean_iou


def brute_force_iou(pred, target, n, ignore=255):
    """Per-class IoU by set counting in float64 numpy; NaN only where the class is neither in the labels nor
    predicted (an empty union: TP + FP + FN = 0)."""
    keep = target != ignore
    pred, target = pred[keep], target[keep]
    out = np.full(n, np.nan)
    for c in range(n):
        inter = np.sum((pred == c) & (target == c))
        union = np.sum((pred == c) | (target == c))
        if union > 0:
            out[c] = inter / union
    return out


def test_hand_computed_example():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(num_classes=4).update(pred, target)
    # rows = truth, cols = prediction; the ignored pixel (pred 2) is not counted
    expected = torch.tensor([[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm.mat, expected)
    iou = cm.iou()
    # class 0: tp 1, fp 2 (from 1 and 2), fn 1 -> 1/4; class 1: tp 2, fp 1, fn 1 -> 1/2; class 2: 1/2
    assert iou[:3].tolist() == pytest.approx([0.25, 0.5, 0.5])
    assert torch.isnan(iou[3])  # neither in the labels nor predicted: undefined, left out
    assert cm.miou() == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 7)
    summary = cm.summary(["a", "b", "c", "d"])
    assert summary["miou"] == pytest.approx(100 * 1.25 / 3)
    assert summary["per_class"]["d"] is None and summary["miou_definition"] == "standard"


def test_a_class_predicted_but_absent_from_the_labels_scores_zero_and_counts():
    """The field's mIoU (cityscapesscripts, mmseg IoUMetric): TP = 0, FP > 0 gives IoU 0, which lowers the mean;
    the legacy mean over classes present in the labels left it out (19.24 vs 16.04 on the issue's fog images)."""
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 0, 1, 2]])  # class 2 predicted once, not in the labels; class 3 nowhere
    cm = ConfusionMatrix(num_classes=4).update(pred, target)
    iou = cm.iou()
    assert iou[:3].tolist() == [1.0, 0.5, 0.0] and torch.isnan(iou[3])
    assert cm.miou() == pytest.approx(1.5 / 3)  # not 1.5 / 2
    assert cm.summary(["a", "b", "c", "d"])["per_class"]["c"] == 0.0

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    n = 19
    target = rng.integers(0, n, (3, 37, 53))
    target[rng.random(target.shape) < 0.1] = 255
    target[target == 7] = 3  # one class absent from the ground truth but predicted: IoU 0
    target[target == 11] = 4  # one class neither in the labels nor predicted: undefined
    pred = rng.integers(0, n, target.shape)
    pred[pred == 11] = 5
    cm = ConfusionMatrix(n)
    for b in range(3):  # accumulate batch by batch
        cm.update(torch.from_numpy(pred[b]), torch.from_numpy(target[b]))
    expected = brute_force_iou(pred, target, n)
    got = cm.iou().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, equal_nan=True)
    assert got[7] == 0 and np.isnan(got[11])
    assert cm.miou() == pytest.approx(np.nanmean(expected), rel=1e-12)


def test_merge_equals_single_pass_and_logits_are_argmaxed():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 8, 9, generator=g)
    target = torch.randint(0, 5, (4, 8, 9), generator=g)
    whole = ConfusionMatrix(5).update(logits, target)
    a = ConfusionMatrix(5).update(logits[:2].argmax(1), target[:2])
    b = ConfusionMatrix(5).update(logits[2:].argmax(1), target[2:])
    assert torch.equal(a.merge(b).mat, whole.mat)
    assert mean_iou(logits.argmax(1), target, 5) == pytest.approx(whole.miou())
    with pytest.raises(ValueError, match="merge"):
        a.merge(ConfusionMatrix(6))


def test_bad_labels_raise_instead_of_being_dropped():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target labels"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="predictions"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    empty = ConfusionMatrix(3)
    assert np.isnan(empty.miou()) and empty.summary()["miou"] is None


def test_all_reduce_without_distributed_is_noop_and_table_formats():
    cm = ConfusionMatrix().update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    before = cm.mat.clone()
    assert torch.equal(cm.all_reduce().mat, before)
    table = format_table({"synthetic:source": cm.summary()})
    assert "road" in table and "mIoU (%)" in table and "100.00" in table
