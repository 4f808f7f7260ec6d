"""The ablation section: one line per configuration, mean DR@1 / DR@5 and DR@5 per family."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes

from misentry.bench.report.context import _Context
from misentry.bench.report.document import Block, Cell, Plot, Table
from misentry.bench.report.formatting import _best_of, _pct, _rate, _unique
from misentry.bench.report.plotting import _figure, _tex_safe
from misentry.bench.report.vocabulary import FAMILIES, PLOT_NS, TABLE_NS, variant_family
from misentry.bench.results import ResultRow


def _ablation(rows: Sequence[ResultRow], context: _Context) -> tuple[Block, ...]:
    del context
    configs = _unique(r.setting or str(r.extra.get("config", "")) for r in rows)
    configs.sort(key=lambda c: c != "default")
    tested = [r for r in rows if r.variant != "identity" and r.detection_rate is not None]
    families = [f for f in FAMILIES if any(variant_family(r.variant) == f for r in tested)]

    def mean(config: str, ns: int, family: str | None = None) -> float | None:
        rates = [
            _rate(r)
            for r in tested
            if (r.setting or str(r.extra.get("config", ""))) == config
            and r.ns == ns
            and (family is None or variant_family(r.variant) == family)
        ]
        return sum(rates) / len(rates) if rates else None

    columns: list[tuple[str, int, str | None]] = [
        (f"mean DR@{ns} (%)", ns, None) for ns in TABLE_NS
    ]
    columns += [(f"{family} DR@{PLOT_NS} (%)", PLOT_NS, family) for family in families]
    values = {c: [mean(c, ns, family) for _, ns, family in columns] for c in configs}
    best = [_best_of({c: values[c][i] for c in configs}, 3) for i in range(len(columns))]
    changes = {r.setting: str(r.extra.get("changes", "")) for r in rows}
    body = tuple(
        (
            Cell(config),
            Cell(changes.get(config, "")),
            *(Cell(_pct(v), bold=config in best[i]) for i, v in enumerate(values[config])),
        )
        for config in configs
    )
    header = ("configuration", "changes", *(name for name, _, _ in columns))
    variants = _unique(r.variant for r in tested)
    blocks: list[Block] = [
        f"Means over the {len(variants)} tampered variants evaluated ({', '.join(variants)}; "
        "the identity control left out), each variant weighing the same. Bold: the best of "
        "each column.",
        Table(header, (("", body),)),
    ]
    if any(v is not None for line in values.values() for v in line[: len(TABLE_NS)]):

        def draw(ax: Axes, _: str) -> None:
            height = 0.8 / len(TABLE_NS)
            for i, ns in enumerate(TABLE_NS):
                ys = [k + i * height for k in range(len(configs))]
                xs = [values[c][i] or 0.0 for c in configs]
                ax.barh(ys, xs, height=height, color=f"C{i}", label=f"mean DR@{ns}")
            ax.set_yticks([k + 0.4 - height / 2 for k in range(len(configs))])
            ax.set_yticklabels([_tex_safe(c) for c in configs])
            ax.invert_yaxis()
            ax.set_xlim(0, 1.02)
            ax.set_xlabel("detection rate")

        caption = "Mean detection rate over the tampered variants per configuration."
        blocks.append(Plot(caption, _figure([""], draw, width=6.5)))
    return tuple(blocks)
