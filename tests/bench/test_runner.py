"""The benchmark runner: the digits-smoke preset end to end, its resume, and the same results on
every executor."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.benchkit import SMOKE, Run, job_runs, markers, run
from misentry.bench.jobs.graph import OVERALL
from misentry.bench.presets import OPTIONAL_EXPERIMENTS
from misentry.bench.results import ResultRow, read_results
from misentry.tamper.registry import select


def test_smoke_results_hold_every_method_variant_and_ns(smoke: Run) -> None:
    rows = [r for r in read_results(smoke.results) if r.experiment == "detection"]
    cells = {(r.method, r.variant, r.ns): r for r in rows}
    variants = [v.slug for v in select(SMOKE.variant_spec)]
    assert "identity" in variants
    for method in SMOKE.methods:
        for variant in variants:
            for ns in SMOKE.ns:
                row = cells[(method, variant, ns)]
                assert row.n_fingerprints == SMOKE.n_fingerprints == 20
                assert row.n_instances == SMOKE.instances
                if variant == "identity":
                    assert row.detection_rate == 0.0  # the control is never flagged
    # MiSentry's fingerprints catch a tampering the unmodified images miss
    tampered = [v for v in variants if v != "identity"]
    assert max(cells[("misentry", v, 5)].detection_rate or 0.0 for v in tampered) > 0.5
    experiments = {(r.experiment, r.method) for r in read_results(smoke.results)}
    for method in SMOKE.methods:
        assert {("cost", method), ("covertness", method)} <= experiments


def test_smoke_results_hold_every_experiment(smoke: Run) -> None:
    rows = read_results(smoke.results)
    by_experiment: dict[str, list[ResultRow]] = {}
    for row in rows:
        by_experiment.setdefault(row.experiment, []).append(row)
    assert set(by_experiment) == {"detection", "covertness", "cost", *OPTIONAL_EXPERIMENTS}
    leakage = by_experiment["leakage"]
    assert {r.setting for r in leakage} == {"n_leaked=0", "n_leaked=5"}
    for r in leakage:  # detection on the unleaked fingerprints only, labels of the leaked kept
        assert r.n_fingerprints == SMOKE.n_fingerprints - r.extra["n_leaked"]
        assert r.extra["leaked_kept"] == 1.0
    steps = {r.extra["steps"] for r in by_experiment["sensitivity"]}
    assert steps == set(SMOKE.sensitivity.steps["ft_last_lr1e-5"])
    ablation = {r.setting for r in by_experiment["ablation"]}
    assert ablation == {name for name, _ in SMOKE.ablation.configs}
    assert {r.n_fingerprints for r in by_experiment["ablation"]} == {10}
    frontier = {(r.method, r.setting) for r in by_experiment["frontier"]}
    assert frontier == {
        ("natural", ""),
        ("noise", ""),
        ("misentry", "covertness=0"),
        ("misentry", "covertness=0.5"),
    }
    tampering = {r.variant for r in by_experiment["cost"] if r.method == "tampering"}
    assert tampering == {v.slug for v in select(SMOKE.variant_spec)}
    assert (smoke.results / "examples.png").stat().st_size > 0
    assert (smoke.results / "covertness.json").is_file()


def test_smoke_writes_the_report_and_reports_progress_per_stage(smoke: Run) -> None:
    assert "detection" in (smoke.results / "report.md").read_text().lower()
    assert (smoke.results / "report.html").stat().st_size > 1000
    assert (smoke.results / "results.csv").is_file()
    finals = {stage: (done, total) for stage, done, total in smoke.stages}
    stages = ("target", "instances", "zoo", "fingerprints", "evaluation", "leakage", "sensitivity")
    for stage in (*stages, "results"):
        done, total = finals[stage]
        assert done == total > 0
    overall = [(done, total) for stage, done, total in smoke.stages if stage == OVERALL]
    assert overall[-1] == (len(smoke.jobs), len(smoke.jobs))
    assert [done for done, _ in overall] == sorted(done for done, _ in overall)
    assert overall[0][1] == len(smoke.jobs)  # the run's size is known from its start
    assert all(job["status"] == "ran" for job in smoke.jobs)


def test_misentry_bundles_share_one_zoo_built_by_jobs_of_its_own(smoke: Run) -> None:
    zoo = [job for job in smoke.jobs if job["stage"] == "zoo"]
    # digits-smoke's MiSentry zoo: one member, 2 meta-learning replicates + 1 for screening,
    # built once for the main bundle, the two ablation bundles, the frontier bundle and the
    # tolerance bundles
    assert len(zoo) == 3
    manifests = [
        json.loads(path.read_text())
        for path in smoke.out.glob("jobs/bundle-*/bundle/manifest.json")
        if json.loads(path.read_text())["method"] == "misentry"
    ]
    tolerant = [t for t in SMOKE.tolerance.tolerances if t != "exact"]
    assert len(manifests) == 4 + len(tolerant)
    for manifest in manifests:
        assert manifest["zoo_prebuilt_seconds"] == manifest["zoo_seconds"] > 0


def test_a_rerun_reuses_every_job(smoke: Run) -> None:
    before = markers(smoke.out)
    again = run(SMOKE, smoke.out)
    assert again.results == smoke.results
    assert [job["status"] for job in job_runs(again)] == ["reused"] * len(job_runs(smoke))
    assert markers(smoke.out) == before  # nothing rewritten
    assert not [stage for stage, _, _ in again.stages if ":" in stage]  # nothing generated


def test_a_killed_run_resumes_with_the_unfinished_jobs_only(smoke: Run, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(smoke.out, out)
    bundle = next(path for path in markers(out) if path.parent.name.startswith("bundle-"))
    bundle.unlink()  # as if the run was killed before this bundle's job finished
    resumed = run(SMOKE, out)
    ran = [job["job"] for job in job_runs(resumed) if job["status"] == "ran"]
    assert ran == [bundle.parent.name]  # its bundle is identical, so everything after is reused


def test_changed_overrides_make_new_jobs_and_reuse_the_rest(smoke: Run, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "fewer"
    shutil.copytree(smoke.out, out)
    fewer = run(SMOKE, out, methods=("natural", "misentry"), n_fingerprints=10)
    status: dict[object, set[object]] = {}
    for job in fewer.jobs:
        status.setdefault(job["stage"], set()).add(job["status"])
    assert status["target"] == status["instance"] == {"reused"}
    assert "ran" in status["bundle"]
    assert "ran" in status["evaluation"]
    assert "reused" in status["bundle"]  # the ablation's bundles keep their own N
    methods = {r.method for r in read_results(fewer.results) if r.experiment == "detection"}
    assert methods == {"natural", "misentry"}
    detection = [r for r in read_results(fewer.results) if r.experiment == "detection"]
    assert {r.n_fingerprints for r in detection} == {10}


def comparable(results: Path) -> list[ResultRow]:
    """The rows but the measured times, which differ from run to run."""
    rows = []
    for row in read_results(results):
        if row.experiment == "cost":
            continue
        extra = {k: v for k, v in row.extra.items() if "seconds" not in k}
        rows.append(replace(row, extra=extra))
    return sorted(rows, key=lambda r: r.key)


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_other_executors_give_the_local_results(smoke: Run, executor: str, tmp_path: Path) -> None:
    if executor == "ray":
        pytest.importorskip("ray")
    other = run(SMOKE, tmp_path / executor, executor=executor)
    assert comparable(other.results) == comparable(smoke.results)
    assert all(job["status"] == "ran" for job in other.jobs)
    for name in ("target", "instance", "zoo", "bundle"):  # the same jobs, by their address
        mine = {j["job"] for j in smoke.jobs if j["stage"] == name}
        assert mine == {j["job"] for j in other.jobs if j["stage"] == name}
