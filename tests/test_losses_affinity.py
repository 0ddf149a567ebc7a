"""AffinityFieldLoss against a direct, loop-based reading of the spec (Ke et al. 2018, non-adaptive)."""
from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import segrepro.losses._chunks as chunks
from segrepro.losses import AffinityFieldLoss

IGNORE = 255
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "loss" / "affinity.yaml"


def sample(n=2, c=3, size=7, seed=0, scale=2.0):
    """float64 logits and labels with ignored pixels, on the border too (a whole row, a corner)."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, c, size, size, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n, size, size), generator=g)
    target[torch.rand(n, size, size, generator=g) < 0.15] = IGNORE
    target[0, 0, 0] = IGNORE
    target[1, 0, :] = IGNORE
    return logits, target


def official_ignores(target, kernel_size=3):
    """The official AAF code's ``ignores_from_label``, transcribed in numpy: ``{(dy, dx): [N, H, W] bool}``,
    true where the pair (center, center + (dy, dx)) is ignored. The ignore map is padded with True (outside
    the image counts as ignored); a pair is ignored when the center, the neighbour or the pixel on the
    opposite side of the center (center - (dy, dx)) is."""
    s = kernel_size // 2
    ignore = target.numpy() == IGNORE
    _, h, w = ignore.shape
    padded = np.pad(ignore, ((0, 0), (s, s), (s, s)), constant_values=True)

    def at(dy, dx):  # the ignore map of the pixels at offset (dy, dx) from each center
        return padded[:, s + dy: s + dy + h, s + dx: s + dx + w]
    return {(dy, dx): ignore | at(dy, dx) | at(-dy, -dx)
            for dy in (-s, 0, s) for dx in (-s, 0, s) if (dy, dx) != (0, 0)}


def reference(logits, target, kernel_size=3, margin=3.0, official_pairs=True):
    """``(ce, edge, non_edge)`` by loops over pixels, the 8 offsets {-s, 0, s}^2 minus the center, classes; with
    ``official_pairs`` the pairs of :func:`official_ignores` are dropped too."""
    p = torch.softmax(logits, 1)
    n_, c_, h, w = logits.shape
    s = kernel_size // 2
    valid = target != IGNORE
    dropped = official_ignores(target, kernel_size) if official_pairs else None
    edges, non_edges = [], []
    for n in range(n_):
        for i in range(h):
            for j in range(w):
                if not valid[n, i, j]:
                    continue
                for dy in (-s, 0, s):
                    for dx in (-s, 0, s):
                        a, b = i + dy, j + dx
                        if (dy, dx) == (0, 0) or not (0 <= a < h and 0 <= b < w) or not valid[n, a, b]:
                            continue
                        if official_pairs and dropped[dy, dx][n, i, j]:
                            continue
                        for c in range(c_):
                            pc, pn = p[n, c, i, j], p[n, c, a, b]
                            big_pc, big_pn = pc.clamp(1e-4, 1), pn.clamp(1e-4, 1)
                            big_qc, big_qn = (1 - pc).clamp(1e-4, 1), (1 - pn).clamp(1e-4, 1)
                            kl = big_pn * torch.log(big_pn / big_pc) + big_qn * torch.log(big_qn / big_qc)
                            if (target[n, i, j] == c) != (target[n, a, b] == c):
                                edges.append((margin - kl).clamp(min=0))
                            else:
                                non_edges.append(kl)
    zero = logits.sum() * 0
    return (F.cross_entropy(logits, target, ignore_index=IGNORE),
            torch.stack(edges).mean() if edges else zero, torch.stack(non_edges).mean() if non_edges else zero)


def assert_matches_reference(loss, logits, target, kernel_size, **rule) -> dict:
    """``loss`` (margin 2, lam_edge 0.7, lam_nonedge 1.3) at progress 0.4 against the loop reference:
    value, gradient and terms; returns the terms."""
    loss.set_progress(0.4)
    x = logits.clone().requires_grad_()
    value = loss(x, target)
    (grad,) = torch.autograd.grad(value, x)
    x_ref = logits.clone().requires_grad_()
    ce, edge, non_edge = reference(x_ref, target, kernel_size, margin=2.0, **rule)
    expected = ce + 10 ** -0.4 * (0.7 * edge + 1.3 * non_edge)
    (grad_ref,) = torch.autograd.grad(expected, x_ref)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-13)
    terms = loss.terms(logits, target)
    for key, ref in zip(("ce", "edge", "non_edge"), (ce, edge, non_edge)):
        torch.testing.assert_close(terms[key], ref.detach(), rtol=1e-12, atol=1e-12)
    return terms


@pytest.mark.slow
@pytest.mark.parametrize("official_pairs", [True, False])
@pytest.mark.parametrize("kernel_size", [3, 5, 1])
@pytest.mark.parametrize("chunk", [8, 2])
def test_value_terms_and_gradient_match_loop_reference(kernel_size, chunk, official_pairs, monkeypatch):
    monkeypatch.setattr(chunks, "CLASS_CHUNK", chunk)  # 2: three classes in two chunks
    logits, target = sample()
    loss = AffinityFieldLoss(kernel_size=kernel_size, margin=2.0, lam_edge=0.7, lam_nonedge=1.3,
                             official_pairs=official_pairs)
    terms = assert_matches_reference(loss, logits, target, kernel_size, official_pairs=official_pairs)
    if kernel_size > 1:
        assert 0 < terms["edge"] < 2.0 and 0 < terms["non_edge"]


def test_clipping_of_saturated_probabilities():
    # Logits far apart put p below 1e-4 and 1 - p below 1e-4: both clippings are active (no NaN).
    logits, target = sample(scale=12.0, seed=3)
    p = torch.softmax(logits, 1)
    assert (p < 1e-4).any() and (1 - p < 1e-4).any()
    value = AffinityFieldLoss()(logits, target)
    ce, edge, non_edge = reference(logits, target)
    torch.testing.assert_close(value, ce + edge + non_edge, rtol=1e-12, atol=1e-12)


def test_set_progress_scales_the_affinity_terms_by_the_decay():
    logits, target = sample()
    loss = AffinityFieldLoss()
    ce = loss.terms(logits, target)["ce"]
    start = loss(logits, target) - ce
    loss.set_progress(0.5)
    torch.testing.assert_close(loss(logits, target) - ce, start * 10**-0.5)
    loss.set_progress(1.0)
    torch.testing.assert_close(loss(logits, target) - ce, start / 10)
    fixed = AffinityFieldLoss(decay=False)
    fixed.set_progress(1.0)
    torch.testing.assert_close(fixed(logits, target) - ce, start)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            loss.set_progress(bad)


def test_single_label_has_no_edges():
    logits, _ = sample()
    target = torch.zeros(2, 7, 7, dtype=torch.long)
    target[0, 3, 3] = IGNORE
    terms = AffinityFieldLoss().terms(logits, target)
    assert terms["edge"] == 0 and torch.isfinite(terms["non_edge"]) and terms["non_edge"] > 0


def test_pair_beside_an_ignored_pixel_is_kept():
    # The official code also drops a pair whose opposite neighbour is ignored; the spec keeps it.
    logits = torch.zeros(1, 2, 1, 3, dtype=torch.float64)
    logits[0, 0, 0, 1] = 1.0
    target = torch.tensor([[[IGNORE, 0, 1]]])
    terms = AffinityFieldLoss(margin=5.0, official_pairs=False).terms(logits, target)
    _, edge, non_edge = reference(logits, target, margin=5.0, official_pairs=False)
    torch.testing.assert_close(terms["edge"], edge)
    assert terms["edge"] > 0 and terms["non_edge"] == 0  # two pixels, different labels: edges only


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_official_pairs_drop_the_pair_beside_an_ignored_pixel_and_the_border(impl):
    # The pair (0 -> 1) has the ignored pixel opposite, the pair (1 -> 0) the outside of the image: both dropped.
    logits = torch.zeros(1, 2, 1, 3, dtype=torch.float64)
    logits[0, 0, 0, 1] = 1.0
    target = torch.tensor([[[IGNORE, 0, 1]]])
    assert all(m.all() for m in official_ignores(target).values())
    loss = AffinityFieldLoss(margin=5.0, impl=impl)
    terms = loss.terms(logits, target)
    assert terms["edge"] == 0 and terms["non_edge"] == 0
    torch.testing.assert_close(loss(logits, target), terms["ce"], rtol=1e-15, atol=0)


def test_official_transcription_drops_the_border_pairs():
    # 17x17, nothing ignored: the official rule keeps (17 - 2)(17 - 2 |d|) pairs per direction instead of
    # (17 - |dy|)(17 - |dx|): 1,920 of 2,112, the pairs whose opposite pixel is outside (9 %).
    target = torch.zeros(1, 17, 17, dtype=torch.long)
    dropped = official_ignores(target)
    assert sum(int((~m).sum()) for m in dropped.values()) == 4 * 17 * 15 + 4 * 15 * 15 == 1920
    assert all(not m[0, 1:-1, 1:-1].any() for m in dropped.values())  # interior: no pair dropped


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_official_pairs_match_the_transcription(kernel_size, impl, monkeypatch):
    """Fast path and reference against the loop oracle with the official rule, values, terms and gradients;
    the spec's rule gives another value on the same inputs."""
    monkeypatch.setattr(chunks, "CLASS_CHUNK", 2)  # three classes in two chunks
    logits, target = sample(size=9, seed=4)
    loss = AffinityFieldLoss(kernel_size=kernel_size, margin=2.0, lam_edge=0.7, lam_nonedge=1.3, impl=impl)
    terms = assert_matches_reference(loss, logits, target, kernel_size)
    _, spec_edge, spec_non_edge = reference(logits, target, kernel_size, margin=2.0, official_pairs=False)
    assert abs(float(spec_non_edge - terms["non_edge"])) > 1e-4


@pytest.mark.parametrize("kernel_size", [2, 0, -3, 3.0])
def test_bad_kernel_size_raises(kernel_size):
    with pytest.raises(ValueError):
        AffinityFieldLoss(kernel_size=kernel_size)


def test_inputs_are_not_modified():
    logits, target = sample()
    logits = logits.contiguous(memory_format=torch.channels_last)
    before = logits.clone()
    AffinityFieldLoss()(logits.requires_grad_(), target).backward()
    assert torch.equal(logits.detach(), before)


def test_config_instantiates_with_ignore_index():
    cfg = OmegaConf.create({"data": {"ignore_index": 255, "num_classes": 3}, "loss": OmegaConf.load(CONFIG)})
    loss = hydra.utils.instantiate(cfg.loss)
    assert isinstance(loss, AffinityFieldLoss) and loss.ignore_index == 255
    assert (loss.kernel_size, loss.margin, loss.lam_edge, loss.lam_nonedge, loss.decay) == (3, 3.0, 1.0, 1.0, True)
