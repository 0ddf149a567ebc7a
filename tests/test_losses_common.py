"""The common contract of every loss exported by ``segrepro.losses`` (spec, "Common contract")."""
from __future__ import annotations

import inspect
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

import segrepro.losses as losses
from segrepro.config import CONFIG_DIR, compose_config
from segrepro.engine.build import build_loss

IGNORE = 255
C = 4  # classes of the small inputs
FEAT = 8  # feature channels for CenterLoss

# Every loss of configs/loss/, built as the trainer builds it (a new YAML is covered without editing this file).
CONFIGS = sorted(path.stem for path in Path(CONFIG_DIR, "loss").glob("*.yaml"))
# ... and the plain autograd reference of every loss that has one (`impl: reference`).
LOSSES = CONFIGS + [f"{config}:reference" for config in CONFIGS
                    if "impl" in OmegaConf.load(Path(CONFIG_DIR, "loss", f"{config}.yaml"))]
LOSS_CLASSES = sorted(name for name in losses.__all__ if isinstance(getattr(losses, name), type))


def make(name):
    """The loss of ``configs/loss/<config>.yaml``; ``<config>:reference`` with ``impl=reference``."""
    config, _, impl = name.partition(":")
    cfg = compose_config([f"loss={config}", f"data.num_classes={C}"] + ([f"loss.impl={impl}"] if impl else []))
    return build_loss(cfg.loss, feat_dim=FEAT, num_classes=C)


def evaluate(loss, logits, target, features=None, method="__call__"):
    """``loss(logits, target)`` (or another method, e.g. ``terms``), with features for the losses that need them."""
    call = getattr(loss, method)
    if loss.needs_features:
        if features is None:
            n, _, height, width = logits.shape
            g = torch.Generator().manual_seed(1)
            # drawn in float32, then cast: torch 2.3 draws another random stream for bfloat16
            features = torch.randn(n, FEAT, (height + 1) // 2, (width + 1) // 2, generator=g).to(logits.dtype)
        return call(logits, target, features)
    return call(logits, target)


def sample(n=2, height=9, width=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, height, width, generator=g).to(dtype)
    target = torch.randint(0, C, (n, height, width), generator=g)
    target[torch.rand(n, height, width, generator=g) < 0.2] = IGNORE
    return logits, target


@pytest.mark.parametrize("config", CONFIGS)
def test_every_loss_config_builds_a_segmentation_loss(config):
    assert isinstance(make(config), losses.SegmentationLoss)


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_batch_gives_zero_with_graph(name):
    loss = make(name)
    logits, target = sample()
    target[:] = IGNORE
    logits.requires_grad_()
    value = evaluate(loss, logits, target)
    assert value.dim() == 0 and value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.isfinite(logits.grad).all() and torch.count_nonzero(logits.grad) == 0
    assert all(v.item() == 0 for v in evaluate(loss, logits, target, method="terms").values())


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("case", ["logits rank", "target rank", "spatial size", "batch size",
                                  "label >= C", "negative label", "float target"])
def test_bad_input_raises_value_error(name, case):
    loss = make(name)
    logits, target = sample()
    if case == "logits rank":
        logits = logits[0]
    elif case == "target rank":
        target = target.unsqueeze(1)
    elif case == "spatial size":
        target = target[:, :, :-1]
    elif case == "batch size":
        target = target[:1]
    elif case == "label >= C":
        target[0, 0, 0] = C
    elif case == "negative label":
        target[0, 0, 0] = -1
    else:
        target = target.float()
    with pytest.raises(ValueError):
        evaluate(loss, logits, target)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_and_autocast_compute_in_float32(name, half):
    loss = make(name)
    logits, target = sample()
    reference = evaluate(loss, logits, target)
    assert reference.dtype == torch.float32
    assert reference.item() == pytest.approx(evaluate(loss.double(), logits.double(), target).item(), rel=1e-4)
    loss.float()
    value = evaluate(loss, logits.to(half), target)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    # Half logits are taken to float32 first: the same value as from the rounded logits given in float32.
    torch.testing.assert_close(value, evaluate(loss, logits.to(half).float(), target))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = evaluate(loss, logits, target)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, reference)


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_follows_the_upstream_gradient_and_survives_a_retained_graph(name):
    """``d (3 L) = 3 dL``, and a second backward through a retained graph gives the same gradient (the losses
    that work out their own gradient must not consume or overwrite what they saved)."""
    loss = make(name).double()
    logits, target = sample(dtype=torch.float64)
    logits.requires_grad_()
    value = evaluate(loss, logits, target)
    (once,) = torch.autograd.grad(value, logits, retain_graph=True)
    (tripled,) = torch.autograd.grad(3.0 * value, logits, retain_graph=True)
    (again,) = torch.autograd.grad(value, logits)
    assert once.abs().sum() > 0
    torch.testing.assert_close(tripled, 3.0 * once, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(again, once, rtol=0, atol=0)


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_accumulate_through_a_view_over_repeated_backwards(name):
    """``.grad`` of a leaf seen through a view sums the backwards of a retained graph, and zeroing it in place
    leaves the next backward whole (a loss that hands autograd a gradient it still holds would see it
    aliased by ``.grad`` and overwritten)."""
    loss = make(name).double()
    logits, target = sample(dtype=torch.float64)
    (once,) = torch.autograd.grad(evaluate(loss, logits.requires_grad_(), target), logits)
    flat = logits.detach().flatten().requires_grad_()
    value = evaluate(loss, flat.view_as(logits), target)
    for _ in range(3):
        value.backward(retain_graph=True)
    torch.testing.assert_close(flat.grad.view_as(once), 3.0 * once, rtol=1e-12, atol=1e-15)
    flat.grad.zero_()
    value.backward()
    torch.testing.assert_close(flat.grad.view_as(once), once, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", LOSSES)
def test_float64_stays_float64(name):
    loss = make(name).double()
    logits, target = sample(dtype=torch.float64)
    assert evaluate(loss, logits, target).dtype == torch.float64


def toy_data(n=4, size=24, seed=0):
    """Blocky label maps (6 px cells) with an ignored band; each class has a colour, plus noise."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, C, (n, size // 6, size // 6), generator=g)
    target = cells.repeat_interleave(6, 1).repeat_interleave(6, 2)
    palette = torch.randn(C, 3, generator=g)
    images = palette[target].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, 3, size, size, generator=g)
    target[:, :, 10:12] = IGNORE
    return images, target


@pytest.mark.parametrize("name", LOSSES)
def test_loss_falls_when_training_a_tiny_net(name):
    loss = make(name)
    torch.manual_seed(0)
    hidden = torch.nn.Sequential(torch.nn.Conv2d(3, FEAT, 3, padding=1), torch.nn.ReLU())
    head = torch.nn.Conv2d(FEAT, C, 1)
    params = list(hidden.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    images, target = toy_data()
    values = []
    for _ in range(20):
        features = hidden(images)
        inputs = (head(features), target) + ((features,) if loss.needs_features else ())
        value = loss(*inputs)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        with torch.no_grad():
            loss.after_step(*(t.detach() for t in inputs))
        values.append(value.item())
    assert all(torch.isfinite(torch.tensor(values)))
    assert values[-1] < values[0], values


CONFIGS = sorted(path.stem for path in Path(CONFIG_DIR, "loss").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS)
def test_loss_config_instantiates_with_every_argument(config):
    cfg = compose_config([f"loss={config}", "data.num_classes=7", "data.ignore_index=250"])
    name = cfg.loss._target_.rpartition(".")[2]
    assert cfg.loss._target_ == f"segrepro.losses.{name}"
    cls = getattr(losses, name)
    signature = inspect.signature(cls).parameters
    raw = OmegaConf.load(Path(CONFIG_DIR, "loss", f"{config}.yaml"))
    assert set(raw) - {"_target_"} == set(signature), "the config lists every constructor argument"
    for key in set(raw) - {"_target_"}:
        if not OmegaConf.is_interpolation(raw, key) and raw[key] is not None:
            assert raw[key] == signature[key].default, f"{config}.yaml: {key}={raw[key]} is not the default"
    extra = {"feat_dim": FEAT} if cfg.loss.get("feat_dim", 0) is None else {}
    loss = hydra.utils.instantiate(cfg.loss, **extra)
    assert isinstance(loss, cls)
    assert loss.ignore_index == 250
    if "num_classes" in signature:
        assert loss.num_classes == 7


def test_every_exported_loss_has_a_config():
    targets = {compose_config([f"loss={config}"]).loss._target_ for config in CONFIGS}
    assert {f"segrepro.losses.{name}" for name in LOSS_CLASSES if name != "SegmentationLoss"} <= targets
