"""LADLoss against a loop-based float64 reference written from the spec (LAD Sec. 3)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segrepro.losses import LADLoss

IGNORE = 255


def reference_local(logits, target, kernel_size, stride):
    """Spec steps 1-3 and 5, one pixel and one window offset at a time."""
    n, c, height, width = logits.shape
    r = kernel_size // 2
    x = torch.empty_like(logits)
    for b in range(n):
        for i in range(height):
            for j in range(width):
                v = logits[b, :, i, j]
                mean = v.mean()
                std = ((v - mean) ** 2).mean().sqrt()
                x[b, :, i, j] = (v - mean) / (std + 1e-5)
    local = torch.zeros(n, height, width, dtype=logits.dtype)
    valid = torch.zeros(n, height, width, dtype=torch.bool)
    for b in range(n):
        for i in range(0, height, stride):
            for j in range(0, width, stride):
                y = int(target[b, i, j])
                if y == IGNORE:
                    continue
                f = torch.zeros(c, dtype=logits.dtype)
                xi = 0
                for u in range(-r, r + 1):
                    for v in range(-r, r + 1):
                        a, e = i + u, j + v
                        if 0 <= a < height and 0 <= e < width and int(target[b, a, e]) == y:
                            f = f + 2.0 ** (1 - max(abs(u), abs(v))) * x[b, :, a, e]
                            xi += 1
                f = f / xi
                local[b, i, j] = -torch.log_softmax(f, 0)[y]
                valid[b, i, j] = True
    return local, valid


def reference_loss(logits, target, kernel_size, k, stride, pool="image"):
    """Spec step 4 (Eq. 5): the Minkowski pooling over each image's valid centers, then the mean over the
    images that have one (``pool="image"``), or over the valid centers of the whole batch (``"batch"``)."""
    local, valid = reference_local(logits, target, kernel_size, stride)
    if pool == "batch":
        return local[valid].pow(k).mean().pow(1.0 / k)
    per_image = []
    for b in range(len(local)):
        if valid[b].any():
            per_image.append(local[b][valid[b]].pow(k).mean().pow(1.0 / k))
    return sum(per_image) / len(per_image)


def sample(n=2, c=4, height=7, width=9, classes=3, ignore_fraction=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, height, width, dtype=torch.float64, generator=g)
    target = torch.randint(0, classes, (n, height, width), generator=g)
    target[torch.rand(n, height, width, generator=g) < ignore_fraction] = IGNORE
    return logits, target


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_local_losses_match_reference(kernel_size, stride):
    logits, target = sample()
    local, valid = LADLoss(kernel_size, stride=stride).local_losses(logits, target)
    ref_local, ref_valid = reference_local(logits, target, kernel_size, stride)
    assert local.shape == target.shape and valid.dtype == torch.bool
    assert torch.equal(valid, ref_valid)
    torch.testing.assert_close(local, ref_local, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool", ["image", "batch"])
@pytest.mark.parametrize("kernel_size,k,stride", [(3, 3.0, 1), (5, 1.0, 1), (3, 2.5, 2), (7, 5.0, 1), (3, 0.5, 1)])
def test_loss_and_gradient_match_reference(kernel_size, k, stride, pool):
    logits, target = sample(seed=1)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    value = LADLoss(kernel_size, k=k, stride=stride, pool=pool)(a, target)
    expected = reference_loss(b, target, kernel_size, k, stride, pool)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    value.backward()
    expected.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def regions(seed=0):
    """Labels in large blocks with an ignored band and stray ignored pixels, on 2 images of 14 x 17: centers
    whose whole window is one label next to centers at label edges, ignored pixels and the border."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 14, 17, dtype=torch.float64, generator=g)
    target = torch.zeros(2, 14, 17, dtype=torch.long)
    target[0, :, 9:] = 2
    target[0, 10:, :5] = 1
    target[1, 6:, :] = 3
    target[1, 3, 4:11] = IGNORE
    target[torch.rand(2, 14, 17, generator=g) < 0.02] = IGNORE
    return logits, target


@pytest.mark.slow
@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (5, 1), (7, 1), (3, 2), (5, 3)])
def test_block_labels_match_reference(kernel_size, stride):
    logits, target = regions(seed=kernel_size + stride)
    loss = LADLoss(kernel_size, stride=stride)
    local, valid = loss.local_losses(logits, target)
    ref_local, ref_valid = reference_local(logits, target, kernel_size, stride)
    assert torch.equal(valid, ref_valid)
    torch.testing.assert_close(local, ref_local, rtol=1e-12, atol=1e-12)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss(a, target).backward()
    reference_loss(b, target, kernel_size, 3.0, stride).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (5, 2)])
def test_gradcheck(kernel_size, stride):
    logits, target = sample(n=1, c=3, height=5, width=6, seed=2)
    logits.requires_grad_()
    loss = LADLoss(kernel_size, stride=stride)
    assert torch.autograd.gradcheck(lambda z: loss(z, target), (logits,))


def test_kernel_1_is_minkowski_pooled_ce_of_doubled_standardized_logits():
    # Kernel 1: xi = 1 and w = 2^(1 - 0) = 2 at the center, so f = 2 x.
    logits, target = sample(seed=3)
    std = logits.std(dim=1, unbiased=False, keepdim=True)
    x = (logits - logits.mean(dim=1, keepdim=True)) / (std + 1e-5)
    ce = F.cross_entropy(2 * x, target, ignore_index=IGNORE, reduction="none")
    valid = target != IGNORE
    for k in (1.0, 3.0):
        expected = ce[valid].pow(k).mean().pow(1 / k)
        torch.testing.assert_close(LADLoss(1, k=k, pool="batch")(logits, target), expected, rtol=1e-12, atol=0)


def test_corner_of_uniform_image_pools_the_in_image_part_of_the_window():
    logits = torch.randn(1, 3, 3, 3, dtype=torch.float64)
    target = torch.zeros(1, 3, 3, dtype=torch.long)
    local, _ = LADLoss(3).local_losses(logits, target)
    x = (logits - logits.mean(1, keepdim=True)) / (logits.std(1, unbiased=False, keepdim=True) + 1e-5)
    corner = (2 * x[0, :, 0, 0] + x[0, :, 0, 1] + x[0, :, 1, 0] + x[0, :, 1, 1]) / 4
    center = (x[0].sum((1, 2)) + x[0, :, 1, 1]) / 9
    torch.testing.assert_close(local[0, 0, 0], -torch.log_softmax(corner, 0)[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(local[0, 1, 1], -torch.log_softmax(center, 0)[0], rtol=1e-12, atol=0)


def test_ignored_and_other_label_neighbours_do_not_contribute():
    logits, _ = sample(n=1, c=4, height=5, width=5, seed=4)
    target = torch.full((1, 5, 5), IGNORE)
    target[0, 2, 2] = 1  # a lone pixel among ignored ones ...
    target[0, 0, :] = 2  # ... and a row of another class within its 5x5 window
    logits.requires_grad_()
    loss = LADLoss(5)
    local, valid = loss.local_losses(logits, target)
    x = (logits - logits.mean(1, keepdim=True)) / (logits.std(1, unbiased=False, keepdim=True) + 1e-5)
    lone = -torch.log_softmax(2 * x[0, :, 2, 2], 0)[1]
    torch.testing.assert_close(local[0, 2, 2], lone, rtol=1e-12, atol=0)
    assert int(valid.sum()) == 6
    # The gradient of L_S at the lone pixel reaches its own logits only.
    (grad,) = torch.autograd.grad(local[0, 2, 2], logits)
    assert grad[0, :, 2, 2].abs().sum() > 0
    grad[0, :, 2, 2] = 0
    assert torch.count_nonzero(grad) == 0
    # Ignored pixels get no gradient from the loss, whatever their logits.
    (grad,) = torch.autograd.grad(loss(logits, target), logits)
    assert torch.count_nonzero(grad[:, :, target[0] == IGNORE]) == 0


def test_stride_takes_every_stride_th_center_from_the_origin():
    logits, target = sample(height=8, width=7, seed=5)
    full, full_valid = LADLoss(3).local_losses(logits, target)
    local, valid = LADLoss(3, stride=3).local_losses(logits, target)
    grid = torch.zeros_like(valid)
    grid[:, ::3, ::3] = True
    assert torch.equal(valid, full_valid & grid)
    torch.testing.assert_close(local[valid], full[valid], rtol=1e-12, atol=0)
    assert torch.count_nonzero(local[~valid]) == 0
    expected = full[valid].pow(3).mean().pow(1 / 3)
    torch.testing.assert_close(LADLoss(3, stride=3, pool="batch")(logits, target), expected, rtol=1e-12, atol=0)


def test_minkowski_exponent():
    logits, target = sample(seed=6)
    local, valid = LADLoss(3).local_losses(logits, target)
    local = local[valid]
    torch.testing.assert_close(LADLoss(3, k=1.0, pool="batch")(logits, target), local.mean(), rtol=1e-12, atol=0)
    values = [float(LADLoss(3, k=k, pool="batch")(logits, target)) for k in (1.0, 2.0, 3.0, 5.0, 200.0)]
    assert values == sorted(values) and values[0] < values[-1]  # power means grow with k ...
    assert values[-1] == pytest.approx(float(local.max()), rel=0.05)  # ... towards the max


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_pooling_scope_per_image_or_over_the_batch(impl):
    """Eq. 5 per image is the mean of each image's loss computed alone (an image without a valid center left
    out); over the batch it weighs each image by its number of valid centers, so the two differ when the
    images have different numbers of valid centers."""
    logits, target = sample(n=3, seed=9)
    target[1, :, 4:] = IGNORE  # image 1: fewer valid centers than image 0
    target[2] = IGNORE  # image 2: none
    valid = target != IGNORE
    assert 0 < valid[1].sum() < valid[0].sum()
    loss = {pool: LADLoss(3, k=3.0, pool=pool, impl=impl) for pool in ("image", "batch")}
    x = logits.clone().requires_grad_()
    alone = [loss["image"](x[b: b + 1], target[b: b + 1]) for b in range(2)]
    assert all(value > 0 for value in alone)
    local, centers = LADLoss(3).local_losses(logits, target)
    for b, value in enumerate(alone):  # one image: both scopes are Eq. 5 over its valid centers
        torch.testing.assert_close(value, local[b][centers[b]].pow(3).mean().pow(1 / 3), rtol=1e-12, atol=0)
        torch.testing.assert_close(value, loss["batch"](x[b: b + 1], target[b: b + 1]), rtol=1e-12, atol=0)
    image, batch = loss["image"](x, target), loss["batch"](x, target)
    expected = (alone[0] + alone[1]) / 2
    torch.testing.assert_close(image, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(batch, local[centers].pow(3).mean().pow(1 / 3), rtol=1e-12, atol=0)
    assert abs(float(image.detach() - batch.detach())) > 1e-3
    (grad,) = torch.autograd.grad(image, x, retain_graph=True)
    (grad_expected,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-10, atol=1e-14)
    assert torch.count_nonzero(grad[2]) == 0


def test_pool_is_checked():
    with pytest.raises(ValueError, match="pool"):
        LADLoss(pool="images")


def test_terms():
    logits, target = sample(seed=7)
    loss = LADLoss(5)
    terms = loss.terms(logits, target)
    local, valid = loss.local_losses(logits, target)
    assert set(terms) == {"lad", "local_mean", "local_max"}
    torch.testing.assert_close(terms["lad"], loss(logits, target))
    torch.testing.assert_close(terms["local_mean"], local[valid].mean())
    torch.testing.assert_close(terms["local_max"], local[valid].max())


def test_no_valid_center_on_the_stride_grid_gives_zero_with_graph():
    logits, target = sample(height=4, width=4, ignore_fraction=0.0, seed=8)
    target[:, ::2, ::2] = IGNORE  # valid pixels exist, but none on the stride-2 grid
    logits.requires_grad_()
    value = LADLoss(3, stride=2)(logits, target)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_constant_logits_give_finite_gradients():
    # std = 0 (e.g. a zero-initialised classifier): no NaN in the backward.
    logits = torch.zeros(1, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (1, 5, 5))
    value = LADLoss(3)(logits, target)
    torch.testing.assert_close(value, torch.tensor(4.0, dtype=torch.float64).log())
    value.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("kwargs", [{"kernel_size": 4}, {"kernel_size": 0}, {"kernel_size": -3},
                                    {"kernel_size": 3.0}, {"stride": 0}, {"stride": 1.5}, {"k": 0.0},
                                    {"k": -1.0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        LADLoss(**kwargs)


def _bench():
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_losses.py"
    spec = importlib.util.spec_from_file_location("bench_losses", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_memory_does_not_grow_with_the_window():
    # An unfold of the logits would hold kernel_size^2 copies of them: 121x for kernel 11.
    bench = _bench()
    logits = torch.randn(1, 8, 48, 48)
    target = torch.randint(0, 3, (1, 48, 48))

    def peak(kernel_size):
        leaf = logits.clone().requires_grad_()
        loss = LADLoss(kernel_size)
        return bench.peak_extra_bytes(lambda: loss(leaf, target).backward(), torch.device("cpu"))

    small, large = peak(3), peak(11)
    assert small > logits.numel() * 4  # the measurement sees the gradient at least
    assert large <= 1.1 * small
