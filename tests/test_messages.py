"""The mistakes a new user makes get one clear line: what is wrong, the key or file, the way out."""
from __future__ import annotations

import pytest
import torch

from segrepro.config import ConfigError, check_overrides, compose_config, group_choices
from segrepro.engine.checkpoint import load_checkpoint, resume_checkpoint
from segrepro.evaluate import evaluate_checkpoint


@pytest.mark.parametrize("override, message", [
    ("experiment=ssl/voc_deeplab", "experiment=ssl/voc_deeplab: there is no config 'experiment/ssl/voc_deeplab.yaml'; "
                                   "available experiment choices: lad/voc_deeplabv2, ssl/cityscapes_deeplabv3,"),
    ("loss=ssll", "loss=ssll: there is no config 'loss/ssll.yaml'; available loss choices: affinity, bce, ce,"),
    ("trainer.max_iters=abc", "trainer.max_iters: expected an integer, got 'abc'"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("trainer.amp=maybe", "trainer.amp: expected true or false, got 'maybe'"),
    ("data.scale_range=3", "data.scale_range: expected a list, e.g. [1, 2], got '3'"),
    ("model.atrous_rates=[a]", "model.atrous_rates[0]: expected an integer, got 'a'"),
])
def test_config_mistakes_are_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        check_overrides([override])
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value) and "full_key" not in str(error.value)


def test_group_choices_include_nested_groups():
    assert "ssl/voc_deeplabv3" in group_choices("experiment") and "ce" in group_choices("loss")


def test_eval_without_a_checkpoint_says_so(tmp_path):
    cfg = compose_config([], "eval")
    assert cfg.checkpoint is None
    with pytest.raises(ConfigError, match="segrepro eval needs checkpoint=PATH"):
        evaluate_checkpoint(cfg, tmp_path, [])


def a_checkpoint(path):
    torch.save({"model": {"w": torch.zeros(3)}, "config": {}, "step": 1}, path)
    return path


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_text("hello\n"), "not a zip archive as torch.save writes"),
    (lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
    (lambda p: p.write_bytes(a_checkpoint(p).read_bytes()[:-300]), "not a zip archive"),  # cut short
    (lambda p: torch.save({"model": torch.nn.Linear(1, 1)}, p), "holds Python objects other than tensors"),
])
def test_files_that_are_not_checkpoints_are_named_with_what_is_wrong(tmp_path, make, reason):
    path = tmp_path / "x.pt"
    make(path)
    with pytest.raises(ValueError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and reason in message and "A segrepro checkpoint is" in message
    assert "weights_only" not in message


def test_a_real_checkpoint_loads(tmp_path):
    assert load_checkpoint(a_checkpoint(tmp_path / "ok.pt"))["step"] == 1


def test_a_mistyped_resume_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"trainer.resume=autp: no such checkpoint file; expected auto"):
        resume_checkpoint("autp", tmp_path)
    assert resume_checkpoint("auto", tmp_path) is None and resume_checkpoint(None, tmp_path) is None


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache: any ImageNet download fails."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))


@pytest.fixture
def pretrained_checkpoint(tiny_cfg, tmp_path):
    """A tiny run's checkpoint whose saved config asks for ImageNet weights, as every paper recipe's does."""
    from segrepro.train import run

    run(tiny_cfg("trainer.max_iters=1", "trainer.eval_every=0"), tmp_path / "run", [])
    path = tmp_path / "run" / "checkpoints" / "step_0000001.pt"
    state = load_checkpoint(path)
    state["config"]["model"]["pretrained"] = True
    torch.save(state, path)
    return path


def test_eval_of_a_pretrained_config_downloads_nothing_and_trains_nothing(
        pretrained_checkpoint, offline, tmp_path, caplog):
    cfg = compose_config([f"checkpoint={pretrained_checkpoint}"], "eval")
    with caplog.at_level("WARNING"):
        metrics = evaluate_checkpoint(cfg, tmp_path / "eval", [])
    assert 0 <= metrics["miou"] <= 1
    assert "from scratch" not in caplog.text and "ImageNet" not in caplog.text


def test_a_stage_started_from_a_checkpoint_downloads_nothing(pretrained_checkpoint, offline, tiny_cfg, tmp_path):
    from segrepro.engine.build import build_training
    from segrepro.engine.distributed import init_distributed
    from segrepro.models.build import PretrainedWeightsError

    cfg = tiny_cfg("model.pretrained=true", f"trainer.init_from={pretrained_checkpoint}")
    build_training(cfg, tmp_path / "stage2", init_distributed("cpu")).writer.close()
    with pytest.raises(PretrainedWeightsError):  # the same config without a checkpoint stops before training
        build_training(tiny_cfg("model.pretrained=true"), tmp_path / "fresh", init_distributed("cpu"))
