"""Confusion-matrix segmentation metrics (mIoU with an ignore index).

    cm = ConfusionMatrix(num_classes=19)
    for logits, labels in batches:
        cm.update(logits.argmax(1), labels)
    cm.all_reduce()          # sums over processes when torch.distributed is initialised
    cm.summary()             # {"miou": percent, "per_class": {name: percent or None}, "miou_definition": ...}

Conventions:
- ``mat[t, p]`` counts pixels of ground-truth class t predicted as p (int64, via ``torch.bincount``).
  Pixels whose label is ``ignore_index`` are skipped; any other label outside [0, num_classes) is an
  error, never silently dropped.
- The field's definition (``MIOU_DEFINITION``), as the official Cityscapes scripts
  (``evalPixelLevelSemanticLabeling``) and mmseg's ``IoUMetric`` compute it: IoU_c = TP / (TP + FP + FN)
  with the counts accumulated over the whole evaluated set. A class is *undefined* (NaN, ``None`` in
  summaries/JSON) and left out of the mean only when TP + FP + FN = 0: neither in the labels nor
  predicted. A class predicted but absent from the labels scores 0 (TP = 0, FP > 0) and counts.
  (Before 2026-12-05 the project left out every class without ground truth, ``LEGACY_DEFINITION``,
  which flatters a model that predicts classes the labels lack; result files of that time say so.)
- ``miou()`` returns a fraction in [0, 1]; ``summary()`` reports percent.
"""

import torch

from npdg.data.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES

# what every summary / metrics.json records under "miou_definition" (tables built from files say which they used)
MIOU_DEFINITION = "standard"  # IoU_c = TP/(TP+FP+FN) over the dataset, undefined only if TP+FP+FN = 0
LEGACY_DEFINITION = "labels_present"  # before 2026-12-05: classes without ground truth left out


class ConfusionMatrix:
    def __init__(self, num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX, device=None):
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def reset(self):
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred, target):
        """Accumulate integer predictions ``pred`` against ``target`` (same shape, any dims).
        Logits (N, C, ...) with ``target`` (N, ...) are accepted and arg-maxed over dim 1."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long().to(pred.device)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        n = self.num_classes
        if target.numel() and (target.min() < 0 or target.max() >= n):
            raise ValueError(f"target labels must be in [0, {n}) or {self.ignore_index}; "
                             f"found {target.min().item()}..{target.max().item()}")
        if pred.numel() and (pred.min() < 0 or pred.max() >= n):
            raise ValueError(f"predictions must be in [0, {n}); "
                             f"found {pred.min().item()}..{pred.max().item()}")
        counts = torch.bincount(target * n + pred, minlength=n * n).view(n, n)
        self.mat += counts.to(self.mat.device)
        return self

    def merge(self, other):
        """Add another matrix (e.g. from another worker) into this one."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix into a "
                             f"{self.num_classes}-class one")
        self.mat += other.mat.to(self.mat.device)
        return self

    def all_reduce(self):
        """Sum over all processes (no-op unless torch.distributed is initialised)."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)
        return self

    def iou(self):
        """Per-class IoU as float64 (num_classes,): TP / (TP + FP + FN), NaN only where TP + FP + FN = 0."""
        mat = self.mat.double()
        tp = mat.diag()
        union = mat.sum(1) + mat.sum(0) - tp  # TP + FN + FP
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def miou(self):
        """Mean IoU over the defined classes, fraction in [0, 1] (NaN when no pixel was evaluated)."""
        iou = self.iou()
        present = ~iou.isnan()
        return iou[present].mean().item() if present.any() else float("nan")

    def pixel_accuracy(self):
        total = self.mat.sum().item()
        return self.mat.diag().sum().item() / total if total else float("nan")

    def summary(self, class_names=None):
        """{"miou": percent, "per_class": {name: percent or None (undefined)}, "miou_definition": str}."""
        names = class_names or (CLASSES if self.num_classes == NUM_CLASSES else
                                [str(i) for i in range(self.num_classes)])
        iou = self.iou().tolist()
        miou = self.miou()
        per_class = {name: (None if v != v else 100.0 * v) for name, v in zip(names, iou, strict=True)}
        return {"miou": None if miou != miou else 100.0 * miou, "per_class": per_class,
                "miou_definition": MIOU_DEFINITION}


def mean_iou(pred, target, num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX):
    """One-shot mIoU (fraction) of a prediction/label pair."""
    return ConfusionMatrix(num_classes, ignore_index, device=pred.device).update(pred, target).miou()


def format_table(results):
    """Text table of per-class IoU (percent) for one or more {"miou", "per_class"} results."""
    specs = list(results)
    names = list(next(iter(results.values()))["per_class"]) if specs else []
    width = max([len(s) for s in specs] + [8])
    lines = [f"{'class':14s} " + " ".join(f"{s:>{width}s}" for s in specs)]

    def fmt(v):
        return f"{'-':>{width}s}" if v is None else f"{v:{width}.2f}"

    for name in names:
        lines.append(f"{name:14s} " + " ".join(fmt(results[s]["per_class"][name]) for s in specs))
    lines.append(f"{'mIoU (%)':14s} " + " ".join(fmt(results[s]["miou"]) for s in specs))
    return "\n".join(lines)
