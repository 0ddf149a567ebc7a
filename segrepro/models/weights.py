"""Loading a local state dict (``model.weights``) into a model, with a report of what matched.

Accepted files (read with ``torch.load(weights_only=True)``): a raw state dict,
or a checkpoint dict holding one under ``"model"`` (segrepro checkpoints) or
``"state_dict"``. A ``module.`` prefix (DDP) is stripped.

Where the weights go: the full model, its ``encoder``, or (for timm ``tu-``
encoders) the timm network ``encoder.model``, whichever has the most parameter
names in common with the file (the full model on a tie). So a segrepro or smp
checkpoint loads into the full model and a torchvision / timm ImageNet
backbone (``conv1.weight``, ``layer1.0...``) loads into the encoder.
Tensors whose shape differs from the model's are reported and skipped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn

from ..files import load_torch_file

log = logging.getLogger(__name__)

SHOWN_KEYS = 5


@dataclass
class WeightsReport:
    """What :func:`load_weights` did: the target module and the keys by outcome."""

    path: str
    target: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: List[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: List[str] = field(default_factory=list)  # "name: file [..] vs model [..]", skipped

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.path} into {self.target}"]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch (skipped)", self.mismatched)):
            if keys:
                more = f", ... (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
                lines.append(f"  {label}: {len(keys)}: {', '.join(keys[:SHOWN_KEYS])}{more}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> Dict[str, torch.Tensor]:
    """The state dict stored in ``path`` (raw or under "model"/"state_dict"), ``module.`` prefixes stripped."""
    path = Path(path)
    stored = load_torch_file(path, "model weights file")
    if isinstance(stored, dict):
        for entry in ("model", "state_dict"):
            if isinstance(stored.get(entry), dict):
                stored = stored[entry]
                break
    if not isinstance(stored, dict) or not stored:
        raise ValueError(f"{path} holds no state dict (expected a dict of tensors, or one under 'model')")
    not_tensors = [key for key, value in stored.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path} is not a state dict: entries {not_tensors[:SHOWN_KEYS]} are not tensors")
    return {key.removeprefix("module."): value for key, value in stored.items()}


def _targets(model: nn.Module) -> Dict[str, nn.Module]:
    targets = {"model": model}
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        targets["model.encoder"] = encoder
        if isinstance(getattr(encoder, "model", None), nn.Module):
            targets["model.encoder.model"] = encoder.model
    return targets


def load_weights(model: nn.Module, path: str | Path) -> WeightsReport:
    """Load the tensors of ``path`` that match ``model`` by name and shape; log and return the report.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the path when the file
    is missing or unreadable, or when not one tensor of it fits the model.
    """
    state = read_state_dict(path)
    targets = _targets(model)
    target_name = max(targets, key=lambda name: len(state.keys() & targets[name].state_dict().keys()))
    own = targets[target_name].state_dict()
    report = WeightsReport(path=str(path), target=target_name)
    matching = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif value.shape != own[key].shape:
            report.mismatched.append(f"{key}: file {list(value.shape)} vs model {list(own[key].shape)}")
        else:
            matching[key] = value
            report.loaded.append(key)
    report.missing = [key for key in own if key not in matching and key not in state]
    if not matching:
        raise ValueError(
            f"no tensor of {path} fits the model ({len(state)} in the file, e.g. {list(state)[:3]}; "
            f"model keys are e.g. {list(model.state_dict())[:3]}; shape mismatches: {report.mismatched[:3]})"
        )
    targets[target_name].load_state_dict(matching, strict=False)
    if report.missing or report.unexpected or report.mismatched:
        log.warning(report.summary())
    else:
        log.info(report.summary())
    return report
