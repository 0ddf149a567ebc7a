"""Evaluation: predictions at the label's original resolution, a confusion matrix summed over ranks,
optionally multi-scale / flipped inference and dense-CRF refinement at several step counts.

In distributed runs each rank takes every ``world_size``-th image (no sampler
padding), so every validation image is counted exactly once and the reduced
matrices equal the single-process ones.
"""
from __future__ import annotations

import collections
import contextlib
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..crf import DenseCRF, refine_timed
from ..metrics import ConfusionMatrix
from .distributed import DistInfo


def default_crf_workers() -> int:
    """The cores this process may use, shared among the processes of this machine (torchrun's
    ``LOCAL_WORLD_SIZE``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def to_uint8_images(images: torch.Tensor, mean, std) -> np.ndarray:
    """Normalized ``[N, 3, H, W]`` images back to the ``[N, H, W, 3]`` uint8 RGB they were made from (the
    normalization ``(x / 255 - mean) / std`` undone and rounded: no second decode of the files)."""
    mean = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    rgb = ((images * std + mean) * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return rgb.permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Evaluation:
    """One evaluation: ``metrics`` and ``matrix`` without CRF, the first batch ``(images, labels,
    predictions)`` for display, and with CRF ``crf[steps] = (metrics, matrix)`` and the CRF's mean
    seconds per image (one run to the largest step count, in a worker)."""

    metrics: dict
    matrix: ConfusionMatrix
    first: tuple | None
    crf: dict = field(default_factory=dict)
    crf_seconds_per_image: float = math.nan


def worker_context():
    """How CRF workers start: from a fork server that has imported only :mod:`segrepro.crf` (fast, and no
    copy of the model or of CUDA state), or spawned where there is no fork server."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["segrepro.crf"])
        return context
    return multiprocessing.get_context("spawn")


class CRFPool:
    """CRF refinement in ``workers`` processes, fed while the model computes the next batch; results come
    back in submission order. At most ``2 * workers`` images are in flight. The processes start once and
    serve every evaluation until :meth:`close`."""

    def __init__(self, workers: int):
        self.executor = ProcessPoolExecutor(workers, mp_context=worker_context())
        self.pending = collections.deque()
        self.limit = 2 * workers

    def submit(self, crf: DenseCRF, index: int, name: str, probs: np.ndarray, image: np.ndarray, tag) -> list:
        """Queue one image; ``tag`` comes back with its result (the ground truth at evaluation, the
        image's index for a prediction). Returns the results that became due, as :meth:`ready` does."""
        future = self.executor.submit(refine_timed, crf, index, name, probs, image)
        self.pending.append((future, tag, index, name))
        return self.ready()

    def ready(self, wait_all: bool = False) -> list:
        """``[(labels per step count, tag, seconds)]`` of the oldest images that are done (waiting for
        them while more than the limit are in flight, or for all with ``wait_all``)."""
        done = []
        while self.pending and (wait_all or len(self.pending) > self.limit or self.pending[0][0].done()):
            future, tag, index, name = self.pending.popleft()
            try:
                labels, seconds = future.result()
            except BrokenProcessPool as error:  # a worker died outright (a crash, or killed for memory)
                raise RuntimeError(f"dense CRF worker died while refining image {index} ({name})") from error
            done.append((labels, tag, seconds))
        return done

    def cancel(self) -> None:
        """Forget the images in flight (after an error), leaving the workers running."""
        for future, *_ in self.pending:
            future.cancel()
        self.pending.clear()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class Evaluator:
    """Evaluates a model on ``dataset`` with the settings of the run config ``cfg``: ``data.num_classes``,
    ``data.ignore_index``, ``data.val_batch_size``, ``data.num_workers``, ``data.mean`` / ``data.std``,
    ``eval.scales`` / ``eval.flip``, ``crf.*`` and ``trainer.progress``."""

    def __init__(self, cfg, dataset, dist_info: DistInfo, autocast=contextlib.nullcontext):
        data, device = cfg.data, dist_info.device
        self.dataset = dataset
        self.class_names = list(getattr(dataset, "class_names", range(data.num_classes)))
        self.indices = range(dist_info.rank, len(dataset), dist_info.world_size)  # this rank's share
        self.loader = DataLoader(Subset(dataset, self.indices),
                                 batch_size=data.val_batch_size, shuffle=False, num_workers=data.num_workers,
                                 pin_memory=device.type == "cuda",
                                 generator=torch.Generator())  # leaves the global RNG untouched
        self.num_classes = data.num_classes
        self.ignore_index = data.ignore_index
        self.device = device
        self.autocast = autocast
        self.progress = cfg.trainer.progress and dist_info.is_main
        self.mean, self.std = list(data.mean), list(data.std)
        self.scales, self.flip = [float(s) for s in cfg.eval.scales], bool(cfg.eval.flip)
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ValueError(f"eval.scales must be positive numbers, got {self.scales}")
        self.single_pass = self.scales == [1.0] and not self.flip
        self.crf = DenseCRF.from_config(cfg.crf)
        self.crf_workers = default_crf_workers() if cfg.crf.workers is None else int(cfg.crf.workers)
        if self.crf_workers < 1:
            raise ValueError(f"crf.workers must be at least 1 (or null: the cores), got {cfg.crf.workers}")
        self.pool = None  # the CRF processes, started by the first evaluation with CRF

    def close(self) -> None:
        """Stop the CRF processes, if any were started."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def scores(self, model, images: torch.Tensor) -> torch.Tensor:
        """The logits of one pass (``eval.scales=[1.0]``, no flip), else the softmax probabilities averaged
        over the scales and flips, each resized to the input's size (bilinear) first."""
        if self.single_pass:
            return model(images)
        size, total, passes = images.shape[-2:], 0.0, 0
        for scale in self.scales:
            scaled = images if scale == 1.0 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                               align_corners=False)
            for flipped in ((False, True) if self.flip else (False,)):
                logits = model(scaled.flip(-1) if flipped else scaled).float()
                logits = logits.flip(-1) if flipped else logits
                total = total + F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1)
                passes += 1
        return total / passes

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.float().softmax(1) if self.single_pass else scores.float()

    def batches(self, model, progress: bool = True):
        """Yield ``(dataset indices, images, labels, scores)`` of this rank's batches, in order, images
        on the device and labels as loaded, ``scores`` from :meth:`scores` (a bar unless ``progress`` is
        false); ``model`` is in eval mode until the generator is done or closed."""
        was_training = model.training
        model.eval()
        position = 0
        try:
            for images, labels in tqdm(self.loader, desc="eval", leave=False, disable=not (self.progress and progress)):
                images = images.to(self.device, non_blocking=True)
                with torch.no_grad(), self.autocast():
                    scores = self.scores(model, images)
                yield self.indices[position:position + len(images)], images, labels, scores
                position += len(images)
        finally:
            model.train(was_training)

    def refine(self, crf: DenseCRF, indices, images: torch.Tensor, scores: torch.Tensor, tags) -> list:
        """Queue a batch's images on the CRF processes (:meth:`crf_pool`), each with its tag; the
        results that became due, ``[(labels per step count, tag, seconds)]`` (:meth:`CRFPool.ready`)."""
        pool = self.crf_pool()
        probs = self.probabilities(scores).cpu().numpy()
        rgb = to_uint8_images(images, self.mean, self.std)
        done = []
        for k, (index, tag) in enumerate(zip(indices, tags)):
            done += pool.submit(crf, index, self.image_name(index), probs[k], rgb[k], tag)
        return done

    def crf_pool(self) -> CRFPool:
        """The CRF processes, started on first use (they serve every evaluation until :meth:`close`)."""
        if self.pool is None:
            self.pool = CRFPool(self.crf_workers)
        return self.pool

    @contextlib.contextmanager
    def crf_in_flight(self):
        """Around a pass: on an error, forget the images the CRF processes still hold (if any)."""
        try:
            yield
        except BaseException:
            if self.pool is not None:
                self.pool.cancel()
            raise

    def run(self, model, with_crf: bool = False) -> Evaluation:
        """Evaluate ``model`` (put in eval mode, restored afterwards); ``with_crf`` also refines every
        prediction with the dense CRF of ``crf.*`` (nothing happens when it is off)."""
        plain = ConfusionMatrix(self.num_classes, self.ignore_index)
        crf = self.crf if with_crf else None
        refined = {steps: ConfusionMatrix(self.num_classes, self.ignore_index) for steps in (crf.steps if crf else ())}
        seconds = []

        def count(results):
            for labels, truth, took in results:
                for steps, pred in labels.items():
                    refined[steps].update(torch.from_numpy(pred), truth)
                seconds.append(took)

        first = None
        with self.crf_in_flight(), contextlib.closing(self.batches(model)) as batches:
            for indices, images, labels, scores in batches:
                labels = labels.to(self.device, non_blocking=True)
                pred = scores.argmax(1)
                plain.update(pred, labels)
                if first is None:
                    first = (images.cpu(), labels.cpu(), pred.cpu())
                if crf is not None:
                    count(self.refine(crf, indices, images, scores, labels.cpu()))
            if crf is not None:  # (also where this rank's share of the images is empty)
                count(self.crf_pool().ready(wait_all=True))
        plain.all_reduce()
        for matrix in refined.values():
            matrix.all_reduce()
        return Evaluation(plain.compute(), plain, first,
                          {steps: (matrix.compute(), matrix) for steps, matrix in refined.items()},
                          mean_over_ranks(seconds, self.device) if crf is not None else math.nan)

    def predict(self, model, with_crf: bool = False):
        """Yield ``(dataset index, labels)`` for this rank's images, in order; ``labels`` is a uint8 ``H x W``
        array at the image's resolution: the argmax of :meth:`scores` (so ``eval.scales`` / ``eval.flip``
        apply as at evaluation), or with ``with_crf`` (and ``crf.steps`` on) the dense CRF's labels after
        ``max(crf.steps)`` steps. The dataset's labels are not looked at (``segrepro predict``: a test
        split has none; ``segrepro predict`` shows its own bar). ``model`` is in eval mode until the
        generator is done or closed."""
        crf = self.crf if with_crf else None
        with self.crf_in_flight(), contextlib.closing(self.batches(model, progress=False)) as batches:
            for indices, images, _, scores in batches:
                if crf is None:
                    yield from zip(indices, scores.argmax(1).to(torch.uint8).cpu().numpy())
                else:
                    done = self.refine(crf, indices, images, scores, indices)
                    yield from ((index, labels[max(crf.steps)]) for labels, index, _ in done)
            if crf is not None:
                yield from ((index, labels[max(crf.steps)]) for labels, index, _ in self.crf_pool().ready(wait_all=True))

    def image_name(self, index: int) -> str:
        """A name for error messages: the image file where the dataset lists its pairs, else the index."""
        pairs = getattr(self.dataset, "pairs", None)
        return str(pairs[index][0]) if pairs is not None else f"#{index}"


def mean_over_ranks(values: list, device: torch.device) -> float:
    """The mean of ``values`` gathered from every rank (this rank's alone outside torch.distributed)."""
    totals = torch.tensor([float(sum(values)), float(len(values))], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        totals = totals.to(device)
        dist.all_reduce(totals)
    total, count = totals.tolist()
    return total / count if count else math.nan
