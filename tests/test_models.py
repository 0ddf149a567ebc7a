"""Models: shapes at odd sizes, features, deconv init, multi-grid, gradients, weight loading, config errors."""
import logging
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from segrepro.config import CONFIG_DIR, ModelConfig
from segrepro.models import build_model, load_weights
from segrepro.models.build import PretrainedWeightsError
from segrepro.models.upsampling import LearnedDeconvUpsample

NUM_CLASSES = 5


def small_config(**overrides) -> ModelConfig:
    """resnet18 with a narrow decoder: the real architecture, fast on a CPU."""
    values = dict(arch="deeplabv3plus", encoder="resnet18", output_stride=16,
                  atrous_rates=[6, 12, 18], decoder_channels=32)
    values.update(overrides)
    return ModelConfig(**values)


def build_eval(**overrides):
    torch.manual_seed(0)
    return build_model(small_config(**overrides), NUM_CLASSES).eval()


@pytest.mark.parametrize("arch, size, output_stride", [
    ("deeplabv3", 321, 8), ("deeplabv3", 321, 16), ("deeplabv3plus", 393, 8), ("deeplabv3plus", 393, 16),
])
def test_logits_at_input_resolution_for_odd_sizes(arch, size, output_stride):
    model = build_eval(arch=arch, output_stride=output_stride)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, size, size))
    assert logits.shape == (1, NUM_CLASSES, size, size)


@pytest.mark.parametrize("arch, rates, feature_dim, feature_stride", [
    ("deeplabv2", [6, 12, 18, 24], 512, 16),  # resnet18's last stage; deeplabv2 has no decoder
    ("deeplabv3", [6, 12, 18], 32, 16),
    ("deeplabv3plus", [6, 12, 18], 32, 4),
])
@pytest.mark.slow
@pytest.mark.parametrize("upsampling", ["bilinear", "deconv"])
def test_features_and_logits_shapes(arch, rates, feature_dim, feature_stride, upsampling):
    model = build_eval(arch=arch, atrous_rates=rates, upsampling=upsampling)
    with torch.no_grad():
        logits, features = model(torch.randn(2, 3, 97, 130), return_features=True)
    assert logits.shape == (2, NUM_CLASSES, 97, 130)
    assert model.feature_dim == feature_dim
    assert features.shape == (2, feature_dim, -(-97 // feature_stride), -(-130 // feature_stride))


@pytest.mark.parametrize("name, feature_dim, feature_stride", [
    ("deeplabv2_r101", 2048, 8),
    ("deeplabv3_r101", 256, 16),
    ("deeplabv3_r101s", 256, 16),
    ("deeplabv3plus_r101", 256, 4),
    ("deeplabv3plus_x65", 256, 4),
    ("deeplabv3plus_r18", 256, 4),
])
@pytest.mark.slow
def test_model_yamls_build_and_run_on_an_odd_input(name, feature_dim, feature_stride):
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{name}.yaml")
    cfg.pretrained = False  # no download in tests
    torch.manual_seed(0)
    model = build_model(cfg, 21).eval()
    with torch.no_grad():
        logits, features = model(torch.randn(1, 3, 33, 45), return_features=True)
    assert logits.shape == (1, 21, 33, 45)
    assert model.feature_dim == feature_dim
    assert features.shape == (1, feature_dim, -(-33 // feature_stride), -(-45 // feature_stride))


def last_block(model):
    """The units of the last ResNet block of an smp or timm (``tu-``) encoder."""
    return list(getattr(model.encoder, "model", model.encoder).layer4)


@pytest.mark.parametrize("encoder, output_stride, dilations", [
    ("resnet50", 16, [2, 4, 8]),  # DeepLabv3's (1, 2, 4) at OS 16
    ("resnet50", 8, [4, 8, 16]),  # the rates double at OS 8
    ("tu-resnet50", 16, [2, 4, 8]),  # timm leaves its first unit at rate 1: set too
    ("tu-resnet101s", 16, [2, 4, 8]),  # the deep-stem ("beta") ResNet-101
])
def test_multi_grid_sets_the_rates_of_the_last_block_and_keeps_its_size(encoder, output_stride, dilations):
    model = build_eval(arch="deeplabv3", encoder=encoder, output_stride=output_stride, multi_grid=[1, 2, 4])
    convs = [unit.conv2 for unit in last_block(model)]
    assert [conv.dilation for conv in convs] == [(d, d) for d in dilations]
    assert [conv.padding for conv in convs] == [(d, d) for d in dilations]
    sizes = []
    hooks = [conv.register_forward_hook(lambda m, i, o: sizes.append((i[0].shape[-2:], o.shape[-2:])))
             for conv in convs]
    with torch.no_grad():
        logits, features = model(torch.randn(1, 3, 65, 47), return_features=True)
    for hook in hooks:
        hook.remove()
    cells = (-(-65 // output_stride), -(-47 // output_stride))
    assert sizes == [(cells, cells)] * 3 and features.shape[-2:] == cells
    assert logits.shape == (1, NUM_CLASSES, 65, 47)


def test_without_multi_grid_the_last_block_keeps_one_rate():
    model = build_eval(arch="deeplabv3", encoder="resnet50")
    assert [unit.conv2.dilation for unit in last_block(model)] == [(2, 2)] * 3


def test_deep_stem_resnet101_has_the_zoo_beta_stem():
    """TF DeepLab's resnet_v1_101_beta stem: three 3x3 convolutions, 64, 64 and 128 channels, the first at stride 2."""
    model = build_eval(arch="deeplabv3", encoder="tu-resnet101s")
    stem = [m for m in model.encoder.model.conv1 if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels, c.stride) for c in stem] == [
        ((3, 3), 64, (2, 2)), ((3, 3), 64, (1, 1)), ((3, 3), 128, (1, 1))]


@pytest.mark.parametrize("overrides, message", [
    (dict(encoder="resnet18"), r"bottleneck units .*'resnet18' is not one \(model.multi_grid=null turns it off"),
    (dict(encoder="tu-xception41"), r"needs a ResNet encoder with bottleneck units .*'tu-xception41' is not one"),
    (dict(encoder="resnet50", multi_grid=[1, 2]), r"last block of resnet50 has 3 units, so it needs 3 rates"),
    (dict(encoder="resnet50", multi_grid=[0, 2, 4]), r"model.multi_grid=\[0, 2, 4\]: one rate of at least 1"),
])
def test_multi_grid_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(small_config(**{"arch": "deeplabv3", "multi_grid": [1, 2, 4], **overrides}), NUM_CLASSES)


def test_deeplabv2_head_is_four_atrous_branches_summed():
    model = build_eval(arch="deeplabv2", atrous_rates=[6, 12, 18, 24])
    head = model.segmentation_head
    assert [branch.dilation for branch in head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    features = torch.randn(1, 512, 5, 6)
    with torch.no_grad():
        assert torch.allclose(head(features), sum(branch(features) for branch in head.branches))
        assert head.branches[0](features).shape == (1, NUM_CLASSES, 5, 6)


def test_padding_is_at_the_bottom_right_and_cropped_away():
    """The wrapper pads 50x41 to 64x48 at the bottom/right: the same as padding it by hand, then cropping."""
    model = build_eval(arch="deeplabv3")
    image = torch.randn(1, 3, 50, 41)
    padded = F.pad(image, (0, 48 - 41, 0, 64 - 50))  # a multiple of 16 already: the wrapper adds nothing
    with torch.no_grad():
        assert torch.allclose(model(image), model(padded)[..., :50, :41], atol=1e-6)


@pytest.mark.parametrize("factor", [4, 8, 16])
def test_deconv_starts_as_bilinear_upsampling(factor):
    """Equal everywhere (border included) to F.interpolate(align_corners=False).

    The bilinear taps are dyadic fractions (exact in float32) and each output
    sums 4 products of values of order 1: float32 rounding stays below 1e-6,
    so 1e-5 is a safe bound that a wrong tap or a one-pixel shift would break.
    """
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, 9)
    upsampled = LearnedDeconvUpsample(3, factor)(logits)
    expected = F.interpolate(logits, scale_factor=factor, mode="bilinear", align_corners=False)
    assert upsampled.shape == expected.shape == (2, 3, 7 * factor, 9 * factor)
    assert torch.allclose(upsampled, expected, atol=1e-5)


def test_deconv_model_equals_bilinear_model_at_init():
    bilinear = build_eval(arch="deeplabv2", atrous_rates=[6, 12, 18, 24])
    deconv = build_eval(arch="deeplabv2", atrous_rates=[6, 12, 18, 24], upsampling="deconv")
    report = deconv.load_state_dict(bilinear.state_dict(), strict=False)
    assert report.missing_keys == ["upsample.deconv.weight"]
    image = torch.randn(1, 3, 45, 39)
    with torch.no_grad():
        assert torch.allclose(deconv(image), bilinear(image), atol=1e-5)


@pytest.mark.parametrize("arch, rates", [("deeplabv2", [6, 12]), ("deeplabv3plus", [6, 12, 18])])
def test_gradients_reach_every_parameter(arch, rates):
    torch.manual_seed(0)
    model = build_model(small_config(arch=arch, atrous_rates=rates, upsampling="deconv"), NUM_CLASSES).train()
    logits, features = model(torch.randn(2, 3, 65, 47), return_features=True)
    (logits.square().mean() + features.mean()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    assert model.upsample.deconv.weight.grad.abs().sum() > 0


def test_weights_round_trip_from_state_dict_and_checkpoint(tmp_path):
    source = build_eval(arch="deeplabv3")
    image = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        expected = source(image)
    torch.save(source.state_dict(), tmp_path / "raw.pt")
    ddp_state = {f"module.{key}": value for key, value in source.state_dict().items()}
    torch.save({"model": ddp_state, "iteration": 7}, tmp_path / "ckpt.pt")
    for name in ("raw.pt", "ckpt.pt"):
        torch.manual_seed(1)  # a different init, overwritten by the file
        cfg = small_config(arch="deeplabv3", weights=str(tmp_path / name))
        model = build_model(cfg, NUM_CLASSES).eval()
        with torch.no_grad():
            assert torch.allclose(model(image), expected), name


def test_weights_report_names_extra_missing_and_mismatched_keys(tmp_path, caplog):
    model = build_eval(arch="deeplabv3")
    state = model.state_dict()
    missing_key = "segmentation_head.0.bias"
    del state[missing_key]
    state["extra.weight"] = torch.zeros(3)
    state["segmentation_head.0.weight"] = torch.zeros(21, 32, 1, 1)  # another number of classes
    torch.save(state, tmp_path / "partial.pt")
    with caplog.at_level(logging.WARNING, logger="segrepro.models.weights"):
        report = load_weights(model, tmp_path / "partial.pt")
    assert report.target == "model"
    assert report.missing == [missing_key]
    assert report.unexpected == ["extra.weight"]
    assert report.mismatched == ["segmentation_head.0.weight: file [21, 32, 1, 1] vs model [5, 32, 1, 1]"]
    assert len(report.loaded) == len(state) - 2
    assert missing_key in caplog.text and "extra.weight" in caplog.text and "[21, 32, 1, 1]" in caplog.text
    assert model.segmentation_head[0].weight.abs().sum() > 0  # the mismatched tensor was skipped


def test_encoder_only_weights_go_into_the_encoder(tmp_path):
    """A torchvision-style ResNet state dict (no ``encoder.`` prefix, with ``fc``) loads into model.encoder."""
    donor = build_eval(arch="deeplabv2", atrous_rates=[6])
    backbone = dict(donor.encoder.state_dict(), **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save(backbone, tmp_path / "resnet18.pth")
    torch.manual_seed(1)
    model = build_model(small_config(arch="deeplabv2", atrous_rates=[6]), NUM_CLASSES)
    report = load_weights(model, tmp_path / "resnet18.pth")
    assert report.target == "model.encoder"
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert report.missing == []
    assert torch.equal(model.encoder.conv1.weight, donor.encoder.conv1.weight)


def test_weights_errors_name_the_file(tmp_path):
    model = build_eval()
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_weights(model, tmp_path / "nowhere.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_weights(model, tmp_path / "garbage.pt")
    torch.save({"some.other.net": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="no tensor of .*foreign.pt fits"):
        load_weights(model, tmp_path / "foreign.pt")


@pytest.mark.parametrize("overrides, message", [
    (dict(arch="unet"), r"model.arch='unet' is not one of \['deeplabv2', 'deeplabv3', 'deeplabv3plus'\]"),
    (dict(output_stride=32), r"model.output_stride=32 is not one of \[8, 16\]"),
    (dict(upsampling="nearest"), r"model.upsampling='nearest' is not one of \['bilinear', 'deconv'\]"),
    (dict(atrous_rates=[6, 12]), r"deeplabv3plus needs 3 rates"),
    (dict(encoder="resnet1001"), r"model.encoder='resnet1001' is not an smp encoder"),
    (dict(encoder="tu-xception1001"), r"timm has no model 'xception1001'"),
])
def test_bad_config_errors_list_the_choices(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(small_config(**overrides), NUM_CLASSES)


def test_dict_configs_are_accepted_and_unknown_keys_rejected():
    cfg = OmegaConf.create({"arch": "deeplabv3", "encoder": "resnet18", "decoder_channels": 16})
    assert build_model(cfg, NUM_CLASSES).feature_dim == 16
    with pytest.raises(ValueError, match="valid keys: .*'arch'"):
        build_model({"arch": "deeplabv3", "depth": 3}, NUM_CLASSES)


def test_pretrained_without_network_stops_and_says_where_the_weights_go(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(PretrainedWeightsError) as error:
        build_model(small_config(pretrained=True), NUM_CLASSES)
    message = str(error.value)
    assert "ImageNet weights of encoder resnet18 cannot be loaded" in message
    assert "smp-hub/resnet18.imagenet" in message and str(tmp_path / "hub") in message
    assert "model.weights=PATH" in message and "model.pretrained=false" in message


def test_pretrained_with_a_local_weights_file_downloads_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = build_model(small_config(), NUM_CLASSES)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    model = build_model(small_config(pretrained=True, weights=str(tmp_path / "weights.pt")), NUM_CLASSES)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), model.state_dict().values()))


def test_no_weights_at_all_warns_random_init(caplog):
    with caplog.at_level(logging.WARNING, logger="segrepro.models.build"):
        build_model(small_config(), NUM_CLASSES)
    assert "trains from scratch (random init)" in caplog.text
