import math

import pytest
import torch

from segrepro.metrics import ConfusionMatrix, format_report


def test_confusion_matrix_against_hand_count():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows: ground truth, columns: prediction; the ignored pixel is not counted
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    m = cm.compute()
    # IoU: class 0: 1/(2+1-1)=1/2; class 1: 2/(2+4-2)=1/2; class 2: 0/(1+0-0)=0
    assert m["iou"] == pytest.approx([0.5, 0.5, 0.0])
    assert m["miou"] == pytest.approx(1 / 3)
    assert m["pixel_acc"] == pytest.approx(3 / 5)
    assert m["mean_acc"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    m = cm.compute()
    assert math.isnan(m["iou"][2])
    assert m["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_accumulates_over_batches_and_rejects_bad_labels():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cm.update(torch.tensor([1]), torch.tensor([0]))
    assert cm.mat.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="label 5"):
        cm.update(torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))


def test_report_lists_every_class():
    text = format_report({"iou": [0.5, float("nan")], "miou": 0.5, "pixel_acc": 0.9, "mean_acc": 0.7}, ["bg", "cat"])
    assert "bg" in text and "50.00" in text and "n/a" in text and "mIoU" in text
