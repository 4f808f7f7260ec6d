"""``misentry bench --target``: the benchmark on a target record the user has (here the user's
CNN imported from TorchScript), with nothing trained and the variants that cannot act on the
model skipped with the builder's reason."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.benchkit import markers
from misentry.bench.jobs.graph import JOB_FILE
from misentry.bench.results import SKIPPED_FILE, read_results, read_skipped
from misentry.bench.runner import resolve, run_bench
from misentry.bench.target import TARGET_EXPERIMENTS, TARGET_METHODS, target_preset
from misentry.cli import main
from misentry.models import Record, load_record, save_record

VARIANTS = ("ft_last_lr1e-3", "trojan", "identity")
"""Two variants that act on a TorchScript program and one that cannot (trojan needs an inner
layer's input, which a program hides)."""


@dataclass
class TargetRun:
    given: Path
    out: Path
    results: Path


@pytest.fixture(scope="module")
def target_run(imported_record: Record, tmp_path_factory: pytest.TempPathFactory) -> TargetRun:
    root = tmp_path_factory.mktemp("bench-target")
    given = save_record(imported_record, root / "my-target")
    preset = resolve(target_preset(given), methods=("natural",), variants=VARIANTS, instances=1)
    out = root / "run"
    return TargetRun(given, out, run_bench(preset, out, n_fingerprints=20))


def test_a_target_run_benchmarks_the_given_record_without_training(
    target_run: TargetRun, imported_record: Record
) -> None:
    document = json.loads((target_run.out / "run.json").read_text())
    assert load_record(document["target"]).record_id == imported_record.record_id
    stages = [job["stage"] for job in document["jobs"]]
    assert stages.count("target") == 1
    (target_job,) = (job for job in document["jobs"] if job["stage"] == "target")
    assert target_job["seconds"] < 5.0  # copied, not trained
    rows = [r for r in read_results(target_run.results) if r.experiment == "detection"]
    assert {r.dataset for r in rows} == {imported_record.dataset}
    assert {r.variant for r in rows} <= {"ft_last_lr1e-3", "identity"}
    assert "identity" in {r.variant for r in rows}
    assert all(r.detection_rate == 0.0 for r in rows if r.variant == "identity")


def test_a_variant_that_cannot_act_on_the_model_is_skipped_with_its_reason(
    target_run: TargetRun,
) -> None:
    skipped = read_skipped(target_run.results)
    assert list(skipped) == ["trojan"]
    assert "Script" in skipped["trojan"]  # the builder's reason names the TorchScript program
    assert "trojan" not in {r.variant for r in read_results(target_run.results)}
    report = (target_run.results / "report.md").read_text()
    assert "Skipped variants" in report
    assert skipped["trojan"] in report
    document = json.loads((target_run.out / "run.json").read_text())
    assert document["skipped"] == skipped
    statuses = {job["job"]: job["status"] for job in document["jobs"]}
    assert list(statuses.values()).count("skipped") == 1
    (folder,) = (target_run.out / "jobs" / j for j, s in statuses.items() if s == "skipped")
    assert (folder / SKIPPED_FILE).is_file()
    assert not (folder / JOB_FILE).exists()  # not finished: a rerun tries it again


def test_a_rerun_reuses_the_built_jobs_and_tries_the_skipped_variant_again(
    target_run: TargetRun,
) -> None:
    before = markers(target_run.out)
    preset = resolve(
        target_preset(target_run.given), methods=("natural",), variants=VARIANTS, instances=1
    )
    run_bench(preset, target_run.out, n_fingerprints=20)
    assert markers(target_run.out) == before
    jobs = json.loads((target_run.out / "run.json").read_text())["jobs"]
    statuses = [job["status"] for job in jobs if job["stage"] != "results"]
    assert statuses.count("skipped") == 1
    assert set(statuses) == {"reused", "skipped"}


def test_the_cli_prints_the_target_the_table_and_the_skipped_variant(
    target_run: TargetRun, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--target", str(target_run.given), "--methods", "natural"]
    argv += ["--variants", ",".join(VARIANTS), "--instances", "1", "--n-fingerprints", "20"]
    assert main([*argv, "--out", str(target_run.out)]) == 0
    out = capsys.readouterr().out
    assert "imported:torchscript on digits, test accuracy" in out
    assert "identity" in out
    skipped = read_skipped(target_run.results)
    assert f"skipped trojan: {skipped['trojan']}" in " ".join(out.split())


def test_the_cli_refuses_a_record_that_is_not_a_target(
    target_run: TargetRun, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    instance = json.loads((target_run.out / "run.json").read_text())["instances"][0]["path"]
    code = main(["bench", "--target", instance, "--out", str(tmp_path / "run")])
    assert code == 1
    err = capsys.readouterr().err
    assert "error:" in err
    assert "not a target" in err
    assert not (tmp_path / "run").exists()


def test_target_defaults_are_strict_misentry_and_no_optional_experiment(
    target_run: TargetRun,
) -> None:
    preset = target_preset(target_run.given)
    assert preset.methods == TARGET_METHODS == ("misentry",)
    assert preset.experiments == TARGET_EXPERIMENTS == ()
    assert preset.variants == "all"
    assert (preset.instances, preset.n_fingerprints, preset.ns) == (3, 100, (1, 5))
    assert preset.dataset == "digits"
    assert preset.target == str(target_run.given.resolve())
