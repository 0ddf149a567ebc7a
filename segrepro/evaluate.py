"""``segrepro eval checkpoint=PATH [overrides]`` / ``python -m segrepro.evaluate``.

Evaluates a checkpoint on the validation split with the checkpoint's own config;
what you type on the command line (``data=...``, ``data.root=...``) wins.
Multi-GPU: ``torchrun --nproc_per_node N -m segrepro.evaluate checkpoint=PATH``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .config import CONFIG_DIR, ConfigError, reapply_overrides, register_configs, saved_run_config
from .engine.build import build_evaluator
from .engine.checkpoint import load_checkpoint
from .engine.distributed import cleanup, init_distributed
from .entry import guarded, run_hydra
from .files import write_json
from .metrics import format_comparison, format_report
from .models import build_model


def read_checkpoint(path) -> tuple[dict, DictConfig]:
    """A segrepro checkpoint (checked, never unpickling code) and the config of the run that wrote it."""
    state = load_checkpoint(path)
    if "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a segrepro checkpoint (no 'model'/'config' entries)")
    return state, saved_run_config(state["config"])


MODEL_INPUT = ("mean", "std")  # data.* keys that belong to the model: the checkpoint's unless typed


def typed(overrides: list[str], key: str) -> bool:
    """Whether the command line sets ``key`` itself (``key=...``, ``+key=...``, ``++key=...``)."""
    return any(override.lstrip("+~").split("=", 1)[0] == key for override in overrides)


def load_run(cfg, overrides: list[str], command: str = "eval"):
    """``(checkpoint, run config)``: the checkpoint ``cfg.checkpoint`` names and the config saved in it
    with the command line's ``overrides`` on top (for ``segrepro <command>``). A data section chosen on
    the command line (``data=voc_test``) brings its dataset's defaults, but the input normalization
    (``data.mean``, ``data.std``) stays the checkpoint's, the model's, unless typed itself."""
    if cfg.checkpoint is None:
        raise ConfigError(f"segrepro {command} needs checkpoint=PATH, e.g. checkpoint=runs/<run>/checkpoints/best.pt")
    state, run_cfg = read_checkpoint(cfg.checkpoint)
    saved = OmegaConf.to_container(run_cfg.data)
    reapply_overrides(run_cfg, cfg, overrides)
    for key in MODEL_INPUT:
        if not typed(overrides, f"data.{key}"):
            run_cfg.data[key] = saved[key]
    return state, run_cfg


def checkpoint_model(state: dict, model_cfg, num_classes: int) -> torch.nn.Module:
    """The network of ``model_cfg`` with the checkpoint's weights (nothing downloaded)."""
    model = build_model(model_cfg, num_classes, from_checkpoint=True)
    model.load_state_dict(state["model"])
    return model


def evaluate_checkpoint(cfg, out_dir, overrides: list[str]) -> dict:
    """Evaluate ``cfg.checkpoint``; print the report and write ``eval.json`` into ``out_dir``."""
    state, run_cfg = load_run(cfg, overrides)
    dist_info = init_distributed(run_cfg.trainer.device)
    try:
        model = checkpoint_model(state, run_cfg.model, run_cfg.data.num_classes).to(dist_info.device)
        evaluator = build_evaluator(run_cfg, dist_info)  # float32, no autocast
        try:
            result = evaluator.run(model, with_crf=True)
        finally:
            evaluator.close()
        metrics = result.metrics
        if dist_info.is_main:
            names = evaluator.class_names
            report = {"checkpoint": str(cfg.checkpoint), "step": int(state.get("step", -1)),
                      "split": run_cfg.data.val_split, "class_names": names,
                      "eval": {"scales": list(run_cfg.eval.scales), "flip": run_cfg.eval.flip},
                      **metrics, "confusion_matrix": result.matrix.mat.cpu().tolist()}
            title = f"{cfg.checkpoint} on {run_cfg.data.name}/{run_cfg.data.val_split}"
            if result.crf:
                report["crf"] = {str(steps): {**m, "confusion_matrix": matrix.mat.cpu().tolist()}
                                 for steps, (m, matrix) in result.crf.items()}
                report["crf_seconds_per_image"] = result.crf_seconds_per_image
                report["crf_config"] = OmegaConf.to_container(run_cfg.crf)
                columns = {"no CRF": metrics, **{f"CRF-{steps}": m for steps, (m, _) in result.crf.items()}}
                print(format_comparison(columns, names, title=title))
                print(f"  CRF: {result.crf_seconds_per_image:.3f} s per image (one run of "
                      f"{max(result.crf)} steps, {evaluator.crf_workers} worker processes)")
            else:
                print(format_report(metrics, names, title=title))
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_json(report, out / "eval.json")
            print(f"written: {out.resolve() / 'eval.json'}")
        return metrics
    finally:
        cleanup()


@hydra.main(config_path=CONFIG_DIR, config_name="eval", version_base="1.3")
def _hydra_main(cfg) -> None:
    hydra_cfg = HydraConfig.get()
    guarded(evaluate_checkpoint, cfg, hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task))


def main() -> None:
    register_configs()
    run_hydra(_hydra_main, "eval", sys.argv[1:])


if __name__ == "__main__":
    main()
