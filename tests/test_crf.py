"""segrepro.crf: the dense CRF equals pydensecrf called directly, reads every step count off one
run, cleans up noisy predictions, and rejects bad inputs with readable errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import pydensecrf.densecrf as dcrf
from omegaconf import OmegaConf

from segrepro.crf import UNARY_CLIP, DenseCRF, refine_one

H, W = 40, 48


def softmax(logits):
    z = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (z / z.sum(axis=0, keepdims=True)).astype(np.float32)


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(scale=2.0, size=(4, H, W)))
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    return probs, image


def direct(probs, image, n_iter, gauss=(3.0, 3.0), bilat=(80.0, 13.0, 10.0)):
    """pydensecrf by hand, as its README shows: -log(p) unary, Gaussian + bilateral, inference(n)."""
    c, h, w = probs.shape
    model = dcrf.DenseCRF2D(w, h, c)
    unary = -np.log(np.clip(probs, UNARY_CLIP, 1.0)).reshape(c, -1).astype(np.float32)
    model.setUnaryEnergy(np.ascontiguousarray(unary))
    model.addPairwiseGaussian(sxy=gauss[0], compat=gauss[1], kernel=dcrf.DIAG_KERNEL,
                              normalization=dcrf.NORMALIZE_SYMMETRIC)
    model.addPairwiseBilateral(sxy=bilat[0], srgb=bilat[1], rgbim=np.ascontiguousarray(image),
                               compat=bilat[2], kernel=dcrf.DIAG_KERNEL,
                               normalization=dcrf.NORMALIZE_SYMMETRIC)
    q = np.array(model.inference(n_iter)).reshape(c, h, w)
    return q.argmax(axis=0), q


@pytest.mark.parametrize("steps", [1, 5])
def test_equals_pydensecrf_called_directly(inputs, steps):
    probs, image = inputs
    labels, refined = DenseCRF(steps)(probs, image, return_probs=True)
    want_labels, want_q = direct(probs, image, steps)
    assert list(labels) == [steps]
    assert labels[steps].dtype == np.int64 and labels[steps].shape == (H, W)
    assert np.array_equal(labels[steps], want_labels)
    assert refined[steps].dtype == np.float32 and np.array_equal(refined[steps], want_q)


def test_other_parameters_equal_direct_call(inputs):
    probs, image = inputs
    crf = DenseCRF(10, gaussian_sxy=1, gaussian_compat=3, bilateral_sxy=67, bilateral_srgb=3,
                   bilateral_compat=4)  # the crf=deeplab values
    assert np.array_equal(crf(probs, image)[10], direct(probs, image, 10, (1, 3), (67, 3, 4))[0])


def test_step_list_equals_separate_runs(inputs):
    probs, image = inputs
    crf = DenseCRF([5, 1, 2, 2])
    assert crf.steps == (1, 2, 5)
    labels, refined = crf(probs, image, return_probs=True)
    assert sorted(labels) == [1, 2, 5]
    for k in (1, 2, 5):
        alone_labels, alone_q = DenseCRF(k)(probs, image, return_probs=True)
        assert np.array_equal(labels[k], alone_labels[k])
        assert np.array_equal(refined[k], alone_q[k])
    assert not np.array_equal(refined[1], refined[5])  # each step count has its own copy


def test_non_contiguous_and_float64_inputs(inputs):
    probs, image = inputs
    want = DenseCRF(2)(probs, image)[2]
    probs_hwc = np.ascontiguousarray(probs.transpose(1, 2, 0)).astype(np.float64)
    image_chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    got = DenseCRF(2)(probs_hwc.transpose(2, 0, 1), image_chw.transpose(1, 2, 0))[2]
    assert np.array_equal(got, want)


def iou_mean(pred, truth, n_classes):
    ious = []
    for c in range(n_classes):
        union = np.logical_or(pred == c, truth == c).sum()
        if union:
            ious.append(np.logical_and(pred == c, truth == c).sum() / union)
    return float(np.mean(ious))


def test_crf_cleans_salt_and_pepper_noise():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:H, :W]
    truth = ((yy - 18) ** 2 + (xx - 26) ** 2 < 13 ** 2).astype(np.int64)  # a disc on background
    colours = np.array([[40, 90, 200], [210, 60, 50]], dtype=np.float64)  # blue background, red disc
    image = np.clip(colours[truth] + rng.normal(scale=8.0, size=(H, W, 3)), 0, 255).astype(np.uint8)
    n_classes = 3
    probs = np.full((n_classes, H, W), 0.15, dtype=np.float32)
    np.put_along_axis(probs, truth[None], 0.7, axis=0)  # right but not sure
    flipped = rng.random((H, W)) < 0.2  # 20% of the pixels: a confident wrong class
    wrong = (truth + rng.integers(1, n_classes, size=(H, W))) % n_classes
    noisy = np.full((n_classes, H, W), 0.05, dtype=np.float32)
    np.put_along_axis(noisy, wrong[None], 0.9, axis=0)
    probs = np.where(flipped[None], noisy, probs)
    before = iou_mean(probs.argmax(axis=0), truth, n_classes)
    after = DenseCRF([1, 5])(probs, image)
    assert before < 0.75
    assert iou_mean(after[1], truth, n_classes) > before + 0.15
    assert iou_mean(after[5], truth, n_classes) > 0.95


@pytest.mark.parametrize("make,match", [
    (lambda p, im: (p[0], im), r"probs must be 3-D"),
    (lambda p, im: ((p * 100).astype(np.int64), im), r"probs must be floating"),
    (lambda p, im: (p, im.astype(np.float32)), r"image must be uint8"),
    (lambda p, im: (p, im[..., 0]), r"image must be \[H, W, 3\]"),
    (lambda p, im: (p, np.concatenate([im, im[..., :1]], axis=2)), r"image must be \[H, W, 3\]"),
    (lambda p, im: (p, im[:-1]), r"image size 39x48 differs from the probabilities' size 40x48"),
    (lambda p, im: (np.where(p > 0.5, np.nan, p), im), r"NaN"),
])
def test_bad_inputs(inputs, make, match):
    probs, image = make(*inputs)
    with pytest.raises(ValueError, match=match):
        DenseCRF(1)(probs, image)


@pytest.mark.parametrize("steps,match", [
    (0, r"crf\.steps.*>= 1"), (-1, r"crf\.steps.*>= 1"), ([1, 0], r"crf\.steps.*>= 1"),
    ([], r"crf\.steps is empty"), (2.5, r"crf\.steps must be an int"), ("5", r"crf\.steps must be an int"),
    ([1, 2.0], r"crf\.steps must be an int"), (True, r"crf\.steps must be an int"),
])
def test_bad_steps(steps, match):
    with pytest.raises(ValueError, match=match):
        DenseCRF(steps)


def test_bad_kernel_parameters():
    with pytest.raises(ValueError, match=r"crf\.bilateral\.srgb"):
        DenseCRF(1, bilateral_srgb=0)
    with pytest.raises(ValueError, match=r"crf\.gaussian\.sxy"):
        DenseCRF(1, gaussian_sxy=-3)


def node(steps, **kernels):
    cfg = {"steps": steps, "workers": None, "during_training": False,
           "gaussian": {"sxy": 3.0, "compat": 3.0}, "bilateral": {"sxy": 80.0, "srgb": 13.0, "compat": 10.0}}
    cfg.update(kernels)
    return OmegaConf.create(cfg)


def test_from_config():
    assert DenseCRF.from_config(node(0)) is None
    assert DenseCRF.from_config(node([])) is None
    crf = DenseCRF.from_config(node([5, 1, 2], gaussian={"sxy": 1, "compat": 3},
                                    bilateral={"sxy": 67, "srgb": 3, "compat": 4}))
    assert crf.steps == (1, 2, 5)
    assert (crf.gaussian_sxy, crf.gaussian_compat) == (1.0, 3.0)
    assert (crf.bilateral_sxy, crf.bilateral_srgb, crf.bilateral_compat) == (67.0, 3.0, 4.0)
    assert DenseCRF.from_config(OmegaConf.to_container(node(5))).steps == (5,)  # a plain dict too
    for bad in (-1, [2, -1]):
        with pytest.raises(ValueError, match=r"crf\.steps"):
            DenseCRF.from_config(node(bad))
    with pytest.raises(ValueError, match=r"crf\.bilateral is missing"):
        DenseCRF.from_config({"steps": 1, "gaussian": {"sxy": 3, "compat": 3}})


def test_config_files_build():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "configs" / "crf"
    assert DenseCRF.from_config(OmegaConf.load(root / "none.yaml")) is None
    dense = DenseCRF.from_config(OmegaConf.load(root / "dense.yaml"))
    assert repr(dense) == repr(DenseCRF(5))
    deeplab = DenseCRF.from_config(OmegaConf.load(root / "deeplab.yaml"))
    assert repr(deeplab) == repr(DenseCRF(10, 1, 3, 67, 3, 4))


@pytest.mark.parametrize("choice,want", [("none", None), ("dense", DenseCRF(5)),
                                         ("deeplab", DenseCRF(10, 1, 3, 67, 3, 4))])
def test_composed_config_builds(choice, want):
    from segrepro.config import compose_config
    cfg = compose_config([f"crf={choice}"])
    for node in (cfg.crf, OmegaConf.to_object(cfg.crf)):  # the DictConfig and the schema's dataclass
        assert repr(DenseCRF.from_config(node)) == repr(want)
    steps = compose_config(["crf=dense", "crf.steps=[1,2,5]"]).crf
    assert DenseCRF.from_config(steps).steps == (1, 2, 5)


def test_pickles_and_runs_after_pickling(inputs):
    crf = DenseCRF([1, 2])
    clone = pickle.loads(pickle.dumps(crf))
    assert repr(clone) == repr(crf)
    probs, image = inputs
    assert np.array_equal(clone(probs, image)[2], crf(probs, image)[2])


def test_refine_one_names_the_image(inputs):
    probs, image = inputs
    assert np.array_equal(refine_one(DenseCRF(1), 0, "ok", probs, image)[1], DenseCRF(1)(probs, image)[1])
    with pytest.raises(RuntimeError, match=r"image 7 \(2007_000033\).*ValueError.*image size") as info:
        refine_one(DenseCRF(1), 7, "2007_000033", probs, image[:-2])
    assert isinstance(info.value.__cause__, ValueError)
    again = pickle.loads(pickle.dumps(info.value))  # crosses a process boundary intact
    assert str(again) == str(info.value)
