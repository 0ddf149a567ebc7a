"""Datasets by ``data.dataset._target_`` (segrepro.config.instantiate), their command-line
overrides, and the debug=tiny tier."""
from __future__ import annotations

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from segrepro.config import TrainConfig, compose_config, instantiate, reapply_overrides, saved_run_config
from segrepro.data import CamVidSegmentation, SyntheticSegmentation, build_dataset

from .test_data_camvid import make_camvid_tree


class Takes:
    def __init__(self, size, feat_dim=None, split="train"):
        self.size, self.feat_dim, self.split = size, feat_dim, split


TAKES = f"{__name__}.Takes"


def test_instantiate_passes_the_node_and_fills_absent_or_null_parameters_from_the_context():
    built = instantiate({"_target_": TAKES, "size": 3, "feat_dim": None}, "loss", feat_dim=256, split="val",
                        unrelated=object())  # not a parameter of Takes: ignored
    assert (built.size, built.feat_dim, built.split) == (3, 256, "val")
    built = instantiate(OmegaConf.create({"_target_": TAKES, "size": 3, "feat_dim": 64}), "loss", feat_dim=256)
    assert built.feat_dim == 64  # what the config sets wins


def test_instantiate_resolves_interpolations():
    cfg = OmegaConf.create({"width": 7, "loss": {"_target_": TAKES, "size": "${width}"}})
    assert instantiate(cfg.loss, "loss").size == 7


@pytest.mark.parametrize("node", [None, {}, {"size": 3}])
def test_instantiate_without_a_target_names_the_key(node):
    with pytest.raises(ValueError, match=r"no loss .*loss=<name>"):
        instantiate(node, "loss")
    with pytest.raises(ValueError, match=r"no data.dataset .*data=<name>.*data.dataset._target_"):
        instantiate(node, "data.dataset")


def test_instantiate_names_a_target_that_does_not_import():
    with pytest.raises(ValueError, match=r"data.dataset._target_='segrepro.data.NoSuchSet' cannot be imported"):
        instantiate({"_target_": "segrepro.data.NoSuchSet"}, "data.dataset")
    with pytest.raises(ValueError, match=r"loss._target_='nowhere_at_all.Loss' cannot be imported: .*nowhere_at_all"):
        instantiate({"_target_": "nowhere_at_all.Loss"}, "loss")


def test_instantiate_names_unknown_arguments_and_the_valid_ones():
    with pytest.raises(ValueError) as error:
        instantiate({"_target_": TAKES, "size": 1, "sise": 2, "colour": 3}, "loss")
    message = str(error.value)
    assert "loss.sise, loss.colour" in message and "valid: size, feat_dim, split" in message


def test_schema_default_is_the_synthetic_dataset():
    cfg = OmegaConf.structured(TrainConfig)
    dataset = build_dataset(cfg.data, "val", train=False)
    assert isinstance(dataset, SyntheticSegmentation) and len(dataset) == 100


def test_dataset_arguments_override_from_the_command_line_without_plus():
    cfg = compose_config(["data=camvid", "data.dataset.scale=0.5"])
    assert cfg.data.dataset == {"_target_": "segrepro.data.CamVidSegmentation", "scale": 0.5}
    cfg = compose_config(["data.dataset.num_samples={train:8,val:4}", "data.dataset.image_size=[64,64]"])
    dataset = build_dataset(cfg.data, "val", train=False)
    assert len(dataset) == 4 and dataset.image_size == (64, 64)


def test_every_data_config_names_an_importable_dataset_of_its_class_count():
    for choice in ("synthetic", "voc_train", "voc_trainaug", "cityscapes", "camvid"):
        data = compose_config([f"data={choice}"]).data
        cls = get_class(data.dataset._target_)
        assert cls.num_classes == data.num_classes, choice
        assert "root" not in data.dataset  # data.root is the one root key


def test_data_root_reaches_the_dataset_and_wins_over_a_checkpoints_config(tmp_path):
    old, new = make_camvid_tree(tmp_path / "old"), make_camvid_tree(tmp_path / "new")
    cfg = compose_config(["data=camvid", f"data.root={old}"])
    assert build_dataset(cfg.data, "train", train=False).pairs[0][0].startswith(str(old))
    # as `segrepro eval checkpoint=... data.root=NEW` does with the saved (resolved) config
    saved = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.to_container(cfg, resolve=True))
    overrides = [f"data.root={new}"]
    reapply_overrides(saved, compose_config(overrides + ["checkpoint=x"], "eval"), overrides)
    dataset = build_dataset(saved.data, "train", train=False)
    assert isinstance(dataset, CamVidSegmentation) and dataset.pairs[0][0].startswith(str(new))


def test_a_data_choice_replaces_a_checkpoints_whole_data_section(tmp_path):
    root = make_camvid_tree(tmp_path)
    saved = OmegaConf.merge(OmegaConf.structured(TrainConfig),
                            OmegaConf.to_container(compose_config(["debug=tiny"]), resolve=True))
    overrides = ["data=camvid", f"data.root={root}", "data.dataset.scale=0.5"]  # segrepro eval ... data=camvid
    reapply_overrides(saved, compose_config(overrides + ["checkpoint=x"], "eval"), overrides)
    assert dict(saved.data.dataset) == {"_target_": "segrepro.data.CamVidSegmentation", "scale": 0.5}
    assert saved.data.num_classes == 11 and saved.data.crop_size == 321  # camvid's, not the tiny run's
    dataset = build_dataset(saved.data, "train", train=False)
    assert isinstance(dataset, CamVidSegmentation) and dataset.scale == 0.5


def test_split_and_transform_are_not_dataset_arguments():
    cfg = compose_config(["+data.dataset.split=val"])
    with pytest.raises(ValueError, match="data.dataset.split cannot be set.*data.train_split"):
        build_dataset(cfg.data, "train", train=True)


def test_a_class_count_mismatch_names_the_class():
    cfg = compose_config(["data.num_classes=7"])
    with pytest.raises(ValueError, match=r"data.num_classes=7 but segrepro.data.SyntheticSegmentation .* 6 classes"):
        build_dataset(cfg.data, "val", train=False)


def test_debug_tiny_shrinks_the_synthetic_data_and_leaves_other_datasets_valid():
    cfg = compose_config(["debug=tiny"])
    assert (cfg.data.crop_size, cfg.data.batch_size, cfg.data.num_workers, cfg.trainer.device) == (33, 2, 0, "cpu")
    assert cfg.data.dataset.image_size == [48, 48] and cfg.data.dataset.num_samples == {"train": 8, "val": 4}
    camvid = compose_config(["debug=tiny", "data=camvid"])
    assert camvid.data.crop_size == 33 and dict(camvid.data.dataset) == {
        "_target_": "segrepro.data.CamVidSegmentation", "scale": 1.0}
    recipe = compose_config(["experiment=ssl/voc_deeplabv3", "debug=tiny"])  # debug comes after the recipe
    assert recipe.data.crop_size == 33 and recipe.data.dataset._target_ == "segrepro.data.VOCSegmentation"


def test_a_checkpoint_config_from_before_data_dataset_is_brought_to_it(tmp_path):
    root = make_camvid_tree(tmp_path)
    old = OmegaConf.to_container(compose_config(["data=camvid", f"data.root={root}"]), resolve=True)
    old["data"] = {**{k: v for k, v in old["data"].items() if k != "dataset"}, "params": {"scale": 0.5}}
    old["crf"] = {"steps": 0, "params": {}}  # the crf section before segrepro/crf.py
    cfg = saved_run_config(old)
    assert cfg.crf.steps == 0 and "params" not in cfg.crf
    assert dict(cfg.data.dataset) == {"_target_": "segrepro.data.CamVidSegmentation", "scale": 0.5}
    dataset = build_dataset(cfg.data, "train", train=False)
    assert isinstance(dataset, CamVidSegmentation) and dataset.scale == 0.5
    old["data"]["name"] = "mine"
    with pytest.raises(ValueError, match="data.name='mine'"):
        saved_run_config(old)
    # Today's configs pass through unchanged.
    today = OmegaConf.to_container(compose_config(["debug=tiny"]), resolve=True)
    assert OmegaConf.to_container(saved_run_config(today)) == today
