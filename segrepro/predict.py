"""``segrepro predict checkpoint=PATH data=voc_test data.root=...`` / ``python -m segrepro.predict``.

Writes the checkpoint's prediction for every image of ``data.val_split`` as a palette PNG (the
dataset's palette, values = class indices, at the image's own size), named after the image
file, with the same inference as ``segrepro eval`` (``eval.scales``, ``eval.flip``, ``crf=...``:
the CRF's labels after its largest step count). The model and its input normalization
(``data.mean`` / ``data.std``) are the checkpoint's; the dataset is what you type.

A split with a benchmark server's layout (``data=voc_test``: the dataset's ``submission_folder``,
``results/VOC2012/Segmentation/comp6_test_cls``) gets its PNGs in that folder of the run folder
and the archive to upload beside it, ``results.tar.gz``; any other split gets ``predictions/``
and no archive. Multi-GPU: ``torchrun --nproc_per_node N -m segrepro.predict ...`` (each
process writes its share of the images).
"""
from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import hydra
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from tqdm import tqdm

from .config import CONFIG_DIR, register_configs, saved_run_config
from .data import build_dataset
from .data.io import write_label
from .data.voc import colour_map
from .engine.distributed import cleanup, init_distributed
from .engine.evaluator import Evaluator
from .entry import guarded, run_hydra
from .evaluate import checkpoint_model, load_run
from .files import atomic_write, write_json

PLAIN_FOLDER = "predictions"  # the PNGs' folder for a split without a server layout


def image_ids(dataset) -> list[str]:
    """The name of each image's prediction: its file name without the extension (the id a server expects),
    or the index for a dataset without files (the synthetic one)."""
    pairs = getattr(dataset, "pairs", None)
    if pairs is None:
        return [f"{index:06d}" for index in range(len(dataset))]
    ids = [Path(image).stem for image, _ in pairs]
    if len(set(ids)) != len(ids):
        twice = next(name for name in ids if ids.count(name) > 1)
        raise ValueError(f"two images of the split share the file name {twice!r}: their predictions would "
                         "overwrite each other")
    return ids


def pack(files: list[Path], root: Path, archive: Path) -> None:
    """A gzip-compressed tar of ``files`` at their paths relative to ``root``, their folders listed
    first (as ``tar czf archive results`` lists them), written atomically."""
    relative = [path.relative_to(root) for path in files]
    folders = sorted({parent for path in relative for parent in path.parents if parent != Path(".")})
    with atomic_write(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for folder in folders:
            tar.add(root / folder, arcname=str(folder), recursive=False)
        for path, name in zip(files, relative):
            tar.add(path, arcname=str(name))


def predict_checkpoint(cfg, out_dir, overrides: list[str]) -> dict:
    """Write ``cfg.checkpoint``'s predictions of ``data.val_split`` into ``out_dir`` (and the archive for a
    server); returns what ``predict.json`` records."""
    state, run_cfg = load_run(cfg, overrides, "predict")
    saved = saved_run_config(state["config"])
    split = run_cfg.data.val_split
    dataset = build_dataset(run_cfg.data, split, train=False, need_labels=False)
    if dataset.num_classes != saved.data.num_classes:
        raise ValueError(f"{cfg.checkpoint} predicts the {saved.data.num_classes} classes of data={saved.data.name}, "
                         f"but data={run_cfg.data.name} has {dataset.num_classes}: predict with a checkpoint trained "
                         "on its classes")
    if getattr(dataset, "scale", 1.0) != 1.0:
        raise ValueError(f"data.dataset.scale={dataset.scale}: segrepro predict writes one label per pixel of each "
                         "image, at its own size; add data.dataset.scale=1.0")
    ids = image_ids(dataset)
    out = Path(out_dir)
    folder = getattr(dataset, "submission_folder", None)
    png_dir = out / (folder or PLAIN_FOLDER)
    palette = getattr(dataset, "palette", None) or colour_map(dataset.num_classes)

    dist_info = init_distributed(run_cfg.trainer.device)
    evaluator = None
    try:
        model = checkpoint_model(state, run_cfg.model, saved.data.num_classes).to(dist_info.device)
        evaluator = Evaluator(run_cfg, dataset, dist_info)  # float32, no autocast
        predictions = evaluator.predict(model, with_crf=True)
        for index, labels in tqdm(predictions, total=len(evaluator.indices), desc="predict", unit="image",
                                  disable=not evaluator.progress):
            write_label(png_dir / f"{ids[index]}.png", labels, palette, fsync=False)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every process's PNGs are written
        crf_steps = max(evaluator.crf.steps) if evaluator.crf is not None else 0
    finally:
        if evaluator is not None:
            evaluator.close()
        cleanup()
    files = [png_dir / f"{name}.png" for name in ids]
    record = {"checkpoint": str(Path(cfg.checkpoint).resolve()), "step": int(state.get("step", -1)),
              "data": run_cfg.data.name, "split": split, "images": len(ids), "folder": str(png_dir.relative_to(out)),
              "eval": {"scales": list(run_cfg.eval.scales), "flip": run_cfg.eval.flip},
              "crf": OmegaConf.to_container(run_cfg.crf) if crf_steps else None, "crf_steps": crf_steps,
              "archive": None}
    if not dist_info.is_main:
        return record
    print(f"{len(files)} predictions of {run_cfg.data.name}/{split} (palette PNGs, {dataset.num_classes} classes) "
          f"in {png_dir.resolve()}")
    if folder is not None:
        archive = out / f"{Path(folder).parts[0]}.tar.gz"
        pack(files, out, archive)
        record["archive"] = archive.name
        print(f"to upload: {archive.resolve()} (tar.gz of {folder}/<image id>.png)")
    write_json(record, out / "predict.json")
    return record


@hydra.main(config_path=CONFIG_DIR, config_name="predict", version_base="1.3")
def _hydra_main(cfg) -> None:
    hydra_cfg = HydraConfig.get()
    guarded(predict_checkpoint, cfg, hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task))


def main() -> None:
    register_configs()
    run_hydra(_hydra_main, "predict", sys.argv[1:])


if __name__ == "__main__":
    main()
