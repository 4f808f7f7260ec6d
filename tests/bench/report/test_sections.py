"""The report of a run with every experiment: one section each, in order, each opening with
what it measured and written by the experiment."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from bench.report.reportkit import (
    ABLATION,
    PNG,
    SAMPLES,
    cov,
    full_rows,
    html_sections,
    section_of,
    table_after,
    tiny_png,
)
from misentry.bench.experiments import EXPERIMENTS
from misentry.bench.experiments.covertness import write_covertness_samples
from misentry.bench.report import build_report
from misentry.bench.results import detection_rows, measurement_row, write_results


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    run = tmp_path_factory.mktemp("full")
    write_results(full_rows(), run)
    write_covertness_samples(run, {m: cov(c) for m, c in SAMPLES.items()}, "mnist5k")
    (run / "examples.png").write_bytes(tiny_png())
    md, page = build_report(run)
    return run, md.read_text(), page.read_text()


def test_every_experiment_has_a_section_in_order_opening_with_what_it_measured(
    full: tuple[Path, str, str],
) -> None:
    _, md, page = full
    titles = re.findall(r"^## (.*)$", md, re.MULTILINE)
    assert titles == ["Run", *(f"{e.name.capitalize()} (mnist5k)" for e in EXPERIMENTS)]
    for experiment in EXPERIMENTS:
        first = section_of(md, f"{experiment.name.capitalize()} (mnist5k)").strip().split("\n\n")[0]
        assert first == experiment.about.replace("*", r"\*")
    assert list(html_sections(page)) == titles


def test_each_experiment_has_its_plots_as_data_uris_and_nothing_fetched(
    full: tuple[Path, str, str],
) -> None:
    run, md, page = full
    sections = html_sections(page)
    plots = {"detection": 1, "leakage": 1, "covertness": 2, "sensitivity": 1, "ablation": 1}
    for experiment in (e.name for e in EXPERIMENTS):
        body = sections[f"{experiment.capitalize()} (mnist5k)"]
        images = re.findall(r'<img src="([^"]*)"', body)
        assert len(images) == plots.get(experiment, 1), experiment
        for src in images:
            assert src.startswith("data:image/png;base64,")
            assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG)
    assert not re.search(r"(src|href)=\"?https?:", page)
    assert "http://" not in page
    assert "https://" not in page
    grid = base64.b64encode((run / "examples.png").read_bytes()).decode()
    assert f'src="data:image/png;base64,{grid}"' in sections["Covertness (mnist5k)"]
    assert "](examples.png)" in section_of(md, "Covertness (mnist5k)")  # md links the file


def test_leakage_table_lists_each_attack_method_and_n_leaked(full: tuple[Path, str, str]) -> None:
    _, md, _ = full
    table = table_after(md, "## Leakage (mnist5k)")
    assert table[0] == [
        "attack",
        "method",
        "n_leaked",
        "unleaked N",
        "DR@1 (%)",
        "DR@5 (%)",
        "leaked kept (%)",
    ]
    assert table[1] == ["adaptive_backdoor", "misentry", "0", "100", "70.0", "90.0", "75.0"]
    assert table[3] == ["", "misentry", "50", "50", "20.0", "40.0", "75.0"]
    assert table[7] == ["adaptive_ft_last", "misentry", "0", "100", "70.0", "90.0", "75.0"]
    assert len(table) == 1 + 2 * 2 * 3


def test_sensitivity_table_by_variant_and_steps(full: tuple[Path, str, str]) -> None:
    _, md, _ = full
    table = table_after(md, "## Sensitivity (mnist5k)")
    assert table[0][:5] == ["variant", "method", "steps", "DR@1 (%)", "DR@5 (%)"]
    backdoor = [line for line in table[1:] if line[1] == "misentry"][3:]
    assert [line[2] for line in backdoor] == ["0", "10", "100"]
    assert backdoor[2][3:] == ["90.0", "90.0", "97.0", "–"]


def test_covertness_table_and_histograms(full: tuple[Path, str, str]) -> None:
    _, md, _ = full
    table = table_after(md, "## Covertness (mnist5k)")
    assert table[0][:3] == ["method", "AUC confidence", "AUC entropy"]
    assert table[1] == [
        "misentry",
        "**0.520**",
        "**0.550**",
        "0.900 / 0.950",
        "0.300 / 0.200",
        "38.2",
        "0.500",
        "0.030",
    ]
    assert table[2][:3] == [r"ssf\<b\>", "0.970", "0.990"]
    assert "*Plot in report.html: Top-1 confidence" in md


def test_ablation_table_means_over_tampered_variants_default_first(
    full: tuple[Path, str, str],
) -> None:
    _, md, _ = full
    table = table_after(md, "## Ablation (mnist5k)")
    assert table[0] == [
        "configuration",
        "changes",
        "mean DR@1 (%)",
        "mean DR@5 (%)",
        "fine-tuning DR@5 (%)",
        "poisoning / backdoor DR@5 (%)",
        "compression DR@5 (%)",
    ]
    assert [line[0] for line in table[1:]] == ["default", "no meta-learning", "L2"]
    for line in table[1:]:
        rates = ABLATION[line[0]]
        for column, ns in ((2, 0), (3, 1)):
            mean = sum(r[ns] for r in rates.values()) / len(rates)  # identity left out
            assert line[column].strip("*") == f"{100 * mean:.1f}"
    assert table[1][2:] == ["**60.0**", "**90.0**", "**80.0**", "**90.0**", "**100.0**"]
    assert table[2][2:] == ["30.0", "70.0", "50.0", "70.0", "90.0"]


def test_cost_tables_per_method_and_per_variant(full: tuple[Path, str, str]) -> None:
    _, md, _ = full
    methods = table_after(md, "Fingerprint generation, per fingerprint.")
    assert methods == [
        ["method", "seconds", "forward passes", "backward passes"],
        ["misentry", "0.250", "200.000", "100.000"],
        [r"ssf\<b\>", "0.013", "200.000", "100.000"],
    ]
    variants = table_after(md, "Building one tampered instance, per variant.")
    assert variants == [
        ["family", "variant", "instances", "mean seconds", "max seconds"],
        ["fine-tuning", "ft_last_lr1e-5", "3", "2.000", "4.000"],
        ["compression", "pruning", "3", "0.500", "1.000"],
    ]


def test_frontier_lists_the_sweep_in_covertness_order_then_the_others(
    full: tuple[Path, str, str],
) -> None:
    _, md, _ = full
    section = section_of(md, "Frontier (mnist5k)")
    table = table_after(md, "## Frontier (mnist5k)")
    assert [line[1:3] for line in table[1:]] == [
        ["misentry", "0.000"],
        ["misentry", "0.500"],
        ["misentry", "1.000"],
        [r"ssf\<b\>", "–"],
    ]
    assert table[3][3:] == ["0.550", "0.900", "70.0", "90.0"]
    assert "To pick an operating point" in section
    assert "ft_last_lr1e-5,backdoor" in section


def test_absent_experiments_are_named_and_unknown_ones_get_a_table(tmp_path: Path) -> None:
    rows = [
        *detection_rows("mnist5k", "ssf", 10, {"backdoor": [2]}, [1]),
        measurement_row("cost", "mnist5k", "ssf", 10, {"seconds_per_fingerprint": 0.027}),
        measurement_row("novel", "mnist5k", "ssf", 10, {"thing": 0.5}, setting="s1"),
    ]
    write_results(rows, tmp_path)
    (tmp_path / "covertness.json").write_text('{"format": "other"}')  # ignored: no covertness
    md, page = build_report(tmp_path)
    text = md.read_text()
    assert table_after(text, "## Novel (mnist5k)") == [
        ["method", "variant", "setting", "thing"],
        ["ssf", "-", "s1", "0.5"],
    ]
    assert "Building one tampered instance" not in text
    missing = ["leakage", "covertness", "sensitivity", "ablation", "frontier", "tolerance"]
    assert text.rstrip().endswith("## Not in this run\n\n" + ", ".join(missing))
    assert "<h2>Not in this run</h2>\n<p>" + ", ".join(missing) in page.read_text()


def test_unreadable_covertness_samples_are_reported_not_fatal(tmp_path: Path) -> None:
    rows = [measurement_row("covertness", "mnist5k", "ssf", 10, {"auc_confidence": 0.8831})]
    write_results(rows, tmp_path)
    (tmp_path / "covertness.json").write_text("{broken")
    md, page = build_report(tmp_path)
    section = section_of(md.read_text(), "Covertness (mnist5k)")
    assert "No confidence histograms: read_covertness_samples: cannot read" in section
    assert "0.883" in section
    assert "data:image" not in page.read_text()
