"""``segrepro reproduce``: the commands of a dry run, the option and dataset errors, the report from
run folders written by hand, and a smoke table end to end (slow: four tiny training subprocesses)."""
from __future__ import annotations

import csv
import json
import sys

import pytest

from segrepro import cli
from segrepro.data.cityscapes import CLASS_NAMES as CITYSCAPES_CLASSES
from segrepro.reproduce import plan, report, runner
from segrepro.reproduce.spec import load_scale, load_table

from .conftest import crash_in_step


def reproduce(monkeypatch, *args) -> int:
    """``segrepro reproduce ARGS`` through the console script's dispatch; its exit code."""
    monkeypatch.setattr(sys, "argv", ["segrepro", "reproduce", *args])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return stop.value.code


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, monkeypatch, capsys):
    root = tmp_path / "tables"
    monkeypatch.setattr(runner, "launch", lambda run: pytest.fail("a dry run ran something"))
    assert reproduce(monkeypatch, "table=ssl_table5", "seeds=2", "dry_run=true", f"root={root}") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# ssl_table5, scale paper, 14 runs")
    commands = lines[1:]
    assert len(commands) == 14 and not root.exists()
    assert commands[0] == (f"segrepro train experiment=ssl/voc_deeplabv3_crop321 loss=ce trainer.seed=0 "
                           f"trainer.resume=auto hydra.run.dir={root}/ssl_table5/paper/ce/seed0")
    # the three CRF rows: one evaluation per seed of the CE run's final checkpoint, after that run
    evals = [c for c in commands if c.startswith("segrepro eval")]
    assert evals[1] == (f"segrepro eval checkpoint={root}/ssl_table5/paper/ce/seed1/stage2-finetune/checkpoints/"
                        f"step_0020000.pt crf=dense 'crf.steps=[1,2,5]' "
                        f"hydra.run.dir={root}/ssl_table5/paper/crf1+crf2+crf5/seed1")
    assert commands.index(evals[0]) > commands.index(commands[0]) and len(evals) == 2


def test_dry_run_of_a_subset_at_scale_mini(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAMVID_ROOT", "/copies/camvid")
    assert reproduce(monkeypatch, "table=ssl_table3", "scale=mini", "rows=full,beta0.06", "dry_run=true",
                     f"root={tmp_path}") == 0
    commands = capsys.readouterr().out.splitlines()[1:]
    scale = " ".join(load_scale("mini", "/copies/camvid").overrides).replace("stages=[]", "'stages=[]'")
    assert commands == [
        f"segrepro train experiment=ssl/voc_deeplabv3 loss=ssl loss.region_size=3 loss.beta=0.06 {scale} "
        f"trainer.seed=0 trainer.resume=auto hydra.run.dir={tmp_path}/ssl_table3/mini/beta0.06/seed0",
        # "full" is SSL Table 2's ssl3: its runs, in that table's folder
        f"segrepro train experiment=ssl/voc_deeplabv3 loss=ssl loss.region_size=3 {scale} "
        f"trainer.seed=0 trainer.resume=auto hydra.run.dir={tmp_path}/ssl_table2/mini/ssl3/seed0"]
    assert "data.root=/copies/camvid" in commands[0]
    reproduce(monkeypatch, "table=lad_table2", "scale=mini", "rows=ce", "dry_run=true", "camvid_root=/mine")
    assert "data.root=/mine " in capsys.readouterr().out  # the option wins over the variable


@pytest.mark.parametrize("args, code, message", [
    (["table=ssl_table2", "rows=ce,nope"], 1, "ssl_table2 has no row 'nope'; its rows: ce, bce"),
    (["table=ssl_table2", "seedz=2"], 2, "'seedz=2' is not an option; the options: table=, scale=, seeds="),
    (["table=ssl_table2", "seeds=two"], 2, "seeds: Value 'two' of type 'str' could not be converted to Integer"),
    (["scale=mini"], 2, "table=NAME is needed; the tables: lad_table1, lad_table2, ssl_table1"),
    (["table=ssl_table9"], 1, "there is no table 'ssl_table9'"),
    (["table=ssl_table2", "scale=huge"], 1, "the scales: mini, paper, smoke"),
    (["table=ssl_fig3", "rows=ce"], 1, "rows= picks rows of a table; ssl_fig3 is a figure"),
])
def test_bad_options_are_one_line_errors(monkeypatch, capsys, args, code, message):
    assert reproduce(monkeypatch, *args, "dry_run=true") == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_missing_dataset_stops_the_table_before_any_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/voc here
    monkeypatch.setattr(runner, "launch", lambda run: pytest.fail("trained without its dataset"))
    assert reproduce(monkeypatch, "table=lad_table2", "rows=ce,lad5", "seeds=2") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("segrepro reproduce: error: ce seed 0 (train) reads voc trainaug: VOC root not found")
    assert "scripts/prepare_voc.py" in err and not (tmp_path / "runs").exists()


def table_lines(text: str) -> dict:
    """The first table of a table.md: ``{row id: line}``."""
    lines = {}
    for line in text.split("\n\n## Runs")[0].splitlines():
        if line.startswith("| ") and not line.startswith("| row "):
            lines[line.split(" | ")[0].strip("| ")] = line
    return lines


def finish(run, miou: float, class_names=("a", "b"), step=None) -> None:
    """Write the metrics.json a finished (or, with ``step``, unfinished) training leaves."""
    run.result_file.parent.mkdir(parents=True, exist_ok=True)
    iou = [miou / 100] * len(class_names)
    run.result_file.write_text(json.dumps({"step": run.final_step if step is None else step, "class_names":
                                           list(class_names), "final": {"miou": miou / 100, "iou": iou}}))


def test_a_folder_holding_a_run_of_another_config_stops_the_table(tmp_path, monkeypatch, capsys):
    """A finished or interrupted run whose saved config is not the table's (here: another lr, as after an
    edited recipe) is neither reported nor continued as the row's: the table stops before any training,
    naming the folder and the key. A run saved with the table's config is taken as it is."""
    from omegaconf import OmegaConf

    table, scale = load_table("ssl_table2"), load_scale("smoke", "unused")
    ce, ssl3 = plan.plan(table, scale, [0], tmp_path, ["ce", "ssl3"])
    assert ce.config.trainer.seed == 0 and ce.config_changes() == []
    other = ce.config.copy()
    other.optim.lr = 0.5
    ce.folder.mkdir(parents=True)
    OmegaConf.save(other, ce.folder / "config.yaml", resolve=True)
    ssl3.folder.mkdir(parents=True)
    moved = ssl3.config.copy()
    moved.data.root = "/elsewhere/the/same/data"  # where the data lies is not the run's config
    OmegaConf.save(moved, ssl3.folder / "config.yaml", resolve=True)
    assert ce.config_changes() == [("optim.lr", 0.5, ce.config.optim.lr)] and ssl3.config_changes() == []
    monkeypatch.setattr(runner, "launch", lambda run: pytest.fail(f"{run.describe()} ran"))
    assert reproduce(monkeypatch, "table=ssl_table2", "scale=smoke", "rows=ce,ssl3", f"root={tmp_path}") == 1
    err = capsys.readouterr().err
    assert f"ce seed 0 (train): {ce.folder} (optim.lr: 0.5 -> {ce.config.optim.lr!r})" in err
    assert "ssl3 seed 0" not in err and "Move them away" in err
    (ce.folder / "config.yaml").write_text("trainer: {max_iters: [")  # broken: named, no traceback
    assert reproduce(monkeypatch, "table=ssl_table2", "scale=smoke", "rows=ce,ssl3", f"root={tmp_path}") == 1
    err = capsys.readouterr().err
    assert f"ce seed 0 (train): {ce.folder} (config.yaml: 'unreadable: " in err and "Traceback" not in err


def test_an_evaluation_older_than_its_checkpoint_has_not_finished(tmp_path):
    """The CRF rows' eval.json counts only while it is newer than the checkpoint it read: a training run
    again since (its folder moved away, say) leaves it to be evaluated again."""
    import os

    table, scale = load_table("ssl_table5"), load_scale("smoke", "unused")
    evaluation = next(run for run in plan.plan(table, scale, [0], tmp_path) if run.kind == "eval")
    evaluation.checkpoint.parent.mkdir(parents=True)
    evaluation.checkpoint.write_bytes(b"weights")
    evaluation.folder.mkdir(parents=True)
    evaluation.result_file.write_text(json.dumps({"miou": 0.5}))
    os.utime(evaluation.checkpoint, (1_000_000, 2_000_000))
    os.utime(evaluation.result_file, (1_000_000, 2_000_001))
    assert evaluation.finished()
    os.utime(evaluation.checkpoint, (1_000_000, 2_000_002))
    assert not evaluation.finished()


def test_report_of_finished_missing_and_unfinished_runs(tmp_path):
    table, scale = load_table("ssl_table2"), load_scale("smoke", "unused")
    runs = plan.plan(table, scale, [0, 1], tmp_path)
    run = {(r.rows[0], r.seed): r for r in runs}
    for (row, seed), miou in {("ce", 0): 40.0, ("ce", 1): 42.0, ("ssl3", 0): 41.0, ("ssl3", 1): 45.0,
                              ("ssl1", 0): 39.0}.items():
        finish(run[row, seed], miou)
    finish(run["ssl1", 1], 50.0, step=1)  # stopped at step 1 of 2: not a result
    path = report.write_report(table, scale, [0, 1], runs, tmp_path / "out")
    text = path.read_text()
    lines = table_lines(text)
    assert "| ce | DeepLabv3 CE | 76.33 | 41.00 ± 1.41 (n=2) | -35.33 | baseline |" in lines["ce"]
    # ssl3 - ce by seed: 1, 3: mean 2, sd sqrt(2), t(0.975, 1) = 12.706: [-10.71, +14.71]; the paper's +2.13
    assert "| 43.00 ± 2.83 (n=2) | -35.46 | +2.00 [-10.71, +14.71] (n=2) | +2.13 | yes |" in lines["ssl3"]
    assert "| 39.00 (n=1) | -37.66 | -1.00 (n=1) | +0.33 | no |" in lines["ssl1"]
    assert "| 76.80 | missing |  |  | +0.47 |  |" in lines["bce"]
    # paper: ce < ssl1 < ssl3; ours: ssl1 < ce < ssl3: one discordant pair of three
    assert "Kendall's tau between the paper's values and ours: 0.33 over 3 rows" in text
    assert "| plus_ce | DeepLabv3+ CE | 78.12 | missing |  | baseline |" in lines["plus_ce"]
    assert "| ssl1 | 1 | unfinished |" in text and "| bce | 0 |" not in text
    assert "30 of the 36 runs not started yet (their commands: runs.json)." in text
    with open(tmp_path / "out" / "table.csv", newline="") as file:
        rows = {r["row"]: r for r in csv.DictReader(file)}
    assert (rows["ssl3"]["mean"], rows["ssl3"]["delta_low95"], rows["ssl3"]["seed1"]) == ("43.0000", "-10.7062",
                                                                                          "45.0000")
    assert (rows["bce"]["mean"], rows["bce"]["n"], rows["ssl1"]["seed1"]) == ("", "", "")
    tex = (tmp_path / "out" / "table.tex").read_text()
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert r"DeepLabv3 CE$^\dagger$ & 76.33 & $41.00 \pm 1.41$ & $-35.33$" in tex
    assert (tmp_path / "out" / "table.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert record["scale"]["overrides"] == list(scale.overrides)
    first = record["runs"][0]
    assert first["rows"] == ["ce"] and first["status"] == "finished" and first["values"] == {"ce": 40.0}
    assert record["runs"][1]["status"] == "not run" and record["runs"][1]["values"] == {"bce": None}
    assert first["command"].startswith("segrepro train experiment=ssl/voc_deeplabv3 loss=ce data=synthetic")


def test_per_class_report_when_the_classes_are_the_papers(tmp_path):
    table, scale = load_table("ssl_table4"), load_scale("smoke", "unused")
    runs = plan.plan(table, scale, [0], tmp_path)
    assert [r.folder for r in runs] == [tmp_path / "ssl_table6" / "smoke" / row / "seed0" for row in ("ce", "ssl3")]
    finish(runs[0], 70.0, CITYSCAPES_CLASSES)
    text = report.markdown(table, scale, [0], report.results(table, runs, [0]), runs)
    assert "| road | 97.97 | 70.00 | 97.95 | missing |" in text
    finish(runs[0], 70.0, ("sky", "building"))  # another dataset's classes
    text = report.markdown(table, scale, [0], report.results(table, runs, [0]), runs)
    assert "Per class: the runs' classes (2: sky, building, ...) are not the paper's; not compared." in text


def train_in_this_process(run) -> int:
    """What ``runner.launch`` runs (``python -m segrepro.train OVERRIDES``), in this process."""
    from segrepro import train

    argv = sys.argv
    sys.argv = ["segrepro.train", *run.overrides]
    try:
        train.main()
    except SystemExit as stop:
        return stop.code or 0
    finally:
        sys.argv = argv
    return 0


@pytest.mark.slow
def test_a_smoke_table_end_to_end_and_again(tmp_path, monkeypatch, capsys):
    """Two rows x two seeds of SSL Table 2 on the synthetic data, through ``segrepro reproduce``: the
    first run in its own subprocess as every run is, the other three in this process through the same
    entry point (a subprocess spends about 16 s importing torch, timm and smp on 2 cores). The report
    holds the paper's numbers beside ours; the same command again trains nothing."""
    launched, subprocess_launch = [], runner.launch

    def launch(run):
        launched.append(run)
        return subprocess_launch(run) if len(launched) == 1 else train_in_this_process(run)

    monkeypatch.setattr(runner, "launch", launch)
    root = tmp_path / "tables"
    args = ["table=ssl_table2", "scale=smoke", "seeds=2", "rows=ce,ssl3", f"root={root}"]
    assert reproduce(monkeypatch, *args) == 0
    out = capsys.readouterr().out
    assert "[1/4] ce seed 0 (train): running, 3 left after it, ETA unknown" in out
    assert "[4/4] ssl3 seed 1 (train): running, 0 left after it, ETA " in out
    assert [(run.rows, run.seed) for run in launched] == [(("ce",), 0), (("ssl3",), 0), (("ce",), 1), (("ssl3",), 1)]
    folder = root / "ssl_table2" / "smoke"
    assert sorted(p.name for p in folder.iterdir()) == ["ce", "qualitative.json", "qualitative.png", "runs.json",
                                                         "ssl3", "table.csv", "table.md", "table.png", "table.tex"]
    text = (folder / "table.md").read_text()
    assert "- qualitative.png: validation images, input | truth | each row's prediction" in text
    lines = table_lines(text)
    for row, paper in (("ce", "76.33"), ("ssl3", "78.46"), ("bce", "76.80"), ("plus_ssl3", "80.63")):
        assert f" | {paper} | " in lines[row]
    assert "(n=2)" in lines["ce"] and "(n=2)" in lines["ssl3"] and "| missing |" in lines["bce"]
    record = json.loads((folder / "ce" / "seed1" / "reproduce.json").read_text())
    assert record["command"].endswith(f"trainer.seed=1 trainer.resume=auto hydra.run.dir={folder}/ce/seed1")
    assert len(record["starts"]) == 1 and record["seconds"] > 0

    monkeypatch.setattr(runner, "launch", lambda run: pytest.fail(f"{run.describe()} ran again"))
    assert reproduce(monkeypatch, *args) == 0
    assert capsys.readouterr().out.count(": finished, skipped") == 4


def test_a_failed_run_does_not_stop_the_table(tmp_path, monkeypatch, capsys):
    """Every run fails here (exit code 1, nothing written): each is reported and the next one starts;
    the table is written with every row missing, and the command exits 1."""
    calls = []
    monkeypatch.setattr(runner, "launch", lambda run: calls.append(run) or 1)
    assert reproduce(monkeypatch, "table=lad_table1", "scale=smoke", "rows=ce,lad_k1", f"root={tmp_path}") == 1
    captured = capsys.readouterr()
    assert len(calls) == 2 and captured.out.count("failed (exit code 1); going on with the next run") == 2
    assert "2 of 2 runs did not finish: ce seed 0 (train), lad_k1 seed 0 (train)" in captured.err
    lines = table_lines((tmp_path / "lad_table1" / "smoke" / "table.md").read_text())
    assert all("| missing |" in line for line in lines.values())



def test_a_table_interrupted_during_a_run_resumes_that_run(tmp_path, monkeypatch, capsys):
    """Ctrl-C in step 3 of a run: the table stops with the resume hint; the same command resumes that
    run from its step-2 checkpoint (not from step 0) and finishes the table. The smoke scale trains 2
    steps without checkpoints, so the test's own experiments folder has a scale of 4 with one every 2."""
    import shutil

    from segrepro.engine.trainer import Trainer
    from segrepro.reproduce.spec import EXPERIMENTS_DIR

    experiments = tmp_path / "experiments"
    shutil.copytree(EXPERIMENTS_DIR, experiments)
    smoke = (experiments / "scales" / "smoke.yaml").read_text()
    (experiments / "scales" / "smoke.yaml").write_text(
        smoke.replace("trainer.max_iters=2", "trainer.max_iters=4") + "  - trainer.ckpt_every=2\n")
    root = tmp_path / "tables"
    args = ["table=ssl_table2", "scale=smoke", "rows=ce", f"root={root}", f"experiments={experiments}"]
    monkeypatch.setattr(runner, "launch", train_in_this_process)
    crash = pytest.MonkeyPatch()
    crash_in_step(crash, 3)
    try:
        assert reproduce(monkeypatch, *args) == 130
    finally:
        crash.undo()
    assert "interrupted during ce seed 0 (train); the same command resumes it" in capsys.readouterr().err
    folder = root / "ssl_table2" / "smoke" / "ce" / "seed0"
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_0000002.pt"]
    resumed_at = []
    start = Trainer.start
    monkeypatch.setattr(Trainer, "start", lambda self: (start(self), resumed_at.append(self.step)))
    assert reproduce(monkeypatch, *args) == 0
    assert resumed_at == [2]
    assert "(n=1)" in table_lines((root / "ssl_table2" / "smoke" / "table.md").read_text())["ce"]
    record = json.loads((folder / "reproduce.json").read_text())
    assert len(record["starts"]) == 2 and record["seconds"] > 0


def test_qualitative_figure_shows_each_rows_prediction_on_the_same_images(tmp_path, tiny_cfg):
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from segrepro.data import build_dataset
    from segrepro.models import build_model
    from segrepro.reproduce import qualitative

    assert qualitative.image_indices(10) == [0, 3, 6, 9] and qualitative.image_indices(2) == [0, 1]
    cfg = tiny_cfg("model.decoder_channels=16")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes).eval()
    checkpoint = tmp_path / "step_0000002.pt"
    torch.save({"model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True)}, checkpoint)
    predicted = qualitative.predict(checkpoint, count=2)
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False)  # 4 images: indices 0 and 3
    palette = np.array(dataset.palette, dtype=np.uint8)
    for k, index in enumerate((0, 3)):
        image, label = dataset[index]
        with torch.no_grad():
            expected = model(image[None]).argmax(1)[0].numpy()
        np.testing.assert_array_equal(predicted["predictions"][k], palette[expected])
        truth = label.numpy()
        valid = truth != cfg.data.ignore_index
        np.testing.assert_array_equal(predicted["truths"][k][valid], palette[truth[valid]])
        assert (predicted["truths"][k][~valid] == 255).all()
        rgb = predicted["inputs"][k].astype(np.float64) / 255
        mean, std = np.array(cfg.data.mean), np.array(cfg.data.std)
        np.testing.assert_allclose((rgb - mean) / std, image.permute(1, 2, 0).numpy(), atol=0.5 / 255 / min(std) + 1e-6)
    table, scale = load_table("ssl_table2"), load_scale("smoke", "unused")
    runs = plan.plan(table, scale, [0], tmp_path)
    assert qualitative.write_qualitative("t", table.rows, runs, tmp_path / "q.png") == "no row has a finished run yet"
