"""The benchmark report: markdown and self-contained HTML rebuilt from a results file."""

from __future__ import annotations

import argparse
import base64
import re
from pathlib import Path

import pytest

from misentry.bench.report import EXPERIMENTS, FAMILIES, build_report, variant_family
from misentry.bench.results import ResultRow, detection_rows, write_results
from misentry.cli import _verb
from misentry.cli_report import add_report
from misentry.tamper.registry import ORDER

EVIL = "ssf<b>"
"""A method name that is also markup: it must show as text, never as a tag."""

N = 100
# fingerprints each instance labels differently: misentry wins ft_last, EVIL wins backdoor
D = {
    "misentry": {"ft_last_lr1e-5": [40, 50, 60], "backdoor": [10, 20, 30], "identity": [0, 0, 0]},
    EVIL: {"ft_last_lr1e-5": [5, 10, 15], "backdoor": [50, 60, 70], "identity": [0, 0, 0]},
}
PNG = b"\x89PNG\r\n\x1a\n"


def _rows() -> list[ResultRow]:
    rows = [
        row
        for method, d in D.items()
        for row in detection_rows("mnist5k", method, N, d, range(1, 21))
    ]
    for k, rate in ((0, 0.9), (10, 0.6), (50, 0.2)):
        rows.append(
            ResultRow(
                "leakage",
                "mnist5k",
                "misentry",
                f"leak{k}",
                5,
                rate,
                rate - 0.05,
                rate + 0.05,
                3,
                N,
                {"n_leaked": k},
            )
        )
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[ResultRow], str, str]:
    run = tmp_path_factory.mktemp("run")
    rows = _rows()
    write_results(rows, run)
    md_path, html_path = build_report(run)
    assert (md_path, html_path) == (run / "report.md", run / "report.html")
    return rows, md_path.read_text(), html_path.read_text()


def _table(md: str, after: str) -> list[list[str]]:
    """The cells of the first markdown table after the line ``after``."""
    lines = md.split(after, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return [table[0], *table[2:]]


def _pct(rows: list[ResultRow], method: str, variant: str, ns: int) -> str:
    (row,) = [r for r in rows if (r.method, r.variant, r.ns) == (method, variant, ns)]
    return f"{100 * row.detection_rate:.1f}"


def test_detection_table_has_the_rates_best_in_bold_and_identity_last(
    report: tuple[list[ResultRow], str, str],
) -> None:
    rows, md, _ = report
    table = _table(md, "## Detection (mnist5k)")
    assert table[0] == ["family", "variant", "instances", "misentry", r"ssf\<b\>"]
    body = {line[1]: line for line in table[1:]}
    assert [line[1] for line in table[1:]] == ["ft_last_lr1e-5", "backdoor", "identity"]
    assert [line[0] for line in table[1:]] == ["fine-tuning", "poisoning / backdoor", "control"]
    for variant, best in (("ft_last_lr1e-5", "misentry"), ("backdoor", EVIL)):
        for column, method in ((3, "misentry"), (4, EVIL)):
            cell = f"{_pct(rows, method, variant, 1)} / {_pct(rows, method, variant, 5)}"
            assert body[variant][column] == (f"**{cell}**" if method == best else cell)
        assert body[variant][2] == "3"
    assert body["identity"][3:] == ["0.0 / 0.0", "0.0 / 0.0"]  # all tie: nobody is bold
    assert float(_pct(rows, "misentry", "ft_last_lr1e-5", 1)) > 0.0
    intervals = _table(md, "95 % intervals")
    (row,) = [r for r in rows if (r.method, r.variant, r.ns) == (EVIL, "backdoor", 1)]
    assert intervals[2][4].startswith(f"{100 * row.ci_low:.1f}–{100 * row.ci_high:.1f} / ")


def test_generic_sections_list_rows_with_extra_fields_and_name_what_is_missing(
    report: tuple[list[ResultRow], str, str],
) -> None:
    _, md, page = report
    table = _table(md, "## Leakage (mnist5k)")
    assert table[0] == ["method", "variant", "N_S", "rate (%)", "95 % interval (%)", "n_leaked"]
    assert table[1:] == [
        ["misentry", "leak0", "5", "90.0", "85.0–95.0", "0"],
        ["misentry", "leak10", "5", "60.0", "55.0–65.0", "10"],
        ["misentry", "leak50", "5", "20.0", "15.0–25.0", "50"],
    ]
    missing = ["covertness", "sensitivity", "ablation", "cost", "frontier"]
    assert md.rstrip().endswith("## Not in this run\n\n" + ", ".join(missing))
    assert "<h2>Not in this run</h2>\n<p>" + ", ".join(missing) in page
    for name in missing:
        assert f"## {name.capitalize()}" not in md
    assert set(missing) | {"detection", "leakage"} == set(EXPERIMENTS)


def test_html_is_self_contained_with_png_plots_and_escaped_text(
    report: tuple[list[ResultRow], str, str],
) -> None:
    rows, _, page = report
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # detection vs N_S, detection vs n_leaked
    for data in images:
        png = base64.b64decode(data, validate=True)
        assert png.startswith(PNG)
        assert len(png) > 1000
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page.lower()
    assert not re.search(r"<link|@import|url\(", page)
    assert EVIL not in page
    assert "ssf&lt;b&gt;" in page
    assert '<td class="best" title="95 % interval:' in page
    control = '<tbody>\n<tr><th class="group" colspan="4">control</th></tr>\n<tr><td>identity<'
    assert control in page  # the identity control is a row group of its own
    (row,) = [r for r in rows if (r.method, r.variant, r.ns) == ("misentry", "backdoor", 1)]
    assert f"{100 * row.detection_rate:.1f}" in page


def test_header_names_the_file_its_hash_datasets_and_methods(
    report: tuple[list[ResultRow], str, str], tmp_path: Path
) -> None:
    _, md, _ = report
    header = {line[0]: line[1] for line in _table(md, "## Run")[1:]}
    assert header["**datasets**"] == "mnist5k"
    assert header["**methods**"] == r"misentry, ssf\<b\>"
    assert header["**instances per cell**"] == "3"
    assert re.fullmatch(r"[0-9a-f]{64}", header["**sha256**"])


def test_out_dir_and_missing_or_bad_results(tmp_path: Path) -> None:
    write_results(_rows(), tmp_path / "run")
    md, page = build_report(tmp_path / "run" / "results.json", tmp_path / "out")
    assert (md.parent, page.parent) == (tmp_path / "out", tmp_path / "out")
    assert not (tmp_path / "run" / "report.md").exists()
    with pytest.raises(FileNotFoundError, match=r"no results file at .*results\.json"):
        build_report(tmp_path / "out")
    (tmp_path / "out" / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        build_report(tmp_path / "out")


@pytest.mark.parametrize("variant", ORDER)
def test_every_registered_variant_has_a_family(variant: str) -> None:
    family = variant_family(variant)
    assert family in FAMILIES
    assert (family == "control") == (variant == "identity")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_report(parser.add_subparsers(), _verb)
    return parser.parse_args(["report", *argv])


def test_cli_verb_prints_both_paths_and_errors_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_results(_rows(), tmp_path / "run")
    args = _parse(str(tmp_path / "run"), "--out", str(tmp_path / "out"))
    assert args.handler(args) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / "out" / "report.md"), str(tmp_path / "out" / "report.html")]
    assert all(Path(p).stat().st_size > 0 for p in out)
    (tmp_path / "empty").mkdir()
    args = _parse(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no results file"):
        args.handler(args)
    args = _parse(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        args.handler(args)


@pytest.mark.parametrize(
    ("experiment", "field", "plots"),
    [("covertness", "auc", 1), ("sensitivity", "steps", 1), ("cost", "seconds", 0)],
)
def test_other_experiments_plot_their_field(
    tmp_path: Path, experiment: str, field: str, plots: int
) -> None:
    rows = [
        ResultRow(experiment, "cifar10", method, f"v{i}", 1, r, r, r, 1, N, {field: 0.5 + i})
        for i, (method, r) in enumerate([("misentry", 0.9), ("ssf", 0.4), ("misentry", 0.8)])
    ]
    write_results(rows, tmp_path)
    md, page = build_report(tmp_path)
    table = _table(md.read_text(), f"## {experiment.capitalize()} (cifar10)")
    assert table[0][-1] == field
    assert [line[-1] for line in table[1:]] == ["0.5", "2.5", "1.5"]  # by method, variant
    assert page.read_text().count("data:image/png;base64,") == plots
    assert "detection" in md.read_text().rsplit("## Not in this run", 1)[1]


def test_measurement_sections_list_their_values_without_rate_columns(tmp_path: Path) -> None:
    from misentry.bench.results import measurement_row

    rows = [
        *detection_rows("mnist5k", "ssf", 10, {"backdoor": [2]}, [1]),
        measurement_row("covertness", "mnist5k", "ssf", 10, {"auc_confidence": 0.8831}),
        measurement_row("cost", "mnist5k", "ssf", 10, {"seconds_per_fingerprint": 0.027}),
    ]
    write_results(rows, tmp_path)
    md, _ = build_report(tmp_path)
    text = md.read_text()
    covert = text[text.index("## Covertness") : text.index("## Cost")]
    assert "| method | variant | auc_confidence |" in covert
    assert "0.8831" in covert
    assert "rate (%)" not in covert
    assert "0.027" in text[text.index("## Cost") :]
