"""Config schema: the typed shape of ``configs/train.yaml``.

Hydra composes the YAML tree onto these dataclasses (registered as the
``train_schema`` node), so a value of the wrong type or a key that does not
exist is an error at composition time. :func:`check_overrides` turns Hydra's
composition errors into one message that names the bad key and lists the
valid ones. :func:`instantiate` builds the class a config node names by ``_target_``
(losses, datasets), with errors that name the key.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf


def _find_config_dir() -> str:
    """The Hydra tree: ``segrepro/configs`` inside an installed wheel (pyproject.toml maps the
    repository's top-level ``configs/`` there), else ``configs/`` beside the package (a source
    checkout, an editable install). More folders join through Hydra's search path
    (``hydra.searchpath=[file:///abs/path]``), see the README."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"segrepro's configs are missing: neither {package / 'configs'} (an installed "
                            f"package) nor {package.parent / 'configs'} (a source checkout) holds train.yaml")


CONFIG_DIR = _find_config_dir()

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ModelConfig:
    """Which network: ``arch`` in {deeplabv2, deeplabv3, deeplabv3plus}."""

    arch: str = "deeplabv3plus"
    encoder: str = "resnet18"
    output_stride: int = 16
    atrous_rates: List[int] = field(default_factory=lambda: [6, 12, 18])  # for output stride 16
    decoder_channels: int = 256
    upsampling: str = "bilinear"  # or "deconv" (the LAD baseline's learned upsampling)
    # DeepLabv3's multi-grid: one rate per unit of the last ResNet block, times the block's dilation
    multi_grid: Optional[List[int]] = None  # e.g. [1, 2, 4]; None: the encoder's own dilations
    pretrained: bool = False  # ImageNet weights through smp/timm
    weights: Optional[str] = None  # a local state dict (weights_only=True)


SYNTHETIC_DATASET = {"_target_": "segrepro.data.SyntheticSegmentation"}


@dataclass
class DataConfig:
    """Dataset and input pipeline. ``dataset`` names the dataset class by ``_target_`` with its
    keyword arguments (``root`` comes from ``data.root``, ``split`` and ``transform`` from the
    split and pipeline keys); ``name`` is the run's label."""

    name: str = "synthetic"
    root: Optional[str] = None
    num_classes: int = 6
    ignore_index: int = 255
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int = 129
    batch_size: int = 8
    val_batch_size: int = 1
    num_workers: int = 2
    scale_range: List[float] = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    # {_target_: a dataset class, its keyword arguments}. Only the class: a schema default with the
    # synthetic arguments would be merged key by key into every other dataset's node.
    dataset: Dict[str, Any] = field(default_factory=lambda: dict(SYNTHETIC_DATASET))


@dataclass
class OptimConfig:
    """SGD with momentum and poly LR; the first ``warmup_iters`` steps run at ``warmup_lr`` (slow start).
    The head's weights and biases (the layer that gives the logits) train at ``head_lr_mult`` and
    ``head_bias_lr_mult`` times every learning rate of the schedule, the biases with
    ``head_bias_decay_mult`` times ``weight_decay`` (Caffe's ``decay_mult``)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    warmup_iters: int = 0
    warmup_lr: float = 0.001
    head_lr_mult: float = 1.0
    head_bias_lr_mult: float = 1.0
    head_bias_decay_mult: float = 1.0


@dataclass
class TrainerConfig:
    max_iters: int = 300
    eval_every: int = 0  # 0: only at the end
    log_every: int = 10
    ckpt_every: int = 100
    keep_last: int = 2
    resume: Optional[str] = None  # None, "auto" (newest in the run folder) or a checkpoint path
    allow_config_change: bool = False  # resume with command-line values that differ from the saved config
    init_from: Optional[str] = None  # model weights to start from (e.g. a previous stage's checkpoint)
    sync_bn: bool = False
    freeze_bn: bool = False
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    amp: bool = True  # autocast on CUDA only
    amp_dtype: str = "bfloat16"
    num_tb_images: int = 4
    progress: bool = True


@dataclass
class GaussianKernelConfig:
    """The CRF's colour-independent (smoothness) kernel: positions only."""

    sxy: float = 3.0
    compat: float = 3.0


@dataclass
class BilateralKernelConfig:
    """The CRF's appearance kernel: positions and RGB colour."""

    sxy: float = 80.0
    srgb: float = 13.0
    compat: float = 10.0


@dataclass
class CRFConfig:
    """Dense CRF post-processing at evaluation (segrepro/crf.py): ``steps`` mean-field iterations, or a
    list of them all taken from one run (``0`` or ``[]``: off)."""

    steps: Any = 0
    workers: Optional[int] = None  # CRF processes per evaluating process; None: the cores it may use
    during_training: bool = False  # also at the periodic evaluations (always at the last stage's final one)
    gaussian: GaussianKernelConfig = field(default_factory=GaussianKernelConfig)
    bilateral: BilateralKernelConfig = field(default_factory=BilateralKernelConfig)


@dataclass
class EvalConfig:
    """Inference at evaluation: the probabilities averaged over ``scales`` (and their horizontal flips
    with ``flip``) at the label's resolution, before any CRF. Both papers: ``[1.0]``, no flip."""

    scales: List[float] = field(default_factory=lambda: [1.0])
    flip: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    loss: Any = None  # {_target_: segrepro.losses.X, ...}: checked against the class signature
    stages: List[Any] = field(default_factory=list)  # multi-stage recipes: overrides per stage
    checkpoint: Optional[str] = None  # for `segrepro eval`
    name: str = "run"


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


class ConfigError(ValueError):
    """A config that does not compose: the message names the key and the valid choices."""


def compose_config(overrides: list[str], config_name: str = "train"):
    """Compose ``configs/<config_name>.yaml`` with ``overrides`` outside a Hydra run (tests, checks).

    Each call returns its own copy; the composition itself is done once per ``(overrides,
    config_name)`` in a process, which does not see later edits of the YAML files
    (``compose_config.cache_clear()`` forgets them)."""
    return copy.deepcopy(_compose(tuple(overrides), config_name))


@functools.lru_cache(maxsize=256)
def _compose(overrides: tuple, config_name: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():  # inside `segrepro train`: the app's own search path
        return compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


compose_config.cache_clear = _compose.cache_clear


_KEY_PATTERNS = (
    re.compile(r"full_key: ([\w.\[\]]+)"),
    re.compile(r"Could not override '([\w.]+)'"),
)
_MISSING_CHOICE = re.compile(r"Could not find '([\w/.-]+)'")
_BAD_VALUE = (  # OmegaConf's words for a value of the wrong type, and what the key expects
    re.compile(r"Value '(?P<value>.*)' of type '\w+' could not be converted to (?P<type>\w+)"),
    re.compile(r"Value '(?P<value>.*)' is not a valid (?P<type>\w+)"),
    re.compile(r"Invalid value assigned: \w+ is not a (?P<type>ListConfig|DictConfig)"),
)
_EXPECTED = {"Integer": "an integer", "Float": "a number", "bool": "true or false", "Boolean": "true or false",
             "ListConfig": "a list, e.g. [1, 2]", "DictConfig": "a mapping, e.g. {key: value}"}


def _bad_key(message: str) -> str | None:
    for pattern in _KEY_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group(1)
    return None


def _valid_keys(parent: str, overrides: list[str], config_name: str) -> list[str]:
    """The keys under ``parent`` in the config composed without the overrides of that branch,
    or, failing that, in the schema."""
    kept = [o for o in overrides if not (parent and o.lstrip("+~").startswith(parent + "."))]
    try:
        node = compose_config(kept, config_name)
    except Exception:
        node = OmegaConf.structured(TrainConfig)
    node = OmegaConf.select(node, parent) if parent else node
    return sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []


def group_choices(group: str) -> list[str]:
    """The configs of a config group, those of its sub-groups as ``sub/name`` (``experiment`` ->
    ``lad/voc_deeplabv2``, ...), from Hydra's search path."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    def walk(loader, name):
        found = loader.get_group_options(name, results_filter=ObjectType.CONFIG)
        for sub in loader.get_group_options(name, results_filter=ObjectType.GROUP):
            found += [f"{sub}/{choice}" for choice in walk(loader, f"{name}/{sub}")]
        return sorted(found)

    if GlobalHydra.instance().is_initialized():
        return walk(GlobalHydra.instance().config_loader(), group)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return walk(GlobalHydra.instance().config_loader(), group)


def _check_added_keys(overrides: list[str], config_name: str) -> None:
    """``+section.key=value`` adds a key that does not exist: an error inside the schema's sections
    (``+trainer.max_itrs=5`` is a typo, not a new setting); free-form nodes (``loss``,
    ``data.dataset``) and config groups (``+experiment=...``) take new keys."""
    for override in overrides:
        if not override.startswith("+") or override.startswith("++"):
            continue
        key = override[1:].split("=", 1)[0]
        if "@" in key or "/" in key or group_choices(key):
            continue
        parent, _, leaf = key.rpartition(".")
        base = compose_config([o for o in overrides if o != override], config_name)
        node = OmegaConf.select(base, parent) if parent else base
        if isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)) and leaf not in node:
            where = f"'{parent}'" if parent else "the top level"
            raise ConfigError(f"unknown config key '{key}' in {override}: '{leaf}' is not a key of {where}, whose "
                              f"keys are fixed; valid keys: {', '.join(sorted(str(k) for k in node.keys()))}")


def check_overrides(overrides: list[str], config_name: str = "train") -> None:
    """Compose once with ``overrides``; raise :class:`ConfigError` with a one-line message if that
    fails: an unknown key names the key and lists the valid ones, an unknown group choice lists the
    group's choices (its sub-groups' too), a value of the wrong type names the key and the type."""
    try:
        compose_config(overrides, config_name)
        _check_added_keys(overrides, config_name)
    except ConfigError:
        raise
    except Exception as exc:
        message = str(exc)
        if exc.__cause__ is not None and str(exc.__cause__) not in message:
            message += f"\n{exc.__cause__}"
        missing = _MISSING_CHOICE.search(message)
        if missing:
            group, _, choice = missing.group(1).rpartition("/")
            top = group.split("/")[0]
            typed = next((o for o in overrides if o.lstrip("+~").split("=")[0] == top), f"{top}={choice}")
            raise ConfigError(f"{typed}: there is no config '{missing.group(1)}.yaml'; available {top} "
                              f"choices: {', '.join(group_choices(top))}") from None
        key = _bad_key(message)
        for pattern in _BAD_VALUE if key is not None else ():
            match = pattern.search(message)
            if match:
                typed = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=")[0] == key),
                             match.groupdict().get("value"))
                raise ConfigError(f"{key}: expected {_EXPECTED.get(match['type'], match['type'])}, "
                                  f"got {typed!r}") from None
        if key is not None:
            parent, _, leaf = re.sub(r"\[\d+\]$", "", key).rpartition(".")
            valid = _valid_keys(parent, overrides, config_name)
            if valid and leaf not in valid:
                where = f"'{parent}'" if parent else "the top level"
                raise ConfigError(f"unknown config key '{key}': '{leaf}' is not a key of {where}; "
                                  f"valid keys: {', '.join(valid)}") from None
        raise ConfigError(message) from None


def instantiate(node, key: str, **kwargs):
    """Build the class named by ``node._target_`` with the node's other keys (resolved) as keyword
    arguments; ``key`` is the node's place in the config (``"loss"``, ``"data.dataset"``), used in
    the error messages.

    ``kwargs`` is context: one whose name is a parameter of the class fills that parameter when
    the node leaves it out or null (``feat_dim: null`` gets the model's feature size, ``split``
    and ``transform`` are passed); one that is not a parameter is ignored, so every caller can
    hand the same context to any class.

    A missing node or ``_target_``, a ``_target_`` that does not import, or an argument the class
    does not take is a :class:`ValueError` naming the key (and, for arguments, the valid ones).
    """
    if not isinstance(node, Mapping) or "_target_" not in node:
        group = key.split(".")[0]
        hint = (f"pick one with {group}=<name> (see configs/{group}/) or set {key}._target_"
                if (Path(CONFIG_DIR) / group).is_dir() else f"set {key}._target_")
        raise ValueError(f"the config has no {key} ({key}._target_ is not set): {hint}")
    args = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    target = args.pop("_target_")
    try:
        cls = get_class(target)
    except Exception as exc:
        raise ValueError(f"{key}._target_={target!r} cannot be imported: {exc}") from exc
    parameters = inspect.signature(cls).parameters
    named = [name for name, p in parameters.items()
             if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [name for name in args if name not in named]
    if unknown and not takes_any:
        raise ValueError(f"unknown argument{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(f'{key}.{name}' for name in unknown)} for {target}; "
                         f"valid: {', '.join(named)}")
    for name, value in kwargs.items():
        if name in named and args.get(name) is None:
            args[name] = value
    return cls(**args)


# data.name -> dataset class, for run configs saved before data.dataset (data.name + data.params)
_DATASETS_BEFORE_TARGET = {
    "synthetic": "segrepro.data.SyntheticSegmentation",
    "voc": "segrepro.data.VOCSegmentation",
    "cityscapes": "segrepro.data.CityscapesSegmentation",
    "camvid": "segrepro.data.CamVidSegmentation",
}


def saved_run_config(saved: dict):
    """A checkpoint's saved config on today's schema; one saved before datasets were chosen by
    ``data.dataset._target_`` (``data.name`` + ``data.params``) is brought to that form first."""
    if "params" in (saved.get("crf") or {}):  # an unused key of the crf section before crf.py
        saved = {**saved, "crf": {k: v for k, v in saved["crf"].items() if k != "params"}}
    data = dict(saved.get("data") or {})
    if "params" in data:
        params = data.pop("params") or {}
        if data.get("name") not in _DATASETS_BEFORE_TARGET:
            raise ValueError(f"the checkpoint's config has data.name={data.get('name')!r} and data.params, "
                             f"from before data.dataset; known names: {sorted(_DATASETS_BEFORE_TARGET)}")
        data["dataset"] = {"_target_": _DATASETS_BEFORE_TARGET[data["name"]], **params}
        saved = {**saved, "data": data}
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)


def reapply_overrides(cfg, composed, overrides: list[str]) -> None:
    """Copy onto ``cfg`` the values that the command-line ``overrides`` set in ``composed``
    (a whole section for a group choice such as ``loss=ssl``, one value for ``trainer.max_iters=2``):
    what the user typed wins over a recipe stage or a checkpoint's saved config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        # experiment= and debug= set keys all over the config (package _global_), not one section:
        # there is no section to copy (a stage or a checkpoint's config keeps what they set)
        if key.startswith("hydra") or key in ("experiment", "debug", "stages") or override.is_delete():
            continue
        value = OmegaConf.select(composed, key)
        if isinstance(value, DictConfig) and OmegaConf.get_type(value) is dict:
            value = OmegaConf.to_container(value)  # a typed section (data=...) is assigned as it is
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
