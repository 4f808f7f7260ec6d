"""``misentry bench``: the detection table, the preset overrides, and the options that hold
methods to the covert band (``--band``) and change one parameter of one method (``--set``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.benchkit import SMOKE, Run
from misentry.bench.jobs.graph import JOB_FILE
from misentry.bench.presets import CHEAP_ZOO
from misentry.bench.results import read_results
from misentry.cli import main


def bundles(out: Path) -> dict[str, tuple[dict[str, object], str, Path]]:
    """Per bundle method of the last run: its job's config, whether the run ran or reused it,
    and the bundle's folder."""
    status = {
        job["job"]: job["status"]
        for job in json.loads((out / "run.json").read_text())["jobs"]
        if job["stage"] == "bundle"
    }
    found = {}
    for name, how in status.items():
        config = json.loads((out / "jobs" / name / JOB_FILE).read_text())
        found[str(config["method"])] = (config, how, out / "jobs" / name / "bundle")
    return found


def test_cli_prints_the_detection_table_and_the_report_path(
    smoke: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"  # a copy: the smoke run's own run.json stays as it ran
    shutil.copytree(smoke.out, run)
    assert main(["bench", "--preset", "digits-smoke", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "DR@1/5" in out
    for method in SMOKE.methods:
        assert method in out
    identity = next(line for line in out.splitlines() if "identity" in line)
    assert identity.count("0.000") == len(SMOKE.methods) * len(SMOKE.ns)
    assert str(run / "results" / "report.md") in out


def test_cli_paper_preset_without_data_dir_fails_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--preset", "cifar10-paper", "--out", str(tmp_path / "o")]) == 1
    assert "reads CIFAR-10 from --data-dir; none given" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_experiments_none_runs_the_detection_table_alone(
    smoke: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "none"
    shutil.copytree(smoke.out, out)
    argv = ["bench", "--preset", "digits-smoke", "--experiments", "none", "--out", str(out)]
    assert main(argv) == 0
    experiments = {r.experiment for r in read_results(out / "results")}
    assert experiments == {"detection", "covertness", "cost"}
    assert "wall time" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "digits-smoke", "--executor", "dask", "--out", str(out)])


def test_band_covert_holds_every_method_but_misentry_to_the_band(
    smoke: Run, tmp_path: Path
) -> None:
    out = tmp_path / "band"
    shutil.copytree(smoke.out, out)
    argv = ["bench", "--preset", "digits-smoke", "--methods", "natural,misentry"]
    assert main([*argv, "--band", "covert", "--experiments", "none", "--out", str(out)]) == 0
    made = bundles(out)
    assert made["misentry"][1] == "reused"  # MiSentry is not held: the same bundle
    assert "band" not in made["misentry"][0]
    config, how, folder = made["natural"]
    assert (how, config["band"]) == ("ran", "covert")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["band"] == "covert"
    assert 0 < manifest["in_band"] <= SMOKE.n_fingerprints
    rows = [r for r in read_results(out / "results") if r.experiment == "detection"]
    assert {r.n_fingerprints for r in rows if r.method == "natural"} == {manifest["in_band"]}
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "digits-smoke", "--band", "loud", "--out", str(out)])


def test_set_changes_one_parameter_of_one_method(smoke: Run, tmp_path: Path) -> None:
    out = tmp_path / "set"
    shutil.copytree(smoke.out, out)
    argv = ["bench", "--preset", "digits-smoke", "--methods", "natural,misentry"]
    argv += ["--set", "misentry:refine-rounds=4", "--experiments", "none", "--out", str(out)]
    assert main(argv) == 0
    made = bundles(out)
    config, how, _ = made["misentry"]
    assert how == "ran"
    assert config["params"] == {**CHEAP_ZOO, "refine_rounds": 4, "zoo": list(CHEAP_ZOO["zoo"])}
    assert made["natural"][1] == "reused"  # the other methods keep their bundles


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("misentry:nope=1", "misentry has no parameter 'nope'; its parameters:"),
        ("misentry:steps=fast", "parameter steps takes an int"),
        ("misentry:steps", "expected KEY=VALUE"),
        ("steps=3", "expected METHOD:KEY=VALUE"),
        ("nope:steps=3", "unknown methods ['nope']"),
    ],
)
def test_set_refuses_a_bad_item_before_any_work(
    item: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    assert main(["bench", "--preset", "digits-smoke", "--set", item, "--out", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
