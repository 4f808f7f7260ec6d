"""The covertness section: the detectors' AUC, output statistics and distances per method, the
confidence histograms and the example grid."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes

from misentry.bench.experiments.covertness import CovertnessSamples
from misentry.bench.report.context import _Context
from misentry.bench.report.document import Block, Cell, Plot, Table
from misentry.bench.report.formatting import _best_of, _num, _number
from misentry.bench.report.plotting import _figure, _tex_safe
from misentry.bench.report.vocabulary import AUC_KEYS, EXAMPLES_NAME
from misentry.bench.results import ResultRow


def _covertness(rows: Sequence[ResultRow], context: _Context) -> tuple[Block, ...]:
    lines = {r.method: r.extra for r in rows}  # one row per method
    auc = {k: {m: _number(e.get(k)) for m, e in lines.items()} for k in AUC_KEYS}
    best = {
        k: _best_of({m: None if a is None else -abs(a - 0.5) for m, a in v.items()}, 3)
        for k, v in auc.items()
    }

    def pair(extra: Mapping[str, Any], key: str) -> str:
        return f"{_num(extra.get(key), 3)} / {_num(extra.get(key + '_normal'), 3)}"

    body = tuple(
        (
            Cell(method),
            *(Cell(_num(auc[k][method], 3), bold=method in best[k]) for k in AUC_KEYS),
            Cell(pair(extra, "mean_confidence")),
            Cell(pair(extra, "mean_entropy")),
            Cell(_num(extra.get("psnr_mean"), 1)),
            Cell(_num(extra.get("l2_mean"), 3)),
            Cell(_num(extra.get("linf_mean"), 3)),
        )
        for method, extra in lines.items()
    )
    header = (
        "method",
        "AUC confidence",
        "AUC entropy",
        "mean confidence fp / normal",
        "mean entropy fp / normal (nats)",
        "PSNR (dB)",
        "L2",
        "L-inf",
    )
    blocks: list[Block] = [
        "Bold: the AUC closest to 0.5 (the most covert). Distances are to each fingerprint's "
        "natural source in [0, 1] pixel units; PSNR leaves out fingerprints equal to their source.",
        Table(header, (("", body),)),
    ]
    samples, problem = context.samples
    if problem:
        blocks.append(problem)
    elif samples is not None and samples.dataset in (None, rows[0].dataset):
        png = _histograms(samples, context.colors)
        if png is not None:
            caption = (
                "Top-1 confidence of the target on fingerprints (colour) and on normal queries "
                "(gray), one panel per method; dashed: the normal queries' 5 % quantile."
            )
            blocks.append(Plot(caption, png))
    grid = context.folder / EXAMPLES_NAME
    if grid.is_file():
        caption = "Fingerprints, their sources and the differences (amplified), one row per method."
        link = Path(os.path.relpath(grid, context.out)).as_posix()
        blocks.append(Plot(caption, grid.read_bytes(), link))
    return tuple(blocks)


def _histograms(samples: CovertnessSamples, colors: dict[str, str]) -> bytes | None:
    methods = [m for m, s in samples.methods.items() if s.confidence]
    if not methods or not samples.normal.confidence:
        return None
    normal = sorted(samples.normal.confidence)
    quantile = normal[int(0.05 * (len(normal) - 1))]
    bins = [i / 20 for i in range(21)]

    def draw(ax: Axes, method: str) -> None:
        ax.hist(normal, bins=bins, density=True, color="0.6", alpha=0.6, label="normal")
        ax.hist(
            samples.methods[method].confidence,
            bins=bins,
            density=True,
            color=colors.get(method, "C0"),
            alpha=0.6,
            label="fingerprints",
        )
        ax.axvline(quantile, color="k", linestyle="--", linewidth=1)
        ax.set_title(_tex_safe(method))
        ax.set_xlabel("top-1 confidence")
        ax.set_ylabel("density")

    return _figure(methods, draw)
