"""A run's hyper-parameters and final metrics on TensorBoard's HParams dashboard, and its config as text.

:func:`log_hparams` writes into the run's own event file (the trainer's ``SummaryWriter`` on
``run_dir/tb``), not into a sub-folder as ``SummaryWriter.add_hparams`` does, so each run folder
(each stage of a recipe) is one row of the dashboard and ``tensorboard --logdir runs`` lines the
runs of a table up side by side (sort, filter, parallel coordinates). Its metrics are the
scalars ``hparams/miou``, ``hparams/pixel_acc``, ``hparams/mean_acc`` (``hparams/miou_crf<steps>``
when the CRF ran) at the final step; TensorBoard offers the run's other scalars as columns too.
The text tab shows the composed config (tag ``config``).
"""
from __future__ import annotations

import time

from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

# the config keys of a run's row, beside the loss (its class name) and each of its arguments (loss.*)
HPARAM_KEYS = (
    "name",
    "model.arch", "model.encoder", "model.output_stride", "model.pretrained", "model.multi_grid",
    "data.name", "data.crop_size", "data.batch_size",
    "optim.lr", "optim.momentum", "optim.weight_decay", "optim.power", "optim.warmup_iters",
    "optim.head_lr_mult", "optim.head_bias_lr_mult", "optim.head_bias_decay_mult",
    "trainer.max_iters", "trainer.seed", "trainer.sync_bn", "trainer.freeze_bn", "trainer.amp",
    "crf.steps", "eval.scales", "eval.flip",
)
METRICS = ("miou", "pixel_acc", "mean_acc")
_ABSENT = object()


def _value(value):
    """A value the HParams plugin shows as it is (bool, int, float, str); a list or null as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "null"
    return str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def _resolved(cfg) -> DictConfig:
    try:
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg))
    except Exception:  # an interpolation that only resolves inside a Hydra run
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))


def run_hparams(cfg) -> dict:
    """``{key: value}`` of the run's hyper-parameters: the :data:`HPARAM_KEYS` that the config has,
    ``loss`` (the loss class's name), ``loss.<argument>`` for each argument of the loss, and
    ``stages`` (how many) for a multi-stage recipe."""
    node = _resolved(cfg)
    out = {}
    for key in HPARAM_KEYS:
        value = OmegaConf.select(node, key, default=_ABSENT)
        if value is not _ABSENT:
            out[key] = _value(value)
    loss = node.get("loss")
    if isinstance(loss, DictConfig):
        target = str(loss.get("_target_", ""))
        out["loss"] = target.rpartition(".")[2]
        out.update({f"loss.{name}": _value(value) for name, value in loss.items() if name != "_target_"})
    if node.get("stages"):
        out["stages"] = len(node.stages)
    return out


def run_metrics(final: dict) -> dict:
    """``{tag: value}`` of the final metrics, as the scalars the dashboard reads."""
    out = {f"hparams/{name}": float(final[name]) for name in METRICS if name in final}
    for steps, metrics in (final.get("crf") or {}).items():
        out[f"hparams/miou_crf{steps}"] = float(metrics["miou"])
    return out


def config_text(cfg) -> str:
    """The composed config as YAML, indented as a Markdown code block (TensorBoard's text tab)."""
    return "\n".join("    " + line for line in OmegaConf.to_yaml(_resolved(cfg)).splitlines())


def _hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


def session_summaries(params: dict) -> tuple[Summary, Summary]:
    """The HParams plugin's session start (the hyper-parameters) and session end (status: success)
    summaries. No experiment summary: TensorBoard then takes the columns from every run's session,
    so a loss argument that only some runs have is still a column (with an experiment summary per
    run it would pick one run's columns for all)."""
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in params.items():
        if isinstance(value, bool):  # before int: a bool is an int
            start.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[name].number_value = value
        else:
            start.hparams[name].string_value = str(value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return (_hparams_summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(
                session_start_info=start, version=metadata.PLUGIN_DATA_VERSION)),
            _hparams_summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(
                session_end_info=end, version=metadata.PLUGIN_DATA_VERSION)))


def log_hparams(writer, cfg, final: dict, step: int) -> None:
    """Write the run's hyper-parameters (:func:`run_hparams`) with its final metrics
    (:func:`run_metrics`, scalars at ``step``) to ``writer``'s own event file for TensorBoard's
    HParams dashboard, and the composed config as the text ``config``. Call it once, at the end of
    a run, before ``writer.close()``."""
    file_writer = writer._get_file_writer()
    for summary in session_summaries(run_hparams(cfg)):
        file_writer.add_summary(summary, step)
    for tag, value in run_metrics(final).items():
        writer.add_scalar(tag, value, step)
    writer.add_text("config", config_text(cfg), step)
    writer.flush()
