"""The one figure maker of the report: panels in a grid with one shared legend, saved as a
reproducible PNG."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure


def figure_png(
    panels: Sequence[str], draw: Callable[[Axes, str], None], width: float = 4.2
) -> bytes:
    """A PNG of one panel per name (``width`` inches each), ``draw`` filling each, one legend
    for all."""
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(width * columns, 3.2 * lines + 0.6), dpi=100, layout="constrained")
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for ax, name in zip(axes, panels, strict=False):
        draw(ax, name)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    legend: dict[str, Any] = {}
    for ax in axes[: len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    if legend:
        figure.legend(
            list(legend.values()),
            list(legend),
            loc="outside lower center",
            ncols=min(4, len(legend)),
        )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def tex_safe(label: str) -> str:
    """A legend label matplotlib shows as written (``$`` would start mathtext)."""
    return label.replace("$", r"\$")


def log_x_axis(ax: Axes, symlog: bool = False) -> None:
    """A logarithmic x axis (``symlog``: linear around 0) with plain tick labels: the default
    ``10^k`` labels are mathtext, which looks for TeX fonts a minimal install lacks."""
    from matplotlib.ticker import LogFormatter, NullFormatter

    if symlog:
        ax.set_xscale("symlog", linthresh=1)
    else:
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(NullFormatter())
