"""CenterLoss against loop-based float64 references written from the spec (Wen et al. 2016)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from segrepro.losses import CenterLoss

IGNORE = 255


def nearest_labels(target, size):
    """The label map at ``size``: source pixel ``floor(i * H / h)`` in each direction."""
    n, height, width = target.shape
    h, w = size
    out = torch.empty(n, h, w, dtype=torch.long)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = target[:, (i * height) // h, (j * width) // w]
    return out


def reference_center_term(features, target, centers):
    labels = nearest_labels(target, features.shape[2:])
    total, count = 0.0, 0
    for b in range(features.shape[0]):
        for i in range(features.shape[2]):
            for j in range(features.shape[3]):
                y = int(labels[b, i, j])
                if y != IGNORE:
                    total = total + 0.5 * ((features[b, :, i, j] - centers[y]) ** 2).sum()
                    count += 1
    return total / max(count, 1)


def reference_update(centers, features, target, alpha):
    labels = nearest_labels(target, features.shape[2:])
    new = centers.clone()
    for j in range(centers.shape[0]):
        diffs = [centers[j] - features[b, :, i, k]
                 for b in range(features.shape[0]) for i in range(features.shape[2])
                 for k in range(features.shape[3]) if int(labels[b, i, k]) == j]
        if diffs:
            new[j] = centers[j] - alpha * torch.stack(diffs).sum(0) / (1 + len(diffs))
    return new


def sample(n=2, c=4, dim=3, size=(9, 10), fsize=(3, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, *size, dtype=torch.float64, generator=g)
    features = torch.randn(n, dim, *fsize, dtype=torch.float64, generator=g)
    target = torch.randint(0, c, (n, *size), generator=g)
    target[torch.rand(n, *size, generator=g) < 0.3] = IGNORE
    return logits, target, features


def make_loss(c=4, dim=3, seed=0, **kwargs):
    loss = CenterLoss(c, dim, **kwargs).double()
    loss.centers.copy_(torch.randn(c, dim, generator=torch.Generator().manual_seed(seed + 100)))
    return loss


def test_nearest_rule_is_floor_of_scaled_index():
    _, target, features = sample()
    loss = make_loss()
    _, labels, _ = loss._features_and_labels(features, target)
    assert torch.equal(labels, nearest_labels(target, features.shape[2:]))


def test_value_and_feature_gradient_match_reference():
    logits, target, features = sample(seed=1)
    loss = make_loss(seed=1, lam=0.1)
    f1 = features.clone().requires_grad_()
    f2 = features.clone().requires_grad_()
    value = loss(logits, target, f1)
    center = reference_center_term(f2, target, loss.centers)
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE) + 0.1 * center
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    value.backward()
    center.backward()
    torch.testing.assert_close(f1.grad, 0.1 * f2.grad, rtol=1e-12, atol=1e-15)
    assert not loss.centers.requires_grad and loss.centers.grad is None


def test_terms_are_the_unweighted_parts():
    logits, target, features = sample(seed=2)
    loss = make_loss(seed=2)
    terms = loss.terms(logits, target, features)
    assert set(terms) == {"ce", "center"}
    torch.testing.assert_close(terms["center"], reference_center_term(features, target, loss.centers))
    torch.testing.assert_close(terms["ce"] + loss.lam * terms["center"], loss(logits, target, features))


def test_gradcheck():
    logits, target, features = sample(n=1, c=3, dim=2, size=(4, 4), fsize=(2, 2), seed=3)
    loss = make_loss(c=3, dim=2, seed=3, lam=0.5)
    logits.requires_grad_()
    features.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, f: loss(x, target, f), (logits, features))


def test_update_centers_matches_wen_et_al():
    _, target, features = sample(seed=4)
    loss = make_loss(seed=4, alpha=0.5)
    absent = 3
    target[target == absent] = IGNORE  # a class with no pixel keeps its center
    expected = reference_update(loss.centers, features, target, 0.5)
    loss.update_centers(features, target)
    torch.testing.assert_close(loss.centers, expected, rtol=1e-12, atol=1e-15)
    assert torch.equal(loss.centers[absent], make_loss(seed=4).centers[absent])


def test_centers_are_a_buffer_in_the_state_dict():
    loss = make_loss(seed=5)
    assert "centers" in loss.state_dict() and not list(loss.parameters())
    fresh = CenterLoss(4, 3).double()
    assert torch.count_nonzero(fresh.centers) == 0  # zeros at start
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.centers, loss.centers)


def _ddp_worker(rank, world_size, init_file, features, target, result):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        loss = make_loss(seed=6)
        loss.update_centers(features[rank::world_size], target[rank::world_size])
        result[rank].copy_(loss.centers)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_update_sums_statistics_across_ranks(tmp_path):
    _, target, features = sample(n=4, seed=6)
    single = make_loss(seed=6)
    single.update_centers(features, target)
    result = torch.zeros(2, *single.centers.shape, dtype=torch.float64).share_memory_()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), features, target, result), nprocs=2)
    torch.testing.assert_close(result[0], single.centers, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(result[1], single.centers, rtol=1e-12, atol=1e-15)


def test_all_ignored_features_give_ce_only():
    logits, target, features = sample(seed=7)
    target[:, :, :] = IGNORE
    target[:, 1, 1] = 0  # valid at label resolution, not picked by the nearest resize
    loss = make_loss(seed=7)
    assert loss.terms(logits, target, features)["center"].item() == 0.0
    before = loss.centers.clone()
    loss.update_centers(features, target)
    assert torch.equal(loss.centers, before)


@pytest.mark.parametrize("features,match", [
    (torch.randn(2, 3, 4), "features"),
    (torch.randn(2, 5, 3, 4), "feat_dim=3"),
    (torch.randn(3, 3, 3, 4), "batch"),
    (torch.zeros(2, 3, 3, 4, dtype=torch.long), "features"),
])
def test_bad_features(features, match):
    logits, target, _ = sample()
    with pytest.raises(ValueError, match=match):
        make_loss()(logits, target, features)
    with pytest.raises(ValueError, match=match):
        make_loss().update_centers(features, target)


def test_update_rejects_out_of_range_labels():
    _, target, features = sample()
    target[0, 0, 0] = 7
    with pytest.raises(ValueError, match="label 7"):
        make_loss().update_centers(features, target)


@pytest.mark.parametrize("kwargs", [{"num_classes": 4, "feat_dim": None}, {"num_classes": 0, "feat_dim": 3},
                                    {"num_classes": 4, "feat_dim": 2.5}])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        CenterLoss(**kwargs)
