"""The covertness experiment (the founding paper's Figure 5): how each main bundle's fingerprints
stand out in the target's outputs (the detectors' AUC) and from their sources (distances).

Its rows come from :func:`~misentry.bench.experiments.covertness_measure.covertness` on each main
bundle; it writes the per-query confidences and entropies behind the report's histograms
(``covertness.json``, :func:`write_covertness_samples`; :func:`read_covertness_samples` reads
them back) and the example grid (``examples.png``) into the results folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.axes import Axes

from misentry.atomic import write_text_atomic
from misentry.bench.experiments.base import Experiment, Measured
from misentry.bench.experiments.covertness_measure import Covertness, example_grid
from misentry.bench.report.context import ReportContext
from misentry.bench.report.document import Block, Cell, Plot, Table
from misentry.bench.report.formatting import best_of, fixed, number
from misentry.bench.report.plotting import figure_png, tex_safe
from misentry.bench.report.vocabulary import AUC_KEYS, EXAMPLES_NAME
from misentry.bench.results import ResultRow, measurement_row


@dataclass(frozen=True)
class CovertnessSpec(Experiment):
    """The covertness rows; no settings of their own, always measured."""

    name = "covertness"
    about = (
        "Whether someone who sees the target's outputs can tell fingerprints from normal "
        "queries: the ROC AUC of flagging low confidence or high entropy (0.5: "
        "indistinguishable, 1: every fingerprint flagged first), and how far fingerprints are "
        "from their natural sources. Covert is an AUC near 0.5 and a high PSNR."
    )
    optional = False

    def rows(self, measured: Measured) -> list[ResultRow]:
        """One row per main bundle: its covertness against the ``test`` pool."""
        return [
            measurement_row(
                self.name, measured.dataset, m, len(fps), measured.covertness[m].to_row_extra()
            )
            for m, fps in measured.built.main.items()
        ]

    def write(self, measured: Measured, folder: Path) -> None:
        """``covertness.json`` and the example grid ``examples.png``."""
        write_covertness_samples(folder, measured.covertness, measured.dataset)
        example_grid(measured.built.main, measured.pools["source"], folder / EXAMPLES_NAME)

    @classmethod
    def section(cls, rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
        """The detectors' AUC, output statistics and distances per method, the confidence
        histograms and the example grid."""
        return _covertness(rows, context)


SAMPLES_NAME = "covertness.json"
"""The samples file's name in a results folder."""

SAMPLES_FORMAT = "misentry-covertness-samples"
SAMPLES_VERSION = 1


@dataclass(frozen=True)
class OutputSamples:
    """The target's output on each query of one set: top-1 softmax probability and softmax
    entropy (nats), in query order, equally long."""

    confidence: tuple[float, ...]
    entropy: tuple[float, ...]


@dataclass(frozen=True)
class CovertnessSamples:
    """What :func:`read_covertness_samples` returns: the normal queries' outputs once, and each
    method's fingerprints' outputs (in the order written); ``dataset`` when the writer named one."""

    normal: OutputSamples
    methods: Mapping[str, OutputSamples]
    dataset: str | None = None


def write_covertness_samples(
    path: Path | str, by_method: Mapping[str, Covertness], dataset: str | None = None
) -> Path:
    """Write the per-query confidences and entropies of ``by_method`` (one :class:`Covertness`
    per fingerprint method, all measured against the same normal images) as JSON, atomically,
    to ``path`` (a file, or a folder to hold :data:`SAMPLES_NAME`). Returns the file's path.

    The document: ``{"format": "misentry-covertness-samples", "version": 1, "dataset": str or
    null, "normal": {"confidence": [...], "entropy": [...]}, "methods": {METHOD: {"confidence":
    [...], "entropy": [...]}, ...}}``.
    """
    if not by_method:
        raise ValueError("write_covertness_samples: no methods to write")
    first_name, first = next(iter(by_method.items()))
    for name, measured in by_method.items():
        same = measured.normal_confidence.shape == first.normal_confidence.shape and bool(
            torch.allclose(measured.normal_confidence, first.normal_confidence, rtol=0, atol=1e-9)
        )
        if not same:
            raise ValueError(
                f"write_covertness_samples: {name!r} was measured on other normal images than "
                f"{first_name!r}; measure every method against the same target and normal pool, "
                "or write one file per target"
            )
    document = {
        "format": SAMPLES_FORMAT,
        "version": SAMPLES_VERSION,
        "dataset": dataset,
        "normal": _samples_json(first.normal_confidence, first.normal_entropy),
        "methods": {
            name: _samples_json(measured.confidence, measured.entropy)
            for name, measured in by_method.items()
        },
    }
    path = Path(path)
    if path.is_dir():
        path = path / SAMPLES_NAME
    return write_text_atomic(path, json.dumps(document, allow_nan=False) + "\n")


def read_covertness_samples(path: Path | str) -> CovertnessSamples:
    """The samples in a file :func:`write_covertness_samples` wrote (or in the folder holding
    one). Raises FileNotFoundError when there is none and ValueError when it is not readable."""
    path = Path(path)
    if path.is_dir():
        path = path / SAMPLES_NAME
    if not path.is_file():
        raise FileNotFoundError(f"read_covertness_samples: no samples file at {path}")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"read_covertness_samples: cannot read {path}: {err}") from None
    if not isinstance(document, dict) or document.get("format") != SAMPLES_FORMAT:
        raise ValueError(f"read_covertness_samples: {path} is not a covertness samples file")
    if document.get("version") != SAMPLES_VERSION:
        raise ValueError(
            f"read_covertness_samples: {path} has version {document.get('version')}; this "
            f"misentry reads version {SAMPLES_VERSION}"
        )
    methods = document.get("methods")
    dataset = document.get("dataset")
    if not isinstance(methods, dict) or not (dataset is None or isinstance(dataset, str)):
        raise ValueError(f"read_covertness_samples: {path} lacks 'methods' or has a bad 'dataset'")
    return CovertnessSamples(
        _samples_of(document.get("normal"), f"{path}: normal"),
        {str(name): _samples_of(raw, f"{path}: {name}") for name, raw in methods.items()},
        dataset,
    )


def _samples_json(confidence: torch.Tensor, ent: torch.Tensor) -> dict[str, list[float]]:
    return {"confidence": confidence.double().tolist(), "entropy": ent.double().tolist()}


def _samples_of(raw: Any, where: str) -> OutputSamples:
    if isinstance(raw, dict):
        columns = [raw.get("confidence"), raw.get("entropy")]
        if all(isinstance(c, list) and all(_is_number(v) for v in c) for c in columns) and len(
            columns[0] or []
        ) == len(columns[1] or []):
            return OutputSamples(*(tuple(float(v) for v in c or []) for c in columns))
    raise ValueError(
        f"read_covertness_samples: {where} needs equally long number lists 'confidence' and "
        "'entropy'"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def samples_in(folder: Path) -> tuple[CovertnessSamples | None, str]:
    """The run's covertness samples (None when it wrote none), or why they are unreadable."""
    if not (folder / SAMPLES_NAME).is_file():
        return None, ""
    try:
        return read_covertness_samples(folder / SAMPLES_NAME), ""
    except ValueError as err:
        return None, f"No confidence histograms: {err}."


def _covertness(rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
    lines = {r.method: r.extra for r in rows}  # one row per method
    auc = {k: {m: number(e.get(k)) for m, e in lines.items()} for k in AUC_KEYS}
    best = {
        k: best_of({m: None if a is None else -abs(a - 0.5) for m, a in v.items()}, 3)
        for k, v in auc.items()
    }

    def pair(extra: Mapping[str, Any], key: str) -> str:
        return f"{fixed(extra.get(key), 3)} / {fixed(extra.get(key + '_normal'), 3)}"

    body = tuple(
        (
            Cell(method),
            *(Cell(fixed(auc[k][method], 3), bold=method in best[k]) for k in AUC_KEYS),
            Cell(pair(extra, "mean_confidence")),
            Cell(pair(extra, "mean_entropy")),
            Cell(fixed(extra.get("psnr_mean"), 1)),
            Cell(fixed(extra.get("l2_mean"), 3)),
            Cell(fixed(extra.get("linf_mean"), 3)),
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
    samples, problem = samples_in(context.folder)
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
        ax.set_title(tex_safe(method))
        ax.set_xlabel("top-1 confidence")
        ax.set_ylabel("density")

    return figure_png(methods, draw)
