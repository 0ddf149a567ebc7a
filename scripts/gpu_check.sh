#!/usr/bin/env bash
# The GPU check of issue 17, one run (about 5-8 minutes on one H200):
#   bash scripts/gpu_check.sh [--device cuda|cpu] [--small] [--out DIR] [--budget SECONDS] [--steps 1,2,3,4]
#   make gpu-check ARGS="--device cpu --small"
#
#   1. tests/test_losses_device.py on the device: each windowed loss (SSL, SSIM, affinity, LAD) in float32 on
#      the device against the float64 CPU reference, both batch strategies; SSL's variance E[p^2] - mu^2 in
#      float32 against float64 with TF32 allowed and disallowed.
#   2. scripts/bench_losses.py --device cuda at its CUDA default (N=12, C=21, 513x513): every loss's time
#      against CE with the targets (SSL and SSIM within 3x CE, LAD and the affinity loss within 5x), and the
#      affinity loss's extra peak memory against the SSL paper's ~4 GB.
#   3. scripts/bench_train.py in bf16 and in fp32: DeepLabV3-ResNet-101, crop 513, batch 12, the SSL loss,
#      50 steps after 5 through segrepro's Trainer and through a bare loop on preloaded tensors: it/s, peak
#      memory, trainer / bare (target >= 0.95), the loss curves (trainer vs bare, bf16 vs fp32).
#   4. A tiny training run (2 steps) for a checkpoint, then `segrepro eval` on a small synthetic split with
#      and without `crf=dense crf.steps=[1,2,5]`: the time of both and how much of the CRF's work the model
#      pass hid (the CRF workers overlap GPU inference).
#
# --small: tiny sizes, for checking the script on a CPU (--device cpu --small: a few minutes on 2 cores).
# On a CPU the speed targets are printed for information and do not fail the run.
# Everything printed also goes to DIR/gpu_check.log (default DIR: runs/gpu_check/), with each step's raw
# output and JSON beside it. A failing step makes the exit status 1; the remaining steps still run.
# --budget: stop starting steps once this many seconds have passed (default: cuda 540, cpu none); each
# command is also capped by its own timeout. --steps: run only these steps (e.g. --steps 3,4 to rerun two). Python: $PYTHON, else .venv/bin/python, else python3; the
# checkout is put on PYTHONPATH, so segrepro need not be installed (its dependencies must be).
set -u -o pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

DEVICE=cuda
SMALL=0
OUT=runs/gpu_check
BUDGET=
STEPS=1,2,3,4
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=${2:-}; shift 2 || { usage; exit 2; } ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    --small) SMALL=1; shift ;;
    --out) OUT=${2:-}; shift 2 || { usage; exit 2; } ;;
    --out=*) OUT=${1#*=}; shift ;;
    --budget) BUDGET=${2:-}; shift 2 || { usage; exit 2; } ;;
    --budget=*) BUDGET=${1#*=}; shift ;;
    --steps) STEPS=${2:-}; shift 2 || { usage; exit 2; } ;;
    --steps=*) STEPS=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;; esac
[ -n "$OUT" ] || { echo "gpu_check: --out needs a folder" >&2; exit 2; }
if [ -z "$BUDGET" ]; then
  if [ "$DEVICE" = cuda ]; then BUDGET=540; else BUDGET=0; fi
fi
case ",$STEPS," in *[!0-9,]*|,,) echo "gpu_check: --steps takes step numbers 1-4, e.g. 1,3; got '$STEPS'" >&2; exit 2 ;; esac
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
: >"$LOG"

START=$SECONDS
FAILED=0
SUMMARY=()

# limit CAP: the seconds a command may take, CAP at most and what is left of the budget.
limit() {
  local cap=$1
  if [ "$BUDGET" -gt 0 ]; then
    local left=$((BUDGET - (SECONDS - START)))
    [ "$left" -lt "$cap" ] && cap=$left
  fi
  echo "$cap"
}

# run CAP CMD...: CMD under a timeout of `limit CAP` seconds (rc 124: it timed out).
run() {
  local cap
  cap=$(limit "$1"); shift
  if [ "$cap" -lt 15 ]; then echo "(not started: the time budget is spent)"; return 124; fi
  timeout --kill-after=15 "$cap" "$@"
  local rc=$?
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "(stopped after ${cap} s: timeout)"
  return "$rc"
}

# step NUMBER NAME FUNCTION: run a step (if --steps names it), record PASS/FAIL and its seconds.
step() {
  local number=$1 name="$1. $2" fn=$3 t0=$SECONDS rc
  case ",$STEPS," in *",$number,"*) ;; *) return 0 ;; esac
  echo
  echo "================================================================================"
  echo "## $name"
  echo "================================================================================"
  if [ "$BUDGET" -gt 0 ] && [ $((BUDGET - (SECONDS - START))) -lt 15 ]; then
    echo "not started: the time budget of ${BUDGET} s is spent"
    rc=125
  else
    "$fn"
    rc=$?
  fi
  local verdict=PASS
  if [ "$rc" -eq 125 ]; then verdict="FAIL (not started: time budget)"; elif [ "$rc" -ne 0 ]; then verdict="FAIL (status $rc)"; fi
  [ "$rc" -eq 0 ] || FAILED=1
  SUMMARY+=("| $name | $verdict | $((SECONDS - t0)) |")
}

preflight() {
  echo "# segrepro GPU check ($(date -u '+%Y-%m-%d %H:%M:%S UTC'))"
  echo "command: bash scripts/gpu_check.sh --device $DEVICE$([ "$SMALL" = 1 ] && echo ' --small') --out $OUT --budget $BUDGET --steps $STEPS"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain 2>/dev/null | grep -q . && echo ' (with uncommitted changes)')"
  echo "host: $(uname -n), $(nproc) CPU cores; python: $PYTHON"
  "$PYTHON" - "$DEVICE" <<'EOF'
import importlib, platform, sys
import torch
device = sys.argv[1]
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
print(f"TF32: cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
missing = []
for name in ("segmentation_models_pytorch", "timm", "hydra", "omegaconf", "albumentations", "cv2", "pydensecrf",
             "tensorboard", "tqdm", "scipy", "pytest"):
    try:
        importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 - any import failure is reported
        missing.append(f"{name} ({type(error).__name__}: {error})")
if missing:  # the steps that need them fail and say so; the others run
    print("MISSING Python packages: " + "; ".join(missing))
if device == "cuda" and not torch.cuda.is_available():
    print("--device cuda, but torch sees no CUDA device")
    sys.exit(1)
EOF
}

# ------------------------------------------------------------------------------------------------------------
# 1. The loss tests on the device
# ------------------------------------------------------------------------------------------------------------
step_tests() {
  local xml="$OUT/losses_device.xml"
  rm -f "$xml"
  run 240 "$PYTHON" -m pytest tests/test_losses_device.py -k "$DEVICE" -p no:cacheprovider -o junit_family=xunit1 \
    --junitxml="$xml" -q -rfE 2>&1 | tail -n 40
  local rc=${PIPESTATUS[0]}
  "$PYTHON" - "$xml" "$DEVICE" <<'EOF' || rc=1
import re, sys
import xml.etree.ElementTree as ET
path, device = sys.argv[1:]
try:
    cases = ET.parse(path).getroot().iter("testcase")
except (OSError, ET.ParseError) as error:
    sys.exit(f"no test report ({error})")
rows, counts = [], {}
for case in cases:
    name = case.get("name")
    test, _, params = name.partition("[")
    outcome = "passed"
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
    counts[outcome] = counts.get(outcome, 0) + 1
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    measured = ", ".join(f"{k}={v}" for k, v in props.items())
    short = {"test_windowed_loss_float32_on_device_matches_float64_reference": "loss f32 vs f64 ref",
             "test_ssl_variance_float32_matches_float64": "SSL variance f32 vs f64"}.get(test, test)
    rows.append(f"| {short} | {params.rstrip(']')} | {outcome} | {case.get('time', '')} | {measured} |")
print("\n| test | case | outcome | s | measured |\n|---|---|---|---|---|")
print("\n".join(rows))
print("\n" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
ran = counts.get("passed", 0) + counts.get("FAILED", 0) + counts.get("ERROR", 0)
sys.exit(0 if ran and not counts.get("FAILED") and not counts.get("ERROR") else 1)
EOF
  return "$rc"
}

# ------------------------------------------------------------------------------------------------------------
# 2. The losses' speed against CE, and the affinity loss's memory
# ------------------------------------------------------------------------------------------------------------
step_bench_losses() {
  local raw="$OUT/bench_losses.txt" args=(--device "$DEVICE")
  [ "$SMALL" = 1 ] && args+=(--quick)
  echo "\$ $PYTHON scripts/bench_losses.py ${args[*]}"
  run 300 "$PYTHON" scripts/bench_losses.py "${args[@]}" 2>&1 | tee "$raw"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || return "$rc"
  "$PYTHON" - "$raw" "$DEVICE" <<'EOF'
import re, sys
path, device = sys.argv[1:]
text = open(path).read()
shape = re.search(r"N=(\d+), C=(\d+), H=W=(\d+)", text)
if not shape:
    sys.exit("bench_losses: no 'N=.., C=.., H=W=..' line in its output")
n, c, size = (int(v) for v in shape.groups())
logit_bytes = n * c * size * size * 4  # float32 logits
# Targets (issue 17, from the losses issue): x CE at N=12, C=21, 513x513 on CUDA.
TARGETS = {"SSLLoss": 3.0, "SSIMLoss": 3.0, "LADLoss": 5.0, "AffinityFieldLoss": 5.0}
PAPER_AFFINITY_GB = 4.0  # SSL paper: the affinity loss at 12x513x513x21x8
rows, failed, affinity = [], [], None
for line in text.splitlines():
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    if not line.startswith("| ") or len(cells) != 6 or cells[0] == "loss" or set(cells[0]) <= {"-"}:
        continue
    label, ms, ce_ms, ratio, share, memory = cells
    try:
        ratio, memory = float(ratio), float(memory)
    except ValueError:
        continue
    cls = label.split("(")[0]
    target = TARGETS.get(cls)
    verdict = "-" if target is None else ("PASS" if ratio <= target else "FAIL")
    if verdict == "FAIL":
        failed.append(label)
    gib = memory * logit_bytes / 2**30
    if cls == "AffinityFieldLoss":
        affinity = gib
    rows.append(f"| {label} | {ms} | {ratio:.2f} | {'-' if target is None else f'<= {target:g}'} | {verdict} | "
                f"{memory:.2f} | {gib:.2f} |")
if not rows:
    sys.exit("bench_losses: no rows parsed from its table")
official = device == "cuda" and (n, c, size) == (12, 21, 513)
print(f"\nTargets: device {device}, N={n}, C={c}, {size}x{size}"
      f"{'' if official else ' (not the CUDA default N=12, C=21, 513x513: for information only)'}")
print("\n| loss | ms | x CE | target | verdict | extra peak (x logits) | extra peak (GiB) |\n|---|---|---|---|---|---|---|")
print("\n".join(rows))
if affinity is not None:
    scaled = affinity * (12 * 21 * 513 * 513) / (n * c * size * size)
    print(f"\nAffinity loss extra peak memory: {affinity:.2f} GiB here"
          + ("" if official else f" ({scaled:.2f} GiB scaled to 12x21x513x513)")
          + f"; the SSL paper: about {PAPER_AFFINITY_GB:g} GB at 12x513x513x21x8: "
          + ("within it" if (affinity if official else scaled) * 2**30 / 1e9 <= PAPER_AFFINITY_GB else "above it"))
if failed:
    print(f"missed targets: {', '.join(failed)}" + ("" if device == "cuda" else " (cpu: information only)"))
sys.exit(1 if failed and device == "cuda" else 0)
EOF
}

# ------------------------------------------------------------------------------------------------------------
# 3. Training throughput: Trainer against a bare loop, bf16 and fp32
# ------------------------------------------------------------------------------------------------------------
step_bench_train() {
  local rc=0 amp args
  for amp in bf16 fp32; do
    args=(--device "$DEVICE" --amp "$amp" --json "$OUT/bench_train_$amp.json" --out "$OUT/bench_train_$amp")
    [ "$SMALL" = 1 ] && args+=(--small)
    echo
    echo "\$ $PYTHON scripts/bench_train.py ${args[*]}"
    rm -f "$OUT/bench_train_$amp.json"
    run 270 "$PYTHON" scripts/bench_train.py "${args[@]}" 2>&1 | grep -v "trains from scratch (random init)"
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  done
  "$PYTHON" - "$OUT" "$DEVICE" <<'EOF' || rc=1
import json, math, statistics, sys
from pathlib import Path
out, device = Path(sys.argv[1]), sys.argv[2]
CURVE_TOL = 0.05  # mean |difference| / mean loss of two loss curves that agree
runs = {amp: json.loads((out / f"bench_train_{amp}.json").read_text())
        for amp in ("bf16", "fp32") if (out / f"bench_train_{amp}.json").exists()}
if not runs:
    sys.exit("bench_train: no results")

def gib(n):
    return "n/a" if n is None or math.isnan(n) else f"{n / 2**30:.2f}"

def mean_difference(a, b):
    return statistics.fmean(abs(x - y) for x, y in zip(a, b)) / statistics.fmean(abs(v) for v in b)

ok = True
print("\n| amp | trainer it/s | bare it/s | trainer / bare | target >= 0.95 | trainer data wait (s) | "
      "trainer peak (GiB) | bare peak (GiB, incl. preloaded) | curve trainer vs bare (mean, max) |")
print("|---|---|---|---|---|---|---|---|---|")
for amp, r in runs.items():
    t, b = r["trainer"], r["bare"]
    verdict = ("PASS" if r["ratio"] >= 0.95 else "FAIL") if device == "cuda" else "n/a on cpu"
    ok &= verdict != "FAIL"
    mean = mean_difference(t["losses"], b["losses"])
    ok &= mean <= CURVE_TOL
    print(f"| {amp}{'' if r['autocast'] else ' (float32: no autocast)' if amp == 'bf16' else ''} | "
          f"{t['it_per_s']:.3f} | {b['it_per_s']:.3f} | {r['ratio']:.3f} | {verdict} | {t['data_wait_s']:.2f} | "
          f"{gib(t['peak_bytes'])} | {gib(b['peak_bytes'])} ({gib(b.get('preloaded_bytes'))}) | "
          f"{mean:.2e}, {r['curve_difference']:.2e} |")
if len(runs) == 2:
    a, b = runs["bf16"]["trainer"]["losses"], runs["fp32"]["trainer"]["losses"]
    mean = mean_difference(a, b)
    agree = mean <= CURVE_TOL
    ok &= agree
    print(f"\nloss curves bf16 vs fp32 (trainer): mean |difference| / mean loss {mean:.2e}, max "
          f"{max(abs(x - y) for x, y in zip(a, b)) / statistics.fmean(b):.2e}: "
          f"{'agree' if agree else 'DIFFER'} (tolerance {CURVE_TOL} of the mean)")
    steps = len(a)
    shown = sorted(set(range(0, steps, max(1, steps // 10))) | {steps - 1})
    print("\n| step | trainer bf16 | bare bf16 | trainer fp32 | bare fp32 |\n|---|---|---|---|---|")
    for i in shown:
        cells = [f"{runs[amp][kind]['losses'][i]:.4f}" for amp in ("bf16", "fp32") for kind in ("trainer", "bare")]
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
else:
    ok = False
    print(f"only {', '.join(runs)} finished")
sys.exit(0 if ok else 1)
EOF
  return "$rc"
}

# ------------------------------------------------------------------------------------------------------------
# 4. segrepro eval with and without the dense CRF
# ------------------------------------------------------------------------------------------------------------
step_crf() {
  local run_dir="$OUT/crf_train" train_args eval_args
  rm -rf "$run_dir" "$OUT/crf_eval_none" "$OUT/crf_eval_dense"
  train_args=(debug=tiny trainer.max_iters=2 "trainer.device=$DEVICE" "hydra.run.dir=$run_dir")
  if [ "$SMALL" = 1 ]; then
    eval_args=("trainer.device=$DEVICE" "data.dataset.image_size=[64,64]" data.dataset.num_samples.val=8)
  else
    train_args+=(model=deeplabv3_r101 model.pretrained=false data.crop_size=65)
    eval_args=("trainer.device=$DEVICE" "data.dataset.image_size=[513,513]" data.dataset.num_samples.val=64
               data.val_batch_size=4 data.num_workers=4)
  fi
  echo "\$ $PYTHON -m segrepro.train ${train_args[*]}"
  run 240 "$PYTHON" -m segrepro.train "${train_args[@]}" >"$OUT/crf_train.txt" 2>&1
  local rc=$?
  tail -n 3 "$OUT/crf_train.txt"
  local ckpt="$run_dir/checkpoints/step_0000002.pt"
  if [ "$rc" -ne 0 ] || [ ! -f "$ckpt" ]; then
    echo "the training run failed (status $rc); its output: $OUT/crf_train.txt"
    tail -n 20 "$OUT/crf_train.txt"
    return 1
  fi
  cat >"$OUT/segrepro_eval_timed.py" <<'EOF'
"""`segrepro eval` (segrepro.evaluate.main) with Evaluator.run timed: SECONDS_FILE OVERRIDES...

With the CRF, its worker pool is started first and timed apart (it starts once per evaluator and serves every
evaluation after), so that the run's time is the model pass and the CRF overlapping it."""
import json
import os
import sys
import time


def main():
    from segrepro.engine import evaluator
    from segrepro import evaluate

    seconds_file = sys.argv.pop(1)
    run = evaluator.Evaluator.run

    def timed(self, model, with_crf=False):
        times = {"pool_start": 0.0}
        if with_crf and self.crf is not None and self.pool is None:
            start = time.perf_counter()
            self.pool = evaluator.CRFPool(self.crf_workers)
            for future in [self.pool.executor.submit(os.getpid) for _ in range(2 * self.crf_workers)]:
                future.result()
            times["pool_start"] = time.perf_counter() - start
        start = time.perf_counter()
        try:
            return run(self, model, with_crf=with_crf)
        finally:
            times["run"] = time.perf_counter() - start
            with open(seconds_file, "w") as f:
                json.dump(times, f)
    evaluator.Evaluator.run = timed
    evaluate.main()


if __name__ == "__main__":
    main()
EOF
  local kind crf
  for kind in none dense; do
    crf=()
    [ "$kind" = dense ] && crf=(crf=dense "crf.steps=[1,2,5]")
    echo "\$ segrepro eval checkpoint=$ckpt${crf[*]:+ ${crf[*]}} ${eval_args[*]}"
    # segrepro eval's own main with Evaluator.run timed (the part the CRF overlaps), from a file: the CRF's
    # worker processes start by importing the main module
    run 240 "$PYTHON" "$OUT/segrepro_eval_timed.py" "$OUT/crf_eval_$kind.seconds" "checkpoint=$ckpt" "${crf[@]}" \
      "${eval_args[@]}" "hydra.run.dir=$OUT/crf_eval_$kind" >"$OUT/crf_eval_$kind.txt" 2>&1
    local erc=$?
    grep -E "mIoU|CRF:|written" "$OUT/crf_eval_$kind.txt"
    if [ "$erc" -ne 0 ]; then
      echo "segrepro eval ($kind) failed (status $erc):"; tail -n 20 "$OUT/crf_eval_$kind.txt"; rc=1
    fi
  done
  [ "$rc" -eq 0 ] || return "$rc"
  "$PYTHON" - "$OUT" "${eval_args[@]}" <<'EOF'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
images = int(next(a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("data.dataset.num_samples.val=")))
t0, t1 = (json.loads((out / f"crf_eval_{k}.seconds").read_text())["run"] for k in ("none", "dense"))
pool_start = json.loads((out / "crf_eval_dense.seconds").read_text())["pool_start"]
plain = json.loads((out / "crf_eval_none" / "eval.json").read_text())
report = json.loads((out / "crf_eval_dense" / "eval.json").read_text())
found = re.search(r"(\d+) worker processes", (out / "crf_eval_dense.txt").read_text())
workers = int(found.group(1)) if found else 1
per_image = float(report["crf_seconds_per_image"])
print(f"\n{images} validation images; Evaluator.run timed inside `segrepro eval` (process start and model build"
      f" left out; the CRF's {workers} worker processes started before it, in {pool_start:.2f} s)")
print("\n| eval | Evaluator.run (s) | mIoU (%) |\n|---|---|---|")
print(f"| no CRF | {t0:.2f} | {100 * plain['miou']:.2f} |")
print(f"| crf=dense crf.steps=[1,2,5] | {t1:.2f} | "
      + ", ".join(f"CRF-{k}: {100 * v['miou']:.2f}" for k, v in report["crf"].items()) + " |")
crf = per_image * images / workers  # the CRF's work spread over its workers
serial, overlapped = t0 + crf, max(t0, crf)
shorter = min(t0, crf)
hidden = (serial - t1) / shorter if shorter > 0 else float("nan")
print(f"\nCRF: {per_image:.3f} s per image (5 steps), {per_image * images:.2f} s in all, over {workers} workers "
      f"{crf:.2f} s. Without overlap: {t0:.2f} + {crf:.2f} = {serial:.2f} s; with full overlap: {overlapped:.2f} s; "
      f"measured: {t1:.2f} s ({t1 - t0:+.2f} s over no CRF): {100 * hidden:.0f} % of the shorter part hidden"
      + (" (outside 0-100 %: the difference is within the timing noise)." if not 0 <= hidden <= 1 else "."))
(out / "crf_overlap.json").write_text(json.dumps(
    {"images": images, "seconds_no_crf": t0, "seconds_crf": t1, "pool_start_seconds": pool_start, "workers": workers, "crf_seconds_per_image": per_image,
     "serial_estimate": serial, "overlap_estimate": overlapped, "hidden_share": hidden}, indent=1) + "\n")
EOF
}

main() {
  preflight || { echo "preflight failed: see above"; exit 1; }
  step 1 "loss tests on $DEVICE (float32 vs float64 reference, TF32)" step_tests
  step 2 "bench_losses --device $DEVICE: targets and memory" step_bench_losses
  step 3 "bench_train: Trainer vs bare loop, bf16 and fp32" step_bench_train
  step 4 "segrepro eval with and without dense CRF" step_crf
  echo
  echo "## Summary ($((SECONDS - START)) s; log: $LOG)"
  echo
  echo "| step | result | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${SUMMARY[@]}"
  return "$FAILED"
}

main 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
