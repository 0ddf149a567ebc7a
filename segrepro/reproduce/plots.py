"""matplotlib for the report's figures: pyplot on the file-only backend (no display needed), and a
figure saved as a PNG atomically (a crash leaves the previous file whole)."""
from __future__ import annotations

from pathlib import Path

from ..files import atomic_write


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: the tables' text needs none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` as a PNG (120 dpi) and close it."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    pyplot().close(fig)
