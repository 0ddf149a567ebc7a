"""Confusion matrix and the segmentation metrics derived from it.

Rows are ground-truth classes, columns predictions. The matrix is accumulated
with ``torch.bincount`` on the device of the predictions and summed across
ranks by :meth:`ConfusionMatrix.all_reduce`, so distributed evaluation gives
the same matrix as a single process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch: ``pred`` and ``target`` are integer maps of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        k = self.num_classes
        valid = target != self.ignore_index
        bad = valid & ((target < 0) | (target >= k))
        if bool(bad.any()):
            raise ValueError(f"target holds label {int(target[bad][0])} outside 0..{k - 1} (ignore_index={self.ignore_index})")
        index = target[valid].long() * k + pred[valid].long()
        counts = torch.bincount(index, minlength=k * k).reshape(k, k)
        self.mat = self.mat.to(counts.device) + counts

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks (no-op outside ``torch.distributed``)."""
        if dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl":  # reduces CUDA tensors only (a matrix counted on the CPU: the CRF's)
                self.mat = self.mat.cuda()
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def compute(self) -> dict:
        """``miou``, per-class ``iou`` (list; NaN for a class absent from both ground truth and
        prediction, left out of the mean), ``pixel_acc``, ``mean_acc``."""
        mat = self.mat.double().cpu()
        tp = mat.diag()
        gt = mat.sum(1)
        union = gt + mat.sum(0) - tp
        iou = tp / union  # NaN where union == 0
        acc = tp / gt
        total = mat.sum()
        return {
            "miou": float(iou.nanmean()) if bool((union > 0).any()) else float("nan"),
            "iou": [float(v) for v in iou],
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "mean_acc": float(acc.nanmean()) if bool((gt > 0).any()) else float("nan"),
        }


def format_report(metrics: dict, class_names, title: str = "validation") -> str:
    """A plain-text table: per-class IoU, then mIoU, pixel accuracy and mean accuracy (in %)."""
    width = max([len(str(n)) for n in class_names] + [10])
    lines = [title, f"  {'class':<{width}}  IoU %"]
    for name, iou in zip(class_names, metrics["iou"]):
        lines.append(f"  {str(name):<{width}}  {100 * iou:6.2f}" if iou == iou else f"  {str(name):<{width}}     n/a")
    lines.append(f"  {'mIoU':<{width}}  {100 * metrics['miou']:6.2f}")
    lines.append(f"  {'pixel acc':<{width}}  {100 * metrics['pixel_acc']:6.2f}")
    lines.append(f"  {'mean acc':<{width}}  {100 * metrics['mean_acc']:6.2f}")
    return "\n".join(lines)


def format_comparison(columns: dict, class_names, title: str = "validation") -> str:
    """Several evaluations side by side (in %): one column per ``{heading: metrics}`` entry, rows the
    per-class IoU, then mIoU, pixel accuracy and mean accuracy."""
    width = max([len(str(n)) for n in class_names] + [10])
    cell = max([len(h) for h in columns] + [6])

    def row(label, values):
        return f"  {str(label):<{width}}" + "".join(
            f"  {'n/a':>{cell}}" if v != v else f"  {100 * v:>{cell}.2f}" for v in values)

    lines = [title, f"  {'class':<{width}}" + "".join(f"  {h:>{cell}}" for h in columns)]
    for c, name in enumerate(class_names):
        lines.append(row(name, [m["iou"][c] for m in columns.values()]))
    for label, key in (("mIoU", "miou"), ("pixel acc", "pixel_acc"), ("mean acc", "mean_acc")):
        lines.append(row(label, [m[key] for m in columns.values()]))
    return "\n".join(lines)
