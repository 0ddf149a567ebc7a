"""Builders from the composed config: loss, optimizer, training loader."""
from __future__ import annotations

import inspect

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def build_loss(loss_cfg, feature_dim: int | None = None) -> torch.nn.Module:
    """Instantiate ``loss._target_`` with the other keys as arguments; an unknown argument is an
    error naming it and the valid ones. ``feat_dim: null`` is filled with the model's feature size."""
    if loss_cfg is None or "_target_" not in loss_cfg:
        raise ValueError("the config has no loss: pick one with loss=<name> (see configs/loss/)")
    params = OmegaConf.to_container(loss_cfg, resolve=True)
    target = params.pop("_target_")
    try:
        cls = get_class(target)
    except Exception as exc:
        raise ValueError(f"loss._target_={target!r} cannot be imported: {exc}") from exc
    valid = [name for name in inspect.signature(cls).parameters]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown loss argument(s) {unknown} for {target}; valid: {valid}")
    if "feat_dim" in params and params["feat_dim"] is None:
        params["feat_dim"] = feature_dim
    return cls(**params)


def build_optimizer(model: torch.nn.Module, optim_cfg) -> torch.optim.SGD:
    """SGD with momentum and weight decay over the trainable parameters (frozen BN excluded)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                           weight_decay=optim_cfg.weight_decay)


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


def build_train_loader(dataset, data_cfg, rank: int, world_size: int, seed: int, device: torch.device):
    """The training loader and its sampler; the per-rank batch is ``data.batch_size / world_size``."""
    if data_cfg.batch_size % world_size:
        raise ValueError(f"data.batch_size={data_cfg.batch_size} is not divisible by the {world_size} processes")
    batch = data_cfg.batch_size // world_size
    sampler = EpochSampler(dataset, world_size, rank, seed)
    if len(sampler) < batch:
        raise ValueError(f"the training split has {len(dataset)} images: fewer than one batch of {batch} per process")
    workers = int(data_cfg.num_workers)
    loader = DataLoader(SeededSamples(dataset, seed), batch_size=batch, sampler=sampler, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
    return loader, sampler
