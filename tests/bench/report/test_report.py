"""The benchmark report: markdown and self-contained HTML rebuilt from a results file, and the
``misentry report`` verb."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from bench.report.reportkit import EVIL, PNG, pct_of, small_rows, table_after
from misentry.bench.report import FAMILIES, build_report, variant_family
from misentry.bench.results import ResultRow, write_results
from misentry.cli import main
from misentry.tamper.registry import ORDER


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[ResultRow], str, str]:
    run = tmp_path_factory.mktemp("run")
    rows = small_rows()
    write_results(rows, run)
    md_path, html_path = build_report(run)
    assert (md_path, html_path) == (run / "report.md", run / "report.html")
    return rows, md_path.read_text(), html_path.read_text()


def test_detection_table_has_the_rates_best_in_bold_and_identity_last(
    report: tuple[list[ResultRow], str, str],
) -> None:
    rows, md, _ = report
    table = table_after(md, "## Detection (mnist5k)")
    assert table[0] == ["family", "variant", "instances", "misentry", r"ssf\<b\>"]
    body = {line[1]: line for line in table[1:]}
    assert [line[1] for line in table[1:]] == ["ft_last_lr1e-5", "backdoor", "identity"]
    assert [line[0] for line in table[1:]] == ["fine-tuning", "poisoning / backdoor", "control"]
    for variant, best in (("ft_last_lr1e-5", "misentry"), ("backdoor", EVIL)):
        for column, method in ((3, "misentry"), (4, EVIL)):
            cell = f"{pct_of(rows, method, variant, 1)} / {pct_of(rows, method, variant, 5)}"
            assert body[variant][column] == (f"**{cell}**" if method == best else cell)
        assert body[variant][2] == "3"
    assert body["identity"][3:] == ["0.0 / 0.0", "0.0 / 0.0"]  # all tie: nobody is bold
    assert float(pct_of(rows, "misentry", "ft_last_lr1e-5", 1)) > 0.0
    intervals = table_after(md, "95 % intervals")
    (row,) = [r for r in rows if (r.method, r.variant, r.ns) == (EVIL, "backdoor", 1)]
    assert intervals[2][4].startswith(f"{100 * row.ci_low:.1f}–{100 * row.ci_high:.1f} / ")


def test_html_is_self_contained_with_png_plots_and_escaped_text(
    report: tuple[list[ResultRow], str, str],
) -> None:
    rows, _, page = report
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # detection vs N_S, leakage vs n_leaked
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
    header = {line[0]: line[1] for line in table_after(md, "## Run")[1:]}
    assert header["**datasets**"] == "mnist5k"
    assert header["**methods**"] == r"misentry, ssf\<b\>"
    assert header["**instances per cell**"] == "3"
    assert re.fullmatch(r"[0-9a-f]{64}", header["**sha256**"])


def test_out_dir_and_missing_or_bad_results(tmp_path: Path) -> None:
    write_results(small_rows(), tmp_path / "run")
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


def test_cli_verb_prints_both_paths_and_errors_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_results(small_rows(), tmp_path / "run")
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / "out" / "report.md"), str(tmp_path / "out" / "report.html")]
    assert all(Path(p).stat().st_size > 0 for p in out)
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    assert "no results file" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
