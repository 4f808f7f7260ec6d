"""Result rows and text helpers shared by the report tests: a small run (detection and a
leakage point) and a run with every experiment, and how to read the markdown back."""

from __future__ import annotations

import html
import io
import re
from dataclasses import replace
from typing import Any

import torch
from matplotlib.figure import Figure

from misentry.bench.experiments.covertness_measure import Covertness
from misentry.bench.results import ResultRow, detection_rows, measurement_row
from misentry.models.stacks import LEVELS

EVIL = "ssf<b>"
"""A method name that is also markup: it must show as text, never as a tag."""

N = 100
# fingerprints each instance labels differently: misentry wins ft_last, EVIL wins backdoor
D = {
    "misentry": {"ft_last_lr1e-5": [40, 50, 60], "backdoor": [10, 20, 30], "identity": [0, 0, 0]},
    EVIL: {"ft_last_lr1e-5": [5, 10, 15], "backdoor": [50, 60, 70], "identity": [0, 0, 0]},
}
PNG = b"\x89PNG\r\n\x1a\n"


def small_rows() -> list[ResultRow]:
    rows = [
        row
        for method, d in D.items()
        for row in detection_rows("mnist5k", method, N, d, range(1, 21))
    ]
    for variant, k, rate in (("adaptive_backdoor", 0, 0.9), ("adaptive_backdoor", 10, 0.6)):
        rows.append(rated("leakage", "misentry", variant, 5, rate, f"n_leaked={k}", n_leaked=k))
    return rows


def rated(
    experiment: str, method: str, variant: str, ns: int, rate: float, setting: str, **extra: Any
) -> ResultRow:
    """A row with a detection rate, its interval 5 points either side (clipped to [0, 1])."""
    low, high = max(0.0, rate - 0.05), min(1.0, rate + 0.05)
    return ResultRow(
        experiment, "mnist5k", method, variant, ns, rate, low, high, 3, N, extra, setting
    )


def table_after(md: str, after: str) -> list[list[str]]:
    """The cells of the first markdown table after the line ``after``."""
    lines = md.split(after, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return [table[0], *table[2:]]


def pct_of(rows: list[ResultRow], method: str, variant: str, ns: int) -> str:
    (row,) = [r for r in rows if (r.method, r.variant, r.ns) == (method, variant, ns)]
    return f"{100 * row.detection_rate:.1f}"


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


def full_rows() -> list[ResultRow]:
    rows = [r for m, d in D.items() for r in detection_rows("mnist5k", m, N, d, range(1, 21))]
    for method, base in (("misentry", 0.9), (EVIL, 0.8)):
        for attack in ("adaptive_backdoor", "adaptive_ft_last"):
            for k in (0, 10, 50):
                for ns in (1, 5):
                    rate = base - k / 100 - (0.2 if ns == 1 else 0.0)
                    extra = {"n_leaked": k, "leaked_kept": 0.75}
                    rows.append(
                        replace(
                            rated("leakage", method, attack, ns, rate, f"n_leaked={k}", **extra),
                            n_fingerprints=N - k,
                        )
                    )
        for variant in ("ft_last_lr1e-5", "backdoor"):
            for steps in (0, 10, 100) if variant == "backdoor" else (10, 100, 1000):
                for ns in (1, 5):
                    rate = min(1.0, base * steps / 100)
                    extra = {"steps": steps, "clean_accuracy": 0.97, "attack_success": None}
                    rows.append(
                        rated("sensitivity", method, variant, ns, rate, f"steps={steps}", **extra)
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
                rows.append(rated("ablation", "misentry", variant, ns, rate, config, **extra))
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
                rated("frontier", "misentry", "subtle", ns, rate, f"covertness={c}", **extra)
            )
    for ns, rate in ((1, 0.2), (5, 0.4)):
        extra = {"covertness": None, "auc_confidence": 0.97, "auc_entropy": 0.99, **subtle}
        rows.append(rated("frontier", EVIL, "subtle", ns, rate, "", **extra))
    return rows + tolerance_rows()


def tolerance_rows() -> list[ResultRow]:
    """Strict MiSentry per tolerance (detection falls as the tolerance loosens, false alarms
    rise with the serving level above the bundle's own), then EVIL at exact."""
    rows = []
    bundles = [("misentry", t, i) for i, t in enumerate(LEVELS)] + [(EVIL, "exact", 0)]
    for method, tolerance, i in bundles:
        d = {v: [max(0, c - 10 * i) for c in ds] for v, ds in D[method].items()}
        alarms = {f"false_alarms_{lv}": max(0, j - i) for j, lv in enumerate(LEVELS)}
        extra = {"tolerance": tolerance, **alarms, "false_alarms_own": 0}
        setting = f"tolerance={tolerance}"
        rows += detection_rows("mnist5k", method, N, d, (1, 5), "tolerance", extra, setting)
    return rows


def cov(confidence: list[float]) -> Covertness:
    t = torch.tensor
    normal = t([0.99, 0.95, 0.9, 0.8], dtype=torch.float64)
    empty = torch.empty(0, dtype=torch.float64)
    c = t(confidence, dtype=torch.float64)
    return Covertness(c, 1 - c, normal, 1 - normal, 0.5, 0.5, empty, empty, empty)


def tiny_png() -> bytes:
    figure = Figure(figsize=(0.3, 0.3), dpi=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def section_of(text: str, title: str) -> str:
    """The markdown section titled ``title``, up to the next one."""
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def html_sections(page: str) -> dict[str, str]:
    found = re.findall(r"<section><h2>(.*?)</h2>(.*?)</section>", page, re.DOTALL)
    return {html.unescape(title): body for title, body in found}
