"""Training throughput: segrepro's Trainer against a bare PyTorch loop on preloaded tensors.

    python scripts/bench_train.py [--device cpu|cuda] [--iters N] [--warmup W] [--crop S] [--batch B]
                                  [--model GROUP] [--arch A] [--encoder E] [--loss GROUP] [--amp bf16|fp32]
                                  [--workers K] [--small] [--json PATH] [--out DIR] [overrides ...]

Default: the SSL recipe's training step (SSL Sec. 4.1, configs/experiment/ssl/voc_deeplabv3.yaml):
DeepLabV3-ResNet-101 (output stride 16, no ImageNet weights: nothing is downloaded), crop 513, batch 12, the
SSL loss, SGD lr 0.007 with momentum 0.9 and weight decay 1e-4, random scale 0.5-2.0 and flip, on the
built-in synthetic data (``data=synthetic``, its scenes drawn at the crop's size; 6 classes, where VOC has 21).
The config is composed like ``segrepro train``'s (segrepro.config.compose_config); the extra ``overrides``
are Hydra overrides on top (``trainer.log_every=50``, ``loss=ce``, ...).

Two runs of ``--warmup + --iters`` steps from the same initial weights (``build_training`` seeds them):

* trainer: ``Trainer.train_step`` on the batches of the Trainer's own loader (``data.num_workers`` worker
  processes, pinned memory on CUDA), as ``segrepro train`` runs it: the loss read back every step, the loss
  terms logged to TensorBoard every ``trainer.log_every`` steps;
* bare: ``zero_grad``, forward (under the same autocast), loss, backward, ``optimizer.step``,
  ``scheduler.step`` on the same batches, drawn from an identical loader before the run and held on the
  device; the loss values are read back only at the end.

Printed: it/s over the ``--iters`` steps after the warm-up (and seconds the trainer spent waiting for its
loader), peak memory (CUDA: ``max_memory_allocated`` over the run; the bare run's includes its preloaded
batches, shown apart), the ratio trainer / bare (target on a GPU: at least 0.95), and both loss curves.
``--amp bf16`` is autocast in bfloat16 (``trainer.amp=true``), which the trainer applies on CUDA only; on a
CPU both runs are float32. ``--json PATH`` writes the numbers and curves for ``scripts/gpu_check.sh``.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

TARGET_RATIO = 0.95  # the trainer's it/s over the bare loop's, on a GPU


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, help="timed steps (default 50; --small 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5; --small 1)")
    parser.add_argument("--crop", type=int, help="crop size (default 513; --small 65)")
    parser.add_argument("--batch", type=int, help="batch (default 12; --small 2)")
    parser.add_argument("--model", default="deeplabv3_r101", help="configs/model/ choice (default deeplabv3_r101)")
    parser.add_argument("--arch", help="model.arch (deeplabv2, deeplabv3, deeplabv3plus)")
    parser.add_argument("--encoder", help="model.encoder (default the model's; --small resnet18). An encoder without "
                        "bottleneck units also needs the override model.multi_grid=null")
    parser.add_argument("--loss", default="ssl", help="configs/loss/ choice (default ssl)")
    parser.add_argument("--amp", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--workers", type=int,
                        help="data.num_workers of the trainer's loader (default: cuda min(12, cores - 2), cpu 0)")
    parser.add_argument("--small", action="store_true", help="tiny sizes for a CPU check: resnet18, crop 65, "
                        "batch 2, 1 + 3 steps")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--out", type=Path, help="run folder for the trainer's config and TensorBoard events "
                        "(default: a temporary folder, removed)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top (key=value)")
    args = parser.parse_args(argv)
    small = args.small
    args.iters = args.iters or (3 if small else 50)
    args.warmup = args.warmup if args.warmup is not None else (1 if small else 5)
    args.crop = args.crop or (65 if small else 513)
    args.batch = args.batch or (2 if small else 12)
    if small and not args.encoder:
        args.encoder = "resnet18"
    if args.workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        args.workers = min(12, max(cores - 2, 0)) if args.device == "cuda" else 0
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be at least 1 and --warmup at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    return args


def overrides_for(args) -> list[str]:
    """The Hydra overrides of the run (see the module docstring)."""
    steps = args.warmup + args.iters
    found = [
        f"model={args.model}", f"loss={args.loss}", "data=synthetic", "model.pretrained=false",
        f"data.crop_size={args.crop}", f"data.batch_size={args.batch}", f"data.num_workers={args.workers}",
        f"data.dataset.image_size=[{args.crop},{args.crop}]",
        f"data.dataset.num_samples={{train: {max(args.batch * steps, args.batch)}, val: 2}}",
        "data.scale_range=[0.5,2.0]", "data.flip=true",
        "optim.lr=0.007", "optim.momentum=0.9", "optim.weight_decay=1e-4", "optim.power=0.9",
        f"trainer.max_iters={steps}", f"trainer.device={args.device}", "trainer.progress=false",
        f"trainer.amp={'true' if args.amp == 'bf16' else 'false'}", "trainer.amp_dtype=bfloat16",
    ]
    if args.arch:
        found.append(f"model.arch={args.arch}")
    if args.encoder:
        found.append(f"model.encoder={args.encoder}")
    if args.small:
        found.append("model.multi_grid=null")  # ResNet-18 has no bottleneck units to take it
    return found + list(args.overrides)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> float:
    """Peak bytes allocated since the last reset (CUDA); NaN on CPU."""
    return float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else math.nan


def loader_batches(loader, sampler):
    """The batches a Trainer starting at step 0 draws from ``loader`` (cf. ``Trainer.batches``)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def run_trainer(cfg, run_dir: Path, dist_info, warmup: int, iters: int) -> dict:
    from segrepro.engine.build import build_training
    from segrepro.engine.trainer import Trainer

    device = dist_info.device
    reset_memory(device)
    parts = build_training(cfg, run_dir, dist_info)
    trainer = Trainer(cfg, parts, run_dir, dist_info)
    trainer.start()
    trainer.net.train()
    batches = trainer.batches()
    losses, wait = [], 0.0
    torch.manual_seed(cfg.trainer.seed)  # the same dropout draws as the bare run
    for step in range(warmup + iters):
        if step == warmup:
            synchronize(device)
            start, wait = time.perf_counter(), 0.0
        fetched = time.perf_counter()
        images, labels = next(batches)
        wait += time.perf_counter() - fetched
        losses.append(trainer.train_step(images, labels))
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = peak_memory(device)
    if parts.writer is not None:
        parts.writer.close()
    parts.evaluator.close()
    del trainer, parts, batches
    return {"losses": losses, "seconds": seconds, "it_per_s": iters / seconds, "data_wait_s": wait,
            "peak_bytes": peak}


def run_bare(cfg, run_dir: Path, dist_info, warmup: int, iters: int) -> dict:
    """The same model, loss, optimizer and schedule (``build_training``: the same initial weights), a plain
    loop over preloaded batches."""
    from segrepro.engine.build import AMP_DTYPES, build_training

    device = dist_info.device
    parts = build_training(cfg, run_dir / "bare", dist_info)
    if parts.writer is not None:
        parts.writer.close()
    parts.evaluator.close()
    source = loader_batches(parts.loader, parts.sampler)
    data = [tuple(t.to(device) for t in next(source)) for _ in range(warmup + iters)]
    del source
    parts.loader = None  # its worker processes end
    gc.collect()
    data_bytes = sum(t.numel() * t.element_size() for batch in data for t in batch)
    model, loss_fn, optimizer, scheduler = parts.net, parts.loss, parts.optimizer, parts.scheduler
    use_amp = cfg.trainer.amp and device.type == "cuda"
    amp_dtype = AMP_DTYPES[cfg.trainer.amp_dtype]
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else contextlib.nullcontext
    max_iters = cfg.trainer.max_iters
    model.train()
    reset_memory(device)
    values = []
    torch.manual_seed(cfg.trainer.seed)
    for step, (images, labels) in enumerate(data):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        loss_fn.set_progress(step / max_iters)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(images)
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        values.append(loss.detach())
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = peak_memory(device)
    losses = [float(v) for v in values]
    del parts, model, loss_fn, optimizer, scheduler, data, values
    return {"losses": losses, "seconds": seconds, "it_per_s": iters / seconds, "data_wait_s": 0.0,
            "peak_bytes": peak, "preloaded_bytes": data_bytes}


def curve_difference(a: list, b: list) -> float:
    """The largest relative difference of two loss curves, ``max |a - b| / mean(|b|)``."""
    scale = statistics.fmean(abs(v) for v in b) or 1.0
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) / scale


def gigabytes(n: float) -> str:
    return "n/a (cpu)" if math.isnan(n) else f"{n / 2**30:.2f}"


def report(result: dict) -> str:
    trainer, bare = result["trainer"], result["bare"]
    ratio = result["ratio"]
    on_gpu = result["device"] == "cuda"
    verdict = ("PASS" if ratio >= TARGET_RATIO else "FAIL") if on_gpu else "n/a on cpu"
    lines = [
        f"Training step: {result['model']}, loss {result['loss']}, crop {result['crop']}, batch {result['batch']}, "
        f"{result['amp']} ({'autocast' if result['autocast'] else 'no autocast: float32'}), device {result['device']}"
        f"{' (' + result['device_name'] + ')' if result.get('device_name') else ''}, {result['iters']} timed steps "
        f"after {result['warmup']}, trainer loader workers {result['workers']}, torch {result['torch']}, "
        f"TF32 cudnn {result['tf32_cudnn']} matmul {result['tf32_matmul']}.",
        "",
        "| run | it/s | s/it | waiting for data (s) | peak memory (GiB) | preloaded batches (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in (("trainer", trainer), ("bare loop", bare)):
        preloaded = gigabytes(run["preloaded_bytes"]) if "preloaded_bytes" in run and on_gpu else "-"
        lines.append(f"| {name} | {run['it_per_s']:.3f} | {1 / run['it_per_s']:.3f} | {run['data_wait_s']:.2f} | "
                     f"{gigabytes(run['peak_bytes'])} | {preloaded} |")
    lines += [
        "",
        f"trainer / bare it/s: {ratio:.3f} (target >= {TARGET_RATIO} on a GPU): {verdict}",
        f"loss curves, trainer vs bare: max |difference| / mean loss = {result['curve_difference']:.2e}",
        "",
        "| step | trainer loss | bare loss |",
        "|---|---|---|",
    ]
    steps = len(trainer["losses"])
    shown = sorted(set(range(0, steps, max(1, steps // 10))) | {steps - 1})
    for i in shown:
        lines.append(f"| {i + 1} | {trainer['losses'][i]:.5f} | {bare['losses'][i]:.5f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from segrepro.config import compose_config
    from segrepro.engine.distributed import DistInfo

    cfg = compose_config(overrides_for(args))
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist_info = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    with contextlib.ExitStack() as stack:
        if args.out is None:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_train_")))
        else:
            run_dir = args.out
        trainer = run_trainer(cfg, run_dir, dist_info, args.warmup, args.iters)
        reset_memory(device)
        bare = run_bare(cfg, run_dir, dist_info, args.warmup, args.iters)
    result = {
        "device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "model": f"{cfg.model.arch}-{cfg.model.encoder}", "loss": args.loss, "crop": args.crop, "batch": args.batch,
        "amp": args.amp, "autocast": bool(cfg.trainer.amp and device.type == "cuda"), "iters": args.iters,
        "warmup": args.warmup, "workers": args.workers, "torch": torch.__version__,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "overrides": overrides_for(args), "trainer": trainer, "bare": bare,
        "ratio": trainer["it_per_s"] / bare["it_per_s"],
        "curve_difference": curve_difference(trainer["losses"], bare["losses"]),
    }
    result["pass"] = result["ratio"] >= TARGET_RATIO if device.type == "cuda" else None
    print(report(result), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
    finite = all(math.isfinite(v) for run in (trainer, bare) for v in run["losses"])
    return 0 if finite and result["pass"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
