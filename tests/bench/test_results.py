"""Benchmark results: detection rows from disagreement counts, and the results files."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from misentry.bench.metrics import expected_detection
from misentry.bench.results import (
    COLUMNS,
    ResultRow,
    detection_rows,
    measurement_row,
    read_results,
    write_results,
)

D = {"ft_last_lr1e-5": [10, 30, 0], "identity": [0, 0, 0]}


def test_detection_rows_are_the_mean_exact_rate_per_variant_and_ns() -> None:
    rows = detection_rows("mnist5k", "misentry", 100, D, range(1, 21))
    assert len(rows) == 2 * 20
    by_key = {(r.variant, r.ns): r for r in rows}
    for ns in (1, 5, 20):
        row = by_key[("ft_last_lr1e-5", ns)]
        expected = sum(expected_detection(d, 100, ns) for d in D["ft_last_lr1e-5"]) / 3
        assert row.detection_rate == pytest.approx(expected)
        assert row.ci_low <= row.detection_rate <= row.ci_high
        assert (row.n_instances, row.n_fingerprints) == (3, 100)
        assert by_key[("identity", ns)].detection_rate == 0.0
    curve = [by_key[("ft_last_lr1e-5", ns)].detection_rate for ns in range(1, 21)]
    assert curve == sorted(curve)  # more fingerprints per check never detect less
    assert rows[0].experiment == "detection"


def test_ns_above_the_bundle_size_has_no_row() -> None:
    rows = detection_rows("digits", "publiccheck", 3, {"backdoor": [1]}, [1, 5])
    assert [r.ns for r in rows] == [1]


def test_results_round_trip_through_json_and_csv(tmp_path: Path) -> None:
    rows = detection_rows("mnist5k", "ssf", 100, D, [1, 5], extra={"band": "covert"})
    rows.append(
        ResultRow("cost", "mnist5k", "ssf", "-", 1, 0.0, 0.0, 0.0, 1, 100, {"seconds": 0.027})
    )
    json_path, csv_path = write_results(rows, tmp_path / "run")
    assert read_results(tmp_path / "run") == rows
    assert read_results(json_path) == rows
    with csv_path.open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0])[: len(COLUMNS)] == list(COLUMNS)
    assert {"extra.band", "extra.seconds"} <= set(table[0])
    assert len(table) == len(rows)
    first = table[0]
    assert math.isclose(float(first["detection_rate"]), rows[0].detection_rate)
    assert first["extra.band"] == "covert"
    assert table[-1]["extra.seconds"] == "0.027"
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no temporary file left


def test_duplicate_rows_and_impossible_values_are_refused(tmp_path: Path) -> None:
    rows = detection_rows("mnist5k", "ssf", 100, {"backdoor": [3]}, [1])
    with pytest.raises(ValueError, match="two rows"):
        write_results(rows + rows, tmp_path)
    with pytest.raises(ValueError, match="outside"):
        ResultRow("detection", "d", "m", "v", 1, 1.5, 0.0, 1.0, 1, 10)
    with pytest.raises(ValueError, match="ns 20 outside"):
        ResultRow("detection", "d", "m", "v", 20, 0.5, 0.5, 0.5, 1, 10)
    with pytest.raises(ValueError, match="interval"):
        ResultRow("detection", "d", "m", "v", 1, 0.5, 0.6, 0.9, 1, 10)


def test_other_files_and_versions_are_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a misentry results file"):
        read_results(path)
    path.write_text(json.dumps({"format": "misentry-results", "version": 99, "rows": []}))
    with pytest.raises(ValueError, match="version 99"):
        read_results(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="cannot read"):
        read_results(path)


def test_measurement_rows_have_no_rate_and_round_trip(tmp_path: Path) -> None:
    row = measurement_row("covertness", "mnist5k", "ssf", 100, {"auc_confidence": 0.88})
    assert (row.detection_rate, row.ci_low, row.ci_high) == (None, None, None)
    write_results([row], tmp_path)
    assert read_results(tmp_path) == [row]
    with (tmp_path / "results.csv").open() as fh:
        first = next(csv.DictReader(fh))
    assert first["detection_rate"] == ""
    assert first["extra.auc_confidence"] == "0.88"
    with pytest.raises(ValueError, match="all set or all None"):
        ResultRow("cost", "d", "m", "-", 1, 0.5, None, None, 1, 10)


def test_setting_tells_points_of_one_experiment_apart(tmp_path: Path) -> None:
    rows = [
        ResultRow(
            "leakage", "d", "m", "backdoor", 5, 0.5, 0.4, 0.6, 2, 90, {"n_leaked": k}, f"n={k}"
        )
        for k in (0, 10)
    ]
    write_results(rows, tmp_path)
    assert [r.setting for r in read_results(tmp_path)] == ["n=0", "n=10"]
    with pytest.raises(ValueError, match="two rows"):
        write_results([rows[0], rows[0]], tmp_path)


def test_version_1_files_are_read_without_setting(tmp_path: Path) -> None:
    row = ResultRow("detection", "d", "m", "v", 1, 0.5, 0.4, 0.6, 2, 10)
    raw = {k: v for k, v in asdict(row).items() if k != "setting"}
    document = {"format": "misentry-results", "version": 1, "rows": [raw]}
    (tmp_path / "results.json").write_text(json.dumps(document))
    assert read_results(tmp_path) == [row]
