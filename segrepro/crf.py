"""Fully connected (dense) CRF post-processing of softmax probabilities (SSL paper, Table 5).

The SSL paper (Sec. 4.2.3) compares its loss against the fully connected CRF of
Krähenbühl & Koltun (NIPS 2011) applied after the network: "Following the DeepLabv2, we use
the fully connected CRF ... as a post-processing step and use the negative logarithm of the
predicted probability as unary potential. We use the default setting of the official public
code and its python wrapper", with 1, 2 and 5 inference steps (Table 5 rows CE + CRF-1/2/5;
about 0.4 s, 0.5 s and 0.75 s extra per image).

What :class:`DenseCRF` does, through pydensecrf (PyPI ``pydensecrf2``, the Python wrapper the
paper cites, footnote 4):

* unary ``-log(p)`` with ``p`` clipped to ``[1e-5, 1]`` first:
  :func:`pydensecrf.utils.unary_from_softmax` with its default ``clip=1e-5`` and no ``scale``
  (its code is exactly ``-log(clip(p, clip, 1))``, as float32);
* a Gaussian (appearance-free smoothness) kernel ``addPairwiseGaussian(sxy, compat)`` and a
  bilateral (appearance) kernel ``addPairwiseBilateral(sxy, srgb, rgbim, compat)`` on the RGB
  image, both with Potts compatibility, ``DIAG_KERNEL`` and ``NORMALIZE_SYMMETRIC`` (the
  wrapper's defaults, and the densecrf code's);
* one mean-field run of ``max(steps)`` iterations (``startInference`` + ``stepInference``),
  the labels (argmax over classes) read off after every step count in ``steps``. This equals
  a separate ``inference(k)`` per ``k`` bit for bit (tested), at the cost of one run.

The two parameter sets (``configs/crf/``):

* ``crf=dense`` (the SSL Table 5 rows): "the default setting of the official public code and
  its python wrapper". The pydensecrf README's usage example, ``addPairwiseGaussian(sxy=(3, 3),
  compat=3, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC)`` and
  ``addPairwiseBilateral(sxy=(80, 80), srgb=(13, 13, 13), rgbim=im, compat=10, ...)``; the same
  values as the densecrf example program ``examples/dense_inference.cpp`` (Gaussian 3 / 3,
  bilateral 80 / 13 / 10). These are the constructor's defaults.
* ``crf=deeplab``: DeepLab v2's published CRF for ResNet-101 on VOC (what "following
  DeepLabv2" points at), as reproduced by the deeplab-pytorch port: ``max_iter=10, pos_w=3,
  pos_xy_std=1, bi_w=4, bi_xy_std=67, bi_rgb_std=3`` (the VGG-16 variant: pos 2 / 2,
  bi 4 / 65 / 3). ``pos_*`` is the Gaussian kernel (``compat`` = weight, ``sxy`` = std),
  ``bi_*`` the bilateral one.

The image given to the CRF is the unnormalized uint8 RGB image at the resolution of the
probabilities (the label resolution at evaluation).

For worker processes: :class:`DenseCRF` holds only plain attributes (it pickles; the
pydensecrf object, which does not, is built inside each call) and :func:`refine_one` wraps
one call so that a failure names its image.
"""
from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

__all__ = ["DenseCRF", "UNARY_CLIP", "refine_one"]

UNARY_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's default clip: unary at most -log(1e-5) = 11.5

Steps = Union[int, Sequence[int]]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _parse_steps(steps: Any) -> Tuple[int, ...]:
    """``steps`` as a sorted tuple without duplicates, each >= 1 (may be empty; the caller decides)."""
    if _is_int(steps):
        values = [int(steps)]
    elif isinstance(steps, Iterable) and not isinstance(steps, (str, bytes, Mapping)):
        values = list(steps)
        if not all(_is_int(s) for s in values):
            raise ValueError(f"crf.steps must be an int or a list of ints, got {steps!r}")
        values = [int(s) for s in values]
    else:
        raise ValueError(f"crf.steps must be an int or a list of ints, got {steps!r}")
    bad = [s for s in values if s < 1]
    if bad:
        raise ValueError(f"crf.steps: every step count must be >= 1, got {bad} in {steps!r} "
                         f"(crf.steps=0 or [] turns the CRF off)")
    return tuple(sorted(set(values)))


def _number(name: str, value: Any, positive: bool) -> float:
    """``value`` as a finite float (and > 0 with ``positive``), else a ValueError naming ``name``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or (positive and not value > 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return value


def _get(node: Any, key: str, path: str) -> Any:
    """``node[key]`` or ``node.key`` (a dict, an OmegaConf node or a dataclass)."""
    if isinstance(node, Mapping):
        if key in node:
            return node[key]
    elif hasattr(node, key):
        return getattr(node, key)
    raise ValueError(f"{path} is missing from the CRF config")


class DenseCRF:
    """Dense CRF over softmax probabilities; ``__call__`` gives the labels after each of ``steps``.

    Args:
        steps: mean-field iterations, an int or a list of them (each >= 1); all are read off
            one run of ``max(steps)`` iterations.
        gaussian_sxy, gaussian_compat: the Gaussian kernel's spatial std (pixels) and weight.
        bilateral_sxy, bilateral_srgb, bilateral_compat: the bilateral kernel's spatial std
            (pixels), colour std (0-255 RGB units) and weight.

    The defaults are the official code's and pydensecrf's (``crf=dense``, see the module docstring).
    """

    def __init__(self, steps: Steps, gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0,
                 bilateral_sxy: float = 80.0, bilateral_srgb: float = 13.0,
                 bilateral_compat: float = 10.0) -> None:
        parsed = _parse_steps(steps)
        if not parsed:
            raise ValueError("crf.steps is empty: give at least one step count >= 1 "
                             "(DenseCRF.from_config returns None for steps 0 or [])")
        self.steps: Tuple[int, ...] = parsed
        self.gaussian_sxy = _number("crf.gaussian.sxy", gaussian_sxy, positive=True)
        self.gaussian_compat = _number("crf.gaussian.compat", gaussian_compat, positive=False)
        self.bilateral_sxy = _number("crf.bilateral.sxy", bilateral_sxy, positive=True)
        self.bilateral_srgb = _number("crf.bilateral.srgb", bilateral_srgb, positive=True)
        self.bilateral_compat = _number("crf.bilateral.compat", bilateral_compat, positive=False)

    @classmethod
    def from_config(cls, crf_cfg: Any) -> Optional["DenseCRF"]:
        """From a ``crf`` config node (keys ``steps``, ``gaussian.{sxy,compat}``,
        ``bilateral.{sxy,srgb,compat}``); None when the CRF is off (``steps`` 0 or ``[]``)."""
        steps = _get(crf_cfg, "steps", "crf.steps")
        if _is_int(steps) and steps == 0:
            return None
        if not _is_int(steps) and not _parse_steps(steps):  # validates lists; empty: off
            return None
        gaussian = _get(crf_cfg, "gaussian", "crf.gaussian")
        bilateral = _get(crf_cfg, "bilateral", "crf.bilateral")
        return cls(
            steps=list(steps) if not _is_int(steps) else int(steps),
            gaussian_sxy=_get(gaussian, "sxy", "crf.gaussian.sxy"),
            gaussian_compat=_get(gaussian, "compat", "crf.gaussian.compat"),
            bilateral_sxy=_get(bilateral, "sxy", "crf.bilateral.sxy"),
            bilateral_srgb=_get(bilateral, "srgb", "crf.bilateral.srgb"),
            bilateral_compat=_get(bilateral, "compat", "crf.bilateral.compat"),
        )

    def __repr__(self) -> str:
        return (f"DenseCRF(steps={list(self.steps)}, gaussian_sxy={self.gaussian_sxy}, "
                f"gaussian_compat={self.gaussian_compat}, bilateral_sxy={self.bilateral_sxy}, "
                f"bilateral_srgb={self.bilateral_srgb}, bilateral_compat={self.bilateral_compat})")

    @staticmethod
    def _check(probs: Any, image: Any) -> Tuple[np.ndarray, np.ndarray]:
        probs = np.asarray(probs)
        image = np.asarray(image)
        if probs.ndim != 3:
            raise ValueError(f"probs must be 3-D [C, H, W], got shape {probs.shape}")
        if not np.issubdtype(probs.dtype, np.floating):
            raise ValueError(f"probs must be floating point (softmax probabilities), got dtype {probs.dtype}")
        if min(probs.shape) < 1:
            raise ValueError(f"probs is empty: shape {probs.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 RGB (unnormalized, 0-255), got dtype {image.dtype}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
        if image.shape[:2] != probs.shape[1:]:
            raise ValueError(f"image size {image.shape[0]}x{image.shape[1]} differs from the "
                             f"probabilities' size {probs.shape[1]}x{probs.shape[2]} (H x W)")
        # pydensecrf wants C-contiguous float32 unaries and a C-contiguous uint8 image
        # (ValueError "ndarray is not C-contiguous" otherwise, e.g. for a permuted array).
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        if not np.isfinite(probs).all():
            raise ValueError("probs contains NaN or infinite values")
        return probs, np.ascontiguousarray(image)

    def build(self, probs: np.ndarray, image: np.ndarray) -> "dcrf.DenseCRF2D":
        """The pydensecrf model with the unary and both kernels set (inputs as for ``__call__``)."""
        probs, image = self._check(probs, image)
        n_classes, height, width = probs.shape
        model = dcrf.DenseCRF2D(width, height, n_classes)  # note: width first
        model.setUnaryEnergy(unary_from_softmax(probs, clip=UNARY_CLIP))
        model.addPairwiseGaussian(sxy=self.gaussian_sxy, compat=self.gaussian_compat,
                                  kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC)
        model.addPairwiseBilateral(sxy=self.bilateral_sxy, srgb=self.bilateral_srgb, rgbim=image,
                                   compat=self.bilateral_compat, kernel=dcrf.DIAG_KERNEL,
                                   normalization=dcrf.NORMALIZE_SYMMETRIC)
        return model

    def __call__(self, probs: np.ndarray, image: np.ndarray, *, return_probs: bool = False):
        """Refine ``probs`` (float ``[C, H, W]``) with the uint8 RGB ``image`` (``[H, W, 3]``).

        Returns ``{k: labels}`` for each ``k`` in ``self.steps``, labels int64 ``[H, W]``; with
        ``return_probs=True``, ``(labels_by_step, probs_by_step)``, the latter the refined
        marginals, float32 ``[C, H, W]``, after ``k`` steps.
        """
        model = self.build(probs, image)
        n_classes, height, width = np.shape(probs)
        labels: Dict[int, np.ndarray] = {}
        refined: Dict[int, np.ndarray] = {}
        q, tmp1, tmp2 = model.startInference()
        wanted = set(self.steps)
        for step in range(1, self.steps[-1] + 1):
            model.stepInference(q, tmp1, tmp2)
            if step in wanted:
                # np.asarray(q) is a view of the Eigen matrix that the next step overwrites.
                marginals = np.asarray(q).reshape(n_classes, height, width)
                labels[step] = marginals.argmax(axis=0).astype(np.int64)
                if return_probs:
                    refined[step] = marginals.copy()
        if return_probs:
            return labels, refined
        return labels


def refine_one(crf: DenseCRF, index: int, name: str, probs: np.ndarray, image: np.ndarray,
               **kwargs: Any):
    """``crf(probs, image, **kwargs)`` for a worker process; any failure is re-raised as a
    RuntimeError naming the image (its index and name) and the original error."""
    try:
        return crf(probs, image, **kwargs)
    except Exception as error:  # noqa: BLE001 - re-raised with the image named
        raise RuntimeError(f"dense CRF failed on image {index} ({name}): "
                           f"{type(error).__name__}: {error}") from error


def refine_timed(crf: DenseCRF, index: int, name: str, probs: np.ndarray, image: np.ndarray):
    """:func:`refine_one` in a worker process, with the seconds it took: ``(labels per step count, seconds)``."""
    start = time.perf_counter()
    labels = refine_one(crf, index, name, probs, image)
    return labels, time.perf_counter() - start
