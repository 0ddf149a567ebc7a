"""``segrepro reproduce table=ssl_fig3 / ssl_fig4``: SSL Figures 3 and 4 from one tiny SSL run (SSL
Table 2's ssl3 at scale smoke, trained once in this process for the module; the two slow tests):
Figure 3's CSV holds what the loss logged, Figure 4's hard-example counts are recomputed by hand."""
from __future__ import annotations

import csv
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from segrepro import cli
from segrepro.config import ConfigError, compose_config, saved_run_config
from segrepro.data import build_dataset
from segrepro.engine.checkpoint import load_checkpoint
from segrepro.engine.trainer import Trainer
from segrepro.losses import SSLLoss
from segrepro.losses.reference import ssl_e_max, ssl_error_map
from segrepro.models import build_model
from segrepro.reproduce import figures, hard_examples, logged_statistics, runner
from segrepro.reproduce.spec import load_figure, load_scale, load_table

from .test_reproduce import train_in_this_process


def reproduce(monkeypatch, *args) -> int:
    monkeypatch.setattr(sys, "argv", ["segrepro", "reproduce", *args])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return stop.value.code


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(root, {step: the terms the trainer logged})`` of ssl3 seed 0 at scale smoke (2 steps, each logged),
    trained through the figure's own planner and runner."""
    root = tmp_path_factory.mktemp("tables")
    logged = {}
    loss_terms = Trainer.loss_terms

    def recording(self, inputs):
        terms = loss_terms(self, inputs)
        logged[self.step] = terms
        return terms

    figure, scale = load_figure("ssl_fig3"), load_scale("smoke", "unused")
    runs = figures.figure_runs(figure, load_table("ssl_table2"), scale, [0], root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "loss_terms", recording)
        patch.setattr(runner, "launch", train_in_this_process)
        assert runner.execute(runs, "smoke") == []
    assert sorted(logged) == [1, 2]
    return root, logged


def read_csv(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def assert_real_png(path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 300
        assert np.asarray(image.convert("L")).std() > 10  # not a blank canvas


@pytest.mark.slow  # the first to use the module's training run
def test_figure3_holds_the_logged_statistics(trained, monkeypatch, capsys):
    root, logged = trained
    monkeypatch.setattr(runner, "launch", lambda run: pytest.fail("the finished run trained again"))
    assert reproduce(monkeypatch, "table=ssl_fig3", "scale=smoke", f"root={root}") == 0
    assert "[1/1] ssl3 seed 0 (train): finished, skipped" in capsys.readouterr().out
    folder = root / "ssl_fig3" / "smoke"
    rows = read_csv(folder / "figure.csv")
    tags = load_figure("ssl_fig3").scalars
    assert list(rows[0]) == ["step", "seed", *tags]
    assert [(r["step"], r["seed"]) for r in rows] == [("1", "0"), ("2", "0")]
    for row in rows:
        terms = logged[int(row["step"])]
        for tag in tags:  # TensorBoard stores float32
            assert float(row[tag]) == pytest.approx(terms[tag.removeprefix("loss/")], rel=1e-6), (row["step"], tag)
    assert float(rows[0]["loss/norm_gt_max"]) > 0 > float(rows[0]["loss/norm_gt_min"])
    assert_real_png(folder / "figure.png")
    text = (folder / "figure.md").read_text()
    assert "Scale **smoke**" in text and "theoretical e_max of Eq. 11 is 4.6716" in text
    assert "| 0 | finished |" in text and str(root / "ssl_table2" / "smoke" / "ssl3" / "seed0") in text


@pytest.mark.slow
def test_figure4_counts_as_the_reference_loss_does(trained, monkeypatch):
    root, _ = trained
    monkeypatch.setattr(runner, "launch", lambda run: pytest.fail("the finished run trained again"))
    assert reproduce(monkeypatch, "table=ssl_fig4", "scale=smoke", f"root={root}") == 0
    folder = root / "ssl_fig4" / "smoke"
    rows = {float(r["beta"]): r for r in read_csv(folder / "figure.csv")}
    assert sorted(rows) == pytest.approx([0.02 + 0.01 * k for k in range(19)])
    assert [b for b, r in rows.items() if r["paper_beta"] == "yes"] == [0.06, 0.08, 0.09, 0.1, 0.11, 0.12, 0.14]
    # by hand at beta 0.1: each validation image's e (Eq. 10) from SSLLoss.error_map in float32, as the loss
    # trains, hard where e > 0.1 e_max, over the valid pixels' entries, pooled over the images; and the
    # same with the reference loss in float64, which float32 matches up to about 0.03 in windows where
    # p is nearly flat (E[p^2] - mu^2 cancels): entries that far from the threshold must agree
    state = load_checkpoint(root / "ssl_table2" / "smoke" / "ssl3" / "seed0" / "checkpoints" / "step_0000002.pt")
    cfg = saved_run_config(state["config"])
    model = build_model(cfg.model, cfg.data.num_classes, from_checkpoint=True)
    model.load_state_dict(state["model"])
    model.eval()
    threshold = 0.1 * ssl_e_max(region_size=3, sigma=1.5, c4=0.01)
    hard = valid = surely_hard = maybe_hard = 0
    with torch.no_grad():
        for image, label in build_dataset(cfg.data, cfg.data.val_split, train=False):
            logits, kept = model(image[None]), label != 255
            e = SSLLoss(region_size=3, sigma=1.5).error_map(logits, label[None])[0][:, kept]  # [C, valid pixels]
            hard += int((e > threshold).sum())
            valid += e.numel()
            e64 = ssl_error_map(logits.double(), label[None], region_size=3, sigma=1.5, c4=0.01)[0][:, kept]
            surely_hard += int((e64 > threshold + 0.04).sum())
            maybe_hard += int((e64 > threshold - 0.04).sum())
    row = rows[0.1]
    assert (int(row["hard_entries"]), int(row["valid_entries"])) == (hard, valid)
    assert float(row["e_max"]) == pytest.approx(10 * threshold, abs=1e-6)
    assert surely_hard <= hard <= maybe_hard < 1.1 * surely_hard
    assert 0 < hard < valid
    assert float(row["hard_percent"]) == pytest.approx(100 * int(row["hard_entries"]) / valid)
    shares = [float(rows[b]["hard_percent"]) for b in sorted(rows)]
    assert shares == sorted(shares, reverse=True)  # fewer hard entries as beta grows
    assert_real_png(folder / "figure.png")
    text = (folder / "figure.md").read_text()
    assert f"| 0.1 | {float(row['hard_percent']):.3f} (n=1) | about 1.5 |" in text


def test_a_figure_plans_the_runs_of_its_table_row(tmp_path, monkeypatch, capsys):
    for args in (["table=ssl_table2", "rows=ssl3"], ["table=ssl_fig4"]):
        assert reproduce(monkeypatch, *args, "scale=smoke", "seeds=2", "dry_run=true", f"root={tmp_path}") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[3].startswith("# ssl_fig4, scale smoke, drawn from 2 runs of ssl_table2/ssl3")
    assert out[4:6] == out[1:3] and f"hydra.run.dir={tmp_path}/ssl_table2/smoke/ssl3/seed1" in out[5]


def test_read_scalars_keeps_every_step_and_the_last_value_of_a_resumed_one(tmp_path):
    first = SummaryWriter(str(tmp_path / "stage1" / "tb"))
    for step in range(1, 4):
        first.add_scalar("loss/e_mean", step / 10, step)
    first.close()
    resumed = SummaryWriter(str(tmp_path / "stage1" / "tb"))  # a new event file, from step 3 again
    for step in (3, 4):
        resumed.add_scalar("loss/e_mean", step, step)
    resumed.close()
    second = SummaryWriter(str(tmp_path / "stage2" / "tb"))
    second.add_scalar("loss/e_mean", 7.0, 1)
    second.close()
    assert logged_statistics.read_scalars(tmp_path / "stage1" / "tb", ["loss/e_mean"]) == \
        {"loss/e_mean": pytest.approx({1: 0.1, 2: 0.2, 3: 3.0, 4: 4.0})}
    # a recipe's second stage counts from 0 again: placed after the first stage's 4 iterations
    stages = [OmegaConf.create({"trainer": {"max_iters": n}}) for n in (4, 2)]
    run = SimpleNamespace(stage_folders=(tmp_path / "stage1", tmp_path / "stage2"), stages=stages)
    assert logged_statistics.run_scalars(run, ["loss/e_mean"])["loss/e_mean"][5] == 7.0
    with pytest.raises(ConfigError, match=r"stage2/tb: loss/e_max not logged"):
        logged_statistics.read_scalars(tmp_path / "stage2" / "tb", ["loss/e_max"])


def test_smoothing_is_tensorboards_debiased_average():
    assert logged_statistics.smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])
    assert logged_statistics.smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])


def test_a_figure_of_another_loss_is_refused():
    ce = load_table("ssl_table2").row("ce")
    cfg = compose_config([f"experiment={ce.recipe}", *ce.overrides])
    with pytest.raises(ConfigError, match=r"ssl_fig4 is drawn with SSLLoss\(region_size=3, sigma=1.5\)"):
        hard_examples.ssl_loss(cfg, load_figure("ssl_fig4"))
