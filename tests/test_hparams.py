"""TensorBoard's HParams dashboard: a run's hyper-parameters and final metrics in its own event file,
its composed config as text; read back with TensorBoard's EventAccumulator."""
from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata
from torch.utils.tensorboard import SummaryWriter

from segrepro.engine.hparams import log_hparams, run_hparams

FINAL = {"miou": 0.625, "pixel_acc": 0.875, "mean_acc": 0.75, "iou": [0.5, 0.75],
         "crf": {"5": {"miou": 0.64, "pixel_acc": 0.88, "mean_acc": 0.76}}}


def read(folder):
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    values = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    return events, content, values


def test_hparams_and_final_metrics_land_in_the_runs_own_event_folder(tiny_cfg, tmp_path):
    cfg = tiny_cfg("loss=ssl", "loss.region_size=5", "optim.lr=0.02", "trainer.max_iters=7", "trainer.seed=3")
    writer = SummaryWriter(str(tmp_path / "tb"))
    writer.add_scalar("train/loss", 1.0, 1)
    log_hparams(writer, cfg, FINAL, step=7)
    writer.close()
    assert all(p.is_file() for p in (tmp_path / "tb").iterdir())  # no sub-folder (run) of its own

    events, content, hparams = read(tmp_path / "tb")
    # one session, no experiment summary of its own: TensorBoard takes the columns from all runs
    assert metadata.SESSION_END_INFO_TAG in content and metadata.EXPERIMENT_TAG not in content
    assert hparams["loss"] == "SSLLoss"
    assert hparams["loss.region_size"] == 5 and hparams["loss.sigma"] == cfg.loss.sigma
    assert hparams["model.arch"] == cfg.model.arch and hparams["model.encoder"] == cfg.model.encoder
    assert hparams["optim.lr"] == pytest.approx(0.02) and hparams["trainer.max_iters"] == 7
    assert hparams["data.crop_size"] == 33 and hparams["data.batch_size"] == 2 and hparams["trainer.seed"] == 3
    assert hparams["model.pretrained"] is False  # a bool stays a bool (a filter, not a number)
    assert hparams["eval.scales"] == "[1.0]"

    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    assert scalars["hparams/miou"][-1].value == pytest.approx(0.625) and scalars["hparams/miou"][-1].step == 7
    assert scalars["hparams/pixel_acc"][-1].value == pytest.approx(0.875)
    assert scalars["hparams/mean_acc"][-1].value == pytest.approx(0.75)
    assert scalars["hparams/miou_crf5"][-1].value == pytest.approx(0.64)

    (text,) = events.Tensors("config/text_summary")
    yaml = text.tensor_proto.string_val[0].decode()
    assert "    loss:" in yaml and "region_size: 5" in yaml and "crop_size: 33" in yaml


def test_every_loss_argument_is_a_column_and_recipes_count_their_stages(tiny_cfg):
    ce = run_hparams(tiny_cfg("loss=ce"))
    assert ce["loss"] == "CrossEntropyLoss" and ce["loss.ignore_index"] == 255
    assert not any(key.startswith("loss.region") for key in ce)
    lad = run_hparams(tiny_cfg("loss=lad", "loss.kernel_size=7"))
    assert lad["loss"] == "LADLoss" and lad["loss.kernel_size"] == 7
    recipe = run_hparams(tiny_cfg("experiment=ssl/voc_deeplabv3", "data=synthetic"))
    assert recipe["stages"] == 2


def test_a_training_run_writes_its_hparams(tiny_cfg, tmp_path):
    """The trainer calls log_hparams at the end of fit: the run's tb/ holds the session and the final mIoU."""
    from segrepro.train import run

    final = run(tiny_cfg("trainer.max_iters=2", "loss=ssl"), tmp_path, [])
    events, _, hparams = read(tmp_path / "tb")
    assert hparams["loss"] == "SSLLoss" and hparams["trainer.max_iters"] == 2
    assert events.Scalars("hparams/miou")[-1].value == pytest.approx(final["miou"])
