"""The benchmark report: markdown and self-contained HTML rebuilt from a results file."""

from __future__ import annotations

import argparse
import base64
import html
import io
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure

from misentry.bench.experiments.covertness import Covertness, write_covertness_samples
from misentry.bench.report import ABOUT, EXPERIMENTS, FAMILIES, build_report, variant_family
from misentry.bench.results import ResultRow, detection_rows, measurement_row, write_results
from misentry.cli import _verb
from misentry.cli.report import add_report
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
    for variant, k, rate in (("adaptive_backdoor", 0, 0.9), ("adaptive_backdoor", 10, 0.6)):
        rows.append(_rated("leakage", "misentry", variant, 5, rate, f"n_leaked={k}", n_leaked=k))
    return rows


def _rated(
    experiment: str, method: str, variant: str, ns: int, rate: float, setting: str, **extra: Any
) -> ResultRow:
    """A row with a detection rate, its interval 5 points either side (clipped to [0, 1])."""
    low, high = max(0.0, rate - 0.05), min(1.0, rate + 0.05)
    return ResultRow(
        experiment, "mnist5k", method, variant, ns, rate, low, high, 3, N, extra, setting
    )


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


# --- a run with every experiment ----------------------------------------------------------------

ABLATION = {  # configuration -> variant -> (DR@1, DR@5)
    "no meta-learning": {
        "ft_last_lr1e-5": (0.2, 0.5),
        "backdoor": (0.4, 0.7),
        "pruning": (0.3, 0.9),
    },
    "default": {"ft_last_lr1e-5": (0.5, 0.8), "backdoor": (0.6, 0.9), "pruning": (0.7, 1.0)},
    "L2": {"ft_last_lr1e-5": (0.1, 0.2), "backdoor": (0.2, 0.3), "pruning": (0.3, 0.4)},
}
SWEEP = (1.0, 0.0, 0.5)  # written out of order: the report sorts them
SAMPLES = {"misentry": [0.55, 0.6, 0.9], EVIL: [0.2, 0.3, 0.35]}


def _full_rows() -> list[ResultRow]:
    rows = [r for m, d in D.items() for r in detection_rows("mnist5k", m, N, d, range(1, 21))]
    for method, base in (("misentry", 0.9), (EVIL, 0.8)):
        for attack in ("adaptive_backdoor", "adaptive_ft_last"):
            for k in (0, 10, 50):
                for ns in (1, 5):
                    rate = base - k / 100 - (0.2 if ns == 1 else 0.0)
                    extra = {"n_leaked": k, "leaked_kept": 0.75}
                    rows.append(
                        replace(
                            _rated("leakage", method, attack, ns, rate, f"n_leaked={k}", **extra),
                            n_fingerprints=N - k,
                        )
                    )
        for variant in ("ft_last_lr1e-5", "backdoor"):
            for steps in (0, 10, 100) if variant == "backdoor" else (10, 100, 1000):
                for ns in (1, 5):
                    rate = min(1.0, base * steps / 100)
                    extra = {"steps": steps, "clean_accuracy": 0.97, "attack_success": None}
                    rows.append(
                        _rated("sensitivity", method, variant, ns, rate, f"steps={steps}", **extra)
                    )
        rows.append(
            measurement_row(
                "covertness",
                "mnist5k",
                method,
                N,
                {
                    "auc_confidence": 0.52 if method == "misentry" else 0.97,
                    "auc_entropy": 0.55 if method == "misentry" else 0.99,
                    "mean_confidence": 0.9,
                    "mean_confidence_normal": 0.95,
                    "mean_entropy": 0.3,
                    "mean_entropy_normal": 0.2,
                    "psnr_mean": 38.25,
                    "l2_mean": 0.5,
                    "linf_mean": 0.03,
                },
            )
        )
        rows.append(
            measurement_row(
                "cost",
                "mnist5k",
                method,
                N,
                {
                    "seconds_per_fingerprint": 0.25 if method == "misentry" else 0.0125,
                    "forward_per_fingerprint": 200.0,
                    "backward_per_fingerprint": 100.0,
                },
            )
        )
    for variant, seconds in (("pruning", 0.5), ("ft_last_lr1e-5", 2.0)):
        extra = {"build_seconds_mean": seconds, "build_seconds_max": 2 * seconds, "instances": 3}
        rows.append(measurement_row("cost", "mnist5k", "tampering", N, extra, variant))
    for config, by_variant in ABLATION.items():
        for variant, rates in {**by_variant, "identity": (0.0, 0.0)}.items():
            for ns, rate in zip((1, 5), rates, strict=True):
                extra = {"config": config, "changes": "" if config == "default" else "x=1"}
                rows.append(_rated("ablation", "misentry", variant, ns, rate, config, **extra))
    subtle = {"variants": "ft_last_lr1e-5,backdoor"}
    for c in SWEEP:
        for ns, rate in ((1, 0.3 + 0.4 * c), (5, 0.5 + 0.4 * c)):
            extra = {
                "covertness": c,
                "auc_confidence": 0.9 - 0.35 * c,
                "auc_entropy": 0.9,
                **subtle,
            }
            rows.append(
                _rated("frontier", "misentry", "subtle", ns, rate, f"covertness={c}", **extra)
            )
    for ns, rate in ((1, 0.2), (5, 0.4)):
        extra = {"covertness": None, "auc_confidence": 0.97, "auc_entropy": 0.99, **subtle}
        rows.append(_rated("frontier", EVIL, "subtle", ns, rate, "", **extra))
    return rows


def _cov(confidence: list[float]) -> Covertness:
    t = torch.tensor
    normal = t([0.99, 0.95, 0.9, 0.8], dtype=torch.float64)
    empty = torch.empty(0, dtype=torch.float64)
    c = t(confidence, dtype=torch.float64)
    return Covertness(c, 1 - c, normal, 1 - normal, 0.5, 0.5, empty, empty, empty)


def _tiny_png() -> bytes:
    figure = Figure(figsize=(0.3, 0.3), dpi=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    run = tmp_path_factory.mktemp("full")
    write_results(_full_rows(), run)
    write_covertness_samples(run, {m: _cov(c) for m, c in SAMPLES.items()}, "mnist5k")
    (run / "examples.png").write_bytes(_tiny_png())
    md, page = build_report(run)
    return run, md.read_text(), page.read_text()


def _section(text: str, title: str) -> str:
    """The markdown section titled ``title``, up to the next one."""
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _html_sections(page: str) -> dict[str, str]:
    found = re.findall(r"<section><h2>(.*?)</h2>(.*?)</section>", page, re.DOTALL)
    return {html.unescape(title): body for title, body in found}


def test_every_experiment_has_a_section_in_order_opening_with_what_it_measured(
    full: tuple[Path, str, str],
) -> None:
    _, md, page = full
    titles = re.findall(r"^## (.*)$", md, re.MULTILINE)
    assert titles == ["Run", *(f"{e.capitalize()} (mnist5k)" for e in EXPERIMENTS)]
    for experiment in EXPERIMENTS:
        first = _section(md, f"{experiment.capitalize()} (mnist5k)").strip().split("\n\n")[0]
        assert first == ABOUT[experiment].replace("*", r"\*")
    assert list(_html_sections(page)) == titles


def test_each_experiment_has_its_plots_as_data_uris_and_nothing_fetched(
    full: tuple[Path, str, str],
) -> None:
    run, md, page = full
    sections = _html_sections(page)
    plots = {"detection": 1, "leakage": 1, "covertness": 2, "sensitivity": 1, "ablation": 1}
    for experiment in EXPERIMENTS:
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
    assert "](examples.png)" in _section(md, "Covertness (mnist5k)")  # md links the file


def test_leakage_table_lists_each_attack_method_and_n_leaked(full: tuple[Path, str, str]) -> None:
    _, md, _ = full
    table = _table(md, "## Leakage (mnist5k)")
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
    table = _table(md, "## Sensitivity (mnist5k)")
    assert table[0][:5] == ["variant", "method", "steps", "DR@1 (%)", "DR@5 (%)"]
    backdoor = [line for line in table[1:] if line[1] == "misentry"][3:]
    assert [line[2] for line in backdoor] == ["0", "10", "100"]
    assert backdoor[2][3:] == ["90.0", "90.0", "97.0", "–"]


def test_covertness_table_and_histograms(full: tuple[Path, str, str]) -> None:
    _, md, _ = full
    table = _table(md, "## Covertness (mnist5k)")
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
    table = _table(md, "## Ablation (mnist5k)")
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
    methods = _table(md, "Fingerprint generation, per fingerprint.")
    assert methods == [
        ["method", "seconds", "forward passes", "backward passes"],
        ["misentry", "0.250", "200.000", "100.000"],
        [r"ssf\<b\>", "0.013", "200.000", "100.000"],
    ]
    variants = _table(md, "Building one tampered instance, per variant.")
    assert variants == [
        ["family", "variant", "instances", "mean seconds", "max seconds"],
        ["fine-tuning", "ft_last_lr1e-5", "3", "2.000", "4.000"],
        ["compression", "pruning", "3", "0.500", "1.000"],
    ]


def test_frontier_lists_the_sweep_in_covertness_order_then_the_others(
    full: tuple[Path, str, str],
) -> None:
    _, md, _ = full
    section = _section(md, "Frontier (mnist5k)")
    table = _table(md, "## Frontier (mnist5k)")
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
    assert _table(text, "## Novel (mnist5k)") == [
        ["method", "variant", "setting", "thing"],
        ["ssf", "-", "s1", "0.5"],
    ]
    assert "Building one tampered instance" not in text
    missing = ["leakage", "covertness", "sensitivity", "ablation", "frontier"]
    assert text.rstrip().endswith("## Not in this run\n\n" + ", ".join(missing))
    assert "<h2>Not in this run</h2>\n<p>" + ", ".join(missing) in page.read_text()


def test_unreadable_covertness_samples_are_reported_not_fatal(tmp_path: Path) -> None:
    rows = [measurement_row("covertness", "mnist5k", "ssf", 10, {"auc_confidence": 0.8831})]
    write_results(rows, tmp_path)
    (tmp_path / "covertness.json").write_text("{broken")
    md, page = build_report(tmp_path)
    section = _section(md.read_text(), "Covertness (mnist5k)")
    assert "No confidence histograms: read_covertness_samples: cannot read" in section
    assert "0.883" in section
    assert "data:image" not in page.read_text()
