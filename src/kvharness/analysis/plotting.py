"""The two steps every analysis figure shares: a headless pyplot, and saving a figure as a PNG.

matplotlib is imported lazily (inside the call), so importing an analysis module stays cheap and works
where no figure is drawn."""

from __future__ import annotations

from pathlib import Path

DPI = 110


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, rect: tuple | None = None, dpi: int = DPI) -> Path:
    """Lay ``fig`` out tightly (inside ``rect`` when given, leaving room for a suptitle), write it to
    ``path`` and free it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout(**({"rect": rect} if rect else {}))
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
