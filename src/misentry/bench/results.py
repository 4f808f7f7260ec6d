"""Benchmark results as rows: one per (experiment, dataset, method, variant, ns).

Every experiment of the benchmark reports in this one shape, so one file holds a whole run and
the report is rebuilt from it. The detection table's rows have ``experiment = "detection"``;
other experiments add their own fields under ``extra``. :func:`write_results` writes
``results.json`` (the rows, with a format version) and ``results.csv`` (the same rows, ``extra``
flattened to ``extra.KEY`` columns), each atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from misentry.atomic import write_text_atomic
from misentry.bench.metrics import detection_rate

FORMAT = "misentry-results"
VERSION = 2
"""Version 2 added ``setting``; version 1 files are read with ``setting = ""``."""

COLUMNS = (
    "experiment",
    "dataset",
    "method",
    "variant",
    "setting",
    "ns",
    "detection_rate",
    "ci_low",
    "ci_high",
    "n_instances",
    "n_fingerprints",
)
"""The fixed columns, in order; ``extra`` keys follow in the CSV."""

SKIPPED_FILE = "skipped.json"
"""The variants a ``--target`` run could not build (variant -> the builder's reason), in the
results folder beside ``results.json`` when there are any; also what an instance job that built
nothing leaves in its folder."""


@dataclass(frozen=True)
class ResultRow:
    """One measured cell.

    Attributes:
        experiment: ``detection``, ``leakage``, ``covertness``, ``sensitivity``, ``ablation``,
            ``cost`` or ``frontier``.
        dataset: the dataset preset's name (e.g. ``mnist5k``).
        method: the fingerprint method (``misentry`` is the strict profile, ``misentry-covert``
            the paper's).
        variant: the BIVBench variant slug (``identity`` for the control).
        ns: fingerprints per check (N_S).
        detection_rate: mean over instances of the exact expected detection rate; None for
            rows that measure something else (``covertness``, ``cost``: see ``extra``).
        ci_low, ci_high: 95 % interval of that mean (None exactly when the rate is).
        n_instances: instances averaged.
        n_fingerprints: fingerprints in the bundle (N).
        extra: experiment-specific values (JSON scalars).
        setting: which point of its experiment the row is, when one (method, variant, N_S)
            has several: ``n_leaked=8`` (leakage), ``steps=50`` (sensitivity), the ablation's
            configuration name, ``covertness=0.5`` (frontier); empty for the detection table.
    """

    experiment: str
    dataset: str
    method: str
    variant: str
    ns: int
    detection_rate: float | None
    ci_low: float | None
    ci_high: float | None
    n_instances: int
    n_fingerprints: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    setting: str = ""

    def __post_init__(self) -> None:
        problems = []
        if self.ns < 1 or self.ns > self.n_fingerprints:
            problems.append(f"ns {self.ns} outside [1, n_fingerprints={self.n_fingerprints}]")
        rate, low, high = self.detection_rate, self.ci_low, self.ci_high
        if rate is None or low is None or high is None:
            if (rate, low, high) != (None, None, None):
                problems.append("detection_rate, ci_low and ci_high are all set or all None")
        else:
            for name, value in (("detection_rate", rate), ("ci_low", low), ("ci_high", high)):
                if not (isinstance(value, float | int) and 0.0 <= value <= 1.0):
                    problems.append(f"{name} {value!r} outside [0, 1]")
            if not problems and not low <= rate <= high:
                problems.append("the interval must hold the rate")
        if self.n_instances < 1:
            problems.append(f"n_instances must be >= 1, not {self.n_instances}")
        if problems:
            raise ValueError(f"ResultRow ({self.method}, {self.variant}): {'; '.join(problems)}")

    @property
    def key(self) -> tuple[str, str, str, str, str, int]:
        return (self.experiment, self.dataset, self.method, self.variant, self.setting, self.ns)


def detection_rows(
    dataset: str,
    method: str,
    n_fingerprints: int,
    d_per_variant: Mapping[str, Sequence[int]],
    ns_values: Iterable[int],
    experiment: str = "detection",
    extra: Mapping[str, Any] | None = None,
    setting: str = "",
) -> list[ResultRow]:
    """Rows of the detection table for one bundle: for each variant and each N_S (those above
    ``n_fingerprints`` are skipped: no such check exists), the mean exact expected detection rate
    over the variant's instances, from ``d`` = fingerprints each instance labels differently."""
    rows = []
    for variant, ds in d_per_variant.items():
        for ns in ns_values:
            if ns > n_fingerprints:
                continue
            rate = detection_rate(list(ds), n_fingerprints, ns)
            rows.append(
                ResultRow(
                    experiment,
                    dataset,
                    method,
                    variant,
                    ns,
                    rate.mean,
                    rate.low,
                    rate.high,
                    rate.instances,
                    n_fingerprints,
                    dict(extra or {}),
                    setting,
                )
            )
    return rows


def write_results(rows: Sequence[ResultRow], out: Path | str) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.csv`` under ``out``; refuses duplicate keys."""
    seen: dict[tuple[str, str, str, str, str, int], ResultRow] = {}
    for row in rows:
        if row.key in seen:
            raise ValueError(f"write_results: two rows for {row.key}")
        seen[row.key] = row
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = {"format": FORMAT, "version": VERSION, "rows": [asdict(row) for row in rows]}
    json_path = write_text_atomic(out / "results.json", json.dumps(document, indent=1) + "\n")
    csv_path = write_text_atomic(out / "results.csv", _csv(rows))
    return json_path, csv_path


def read_results(path: Path | str) -> list[ResultRow]:
    """The rows of a ``results.json`` (or of the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"read_results: cannot read {path}: {err}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"read_results: {path} is not a misentry results file")
    version = document.get("version")
    if version not in (1, VERSION):
        raise ValueError(
            f"read_results: {path} has format version {version}; "
            f"this misentry reads versions 1 and {VERSION}"
        )
    names = {f.name for f in fields(ResultRow)}
    rows = []
    for i, raw in enumerate(document.get("rows", [])):
        if isinstance(raw, dict) and version == 1:
            raw = {**raw, "setting": ""}
        if not isinstance(raw, dict) or set(raw) != names:
            raise ValueError(f"read_results: row {i} of {path} does not have the row fields")
        rows.append(ResultRow(**raw))
    return rows


def _csv(rows: Sequence[ResultRow]) -> str:
    extra_keys = sorted({key for row in rows for key in row.extra})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*COLUMNS, *(f"extra.{key}" for key in extra_keys)])
    for row in rows:
        values = [getattr(row, column) for column in COLUMNS]
        cells = [_cell(v) for v in values] + [_cell(row.extra.get(key)) for key in extra_keys]
        writer.writerow(cells)
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def measurement_row(
    experiment: str,
    dataset: str,
    method: str,
    n_fingerprints: int,
    extra: Mapping[str, Any],
    variant: str = "-",
    setting: str = "",
) -> ResultRow:
    """A row of an experiment that measures something other than a detection rate (a bundle's
    covertness, its cost): no rate, the values in ``extra``."""
    return ResultRow(
        experiment,
        dataset,
        method,
        variant,
        1,
        None,
        None,
        None,
        1,
        n_fingerprints,
        dict(extra),
        setting,
    )


def write_skipped(skipped: Mapping[str, str], folder: Path | str) -> None:
    """``skipped.json`` in the results ``folder`` (variant -> reason), or none when no variant
    was skipped (a stale one from an earlier run is removed)."""
    path = Path(folder) / SKIPPED_FILE
    if not skipped:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"skipped": dict(skipped)}, indent=1))


def read_skipped(folder: Path | str) -> dict[str, str]:
    """The skipped variants of the results ``folder`` (variant -> reason); empty when none."""
    path = Path(folder) / SKIPPED_FILE
    if not path.is_file():
        return {}
    return {str(k): str(v) for k, v in json.loads(path.read_text())["skipped"].items()}
