"""Time of the dense CRF (segrepro.crf) per image, and its throughput over worker processes.

    python scripts/bench_crf.py [--size 500x375] [--classes 21] [--steps 1 2 5] [--workers 1 2]
                                [--images N] [--repeats R] [--crf dense|deeplab] [--start-method fork|spawn|forkserver]

Inputs: ``--images`` synthetic VOC-sized scenes (``--size`` is width x height): smooth colour
regions (a few random blobs on a background, each a class) with pixel noise, and softmax
probabilities that roughly follow them (right class favoured, smooth logit noise, some wrong
patches). Printed as Markdown tables:

* seconds per image, one core (the process pinned to one CPU): the setup alone (unary and both
  kernels, no iteration) and a ``DenseCRF(k)`` call for each ``k`` in ``--steps``, the median over
  the images and ``--repeats`` rounds (the variants interleaved), beside the SSL paper's "about
  0.4s, 0.5s and 0.75s" extra per image for 1, 2 and 5 steps (their CPU is not stated). Also one
  call with the whole step list, which reads every step count off one run.
* throughput with ``--workers`` processes: a ``ProcessPoolExecutor`` over the same images with
  the whole step list, through ``segrepro.crf.refine_one`` as evaluation calls it (the
  probabilities and image pickled to the worker, the labels back); the pool is started and
  warmed up before the clock starts. The ratio is each throughput over the first one's; the
  parent's CPU time per image is what feeding the workers costs the evaluating process (it
  competes with the workers for the cores).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segrepro.crf import DenseCRF, refine_one  # noqa: E402

PAPER_SECONDS = {1: 0.4, 2: 0.5, 5: 0.75}  # SSL Sec. 4.2.3: "about 0.4s, 0.5s and 0.75s respectively"
PARAMS = {  # configs/crf/{dense,deeplab}.yaml
    "dense": dict(gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10),
    "deeplab": dict(gaussian_sxy=1, gaussian_compat=3, bilateral_sxy=67, bilateral_srgb=3, bilateral_compat=4),
}


def smooth_noise(rng, height, width, cells, channels):
    """Noise that varies smoothly: a coarse random grid, bilinearly upsampled."""
    coarse = rng.normal(size=(channels, cells + 1, cells + 1))
    ys = np.linspace(0, cells, height)
    xs = np.linspace(0, cells, width)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    c00 = coarse[:, y0][:, :, x0]
    c01 = coarse[:, y0][:, :, x0 + 1]
    c10 = coarse[:, y0 + 1][:, :, x0]
    c11 = coarse[:, y0 + 1][:, :, x0 + 1]
    return (c00 * (1 - fy) * (1 - fx) + c01 * (1 - fy) * fx + c10 * fy * (1 - fx) + c11 * fy * fx)


def make_inputs(rng, height, width, n_classes):
    """A synthetic scene (uint8 [H, W, 3]) and softmax probabilities (float32 [C, H, W]) that follow it."""
    yy, xx = np.mgrid[:height, :width]
    labels = np.zeros((height, width), dtype=np.int64)
    colours = {0: rng.uniform(40, 215, size=3)}
    for _ in range(int(rng.integers(3, 7))):  # blobs, drawn over each other
        cls = int(rng.integers(1, n_classes))
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.1, 0.35) * height, rng.uniform(0.1, 0.35) * width
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = cls
        colours.setdefault(cls, rng.uniform(40, 215, size=3))
    palette = np.array([colours.get(c, np.zeros(3)) for c in range(n_classes)])
    shading = 20 * smooth_noise(rng, height, width, 4, 3).transpose(1, 2, 0)
    image = palette[labels] + shading + rng.normal(scale=6.0, size=(height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    logits = 2.0 * smooth_noise(rng, height, width, 12, n_classes) + rng.normal(scale=0.5, size=(n_classes, height, width))
    logits[labels, yy, xx] += 2.5
    logits -= logits.max(axis=0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=0, keepdims=True)
    return probs.astype(np.float32), image


def warm(_):
    return os.getpid()


def time_one_core(args, inputs):
    """Median seconds per image for the setup alone, each step count and the whole step list, on
    one CPU. The variants run in turn on each image (``--repeats`` rounds), so that drift in the
    machine's speed hits them alike."""
    def setup_only(probs, image):
        variants[0][1].build(probs, image).startInference()

    variants = [("0 (setup only: unary, kernels, initial Q)", DenseCRF(1, **PARAMS[args.crf]), None)]
    variants += [(f"{k}", DenseCRF(k, **PARAMS[args.crf]), PAPER_SECONDS.get(k)) for k in sorted(set(args.steps))]
    all_steps = DenseCRF(args.steps, **PARAMS[args.crf])
    variants.append((f"{list(all_steps.steps)} in one run", all_steps, None))
    calls = [setup_only] + [crf for _, crf, _ in variants[1:]]
    seconds = [[] for _ in variants]
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        for call in calls:  # warm-up
            call(*inputs[0])
        for _ in range(args.repeats):
            for probs, image in inputs:
                for call, times in zip(calls, seconds):
                    start = time.perf_counter()
                    call(probs, image)
                    times.append(time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, allowed)
    return [(label, statistics.median(times), paper) for (label, _, paper), times in zip(variants, seconds)]


def throughput(args, inputs, workers):
    crf = DenseCRF(args.steps, **PARAMS[args.crf])
    context = multiprocessing.get_context(args.start_method)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        list(pool.map(warm, range(4 * workers)))  # start every worker before the clock
        pool.submit(refine_one, crf, -1, "warm-up", *inputs[0]).result()
        cpu, start = time.process_time(), time.perf_counter()
        futures = [pool.submit(refine_one, crf, i, f"synthetic_{i:03d}", probs, image)
                   for i, (probs, image) in enumerate(inputs)]
        for future in futures:
            future.result()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(inputs) / elapsed, elapsed, cpu / len(inputs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="500x375", help="width x height (VOC: 500x375)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the images for the one-core table")
    parser.add_argument("--crf", choices=sorted(PARAMS), default="dense", help="parameter set (configs/crf/)")
    parser.add_argument("--start-method", choices=multiprocessing.get_all_start_methods(),
                        default=multiprocessing.get_start_method())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WIDTHxHEIGHT, got {args.size!r}")
    if args.images < 1 or args.repeats < 1 or args.classes < 2 or min(args.workers) < 1 or min(args.steps) < 1:
        parser.error("--images, --repeats, --workers and --steps >= 1 and --classes >= 2, please")

    rng = np.random.default_rng(args.seed)
    inputs = [make_inputs(rng, height, width, args.classes) for _ in range(args.images)]
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]

    print(f"Command: `{shlex.join(['python', 'scripts/bench_crf.py'] + (sys.argv[1:] if argv is None else argv))}`")
    print(f"Dense CRF `crf={args.crf}` {PARAMS[args.crf]}; {args.images} synthetic images {width}x{height}, "
          f"{args.classes} classes; {cores} usable cores ({os.cpu_count()} on the machine), "
          f"load average {load:.2f} at start.")
    print()
    print(f"Seconds per image, one core (median over {args.repeats} rounds of the images):")
    print()
    print("| CRF steps | s / image | SSL paper (s / image) |")
    print("|---|---|---|")
    for label, seconds, paper in time_one_core(args, inputs):
        print(f"| {label} | {seconds:.3f} | {'-' if paper is None else f'about {paper}'} |")
    print()
    print(f"Throughput, steps {sorted(set(args.steps))} in one run per image, through "
          f"`ProcessPoolExecutor` ({args.start_method}):")
    print()
    print("| workers | images / s | s for the images | x first row | parent CPU s / image (pickling, transfer) |")
    print("|---|---|---|---|---|")
    base = None
    for workers in args.workers:
        rate, elapsed, parent_cpu = throughput(args, inputs, workers)
        base = base or rate
        print(f"| {workers} | {rate:.3f} | {elapsed:.2f} | {rate / base:.2f} | {parent_cpu:.3f} |")
    print()
    print(f"Load average at the end: {os.getloadavg()[0]:.2f} (other processes on the machine skew "
          f"the multi-worker rows).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
