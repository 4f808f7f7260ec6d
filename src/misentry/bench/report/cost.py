"""The cost section: fingerprint generation per method, building a tampered instance per
variant."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from matplotlib.axes import Axes

from misentry.bench.report.context import _Context
from misentry.bench.report.document import Block, Cell, Plot, Table
from misentry.bench.report.formatting import _num, _number, _value
from misentry.bench.report.plotting import _figure, _log_x, _tex_safe
from misentry.bench.report.vocabulary import FAMILIES, variant_family
from misentry.bench.results import ResultRow


def _cost(rows: Sequence[ResultRow], context: _Context) -> tuple[Block, ...]:
    del context
    generation = [r for r in rows if r.method != "tampering"]
    building = sorted(
        (r for r in rows if r.method == "tampering"),
        key=lambda r: FAMILIES.index(variant_family(r.variant)),
    )
    blocks: list[Block] = []
    if generation:
        keys = ("seconds_per_fingerprint", "forward_per_fingerprint", "backward_per_fingerprint")
        body = tuple(
            (Cell(r.method), *(Cell(_num(r.extra.get(k), 3)) for k in keys)) for r in generation
        )
        header = ("method", "seconds", "forward passes", "backward passes")
        blocks += ["Fingerprint generation, per fingerprint.", Table(header, (("", body),))]
    if building:
        groups: dict[str, list[tuple[Cell, ...]]] = defaultdict(list)
        for r in building:
            groups[variant_family(r.variant)].append(
                (
                    Cell(r.variant),
                    Cell(_value(r.extra.get("instances"))),
                    Cell(_num(r.extra.get("build_seconds_mean"), 3)),
                    Cell(_num(r.extra.get("build_seconds_max"), 3)),
                )
            )
        header = ("variant", "instances", "mean seconds", "max seconds")
        table = Table(header, tuple((f, tuple(g)) for f, g in groups.items()), "family")
        blocks += ["Building one tampered instance, per variant.", table]
    bars = {
        "seconds per fingerprint": [
            (r.method, _number(r.extra.get("seconds_per_fingerprint"))) for r in generation
        ],
        "seconds per tampered instance": [
            (r.variant, _number(r.extra.get("build_seconds_mean"))) for r in building
        ],
    }
    panels = [name for name, found in bars.items() if any(v is not None for _, v in found)]
    if panels:

        def draw(ax: Axes, panel: str) -> None:
            found = [(label, v) for label, v in bars[panel] if v is not None]
            ax.barh(range(len(found)), [v for _, v in found], color="C0")
            ax.set_yticks(range(len(found)))
            ax.set_yticklabels([_tex_safe(label) for label, _ in found], fontsize=7)
            ax.invert_yaxis()
            if all(v > 0 for _, v in found):
                _log_x(ax)
            ax.set_xlabel(panel)

        caption = "Seconds per fingerprint per method and per tampered instance per variant (log)."
        blocks.append(Plot(caption, _figure(panels, draw)))
    return tuple(blocks)
