import numpy as np
import pytest
import torch

from npdg.metrics import ConfusionMatrix, format_table, mean_iou


def brute_force_iou(pred, target, n, ignore=255):
    """Per-class IoU by set counting in float64 numpy; NaN where the class has no ground truth."""
    keep = target != ignore
    pred, target = pred[keep], target[keep]
    out = np.full(n, np.nan)
    for c in range(n):
        inter = np.sum((pred == c) & (target == c))
        union = np.sum((pred == c) | (target == c))
        if np.sum(target == c) > 0:
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
    assert torch.isnan(iou[3])  # absent class excluded
    assert cm.miou() == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 7)
    summary = cm.summary(["a", "b", "c", "d"])
    assert summary["miou"] == pytest.approx(100 * 1.25 / 3)
    assert summary["per_class"]["d"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    n = 19
    target = rng.integers(0, n, (3, 37, 53))
    target[rng.random(target.shape) < 0.1] = 255
    target[target == 7] = 3  # make one class absent from the ground truth
    pred = rng.integers(0, n, target.shape)
    cm = ConfusionMatrix(n)
    for b in range(3):  # accumulate batch by batch
        cm.update(torch.from_numpy(pred[b]), torch.from_numpy(target[b]))
    expected = brute_force_iou(pred, target, n)
    got = cm.iou().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(got[7])
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
