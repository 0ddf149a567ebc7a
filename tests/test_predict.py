"""`segrepro predict` on a miniature VOC 2012 test tree (as VOC2012test.tar unpacks: VOCdevkit/VOC2012
with JPEGImages/ and ImageSets/Segmentation/test.txt, no labels): one palette PNG per listed image at
its size, holding the model's argmax, in the server's folder, and the archive that lists them."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from segrepro.config import compose_config
from segrepro.crf import DenseCRF
from segrepro.data import VOCTestImages, build_dataset, build_transform
from segrepro.data.io import DatasetError, read_image
from segrepro.data.voc import colour_map
from segrepro.models import build_model
from segrepro.predict import predict_checkpoint

from .test_cli import segrepro
from .test_data_camvid import make_camvid_tree

TEST_IDS = {"2008_000001": (20, 28), "2008_000004": (31, 17), "2010_000123": (24, 24)}  # id: (height, width)
SERVER_FOLDER = "results/VOC2012/Segmentation/comp6_test_cls"
XCEPTION_INPUT = ["data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"]


def make_voc_test_tree(root):
    """``<root>/VOCdevkit/VOC2012`` as the test tar holds it: JPEGs of several sizes and the test list."""
    base = root / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, size in TEST_IDS.items():
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
    (base / "ImageSets" / "Segmentation" / "test.txt").write_text("".join(f"{name}\n" for name in TEST_IDS))
    return root


def make_checkpoint(path, *overrides):
    """A checkpoint as training writes it (weights, resolved config, step) of a tiny, untrained model."""
    cfg = compose_config(["debug=tiny", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes, from_checkpoint=True)
    torch.save({"model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True), "step": 7}, path)
    return path


def predict(tmp_path, checkpoint, *overrides):
    typed = [f"checkpoint={checkpoint}", *overrides, "data.num_workers=0"]
    return predict_checkpoint(compose_config(typed, "predict"), tmp_path / "out", typed)


def model_logits(checkpoint, data_cfg, image_path, flip: bool = False) -> torch.Tensor:
    """The checkpoint's model's logits ``[1, C, H, W]`` for one image file (of its mirror image,
    flipped back, with ``flip``), computed here."""
    state = torch.load(checkpoint, weights_only=True)
    model = build_model(state["config"]["model"], state["config"]["data"]["num_classes"], from_checkpoint=True)
    model.load_state_dict(state["model"])
    image = read_image(image_path)
    inputs, _ = build_transform(data_cfg, train=False)(image, np.zeros(image.shape[:2], np.uint8))
    with torch.no_grad():
        return model.eval()(inputs[None].flip(-1)).flip(-1) if flip else model.eval()(inputs[None])


def model_argmax(checkpoint, data_cfg, image_path) -> np.ndarray:
    return model_logits(checkpoint, data_cfg, image_path).argmax(1)[0].numpy()


@pytest.fixture(scope="module")
def voc_checkpoint(tmp_path_factory):
    """A VOC model normalizing its input as the Xception recipe does: data=voc_test brings ImageNet's
    mean and std, so its predictions match only if predict keeps the checkpoint's."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", "data=voc_train", *XCEPTION_INPUT)


def test_voc_test_predictions_are_the_servers_palette_pngs_and_archive(tmp_path, voc_checkpoint):
    root = make_voc_test_tree(tmp_path / "voc_test")
    record = predict(tmp_path, voc_checkpoint, "data=voc_test", f"data.root={root}")
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / SERVER_FOLDER).iterdir()) == sorted(f"{n}.png" for n in TEST_IDS)
    data_cfg = compose_config(["data=voc_test", *XCEPTION_INPUT]).data  # the model's input, not voc_test's
    classes = set()
    for name, size in TEST_IDS.items():
        png = Image.open(out / SERVER_FOLDER / f"{name}.png")
        assert png.mode == "P" and png.size == (size[1], size[0])
        assert png.getpalette()[:63] == [c for colour in colour_map(21) for c in colour]
        expected = model_argmax(voc_checkpoint, data_cfg, root / "VOCdevkit/VOC2012/JPEGImages" / f"{name}.jpg")
        np.testing.assert_array_equal(np.asarray(png), expected)
        classes |= set(np.unique(expected).tolist())
    assert len(classes) > 1  # the comparison sees more than one class
    with tarfile.open(out / "results.tar.gz", "r:gz") as archive:
        files = sorted(m.name for m in archive.getmembers() if m.isfile())
        folders = [m.name for m in archive.getmembers() if m.isdir()]
    assert files == sorted(f"{SERVER_FOLDER}/{name}.png" for name in TEST_IDS)
    assert folders == ["results", "results/VOC2012", "results/VOC2012/Segmentation", SERVER_FOLDER]
    saved = json.loads((out / "predict.json").read_text())
    assert saved == record and record["images"] == 3 and record["archive"] == "results.tar.gz"
    assert record["step"] == 7 and record["split"] == "test" and record["crf_steps"] == 0


def test_flip_and_the_crf_reach_the_predictions(tmp_path, voc_checkpoint):
    """eval.flip averages the softmax of the image and of its mirror; crf=dense refines that average
    (the labels after the largest of crf.steps), as in segrepro eval."""
    root = make_voc_test_tree(tmp_path / "voc_test")
    typed = ["crf=dense", "crf.steps=[1,3]", "crf.workers=1", "eval.flip=true"]
    record = predict(tmp_path, voc_checkpoint, "data=voc_test", f"data.root={root}", *typed)
    cfg = compose_config(["data=voc_test", *XCEPTION_INPUT, *typed])
    name = "2008_000001"
    path = root / "VOCdevkit/VOC2012/JPEGImages" / f"{name}.jpg"
    probs = (model_logits(voc_checkpoint, cfg.data, path).softmax(1)
             + model_logits(voc_checkpoint, cfg.data, path, flip=True).softmax(1)) / 2
    expected = DenseCRF.from_config(cfg.crf)(probs[0].numpy(), read_image(path).copy())[3]
    written = np.asarray(Image.open(tmp_path / "out" / SERVER_FOLDER / f"{name}.png"))
    np.testing.assert_array_equal(written, expected)
    assert (written != probs.argmax(1)[0].numpy()).any() and record["crf_steps"] == 3


def test_other_datasets_get_their_own_palette_and_no_archive(tmp_path):
    """CamVid: PNGs named after the image files, CamVid's colours, no server archive."""
    root = make_camvid_tree(tmp_path / "camvid")
    checkpoint = make_checkpoint(tmp_path / "camvid.pt", "data=camvid", f"data.root={root}")
    record = predict(tmp_path, checkpoint, "data.val_split=train")  # the miniature tree has train only
    pngs = sorted((tmp_path / "out" / "predictions").iterdir())
    assert [p.name for p in pngs] == ["0001TP_000000.png", "0001TP_000001.png"] and record["archive"] is None
    assert Image.open(pngs[0]).getpalette()[:6] == [128, 128, 128, 128, 0, 0]  # sky, building
    assert not list((tmp_path / "out").glob("*.tar.gz"))


def test_voc_test_reads_the_unpacked_tar_or_its_voc2012_folder(tmp_path):
    root = make_voc_test_tree(tmp_path)
    for given in (root, root / "VOCdevkit" / "VOC2012"):
        dataset = VOCTestImages(given)
        assert [p.rsplit("/", 1)[1] for p, _ in dataset.pairs] == [f"{n}.jpg" for n in TEST_IDS]
        image, label = dataset[1]
        assert image.shape == (31, 17, 3) and (label == 255).all()  # the placeholder: ignored everywhere
    assert dataset.submission_folder == SERVER_FOLDER
    assert VOCTestImages(root, competition="comp5").submission_folder.endswith("/comp5_test_cls")


def test_a_split_without_labels_cannot_be_trained_or_evaluated_on(tmp_path):
    root = make_voc_test_tree(tmp_path)
    cfg = compose_config(["data=voc_test", f"data.root={root}"])
    for split in (cfg.data.train_split, cfg.data.val_split):
        with pytest.raises(DatasetError, match=r"data=voc_test, split 'test': segrepro.data.VOCTestImages has no "
                                               r"labels.*segrepro predict"):
            build_dataset(cfg.data, split, train=False)


@pytest.mark.parametrize("damage, message", [
    (lambda base: (base / "ImageSets/Segmentation/test.txt").unlink(),
     r"split list not found: .*ImageSets/Segmentation/test.txt\n.*VOC2012test.tar"),
    (lambda base: (base / "JPEGImages/2008_000004.jpg").unlink(),
     r"1 of the split's 3 images are missing, the first: .*2008_000004.jpg"),
    (lambda base: (base / "JPEGImages/2008_000004.jpg").write_bytes(b"not a jpeg"),
     r"cannot read image .*2008_000004.jpg \(corrupt or not an image\?\)"),
])
def test_bad_test_trees_are_named(tmp_path, voc_checkpoint, damage, message):
    root = make_voc_test_tree(tmp_path / "voc_test")
    damage(root / "VOCdevkit" / "VOC2012")
    with pytest.raises(DatasetError, match=message):
        predict(tmp_path, voc_checkpoint, "data=voc_test", f"data.root={root}")


def test_a_missing_checkpoint_or_a_class_mismatch_is_named(tmp_path):
    root = make_voc_test_tree(tmp_path / "voc_test")
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nothing.pt"):
        predict(tmp_path, tmp_path / "nothing.pt", "data=voc_test", f"data.root={root}")
    synthetic = make_checkpoint(tmp_path / "synthetic.pt")  # 6 classes
    with pytest.raises(ValueError, match=r"synthetic.pt predicts the 6 classes of data=synthetic, but "
                                         r"data=voc_test has 21"):
        predict(tmp_path, synthetic, "data=voc_test", f"data.root={root}")


@pytest.mark.slow
def test_the_command_line_writes_the_archive(tmp_path, voc_checkpoint):
    root = make_voc_test_tree(tmp_path / "voc_test")
    run = segrepro("predict", f"checkpoint={voc_checkpoint}", "data=voc_test", f"data.root={root}",
                   "data.num_workers=0", "hydra.run.dir=out", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "to upload:" in run.stdout and (tmp_path / "out" / "results.tar.gz").is_file()


def test_eval_with_another_data_section_keeps_the_checkpoints_normalization(tmp_path, voc_checkpoint):
    """``segrepro eval checkpoint=X data=...`` (the same rule as predict): the data section's own
    mean and std would feed an Xception-normalized model ImageNet-normalized images."""
    from segrepro.evaluate import load_run

    typed = [f"checkpoint={voc_checkpoint}", "data=synthetic"]
    _, run_cfg = load_run(compose_config(typed, "eval"), typed)
    assert run_cfg.data.name == "synthetic" and list(run_cfg.data.mean) == [0.5, 0.5, 0.5]
    typed.append("data.mean=[0.4,0.4,0.4]")  # typed: the user's
    _, run_cfg = load_run(compose_config(typed, "eval"), typed)
    assert list(run_cfg.data.mean) == [0.4, 0.4, 0.4] and list(run_cfg.data.std) == [0.5, 0.5, 0.5]
