"""``segrepro train`` / ``python -m segrepro.train``: compose the config, run every stage, report.

Multi-GPU: ``torchrun --nproc_per_node N -m segrepro.train [overrides]``.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from .config import CONFIG_DIR, reapply_overrides, register_configs
from .engine.build import build_training
from .engine.checkpoint import CheckpointDir
from .engine.distributed import cleanup, init_distributed
from .engine.preemption import StopSignal
from .engine.run_lock import RunLock
from .engine.run_config import newest_config, resumed_config, stage_overrides, write_overrides, write_run_config
from .engine.trainer import Trainer
from .entry import guarded, run_hydra
from .metrics import format_comparison, format_report

log = logging.getLogger("segrepro")


def stage_configs(cfg, overrides: list[str]) -> list[tuple[str, object]]:
    """``[(sub-folder, config)]``: one entry per stage of ``cfg.stages`` (each merged onto the base
    config, the command-line overrides applied again on top), or the config itself."""
    if not cfg.stages:
        return [("", cfg)]
    stages = []
    for i, stage in enumerate(cfg.stages, start=1):
        changes = OmegaConf.to_container(stage, resolve=False)
        name = changes.pop("name", f"stage{i}")
        base = cfg.copy()
        base.stages = []
        merged = OmegaConf.merge(base, changes)
        reapply_overrides(merged, cfg, overrides)
        stages.append((f"stage{i}-{name}", merged))
    return stages


def steps_done(cfg, run_dir, overrides: list[str]) -> int:
    """A recipe's training steps so far, summed over its stages (each stage's latest checkpoint): the
    step in the name of a change to its top-level config (``config-step<N>.yaml``)."""
    done = 0
    for folder, _ in stage_configs(cfg, overrides):
        steps = CheckpointDir(Path(run_dir) / folder / "checkpoints").steps()
        done += steps[-1][0] if steps else 0
    return done


def validation_report(final: dict, class_names, title: str) -> str:
    """The final metrics as a table; with the CRF's results beside them when it ran."""
    if "crf" not in final:
        return format_report(final, class_names, title=title)
    columns = {"no CRF": final, **{f"CRF-{steps}": m for steps, m in final["crf"].items()}}
    return (format_comparison(columns, class_names, title=title)
            + f"\n  CRF: {final['crf_seconds_per_image']:.3f} s per image")


def run(cfg, run_dir, overrides: list[str]) -> dict:
    """Train every stage in ``run_dir`` (stage k > 1 starts from stage k-1's final weights); with
    ``trainer.resume``, the config saved in ``run_dir`` is the run's (:mod:`.engine.run_config`).
    SIGTERM / SIGUSR1 stop it after a checkpoint (:mod:`.engine.preemption`)."""
    with StopSignal() as stop, RunLock(run_dir):
        cfg = resumed_config(cfg, run_dir, overrides)
        overrides = stage_overrides(cfg, run_dir, overrides)
        fresh = newest_config(run_dir) is None  # (a run started before overrides.yaml existed gets none)
        dist_info = init_distributed(cfg.trainer.device)
        try:
            if cfg.stages and dist_info.is_main:
                write_run_config(cfg, run_dir, steps_done(cfg, run_dir, overrides))
                if fresh:
                    write_overrides(run_dir, overrides)
            return run_stages(cfg, run_dir, overrides, dist_info, stop)
        finally:
            cleanup()


def run_stages(cfg, run_dir, overrides: list[str], dist_info, stop) -> dict:
    previous = None
    final = {}
    stages = stage_configs(cfg, overrides)
    for number, (folder, stage_cfg) in enumerate(stages, start=1):
        stage_dir = Path(run_dir) / folder
        if previous is not None and not stage_cfg.trainer.init_from:
            stage_cfg.trainer.init_from = str(previous)
        if folder and dist_info.is_main:
            log.info("stage %s in %s", folder, stage_dir)
        parts = build_training(stage_cfg, stage_dir, dist_info)
        trainer = Trainer(stage_cfg, parts, stage_dir, dist_info, stop)
        final = trainer.fit(crf_at_end=number == len(stages))
        previous = CheckpointDir(stage_dir / "checkpoints").path(stage_cfg.trainer.max_iters)
        if dist_info.is_main:
            print(validation_report(final, trainer.class_names, f"{folder or 'run'}: validation"))
    if dist_info.is_main:
        print(f"run folder: {Path(run_dir).resolve()}")
        print(f"look at it: tensorboard --logdir {Path(run_dir).resolve()}")
    return final


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg) -> None:
    hydra_cfg = HydraConfig.get()
    guarded(run, cfg, hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task))


def main() -> None:
    register_configs()
    run_hydra(_hydra_main, "train", sys.argv[1:])


if __name__ == "__main__":
    main()
