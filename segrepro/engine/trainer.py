"""The iteration-based training loop: SGD + poly LR, AMP on CUDA, DDP, TensorBoard, checkpoints.

One ``Trainer`` runs one stage of a recipe in one run folder::

    run_dir/config.yaml       the composed config
    run_dir/checkpoints/      step_XXXXXXX.pt (last N) and best.pt
    run_dir/tb/               TensorBoard events
    run_dir/metrics.json      final and per-evaluation metrics
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..data import build_dataset
from ..models import build_model, load_weights
from .build import build_loss, build_optimizer, build_train_loader
from .checkpoint import CheckpointDir, load_checkpoint
from .distributed import DistInfo
from .evaluator import Evaluator
from .schedule import poly_lr_scheduler
from .visualize import label_grid

log = logging.getLogger(__name__)

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step, the terms and the last good checkpoint."""


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Put every BN layer in eval mode (running statistics fixed) and freeze its affine parameters."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)


def write_json(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


class Trainer:
    def __init__(self, cfg, run_dir, dist_info: DistInfo):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = dist_info
        self.device = dist_info.device
        tcfg = cfg.trainer
        if tcfg.max_iters <= 0:
            raise ValueError(f"trainer.max_iters must be positive, got {tcfg.max_iters}")

        torch.manual_seed(tcfg.seed)
        self.train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
        self.val_set = build_dataset(cfg.data, cfg.data.val_split, train=False)
        self.class_names = list(getattr(self.train_set, "class_names", range(cfg.data.num_classes)))

        model = build_model(cfg.model, cfg.data.num_classes)
        if tcfg.sync_bn and dist_info.distributed:
            if self.device.type != "cuda":
                raise ValueError("trainer.sync_bn=true needs GPUs: SyncBatchNorm has no CPU kernel")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if tcfg.freeze_bn:
            freeze_batchnorm(model)
        self.model = model.to(self.device)
        self.net = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if dist_info.distributed else self.model)
        self.loss = build_loss(cfg.loss, self.model.feature_dim).to(self.device)
        self.needs_features = getattr(self.loss, "needs_features", False)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = poly_lr_scheduler(self.optimizer, cfg.optim, tcfg.max_iters)

        use_amp = tcfg.amp and self.device.type == "cuda"
        if tcfg.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"trainer.amp_dtype={tcfg.amp_dtype!r}; valid: {sorted(AMP_DTYPES)}")
        amp_dtype = AMP_DTYPES[tcfg.amp_dtype]
        self.autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        self.loader, self.sampler = build_train_loader(self.train_set, cfg.data, dist_info.rank,
                                                       dist_info.world_size, tcfg.seed, self.device)
        self.evaluator = Evaluator(self.val_set, cfg.data.num_classes, cfg.data.ignore_index, self.device,
                                   dist_info.rank, dist_info.world_size, cfg.data.val_batch_size,
                                   cfg.data.num_workers, self.autocast, tcfg.progress)
        self.checkpoints = CheckpointDir(self.run_dir / "checkpoints", tcfg.keep_last)
        self.writer = SummaryWriter(str(self.run_dir / "tb")) if dist_info.is_main else None
        self.step = 0
        self.best_miou = float("-inf")
        self.evals: list[dict] = []
        self.last_checkpoint: Path | None = None

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

    def resume_path(self) -> Path | None:
        resume = self.cfg.trainer.resume
        if resume in (None, "", "none"):
            if self.checkpoints.latest() is not None and self.dist.is_main:
                log.warning("%s already holds checkpoints; starting afresh (trainer.resume=auto continues them)",
                            self.checkpoints.folder)
            return None
        if resume == "auto":
            return self.checkpoints.latest()
        return Path(resume)

    # ------------------------------------------------------------------ loop
    def batches(self):
        """Endless training batches, starting where ``self.step`` left off (epoch and offset)."""
        epoch, offset = divmod(self.step, len(self.loader))
        self.sampler.skip = offset * self.loader.batch_size
        while True:
            self.sampler.set_epoch(epoch)
            yield from self.loader
            epoch += 1

    def train_step(self, images, labels) -> float:
        if hasattr(self.loss, "set_progress"):
            self.loss.set_progress(self.step / self.cfg.trainer.max_iters)
        with self.autocast():
            out = self.net(images, return_features=True) if self.needs_features else self.net(images)
        logits, features = out if self.needs_features else (out, None)
        inputs = (logits, labels, features) if self.needs_features else (logits, labels)
        loss = self.loss(*inputs)
        value = float(loss.detach())
        if not torch.isfinite(loss.detach()):
            self.stop_non_finite(value, inputs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if hasattr(self.loss, "update_centers"):
            with torch.no_grad():
                self.loss.update_centers(features.detach(), labels)
        self.step += 1
        if self.writer is not None and (self.step % self.cfg.trainer.log_every == 0 or self.step == 1):
            self.log_train(value, inputs)
        return value

    def loss_terms(self, inputs) -> dict:
        if not hasattr(self.loss, "terms"):
            return {}
        with torch.no_grad():
            detached = tuple(t.detach() if t.is_floating_point() else t for t in inputs)
            return {k: float(v) for k, v in self.loss.terms(*detached).items()}

    def log_train(self, value: float, inputs) -> None:
        self.writer.add_scalar("train/loss", value, self.step)
        self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
        for key, term in self.loss_terms(inputs).items():
            self.writer.add_scalar(f"loss/{key}", term, self.step)

    def stop_non_finite(self, value: float, inputs) -> None:
        terms = self.loss_terms(inputs)
        detail = ", ".join(f"{k}={v:.4g}" for k, v in terms.items()) or f"loss={value}"
        kept = self.last_checkpoint or "none (no checkpoint was written yet)"
        raise NonFiniteLossError(
            f"the loss is {value} at step {self.step + 1} ({detail}); stopped without saving. "
            f"Last good checkpoint, left intact: {kept}")

    def evaluate(self) -> dict:
        metrics, _, first = self.evaluator.run(self.net)
        record = {"step": self.step, **metrics}
        self.evals.append(record)
        if self.writer is not None:
            self.writer.add_scalar("val/miou", metrics["miou"], self.step)
            self.writer.add_scalar("val/pixel_acc", metrics["pixel_acc"], self.step)
            self.writer.add_scalar("val/mean_acc", metrics["mean_acc"], self.step)
            for name, iou in zip(self.class_names, metrics["iou"]):
                self.writer.add_scalar(f"val_iou/{name}", iou, self.step)
            if first is not None and self.cfg.trainer.num_tb_images > 0:
                images, labels, pred = (t[: self.cfg.trainer.num_tb_images] for t in first)
                palette = getattr(self.val_set, "palette", None)
                for tag, grid in label_grid(images, labels, pred, palette, self.cfg.data).items():
                    self.writer.add_image(f"val/{tag}", grid, self.step)
        if metrics["miou"] > self.best_miou:
            self.best_miou = metrics["miou"]
            state = self.state()
            if self.dist.is_main:
                self.checkpoints.save_best(state)
        return metrics

    def write_metrics(self, final: dict) -> None:
        if self.dist.is_main:
            write_json({"step": self.step, "final": final, "best_miou": self.best_miou,
                        "class_names": self.class_names, "evals": self.evals},
                       self.run_dir / "metrics.json")

    def fit(self) -> dict:
        """Train to ``trainer.max_iters`` (resuming if asked), evaluate, and return the final metrics."""
        tcfg = self.cfg.trainer
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.cfg, self.run_dir / "config.yaml", resolve=True)
        path = self.resume_path()
        if path is not None:
            self.load_state(path)
            log.info("resumed from %s at step %d", path, self.step)
        elif tcfg.init_from:
            load_weights(self.model, tcfg.init_from)
        if self.step >= tcfg.max_iters and self.evals and self.evals[-1]["step"] == self.step:
            log.info("training already complete at step %d", self.step)
            return self.evals[-1]

        self.net.train()
        if tcfg.freeze_bn:
            freeze_batchnorm(self.model)
        bar = tqdm(total=tcfg.max_iters, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (self.dist.is_main and tcfg.progress))
        batches = self.batches()
        while self.step < tcfg.max_iters:
            images, labels = next(batches)
            value = self.train_step(images.to(self.device, non_blocking=True),
                                    labels.to(self.device, non_blocking=True))
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            if tcfg.eval_every and self.step % tcfg.eval_every == 0 and self.step < tcfg.max_iters:
                self.evaluate()
                self.write_metrics(self.evals[-1])
                if tcfg.freeze_bn:
                    freeze_batchnorm(self.model)
            if self.step % tcfg.ckpt_every == 0 and self.step < tcfg.max_iters:
                self.save()
        bar.close()
        final = self.evaluate()
        self.save()
        self.write_metrics(final)
        if self.writer is not None:
            self.writer.close()
        return final
