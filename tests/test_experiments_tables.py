"""experiments/ against ../shared/spec/tables.md (every table row and number exactly once, each row's
hyper-parameters in its composed config) and against the configs (every row composes at every scale,
and every scale keeps each row's loss as the paper set it)."""
from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from segrepro.config import check_overrides, compose_config
from segrepro.data.cityscapes import CLASS_NAMES as CITYSCAPES_CLASSES
from segrepro.data.voc import CLASS_NAMES as VOC_CLASSES
from segrepro.reproduce.spec import EXPERIMENTS_DIR, load_scale, load_table, table_names

from .conftest import SHARED

TABLES_MD = SHARED / "spec" / "tables.md"
SSL_PAPER = SHARED / "papers" / "ssl-structural-similarity-loss.txt"
pytestmark = pytest.mark.skipif(not TABLES_MD.is_file(), reason=f"{TABLES_MD} is not beside the checkout")

TABLES = ["lad_table1", "lad_table2", "ssl_table1", "ssl_table2", "ssl_table3", "ssl_table4", "ssl_table5",
          "ssl_table6"]
LOSSES = {"softmax CE": "CrossEntropyLoss", "CE": "CrossEntropyLoss", "BCE": "BCELoss", "LAD": "LADLoss",
          "center loss": "CenterLoss", "focal loss": "FocalLoss", "SSL": "SSLLoss", "SSIM Eq. 7": "SSIMLoss",
          "SSIM Eq. 9": "SSIMLoss", "affinity field loss": "AffinityFieldLoss"}
HYPER = {"alpha": "alpha", "lambda": "lam", "gamma": "gamma", "kernel": "kernel_size"}  # LAD Table 2's words
# SSL Tables 1 and 4 print one sentence of overall values: its labels, and the columns they stand for
OVERALL = {"ssl_table1": {"CE (DeepLabv3)": "ce", "SSL(3)": "ssl3", "CE (DeepLabv3+)": "plus_ce", "SSL(+3)": "plus_ssl3"},
           "ssl_table4": {"CE": "ce", "SSL(3)": "ssl3"}}
OVERALL_COLUMNS = {"ce": {"loss": "CE", "size": "-"}, "ssl3": {"loss": "SSL", "size": "3"},
                   "plus_ce": {"loss": "CE", "size": "-", "model": "DeepLabv3+"},
                   "plus_ssl3": {"loss": "SSL", "size": "3", "model": "DeepLabv3+"}}
SIZE_KEYS = {"SSLLoss": "region_size", "SSIMLoss": "window_size", "AffinityFieldLoss": "kernel_size"}


def sections() -> dict[str, str]:
    """``{"lad_table1": text, ..., "ssl_figures": text}`` from tables.md's ``###`` headings."""
    found = {}
    for head, body in re.findall(r"^### (.+?)\n(.*?)(?=^### |\Z)", TABLES_MD.read_text(), flags=re.M | re.S):
        match = re.match(r"(LAD|SSL) Table (\d)", head)
        found[f"{match[1].lower()}_table{match[2]}" if match else "ssl_figures"] = body
    return found


def markdown_rows(body: str) -> list[dict]:
    lines = [line.strip().strip("|").split("|") for line in body.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0]]
    return [dict(zip(header, (cell.strip() for cell in line))) for line in lines[2:]]


def overall(body: str, labels: dict) -> dict:
    """``{row id: value}`` from an "Overall: CE (DeepLabv3) 76.54, SSL(3) 77.26, ..." sentence."""
    sentence = re.search(r"Overall:?(.*?)[.;]\s", body, flags=re.S)[1]
    return {labels[label.strip()]: float(value) for label, value in re.findall(r"([^,]+?) (\d+\.\d+)", sentence)}


def spec_rows(name: str, body: str) -> dict:
    """The rows tables.md gives a table: ``{row id: (paper value, the row's columns)}``."""
    if name in OVERALL:  # the columns its labels give
        return {row_id: (value, OVERALL_COLUMNS[row_id]) for row_id, value in overall(body, OVERALL[name]).items()}
    rows = {}
    for row in markdown_rows(body):
        row_id = ("plus_" if row.get("model") == "DeepLabv3+" else "") + row["row"]
        assert row_id not in rows, f"{name}: {row_id} twice in tables.md"
        rows[row_id] = (float(row["paper"]), row)
    return rows


@pytest.mark.parametrize("name", TABLES)
def test_every_row_and_number_of_the_spec_is_in_the_table_file_once(name):
    expected = spec_rows(name, sections()[name])
    table = load_table(name)
    assert {row.id: row.paper for row in table.rows} == {row_id: value for row_id, (value, _) in expected.items()}


def test_the_files_are_the_spec_tables_and_figures():
    assert table_names() == TABLES
    assert sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")) == sorted(TABLES + ["ssl_fig3", "ssl_fig4"])


def test_the_other_numbers_of_the_spec():
    """SSL Table 5's cited GAN rows and CRF seconds, Figures 3 and 4's settings and the 1.5 % at beta 0.1."""
    text = sections()
    table5 = load_table("ssl_table5")
    assert [c["paper"] for c in table5.cited] == [float(v) for v in re.findall(r"(\d+\.\d+) and (\d+\.\d+)",
                                                                               text["ssl_table5"])[0]]
    seconds = re.search(r"about ([\d.]+) s,\s+([\d.]+) s\s+and ([\d.]+) s for 1, 2 and 5 steps", text["ssl_table5"])
    assert [table5.row(f"crf{k}").paper_seconds_per_image for k in (1, 2, 5)] == [float(s) for s in seconds.groups()]
    figures = {name: OmegaConf.load(EXPERIMENTS_DIR / f"{name}.yaml") for name in ("ssl_fig3", "ssl_fig4")}
    assert "region 3, sigma 1.5" in text["ssl_figures"]
    for figure in figures.values():
        assert (figure.region_size, figure.sigma) == (3, 1.5)
        table, row = figure.runs_of.split("/")
        ssl3 = compose_config([f"experiment={load_table(table).row(row).recipe}", *load_table(table).row(row).overrides])
        assert (ssl3.loss.region_size, ssl3.loss.sigma) == (3, 1.5)
    assert "about 1.5% at beta 0.1" in text["ssl_figures"]
    assert dict(figures["ssl_fig4"].paper_hard_percent) == {"beta": 0.1, "value": 1.5}


def composed(row):
    return compose_config([f"experiment={row.recipe}", *row.overrides])


def expected_loss(name: str, columns: dict) -> tuple[str, dict]:
    """``(loss class, {argument: value})`` that tables.md's columns give a training row."""
    if name == "lad_table1":
        return ("CrossEntropyLoss", {}) if columns["k"] == "-" else (
            "LADLoss", {"k": float(columns["k"]), "kernel_size": 5})  # kernel 5: docs/fidelity.md
    if name == "lad_table2":
        words = re.findall(r"(\w+) ([\d.e-]+)", columns["hyper-parameters"])
        return LOSSES[columns["loss"]], {HYPER[word]: float(value) for word, value in words}
    if name == "ssl_table3":
        return "SSLLoss", {"region_size": 3, "sigma": float(columns["sigma"]), "beta": float(columns["beta"]),
                           "ohem": columns["OHEM"] == "yes", "reweight": columns["reweight"] == "yes"}
    if name == "ssl_table5":  # "CE", "SSL 11", "affinity field loss, size 3"
        match = re.fullmatch(r"(.+?),? (?:size )?(\d+)", columns["method"])
        loss, size = (match[1], int(match[2])) if match else (columns["method"], None)
    else:  # SSL Tables 1, 2, 4, 6
        loss, size = columns["loss"], None if columns["size"] == "-" else int(columns["size"])
    target = LOSSES[loss]
    args = {} if size is None else {SIZE_KEYS[target]: size}
    if loss.startswith("SSIM"):
        args["form"] = "eq" + loss[-1]
    return target, args


def check_columns(name: str, row, columns: dict) -> None:
    """The row's composed config holds what tables.md's columns say."""
    if not row.trains:  # SSL Table 5's CRF rows: one evaluation of the CE row's checkpoint
        steps = int(re.search(r"(\d+) steps?", columns["method"])[1])
        crf = compose_config(["checkpoint=x.pt", *row.overrides], "eval").crf
        assert row.evaluates == "ce" and steps in crf.steps and row.result == f"crf.{steps}.miou"
        assert (crf.gaussian.sxy, crf.bilateral.srgb) == (3.0, 13.0)  # crf=dense: the wrapper's defaults
        return
    cfg = composed(row)
    target, args = expected_loss(name, columns)
    assert cfg.loss._target_ == f"segrepro.losses.{target}", row.id
    for key, value in args.items():
        assert cfg.loss[key] == pytest.approx(value), (row.id, key)
    if name == "lad_table1":
        assert cfg.trainer.max_iters == 1000
    if name in ("ssl_table1", "ssl_table2"):
        model = columns.get("model", "DeepLabv3")
        assert cfg.model.arch == {"DeepLabv3": "deeplabv3", "DeepLabv3+": "deeplabv3plus"}[model], row.id
    if name == "ssl_table5":
        assert (cfg.data.crop_size, cfg.data.batch_size) == (321, 16)
    if name in ("ssl_table4", "ssl_table6"):
        assert cfg.data.name == "cityscapes"


@pytest.mark.parametrize("name", TABLES)
def test_every_row_holds_the_spec_hyper_parameters(name):
    expected = spec_rows(name, sections()[name])
    for row in load_table(name).rows:
        check_columns(name, row, expected[row.id][1])


@pytest.mark.parametrize("name", TABLES)
def test_every_row_composes(name):
    for row in load_table(name).rows:
        if row.trains:
            check_overrides([f"experiment={row.recipe}", *row.overrides])
        else:
            check_overrides(["checkpoint=x.pt", *row.overrides], "eval")


@pytest.mark.parametrize("scale_name", ["mini", "smoke"])
def test_the_scales_compose_with_every_recipe_and_keep_the_loss(scale_name):
    """The scale sets no loss key, so every row keeps its loss as the paper set it; on one row of each
    recipe it composes and changes the model, data and schedule, the loss section left as it was."""
    scale = load_scale(scale_name, camvid_root="/data/camvid")
    assert not [o for o in scale.overrides if o.lstrip("+~").startswith("loss")]
    rows = {}
    for name in TABLES:
        for row in load_table(name).rows:
            if row.trains:
                rows.setdefault(row.recipe, row)
    assert len(rows) == 5
    for row in rows.values():
        overrides = [f"experiment={row.recipe}", *row.overrides, *scale.overrides]
        check_overrides(overrides)
        cfg = compose_config(overrides)
        assert OmegaConf.to_container(cfg.loss, resolve=False) == \
            OmegaConf.to_container(composed(row).loss, resolve=False), row.id
        assert (cfg.model.encoder, cfg.model.pretrained, list(cfg.stages)) == ("resnet18", False, [])
        if scale_name == "mini":
            assert (cfg.data.name, cfg.data.root, cfg.data.dataset.scale) == ("camvid", "/data/camvid", 0.5)
            assert (cfg.trainer.max_iters, cfg.optim.lr, cfg.trainer.freeze_bn) == (300, 0.01, False)
        else:
            assert (cfg.data.name, cfg.data.crop_size, cfg.trainer.device, cfg.trainer.max_iters) == \
                ("synthetic", 33, "cpu", 2)


def test_the_paper_scale_changes_nothing():
    assert load_scale("paper", camvid_root="x").overrides == ()


def test_shared_runs_are_the_same_training():
    """Rows with runs_of train what the row they name trains (SSL Tables 1, 3, 4)."""
    for name in TABLES:
        for row in load_table(name).rows:
            if row.home[0] != name:
                other = load_table(row.home[0]).row(row.home[1])
                assert (row.recipe, row.overrides) == (other.recipe, other.overrides)


def paper_per_class(label: str, after: str) -> list[float]:
    text = SSL_PAPER.read_text()
    line = re.search(rf"^{re.escape(label)} ((?:\d+\.\d+ ?)+)$", text[text.index(after):], flags=re.M)[1]
    return [float(v) for v in line.split()]


@pytest.mark.skipif(not SSL_PAPER.is_file(), reason="the SSL paper's text is not beside the checkout")
@pytest.mark.parametrize("name, labels, after, classes", [
    ("ssl_table1", {"ce": "CE", "ssl3": "SSL(3)", "plus_ce": "CE(+)", "plus_ssl3": "SSL(+3)"}, "Method backg.",
     VOC_CLASSES),
    ("ssl_table4", {"ce": "CE", "ssl3": "SSL(3)"}, "Method road", CITYSCAPES_CLASSES),
])
def test_per_class_values_are_the_papers(name, labels, after, classes):
    for row in load_table(name).rows:
        printed = paper_per_class(labels[row.id], after)
        assert list(row.per_class) == list(classes)
        assert list(row.per_class.values()) + [row.paper] == printed
