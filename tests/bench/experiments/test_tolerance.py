"""The tolerance experiment on the digits-smoke run: strict MiSentry per deployment tolerance
beside the other methods, each bundle's false alarms over the benign matrix, and its report
section."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch

from bench.benchkit import SMOKE, Run
from bench.report.reportkit import section_of, table_after
from misentry.bench.experiments.tolerance import EXACT, FILE, STRICT, ToleranceSpec, label_changes
from misentry.bench.presets import PRESETS, Preset
from misentry.bench.results import ResultRow, read_results
from misentry.fingerprint.bundle import load_bundle
from misentry.models import load_record, model_from_record
from misentry.models.stacks import ALL_STACKS, LEVELS


def tolerance_rows(run: Run) -> dict[tuple[str, str], list[ResultRow]]:
    """The experiment's rows by bundle (method, tolerance)."""
    found: dict[tuple[str, str], list[ResultRow]] = defaultdict(list)
    for row in read_results(run.results):
        if row.experiment == "tolerance":
            found[(row.method, row.extra["tolerance"])].append(row)
    return found


def test_one_line_per_bundle_strict_misentry_at_every_tolerance(smoke: Run) -> None:
    rows = tolerance_rows(smoke)
    strict = [(STRICT, t) for t in SMOKE.tolerance.tolerances]
    others = [(m, EXACT) for m in SMOKE.methods if m != STRICT]
    assert list(rows) == strict + others
    variants = {r.variant for r in read_results(smoke.results) if r.experiment == "detection"}
    cells = {(v, ns) for v in variants for ns in (1, 5)}
    for (_, tolerance), bundle_rows in rows.items():
        assert {(r.variant, r.ns) for r in bundle_rows} == cells
        assert {r.setting for r in bundle_rows} == {f"tolerance={tolerance}"}
    manifests = [
        json.loads(path.read_text())
        for path in smoke.out.glob("jobs/bundle-*/bundle/manifest.json")
    ]
    generated = [
        m["tolerance"]["tolerance"]
        for m in manifests
        if m["method"] == STRICT and m["params"]["covertness"] == 0
    ]
    # one bundle per tolerance above exact; the exact line is the main bundle, not a copy
    above = [t for t in SMOKE.tolerance.tolerances if t != EXACT]
    assert sorted(t for t in generated if t != EXACT) == sorted(above)


def test_the_exact_line_is_the_detection_tables_row(smoke: Run) -> None:
    every = read_results(smoke.results)
    detection = {(r.method, r.variant, r.ns): r for r in every if r.experiment == "detection"}
    lines = tolerance_rows(smoke)
    for method in SMOKE.methods:  # misentry's exact line is its main bundle, as every method's
        for row in lines[(method, EXACT)]:
            same = detection[(method, row.variant, row.ns)]
            assert (row.detection_rate, row.ci_low, row.ci_high) == (
                same.detection_rate,
                same.ci_low,
                same.ci_high,
            )
            assert (row.n_instances, row.n_fingerprints) == (same.n_instances, same.n_fingerprints)


def test_false_alarms_are_cumulative_and_none_within_a_tolerant_bundles_own(smoke: Run) -> None:
    for (method, tolerance), rows in tolerance_rows(smoke).items():
        extra = rows[0].extra
        assert all(r.extra == extra for r in rows)
        counts = [extra[f"false_alarms_{level}"] for level in LEVELS]
        assert counts == sorted(counts), (method, tolerance)
        assert 0 <= counts[-1] <= rows[0].n_fingerprints
        assert extra["false_alarms_own"] == extra[f"false_alarms_{tolerance}"]
        if method == STRICT and tolerance != EXACT:
            assert extra["false_alarms_own"] == 0, tolerance  # screened under its own stacks


def test_a_level_counts_the_fingerprints_changed_on_its_stacks_or_stricter(smoke: Run) -> None:
    documents = [json.loads(p.read_text()) for p in smoke.out.glob(f"jobs/tolerance-*/{FILE}")]
    assert len(documents) == len(tolerance_rows(smoke))  # one job per bundle
    for document in documents:
        assert [s["level"] for s in document["stacks"]] == [s.level for s in ALL_STACKS]
        for level in LEVELS:
            upto = LEVELS[: LEVELS.index(level) + 1]
            changed = {i for s in document["stacks"] if s["level"] in upto for i in s["changed"]}
            assert document["levels"][level] == len(changed)
    run = json.loads((smoke.out / "run.json").read_text())
    target = model_from_record(load_record(run["target"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run's jobs (benchkit)
    try:
        recounted = label_changes(target, load_bundle(run["bundles"][STRICT]))["levels"]
    finally:
        torch.set_num_threads(threads)
    extra = tolerance_rows(smoke)[(STRICT, EXACT)][0].extra
    assert recounted == {level: extra[f"false_alarms_{level}"] for level in LEVELS}


def test_the_report_section_shows_one_line_per_bundle(smoke: Run) -> None:
    md = (smoke.results / "report.md").read_text()
    section = section_of(md, "Tolerance (digits)")
    table = table_after(section, "serving freedom")
    header, lines = table[0], table[1:]
    assert header[:2] == ["method", "tolerance"]
    assert [f"false alarms {level}" for level in LEVELS] == header[-len(LEVELS) :]
    assert [line[:2] for line in lines] == [list(key) for key in tolerance_rows(smoke)]
    assert "Strict MiSentry's mean DR@5 over the tampered variants by tolerance" in section
    page = (smoke.results / "report.html").read_text()
    assert "<h2>Tolerance (digits)</h2>" in page


def test_tolerances_are_checked_and_the_demo_leaves_the_sweep_out() -> None:
    with pytest.raises(ValueError, match="unknown tolerances \\['fp8'\\]; tolerances: exact, fp32"):
        Preset(name="bad", dataset="digits", tolerance=ToleranceSpec(tolerances=("fp8",)))
    assert "tolerance" in PRESETS["mnist5k"].experiments
    assert "tolerance" in PRESETS["digits-smoke"].experiments
    assert "tolerance" not in PRESETS["mnist5k-demo"].experiments  # the demo's time matters
