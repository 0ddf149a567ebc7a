"""The table files of ``experiments/`` (one per paper table or figure) and the scales of
``experiments/scales/``, read into :class:`Table`, :class:`Row` and :class:`Scale`.

A table file names its paper and number, the base recipe (``recipe``: an ``experiment=`` choice),
the baseline row and the rows. A row has an ``id``, a ``label``, the paper's value (``paper``) and
either the overrides of its training run (on top of the recipe, or of its own ``recipe``), or
``evaluates: ROW`` with the overrides of a ``segrepro eval`` of that row's final checkpoint (rows
with equal overrides share one evaluation), or ``runs_of: TABLE/ROW``: the runs of a row of another
table that trained the same thing. ``result`` is where its number is in the run's metrics
(default ``miou``; ``crf.1.miou`` for a CRF step count); ``baseline`` may differ per row.

A figure file (``figure:`` instead of ``table:``) names what it ``draws`` and the training row whose
runs it reads (``runs_of: TABLE/ROW``), read into :class:`Figure`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from ..config import ConfigError


# the checkout's top folder (a source checkout or an editable install)
REPO = Path(__file__).resolve().parents[2]


def _find_experiments_dir() -> Path:
    """The table files: ``segrepro/experiments`` inside an installed wheel (pyproject.toml maps the
    repository's top-level ``experiments/`` there), else ``experiments/`` of the source checkout (where
    neither is, ``load_table`` says so, and ``experiments=PATH`` names another folder)."""
    package = Path(__file__).resolve().parents[1] / "experiments"
    return package if (package / "scales").is_dir() else REPO / "experiments"


EXPERIMENTS_DIR = _find_experiments_dir()

TABLE_KEYS = {"title", "paper", "table", "metric", "recipe", "baseline", "rows", "cited"}
ROW_KEYS = {"id", "label", "paper", "overrides", "recipe", "baseline", "evaluates", "result", "runs_of",
            "per_class", "paper_seconds_per_image"}


@dataclass(frozen=True)
class Row:
    """One row of a table. ``home`` is ``(table, row id)`` of the folder its runs live in: its own,
    or the one ``runs_of`` names (whose recipe and overrides it then has)."""

    id: str
    label: str
    paper: float
    recipe: str
    overrides: tuple[str, ...]
    baseline: str
    home: tuple[str, str]
    evaluates: Optional[str] = None
    result: str = "miou"
    per_class: Optional[dict] = None
    paper_seconds_per_image: Optional[float] = None

    @property
    def trains(self) -> bool:
        return self.evaluates is None


@dataclass(frozen=True)
class Table:
    name: str  # the file's stem: ssl_table2
    title: str
    paper: str
    number: int
    metric: str
    recipe: str
    baseline: str
    rows: tuple[Row, ...]
    cited: tuple[dict, ...] = field(default_factory=tuple)  # rows the paper cites from others: not rerun

    def row(self, row_id: str) -> Row:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise ConfigError(f"{self.name} has no row {row_id!r}; its rows: {', '.join(r.id for r in self.rows)}")


FIGURE_KEYS = {"title", "paper", "figure", "draws", "runs_of", "region_size", "sigma"}
# what a figure draws -> the keys that drawing takes (SSL Figures 3 and 4)
DRAWINGS = {"logged_statistics": {"scalars", "smoothing"},
            "hard_share": {"betas", "finer_betas", "paper_hard_percent"}}


@dataclass(frozen=True)
class Figure:
    """A paper figure drawn from the runs of ``row`` (a training row of a table, ``runs_of``).
    ``draws`` is ``logged_statistics`` (``scalars``: TensorBoard tags logged during training,
    ``smoothing``: the plot's moving-average weight) or ``hard_share`` (the share of hard examples at
    each of ``betas``, the paper's, and ``finer_betas``; the paper's own value ``paper_hard_percent``,
    ``{beta, value}``). ``region_size`` and ``sigma`` are the loss settings the paper drew it with."""

    name: str  # the file's stem: ssl_fig3
    title: str
    paper: str
    number: int
    draws: str
    row: Row
    region_size: int
    sigma: float
    scalars: tuple[str, ...] = ()
    smoothing: float = 0.0
    betas: tuple[float, ...] = ()
    finer_betas: tuple[float, ...] = ()
    paper_hard_percent: Optional[dict] = None


@dataclass(frozen=True)
class Scale:
    name: str
    description: str
    overrides: tuple[str, ...]


def table_names(directory: Path = EXPERIMENTS_DIR) -> list[str]:
    """The tables of ``directory`` (the files with a ``table:`` number), by name."""
    return sorted(path.stem for path in Path(directory).glob("*.yaml") if "table" in _read(path))


def figure_names(directory: Path = EXPERIMENTS_DIR) -> list[str]:
    """The figures of ``directory`` (the files with a ``figure:`` number), by name."""
    return sorted(path.stem for path in Path(directory).glob("*.yaml") if "figure" in _read(path))


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path} not found")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


def _unknown(keys, valid: set, where: str) -> None:
    unknown = sorted(set(keys) - valid)
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(valid))}")


def load_table(name: str, directory: Path = EXPERIMENTS_DIR) -> Table:
    """``experiments/<name>.yaml`` as a :class:`Table`, checked: unique row ids, baselines and
    ``evaluates`` naming rows of the table, ``runs_of`` naming a training row of another table."""
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"there is no table {name!r} ({path}); the tables: {', '.join(table_names(directory))}")
    raw = _read(path)
    if "figure" in raw:
        raise ConfigError(f"{path} is a figure, not a table: read it with load_figure")
    _unknown(raw, TABLE_KEYS, str(path))
    missing = sorted(TABLE_KEYS - {"cited"} - set(raw))
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}")
    rows = tuple(_row(entry, raw, name, path, directory) for entry in raw["rows"])
    ids = [row.id for row in rows]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{path}: row ids used twice: {', '.join(duplicates)}")
    for row in rows:
        for key, target in (("baseline", row.baseline), ("evaluates", row.evaluates)):
            if target is not None and target not in ids:
                raise ConfigError(f"{path}: row {row.id}: {key} {target!r} is not a row of the table")
        if row.evaluates is not None and not next(r for r in rows if r.id == row.evaluates).trains:
            raise ConfigError(f"{path}: row {row.id} evaluates {row.evaluates}, which trains nothing itself")
    return Table(name=name, title=raw["title"], paper=raw["paper"], number=int(raw["table"]),
                 metric=raw["metric"], recipe=raw["recipe"], baseline=raw["baseline"], rows=rows,
                 cited=tuple(raw.get("cited") or ()))


def _row(entry: dict, raw: dict, table: str, path: Path, directory: Path) -> Row:
    where = f"{path}: row {entry.get('id', '?')}"
    _unknown(entry, ROW_KEYS, where)
    for key in ("id", "label", "paper"):
        if key not in entry:
            raise ConfigError(f"{where}: missing {key}")
    common = dict(id=str(entry["id"]), label=str(entry["label"]), paper=float(entry["paper"]),
                  baseline=str(entry.get("baseline", raw["baseline"])), per_class=entry.get("per_class"),
                  paper_seconds_per_image=entry.get("paper_seconds_per_image"))
    if "runs_of" in entry:
        if {"overrides", "recipe", "evaluates", "result"} & set(entry):
            raise ConfigError(f"{where}: a row with runs_of takes the overrides of the row it names")
        other_table, _, other_id = str(entry["runs_of"]).partition("/")
        if other_table == table:
            raise ConfigError(f"{where}: runs_of names a row of the same table")
        other = load_table(other_table, directory).row(other_id)
        if other.home != (other_table, other_id) or not other.trains:
            raise ConfigError(f"{where}: runs_of {entry['runs_of']} must name a row that trains in its own folder")
        return Row(**common, recipe=other.recipe, overrides=other.overrides, home=other.home)
    if "overrides" not in entry:
        raise ConfigError(f"{where}: missing overrides (or runs_of)")
    return Row(**common, recipe=str(entry.get("recipe", raw["recipe"])),
               overrides=tuple(str(o) for o in entry["overrides"]), home=(table, str(entry["id"])),
               evaluates=entry.get("evaluates"), result=str(entry.get("result", "miou")))


def load_figure(name: str, directory: Path = EXPERIMENTS_DIR) -> Figure:
    """``experiments/<name>.yaml`` as a :class:`Figure`, checked: known keys, the keys of what it
    draws, ``runs_of`` naming a training row of a table that trains in its own folder."""
    path = Path(directory) / f"{name}.yaml"
    raw = _read(path)
    if "figure" not in raw:
        raise ConfigError(f"{path} is not a figure (no figure: number)")
    draws = raw.get("draws")
    if draws not in DRAWINGS:
        raise ConfigError(f"{path}: draws: {draws!r}; valid: {', '.join(sorted(DRAWINGS))}")
    _unknown(raw, FIGURE_KEYS | DRAWINGS[draws], str(path))
    missing = sorted((FIGURE_KEYS | DRAWINGS[draws]) - set(raw))
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}")
    if not 0 <= float(raw.get("smoothing", 0.0)) < 1:
        raise ConfigError(f"{path}: smoothing: {raw['smoothing']}; a moving-average weight in [0, 1)")
    table, _, row_id = str(raw["runs_of"]).partition("/")
    row = load_table(table, directory).row(row_id)
    if row.home != (table, row_id) or not row.trains:
        raise ConfigError(f"{path}: runs_of {raw['runs_of']} must name a row that trains in its own folder")
    return Figure(name=name, title=raw["title"], paper=raw["paper"], number=int(raw["figure"]), draws=draws,
                  row=row, region_size=int(raw["region_size"]), sigma=float(raw["sigma"]),
                  scalars=tuple(str(tag) for tag in raw.get("scalars", ())),
                  smoothing=float(raw.get("smoothing", 0.0)),
                  betas=tuple(float(b) for b in raw.get("betas", ())),
                  finer_betas=tuple(float(b) for b in raw.get("finer_betas", ())),
                  paper_hard_percent=raw.get("paper_hard_percent"))


def load_scale(name: str, camvid_root: str, directory: Path = EXPERIMENTS_DIR) -> Scale:
    """``experiments/scales/<name>.yaml``; ``${camvid_root}`` in its overrides becomes ``camvid_root``."""
    folder = Path(directory) / "scales"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"scale={name}: there is no {path}; the scales: {', '.join(choices)}")
    node = OmegaConf.merge({"camvid_root": camvid_root}, OmegaConf.load(path))
    raw = OmegaConf.to_container(node, resolve=True)
    _unknown(set(raw) - {"camvid_root"}, {"description", "overrides"}, str(path))
    return Scale(name=name, description=str(raw["description"]), overrides=tuple(str(o) for o in raw["overrides"]))
