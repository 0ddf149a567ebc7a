"""Everything a run is made of, built from the composed config: :func:`build_training` for ``segrepro
train``, :func:`build_evaluator` for the evaluations of training and of ``segrepro eval``."""
from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.tensorboard import SummaryWriter

from ..config import instantiate
from ..data import build_dataset
from ..losses import SegmentationLoss
from ..models import build_model
from ..models.build import has_image_pooling
from .checkpoint import resume_checkpoint
from .distributed import DistInfo
from .evaluator import Evaluator
from .schedule import poly_lr_scheduler

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def build_loss(loss_cfg, **context) -> SegmentationLoss:
    """Instantiate ``loss._target_`` with the other keys as arguments (an unknown argument is an error naming
    it and the valid ones). ``context`` (e.g. ``feat_dim=``, the model's feature size) fills the constructor
    arguments of those names that the config leaves null or absent."""
    loss = instantiate(loss_cfg, "loss", **context)
    if not isinstance(loss, SegmentationLoss):
        raise ValueError(f"loss._target_: {type(loss).__module__}.{type(loss).__qualname__} is not a "
                         "segrepro.losses.SegmentationLoss (subclass it: it declares the hooks the trainer calls)")
    return loss


HEAD = "segmentation_head."  # the prefix of the classifier's parameter names (SegmentationNet)


def parameter_groups(model: torch.nn.Module, optim_cfg) -> list[dict]:
    """The trainable parameters (frozen BN excluded) by learning rate and weight decay: the head's weights
    at ``optim.head_lr_mult`` and its biases at ``optim.head_bias_lr_mult`` times ``optim.lr``, the
    biases' weight decay at ``optim.head_bias_decay_mult`` times ``optim.weight_decay``, the rest at
    ``optim.lr`` and ``optim.weight_decay``. DeepLab v2 trains its classifier at Caffe ``lr_mult`` 10
    (weights) and 20 (biases), the biases at ``decay_mult`` 0; TF DeepLab doubles the learning rate of
    every bias, of which only the logits layer has one (``utils/train_utils.py``,
    ``get_model_gradient_multipliers``), and regularizes weights only. Parameters of equal rates share a
    group, in model order: the default multipliers (1, 1, 1) give one group, as before."""
    for key in ("head_lr_mult", "head_bias_lr_mult", "head_bias_decay_mult"):
        if getattr(optim_cfg, key) < 0:
            raise ValueError(f"optim.{key} must be at least 0, got {getattr(optim_cfg, key)}")
    groups: dict[tuple, list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        multipliers = (1.0, 1.0)  # learning rate, weight decay
        if name.startswith(HEAD) and name.endswith(".bias"):
            multipliers = (float(optim_cfg.head_bias_lr_mult), float(optim_cfg.head_bias_decay_mult))
        elif name.startswith(HEAD):
            multipliers = (float(optim_cfg.head_lr_mult), 1.0)
        groups.setdefault(multipliers, []).append(param)
    return [{"params": params, "lr": optim_cfg.lr * lr, "weight_decay": optim_cfg.weight_decay * decay}
            for (lr, decay), params in groups.items()]


def build_optimizer(model: torch.nn.Module, optim_cfg) -> torch.optim.SGD:
    """SGD with momentum and weight decay over :func:`parameter_groups`; the poly schedule and the
    slow start scale every group's learning rate alike (:mod:`.schedule`)."""
    return torch.optim.SGD(parameter_groups(model, optim_cfg), lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                           weight_decay=optim_cfg.weight_decay)


def build_amp(trainer_cfg, device: torch.device):
    """``(autocast context factory, GradScaler)``: autocast in ``trainer.amp_dtype`` on CUDA when
    ``trainer.amp``, nothing elsewhere; the scaler only does something for float16."""
    if trainer_cfg.amp_dtype not in AMP_DTYPES:
        raise ValueError(f"trainer.amp_dtype={trainer_cfg.amp_dtype!r}; valid: {sorted(AMP_DTYPES)}")
    dtype = AMP_DTYPES[trainer_cfg.amp_dtype]
    use_amp = trainer_cfg.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if use_amp else contextlib.nullcontext
    return autocast, torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededSamples(Dataset):
    """Training samples keyed by ``(epoch, index)``: each sample's augmentation is seeded by
    ``(seed, epoch, index)``, so a resumed run draws exactly the crops an uninterrupted run
    draws, whatever the number of workers."""

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        transform = getattr(self.dataset, "transform", None)
        if transform is not None:
            transform.reseed(sample_seed(self.seed, epoch, index))
        return self.dataset[index]


class EpochSampler(DistributedSampler):
    """A ``DistributedSampler`` (shuffled, ``drop_last``) that yields ``(epoch, index)`` keys and
    can start ``skip`` samples into an epoch (to resume mid-epoch)."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self):
        keys = [(self.epoch, index) for index in super().__iter__()][self.skip:]
        self.skip = 0
        return iter(keys)


def per_process_batch(data_cfg, world_size: int) -> int:
    """``data.batch_size / world_size``, the images of one process per step (an error if it does not divide)."""
    if data_cfg.batch_size % world_size:
        raise ValueError(f"data.batch_size={data_cfg.batch_size} is not divisible by the {world_size} processes")
    return data_cfg.batch_size // world_size


def check_batchnorm_batch(cfg, world_size: int) -> None:
    """A clear error, before anything is built, where torch would fail in the first step: with one image per
    process and BN in train mode, the BN of the image-pooling branch (DeepLabv3, v3+) normalizes one
    value per channel ("Expected more than 1 value per channel when training"). Frozen BN (running
    statistics) and SyncBN over several processes are fine."""
    tcfg = cfg.trainer
    if (per_process_batch(cfg.data, world_size) > 1 or not has_image_pooling(cfg.model.arch)
            or tcfg.freeze_bn or (tcfg.sync_bn and world_size > 1)):
        return
    raise ValueError(
        f"data.batch_size={cfg.data.batch_size} over {world_size} process(es) is one image per process: the "
        f"image-pooling branch of {cfg.model.arch} then gives batch norm one value per channel, which it cannot "
        "normalize in training. Ways out: trainer.sync_bn=true (GPUs, several processes: statistics over all "
        "of them), trainer.freeze_bn=true (BN at its running statistics), or a larger data.batch_size.")


def sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Every BN layer as SyncBatchNorm, timm's BN + activation layers (Xception-65's ``BatchNormAct2d``)
    with their activation kept: torch's own conversion would drop it."""
    return timm.layers.convert_sync_batchnorm(model)


def ignore_usr1(worker_id: int) -> None:
    """A loader worker ignores SIGUSR1, which SLURM's ``--signal`` sends to every process of the job: the
    training process checkpoints and stops, and its workers end with it. SIGTERM keeps its default
    action: the loader ends a stuck worker with it when it shuts down."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def build_train_loader(dataset, data_cfg, rank: int, world_size: int, seed: int, device: torch.device):
    """The training loader and its sampler; the per-rank batch is ``data.batch_size / world_size``."""
    batch = per_process_batch(data_cfg, world_size)
    sampler = EpochSampler(dataset, world_size, rank, seed)
    if len(sampler) < batch:
        raise ValueError(f"the training split has {len(dataset)} images: fewer than one batch of {batch} per process")
    workers = int(data_cfg.num_workers)
    loader = DataLoader(SeededSamples(dataset, seed), batch_size=batch, sampler=sampler, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0, worker_init_fn=ignore_usr1,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
    return loader, sampler


def build_evaluator(cfg, dist_info: DistInfo, autocast=contextlib.nullcontext) -> Evaluator:
    """The evaluator of ``data.val_split``, for training's evaluations and ``segrepro eval`` alike."""
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False)
    return Evaluator(cfg, dataset, dist_info, autocast)


@dataclass
class TrainingParts:
    """The objects a :class:`~segrepro.engine.trainer.Trainer` works with."""

    model: torch.nn.Module  # the network itself (state dicts, BN freezing)
    net: torch.nn.Module  # what the steps call: the model, or its DDP wrapper
    loss: SegmentationLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    sampler: EpochSampler
    evaluator: Evaluator
    writer: SummaryWriter | None  # rank 0 only
    autocast: object
    scaler: torch.amp.GradScaler


def build_training(cfg, run_dir, dist_info: DistInfo) -> TrainingParts:
    """Every part of one training stage, in a fixed order (the seed is set first, so a run is repeatable)."""
    tcfg, device = cfg.trainer, dist_info.device
    if tcfg.max_iters <= 0:
        raise ValueError(f"trainer.max_iters must be positive, got {tcfg.max_iters}")
    check_batchnorm_batch(cfg, dist_info.world_size)
    torch.manual_seed(tcfg.seed)
    train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
    autocast, scaler = build_amp(tcfg, device)
    evaluator = build_evaluator(cfg, dist_info, autocast)

    # resuming, or starting from a previous stage's weights: no ImageNet download (it would be overwritten)
    # (whether a checkpoint is there, not loaded: the trainer loads it once, in start())
    from_checkpoint = bool(tcfg.init_from) or resume_checkpoint(tcfg.resume, Path(run_dir) / "checkpoints",
                                                                 verify=False) is not None
    model = build_model(cfg.model, cfg.data.num_classes, from_checkpoint=from_checkpoint)
    if tcfg.sync_bn and dist_info.distributed:
        if device.type != "cuda":
            raise ValueError("trainer.sync_bn=true needs GPUs: SyncBatchNorm has no CPU kernel")
        model = sync_batchnorm(model)
    if tcfg.freeze_bn:
        model.freeze_batchnorm()
    model = model.to(device)
    net = model
    if dist_info.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    loss = build_loss(cfg.loss, feat_dim=model.feature_dim, num_classes=cfg.data.num_classes,
                      ignore_index=cfg.data.ignore_index).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = poly_lr_scheduler(optimizer, cfg.optim, tcfg.max_iters)
    loader, sampler = build_train_loader(train_set, cfg.data, dist_info.rank, dist_info.world_size, tcfg.seed, device)
    writer = SummaryWriter(str(run_dir / "tb")) if dist_info.is_main else None
    return TrainingParts(model, net, loss, optimizer, scheduler, loader, sampler, evaluator, writer, autocast, scaler)
