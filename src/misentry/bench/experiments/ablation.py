"""The ablation (the founding paper's Table 2): one MiSentry bundle per configuration, each a
change of the strict profile, evaluated on the detection table's instances."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes

from misentry.bench.experiments.base import (
    EXPERIMENT_NS,
    BundleSpec,
    Experiment,
    Measured,
    Setup,
)
from misentry.bench.report.context import ReportContext
from misentry.bench.report.document import Block, Cell, Plot, Table
from misentry.bench.report.formatting import best_of, pct, rate_of, unique
from misentry.bench.report.plotting import figure_png, tex_safe
from misentry.bench.report.vocabulary import FAMILIES, PLOT_NS, TABLE_NS, variant_family
from misentry.bench.results import ResultRow, detection_rows

ABLATIONS: tuple[tuple[str, Mapping[str, Any]], ...] = (
    ("default", {}),
    ("zoo: ft_last only", {"zoo": ("ft_last:1e-4x4",)}),
    ("zoo: ft_all only", {"zoo": ("ft_all:1e-5x4", "ft_all:1e-4x4")}),
    ("zoo: retrain only", {"zoo": ("retrain_last",)}),
    ("no meta-learning", {"meta_learning": False}),
    ("no entropy band", {"band": False}),
    ("no screening", {"screening": False}),
    ("L2 (eps 2.0)", {"norm": "l2", "eps": 2.0}),
)
"""MiSentry configurations of the ablation (the paper's Table 2), as overrides of the strict
profile; ``default`` is the profile itself. The default zoo mixes all three kinds."""


@dataclass(frozen=True)
class AblationSpec(Experiment):
    """The ablation (the paper's Table 2): one MiSentry bundle per configuration, evaluated on
    the detection table's instances.

    Attributes:
        configs: (name, overrides of the strict profile) pairs.
        n_fingerprints: fingerprints per ablation bundle (fewer than the main bundles: eight
            configurations of the costliest generator).
    """

    configs: tuple[tuple[str, Mapping[str, Any]], ...] = ABLATIONS
    n_fingerprints: int = 30

    name = "ablation"
    about = (
        "MiSentry with one component changed per configuration, detection measured on every "
        "evaluated variant. The drop from the default line is what that component contributes."
    )

    def bundles(self, setup: Setup) -> list[BundleSpec]:
        """One MiSentry bundle per configuration: the preset's MiSentry overrides, then the
        configuration's."""
        misentry = dict(setup.method_overrides.get("misentry", {}))
        return [
            BundleSpec(self.name, name, "misentry", {**misentry, **changes}, self.n_fingerprints)
            for name, changes in self.configs
        ]

    def rows(self, measured: Measured) -> list[ResultRow]:
        """Per configuration, variant and N_S of :data:`EXPERIMENT_NS`, the mean exact rate."""
        rows: list[ResultRow] = []
        for name, changes in self.configs:
            extra = {"config": name, "changes": changes_text(changes)}
            rows += detection_rows(
                measured.dataset,
                "misentry",
                len(measured.built.bundles[self.name][name]),
                measured.evaluated[(self.name, name)],
                EXPERIMENT_NS,
                self.name,
                extra,
                name,
            )
        return rows

    @classmethod
    def section(cls, rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
        """One line per configuration, mean DR@1 / DR@5 and DR@5 per family."""
        del context
        return _ablation(rows)


def changes_text(changes: Mapping[str, Any]) -> str:
    """A configuration's overrides as text (the strict profile itself for none)."""
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "(the strict profile)"


def _ablation(rows: Sequence[ResultRow]) -> tuple[Block, ...]:
    configs = unique(r.setting or str(r.extra.get("config", "")) for r in rows)
    configs.sort(key=lambda c: c != "default")
    tested = [r for r in rows if r.variant != "identity" and r.detection_rate is not None]
    families = [f for f in FAMILIES if any(variant_family(r.variant) == f for r in tested)]

    def mean(config: str, ns: int, family: str | None = None) -> float | None:
        rates = [
            rate_of(r)
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
    best = [best_of({c: values[c][i] for c in configs}, 3) for i in range(len(columns))]
    changes = {r.setting: str(r.extra.get("changes", "")) for r in rows}
    body = tuple(
        (
            Cell(config),
            Cell(changes.get(config, "")),
            *(Cell(pct(v), bold=config in best[i]) for i, v in enumerate(values[config])),
        )
        for config in configs
    )
    header = ("configuration", "changes", *(name for name, _, _ in columns))
    variants = unique(r.variant for r in tested)
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
            ax.set_yticklabels([tex_safe(c) for c in configs])
            ax.invert_yaxis()
            ax.set_xlim(0, 1.02)
            ax.set_xlabel("detection rate")

        caption = "Mean detection rate over the tampered variants per configuration."
        blocks.append(Plot(caption, figure_png([""], draw, width=6.5)))
    return tuple(blocks)
