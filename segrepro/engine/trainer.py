"""The iteration-based training loop over built parts (:func:`segrepro.engine.build.build_training`).

One ``Trainer`` runs one stage of a recipe in one run folder::

    run_dir/config.yaml       the composed config
    run_dir/checkpoints/      step_XXXXXXX.pt (last N) and best.pt
    run_dir/tb/               TensorBoard events
    run_dir/metrics.json      final and per-evaluation metrics
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from ..data.io import DatasetError
from ..files import write_json
from ..models import load_weights
from .build import TrainingParts
from .checkpoint import CheckpointDir, load_checkpoint, resume_checkpoint
from .distributed import DistInfo
from .hparams import log_hparams
from .preemption import Preempted, StopSignal
from .run_config import write_run_config
from .visualize import label_grid

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Training cannot go on (unreadable data, ...); the message names the cause and the last checkpoint, left intact."""


class NonFiniteLossError(TrainingStopped):
    """The loss became NaN or infinite; the message names the step, the terms and the last good checkpoint."""


class Trainer:
    """``stop``: the :class:`.preemption.StopSignal` the loop asks after each step (none: never stops early)."""

    def __init__(self, cfg, parts: TrainingParts, run_dir, dist_info: DistInfo, stop: StopSignal | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = dist_info
        self.device = dist_info.device
        self.model, self.net, self.loss = parts.model, parts.net, parts.loss
        self.optimizer, self.scheduler, self.scaler = parts.optimizer, parts.scheduler, parts.scaler
        self.loader, self.sampler, self.autocast = parts.loader, parts.sampler, parts.autocast
        self.evaluator, self.writer = parts.evaluator, parts.writer
        self.class_names = parts.evaluator.class_names
        self.checkpoints = CheckpointDir(self.run_dir / "checkpoints", cfg.trainer.keep_last)
        self.step = 0
        self.best_miou = float("-inf")
        self.evals: list[dict] = []
        self.last_checkpoint: Path | None = None
        self.saved_step: int | None = None
        self.stop = stop or StopSignal()

    # ----------------------------------------------------------------- state
    def state(self) -> dict:
        rng = [torch.get_rng_state()]
        if self.dist.distributed:
            gathered = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.loss.state_dict(),
            "step": self.step,
            "best_miou": self.best_miou,
            "evals": self.evals,
            "rng_cpu": rng,
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.empty(0),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def load_state(self, path: Path) -> None:
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loss.load_state_dict(state["loss"])
        self.step = int(state["step"])
        self.best_miou = float(state["best_miou"])
        self.evals = list(state["evals"])
        rng = state["rng_cpu"]
        torch.set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0])
        if self.device.type == "cuda" and state["rng_cuda"].numel():
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.last_checkpoint = Path(path)

    def save(self) -> None:
        state = self.state()  # every rank takes part (RNG states are gathered)
        if self.dist.is_main:
            self.last_checkpoint = self.checkpoints.save(state, self.step)
        self.saved_step = self.step

    def resume_path(self) -> Path | None:
        path = resume_checkpoint(self.cfg.trainer.resume, self.checkpoints.folder)
        if self.cfg.trainer.resume in (None, "", "none") and self.checkpoints.latest() is not None \
                and self.dist.is_main:
            log.warning("%s already holds checkpoints; starting afresh (trainer.resume=auto continues them)",
                        self.checkpoints.folder)
        return path

    def start(self) -> None:
        """Resume from a checkpoint, or start from ``trainer.init_from`` if set; record the run's config
        (:func:`.run_config.write_run_config`: never over a different one)."""
        path = self.resume_path()
        if path is not None:
            self.load_state(path)
            log.info("resumed from %s at step %d", path, self.step)
        elif self.cfg.trainer.init_from:
            load_weights(self.model, self.cfg.trainer.init_from)
        if self.dist.is_main:
            write_run_config(self.cfg, self.run_dir, self.step)

    # ------------------------------------------------------------------ loop
    def batches(self):
        """Endless training batches, starting where ``self.step`` left off (epoch and offset)."""
        epoch, offset = divmod(self.step, len(self.loader))
        self.sampler.skip = offset * self.loader.batch_size
        while True:
            self.sampler.set_epoch(epoch)
            for images, labels in self.loader:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            epoch += 1

    def kept_checkpoint(self) -> str:
        return str(self.last_checkpoint or "none (no checkpoint was written yet)")

    def next_batch(self, batches) -> tuple | None:
        """The next training batch; a file the dataset cannot read stops the run naming it (also when a
        loader worker read it: the worker's traceback is reduced to the dataset's message). A stop signal
        sent to the whole process group (``scancel``, a preemption) also ends the loader workers: the
        loader's error after a stop signal gives None, and the loop's :meth:`StopSignal.agreed` stops
        every rank after the step they all finished, with a checkpoint, as for the signal alone."""
        try:
            return next(batches)
        except DatasetError as error:
            message = str(error).rpartition("DatasetError: ")[2] or str(error)
            raise TrainingStopped(f"training stopped before step {self.step + 1}: {message.strip()}\n"
                                  f"  last checkpoint, left intact: {self.kept_checkpoint()}") from None
        except RuntimeError:
            if self.stop.received is None:
                raise
            return None

    def loss_inputs(self, images, labels) -> tuple:
        """``(logits, labels)``, or ``(logits, labels, features)`` for a loss that ``needs_features``."""
        if self.loss.needs_features:
            logits, features = self.net(images, return_features=True)
            return logits, labels, features
        return self.net(images), labels

    def train_step(self, images, labels) -> float:
        self.loss.set_progress(self.step / self.cfg.trainer.max_iters)
        with self.autocast():
            inputs = self.loss_inputs(images, labels)
        loss = self.loss(*inputs)
        value = float(loss.detach())
        if not torch.isfinite(loss.detach()):
            self.stop_non_finite(value, inputs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        with torch.no_grad():
            self.loss.after_step(*detached(inputs))
        self.step += 1
        if self.writer is not None and (self.step % self.cfg.trainer.log_every == 0 or self.step == 1):
            self.log_train(value, inputs)
        return value

    def loss_terms(self, inputs) -> dict:
        with torch.no_grad():
            return {k: float(v) for k, v in self.loss.terms(*detached(inputs)).items()}

    def log_train(self, value: float, inputs) -> None:
        self.writer.add_scalar("train/loss", value, self.step)
        self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
        for key, term in self.loss_terms(inputs).items():
            self.writer.add_scalar(f"loss/{key}", term, self.step)

    def stop_non_finite(self, value: float, inputs) -> None:
        terms = self.loss_terms(inputs)
        detail = ", ".join(f"{k}={v:.4g}" for k, v in terms.items()) or f"loss={value}"
        raise NonFiniteLossError(
            f"the loss is {value} at step {self.step + 1} ({detail}); stopped without saving. "
            f"Last good checkpoint, left intact: {self.kept_checkpoint()}")

    def stop_on_signal(self) -> None:
        """Checkpoint the current step (unless just written) and raise :class:`Preempted`."""
        if self.saved_step != self.step:
            self.save()
        self.evaluator.close()
        if self.writer is not None:
            self.writer.close()
        path = self.checkpoints.path(self.step)
        log.warning("stopped by %s after step %d: checkpoint %s", self.stop.name, self.step, path)
        raise Preempted(f"stopped by {self.stop.name} after step {self.step} of {self.cfg.trainer.max_iters}; "
                        f"checkpoint written: {path}. Continue with trainer.resume=auto and the same run folder "
                        f"(hydra.run.dir={self.run_dir}).")

    # ------------------------------------------------------------ evaluation
    def evaluate(self, final: bool = False) -> dict:
        """Measure on the validation split (with the dense CRF of ``crf.*`` when ``final``, or at every
        evaluation with ``crf.during_training``), log it, keep the best checkpoint (by the mIoU without
        CRF); the metrics, with ``crf: {steps: metrics}`` when the CRF ran."""
        result = self.evaluator.run(self.net, with_crf=final or self.cfg.crf.during_training)
        metrics = dict(result.metrics)
        if result.crf:
            metrics["crf"] = {str(steps): crf_metrics for steps, (crf_metrics, _) in result.crf.items()}
            metrics["crf_seconds_per_image"] = result.crf_seconds_per_image
        self.evals.append({"step": self.step, **metrics})
        if self.writer is not None:
            self.log_eval(result)
        self.keep_best(result.metrics)
        return metrics

    def log_eval(self, result) -> None:
        for tag, metrics in [("val", result.metrics)] + [(f"val_crf{steps}", m) for steps, (m, _) in result.crf.items()]:
            self.writer.add_scalar(f"{tag}/miou", metrics["miou"], self.step)
            self.writer.add_scalar(f"{tag}/pixel_acc", metrics["pixel_acc"], self.step)
            self.writer.add_scalar(f"{tag}/mean_acc", metrics["mean_acc"], self.step)
        for name, iou in zip(self.class_names, result.metrics["iou"]):
            self.writer.add_scalar(f"val_iou/{name}", iou, self.step)
        if result.first is not None and self.cfg.trainer.num_tb_images > 0:
            images, labels, pred = (t[: self.cfg.trainer.num_tb_images] for t in result.first)
            palette = getattr(self.evaluator.dataset, "palette", None)
            for tag, grid in label_grid(images, labels, pred, palette, self.cfg.data).items():
                self.writer.add_image(f"val/{tag}", grid, self.step)

    def keep_best(self, metrics: dict) -> None:
        if metrics["miou"] > self.best_miou:
            self.best_miou = metrics["miou"]
            state = self.state()
            if self.dist.is_main:
                self.checkpoints.save_best(state)

    def write_metrics(self, final: dict) -> None:
        if self.dist.is_main:
            write_json({"step": self.step, "final": final, "best_miou": self.best_miou,
                        "class_names": self.class_names, "evals": self.evals},
                       self.run_dir / "metrics.json")

    def fit(self, crf_at_end: bool = True) -> dict:
        """Train to ``trainer.max_iters`` (resuming if asked), evaluate (with the CRF of ``crf.*`` if
        ``crf_at_end``: the last stage of a recipe), and return the final metrics."""
        tcfg = self.cfg.trainer
        self.start()
        if self.step >= tcfg.max_iters and self.evals and self.evals[-1]["step"] == self.step:
            log.info("training already complete at step %d", self.step)
            return self.evals[-1]
        self.net.train()
        bar = tqdm(total=tcfg.max_iters, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (self.dist.is_main and tcfg.progress))
        batches = self.batches()
        with self.stop.armed():  # a stop signal waits for the end of the step
            log.info("training from step %d to %d", self.step, tcfg.max_iters)
            while self.step < tcfg.max_iters:
                batch = self.next_batch(batches)  # None: the loader's workers died of a stop signal
                if self.stop.agreed(self.device):  # every rank stops after the same step
                    bar.close()
                    self.stop_on_signal()
                value = self.train_step(*batch)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                if tcfg.eval_every and self.step % tcfg.eval_every == 0 and self.step < tcfg.max_iters:
                    self.evaluate()
                    self.write_metrics(self.evals[-1])
                if self.step % tcfg.ckpt_every == 0 and self.step < tcfg.max_iters:
                    self.save()
        bar.close()
        final = self.evaluate(final=crf_at_end)
        self.evaluator.close()
        self.save()
        self.write_metrics(final)
        if self.writer is not None:
            log_hparams(self.writer, self.cfg, final, self.step)
            self.writer.close()
        return final


def detached(inputs: tuple) -> tuple:
    """The step's loss inputs without their graph (labels are passed as they are)."""
    return tuple(t.detach() if t.is_floating_point() else t for t in inputs)
