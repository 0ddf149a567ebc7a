"""Time and memory of every loss in :mod:`segrepro.losses` against cross entropy.

    python scripts/bench_losses.py [--device cpu|cuda] [--n N --c C --size S --repeats R]
                                   [--threads T] [--quick] [--only TEXT] [--no-model] [--keep-memory]
                                   [--reference]

For each loss: forward + backward on the same logits as CE, with label maps
drawn from the synthetic dataset (its 6 classes remapped per image onto a few
of the ``C`` classes, its ignore bands kept). Printed as a Markdown table:

* time: the median of ``--repeats`` runs after one warm-up; CE and the loss are
  run alternately (CE, loss, CE, loss, ...) so that load from other processes
  on a shared machine hits both alike; ``x CE`` is the median of the ratios of
  each loss run to the CE run just before it.
* share of a DeepLabV3-ResNet-101 step: the loss's time over the median time of
  one forward + CE + backward step of ``smp.DeepLabV3("resnet101", classes=C)``
  at the same batch and size, measured in the same run.
* extra peak memory, as a multiple of the logits' size: the peak, over the
  forward and backward, of the memory allocated beyond what was live before the
  call (inputs exist, no gradient yet), so the gradient of the logits (1x)
  counts. CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation
  before. CPU: ``torch.profiler`` with ``profile_memory=True`` records every
  allocation and free of the CPU allocator with its size; the running sum of
  those, in time order, is the memory the call holds, and its maximum is the peak.

On CPU, fresh memory costs page faults, and how many a call pays depends on
what glibc has handed back to the system before: timings swing by tens of
percent between runs. ``--keep-memory`` asks glibc (``mallopt``) to keep freed
memory in the process, which makes repeated runs repeatable (compute only).
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import segrepro.losses as losses

# (class name, constructor kwargs); CenterLoss also gets num_classes and feat_dim.
VARIANTS = [
    ("CrossEntropyLoss", {}),
    ("BCELoss", {}),
    ("FocalLoss", {}),
    ("CenterLoss", {}),
    ("LADLoss", {"kernel_size": 3}),
    ("LADLoss", {"kernel_size": 5}),
    ("LADLoss", {"kernel_size": 7}),
    ("SSLLoss", {"region_size": 3}),
    ("SSLLoss", {"region_size": 7}),
    ("SSLLoss", {"region_size": 11}),
    ("SSIMLoss", {"form": "eq7"}),
    ("SSIMLoss", {"form": "eq9"}),
    ("AffinityFieldLoss", {}),
]
FEATURE_DIM, FEATURE_STRIDE = 256, 4  # decoder features of a DeepLab head at 1/4 resolution


def loss_classes() -> list:
    """The names of the losses exported by :mod:`segrepro.losses` (the protocol's base class left out)."""
    return [name for name in losses.__all__ if isinstance(getattr(losses, name), type)
            and issubclass(getattr(losses, name), losses.SegmentationLoss) and name != "SegmentationLoss"]


def variants(reference: bool = False):
    """Every configured variant, plus any exported loss not configured (default arguments); with
    ``reference``, also each windowed loss's ``impl="reference"`` (the plain autograd form)."""
    configured = {name for name, _ in VARIANTS}
    found = VARIANTS + [(name, {}) for name in loss_classes() if name not in configured]
    if reference:
        found += [(name, {**kwargs, "impl": "reference"}) for name, kwargs in found
                  if "impl" in inspect.signature(getattr(losses, name)).parameters]
    return found


def label_maps(n: int, num_classes: int, height: int, width: int) -> torch.Tensor:
    """``[n, H, W]`` int64 labels from the synthetic dataset, its classes remapped per image."""
    try:
        from segrepro.data.synthetic import SyntheticSegmentation
    except ImportError as error:
        raise SystemExit(f"bench_losses: needs segrepro.data.synthetic.SyntheticSegmentation ({error})")
    dataset = SyntheticSegmentation(split="val", image_size=(max(height, 32), max(width, 32)))
    rng = np.random.default_rng(0)
    maps = []
    for i in range(n):
        _, label = dataset[i % len(dataset)]
        lut = np.full(256, 255, np.int64)
        lut[: dataset.num_classes] = np.concatenate(
            [[0], rng.choice(np.arange(1, num_classes), dataset.num_classes - 1, replace=False)])
        label = torch.from_numpy(lut[label])[None, None].float()
        maps.append(F.interpolate(label, size=(height, width), mode="nearest")[0, 0].long())
    return torch.stack(maps)


def arguments(name: str, kwargs: dict, num_classes: int) -> dict:
    if getattr(getattr(losses, name, None), "needs_features", False):
        return {"num_classes": num_classes, "feat_dim": FEATURE_DIM, **kwargs}
    return kwargs


def keep_freed_memory() -> bool:
    """glibc: serve blocks up to 32 MiB from the heap and never trim it, so freed memory is reused without
    page faults. False where that is not available (another C library)."""
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError, TypeError):
        return False


def clear_grads(*tensors) -> None:
    for tensor in tensors:
        tensor.grad = None


def make_step(loss, logits, target, features):
    """A closure running forward + backward of ``loss`` on fresh gradients."""
    inputs = (logits, target, features) if getattr(loss, "needs_features", False) else (logits, target)

    def step():
        clear_grads(logits, features)
        loss(*inputs).backward()
    return step


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 for the block: the profiler's C++ side logs every start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_bytes(fn, device: torch.device) -> int:
    """Peak memory allocated by ``fn`` beyond what was live when it started (see module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def model_step_seconds(n, num_classes, size, device, repeats) -> float:
    """Median time of one DeepLabV3-ResNet-101 forward + CE + backward step.

    smp's DeepLabV3 takes sides divisible by 8: the images are zero-padded up to
    the next multiple of 8 and the logits cropped back to ``size``."""
    import segmentation_models_pytorch as smp

    model = smp.DeepLabV3("resnet101", encoder_weights=None, classes=num_classes).to(device).train()
    pad = -size % 8
    images = torch.randn(n, 3, size, size, device=device)
    target = torch.randint(0, num_classes, (n, size, size), device=device)

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(F.pad(images, (0, pad, 0, pad)))[:, :, :size, :size]
        F.cross_entropy(logits, target).backward()
    step()
    seconds = statistics.median(timed(step, device) for _ in range(repeats))
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--n", type=int, help="batch (default: cpu 2, cuda 12)")
    parser.add_argument("--c", type=int, default=21, help="classes")
    parser.add_argument("--size", type=int, help="H = W (default: cpu 257, cuda 513)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per loss after one warm-up")
    parser.add_argument("--model-repeats", type=int, default=3, help="timed DeepLabV3-R101 steps")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 2 repeats")
    parser.add_argument("--only", metavar="TEXT", help="only the losses whose label contains TEXT (e.g. SSL)")
    parser.add_argument("--no-model", action="store_true", help="skip the DeepLabV3-ResNet-101 step (no shares)")
    parser.add_argument("--reference", action="store_true",
                        help="also time impl='reference' of the windowed losses (plain autograd)")
    parser.add_argument("--keep-memory", action="store_true",
                        help="CPU: keep freed memory in the process (glibc), for repeatable timings")
    args = parser.parse_args(argv)
    if args.keep_memory and not keep_freed_memory():
        parser.error("--keep-memory: glibc's mallopt is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    n = args.n or (2 if args.quick or device.type == "cpu" else 12)
    size = args.size or (33 if args.quick else 257 if device.type == "cpu" else 513)
    repeats = 2 if args.quick else args.repeats
    model_repeats = 1 if args.quick else args.model_repeats
    torch.manual_seed(0)

    target = label_maps(n, args.c, size, size).to(device)
    logits = torch.randn(n, args.c, size, size, device=device, requires_grad=True)
    fsize = -(-size // FEATURE_STRIDE)
    features = torch.randn(n, FEATURE_DIM, fsize, fsize, device=device, requires_grad=True)
    logit_bytes = logits.numel() * logits.element_size()

    ce = make_step(losses.CrossEntropyLoss(), logits, target, features)
    for _ in range(3):  # let the allocator settle before anything is timed
        ce()
    rows = []
    for name, kwargs in variants(args.reference):
        kwargs = arguments(name, kwargs, args.c)
        label = f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        if args.only and args.only not in label:
            continue
        if not hasattr(losses, name):
            rows.append(f"| {label} | not in segrepro.losses | | | | |")
            continue
        step = make_step(getattr(losses, name)(**kwargs).to(device), logits, target, features)
        ce(), step()  # warm-up
        ce_times, loss_times = [], []
        for _ in range(repeats):
            ce_times.append(timed(ce, device))
            loss_times.append(timed(step, device))
        clear_grads(logits, features)  # the measured call must not start by freeing old gradients
        memory = peak_extra_bytes(step, device) / logit_bytes
        ratio = statistics.median(t / c for t, c in zip(loss_times, ce_times))
        rows.append((label, statistics.median(loss_times), statistics.median(ce_times), ratio, memory))

    del logits, features, ce, step
    padded = size + (-size % 8)
    print(f"Losses, forward + backward: device {device}, N={n}, C={args.c}, H=W={size}, "
          f"{repeats} runs after 1 warm-up (median), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads{', freed memory kept' if args.keep_memory else ''}.")
    model_seconds = float("nan")
    try:
        if not args.no_model:
            model_seconds = model_step_seconds(n, args.c, size, device, model_repeats)
            print(f"DeepLabV3-ResNet-101 forward + CE + backward step: {1e3 * model_seconds:.1f} ms "
                  f"(median of {model_repeats}; input padded to {padded}x{padded}).")
    except torch.OutOfMemoryError:
        print(f"DeepLabV3-ResNet-101 step: out of memory at N={n}, {padded}x{padded}; no shares.")
    print("Extra peak memory counts the logits' gradient (1x); CenterLoss also its "
          f"[N, {FEATURE_DIM}, H/{FEATURE_STRIDE}, W/{FEATURE_STRIDE}] features' gradient.\n")
    print("| loss | ms | CE ms (same run) | x CE | share of DLv3-R101 step | extra peak memory (x logits) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        if isinstance(row, str):
            print(row)
            continue
        label, seconds, ce_seconds, ratio, memory = row
        share = "n/a" if math.isnan(model_seconds) else f"{100 * seconds / model_seconds:.2f}%"
        print(f"| {label} | {1e3 * seconds:.1f} | {1e3 * ce_seconds:.1f} | {ratio:.2f} | {share} | {memory:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
