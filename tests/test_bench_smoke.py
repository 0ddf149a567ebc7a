"""`scripts/bench_losses.py --quick` runs and lists every exported loss."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import segrepro.losses as losses


pytestmark = pytest.mark.slow  # runs the benchmark script in subprocesses

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_losses.py"
# Every loss class exported by segrepro.losses (the protocol's base class left out).
LOSSES = [name for name in losses.__all__ if isinstance(getattr(losses, name), type)
          and issubclass(getattr(losses, name), losses.SegmentationLoss) and name != "SegmentationLoss"]


def test_quick_bench_lists_every_loss():
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "profiler_start" not in run.stderr  # the memory measurement's profiler log lines are silenced
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "(" in line]
    for name in LOSSES:
        measured = [row for row in rows if row.startswith(f"| {name}(")]
        assert measured, f"{name} missing from the table:\n{run.stdout}"
        for row in measured:
            cells = [cell.strip() for cell in row.strip("|").split("|")]
            assert len(cells) == 6 and all(cells[1:]), row  # a number in every column
            assert float(cells[5]) >= 1.0, row  # the peak includes at least the logits' gradient


def test_only_and_no_model_narrow_the_run_and_memory_is_kept():
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--only", "SSLLoss", "--no-model", "--keep-memory",
                          "--reference"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and not line.startswith("| loss ")]
    assert rows and all(row.startswith("| SSLLoss(") for row in rows), run.stdout
    assert all(row.split("|")[5].strip() == "n/a" for row in rows), run.stdout
    assert "DeepLabV3-ResNet-101 forward" not in run.stdout
    assert "freed memory kept" in run.stdout
    assert any("impl='reference'" in row for row in rows) and any("impl" not in row for row in rows), run.stdout
