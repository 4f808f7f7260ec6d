"""The covertness/sensitivity frontier: MiSentry's ``covertness`` swept between the strict
profile (0) and the covert one (1), each point's confidence-detector AUC against its DR@5 on the
subtle variants, beside every other method's point (at its one setting)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes

from misentry.bench.experiments.base import (
    EXPERIMENT_NS,
    MAIN,
    Built,
    BuiltInstance,
    BundleSpec,
    Experiment,
    Measured,
    Setup,
)
from misentry.bench.experiments.covertness_measure import Covertness
from misentry.bench.report.context import ReportContext
from misentry.bench.report.document import Block, Cell, Plot
from misentry.bench.report.formatting import fixed, unique
from misentry.bench.report.plotting import figure_png, tex_safe
from misentry.bench.report.points import (
    RATE_COLUMNS,
    Column,
    Point,
    by_variant,
    curve,
    number_column,
    of_variant,
    points_of,
)
from misentry.bench.report.vocabulary import AUC_COLUMNS, AUC_KEYS, PLOT_NS
from misentry.bench.results import ResultRow, detection_rows
from misentry.fingerprint.bundle import FingerprintSet
from misentry.fingerprint.methods.misentry import Profile

SUBTLE_VARIANTS = (
    "ft_last_lr1e-5",
    "ft_last_lr1e-4",
    "ft_all_lr1e-5",
    "ft_all_lr1e-4",
    "pruning",
    "quantization",
    "unlearning",
)
"""The variants the frontier measures detection on: those natural images miss on mnist5k
(DR@5 of natural fingerprints 0.000 on each, 10 instances per variant)."""


@dataclass(frozen=True)
class FrontierSpec(Experiment):
    """The frontier's settings.

    Attributes:
        covertness: the sweep's inner points (the strict and covert profiles are the main
            ``misentry`` and ``misentry-covert`` bundles). Denser near 1: on mnist5k the
            confidence detector's AUC stays at 0.996 or above up to 0.75 and falls from there
            (0.93 at 0.9, 0.89 at 0.95, 0.80 at 0.98, 0.70 for the covert profile).
        variants: the variants detection is measured on (those the preset builds).
        n_fingerprints: fingerprints per sweep bundle; None: the preset's.
    """

    covertness: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 0.95)
    variants: tuple[str, ...] = SUBTLE_VARIANTS
    n_fingerprints: int | None = None

    name = "frontier"
    about = (
        "Detection of the subtle variants against output covertness: MiSentry swept over its "
        "covertness weight, the other methods at their one setting. Up is more sensitive, left "
        "is more covert (0.5: fingerprints look like normal queries)."
    )

    def bundles(self, setup: Setup) -> list[BundleSpec]:
        """One MiSentry bundle per covertness of the sweep (the preset's overrides kept)."""
        misentry = dict(setup.method_overrides.get("misentry", {}))
        n = self.n_fingerprints or setup.n_fingerprints
        return [
            BundleSpec(self.name, f"covertness={c:g}", "misentry", {**misentry, "covertness": c}, n)
            for c in self.covertness
        ]

    def evaluated_on(self, built: Built) -> list[BuiltInstance]:
        """The detection table's instances of the subtle variants."""
        wanted = set(self.variants)
        return [i for i in built.detection_instances if i.variant in wanted]

    def rows(self, measured: Measured) -> list[ResultRow]:
        """Per point (each main bundle, each sweep bundle), the detection of the subtle variants
        pooled, with the point's covertness and detector AUCs."""
        built = measured.built
        wanted = [v for v in self.variants if v in set(built.setup.variants)]
        points: list[tuple[str, str, FingerprintSet, Any, Covertness, float | None]] = []
        for method, fps in built.main.items():
            profile = Profile.of_method(method)
            c = None if profile is None else profile.covertness
            setting = "" if c is None else f"covertness={c:g}"
            d = measured.evaluated[(MAIN, method)]
            points.append((method, setting, fps, d, measured.covertness[method], c))
        for label, fps in built.bundles.get(self.name, {}).items():
            sweep_c = float(label.split("=", 1)[1])
            d = measured.evaluated[(self.name, label)]
            points.append(("misentry", label, fps, d, measured.measure(fps), sweep_c))
        rows: list[ResultRow] = []
        for method, setting, fps, d, cov, c in points:
            pooled = [count for variant in wanted for count in d.get(variant, [])]
            if not pooled:
                continue
            extra = {
                "covertness": c,
                "auc_confidence": cov.auc_confidence,
                "auc_entropy": cov.auc_entropy,
                "variants": ",".join(wanted),
            }
            rows += detection_rows(
                measured.dataset,
                method,
                len(fps),
                {"subtle": pooled},
                EXPERIMENT_NS,
                self.name,
                extra,
                setting,
            )
        return rows

    @classmethod
    def section(cls, rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
        """A table per variant group and the frontier plot."""
        return _frontier(rows, context)


def _frontier(rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
    points = points_of(rows)
    sweep = sorted(
        (p for p in points if p.number("covertness") is not None),
        key=lambda p: (p.method, p.variant, p.number("covertness") or 0.0),
    )
    others = [p for p in points if p.number("covertness") is None]
    columns: list[Column] = [
        ("method", lambda p: Cell(p.method)),
        ("covertness", lambda p: Cell(fixed(p.number("covertness"), 3) if p in sweep else "–")),
        *(number_column(name, key, 3) for key, name in AUC_COLUMNS),
        *RATE_COLUMNS,
    ]
    variants = unique(str(p.extra.get("variants", "")) for p in points if p.extra.get("variants"))
    blocks: list[Block] = [by_variant([*sweep, *others], columns, "variants")]
    if variants:
        blocks.append(f"Subtle variants averaged: {'; '.join(variants)}.")
    png = _frontier_plot(sweep, others, context.colors)
    if png is not None:
        caption = (
            f"DR@{PLOT_NS} on the subtle variants vs the AUC of the confidence detector; the "
            "MiSentry sweep as a line labelled with its covertness weight, other methods as points."
        )
        blocks.append(Plot(caption, png))
    blocks.append(
        "To pick an operating point, fix the largest AUC an observer may see (how far from 0.5 "
        "you can afford to be) and take the sweep point with the highest DR@5 left of it; a "
        "method below and to the right of the line is dominated by some covertness setting."
    )
    return tuple(blocks)


def _frontier_plot(
    sweep: Sequence[Point], others: Sequence[Point], colors: dict[str, str]
) -> bytes | None:
    drawn = [*sweep, *others]
    variants = [
        v for v in unique(p.variant for p in drawn) if curve(of_variant(drawn, v), AUC_KEYS[0])
    ]
    if not variants:
        return None

    def draw(ax: Axes, variant: str) -> None:
        for method in unique(p.method for p in sweep):
            line = [p for p in of_variant(sweep, variant) if p.method == method]
            xy = [(p.number(AUC_KEYS[0]), p.rate(PLOT_NS), p.number("covertness")) for p in line]
            kept = [(x, y, c) for x, y, c in xy if x is not None and y is not None]
            if kept:
                xs, ys = [x for x, _, _ in kept], [y for _, y, _ in kept]
                ax.plot(xs, ys, marker="o", color=colors[method], label=tex_safe(method))
                for x, y, c in kept:
                    ax.annotate(
                        f"c={c:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
                    )
        for point in of_variant(others, variant):
            px, py = point.number(AUC_KEYS[0]), point.rate(PLOT_NS)
            if px is not None and py is not None:
                color = colors[point.method]
                ax.scatter([px], [py], marker="s", color=color, label=tex_safe(point.method))
                ax.annotate(
                    tex_safe(point.method),
                    (px, py),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                )
        ax.axvline(0.5, color="k", linestyle=":", linewidth=1)
        ax.set_title(tex_safe(variant))
        ax.set_xlabel("AUC of the confidence detector")
        ax.set_ylabel(f"DR@{PLOT_NS}")
        ax.set_ylim(-0.02, 1.02)

    return figure_png(variants, draw, width=5.5)
